"""FEDORA: parameter propagation with selective regularization.

Wu, Bao, Ainsworth, He, "Personalized Federated Learning with Parameter Propagation", KDD 2023,
pp. 2594–2605, doi:10.1145/3580305.3599464. Reference code: jwu4sml/FEDORA. docs/algorithms.md §6.

Each client k keeps a personal model θ_k and receives ŵ_k = Σ_j P_kj θ_j, a mixture of every
client's model weighted by a personalized-PageRank matrix P built once, before round 0, from
summaries u_k of the clients' training data. During local training client k is pulled toward
ŵ_k only when ŵ_k does at least as well as θ_k on its validation split. There is no global
model; FEDORA needs every client in every round (C = 1).

Differences from the reference code (§6.6): an exact SVD instead of ``svd_lowrank``; top-k
ties go to the lowest column index; no discarded extra training of ŵ_k; D⁻¹A is row
normalisation (the reference's docstring calls it symmetric); valloss L is the per-example
mean by default, while the reference's ``get_loss`` adds up the batch means
(``loss_reduction='sum_of_batch_means'`` is that; the two agree only when the validation split
is one batch, as in the reference's rotated setting: 64 examples, B 64).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jaxpfl.core import (
    Algorithm,
    ClientData,
    PersonalModels,
    State,
    client_eval,
    client_sgd,
    epoch_schedule,
    local_steps,
    sgd_step,
)
from jaxpfl.core.tree import broadcast_clients
from jaxpfl.errors import ConfigError

PyTree = Any

#: λ(Δ) rules: ``fedora`` = 0 if Δ < 0 else exp(Δ/2) (the paper's); ``zero`` = the local-only
#: baseline of the reference repository.
LAMBDA_RULES: dict[str, Callable[[jax.Array], jax.Array]] = {
    "fedora": lambda d: jnp.where(d < 0, 0.0, jnp.exp(d / 2)).astype(jnp.float32),
    "zero": lambda d: jnp.zeros_like(d, jnp.float32),
}
#: valloss reductions: ``mean`` (per example), ``mean_of_batch_means``, ``sum_of_batch_means``
#: (the reference's ``get_loss``: it adds up the mean of every validation batch).
LOSS_REDUCTIONS = ("mean", "mean_of_batch_means", "sum_of_batch_means")


@dataclasses.dataclass(frozen=True)
class FedoraConfig:
    """Hyper-parameters (docs/algorithms.md §6.4); the flags of ``experiments/fedora.py``.

    Attributes:
      temperature: similarity temperature T in sim_ij = exp(T |u_i · u_j|) (>= 0)
      top_k: neighbours kept per row of the similarity graph (1 <= top_k <= K - 1)
      damping: personalized-PageRank damping a in [0, 1); 0 gives P = I (no propagation)
      propagate: off: ŵ_k = θ_k (no mixing, no similarity graph; the local-only baseline)
      lambda_rule: λ from Δ = L_local − L_received: fedora (0 if Δ < 0 else exp(Δ/2)) or
        zero (λ ≡ 0, the local-only baseline)
      loss_reduction: validation loss over unshuffled batches of batch_size: mean (per
        example), mean_of_batch_means, or sum_of_batch_means (the reference's: the sum of the
        batch means; all three agree when the split is one batch)
      client_lr: client SGD learning rate η (also the pull's step size)
      client_momentum: client SGD momentum μ in [0, 1) (PyTorch SGD; the pull is not in it)
      weight_decay: client weight decay wd >= 0, inside the optimizer
      local_epochs: local epochs E per round (the reference's inner_steps)
      batch_size: client batch size B (training and the batched valloss reductions)
    """

    temperature: float = 10.0
    top_k: int = 2
    damping: float = 0.8
    propagate: bool = True
    lambda_rule: str = dataclasses.field(
        default="fedora", metadata={"choices": tuple(LAMBDA_RULES)}
    )
    loss_reduction: str = dataclasses.field(
        default="mean", metadata={"choices": LOSS_REDUCTIONS}
    )
    client_lr: float = 5e-3
    client_momentum: float = 0.9
    weight_decay: float = 5e-5
    local_epochs: int = 5
    batch_size: int = 64

    def __post_init__(self):
        def need(ok: bool, name: str, what: str) -> None:
            if not ok:
                raise ConfigError(f"{name} must be {what}, got {getattr(self, name)!r}")

        need(0 <= self.temperature < math.inf, "temperature", ">= 0 and finite")
        need(self.top_k >= 1, "top_k", ">= 1")
        need(0 <= self.damping < 1, "damping", "in [0, 1)")
        need(self.lambda_rule in LAMBDA_RULES, "lambda_rule", f"one of {tuple(LAMBDA_RULES)}")
        need(self.loss_reduction in LOSS_REDUCTIONS, "loss_reduction", f"one of {LOSS_REDUCTIONS}")
        need(0 < self.client_lr < math.inf, "client_lr", "> 0")
        need(0 <= self.client_momentum < 1, "client_momentum", "in [0, 1)")
        need(0 <= self.weight_decay < math.inf, "weight_decay", ">= 0")
        need(self.local_epochs >= 0, "local_epochs", ">= 0")
        need(self.batch_size >= 1, "batch_size", ">= 1")


class ServerState(NamedTuple):
    """Attributes: ``propagation`` P ``[K, K] float32`` (fixed, row-stochastic; I when not
    propagating); ``round`` rounds applied so far (int32). Written by ``init`` /
    ``server_update`` (the round). There is no global model."""

    propagation: jax.Array
    round: jax.Array


class ClientState(NamedTuple):
    """Stacked over all K clients.

    Attributes:
      theta: θ_k, the personal models (leaves ``[K, ...]``); written by ``client_update``.
      received: ŵ_k = Σ_j P_kj θ_j (leaves ``[K, ...]``); written by ``mix``.
      lam: ``[K] float32`` the λ_k of the client's last round (logging).
      delta: ``[K] float32`` the Δ_k = L_local − L_received of its last round (logging).
    """

    theta: PyTree
    received: PyTree
    lam: jax.Array
    delta: jax.Array


# ------------------------------------------------------------------ similarity graph (host)


def client_summary(x: np.ndarray, y: np.ndarray, num_classes: int) -> np.ndarray:
    """u_k: the unit top right-singular vector of X_k = [pixels in [0, 1] | one-hot label].

    ``x [n, ...]`` uint8 (scaled by 1/255) or floats already in [0, 1]; ``y [n]``. Computed
    exactly (float64) as the top eigenvector of the smaller Gram matrix (X Xᵀ mapped through
    Xᵀ when n < d + C), sign fixed so its largest-magnitude entry is positive. A client with
    no examples gets u = 0 (similarity exp(0) = 1 to everyone). Returns ``[d + C] float64``.
    """
    x = np.asarray(x)
    n = len(x)
    feats = x.reshape(n, int(np.prod(x.shape[1:]))).astype(np.float64)
    if x.dtype == np.uint8:
        feats /= 255.0
    rows = np.concatenate([feats, np.eye(num_classes)[np.asarray(y, np.int64)]], axis=1)
    if n == 0:
        return np.zeros(rows.shape[1])
    if n < rows.shape[1]:
        _, vecs = np.linalg.eigh(rows @ rows.T)
        u = rows.T @ vecs[:, -1]
    else:
        _, vecs = np.linalg.eigh(rows.T @ rows)
        u = vecs[:, -1]
    u = u / np.linalg.norm(u)
    return u if u[np.argmax(np.abs(u))] > 0 else -u


def client_summaries(dataset, clients: np.ndarray | None = None) -> np.ndarray:
    """``[K, d + C]``: :func:`client_summary` of every client's own TRAIN split (rows of
    clients not in ``clients`` are zero)."""
    ids = range(dataset.num_clients) if clients is None else np.asarray(clients)
    d = int(np.prod(dataset.x.shape[1:])) + dataset.num_classes
    u = np.zeros((dataset.num_clients, d))
    for k in ids:
        idx = dataset.train[int(k)]
        u[int(k)] = client_summary(dataset.x[idx], dataset.y[idx], dataset.num_classes)
    return u


def propagation_matrix(
    u: np.ndarray, temperature: float = 10.0, top_k: int = 2, damping: float = 0.8
) -> np.ndarray:
    r"""P = (1 − a)(I − a S)⁻¹ from summaries ``u [K, D]`` (float64, ``[K, K]``).

    .. math::
        sim_{ij} = e^{T |u_i · u_j|}\ (i ≠ j),\quad sim_{ii} = 0;\quad
        A = \mathrm{top}_k(sim)\ \text{per row};\quad S = D^{-1} A

    with T = ``temperature``, k = ``top_k`` (ties: lowest column index), a = ``damping``.
    Since |u_i · u_j| is sign-invariant, so is P. Requires K ≥ 2 and 1 ≤ top_k ≤ K − 1.
    """
    u = np.asarray(u, np.float64)
    k = u.shape[0]
    if k < 2:
        raise ConfigError(f"FEDORA needs at least 2 clients to propagate, got {k}")
    if not 1 <= top_k <= k - 1:
        raise ConfigError(f"top_k must be in [1, {k - 1}] (K - 1 for {k} clients), got {top_k}")
    if not 0 <= damping < 1:
        raise ConfigError(f"damping must be in [0, 1), got {damping}")
    sim = np.exp(temperature * np.abs(u @ u.T))
    np.fill_diagonal(sim, 0.0)
    keep = np.argsort(-sim, axis=1, kind="stable")[:, :top_k]  # stable: lowest index wins ties
    a_mat = np.zeros_like(sim)
    np.put_along_axis(a_mat, keep, np.take_along_axis(sim, keep, axis=1), axis=1)
    rows = a_mat.sum(axis=1, keepdims=True)
    s = np.divide(a_mat, rows, out=np.zeros_like(a_mat), where=rows > 0)
    return (1.0 - damping) * np.linalg.solve(np.eye(k) - damping * s, np.eye(k))


# ------------------------------------------------------------------------- client pieces


def validation_loss(model, params: PyTree, data: ClientData, reduction: str, batch_size: int):
    """valloss of ``params`` on ``data``'s active row (eval mode, no gradient): the per-example
    mean (``'mean'``), or over the row's unshuffled batches of ``batch_size`` the mean
    (``'mean_of_batch_means'``) or the sum (``'sum_of_batch_means'``, the reference's
    ``get_loss``) of each batch's mean. 0 for an empty row."""
    if reduction == "mean":
        c = client_eval(model, params, data)
        return c.loss_sum / jnp.maximum(c.count, 1).astype(jnp.float32)
    # Batch j = row positions [jB, (j+1)B), n_j = clip(n − jB, 0, B) valid examples; a batch
    # with n_j = 0 is no batch of the reference loader and is left out of the mean.
    means, nonempty = [], []
    for start in range(0, data.width, batch_size):
        idx = data.idx[start : start + batch_size]
        n_j = jnp.clip(data.n - start, 0, idx.shape[0])
        c = client_eval(model, params, data.with_index(idx, n_j))
        means.append(c.loss_sum / jnp.maximum(n_j, 1).astype(jnp.float32))
        nonempty.append((n_j > 0).astype(jnp.float32))
    means, nonempty = jnp.stack(means), jnp.stack(nonempty)
    total = jnp.sum(means * nonempty)
    if reduction == "sum_of_batch_means":
        return total
    return total / jnp.maximum(jnp.sum(nonempty), 1.0)


def local_step(model, config: FedoraConfig):
    """``(step_fn, tx)``: FEDORA's local step for ``local_steps`` with consts = (ŵ_k, λ).

    carry (θ, o); ``θ⁺ = θ + tx.update(∇ℓ(θ; b) + wd θ)`` (SGD-momentum, the buffer sees only
    gradients and weight decay), then the pull outside the optimizer at the pre-step weights:
    ``θ⁺ ← θ⁺ − η λ (θ − ŵ_k)``.
    """
    tx = client_sgd(config.client_lr, config.client_momentum, config.weight_decay)
    lr = config.client_lr

    def pull(new: PyTree, old: PyTree, consts) -> PyTree:
        received, lam = consts
        return jax.tree.map(lambda n, o, w: n - lr * lam * (o - w), new, old, received)

    return sgd_step(model, tx, pull), tx


# ----------------------------------------------------------------------------- the factory


def fedora(
    model,
    config: FedoraConfig = FedoraConfig(),
    summaries: np.ndarray | None = None,
    *,
    clients: np.ndarray | None = None,
) -> Algorithm:
    r"""FEDORA on the engine contract.

    .. math::
        P &= (1 − a)(I − aS)^{-1}\quad(\text{once, from } u_k;\ \texttt{propagation\_matrix})\\
        Δ_k &= L(θ_k) − L(ŵ_k),\quad λ_k = 0 \text{ if } Δ_k < 0 \text{ else } e^{Δ_k/2}
             \quad(L = \text{valloss on } D_k^{val},\ \texttt{loss\_reduction})\\
        θ &← θ − η\,\mathrm{buf}(∇ℓ(θ; b) + wd\,θ) − ηλ_k(θ − ŵ_k)
             \quad(E \text{ epochs, } B;\ \text{pull at the pre-step } θ)\\
        ŵ_i &← Σ_j P_{ij} θ_j\quad(\text{every client, after every round})

    a ↔ ``damping``, T ↔ ``temperature``, k ↔ ``top_k``, η ↔ ``client_lr``, μ ↔
    ``client_momentum``, wd ↔ ``weight_decay``, E ↔ ``local_epochs``, B ↔ ``batch_size``.

    Args:
      model: a ``jaxpfl.models.Model``.
      config: :class:`FedoraConfig`.
      summaries: ``[K, d + C]`` u_k of every client (:func:`client_summaries`); only the
        setup message crosses to the server, never raw data. Unused (may be None) when
        ``config.propagate`` is off.
      clients: the clients that train (default: all K). P is built over them; the rows and
        columns of the others (held-out clients, which never train) are those of I.

    Returns:
      An :class:`~jaxpfl.core.Algorithm` with ``global_params=None``; ``personal_params`` and
      ``finite`` give θ. The driver must sample EVERY training client every round (Phase
      ``clients_per_round=1.0``): FEDORA has no rule for stale θ_j.
    """
    rule = LAMBDA_RULES[config.lambda_rule]
    step, tx = local_step(model, config)
    prop = None
    if config.propagate:
        if summaries is None:
            raise ConfigError("FEDORA with propagation needs the clients' summaries u_k")
        u = np.asarray(summaries, np.float64)
        ids = np.arange(len(u)) if clients is None else np.asarray(clients, np.int64)
        sub = propagation_matrix(u[ids], config.temperature, config.top_k, config.damping)
        prop = np.eye(len(u))
        prop[np.ix_(ids, ids)] = sub

    def init(key: jax.Array, params: PyTree, num_clients: int) -> State:
        del key  # unused: θ_k = ŵ_k = w_0
        if prop is not None and prop.shape[0] != num_clients:
            raise ConfigError(
                f"FEDORA was built from {prop.shape[0]} client summaries but the data has "
                f"{num_clients} clients"
            )
        p = jnp.asarray(np.eye(num_clients) if prop is None else prop, jnp.float32)
        # distinct buffers for every leaf: the jitted round donates the state
        theta = broadcast_clients(params, num_clients)
        received = jax.tree.map(jnp.copy, theta)
        clients_state = ClientState(theta, received, jnp.zeros(num_clients, jnp.float32),
                                    jnp.zeros(num_clients, jnp.float32))
        return State(ServerState(p, jnp.zeros((), jnp.int32)), clients_state)

    def client_update(server: ServerState, c: ClientState, data: ClientData, key: jax.Array):
        """One client (unbatched leaves): λ from its val split, E epochs with the pull."""
        del server  # unused: ŵ_k arrived in the client's own state
        val = data.split("val")
        loss_received = validation_loss(model, c.received, val, config.loss_reduction,
                                        config.batch_size)
        loss_local = validation_loss(model, c.theta, val, config.loss_reduction,
                                     config.batch_size)
        delta = (loss_local - loss_received).astype(jnp.float32)
        # The paper's "regularize only if ŵ_k validates better" is branch-free: λ = 0 turns the
        # pull θ⁺ − ηλ(θ − ŵ_k) into the identity, so every client runs the same step.
        lam = rule(delta)
        schedule = epoch_schedule(jax.random.fold_in(key, 0), data.n, data.width,
                                  config.batch_size, config.local_epochs)
        # fresh optimizer state every round (§6.2); consts (ŵ_k, λ) feed the pull
        (theta, _), stats = local_steps(step, (c.theta, tx.init(c.theta)), (c.received, lam),
                                        data, schedule, jax.random.fold_in(key, 1))
        metrics = {**stats.metrics(), "lambda": lam, "delta": delta,
                   "pulled": (lam > 0).astype(jnp.float32), "val_loss": loss_local,
                   "received_val_loss": loss_received}
        return c._replace(theta=theta, lam=lam, delta=delta), None, metrics

    def server_update(server: ServerState, messages, ids: jax.Array,
                      mask: jax.Array) -> ServerState:
        del messages, ids, mask  # unused: the models travel through the mixing step
        return server._replace(round=server.round + 1)

    def mix(state: State) -> State:
        """ŵ ← P Θ over the client axis of ALL clients' θ: one contraction per leaf."""
        c = state.clients
        if prop is None:
            received = c.theta
        else:
            p = state.server.propagation
            received = jax.tree.map(lambda a: jnp.tensordot(p.astype(a.dtype), a, axes=1),
                                    c.theta)
        return State(state.server, c._replace(received=received))

    return Algorithm(
        "fedora", init, client_update, server_update, mix=mix,
        personal_params=lambda s: PersonalModels(pers=s.clients.theta,
                                                 received=s.clients.received),
    )


__all__ = [
    "ClientState",
    "FedoraConfig",
    "ServerState",
    "client_summaries",
    "client_summary",
    "fedora",
    "local_step",
    "propagation_matrix",
    "validation_loss",
]
