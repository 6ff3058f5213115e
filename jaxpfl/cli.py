"""Shared command-line plumbing for ``experiments/*.py``: data, model and run flags, and the
one-line error contract (bad input → ``error: ...`` on stderr, exit status 2, no traceback)."""

from __future__ import annotations

import argparse
import functools
import json
import sys
from collections.abc import Callable
from typing import Any

from jaxpfl.core.engine import STRATEGIES, Strategy, default_strategy
from jaxpfl.core.train import ExecOptions
from jaxpfl.data.dataset import DataError, FederatedDataset
from jaxpfl.run import RunError


def add_data_args(p: argparse.ArgumentParser, **defaults: Any) -> None:
    """--dataset --data-dir --partition --num-clients --alpha --train-frac --holdout-frac ..."""
    g = p.add_argument_group("data")
    g.add_argument(
        "--dataset",
        default="mnist_embedded",
        help="data source: mnist_embedded (shipped, no download), mnist, fashion_mnist "
        "(IDX files), emnist / cifar10 / tfds:NAME (prepared tfds dir), "
        "emnist_tff (TFF HDF5 writers), femnist (LEAF JSON writers)",
    )
    g.add_argument(
        "--data-dir", default=None, help="directory of the dataset files (source default)"
    )
    g.add_argument(
        "--partition",
        default="dirichlet",
        help="iid, dirichlet, flower_dirichlet, pfllib_dir, shards, pfllib_pat, natural",
    )
    g.add_argument(
        "--num-clients",
        type=int,
        default=100,
        help="total clients K (natural: None/0 = every writer)",
    )
    g.add_argument("--alpha", type=float, default=0.5, help="Dirichlet concentration (> 0)")
    g.add_argument("--shards-per-client", type=int, default=2, help="shards per client (shards)")
    g.add_argument(
        "--class-per-client", type=int, default=2, help="classes per client (pfllib_pat)"
    )
    g.add_argument(
        "--train-frac",
        type=float,
        default=0.8,
        help="per-client train (support) fraction; the rest is test (query)",
    )
    g.add_argument(
        "--holdout-frac",
        type=float,
        default=0.2,
        help="fraction of clients held out for evaluation (never trained on)",
    )
    g.add_argument(
        "--n-eval",
        type=int,
        default=None,
        help="number of held-out clients (overrides --holdout-frac)",
    )
    g.add_argument(
        "--holdout-seed",
        type=int,
        default=None,
        help="seed of the held-out client draw (default: the partition seed)",
    )
    g.add_argument(
        "--partition-seed",
        type=int,
        default=None,
        help="seed of the partition (default: --seed; pfllib modes use their own)",
    )
    g.add_argument("--min-size", type=int, default=10, help="minimum client size (dirichlet)")
    p.set_defaults(**defaults)


def load_dataset(args: argparse.Namespace) -> FederatedDataset:
    """Load the source named by ``--dataset`` and partition it as the flags say."""
    from jaxpfl.data.federate import federate
    from jaxpfl.data.sources import load_raw

    if args.alpha is not None and not args.alpha > 0:
        raise DataError(f"--alpha must be > 0 (got {args.alpha})")
    raw = load_raw(args.dataset, args.data_dir)
    num_clients = args.num_clients if args.num_clients else None
    return federate(
        raw,
        args.partition,
        num_clients,
        alpha=args.alpha,
        shards_per_client=args.shards_per_client,
        class_per_client=args.class_per_client,
        train_frac=args.train_frac,
        holdout_frac=args.holdout_frac,
        n_eval=args.n_eval,
        seed=args.partition_seed if args.partition_seed is not None else args.seed,
        min_size=args.min_size,
        holdout_seed=args.holdout_seed,
    )


def add_run_args(p: argparse.ArgumentParser, **defaults: Any) -> None:
    """--seed --out --resume --eval-every --checkpoint-every --strategy --chunk-size ..."""
    g = p.add_argument_group("run")
    g.add_argument("--seed", type=int, default=0, help="seed of init, sampling and data order")
    g.add_argument(
        "--out",
        default=None,
        help="output directory (metrics.jsonl, summary, plot, "
        "checkpoints); default runs/<experiment>",
    )
    g.add_argument(
        "--resume",
        action="store_true",
        help="resume from the last checkpoint in --out (same configuration only)",
    )
    g.add_argument("--eval-every", type=int, default=10, help="evaluate every k rounds")
    g.add_argument(
        "--checkpoint-every",
        type=int,
        default=0,
        help="checkpoint every N rounds (0: only at the end)",
    )
    g.add_argument(
        "--strategy",
        default=None,
        choices=STRATEGIES,
        help="how clients are mapped (default: fastest measured for the backend: "
        "sequential on CPU, vmap on GPU/TPU)",
    )
    g.add_argument("--chunk-size", type=int, default=8, help="clients per chunk (chunked)")
    g.add_argument(
        "--step-block",
        type=int,
        default=None,
        help="steps per jitted call in sequential mode (default 1 on CPU)",
    )
    g.add_argument("--unroll", type=int, default=1, help="scan unroll factor (jitted strategies)")
    g.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    p.set_defaults(**defaults)


def strategy_from_args(args: argparse.Namespace) -> Strategy:
    base = default_strategy()
    name = args.strategy or base.name
    block = args.step_block if args.step_block is not None else base.exec.step_block
    if name != "sequential" and args.step_block is None:
        block = None
    return Strategy(
        name, chunk_size=args.chunk_size, exec=ExecOptions(unroll=args.unroll, step_block=block)
    )


def config_text(args: argparse.Namespace, ignore: tuple[str, ...] = ()) -> str:
    """The experiment's configuration as canonical JSON (what resume must match)."""
    skip = {
        "resume",
        "no_progress",
        "out",
        "strategy",
        "chunk_size",
        "step_block",
        "unroll",
        "checkpoint_every",
        *ignore,
    }
    return json.dumps(
        {k: v for k, v in sorted(vars(args).items()) if k not in skip}, sort_keys=True
    )


def main_guard(fn: Callable[[], Any]) -> Callable[[], Any]:
    """Run ``fn``; bad input or a failed run prints ``error: ...`` and exits with status 2."""

    @functools.wraps(fn)
    def wrapper():
        try:
            return fn()
        except (DataError, RunError, ValueError, FileNotFoundError, OSError) as e:
            msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            print(f"error: {msg}", file=sys.stderr)
            sys.exit(2)
        except KeyboardInterrupt:
            print("interrupted", file=sys.stderr)
            sys.exit(130)

    return wrapper
