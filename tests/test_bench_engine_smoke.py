"""Smoke test of experiments/bench_engine.py (--quick: synthetic data, 4 clients, 2 rounds).

Checks the JSON, not the printed layout: the naive loop and the engine compute the same round
(same batch order, same parameters after two rounds)."""

import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_bench_engine_quick(tmp_path):
    out = tmp_path / "bench.json"
    cmd = [sys.executable, str(REPO / "experiments" / "bench_engine.py"), "--quick",
           "--strategies", "sequential", "--eval-repeats", "1", "--out", str(out)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=REPO)
    assert proc.returncode == 0, proc.stderr[-2000:]
    got = json.loads(out.read_text())
    rows = {r["label"]: r for r in got["rows"]}
    assert set(rows) == {"sequential(b=64)", "naive"}
    for r in rows.values():
        assert len(r["rounds"]) == 2 and r["examples_per_s"] > 0
    seq, naive = rows["sequential(b=64)"], rows["naive"]
    assert seq["max_param_diff"] is None and naive["max_param_diff"] < 1e-4
    assert abs(seq["losses"][-1] - naive["losses"][-1]) < 1e-4
    assert got["evaluation"]["examples"] > 0
    assert got["machine"]["backend"] == "cpu"
