"""pFedMe: personalized federated learning with Moreau envelopes.

T. Dinh, Tran, Nguyen, "Personalized Federated Learning with Moreau Envelopes", NeurIPS 2020,
arXiv:2006.08848. Reference code: PFLlib's ``clientpFedMe.py`` / ``serverpFedMe.py`` and its
``pFedMeOptimizer`` (``system/flcore/optimizers/fedoptimizer.py``; TsingZ0/PFLlib).
docs/algorithms.md §13.

Every local step of client k takes one batch b. K inner gradient steps on that same batch
approximate the personal model θ ≈ argmin_θ ℓ(θ; b) + λ/2 ‖θ − w_k‖², warm-started from the
previous batch's θ; then the local copy w_k of the global model moves toward it,
w_k ← w_k − ηλ(w_k − θ). The client sends w_k; the server mixes the (n_k-weighted) average of
the w_k into the global model with β: w ← (1 − β) w + β avg. Each client's last θ is its
personal model (stacked per-client state, what ``personal_params`` evaluates); w is the global
one. The batch order is FedAvg's (``fedavg.client_schedule``, fold 0 of the client key), the
step keys fold 1, so a client trains on exactly FedAvg's batches.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from jaxpfl.algorithms.fedavg import FedAvgConfig, client_schedule
from jaxpfl.core import Algorithm, ClientData, State, local_steps, masked_cross_entropy
from jaxpfl.core.tree import broadcast_clients, tree_norm, tree_sub, weighted_mean
from jaxpfl.errors import ConfigError

PyTree = Any


@dataclasses.dataclass(frozen=True)
class PFedMeConfig:
    """pFedMe's own settings (E, B, η, drop_last, shuffle and the weighting are FedAvg's
    ``FedAvgConfig``). docs/algorithms.md §13.3 compares them with PFLlib and the paper.

    Attributes:
      personal_lr: the inner step size of the θ solve, > 0 (PFLlib's ``-lrp``
        ``p_learning_rate``, default 0.01)
      lam: λ >= 0 of λ/2 ‖θ − w_k‖² (PFLlib's ``-lam``; 15 as the paper, the original code
        and PFLlib's own default until 2022; PFLlib's shared flag now defaults to 1.0)
      inner_steps: K >= 0 inner steps per batch (PFLlib's ``-K``, default 5); 0 leaves θ at
        its start and w_k never moves
      beta: β >= 0 of w ← (1 − β) w + β avg (PFLlib's ``-bt``; 1 as the paper's default and
        PFLlib's until 2021; PFLlib's shared flag now defaults to 0.0, which freezes w)
      personal_weight_decay: the weight decay μ >= 0 inside the inner step,
        θ ← θ − η_p(∇ℓ + λ(θ − w_k) + μθ): PFLlib's ``pFedMeOptimizer`` default 0.001, which
        clientpFedMe never overrides (PFLlib's ``-mu`` flag does not reach it); not in the paper
    """

    personal_lr: float = 0.01
    lam: float = 15.0
    inner_steps: int = 5
    beta: float = 1.0
    personal_weight_decay: float = 0.001

    def __post_init__(self):
        def need(ok: bool, name: str, what: str) -> None:
            if not ok:
                raise ConfigError(f"{name} must be {what}, got {getattr(self, name)!r}")

        def number(v) -> bool:
            return isinstance(v, int | float) and not isinstance(v, bool)

        need(number(self.personal_lr) and 0 < self.personal_lr < math.inf, "personal_lr",
             "> 0 and finite")
        need(number(self.lam) and 0 <= self.lam < math.inf, "lam", ">= 0 and finite")
        need(isinstance(self.inner_steps, int) and not isinstance(self.inner_steps, bool)
             and self.inner_steps >= 0, "inner_steps", "an integer >= 0")
        need(number(self.beta) and 0 <= self.beta < math.inf, "beta", ">= 0 and finite")
        need(number(self.personal_weight_decay) and 0 <= self.personal_weight_decay < math.inf,
             "personal_weight_decay", ">= 0 and finite")


class ServerState(NamedTuple):
    """Attributes: ``params`` w, the global model (written by ``server_update``); ``round``
    rounds applied so far (int32)."""

    params: PyTree
    round: jax.Array


class PFedMeClients(NamedTuple):
    """Attributes: ``theta`` θ_k, each client's personal model, a pytree like w stacked
    ``[K, ...]`` over all K clients; ``init`` writes w_0 in every row, ``client_update`` writes
    the rows of the round's selected clients (the last inner solution of the round; w for a
    client that took no step), nothing else."""

    theta: PyTree


class Message(NamedTuple):
    """What client k sends: ``local`` w_k after its local steps (a pytree like w) and ``n``
    n_k (float32), the weight of the average."""

    local: PyTree
    n: jax.Array


def moreau_step(model, personal_lr: float, lam: float, inner_steps: int, weight_decay: float,
                lr: float):
    """One local step of pFedMe for ``local_steps``: carry (w_k, θ), no consts.

    K inner steps on the SAME batch b, from the carried θ (PFLlib never resets the model to
    w_k between batches), each θ ← θ − η_p(∇ℓ(θ; b) + λ(θ − w_k) + μθ) with the step key
    folded with i; then w_k ← w_k − ηλ(w_k − θ). The loss it reports is ℓ(θ; b) where the
    last inner gradient was taken (with K = 0: ℓ(θ; b) of the unchanged θ).

    The paper's "solve the inner problem to accuracy ν" is, as in both reference codes, a
    fixed K: a ``fori_loop`` of static length nested in the step loop's scan, so every client
    runs the same program and a masked step (no valid example) discards (w_k, θ) whole.
    """

    def step(carry, consts, batch, key):
        del consts  # unused: w_k travels in the carry
        local, theta = carry

        def inner(i, state):
            theta, _ = state
            loss, grad = jax.value_and_grad(masked_cross_entropy, argnums=1)(
                model, theta, batch, jax.random.fold_in(key, i), True)
            theta = jax.tree.map(
                lambda t, g, w: t - personal_lr * (g + lam * (t - w) + weight_decay * t),
                theta, grad, local)
            return theta, loss

        if inner_steps:
            theta, loss = jax.lax.fori_loop(0, inner_steps, inner,
                                            (theta, jnp.zeros((), jnp.float32)))
        else:  # the limiting case K = 0: θ does not move, only the loss is read
            loss = masked_cross_entropy(model, theta, batch, key, True)
        local = jax.tree.map(lambda w, t: w - lr * lam * (w - t), local, theta)
        return (local, theta), loss

    return step


def pfedme(
    model, config: PFedMeConfig = PFedMeConfig(), base: FedAvgConfig = FedAvgConfig()
) -> Algorithm:
    r"""pFedMe on the engine contract.

    .. math::
        &\text{client } k ∈ S_t:\ w_k ← w,\ θ ← w;\ \text{for every batch } b
            \text{ of FedAvg's schedule:} \\
        &\quad θ ← θ − η_p\big(∇ℓ(θ; b) + λ(θ − w_k) + μθ\big)
            \quad(K \text{ times, the same } b) \\
        &\quad w_k ← w_k − ηλ(w_k − θ) \\
        &\quad θ_k ← θ;\ \text{send } (w_k, n_k) \\
        &\text{server: } w ← (1 − β)\,w + β\,Σ_{k∈S_t} p_k w_k,\quad
            p_k = n_k / Σ_{j∈S_t} n_j\ (\text{or } 1/M)

    η_p ↔ ``config.personal_lr``, λ ↔ ``config.lam``, K ↔ ``config.inner_steps``, β ↔
    ``config.beta``, μ ↔ ``config.personal_weight_decay``; η ↔ ``base.client_lr``; E (or
    stream steps), B, ``drop_last``, ``shuffle`` and p_k (``weighted``) ↔ ``base``.

    As PFLlib: E epochs over the client's batches (``-ls``; the paper's R local rounds of a
    fresh batch each are ``base.local_steps=R``), K inner steps on one batch, θ warm-started
    from the previous batch's θ, the n_k-weighted average mixed with the previous w, only the
    selected clients train. Deviations: θ_k is the personal model that is kept and evaluated
    (PFLlib's ``personalized_params`` aliases the model's own parameters, so what it
    evaluates is the w it last received); the paper averages uniformly (``base.weighted=False``)
    and has every client train each round; no learning-rate decay (PFLlib's ``-ld``, off by
    default). docs/algorithms.md §13.4.

    ``base`` must keep FedAvg's default server (``server_opt='fedavg'``, ``server_lr=1``; the
    server step is the β mix) and client optimizer (no momentum, no weight decay: the w_k step
    is the rule above): anything else raises a ``ConfigError``.

    Metrics: ``train_loss`` (mean over the local steps of ℓ(θ; b) at the last inner step),
    ``steps``, ``compiled_steps``, ``delta_norm`` ‖w − w_k‖, ``personal_gap`` ‖θ_k − w_k‖.
    """
    if base.server_opt != "fedavg" or base.server_lr != 1.0:
        raise ConfigError(
            f"pFedMe's server step is its own β mix w ← (1 − β) w + β avg: set beta (now "
            f"{config.beta}) and leave the FedAvg server at fedavg with server_lr 1 (got "
            f"{base.server_opt!r}, server_lr {base.server_lr})")
    if base.client_momentum or base.weight_decay:
        raise ConfigError(
            f"pFedMe's local step is w_k ← w_k − ηλ(w_k − θ) with no optimizer: client_momentum "
            f"and weight_decay must be 0 (got {base.client_momentum}, {base.weight_decay}); the "
            f"inner weight decay is personal_weight_decay")
    beta = float(config.beta)
    step = moreau_step(model, float(config.personal_lr), float(config.lam),
                       config.inner_steps, float(config.personal_weight_decay),
                       float(base.client_lr))  # one object per algorithm

    def init(key: jax.Array, params: PyTree, num_clients: int) -> State:
        del key  # unused: θ_k = w_0
        return State(ServerState(params, jnp.zeros((), jnp.int32)),
                     PFedMeClients(broadcast_clients(params, num_clients)))

    def client_update(server: ServerState, c: PFedMeClients, data: ClientData, key: jax.Array):
        """One client (unbatched leaves): w_k and θ from w over FedAvg's batches; θ_k kept,
        (w_k, n_k) sent."""
        del c  # unused: the round restarts from w (PFLlib's set_parameters); θ_k is replaced
        w = server.params
        schedule = client_schedule(base, key, data.n, data.width)
        # carry (w_k, θ): a masked step (no valid example) leaves both as they are
        (local, theta), stats = local_steps(step, (w, w), None, data, schedule,
                                            jax.random.fold_in(key, 1))
        metrics = {**stats.metrics(), "delta_norm": tree_norm(tree_sub(w, local)),
                   "personal_gap": tree_norm(tree_sub(theta, local))}
        return PFedMeClients(theta), Message(local, jnp.asarray(data.n, jnp.float32)), metrics

    def server_update(server: ServerState, messages: Message, ids: jax.Array,
                      mask: jax.Array) -> ServerState:
        """w ← (1 − β) w + β Σ p_k w_k over the real rows (padding rows weigh 0)."""
        del ids  # unused: the weights are the messages' n_k (or the mask)
        weights = messages.n * mask if base.weighted else mask.astype(jnp.float32)
        avg = weighted_mean(messages.local, weights)
        # nothing to average (every sampled client has n_k = 0): w stays
        some = jnp.sum(weights) > 0
        new = jax.tree.map(lambda w, a: jnp.where(some, (1.0 - beta) * w + beta * a, w),
                           server.params, avg)
        return ServerState(new, server.round + 1)

    return Algorithm(
        "pfedme", init, client_update, server_update,
        global_params=lambda s: s.params,
        personal_params=lambda s: s.clients.theta,
    )


__all__ = ["Message", "PFedMeClients", "PFedMeConfig", "ServerState", "moreau_step", "pfedme"]
