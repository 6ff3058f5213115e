"""Local training, written once: a masked loop of steps over a client's schedule.

``local_steps`` is the single step loop of the library. Every algorithm's client code calls it
(directly, or through ``local_train`` for plain optax steps) with a step function written for
ONE client. Inside ``jit``/``vmap`` it is a ``lax.scan``; called eagerly (the ``sequential``
strategy) it dispatches jitted blocks of steps from Python, skipping blocks in which the client
has no step left. Both paths compute the same steps with the same keys.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable
from typing import Any, NamedTuple

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxpfl.core.schedule import Schedule
from jaxpfl.core.tree import tree_where

PyTree = Any


@dataclasses.dataclass(frozen=True)
class ExecOptions:
    """How the step loop executes (never what it computes).

    ``unroll``: unroll factor of the compiled ``lax.scan`` (inside jit/vmap).
    ``step_block``: steps per jitted call when the loop runs eagerly (``sequential``); 1 steps
    from Python like a classic training loop, ``None`` runs the whole scan in one call.
    """

    unroll: int = 1
    step_block: int | None = 1


@flax.struct.dataclass
class ClientData:
    """One client's view of the data. ``idx [W] int32`` indexes the shared pool ``x, y``;
    the client's examples are ``idx[:n]`` (the rest is padding)."""

    idx: jax.Array
    n: jax.Array
    x: jax.Array
    y: jax.Array
    exec: ExecOptions = flax.struct.field(pytree_node=False, default=ExecOptions())

    @property
    def width(self) -> int:
        return self.idx.shape[-1]

    def with_index(self, idx: jax.Array, n: jax.Array) -> ClientData:
        return self.replace(idx=idx, n=n)


class Batch(NamedTuple):
    """A gathered batch: ``x [..., B, H, W, C] uint8``, ``y [..., B]``, ``valid [..., B] bool``."""

    x: jax.Array
    y: jax.Array
    valid: jax.Array


def gather_batch(data: ClientData, positions: jax.Array, valid: jax.Array) -> Batch:
    """The examples at ``positions`` of the client's index row (invalid slots still gathered)."""
    ids = data.idx[positions]
    return Batch(data.x[ids], data.y[ids], valid)


class StepStats(NamedTuple):
    """Sum of per-step losses over active steps, and the number of active steps."""

    loss_sum: jax.Array
    steps: jax.Array

    @property
    def mean_loss(self) -> jax.Array:
        return self.loss_sum / jnp.maximum(self.steps, 1).astype(jnp.float32)


StepFn = Callable[[PyTree, PyTree, Batch, jax.Array], tuple[PyTree, jax.Array]]


def _scan(step_fn: StepFn, carry, consts, data, schedule, key, step_ids, unroll):
    body = _masked_body(step_fn, consts, data, key)
    init = StepStats(jnp.zeros((), jnp.float32), jnp.zeros((), jnp.int32))
    (carry, stats), _ = jax.lax.scan(
        body, (carry, init), (schedule.positions, schedule.valid, step_ids), unroll=unroll
    )
    return carry, stats


@functools.partial(jax.jit, static_argnames=("step_fn", "size", "masked"))
def _block(step_fn: StepFn, carry, stats, consts, data, schedule, key, start, size, masked):
    """Steps ``start .. start+size-1`` of ``schedule``, unrolled in Python: no loop construct
    reaches XLA (on CPU a convolution inside a while loop, even a one-trip one, runs several
    times slower, measured)."""
    body = _masked_body(step_fn, consts, data, key, masked)
    c = (carry, stats)
    for j in range(size):
        step = start + j
        c, _ = body(c, (schedule.positions[step], schedule.valid[step], step))
    return c


def _masked_body(step_fn: StepFn, consts, data, key, masked: bool = True):
    def body(c, inp):
        carry, stats = c
        pos, valid, j = inp
        new, loss = step_fn(
            carry, consts, gather_batch(data, pos, valid), jax.random.fold_in(key, j)
        )
        active = jnp.any(valid)
        carry = tree_where(active, new, carry) if masked else new
        stats = StepStats(
            stats.loss_sum + jnp.where(active, loss, 0.0), stats.steps + active.astype(jnp.int32)
        )
        return (carry, stats), None

    return body


def _is_traced(tree: PyTree) -> bool:
    return any(isinstance(leaf, jax.core.Tracer) for leaf in jax.tree.leaves(tree))


def local_steps(
    step_fn: StepFn,
    carry: PyTree,
    consts: PyTree,
    data: ClientData,
    schedule: Schedule,
    key: jax.Array,
) -> tuple[PyTree, StepStats]:
    """Run ``carry, loss = step_fn(carry, consts, batch_s, fold_in(key, s))`` for every step s.

    A step whose batch has no valid example is masked: ``carry`` (parameters *and* optimizer
    state) is left unchanged. ``step_fn`` must be a stable function (created once, not per
    call) that takes every array it needs through ``carry``/``consts``, so the eager path can
    cache its compilation.
    """
    num = schedule.num_steps
    step_ids = jnp.arange(num, dtype=jnp.int32)
    block = data.exec.step_block
    if block is None or _is_traced((carry, consts, data, schedule, key)):
        return _scan(step_fn, carry, consts, data, schedule, key, step_ids, data.exec.unroll)
    # Eager path: jitted blocks of `block` steps, all-masked blocks skipped (they are no-ops).
    active = schedule.active
    if active is None:
        active = np.asarray(jnp.any(schedule.valid.reshape(num, -1), axis=-1))
    stats = StepStats(jnp.zeros((), jnp.float32), jnp.zeros((), jnp.int32))
    sched = Schedule(schedule.positions, schedule.valid)
    for start in range(0, num, block):
        if active[start : start + block].any():
            size = min(block, num - start)
            masked = not bool(active[start : start + size].all())  # all active: no select
            carry, stats = _block(
                step_fn, carry, stats, consts, data, sched, key, start, size, masked
            )
    return carry, stats


def masked_cross_entropy(
    model, params: PyTree, batch: Batch, key: jax.Array | None = None, train: bool = False
) -> jax.Array:
    """ℓ(θ; b): mean softmax cross-entropy over the *valid* examples of the batch (§1.1)."""
    logits = model.apply(params, batch.x, train=train, key=key)
    ce = optax.softmax_cross_entropy_with_integer_labels(logits.astype(jnp.float32), batch.y)
    w = batch.valid.astype(jnp.float32)
    return jnp.sum(ce * w) / jnp.maximum(jnp.sum(w), 1.0)


@functools.cache
def sgd_step(
    model, tx: optax.GradientTransformation, post_update: Callable | None = None
) -> StepFn:
    """The standard optax step on one batch, optionally followed by ``post_update``.

    carry = (θ, optimizer state). ``θ⁺ = θ + tx.update(∇ℓ(θ; b))``; then, if given,
    ``θ⁺ ← post_update(θ⁺, θ, consts)`` (e.g. FEDORA's pull toward ŵ evaluated at θ).
    Cached, so the same (model, tx, hook) always returns the same function object.
    """

    def step(carry, consts, batch, key):
        params, opt_state = carry
        loss, grads = jax.value_and_grad(masked_cross_entropy, argnums=1)(
            model, params, batch, key, True
        )
        updates, opt_state = tx.update(grads, opt_state, params)
        new = optax.apply_updates(params, updates)
        if post_update is not None:
            new = post_update(new, params, consts)
        return (new, opt_state), loss

    return step


def local_train(
    model,
    tx: optax.GradientTransformation,
    params: PyTree,
    data: ClientData,
    schedule: Schedule,
    key: jax.Array,
    *,
    post_update: Callable | None = None,
    consts: PyTree = None,
) -> tuple[PyTree, StepStats]:
    """θ after running ``tx`` over ``schedule`` from θ = ``params``, with a fresh optimizer
    state (§1.3: created anew at every client call)."""
    (params, _), stats = local_steps(
        sgd_step(model, tx, post_update), (params, tx.init(params)), consts, data, schedule, key
    )
    return params, stats


def client_sgd(
    lr: float, momentum: float = 0.0, weight_decay: float = 0.0
) -> optax.GradientTransformation:
    """PyTorch ``SGD``: b ← μ b + (∇ℓ + wd θ); θ ← θ − η b (no dampening, no Nesterov)."""
    parts = []
    if weight_decay:
        parts.append(optax.add_decayed_weights(weight_decay))
    parts.append(optax.sgd(lr, momentum=momentum or None))
    return optax.chain(*parts) if len(parts) > 1 else parts[0]
