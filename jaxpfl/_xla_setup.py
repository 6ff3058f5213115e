"""One XLA CPU device per core, requested before JAX creates its CPU backend.

On a CPU the ``sequential`` strategy trains clients at the same time, one per device
(``Strategy.num_devices``; docs/performance.md, "Clients in parallel on the CPU"): XLA splits
the small matrices of one client's step poorly over threads, while two clients on two devices
keep both cores busy. XLA reads ``--xla_force_host_platform_device_count`` once, when the CPU
backend starts (at the first use of a device, not at ``import jax``), so jaxpfl adds it to
``XLA_FLAGS`` when it is imported:

- only if ``XLA_FLAGS`` does not set it already (yours wins), and only before the backend has
  started (later it would have no effect, and nothing is changed);
- ``JAXPFL_CPU_DEVICES=N`` asks for N devices instead of one per core, and the CPU default
  strategy then trains on N of them (at most as many as exist); ``JAXPFL_CPU_DEVICES=1``
  keeps XLA's single CPU device (the flag is then not added) and one device per run.

It changes where clients run, never what they compute: the same clients give bit-identical
results on one device or several (tests/test_contract.py). GPU and TPU backends ignore it.
"""

from __future__ import annotations

import os
import sys

_FLAG = "--xla_force_host_platform_device_count"


def _backend_started() -> bool:
    bridge = sys.modules.get("jax._src.xla_bridge")
    return bool(getattr(bridge, "_backends", None))


def cpu_devices_wanted() -> int:
    """Devices per core asked for by ``JAXPFL_CPU_DEVICES`` (default: one per core)."""
    raw = os.environ.get("JAXPFL_CPU_DEVICES", "")
    if raw.strip():
        try:
            return max(1, int(raw))
        except ValueError:
            import warnings

            warnings.warn(f"JAXPFL_CPU_DEVICES={raw!r} is not an integer; using one CPU device",
                          stacklevel=2)
            return 1
    return max(1, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity")
               else os.cpu_count() or 1)


def request_cpu_devices() -> None:
    flags = os.environ.get("XLA_FLAGS", "")
    n = cpu_devices_wanted()
    if _FLAG in flags or n <= 1 or _backend_started():
        return
    os.environ["XLA_FLAGS"] = f"{flags} {_FLAG}={n}".strip()


request_cpu_devices()
