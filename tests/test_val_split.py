"""Per-client validation splits: ClientIndex.empty, FederatedDataset.val, federate(val_frac=...),
and their storage in partition files (val_<k> keys, files without them)."""

from __future__ import annotations

import hashlib
import json
import math

import numpy as np
import pytest

from jaxpfl.data import partition as P
from jaxpfl.data.dataset import ClientIndex, DataError, FederatedDataset, RawData
from jaxpfl.data.federate import federate, split_val
from jaxpfl.data.store import (
    load_partition,
    partition_hash,
    read_partition,
    save_partition,
    validate_partition,
)


def make_raw(n_train=900, n_test=300, c=5, seed=0, writers=False) -> RawData:
    rng = np.random.default_rng(seed)
    return RawData(
        name="synthetic",
        x_train=rng.integers(0, 255, (n_train, 2, 2, 1), dtype=np.uint8),
        y_train=rng.integers(0, c, n_train).astype(np.int32),
        x_test=rng.integers(0, 255, (n_test, 2, 2, 1), dtype=np.uint8),
        y_test=rng.integers(0, c, n_test).astype(np.int32),
        num_classes=c,
        writers_train=rng.integers(0, 12, n_train) if writers else None,
        writers_test=rng.integers(0, 12, n_test) if writers else None,
    )


def old_hash(train, test) -> str:
    """The partition hash as written before validation splits existed (independent copy)."""
    h = hashlib.sha256()
    for split in (train, test):
        h.update(np.asarray([len(p) for p in split], "<i8").tobytes())
        flat = np.concatenate([np.asarray(p, "<i8") for p in split])
        h.update(flat.astype("<i8").tobytes())
    return h.hexdigest()


def is_subsequence(sub: np.ndarray, seq: np.ndarray) -> bool:
    it = iter(seq.tolist())
    return all(any(v == w for w in it) for v in sub.tolist())


# ------------------------------------------------------------------ ClientIndex / FederatedDataset


def test_client_index_empty():
    ci = ClientIndex.empty(4)
    assert len(ci) == 4 and ci.sizes.tolist() == [0, 0, 0, 0] and ci.flat.dtype == np.int64
    assert [len(p) for p in ci] == [0, 0, 0, 0]
    assert len(ClientIndex.empty(0)) == 0
    with pytest.raises(DataError):
        ClientIndex.empty(-1)


def _ds(val=None, n=20):
    return FederatedDataset(
        name="t",
        x=np.zeros((n, 1, 1, 1), np.uint8),
        y=np.zeros(n, np.int32),
        train=ClientIndex.from_lists([np.arange(0, 5), np.arange(5, 10)]),
        test=ClientIndex.from_lists([np.arange(10, 12), np.arange(12, 14)]),
        client_ids=("0", "1"),
        num_classes=1,
        train_clients=np.arange(2),
        eval_clients=np.zeros(0, np.int64),
        **({} if val is None else {"val": val}),
    )


def test_dataset_val_defaults_to_empty_per_client():
    ds = _ds()
    assert isinstance(ds.val, ClientIndex) and len(ds.val) == ds.num_clients == 2
    assert ds.val.sizes.tolist() == [0, 0]
    ds = _ds(ClientIndex.from_lists([np.array([14, 15]), np.array([16])]))
    assert ds.val[0].tolist() == [14, 15] and ds.client_labels(1, "val").tolist() == [0]


def test_dataset_val_checked():
    with pytest.raises(DataError, match="one entry per client"):
        _ds(ClientIndex.from_lists([np.array([14])]))
    with pytest.raises(DataError, match="out of range"):
        _ds(ClientIndex.from_lists([np.array([14]), np.array([20])]))


# ------------------------------------------------------------------ federate(val_frac=...)


@pytest.mark.parametrize(
    "partition,kw",
    [
        ("iid", {}),
        ("dirichlet", {"alpha": 0.5}),
        ("pfllib_dir", {"alpha": 0.5}),
        ("shards", {"num_shards": 20, "shard_size": 40}),
        ("natural", {}),
    ],
)
@pytest.mark.parametrize("frac", [0.1, 0.25, 0.5])
def test_val_sizes_disjoint_and_from_train(partition, kw, frac):
    raw = make_raw(writers=partition == "natural")
    k = None if partition == "natural" else 8
    base = federate(raw, partition, k, **kw)
    ds = federate(raw, partition, k, val_frac=frac, **kw)
    assert ds.meta["val_frac"] == frac and len(ds.val) == ds.num_clients
    assert ds.test.equals(base.test)  # the test split does not move
    for c in range(ds.num_clients):
        old, tr, va, te = base.train[c], ds.train[c], ds.val[c], ds.test[c]
        assert len(va) == math.floor(frac * len(old))
        assert len(tr) + len(va) == len(old)
        assert sorted(np.concatenate([tr, va]).tolist()) == sorted(old.tolist())
        assert not set(va.tolist()) & set(tr.tolist())
        assert not set(va.tolist()) & set(te.tolist())
        # both parts keep the client's stored order
        assert is_subsequence(tr, old) and is_subsequence(va, old)
    every = np.concatenate([ds.train.flat, ds.val.flat, ds.test.flat])
    assert len(np.unique(every)) == len(every)
    assert ds.meta["hash"] == partition_hash(ds.train, ds.test, ds.val)
    assert ds.meta["hash"] != base.meta["hash"]


def test_val_frac_zero_is_bit_identical():
    raw = make_raw()
    a = federate(raw, "iid", 6, seed=3)
    b = federate(raw, "iid", 6, seed=3, val_frac=0.0)
    # independent recipe of iid + the per-client split (§7.1, §7.6)
    parts = P.iid(len(raw.y_train) + len(raw.y_test), 6, 3)
    train, test = P.split_clients(parts, 0.75, np.random.default_rng([3, 1]))
    for ds in (a, b):
        assert ds.train.equals(ClientIndex.from_lists(train))
        assert ds.test.equals(ClientIndex.from_lists(test))
        assert ds.val.sizes.tolist() == [0] * 6
        assert ds.meta["hash"] == old_hash(train, test)


def test_val_deterministic_per_seed():
    raw = make_raw()
    a = federate(raw, "dirichlet", 6, alpha=1.0, seed=5, val_frac=0.2)
    b = federate(raw, "dirichlet", 6, alpha=1.0, seed=5, val_frac=0.2)
    c = federate(raw, "dirichlet", 6, alpha=1.0, seed=6, val_frac=0.2)
    assert a.val.equals(b.val) and a.train.equals(b.train)
    assert not a.val.equals(c.val)
    # same partition, different seed for the val draw only: split_val directly
    tr = [np.arange(100) + 100 * i for i in range(3)]
    _, v1 = split_val(tr, 0.3, seed=1)
    _, v2 = split_val(tr, 0.3, seed=2)
    assert any(not np.array_equal(x, y) for x, y in zip(v1, v2))


def test_split_val_edge_cases():
    tr, va = split_val([np.arange(3), np.zeros(0, np.int64), np.arange(10, 20)], 0.5)
    assert [len(v) for v in va] == [1, 0, 5] and [len(t) for t in tr] == [2, 0, 5]
    tr, va = split_val([np.arange(5)], 0.0)
    assert tr[0].tolist() == [0, 1, 2, 3, 4] and len(va[0]) == 0


@pytest.mark.parametrize("bad", [-0.1, 1.0, 1.5, float("nan")])
def test_val_frac_out_of_range(bad):
    with pytest.raises(DataError) as e:
        federate(make_raw(), "iid", 4, val_frac=bad)
    msg = str(e.value)
    assert "val_frac" in msg and "[0, 1)" in msg and "\n" not in msg


# ------------------------------------------------------------------ storage


def test_save_load_with_val(tmp_path):
    raw = make_raw()
    ds = federate(raw, "dirichlet", 6, alpha=1.0, val_frac=0.2, holdout_frac=0.34)
    path = save_partition(tmp_path / "p", ds)
    with np.load(path) as f:
        assert sorted(k for k in f.files if k.startswith("val_")) == [f"val_{i}" for i in range(6)]
    back = load_partition(path, raw)
    assert back.train.equals(ds.train) and back.test.equals(ds.test) and back.val.equals(ds.val)
    assert back.meta["hash"] == ds.meta["hash"]
    assert np.array_equal(back.eval_clients, ds.eval_clients)
    assert [v.tolist() for v in read_partition(path)["val"]] == [v.tolist() for v in ds.val]


def test_save_without_val_writes_no_val_keys(tmp_path):
    raw = make_raw()
    ds = federate(raw, "iid", 4)
    path = save_partition(tmp_path / "p", ds)
    with np.load(path) as f:
        assert not [k for k in f.files if k.startswith("val_")]
        assert str(f["hash"]) == old_hash(list(ds.train), list(ds.test))
    assert load_partition(path, raw).val.sizes.tolist() == [0] * 4


def test_save_tuple_and_mapping_with_val(tmp_path):
    raw = make_raw()
    train = [np.arange(0, 10), np.arange(10, 20)]
    test = [np.arange(20, 25), np.arange(25, 30)]
    val = [np.arange(30, 33), np.arange(33, 34)]
    for i, data in enumerate(((train, test, val), {"train": train, "test": test, "val": val})):
        back = load_partition(save_partition(tmp_path / f"p{i}", data), raw)
        assert back.val.equals(ClientIndex.from_lists(val))


def _write_old_style(path, train, test, hash_=None, extra=None):
    """A partition file laid out as before validation splits existed."""
    arrays = {}
    for k, (a, b) in enumerate(zip(train, test)):
        arrays[f"train_{k}"] = np.asarray(a, np.int64)
        arrays[f"test_{k}"] = np.asarray(b, np.int64)
    arrays["client_ids"] = np.asarray([str(i) for i in range(len(train))])
    arrays["train_clients"] = np.arange(len(train), dtype=np.int64)
    arrays["eval_clients"] = np.zeros(0, np.int64)
    arrays["meta"] = np.asarray(json.dumps({"source": "synthetic", "pool_size": 1200}))
    arrays["hash"] = np.asarray(hash_ or old_hash(train, test))
    arrays.update(extra or {})
    np.savez_compressed(path, **arrays)
    return path


def test_old_file_without_val_loads(tmp_path):
    raw = make_raw()
    train = [np.arange(0, 50), np.arange(50, 100), np.arange(100, 130)]
    test = [np.arange(900, 910), np.arange(910, 920), np.arange(920, 925)]
    path = _write_old_style(tmp_path / "old.npz", train, test)
    part = read_partition(path)
    assert [len(v) for v in part["val"]] == [0, 0, 0]
    ds = load_partition(path, raw)
    assert len(ds.val) == 3 and ds.val.sizes.tolist() == [0, 0, 0]
    assert ds.train.equals(ClientIndex.from_lists(train))
    assert ds.meta["hash"] == old_hash(train, test)


def test_overlapping_val_train_refused(tmp_path):
    raw = make_raw()
    train = [np.arange(0, 50), np.arange(50, 100)]
    test = [np.arange(900, 910), np.arange(910, 920)]
    val = {"val_0": np.array([200, 7]), "val_1": np.array([300])}  # 7 is client 0's train
    path = _write_old_style(tmp_path / "bad.npz", train, test, extra=val)
    with pytest.raises(DataError, match=r"client 0: index 7 is in both its train and val split"):
        load_partition(path, raw)


def test_overlapping_val_test_and_other_errors(tmp_path):
    raw = make_raw()
    train = [np.arange(0, 50), np.arange(50, 100)]
    test = [np.arange(900, 910), np.arange(910, 920)]
    cases = [
        ({"val_0": np.array([200]), "val_1": np.array([915])}, "client 1: .*915 .*val and test"),
        ({"val_0": np.array([200]), "val_1": np.array([200])}, "val index 200 .*also in client 1"),
        ({"val_0": np.array([200]), "val_1": np.array([5000])}, "val index 5000 out of range"),
        ({"val_0": np.array([200])}, "val_<k> keys must match"),
    ]
    for i, (val, pattern) in enumerate(cases):
        path = _write_old_style(tmp_path / f"bad{i}.npz", train, test, extra=val)
        with pytest.raises(DataError, match=pattern):
            load_partition(path, raw)


def test_val_hash_checked(tmp_path):
    raw = make_raw()
    ds = federate(raw, "iid", 3, val_frac=0.2)
    path = save_partition(tmp_path / "p", ds)
    with np.load(path) as f:
        arrays = dict(f)
    v = arrays["val_0"].copy()
    arrays["val_0"] = v[:-1]  # drop one validation index: still valid, but not what was hashed
    np.savez_compressed(tmp_path / "edited.npz", **arrays)
    with pytest.raises(DataError, match="content hash mismatch"):
        load_partition(tmp_path / "edited.npz", raw)


def test_validate_partition_val_direct():
    tr = ClientIndex.from_lists([np.array([0, 1]), np.array([2])])
    te = ClientIndex.from_lists([np.array([3]), np.array([4])])
    validate_partition(tr, te, 10, val=ClientIndex.from_lists([np.array([5]), np.array([1])]))
    with pytest.raises(DataError, match="one each per client"):
        validate_partition(tr, te, 10, val=ClientIndex.from_lists([np.array([5])]))
    with pytest.raises(DataError, match="train and val"):
        validate_partition(tr, te, 10, val=ClientIndex.from_lists([np.array([1]), np.array([6])]))
