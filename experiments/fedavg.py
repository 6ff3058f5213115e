"""FedAvg / FedOpt (McMahan et al. 2017; Reddi et al. 2021): presets and one call.

    python experiments/fedavg.py                       # embedded MNIST, Dir(0.1), 20 clients
    python experiments/fedavg.py --preset pfllib       # PFLlib's FMNIST Dir(0.1) setting (§2.4)
    python experiments/fedavg.py --server-opt adam --server-lr 0.01   # FedAdam
    python experiments/fedavg.py --list-presets        # settings, commands, published numbers

The global model is evaluated on every training client's test split (pooled = PFLlib's
"Averaged Test Accuracy", mean = unweighted over clients) and, with ``--pool train``, on the
central test set (``central_*``): ``jaxpfl.experiment`` builds it from the algorithm.
"""

from __future__ import annotations

from jaxpfl.algorithms.fedavg import FedAvgConfig, fedavg
from jaxpfl.cli import PFLLIB_FMNIST, CpuScale, Preset, Reference
from jaxpfl.script import ExperimentScript

PFLLIB = dict(PFLLIB_FMNIST)
#: What the reference column is in summary.json (``cli.Reference.reads``).
READS = {"best acc_pooled (%)": ("acc_pooled", "best")}
PFLLIB_METRIC = (
    "best acc_pooled over rounds: the global model on every client's test split, pooled "
    "(PFLlib's 'Averaged Test Accuracy'), best evaluated round"
)

#: The presets (docs/algorithms.md §2.4, §9): overrides of the fields above, the command, the
#: number each compares with, and the cost on a 2-core CPU.
PRESETS: tuple[Preset, ...] = (
    Preset(
        name="default",
        about="embedded MNIST digits, Dirichlet(0.1) over 20 clients, all 20 per round, "
        "FedAvgCNN, 50 rounds: a quick start, no download",
        overrides=dict(
            dataset="mnist_embedded",
            partition="dirichlet",
            alpha=0.1,
            num_clients=20,
            train_frac=0.75,
            participation=1.0,
            rounds=50,
        ),
        command="python experiments/fedavg.py",
        cost="about 8 min: 9.6 s per round measured over 3 rounds on a busy 2-core CPU "
        "(750 client steps of FedAvgCNN per round)",
        smoke=dict(num_clients=40, clients=2, rounds=2),
        cpu=CpuScale({}, "the preset itself fits: 50 rounds ≈ 8 min"),
    ),
    Preset(
        name="pfllib",
        about="PFLlib's baseline: Fashion-MNIST, pfllib_dir Dir(0.1) K=20 (seed 1, 75/25, "
        "bit-exact split §7.3), C=1, FedAvgCNN, SGD 0.005, B 10, E 1, drop_last, 2000 rounds",
        overrides=PFLLIB,
        command="python experiments/fedavg.py --preset pfllib  (--rounds 25: the short check)",
        cost="about 70 s per round measured over 2 rounds on a busy 2-core CPU (5,250 client "
        "steps, 17,507 test examples each round): 25 rounds ≈ 30 min, 2000 rounds ≈ 38 h",
        smoke=dict(num_clients=5, clients=2, rounds=2),
        data="Fashion-MNIST IDX files (apt-get install dataset-fashion-mnist, or --data-dir)",
        cpu=CpuScale(
            dict(rounds=25),
            "≈ 34 s training + 2.6 s evaluation per round on a quiet 2-core CPU: 25 rounds ≈ "
            "16 min, the setting of the 25-round PFLlib reference",
        ),
        references=(
            Reference(
                source="PFLlib benchmark, FedAvg on FMNIST Dir(0.1), 2000 rounds",
                metric=PFLLIB_METRIC,
                columns=("best acc_pooled (%)",),
                reads=READS,
                values={(): (85.85,)},
                setting=dict(clients_per_round=20, partition_file=None),
                whole_preset=True,
            ),
            Reference(
                source="PFLlib's own code on a CPU, same split, 25 rounds (docs/algorithms.md "
                "§2.4; "
                "±3 points across seeds)",
                metric=PFLLIB_METRIC,
                columns=("best acc_pooled (%)",),
                reads=READS,
                values={(): (69.83,)},
                setting=dict(clients_per_round=20, rounds=25, partition_file=None),
                whole_preset=True,
            ),
        ),
    ),
)

CLI = ExperimentScript(
    "FedAvg",
    "FedAvg / FedOpt: a global model trained with an optax server optimizer.",
    [("FedAvg", FedAvgConfig)],
    lambda parsed, model, ds: fedavg(model, parsed[FedAvgConfig]),
    PRESETS,
    prog="fedavg.py",
    defaults=dict(eval_every=1),
    aliases={"client_lr": ("--lr",)},
    removed={
        "--clients-per-round": "use --clients N (a count of clients per round) or "
        "--participation C (a fraction in (0, 1]); the total is --num-clients",
        "--uniform": "use --no-weighted",
    },
)
parse, main = CLI.parse, CLI.main

if __name__ == "__main__":
    main()
