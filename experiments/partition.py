"""Partition a dataset into federated clients, print a report, optionally save it.

Examples::

    python experiments/partition.py                                   # embedded MNIST, Dir(0.1), 20
    python experiments/partition.py --dataset fashion_mnist --partition pfllib_dir --out runs/parts
    python experiments/partition.py --partition shards --clients 100 --pool train --train-frac 1
    python experiments/partition.py --dataset femnist --data-dir DIR --partition natural

With ``--out DIR`` it writes ``DIR/<tag>.npz`` (the index file, loadable with
``jaxpfl.data.store.load_partition``), ``DIR/<tag>.stats.json`` and ``DIR/<tag>.png``.
Bad input prints one line ``error: ...`` on stderr and exits with status 2.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if _ROOT not in sys.path:
    sys.path.insert(0, _ROOT)

from jaxpfl.data.dataset import DataError  # noqa: E402
from jaxpfl.data.federate import PARTITIONS, POOLS, federate  # noqa: E402
from jaxpfl.data.stats import format_stats_table, partition_stats, plot_partition  # noqa: E402
from jaxpfl.data.store import save_partition  # noqa: E402


class _Parser(argparse.ArgumentParser):
    """argparse with one-line errors (exit 2) instead of usage + message."""

    def error(self, message: str):
        print(f"error: {message} (see --help)", file=sys.stderr)
        sys.exit(2)


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(description=__doc__.split("\n\n")[0])
    p.add_argument(
        "--dataset",
        default="mnist_embedded",
        help="source name for jaxpfl.data.sources.load_raw (default: mnist_embedded, "
        "10,000 real MNIST digits shipped with the package)",
    )
    p.add_argument("--data-dir", default=None, help="folder of the dataset files (source default)")
    p.add_argument(
        "--partition",
        default="dirichlet",
        choices=list(PARTITIONS),
        help="how to split examples into clients (default: dirichlet)",
    )
    p.add_argument(
        "--clients",
        type=int,
        default=None,
        help="number of clients K (default: 20; 'natural': every writer)",
    )
    p.add_argument(
        "--alpha",
        type=float,
        default=0.1,
        help="Dirichlet concentration, smaller = more label skew (default: 0.1)",
    )
    p.add_argument(
        "--shards-per-client", type=int, default=2, help="'shards': shards per client (default: 2)"
    )
    p.add_argument(
        "--num-shards",
        type=int,
        default=None,
        help="'shards': total shards S (default: K x shards-per-client)",
    )
    p.add_argument(
        "--class-per-client",
        type=int,
        default=2,
        help="'pfllib_pat': classes per client (default: 2)",
    )
    p.add_argument(
        "--balance",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="balancing of the mode (dirichlet: on; flower self_balancing and PFLlib balance: off)",
    )
    p.add_argument(
        "--min-size",
        type=int,
        default=10,
        help="'dirichlet'/'flower_dirichlet': smallest allowed client (default: 10)",
    )
    p.add_argument(
        "--min-samples",
        type=int,
        default=1,
        help="'natural': drop writers with fewer examples (default: 1)",
    )
    p.add_argument(
        "--train-frac",
        type=float,
        default=0.75,
        help="share of each client's examples in its train split (default: 0.75)",
    )
    p.add_argument(
        "--holdout-frac",
        type=float,
        default=0.0,
        help="share of clients held out for evaluation only (default: 0)",
    )
    p.add_argument(
        "--pool",
        default="concat",
        choices=list(POOLS),
        help="what is partitioned: concat = train+test (PFLlib), train = train set "
        "only (test set kept central), separate = train set to training clients, "
        "test set to held-out clients (default: concat)",
    )
    p.add_argument(
        "--seed",
        type=int,
        default=None,
        help="partition seed (default: 1 for pfllib_*, 42 for flower_dirichlet, else 0)",
    )
    p.add_argument(
        "--out",
        default=None,
        help="folder to write <tag>.npz, <tag>.stats.json and <tag>.png (default: none)",
    )
    p.add_argument(
        "--max-rows", type=int, default=40, help="client rows shown in the table (default: 40)"
    )
    p.add_argument("--no-plot", action="store_true", help="with --out, skip the PNG figure")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.clients is not None and args.clients < 1:
            raise DataError(f"--clients must be >= 1, got {args.clients}")
        if not args.alpha > 0:
            raise DataError(f"--alpha must be > 0, got {args.alpha}")
        if not 0.0 <= args.train_frac <= 1.0:
            raise DataError(f"--train-frac must be in [0, 1], got {args.train_frac}")
        if not 0.0 <= args.holdout_frac < 1.0:
            raise DataError(f"--holdout-frac must be in [0, 1), got {args.holdout_frac}")
        clients = args.clients
        if clients is None and args.partition != "natural":
            clients = 20
        from jaxpfl.data.sources import load_raw

        raw = load_raw(args.dataset, args.data_dir)
        ds = federate(
            raw,
            args.partition,
            clients,
            alpha=args.alpha,
            shards_per_client=args.shards_per_client,
            num_shards=args.num_shards,
            class_per_client=args.class_per_client,
            balance=args.balance,
            train_frac=args.train_frac,
            holdout_frac=args.holdout_frac,
            seed=args.seed,
            pool=args.pool,
            min_size=args.min_size,
            min_samples=args.min_samples,
        )
        stats = partition_stats(ds)
        print(format_stats_table(stats, max_rows=args.max_rows))
        if args.out:
            tag = f"{args.dataset}_{args.partition}_{ds.num_clients}c_seed{ds.meta['seed']}"
            tag = tag.replace("/", "-").replace(":", "-")
            npz = save_partition(os.path.join(args.out, tag + ".npz"), ds)
            with open(os.path.join(args.out, tag + ".stats.json"), "w") as f:
                json.dump(stats, f)
            print(f"wrote {npz}")
            print(f"wrote {os.path.join(args.out, tag + '.stats.json')}")
            if not args.no_plot:
                print(f"wrote {plot_partition(ds, os.path.join(args.out, tag + '.png'))}")
    except (DataError, ValueError, FileNotFoundError, OSError, ImportError) as e:
        msg = " ".join(str(e).split()) or type(e).__name__
        print(f"error: {msg}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
