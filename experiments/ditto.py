"""Ditto (Li, Hu, Beirami, Smith, ICML 2021): FedAvg's global model and a personal model per
client pulled toward it; presets and one call.

    python experiments/ditto.py                   # embedded MNIST, Dir(0.1), 20 clients
    python experiments/ditto.py --preset pfllib   # PFLlib's FMNIST Dir(0.1) setting
    python experiments/ditto.py --list-presets    # settings, commands, cost

Evaluation (docs/algorithms.md §11; ``jaxpfl.experiment`` builds it from the algorithm): the
global model w on every training client's test split (``init_*``) and each client's personal
model v_k on its own (``pers_*``); pooled = PFLlib's "Averaged Test Accuracy" (PFLlib's printed
best is the larger of the two).
"""

from __future__ import annotations

from jaxpfl.algorithms.ditto import DittoConfig, ditto
from jaxpfl.algorithms.fedavg import FedAvgConfig
from jaxpfl.cli import PFLLIB_FMNIST, CpuScale, Preset, Reference
from jaxpfl.script import ExperimentScript

#: PFLlib's Ditto: its main.py defaults (lr 0.005, B 10, E 1, C 1, 20 clients) on its
#: Fashion-MNIST Dir(0.1) split (§7.3). Its default -mu 0 makes Ditto
#: local training beside FedAvg, so λ = 1 is taken from the Ditto authors' run scripts.
PFLLIB = dict(PFLLIB_FMNIST, mu=1.0)

PRESETS: tuple[Preset, ...] = (
    Preset(
        name="default",
        about="embedded MNIST digits, Dirichlet(0.1) over 20 clients, all 20 per round, "
        "FedAvgCNN, 50 rounds, λ 1, 1 personal epoch: a quick start, no download",
        overrides=dict(dataset="mnist_embedded", partition="dirichlet", alpha=0.1,
                       num_clients=20, train_frac=0.75, participation=1.0, rounds=50, mu=1.0),
        command="python experiments/ditto.py",
        cost="about twice FedAvg's default (two models train per client): ≈ 15 min on a 2-core CPU",
        smoke=dict(num_clients=40, clients=2, rounds=2),
        cpu=CpuScale({}, "the preset itself fits the 30-minute CPU budget"),
    ),
    Preset(
        name="pfllib",
        about="PFLlib's Ditto: Fashion-MNIST, pfllib_dir Dir(0.1) K=20 (seed 1, 75/25, "
        "bit-exact split §7.3), C=1, FedAvgCNN, SGD 0.005, B 10, E 1, drop_last, λ 1, 1 "
        "personal epoch, "
        "2000 rounds",
        overrides=PFLLIB,
        command="python experiments/ditto.py --preset pfllib --rounds 25  (the short check)",
        cost="about twice FedAvg's pfllib preset per round (two models per client): 25 rounds "
             "≈ 30-60 min on a 2-core CPU",
        smoke=dict(num_clients=5, clients=2, rounds=2),
        data="Fashion-MNIST IDX files (apt-get install dataset-fashion-mnist, or --data-dir)",
        cpu=CpuScale(dict(rounds=25), "the 25 rounds of the PFLlib side-by-side run"),
        references=(
            Reference(
                source="PFLlib's own code on this 2-core CPU, same split, 25 rounds, -mu 1.0 "
                "-pls 1 (measured by the project, docs/algorithms.md §11.6)",
                metric="best pers_acc_pooled over rounds: each client's personal model on its "
                "test split, pooled (PFLlib's evaluate_personalized)",
                columns=("best personal acc_pooled (%)",),
                reads={"best personal acc_pooled (%)": ("pers_acc_pooled", "best")},
                values={(): (95.84,)},
                setting=dict(clients_per_round=20, rounds=25, partition_file=None),
                whole_preset=True,
            ),
        ),
    ),
)

CLI = ExperimentScript(
    "Ditto",
    "Ditto: a global model trained by FedAvg and a personal model per client trained with the "
    "proximal pull λ(v_k − w).",
    [("Ditto", DittoConfig), ("FedAvg", FedAvgConfig)],
    lambda parsed, model, ds: ditto(model, parsed[DittoConfig], parsed[FedAvgConfig]),
    PRESETS,
    prog="ditto.py",
    defaults=dict(eval_every=1),
    aliases={"client_lr": ("--lr",)},
)
parse, main = CLI.parse, CLI.main

if __name__ == "__main__":
    main()
