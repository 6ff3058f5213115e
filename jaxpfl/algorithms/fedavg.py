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

from jaxpfl.core import (
    Algorithm,
    ClientData,
    State,
    client_sgd,
    epoch_schedule,
    local_train,
    stream_schedule,
    weighted_mean,
)
from jaxpfl.core.tree import tree_norm, tree_sub

PyTree = Any
SERVER_OPTIMIZERS = ("fedavg", "fedavgm", "adam", "yogi", "adagrad")


def server_optimizer(
    name: str,
    lr: float = 1.0,
    momentum: float = 0.9,
    b1: float = 0.9,
    b2: float = 0.99,
    eps: float = 1e-3,
) -> optax.GradientTransformation:
    """The server optimizer applied to the pseudo-gradient g = w − Σ p_k θ_k (§2.1).

    ``fedavg``: sgd(η_s) (η_s = 1 gives w ← Σ p_k θ_k); ``fedavgm``: sgd(η_s, momentum β);
    ``adam`` / ``yogi`` / ``adagrad``: optax's formulas (FedOpt) with lr η_s and ε = ``eps``.
    """
    table = {
        "fedavg": lambda: optax.sgd(lr),
        "fedavgm": lambda: optax.sgd(lr, momentum=momentum),
        "adam": lambda: optax.adam(lr, b1=b1, b2=b2, eps=eps),
        "yogi": lambda: optax.yogi(lr, b1=b1, b2=b2, eps=eps),
        "adagrad": lambda: optax.adagrad(lr, eps=eps),
    }
    if name not in table:
        raise ValueError(f"unknown server optimizer '{name}'; choose one of: {', '.join(table)}")
    return table[name]()


@dataclasses.dataclass(frozen=True)
class FedAvgConfig:
    """Client: E epochs of SGD(η_c, μ_c, wd) with batch B, or, with ``local_steps`` = K set,
    K steps of the step stream (§1.3; Reptile(K)). Server: ``server_opt`` with η_s."""

    local_epochs: int = 1
    local_steps: int | None = None
    batch_size: int = 10
    client_lr: float = 0.01
    client_momentum: float = 0.0
    weight_decay: float = 0.0
    drop_last: bool = False
    shuffle: bool = True
    server_opt: str = "fedavg"
    server_lr: float = 1.0
    server_momentum: float = 0.9
    server_b1: float = 0.9
    server_b2: float = 0.99
    server_eps: float = 1e-3
    weighted: bool = True

    def __post_init__(self):
        if self.local_epochs < 0 or self.batch_size < 1:
            raise ValueError("local_epochs must be >= 0 and batch_size >= 1")
        if self.local_steps is not None and self.local_steps < 0:
            raise ValueError("local_steps must be >= 0")
        if not self.client_lr > 0 or not self.server_lr > 0:
            raise ValueError("client_lr and server_lr must be > 0")
        if self.server_opt not in SERVER_OPTIMIZERS:
            raise ValueError(
                f"unknown server optimizer '{self.server_opt}'; choose one of: "
                + ", ".join(SERVER_OPTIMIZERS)
            )


class ServerState(NamedTuple):
    params: PyTree
    opt_state: PyTree
    round: jax.Array


class Message(NamedTuple):
    """Δ_k = w − θ_k and n_k."""

    delta: PyTree
    n: jax.Array


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
        order_key = jax.random.fold_in(key, 0)
        if config.local_steps is None:
            schedule = epoch_schedule(
                order_key,
                data.n,
                data.width,
                config.batch_size,
                config.local_epochs,
                drop_last=config.drop_last,
                shuffle=config.shuffle,
            )
        else:
            schedule = stream_schedule(
                order_key, data.n, data.width, config.batch_size, config.local_steps
            )
        theta, stats = local_train(
            model, client_tx, server.params, data, schedule, jax.random.fold_in(key, 1)
        )
        delta = tree_sub(server.params, theta)
        metrics = {
            "train_loss": stats.mean_loss,
            "steps": stats.steps,
            "delta_norm": tree_norm(delta),
        }
        return client_state, Message(delta, jnp.asarray(data.n, jnp.float32)), metrics

    def server_update(server: ServerState, messages: Message, mask: jax.Array) -> ServerState:
        weights = messages.n * mask if config.weighted else mask.astype(jnp.float32)
        g = weighted_mean(messages.delta, weights)
        updates, opt_state = server_tx.update(g, server.opt_state, server.params)
        return ServerState(optax.apply_updates(server.params, updates), opt_state, server.round + 1)

    return Algorithm("fedavg", init, client_update, server_update, lambda s: s.params)
