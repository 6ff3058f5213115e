"""In-memory federated datasets: one flat pool of examples plus per-client index arrays.

The pool (``x: [N, H, W, C] uint8``, ``y: [N] int32``) is stored once; every client's train,
test and (optional) validation split is an array of indices into it (no per-client padding, no
copies). Normalisation
happens on device, in the model's input function, so stored arrays stay small.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import numpy as np

from jaxpfl.errors import DataError  # re-exported: data code raises it


@dataclasses.dataclass(frozen=True)
class RawData:
    """A centralised dataset as a source returns it (before partitioning).

    ``x_*`` are uint8 ``[N, H, W, C]``; ``y_*`` int32 ``[N]`` in ``0..num_classes-1``.
    ``writers_*`` (optional) give each example's natural client id (LEAF / TFF writers).
    """

    name: str
    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    num_classes: int
    writers_train: np.ndarray | None = None
    writers_test: np.ndarray | None = None
    meta: dict[str, Any] = dataclasses.field(default_factory=dict)


class ClientIndex:
    """Ragged per-client index arrays stored flat: client k owns
    ``flat[offsets[k]:offsets[k+1]]``."""

    def __init__(self, flat: np.ndarray, offsets: np.ndarray):
        self.flat = np.asarray(flat, dtype=np.int64)
        self.offsets = np.asarray(offsets, dtype=np.int64)
        if self.offsets.ndim != 1 or self.offsets[0] != 0 or self.offsets[-1] != len(self.flat):
            raise DataError("ClientIndex: offsets must start at 0 and end at len(flat)")
        if np.any(np.diff(self.offsets) < 0):
            raise DataError("ClientIndex: offsets must be non-decreasing")

    @classmethod
    def from_lists(cls, parts: Sequence[np.ndarray]) -> ClientIndex:
        sizes = np.array([len(p) for p in parts], dtype=np.int64)
        offsets = np.concatenate([[0], np.cumsum(sizes)])
        flat = (
            np.concatenate([np.asarray(p, np.int64) for p in parts]) if len(parts) else np.zeros(0)
        )
        return cls(flat, offsets)

    @classmethod
    def empty(cls, k: int) -> ClientIndex:
        """``k`` clients, each with no indices."""
        if k < 0:
            raise DataError(f"ClientIndex.empty: need k >= 0 clients, got {k}")
        return cls(np.zeros(0, np.int64), np.zeros(int(k) + 1, np.int64))

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def __getitem__(self, k: int) -> np.ndarray:
        return self.flat[self.offsets[k] : self.offsets[k + 1]]

    def __iter__(self):
        return (self[k] for k in range(len(self)))

    @property
    def sizes(self) -> np.ndarray:
        return np.diff(self.offsets)

    def padded(self, clients: Sequence[int] | np.ndarray, width: int | None = None):
        """``(idx [M, width] int32, n [M] int32)`` for the given clients; padding is index 0."""
        clients = np.asarray(clients, dtype=np.int64)
        n = self.sizes[clients]
        width = int(max(1, n.max(initial=0))) if width is None else int(width)
        if n.max(initial=0) > width:
            raise DataError(f"padded(): width {width} < largest client ({n.max()})")
        out = np.zeros((len(clients), width), dtype=np.int32)
        for row, k in enumerate(clients):
            part = self[int(k)]
            out[row, : len(part)] = part
        return out, n.astype(np.int32)

    def equals(self, other: ClientIndex) -> bool:
        return np.array_equal(self.flat, other.flat) and np.array_equal(self.offsets, other.offsets)


class MappedRows:
    """A read-only pool of examples kept on disk: the row-wise concatenation of
    memory-mapped arrays (e.g. a source's train and test images), read only where indexed.

    ``rows[ids]`` (an integer array, a slice or an int) reads just those rows from the files,
    so a process that indexes only its own clients' examples (a per-device pool,
    :func:`jaxpfl.core.placement.place_pool`) never holds the others in memory;
    ``np.asarray(rows)`` reads everything. ``len``, ``shape``, ``dtype``, ``ndim`` and
    ``nbytes`` behave as for the concatenated array. :func:`jaxpfl.data.store.pool_arrays`
    returns one when a source's images are memory-mapped (uncompressed IDX files).
    """

    def __init__(self, *parts: np.ndarray):
        if not parts or len({(p.shape[1:], np.dtype(p.dtype)) for p in parts}) != 1:
            raise DataError("MappedRows: needs arrays with the same row shape and dtype")
        self.parts = tuple(parts)
        self.starts = np.cumsum([0] + [len(p) for p in parts])

    def __len__(self) -> int:
        return int(self.starts[-1])

    @property
    def shape(self) -> tuple[int, ...]:
        return (len(self),) + tuple(self.parts[0].shape[1:])

    @property
    def dtype(self) -> np.dtype:
        return np.dtype(self.parts[0].dtype)

    @property
    def ndim(self) -> int:
        return len(self.shape)

    @property
    def nbytes(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64)) * self.dtype.itemsize

    def __getitem__(self, key: Any) -> np.ndarray:
        if isinstance(key, tuple):
            if not key:
                return np.asarray(self)
            return self[key[0]][(slice(None),) + key[1:]]
        if isinstance(key, slice):
            ids = np.arange(len(self))[key]
        else:
            ids = np.asarray(key)
            if ids.dtype == bool:
                ids = np.flatnonzero(ids)
            if ids.ndim == 0:
                return self[ids[None]][0]
            ids = np.where(ids < 0, ids + len(self), ids).astype(np.int64)
        if len(ids) and (ids.min() < 0 or ids.max() >= len(self)):
            raise IndexError(f"MappedRows: index out of range [0, {len(self)})")
        out = np.empty(ids.shape + self.shape[1:], self.dtype)
        part = np.searchsorted(self.starts, ids, side="right") - 1
        for j, a in enumerate(self.parts):
            sel = part == j
            if sel.any():
                out[sel] = a[ids[sel] - self.starts[j]]
        return out

    def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray:
        out = np.concatenate([np.asarray(p) for p in self.parts], axis=0)
        return out if dtype is None else out.astype(dtype)

    def __repr__(self) -> str:
        return f"MappedRows(shape={self.shape}, dtype={self.dtype}, parts={len(self.parts)})"


@dataclasses.dataclass(frozen=True)
class FederatedDataset:
    """A partitioned dataset.

    Attributes:
      x, y: the pool of examples (uint8 NHWC, int32 labels); ``x`` may be :class:`MappedRows`
        (images left on disk, read where indexed).
      train, test: per-client indices into the pool (``ClientIndex``).
      val: per-client validation indices (``ClientIndex``); always present, one entry per client
        (empty entries when the partition has no validation split; pass None for that).
      client_ids: a name per client (writer id where one exists, else ``str(k)``).
      num_classes: label count C.
      train_clients, eval_clients: integer client ids that train / are held out (never trained on).
      meta: source, partition, seed, alpha, ... (JSON-serialisable).
    """

    name: str
    x: np.ndarray | MappedRows
    y: np.ndarray
    train: ClientIndex
    test: ClientIndex
    client_ids: tuple[str, ...]
    num_classes: int
    train_clients: np.ndarray
    eval_clients: np.ndarray
    meta: dict[str, Any] = dataclasses.field(default_factory=dict)
    val: ClientIndex | None = None

    def __post_init__(self):
        k = len(self.client_ids)
        if self.val is None:
            object.__setattr__(self, "val", ClientIndex.empty(k))
        if len(self.train) != k or len(self.test) != k or len(self.val) != k:
            raise DataError(
                f"{self.name}: train/val/test index lists must have one entry per client ({k})"
            )
        n = len(self.x)
        for split in (self.train, self.test, self.val):
            if len(split.flat) and (split.flat.min() < 0 or split.flat.max() >= n):
                raise DataError(f"{self.name}: client indices out of range [0, {n})")

    @property
    def num_clients(self) -> int:
        return len(self.client_ids)

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(self.x.shape[1:])

    def client_labels(self, k: int, split: str = "train") -> np.ndarray:
        return self.y[getattr(self, split)[k]]
