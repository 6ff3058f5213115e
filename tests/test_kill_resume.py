"""``kill -9`` a CLI run mid-way, ``--resume`` it, and the final parameters and metrics equal
an uninterrupted run's bit for bit (each round logged exactly once). The runs train a small
MLP: what a checkpoint restores (parameters, optimizer state, keys, the round counter and the
metrics log) does not depend on the model, and three CNN runs cost twice the time."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import jax
import numpy as np

REPO = Path(__file__).resolve().parents[1]
ROUNDS = 14
ARGS = ["--smoke", "--rounds", str(ROUNDS), "--eval-every", "2", "--checkpoint-every", "1",
        "--model", "perfedavg_mlp", "--no-progress"]


def _cmd(out, *extra):
    return [sys.executable, str(REPO / "experiments" / "fedavg.py"), *ARGS, "--out", str(out),
            *extra]


def _records(out):
    """metrics.jsonl without wall-clock fields."""
    lines = (out / "metrics.jsonl").read_text().splitlines()
    return [{k: v for k, v in json.loads(x).items() if not k.endswith("_seconds")}
            for x in lines]


def _final_params(out):
    import orbax.checkpoint as ocp

    mgr = ocp.CheckpointManager(os.path.abspath(out / "checkpoints"))
    step = mgr.latest_step()
    got = mgr.restore(step, args=ocp.args.StandardRestore())
    return step, jax.tree.map(np.asarray, got)


def test_kill_minus_9_then_resume_equals_uninterrupted(tmp_path):
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    full, cut = tmp_path / "full", tmp_path / "cut"
    done = subprocess.run(_cmd(full), capture_output=True, text=True, timeout=600, env=env)
    assert done.returncode == 0, done.stderr[-2000:]

    proc = subprocess.Popen(_cmd(cut), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            text=True, env=env)
    meta = cut / "checkpoints.json"
    deadline = time.monotonic() + 600
    killed_at = None
    while time.monotonic() < deadline and proc.poll() is None:
        if meta.exists():
            try:
                r = json.loads(meta.read_text())["round"]
            except (ValueError, KeyError):
                r = 0
            if r >= 3:
                os.kill(proc.pid, signal.SIGKILL)
                killed_at = r
                break
        time.sleep(0.02)
    proc.wait(timeout=60)
    assert killed_at is not None and killed_at < ROUNDS, "the run ended before it was killed"
    assert proc.returncode == -signal.SIGKILL

    res = subprocess.run(_cmd(cut, "--resume"), capture_output=True, text=True, timeout=600,
                         env=env)
    assert res.returncode == 0, res.stderr[-2000:]
    assert _records(cut) == _records(full)
    rounds = [r["round"] for r in _records(cut)]
    assert rounds == sorted(set(rounds)) and rounds[-1] == ROUNDS
    (s1, p1), (s2, p2) = _final_params(full), _final_params(cut)
    assert s1 == s2 == ROUNDS
    jax.tree.map(np.testing.assert_array_equal, p1, p2)
