"""Per-FedAvg: first-order (FO) and Hessian-free (HF) MAML-style federated averaging.

Fallah, Mokhtari, Ozdaglar, "Personalized Federated Learning with Theoretical Guarantees: A
Model-Agnostic Meta-Learning Approach", NeurIPS 2020, arXiv:2002.07948. ALGORITHMS.md §4.

The shared w is trained so that ONE gradient step on a client's own data gives a good personal
model: client k's meta-objective is F_k(w) = f_k(w − α∇f_k(w)). Clients are stateless; the
server averages the clients' final meta-iterates θ_τ (uniformly by default). Not to be confused
with *Personalized FedAvg* (Jiang et al. 2019, ``personalized_fedavg.py``: FedAvg then Reptile).

Where the reference codes differ (not copied): the outer step is applied to the PRE-inner
weights θ (an old PFLlib and pFedMe's baseline apply it to w̃); personalization adapts on the
client's TRAINING data (old PFLlib used a test batch); batches come from a fresh index-based
stream every round (KT-Per once reused a stale batch).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from jaxpfl.core import (
    Algorithm,
    ClientData,
    Schedule,
    State,
    client_eval,
    client_sgd,
    epoch_schedule,
    group_steps,
    local_steps,
    masked_cross_entropy,
    stream_schedule,
    weighted_mean,
)
from jaxpfl.core.tree import tree_norm, tree_sub
from jaxpfl.errors import ConfigError

PyTree = Any
DEFAULT_META_STEPS = 4  # τ when neither meta_steps nor epochs is given (KT-Per, §4.3)


@dataclasses.dataclass(frozen=True)
class PerFedAvgConfig:
    """Hyper-parameters (ALGORITHMS.md §4.3, jaxpfl column). Give at most one of
    ``meta_steps`` / ``epochs`` (neither: τ = 4 meta-steps). α and β are ``inner_lr`` and
    ``outer_lr``: a field ``alpha`` would clash with the Dirichlet α of the data flags.

    Attributes:
      inner_lr: α >= 0, the inner (adaptation) learning rate, also the personalization one
      outer_lr: β > 0, the outer (meta) learning rate
      variant: fo (first order: θ ← θ − β v) or hf (Hessian-free: θ ← θ − β (v − α H v))
      hvp: HF only: fd (central finite difference with delta, the paper's estimator) or exact
        (forward-over-reverse Hessian-vector product)
      delta: HF fd step δ > 0
      batch_size: batch size B of each of the 2 (FO) / 3 (HF) batches of a meta-step
      meta_steps: τ meta-steps per call, on the step stream of batches of B (KT-Per's
        local_epochs); none: 4 unless --epochs is given
      epochs: epochs per call instead of meta-steps (PFLlib's counting): each epoch is a fresh
        order cut into floor(n_k / 2B) (FO) or floor(n_k / 3B) (HF) meta-steps, each reading
        one 2B (3B) slice split into consecutive batches of B (PFLlib's 2B loader split in
        halves); a client with n_k < 2B (3B) takes no step
      weighted: weight the server mean by n_k (PFLlib); off: uniform 1/M (paper, KT-Per)
      shuffle: reshuffle each epoch (--epochs only; the step stream of --meta-steps and of
        personalization is always shuffled)
      personalization_steps: P SGD steps (lr α) on the client's training stream before its
        personalized evaluation
      calls_per_round: client calls per round, each continuing from the last (PFLlib calls
        train() twice per round): τ or the epochs are multiplied by this
    """

    inner_lr: float = 1e-2
    outer_lr: float = 1e-3
    variant: str = dataclasses.field(default="hf", metadata={"choices": ("fo", "hf")})
    hvp: str = dataclasses.field(default="fd", metadata={"choices": ("fd", "exact")})
    delta: float = 1e-3
    batch_size: int = 40
    meta_steps: int | None = dataclasses.field(default=None, metadata={"exclusive": "work"})
    epochs: int | None = dataclasses.field(default=None, metadata={"exclusive": "work"})
    weighted: bool = False
    shuffle: bool = True
    personalization_steps: int = 1
    calls_per_round: int = 1

    def __post_init__(self):
        def need(ok: bool, name: str, what: str) -> None:
            if not ok:
                raise ConfigError(f"{name} must be {what}, got {getattr(self, name)!r}")

        inf = float("inf")
        need(self.variant in ("fo", "hf"), "variant", "one of: fo, hf")
        need(self.hvp in ("fd", "exact"), "hvp", "one of: fd, exact")
        need(0 <= self.inner_lr < inf, "inner_lr", ">= 0")
        need(0 < self.outer_lr < inf, "outer_lr", "> 0")
        need(0 < self.delta < inf, "delta", "> 0")
        need(self.batch_size >= 1, "batch_size", ">= 1")
        need(self.meta_steps is None or self.meta_steps >= 1, "meta_steps", ">= 1 or none")
        need(self.epochs is None or self.epochs >= 1, "epochs", ">= 1 or none")
        need(self.personalization_steps >= 0, "personalization_steps", ">= 0")
        need(self.calls_per_round >= 1, "calls_per_round", ">= 1")
        if self.meta_steps is not None and self.epochs is not None:
            raise ConfigError("give meta_steps or epochs, not both: they set the same thing")
        if not self.shuffle and self.epochs is None:
            raise ConfigError(
                "shuffle off needs epochs: the step stream of meta_steps always reshuffles"
            )

    @property
    def batches_per_step(self) -> int:
        """Batches one meta-step reads: D, D' (FO) and D'' (HF)."""
        return 2 if self.variant == "fo" else 3


class ServerState(NamedTuple):
    """Attributes: ``params`` w (the global model, written by ``server_update``); ``round``
    rounds applied so far (int32)."""

    params: PyTree
    round: jax.Array


class Message(NamedTuple):
    """Attributes: ``params`` θ_τ (the client's last meta-iterate, a pytree like w); ``n``
    n_k as float32 (used by the weighted option)."""

    params: PyTree
    n: jax.Array


def meta_schedule(config: PerFedAvgConfig, key: jax.Array, n, width: int) -> Schedule:
    """The batches of one client's round: positions ``[S, k, B]`` (k = 2 FO, 3 HF).

    ``meta_steps``: step t reads batches kt .. kt+k−1 of the step stream (§1.3, batches of B).
    ``epochs``: each epoch's permutation is cut into ⌊n/kB⌋ slices of kB (``epoch_schedule``
    with ``drop_last``), each split into k consecutive batches of B. Either way no batch
    repeats within a stream epoch, and D, D', D'' are disjoint unless they straddle one.
    """
    k, b, calls = config.batches_per_step, config.batch_size, config.calls_per_round
    if config.epochs is None:
        tau = (config.meta_steps or DEFAULT_META_STEPS) * calls
        return group_steps(stream_schedule(key, n, width, b, k * tau), k)
    s = epoch_schedule(key, n, width, k * b, config.epochs * calls, drop_last=True,
                       shuffle=config.shuffle)
    split = (s.num_steps, k, b)
    return Schedule(s.positions.reshape(split), s.valid.reshape(split), s.active, s.step_ids)


def meta_step(model, config: PerFedAvgConfig, loss: Callable = masked_cross_entropy) -> Callable:
    """One meta-step as a step function of ``local_steps``: carry = (θ, Σ ℓ(w̃; D')).

    The paper's loop ``for t in 1..τ: draw D_t, D'_t, D''_t; update θ`` is one masked step of
    the step loop over a schedule whose step t holds the k batches ``[k, B]`` (``meta_schedule``):
    a masked step (no valid example) leaves θ unchanged, so clients of any size share one
    compiled loop. Batch i is keyed ``fold_in(step key, i)`` (dropout, train mode); both fd
    evaluations use the key of D'', so they differentiate the same function.
    """
    alpha, beta, delta = config.inner_lr, config.outer_lr, config.delta
    hf, exact = config.variant == "hf", config.hvp == "exact"

    def grad(params, batch, key):
        return jax.value_and_grad(loss, argnums=1)(model, params, batch, key, True)

    def hvp(params, v, batch, key):
        """h = H(θ; D'') v, the Hessian at the pre-inner weights θ."""
        if exact:
            return jax.jvp(lambda p: grad(p, batch, key)[1], (params,), (v,))[1]
        plus = grad(jax.tree.map(lambda p, d: p + delta * d, params, v), batch, key)[1]
        minus = grad(jax.tree.map(lambda p, d: p - delta * d, params, v), batch, key)[1]
        return jax.tree.map(lambda a, c: (a - c) / (2 * delta), plus, minus)

    def step(carry, consts, batch, key):
        del consts  # unused
        theta, adapted_sum = carry
        part = [jax.tree.map(lambda a, i=i: a[i], batch) for i in range(batch.y.shape[0])]
        keys = [jax.random.fold_in(key, i) for i in range(len(part))]
        inner_loss, g = grad(theta, part[0], keys[0])
        w_tilde = jax.tree.map(lambda p, d: p - alpha * d, theta, g)  # inner step on D
        adapted_loss, v = grad(w_tilde, part[1], keys[1])  # v = ∇ℓ(w̃; D')
        direction = v
        if hf:
            h = hvp(theta, v, part[2], keys[2])
            direction = jax.tree.map(lambda a, c: a - alpha * c, v, h)
        theta = jax.tree.map(lambda p, d: p - beta * d, theta, direction)  # outer step on θ
        adapted_sum = adapted_sum + jnp.asarray(adapted_loss, adapted_sum.dtype)
        return (theta, adapted_sum), inner_loss

    return step


def per_fedavg(
    model, config: PerFedAvgConfig = PerFedAvgConfig(), *, loss: Callable = masked_cross_entropy
) -> Algorithm:
    r"""Per-FedAvg (FO or HF) on the engine's contract.

    .. math::
        \text{client } k,\ θ_0 = w,\ t = 1..τ:\quad
        w̃ &= θ_{t−1} − α ∇ℓ(θ_{t−1}; D_t),\qquad v = ∇ℓ(w̃; D'_t) \\
        \text{FO: } θ_t &= θ_{t−1} − β v \\
        \text{HF: } θ_t &= θ_{t−1} − β (v − α H(θ_{t−1}; D''_t)\, v) \\
        \text{server: } w &← Σ_{k∈S_t} p_k θ_τ^k,\quad p_k = 1/M \ (\text{or } n_k/Σ_j n_j)

    α ↔ ``inner_lr``, β ↔ ``outer_lr``, τ ↔ ``meta_steps`` (or ``epochs``), δ ↔ ``delta``; Hv by
    ``hvp='fd'``: [∇ℓ(θ+δv) − ∇ℓ(θ−δv)] / 2δ, or ``'exact'``: ``jax.jvp`` of ``jax.grad``.
    Metrics: ``train_loss`` = mean ℓ(θ_{t−1}; D_t), ``adapted_loss`` = mean ℓ(w̃; D'_t).
    If every weight of a round is zero (weighted, all sampled n_k = 0), w is kept. ``loss``:
    ℓ(model, θ, batch, key, train) -> scalar (default: the masked mean cross-entropy of §1.1;
    the tests pass a quadratic).

    >>> PerFedAvgConfig(variant="fo", epochs=1, calls_per_round=2).batches_per_step
    2
    """
    step = meta_step(model, config, loss)

    def init(key: jax.Array, params: PyTree, num_clients: int) -> State:
        del key, num_clients  # unused: stateless clients
        return State(ServerState(params, jnp.zeros((), jnp.int32)))

    def client_update(server: ServerState, client_state, data: ClientData, key: jax.Array):
        """One client (unbatched rows): θ_τ from w over its meta-step schedule."""
        schedule = meta_schedule(config, jax.random.fold_in(key, 0), data.n, data.width)
        carry = (server.params, jnp.zeros((), jnp.float32))
        (theta, adapted), stats = local_steps(
            step, carry, None, data, schedule, jax.random.fold_in(key, 1)
        )
        metrics = {
            **stats.metrics(),
            "adapted_loss": adapted / jnp.maximum(stats.steps, 1).astype(jnp.float32),
            "delta_norm": tree_norm(tree_sub(server.params, theta)),
        }
        return client_state, Message(theta, jnp.asarray(data.n, jnp.float32)), metrics

    def server_update(server: ServerState, messages: Message, ids: jax.Array,
                      mask: jax.Array) -> ServerState:
        del ids  # unused: the weights are the messages' n_k
        w = server.params
        weights = messages.n * mask if config.weighted else mask.astype(jnp.float32)
        mean = weighted_mean(messages.params, weights)
        keep = jnp.sum(weights) <= 0
        new = jax.tree.map(lambda m, old: jnp.where(keep, old, m), mean, w)
        return ServerState(new, server.round + 1)

    return Algorithm(
        f"per_fedavg_{config.variant}", init, client_update, server_update,
        global_params=lambda s: s.params, personalize=personalize(model, config, loss=loss),
    )


def personalization_step(
    model, config: PerFedAvgConfig, loss: Callable = masked_cross_entropy
) -> Callable:
    """One personalization SGD step (lr α, train mode) on ``loss`` as a step function of
    ``local_steps``: carry = (θ, optimizer state of ``client_sgd(α)``)."""
    tx = client_sgd(config.inner_lr)

    def step(carry, consts, batch, key):
        del consts  # unused
        params, opt_state = carry
        value, grads = jax.value_and_grad(loss, argnums=1)(model, params, batch, key, True)
        updates, opt_state = tx.update(grads, opt_state, params)
        return (optax.apply_updates(params, updates), opt_state), value

    return step


def personalize(
    model, config: PerFedAvgConfig, *, loss: Callable = masked_cross_entropy
) -> Callable:
    """Per-FedAvg's personalization for ONE client (map it with ``ClientEvaluator``).

    ``fn(params, data, key) -> (init Counts, pers Counts)``: counts of w on the client's test
    row, then of θ after P = ``personalization_steps`` SGD steps (lr α, train mode) on
    ``loss`` over the first P batches (size B) of the client's TRAINING step stream (its
    train row; never a test batch). ``loss``: the training loss ℓ(model, θ, batch, key,
    train) of ``per_fedavg`` (default: the masked mean cross-entropy); the counts are always
    those of §1.6. ``params`` (w) is not modified.
    """
    tx = client_sgd(config.inner_lr)
    step = personalization_step(model, config, loss)

    def fn(params: PyTree, data: ClientData, key: jax.Array):
        query = data.split("test")
        init = client_eval(model, params, query)
        if config.personalization_steps == 0:
            return init, init
        schedule = stream_schedule(jax.random.fold_in(key, 0), data.n, data.width,
                                   config.batch_size, config.personalization_steps)
        (theta, _), _ = local_steps(step, (params, tx.init(params)), None, data, schedule,
                                    jax.random.fold_in(key, 1))
        return init, client_eval(model, theta, query)

    return fn


__all__ = [
    "Message",
    "PerFedAvgConfig",
    "ServerState",
    "meta_schedule",
    "meta_step",
    "per_fedavg",
    "personalization_step",
    "personalize",
]
