"""FedRep (Collins, Hassani, Mokhtari, Shakkottai, ICML 2021): a shared body averaged by the
server, a personal head per client; presets and one call.

    python experiments/fedrep.py                   # embedded MNIST, Dir(0.1), 20 clients
    python experiments/fedrep.py --preset pfllib   # PFLlib's FMNIST Dir(0.1) setting
    python experiments/fedrep.py --list-presets    # settings, commands, cost

Evaluation (docs/algorithms.md §12; ``jaxpfl.experiment`` builds it from the algorithm): each
client's model (the global body with its own head) on its test split (``pers_*``; pooled =
PFLlib's "Averaged Test Accuracy"). There is no global model to evaluate (its head never
trains), as in PFLlib.
"""

from __future__ import annotations

from jaxpfl.algorithms.fedavg import FedAvgConfig
from jaxpfl.algorithms.fedrep import FedRepConfig, fedrep
from jaxpfl.cli import PFLLIB_FMNIST, CpuScale, Preset
from jaxpfl.script import ExperimentScript

#: PFLlib's FedRep: its main.py defaults (lr 0.005, B 10, E 1, C 1, 20 clients) on its
#: Fashion-MNIST Dir(0.1) split (§7.3): 1 head epoch (-pls) before the body's epoch.
PFLLIB = dict(PFLLIB_FMNIST)

PRESETS: tuple[Preset, ...] = (
    Preset(
        name="default",
        about="embedded MNIST digits, Dirichlet(0.1) over 20 clients, all 20 per round, "
        "FedAvgCNN, 50 rounds, 1 head epoch then 1 body epoch: a quick start, no download",
        overrides=dict(dataset="mnist_embedded", partition="dirichlet", alpha=0.1,
                       num_clients=20, train_frac=0.75, participation=1.0, rounds=50),
        command="python experiments/fedrep.py",
        cost="about FedAvg's default: ≈ 8-10 min on a 2-core CPU",
        smoke=dict(num_clients=40, clients=2, rounds=2),
        cpu=CpuScale({}, "the preset itself fits the 30-minute CPU budget"),
    ),
    Preset(
        name="pfllib",
        about="PFLlib's FedRep: Fashion-MNIST, pfllib_dir Dir(0.1) K=20 (seed 1, 75/25, "
        "bit-exact split §7.3), C=1, FedAvgCNN, SGD 0.005, B 10, E 1, drop_last, 1 head epoch "
        "then 1 body epoch, "
        "2000 rounds",
        overrides=PFLLIB,
        command="python experiments/fedrep.py --preset pfllib --rounds 25  (the short check)",
        cost="about FedAvg's pfllib preset plus the head epoch per round: 25 rounds ≈ 20-40 "
             "min on a 2-core CPU",
        smoke=dict(num_clients=5, clients=2, rounds=2),
        data="Fashion-MNIST IDX files (apt-get install dataset-fashion-mnist, or --data-dir)",
        cpu=CpuScale(dict(rounds=25), "the 25 rounds of the PFLlib side-by-side run"),
    ),
)

CLI = ExperimentScript(
    "FedRep",
    "FedRep: the body is shared and averaged, each client keeps its own head; each round the "
    "head trains with the body frozen, then the body with the head frozen.",
    [("FedRep", FedRepConfig), ("FedAvg", FedAvgConfig)],
    lambda parsed, model, ds: fedrep(model, parsed[FedRepConfig], parsed[FedAvgConfig]),
    PRESETS,
    prog="fedrep.py",
    defaults=dict(eval_every=1),
    aliases={"client_lr": ("--lr",)},
)
parse, main = CLI.parse, CLI.main

if __name__ == "__main__":
    main()
