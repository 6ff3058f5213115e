"""Per-device pools: each device holds only its own clients' examples, each process loads
only its own devices' share.

The ``sharded`` strategy's default pool is replicated: every device holds every example and
every process loads the whole dataset. That stops working when the data outgrow one device
or one host. With a :class:`ClientPlacement` every client k has a fixed owner device
``owner[k]`` on the mesh's ``clients`` axis, and

* device d holds the pool ``examples[d]`` (the sorted example ids of its clients' train,
  validation and test splits) as block d of a ``[D, N_max, ...]`` array sharded on the
  client axis (:class:`~jaxpfl.core.engine.PerDevice`); :meth:`ClientPlacement.pool` asks
  the ``load`` function of each process only for the example ids of its own devices;
* :meth:`ClientPlacement.localize` rewrites a :class:`~jaxpfl.core.buckets.Splits`' indices
  into positions in the owner's pool and marks it device-affine, so every mapped call (a
  round, the client stage, an evaluation) runs each client on its owner (``buckets``,
  device-affine layout).

What a client computes is unchanged: its examples, in the same order, the same keys; only
which device runs it, and the padding of each device's block, differ. The price is balance:
the round's rows per device are the busiest device's count of sampled clients.

Owners are assigned once, by size: clients in descending order of examples go to the least
loaded device (ties: lower device), so full-participation calls (the stage, evaluations) are
balanced in examples. The assignment depends only on the splits and the device count, so
every process computes the same one.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from jaxpfl.core.buckets import SPLITS, Splits
from jaxpfl.core.engine import PerDevice, Strategy
from jaxpfl.data.dataset import ClientIndex
from jaxpfl.errors import ConfigError

Loader = Callable[[np.ndarray], Sequence[np.ndarray]]


@dataclasses.dataclass(frozen=True, eq=False)
class ClientPlacement:
    """``owner [K]``: the device position of each client on the mesh's ``clients`` axis;
    ``examples[d]``: the sorted example ids device d holds (module docstring)."""

    owner: np.ndarray
    examples: tuple[np.ndarray, ...]

    @property
    def devices(self) -> int:
        return len(self.examples)

    @classmethod
    def balanced(cls, splits: Splits, devices: int) -> ClientPlacement:
        """Owners by size (largest client first to the least loaded device)."""
        if devices < 1:
            raise ConfigError("a placement needs at least one device")
        k = splits.num_clients
        total = sum(splits.sizes(s) for s in SPLITS)
        owner = np.zeros(k, np.int64)
        load = np.zeros(devices, np.int64)
        for c in np.argsort(-total, kind="stable"):
            d = int(np.argmin(load))
            owner[c] = d
            load[d] += total[c]
        examples = []
        for d in range(devices):
            mine = np.flatnonzero(owner == d)
            ids = [getattr(splits, s)[int(c)] for s in SPLITS for c in mine]
            examples.append(np.unique(np.concatenate(ids)) if ids else np.zeros(0, np.int64))
        return cls(owner, tuple(e.astype(np.int64) for e in examples))

    @property
    def pool_rows(self) -> int:
        """N_max: the rows of every device's pool block (the largest pool)."""
        return int(max(1, max(len(e) for e in self.examples)))

    def localize(self, splits: Splits, clients: np.ndarray | None = None) -> Splits:
        """``splits`` with indices into the owner's pool, device-affine. Entry j belongs to
        client ``clients[j]`` (default: entry k is client k, e.g. ``Splits.of(dataset)``;
        held-out support/query lists pass their clients' ids)."""
        clients = np.arange(len(self.owner)) if clients is None else np.asarray(clients)
        if splits.num_clients != len(clients):
            raise ValueError(f"{splits.num_clients} entries in the splits, {len(clients)} "
                             "clients given")
        owner = self.owner[clients]

        def local(index: ClientIndex) -> ClientIndex:
            parts = []
            for c in range(len(index)):
                g = np.asarray(index[c], np.int64)
                pool = self.examples[int(owner[c])]
                pos = np.searchsorted(pool, g)
                if len(g) and (pos.max() >= len(pool) or not np.array_equal(pool[pos], g)):
                    raise ValueError(f"client {c} reads examples outside its device's pool "
                                     "(build the placement from splits that contain them)")
                parts.append(pos)
            return ClientIndex.from_lists(parts)

        return Splits(local(splits.train), local(splits.val), local(splits.test),
                      owner=owner, devices=self.devices)

    def local_devices(self, mesh: Mesh) -> list[int]:
        """Positions on the mesh's ``clients`` axis of this process's devices."""
        me = jax.process_index()
        return [d for d, dev in enumerate(mesh.devices.reshape(-1))
                if dev.process_index == me]

    def process_clients(self, mesh: Mesh) -> np.ndarray:
        """The clients this process's devices own."""
        return np.flatnonzero(np.isin(self.owner, self.local_devices(mesh)))

    def pool(self, load: Loader, mesh: Mesh) -> tuple[PerDevice, ...]:
        """The per-device pools: one :class:`PerDevice` ``[D, N_max, ...]`` array per array
        ``load(ids)`` returns (e.g. ``(x, y)`` rows of the example ids ``ids``), sharded on
        the mesh's ``clients`` axis. ``load`` is called once per device of THIS process with
        that device's example ids; rows past a device's pool are zeros (never read)."""
        axis = mesh.devices.reshape(-1)
        if len(axis) != self.devices:
            raise ConfigError(f"the placement is for {self.devices} devices, the mesh has "
                              f"{len(axis)}")
        n = self.pool_rows
        blocks: dict[int, list[jax.Array]] = {}  # on its device as soon as it is read
        for d in self.local_devices(mesh):
            padded = []
            for a in load(self.examples[d]):
                a = np.asarray(a)
                out = np.zeros((1, n) + a.shape[1:], a.dtype)
                out[0, : len(a)] = a
                padded.append(jax.device_put(out, axis[d]))
            blocks[d] = padded
        if not blocks:
            raise ConfigError("this process owns none of the mesh's devices")
        first = next(iter(blocks.values()))
        sharding = NamedSharding(mesh, P("clients"))
        return tuple(
            PerDevice(jax.make_array_from_single_device_arrays(
                (self.devices,) + proto.shape[1:], sharding, [blocks[d][i] for d in
                                                              sorted(blocks)]))
            for i, proto in enumerate(first))


def array_loader(*arrays: np.ndarray) -> Loader:
    """``load(ids) -> tuple(a[ids] for a in arrays)``: a loader over in-memory (or
    memory-mapped, ``np.load(..., mmap_mode="r")``: only the rows asked for are read)
    arrays."""
    return lambda ids: tuple(np.asarray(a[np.asarray(ids)]) for a in arrays)


class Pool(NamedTuple):
    """The data a run's mapped calls read: ``x``, ``y`` (device arrays, or
    :class:`~jaxpfl.core.engine.PerDevice` blocks) and the ``splits`` whose indices point
    into them (the dataset's own, or localized to a ``placement``)."""

    x: Any
    y: Any
    splits: Splits
    placement: ClientPlacement | None = None

    @property
    def per_device(self) -> bool:
        return self.placement is not None

    def localize(self, splits: Splits, clients: np.ndarray | None = None) -> Splits:
        """Other per-client splits of the same dataset (e.g. held-out support/query lists
        of ``clients``) pointed into this pool."""
        return splits if self.placement is None else self.placement.localize(splits, clients)


def place_pool(dataset, strategy: Strategy, load: Loader | None = None) -> Pool:
    """The dataset's pool for ``strategy``: the whole pool on this process's default device
    (the driver replicates it on the mesh for ``sharded``), or, with
    ``pool_layout="per-device"``, each device's own clients' examples (``load(ids)`` reads
    the rows of example ids ``ids``, default: the dataset's arrays; each process calls it
    for its own devices only)."""
    splits = Splits.of(dataset)
    if strategy.pool_layout != "per-device":
        return Pool(jnp.asarray(np.asarray(dataset.x)), jnp.asarray(dataset.y), splits)
    placement = ClientPlacement.balanced(splits, strategy.client_multiple)
    x, y = placement.pool(load or array_loader(dataset.x, dataset.y), strategy.mesh())
    return Pool(x, y, placement.localize(splits), placement)


__all__ = ["ClientPlacement", "Loader", "Pool", "array_loader", "place_pool"]
