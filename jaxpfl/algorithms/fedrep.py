"""FedRep: a shared representation, averaged by the server, and a personal head per client.

Collins, Hassani, Mokhtari, Shakkottai, "Exploiting Shared Representations for Personalized
Federated Learning", ICML 2021, arXiv:2102.07078. Reference code: PFLlib's ``clientrep.py``
and ``serverrep.py`` (TsingZ0/PFLlib); the authors' ``main_fedrep.py`` (lgcollins/FedRep).
docs/algorithms.md §12.

The model's parameter tensors T_1..T_L (``Model.param_order``, forward order) are cut in two:
the head h is the last ``head_tensors`` of them (default 2: the last Dense layer's kernel and
bias, PFLlib's ``model.head`` = FedAvgCNN's ``fc``), the body φ is everything else. The server
keeps only φ; every client keeps its own h_k. A selected client first trains its head with
the received body frozen, then the body with its new head frozen, and sends the body back.

Composition with FedAvg: the body is FedAvg's model. The server state is FedAvg's
``ServerState`` over φ alone, the message FedAvg's ``Message`` (Δ_k = φ − φ_k, n_k), and the
server step FedAvg's (``fedavg``'s ``server_update``, unchanged), so ``server_opt='fedavg'``
is PFLlib's φ ← Σ p_k φ_k and any FedOpt server optimizer applies to the body.

Keys (the client key ``derive(root, DATA, t, k)``): the body epochs are FedAvg's schedule
(``fedavg.client_schedule``: fold 0 the batch order, fold 1 the step keys); the head epochs
take fold 2 (batch order) and fold 3 (step keys).
"""

from __future__ import annotations

import dataclasses
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax.traverse_util import flatten_dict, unflatten_dict

from jaxpfl.algorithms.fedavg import FedAvgConfig, Message, client_schedule, fedavg
from jaxpfl.core import (
    Algorithm,
    ClientData,
    State,
    client_sgd,
    epoch_schedule,
    local_steps,
    masked_cross_entropy,
)
from jaxpfl.core.residency import is_host_tree
from jaxpfl.core.tree import broadcast_clients, tree_norm, tree_sub
from jaxpfl.errors import ConfigError

PyTree = Any
Path = tuple[str, ...]


@dataclasses.dataclass(frozen=True)
class FedRepConfig:
    """FedRep's own settings (every other one is FedAvg's ``FedAvgConfig``: the body epochs
    E = ``local_epochs``, B, η_c, momentum, weight decay, shuffle, drop_last, the server).

    Attributes:
      head_epochs: τ_h, epochs of head training per round, before the body's (>= 0; PFLlib
        ``-pls``/``--plocal_epochs``, default 1; the authors' scripts run 10)
      head_tensors: how many of the LAST tensors of ``param_order`` form the head (>= 1; 2 =
        the last Dense layer's kernel and bias)
    """

    head_epochs: int = 1
    head_tensors: int = 2

    def __post_init__(self):
        for name, low in (("head_epochs", 0), ("head_tensors", 1)):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < low:
                raise ConfigError(f"{name} must be an integer >= {low}, got {v!r}")


class ClientState(NamedTuple):
    """Attributes: ``head`` h_k, the client's own head (the head tensors of the params pytree
    only), stacked ``[K, ...]`` over all clients; every row starts at the initial model's
    head; written by ``client_update`` of the clients sampled in a round."""

    head: PyTree


def head_paths(model, head_tensors: int = 2) -> tuple[Path, ...]:
    """The head's tensor paths: the last ``head_tensors`` entries of ``model.param_order``."""
    order = tuple(model.param_order)
    if not 1 <= head_tensors < len(order):
        raise ConfigError(f"head_tensors must be in 1..{len(order) - 1} for model "
                          f"{model.name!r} ({len(order)} tensors), got {head_tensors}")
    return order[len(order) - head_tensors:]


def split_params(params: PyTree, paths: tuple[Path, ...]) -> tuple[PyTree, PyTree]:
    """``(body, head)``: nested dicts holding the tensors at ``paths`` (head) and all the
    others (body), each with the params' nesting."""
    flat = flatten_dict(params)
    missing = [p for p in paths if p not in flat]
    if missing:
        raise ConfigError(f"head tensors {missing} are not in the params")
    head = set(paths)
    return (unflatten_dict({p: v for p, v in flat.items() if p not in head}),
            unflatten_dict({p: v for p, v in flat.items() if p in head}))


def merge_params(body: PyTree, head: PyTree) -> PyTree:
    """The full params from a body and a head (:func:`split_params`'s inverse)."""
    return unflatten_dict({**flatten_dict(body), **flatten_dict(head)})


def part_step(model, tx: optax.GradientTransformation, trains_head: bool):
    """One optax step on ONE part of the model for ``local_steps``: carry = (the trained part,
    its optimizer state), consts = the frozen part. Only the trained part's gradient is
    computed (``jax.grad`` with respect to it), so the frozen part is never touched: PyTorch's
    ``requires_grad = False`` with a separate optimizer per part, as PFLlib."""

    def step(carry, frozen, batch, key):
        part, opt_state = carry

        def loss(p):
            params = merge_params(frozen, p) if trains_head else merge_params(p, frozen)
            return masked_cross_entropy(model, params, batch, key, True)

        value, grads = jax.value_and_grad(loss)(part)
        updates, opt_state = tx.update(grads, opt_state, part)
        return (optax.apply_updates(part, updates), opt_state), value

    return step


def fedrep(
    model, config: FedRepConfig = FedRepConfig(), base: FedAvgConfig = FedAvgConfig()
) -> Algorithm:
    r"""FedRep on the engine contract.

    .. math::
        h_k &← \mathrm{SGD}_{τ_h,B,η_c}\big(h_k;\ ℓ(φ, h; b)\big)
            \quad (\text{over } h,\ φ \text{ frozen at the received body}) \\
        φ_k &← \mathrm{SGD}_{E,B,η_c}\big(φ;\ ℓ(φ, h_k; b)\big)
            \quad (\text{over } φ \text{ from } φ,\ h_k \text{ frozen}),
            \qquad Δ_k = φ − φ_k \\
        φ &← φ + \mathrm{server\_opt}\big(Σ_{k∈S_t} p_k Δ_k\big),
            \quad p_k = n_k / Σ_{j∈S_t} n_j

    τ_h ↔ ``config.head_epochs``; the head = the last ``config.head_tensors`` tensors of
    ``model.param_order``; E ↔ ``base.local_epochs`` (or ``base.local_steps`` steps of the step
    stream, as FedAvg's), B ↔ ``base.batch_size``, η_c ↔ ``base.client_lr`` for BOTH parts
    (PFLlib's two SGD optimizers share ``learning_rate``), momentum and weight decay from
    ``base`` applied to the trained part only, with a fresh optimizer state per part and
    call. ``server_opt='fedavg'`` (η_s = 1) is PFLlib's φ ← Σ p_k φ_k. Clients outside S_t
    keep their heads; a client with no step (n_k = 0, or n_k < B under ``drop_last``) keeps
    its head and sends Δ_k = 0, still weighted by n_k (PFLlib).

    Evaluation: ``personal_params(state)`` is each client's model (the server's φ with its
    own h_k), stacked ``[K, ...]``: what PFLlib evaluates, every client after it receives the
    body (after round t that is PFLlib's evaluation at the start of round t+1).
    ``global_params`` is ``None``: PFLlib evaluates no global model for FedRep, and φ with
    the initial head (the only head the server could hold; it is never trained) is not a
    model anyone uses. The driver's NaN guard therefore checks the personal models (φ and
    every h_k).

    Differences from PFLlib: none in the update; PFLlib's optional per-round learning-rate
    decay is not offered (as in FedAvg); batch orders are keyed draws (head and body epochs
    reshuffle independently, as PFLlib's one shuffling loader does every epoch).

    Args:
      model: a ``jaxpfl.models.Model`` (its ``param_order`` defines the head).
      config: :class:`FedRepConfig`.
      base: ``FedAvgConfig`` for the body epochs, the optimizers and the server.

    Returns:
      An :class:`~jaxpfl.core.Algorithm` whose client state is :class:`ClientState`.

    >>> import jax, jax.numpy as jnp
    >>> from jaxpfl.models import get_model
    >>> cnn = get_model("cnn", (28, 28, 1), 10)
    >>> head_paths(cnn)
    (('params', 'fc', 'kernel'), ('params', 'fc', 'bias'))
    >>> alg = fedrep(cnn, FedRepConfig(head_epochs=1), FedAvgConfig(client_lr=0.005))
    >>> state = alg.init(None, cnn.init(jax.random.key(0), jnp.zeros((1, 28, 28, 1), jnp.uint8)), 4)
    >>> state.clients.head["params"]["fc"]["kernel"].shape
    (4, 512, 10)
    """
    paths = head_paths(model, config.head_tensors)
    avg = fedavg(model, base)
    tx = client_sgd(base.client_lr, base.client_momentum, base.weight_decay)
    head_step = part_step(model, tx, trains_head=True)  # one object each per algorithm
    body_step = part_step(model, tx, trains_head=False)

    def init(key: jax.Array, params: PyTree, num_clients: int) -> State:
        body, head = split_params(params, paths)
        server = avg.init(key, body, num_clients).server  # FedAvg's state over the body
        # every client starts from the initial model's head (PFLlib deep-copies one model)
        return State(server, ClientState(broadcast_clients(head, num_clients)))

    def client_update(server, c: ClientState, data: ClientData, key: jax.Array):
        """One client (unbatched leaves): τ_h head epochs on the received body, then E body
        epochs on the new head; message (Δ_k = φ − φ_k, n_k)."""
        body = server.params
        order = epoch_schedule(jax.random.fold_in(key, 2), data.n, data.width,
                               base.batch_size, config.head_epochs,
                               drop_last=base.drop_last, shuffle=base.shuffle)
        (head, _), head_stats = local_steps(head_step, (c.head, tx.init(c.head)), body, data,
                                            order, jax.random.fold_in(key, 3))
        schedule = client_schedule(base, key, data.n, data.width)  # FedAvg's: folds 0 and 1
        (phi, _), body_stats = local_steps(body_step, (body, tx.init(body)), head, data,
                                           schedule, jax.random.fold_in(key, 1))
        delta = tree_sub(body, phi)
        steps = head_stats.steps + body_stats.steps
        metrics = {
            "train_loss": (head_stats.loss_sum + body_stats.loss_sum)
            / jnp.maximum(steps, 1).astype(jnp.float32),
            "steps": steps,
            "compiled_steps": head_stats.compiled + body_stats.compiled,
            "head_loss": head_stats.mean_loss,
            "body_loss": body_stats.mean_loss,
            "head_steps": head_stats.steps,
            "delta_norm": tree_norm(delta),
        }
        return ClientState(head), Message(delta, jnp.asarray(data.n, jnp.float32)), metrics

    def personal_params(state: State) -> PyTree:
        """φ with every client's h_k, ``[K, ...]``; NumPy views (no copy of φ per client)
        when the heads are host-resident, device arrays otherwise."""
        heads = state.clients.head
        k = jax.tree.leaves(heads)[0].shape[0]
        if is_host_tree(heads):
            body = jax.tree.map(lambda a: np.broadcast_to(np.asarray(a), (k,) + a.shape),
                                state.server.params)
        else:
            body = broadcast_clients(state.server.params, k)
        return merge_params(body, heads)

    return Algorithm(
        "fedrep",
        init,
        client_update,
        avg.server_update,  # FedAvg's, on the body (it never sees the heads)
        personal_params=personal_params,
    )


__all__ = [
    "ClientState",
    "FedRepConfig",
    "fedrep",
    "head_paths",
    "merge_params",
    "part_step",
    "split_params",
]
