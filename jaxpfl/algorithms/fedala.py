"""FedALA: adaptive local aggregation.

Zhang, Hua, Wang, Song, Xue, Ma, Guan, "FedALA: Adaptive Local Aggregation for Personalized
Federated Learning", AAAI 2023, arXiv:2212.01197. docs/algorithms.md §5; reference code: the
authors' ``ALA.py`` (TsingZ0/FedALA, TsingZ0/PFLlib ``system/utils/ALA.py``).

Every client keeps a local model θ_k. Before training it merges the received global model w
into θ_k with learned element-wise weights W_k ∈ [0, 1] on the top ``layer_idx`` tensors and
takes w outright for the lower ones (ALA); then it trains E epochs of SGD as in FedAvg.

Mapping onto the engine: ALA is the ``client_stage``, run on EVERY client right after round t's
server step with w_{t+1} and the key ``derive(root, STAGE, t, k)``. That is the reference's ALA
at the start of round t+1, and the reference's round-0 skip holds by construction (no stage
runs before round 0, when every θ_k = w_0). So the driver's evaluation after round t of each
client's θ_k (= its ALA output θ̂_k) on its test split is PFLlib's evaluation at round t+1
(of the ALA outputs, before training), and the evaluation at round 0 is w_0 everywhere.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jaxpfl.core import (
    Algorithm,
    Batch,
    ClientData,
    Schedule,
    State,
    client_eval,
    client_sgd,
    concrete,
    cond,
    epoch_schedule,
    local_steps,
    local_train,
    masked_cross_entropy,
    weighted_mean,
)
from jaxpfl.core.tree import broadcast_clients, tree_where
from jaxpfl.errors import ConfigError
from jaxpfl.models.base import leaf_at

PyTree = Any
Path = tuple[str, ...]


@dataclasses.dataclass(frozen=True)
class FedALAConfig:
    """Hyper-parameters (docs/algorithms.md §5.5, jaxpfl column).

    Attributes:
      eta: ALA weight learning rate η (>= 0; 0: W stays ones, θ̂ = w)
      rand_percent: share s (%) of the client's training data in the ALA sample, 0..100
      layer_idx: p, the number of top parameter TENSORS (not layers) ALA merges; 0 = all
      threshold: start phase: train W until the population std of the last m pass losses is
        below this (PFLlib/FedALA-repo 0.1; the paper's README 0.01)
      num_pre_loss: m, the number of pass losses in that std
      max_start_passes: cap on start-phase passes (the reference has none and may hang)
      client_lr: local SGD learning rate η_c (> 0)
      batch_size: B, for local training and for the ALA batches (>= 1)
      local_epochs: local epochs E (>= 0)
      drop_last: drop each epoch's short last batch in local training (PFLlib, FedALA-repo)
      shuffle: reshuffle local training data every epoch (PFLlib; FedALA-repo: off)
      ala_on_selected_only: run ALA only on the round's selected clients, inside
        client_update before training (cheaper; not the reference's schedule for any C: the
        ALA sample is drawn with another key, and the models evaluated after a round are the
        trained (or, unselected, stale) local models, not ALA outputs)
      eval_trained: also count each trained model's test predictions (client metrics
        trained_correct / trained_count): an extra measurement of jaxpfl's; PFLlib evaluates
        once per round, the ALA outputs before training
      cache_features: run the ALA passes on the sample's features cached at the first top
        layer (exact: the layers below are w's in every pass); off runs the full model each
        pass (the reference's computation; for tests and comparisons)
      feature_chunk: examples per compiled call when the features are cached
    """

    eta: float = 1.0
    rand_percent: int = 80
    layer_idx: int = 2
    threshold: float = 0.1
    num_pre_loss: int = 10
    max_start_passes: int = 200
    client_lr: float = 0.005
    batch_size: int = 10
    local_epochs: int = 1
    drop_last: bool = True
    shuffle: bool = True
    ala_on_selected_only: bool = False
    eval_trained: bool = dataclasses.field(default=False, metadata={"affects_results": False})
    cache_features: bool = dataclasses.field(default=True, metadata={"affects_results": False})
    feature_chunk: int = dataclasses.field(default=256, metadata={"affects_results": False})

    def __post_init__(self):
        def need(ok: bool, name: str, what: str) -> None:
            if not ok:
                raise ConfigError(f"{name} must be {what}, got {getattr(self, name)!r}")

        inf = float("inf")
        need(0 <= self.eta < inf, "eta", ">= 0")
        need(isinstance(self.rand_percent, int) and 0 <= self.rand_percent <= 100,
             "rand_percent", "an integer in [0, 100]")
        need(self.layer_idx >= 0, "layer_idx", ">= 0 (0: all tensors)")
        need(0 < self.threshold < inf, "threshold", "> 0")
        need(self.num_pre_loss >= 1, "num_pre_loss", ">= 1")
        need(self.max_start_passes >= 1, "max_start_passes", ">= 1")
        need(0 < self.client_lr < inf, "client_lr", "> 0")
        need(self.batch_size >= 1, "batch_size", ">= 1")
        need(self.local_epochs >= 0, "local_epochs", ">= 0")
        need(self.feature_chunk >= 1, "feature_chunk", ">= 1")


class ServerState(NamedTuple):
    """Attributes: ``params`` w (written by ``server_update``); ``round`` rounds so far."""

    params: PyTree
    round: jax.Array


class ClientState(NamedTuple):
    """One client's persistent state (stacked ``[K, ...]`` over all clients).

    Attributes:
      theta: θ_k, the full local model: the ALA output θ̂_k after a stage, the trained model
        after ``client_update`` (written by both).
      weights: W_k, a tuple of arrays shaped like the top tensors (``top_paths`` order), in
        [0, 1]; ones at init, which is the reference's "W = None → ones on first use".
      start: bool, True until the client's first ALA call (the start phase).
      passes: int32, weight-learning passes of the last ALA call (0: no sample).
      cap_hit: bool, the last start phase stopped at ``max_start_passes`` without converging.
    """

    theta: PyTree
    weights: tuple
    start: jax.Array
    passes: jax.Array
    cap_hit: jax.Array


class Message(NamedTuple):
    """θ_k (the trained local model) and n_k."""

    theta: PyTree
    n: jax.Array


class AlaStats(NamedTuple):
    """What one ALA call did: ``passes`` (int32), ``cap_hit`` (bool), ``loss`` (loss of the
    last batch of the last pass), ``sample_start`` r and ``sample_size`` n_s (int32)."""

    passes: jax.Array
    cap_hit: jax.Array
    loss: jax.Array
    sample_start: jax.Array
    sample_size: jax.Array


def top_paths(model, layer_idx: int) -> tuple[Path, ...]:
    """The top set T_{L−p+1}..T_L in forward order (``model.param_order``, never Flax's sorted
    order); p = 0 selects all tensors (the reference's slicing quirk)."""
    order = tuple(model.param_order)
    if layer_idx > len(order):
        raise ConfigError(f"layer_idx {layer_idx} exceeds the {len(order)} parameter tensors "
                          f"of model {model.name}")
    return order if layer_idx == 0 else order[-layer_idx:]


def _set(tree: PyTree, path: Path, value) -> PyTree:
    if not path:
        return value
    node = dict(tree)
    node[path[0]] = _set(tree[path[0]], path[1:], value)
    return node


def merge(w: PyTree, theta_top: tuple, weights: tuple, paths: tuple[Path, ...]) -> PyTree:
    """θ(W): top tensors θ_l + (w − θ_l) ⊙ W, every lower tensor copied from w."""
    out = w
    for path, th, wt in zip(paths, theta_top, weights):
        out = _set(out, path, th + (leaf_at(w, path) - th) * wt)
    return out


def ala_schedule(key: jax.Array, n, width: int, rand_percent: int, batch_size: int,
                 passes: int) -> tuple[Schedule, jax.Array, jax.Array]:
    """The weight-learning sample as a schedule of ``passes`` identical passes.

    n_s = ⌊rand_percent·n/100⌋ (integer arithmetic), r ~ UniformInt{0..n−n_s} from
    ``fold_in(key, 0)``; the sample is the stored training order [r : r+n_s] (contiguous, not
    shuffled), cut into consecutive batches of B (the last may be short). Every pass reads the
    same ``positions [passes, nb, B]`` with nb = ⌈⌊rand_percent·width/100⌋ / B⌉. Returns the
    schedule, r and n_s. With n_s = 0 slot (0, 0) is marked valid so that each pass is an
    active (no-op) step the stop rule can end at once (see ``ala``).
    """
    n = jnp.asarray(n, jnp.int32)
    n_s = (rand_percent * n) // 100
    r = jax.random.randint(jax.random.fold_in(key, 0), (), 0, n - n_s + 1, dtype=jnp.int32)
    nb = max(1, -(-((rand_percent * width) // 100) // batch_size))
    j = jnp.arange(nb * batch_size, dtype=jnp.int32)
    pos = jnp.minimum(r + j, max(width - 1, 0)).reshape(nb, batch_size)
    valid = ((j < n_s) | ((j == 0) & (n_s == 0))).reshape(nb, batch_size)
    shape = (passes, nb, batch_size)
    active = None if concrete(n) is None else np.ones(passes, bool)
    sched = Schedule(jnp.broadcast_to(pos, shape), jnp.broadcast_to(valid, shape), active,
                     jnp.arange(passes, dtype=jnp.int32))
    return sched, r, n_s


def start_phase_done(losses: jax.Array, count: jax.Array, num_pre_loss: int,
                     threshold: float) -> jax.Array:
    """The reference's convergence rule after pass ``count`` (``losses[:count]`` = the pass
    losses so far): count > m and the population std of losses[count−m : count] < threshold."""
    m = num_pre_loss
    idx = jnp.clip(count - m + jnp.arange(m), 0, losses.shape[0] - 1)
    return (count > m) & (jnp.std(losses[idx]) < threshold)


class _Consts(NamedTuple):
    w: PyTree
    theta_top: tuple
    start: jax.Array
    live: jax.Array  # n_s > 0


# Jittable form of the reference's weight learning (ALA.py):
#   while True:                                  one local_steps step = one PASS; the schedule
#       for b in batches: W ← clip(W − ηG, 0, 1)   has max_start_passes identical passes, the
#       losses.append(ℓ of the last batch)         pass scans its nb batches (batches past the
#       if not start: break                        client's own are skipped by lax.cond: real
#       if len > m and std(losses[-m:]) < thr: break  work only on the eager path, masked select
# under vmap) and returns the last real batch's loss (computed before that batch's update);
# ``stop`` is the two break rules on losses[:count]; the schedule length is the pass cap. Under
# vmap the batched while_loop runs until every client stops; a stopped client is masked.
# An empty sample (n_s = 0, also padding rows) must stop at once, but a step without a valid
# example is masked and never reaches ``stop`` (the loop would run to the cap): its passes are
# active no-op steps (one dummy valid slot, ``live`` False) and ``stop`` fires on ``~live``.
def _ala_loop(model, eta: float, paths: tuple[Path, ...], m: int, threshold: float):
    def batch_update(carry, b, consts: _Consts, key):
        weights, last = carry
        x, y, valid, j = b

        def update(weights):
            def loss_fn(wt):
                params = merge(consts.w, consts.theta_top, wt, paths)
                return masked_cross_entropy(model, params, Batch(x, y, valid),
                                            jax.random.fold_in(key, j), True)

            loss, g = jax.value_and_grad(loss_fn)(weights)
            return tuple(jnp.clip(a - eta * ga, 0.0, 1.0) for a, ga in zip(weights, g)), loss

        act = jnp.any(valid) & consts.live
        new, loss = jax.lax.cond(act, update, lambda wt: (wt, jnp.zeros((), jnp.float32)),
                                 weights)
        return (new, jnp.where(act, loss, last)), None

    def step(weights, consts: _Consts, batch: Batch, key):
        nb = batch.y.shape[0]
        (weights, last), _ = jax.lax.scan(
            lambda c, b: batch_update(c, b, consts, key),
            (weights, jnp.zeros((), jnp.float32)),
            (batch.x, batch.y, batch.valid, jnp.arange(nb, dtype=jnp.int32)),
        )
        return weights, last

    def stop(weights, consts: _Consts, losses, count):
        del weights  # unused
        return ~consts.start | ~consts.live | start_phase_done(losses, count, m, threshold)

    return step, stop


@dataclasses.dataclass(frozen=True)
class _Head:
    """The model from ``layer`` on, as a model: ``apply(params, h)`` on that layer's input."""

    model: Any
    layer: str

    def apply(self, params, h, train: bool = False, key=None):
        return self.model.head(params, h, self.layer, train, key)


@functools.partial(jax.jit, static_argnums=(0, 1))
def _features(model, layer: str, w, x, chunks):
    """``features`` of w at ``layer`` for the pool rows ``chunks [c, 256]`` (jitted at module
    level: an eager ``lax.map`` over a fresh lambda would compile on every call)."""
    return jax.lax.map(lambda c: model.features(w, x[c], layer), chunks)


def _feature_rows(model, layer: str, w, data: ClientData, sched: Schedule, n_s, chunk: int):
    """The ALA sample as features: row slot j holds the input of ``layer`` under w for sample
    slot j (computed in chunks of ``chunk`` examples), and the schedule reads slots 0..nb·B−1
    in order. Called eagerly (``sequential``), only the chunks holding the n_s real slots are
    computed (one compiled chunk shape); the slots past them are zeros the schedule never
    marks valid. Traced, every chunk of the padded width is computed."""
    pos = sched.positions[0]  # [nb, B], the same in every pass
    ids = data.idx[pos.reshape(-1)]
    total = ids.shape[0]
    padded = -(-total // chunk) * chunk
    chunks = jnp.pad(ids, (0, padded - total)).reshape(-1, chunk)
    if concrete(n_s) is None:
        feats = _features(model, layer, w, data.x, chunks)
    else:
        need = max(1, -(-concrete(n_s) // chunk))
        real = [_features(model, layer, w, data.x, chunks[j : j + 1]) for j in range(need)]
        feats = jnp.concatenate(real)
        if need < chunks.shape[0]:
            feats = jnp.concatenate(
                [feats, jnp.zeros((chunks.shape[0] - need,) + feats.shape[1:], feats.dtype)])
    feats = feats.reshape((padded,) + feats.shape[2:])[:total]
    slots = jnp.arange(total, dtype=jnp.int32)
    rows = data.replace(idx=slots, n=jnp.asarray(total, jnp.int32), x=feats, y=data.y[ids])
    local = jnp.broadcast_to(slots.reshape(pos.shape), sched.positions.shape)
    return rows, Schedule(local, sched.valid, sched.active, sched.step_ids)


def ala(model, config: FedALAConfig, w: PyTree, theta: PyTree, weights: tuple, start,
        data: ClientData, key: jax.Array) -> tuple[PyTree, tuple, AlaStats]:
    """One client's adaptive local aggregation (docs/algorithms.md §5.2) → (θ̂, W, stats).

    ``w`` the global model, ``theta`` the client's local model, ``weights`` its W (top set,
    ``top_paths`` order), ``start`` its start-phase flag, ``data`` its rows (training order =
    ``data.idx[:data.n]``), ``key`` its stage key. θ̂ = θ(W) after learning: top tensors
    θ_l + (w − θ_l) ⊙ W, lower tensors w. Start phase: passes until the population std of the
    last m pass losses < threshold (at most ``max_start_passes``, then ``cap_hit``); otherwise
    one pass. n_s = 0: no learning, θ̂ = θ(W) with the current W. The caller sets start ← False.
    """
    paths = top_paths(model, config.layer_idx)
    sched, r, n_s = ala_schedule(key, data.n, data.width, config.rand_percent,
                                 config.batch_size, config.max_start_passes)
    theta_top = tuple(leaf_at(theta, p) for p in paths)
    consts = _Consts(w, theta_top, jnp.asarray(start, bool), n_s > 0)
    learner = model
    cacheable = getattr(model, "features", None) is not None and len(paths[0]) >= 3
    if config.cache_features and cacheable and not model.uses_dropout:
        # Every tensor below the top set is w's, the same in every pass: the sample's features
        # at the first top layer are computed once, and the passes run the head alone on them.
        learner = _Head(model, paths[0][1])
        data, sched = _feature_rows(model, learner.layer, w, data, sched, n_s,
                                    config.feature_chunk)
    step, stop = _ala_loop(learner, float(config.eta), paths, config.num_pre_loss,
                           float(config.threshold))
    weights, st = local_steps(step, tuple(weights), consts, data, sched,
                              jax.random.fold_in(key, 1), stop=stop)
    live = n_s > 0
    stats = AlaStats(jnp.where(live, st.steps, 0), st.cap_hit & live,
                     jnp.where(live, st.last_loss, 0.0), r, n_s)
    return merge(w, theta_top, weights, paths), weights, stats


def fedala(model, config: FedALAConfig = FedALAConfig()) -> Algorithm:
    r"""FedALA on the engine contract.

    .. math::
        \text{ALA}_k:&\quad θ(W) = \{θ_k + (w − θ_k) ⊙ W \text{ on the top } p \text{ tensors};
                     \; w \text{ below}\},\\
        &\quad W ← \mathrm{clip}(W − η\, ∇_W ℓ(θ(W); b), 0, 1)
                  = \mathrm{clip}(W − η\, ∇_{θ}ℓ ⊙ (w − θ_k), 0, 1) \text{ per batch } b,
                  \quad θ_k ← θ(W)\\
        \text{train}:&\quad θ_k ← \mathrm{SGD}_{E,B,η_c}(θ_k; D_k)\;(k ∈ S_t),\qquad
        w ← Σ_{k∈S_t} p_k θ_k,\; p_k = n_k / Σ_{j∈S_t} n_j

    η ↔ ``eta``, p ↔ ``layer_idx``, s ↔ ``rand_percent``, m ↔ ``num_pre_loss``, η_c ↔
    ``client_lr``, B ↔ ``batch_size``, E ↔ ``local_epochs``. ALA runs in the client stage on
    all K clients after the server step (the reference's ALA at the start of the next round);
    ``personal_params`` gives the ALA outputs, ``global_params`` w (logged as ``init_``).

    Deviation flags: the pass cap (``max_start_passes``, the reference may hang); a keyed slice
    start (the reference's is unseeded); an empty sample learns nothing. The last short ALA
    batch is kept, as both references' ALA loaders do (``drop_last=False``).
    ``ala_on_selected_only`` runs ALA inside ``client_update`` on S_t only (skipped in round
    0, key ``fold_in(data key, 2)``, not the stage key): the stored θ_k after a round are then
    the trained models (selected) or stale ones, so the evaluation after the round measures
    those, not ALA outputs, for any C.
    """
    paths = top_paths(model, config.layer_idx)
    tx = client_sgd(config.client_lr)

    def init(key, params: PyTree, num_clients: int) -> State:
        del key  # unused: θ_k = w_0, W_k = 1
        ones = tuple(jnp.ones_like(leaf_at(params, p)) for p in paths)
        clients = ClientState(
            broadcast_clients(params, num_clients), broadcast_clients(ones, num_clients),
            jnp.ones(num_clients, bool), jnp.zeros(num_clients, jnp.int32),
            jnp.zeros(num_clients, bool),
        )
        return State(ServerState(params, jnp.zeros((), jnp.int32)), clients)

    def adapt(w, c: ClientState, data: ClientData, key):
        theta, weights, st = ala(model, config, w, c.theta, c.weights, c.start, data, key)
        metrics = {"ala_passes": st.passes, "ala_cap_hit": st.cap_hit, "ala_loss": st.loss,
                   "ala_start_phase": jnp.asarray(c.start, bool)}
        return ClientState(theta, weights, jnp.zeros((), bool), st.passes, st.cap_hit), metrics

    def client_stage(server: ServerState, c: ClientState, data: ClientData, key):
        """ALA of w_{t+1} into every client's θ_k (prepares round t+1)."""
        return adapt(server.params, c, data, key)

    def client_update(server: ServerState, c: ClientState, data: ClientData, key):
        """E epochs of SGD from the stored θ_k (the ALA output); message (θ_k, n_k)."""
        metrics = {}
        if config.ala_on_selected_only:
            c, metrics = _after_round0(data.round, lambda c: adapt(server.params, c, data,
                                                                    jax.random.fold_in(key, 2)), c)
        sched = epoch_schedule(jax.random.fold_in(key, 0), data.n, data.width, config.batch_size,
                               config.local_epochs, drop_last=config.drop_last,
                               shuffle=config.shuffle)
        theta, stats = local_train(model, tx, c.theta, data, sched, jax.random.fold_in(key, 1))
        metrics = {**metrics, **stats.metrics()}
        if config.eval_trained:
            counts = client_eval(model, theta, data.split("test"))
            metrics.update(trained_correct=counts.correct, trained_count=counts.count)
        return c._replace(theta=theta), Message(theta, jnp.asarray(data.n, jnp.float32)), metrics

    def server_update(server: ServerState, messages: Message, ids, mask) -> ServerState:
        del ids  # unused: only the messages are aggregated
        weights = messages.n * mask
        w = weighted_mean(messages.theta, weights)
        w = tree_where(jnp.sum(weights) > 0, w, server.params)  # nobody with data: keep w
        return ServerState(w, server.round + 1)

    return Algorithm(
        "fedala", init, client_update, server_update,
        global_params=lambda s: s.params,
        client_stage=None if config.ala_on_selected_only else client_stage,
        personal_params=lambda s: s.clients.theta,
    )


def _after_round0(t, fn, c: ClientState):
    """``fn(c)`` unless t == 0 (every θ_k = w_0: the reference skips ALA), then ``(c, zeros)``."""
    def keep(c):
        z = jnp.zeros((), jnp.int32)
        return c, {"ala_passes": z, "ala_cap_hit": jnp.zeros((), bool),
                   "ala_loss": jnp.zeros((), jnp.float32), "ala_start_phase": c.start}

    return cond(t > 0, fn, keep, c)


__all__ = [
    "AlaStats",
    "ClientState",
    "FedALAConfig",
    "Message",
    "ServerState",
    "ala",
    "ala_schedule",
    "fedala",
    "merge",
    "start_phase_done",
    "top_paths",
]
