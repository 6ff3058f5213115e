"""Personalized FedAvg (Jiang et al. 2019): FedAvg(E), then Reptile(K); initial vs personalized.

    python experiments/perfedavg.py --clients 20

runs on the embedded default (10,000 real MNIST digits shipped with jaxpfl, Dirichlet(0.1)
label skew over 50 clients, 10 held out) in a few minutes on a 2-core CPU. Presets reproduce
the reference settings of ALGORITHMS.md §9 where the data is available:

    python experiments/perfedavg.py --preset jiang_emnist --data-dir ~/.keras/datasets --clients 20
    python experiments/perfedavg.py --preset kt_pfa_femnist --data-dir leaf/data/femnist/data

Outputs (``--out``, default ``runs/perfedavg``): metrics.jsonl (one JSON object per evaluation),
summary.json, accuracy.png (initial vs personalized accuracy over rounds), checkpoints.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

from jaxpfl.algorithms.personalized_fedavg import (
    PersonalizedFedAvgConfig,
    personalize,
    personalized_fedavg,
)
from jaxpfl.cli import (
    add_data_args,
    add_run_args,
    config_text,
    load_dataset,
    main_guard,
    strategy_from_args,
)
from jaxpfl.core import Counts, derive, summarize
from jaxpfl.core import keys as K
from jaxpfl.data.federate import support_query
from jaxpfl.models import get_model
from jaxpfl.run import ClientEvaluator, Phase, RunConfig, plot_curves, run

# Flag defaults per preset (ALGORITHMS.md §3.3 / §9). "default" is the embedded quick start.
PRESETS: dict[str, dict] = {
    "default": dict(
        dataset="mnist_embedded",
        partition="dirichlet",
        alpha=0.1,
        num_clients=50,
        holdout_frac=0.2,
        train_frac=0.8,
        model="cnn",
        rounds=30,
        local_epochs=2,
        reptile_rounds=20,
        eval_every=5,
    ),
    "jiang_emnist": dict(
        dataset="emnist_tff",
        partition="natural",
        num_clients=0,
        n_eval=900,
        holdout_seed=42,
        model="emnist_cnn",
        rounds=500,
        local_epochs=10,
        reptile_rounds=100,
        eval_every=10,
    ),
    "kt_pfa_femnist": dict(
        dataset="femnist",
        partition="natural",
        num_clients=0,
        holdout_frac=0.0,
        model="emnist_cnn",
        rounds=500,
        local_epochs=10,
        reptile_rounds=100,
        variant="kt_pfa",
        eval_every=10,
    ),
}

# Published (initial, personalized) accuracy by (clients per round, E), ALGORITHMS.md §3.4.
PUBLISHED = {
    "jiang_emnist": (
        "Jiang et al. 2019 Table 1, EMNIST-62, FedAvg(E)+personalization, acc_mean",
        {
            (5, 2): (74.73, 82.92),
            (5, 5): (80.28, 87.12),
            (5, 10): (78.79, 88.20),
            (5, 20): (74.30, 87.82),
            (20, 2): (84.03, 89.57),
            (20, 5): (84.71, 90.57),
            (20, 10): (84.80, 90.32),
            (20, 20): (83.91, 89.53),
        },
    ),
    "kt_pfa_femnist": (
        "KT-PFA README, LEAF FEMNIST, 500+100 rounds, acc_mean over eval clients",
        {
            (5, 20): (79.35, 84.86),
            (5, 10): (80.53, 87.22),
            (5, 5): (83.19, 88.97),
            (5, 2): (81.70, 88.49),
            (20, 20): (82.40, 90.29),
            (20, 10): (83.23, 90.72),
            (20, 5): (81.48, 90.77),
            (20, 2): (82.48, 90.48),
        },
    ),
}


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        description="Personalized FedAvg (Jiang et al. 2019): FedAvg(E) then Reptile(K), "
        "reporting initial vs personalized accuracy on held-out clients."
    )
    p.add_argument(
        "--preset",
        default="default",
        choices=sorted(PRESETS),
        help="reference setting whose defaults the other flags override",
    )
    p.add_argument("--clients", type=int, default=20, help="clients per round M")
    p.add_argument("--rounds", type=int, help="stage-1 FedAvg(E) rounds R1")
    p.add_argument("--local-epochs", type=int, help="stage-1 local epochs E")
    p.add_argument("--batch-size", type=int, default=20, help="client batch size B")
    p.add_argument("--client-lr", type=float, default=0.02, help="client SGD learning rate")
    p.add_argument("--server-lr", type=float, default=1.0, help="stage-1 server SGD lr")
    p.add_argument("--server-momentum", type=float, default=0.9, help="stage-1 server momentum")
    p.add_argument("--reptile-rounds", type=int, help="stage-2 Reptile(K) rounds R2 (0: off)")
    p.add_argument("--reptile-steps", type=int, default=10, help="Reptile local steps K")
    p.add_argument("--reptile-server-lr", type=float, default=1e-3, help="stage-2 server Adam lr")
    p.add_argument(
        "--pers-epochs",
        type=int,
        default=5,
        help="personalization epochs P of client SGD on each evaluation client's support",
    )
    p.add_argument(
        "--n-eval-clients",
        type=int,
        default=50,
        help="evaluation clients sampled at intermediate evaluations (final: all)",
    )
    p.add_argument(
        "--variant",
        default="paper",
        choices=("paper", "kt_pfa"),
        help="paper (ALGORITHMS.md §3.1) or kt_pfa (reference-repo compat, §3.5)",
    )
    p.add_argument(
        "--model", help="model name (jaxpfl.models): cnn, emnist_cnn, emnist_cnn_tff, ..."
    )
    p.add_argument(
        "--seeds",
        type=int,
        nargs="+",
        default=None,
        help="run several seeds and report mean ± std (overrides --seed)",
    )
    add_data_args(p)
    add_run_args(p)
    return p


def parse_args(argv=None) -> argparse.Namespace:
    p = build_parser()
    pre, _ = p.parse_known_args(argv)
    p.set_defaults(**PRESETS[pre.preset])
    return p.parse_args(argv)


def make_config(args) -> PersonalizedFedAvgConfig:
    return PersonalizedFedAvgConfig(
        rounds=args.rounds,
        local_epochs=args.local_epochs,
        batch_size=args.batch_size,
        client_lr=args.client_lr,
        server_lr=args.server_lr,
        server_momentum=args.server_momentum,
        reptile_rounds=args.reptile_rounds,
        reptile_steps=args.reptile_steps,
        reptile_server_lr=args.reptile_server_lr,
        personalization_epochs=args.pers_epochs,
        variant=args.variant,
        shuffle=args.variant != "kt_pfa",
    )


def rounds_to_target(history, key: str, target: float = 0.8):
    for rec in history:
        if key in rec and rec[key] >= target:
            return rec["round"]
    return None


def run_one(args, ds, seed: int, out: str) -> dict:
    """One full run (stages 1-3) with ``seed``; returns the final record and wall time."""
    model = get_model(args.model, ds.input_shape, ds.num_classes)
    cfg = make_config(args)
    strategy = strategy_from_args(args)
    phases = [
        Phase(name, alg, rounds, args.clients)
        for name, alg, rounds in personalized_fedavg(model, cfg)
    ]
    eval_clients = np.asarray(ds.eval_clients)
    if len(eval_clients) == 0:
        raise ValueError("no held-out evaluation clients: set --holdout-frac > 0 or --n-eval")
    support, query = support_query(ds, eval_clients, frac=args.train_frac, seed=seed)
    x, y = jnp.asarray(ds.x), jnp.asarray(ds.y)
    evaluator = ClientEvaluator(personalize(model, cfg), x, y, support, query, strategy)
    root = jax.random.key(seed)
    n_sample = min(args.n_eval_clients, len(eval_clients))

    def evaluate(state, t, final):
        rows = np.arange(len(eval_clients))
        if not final and n_sample < len(rows):
            pick = jax.random.choice(derive(root, K.EVAL, t), len(rows), (n_sample,), replace=False)
            rows = np.sort(np.asarray(pick))
        keys = jnp.stack([derive(root, K.EVAL, t, int(eval_clients[r])) for r in rows])
        init, pers = evaluator(state.server.params, rows, keys)
        out = {
            **summarize(Counts(*init), "init_"),
            **summarize(Counts(*(a[:, -1] for a in pers)), "pers_"),
        }
        out["pers_acc_mean_by_epoch"] = [
            float(np.mean(pers.correct[:, e] / np.maximum(pers.count[:, e], 1)))
            for e in range(pers.correct.shape[1])
        ]
        out["final"] = bool(final)
        return out

    rc = RunConfig(
        seed=seed,
        eval_every=args.eval_every,
        out=out,
        checkpoint_every=args.checkpoint_every,
        resume=args.resume,
        progress=not args.no_progress,
        strategy=strategy,
        config_for_hash=config_text(args, ignore=("seeds",)) + f"seed={seed}",
    )

    def init_params(key):
        return model.init(key, jnp.zeros((1,) + ds.input_shape, jnp.uint8))

    tic = time.perf_counter()
    result = run(phases, ds, init_params, evaluate, rc, pool=(x, y))
    wall = time.perf_counter() - tic
    hist = result["history"]
    plot_curves(
        hist,
        ["init_acc_mean", "pers_acc_mean"],
        os.path.join(out, "accuracy.png"),
        title=f"Personalized FedAvg: {ds.name}, M={args.clients}, E={args.local_epochs}",
    )
    final = hist[-1]
    final.update(
        wall_seconds=wall,
        train_seconds=result["summary"]["train_seconds"],
        init_rounds_to_0_8=rounds_to_target(hist, "init_acc_mean"),
        pers_rounds_to_0_8=rounds_to_target(hist, "pers_acc_mean"),
    )
    with open(os.path.join(out, "final.json"), "w") as f:
        json.dump(final, f, indent=2)
    return final


def print_table(args, ds, finals: list[dict], seeds: list[int]) -> None:
    def ms(key, scale=100.0):
        v = np.array([f[key] for f in finals], np.float64) * scale
        return f"{v.mean():.2f}" + (f" ± {v.std():.2f}" if len(v) > 1 else "")

    f0 = finals[0]
    print(
        f"\nPersonalized FedAvg on {ds.name}: {ds.num_clients} clients "
        f"({len(ds.train_clients)} train / {len(ds.eval_clients)} held out), "
        f"seeds {seeds}, wall {np.mean([f['wall_seconds'] for f in finals]):.0f} s per run"
    )
    print(
        "| clients/round | E | rounds (FedAvg+Reptile) | initial loss | initial acc (%) "
        "| personalized loss | personalized acc (%) | eval clients | query examples |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    print(
        f"| {args.clients} | {args.local_epochs} | {args.rounds}+{args.reptile_rounds} "
        f"| {ms('init_loss_mean', 1.0)} | {ms('init_acc_mean')} | {ms('pers_loss_mean', 1.0)} "
        f"| {ms('pers_acc_mean')} | {f0['init_n_clients']} | {f0['init_n_examples']} |"
    )
    print(
        f"(acc = mean over evaluation clients; pooled: initial {ms('init_acc_pooled')}, "
        f"personalized {ms('pers_acc_pooled')}; personalized acc after each of the "
        f"{args.pers_epochs} epochs: {[round(100 * a, 2) for a in f0['pers_acc_mean_by_epoch']]})"
    )
    if args.preset in PUBLISHED:
        what, table = PUBLISHED[args.preset]
        ref = table.get((args.clients, args.local_epochs))
        if ref:
            print(f"published ({what}): initial {ref[0]:.2f}, personalized {ref[1]:.2f}")
        else:
            print(
                f"published ({what}): no entry for clients/round={args.clients}, "
                f"E={args.local_epochs}; available {sorted(table)}"
            )


@main_guard
def main(argv=None) -> None:
    args = parse_args(argv)
    if args.clients < 1:
        raise ValueError("--clients must be >= 1")
    ds = load_dataset(args)
    seeds = args.seeds or [args.seed]
    out = args.out or os.path.join("runs", "perfedavg")
    finals = []
    for seed in seeds:
        sub = out if len(seeds) == 1 else os.path.join(out, f"seed{seed}")
        finals.append(run_one(args, ds, seed, sub))
    print_table(args, ds, finals, seeds)
    if len(seeds) > 1:
        with open(os.path.join(out, "seeds.json"), "w") as f:
            json.dump({"seeds": seeds, "finals": finals}, f, indent=2)
    print(f"metrics, summary and plot in {out}/", file=sys.stderr)


if __name__ == "__main__":
    main()
