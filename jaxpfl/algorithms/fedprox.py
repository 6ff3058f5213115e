"""FedProx: FedAvg whose clients minimise the local loss plus a proximal term.

Li, Sahu, Zaheer, Sanjabi, Talwalkar, Smith, "Federated Optimization in Heterogeneous
Networks", MLSys 2020, arXiv:1812.06127. Reference code: PFLlib's ``clientprox.py`` with its
``PerturbedGradientDescent`` (TsingZ0/PFLlib). docs/algorithms.md §10.

Client k, given the global model w of round t, approximately minimises
h_k(θ; w) = F_k(θ) + μ/2 ‖θ − w‖² by FedAvg's local SGD on h_k; the server is FedAvg's
(FedOpt's) unchanged. μ = 0 is FedAvg exactly. The file composes with FedAvg: the same config
for everything but μ, the same batch order (``fedavg.client_schedule``, fold 0 of the client
key), step keys (fold 1), message and server step; only the step's loss differs.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import jax
import jax.numpy as jnp
import optax

from jaxpfl.algorithms.fedavg import FedAvgConfig, Message, client_schedule, fedavg
from jaxpfl.core import Algorithm, ClientData, client_sgd, local_steps, masked_cross_entropy
from jaxpfl.core.tree import tree_norm, tree_sub
from jaxpfl.errors import ConfigError

PyTree = Any


@dataclasses.dataclass(frozen=True)
class FedProxConfig:
    """FedProx's own setting (every other one is FedAvg's ``FedAvgConfig``).

    Attributes:
      mu: proximal coefficient μ >= 0 of μ/2 ‖θ − w‖² (0: FedAvg)
    """

    mu: float = 0.01

    def __post_init__(self):
        if not (isinstance(self.mu, int | float) and 0 <= self.mu < math.inf):
            raise ConfigError(f"mu must be >= 0 and finite, got {self.mu!r}")


def proximal_step(model, tx: optax.GradientTransformation, mu: float):
    """One optax step on h(θ) = ℓ(θ; b) + μ/2 ‖θ − w‖² for ``local_steps``: carry (θ, opt
    state), consts = w. The gradient ∇ℓ + μ(θ − w) enters the optimizer, as in PFLlib's
    ``PerturbedGradientDescent`` (plain SGD there: θ ← θ − η(∇ℓ + μ(θ − w))). The loss it
    reports is ℓ alone (the task loss, comparable with FedAvg's)."""

    def step(carry, w, batch, key):
        params, opt_state = carry

        def h(p):
            loss = masked_cross_entropy(model, p, batch, key, True)
            prox = sum(jnp.sum(d * d) for d in jax.tree.leaves(tree_sub(p, w)))
            return loss + 0.5 * mu * prox, loss

        (_, loss), grads = jax.value_and_grad(h, has_aux=True)(params)
        updates, opt_state = tx.update(grads, opt_state, params)
        return (optax.apply_updates(params, updates), opt_state), loss

    return step


def fedprox(
    model, config: FedProxConfig = FedProxConfig(), base: FedAvgConfig = FedAvgConfig()
) -> Algorithm:
    r"""FedProx on the engine contract: FedAvg with a proximal client objective.

    .. math::
        θ_k &= \mathrm{SGD}_{E,B,η_c}\big(w;\ ℓ(θ; b) + \tfrac{μ}{2}\lVert θ − w\rVert^2\big),
            \qquad Δ_k = w − θ_k \\
        w &← w + \mathrm{server\_opt}\big(Σ_{k∈S_t} p_k Δ_k\big)

    μ ↔ ``config.mu``; E, B, η_c, momentum, weight decay, the server optimizer and the
    weights p_k ↔ ``base`` (``FedAvgConfig``). Deviations from PFLlib: none in the update;
    PFLlib's FedProx has no client momentum or weight decay (``base`` defaults to none).
    The paper's inexactness γ (solve h_k to a tolerance) is E epochs here, as in PFLlib and
    in the paper's experiments.
    """
    avg = fedavg(model, base)
    tx = client_sgd(base.client_lr, base.client_momentum, base.weight_decay)
    step = proximal_step(model, tx, float(config.mu))  # one object per algorithm

    def client_update(server, client_state, data: ClientData, key: jax.Array):
        """θ_k from w on h_k over FedAvg's own schedule; message (Δ_k, n_k) as FedAvg's."""
        w = server.params
        schedule = client_schedule(base, key, data.n, data.width)
        (theta, _), stats = local_steps(step, (w, tx.init(w)), w, data, schedule,
                                        jax.random.fold_in(key, 1))
        delta = tree_sub(w, theta)
        metrics = {**stats.metrics(), "delta_norm": tree_norm(delta)}
        return client_state, Message(delta, jnp.asarray(data.n, jnp.float32)), metrics

    return Algorithm("fedprox", avg.init, client_update, avg.server_update,
                     global_params=avg.global_params)


__all__ = ["FedProxConfig", "fedprox", "proximal_step"]
