"""Smoke test of experiments/bench_engine.py with tiny settings (synthetic data, two rows)."""

import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_bench_engine_quick(tmp_path):
    out = tmp_path / "bench.json"
    cmd = [
        sys.executable,
        str(REPO / "experiments" / "bench_engine.py"),
        "--quick",
        "--synthetic",
        "--strategies",
        "naive,sequential",
        "--step-blocks",
        "1",
        "--scaling",
        "4",
        "--eval-repeats",
        "1",
        "--out",
        str(out),
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=REPO)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "| sequential(b=1) |" in proc.stdout
    got = json.loads(out.read_text())
    rows = {r["label"]: r for r in got["main"]}
    assert set(rows) == {"naive", "sequential(b=1)"}
    for r in rows.values():
        assert len(r["rounds"]) == 2 and r["examples_per_s"] > 0 and r["agrees"]
    assert rows["sequential(b=1)"]["vs_naive"] > 0
    assert got["evaluation"]["examples"] == got["settings"]["pool_size"]
    assert [r["clients"] for r in got["scaling"]["rows"]] == [4]
    assert {t["target"] for t in got["targets"]} >= {"cpu_eval_seconds"}
    assert got["environment"]["backend"] == "cpu"
