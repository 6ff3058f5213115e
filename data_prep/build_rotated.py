"""Build the FEDORA rotated dataset (docs/algorithms.md §7.7) and save it with its pool.

Examples::

    python data_prep/build_rotated.py                            # rotated Fashion-MNIST, 36 clients
    python data_prep/build_rotated.py --dataset mnist_embedded   # embedded MNIST, scaled sizes
    python data_prep/build_rotated.py --dataset mnist --data-dir DIR --out runs/rmnist.npz

Fashion-MNIST is read from the Debian IDX files (``/usr/share/datasets/fashion-mnist``,
``apt-get install dataset-fashion-mnist``). Sizes default to the reference's 128 train, 64
validation and ``floor(N_test / K)`` test examples per client; for ``mnist_embedded`` (too small
for them) or with ``--scaled`` they default to ``jaxpfl.data.rotated.scaled_sizes``. Prints
per-client counts and a label histogram summary, then writes the rotated pool and its splits
(``jaxpfl.data.rotated.save_rotated``; read it back with ``load_rotated``). Bad input prints
one line ``error: ...`` on stderr and exits with status 2.
"""

from __future__ import annotations

import argparse
import os
import sys

import numpy as np

_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if _ROOT not in sys.path:
    sys.path.insert(0, _ROOT)

from jaxpfl.data.dataset import DataError, FederatedDataset  # noqa: E402
from jaxpfl.data.rotated import (  # noqa: E402
    REFERENCE_SIZES,
    fedora_rotated,
    save_rotated,
    scaled_sizes,
)

SMALL_SOURCES = ("mnist_embedded",)


class _Parser(argparse.ArgumentParser):
    """argparse with one-line errors (exit 2) instead of usage + message."""

    def error(self, message: str):
        print(f"error: {message} (see --help)", file=sys.stderr)
        sys.exit(2)


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(description=__doc__.split("\n\n")[0])
    p.add_argument(
        "--dataset",
        default="fashion_mnist",
        help="source for jaxpfl.data.sources.load_raw: fashion_mnist (default), mnist_embedded, "
        "mnist (needs --data-dir), ...",
    )
    p.add_argument("--data-dir", default=None, help="folder of the dataset files (source default)")
    p.add_argument("--clients", type=int, default=36, help="number of clients K (default 36)")
    p.add_argument("--n-train", type=int, default=None, help="train examples per client (128)")
    p.add_argument("--n-val", type=int, default=None, help="validation examples per client (64)")
    p.add_argument(
        "--n-test", type=int, default=None, help="test examples per client (floor(N_test / K))"
    )
    p.add_argument(
        "--scaled",
        action="store_true",
        help="cap unset sizes to what the source holds per client (default for mnist_embedded)",
    )
    p.add_argument("--seed", type=int, default=42, help="NumPy seed of the draws (default 42)")
    p.add_argument(
        "--out",
        default=None,
        help="output .npz (default runs/rotated/rotated_<dataset>_<K>c_seed<seed>.npz)",
    )
    p.add_argument("--no-save", action="store_true", help="print the report only")
    return p


def report(ds: FederatedDataset) -> str:
    """Per-client counts (angle, train / val / test, distinct labels) and a label summary."""
    c = int(ds.num_classes)
    angles = ds.meta.get("angles", [0.0] * ds.num_clients)
    head = f"{'client':>6} {'angle':>6} {'train':>6} {'val':>5} {'test':>5} {'labels':>6}"
    lines = [head, "-" * len(head)]
    per_client = np.zeros((ds.num_clients, c), np.int64)
    totals = {}
    for split in ("train", "val", "test"):
        ci = getattr(ds, split)
        owner = np.repeat(np.arange(len(ci)), ci.sizes)
        counts = np.bincount(owner * c + ds.y[ci.flat], minlength=len(ci) * c).reshape(-1, c)
        per_client += counts
        totals[split] = counts.sum(axis=0)
    for k in range(ds.num_clients):
        lines.append(
            f"{k:>6} {angles[k]:>6.1f} {ds.train.sizes[k]:>6} {ds.val.sizes[k]:>5} "
            f"{ds.test.sizes[k]:>5} {int((per_client[k] > 0).sum()):>6}"
        )
    lines.append("-" * len(head))
    lines.append(
        f"{ds.num_clients} clients, {c} classes; examples: train {int(ds.train.sizes.sum())}, "
        f"val {int(ds.val.sizes.sum())}, test {int(ds.test.sizes.sum())}, pool {len(ds.y)}"
    )
    lines.append("label histogram (class: train/val/test):")
    lines.append(
        "  "
        + "  ".join(
            f"{j}:{totals['train'][j]}/{totals['val'][j]}/{totals['test'][j]}" for j in range(c)
        )
    )
    lo, hi = per_client.min(axis=0), per_client.max(axis=0)
    lines.append(
        "per-client examples of a class (all splits): min "
        f"{int(lo.min())}, max {int(hi.max())}, mean {per_client.mean():.1f}"
    )
    lines.append(f"hash {ds.meta['hash'][:16]}  scaled sizes: {ds.meta['scaled']}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        from jaxpfl.data.sources import load_raw

        raw = load_raw(args.dataset, args.data_dir)
        sizes = [args.n_train, args.n_val, args.n_test]
        if args.scaled or args.dataset in SMALL_SOURCES:
            fit = scaled_sizes(
                raw,
                args.clients,
                REFERENCE_SIZES[0] if args.n_train is None else args.n_train,
                REFERENCE_SIZES[1] if args.n_val is None else args.n_val,
            )
            sizes = [f if s is None else s for s, f in zip(sizes, fit)]
            print(f"sizes scaled to the source: train {sizes[0]}, val {sizes[1]}, test {sizes[2]}")
        n_train = REFERENCE_SIZES[0] if sizes[0] is None else sizes[0]
        n_val = REFERENCE_SIZES[1] if sizes[1] is None else sizes[1]
        ds = fedora_rotated(raw, args.clients, n_train, n_val, sizes[2], seed=args.seed)
        print(report(ds))
        if not args.no_save:
            tag = f"rotated_{args.dataset}_{ds.num_clients}c_seed{args.seed}"
            tag = tag.replace(":", "-").replace("/", "-")
            out = args.out or os.path.join("runs", "rotated", tag + ".npz")
            print(f"wrote {save_rotated(out, ds)}")
    except (DataError, ValueError, OSError, ImportError) as e:
        msg = " ".join(str(e).split()) or type(e).__name__
        print(f"error: {msg}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
