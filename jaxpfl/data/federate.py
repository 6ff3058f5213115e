"""From a centralised :class:`RawData` to a :class:`FederatedDataset` (docs/algorithms.md §7).

The pool is always the source's train examples followed by its test examples (PFLlib's layout),
so every index file refers to the same array whatever the partition. What gets partitioned
depends on ``pool``:

- ``'concat'`` (default; PFLlib): the whole pool is partitioned into K clients, then each client's
  examples are split ``train_frac`` / ``1 - train_frac`` into its train and test split.
- ``'train'``: only the source's train examples are partitioned (then split per client as
  above); the source's test examples stay in the pool as a central test set owned by no client,
  recorded as ``meta['central_test'] = [start, stop)`` (McMahan/SJ ``central_test``; use
  ``train_frac=1`` for clients without a local test split).
- ``'separate'``: the train examples are partitioned into the K - n_eval training clients and the
  test examples into n_eval evaluation clients (KT-Per: 180 / 20 with fedlab shards); the
  evaluation part uses ``seed + 1``. Each client is then split by ``train_frac``.

``'natural'`` ignores ``pool``: clients are writers. A writer's train-file examples form its train
split and its test-file examples its test split (TFF EMNIST layout). Writers found only in the
test files (LEAF ``-t user``) become evaluation clients holding all their data in the test split;
use :func:`support_query` to cut their support/query sets. Without test-file writer ids, each
writer's train examples are split by ``train_frac`` and the test files form a central test set.

Held-out clients: ``holdout_frac`` (or ``n_eval``) of the clients, chosen by
:func:`~jaxpfl.data.partition.holdout_clients`, become ``eval_clients``; they never train.

Validation splits: ``val_frac = f > 0`` moves ``floor(f n_tr)`` of each client's train split
(after the train/test split) into its validation split, chosen by :func:`split_val` with the
partition seed; ``val_frac = 0`` (default) leaves every validation split empty and every other
result unchanged.

Randomness: ``seed`` (default per partition: 1 for the PFLlib modes, 42 for Flower, else 0) seeds
the partitioner. The PFLlib modes continue their ``RandomState`` into the per-client split (bit-
exact PFLlib); the others split with ``default_rng([seed, 1])``. Validation examples are drawn
with ``default_rng([seed, 2, k])`` per client k (a stream of its own, so the train/test split is
the same with or without a validation split). Held-out clients use ``RandomState(holdout_seed)``
(default: ``seed``).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import numpy as np

from jaxpfl.data import partition as P
from jaxpfl.data.dataset import ClientIndex, DataError, FederatedDataset, RawData
from jaxpfl.data.store import (
    json_safe,
    labels_hash,
    partition_hash,
    pool_arrays,
    validate_partition,
)

__all__ = ["PARTITIONS", "POOLS", "PartitionSpec", "federate", "split_val", "support_query"]


class PartitionSpec(NamedTuple):
    """A registered partition: ``fn(labels, num_clients, seed, opts) -> (parts, stream)`` where
    ``stream`` is a RandomState to continue into the per-client split (PFLlib) or None."""

    fn: Callable[[np.ndarray, int, int, dict[str, Any]], tuple[list[np.ndarray], Any]]
    default_seed: int
    options: tuple[str, ...]
    doc: str


def _iid(y, k, seed, o):
    return P.iid(len(y), k, seed), None


def _dirichlet(y, k, seed, o):
    parts = P.dirichlet(
        y,
        k,
        o["alpha"],
        seed,
        min_size=o["min_size"],
        balance=True if o["balance"] is None else o["balance"],
        max_tries=o["max_tries"] or 1000,
        num_classes=o["num_classes"],
        allow_empty=o["allow_empty"],
    )
    return parts, None


def _flower(y, k, seed, o):
    parts = P.flower_dirichlet(
        y,
        k,
        o["alpha"],
        seed,
        min_partition_size=o["min_size"],
        self_balancing=bool(o["balance"]),
        max_tries=o["max_tries"] or 11,
        allow_empty=o["allow_empty"],
    )
    return parts, None


def _pfllib_dir(y, k, seed, o):
    rs = np.random.RandomState(seed)
    parts = P.pfllib_dirichlet(
        y,
        k,
        o["alpha"],
        num_classes=o["num_classes"],
        batch_size=o["batch_size"],
        train_ratio=o["train_frac"],
        max_tries=o["max_tries"] or 1000,
        rng=rs,
    )
    return parts, rs


def _pfllib_pat(y, k, seed, o):
    rs = np.random.RandomState(seed)
    parts = P.pfllib_pathological(
        y,
        k,
        o["class_per_client"],
        num_classes=o["num_classes"],
        balance=bool(o["balance"]),
        batch_size=o["batch_size"],
        train_ratio=o["train_frac"],
        rng=rs,
        allow_empty=o["allow_empty"],
    )
    return parts, rs


def _shards(y, k, seed, o):
    return P.shards(y, k, o["shards_per_client"], o["num_shards"], o["shard_size"], seed), None


#: Partition registry: name -> spec. ``natural`` is handled by :func:`federate` itself (it needs
#: writer ids, not labels).
PARTITIONS: dict[str, PartitionSpec | None] = {
    "iid": PartitionSpec(_iid, 0, (), "uniform random, sizes differ by <= 1 (§7.1)"),
    "dirichlet": PartitionSpec(
        _dirichlet, 0, ("alpha", "min_size", "balance"), "Dirichlet label skew, generic (§7.2)"
    ),
    "flower_dirichlet": PartitionSpec(
        _flower, 42, ("alpha", "min_size", "balance"), "flwr-datasets DirichletPartitioner, exact"
    ),
    "pfllib_dir": PartitionSpec(
        _pfllib_dir, 1, ("alpha", "batch_size"), "PFLlib Dirichlet + 75/25 split, exact (§7.3)"
    ),
    "shards": PartitionSpec(
        _shards, 0, ("shards_per_client", "num_shards", "shard_size"), "McMahan label shards (§7.4)"
    ),
    "pfllib_pat": PartitionSpec(
        _pfllib_pat,
        1,
        ("class_per_client", "balance", "batch_size"),
        "PFLlib pathological + 75/25 split, exact (§7.4)",
    ),
    "natural": None,
}

POOLS = ("concat", "train", "separate")


#: The rule of each of :func:`federate`'s numeric arguments: ``(kind, low, None allowed)``
#: for integers (``int >= low``), ``"frac"`` / ``"frac_open"`` for shares in [0, 1] / [0, 1),
#: ``"positive"`` for a finite value > 0 (or a sequence of them).
ARGUMENT_RULES: dict[str, tuple] = {
    "num_clients": ("int", 1, True),
    "alpha": ("positive",),
    "shards_per_client": ("int", 1, False),
    "num_shards": ("int", 1, True),
    "shard_size": ("int", 1, True),
    "class_per_client": ("int", 1, False),
    "train_frac": ("frac",),
    "val_frac": ("frac_open",),
    "holdout_frac": ("frac_open",),
    "n_eval": ("int", 1, True),
    "seed": ("int", 0, True),
    "holdout_seed": ("int", 0, True),
    "min_size": ("int", 0, False),
    "min_samples": ("int", 1, False),
    "max_tries": ("int", 1, True),
    "batch_size": ("int", 1, False),
}


def check_arguments(**args: Any) -> None:
    """Raise ``DataError("NAME must be ..., got VALUE")`` for the first of :func:`federate`'s
    numeric arguments given in ``args`` that breaks its rule (:data:`ARGUMENT_RULES`).

    The one definition of what federate accepts: federate calls it before any work, and the
    command line calls it on its flags before any data is loaded (its message then names the
    flag)."""
    for name, v in args.items():
        rule = ARGUMENT_RULES.get(name)
        if rule is None:
            continue
        kind = rule[0]
        if kind == "int":
            lo, none_ok = rule[1], rule[2]
            if v is None and none_ok:
                continue
            if isinstance(v, bool) or not isinstance(v, int | np.integer):
                raise DataError(f"{name} must be an integer >= {lo}, got {v!r}")
            if v < lo:
                raise DataError(f"{name} must be >= {lo}, got {v!r}")
        elif kind == "positive":
            vals = np.atleast_1d(np.asarray(v, dtype=float)) if _numeric(v) else None
            if vals is None or vals.size == 0 or not np.all((vals > 0) & np.isfinite(vals)):
                raise DataError(f"{name} must be > 0, got {v!r}")
        else:
            _check_frac(name, v, closed_top=kind == "frac")


def _numeric(v: Any) -> bool:
    try:
        np.asarray(v, dtype=float)
    except (TypeError, ValueError):
        return False
    return not isinstance(v, bool | str)


def _check_frac(name: str, value: float, *, closed_top: bool) -> float:
    v = float(value)
    ok = 0.0 <= v <= 1.0 if closed_top else 0.0 <= v < 1.0
    if not ok or math.isnan(v):
        rng = "[0, 1]" if closed_top else "[0, 1)"
        raise DataError(f"{name} must be in {rng}, got {value}")
    return v


def _split(parts, train_frac, stream, seed):
    rng = stream if stream is not None else np.random.default_rng([seed, 1])
    return P.split_clients(parts, train_frac, rng)


def split_val(
    train_lists: Sequence[np.ndarray], val_frac: float, seed: int = 0
) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Move ``floor(val_frac n)`` of each client's train indices into a validation split.

    For client k (position in ``train_lists``): ``pos = sort(default_rng([seed, 2, k])
    .permutation(n)[:n_val])``; validation = ``train[pos]``, train = the rest. Both keep the
    client's stored order. Returns ``(train, val)``; ``val_frac = 0`` draws nothing.
    """
    f = float(val_frac)
    if not (0.0 <= f < 1.0) or math.isnan(f):
        raise DataError(
            f"val_frac must be in [0, 1) (the share of each client's train split used for "
            f"validation), got {val_frac}; pass e.g. val_frac=0.1, or 0 for no validation split"
        )
    parts = [np.asarray(p, np.int64) for p in train_lists]
    if f == 0.0:
        return [p.copy() for p in parts], [np.zeros(0, np.int64) for _ in parts]
    train, val = [], []
    for k, p in enumerate(parts):
        n = len(p)
        n_val = math.floor(f * n)
        pos = np.sort(np.random.default_rng([seed, 2, k]).permutation(n)[:n_val])
        keep = np.ones(n, bool)
        keep[pos] = False
        val.append(p[pos])
        train.append(p[keep])
    return train, val


def _n_eval(k: int, holdout_frac: float, n_eval: int | None) -> int:
    if n_eval is not None:
        return int(n_eval)
    return int(math.floor(holdout_frac * k + 0.5))


def federate(
    raw: RawData,
    partition: str,
    num_clients: int | None = None,
    *,
    alpha: float | Sequence[float] = 0.1,
    shards_per_client: int = 2,
    num_shards: int | None = None,
    shard_size: int | None = None,
    class_per_client: int = 2,
    balance: bool | None = None,
    train_frac: float = 0.75,
    val_frac: float = 0.0,
    holdout_frac: float = 0.0,
    n_eval: int | None = None,
    seed: int | None = None,
    holdout_seed: int | None = None,
    pool: str = "concat",
    min_size: int = 10,
    min_samples: int = 1,
    max_tries: int | None = None,
    batch_size: int = 10,
    allow_empty: bool = False,
) -> FederatedDataset:
    """Partition ``raw`` into clients (see the module docstring for ``pool`` and ``natural``).

    Args (the command line's data flags show these texts as their help):
      partition: how examples become clients, a key of :data:`PARTITIONS`: iid, dirichlet,
        flower_dirichlet, pfllib_dir (PFLlib exact), shards, pfllib_pat (PFLlib exact),
        natural (writers)
      num_clients: total clients K (natural: None = every writer, else the first K writers by
        sorted id)
      alpha: Dirichlet concentration, > 0; smaller = more label skew (dirichlet,
        flower_dirichlet, pfllib_dir)
      shards_per_client: shards per client (shards)
      num_shards: total shards S (shards; None: K x shards_per_client)
      shard_size: examples per shard (shards; None: N / S)
      class_per_client: classes per client (pfllib_pat)
      balance: balancing of the mode (None: its default; dirichlet on, Flower's
        self_balancing and PFLlib's balance off)
      train_frac: share of each client's examples in its train split, the rest is its test
        split (PFLlib's train_ratio 0.75; 1: no local test split); also the support share of
        held-out clients without their own split
      val_frac: share in [0, 1) of each client's train split moved to its validation split
        (floor(val_frac n_tr) examples, :func:`split_val`; FEDORA's λ needs one; 0: none)
      holdout_frac: share of clients held out for evaluation (never trained on)
      n_eval: number of held-out clients (None: use holdout_frac)
      seed: seed of the partition (None: the partition's own: 1 for pfllib_*, as PFLlib, 42
        for flower_dirichlet, else 0); independent of the training seed
      holdout_seed: seed of the held-out client draw (None: the partition seed)
      pool: what is partitioned: concat = train+test (PFLlib), train = the train set (the
        test set stays a central test set), separate = train set to training clients, test
        set to held-out clients
      min_size: smallest allowed client (dirichlet, flower_dirichlet; Flower's
        min_partition_size)
      min_samples: drop writers with fewer examples (natural)
      max_tries: resampling cap of the Dirichlet modes (None: the mode's default)
      batch_size: PFLlib's B in least_samples = min(B / (1 - train_frac), N / K / 2)
        (pfllib_*)
      allow_empty: accept clients without examples
    """
    check_arguments(
        num_clients=num_clients, alpha=alpha, shards_per_client=shards_per_client,
        num_shards=num_shards, shard_size=shard_size, class_per_client=class_per_client,
        train_frac=train_frac, val_frac=val_frac, holdout_frac=holdout_frac, n_eval=n_eval,
        seed=seed, holdout_seed=holdout_seed, min_size=min_size, min_samples=min_samples,
        max_tries=max_tries, batch_size=batch_size,
    )
    if partition not in PARTITIONS:
        raise DataError(f"unknown partition {partition!r}; choose one of {', '.join(PARTITIONS)}")
    if pool not in POOLS:
        raise DataError(f"unknown pool {pool!r}; choose one of {', '.join(POOLS)}")
    train_frac = _check_frac("train_frac", train_frac, closed_top=True)
    split_val([], val_frac)  # validates val_frac before any work
    holdout_frac = _check_frac("holdout_frac", holdout_frac, closed_top=False)
    spec = PARTITIONS[partition]
    if seed is None:
        seed = spec.default_seed if spec is not None else 0
    seed = int(seed)
    holdout_seed = seed if holdout_seed is None else int(holdout_seed)
    x, y, n_train = pool_arrays(raw)
    n = len(y)
    meta: dict[str, Any] = {
        "source": raw.name,
        "partition": partition,
        "seed": seed,
        "pool": pool,
        "train_frac": train_frac,
        "val_frac": float(val_frac),
        "holdout_frac": holdout_frac,
        "holdout_seed": holdout_seed,
        "pool_size": n,
        "n_train_pool": n_train,
    }
    if spec is None:
        meta["pool"] = "natural"
        meta["min_samples"] = min_samples
        train, test, ids, fixed_eval = _natural(
            raw, num_clients, min_samples, train_frac, seed, n_train, n, meta
        )
        candidates = np.setdiff1d(np.arange(len(ids)), fixed_eval)
    else:
        opts = dict(
            alpha=alpha,
            min_size=min_size,
            balance=balance,
            max_tries=max_tries,
            num_classes=int(raw.num_classes),
            allow_empty=allow_empty,
            batch_size=batch_size,
            train_frac=train_frac,
            class_per_client=class_per_client,
            shards_per_client=shards_per_client,
            num_shards=num_shards,
            shard_size=shard_size,
        )
        for key in spec.options:
            meta[key] = opts[key]  # balance None = the mode's default
        if "alpha" in spec.options:
            meta["alpha"] = np.asarray(alpha).tolist()
        if num_clients is None:
            raise DataError(f"partition {partition!r} needs num_clients (the number of clients K)")
        k = P._check_num_clients(
            num_clients, n if pool == "concat" else max(n_train, 1), name=partition
        )
        fixed_eval = np.zeros(0, np.int64)
        if pool == "concat":
            parts, stream = spec.fn(y, k, seed, opts)
            train, test = _split(parts, train_frac, stream, seed)
        elif pool == "train":
            parts, stream = spec.fn(y[:n_train], k, seed, opts)
            train, test = _split(parts, train_frac, stream, seed)
            meta["central_test"] = [n_train, n]
        else:  # separate
            k_eval = _n_eval(k, holdout_frac, n_eval)
            if not 1 <= k_eval <= k - 1:
                raise DataError(
                    f"pool='separate' needs 1..{k - 1} evaluation clients, got {k_eval}; "
                    "set holdout_frac or n_eval"
                )
            if len(raw.y_test) < k_eval:
                raise DataError(
                    f"pool='separate': more evaluation clients ({k_eval}) than test examples "
                    f"({len(raw.y_test)})"
                )
            parts_a, stream_a = spec.fn(y[:n_train], k - k_eval, seed, opts)
            tr_a, te_a = _split(parts_a, train_frac, stream_a, seed)
            parts_b, stream_b = spec.fn(y[n_train:], k_eval, seed + 1, opts)
            tr_b, te_b = _split(parts_b, train_frac, stream_b, seed + 1)
            train = tr_a + [p + n_train for p in tr_b]
            test = te_a + [p + n_train for p in te_b]
            fixed_eval = np.arange(k - k_eval, k)
            meta["n_eval"] = k_eval
        ids = [str(i) for i in range(k)]
        candidates = np.setdiff1d(np.arange(k), fixed_eval)
        meta["num_clients"] = k

    held = np.zeros(0, np.int64)
    if (holdout_frac > 0 or n_eval is not None) and pool != "separate":
        k_c = len(candidates)
        if k_c < 2:
            raise DataError("holdout needs at least two candidate clients")
        ne = _n_eval(k_c, holdout_frac, n_eval)
        _, held = P.holdout_clients(candidates, n_eval=ne, seed=holdout_seed)
    eval_clients = np.sort(np.concatenate([fixed_eval, held]).astype(np.int64))
    train_clients = np.setdiff1d(np.arange(len(ids)), eval_clients)
    train, val = split_val(train, val_frac, seed)
    tr_ci, te_ci = ClientIndex.from_lists(train), ClientIndex.from_lists(test)
    va_ci = ClientIndex.from_lists(val)
    validate_partition(tr_ci, te_ci, n, ids, val=va_ci)
    meta["num_clients"] = len(ids)
    meta["num_eval_clients"] = int(len(eval_clients))
    meta["hash"] = partition_hash(tr_ci, te_ci, va_ci)
    meta["labels_sha256"] = labels_hash(y)
    if raw.meta:
        meta["source_meta"] = raw.meta
    meta = json_safe(meta)
    return FederatedDataset(
        name=raw.name,
        x=x,
        y=y,
        train=tr_ci,
        test=te_ci,
        client_ids=tuple(ids),
        num_classes=int(raw.num_classes),
        train_clients=train_clients,
        eval_clients=eval_clients,
        meta=meta,
        val=va_ci,
    )


def _natural(raw, num_clients, min_samples, train_frac, seed, n_train, n, meta):
    """Writers as clients; returns (train, test, ids, fixed eval client positions)."""
    w_tr, w_te = raw.writers_train, raw.writers_test
    if w_tr is None:
        raise DataError(
            f"{raw.name} has no writer ids, so 'natural' cannot be used; "
            "choose a label-based partition such as dirichlet or iid"
        )
    w_tr = np.asarray(w_tr)
    if len(w_tr) != n_train:
        raise DataError(f"{raw.name}: {len(w_tr)} train writer ids for {n_train} train examples")
    if w_te is not None:
        w_te = np.asarray(w_te)
        if len(w_te) != n - n_train:
            raise DataError(
                f"{raw.name}: {len(w_te)} test writer ids for {n - n_train} test examples"
            )
        ids, parts = P.natural(np.concatenate([w_tr, w_te]), min_samples)
    else:
        ids, parts = P.natural(w_tr, min_samples)
    if num_clients is not None:
        k = int(num_clients)
        if not 1 <= k <= len(ids):
            raise DataError(
                f"natural: {raw.name} has {len(ids)} writers (with >= {min_samples} examples); "
                f"pass num_clients in 1..{len(ids)} or omit it"
            )
        ids, parts = ids[:k], parts[:k]
    if w_te is not None:
        train = [p[p < n_train] for p in parts]
        test = [p[p >= n_train] for p in parts]
        meta["natural_split"] = "writer"
    else:
        train, test = _split(parts, train_frac, None, seed)
        meta["natural_split"] = "train_frac"
        meta["central_test"] = [n_train, n]
    fixed_eval = np.array(
        [i for i, (a, b) in enumerate(zip(train, test)) if len(a) == 0 and len(b) > 0], np.int64
    )
    meta["test_only_writers"] = int(len(fixed_eval))
    return train, test, [str(i) for i in ids.tolist()], fixed_eval


def support_query(
    ds: FederatedDataset,
    clients: Sequence[int] | np.ndarray,
    frac: float = 0.8,
    seed: int = 0,
) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Support (adaptation) and query (evaluation) indices for personalization (§7.6).

    A client with both a train and a test split keeps them (support = train, query = test).
    Otherwise its examples (train then test) are split with :func:`split_clients` at ``frac``
    (support = the ``floor(frac n)`` part) on ``default_rng([seed, k])``: drawn once per
    (seed, client), independent of which other clients are asked for.
    """
    frac = _check_frac("frac", frac, closed_top=True)
    support, query = [], []
    for k in np.asarray(clients, np.int64).tolist():
        if not 0 <= k < ds.num_clients:
            raise DataError(f"support_query: client {k} not in 0..{ds.num_clients - 1}")
        tr, te = ds.train[k], ds.test[k]
        if len(tr) and len(te):
            support.append(tr.copy())
            query.append(te.copy())
            continue
        (s,), (q,) = P.split_clients(
            [np.concatenate([tr, te])], frac, np.random.default_rng([seed, k])
        )
        support.append(s)
        query.append(q)
    return support, query
