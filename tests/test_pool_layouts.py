"""Every experiment script with the per-device pool (``--strategy sharded --pool-layout
per-device``) against the replicated pool, on 3 of the 8 fake devices (helpers:
tests/scripts.py)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from scripts import fixture_args, load_script

from jaxpfl.data.dataset import MappedRows


def _never_whole(self, *args, **kwargs):
    raise AssertionError("the whole on-disk pool was read")


#: One round, one size group, a mesh of 3 devices (compilation dominates, and the per-device
#: layout compiles its device-affine programs once per device: 8 devices cost 1.5x; 3 still
#: leave clients spread unevenly, and devices without a sampled client). Every script runs through
#: jaxpfl.experiment, so these cover its evaluation kinds rather than every script: the global
#: model (fedavg), a fine-tune evaluator (perfedavg; Per-FedAvg's is the same path), personal
#: models with an all-client stage (fedala) and a mix step with two personal models (fedora).
POOL_SCRIPTS = [  # the embedded-MNIST presets on IDX fixture data (on disk, and small)
    ("fedavg", "default", ["--rounds", "1", "--dataset", "mnist"]),
    ("perfedavg", "default", ["--rounds", "1", "--reptile-rounds", "0", "--dataset", "mnist",
                              "--num-clients", "20"]),
    ("fedala", "pfllib", ["--rounds", "1"]),
    ("fedora", "rotated_fmnist", ["--rounds", "1"]),
]


@pytest.mark.parametrize("script,preset,shrink", POOL_SCRIPTS, ids=[s for s, *_ in POOL_SCRIPTS])
def test_per_device_pool_equals_the_replicated_pool(tmp_path, capsys, monkeypatch, script,
                                                    preset, shrink):
    """Every script with ``--strategy sharded --pool-layout per-device`` (each of the 3
    devices holds only its own clients' examples; its training, stage and evaluations run
    device-affine) logs the same metrics as with the replicated pool. IDX data are
    uncompressed, so the pool stays on disk (``MappedRows``), and the per-device run never reads
    it whole."""
    mod = load_script(script)
    dataset = shrink[shrink.index("--dataset") + 1] if "--dataset" in shrink else \
        mod.CLI.preset_values(preset)["dataset"]
    data = fixture_args(dataset, tmp_path, packed=False)
    runs, reads = [], []
    read = MappedRows.__getitem__
    for layout in ("replicated", "per-device"):
        out = tmp_path / layout
        with monkeypatch.context() as m:
            if layout == "per-device":
                m.setattr(MappedRows, "__array__", _never_whole)
                m.setattr(MappedRows, "__getitem__",
                          lambda self, k: reads.append(k) or read(self, k))
            mod.main(["--preset", preset, "--smoke", "--no-progress", "--out", str(out),
                      "--strategy", "sharded", "--pool-layout", layout, "--buckets", "1",
                      "--devices", "3", *shrink, *data])
        capsys.readouterr()
        runs.append([json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()])
    # the IDX presets' pools stay on disk, read row-wise by the per-device loader only
    # (FEDORA's rotated pool is new images, built in memory)
    on_disk = dataset in ("fashion_mnist", "mnist") and script != "fedora"
    assert bool(reads) == on_disk, (dataset, len(reads))
    rep, per = runs
    assert [r["round"] for r in rep] == [r["round"] for r in per]
    keys = [k for k in rep[-1] if "acc" in k and isinstance(rep[-1][k], float)]
    assert keys
    for a, b in zip(rep, per):
        np.testing.assert_allclose([a[k] for k in keys if k in a],
                                   [b[k] for k in keys if k in a], atol=1e-6)
