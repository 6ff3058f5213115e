"""Seeded NumPy partitioners (docs/algorithms.md §7): labels or writer ids -> per-client index
arrays.

Every partitioner returns ``list[np.ndarray]``: one int64 array per client, holding indices into
the array it was given, in the client's *stored order* (the order an unshuffled loader and
FedALA's slice see). No example appears in two clients; "covering" partitioners (``iid``,
the Dirichlet family, ``natural``) assign every example exactly once, ``shards`` drops the
remainder beyond ``num_shards * shard_size`` and ``pfllib_pathological`` may leave classes
unassigned when no client has class budget left.

Randomness: generic partitioners take ``seed`` (int, or a ``numpy.random.Generator`` to continue a
stream) and use ``numpy.random.default_rng``. The compat modes reproduce their reference streams
exactly: ``flower_dirichlet`` (flwr-datasets ``DirichletPartitioner``, ``default_rng(42)``) and
the PFLlib modes (one ``numpy.random.RandomState(1)`` stream shared by the partition and the
per-client 75/25 split; use :func:`pfllib_split` to get both).

Bad input raises :class:`~jaxpfl.data.dataset.DataError` with a one-line message saying what to do.
Work is vectorised over examples: loops run over classes or clients, never over examples.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from jaxpfl.data.dataset import DataError

__all__ = [
    "iid",
    "dirichlet",
    "flower_dirichlet",
    "pfllib_dirichlet",
    "pfllib_pathological",
    "pfllib_split",
    "shards",
    "noniid_slicing",
    "natural",
    "split_clients",
    "holdout_clients",
    "check_no_empty",
]

Seed = int | np.random.Generator | None
LegacySeed = int | np.random.RandomState | None


# --------------------------------------------------------------------------------------------
# validation helpers


def _check_num_clients(num_clients: Any, n: int, what: str = "samples", name: str = "") -> int:
    prefix = f"{name}: " if name else ""
    if isinstance(num_clients, bool) or not isinstance(num_clients, int | np.integer):
        raise DataError(f"{prefix}num_clients must be an integer >= 1, got {num_clients!r}")
    k = int(num_clients)
    if k < 1:
        raise DataError(f"{prefix}num_clients must be >= 1, got {k}")
    if k > n:
        raise DataError(
            f"{prefix}more clients than {what} ({k} clients, {n} {what}); use at most {n} clients"
        )
    return k


def _check_labels(labels: Any, num_classes: int | None, name: str) -> tuple[np.ndarray, int]:
    """Labels as int64 in 0..C-1; returns ``(labels, C)``."""
    y = np.asarray(labels)
    if y.ndim != 1:
        raise DataError(f"{name}: labels must be a 1-D array, got shape {y.shape}")
    if y.size and not np.issubdtype(y.dtype, np.integer):
        if (
            np.issubdtype(y.dtype, np.floating)
            and np.all(np.isfinite(y))
            and np.all(y == np.round(y))
        ):
            y = y.astype(np.int64)
        else:
            raise DataError(f"{name}: labels must be integers 0..C-1, got dtype {y.dtype}")
    y = y.astype(np.int64, copy=False)
    if y.size and y.min() < 0:
        raise DataError(f"{name}: labels must be integers 0..C-1, found {int(y.min())}")
    top = int(y.max()) + 1 if y.size else 0
    if num_classes is None:
        num_classes = top
    elif top > num_classes:
        raise DataError(
            f"{name}: label {top - 1} out of range for num_classes={num_classes}; "
            "pass the right num_classes"
        )
    return y, int(num_classes)


def _check_alpha(alpha: Any, num_clients: int, name: str) -> np.ndarray:
    """Concentration as a length-K float64 vector (a scalar is repeated K times)."""
    try:
        a = np.asarray(alpha, dtype=np.float64)
    except (TypeError, ValueError):
        raise DataError(
            f"{name}: alpha must be a positive number or vector, got {alpha!r}"
        ) from None
    if a.ndim == 0:
        a = np.full(num_clients, float(a))
    elif a.ndim != 1 or len(a) != num_clients:
        raise DataError(
            f"{name}: alpha vector has length {a.size}, expected one value per client "
            f"({num_clients}); pass a scalar or a length-{num_clients} vector"
        )
    if not np.all(np.isfinite(a)) or np.any(a <= 0):
        raise DataError(f"{name}: alpha must be > 0 and finite, got {alpha!r}; use e.g. alpha=0.1")
    return a


def _check_reachable(min_size: int, n: int, k: int, name: str, what: str) -> None:
    if min_size * k > n:
        raise DataError(
            f"{name}: {what}={min_size} is unreachable: {k} clients x {min_size} > {n} examples; "
            f"use a {what} of at most {n // k} or fewer clients"
        )


def _rng(seed: Seed) -> np.random.Generator:
    if isinstance(seed, np.random.Generator):
        return seed
    if isinstance(seed, np.random.RandomState):
        raise DataError("this partitioner needs an int seed or a numpy Generator, not RandomState")
    return np.random.default_rng(seed)


def _legacy_rng(seed: LegacySeed) -> np.random.RandomState:
    if isinstance(seed, np.random.RandomState):
        return seed
    if isinstance(seed, np.random.Generator):
        raise DataError("PFLlib modes need an int seed or a numpy RandomState, not a Generator")
    return np.random.RandomState(seed)


def check_no_empty(parts: Sequence[np.ndarray], name: str, allow_empty: bool = False) -> None:
    """Raise ``DataError`` if a client got no examples (unless ``allow_empty``)."""
    if allow_empty:
        return
    sizes = np.array([len(p) for p in parts])
    empty = np.flatnonzero(sizes == 0)
    if len(empty):
        raise DataError(
            f"{name}: {len(empty)} client(s) got no examples (first: client {int(empty[0])}); "
            "use fewer clients, a larger alpha, or allow_empty=True"
        )


def _class_indices(y: np.ndarray, num_classes: int) -> list[np.ndarray]:
    """Ascending indices of each class 0..C-1 (a stable sort, then cuts)."""
    order = np.argsort(y, kind="stable")
    counts = np.bincount(y, minlength=num_classes)
    return np.split(order, np.cumsum(counts)[:-1])


def _cut_counts(p: np.ndarray, n: int) -> np.ndarray:
    """Per-client counts of ``np.split(I, floor(cumsum(p) * n)[:-1])`` for ``|I| = n``."""
    cuts = (np.cumsum(p) * n).astype(np.int64)[:-1]
    # p >= 0, so the cuts are non-decreasing; the clip only guards against float overshoot.
    return np.diff(np.concatenate(([0], np.clip(cuts, 0, n), [n])))


def _assemble(
    blocks: list[np.ndarray], counts: list[np.ndarray], num_clients: int
) -> list[np.ndarray]:
    """Client lists from class blocks: block c's first counts[c][0] items go to client 0, ...

    Equivalent to appending ``np.split(block_c, cuts_c)[k]`` to client k for c = 0, 1, ...;
    implemented as one stable sort by owner.
    """
    if not blocks:
        return [np.zeros(0, np.int64) for _ in range(num_clients)]
    flat = np.concatenate(blocks).astype(np.int64, copy=False)
    owner = np.concatenate([np.repeat(np.arange(num_clients), c) for c in counts])
    order = np.argsort(owner, kind="stable")
    sizes = np.bincount(owner, minlength=num_clients)
    return np.split(flat[order], np.cumsum(sizes)[:-1])


# --------------------------------------------------------------------------------------------
# IID


def iid(n: int, num_clients: int, seed: Seed = 0) -> list[np.ndarray]:
    """IID split (§7.1): ``π = default_rng(seed).permutation(n)``; client k gets the k-th chunk of
    ``np.array_split(π, K)`` (sizes differ by at most one)."""
    n = int(n)
    k = _check_num_clients(num_clients, n, name="iid")
    perm = _rng(seed).permutation(n)
    return [p.astype(np.int64, copy=False) for p in np.array_split(perm, k)]


# --------------------------------------------------------------------------------------------
# Dirichlet label skew


def dirichlet(
    labels: np.ndarray,
    num_clients: int,
    alpha: float | Sequence[float] | np.ndarray,
    seed: Seed = 0,
    *,
    min_size: int = 10,
    balance: bool = True,
    shuffle: bool = True,
    max_tries: int = 1000,
    num_classes: int | None = None,
    allow_empty: bool = False,
) -> list[np.ndarray]:
    """Dirichlet label skew, jaxpfl's generic recipe (§7.2).

    With ``rng = default_rng(seed)``, repeated up to ``max_tries`` times::

        for c in 0..C-1:   I_c = rng.permutation(ascending indices of class c)
                           p ~ rng.dirichlet(alpha * 1_K)
                           if balance: p_k <- 0 where |idx_k| >= N/K;  p <- p / sum(p)
                             (if that zeroes every client, the unbalanced p is kept)
                           split I_c at floor(cumsum(p) * |I_c|)[:-1]; append part k to idx_k
        accept when min_k |idx_k| >= min_size; then, if shuffle, rng.shuffle(idx_k) for k = 0..K-1

    ``alpha`` may be a scalar or a length-K vector (per-client concentration).
    """
    name = "dirichlet"
    y, c = _check_labels(labels, num_classes, name)
    n = len(y)
    k = _check_num_clients(num_clients, n, name=name)
    a = _check_alpha(alpha, k, name)
    if max_tries < 1:
        raise DataError(f"{name}: max_tries must be >= 1, got {max_tries}")
    _check_reachable(min_size, n, k, name, "min_size")
    rng = _rng(seed)
    classes = _class_indices(y, c)
    cap = n / k
    for _ in range(int(max_tries)):
        sizes = np.zeros(k, np.int64)
        blocks, counts = [], []
        for idx_c in classes:
            block = rng.permutation(idx_c)
            p = rng.dirichlet(a)
            if balance:
                q = np.where(sizes < cap, p, 0.0)
                total = q.sum()
                if total > 0:
                    p = q / total
            cnt = _cut_counts(p, len(block))
            sizes += cnt
            blocks.append(block)
            counts.append(cnt)
        if sizes.min() >= min_size:
            parts = _assemble(blocks, counts, k)
            if shuffle:
                for part in parts:
                    rng.shuffle(part)
            check_no_empty(parts, name, allow_empty)
            return parts
    raise DataError(
        f"{name}: min_size={min_size} not reached after {max_tries} tries "
        f"(alpha={alpha}, {k} clients, {n} examples); "
        "try a larger alpha, fewer clients or a smaller min_size"
    )


def flower_dirichlet(
    labels: np.ndarray,
    num_clients: int,
    alpha: float | Sequence[float] | np.ndarray,
    seed: Seed = 42,
    *,
    min_partition_size: int = 10,
    self_balancing: bool = False,
    shuffle: bool = True,
    max_tries: int = 11,
    allow_empty: bool = False,
) -> list[np.ndarray]:
    """flwr-datasets ``DirichletPartitioner`` semantics, exact (§7.2 Flower mode).

    ``rng = default_rng(seed)``; classes in order of **first appearance**; each class's indices in
    dataset order (not shuffled); ``p ~ rng.dirichlet(alpha)`` (alpha per *partition*); if
    ``self_balancing``, ``p_k <- 0`` for partitions holding **more than** N/K examples and
    ``p <- p / sum(p)`` (sequential sum, as Flower's); cuts ``floor(cumsum(p) n_c)[:-1]``.
    Redo the whole sampling (same rng) while the smallest partition < ``min_partition_size``; fail
    after ``max_tries`` (Flower: 11) attempts. On success shuffle each partition with the same rng.
    """
    name = "flower_dirichlet"
    y, _ = _check_labels(labels, None, name)
    n = len(y)
    k = _check_num_clients(num_clients, n, name=name)
    a = _check_alpha(alpha, k, name)
    rng = _rng(seed)
    _check_reachable(min_partition_size, n, k, name, "min_partition_size")
    uniq, first, counts = np.unique(y, return_index=True, return_counts=True)
    ascending = np.split(np.argsort(y, kind="stable"), np.cumsum(counts)[:-1])
    classes = [ascending[i] for i in np.argsort(first, kind="stable")]  # first appearance
    avg = n / k
    for _ in range(int(max_tries)):
        sizes = np.zeros(k, np.int64)
        counts = []
        for idx_c in classes:
            p = rng.dirichlet(a)
            if self_balancing:
                p = np.where(sizes > avg, 0.0, p)
                # Flower sums numpy scalars with Python's sum(): plain left-to-right addition.
                total = float(np.cumsum(p)[-1])
                if total == 0:
                    raise DataError(
                        f"{name}: self-balancing zeroed every partition; use more clients or "
                        "self_balancing=False"
                    )
                p = p / total
            cnt = _cut_counts(p, len(idx_c))
            sizes += cnt
            counts.append(cnt)
        if sizes.min() >= min_partition_size:
            parts = _assemble(classes, counts, k)
            if shuffle:
                for part in parts:
                    rng.shuffle(part)
            check_no_empty(parts, name, allow_empty)
            return parts
    raise DataError(
        f"{name}: min_partition_size={min_partition_size} not reached after {max_tries} tries "
        f"(alpha={alpha}, {k} partitions); try a larger alpha, fewer clients or a smaller "
        "min_partition_size"
    )


def _pfllib_least_samples(n: int, k: int, batch_size: int, train_ratio: float) -> int:
    return int(min(batch_size / (1 - train_ratio), n / k / 2))


def pfllib_dirichlet(
    labels: np.ndarray,
    num_clients: int,
    alpha: float = 0.1,
    *,
    num_classes: int | None = None,
    batch_size: int = 10,
    train_ratio: float = 0.75,
    least_samples: int | None = None,
    max_tries: int = 1000,
    rng: LegacySeed = None,
) -> list[np.ndarray]:
    """PFLlib's Dirichlet partition, bit-exact (§7.3).

    ``rng``: a ``RandomState`` to draw from (so the caller can continue the stream, as PFLlib's
    split does), an int seed, or None for PFLlib's ``RandomState(1)``. ``least_samples`` defaults to
    ``int(min(batch_size / (1 - train_ratio), N / K / 2))`` (40 for B=10, 0.75). While
    ``min_size < least_samples``: for c = 0..C-1, ``I_c`` = ascending indices of c shuffled in
    place, ``p ~ dirichlet(alpha 1_K)``, ``p_k <- p_k [|idx_k| < N/K]``, ``p <- p / sum p``,
    split at ``int(cumsum(p) |I_c|)[:-1]``, append. Client lists keep class-block order (no final
    shuffle). jaxpfl adds ``max_tries`` (PFLlib loops forever).
    """
    name = "pfllib_dir"
    y, c = _check_labels(labels, num_classes, name)
    n = len(y)
    k = _check_num_clients(num_clients, n, name=name)
    if np.ndim(alpha) != 0:
        raise DataError(f"{name}: alpha must be a scalar (PFLlib repeats it per client)")
    a = _check_alpha(alpha, k, name)
    if not 0 < train_ratio < 1:
        raise DataError(f"{name}: train_ratio must be in (0, 1), got {train_ratio}")
    rs = _legacy_rng(1 if rng is None else rng)
    least = (
        _pfllib_least_samples(n, k, batch_size, train_ratio)
        if least_samples is None
        else least_samples
    )
    classes = _class_indices(y, c)
    cap = n / k
    for _ in range(int(max_tries)):
        sizes = np.zeros(k, np.int64)
        blocks, counts = [], []
        for idx_c in classes:
            block = idx_c.copy()
            rs.shuffle(block)
            p = rs.dirichlet(a)
            p = p * (sizes < cap)
            p = p / p.sum()
            if not np.all(np.isfinite(p)):
                raise DataError(
                    f"{name}: the Dirichlet draw underflowed (alpha={alpha}); use a larger alpha"
                )
            cnt = _cut_counts(p, len(block))
            sizes += cnt
            blocks.append(block)
            counts.append(cnt)
        if sizes.min() >= least:
            return _assemble(blocks, counts, k)
    raise DataError(
        f"{name}: every client >= {least} examples not reached after {max_tries} tries "
        f"(alpha={alpha}, {k} clients, {n} examples); try a larger alpha or fewer clients"
    )


# --------------------------------------------------------------------------------------------
# Pathological splits


def pfllib_pathological(
    labels: np.ndarray,
    num_clients: int,
    class_per_client: int = 2,
    *,
    num_classes: int | None = None,
    balance: bool = False,
    batch_size: int = 10,
    train_ratio: float = 0.75,
    least_samples: int | None = None,
    rng: LegacySeed = None,
    allow_empty: bool = False,
) -> list[np.ndarray]:
    """PFLlib's pathological ("pat") partition, bit-exact (§7.4).

    ``class_per_client=C`` with ``balance=True`` is PFLlib's "iid balance".

    For c = 0..C-1: candidates = clients with class budget > 0 (id order), truncated to the first
    ``ceil(K / C * class_per_client)``; ``n_per = n_c / |cand|``; sizes ``int(n_per)`` (balance) or
    ``randint(max(n_per / 10, least_samples / C), n_per, |cand| - 1)`` (float bounds passed as is),
    the last candidate takes the remainder; candidates take consecutive slices of the ascending
    class-c indices; budgets decrement. Stops early when no client has budget left.
    """
    name = "pfllib_pat"
    y, c = _check_labels(labels, num_classes, name)
    n = len(y)
    k = _check_num_clients(num_clients, n, name=name)
    if isinstance(class_per_client, bool) or not isinstance(class_per_client, int | np.integer):
        raise DataError(f"{name}: class_per_client must be an integer, got {class_per_client!r}")
    if not 1 <= class_per_client <= max(c, 1):
        raise DataError(f"{name}: class_per_client must be in 1..{c}, got {class_per_client}")
    if not 0 < train_ratio < 1:
        raise DataError(f"{name}: train_ratio must be in (0, 1), got {train_ratio}")
    rs = _legacy_rng(1 if rng is None else rng)
    least = (
        _pfllib_least_samples(n, k, batch_size, train_ratio)
        if least_samples is None
        else least_samples
    )
    classes = _class_indices(y, c)
    budget = np.full(k, int(class_per_client), np.int64)
    take = int(np.ceil((k / c) * class_per_client))
    pieces: list[list[np.ndarray]] = [[] for _ in range(k)]
    for cls in range(c):
        cand = np.flatnonzero(budget > 0)
        if len(cand) == 0:
            break
        cand = cand[:take]
        n_all = len(classes[cls])
        m = len(cand)
        n_per = n_all / m
        if balance:
            num = [int(n_per)] * (m - 1)
        else:
            try:
                num = rs.randint(max(n_per / 10, least / c), n_per, m - 1).tolist()
            except ValueError:
                raise DataError(
                    f"{name}: class {cls} has too few examples ({n_all}) for {m} clients; "
                    "use balance=True, fewer clients or more classes per client"
                ) from None
        num.append(n_all - sum(num))
        start = 0
        for client, size in zip(cand, num):
            pieces[client].append(classes[cls][start : start + size])
            start += size
            budget[client] -= 1
    parts = [np.concatenate(p) if p else np.zeros(0, np.int64) for p in pieces]
    check_no_empty(parts, name, allow_empty)
    return parts


def shards(
    labels: np.ndarray,
    num_clients: int,
    shards_per_client: int = 2,
    num_shards: int | None = None,
    shard_size: int | None = None,
    seed: Seed = 0,
) -> list[np.ndarray]:
    """McMahan shards (§7.4): stable-sort indices by label, cut into S shards of size z, give each
    client ``shards_per_client`` distinct shards drawn uniformly without replacement.

    Defaults: S = K * shards_per_client and z = N // S; with only one of S, z given the other is
    N // given. The draw is ``default_rng(seed).permutation(S)``: client k gets shards
    ``perm[k s : (k+1) s]`` (the same law as drawing from the remaining pool client by client),
    concatenated in ascending shard id. Samples beyond S * z are dropped.
    """
    name = "shards"
    y, _ = _check_labels(labels, None, name)
    n = len(y)
    k = _check_num_clients(num_clients, n, name=name)
    spc = int(shards_per_client)
    if spc < 1:
        raise DataError(f"{name}: shards_per_client must be >= 1, got {shards_per_client}")
    if num_shards is None and shard_size is None:
        num_shards = k * spc
    if num_shards is not None and int(num_shards) < 1:
        raise DataError(f"{name}: num_shards must be >= 1, got {num_shards}")
    if shard_size is not None and int(shard_size) < 1:
        raise DataError(f"{name}: shard_size must be >= 1, got {shard_size}")
    if num_shards is not None and num_shards > n:
        raise DataError(f"{name}: more shards than samples ({num_shards} shards, {n} samples)")
    s = int(num_shards) if num_shards is not None else n // int(shard_size)
    z = int(shard_size) if shard_size is not None else n // s
    if s * z > n:
        raise DataError(
            f"{name}: {s} shards of {z} need {s * z} samples but there are {n}; "
            "use fewer or smaller shards"
        )
    if s < 1:
        raise DataError(f"{name}: shard_size={z} leaves no shard in {n} samples")
    if k * spc > s:
        raise DataError(
            f"{name}: more clients than shards ({k} clients x {spc} shards each > {s} shards); "
            "use fewer clients or more shards"
        )
    order = np.argsort(y, kind="stable")
    picks = np.sort(_rng(seed).permutation(s)[: k * spc].reshape(k, spc), axis=1)
    rows = order[(picks[:, :, None] * z + np.arange(z)).reshape(k, spc * z)]
    return [r.astype(np.int64, copy=False) for r in rows]


def noniid_slicing(
    labels: np.ndarray, num_clients: int, num_shards: int | None = None, seed: Seed = 0
) -> list[np.ndarray]:
    """fedlab ``noniid_slicing`` layout (§7.4): S = ``num_shards`` (default 2K) shards of
    z = N // S, ``S // K`` shards per client, drawn as :func:`shards`.

    Not bit-equal to fedlab: fedlab sorts with NumPy's unstable argsort and draws with the global
    RandomState, concatenating shards in Python-set order; jaxpfl uses a stable sort, its own
    stream and ascending shard order (same distribution).
    """
    y = np.asarray(labels)
    k = _check_num_clients(num_clients, len(y), name="noniid_slicing")
    s = 2 * k if num_shards is None else int(num_shards)
    if s < k:
        raise DataError(f"noniid_slicing: num_shards ({s}) must be >= num_clients ({k})")
    if s > len(y):
        raise DataError(f"noniid_slicing: more shards than samples ({s} shards, {len(y)} samples)")
    return shards(y, k, shards_per_client=s // k, num_shards=s, shard_size=len(y) // s, seed=seed)


# --------------------------------------------------------------------------------------------
# Natural writers


def natural(
    writer_ids: np.ndarray | Sequence[Any], min_samples: int = 1
) -> tuple[np.ndarray, list[np.ndarray]]:
    """Natural per-writer clients (§7.5): ``(ids, parts)`` with ``ids`` the sorted writer ids that
    have at least ``min_samples`` examples and ``parts[k]`` the ascending indices of writer
    ids[k]."""
    w = np.asarray(writer_ids)
    if w.ndim != 1:
        raise DataError(f"natural: writer ids must be a 1-D array, got shape {w.shape}")
    if len(w) == 0:
        raise DataError("natural: no examples (empty writer id array)")
    ids, inv, counts = np.unique(w, return_inverse=True, return_counts=True)
    order = np.argsort(inv, kind="stable")
    parts = np.split(order.astype(np.int64), np.cumsum(counts)[:-1])
    keep = np.flatnonzero(counts >= min_samples)
    if len(keep) == 0:
        raise DataError(
            f"natural: no writer has >= {min_samples} examples (largest has {counts.max()}); "
            "lower min_samples"
        )
    return ids[keep], [parts[i] for i in keep]


# --------------------------------------------------------------------------------------------
# Per-client splits and held-out clients


def split_clients(
    idx_lists: Sequence[np.ndarray],
    train_frac: float,
    seed: int | np.random.RandomState | np.random.Generator | None = 0,
) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Per-client shuffled train/test split, sklearn ``train_test_split`` semantics (§7.3, §7.6).

    For clients k = 0..K-1 in order, on one stream: ``n_tr = floor(f n)``, ``n_te = n - n_tr``,
    ``perm = rng.permutation(n)``, ``test = idx[perm[:n_te]]``, ``train = idx[perm[n_te:]]``.
    ``seed``: an int (``RandomState(seed)``), or a ``RandomState``/``Generator`` to continue a
    stream (pass PFLlib's RandomState to reproduce its split). With ``train_frac == 1`` nothing is
    drawn and every client keeps its stored order.
    """
    f = float(train_frac)
    if not (0.0 <= f <= 1.0) or math.isnan(f):
        raise DataError(f"split_clients: train_frac must be in [0, 1], got {train_frac}")
    parts = [np.asarray(p, np.int64) for p in idx_lists]
    if f == 1.0:
        return [p.copy() for p in parts], [np.zeros(0, np.int64) for _ in parts]
    if isinstance(seed, np.random.RandomState | np.random.Generator):
        rng = seed
    else:
        rng = np.random.RandomState(seed)
    train, test = [], []
    for p in parts:
        n = len(p)
        n_te = n - math.floor(f * n)
        perm = rng.permutation(n)
        test.append(p[perm[:n_te]])
        train.append(p[perm[n_te:]])
    return train, test


def holdout_clients(
    clients: int | Sequence[Any] | np.ndarray,
    frac: float | None = None,
    *,
    n_eval: int | None = None,
    seed: int = 0,
) -> tuple[np.ndarray, np.ndarray]:
    """Held-out evaluation clients (§7.6): ``perm = RandomState(seed).permutation(ids)`` with ids in
    the dataset's own order (``arange(clients)`` for an int); returns
    ``(perm[:K - n_eval], perm[K - n_eval:])`` = (training clients, evaluation clients), with
    ``n_eval = floor(frac K + 1/2)`` when ``frac`` is given (TFF-p13n: seed 42, 3,400 writers,
    n_eval = 900)."""
    if isinstance(clients, int | np.integer) and not isinstance(clients, bool):
        if clients < 1:
            raise DataError(f"holdout_clients: need at least one client, got {clients}")
        ids = np.arange(int(clients))
    else:
        ids = np.asarray(clients)
        if ids.ndim != 1 or len(ids) == 0:
            raise DataError("holdout_clients: client ids must be a non-empty 1-D sequence")
    k = len(ids)
    if (frac is None) == (n_eval is None):
        raise DataError("holdout_clients: pass exactly one of frac or n_eval")
    if frac is not None:
        fr = float(frac)
        if not 0.0 <= fr < 1.0:
            raise DataError(f"holdout_clients: frac must be in [0, 1), got {frac}")
        n_eval = int(math.floor(fr * k + 0.5))
    n_eval = int(n_eval)
    if not 0 <= n_eval < k:
        raise DataError(
            f"holdout_clients: n_eval must be in 0..{k - 1} so that some client trains, "
            f"got {n_eval}"
        )
    perm = np.random.RandomState(seed).permutation(ids)
    return perm[: k - n_eval], perm[k - n_eval :]


# --------------------------------------------------------------------------------------------
# PFLlib end-to-end


def pfllib_split(
    labels: np.ndarray,
    num_clients: int,
    mode: str = "dir",
    *,
    alpha: float = 0.1,
    class_per_client: int = 2,
    balance: bool = False,
    num_classes: int | None = None,
    batch_size: int = 10,
    train_ratio: float = 0.75,
    least_samples: int | None = None,
    max_tries: int = 1000,
    seed: int = 1,
    allow_empty: bool = False,
) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """PFLlib's generated split, bit-exact: ``(train_lists, test_lists)``, indices into ``labels``.

    ``labels`` must be PFLlib's pool (train then test concatenated). One ``RandomState(seed)``
    (PFLlib: ``np.random.seed(1)``) drives the partition (``mode``: ``'dir'`` =
    :func:`pfllib_dirichlet`, ``'pat'`` = :func:`pfllib_pathological`, ``'iid'`` = ``'pat'`` with
    every class per client) and then the per-client split of :func:`split_clients` with
    ``train_ratio``.
    """
    rs = np.random.RandomState(seed)
    if mode == "dir":
        parts = pfllib_dirichlet(
            labels,
            num_clients,
            alpha,
            num_classes=num_classes,
            batch_size=batch_size,
            train_ratio=train_ratio,
            least_samples=least_samples,
            max_tries=max_tries,
            rng=rs,
        )
    elif mode in ("pat", "iid"):
        y, c = _check_labels(labels, num_classes, "pfllib_pat")
        parts = pfllib_pathological(
            y,
            num_clients,
            c if mode == "iid" else class_per_client,
            num_classes=c,
            balance=balance,
            batch_size=batch_size,
            train_ratio=train_ratio,
            least_samples=least_samples,
            rng=rs,
            allow_empty=allow_empty,
        )
    else:
        raise DataError(f"pfllib_split: unknown mode {mode!r}; choose 'dir', 'pat' or 'iid'")
    return split_clients(parts, train_ratio, rs)
