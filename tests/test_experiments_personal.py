"""End-to-end runs of the personalized scripts: every Per-FedAvg, FedALA and FEDORA preset at
smoke scale on fixture data (helpers: tests/scripts.py)."""

from __future__ import annotations

import json

import pytest
from scripts import assert_matches_recorded, load_script, smoke_run

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
    assert_matches_recorded(script, preset, records)
    assert records[0]["round"] == 0 and records[-1]["round"] > 0
    assert json.loads((out / "summary.json").read_text())["rounds"] == records[-1]["round"]
    assert "published (" not in stdout  # a smoke run is never a published setting
