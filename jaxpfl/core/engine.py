"""The engine: one-client functions mapped over clients, and the federated round built on them.

The contract
============
An algorithm is an :class:`Algorithm`: a name and pure functions written for ONE client or
for the server. A round ``t`` with sampled clients S_t runs::

    for k in S_t (mapped):  c_k, m_k, metrics_k = client_update(server, c_k, data_k, key_tk)
    scatter c_k into the stacked client state
    server = server_update(server, messages, ids, mask)
    state = mix(State(server, clients))                     (optional, ALL clients)
    for EVERY client k (mapped, optional):  c_k, stage_k = client_stage(server, c_k, data_k, key)

Shapes and meanings:

* ``init(key, params, num_clients) -> State``. ``State.server`` is any pytree;
  ``State.clients`` is ``None`` (stateless clients) or a pytree whose leaves are stacked
  ``[K, ...]`` over ALL K clients of the dataset (row k belongs to client id k).
* ``client_update(server, client_state, data, key) -> (client_state, message, metrics)``.
  ``server`` is the whole server state (unmapped); ``client_state`` is this client's row
  (or ``None``); ``data`` is a :class:`~jaxpfl.core.train.ClientData` with the client's id,
  the round, and its train / val / test index rows into the shared pool; ``key`` is
  ``derive(root, DATA, t, k)``. ``message`` is any pytree; ``metrics`` a dict of scalars.
* ``server_update(server, messages, ids, mask) -> server``. ``messages`` are stacked
  ``[R, ...]`` in the order clients were sampled (rows past the M real ones are padding);
  ``ids [R]`` their client ids (padding rows: ``num_clients``); ``mask [R]`` is 1.0 for a
  real client, 0.0 for padding — a padding row must have no effect (weight it by the mask).
  It sees the server and the messages only, never client state, so it means the same
  wherever the client state lives (on the device or in host memory).
* ``mix(state) -> State`` (optional): a step over ALL clients' state after the server step,
  for cross-client mixing (FEDORA's ŵ = P·Θ, one contraction over the client axis). Its
  presence means the algorithm needs every training client in every round (the driver
  refuses a phase that samples fewer) and its client state on the device.
* ``client_stage(server, client_state, data, key) -> (client_state, metrics)`` (optional) is
  mapped over ALL clients after the server step, with ``key = derive(root, STAGE, t, k)``. It
  prepares every client for the next round (FedALA's adaptive local aggregation of w_{t+1}).
* ``global_params(server) -> params`` (optional): the shared model, where there is one; the
  driver uses it to start the next phase and evaluators use it for global evaluation.
* ``personal_params(state) -> params [K, ...]`` (optional): each client's own model, for
  per-client evaluation; or :class:`PersonalModels` ``(name=params [K, ...], ...)`` for
  several per-client models (the first is the personalized model, FEDORA's θ_k; FEDORA also
  has ``received``, ŵ_k).
* ``personalize(params, data, key) -> (init Counts, pers Counts)`` (optional): fine-tune then
  evaluate ONE client from the global model (Personalized FedAvg, Per-FedAvg): counts of
  ``params`` on the client's test row, then of the personalized model (``pers`` may carry a
  trailing axis over personalization epochs, the last being the result).

The driver's NaN guard checks the global and personal models after each round (the whole
state when the algorithm has neither).

``init`` must return a state whose leaves are distinct arrays (the jitted round donates the
state; two leaves sharing one buffer cannot both be donated). The driver copies the initial
state once, so this only matters when calling ``make_round`` directly.

Metric keys the driver reads from ``client_update``'s metrics: ``train_loss`` (optional; a
non-finite value stops the run naming the clients), ``steps`` and ``compiled_steps``
(optional; their ratio is the useful-step share). Every scalar metric (and every stage
metric) is logged as its mean over real clients at each evaluation; a pair
``<name>_correct`` / ``<name>_count`` is also logged as the pooled accuracy
``<name>_acc_pooled`` (Σ correct / Σ count over the round's clients).

Masks: a *padding row* (mask 0, id = num_clients) exists so groups have fixed shapes; its
outputs are dropped (scatters use ``mode="drop"``). A *masked step* inside the step loop is a
step whose batch has no valid example; it leaves the carry unchanged.

A toy algorithm (every client moves its scalar state halfway to the server's value; the
server averages the real clients' new values, and ``mix`` writes that average into EVERY
client's state)::

    >>> import jax, jax.numpy as jnp, numpy as np
    >>> from jaxpfl.core import Algorithm, Splits, State, Strategy, make_round, round_inputs
    >>> def init(key, params, k):
    ...     return State(params, jnp.arange(k, dtype=jnp.float32))
    >>> def client_update(server, c, data, key):
    ...     c = c + 0.5 * (server - c)
    ...     return c, c, {"train_loss": c, "id": data.id}
    >>> def server_update(server, msgs, ids, mask):
    ...     return jnp.sum(msgs * mask) / jnp.sum(mask)
    >>> def mix(state):
    ...     return State(state.server, jnp.full_like(state.clients, state.server))
    >>> toy = Algorithm("toy", init, client_update, server_update, global_params=lambda s: s,
    ...                 mix=mix)
    >>> splits = Splits.from_lists(train=[[0], [1, 2], [3, 4, 5]])  # 3 clients' index rows
    >>> x, y = jnp.zeros((6, 1, 1, 1), jnp.uint8), jnp.zeros(6, jnp.int32)
    >>> strategy = Strategy("vmap")
    >>> state = toy.init(None, jnp.float32(10.0), 3)
    >>> inputs = round_inputs(splits, np.array([2, 0]), strategy)  # clients 2 and 0 sampled
    >>> state, out = make_round(toy, strategy)(state, x, y, inputs, 0, jax.random.key(0))
    >>> float(state.server), state.clients.tolist()  # ((2+10)/2 + (0+10)/2) / 2
    (5.5, [5.5, 5.5, 5.5])
    >>> out.ids.tolist(), out.metrics["train_loss"].tolist()  # in sampled order
    ([2, 0], [6.0, 5.0])

Strategies (results agree to float tolerance; none changes what is computed):
  ``vmap``       one jitted round, clients batched with ``jax.vmap`` (accelerators).
  ``chunked``    one jitted round, ``lax.map`` over clients in chunks of ``chunk_size``
                 (vmap inside a chunk) to bound memory.
  ``sequential`` a Python loop over clients, each run eagerly with its step loop dispatched in
                 jitted blocks (the reference path; the fastest on small CPUs).
  ``sharded``    one jitted round with the client axis on a ``Mesh`` axis named ``clients``
                 (``jax.shard_map`` over devices, vmap within a device); the weighted mean of
                 the messages becomes an all-reduce.
The jitted strategies group a call's clients by size into at most ``buckets`` groups
(``jaxpfl.core.buckets``), each padded only to its own widest client.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import time
import weakref
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from jaxpfl._xla_setup import cpu_devices_wanted
from jaxpfl.core import keys as K
from jaxpfl.core.buckets import Rows
from jaxpfl.core.train import ClientData, ExecOptions
from jaxpfl.core.tree import gather_rows, stack, unstack
from jaxpfl.distributed import put
from jaxpfl.errors import ConfigError

PyTree = Any
STRATEGIES = ("vmap", "chunked", "sequential", "sharded")
CLIENT_STATES = ("auto", "device", "host")
POOL_LAYOUTS = ("replicated", "per-device")


class State(NamedTuple):
    """Algorithm state.

    Attributes:
      server: the server's pytree (global model, optimizer state, round, ...), written by
        ``server_update``.
      clients: ``None`` or a pytree of ``[K, ...]`` leaves, row k = client k's persistent
        state; written by ``client_update`` (sampled rows), ``server_update`` and
        ``client_stage`` (all rows).
    """

    server: PyTree
    clients: PyTree = None


class PersonalModels(dict):
    """Several stacked per-client models by name (``personal_params``'s return value when an
    algorithm has more than one: ``PersonalModels(pers=θ, received=ŵ)``); the first is the
    personalized model. Evaluation prefixes each one's metrics with ``<name>_``."""


class Algorithm(NamedTuple):
    """A federated algorithm as a small named tuple of pure functions (see the module
    docstring for every function's shapes and what the driver reads)."""

    name: str
    init: Callable[[jax.Array, PyTree, int], State]
    client_update: Callable[..., tuple[PyTree, PyTree, dict]]
    server_update: Callable[[PyTree, PyTree, jax.Array, jax.Array], PyTree]
    global_params: Callable[[PyTree], PyTree] | None = None
    client_stage: Callable[..., tuple[PyTree, dict]] | None = None
    personal_params: Callable[[State], PyTree] | None = None
    mix: Callable[[State], State] | None = None
    personalize: Callable[..., tuple[Any, Any]] | None = None

    @property
    def full_participation(self) -> bool:
        """Every training client in every round: implied by a ``mix`` step over all clients."""
        return self.mix is not None

    def check_tree(self, state: State) -> PyTree:
        """What the NaN guard checks: the global and personal models (the whole state when
        the algorithm declares neither)."""
        parts = []
        if self.global_params is not None:
            parts.append(self.global_params(state.server))
        if self.personal_params is not None:
            got = self.personal_params(state)
            parts.append(dict(got) if isinstance(got, PersonalModels) else got)
        return tuple(parts) if parts else state


@dataclasses.dataclass(frozen=True)
class Strategy:
    """How clients are mapped (module docstring). ``chunk_size`` for ``chunked``,
    ``num_devices``: the mesh of ``sharded`` (None: every device), or the local devices
    ``sequential`` spreads its clients over, client i on device i mod D (None: one).
    ``buckets``: at most this many size groups per mapped call on the jitted strategies (1 =
    one group padded to the widest client).
    ``client_state``: where the stacked per-client state lives between rounds: ``device``,
    ``host`` (NumPy; only the rows a call needs are moved, ``jaxpfl.core.residency``) or
    ``auto`` (the driver keeps it on the device when it fits). ``pool_layout``: with
    ``sharded``, ``replicated`` (every device holds every example) or ``per-device`` (each
    device holds only its own clients' examples, each process loads only its devices' share:
    ``jaxpfl.core.placement``)."""

    name: str = "vmap"
    chunk_size: int = 8
    exec: ExecOptions = ExecOptions()
    num_devices: int | None = None
    buckets: int = 6
    client_state: str = "auto"
    pool_layout: str = "replicated"

    def __post_init__(self):
        if self.name not in STRATEGIES:
            raise ConfigError(
                f"unknown strategy '{self.name}'; choose one of: {', '.join(STRATEGIES)}"
            )
        if self.chunk_size < 1:
            raise ConfigError("chunk_size must be >= 1")
        if self.buckets < 1:
            raise ConfigError("buckets must be >= 1")
        if self.client_state not in CLIENT_STATES:
            raise ConfigError(f"unknown client_state '{self.client_state}'; choose one of: "
                              f"{', '.join(CLIENT_STATES)}")
        if self.pool_layout not in POOL_LAYOUTS:
            raise ConfigError(f"unknown pool layout '{self.pool_layout}'; choose one of: "
                              f"{', '.join(POOL_LAYOUTS)}")
        if self.pool_layout == "per-device" and self.name != "sharded":
            raise ConfigError(f"--pool-layout per-device needs --strategy sharded (got "
                              f"'{self.name}')")

    @property
    def jitted(self) -> bool:
        return self.name != "sequential"

    def sequential_devices(self) -> list:
        """The devices ``sequential`` trains on: the first ``num_devices`` local devices
        (``None``: one, the default device)."""
        if self.num_devices is None or self.num_devices <= 1:
            return [jax.local_devices()[0]]
        return jax.local_devices()[: self.num_devices]

    def mesh(self) -> Mesh:
        devs = jax.devices()[: self.num_devices or len(jax.devices())]
        return Mesh(devs, ("clients",))

    @property
    def client_multiple(self) -> int:
        """Rows of every group must be a multiple of this (padding fills the rest)."""
        if self.name == "sharded":
            return self.num_devices or len(jax.devices())
        return 1


def default_strategy(backend: str | None = None) -> Strategy:
    """Fastest measured strategy per backend (experiments/bench_engine.py): ``sequential``
    with 64 steps per dispatch on CPU, its clients spread over one CPU device per core,
    ``vmap`` elsewhere."""
    backend = backend or jax.default_backend()
    if backend == "cpu":  # clients in parallel, one per core (jaxpfl/_xla_setup.py)
        devices = min(len(jax.local_devices(backend="cpu")), cpu_devices_wanted())
        return Strategy("sequential", num_devices=devices if devices > 1 else None,
                        exec=ExecOptions(unroll=1, step_block=64))
    return Strategy("vmap", exec=ExecOptions(unroll=1, step_block=None))


class PerDevice(NamedTuple):
    """A ``[D, ...]`` array whose block d lives on device d of the mesh's ``clients`` axis
    (a per-device pool, ``jaxpfl.core.placement``). Inside a ``sharded`` mapped call, a
    ``shared`` leaf wrapped in it is seen by ``fn`` as the calling device's block
    ``value[d]``; it is only valid with the ``sharded`` strategy."""

    value: jax.Array


def _is_per_device(a) -> bool:
    return isinstance(a, PerDevice)


#: (id(array), device id) -> (weak reference to the array, its copy on that device): the pool
#: reaches a second device once, not at every round and evaluation. An entry goes when its
#: source does, so a round's parameters (also over the size threshold) are not kept alive.
_REPLICAS: dict[tuple[int, int], tuple[weakref.ref, jax.Array]] = {}
_REPLICA_MIN_BYTES = 1 << 20


def _replica(tree: PyTree, device) -> PyTree:
    """``tree`` on ``device``; large arrays (the pool) are copied there once and reused."""

    def put(a):
        if not isinstance(a, jax.Array) or a.nbytes < _REPLICA_MIN_BYTES:
            return jax.device_put(a, device)
        if a.devices() == {device}:  # committed without a copy: an uncommitted array would
            return a if a.committed else jax.device_put(a, device)  # be a 2nd jit cache entry
        key = (id(a), device.id)
        hit = _REPLICAS.get(key)
        if hit is None or hit[0]() is not a:
            if len(_REPLICAS) >= 16:
                _REPLICAS.pop(next(iter(_REPLICAS)), None)
            source = weakref.ref(a, lambda _, key=key: _REPLICAS.pop(key, None))
            hit = _REPLICAS[key] = (source, jax.device_put(a, device))
        return hit[1]

    return jax.tree.map(put, tree)


def map_clients(fn: Callable, shared: PyTree, per_client: PyTree, strategy: Strategy) -> PyTree:
    """``stack([fn(shared, per_client[i]) for i in range(M)])`` with the chosen strategy
    (``shared`` may hold :class:`PerDevice` leaves with ``sharded``)."""
    name = strategy.name
    per_device = any(map(_is_per_device, jax.tree.leaves(shared, is_leaf=_is_per_device)))
    if per_device and name != "sharded":
        raise ConfigError(f"a per-device pool needs the sharded strategy (got '{name}')")
    if name == "vmap":
        return jax.vmap(fn, in_axes=(None, 0))(shared, per_client)
    if name == "chunked":
        return jax.lax.map(lambda pc: fn(shared, pc), per_client, batch_size=strategy.chunk_size)
    if name == "sequential":
        m = jax.tree.leaves(per_client)[0].shape[0]
        devs = strategy.sequential_devices()
        if len(devs) == 1:
            return stack([fn(shared, pc) for pc in unstack(per_client, m)])
        # client i on device i mod D, each device's clients in order on a host thread of its
        # own, so the devices (one per CPU core, jaxpfl/_xla_setup.py) train different
        # clients at the same time even where a client's code reads results back to the host
        on = [_replica(shared, d) for d in devs]
        rows = unstack(per_client, m)

        def lane(d: int) -> list:
            return [fn(on[d], jax.device_put(rows[i], devs[d]))
                    for i in range(d, m, len(devs))]

        with concurrent.futures.ThreadPoolExecutor(len(devs)) as pool:
            lanes = list(pool.map(lane, range(len(devs))))
        outs = [lanes[i % len(devs)][i // len(devs)] for i in range(m)]
        return stack(jax.device_put(outs, devs[0]))
    if name == "sharded":
        specs = jax.tree.map(lambda a: P("clients") if _is_per_device(a) else P(), shared,
                             is_leaf=_is_per_device)

        def block(sh, pc):  # a PerDevice leaf is this device's [1, ...] block
            sh = jax.tree.map(lambda a: a.value[0] if _is_per_device(a) else a, sh,
                              is_leaf=_is_per_device)
            return jax.vmap(fn, in_axes=(None, 0))(sh, pc)

        mapped_fn = jax.shard_map(
            block,
            mesh=strategy.mesh(),
            in_specs=(specs, P("clients")),
            out_specs=P("clients"),
            check_vma=False,  # the client loop's carry starts replicated and becomes per-client
        )
        return mapped_fn(shared, per_client)
    raise ConfigError(f"unknown strategy '{name}'")


def mapped(fn: Callable, strategy: Strategy) -> Callable:
    """``(shared, per_client) -> map_clients(fn, ...)``, jitted unless ``sequential``."""

    def call(shared, per_client):
        return map_clients(fn, shared, per_client, strategy)

    return jax.jit(call) if strategy.jitted else call


class RoundInputs(NamedTuple):
    """Per-round inputs (built by ``jaxpfl.core.rounds.round_inputs``).

    Attributes:
      groups: the sampled clients as size groups of :class:`Rows`.
      perm: ``[R] int32``: row r of the round's outputs (sampled order: the M real clients
        first, then padding) is row ``perm[r]`` of the concatenated groups.
      stage: all clients as groups of Rows, for ``client_stage`` (``None`` when the algorithm
        has no stage).
    """

    groups: tuple[Rows, ...]
    perm: jax.Array
    stage: tuple[Rows, ...] | None = None

    @property
    def ids(self) -> jax.Array:
        """Client ids in sampled order (padding rows last)."""
        return jnp.concatenate([jnp.asarray(g.ids) for g in self.groups])[jnp.asarray(self.perm)]

    @property
    def mask(self) -> jax.Array:
        return jnp.concatenate([jnp.asarray(g.mask) for g in self.groups])[jnp.asarray(self.perm)]


class RoundOutput(NamedTuple):
    """What a round returns besides the new state.

    Attributes:
      metrics: dict of ``[R]`` arrays, rows in sampled order (the M real clients first).
      ids, mask: ``[R]`` client ids and the real-client mask in the same order.
      stage: dict of ``[K]`` arrays (client id order) from ``client_stage``, or ``{}``.
      seconds: host wall seconds of the round's parts (``clients``: client updates and the
        server step; ``stage``: the client stage) when the round runs eagerly (``sequential``);
        ``{}`` for a compiled round (one call: the driver times the whole).
    """

    metrics: dict
    ids: jax.Array
    mask: jax.Array
    stage: dict
    seconds: dict = {}


class GroupStates(NamedTuple):
    """Client state already gathered per group: ``rows[i]`` is the ``[G_i, ...]`` state of
    group i's rows (padding rows included). Passed as ``State.clients`` (or an evaluator's
    stacked params) it replaces the gather from a ``[K, ...]`` stack, and the round returns
    the groups' new rows the same way instead of scattering them (host-resident state)."""

    rows: tuple


class _PerClient(NamedTuple):
    rows: Rows
    state: PyTree
    key: jax.Array


def _client_data(rows: Rows, x, y, t, exec_: ExecOptions) -> ClientData:
    return ClientData(
        rows.train_idx, rows.train_n, x, y, rows.val_idx, rows.val_n, rows.test_idx,
        rows.test_n, rows.ids, t, exec=exec_,
    )


@jax.jit
def _concat(trees: list[PyTree]) -> PyTree:
    return jax.tree.map(lambda *a: jnp.concatenate(a), *trees)


@jax.jit
def _scatter(clients: PyTree, ids: jax.Array, mask: jax.Array, values: PyTree) -> PyTree:
    ids = jnp.where(mask > 0, ids, jnp.iinfo(jnp.int32).max)  # padding rows are dropped
    return jax.tree.map(lambda a, v: a.at[ids].set(v.astype(a.dtype), mode="drop"), clients,
                        values)


def map_groups(
    fn: Callable, shared: PyTree, groups: tuple[Rows, ...], clients: PyTree, keys_of: Callable,
    strategy: Strategy,
) -> list[PyTree]:
    """``fn(shared, _PerClient)`` mapped over each group; returns one output per group."""
    outs = []
    for i, g in enumerate(groups):
        if isinstance(clients, GroupStates):
            cstate = clients.rows[i]
        else:
            cstate = None if clients is None else gather_rows(clients, g.ids)
        outs.append(map_clients(fn, shared, _PerClient(g, cstate, keys_of(g.ids)), strategy))
    return outs


def _committed(tree: PyTree, device) -> PyTree:
    """``tree`` with its uncommitted arrays committed to ``device`` (where they already are:
    no copy). jit keys its cache on whether an argument is committed, and the state a run
    starts from (``init``'s output) is uncommitted while the state a round returns is not, so
    without this the eager round's jitted pieces would compile again in round 2."""
    return jax.tree.map(
        lambda a: jax.device_put(a, device)
        if isinstance(a, jax.Array) and not a.committed else a, tree
    )


def make_round(algorithm: Algorithm, strategy: Strategy) -> Callable:
    """``round(state, x, y, inputs, t, root) -> (state, RoundOutput)``.

    Client k in round t draws its data order and dropout from ``derive(root, DATA, t, k)`` and
    its stage randomness from ``derive(root, STAGE, t, k)``, so results do not depend on
    client order, grouping, strategy or device count. Jitted (state donated) unless the
    strategy is ``sequential``.

    With ``State.clients`` a :class:`GroupStates` (the rows of ``inputs.groups``, gathered by
    the caller), the round returns the groups' new rows as a GroupStates and leaves the
    client stage to the caller (:func:`make_stage`): ``jaxpfl.core.residency`` does this for
    client state kept in host memory.
    """
    server_update, mix = algorithm.server_update, algorithm.mix
    stage_fn = algorithm.client_stage
    if not strategy.jitted:
        server_update = jax.jit(server_update)
        mix = None if mix is None else jax.jit(mix)

    def client_fn(shared, pc: _PerClient):
        server, x, y, t = shared
        data = _client_data(pc.rows, x, y, t, strategy.exec)
        return algorithm.client_update(server, pc.state, data, pc.key)

    stage_client = _stage_client(algorithm, strategy)

    def round_fn(state: State, x, y, inputs: RoundInputs, t, root):
        tic = time.perf_counter()
        if not strategy.jitted:
            state = _committed(state, strategy.sequential_devices()[0])
        seconds: dict = {}
        shared = (state.server, x, y, t)
        outs = map_groups(
            client_fn, shared, inputs.groups, state.clients,
            lambda ids: jax.vmap(lambda i: K.derive(root, K.DATA, t, i))(ids), strategy,
        )
        clients = state.clients
        gathered = isinstance(clients, GroupStates)
        if gathered:
            clients = GroupStates(tuple(o[0] for o in outs))
        elif clients is not None:
            for g, (new_c, _, _) in zip(inputs.groups, outs):
                clients = _scatter(clients, g.ids, g.mask, new_c)
        perm = jnp.asarray(inputs.perm)
        messages = jax.tree.map(lambda a: a[perm], _concat([o[1] for o in outs]))
        metrics = jax.tree.map(lambda a: a[perm], _concat([o[2] for o in outs]))
        ids = jnp.concatenate([jnp.asarray(g.ids) for g in inputs.groups])[perm]
        mask = jnp.concatenate([jnp.asarray(g.mask) for g in inputs.groups])[perm]
        state = State(server_update(state.server, messages, ids, mask), clients)
        if mix is not None:
            if gathered:
                raise ValueError(f"{algorithm.name} mixes every client's state: its client "
                                 "state stays on the device (no GroupStates)")
            state = mix(state)
        if not strategy.jitted:
            jax.block_until_ready(state)
            seconds["clients"] = time.perf_counter() - tic
        stage_metrics: dict = {}
        if stage_fn is not None and not gathered:
            tic = time.perf_counter()
            if inputs.stage is None:
                raise ValueError(f"{algorithm.name} has a client stage: build the round's "
                                 "inputs with stage rows (round_inputs(..., stage=True))")
            k = jax.tree.leaves(state.clients)[0].shape[0]
            souts = map_groups(
                stage_client, (state.server, x, y, t), inputs.stage, state.clients,
                lambda ids: jax.vmap(lambda i: K.derive(root, K.STAGE, t, i))(ids), strategy,
            )
            clients = state.clients
            for g, (new_c, sm) in zip(inputs.stage, souts):
                clients = _scatter(clients, g.ids, g.mask, new_c)
                stage_metrics = _scatter_metrics(stage_metrics, sm, g, k)
            state = State(state.server, clients)
            if not strategy.jitted:
                jax.block_until_ready(state)
                seconds["stage"] = time.perf_counter() - tic
        return state, RoundOutput(metrics, ids, mask, stage_metrics, seconds)

    return jax.jit(round_fn, donate_argnums=(0,)) if strategy.jitted else round_fn


def _stage_client(algorithm: Algorithm, strategy: Strategy) -> Callable:
    def stage_client(shared, pc: _PerClient):
        server, x, y, t = shared
        data = _client_data(pc.rows, x, y, t, strategy.exec)
        return algorithm.client_stage(server, pc.state, data, pc.key)

    return stage_client


def make_stage(algorithm: Algorithm, strategy: Strategy) -> Callable:
    """``stage(server, x, y, rows, client_rows, t, root) -> (client_rows, metrics)``: the
    algorithm's client stage over ONE group of rows whose state ``client_rows`` the caller
    gathered (the same per-client computation and keys as the stage inside
    :func:`make_round`). Jitted unless the strategy is ``sequential``."""
    if algorithm.client_stage is None:
        raise ValueError(f"{algorithm.name} has no client stage")
    stage_client = _stage_client(algorithm, strategy)

    def stage(server, x, y, rows: Rows, client_rows, t, root):
        (out,) = map_groups(
            stage_client, (server, x, y, t), (rows,), GroupStates((client_rows,)),
            lambda ids: jax.vmap(lambda i: K.derive(root, K.STAGE, t, i))(ids), strategy,
        )
        return out

    return jax.jit(stage) if strategy.jitted else stage


def _scatter_metrics(acc: dict, metrics: dict, g: Rows, k: int) -> dict:
    out = dict(acc)
    for name, v in metrics.items():
        v = jnp.asarray(v)
        base = out.get(name, jnp.zeros((k,) + v.shape[1:], v.dtype))
        out[name] = _scatter(base, jnp.asarray(g.ids), jnp.asarray(g.mask), v)
    return out


def place_rows(groups: tuple[Rows, ...] | None, strategy: Strategy):
    """Groups of rows on the device (client axis on the mesh for ``sharded``); arrays already
    placed are left where they are. With several processes (``jaxpfl.distributed``) every
    process passes the same host rows and gets global arrays over all processes' devices."""
    if groups is None:
        return None
    if strategy.name != "sharded":
        return tuple(jax.tree.map(jnp.asarray, g) for g in groups)
    sharding = NamedSharding(strategy.mesh(), P("clients"))
    return tuple(put(g, sharding) for g in groups)


def place_inputs(inputs: RoundInputs, strategy: Strategy) -> RoundInputs:
    """Put per-round inputs on the device (client axis on the mesh for ``sharded``)."""
    return RoundInputs(place_rows(inputs.groups, strategy), jnp.asarray(inputs.perm),
                       place_rows(inputs.stage, strategy))


__all__ = [
    "CLIENT_STATES",
    "POOL_LAYOUTS",
    "PersonalModels",
    "STRATEGIES",
    "Algorithm",
    "GroupStates",
    "PerDevice",
    "RoundInputs",
    "RoundOutput",
    "State",
    "Strategy",
    "default_strategy",
    "make_round",
    "make_stage",
    "map_clients",
    "map_groups",
    "mapped",
    "place_inputs",
    "place_rows",
]
