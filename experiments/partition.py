"""Partition a dataset into federated clients, print a report, optionally save it.

Examples::

    python experiments/partition.py                                   # embedded MNIST, Dir(0.1), 20
    python experiments/partition.py --dataset fashion_mnist --partition pfllib_dir --out runs/parts
    python experiments/partition.py --partition shards --num-clients 100 --pool train --train-frac 1
    python experiments/partition.py --dataset femnist --data-dir DIR --partition natural
    python experiments/partition.py --partition-file runs/parts/x.npz   # report a saved split
    python experiments/partition.py --dataset femnist --data-dir DIR --raw-out runs/femnist_npy

The flags are the fields of ``jaxpfl.cli.DataConfig`` (the arguments of
``jaxpfl.data.federate.federate``) and of :class:`Report`; ``--clients`` (total clients) and
``--seed`` (partition seed) are kept as aliases of ``--num-clients`` and ``--partition-seed``.
With ``--out DIR`` it writes ``DIR/<tag>.npz`` (the index file: ``--partition-file`` of every
experiment replays it exactly; ``jaxpfl.data.store.load_partition`` loads it),
``DIR/<tag>.stats.json`` and ``DIR/<tag>.png``. Bad input prints one line ``error: ...`` on
stderr and exits with status 2.
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys

_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if _ROOT not in sys.path:
    sys.path.insert(0, _ROOT)

from jaxpfl.cli import DataConfig, ExperimentCli, load_dataset, main_guard, prepare_dir  # noqa: E402
from jaxpfl.errors import ConfigError  # noqa: E402


@dataclasses.dataclass(frozen=True)
class Report:
    """What is printed and written.

    Attributes:
      out: folder to write <tag>.npz, <tag>.stats.json and <tag>.png (none: print only)
      max_rows: client rows shown in the table
      plot: with --out, also draw the PNG figure
      raw_out: also write the dataset's examples, before partitioning, as .npy files in
        this folder (read back with --dataset npy --data-dir FOLDER: the images stay on
        disk and each process reads only the rows it uses)
    """

    out: str | None = None
    max_rows: int = 40
    plot: bool = True
    raw_out: str | None = None

    def __post_init__(self):
        if isinstance(self.max_rows, bool) or not isinstance(self.max_rows, int):
            raise ConfigError(f"--max-rows must be an integer, got {self.max_rows!r}")
        if self.max_rows < 0:
            raise ConfigError(f"--max-rows must be >= 0, got {self.max_rows}")


CLI = ExperimentCli(
    __doc__.split("\n\n")[0],
    [("data", DataConfig), ("report", Report)],
    aliases={"num_clients": ("--clients",), "partition_seed": ("--seed",)},
    prog="partition.py",
)


@main_guard
def main(argv: list[str] | None = None) -> int:
    parsed = CLI.parse(argv)
    data: DataConfig = parsed[DataConfig]
    rep: Report = parsed[Report]
    from jaxpfl.data.stats import format_stats_table, partition_stats, plot_partition
    from jaxpfl.data.store import save_partition

    if rep.out:
        prepare_dir(rep.out)
    if rep.raw_out:
        prepare_dir(rep.raw_out, "--raw-out")
    from jaxpfl.data.sources import load_raw

    raw = load_raw(data.dataset, data.data_dir)
    if rep.raw_out:
        from jaxpfl.data.sources import save_npy

        print(f"wrote {save_npy(raw, rep.raw_out)} (--dataset npy --data-dir reads it)")
    ds = load_dataset(data, raw)
    stats = partition_stats(ds)
    print(format_stats_table(stats, max_rows=rep.max_rows))
    if rep.out:
        part = ds.meta.get("partition", data.partition)
        tag = f"{data.dataset}_{part}_{ds.num_clients}c_seed{ds.meta.get('seed')}"
        tag = tag.replace("/", "-").replace(":", "-")
        npz = save_partition(os.path.join(rep.out, tag + ".npz"), ds)
        with open(os.path.join(rep.out, tag + ".stats.json"), "w") as f:
            json.dump(stats, f)
        print(f"wrote {npz}")
        print(f"wrote {os.path.join(rep.out, tag + '.stats.json')}")
        if rep.plot:
            print(f"wrote {plot_partition(ds, os.path.join(rep.out, tag + '.png'))}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
