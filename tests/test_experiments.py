"""End-to-end runs of the experiment scripts: EVERY FedAvg and Personalized FedAvg preset at
smoke scale (``--smoke``) on fixture data, the README's main command, and replaying a saved
split (``--partition-file``). The other algorithms' presets: tests/test_experiments_personal.py;
the pool layouts: tests/test_pool_layouts.py."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
from scripts import REPO, assert_matches_recorded, load_script, smoke_run

from jaxpfl.data.store import read_partition

PRESETS = [
    (script, p.name) for script in ("fedavg", "perfedavg") for p in load_script(script).PRESETS
]


@pytest.mark.parametrize("script,preset", PRESETS)
def test_every_preset_runs_at_smoke_scale(tmp_path, capsys, script, preset):
    mod, out, stdout, records = smoke_run(script, preset, tmp_path, capsys)
    assert assert_matches_recorded(script, preset, records)
    assert records[0]["round"] == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["rounds"] == records[-1]["round"] > 0
    assert (out / "accuracy.png").stat().st_size > 1000
    assert read_partition(out / "partition.npz")["hash"]
    refs = mod.CLI.presets[preset].references
    if refs:  # a smoke run is never the published setting: one line says what differs
        assert stdout.count("not comparable: ") == len(refs) and "published (" not in stdout
        for ref in refs:
            assert f"not comparable: {ref.source} was measured with" in stdout
    else:
        assert f"published: none for preset {preset}" in stdout
    if script == "perfedavg":
        assert "| clients/round | E |" in stdout and "personalized acc" in stdout
        final = json.loads((out / "final.json").read_text())
        assert 0.0 <= final["init_acc_mean"] <= 1.0 and 0.0 <= final["pers_acc_mean"] <= 1.0
        n_eval = {"default": 10, "fmnist_writers": 8, "jiang_emnist": 4,
                  "kt_pfa_femnist": 2}[preset]
        assert final["init_n_clients"] == n_eval  # LEAF -t user: the test-file writers
    else:
        assert "| acc_pooled |" in stdout and 0.0 <= summary["acc_pooled"]["final"] <= 1.0
    if (script, preset) == ("perfedavg", "default"):
        assert [r["round"] for r in records] == [0, 2, 3]  # every 2 rounds and the last
        assert [r["phase"] for r in records] == ["fedavg", "fedavg", "reptile"]
        assert len(final["pers_acc_mean_by_epoch"]) == 1
    if (script, preset) == ("perfedavg", "jiang_emnist"):
        assert "--reptile-rounds 0 (this run: 1)" in stdout


def test_readme_main_command(tmp_path):
    """``python experiments/perfedavg.py --clients 20``, shrunk (--smoke and one round; the
    explicit --clients 20 wins over the smoke value): 20 clients per round."""
    proc = subprocess.run(
        [sys.executable, str(REPO / "experiments" / "perfedavg.py"), "--clients", "20",
         "--smoke", "--rounds", "1", "--reptile-rounds", "0", "--no-progress",
         "--out", str(tmp_path)],
        capture_output=True, text=True, timeout=600, cwd=REPO,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "| 20 | 1 | 1+0 |" in proc.stdout  # clients/round, E, rounds
    assert "not comparable: jaxpfl's own earlier run" in proc.stdout


def test_readme_fedavg_command_parses():
    fedavg = load_script("fedavg")
    p = fedavg.parse(
        "--dataset fashion_mnist --partition pfllib_dir --alpha 0.1 --lr 0.005 --rounds 25".split()
    )
    assert p.values["client_lr"] == 0.005 and p.values["rounds"] == 25
    assert p.values["partition"] == "pfllib_dir" and p.values["participation"] == 1.0


def test_partition_file_replays_the_split_exactly(tmp_path):
    parts = tmp_path / "parts"
    load_script("partition").main(["--num-clients", "30", "--alpha", "0.3", "--holdout-frac",
                                   "0.2", "--train-frac", "0.8", "--out", str(parts),
                                   "--no-plot"])
    (npz,) = parts.glob("*.npz")
    saved = read_partition(npz)
    assert len(saved["eval_clients"]) == 6
    shrink = {"fedavg": ["--rounds", "1"], "perfedavg": ["--rounds", "1", "--reptile-rounds", "0"]}
    for script in ("fedavg", "perfedavg"):
        out = tmp_path / script
        argv = ["--smoke", "--partition-file", str(npz), "--no-progress", "--out", str(out)]
        load_script(script).main([*argv, *shrink[script]])
        used = read_partition(out / "partition.npz")
        assert used["hash"] == saved["hash"]
        for key in ("train", "test"):
            assert len(used[key]) == 30
            for a, b in zip(used[key], saved[key]):
                np.testing.assert_array_equal(a, b)
        for key in ("train_clients", "eval_clients"):
            np.testing.assert_array_equal(used[key], saved[key])
    # without the file the run would have partitioned differently (the file was used)
    from jaxpfl.cli import DataConfig, load_dataset

    own = load_dataset(load_script("perfedavg").parse(["--smoke"])[DataConfig])
    assert own.meta["hash"] != saved["hash"]
