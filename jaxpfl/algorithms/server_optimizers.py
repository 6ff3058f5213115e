r"""Server optimizers of FedAvg/FedOpt (docs/algorithms.md §2.1).

The server treats the weighted mean client displacement as a gradient: it receives the
pseudo-gradient ``g = w − Σ_k p_k θ_k`` and returns optax updates ``u`` (optax's sign
convention, ``w_new = w + u``). A positive g is a descent direction: every optimizer here
moves w *down* along it.

Optax constructions (McMahan et al. 2017; Hsu et al. 2019; the FedOpt family with optax's
own formulas):

- ``fedavg``: ``optax.sgd(η)``: w ← w − η g (η = 1 gives McMahan's w ← Σ p_k θ_k).
- ``fedavgm``: ``optax.sgd(η, momentum=β)``: m ← β m + g; w ← w − η m (heavy ball).
- ``adam``: ``optax.adam(η, b1, b2, eps)``: Kingma & Ba with bias correction, ε outside √.
- ``yogi``: ``optax.yogi(η, b1, b2, eps)``. **Deviates from Zaheer et al. 2018**
  (Algorithm 2 there, as we read it: m₀ = 0, no debiasing): optax starts both accumulators at
  m₀ = v₀ = 10⁻⁶ and applies Adam's bias correction m/(1−β1ᵗ), v/(1−β2ᵗ) before
  w ← w − η m̂/(√v̂ + ε).
- ``adagrad``: ``optax.adagrad(η, eps=eps)``: v ← v + g², w ← w − η g/√(v + ε), with the
  accumulator starting at v₀ = 0.1 (optax's default) and ε *inside* the square root (not
  Duchi et al.'s g/(√v + δ)). No momentum: b1, b2 are ignored.

Reddi et al., "Adaptive Federated Optimization", ICLR 2021 (arXiv:2003.00295), Algorithm 2
(``fedadam_reddi``, ``fedyogi_reddi``, ``fedadagrad_reddi``), written with the paper's
Δ = −g (the mean client model minus the server model):

.. math::
    m &← β_1 m + (1 − β_1) Δ \\
    v &← β_2 v + (1 − β_2) Δ^2 &&\text{(FedAdam)} \\
    v &← v − (1 − β_2) Δ^2 \operatorname{sign}(v − Δ^2) &&\text{(FedYogi)} \\
    v &← v + Δ^2 &&\text{(FedAdagrad)} \\
    w &← w + η\, m / (\sqrt{v} + τ)

with m₀ = 0 and v₀ = τ², all operations elementwise. The initial value v₀ = τ² and the
absence of bias correction are our reading of the paper (docs/algorithms.md marks them as from
memory). FedAdagrad keeps the β1 momentum of Algorithm 2; β1 = 0 gives classic Adagrad with
the adaptivity τ outside the square root. Here ``eps`` of :func:`server_optimizer` is τ.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from jaxpfl.errors import ConfigError

PyTree = Any

SERVER_OPTIMIZERS: tuple[str, ...] = (
    "fedavg",
    "fedavgm",
    "adam",
    "yogi",
    "adagrad",
    "fedadam_reddi",
    "fedyogi_reddi",
    "fedadagrad_reddi",
)


class ReddiState(NamedTuple):
    """State of the Reddi et al. server optimizers (one per-leaf pair, like the params).

    Fields:
        m: first moment, the β1-moving average of Δ = −g; starts at 0.
        v: second-moment estimate (FedAdam/FedYogi) or running sum of Δ² (FedAdagrad);
            starts at τ².
        count: number of updates applied so far (int32 scalar), for inspection only: the
            update rule does not use it (no bias correction).
    """

    m: PyTree
    v: PyTree
    count: jax.Array


_POSITIVE, _NONNEGATIVE, _DECAY = "a finite number > 0", "a finite number >= 0", "in [0, 1)"


def _validate(*checks: tuple[str, Any, str]) -> None:
    """Raise one ValueError naming every bad ``(name, value, rule)``; rules are the constants."""
    bad = []
    for name, value, rule in checks:
        try:
            x = float(value)
        except (TypeError, ValueError):
            ok = False
        else:
            if rule == _DECAY:
                ok = 0.0 <= x < 1.0
            else:
                ok = math.isfinite(x) and (x > 0 if rule == _POSITIVE else x >= 0)
        if not ok:
            bad.append(f"{name} must be {rule}, got {value!r}")
    if bad:
        raise ConfigError("; ".join(bad))


def _reddi(
    lr: float,
    b1: float,
    tau: float,
    second_moment: Callable[[jax.Array, jax.Array], jax.Array],
) -> optax.GradientTransformation:
    """Algorithm 2 of Reddi et al. with ``v ← second_moment(v, Δ²)``."""
    lr, b1, tau = float(lr), float(b1), float(tau)  # Python floats: weakly typed in JAX

    def init(params: PyTree) -> ReddiState:
        m = jax.tree.map(jnp.zeros_like, params)
        v = jax.tree.map(lambda p: jnp.full_like(p, tau * tau), params)
        return ReddiState(m, v, jnp.zeros((), jnp.int32))

    def update(
        updates: PyTree, state: ReddiState, params: PyTree | None = None
    ) -> tuple[PyTree, ReddiState]:
        del params  # the rule needs only the pseudo-gradient
        delta = jax.tree.map(jnp.negative, updates)
        m = jax.tree.map(lambda m, d: b1 * m + (1 - b1) * d, state.m, delta)
        v = jax.tree.map(lambda v, d: second_moment(v, d * d), state.v, delta)
        out = jax.tree.map(lambda m, v: lr * m / (jnp.sqrt(v) + tau), m, v)
        return out, ReddiState(m, v, state.count + 1)

    return optax.GradientTransformation(init, update)


def reddi_adam(
    lr: float, b1: float = 0.9, b2: float = 0.99, tau: float = 1e-3
) -> optax.GradientTransformation:
    """FedAdam (Reddi et al. 2021, Alg. 2): v ← β2 v + (1−β2) Δ²; w ← w + η m/(√v + τ).

    m₀ = 0, v₀ = τ², no bias correction (see the module docstring). ``update`` takes the
    pseudo-gradient g = −Δ and returns optax updates (w_new = w + updates).
    """
    _validate(
        ("lr", lr, _POSITIVE), ("b1", b1, _DECAY), ("b2", b2, _DECAY), ("tau", tau, _POSITIVE)
    )
    b2 = float(b2)
    return _reddi(lr, b1, tau, lambda v, d2: b2 * v + (1 - b2) * d2)


def reddi_yogi(
    lr: float, b1: float = 0.9, b2: float = 0.99, tau: float = 1e-3
) -> optax.GradientTransformation:
    """FedYogi (Reddi et al. 2021, Alg. 2): v ← v − (1−β2) Δ² sign(v − Δ²); w ← w + η m/(√v + τ).

    m₀ = 0, v₀ = τ², no bias correction (see the module docstring). v stays > 0: when it
    decreases (v > Δ²) it loses (1−β2) Δ² < (1−β2) v.
    """
    _validate(
        ("lr", lr, _POSITIVE), ("b1", b1, _DECAY), ("b2", b2, _DECAY), ("tau", tau, _POSITIVE)
    )
    b2 = float(b2)
    return _reddi(lr, b1, tau, lambda v, d2: v - (1 - b2) * d2 * jnp.sign(v - d2))


def reddi_adagrad(lr: float, tau: float = 1e-3, b1: float = 0.9) -> optax.GradientTransformation:
    """FedAdagrad (Reddi et al. 2021, Alg. 2): v ← v + Δ²; w ← w + η m/(√v + τ).

    m ← β1 m + (1−β1) Δ as in Algorithm 2 (β1 = 0: classic Adagrad, τ outside the root);
    m₀ = 0, v₀ = τ².
    """
    _validate(("lr", lr, _POSITIVE), ("b1", b1, _DECAY), ("tau", tau, _POSITIVE))
    return _reddi(lr, b1, tau, lambda v, d2: v + d2)


def server_optimizer(
    name: str,
    lr: float = 1.0,
    momentum: float = 0.9,
    b1: float = 0.9,
    b2: float = 0.99,
    eps: float = 1e-3,
) -> optax.GradientTransformation:
    """The server optimizer ``name`` (one of :data:`SERVER_OPTIMIZERS`), applied to g = w − θ̄.

    ``lr`` is η_s; ``momentum`` is β of ``fedavgm``; ``b1``/``b2`` the decays of the adaptive
    forms (``adagrad`` ignores both, ``fedadagrad_reddi`` uses only b1); ``eps`` is optax's ε
    for ``adam``/``yogi``/``adagrad`` and τ for the ``*_reddi`` forms. Only the arguments the
    chosen optimizer uses are validated; a bad one raises a ValueError naming it.
    """
    if name not in SERVER_OPTIMIZERS:
        raise ConfigError(
            f"unknown server optimizer {name!r}; choose one of: {', '.join(SERVER_OPTIMIZERS)}"
        )
    lr_rule, b1_rule, b2_rule = ("lr", lr, _POSITIVE), ("b1", b1, _DECAY), ("b2", b2, _DECAY)
    if name == "fedavg":
        _validate(lr_rule)
        return optax.sgd(lr)
    if name == "fedavgm":
        _validate(lr_rule, ("momentum", momentum, _DECAY))
        return optax.sgd(lr, momentum=momentum)
    if name in ("adam", "yogi"):
        _validate(lr_rule, b1_rule, b2_rule, ("eps", eps, _NONNEGATIVE))
        return (optax.adam if name == "adam" else optax.yogi)(lr, b1=b1, b2=b2, eps=eps)
    if name == "adagrad":
        _validate(lr_rule, ("eps", eps, _NONNEGATIVE))
        return optax.adagrad(lr, eps=eps)
    tau_rule = ("eps (tau)", eps, _POSITIVE)  # checked here so the message names our argument
    if name == "fedadagrad_reddi":
        _validate(lr_rule, b1_rule, tau_rule)
        return reddi_adagrad(lr, tau=eps, b1=b1)
    _validate(lr_rule, b1_rule, b2_rule, tau_rule)
    factory = reddi_adam if name == "fedadam_reddi" else reddi_yogi
    return factory(lr, b1=b1, b2=b2, tau=eps)
