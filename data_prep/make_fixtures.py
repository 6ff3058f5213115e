"""Write tiny fake datasets in the exact on-disk layouts jaxpfl reads (for tests and smoke runs).

* ``write_tff_emnist(folder, ...)``: TFF federated EMNIST HDF5 files
  ``fed_emnist[_digitsonly]_{train,test}.h5`` with groups ``examples/<writer_id>/pixels``
  (float32 ``[n, 28, 28]`` in [0, 1], white background ~1) and ``examples/<writer_id>/label``
  (int32 ``[n]``).
* ``write_leaf_femnist(folder, ...)``: LEAF FEMNIST JSON,
  ``{"users": [...], "num_samples": [...], "user_data": {u: {"x": [[784 floats]], "y": [...]}}}``,
  in ``data/train`` + ``data/test`` (``split='user'`` or ``'sample'``) or ``data/all_data``.
* ``write_idx(path, array)``: one IDX file (gzip when the name ends in ``.gz``).

Usage::

    python data_prep/make_fixtures.py --out /tmp/fixtures   # writes tff/, leaf_user/, ...

then e.g. ``load_raw('emnist_tff', '/tmp/fixtures/tff')``. The images are random strokes,
not characters: the fixtures test plumbing, not learning.
"""

from __future__ import annotations

import argparse
import gzip
import json
import struct
from pathlib import Path

import numpy as np


def fake_glyphs(rng: np.random.Generator, labels: np.ndarray) -> np.ndarray:
    """float32 ``[n, 28, 28]`` in [0, 1]: white background, one dark bar whose row is the label."""
    n = len(labels)
    img = np.ones((n, 28, 28), np.float32)
    rows = 2 + np.asarray(labels) % 24
    for i in range(n):
        img[i, rows[i], 4:24] = rng.uniform(0.0, 0.3, 20).astype(np.float32)
    return img


def write_tff_emnist(
    folder: str | Path,
    *,
    num_writers: int = 5,
    only_digits: bool = False,
    seed: int = 0,
) -> dict[str, dict[str, np.ndarray]]:
    """Write both TFF HDF5 files; returns ``{split: {writer_id: labels}}`` for checking."""
    import h5py

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    classes = 10 if only_digits else 62
    stem = "fed_emnist_digitsonly" if only_digits else "fed_emnist"
    # TFF writer ids look like f0000_14; write them unsorted to test that readers sort.
    writers = [
        f"f{int(k):04d}_{int(rng.integers(0, 100)):02d}" for k in rng.permutation(num_writers)
    ]
    truth: dict[str, dict[str, np.ndarray]] = {}
    for split, lo, hi in (("train", 3, 9), ("test", 1, 4)):
        truth[split] = {}
        with h5py.File(folder / f"{stem}_{split}.h5", "w") as f:
            ex = f.create_group("examples")
            for w in writers:
                labels = rng.integers(0, classes, int(rng.integers(lo, hi))).astype(np.int32)
                g = ex.create_group(w)
                g.create_dataset("pixels", data=fake_glyphs(rng, labels))
                g.create_dataset("label", data=labels)
                truth[split][w] = labels
    return truth


def _leaf_doc(users: list[str], data: dict[str, tuple[np.ndarray, np.ndarray]]) -> dict:
    return {
        "users": users,
        "num_samples": [len(data[u][1]) for u in users],
        "user_data": {
            u: {
                "x": np.round(data[u][0].reshape(len(data[u][1]), 784), 4).tolist(),
                "y": data[u][1].tolist(),
            }
            for u in users
        },
    }


def write_leaf_femnist(
    folder: str | Path,
    *,
    layout: str = "user",
    num_writers: int = 6,
    files: int = 2,
    seed: int = 0,
) -> dict[str, dict[str, np.ndarray]]:
    """Write LEAF FEMNIST JSON under ``folder/data/...``; returns ``{split: {user: labels}}``.

    ``layout``: ``'user'`` (train/test with disjoint writers, first 80% train as LEAF's
    ``-t user --tf 0.8``), ``'sample'`` (same writers in both, ~90/10 per writer) or ``'all'``
    (``all_data`` only). Users are spread over ``files`` JSON files.
    """
    folder = Path(folder)
    rng = np.random.default_rng(seed)
    users = [f"f{k:04d}_{int(rng.integers(0, 100)):02d}" for k in range(num_writers)]
    per_user = {}
    for u in users:
        y = rng.integers(0, 62, int(rng.integers(4, 12))).astype(np.int64)
        per_user[u] = (fake_glyphs(rng, y), y)

    splits: dict[str, dict[str, tuple[np.ndarray, np.ndarray]]]
    if layout == "all":
        splits = {"all_data": per_user}
    elif layout == "user":
        cut = int(0.8 * num_writers)
        splits = {
            "train": {u: per_user[u] for u in users[:cut]},
            "test": {u: per_user[u] for u in users[cut:]},
        }
    elif layout == "sample":
        splits = {"train": {}, "test": {}}
        for u, (x, y) in per_user.items():
            k = max(1, int(0.9 * len(y)))
            splits["train"][u], splits["test"][u] = (x[:k], y[:k]), (x[k:], y[k:])
    else:
        raise ValueError(f"layout must be 'user', 'sample' or 'all', not {layout!r}")

    truth = {}
    for split, data in splits.items():
        out = folder / "data" / split
        out.mkdir(parents=True, exist_ok=True)
        names = list(data)
        for i in range(files):
            chunk = names[i::files]
            doc = _leaf_doc(chunk, data)
            (out / f"all_data_{i}_niid_0_keep_0_{split}_9.json").write_text(json.dumps(doc))
        truth[split] = {u: data[u][1] for u in names}
    return truth


def write_idx(path: str | Path, array: np.ndarray) -> None:
    """Write a uint8 array as one IDX file (gzip when ``path`` ends in ``.gz``)."""
    a = np.ascontiguousarray(array, dtype=np.uint8)
    blob = struct.pack(">BBBB", 0, 0, 0x08, a.ndim) + struct.pack(f">{a.ndim}I", *a.shape)
    blob += a.tobytes()
    path = Path(path)
    path.write_bytes(gzip.compress(blob) if path.suffix == ".gz" else blob)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    write_tff_emnist(args.out / "tff", seed=args.seed)
    write_tff_emnist(args.out / "tff", only_digits=True, seed=args.seed)
    for layout in ("user", "sample", "all"):
        write_leaf_femnist(args.out / f"leaf_{layout}", layout=layout, seed=args.seed)
    print(f"wrote fixtures under {args.out}: tff/, leaf_user/, leaf_sample/, leaf_all/")


if __name__ == "__main__":
    main()
