"""End-to-end runs of the experiment scripts: EVERY preset at smoke scale (``--smoke``) on
fixture data, the README's main command, and replaying a saved split (``--partition-file``)."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from jaxpfl.data.dataset import MappedRows
from jaxpfl.data.store import read_partition

REPO = Path(__file__).resolve().parents[1]


def load_script(name: str):
    """``experiments/<name>.py`` as a module (registered, so its dataclasses resolve)."""
    modname = f"_experiment_{name}"
    if modname not in sys.modules:
        spec = importlib.util.spec_from_file_location(modname, REPO / "experiments" / f"{name}.py")
        mod = importlib.util.module_from_spec(spec)
        sys.modules[modname] = mod
        spec.loader.exec_module(mod)
    return sys.modules[modname]


def _fixtures():
    spec = importlib.util.spec_from_file_location(
        "make_fixtures", REPO / "data_prep" / "make_fixtures.py"
    )
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def fixture_args(dataset: str, tmp: Path, packed: bool = True) -> list[str]:
    """Fake data in the exact on-disk layout of ``dataset``; the ``--data-dir`` flag for it.
    ``packed=False``: IDX files uncompressed (the loader memory-maps their images)."""
    fx = _fixtures()
    if dataset == "mnist_embedded":
        return []
    if dataset == "emnist_tff":
        fx.write_tff_emnist(tmp / "tff", num_writers=12)
        return ["--data-dir", str(tmp / "tff")]
    if dataset == "femnist":
        fx.write_leaf_femnist(tmp / "leaf", layout="user", num_writers=10)
        return ["--data-dir", str(tmp / "leaf" / "data")]
    if dataset in ("fashion_mnist", "mnist"):
        rng = np.random.default_rng(0)
        folder = tmp / "idx"
        folder.mkdir()
        gz = ".gz" if packed else ""
        for stem, n in (("train", 1600), ("t10k", 400)):
            fx.write_idx(folder / f"{stem}-labels-idx1-ubyte{gz}", rng.integers(0, 10, n))
            fx.write_idx(folder / f"{stem}-images-idx3-ubyte{gz}",
                         rng.integers(0, 256, (n, 28, 28)))
        return ["--data-dir", str(folder)]
    raise AssertionError(f"no fixture for dataset {dataset!r}: add one for the new preset")


def smoke_run(script: str, preset: str, tmp_path, capsys):
    """``script --preset preset --smoke`` on fixture data: (module, out dir, stdout, records)."""
    mod = load_script(script)
    dataset = mod.CLI.preset_values(preset)["dataset"]
    out = tmp_path / "o"
    argv = ["--preset", preset, "--smoke", "--no-progress", "--out", str(out)]
    mod.main([*argv, *fixture_args(dataset, tmp_path)])
    stdout = capsys.readouterr().out
    records = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    return mod, out, stdout, records


PRESETS = [
    (script, p.name) for script in ("fedavg", "perfedavg") for p in load_script(script).PRESETS
]


@pytest.mark.parametrize("script,preset", PRESETS)
def test_every_preset_runs_at_smoke_scale(tmp_path, capsys, script, preset):
    mod, out, stdout, records = smoke_run(script, preset, tmp_path, capsys)
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
    assert "not comparable: jaxpfl README" in proc.stdout


def test_readme_fedavg_command_parses():
    fedavg = load_script("fedavg")
    p = fedavg.parse(
        "--dataset fashion_mnist --partition pfllib_dir --alpha 0.1 --lr 0.005 --rounds 25".split()
    )
    assert p.values["client_lr"] == 0.005 and p.values["rounds"] == 25
    assert p.values["partition"] == "pfllib_dir" and p.values["participation"] == 1.0


def test_partition_file_replays_the_split_exactly(tmp_path):
    parts = tmp_path / "parts"
    proc = subprocess.run(
        [sys.executable, str(REPO / "experiments" / "partition.py"), "--num-clients", "30",
         "--alpha", "0.3", "--holdout-frac", "0.2", "--train-frac", "0.8", "--out", str(parts),
         "--no-plot"],
        capture_output=True, text=True, timeout=600, cwd=REPO,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
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


PERSONALIZED_PRESETS = [
    (script, p.name)
    for script in ("per_fedavg", "fedala", "fedora")
    for p in load_script(script).PRESETS
]


@pytest.mark.parametrize("script,preset", PERSONALIZED_PRESETS)
def test_every_personalized_preset_runs_at_smoke_scale(tmp_path, capsys, script, preset):
    """Per-FedAvg, FedALA and FEDORA presets at smoke scale on fixture data: a full run of the
    script's own code path, metrics from round 0 to the last, a summary, comparability lines."""
    mod, out, stdout, records = smoke_run(script, preset, tmp_path, capsys)
    assert records[0]["round"] == 0 and records[-1]["round"] > 0
    assert json.loads((out / "summary.json").read_text())["rounds"] == records[-1]["round"]
    assert "published (" not in stdout  # a smoke run is never a published setting


def _never_whole(self, *args, **kwargs):
    raise AssertionError("the whole on-disk pool was read")


POOL_SCRIPTS = [  # one round, one size group (compilation dominates): every script's wiring
    ("fedavg", "default", ["--rounds", "1"]),
    ("perfedavg", "default", ["--rounds", "1", "--reptile-rounds", "0"]),
    ("per_fedavg", "pfllib", ["--rounds", "1"]),
    ("fedala", "pfllib", ["--rounds", "1"]),
    ("fedora", "rotated_fmnist", ["--rounds", "1"]),
]


@pytest.mark.parametrize("script,preset,shrink", POOL_SCRIPTS, ids=[s for s, *_ in POOL_SCRIPTS])
def test_per_device_pool_equals_the_replicated_pool(tmp_path, capsys, monkeypatch, script,
                                                    preset, shrink):
    """Every script with ``--strategy sharded --pool-layout per-device`` (each of the 8 fake
    devices holds only its own clients' examples; its training, stage and evaluations run
    device-affine) logs the same metrics as with the replicated pool. IDX data are
    uncompressed, so the pool stays on disk (``MappedRows``), and the per-device run never reads
    it whole."""
    mod = load_script(script)
    dataset = mod.CLI.preset_values(preset)["dataset"]
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
                      *shrink, *data])
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
