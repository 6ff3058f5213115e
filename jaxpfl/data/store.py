"""Export / import of partitions as ``.npz`` index files, so a split can be replayed exactly.

File layout (``np.savez_compressed``):

- ``train_<k>``, ``test_<k>``: int64 indices of client k into the pool (train examples of the
  source, then its test examples; see :func:`pool_arrays`);
- ``val_<k>`` (only when some client has a validation split): client k's validation indices;
- ``client_ids`` (str), ``train_clients``, ``eval_clients`` (int64);
- ``meta``: a JSON string (source, partition, seed, ...);
- ``hash``: :func:`partition_hash` of the index arrays, checked on load.

Only the ``train_<k>`` keys are required: a file written by other code (for example indices
exported from a PFLlib run) with ``train_<k>`` / ``test_<k>`` alone imports with client ids
``str(k)``, every client training and no held-out clients. A file without ``val_<k>`` keys
(every file written before validation splits existed) loads with empty validation splits; the
content hash of a partition without validation indices is the same as before they existed.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from jaxpfl.data.dataset import ClientIndex, DataError, FederatedDataset, MappedRows, RawData

__all__ = [
    "pool_arrays",
    "labels_hash",
    "partition_hash",
    "validate_partition",
    "json_safe",
    "partition_arrays",
    "save_partition",
    "load_partition",
    "read_partition",
]


def pool_arrays(raw: RawData) -> tuple[np.ndarray | MappedRows, np.ndarray, int]:
    """``(x, y, n_train)``: the source's train examples followed by its test examples.
    Memory-mapped images (uncompressed IDX files, ``np.load(..., mmap_mode="r")``) stay on
    disk: ``x`` is then :class:`~jaxpfl.data.dataset.MappedRows`, read where indexed."""
    if isinstance(raw.x_train, np.memmap) or isinstance(raw.x_test, np.memmap):
        x = MappedRows(raw.x_train, raw.x_test)
    else:
        x = np.concatenate([raw.x_train, raw.x_test], axis=0)
    y = np.concatenate([np.asarray(raw.y_train), np.asarray(raw.y_test)]).astype(np.int32)
    return x, y, len(raw.y_train)


def labels_hash(y: np.ndarray) -> str:
    """sha256 of the pool labels (int64 little-endian): the data a partition was made on."""
    return hashlib.sha256(np.ascontiguousarray(y, dtype="<i8").tobytes()).hexdigest()


def _as_index(split: ClientIndex | Sequence[np.ndarray]) -> ClientIndex:
    return split if isinstance(split, ClientIndex) else ClientIndex.from_lists(list(split))


def partition_hash(
    train: ClientIndex | Sequence[np.ndarray],
    test: ClientIndex | Sequence[np.ndarray],
    val: ClientIndex | Sequence[np.ndarray] | None = None,
) -> str:
    """sha256 over (train sizes, train indices, test sizes, test indices), int64 little-endian,
    then (val sizes, val indices) when ``val`` holds any index (so a partition without a
    validation split hashes as it did before validation splits existed)."""
    h = hashlib.sha256()
    splits = [_as_index(train), _as_index(test)]
    if val is not None:
        v = _as_index(val)
        if len(v.flat):
            splits.append(v)
    for ci in splits:
        h.update(np.ascontiguousarray(ci.sizes, dtype="<i8").tobytes())
        h.update(np.ascontiguousarray(ci.flat, dtype="<i8").tobytes())
    return h.hexdigest()


def _name(client_ids: Sequence[str] | None, k: int) -> str:
    return f"client {k}" + (
        f" ({client_ids[k]})" if client_ids is not None and client_ids[k] != str(k) else ""
    )


def validate_partition(
    train: ClientIndex,
    test: ClientIndex,
    n: int,
    client_ids: Sequence[str] | None = None,
    val: ClientIndex | None = None,
) -> None:
    """Raise ``DataError`` (naming the client) unless every index is in ``[0, n)``, no index is held
    by two clients within a split, and no client has an index in two of its train, validation
    and test splits. ``val`` None = no validation split."""
    if len(train) != len(test) or (val is not None and len(val) != len(train)):
        v = "" if val is None else f", {len(val)} val"
        raise DataError(
            f"partition has {len(train)} train{v} and {len(test)} test lists; "
            "need one each per client"
        )
    splits = [("train", train), ("test", test)]
    if val is not None:
        splits.append(("val", val))
    owners = {}
    for split_name, split in splits:
        owner = np.repeat(np.arange(len(split), dtype=np.int64), split.sizes)
        bad = np.flatnonzero((split.flat < 0) | (split.flat >= n))
        if len(bad):
            k = int(owner[bad[0]])
            raise DataError(
                f"{_name(client_ids, k)}: {split_name} index {int(split.flat[bad[0]])} "
                f"out of range [0, {n}); the partition does not fit this dataset"
            )
        # O(n) duplicate check: an owner map filled in one scatter; a repeated index shows up
        # as a position whose owner-map entry was overwritten by a different position.
        where = np.full(n, -1, np.int64)
        where[split.flat] = np.arange(len(split.flat))
        dup = np.flatnonzero(where[split.flat] != np.arange(len(split.flat)))
        if len(dup):
            first = dup[0]
            other = int(where[split.flat[first]])
            a, b = int(owner[first]), int(owner[other])
            what = "twice" if a == b else f"also in {_name(client_ids, b)}"
            raise DataError(
                f"{_name(client_ids, a)}: {split_name} index {int(split.flat[first])} "
                f"appears {what}; each example may belong to one client per split"
            )
        owners[split_name] = (owner, where, split)
    # two splits of one client: look up, for every index of split b, which client holds it in
    # split a, and fail where that is the same client.
    pairs = [("train", "test")] + ([("train", "val"), ("val", "test")] if val is not None else [])
    for a, b in pairs:
        a_owner, a_where, _ = owners[a]
        b_owner, _, b_split = owners[b]
        if len(a_owner) == 0 or len(b_owner) == 0:
            continue
        pos = a_where[b_split.flat]
        hit = np.flatnonzero((pos >= 0) & (a_owner[np.maximum(pos, 0)] == b_owner))
        if len(hit):
            k, i = int(b_owner[hit[0]]), int(b_split.flat[hit[0]])
            raise DataError(
                f"{_name(client_ids, k)}: index {i} is in both its {a} and {b} split; "
                "a client's splits must be disjoint"
            )


def json_safe(obj: Any) -> Any:
    """``obj`` round-tripped through JSON (arrays become lists, other objects strings)."""
    return json.loads(
        json.dumps(obj, default=lambda o: o.tolist() if hasattr(o, "tolist") else str(o))
    )


def partition_arrays(
    data: FederatedDataset | tuple[Sequence[np.ndarray], ...] | Mapping[str, Any],
    meta: Mapping[str, Any] | None = None,
) -> dict[str, np.ndarray]:
    """The arrays :func:`save_partition` writes (see the module docstring), as a dict.

    ``data``: a :class:`FederatedDataset`; a ``(train_lists, test_lists[, val_lists])`` tuple; or
    a mapping with ``train``, ``test`` and optionally ``val``, ``client_ids``, ``train_clients``,
    ``eval_clients``. ``meta`` is merged over the dataset's own meta. ``val_<k>`` keys are
    written only when some client has validation indices.
    """
    val: list[np.ndarray] | None
    if isinstance(data, FederatedDataset):
        train, test, val = list(data.train), list(data.test), list(data.val)
        ids, tr_c, ev_c = list(data.client_ids), data.train_clients, data.eval_clients
        full_meta = dict(data.meta)
    else:
        if isinstance(data, Mapping):
            train, test = list(data["train"]), list(data["test"])
            val = None if data.get("val") is None else list(data["val"])
            ids = data.get("client_ids")
            tr_c, ev_c = data.get("train_clients"), data.get("eval_clients")
        else:
            if len(data) not in (2, 3):
                raise DataError(
                    "save_partition: pass (train, test) or (train, test, val) index lists"
                )
            train, test = list(data[0]), list(data[1])
            val = list(data[2]) if len(data) == 3 else None
            ids = tr_c = ev_c = None
        full_meta = {}
        k = len(train)
        ids = [str(i) for i in range(k)] if ids is None else [str(i) for i in ids]
        ev_c = np.zeros(0, np.int64) if ev_c is None else ev_c
        tr_c = np.setdiff1d(np.arange(k), ev_c) if tr_c is None else tr_c
    if len(test) != len(train) or len(ids) != len(train) or (val and len(val) != len(train)):
        raise DataError("save_partition: train, test, val and client_ids need one entry per client")
    if val is not None and not any(len(v) for v in val):
        val = None
    full_meta.update(meta or {})
    arrays: dict[str, np.ndarray] = {}
    for k, (a, b) in enumerate(zip(train, test)):
        arrays[f"train_{k}"] = np.asarray(a, np.int64)
        arrays[f"test_{k}"] = np.asarray(b, np.int64)
        if val is not None:
            arrays[f"val_{k}"] = np.asarray(val[k], np.int64)
    arrays["client_ids"] = np.asarray(ids, dtype=str)
    arrays["train_clients"] = np.asarray(tr_c, np.int64)
    arrays["eval_clients"] = np.asarray(ev_c, np.int64)
    arrays["meta"] = np.asarray(json.dumps(json_safe(full_meta), sort_keys=True))
    arrays["hash"] = np.asarray(partition_hash(train, test, val))
    return arrays


def save_partition(
    path: str | os.PathLike,
    data: FederatedDataset | tuple[Sequence[np.ndarray], ...] | Mapping[str, Any],
    meta: Mapping[str, Any] | None = None,
) -> str:
    """Write a partition to ``path`` (``.npz``; the suffix is added if missing); returns the path.

    ``data``: a :class:`FederatedDataset`; a ``(train_lists, test_lists[, val_lists])`` tuple; or
    a mapping with ``train``, ``test`` and optionally ``val``, ``client_ids``, ``train_clients``,
    ``eval_clients``. ``meta`` is merged over the dataset's own meta.
    """
    arrays = partition_arrays(data, meta)
    return write_npz(path, arrays)


def write_npz(path: str | os.PathLike, arrays: Mapping[str, np.ndarray]) -> str:
    """``np.savez_compressed`` to ``path`` (``.npz`` added if missing, folders created)."""
    path = os.fspath(path)
    if not path.endswith(".npz"):
        path += ".npz"
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    np.savez_compressed(path, **arrays)
    return path


_KEY = re.compile(r"^(train|test|val)_(\d+)$")


def read_partition(path: str | os.PathLike) -> dict[str, Any]:
    """Read a partition file without data: ``{'train', 'test', 'client_ids', 'train_clients',
    'eval_clients', 'meta', 'hash', 'val'}`` (``hash`` None when the file has none; ``val`` empty
    arrays when it has no ``val_<k>`` keys). Checks the structure only; :func:`load_partition`
    validates indices against a dataset."""
    path = os.fspath(path)
    if not os.path.exists(path):
        raise DataError(f"{path}: no such partition file")
    try:
        f = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as e:
        raise DataError(f"{path}: not a readable .npz partition file ({e})") from None
    with f:
        found: dict[str, dict[int, np.ndarray]] = {"train": {}, "test": {}, "val": {}}
        for key in f.files:
            m = _KEY.match(key)
            if m:
                arr = f[key]
                if arr.ndim != 1 or (arr.size and not np.issubdtype(arr.dtype, np.integer)):
                    raise DataError(
                        f"{path}: {key} must be a 1-D integer array, got {arr.dtype} {arr.shape}"
                    )
                found[m.group(1)][int(m.group(2))] = arr.astype(np.int64)
        k = len(found["train"])
        if k == 0:
            raise DataError(f"{path}: no train_<k> arrays; not a partition file")
        if sorted(found["train"]) != list(range(k)):
            raise DataError(f"{path}: train_<k> keys must be train_0 .. train_{k - 1}")
        if found["test"] and sorted(found["test"]) != list(range(k)):
            raise DataError(f"{path}: test_<k> keys must match train_<k> (0 .. {k - 1})")
        if found["val"] and sorted(found["val"]) != list(range(k)):
            raise DataError(f"{path}: val_<k> keys must match train_<k> (0 .. {k - 1})")
        empty = np.zeros(0, np.int64)
        train = [found["train"][i] for i in range(k)]
        test = [found["test"].get(i, empty) for i in range(k)]
        val = [found["val"].get(i, empty) for i in range(k)]
        ids = (
            [str(s) for s in f["client_ids"]]
            if "client_ids" in f.files
            else [str(i) for i in range(k)]
        )
        if len(ids) != k:
            raise DataError(f"{path}: {len(ids)} client_ids for {k} clients")
        ev_c = f["eval_clients"].astype(np.int64) if "eval_clients" in f.files else empty
        tr_c = (
            f["train_clients"].astype(np.int64)
            if "train_clients" in f.files
            else np.setdiff1d(np.arange(k), ev_c)
        )
        try:
            meta = json.loads(str(f["meta"])) if "meta" in f.files else {}
        except json.JSONDecodeError:
            raise DataError(f"{path}: meta is not valid JSON") from None
        stored_hash = str(f["hash"]) if "hash" in f.files else None
    for name, cl in (("train_clients", tr_c), ("eval_clients", ev_c)):
        if len(cl) and (cl.min() < 0 or cl.max() >= k):
            raise DataError(f"{path}: {name} has ids outside 0..{k - 1}")
    if len(np.intersect1d(tr_c, ev_c)):
        raise DataError(
            f"{path}: client {int(np.intersect1d(tr_c, ev_c)[0])} is both a training and "
            "an evaluation client"
        )
    return {
        "train": train,
        "test": test,
        "val": val,
        "client_ids": ids,
        "train_clients": tr_c,
        "eval_clients": ev_c,
        "meta": meta,
        "hash": stored_hash,
    }


def load_partition(path: str | os.PathLike, raw: RawData) -> FederatedDataset:
    """Rebuild the :class:`FederatedDataset` saved at ``path`` on the pool of ``raw``.

    Checks, each a ``DataError``: pool size and label fingerprint match the ones recorded (when
    recorded); indices in range; no overlap within a split across clients or between two of a
    client's train, validation and test splits (the message names the client); the stored
    content hash matches. A file without ``val_<k>`` keys loads with empty validation splits.
    """
    part = read_partition(path)
    x, y, n_train = pool_arrays(raw)
    meta = dict(part["meta"])
    n = len(y)
    if "pool_size" in meta and int(meta["pool_size"]) != n:
        raise DataError(
            f"{path}: made for a pool of {meta['pool_size']} examples, {raw.name} has {n}; "
            "load it with the dataset it was made from"
        )
    train = ClientIndex.from_lists(part["train"])
    test = ClientIndex.from_lists(part["test"])
    val = ClientIndex.from_lists(part["val"])
    validate_partition(train, test, n, part["client_ids"], val=val)
    if "labels_sha256" in meta and meta["labels_sha256"] != labels_hash(y):
        raise DataError(
            f"{path}: the labels of {raw.name} differ from those the partition was made on; "
            "load it with the dataset it was made from"
        )
    h = partition_hash(train, test, val)
    if part["hash"] is not None and part["hash"] != h:
        raise DataError(
            f"{path}: content hash mismatch (file corrupted or edited); re-create the partition"
        )
    meta["hash"] = h
    meta.setdefault("pool_size", n)
    meta.setdefault("n_train_pool", n_train)
    return FederatedDataset(
        name=str(meta.get("source", raw.name)),
        x=x,
        y=y,
        train=train,
        test=test,
        client_ids=tuple(part["client_ids"]),
        num_classes=int(raw.num_classes),
        train_clients=np.sort(part["train_clients"]),
        eval_clients=np.sort(part["eval_clients"]),
        meta=meta,
        val=val,
    )
