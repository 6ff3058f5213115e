"""Index schedules (docs/algorithms.md §1.3): which of a client's examples each local step reads.

A client's training examples are ``idx[:n]`` of its padded index row ``idx [W]``. A schedule
gives, for every compiled step s, ``positions[s] [B]`` (into ``idx``) and ``valid[s] [B]``.
Steps whose batch has no valid example are *masked*: they leave the client untouched, so
clients of different sizes run the same compiled number of steps. Both functions are pure
JAX, keyed, and exported so independent references can replay the exact same batches.
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np


class Schedule(NamedTuple):
    """``positions [S, ..., B] int32`` into the client's index row; ``valid`` same shape.

    ``step_ids [S] int32``: the client's OWN number of each step (epoch e, batch j of a client
    with s steps per epoch is step e·s + j), which keys the step's randomness (dropout). It
    never depends on the padded width, hence not on which other clients share the round.
    ``None`` means ``arange(S)``.
    ``active`` (optional, host NumPy ``[S]`` bool): which steps have a valid example, known
    without waiting for the device when n is concrete; the eager step loop uses it to skip
    masked steps without a device round trip.
    """

    positions: jax.Array
    valid: jax.Array
    active: np.ndarray | None = None
    step_ids: jax.Array | None = None

    @property
    def num_steps(self) -> int:
        return self.positions.shape[0]

    def ids(self) -> jax.Array:
        """``step_ids``, or ``arange(S)`` when the schedule has none."""
        if self.step_ids is None:
            return jnp.arange(self.num_steps, dtype=jnp.int32)
        return self.step_ids


def group_steps(schedule: Schedule, k: int) -> Schedule:
    """Consecutive groups of ``k`` batches as one step (``positions [S/k, k, ..., B]``): a
    step that reads several batches (Per-FedAvg's 2- or 3-batch meta-step). A grouped step is
    active when any of its batches is; it is keyed by its group number."""
    s = schedule.num_steps
    if k < 1 or s % k:
        raise ValueError(f"cannot group {s} steps into groups of {k}")
    pos = schedule.positions.reshape((s // k, k) + schedule.positions.shape[1:])
    valid = schedule.valid.reshape((s // k, k) + schedule.valid.shape[1:])
    active = None
    if schedule.active is not None:
        active = np.asarray(schedule.active).reshape(s // k, k).any(axis=1)
    return Schedule(pos, valid, active, jnp.arange(s // k, dtype=jnp.int32))


def epoch_permutation(key: jax.Array, n: jax.Array, width: int, shuffle: bool = True):
    """A uniform permutation of ``0..n-1`` in the first n slots of a length-``width`` vector.

    Slot i draws ``u_i = uniform(fold_in(key, i))``, so the order of the n real slots does not
    depend on the padding width (nor, hence, on the other clients of the round). Padding slots
    (≥ n) sort last. With ``shuffle=False`` the stored order is kept.
    """
    ar = jnp.arange(width)
    if not shuffle:
        return ar
    u = jax.vmap(lambda i: jax.random.uniform(jax.random.fold_in(key, i)))(ar)
    return jnp.argsort(jnp.where(ar < n, u, 2.0)).astype(jnp.int32)


def steps_per_epoch(width: int, batch_size: int) -> int:
    """Compiled steps per epoch for index rows of width W: ⌈W / B⌉."""
    return -(-width // batch_size)


def _concrete(n) -> int | None:
    return None if isinstance(n, jax.core.Tracer) else int(np.asarray(n))


def _check_width(n, width: int) -> None:
    """A client cannot have more examples than its index row holds (positions past the row
    would silently read padding)."""
    nk = _concrete(n)
    if nk is not None and nk > width:
        raise ValueError(f"client size n = {nk} exceeds its index row width {width}")


def epoch_schedule(
    key: jax.Array,
    n: jax.Array,
    width: int,
    batch_size: int,
    epochs: int,
    *,
    drop_last: bool = False,
    shuffle: bool = True,
) -> Schedule:
    """E epochs of batches of size B over a client of n examples (index row width W).

    Epoch e uses the permutation π_e = ``epoch_permutation(fold_in(key, e), n)``; batch j is
    π_e[jB:(j+1)B]. The client runs s = ⌈n/B⌉ steps per epoch (⌊n/B⌋ with ``drop_last``), the
    last possibly short; compiled steps past s are masked. Shape ``[E·⌈W/B⌉, B]``. Step
    (e, j) is keyed as the client's own step e·s + j.
    """
    _check_width(n, width)
    pos, valid, ids = _epoch_schedule(key, n, width, batch_size, epochs, drop_last, shuffle)
    active = None
    if (nk := _concrete(n)) is not None:
        own = nk // batch_size if drop_last else -(-nk // batch_size)
        active = np.tile(np.arange(steps_per_epoch(width, batch_size)) < own, epochs)
    return Schedule(pos, valid, active, ids)


@functools.partial(jax.jit, static_argnums=(2, 3, 4, 5, 6))
def _epoch_schedule(key, n, width, batch_size, epochs, drop_last, shuffle):
    spe = steps_per_epoch(width, batch_size)
    n = jnp.asarray(n, jnp.int32)
    own_steps = n // batch_size if drop_last else -(-n // batch_size)

    def one_epoch(e):
        perm = epoch_permutation(jax.random.fold_in(key, e), n, width, shuffle)
        perm = jnp.pad(perm, (0, spe * batch_size - width))
        slot = jnp.arange(spe * batch_size)
        step = slot // batch_size
        valid = (slot < n) & (step < own_steps)
        ids = e * own_steps + jnp.arange(spe, dtype=jnp.int32)
        return perm.reshape(spe, batch_size), valid.reshape(spe, batch_size), ids

    pos, valid, ids = jax.vmap(one_epoch)(jnp.arange(epochs, dtype=jnp.int32))
    pos = pos.reshape(-1, batch_size).astype(jnp.int32)
    return pos, valid.reshape(-1, batch_size), ids.reshape(-1).astype(jnp.int32)


def stream_schedule(
    key: jax.Array,
    n: jax.Array,
    width: int,
    batch_size: int,
    num_batches: int,
    *,
    shuffle: bool = True,
) -> Schedule:
    """The step stream of §1.3: epochs cut into ⌊n/B⌋ full batches (remainder dropped).

    Batches never straddle an epoch boundary; if n < B every batch is the whole client set.
    Batch j lies in epoch ``j // max(1, ⌊n/B⌋)``, which uses the permutation of
    ``epoch_permutation(fold_in(key, epoch), n)`` (the stored order with ``shuffle=False``).
    Shape ``[num_batches, B]``.
    """
    _check_width(n, width)
    pos, valid = _stream_schedule(key, n, width, batch_size, num_batches, shuffle)
    nk = _concrete(n)
    active = None if nk is None else np.full(num_batches, nk > 0)
    return Schedule(pos, valid, active, jnp.arange(num_batches, dtype=jnp.int32))


@functools.partial(jax.jit, static_argnums=(2, 3, 4, 5))
def _stream_schedule(key, n, width, batch_size, num_batches, shuffle=True):
    n = jnp.asarray(n, jnp.int32)
    per_epoch = jnp.maximum(1, n // batch_size)
    padded = width + batch_size

    def one_batch(j):
        epoch, within = j // per_epoch, j % per_epoch
        perm = epoch_permutation(jax.random.fold_in(key, epoch), n, width, shuffle)
        perm = jnp.pad(perm, (0, padded - width))
        pos = jax.lax.dynamic_slice(perm, (within * batch_size,), (batch_size,))
        return pos, jnp.arange(batch_size) < n

    pos, valid = jax.vmap(one_batch)(jnp.arange(num_batches))
    return pos.astype(jnp.int32), valid
