"""Rotated datasets of the FEDORA reference (§7.7): rotate(), the replayed draws, sizes, storage
and the build CLI."""

from __future__ import annotations

import math
import os
import sys

import numpy as np
import pytest

from jaxpfl.data import fedora_rotated, rotate
from jaxpfl.data.dataset import DataError, RawData
from jaxpfl.data.rotated import fedora_indices, load_rotated, save_rotated, scaled_sizes
from jaxpfl.data.store import read_partition, save_partition

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FMNIST_DIR = "/usr/share/datasets/fashion-mnist"


def synthetic(n_train=600, n_test=100, hw=(6, 6), c=10, seed=0) -> RawData:
    rng = np.random.default_rng(seed)
    return RawData(
        name="synthetic",
        x_train=rng.integers(0, 256, (n_train, *hw, 1), dtype=np.uint8),
        y_train=rng.integers(0, c, n_train).astype(np.int32),
        x_test=rng.integers(0, 256, (n_test, *hw, 1), dtype=np.uint8),
        y_test=rng.integers(0, c, n_test).astype(np.int32),
        num_classes=c,
    )


def reference_draws(n_src, n_src_test, k, n_train, n_val, n_test, seed=42):
    """The FEDORA-repo draws written out independently (§7.7)."""
    rs = np.random.RandomState(seed)
    ridx = np.arange(n_src)
    rs.shuffle(ridx)
    cut = n_src * 5 // 6
    train_pool, val_pool = ridx[:cut], ridx[cut:]
    tidx = np.arange(n_src_test)
    rs.shuffle(tidx)
    return (
        [train_pool[n_train * i : n_train * (i + 1)] for i in range(k)],
        [val_pool[n_val * i : n_val * (i + 1)] for i in range(k)],
        [tidx[n_test * i : n_test * (i + 1)] for i in range(k)],
    )


# ------------------------------------------------------------------ rotate


@pytest.mark.parametrize("shape", [(1, 1, 1), (5, 5, 1), (8, 8, 3), (28, 28, 1)])
def test_rotate_quarter_turns_match_rot90(shape):
    x = np.random.default_rng(1).integers(0, 256, (4, *shape), dtype=np.uint8)
    assert np.array_equal(rotate(x, 0), x)
    assert np.array_equal(rotate(x, 0.0), x)
    for q in (1, 2, 3):
        assert np.array_equal(rotate(x, 90 * q), np.rot90(x, q, axes=(1, 2))), q
    assert np.array_equal(rotate(x, 360), x)
    assert np.array_equal(rotate(x, -90), np.rot90(x, 3, axes=(1, 2)))
    assert np.array_equal(rotate(x, 450), np.rot90(x, 1, axes=(1, 2)))
    assert rotate(x, 37).dtype == np.uint8 and rotate(x, 37).shape == x.shape


def test_rotate_non_square_half_turn():
    x = np.random.default_rng(2).integers(0, 256, (3, 5, 9, 2), dtype=np.uint8)
    assert np.array_equal(rotate(x, 180), x[:, ::-1, ::-1])


def test_rotate_is_counter_clockwise():
    x = np.zeros((1, 9, 9, 1), np.uint8)
    x[0, 4, 8, 0] = 255  # right of the centre (4, 4)
    out = rotate(x, 90)
    assert out[0, 0, 4, 0] == 255 and out.sum() == 255  # now above the centre


def test_rotate_45_single_pixel_inverse_mapping():
    h = w = 11
    t = math.radians(45)
    cy, cx = (h - 1) / 2, (w - 1) / 2
    # inverse mapping of every output pixel centre about ((w-1)/2, (h-1)/2), y pointing down:
    # source col = cx + cos t (c - cx) - sin t (r - cy), source row = cy + sin t (c - cx) +
    # cos t (r - cy), rounded to the nearest pixel.
    source = {}
    for r in range(h):
        for c in range(w):
            sc = round(cx + math.cos(t) * (c - cx) - math.sin(t) * (r - cy))
            sr = round(cy + math.sin(t) * (c - cx) + math.cos(t) * (r - cy))
            source[r, c] = (sr, sc)
    hit = 0
    for r0, c0 in [(2, 5), (2, 7), (0, 5), (5, 9), (8, 3), (5, 5)]:
        x = np.zeros((1, h, w, 1), np.uint8)
        x[0, r0, c0, 0] = 200
        expect = np.zeros((h, w), np.uint8)
        for (r, c), src in source.items():
            if src == (r0, c0):
                expect[r, c] = 200
        out = rotate(x, 45)[0, :, :, 0]
        assert np.array_equal(out, expect), (r0, c0)
        lit = np.argwhere(expect > 0)
        if len(lit):
            hit += 1
            # the forward image of the pixel centre lies within one pixel of a lit pixel
            dx, dy = c0 - cx, r0 - cy
            fc = cx + math.cos(t) * dx + math.sin(t) * dy
            fr = cy - math.sin(t) * dx + math.cos(t) * dy
            assert np.min(np.hypot(lit[:, 0] - fr, lit[:, 1] - fc)) <= 1.0
    assert hit >= 3
    # a pixel 3 above the centre goes up-left (counter-clockwise), to about (5 - 2.1, 5 - 2.1)
    x = np.zeros((1, h, w, 1), np.uint8)
    x[0, 2, 5, 0] = 1
    assert rotate(x, 45)[0, 3, 3, 0] == 1


def test_rotate_fills_zero_and_keeps_channels():
    x = np.full((2, 10, 10, 3), 7, np.uint8)
    out = rotate(x, 45)
    assert out[0, 0, 0].tolist() == [0, 0, 0]  # corners come from outside the image
    assert out[1, 5, 5].tolist() == [7, 7, 7]
    assert np.array_equal(out[..., 0], out[..., 2])


def test_rotate_agrees_with_pil_nearest_on_28x28():
    Image = pytest.importorskip("PIL.Image")
    x = np.random.default_rng(3).integers(0, 256, (3, 28, 28, 1), dtype=np.uint8)
    for i in range(36):
        a = 10.0 * i
        pil = np.stack([np.asarray(Image.fromarray(im[..., 0]).rotate(a)) for im in x])
        assert np.array_equal(rotate(x, a)[..., 0], pil), a


def test_rotate_bad_input():
    with pytest.raises(DataError, match=r"\[N, H, W, C\]"):
        rotate(np.zeros((4, 4), np.uint8), 10)
    with pytest.raises(DataError, match="finite"):
        rotate(np.zeros((1, 4, 4, 1), np.uint8), float("nan"))


# ------------------------------------------------------------------ the reference draws


def test_replay_matches_reference_draws():
    raw = synthetic()
    k, n_tr, n_va, n_te = 4, 100, 20, 25
    ds = fedora_rotated(raw, num_clients=k, n_train=n_tr, n_val=n_va)
    assert ds.meta["n_test"] == n_te == 100 // k
    ref_tr, ref_va, ref_te = reference_draws(600, 100, k, n_tr, n_va, n_te)
    got_tr, got_va, got_te = fedora_indices(600, 100, k, n_tr, n_va)
    for i in range(k):
        assert got_tr[i].tolist() == ref_tr[i].tolist()
        assert got_va[i].tolist() == ref_va[i].tolist()
        assert got_te[i].tolist() == ref_te[i].tolist()
        a = 360.0 * i / k
        assert ds.meta["angles"][i] == a
        assert np.array_equal(ds.x[ds.train[i]], rotate(raw.x_train[ref_tr[i]], a))
        assert np.array_equal(ds.x[ds.val[i]], rotate(raw.x_train[ref_va[i]], a))
        assert np.array_equal(ds.x[ds.test[i]], rotate(raw.x_test[ref_te[i]], a))
        assert ds.y[ds.train[i]].tolist() == raw.y_train[ref_tr[i]].tolist()
        assert ds.y[ds.val[i]].tolist() == raw.y_train[ref_va[i]].tolist()
        assert ds.y[ds.test[i]].tolist() == raw.y_test[ref_te[i]].tolist()
    # client 0 is unrotated; the draws are disjoint within the train set
    assert np.array_equal(ds.x[ds.train[0]], raw.x_train[ref_tr[0]])
    used = np.concatenate(ref_tr + ref_va)
    assert len(np.unique(used)) == len(used)
    assert max(np.concatenate(ref_tr)) < 600 and min(np.concatenate(ref_va)) >= 0


def test_replay_global_seed_equivalent():
    """np.random.seed(42) + np.random.shuffle (the reference) == RandomState(42).shuffle."""
    state = np.random.get_state()
    try:
        np.random.seed(42)
        ridx = np.arange(600)
        np.random.shuffle(ridx)
        tidx = np.arange(100)
        np.random.shuffle(tidx)
    finally:
        np.random.set_state(state)
    tr, va, te = fedora_indices(600, 100, 2, 250, 50, 50)
    assert np.concatenate(tr).tolist() == ridx[:500].tolist()
    assert np.concatenate(va).tolist() == ridx[500:].tolist()
    assert np.concatenate(te).tolist() == tidx.tolist()


def test_other_seed_differs():
    a = fedora_indices(600, 100, 4, 100, 20, seed=42)[0]
    b = fedora_indices(600, 100, 4, 100, 20, seed=0)[0]
    assert any(x.tolist() != y.tolist() for x, y in zip(a, b))


def test_dataset_structure():
    ds = fedora_rotated(synthetic(), num_clients=5, n_train=80, n_val=20, n_test=10)
    m = 80 + 20 + 10
    assert ds.x.shape == (5 * m, 6, 6, 1) and ds.x.dtype == np.uint8 and ds.y.dtype == np.int32
    assert ds.train_clients.tolist() == [0, 1, 2, 3, 4] and len(ds.eval_clients) == 0
    assert ds.client_ids == ("0", "1", "2", "3", "4")
    for i in range(5):  # client-major rows, each row owned by one client
        rows = np.concatenate([ds.train[i], ds.val[i], ds.test[i]])
        assert rows.tolist() == list(range(i * m, (i + 1) * m))
    meta = ds.meta
    assert meta["source"] == "synthetic" and meta["seed"] == 42 and meta["scaled"] is True
    assert (meta["n_train"], meta["n_val"], meta["n_test"]) == (80, 20, 10)
    assert meta["angles"] == [0.0, 72.0, 144.0, 216.0, 288.0]


def test_reference_sizes_on_mnist_sized_source():
    rng = np.random.default_rng(0)
    raw = RawData(
        name="label_only",
        x_train=np.zeros((60000, 1, 1, 1), np.uint8),
        y_train=rng.integers(0, 10, 60000).astype(np.int32),
        x_test=np.zeros((10000, 1, 1, 1), np.uint8),
        y_test=rng.integers(0, 10, 10000).astype(np.int32),
        num_classes=10,
    )
    ds = fedora_rotated(raw)
    assert ds.num_clients == 36
    assert set(ds.train.sizes.tolist()) == {128}
    assert set(ds.val.sizes.tolist()) == {64}
    assert set(ds.test.sizes.tolist()) == {277}
    assert len(ds.y) == 36 * (128 + 64 + 277)
    assert ds.meta["scaled"] is False and ds.meta["train_pool"] == 50000
    assert ds.meta["angles"][1] == 10.0 and ds.meta["angles"][35] == 350.0
    ref_tr, ref_va, ref_te = reference_draws(60000, 10000, 36, 128, 64, 277)
    for i in (0, 17, 35):
        assert ds.y[ds.train[i]].tolist() == raw.y_train[ref_tr[i]].tolist()
        assert ds.y[ds.val[i]].tolist() == raw.y_train[ref_va[i]].tolist()
        assert ds.y[ds.test[i]].tolist() == raw.y_test[ref_te[i]].tolist()
    assert scaled_sizes(raw) == (128, 64, 277)


def test_too_small_source_one_line_error():
    raw = synthetic()  # 600 train -> pools 500 / 100; 100 test
    with pytest.raises(DataError) as e:
        fedora_rotated(raw)
    msg = str(e.value)
    assert "\n" not in msg and "too small" in msg and "smaller" in msg
    with pytest.raises(DataError, match="n_val=30"):
        fedora_rotated(raw, num_clients=4, n_train=100, n_val=30)
    with pytest.raises(DataError, match="n_test=30"):
        fedora_rotated(raw, num_clients=4, n_train=100, n_val=20, n_test=30)
    with pytest.raises(DataError, match="fewer than 200 clients"):
        fedora_rotated(raw, num_clients=200, n_train=1, n_val=0)


@pytest.mark.parametrize(
    "kw", [{"num_clients": 0}, {"n_train": 0}, {"n_val": -1}, {"n_test": 0}, {"seed": -1}]
)
def test_bad_arguments(kw):
    args = {"num_clients": 4, "n_train": 10, "n_val": 5, **kw}
    with pytest.raises(DataError, match="fedora_rotated"):
        fedora_rotated(synthetic(), **args)


def test_embedded_mnist_scaled():
    from jaxpfl.data.sources import load_raw

    raw = load_raw("mnist_embedded")
    assert (len(raw.y_train), len(raw.y_test)) == (8000, 2000)
    with pytest.raises(DataError, match="n_val=64"):
        fedora_rotated(raw)
    sizes = scaled_sizes(raw)
    assert sizes == (128, 37, 55)
    ds = fedora_rotated(raw, n_train=sizes[0], n_val=sizes[1], n_test=sizes[2])
    assert ds.meta["scaled"] is True and ds.x.shape == (36 * 220, 28, 28, 1)
    ref_tr, _, ref_te = reference_draws(8000, 2000, 36, 128, 37, 55)
    assert np.array_equal(ds.x[ds.train[9]], rotate(raw.x_train[ref_tr[9]], 90))
    assert np.array_equal(ds.x[ds.test[18]], rotate(raw.x_test[ref_te[18]], 180))


@pytest.mark.skipif(not os.path.isdir(FMNIST_DIR), reason="Debian fashion-mnist not installed")
def test_fashion_mnist_reference():
    from jaxpfl.data.sources import load_raw

    raw = load_raw("fashion_mnist")
    ds = fedora_rotated(raw)
    assert ds.x.shape == (36 * 469, 28, 28, 1) and ds.meta["scaled"] is False
    ref_tr, ref_va, ref_te = reference_draws(60000, 10000, 36, 128, 64, 277)
    for i in (0, 9, 35):
        a = 10.0 * i
        assert np.array_equal(ds.x[ds.train[i]], rotate(raw.x_train[ref_tr[i]], a))
        assert np.array_equal(ds.x[ds.val[i]], rotate(raw.x_train[ref_va[i]], a))
        assert np.array_equal(ds.x[ds.test[i]], rotate(raw.x_test[ref_te[i]], a))


# ------------------------------------------------------------------ storage and CLI


def test_save_load_rotated(tmp_path):
    ds = fedora_rotated(synthetic(), num_clients=4, n_train=50, n_val=10)
    path = save_rotated(tmp_path / "r", ds)
    assert path.endswith(".npz")
    back = load_rotated(path)
    assert np.array_equal(back.x, ds.x) and np.array_equal(back.y, ds.y)
    assert back.train.equals(ds.train) and back.val.equals(ds.val) and back.test.equals(ds.test)
    assert back.meta["hash"] == ds.meta["hash"] and back.num_classes == 10
    assert back.name == ds.name and back.meta["angles"] == ds.meta["angles"]
    assert [len(v) for v in read_partition(path)["val"]] == [10] * 4  # also a partition file


def test_load_rotated_refuses_edits(tmp_path):
    ds = fedora_rotated(synthetic(), num_clients=4, n_train=50, n_val=10)
    path = save_rotated(tmp_path / "r", ds)
    with np.load(path) as f:
        arrays = dict(f)
    x = arrays["x"].copy()
    x[0, 0, 0, 0] ^= 1
    np.savez_compressed(tmp_path / "pix.npz", **{**arrays, "x": x})
    with pytest.raises(DataError, match="sha256 mismatch"):
        load_rotated(tmp_path / "pix.npz")
    np.savez_compressed(tmp_path / "ov.npz", **{**arrays, "val_1": arrays["train_1"][:3]})
    with pytest.raises(DataError, match="client 1: .*train and val"):
        load_rotated(tmp_path / "ov.npz")
    plain = save_partition(tmp_path / "plain", ([np.arange(3)], [np.arange(3, 5)]))
    with pytest.raises(DataError, match="not a rotated dataset"):
        load_rotated(plain)


def _cli():
    sys.path.insert(0, os.path.join(ROOT, "data_prep"))
    try:
        import build_rotated
    finally:
        sys.path.pop(0)
    return build_rotated


def test_cli_embedded(tmp_path, capsys):
    out = tmp_path / "rot.npz"
    assert _cli().main(["--dataset", "mnist_embedded", "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert "sizes scaled" in text and "label histogram" in text and f"wrote {out}" in text
    assert "    35  350.0    128    37    55" in text
    ds = load_rotated(out)
    assert ds.train.sizes.tolist() == [128] * 36 and ds.val.sizes.tolist() == [37] * 36


def test_cli_errors(capsys):
    cli = _cli()
    assert cli.main(["--dataset", "mnist_embedded", "--n-val", "64", "--no-save"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err and "n_val=64" in err
    assert cli.main(["--dataset", "nope", "--no-save"]) == 2
    assert capsys.readouterr().err.startswith("error: unknown dataset")
    with pytest.raises(SystemExit) as e:
        cli.main(["--clients", "many"])
    assert e.value.code == 2
    assert capsys.readouterr().err.count("\n") == 1
