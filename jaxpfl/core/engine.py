"""The engine: map one-client functions over clients, and the federated round built on it.

An algorithm supplies functions written for ONE client; ``map_clients`` runs them side by side
with an interchangeable strategy, and ``make_round`` builds the round::

    gather client state ─▶ map(client_update) ─▶ scatter client state ─▶ server_update

Strategies (results agree to float tolerance; none changes what is computed):
  ``vmap``       one jitted round, clients batched with ``jax.vmap`` (accelerators).
  ``chunked``    one jitted round, ``lax.map`` over clients in chunks of ``chunk_size``
                 (vmap inside a chunk) to bound memory.
  ``sequential`` a Python loop over clients, each run eagerly with its step loop dispatched in
                 jitted blocks (the reference path; the fastest on small CPUs).
  ``sharded``    one jitted round with the client axis on a ``Mesh`` axis named ``clients``
                 (``jax.shard_map`` over devices, vmap within a device); the weighted mean of
                 the messages becomes an all-reduce.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from jaxpfl.core import keys as K
from jaxpfl.core.train import ClientData, ExecOptions
from jaxpfl.core.tree import gather_rows, stack, unstack

PyTree = Any
STRATEGIES = ("vmap", "chunked", "sequential", "sharded")


class State(NamedTuple):
    """Algorithm state: ``server`` (shared) and ``clients`` (stacked ``[K, ...]`` or None)."""

    server: PyTree
    clients: PyTree = None


class Algorithm(NamedTuple):
    """A federated algorithm as a small named tuple of pure functions.

    init(key, params, num_clients) -> State
    client_update(server, client_state, data: ClientData, key) -> (client_state, message, metrics)
    server_update(server, messages [M, ...], mask [M]) -> server
    global_params(server) -> params of the shared model (for evaluation and phase switches)
    """

    name: str
    init: Callable
    client_update: Callable
    server_update: Callable
    global_params: Callable


@dataclasses.dataclass(frozen=True)
class Strategy:
    """How clients are mapped; see the module docstring. ``devices`` for ``sharded``."""

    name: str = "vmap"
    chunk_size: int = 8
    exec: ExecOptions = ExecOptions()
    num_devices: int | None = None

    def __post_init__(self):
        if self.name not in STRATEGIES:
            raise ValueError(
                f"unknown strategy '{self.name}'; choose one of: {', '.join(STRATEGIES)}"
            )
        if self.chunk_size < 1:
            raise ValueError("chunk_size must be >= 1")

    @property
    def jitted(self) -> bool:
        return self.name != "sequential"

    def mesh(self) -> Mesh:
        devs = jax.devices()[: self.num_devices or len(jax.devices())]
        return Mesh(devs, ("clients",))

    @property
    def client_multiple(self) -> int:
        """The client count per round must be a multiple of this (padding fills the rest)."""
        if self.name == "sharded":
            return self.num_devices or len(jax.devices())
        return 1


def default_strategy(backend: str | None = None) -> Strategy:
    """Fastest measured strategy per backend (experiments/bench_engine.py)."""
    backend = backend or jax.default_backend()
    if backend == "cpu":
        return Strategy("sequential", exec=ExecOptions(unroll=1, step_block=1))
    return Strategy("vmap", exec=ExecOptions(unroll=1, step_block=None))


def map_clients(fn: Callable, shared: PyTree, per_client: PyTree, strategy: Strategy) -> PyTree:
    """``stack([fn(shared, per_client[i]) for i in range(M)])`` with the chosen strategy."""
    name = strategy.name
    if name == "vmap":
        return jax.vmap(fn, in_axes=(None, 0))(shared, per_client)
    if name == "chunked":
        return jax.lax.map(lambda pc: fn(shared, pc), per_client, batch_size=strategy.chunk_size)
    if name == "sequential":
        m = jax.tree.leaves(per_client)[0].shape[0]
        return stack([fn(shared, pc) for pc in unstack(per_client, m)])
    if name == "sharded":
        mapped = jax.shard_map(
            jax.vmap(fn, in_axes=(None, 0)),
            mesh=strategy.mesh(),
            in_specs=(P(), P("clients")),
            out_specs=P("clients"),
            check_vma=False,  # the client loop's carry starts replicated and becomes per-client
        )
        return mapped(shared, per_client)
    raise ValueError(f"unknown strategy '{name}'")


def mapped(fn: Callable, strategy: Strategy) -> Callable:
    """``(shared, per_client) -> map_clients(fn, ...)``, jitted unless ``sequential``."""

    def call(shared, per_client):
        return map_clients(fn, shared, per_client, strategy)

    return jax.jit(call) if strategy.jitted else call


class RoundInputs(NamedTuple):
    """Per-round inputs: client ids ``[M]`` (padding rows use id = num_clients), their padded
    training index rows ``[M, W]``, sizes ``[M]``, and ``mask [M]`` (1 real, 0 padding)."""

    ids: jax.Array
    idx: jax.Array
    n: jax.Array
    mask: jax.Array


class _PerClient(NamedTuple):
    idx: jax.Array
    n: jax.Array
    state: PyTree
    key: jax.Array


def make_round(algorithm: Algorithm, strategy: Strategy) -> Callable:
    """``round(state, x, y, inputs, round_index, root_key) -> (state, client_metrics)``.

    Client k in round t draws its data order and dropout from ``derive(root, DATA, t, k)``, so
    results do not depend on client order, strategy or device count. Jitted (state donated)
    unless the strategy is ``sequential``.
    """

    server_update = algorithm.server_update if strategy.jitted else jax.jit(algorithm.server_update)

    def client_fn(shared, pc: _PerClient):
        server, x, y = shared
        data = ClientData(pc.idx, pc.n, x, y, exec=strategy.exec)
        return algorithm.client_update(server, pc.state, data, pc.key)

    def round_fn(state: State, x, y, inputs: RoundInputs, t, root):
        keys = jax.vmap(lambda i: K.derive(root, K.DATA, t, i))(inputs.ids)
        cstate = None if state.clients is None else gather_rows(state.clients, inputs.ids)
        per_client = _PerClient(inputs.idx, inputs.n, cstate, keys)
        new_cstate, messages, metrics = map_clients(
            client_fn, (state.server, x, y), per_client, strategy
        )
        clients = state.clients
        if clients is not None:
            ids = jnp.where(inputs.mask > 0, inputs.ids, jnp.iinfo(jnp.int32).max)
            clients = jax.tree.map(lambda a, v: a.at[ids].set(v, mode="drop"), clients, new_cstate)
        server = server_update(state.server, messages, inputs.mask)
        return State(server, clients), metrics

    return jax.jit(round_fn, donate_argnums=(0,)) if strategy.jitted else round_fn


def place_inputs(inputs: RoundInputs, strategy: Strategy) -> RoundInputs:
    """Put per-round inputs on the mesh (client axis sharded) for the ``sharded`` strategy."""
    arrays = jax.tree.map(jnp.asarray, inputs)
    if strategy.name != "sharded":
        return arrays
    sharding = NamedSharding(strategy.mesh(), P("clients"))
    return jax.tree.map(lambda a: jax.device_put(a, sharding), arrays)


__all__ = [
    "Algorithm",
    "RoundInputs",
    "State",
    "Strategy",
    "default_strategy",
    "make_round",
    "map_clients",
    "mapped",
    "place_inputs",
]
