"""Rotated datasets of the FEDORA reference (docs/algorithms.md §7.7), replayed exactly.

Client i of K sees every one of its images rotated by ``360 i / K`` degrees counter-clockwise
(K = 36: 0, 10, ..., 350 degrees). The per-client examples are the reference's draws: with
``RandomState(seed)`` (the reference's ``np.random.seed(42)``), ``ridx = arange(N_train)`` is
shuffled in place, its first 5/6 form the train pool and the rest the validation pool (MNIST and
Fashion-MNIST: 50,000 / 10,000); then ``tidx = arange(N_test)`` is shuffled in place with the
same stream. Client i takes the i-th consecutive block of ``n_train`` (128), ``n_val`` (64) and
``n_test`` (``floor(N_test / K)`` = 277) indices from the train pool, the validation pool and
``tidx``.

The returned :class:`FederatedDataset` owns rotated copies of the images: its pool is
client-major (client i's ``n_train + n_val + n_test`` rows are consecutive: train, then val, then
test), so each row belongs to one client. Such a pool cannot be rebuilt from the source by a
partition file, so :func:`save_rotated` writes the pixels too (a partition file plus ``x``,
``y`` and their sha256) and :func:`load_rotated` reads it back with every check.

Example::

    raw = load_raw("fashion_mnist")
    ds = fedora_rotated(raw)                    # 36 clients, 128 / 64 / 277 examples each
    small = fedora_rotated(load_raw("mnist_embedded"), n_val=32)   # scaled sizes
"""

from __future__ import annotations

import math
import os
from typing import Any

import numpy as np

from jaxpfl.data.dataset import ClientIndex, DataError, FederatedDataset, RawData
from jaxpfl.data.sources import arrays_sha256
from jaxpfl.data.store import (
    json_safe,
    labels_hash,
    partition_arrays,
    partition_hash,
    pool_arrays,
    read_partition,
    validate_partition,
    write_npz,
)

__all__ = [
    "REFERENCE_SIZES",
    "fedora_indices",
    "fedora_rotated",
    "load_rotated",
    "rotate",
    "save_rotated",
    "scaled_sizes",
]

#: The reference's per-client (train, val) sizes; test is ``floor(N_test / K)``.
REFERENCE_SIZES = (128, 64)

_BUILD = "python data_prep/build_rotated.py"
# cos, sin of q * 90 degrees, exact (so rotate(x, 90 q) is an exact pixel permutation)
_QUARTER = ((1.0, 0.0), (0.0, 1.0), (-1.0, 0.0), (0.0, -1.0))


def _cos_sin(degrees: float) -> tuple[float, float]:
    q, r = divmod(float(degrees), 90.0)
    if r == 0.0:
        return _QUARTER[int(q) % 4]
    t = math.radians(float(degrees))
    return math.cos(t), math.sin(t)


def _source_pixels(h: int, w: int, degrees: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """For every output pixel (row r, column c): the source pixel it copies and whether that one
    lies inside the image. With ``dx = c - (w-1)/2``, ``dy = r - (h-1)/2`` (y pointing down),
    the source is ``col = rint(cos t dx - sin t dy + (w-1)/2)``, ``row = rint(sin t dx + cos t dy
    + (h-1)/2)``: the inverse of a counter-clockwise rotation by ``t`` as seen on screen."""
    c, s = _cos_sin(degrees)
    cy, cx = (h - 1) / 2.0, (w - 1) / 2.0
    dy = np.arange(h, dtype=np.float64)[:, None] - cy
    dx = np.arange(w, dtype=np.float64)[None, :] - cx
    col = np.rint(c * dx - s * dy + cx).astype(np.int64)
    row = np.rint(s * dx + c * dy + cy).astype(np.int64)
    inside = (row >= 0) & (row < h) & (col >= 0) & (col < w)
    return row, col, inside


def rotate(images: np.ndarray, degrees: float) -> np.ndarray:
    """Rotate ``[N, H, W, C]`` images counter-clockwise by ``degrees`` about the image centre.

    torchvision ``rotate`` semantics (nearest neighbour, fill 0, same size): every output pixel
    centre is mapped back by the inverse rotation about ``((W-1)/2, (H-1)/2)`` and takes the
    value of the nearest source pixel (``np.rint``), or 0 when that falls outside the image.
    Multiples of 90 degrees use exact cosines, so ``rotate(x, 0)`` is ``x`` and, for square
    images, ``rotate(x, 90 q)`` equals ``np.rot90(x, q, axes=(1, 2))``. The dtype is kept.
    """
    x = np.asarray(images)
    if x.ndim != 4:
        raise DataError(f"rotate: expected images [N, H, W, C], got shape {x.shape}")
    if not math.isfinite(float(degrees)):
        raise DataError(f"rotate: degrees must be a finite number, got {degrees}")
    row, col, inside = _source_pixels(x.shape[1], x.shape[2], degrees)
    out = np.zeros_like(x)
    out[:, inside] = x[:, row[inside], col[inside]]
    return out


def _int(name: str, v: Any, lo: int) -> int:
    if isinstance(v, bool) or not isinstance(v, int | np.integer) or v < lo:
        raise DataError(f"fedora_rotated: {name} must be an integer >= {lo}, got {v!r}")
    return int(v)


def scaled_sizes(
    raw: RawData,
    num_clients: int = 36,
    n_train: int = REFERENCE_SIZES[0],
    n_val: int = REFERENCE_SIZES[1],
) -> tuple[int, int, int]:
    """``(n_train, n_val, n_test)`` for a source too small for the reference sizes: each of
    ``n_train`` / ``n_val`` capped at its pool's share per client (``floor(pool / K)``), and
    ``n_test = floor(N_test / K)``. Unchanged (128, 64, 277) for MNIST-sized sources; for the
    embedded MNIST (8,000 + 2,000) with K = 36: (128, 37, 55)."""
    k = _int("num_clients", num_clients, 1)
    n_src = len(raw.y_train)
    pool_tr = 5 * n_src // 6
    return (
        min(_int("n_train", n_train, 1), pool_tr // k),
        min(_int("n_val", n_val, 0), (n_src - pool_tr) // k),
        len(raw.y_test) // k,
    )


def fedora_indices(
    n_train_source: int,
    n_test_source: int,
    num_clients: int = 36,
    n_train: int = REFERENCE_SIZES[0],
    n_val: int = REFERENCE_SIZES[1],
    n_test: int | None = None,
    seed: int = 42,
    name: str = "source",
) -> tuple[list[np.ndarray], list[np.ndarray], list[np.ndarray]]:
    """The reference's draws: per-client ``(train, val, test)`` source indices (train and val
    index the source's train set, test its test set). See the module docstring; ``n_test`` None
    = ``floor(n_test_source / num_clients)``. Raises a one-line ``DataError`` when a pool is too
    small for ``num_clients`` blocks of the requested size."""
    k = _int("num_clients", num_clients, 1)
    n_src, n_src_te = _int("the train set size", n_train_source, 0), int(n_test_source)
    n_train, n_val = _int("n_train", n_train, 1), _int("n_val", n_val, 0)
    n_test = n_src_te // k if n_test is None else _int("n_test", n_test, 1)
    if isinstance(seed, bool) or not isinstance(seed, int | np.integer) or not 0 <= seed < 2**32:
        raise DataError(f"fedora_rotated: seed must be an integer in [0, 2**32), got {seed!r}")
    pool_tr = 5 * n_src // 6
    pool_val = n_src - pool_tr
    fix = "pass smaller per-client sizes (n_train, n_val, n_test) or fewer clients"
    if n_test < 1:
        raise DataError(
            f"fedora_rotated: {name} has {n_src_te} test examples, fewer than {k} clients; {fix}"
        )
    for what, need, have, of in (
        ("n_train", n_train, pool_tr, f"train pool (5/6 of {n_src} train examples)"),
        ("n_val", n_val, pool_val, f"validation pool (1/6 of {n_src} train examples)"),
        ("n_test", n_test, n_src_te, "test set"),
    ):
        if k * need > have:
            raise DataError(
                f"fedora_rotated: {name} is too small: {k} clients x {what}={need} = {k * need} "
                f"> {have} examples in its {of}; {fix}"
            )
    rs = np.random.RandomState(int(seed))
    ridx = np.arange(n_src)
    rs.shuffle(ridx)
    tidx = np.arange(n_src_te)
    rs.shuffle(tidx)
    tr_pool, val_pool = ridx[:pool_tr], ridx[pool_tr:]
    train = [tr_pool[n_train * i : n_train * (i + 1)].copy() for i in range(k)]
    val = [val_pool[n_val * i : n_val * (i + 1)].copy() for i in range(k)]
    test = [tidx[n_test * i : n_test * (i + 1)].copy() for i in range(k)]
    return train, val, test


def fedora_rotated(
    raw: RawData,
    num_clients: int = 36,
    n_train: int = REFERENCE_SIZES[0],
    n_val: int = REFERENCE_SIZES[1],
    n_test: int | None = None,
    seed: int = 42,
) -> FederatedDataset:
    """The FEDORA rotated dataset of ``raw`` (§7.7): K clients, client i rotated by 360 i / K.

    With MNIST or Fashion-MNIST (60,000 + 10,000) and the defaults this is the reference setting
    exactly: 36 clients with 128 train, 64 validation and 277 test examples each. A smaller
    source keeps the same recipe (train pool = the first ``floor(5 N / 6)`` shuffled train
    indices, validation pool the rest) but then needs *scaled* sizes, passed explicitly (see
    :func:`scaled_sizes`; the embedded MNIST with K = 36 fits at most 185 / 37 / 55). Sizes that
    do not fit raise a one-line ``DataError``. ``meta['scaled']`` is True unless the source is
    60,000 + 10,000 and the sizes are 128 / 64 / ``floor(10000 / K)``.

    Every client is a training client (none held out); client ids are ``'0'..'K-1'``.
    """
    x_tr, x_te = np.asarray(raw.x_train), np.asarray(raw.x_test)
    if x_tr.ndim != 4 or x_te.ndim != 4 or x_tr.shape[1:] != x_te.shape[1:]:
        raise DataError(
            f"fedora_rotated: {raw.name} needs train and test images [N, H, W, C] of one shape, "
            f"got {x_tr.shape} and {x_te.shape}"
        )
    if len(x_tr) != len(raw.y_train) or len(x_te) != len(raw.y_test):
        raise DataError(f"fedora_rotated: {raw.name} has different numbers of images and labels")
    k = _int("num_clients", num_clients, 1)
    n_src, n_src_te = len(raw.y_train), len(raw.y_test)
    train, val, test = fedora_indices(
        n_src, n_src_te, k, n_train, n_val, n_test, seed=seed, name=raw.name
    )
    n_train, n_val, n_test = len(train[0]), len(val[0]), len(test[0])
    m = n_train + n_val + n_test
    y_tr, y_te = np.asarray(raw.y_train), np.asarray(raw.y_test)
    angles = [360.0 * i / k for i in range(k)]
    xs, ys = [], []
    for i in range(k):
        block = np.concatenate([x_tr[train[i]], x_tr[val[i]], x_te[test[i]]])
        xs.append(rotate(block, angles[i]))
        ys.append(np.concatenate([y_tr[train[i]], y_tr[val[i]], y_te[test[i]]]))
    x = np.concatenate(xs) if xs else np.zeros((0, *x_tr.shape[1:]), x_tr.dtype)
    y = np.concatenate(ys).astype(np.int32)
    base = np.arange(k, dtype=np.int64)[:, None] * m
    tr_ci = ClientIndex.from_lists(list(base + np.arange(n_train)))
    va_ci = ClientIndex.from_lists(list(base + n_train + np.arange(n_val)))
    te_ci = ClientIndex.from_lists(list(base + n_train + n_val + np.arange(n_test)))
    ids = tuple(str(i) for i in range(k))
    validate_partition(tr_ci, te_ci, len(y), ids, val=va_ci)
    reference = (n_src, n_src_te, n_train, n_val, n_test) == (
        60000,
        10000,
        *REFERENCE_SIZES,
        10000 // k,
    )
    pool_tr = 5 * n_src // 6
    meta: dict[str, Any] = {
        "source": raw.name,
        "partition": "fedora_rotated",
        "seed": int(seed),
        "num_clients": k,
        "angles": angles,
        "rotation": "counter-clockwise about ((W-1)/2, (H-1)/2), nearest (rint), fill 0",
        "n_train": n_train,
        "n_val": n_val,
        "n_test": n_test,
        "scaled": not reference,
        "source_train_size": n_src,
        "source_test_size": n_src_te,
        "train_pool": pool_tr,
        "val_pool": n_src - pool_tr,
        "layout": "client-major: per client n_train train, n_val val, n_test test rows",
        "pool_size": len(y),
        "num_classes": int(raw.num_classes),
        "num_eval_clients": 0,
        "hash": partition_hash(tr_ci, te_ci, va_ci),
        "labels_sha256": labels_hash(y),
        "source_labels_sha256": labels_hash(pool_arrays(raw)[1]),
    }
    if raw.meta:
        meta["source_meta"] = raw.meta
    return FederatedDataset(
        name=f"rotated_{raw.name}",
        x=x,
        y=y,
        train=tr_ci,
        test=te_ci,
        client_ids=ids,
        num_classes=int(raw.num_classes),
        train_clients=np.arange(k, dtype=np.int64),
        eval_clients=np.zeros(0, np.int64),
        meta=json_safe(meta),
        val=va_ci,
    )


def save_rotated(path: str | os.PathLike, ds: FederatedDataset) -> str:
    """Write ``ds`` with its pool to ``path`` (``.npz`` added if missing); returns the path.

    The file is a partition file (``train_<k>``, ``val_<k>``, ``test_<k>``, ``meta``, ``hash``;
    readable by :func:`~jaxpfl.data.store.read_partition`) plus ``x``, ``y``, ``num_classes``
    and ``data_sha256`` (:func:`~jaxpfl.data.sources.arrays_sha256` of ``x`` and ``y``).
    """
    arrays = partition_arrays(ds)
    arrays["x"] = np.ascontiguousarray(ds.x)
    arrays["y"] = np.ascontiguousarray(ds.y, dtype=np.int32)
    arrays["num_classes"] = np.asarray(int(ds.num_classes), np.int64)
    arrays["data_sha256"] = np.asarray(arrays_sha256(arrays["x"], arrays["y"]))
    return write_npz(path, arrays)


def load_rotated(path: str | os.PathLike) -> FederatedDataset:
    """Read a file written by :func:`save_rotated` (``data_prep/build_rotated.py``).

    Checks, each a one-line ``DataError``: the file holds ``x`` and ``y`` with a matching
    ``data_sha256``; indices in range, no overlap between clients within a split or between a
    client's train, validation and test splits; the partition content hash matches.
    """
    path = os.fspath(path)
    part = read_partition(path)
    how = f"re-create it with {_BUILD}"
    with np.load(path, allow_pickle=False) as f:
        missing = [key for key in ("x", "y", "data_sha256") if key not in f.files]
        if missing:
            raise DataError(
                f"{path}: no {', '.join(missing)} array(s): a partition file without its pool, not "
                f"a rotated dataset; load it with load_partition or {how}"
            )
        x, y, digest = f["x"], f["y"], str(f["data_sha256"])
        num_classes = int(f["num_classes"]) if "num_classes" in f.files else None
    if x.ndim != 4 or y.ndim != 1 or len(x) != len(y) or not np.issubdtype(y.dtype, np.integer):
        raise DataError(f"{path}: x {x.shape} / y {y.dtype} {y.shape} are not a pool; {how}")
    if arrays_sha256(x, y) != digest:
        raise DataError(f"{path}: pixel/label sha256 mismatch (file corrupted or edited); {how}")
    meta = dict(part["meta"])
    if num_classes is None:
        num_classes = int(meta.get("num_classes", int(y.max(initial=-1)) + 1))
    train = ClientIndex.from_lists(part["train"])
    test = ClientIndex.from_lists(part["test"])
    val = ClientIndex.from_lists(part["val"])
    validate_partition(train, test, len(y), part["client_ids"], val=val)
    h = partition_hash(train, test, val)
    if part["hash"] is not None and part["hash"] != h:
        raise DataError(f"{path}: content hash mismatch (file corrupted or edited); {how}")
    meta["hash"] = h
    return FederatedDataset(
        name=f"rotated_{meta.get('source', 'unknown')}",
        x=x,
        y=y.astype(np.int32),
        train=train,
        test=test,
        client_ids=tuple(part["client_ids"]),
        num_classes=num_classes,
        train_clients=np.sort(part["train_clients"]),
        eval_clients=np.sort(part["eval_clients"]),
        meta=meta,
        val=val,
    )
