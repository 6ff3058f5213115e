"""Smoke test of experiments/bench_engine.py (--quick: synthetic data, 4 clients, a warm-up
round and 2 timed rounds per row; a small MLP, since the mechanics checked here do not depend
on the model and the CNN doubles the time).

Checks the JSON, not the printed layout: the rows ran interleaved round by round, the timing
figures are consistent, and the naive loop and the engine compute the same round (same batch
order, same parameters after the same rounds)."""

import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_bench_engine_quick(tmp_path):
    out = tmp_path / "bench.json"
    cmd = [sys.executable, str(REPO / "experiments" / "bench_engine.py"), "--quick",
           "--strategies", "sequential", "--eval-repeats", "1", "--model", "perfedavg_mlp",
           "--out", str(out)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=REPO)
    assert proc.returncode == 0, proc.stderr[-2000:]
    got = json.loads(out.read_text())
    rows = {r["label"]: r for r in got["rows"]}
    assert set(rows) == {"sequential(b=64)", "naive"}
    timing = got["timing"]
    assert timing["interleaved"] and timing["timed_rounds"] == 2
    assert timing["ref"] == "sequential(b=64)"
    # Built and warmed up one after another, then round by round: A, B, A, B.
    labels = ["sequential(b=64)", "naive"]
    assert [tuple(x) for x in timing["order"]] == (
        [(lab, 0) for lab in labels] + [(lab, t) for t in (1, 2) for lab in labels])
    for r in rows.values():
        assert len(r["rounds"]) == 2 and len(r["losses"]) == 3 and r["first_round_s"] > 0
        assert r["min_s"] == min(r["rounds"]) and r["median_s"] >= r["min_s"]
        assert r["spread"] == (max(r["rounds"]) - min(r["rounds"])) / r["median_s"]
        assert r["examples_per_s"] == got["examples_per_round"] / r["median_s"]
    seq, naive = rows["sequential(b=64)"], rows["naive"]
    assert seq["vs_ref_median"] == 1.0 and seq["vs_ref_min"] == 1.0
    assert naive["vs_ref_median"] == naive["median_s"] / seq["median_s"]
    assert seq["max_param_diff"] is None and naive["max_param_diff"] < 1e-4
    assert abs(seq["losses"][-1] - naive["losses"][-1]) < 1e-4
    assert got["evaluation"]["examples"] > 0
    assert got["machine"]["backend"] == "cpu"
