"""experiments/profile_step.py: its op grouping from HLO metadata, its one-line errors, and one
short run of two variants (their rows, the parameter agreement, and a per-op profile that names
the model's layers). The timings themselves are not checked: they are measurements."""

from __future__ import annotations

import json

import pytest
from scripts import load_script

LAYERS = frozenset({"conv1", "conv2", "fc1", "fc"})


@pytest.mark.parametrize("op_name,want", [
    ("jit(block)/while/body/closed_call/jvp(FedAvgCNN)/conv2/concatenate", "conv2 forward"),
    ("jit(block)/while/body/closed_call/transpose(jvp(FedAvgCNN))/conv2/dot_general",
     "conv2 backward"),
    ("jit(block)/while/body/closed_call/transpose(jvp(FedAvgCNN))/fc1/transpose",
     "fc1 backward"),
    ("jit(block)/while/body/closed_call/jvp(FedAvgCNN)/reduce_max", "reduce_max forward"),
    ("jit(block)/while/body/closed_call/sub", "update"),
    ("", "other (copy)"),
])
def test_ops_are_grouped_by_layer_and_direction(op_name, want):
    prof = load_script("profile_step")
    assert prof.op_group(op_name, "copy.86", LAYERS) == want


def test_bad_variant_is_one_line(capsys):
    prof = load_script("profile_step")
    with pytest.raises(SystemExit) as info:
        prof.main(["--variants", "im2col,winograd"])
    assert str(info.value).startswith("error: unknown variant 'winograd'")
    assert "\n" not in str(info.value)
    with pytest.raises(SystemExit, match="error: 'im2col@/nonexistent': no jaxpfl package"):
        prof.main(["--variants", "im2col@/nonexistent"])


def test_two_variants_agree_and_the_profile_names_the_layers(tmp_path, capsys):
    prof = load_script("profile_step")
    out = tmp_path / "p.json"
    got = prof.main(["--variants", "im2col,ynn_dot", "--steps", "2", "--repeats", "2",
                     "--top", "3", "--out", str(out)])
    rows = got["rows"]
    assert set(rows) == {"im2col", "ynn_dot"}
    for row in rows.values():
        assert len(row["ms"]) == 2 and row["ms_min"] <= row["ms_median"]
        assert row["max_param_diff_to_first"] < 1e-5  # the same training, other XLA kernels
        assert {"conv1 backward", "conv2 forward", "conv2 backward", "fc1 forward",
                "update"} <= set(row["groups"])
        assert row["profiled_ms"] == pytest.approx(sum(o["ms"] for o in row["ops"]))
    assert rows["im2col"]["max_param_diff_to_first"] == 0.0
    assert json.loads(out.read_text())["rows"]["ynn_dot"]["groups"]
    assert "by layer and direction" in capsys.readouterr().out
