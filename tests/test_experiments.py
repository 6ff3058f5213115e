"""End-to-end smoke runs of the experiment scripts on the embedded data (shrunk configs)."""

import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def _run(script, *args):
    proc = subprocess.run(
        [sys.executable, str(REPO / "experiments" / script), *args, "--no-progress"],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=REPO,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def test_perfedavg_smoke(tmp_path):
    proc = _run(
        "perfedavg.py",
        "--clients",
        "5",
        "--num-clients",
        "30",
        "--rounds",
        "2",
        "--reptile-rounds",
        "1",
        "--local-epochs",
        "1",
        "--pers-epochs",
        "2",
        "--eval-every",
        "1",
        "--out",
        str(tmp_path),
    )
    assert "| clients/round | E |" in proc.stdout and "personalized acc" in proc.stdout
    lines = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["round"] for r in lines] == [0, 1, 2, 3]
    assert [r["phase"] for r in lines] == ["fedavg", "fedavg", "fedavg", "reptile"]
    final = json.loads((tmp_path / "final.json").read_text())
    assert final["init_n_clients"] == 6 and len(final["pers_acc_mean_by_epoch"]) == 2
    assert 0.0 <= final["init_acc_mean"] <= 1.0 and 0.0 <= final["pers_acc_mean"] <= 1.0
    assert (tmp_path / "accuracy.png").stat().st_size > 1000


def test_fedavg_smoke(tmp_path):
    proc = _run(
        "fedavg.py",
        "--clients",
        "8",
        "--rounds",
        "2",
        "--clients-per-round",
        "0.5",
        "--out",
        str(tmp_path),
        "--server-opt",
        "fedavgm",
        "--server-lr",
        "0.5",
    )
    assert "| acc_pooled |" in proc.stdout
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["rounds"] == 2 and 0.0 <= summary["acc_pooled"]["final"] <= 1.0


def _fixtures():
    import importlib.util

    spec = importlib.util.spec_from_file_location(
        "make_fixtures", REPO / "data_prep" / "make_fixtures.py"
    )
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_jiang_emnist_preset_on_tff_fixture(tmp_path):
    _fixtures().write_tff_emnist(tmp_path / "tff", num_writers=12)
    proc = _run(
        "perfedavg.py",
        "--preset",
        "jiang_emnist",
        "--data-dir",
        str(tmp_path / "tff"),
        "--n-eval",
        "4",
        "--clients",
        "5",
        "--local-epochs",
        "2",
        "--rounds",
        "2",
        "--reptile-rounds",
        "1",
        "--pers-epochs",
        "1",
        "--out",
        str(tmp_path / "o"),
    )
    assert "published (Jiang et al. 2019 Table 1" in proc.stdout
    assert "initial 74.73, personalized 82.92" in proc.stdout  # M=5, E=2 row
    final = json.loads((tmp_path / "o" / "final.json").read_text())
    assert final["init_n_clients"] == 4


def test_kt_pfa_preset_on_leaf_fixture(tmp_path):
    _fixtures().write_leaf_femnist(tmp_path / "leaf", layout="user", num_writers=10)
    proc = _run(
        "perfedavg.py",
        "--preset",
        "kt_pfa_femnist",
        "--data-dir",
        str(tmp_path / "leaf" / "data"),
        "--clients",
        "5",
        "--local-epochs",
        "2",
        "--rounds",
        "1",
        "--reptile-rounds",
        "1",
        "--pers-epochs",
        "1",
        "--out",
        str(tmp_path / "o"),
    )
    assert (
        "published (KT-PFA README" in proc.stdout
        and "initial 81.70, personalized 88.49" in proc.stdout
    )
    final = json.loads((tmp_path / "o" / "final.json").read_text())
    assert final["init_n_clients"] == 2  # LEAF -t user: the test-file writers are held out
