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
