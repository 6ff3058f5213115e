"""End-to-end runs of every other experiment script (Per-FedAvg, FedALA, FEDORA, and any
script added since: discovered, not listed): every preset at smoke scale on fixture data
(helpers: tests/scripts.py). FedAvg and Personalized FedAvg: tests/test_experiments.py."""

from __future__ import annotations

import json

import pytest
from scripts import (
    assert_matches_recorded,
    experiment_presets,
    recorded_runs,
    smoke_run,
)

#: Scripts with their own end-to-end test file (tests/test_experiments.py).
OWN_FILE = ("fedavg", "perfedavg")
PERSONALIZED_PRESETS = [(s, p) for s, p in experiment_presets() if s not in OWN_FILE]
#: Baseline runs of a preset that are recorded too (script, preset, flags).
BASELINE_RUNS = [("fedora", "rotated_fmnist", ("--baseline", b)) for b in ("local", "fedavg")]


def test_every_recorded_smoke_run_is_still_compared():
    """Every run recorded before the experiment layer was reworked is one a test below (or in
    tests/test_experiments.py) compares with: no preset silently left the guard."""
    checked = {f"{s}:{p}" for s, p in experiment_presets()}
    checked |= {f"{s}:{p}:{' '.join(flags)}" for s, p, flags in BASELINE_RUNS}
    assert recorded_runs() <= checked, recorded_runs() - checked
    assert {"per_fedavg", "fedala", "fedora"} <= {s for s, _ in PERSONALIZED_PRESETS}


@pytest.mark.parametrize("script,preset,flags", BASELINE_RUNS)
def test_recorded_baselines_at_smoke_scale(tmp_path, capsys, script, preset, flags):
    _, _, _, records = smoke_run(script, preset, tmp_path, capsys, extra=flags)
    assert assert_matches_recorded(script, preset, records, extra=" ".join(flags))


@pytest.mark.parametrize("script,preset", PERSONALIZED_PRESETS)
def test_every_personalized_preset_runs_at_smoke_scale(tmp_path, capsys, script, preset):
    """Per-FedAvg, FedALA and FEDORA presets at smoke scale on fixture data: a full run of the
    script's own code path, metrics from round 0 to the last, a summary, comparability lines."""
    mod, out, stdout, records = smoke_run(script, preset, tmp_path, capsys)
    assert_matches_recorded(script, preset, records)  # where recorded (presets before #23)
    assert records[0]["round"] == 0 and records[-1]["round"] > 0
    assert json.loads((out / "summary.json").read_text())["rounds"] == records[-1]["round"]
    assert "published (" not in stdout  # a smoke run is never a published setting
