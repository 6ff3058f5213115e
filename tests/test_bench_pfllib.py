"""experiments/bench_pfllib.py without PFLlib: its report from given units (the figures and
the accuracy lined up by rounds trained), and its one-line errors. The whole-round run needs a
PFLlib checkout and PyTorch; its figures are in docs/performance.md."""

from __future__ import annotations

import json

import pytest
from scripts import load_script


def _units(walls, evals, **extra):
    return [{"wall_s": w, "eval_s": e, **extra} for w, e in zip(walls, evals)]


def test_report_medians_speedups_and_accuracy_by_rounds_trained(tmp_path, capsys):
    bench = load_script("bench_pfllib")
    args = bench.parse(["--algorithm", "fedavg", "--rounds", "4", "--out",
                        str(tmp_path / "r.json")])
    pfl = _units([60.0, 44.0, 40.0, 48.0], [20.0, 18.0, 16.0, 20.0], train_s=20.0, ala_s=0.0)
    for k, u in enumerate(pfl):  # PFLlib's unit k evaluates the model of k rounds
        u.update(acc=0.1 * k, rounds_evaluated=k)
    jax_units = _units([50.0, 22.0, 20.0, 30.0], [2.0, 2.0, 1.0, 3.0])
    for k, u in enumerate(jax_units):  # jaxpfl's unit k trains round k + 1, then evaluates
        u.update(metrics={"acc_pooled": 0.15 * (k + 1)}, rounds_evaluated=k + 1)
    setup = {"pfllib": {"wall_s": 4.0, "threads": 2, "torch": "2.x"},
             "jaxpfl": {"wall_s": 3.0, "eval_s": 1.0, "metrics": {"acc_pooled": 0.09},
                        "rounds_evaluated": 0}}
    order = [("pfllib", 0), ("jaxpfl", 0), ("jaxpfl", 1), ("pfllib", 1)]
    got = bench.report(args, setup, {"pfllib": pfl, "jaxpfl": jax_units}, order)
    # units 1..3 only (unit 0 is the warm-up): medians 44 and 22, mins 40 and 20
    assert got["pfllib"]["unit"]["median_s"] == 44.0 and got["jaxpfl"]["unit"]["min_s"] == 20.0
    assert got["pfllib"]["unit"]["spread"] == pytest.approx((48 - 40) / 44)
    assert got["speedup_median"] == pytest.approx(44 / 22)
    assert got["speedup_min"] == pytest.approx(40 / 20)
    # training = unit − evaluation: PFLlib 26, 24, 28 → 26; jaxpfl 20, 19, 27 → 20
    assert got["training_speedup_median"] == pytest.approx(26 / 20)
    assert got["pfllib"]["first_unit_s"] == 60.0 and got["jaxpfl"]["setup_s"] == 3.0
    acc = got["accuracy_by_rounds"]
    assert acc["0"] == {"pfllib": 0.0, "jaxpfl": 0.09}
    assert acc["2"] == {"pfllib": pytest.approx(0.2), "jaxpfl": pytest.approx(0.3)}
    assert acc["4"] == {"jaxpfl": pytest.approx(0.6)}  # PFLlib never evaluates round R
    assert json.loads((tmp_path / "r.json").read_text())["speedup_median"] == pytest.approx(2.0)
    out = capsys.readouterr().out
    assert "jaxpfl is 2.00x PFLlib's whole round (medians; mins 2.00x), 1.30x its training" in out


@pytest.mark.parametrize("layout,rounds,message", [
    ((), "6", "no PFLlib checkout at"),
    (("system/main.py",), "6", "dataset/FashionMNIST has no split"),
    (("system/main.py", "dataset/FashionMNIST/train/"), "2", "--rounds must be at least 3"),
])
def test_bad_input_is_one_line(tmp_path, layout, rounds, message):
    for rel in layout:  # a fake checkout: what the controller checks before it starts anything
        path = tmp_path / rel
        if rel.endswith("/"):
            path.mkdir(parents=True)
        else:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text("")
    bench = load_script("bench_pfllib")
    with pytest.raises(SystemExit, match=message) as err:
        bench.main(["--pfllib-dir", str(tmp_path), "--rounds", rounds])
    assert str(err.value).startswith("error: ") and "\n" not in str(err.value)
