"""What a figure was measured on: one dict for benchmark and experiment outputs."""

from __future__ import annotations

import datetime
import importlib.metadata
import os
import platform
from typing import Any

import jax


def _version(name: str) -> str | None:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine() -> dict[str, Any]:
    """Backend, devices, CPU, core count, load average, library versions and the settings that
    change speed (``XLA_FLAGS``, ``JAXPFL_CONV``), with the date."""
    devices = jax.devices()
    try:
        load = os.getloadavg()[0]
    except OSError:
        load = None
    return {
        "date": datetime.datetime.now().isoformat(timespec="seconds"),
        "backend": jax.default_backend(),
        "devices": len(devices),
        "device_kind": devices[0].device_kind,
        "processes": jax.process_count(),
        "cpu": _cpu_model(),
        "cpus": os.cpu_count(),
        "load_average_1min": load,
        "python": platform.python_version(),
        "platform": platform.platform(),
        **{name: _version(name) for name in ("jax", "jaxlib", "flax", "optax", "torch")},
        "XLA_FLAGS": os.environ.get("XLA_FLAGS", ""),
        "JAXPFL_CONV": os.environ.get("JAXPFL_CONV", "auto"),
    }


__all__ = ["machine"]
