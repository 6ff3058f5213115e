"""FedAvg and FedOpt.

McMahan et al., "Communication-Efficient Learning of Deep Networks from Decentralized Data",
AISTATS 2017, arXiv:1602.05629. Hsu et al. 2019 (FedAvgM, arXiv:1909.06335); Reddi et al.,
"Adaptive Federated Optimization", ICLR 2021 (arXiv:2003.00295).
"""

from __future__ import annotations

import dataclasses
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from jaxpfl.algorithms.server_optimizers import SERVER_OPTIMIZERS, server_optimizer
from jaxpfl.core import (
    Algorithm,
    ClientData,
    Schedule,
    State,
    client_sgd,
    epoch_schedule,
    local_train,
    stream_schedule,
    weighted_mean,
)
from jaxpfl.core.tree import tree_norm, tree_sub
from jaxpfl.errors import ConfigError

PyTree = Any


@dataclasses.dataclass(frozen=True)
class FedAvgConfig:
    """Client: E epochs of SGD(η_c, μ_c, wd) with batch B, or, with ``local_steps`` = K set,
    K steps of the step stream (§1.3; Reptile(K)). Server: ``server_opt`` with η_s.

    The command lines of ``experiments/`` are generated from these fields (``jaxpfl.cli``).

    Attributes:
      local_epochs: local epochs E per round (>= 0)
      local_steps: K local steps of the step stream instead of epochs (none: epochs)
      batch_size: client batch size B (>= 1)
      client_lr: client SGD learning rate η_c (> 0)
      client_momentum: client SGD heavy-ball momentum μ_c in [0, 1) (PyTorch SGD; 0: off)
      weight_decay: client weight decay wd >= 0 (θ ← θ − η_c (∇ℓ + wd θ))
      drop_last: drop each epoch's short last batch (PFLlib drops it)
      shuffle: reshuffle each client's examples every epoch
      server_opt: server optimizer on the pseudo-gradient: fedavg (w ← Σ p_k θ_k at
        server lr 1), fedavgm (server momentum), adam, yogi, adagrad (optax; FedOpt), ...
      server_lr: server learning rate η_s (> 0)
      server_momentum: fedavgm momentum β in [0, 1)
      server_b1: adaptive server optimizers' β1 in [0, 1)
      server_b2: adaptive server optimizers' β2 in [0, 1)
      server_eps: adaptive server optimizers' ε (τ of the Reddi forms), > 0
      weighted: weight clients by n_k (off: uniform 1/M)
    """

    local_epochs: int = 1
    local_steps: int | None = None
    batch_size: int = 10
    client_lr: float = 0.01
    client_momentum: float = 0.0
    weight_decay: float = 0.0
    drop_last: bool = False
    shuffle: bool = True
    server_opt: str = dataclasses.field(
        default="fedavg", metadata={"choices": tuple(SERVER_OPTIMIZERS)}
    )
    server_lr: float = 1.0
    server_momentum: float = 0.9
    server_b1: float = 0.9
    server_b2: float = 0.99
    server_eps: float = 1e-3
    weighted: bool = True

    def __post_init__(self):

        def need(ok: bool, name: str, what: str) -> None:
            if not ok:
                raise ConfigError(f"{name} must be {what}, got {getattr(self, name)!r}")

        inf = float("inf")
        need(self.local_epochs >= 0, "local_epochs", ">= 0")
        need(self.local_steps is None or self.local_steps >= 0, "local_steps", ">= 0 or None")
        need(self.batch_size >= 1, "batch_size", ">= 1")
        need(0 < self.client_lr < inf, "client_lr", "> 0")
        need(0 <= self.client_momentum < 1, "client_momentum", "in [0, 1)")
        need(0 <= self.weight_decay < inf, "weight_decay", ">= 0")
        need(0 < self.server_lr < inf, "server_lr", "> 0")
        need(0 <= self.server_momentum < 1, "server_momentum", "in [0, 1)")
        need(0 <= self.server_b1 < 1, "server_b1", "in [0, 1)")
        need(0 <= self.server_b2 < 1, "server_b2", "in [0, 1)")
        need(0 < self.server_eps < inf, "server_eps", "> 0")
        if self.server_opt not in SERVER_OPTIMIZERS:
            raise ConfigError(
                f"unknown server optimizer '{self.server_opt}'; choose one of: "
                + ", ".join(SERVER_OPTIMIZERS)
            )


class ServerState(NamedTuple):
    """Attributes: ``params`` w (the global model); ``opt_state`` the server optimizer's
    state (across rounds); ``round`` rounds applied so far (int32)."""

    params: PyTree
    opt_state: PyTree
    round: jax.Array


class Message(NamedTuple):
    """Δ_k = w − θ_k and n_k."""

    delta: PyTree
    n: jax.Array


def client_schedule(config: FedAvgConfig, key: jax.Array, n, width: int) -> Schedule:
    """Client k's batches in a round: E epochs (or ``local_steps`` stream steps) of its n
    examples, ordered by ``fold_in(key, 0)`` with ``key = derive(root, DATA, t, k)``.

    The one definition of FedAvg's batch order: ``client_update`` uses it, and so do the
    benchmark's naive and PyTorch loops, which therefore train on the same batches.
    """
    order_key = jax.random.fold_in(key, 0)
    if config.local_steps is None:
        return epoch_schedule(order_key, n, width, config.batch_size, config.local_epochs,
                              drop_last=config.drop_last, shuffle=config.shuffle)
    return stream_schedule(order_key, n, width, config.batch_size, config.local_steps,
                           shuffle=config.shuffle)


def fedavg(model, config: FedAvgConfig = FedAvgConfig()) -> Algorithm:
    r"""FedAvg with an optax server optimizer (FedOpt).

    .. math::
        θ_k &= \mathrm{SGD}_{E,B,η_c}(w; D_k),\qquad Δ_k = w − θ_k \\
        g &= Σ_{k∈S_t} p_k Δ_k,\quad p_k = n_k / Σ_j n_j \;(\text{or } 1/M) \\
        w &← w + \mathrm{server\_opt}(g)

    ``server_opt='fedavg'`` with η_s = 1 is McMahan's w ← Σ p_k θ_k exactly. With
    ``local_steps=K``, uniform weights and a server Adam this is Reptile(K) (Jiang et al.
    2019). A client with n_k = 0 (or fewer than B examples under ``drop_last``) takes no
    step: Δ_k = 0, still weighted by n_k (PFLlib behaviour).
    """
    client_tx = client_sgd(config.client_lr, config.client_momentum, config.weight_decay)
    server_tx = server_optimizer(
        config.server_opt,
        config.server_lr,
        config.server_momentum,
        b1=config.server_b1,
        b2=config.server_b2,
        eps=config.server_eps,
    )

    def init(key: jax.Array, params: PyTree, num_clients: int) -> State:
        del key, num_clients  # unused: stateless clients
        return State(ServerState(params, server_tx.init(params), jnp.zeros((), jnp.int32)))

    def client_update(server: ServerState, client_state, data: ClientData, key: jax.Array):
        """One client: θ_k from w over its own schedule; message (Δ_k, n_k)."""
        schedule = client_schedule(config, key, data.n, data.width)
        theta, stats = local_train(
            model, client_tx, server.params, data, schedule, jax.random.fold_in(key, 1)
        )
        delta = tree_sub(server.params, theta)
        metrics = {**stats.metrics(), "delta_norm": tree_norm(delta)}
        return client_state, Message(delta, jnp.asarray(data.n, jnp.float32)), metrics

    def server_update(server: ServerState, messages: Message, ids: jax.Array,
                      mask: jax.Array) -> ServerState:
        del ids  # unused: the weights are the messages' n_k
        weights = messages.n * mask if config.weighted else mask.astype(jnp.float32)
        g = weighted_mean(messages.delta, weights)
        updates, opt_state = server_tx.update(g, server.opt_state, server.params)
        return ServerState(optax.apply_updates(server.params, updates), opt_state,
                           server.round + 1)

    return Algorithm(
        "fedavg", init, client_update, server_update, global_params=lambda s: s.params
    )


__all__ = ["FedAvgConfig", "Message", "ServerState", "client_schedule", "fedavg"]
