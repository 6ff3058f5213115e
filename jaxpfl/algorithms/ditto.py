"""Ditto: a FedAvg global model plus one personal model per client, pulled toward it.

Li, Hu, Beirami, Smith, "Ditto: Fair and Robust Federated Learning Through Personalization",
ICML 2021, arXiv:2012.04221. Reference code: PFLlib's ``clientditto.py`` / ``serverditto.py``
with its ``PerturbedGradientDescent`` (TsingZ0/PFLlib). docs/algorithms.md §11.

Client k solves two problems each round it is selected. The global one is FedAvg's, unchanged
(``fedavg(model, base).client_update``: its batches, fold 0 of the client key, and its step
keys, fold 1). The personal one is min_v F_k(v) + λ/2 ‖v − w‖², run for its own epochs from the
client's stored v_k with its own batch order (fold 2) and step keys (fold 3), the pull toward
the w the client received this round. The server is FedAvg's (FedOpt's). Only v_k is new state.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, NamedTuple

import jax

from jaxpfl.algorithms.fedavg import FedAvgConfig, fedavg
from jaxpfl.algorithms.fedprox import proximal_step
from jaxpfl.core import Algorithm, ClientData, State, client_sgd, epoch_schedule, local_steps
from jaxpfl.core.tree import broadcast_clients, tree_norm, tree_sub
from jaxpfl.errors import ConfigError

PyTree = Any


@dataclasses.dataclass(frozen=True)
class DittoConfig:
    """Ditto's own settings (every other one is FedAvg's ``FedAvgConfig``); defaults are
    PFLlib's ``system/main.py`` except λ (PFLlib's 0 makes Ditto local training beside
    FedAvg; 1 is the authors' run scripts' value).

    Attributes:
      mu: λ >= 0, the pull λ/2 ‖v − w‖² of each personal model toward the received global
        model (PFLlib's ``-mu``, whose default 0 makes personal models plain local training)
      personal_epochs: epochs of personal training per selected round, >= 0 (PFLlib's
        ``-pls``/``plocal_epochs``)
      personal_lr: the personal SGD learning rate η_p > 0; none: FedAvg's ``client_lr``
        (PFLlib has no flag of its own: both optimizers use ``-lr``)
    """

    mu: float = 1.0
    personal_epochs: int = 1
    personal_lr: float | None = None

    def __post_init__(self):
        def number(v) -> bool:
            return isinstance(v, int | float) and not isinstance(v, bool)

        if not (number(self.mu) and 0 <= self.mu < math.inf):
            raise ConfigError(f"mu must be >= 0 and finite, got {self.mu!r}")
        if not (isinstance(self.personal_epochs, int) and not isinstance(self.personal_epochs, bool)
                and self.personal_epochs >= 0):
            raise ConfigError(f"personal_epochs must be an integer >= 0, got "
                              f"{self.personal_epochs!r}")
        lr = self.personal_lr
        if lr is not None and not (number(lr) and 0 < lr < math.inf):
            raise ConfigError(f"personal_lr must be > 0 and finite (or none), got {lr!r}")


class DittoClients(NamedTuple):
    """Attributes: ``personal`` v_k, each client's personal model, a pytree like w stacked
    ``[K, ...]`` over all K clients (row k is client k's); ``init`` writes w_0 in every row,
    ``client_update`` writes the rows of the round's selected clients, nothing else."""

    personal: PyTree


def ditto(
    model, config: DittoConfig = DittoConfig(), base: FedAvgConfig = FedAvgConfig()
) -> Algorithm:
    r"""Ditto on the engine contract: FedAvg for w, proximal local training for each v_k.

    .. math::
        &\text{for } k ∈ S_t \text{, with the received } w = w^t: \\
        &\quad v_k ← v_k − η_p\big(∇ℓ(v_k; b) + λ (v_k − w)\big)
            \quad\text{for every batch } b \text{ of } E_p \text{ epochs of } D_k \\
        &\quad θ_k = \mathrm{SGD}_{E,B,η_c}(w; D_k),\qquad Δ_k = w − θ_k \\
        &w ← w + \mathrm{server\_opt}\big(Σ_{k∈S_t} p_k Δ_k\big)

    λ ↔ ``config.mu``; E_p ↔ ``config.personal_epochs``; η_p ↔ ``config.personal_lr``
    (none: η_c); B, E, η_c, momentum, weight decay, ``drop_last``, ``shuffle``, the server
    optimizer and p_k ↔ ``base``. The personal batches have FedAvg's B, ``drop_last`` and
    ``shuffle``. v_k starts at w_0 and changes only in rounds where k is selected.

    As PFLlib (``serverditto.py``): only the selected clients train either model; each
    trains v_k first (``ptrain``), then w (``train``), and the pull is toward the w received
    this round. The two updates do not read each other, so the order changes nothing here.
    Deviations: the personal optimizer is plain SGD (PerturbedGradientDescent), so FedAvg's
    client momentum and weight decay apply to the global update only; no learning-rate decay
    (PFLlib's ``-ld``, off by default). The authors' code (litian96/ditto) differs from
    PFLlib: it samples clients ∝ n_k and averages the Δ_k uniformly (``base.weighted=False``
    is that average), and it counts local iterations, one personal and one global step on
    each batch; PFLlib, and jaxpfl, weight by n_k and count epochs on separate batch orders.

    Metrics: FedAvg's (``train_loss`` is the global update's loss), with ``steps`` and
    ``compiled_steps`` counting both loops; ``personal_loss`` (mean ℓ of the personal steps),
    ``personal_steps`` and ``personal_gap`` ‖v_k − w‖ (the received w) after the round.
    """
    avg = fedavg(model, base)
    lr = base.client_lr if config.personal_lr is None else config.personal_lr
    tx = client_sgd(lr)  # PFLlib's PerturbedGradientDescent is SGD on ∇ℓ + λ(v − w)
    step = proximal_step(model, tx, float(config.mu))  # one object per algorithm

    def init(key: jax.Array, params: PyTree, num_clients: int) -> State:
        server = avg.init(key, params, num_clients).server
        return State(server, DittoClients(broadcast_clients(params, num_clients)))

    def client_update(server, c: DittoClients, data: ClientData, key: jax.Array):
        """v_k from its stored value toward the received w (folds 2, 3); then FedAvg's
        update of w (folds 0, 1), whose message (Δ_k, n_k) goes to FedAvg's server step."""
        w = server.params
        order = epoch_schedule(jax.random.fold_in(key, 2), data.n, data.width, base.batch_size,
                               config.personal_epochs, drop_last=base.drop_last,
                               shuffle=base.shuffle)
        (v, _), pstats = local_steps(step, (c.personal, tx.init(c.personal)), w, data, order,
                                     jax.random.fold_in(key, 3))
        _, message, metrics = avg.client_update(server, None, data, key)
        metrics = {
            **metrics,
            "steps": metrics["steps"] + pstats.steps,
            "compiled_steps": metrics["compiled_steps"] + pstats.compiled,
            "personal_loss": pstats.mean_loss,
            "personal_steps": pstats.steps,
            "personal_gap": tree_norm(tree_sub(v, w)),
        }
        return DittoClients(v), message, metrics

    return Algorithm(
        "ditto", init, client_update, avg.server_update,
        global_params=avg.global_params,
        personal_params=lambda s: s.clients.personal,
    )


__all__ = ["DittoClients", "DittoConfig", "ditto"]
