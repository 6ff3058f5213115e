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
import threading
import types
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
    ``step_block``: active steps per jitted call when the loop runs eagerly (``sequential``;
    its CPU default is 64); ``None`` runs the whole scan in one call.
    """

    unroll: int = 1
    step_block: int | None = 1


@flax.struct.dataclass
class ClientData:
    """One client's view of the data, as the engine hands it to a one-client function.

    Attributes:
      idx: ``[W] int32`` the client's TRAINING index row into the shared pool ``x, y``; its
        examples are ``idx[:n]`` (the rest is padding).
      n: ``int32`` number of training examples n_k.
      x, y: the shared pool (``[N, H, W, C] uint8``, ``[N] int32``), never copied per client.
      val_idx, val_n: the validation row ``[Wv]`` and its size (n = 0 when the split is empty).
      test_idx, test_n: the test row ``[Wt]`` and its size.
      id: ``int32`` the client id k (``num_clients`` on padding rows).
      round: ``int32`` the round index t.
      exec: how the step loop executes (static; never what it computes).

    ``data.split("val")`` is the same client with its validation row as the active row, so
    any function reading ``idx``/``n`` (``client_eval``, ``local_steps``) works on any split.
    """

    idx: jax.Array
    n: jax.Array
    x: jax.Array
    y: jax.Array
    val_idx: jax.Array | None = None
    val_n: jax.Array | None = None
    test_idx: jax.Array | None = None
    test_n: jax.Array | None = None
    id: jax.Array | None = None
    round: jax.Array | None = None
    exec: ExecOptions = flax.struct.field(pytree_node=False, default=ExecOptions())

    @property
    def width(self) -> int:
        return self.idx.shape[-1]

    def with_index(self, idx: jax.Array, n: jax.Array) -> ClientData:
        return self.replace(idx=idx, n=n)

    def split(self, name: str) -> ClientData:
        """This client with split ``name`` ("train", "val" or "test") as the active row."""
        if name == "train":
            return self
        if name not in ("val", "test"):
            raise ValueError(f"unknown split '{name}'; choose one of: train, val, test")
        idx, n = getattr(self, f"{name}_idx"), getattr(self, f"{name}_n")
        if idx is None:
            raise ValueError(f"this ClientData carries no '{name}' row")
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
    """What one run of the step loop did, per client.

    Attributes:
      loss_sum: sum of the step losses over active steps.
      steps: number of active steps (a step is active when its batch has a valid example and
        the loop has not stopped).
      compiled: steps the loop iterated: the schedule length under ``lax.scan``, the
        iterations of this client's ``while_loop`` lane, or the steps of the blocks actually
        dispatched on the eager path. ``steps / compiled`` is the useful share.
      stopped: the stop predicate fired (always False without one).
      cap_hit: a stop predicate was given and never fired although steps ran: the loop ran
        through its cap (the schedule's active steps).
      last_loss: the loss of the last active step (0 if none).
    """

    loss_sum: jax.Array
    steps: jax.Array
    compiled: jax.Array
    stopped: jax.Array
    cap_hit: jax.Array
    last_loss: jax.Array

    @property
    def mean_loss(self) -> jax.Array:
        return self.loss_sum / jnp.maximum(self.steps, 1).astype(jnp.float32)

    def metrics(self) -> dict[str, jax.Array]:
        """The keys algorithms report (``train_loss``, ``steps``, ``compiled_steps``)."""
        return {"train_loss": self.mean_loss, "steps": self.steps, "compiled_steps": self.compiled}


StepFn = Callable[[PyTree, PyTree, Batch, jax.Array], tuple[PyTree, jax.Array]]
StopFn = Callable[[PyTree, PyTree, jax.Array, jax.Array], jax.Array]


class _Loop(NamedTuple):
    """The step loop's state: the algorithm's carry plus the loop's own bookkeeping."""

    carry: PyTree
    s: jax.Array  # next schedule step
    loss_sum: jax.Array
    steps: jax.Array
    losses: jax.Array  # [S] losses of the active steps, in order (only read by a stop predicate)
    stopped: jax.Array
    last_loss: jax.Array


def _start(carry: PyTree, num_steps: int, with_stop: bool) -> _Loop:
    z = jnp.zeros((), jnp.float32)
    losses = jnp.zeros((num_steps if with_stop else 0,), jnp.float32)
    return _Loop(carry, jnp.zeros((), jnp.int32), z, jnp.zeros((), jnp.int32), losses,
                 jnp.zeros((), bool), z)


def _body(step_fn: StepFn, stop: StopFn | None, consts, data, schedule: Schedule, key,
          masked: bool = True):
    """One schedule step s as a pure update of ``_Loop``: masked when the batch has no valid
    example or the loop has stopped (carry, stats and losses then stay as they are)."""
    step_ids = schedule.ids()

    def body(lp: _Loop) -> _Loop:
        s = lp.s
        valid = schedule.valid[s]
        new, loss = step_fn(
            lp.carry, consts, gather_batch(data, schedule.positions[s], valid),
            jax.random.fold_in(key, step_ids[s]),
        )
        active = jnp.any(valid) & ~lp.stopped
        carry = tree_where(active, new, lp.carry) if masked else new
        loss = jnp.asarray(loss, jnp.float32)
        losses = lp.losses
        if stop is not None:
            losses = losses.at[lp.steps].set(jnp.where(active, loss, losses[lp.steps]))
        steps = lp.steps + active.astype(jnp.int32)
        stopped = lp.stopped
        if stop is not None:
            stopped = stopped | (active & jnp.asarray(stop(carry, consts, losses, steps), bool))
        return _Loop(
            carry, s + 1, lp.loss_sum + jnp.where(active, loss, 0.0), steps, losses, stopped,
            jnp.where(active, loss, lp.last_loss),
        )

    return body


def _finish(lp: _Loop, compiled, with_stop: bool) -> tuple[PyTree, StepStats]:
    # the cap is hit when the predicate never fired although steps ran (an empty schedule
    # ran nothing and hit nothing)
    cap_hit = (~lp.stopped & (lp.steps > 0)) if with_stop else jnp.zeros((), bool)
    return lp.carry, StepStats(lp.loss_sum, lp.steps, jnp.asarray(compiled, jnp.int32),
                               lp.stopped, cap_hit, lp.last_loss)


def _traced(step_fn, stop, carry, consts, data, schedule, key, unroll):
    num = schedule.num_steps
    body = _body(step_fn, stop, consts, data, schedule, key)
    lp = _start(carry, num, stop is not None)
    if stop is None:
        lp, _ = jax.lax.scan(lambda c, _: (body(c), None), lp, None, length=num, unroll=unroll)
        return _finish(lp, num, False)
    # Data-dependent length: a while_loop. Under vmap the loop runs until every client has
    # stopped, reached the cap or has no active step left; a finished client's lane is frozen
    # by the batched loop (and masked by ``body``), so each client's result equals its own run.
    act = jnp.any(schedule.valid.reshape(num, -1), axis=-1)
    left = jnp.flip(jnp.cumsum(jnp.flip(act.astype(jnp.int32))) > 0)  # an active step at >= s

    def more(c: _Loop) -> jax.Array:
        return (c.s < num) & ~c.stopped & left[jnp.minimum(c.s, num - 1)]

    lp = jax.lax.while_loop(more, body, lp)
    return _finish(lp, lp.s, True)


def _is_traced(tree: PyTree) -> bool:
    return any(isinstance(leaf, jax.core.Tracer) for leaf in jax.tree.leaves(tree))


def concrete(x: Any) -> int | None:
    """``int(x)`` when ``x`` is a concrete scalar (the eager ``sequential`` path), ``None``
    when it is traced (under ``jit`` / ``vmap``). The one place algorithms learn which path
    they run on, for work that only the eager path can skip (e.g. chunks past a client's own
    examples); what is computed must not depend on it."""
    return None if _is_traced(x) else int(x)


def cond(pred: Any, true_fn: Callable, false_fn: Callable, *operands: Any) -> Any:
    """``jax.lax.cond``, or a Python branch when ``pred`` is concrete (eager: only the taken
    branch runs). Both branches must give the same result either way."""
    if _is_traced(pred):
        return jax.lax.cond(pred, true_fn, false_fn, *operands)
    return true_fn(*operands) if bool(pred) else false_fn(*operands)


def local_steps(
    step_fn: StepFn,
    carry: PyTree,
    consts: PyTree,
    data: ClientData,
    schedule: Schedule,
    key: jax.Array,
    *,
    stop: StopFn | None = None,
) -> tuple[PyTree, StepStats]:
    """THE step loop: ``carry, loss = step_fn(carry, consts, batch_s, fold_in(key, id_s))`` for
    every step s of ``schedule`` (``id_s`` = the client's own step number, ``schedule.ids()``).

    A step whose batch has no valid example is masked: ``carry`` (parameters *and* optimizer
    state) is left unchanged. With ``stop``, the loop ends after the first active step for
    which ``stop(carry, consts, losses, count)`` is true, where ``losses[:count]`` are the
    losses of the active steps so far (in order); the schedule's length is the cap, and
    ``StepStats.cap_hit`` says the loop reached it without stopping. A loop with no active
    step left ends at once (an empty client costs no iterations).

    Execution (never the result) depends on the context: inside ``jit``/``vmap`` the loop is a
    ``lax.scan`` (``lax.while_loop`` with ``stop``); called eagerly (the ``sequential``
    strategy) it runs only the active steps, in jitted blocks of ``data.exec.step_block``
    steps (one compiled while loop for all blocks), and checks ``stop`` on the host after each
    block.
    ``step_fn`` and ``stop`` may be created per call: the eager path compiles a block once per
    distinct function, where a function is identified by its code and the values it captures
    (:func:`canonical`), not by the object. Arrays should reach them through
    ``carry``/``consts``: a function closing over a new array object compiles again.
    """
    num = schedule.num_steps
    block = data.exec.step_block
    if block is None or _is_traced((carry, consts, data, schedule, key)):
        return _traced(step_fn, stop, carry, consts, data, schedule, key, data.exec.unroll)
    # Eager path: the ACTIVE steps only (a step without a valid example is a no-op), in
    # jitted blocks of `block` steps. Each block gets its steps' rows of the schedule (padded
    # to `block`) and the pool indices of their examples, so one compilation serves every
    # block of every client, whatever its size.
    active = schedule.active
    if active is None:
        active = np.asarray(jnp.any(schedule.valid.reshape(num, -1), axis=-1))
    steps = np.flatnonzero(np.asarray(active))
    # The blocks' rows are cut on the host: an eager jnp gather compiles once per new shape,
    # i.e. once per client size, which costs more than the client's training on a CPU.
    host = _HostSchedule(np.asarray(data.idx), np.asarray(schedule.positions),
                         np.asarray(schedule.valid), np.asarray(schedule.ids()))
    lp = _start(carry, num, stop is not None)
    ran = 0
    for start in range(0, len(steps), block):
        chosen = steps[start : start + block]
        rows = _block_rows(host, chosen, block)
        lp = _block(canonical(step_fn), canonical(stop), lp, consts, data.x, data.y, rows, key,
                    jnp.asarray(len(chosen), jnp.int32), stop is not None)
        ran += len(chosen)
        if stop is not None and bool(lp.stopped):  # the host check, once per block
            break
    return _finish(lp, ran, stop is not None)


#: (code, captured values) -> the first function object seen with them (strong references:
#: the captured objects stay alive, so an ``id`` in a key can never be reused by another).
_CANONICAL: dict[Any, Callable] = {}
_CANONICAL_MAX = 1024
_CANONICAL_LOCK = threading.Lock()


def canonical(fn: Callable | None) -> Callable | None:
    """The function object the eager step loop compiles for ``fn``: the first one seen with
    ``fn``'s code, defaults and captured values (recursively through captured functions,
    tuples and hashable values; any other object by identity). So a step function created
    anew per client or per round (``sgd_step(model, optax.sgd(lr))`` in a client update)
    reuses one compilation, and two that differ in any captured value never share one. This is
    how the engine, not a cache in each algorithm, keeps the ``sequential`` path from
    compiling every round."""
    if fn is None:
        return None
    try:
        key = _fn_key(fn, set())
    except _Unkeyable:
        return fn
    with _CANONICAL_LOCK:  # the sequential strategy's device lanes are host threads
        found = _CANONICAL.get(key)
        if found is None:
            if len(_CANONICAL) >= _CANONICAL_MAX:  # the oldest goes (a hit's objects live)
                del _CANONICAL[next(iter(_CANONICAL))]
            _CANONICAL[key] = found = fn
    return found


class _Unkeyable(Exception):
    pass


def _fn_key(fn: Any, seen: set[int]) -> Any:
    if not isinstance(fn, types.FunctionType):  # a callable object, a jitted function, ...
        return _value_key(fn, seen)
    code = fn.__code__
    if id(fn) in seen:  # a recursive closure
        raise _Unkeyable
    seen = seen | {id(fn)}
    cells = tuple(_value_key(_contents(c), seen) for c in (fn.__closure__ or ()))
    return ("fn", code, id(fn.__globals__), _value_key(fn.__defaults__, seen),
            _value_key(fn.__kwdefaults__ and tuple(sorted(fn.__kwdefaults__.items())), seen),
            cells)


_EMPTY = object()  # an unfilled cell (a name assigned after the function was made)


def _contents(cell) -> Any:
    try:
        return cell.cell_contents
    except ValueError:
        return _EMPTY


def _value_key(v: Any, seen: set[int]) -> Any:
    if isinstance(v, types.FunctionType):
        return _fn_key(v, seen)
    if isinstance(v, types.MethodType):
        return ("method", _value_key(v.__func__, seen), _value_key(v.__self__, seen))
    if isinstance(v, functools.partial):
        return ("partial", _value_key(v.func, seen), _value_key(v.args, seen),
                _value_key(tuple(sorted(v.keywords.items())), seen))
    if type(v) is tuple or (isinstance(v, tuple) and hasattr(v, "_fields")):
        return (type(v), tuple(_value_key(e, seen) for e in v))
    try:
        hash(v)
    except TypeError:  # arrays, lists, dicts: the object itself, kept alive by _CANONICAL
        return ("id", id(v))
    return (type(v), v)  # hashable: equal values (frozen configs, numbers, modules) match


class _BlockRows(NamedTuple):
    """One eager block: pool indices ``idx [block·…]`` of its steps' slots (``positions`` of
    the block-local schedule index into it), their validity and the steps' own ids."""

    idx: jax.Array
    valid: jax.Array
    step_ids: jax.Array


class _HostSchedule(NamedTuple):
    """A client's index row and schedule as NumPy arrays (the eager path's host copy)."""

    idx: np.ndarray
    positions: np.ndarray
    valid: np.ndarray
    ids: np.ndarray


def _block_rows(host: _HostSchedule, chosen: np.ndarray, block: int) -> _BlockRows:
    """The rows of schedule steps ``chosen`` (padded with its last step to ``block``: the
    padding is never run), gathered in NumPy: the shapes that reach the device are fixed."""
    sel = np.pad(chosen, (0, block - len(chosen)), mode="edge")
    pos = host.positions[sel]
    return _BlockRows(
        jnp.asarray(host.idx[pos].reshape(-1), jnp.int32),
        jnp.asarray(host.valid[sel]),
        jnp.asarray(host.ids[sel], jnp.int32),
    )


class _Pool(NamedTuple):
    """What ``gather_batch`` reads: an index row into the pool ``x, y``."""

    idx: jax.Array
    x: jax.Array
    y: jax.Array


@functools.partial(jax.jit, static_argnames=("step_fn", "stop", "masked"))
def _block(step_fn: StepFn, stop, lp: _Loop, consts, x, y, rows: _BlockRows, key, size,
           masked):
    """Steps 0..size−1 of one block (fewer when ``stop`` fires): a ``while_loop`` with a
    traced bound over fixed-shape rows (one compilation for all blocks and clients)."""
    shape = rows.valid.shape
    local = Schedule(jnp.arange(rows.idx.shape[0], dtype=jnp.int32).reshape(shape), rows.valid,
                     None, rows.step_ids)
    body = _body(step_fn, stop, consts, _Pool(rows.idx, x, y), local, key, masked)
    s0 = lp.s
    lp = jax.lax.while_loop(lambda c: (c.s < size) & ~c.stopped, body,
                            lp._replace(s=jnp.zeros((), jnp.int32)))
    return lp._replace(s=s0 + lp.s)


def masked_cross_entropy(
    model, params: PyTree, batch: Batch, key: jax.Array | None = None, train: bool = False
) -> jax.Array:
    """ℓ(θ; b): mean softmax cross-entropy over the *valid* examples of the batch (§1.1)."""
    logits = model.apply(params, batch.x, train=train, key=key)
    ce = optax.softmax_cross_entropy_with_integer_labels(logits.astype(jnp.float32), batch.y)
    w = batch.valid.astype(jnp.float32)
    return jnp.sum(ce * w) / jnp.maximum(jnp.sum(w), 1.0)


def sgd_step(
    model, tx: optax.GradientTransformation, post_update: Callable | None = None
) -> StepFn:
    """The standard optax step on one batch, optionally followed by ``post_update``.

    carry = (θ, optimizer state). ``θ⁺ = θ + tx.update(∇ℓ(θ; b))``; then, if given,
    ``θ⁺ ← post_update(θ⁺, θ, consts)`` (e.g. FEDORA's pull toward ŵ evaluated at θ).
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
