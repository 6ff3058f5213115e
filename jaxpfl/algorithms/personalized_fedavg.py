"""Personalized FedAvg: FedAvg(E), then Reptile(K), evaluated as initial vs personalized.

Jiang, Konečný, Rush, Kannan, "Improving Federated Learning Personalization via Model Agnostic
Meta Learning", arXiv:1909.12488 (2019). docs/algorithms.md §3.

Stage 1 and stage 2 are both FedAvg (``fedavg.py``) with different clients and servers; this
file only configures them and adds the personalization evaluation (stage 3)::

    Stage 1  FedAvg(E): E epochs of SGD(η_c, B); p_k ∝ n_k; server SGD(1.0, momentum 0.9)
    Stage 2  Reptile(K): K steps of the step stream; Δ_k = w − θ_K; g = (1/M) Σ Δ_k;
             server Adam(1e-3, β = (0.9, 0.999), ε = 1e-8), fresh at the switch
    Stage 3  per evaluation client: init = metrics(w on query);
             θ ← w; P epochs of the same client SGD on support; pers = metrics(θ on query)

The ``kt_pfa`` preset (§3.5) reproduces the reference repository's single-process behaviour
that produced its README numbers: server SGD 1.0 without momentum in stage 1; in stage 2 a fresh
client Adam(1e-3, β = (0, 0.999)) per client and round for E₂ epochs, message Σ_j ∇ℓ(θ_j; b_j),
server SGD(0.01) on the uniform mean; no shuffling. We do not copy its shared Adam instance, its
double division in multi-process mode, or its unseeded support/query redraws.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import optax

from jaxpfl.algorithms.fedavg import FedAvgConfig, Message, fedavg
from jaxpfl.core import (
    Algorithm,
    ClientData,
    Counts,
    client_eval,
    client_sgd,
    epoch_schedule,
    local_steps,
    masked_cross_entropy,
    sgd_step,
)
from jaxpfl.core.tree import stack, tree_norm
from jaxpfl.errors import ConfigError

PyTree = Any


@dataclasses.dataclass(frozen=True)
class PersonalizedFedAvgConfig:
    """Hyper-parameters (docs/algorithms.md §3.3, jaxpfl column).

    Stage 1: ``rounds`` R1, ``local_epochs`` E, ``batch_size`` B, ``client_lr`` η_c,
    ``server_lr``/``server_momentum``. Stage 2: ``reptile_rounds`` R2, ``reptile_steps`` K,
    ``reptile_server_lr`` and Adam β/ε. Stage 3: ``personalization_epochs`` P with the
    training client optimizer. ``variant``: ``'paper'`` or ``'kt_pfa'`` (§3.5).

    The command line of ``experiments/perfedavg.py`` is generated from these fields.

    Attributes:
      rounds: stage-1 FedAvg(E) rounds R1
      local_epochs: stage-1 local epochs E
      batch_size: client batch size B (training, Reptile and personalization)
      client_lr: client SGD learning rate η_c (training, Reptile and personalization)
      server_lr: stage-1 server SGD learning rate
      server_momentum: stage-1 server momentum in [0, 1) (kt_pfa drops it, as the reference)
      reptile_rounds: stage-2 Reptile(K) rounds R2 (0: no stage 2, as Jiang et al. Table 1)
      reptile_steps: Reptile local steps K of the step stream
      reptile_server_lr: stage-2 server Adam learning rate
      reptile_b1: stage-2 server Adam β1 in [0, 1)
      reptile_b2: stage-2 server Adam β2 in [0, 1)
      reptile_eps: stage-2 server Adam ε (> 0)
      personalization_epochs: personalization epochs P of client SGD on each evaluation
        client's support set
      shuffle: shuffle client batches (training, Reptile stream, personalization; KT-PFA: off)
      variant: paper (docs/algorithms.md §3.1) or kt_pfa (the reference repository, §3.5)
      kt_client_lr: kt_pfa stage 2: client Adam learning rate
      kt_epochs: kt_pfa stage 2: client Adam epochs per round
      kt_server_lr: kt_pfa stage 2: server SGD learning rate
    """

    rounds: int = 500
    local_epochs: int = 10
    batch_size: int = 20
    client_lr: float = 0.02
    server_lr: float = 1.0
    server_momentum: float = 0.9
    reptile_rounds: int = 100
    reptile_steps: int = 10
    reptile_server_lr: float = 1e-3
    reptile_b1: float = 0.9
    reptile_b2: float = 0.999
    reptile_eps: float = 1e-8
    personalization_epochs: int = 5
    shuffle: bool = True
    variant: str = dataclasses.field(default="paper", metadata={"choices": ("paper", "kt_pfa")})
    # kt_pfa stage 2: client Adam for this many epochs, server SGD with this lr
    kt_client_lr: float = 1e-3
    kt_epochs: int = 10
    kt_server_lr: float = 0.01

    def __post_init__(self):

        if self.variant not in ("paper", "kt_pfa"):
            raise ConfigError(f"unknown variant '{self.variant}'; choose one of: paper, kt_pfa")
        for name in (
            "rounds",
            "local_epochs",
            "reptile_rounds",
            "reptile_steps",
            "personalization_epochs",
            "kt_epochs",
        ):
            if getattr(self, name) < 0:
                raise ConfigError(f"{name} must be >= 0, got {getattr(self, name)!r}")
        if self.batch_size < 1:
            raise ConfigError(f"batch_size must be >= 1, got {self.batch_size!r}")
        inf = float("inf")
        for name in ("client_lr", "server_lr", "reptile_server_lr", "kt_client_lr", "kt_server_lr"):
            if not 0 < getattr(self, name) < inf:
                raise ConfigError(f"{name} must be > 0, got {getattr(self, name)!r}")
        for name in ("server_momentum", "reptile_b1", "reptile_b2"):
            if not 0 <= getattr(self, name) < 1:
                raise ConfigError(f"{name} must be in [0, 1), got {getattr(self, name)!r}")
        if not 0 < self.reptile_eps < inf:
            raise ConfigError(f"reptile_eps must be > 0, got {self.reptile_eps!r}")


def fedavg_stage(model, config: PersonalizedFedAvgConfig) -> Algorithm:
    """Stage 1, FedAvg(E): weighted, server SGD(η_s, momentum β) (plain SGD for ``kt_pfa``)."""
    kt = config.variant == "kt_pfa"
    return fedavg(
        model,
        FedAvgConfig(
            local_epochs=config.local_epochs,
            batch_size=config.batch_size,
            client_lr=config.client_lr,
            shuffle=config.shuffle and not kt,
            server_opt="fedavg" if kt else "fedavgm",
            server_lr=config.server_lr,
            server_momentum=config.server_momentum,
            weighted=True,
        ),
    )


def reptile_stage(model, config: PersonalizedFedAvgConfig) -> Algorithm:
    """Stage 2, Reptile(K): FedAvg with K stream steps, uniform weights and a server Adam."""
    if config.variant == "kt_pfa":
        return _kt_pfa_reptile(model, config)
    return fedavg(
        model,
        FedAvgConfig(
            local_steps=config.reptile_steps,
            batch_size=config.batch_size,
            client_lr=config.client_lr,
            shuffle=config.shuffle,
            server_opt="adam",
            server_lr=config.reptile_server_lr,
            server_b1=config.reptile_b1,
            server_b2=config.reptile_b2,
            server_eps=config.reptile_eps,
            weighted=False,
        ),
    )


def _kt_pfa_reptile(model, config: PersonalizedFedAvgConfig) -> Algorithm:
    """kt_pfa stage 2: fresh client Adam(β1 = 0) per call for E₂ unshuffled epochs; the message
    is the sum of the raw per-step gradients; server SGD(0.01) on their uniform mean."""
    base = fedavg(
        model,
        FedAvgConfig(
            batch_size=config.batch_size,
            client_lr=config.client_lr,
            server_opt="fedavg",
            server_lr=config.kt_server_lr,
            weighted=False,
        ),
    )
    client_tx = optax.adam(config.kt_client_lr, b1=0.0, b2=0.999, eps=1e-8)
    step = _grad_sum_step(model, client_tx)

    def client_update(server, client_state, data: ClientData, key):
        schedule = epoch_schedule(
            jax.random.fold_in(key, 0),
            data.n,
            data.width,
            config.batch_size,
            config.kt_epochs,
            shuffle=False,
        )
        params = server.params
        zeros = jax.tree.map(jnp.zeros_like, params)
        (_, _, gsum), stats = local_steps(
            step,
            (params, client_tx.init(params), zeros),
            None,
            data,
            schedule,
            jax.random.fold_in(key, 1),
        )
        metrics = {**stats.metrics(), "delta_norm": tree_norm(gsum)}
        return client_state, Message(gsum, jnp.asarray(data.n, jnp.float32)), metrics

    return base._replace(name="kt_pfa_reptile", client_update=client_update)


def _grad_sum_step(model, tx: optax.GradientTransformation) -> Callable:
    def step(carry, consts, batch, key):
        del consts  # unused
        params, opt_state, gsum = carry
        loss, grads = jax.value_and_grad(masked_cross_entropy, argnums=1)(
            model, params, batch, key, True
        )
        updates, opt_state = tx.update(grads, opt_state, params)
        gsum = jax.tree.map(jnp.add, gsum, grads)
        return (optax.apply_updates(params, updates), opt_state, gsum), loss

    return step


def personalized_fedavg(model, config: PersonalizedFedAvgConfig = PersonalizedFedAvgConfig()):
    """The two training stages as ``[(name, algorithm, rounds)]`` for ``jaxpfl.run``; both
    carry stage 3 (:func:`personalize`) as their ``personalize`` evaluator."""
    tune = personalize(model, config)
    return [
        ("fedavg", fedavg_stage(model, config)._replace(personalize=tune), config.rounds),
        ("reptile", reptile_stage(model, config)._replace(personalize=tune),
         config.reptile_rounds),
    ]


def personalize(model, config: PersonalizedFedAvgConfig) -> Callable:
    """Stage 3 for ONE evaluation client (map it over clients with the engine).

    ``fn(params, data, key) -> (init Counts, pers Counts [P])``: counts of w on the query set
    (the client's test row), then of θ after each of P epochs of the training client optimizer
    (SGD η_c, B, shuffled, train mode) on the support set (its train row). ``params`` (w) is
    never modified. Map it with ``ClientEvaluator(fn, x, y, Splits.from_lists(train=support,
    test=query), strategy)``.
    """
    tx = client_sgd(config.client_lr)
    step = sgd_step(model, tx)

    def fn(params: PyTree, data: ClientData, key: jax.Array):
        support, query = data, data.split("test")
        init = client_eval(model, params, query)
        carry, curve = (params, tx.init(params)), []
        for e in range(config.personalization_epochs):
            schedule = epoch_schedule(
                jax.random.fold_in(key, 2 * e),
                support.n,
                support.width,
                config.batch_size,
                1,
                shuffle=config.shuffle,
            )
            carry, _ = local_steps(
                step, carry, None, support, schedule, jax.random.fold_in(key, 2 * e + 1)
            )
            curve.append(client_eval(model, carry[0], query))
        pers = stack(curve) if curve else jax.tree.map(lambda a: a[None], init)
        return init, Counts(*pers)

    return fn


__all__ = [
    "PersonalizedFedAvgConfig",
    "fedavg_stage",
    "personalize",
    "personalized_fedavg",
    "reptile_stage",
]
