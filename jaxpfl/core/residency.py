"""Where the stacked client state lives between rounds: on the device, or in host memory.

An algorithm with persistent client state (FedALA's θ_k and W_k, Personalized models) keeps
a ``[K, ...]`` pytree over ALL K clients. On the device it costs K × (bytes per client) of
device memory whatever the number of clients per round. With ``client_state="host"`` the
stack is NumPy in host memory and a round moves only what it touches:

* the round's sampled rows: gathered on the host, put on the device, trained by the same
  compiled round (:func:`~jaxpfl.core.engine.make_round` with a
  :class:`~jaxpfl.core.engine.GroupStates`), brought back and written into the host stack;
* the client stage (all K clients, e.g. FedALA's adaptive local aggregation): in chunks of
  ``STAGE_CHUNK`` rows per size group, double-buffered: chunk j+1 is gathered and put on
  the device while chunk j computes (JAX dispatches asynchronously), and chunk j's results
  come back (``copy_to_host_async``) while chunk j+1 runs;
* evaluation of personal models (:class:`~jaxpfl.core.evaluators.ClientEvaluator`): one
  size group at a time.

Per-client computations, their keys and their data are those of the device-resident round,
so results are the same (bit-identical with ``sequential``; equal to float tolerance under
``vmap``, whose batch shapes differ). An algorithm that mixes every
client's state after the server step (``Algorithm.mix``: FEDORA) keeps it on the device.
``client_state="auto"`` (the default) keeps it on the device unless the stack would take
more than ``HOST_ABOVE`` of the device's memory (never on a CPU backend, whose device memory
is host memory). One process only, with the replicated pool.
"""

from __future__ import annotations

import time
from typing import Any

import jax
import numpy as np
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from jaxpfl import distributed
from jaxpfl.core.buckets import Rows
from jaxpfl.core.engine import (
    Algorithm,
    GroupStates,
    RoundInputs,
    RoundOutput,
    State,
    Strategy,
    make_round,
    make_stage,
)
from jaxpfl.errors import ConfigError

PyTree = Any
STAGE_CHUNK = 256  # rows per chunk of the host-resident client stage
HOST_ABOVE = 0.5  # auto: host memory when the client stack exceeds this share of the device's


def is_host_tree(tree: PyTree) -> bool:
    """True when ``tree`` has leaves and every one is a NumPy array (host-resident)."""
    leaves = jax.tree.leaves(tree)
    return bool(leaves) and all(isinstance(a, np.ndarray) for a in leaves)


def to_host(tree: PyTree, free: bool = False) -> PyTree:
    """A writable NumPy copy of every leaf. ``free``: delete each device leaf as soon as it
    is copied, so the peak is the host stack plus one leaf (not two whole stacks)."""
    leaves, treedef = jax.tree.flatten(tree)
    out = []
    for i, a in enumerate(leaves):
        out.append(np.array(a))
        if free and isinstance(a, jax.Array):
            a.delete()
            leaves[i] = None
    return jax.tree.unflatten(treedef, out)


def host_gather(tree: PyTree, ids: np.ndarray) -> PyTree:
    """Rows ``ids`` of a host ``[K, ...]`` stack; padding ids (>= K) read row K−1, as a
    device gather clamps (their outputs are dropped)."""
    ids = np.asarray(ids)
    return jax.tree.map(lambda a: a[np.minimum(ids, a.shape[0] - 1)], tree)


def host_scatter(tree: PyTree, ids: np.ndarray, mask: np.ndarray, values: PyTree) -> None:
    """Write the real rows (``mask > 0``) of ``values`` into rows ``ids`` of ``tree``, in
    place."""
    real = np.asarray(mask) > 0
    rows = np.asarray(ids)[real]

    def put(a, v):
        a[rows] = np.asarray(v)[real].astype(a.dtype, copy=False)

    jax.tree.map(put, tree, values)


def tree_bytes(tree: PyTree) -> int:
    """Bytes of every leaf (arrays or ``ShapeDtypeStruct``)."""
    return int(sum(np.prod(a.shape) * np.dtype(a.dtype).itemsize for a in jax.tree.leaves(tree)))


def client_state_bytes(algorithm: Algorithm, params: PyTree, num_clients: int) -> int:
    """Bytes of ONE client's persistent state (0 for stateless clients), from the shapes
    ``algorithm.init`` would give (nothing is allocated)."""
    shapes = jax.eval_shape(
        lambda p: algorithm.init(jax.random.key(0), p, num_clients).clients, params
    )
    return tree_bytes(shapes) // max(num_clients, 1) if shapes is not None else 0


def device_memory_limit(device: jax.Device | None = None) -> int | None:
    """The device's memory in bytes, or None where it is host memory / not reported (CPU)."""
    device = device or jax.devices()[0]
    if device.platform == "cpu":
        return None
    stats = device.memory_stats() or {}
    return stats.get("bytes_limit")


def resolve_client_state(strategy: Strategy, algorithm: Algorithm, per_client: int,
                         num_clients: int) -> str:
    """``device`` or ``host`` for ``strategy.client_state`` (``auto`` decides by size)."""
    want = strategy.client_state
    if want == "host":
        if algorithm.mix is not None:
            raise ConfigError(
                f"{algorithm.name} mixes every client's state after the server step, so its "
                "client state stays on the device; drop --client-state host"
            )
        if distributed.is_multiprocess():
            raise ConfigError("host-resident client state runs in one process only; drop "
                              "--client-state host or run one process")
        if strategy.pool_layout == "per-device":
            raise ConfigError("host-resident client state needs the replicated pool; drop "
                              "--client-state host or --pool-layout per-device")
        return "host"
    if (want == "device" or per_client == 0 or algorithm.mix is not None
            or strategy.pool_layout == "per-device"):
        return "device"
    if distributed.is_multiprocess():
        return "device"
    limit = device_memory_limit()
    if limit is None:
        return "device"
    return "host" if per_client * num_clients > HOST_ABOVE * limit else "device"


def placer(strategy: Strategy):
    """``tree -> device tree`` for per-client rows: on the client axis of the mesh for
    ``sharded``, else the default device (asynchronous: returns before the copy ends)."""
    if strategy.name == "sharded":
        sharding = NamedSharding(strategy.mesh(), P("clients"))
        return lambda tree: distributed.put(tree, sharding)
    return jax.device_put


def _host_rows(rows: Rows) -> Rows:
    return Rows(*(np.asarray(a) for a in rows))


def pad_rows(rows: Rows, n: int, num_clients: int) -> Rows:
    """``rows`` with padding rows appended up to ``n`` rows (id ``num_clients``, mask 0,
    empty splits)."""
    extra = n - len(rows.ids)
    if extra <= 0:
        return rows

    def pad(a, fill):
        return np.concatenate([a, np.full((extra,) + a.shape[1:], fill, a.dtype)])

    return Rows(
        pad(rows.ids, num_clients), pad(rows.mask, 0), pad(rows.train_idx, 0),
        pad(rows.train_n, 0), pad(rows.val_idx, 0), pad(rows.val_n, 0), pad(rows.test_idx, 0),
        pad(rows.test_n, 0),
    )


def chunk_groups(groups: tuple[Rows, ...], size: int, num_clients: int) -> list[Rows]:
    """Each group cut into chunks of ``min(size, rows)`` rows (a group's last chunk padded to
    that size, so every chunk of a group has one shape: one compilation per group)."""
    chunks = []
    for g in map(_host_rows, groups):
        n = len(g.ids)
        step = max(1, min(size, n))
        for start in range(0, n, step):
            chunks.append(pad_rows(Rows(*(a[start : start + step] for a in g)), step,
                                   num_clients))
    return chunks


class HostRound:
    """A round with ``State.clients`` a NumPy ``[K, ...]`` stack in host memory; the same
    signature and results as ``make_round(algorithm, strategy)``'s (module docstring).
    Updates the host stack in place and returns it in the new state."""

    def __init__(self, algorithm: Algorithm, strategy: Strategy, stage_chunk: int = STAGE_CHUNK):
        if stage_chunk < 1:
            raise ConfigError("stage_chunk must be >= 1")
        self.algorithm, self.strategy, self.stage_chunk = algorithm, strategy, stage_chunk
        self.round = make_round(algorithm, strategy)
        self.stage = make_stage(algorithm, strategy) if algorithm.client_stage else None
        self.place = placer(strategy)
        self._chunks: dict[int, tuple[tuple[Rows, ...], list]] = {}

    def _stage_chunks(self, stage: tuple[Rows, ...], num_clients: int) -> list:
        """(placed chunk rows, host ids, host mask) per chunk; built once per stage rows."""
        key = id(stage)
        if key not in self._chunks:
            multiple = self.strategy.client_multiple
            size = -(-self.stage_chunk // multiple) * multiple
            chunks = chunk_groups(stage, size, num_clients)
            chunks = [pad_rows(c, -(-len(c.ids) // multiple) * multiple, num_clients)
                      for c in chunks]
            placed = [(self.place(c), c.ids, c.mask) for c in chunks]
            self._chunks = {key: (stage, placed)}  # keep ``stage`` alive: its id stays unique
        return self._chunks[key][1]

    def __call__(self, state: State, x, y, inputs: RoundInputs, t, root):
        host = state.clients
        if host is not None and not is_host_tree(host):
            raise ValueError("HostRound needs State.clients as NumPy arrays (residency.to_host)")
        seconds: dict = {}
        tic = time.perf_counter()
        ids = [np.asarray(g.ids) for g in inputs.groups]
        masks = [np.asarray(g.mask) for g in inputs.groups]
        rows = None if host is None else GroupStates(
            tuple(self.place(host_gather(host, i)) for i in ids)
        )
        new, out = self.round(State(state.server, rows), x, y, inputs._replace(stage=None), t,
                              root)
        if host is not None:
            for i, m, r in zip(ids, masks, new.clients.rows):
                host_scatter(host, i, m, jax.device_get(r))
        jax.block_until_ready(new.server)
        seconds["clients"] = time.perf_counter() - tic
        stage_metrics: dict = {}
        if self.stage is not None and host is not None:
            if inputs.stage is None:
                raise ValueError(f"{self.algorithm.name} has a client stage: build the round's "
                                 "inputs with stage rows (round_inputs(..., stage=True))")
            tic = time.perf_counter()
            k = jax.tree.leaves(host)[0].shape[0]
            stage_metrics = self._run_stage(new.server, x, y, inputs.stage, t, root, host, k)
            seconds["stage"] = time.perf_counter() - tic
        return State(new.server, host), RoundOutput(out.metrics, out.ids, out.mask,
                                                    stage_metrics, seconds)

    def _run_stage(self, server, x, y, stage, t, root, host, k: int) -> dict:
        """The stage over every chunk, double-buffered (module docstring)."""
        chunks = self._stage_chunks(stage, k)
        metrics: dict[str, np.ndarray] = {}

        def finish(ids, mask, result):
            new_rows, m = jax.device_get(result)
            host_scatter(host, ids, mask, new_rows)
            real = np.asarray(mask) > 0
            for name, v in m.items():
                v = np.asarray(v)
                if name not in metrics:
                    metrics[name] = np.zeros((k,) + v.shape[1:], v.dtype)
                metrics[name][np.asarray(ids)[real]] = v[real]

        pending = None
        nxt = self.place(host_gather(host, chunks[0][1])) if chunks else None
        for j, (rows, ids, mask) in enumerate(chunks):
            result = self.stage(server, x, y, rows, nxt, t, root)
            for a in jax.tree.leaves(result):
                if hasattr(a, "copy_to_host_async"):
                    a.copy_to_host_async()
            if j + 1 < len(chunks):  # disjoint clients: chunk j's results cannot change these
                nxt = self.place(host_gather(host, chunks[j + 1][1]))
            if pending is not None:
                finish(*pending)
            pending = (ids, mask, result)
        if pending is not None:
            finish(*pending)
        return metrics


__all__ = [
    "HOST_ABOVE",
    "STAGE_CHUNK",
    "HostRound",
    "chunk_groups",
    "client_state_bytes",
    "device_memory_limit",
    "host_gather",
    "host_scatter",
    "is_host_tree",
    "pad_rows",
    "resolve_client_state",
    "to_host",
    "tree_bytes",
]
