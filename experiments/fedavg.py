"""FedAvg / FedOpt (McMahan et al. 2017; Reddi et al. 2021) with the jaxpfl engine.

    python experiments/fedavg.py                       # embedded MNIST, Dir(0.1), 20 clients
    python experiments/fedavg.py --dataset fashion_mnist --partition pfllib_dir --alpha 0.1 \
        --lr 0.005 --rounds 25                          # PFLlib's FMNIST Dir(0.1) setting (§2.4)
    python experiments/fedavg.py --server-opt adam --server-lr 0.01   # FedAdam

Evaluates the global model on every client's test split (pooled = PFLlib's "Averaged Test
Accuracy", mean = unweighted over clients). Outputs in ``--out`` (default runs/fedavg):
metrics.jsonl, summary.json, accuracy.png, checkpoints.
"""

from __future__ import annotations

import argparse
import os
import sys

import jax.numpy as jnp

from jaxpfl.algorithms.fedavg import SERVER_OPTIMIZERS, FedAvgConfig, fedavg
from jaxpfl.cli import (
    add_data_args,
    add_run_args,
    config_text,
    load_dataset,
    main_guard,
    strategy_from_args,
)
from jaxpfl.core import evaluate_global, summarize
from jaxpfl.models import get_model
from jaxpfl.run import Phase, RunConfig, plot_curves, run


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description="FedAvg / FedOpt: global model, optax server optimizer")
    p.add_argument(
        "--clients", dest="num_clients", type=int, help="total clients K (same as --num-clients)"
    )
    p.add_argument(
        "--clients-per-round",
        type=float,
        default=1.0,
        help="clients per round: a fraction C <= 1 (M = max(1, floor(C K))) or a count",
    )
    p.add_argument("--rounds", type=int, default=50, help="communication rounds")
    p.add_argument("--local-epochs", type=int, default=1, help="local epochs E")
    p.add_argument("--batch-size", type=int, default=10, help="client batch size B")
    p.add_argument("--lr", type=float, default=0.01, help="client SGD learning rate")
    p.add_argument("--client-momentum", type=float, default=0.0, help="client SGD momentum")
    p.add_argument("--weight-decay", type=float, default=0.0, help="client weight decay")
    p.add_argument("--drop-last", action="store_true", help="drop each epoch's short last batch")
    p.add_argument(
        "--server-opt",
        default="fedavg",
        choices=SERVER_OPTIMIZERS,
        help="fedavg (w = weighted mean), fedavgm, adam, yogi, adagrad",
    )
    p.add_argument("--server-lr", type=float, default=1.0, help="server learning rate")
    p.add_argument("--server-momentum", type=float, default=0.9, help="fedavgm momentum")
    p.add_argument("--uniform", action="store_true", help="uniform instead of n_k weights")
    p.add_argument("--model", default="cnn", help="model name (jaxpfl.models), e.g. cnn, mlp_2nn")
    add_data_args(p, num_clients=20, alpha=0.1, train_frac=0.75, holdout_frac=0.0)
    add_run_args(p, eval_every=1)
    return p


@main_guard
def main(argv=None) -> None:
    args = build_parser().parse_args(argv)
    ds = load_dataset(args)
    model = get_model(args.model, ds.input_shape, ds.num_classes)
    cfg = FedAvgConfig(
        local_epochs=args.local_epochs,
        batch_size=args.batch_size,
        client_lr=args.lr,
        client_momentum=args.client_momentum,
        weight_decay=args.weight_decay,
        drop_last=args.drop_last,
        server_opt=args.server_opt,
        server_lr=args.server_lr,
        server_momentum=args.server_momentum,
        weighted=not args.uniform,
    )
    cpr = args.clients_per_round
    cpr = int(cpr) if cpr > 1 else float(cpr)
    phases = [Phase("fedavg", fedavg(model, cfg), args.rounds, cpr)]
    x, y = jnp.asarray(ds.x), jnp.asarray(ds.y)
    test = [ds.test[k] for k in ds.train_clients]

    def evaluate(state, t, final):
        return summarize(evaluate_global(model, state.server.params, x, y, test))

    out = args.out or os.path.join("runs", "fedavg")
    rc = RunConfig(
        seed=args.seed,
        eval_every=args.eval_every,
        out=out,
        checkpoint_every=args.checkpoint_every,
        resume=args.resume,
        progress=not args.no_progress,
        strategy=strategy_from_args(args),
        config_for_hash=config_text(args),
    )

    def init_params(key):
        return model.init(key, jnp.zeros((1,) + ds.input_shape, jnp.uint8))

    result = run(phases, ds, init_params, evaluate, rc, pool=(x, y))
    hist = result["history"]
    plot_curves(
        hist,
        ["acc_pooled", "acc_mean"],
        os.path.join(out, "accuracy.png"),
        title=f"FedAvg ({args.server_opt}) on {ds.name}",
    )
    s = result["summary"]
    print(
        f"\nFedAvg ({args.server_opt}) on {ds.name}: {ds.num_clients} clients, "
        f"{args.rounds} rounds, train {s['train_seconds']:.1f} s"
    )
    print("| metric | final | best | last-10 mean |\n|---|---|---|---|")
    for key in ("acc_pooled", "acc_mean"):
        v = s[key]
        print(
            f"| {key} | {100 * v['final']:.2f} | {100 * v['best']:.2f} "
            f"| {100 * v['last10_mean']:.2f} |"
        )
    print(f"metrics in {out}/", file=sys.stderr)


if __name__ == "__main__":
    main()
