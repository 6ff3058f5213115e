"""experiments/reproduce.py: ``--list`` covers every preset, one smoke run's JSON and plot, the
report's numbers equal the JSON's, and bad input is one line with exit status 2."""

from __future__ import annotations

import copy
import importlib.util
import json
import os
import re
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from jaxpfl.cli import ExperimentCli, Preset, Reference

REPO = Path(__file__).resolve().parents[1]


def load(path: Path, name: str) -> ModuleType:
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, path)
        mod = importlib.util.module_from_spec(spec)
        sys.modules[name] = mod
        spec.loader.exec_module(mod)
    return sys.modules[name]


R = load(REPO / "experiments" / "reproduce.py", "_reproduce_under_test")


def experiment_presets() -> dict[str, tuple[ExperimentCli, list[str]]]:
    """Every script's presets, found on its own: each experiments/*.py that builds an
    ExperimentCli, loaded, and every ExperimentCli object it holds."""
    out = {}
    for path in sorted((REPO / "experiments").glob("*.py")):
        text = path.read_text()
        if path.name == "reproduce.py" or not ("ExperimentCli(" in text
                                                or "ExperimentScript(" in text):
            continue
        mod = load(path, f"_experiment_{path.stem}")
        for obj in vars(mod).values():
            if isinstance(obj, ExperimentCli) and obj.presets:
                out[path.stem] = (obj, list(obj.presets))
    return out


def test_list_shows_every_preset_of_every_script(capsys: pytest.CaptureFixture) -> None:
    assert R.main(["--list"]) == 0
    text = capsys.readouterr().out
    listed = re.findall(r"^(\w+:\w+)  ", text, re.M)
    want = [f"{s}:{p}" for s, (_, presets) in experiment_presets().items() for p in presets]
    assert sorted(listed) == sorted(want) and len(want) >= 10
    blocks = dict(zip(listed, re.split(r"^\w+:\w+  ", text, flags=re.M)[1:]))
    for name in want:
        script, preset = name.split(":")
        block = blocks[name]
        for scale in R.SCALES:
            assert f"  {scale}:" in block
        assert f"experiments/{script}.py --preset {preset} --smoke" in block
        assert "  cost:" in block


def test_every_preset_carries_what_the_report_needs(tmp_path: Path) -> None:
    """The CPU scale, headline and reference columns are fields of each preset (nothing
    keyed by script:preset in reproduce.py): every preset has a CPU scale whose overrides the
    script accepts, and a reference cannot be defined without saying what each column is."""
    presets = experiment_presets()
    assert {t.name for t in R.targets()} == {
        f"{s}:{p}" for s, (_, ps) in presets.items() for p in ps}
    for t in R.targets():
        scale = R.cpu_scale(t)
        assert scale.why, t.name
        flags = R.override_flags(t.cli, scale.overrides)
        parsed = t.cli.parse(["--preset", t.preset.name, *flags, "--out", str(tmp_path / "o")])
        for k, v in scale.overrides.items():
            assert parsed.values[k] == v
        for ref in t.preset.references:
            assert set(ref.reads) == set(ref.columns), (t.name, ref.source)
        head = R.headline_of(t, {"acc_pooled": {"best": 0.5}})
        assert head["metric"] and head["statistic"] in ("best", "final", "acc_mean"), t.name
    with pytest.raises(TypeError, match="reads must map each column"):
        Reference(source="x", metric="m", columns=("a (%)",), values={(): (1.0,)})
    bare = Preset(name="bare", about="", overrides={}, command="", cost="")
    with pytest.raises(TypeError, match="no CPU scale"):
        R.cpu_scale(R.Target("fedavg", presets["fedavg"][0], bare))
    for key in R.EXPLANATIONS:  # explanations only for recorded results
        script, preset, scale = key.split(":")
        assert (REPO / "docs" / "results" / f"{script}_{preset}_{scale}.json").exists(), key


def fashion_fixture(tmp: Path) -> Path:
    """Fake Fashion-MNIST IDX files (the tests' fixture layout, tests/scripts.py)."""
    from scripts import fixture_args

    return Path(fixture_args("fashion_mnist", tmp)[1])


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Any]]:
    """The one real run: fedavg:pfllib at smoke scale, seed 0, on fixture data."""
    tmp = tmp_path_factory.mktemp("reproduce")
    data = fashion_fixture(tmp)
    results = tmp / "results"
    argv = ["run", "fedavg:pfllib", "--scale", "smoke", "--seeds", "0",
            "--results-dir", str(results), "--runs-dir", str(tmp / "runs"),
            "--", "--data-dir", str(data), "--no-progress"]  # fmt: skip
    assert R.main(argv) == 0
    doc = json.loads((results / "fedavg_pfllib_smoke.json").read_text())
    return results, doc


def test_run_writes_the_json_and_the_plot(smoke_run: tuple[Path, dict[str, Any]]) -> None:
    results, doc = smoke_run
    assert (results / "fedavg_pfllib_smoke.png").stat().st_size > 5000
    assert (doc["script"], doc["preset"], doc["scale"], doc["seeds"]) == (
        "fedavg", "pfllib", "smoke", [0])  # fmt: skip
    (cmd,) = doc["commands"]
    assert "experiments/fedavg.py --preset pfllib --smoke --seed 0 --out " in cmd
    assert cmd.endswith("--overwrite --data-dir " + doc["extra_args"][1] + " --no-progress")
    assert "fedavg_pfllib/smoke/seed0" in cmd
    head = doc["headline"]
    assert (head["column"], head["metric"], head["statistic"]) == (
        "best acc_pooled (%)", "acc_pooled", "best")  # fmt: skip
    (seed,) = doc["per_seed"]
    summary = json.loads((Path(doc["cwd"]) / seed["run_dir"] / "summary.json").read_text())
    assert seed["value"] == pytest.approx(100 * summary["acc_pooled"]["best"])
    assert doc["mean"] == pytest.approx(seed["value"]) and doc["std"] == 0.0
    assert seed["wall_seconds"] > 0 and doc["wall_seconds_mean"] == seed["wall_seconds"]
    refs = doc["references"]
    assert [r["cells"][0]["values"]["best acc_pooled (%)"] for r in refs] == [85.85, 69.83]
    # A smoke run is never the published setting: the script recorded so in summary.json
    # (what the report reads; its printed lines are never parsed).
    assert seed["references"] == summary["references"] and "reference_lines" not in seed
    for r, recorded in zip(refs, summary["references"]):
        assert r["comparable"] is False and r["published"] is None
        assert recorded["comparable"] is False and recorded["source"] == r["source"]
        assert r["not_comparable_because"] == "; ".join(recorded["not_comparable_because"])
        assert "--rounds" in r["not_comparable_because"]
        assert r["setting"]["--rounds"] in ("2000", "25")
        assert r["ours"]["best acc_pooled (%)"]["per_seed"] == [seed["value"]]
    assert doc["gaps"] == [] and doc["machine"]["backend"] == "cpu"


def test_reuse_reads_back_a_seed_finished_by_the_same_command(
    smoke_run: tuple[Path, dict[str, Any]], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """--reuse joins a seed an earlier `run` finished (nothing is run again), and a changed
    command is not reused."""
    results, doc = smoke_run
    (seed,) = doc["per_seed"]
    runs = (Path(doc["cwd"]) / seed["run_dir"]).parents[2]
    data = doc["extra_args"][1]
    argv = ["run", "fedavg:pfllib", "--scale", "smoke", "--seeds", "0", "--reuse",
            "--results-dir", str(tmp_path), "--runs-dir", str(runs),
            "--", "--data-dir", data, "--no-progress"]  # fmt: skip

    def no_run(argv, out):
        raise AssertionError(f"ran {argv} again")

    monkeypatch.setattr(R, "run_seed", no_run)
    assert R.main(argv) == 0
    again = json.loads((tmp_path / "fedavg_pfllib_smoke.json").read_text())
    assert again["per_seed"][0]["value"] == seed["value"]
    assert again["per_seed"][0]["wall_seconds"] == seed["wall_seconds"]
    assert again["commands"] == doc["commands"]
    with pytest.raises(AssertionError, match="ran .* again"):  # another command: run again
        R.main([*argv, "--rounds", "1"])


def cells_of(markdown: str, preset: str, scale: str) -> list[str]:
    (row,) = [x for x in markdown.splitlines() if x.startswith(f"| {preset} | {scale} |")]
    return [c.strip() for c in re.split(r"(?<!\\)\|", row)[1:-1]]


def test_report_numbers_are_the_json_numbers(
    smoke_run: tuple[Path, dict[str, Any]], tmp_path: Path
) -> None:
    results, doc = smoke_run
    out = tmp_path / "results.md"
    assert R.main(["report", "--results-dir", str(results), "--out", str(out)]) == 0
    md = out.read_text()
    assert "## fedavg" in md and "No results have been recorded yet" not in md
    c = cells_of(md, "pfllib", "smoke")
    mean, std = (float(x) for x in c[3].split("±"))
    assert (mean, std) == (round(doc["mean"], 2), round(doc["std"], 2))
    published = [float(x) for x in re.findall(r"(?:^|<br>)(\d+\.\d+) \(", c[4])]
    assert published == [r["cells"][0]["values"]["best acc_pooled (%)"] for r in doc["references"]]
    assert c[5] == "not comparable" and c[6] == "0"
    assert float(c[7].removesuffix(" s")) == round(doc["wall_seconds_mean"])
    assert c[8] == f"{doc['machine']['cpu']} ({doc['machine']['cpus']} cores)"
    assert c[9] == f"[png]({os.path.relpath(results, out.parent)}/fedavg_pfllib_smoke.png)"

    # A comparable result (as the script records it in summary.json) with a gap > 1 point and
    # no explanation reads "unexplained"; with an explanation, a note.
    t = R.find_target("fedavg:pfllib")
    parsed = t.cli.parse(["--preset", "pfllib", "--rounds", "25", "--out", str(tmp_path / "x")])
    recorded = t.cli.compare_all(parsed, {**parsed.values, "clients_per_round": 20},
                                 parsed.ours([{"acc_pooled": {"best": 0.75, "final": 0.7}}]))
    rows = [{"seed": 0, "references": recorded}]
    entries = [R.reference_entry(t, ref, rows) for ref in t.preset.references]
    assert [e["comparable"] for e in entries] == [False, True]
    assert entries[1]["published"] == {"best acc_pooled (%)": 69.83}
    assert entries[1]["ours"]["best acc_pooled (%)"]["mean"] == pytest.approx(75.0)
    assert entries[0]["not_comparable_because"] == "--rounds 2000 (this run: 25)"
    fake = copy.deepcopy(doc)
    fake.update(scale="cpu", references=entries, mean=75.0, std=0.0, gaps=[
        dict(source=entries[1]["source"], column="best acc_pooled (%)", ours=75.0,
             published=69.83, gap=75.0 - 69.83)])  # fmt: skip
    fakes = tmp_path / "fake"
    fakes.mkdir()
    (fakes / "fedavg_pfllib_cpu.json").write_text(json.dumps(fake))
    R.main(["report", "--results-dir", str(fakes), "--out", str(out)])
    assert cells_of(out.read_text(), "pfllib", "cpu")[5] == "+5.17 unexplained"
    R.EXPLANATIONS["fedavg:pfllib:cpu"] = "a test explanation"
    try:
        R.main(["report", "--results-dir", str(fakes), "--out", str(out)])
    finally:
        del R.EXPLANATIONS["fedavg:pfllib:cpu"]
    md = out.read_text()
    assert cells_of(md, "pfllib", "cpu")[5] == "+5.17 (note 1)"
    assert "1. fedavg:pfllib:cpu: a test explanation" in md


def test_baselines_run_on_the_same_data_and_reach_the_report(tmp_path: Path) -> None:
    """fedora:rotated_fmnist at smoke scale: FEDORA, then local-only and FedAvg with the same
    seed (the script's --baseline), each one's headline read from its own summary.json."""
    data = fashion_fixture(tmp_path)
    results, runs = tmp_path / "results", tmp_path / "runs"
    argv = ["run", "fedora:rotated_fmnist", "--scale", "smoke", "--seeds", "0",
            "--results-dir", str(results), "--runs-dir", str(runs),
            "--", "--data-dir", str(data), "--no-progress"]  # fmt: skip
    assert R.main(argv) == 0
    doc = json.loads((results / "fedora_rotated_fmnist_smoke.json").read_text())
    head = doc["headline"]
    assert (head["metric"], head["statistic"]) == ("val_selected", "acc_mean")
    base = runs / "fedora_rotated_fmnist" / "smoke"

    def selected(folder: str) -> float:
        return 100 * json.loads((base / folder / "summary.json").read_text())["val_selected"][
            "acc_mean"]

    assert doc["per_seed"][0]["value"] == selected("seed0") == doc["mean"]
    (local, fedavg) = doc["baselines"]
    assert (local["name"], fedavg["name"]) == ("local-only", "FedAvg")
    assert local["per_seed"] == [selected("seed0_local_only")]
    assert fedavg["per_seed"] == [selected("seed0_fedavg")]
    assert "--baseline local" in local["commands"][0]
    assert "--baseline fedavg" in fedavg["commands"][0]
    fedavg_summary = json.loads((base / "seed0_fedavg" / "summary.json").read_text())
    assert "acc_mean" in fedavg_summary and "pers_acc_mean" not in fedavg_summary  # one model
    for b in (local, fedavg):
        assert b["ours_minus_baseline"] == pytest.approx(doc["mean"] - b["mean"])
    out = tmp_path / "results.md"
    assert R.main(["report", "--results-dir", str(results), "--out", str(out)]) == 0
    c = cells_of(out.read_text(), "rotated_fmnist", "smoke")
    assert c[2] == "test acc_mean at the best validation"
    for b in (local, fedavg):
        assert f"{b['name']}: {b['mean']:.2f} ± {b['std']:.2f}" in c[4]
        assert f"{b['ours_minus_baseline']:+.2f} vs {b['name']}" in c[5]


def test_a_metric_baseline_is_read_from_our_own_runs(tmp_path: Path) -> None:
    """perfedavg:fmnist_writers: the FedAvg baseline is the initial accuracy of the same runs
    (no extra run), per seed, with ours − it from the seeds' means."""
    t = R.find_target("perfedavg:fmnist_writers")
    (b,) = t.preset.baselines
    summaries = {s: {"init_acc_mean": {"final": v}} for s, v in ((0, 0.80), (1, 0.84))}
    for s in summaries:
        (tmp_path / f"seed{s}").mkdir()
        (tmp_path / f"seed{s}" / "metrics.jsonl").write_text(
            json.dumps({"round": 0, "init_acc_mean": 0.1}) + "\n"
            + json.dumps({"round": 5, "init_acc_mean": 0.8}) + "\n")
    head = R.headline_of(t, {})
    entry, hists = R.baseline_entry(t, b, "cpu", [0, 1], tmp_path, [], False, head, summaries,
                                    90.0)
    assert entry["per_seed"] == pytest.approx([80.0, 84.0]) and entry["commands"] == []
    assert (entry["mean"], entry["std"]) == pytest.approx((82.0, 2.0))
    assert entry["ours_minus_baseline"] == pytest.approx(8.0)
    assert [R.curve(h, head) for h in hists] == [[(0, 10.0), (5, 80.0)]] * 2


def test_own_earlier_run_reads_as_a_regression_reference(tmp_path: Path) -> None:
    """perfedavg:default compares with jaxpfl's own earlier run: recorded as a regression
    reference (not "published"), and the report names it so."""
    t = R.find_target("perfedavg:default")
    parsed = t.cli.parse(["--out", str(tmp_path / "x")])
    run = {**parsed.values, "clients_per_round": 20, "data_clients": 50, "eval_clients": 10}
    ours = {"initial acc (%)": 95.0, "personalized acc (%)": 99.0}
    (line,) = parsed.reference_lines(run, ours)
    assert line.startswith("regression reference (jaxpfl's own earlier run")
    recorded = t.cli.compare_all(parsed, run, ours)
    assert recorded[0]["label"] == "regression reference"
    (entry,) = [R.reference_entry(t, ref, [{"seed": 0, "references": recorded}])
                for ref in t.preset.references]
    assert entry["comparable"] is True and entry["kind"] == "regression"
    assert entry["published"] == {"initial acc (%)": 95.69, "personalized acc (%)": 98.67}
    doc = {"references": [entry], "headline": {"column": "personalized acc (%)"}}
    text = R.published_text(doc)
    assert text.startswith("regression reference: 98.67 (jaxpfl's own earlier run")
    assert "comparable" in text


def test_committed_report_is_what_the_committed_json_says() -> None:
    """docs/results.md is exactly the report of docs/results/*.json (regenerate it with
    `python experiments/reproduce.py report` after recording a result)."""
    report = REPO / "docs" / "results.md"
    text = R.render_report(REPO / "docs" / "results", report).rstrip("\n") + "\n"
    assert report.read_text() == text, "docs/results.md is stale: run reproduce.py report"


def test_report_on_no_results_shows_the_commands(tmp_path: Path) -> None:
    out = tmp_path / "r.md"
    assert R.main(["report", "--results-dir", str(tmp_path / "none"), "--out", str(out)]) == 0
    md = out.read_text()
    assert "No results have been recorded yet" in md
    assert "python experiments/reproduce.py run fedala:pfllib --scale cpu" in md


@pytest.mark.parametrize(
    "argv,needle",
    [
        (["run", "fedavg:nope"], "unknown preset 'fedavg:nope'"),
        (["run", "fedavg"], "write SCRIPT:PRESET"),
        (["run", "fedavg:pfllib", "--scale", "huge"], "invalid choice: 'huge'"),
        (["run", "fedavg:pfllib", "--seeds", "0,x"], "--seeds must be"),
    ],
)
def test_bad_input_is_one_line_and_status_2(
    capsys: pytest.CaptureFixture, argv: list[str], needle: str
) -> None:
    with pytest.raises(SystemExit) as e:
        R.main(argv)
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: ") and needle in err
