"""federate(), support_query(), save/load of partitions, stats and the partition CLI."""

from __future__ import annotations

import gzip
import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
from scripts import load_script

from jaxpfl.data import partition as P
from jaxpfl.data.dataset import ClientIndex, DataError, RawData
from jaxpfl.data.federate import PARTITIONS, federate, support_query
from jaxpfl.data.stats import format_stats_table, partition_stats, plot_partition
from jaxpfl.data.store import load_partition, read_partition, save_partition

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FMNIST_DIR = "/usr/share/datasets/fashion-mnist"


def make_raw(n_train=1200, n_test=400, c=10, seed=0, writers=None, name="synthetic") -> RawData:
    rng = np.random.default_rng(seed)
    wtr = wte = None
    if writers == "tff":  # every writer has train and test examples
        wtr = rng.integers(0, 30, n_train)
        wte = rng.integers(0, 30, n_test)
    elif writers == "leaf_user":  # train-file writers and test-file writers are different people
        wtr = np.array([f"f{i:03d}" for i in rng.integers(0, 24, n_train)])
        wte = np.array([f"f{i:03d}" for i in rng.integers(24, 30, n_test)])
    elif writers == "train_only":
        wtr = rng.integers(0, 20, n_train)
    return RawData(
        name=name,
        x_train=rng.integers(0, 255, (n_train, 4, 4, 1), dtype=np.uint8),
        y_train=rng.integers(0, c, n_train).astype(np.int32),
        x_test=rng.integers(0, 255, (n_test, 4, 4, 1), dtype=np.uint8),
        y_test=rng.integers(0, c, n_test).astype(np.int32),
        num_classes=c,
        writers_train=wtr,
        writers_test=wte,
        meta={"origin": "test"},
    )


def owned(ds):
    return np.concatenate([ds.train.flat, ds.test.flat])


def check_consistent(ds):
    flat = owned(ds)
    assert len(np.unique(flat)) == len(flat)
    assert len(ds.train_clients) + len(ds.eval_clients) == ds.num_clients
    assert len(np.intersect1d(ds.train_clients, ds.eval_clients)) == 0


# ------------------------------------------------------------------ federate


@pytest.mark.parametrize("name", [p for p in PARTITIONS if p != "natural"])
def test_every_partition_concat_pool(name):
    raw = make_raw()
    ds = federate(raw, name, 10)
    check_consistent(ds)
    assert ds.num_clients == 10 and ds.client_ids == tuple(str(k) for k in range(10))
    assert len(ds.x) == len(ds.y) == 1600
    np.testing.assert_array_equal(ds.x[1200:], raw.x_test)
    if name != "shards":
        assert len(owned(ds)) == 1600  # every pool example belongs to exactly one client
    for k in range(10):
        n = len(ds.train[k]) + len(ds.test[k])
        assert len(ds.train[k]) == int(np.floor(0.75 * n))
    assert ds.meta["partition"] == name and ds.meta["source"] == "synthetic"
    assert ds.meta["source_meta"] == {"origin": "test"}
    json.dumps(ds.meta)
    again = federate(raw, name, 10)
    assert again.train.equals(ds.train) and again.test.equals(ds.test)


def test_pfllib_modes_equal_pfllib_split():
    raw = make_raw(3000, 1000)
    y = np.concatenate([raw.y_train, raw.y_test])
    for mode, name in (("dir", "pfllib_dir"), ("pat", "pfllib_pat")):
        ds = federate(raw, name, 20)
        train, test = P.pfllib_split(y, 20, mode, num_classes=10)
        assert ds.train.equals(ClientIndex.from_lists(train))
        assert ds.test.equals(ClientIndex.from_lists(test))
        assert ds.meta["seed"] == 1


def test_pool_train_keeps_central_test():
    raw = make_raw()
    ds = federate(raw, "shards", 10, pool="train", train_frac=1.0, num_shards=20)
    assert ds.meta["central_test"] == [1200, 1600]
    assert owned(ds).max() < 1200
    assert all(len(ds.test[k]) == 0 for k in range(10))
    assert all(len(ds.train[k]) == 120 for k in range(10))


def test_pool_separate_eval_clients_from_test_set():
    raw = make_raw()
    ds = federate(raw, "shards", 20, pool="separate", holdout_frac=0.1, train_frac=0.9)
    check_consistent(ds)
    assert ds.eval_clients.tolist() == [18, 19]
    for k in range(20):
        idx = np.concatenate([ds.train[k], ds.test[k]])
        assert (idx >= 1200).all() if k >= 18 else (idx < 1200).all()
    with pytest.raises(DataError, match="evaluation clients"):
        federate(raw, "shards", 20, pool="separate")


def test_holdout_clients_in_federate():
    raw = make_raw()
    ds = federate(raw, "dirichlet", 20, alpha=1.0, holdout_frac=0.25, seed=3)
    check_consistent(ds)
    _, ev = P.holdout_clients(20, n_eval=5, seed=3)
    assert ds.eval_clients.tolist() == sorted(ev.tolist())
    ds2 = federate(raw, "dirichlet", 20, alpha=1.0, holdout_frac=0.25, seed=3, holdout_seed=9)
    assert ds2.train.equals(ds.train)
    assert ds2.eval_clients.tolist() != ds.eval_clients.tolist()


def test_federate_errors():
    raw = make_raw()
    with pytest.raises(DataError, match="unknown partition 'nope'; choose one of iid, dirichlet"):
        federate(raw, "nope", 10)
    with pytest.raises(DataError, match="unknown pool"):
        federate(raw, "iid", 10, pool="all")
    with pytest.raises(DataError, match="needs num_clients"):
        federate(raw, "iid", None)
    with pytest.raises(DataError, match="more clients than samples"):
        federate(raw, "iid", 5000)
    with pytest.raises(DataError, match="train_frac"):
        federate(raw, "iid", 10, train_frac=1.5)
    with pytest.raises(DataError, match="holdout_frac"):
        federate(raw, "iid", 10, holdout_frac=1.0)
    with pytest.raises(DataError, match="alpha"):
        federate(raw, "dirichlet", 10, alpha=-0.1)
    with pytest.raises(DataError, match="no writer ids"):
        federate(raw, "natural", None)


def test_natural_tff_layout():
    raw = make_raw(writers="tff")
    ds = federate(raw, "natural", holdout_frac=0.2, seed=0)
    check_consistent(ds)
    assert len(owned(ds)) == 1600
    ids = np.unique(np.concatenate([raw.writers_train, raw.writers_test]))
    assert ds.client_ids == tuple(str(i) for i in ids)
    for k, w in enumerate(ids):
        np.testing.assert_array_equal(ds.train[k], np.flatnonzero(raw.writers_train == w))
        np.testing.assert_array_equal(ds.test[k], 1200 + np.flatnonzero(raw.writers_test == w))
    assert len(ds.eval_clients) == 6
    sup, qry = support_query(ds, ds.eval_clients)
    for k, s, q in zip(ds.eval_clients, sup, qry):  # both splits present: the writer's own
        np.testing.assert_array_equal(s, ds.train[k])
        np.testing.assert_array_equal(q, ds.test[k])
    sub = federate(raw, "natural", 7)
    assert sub.client_ids == ds.client_ids[:7]


def test_natural_leaf_user_split_and_support_query():
    raw = make_raw(writers="leaf_user")
    ds = federate(raw, "natural")
    check_consistent(ds)
    assert ds.num_clients == 30
    test_writers = {f"f{i:03d}" for i in range(24, 30)}
    assert {ds.client_ids[k] for k in ds.eval_clients} == test_writers
    for k in ds.eval_clients:
        assert len(ds.train[k]) == 0 and len(ds.test[k]) > 0
    sup, qry = support_query(ds, ds.eval_clients, frac=0.8, seed=1)
    for k, s, q in zip(ds.eval_clients, sup, qry):
        n = len(ds.test[k])
        assert len(s) == int(np.floor(0.8 * n)) and len(s) + len(q) == n
        np.testing.assert_array_equal(np.sort(np.concatenate([s, q])), ds.test[k])
    # drawn once per (seed, client): the same whatever else is asked for
    rev_s, rev_q = support_query(ds, ds.eval_clients[::-1], frac=0.8, seed=1)
    np.testing.assert_array_equal(rev_s[-1], sup[0])
    other, _ = support_query(ds, ds.eval_clients, frac=0.8, seed=2)
    assert any(not np.array_equal(a, b) for a, b in zip(other, sup))


def test_natural_without_test_writers():
    raw = make_raw(writers="train_only")
    ds = federate(raw, "natural", train_frac=0.5, min_samples=50)
    check_consistent(ds)
    assert ds.meta["central_test"] == [1200, 1600]
    assert owned(ds).max() < 1200
    sizes = ds.train.sizes + ds.test.sizes
    assert sizes.min() >= 50


# ------------------------------------------------------------------ save / load


def test_save_load_round_trip(tmp_path):
    raw = make_raw(writers="leaf_user")
    ds = federate(raw, "natural", holdout_frac=0.2)
    path = save_partition(tmp_path / "part", ds, {"note": "x"})
    assert path.endswith(".npz")
    back = load_partition(path, raw)
    assert back.train.equals(ds.train) and back.test.equals(ds.test)
    assert back.client_ids == ds.client_ids
    np.testing.assert_array_equal(back.train_clients, ds.train_clients)
    np.testing.assert_array_equal(back.eval_clients, ds.eval_clients)
    assert back.meta["hash"] == ds.meta["hash"] and back.meta["note"] == "x"
    np.testing.assert_array_equal(back.x, ds.x)
    assert partition_stats(back)["hash"] == ds.meta["hash"]


def test_import_foreign_lists(tmp_path):
    raw = make_raw()
    y = np.concatenate([raw.y_train, raw.y_test])
    train, test = P.pfllib_split(y, 5, "dir", alpha=1.0, num_classes=10)
    np.savez(
        tmp_path / "foreign.npz",
        **{f"train_{k}": a.astype(np.int32) for k, a in enumerate(train)},
        **{f"test_{k}": a for k, a in enumerate(test)},
    )
    ds = load_partition(tmp_path / "foreign.npz", raw)
    assert ds.train.equals(ClientIndex.from_lists(train))
    assert ds.client_ids == ("0", "1", "2", "3", "4") and ds.train_clients.tolist() == [
        0,
        1,
        2,
        3,
        4,
    ]
    path = save_partition(tmp_path / "pair", (train, test))
    assert load_partition(path, raw).test.equals(ClientIndex.from_lists(test))


def _corrupt(src, dst, edit):
    with np.load(src) as f:
        arrays = {k: f[k] for k in f.files}
    edit(arrays)
    np.savez(dst, **arrays)
    return dst


@pytest.mark.parametrize(
    "edit,msg",
    [
        (
            lambda a: a.__setitem__("train_2", np.append(a["train_2"], 10**6)),
            "client 2: train index 1000000 out of range",
        ),
        (lambda a: a.__setitem__("train_3", np.append(a["train_3"], a["train_1"][0])), "appears"),
        (
            lambda a: a.__setitem__("test_4", np.append(a["test_4"], a["train_4"][0])),
            "client 4: index .* both its train and test",
        ),
        (lambda a: a.__setitem__("train_0", a["train_0"][:-1]), "content hash mismatch"),
        (lambda a: a.pop("train_1"), "train_0 .. train_"),
        (lambda a: a.__setitem__("train_0", a["train_0"].astype(float)), "integer array"),
    ],
)
def test_corrupted_partition_files(tmp_path, edit, msg):
    raw = make_raw()
    good = save_partition(tmp_path / "good", federate(raw, "dirichlet", 8, alpha=1.0))
    bad = _corrupt(good, tmp_path / "bad.npz", edit)
    with pytest.raises(DataError, match=msg):
        load_partition(bad, raw)


def test_load_with_wrong_dataset(tmp_path):
    raw = make_raw()
    path = save_partition(tmp_path / "p", federate(raw, "iid", 4))
    with pytest.raises(DataError, match="made for a pool of 1600"):
        load_partition(path, make_raw(n_train=1000))
    with pytest.raises(DataError, match="labels of"):
        load_partition(path, make_raw(seed=1))
    with pytest.raises(DataError, match="no such partition file"):
        read_partition(tmp_path / "missing.npz")


# ------------------------------------------------------------------ stats


def test_stats_table_and_plot(tmp_path):
    raw = make_raw()
    ds = federate(raw, "pfllib_pat", 20, holdout_frac=0.1)
    st = partition_stats(ds)
    assert st["totals"]["train"] + st["totals"]["test"] == 1600 and st["totals"]["unassigned"] == 0
    assert st["distinct_labels"] == [2] * 20
    counts = np.array(st["train_class_counts"])
    assert counts.shape == (20, 10) and counts.sum(axis=1).tolist() == st["train_sizes"]
    json.dumps(st)
    table = format_stats_table(st, max_rows=6)
    assert "(14 clients not shown)" in table and "20 clients (18 train, 2 eval)" in table
    png = plot_partition(ds, tmp_path / "fig.png")
    with open(png, "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"


# ------------------------------------------------------------------ real Fashion-MNIST


def _idx(path):
    with gzip.open(path, "rb") as f:
        data = f.read()
    ndim = data[3]
    shape = [int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim)]
    return np.frombuffer(data, np.uint8, offset=4 + 4 * ndim).reshape(shape)


def test_fmnist_golden_through_federate():
    files = {
        k: os.path.join(FMNIST_DIR, f"{k}-ubyte.gz")
        for k in ("train-labels-idx1", "t10k-labels-idx1")
    }
    if not all(os.path.exists(p) for p in files.values()):
        pytest.skip(f"Fashion-MNIST IDX files not found in {FMNIST_DIR}")
    ytr, yte = (_idx(files[k]).astype(np.int32) for k in files)
    raw = RawData(
        "fashion_mnist",
        np.zeros((len(ytr), 1, 1, 1), np.uint8),
        ytr,
        np.zeros((len(yte), 1, 1, 1), np.uint8),
        yte,
        10,
    )
    ds = federate(raw, "pfllib_dir", 20)
    assert ds.train.sizes.tolist()[:6] == [61, 240, 656, 1952, 1091, 4104]
    assert ds.train.sizes.sum() == 52493 and ds.test.sizes.sum() == 17507


# ------------------------------------------------------------------ CLI


def _mock_load_raw(name, data_dir=None, **kw):
    """A 300 + 100 example, 5-class source named ``mock`` (the only name it knows)."""
    if name != "mock":
        raise DataError(f"unknown dataset '{name}'; choose one of: mock")
    rng = np.random.default_rng(0)
    return RawData("mock", np.zeros((300, 2, 2, 1), np.uint8), rng.integers(0, 5, 300),
                   np.zeros((100, 2, 2, 1), np.uint8), rng.integers(0, 5, 100), 5)


_MOCK = textwrap.dedent("""
    import runpy, sys, types
    sys.path.insert(0, "tests")
    from test_federate import _mock_load_raw
    mod = types.ModuleType("jaxpfl.data.sources")
    mod.load_raw = _mock_load_raw
    sys.modules["jaxpfl.data.sources"] = mod
    sys.argv = ["partition.py"] + sys.argv[1:]
    runpy.run_path("experiments/partition.py", run_name="__main__")
""")


def run_cli(*args, mock=True):
    cmd = (
        [sys.executable, "-c", _MOCK, *args]
        if mock
        else [sys.executable, "experiments/partition.py", *args]
    )
    env = dict(os.environ, PYTHONPATH=ROOT)
    return subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize(
    "args,msg",
    [
        (["--clients", "0"], "--clients must be >= 1"),
        (["--alpha", "-1"], "--alpha must be > 0"),
        (["--partition", "foo"], "invalid choice"),
        (["--dataset", "nope"], "unknown dataset 'nope'"),
        (["--clients", "5000"], "more clients than samples"),
        (["--train-frac", "2"], "--train-frac"),
        (["--partition", "natural"], "no writer ids"),
        (
            ["--partition", "shards", "--clients", "150", "--num-shards", "100"],
            "more clients than shards",
        ),
    ],
)
def test_cli_bad_input_one_line_exit_2(args, msg, monkeypatch, capsys):
    """In process (the script's ``main``, the mock source patched in); the one line and exit
    status of a real process: the bad ``--raw-out`` in
    ``test_cli_raw_out_writes_a_folder_the_npy_source_partitions_identically``, and
    tests/test_cli.py::test_bad_input_in_a_real_process."""
    import jaxpfl.data.sources as sources

    monkeypatch.setattr(sources, "load_raw", _mock_load_raw)
    argv = ["--dataset", "mock", *args] if "--dataset" not in args else list(args)
    with pytest.raises(SystemExit) as exit_:
        load_script("partition").main(argv)
    err = capsys.readouterr().err
    assert exit_.value.code == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and msg in lines[0], err


def test_cli_writes_outputs(tmp_path):
    r = run_cli(
        "--dataset",
        "mock",
        "--partition",
        "pfllib_pat",
        "--num-clients",
        "10",
        "--class-per-client",
        "1",
        "--holdout-frac",
        "0.2",
        "--out",
        str(tmp_path),
    )
    assert r.returncode == 0, r.stderr
    assert "10 clients (8 train, 2 eval)" in r.stdout
    stem = tmp_path / "mock_pfllib_pat_10c_seed1"
    st = json.loads((stem.with_suffix(".stats.json")).read_text())
    assert st["distinct_labels"] == [1] * 10
    part = read_partition(stem.with_suffix(".npz"))
    assert part["hash"] == st["hash"] and len(part["eval_clients"]) == 2
    assert (tmp_path / "mock_pfllib_pat_10c_seed1.png").exists()


def test_cli_raw_out_writes_a_folder_the_npy_source_partitions_identically(tmp_path):
    out = tmp_path / "npy"
    first = run_cli("--raw-out", str(out), "--max-rows", "0", mock=False)
    assert first.returncode == 0, first.stderr
    assert f"wrote {out} (--dataset npy --data-dir reads it)" in first.stdout
    again = run_cli("--dataset", "npy", "--data-dir", str(out), "--max-rows", "0", mock=False)
    assert again.returncode == 0, again.stderr
    summary = [ln for ln in first.stdout.splitlines() if "hash" in ln]
    assert summary and summary == [ln for ln in again.stdout.splitlines() if "hash" in ln]
    (tmp_path / "f").write_text("a file, not a folder")
    bad = run_cli("--raw-out", str(tmp_path / "f" / "x"), mock=False)
    assert bad.returncode == 2 and bad.stderr.startswith("error: ") and "--raw-out" in bad.stderr


def test_cli_real_fashion_mnist(tmp_path):
    if not os.path.exists(os.path.join(FMNIST_DIR, "train-labels-idx1-ubyte.gz")):
        pytest.skip(f"Fashion-MNIST IDX files not found in {FMNIST_DIR}")
    try:
        import jaxpfl.data.sources  # noqa: F401
    except ImportError as e:
        pytest.skip(f"jaxpfl.data.sources not importable: {e}")
    r = run_cli(
        "--dataset",
        "fashion_mnist",
        "--partition",
        "pfllib_dir",
        "--num-clients",
        "20",
        "--out",
        str(tmp_path),
        "--no-plot",
        mock=False,
    )
    assert r.returncode == 0, r.stderr
    st = json.loads((tmp_path / "fashion_mnist_pfllib_dir_20c_seed1.stats.json").read_text())
    assert sum(st["train_sizes"]) == 52493 and st["train_sizes"][:3] == [61, 240, 656]
