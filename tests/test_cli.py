"""The experiments' command lines: one definition per setting, presets as data, one-line
errors (exit 2) for bad input, tracebacks for bugs, resume text, references, PFLlib split."""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import pytest
from scripts import experiment_presets, load_script

import jaxpfl.pipeline
from jaxpfl import cli
from jaxpfl.algorithms.fedavg import FedAvgConfig
from jaxpfl.algorithms.personalized_fedavg import PersonalizedFedAvgConfig
from jaxpfl.cli import DataConfig, Sampling, StrategyArgs
from jaxpfl.core.engine import Strategy
from jaxpfl.errors import ConfigError, DataError, RunError
from jaxpfl.pipeline import ExperimentConfig
from jaxpfl.run import RunConfig

REPO = Path(__file__).resolve().parents[1]
FMNIST_DIR = "/usr/share/datasets/fashion-mnist"


fedavg = load_script("fedavg")
perfedavg = load_script("perfedavg")
SCRIPTS = {"fedavg": fedavg, "perfedavg": perfedavg}


def one_error_line(capsys, fn, *args) -> str:
    """Run ``fn(*args)``; it must exit with status 2 printing exactly one ``error:`` line."""
    with pytest.raises(SystemExit) as e:
        fn(*args)
    err = capsys.readouterr().err
    assert e.value.code == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert "Traceback" not in err
    return lines[0]


# ------------------------------------------------------------- one definition per setting


ALL_SCRIPTS = sorted({s for s, _ in experiment_presets()} | {"partition"})


@pytest.mark.parametrize("script", ALL_SCRIPTS)
def test_no_flag_name_reaches_two_fields(script):
    """Over every script's command line: each option string sets one destination; every field
    has its namespaced flag ``--<section>.<field>`` and its bare flag (unless the script
    declares the bare name ambiguous, then that is refused), and both reach that field only."""
    c = load_script(script).CLI
    owner: dict[str, str] = {}
    for action in c.build_parser()._actions:
        for opt in action.option_strings:
            assert opt not in owner, (script, opt)
            owner[opt] = action.dest
    fields = [(title, s) for title, cls, _ in c.sections for s in c.by_class[cls]]
    assert len({s.name for _, s in fields}) == len(fields)
    for title, spec in fields:
        name = spec.name.replace("_", "-")
        assert owner[f"--{cli.section_prefix(title)}.{name}"] == spec.name, (script, spec.name)
        if spec.name in c.ambiguous:
            assert owner[f"--{name}"] != spec.name  # the refusal, not the field
        else:
            assert owner[f"--{name}"] == spec.name, (script, spec.name)


def test_per_fedavg_alpha_is_refused_and_each_alpha_has_its_own_flag(capsys, tmp_path):
    """docs/algorithms.md names Per-FedAvg's α; a bare --alpha would silently re-partition the
    data (the Dirichlet concentration) and leave α alone, so per_fedavg.py refuses it in one
    line naming both flags; --data.alpha and --inner-lr (--per-fedavg.inner-lr) each set their
    own field only."""
    from jaxpfl.algorithms.per_fedavg import PerFedAvgConfig

    m = load_script("per_fedavg")
    for argv in (["--preset", "pfllib", "--alpha", "0.005"], ["--alpha=0.005"]):
        line = one_error_line(capsys, m.main, argv)
        assert "--alpha is ambiguous" in line and "--inner-lr" in line and "--data.alpha" in line
    base = m.CLI.parse(["--preset", "pfllib", "--out", str(tmp_path / "a")])
    data = m.CLI.parse(["--preset", "pfllib", "--data.alpha", "0.005", "--out", str(tmp_path)])
    assert data[DataConfig].alpha == 0.005
    assert data[PerFedAvgConfig] == base[PerFedAvgConfig]
    for flag in ("--inner-lr", "--per-fedavg.inner-lr"):
        lr = m.CLI.parse(["--preset", "pfllib", flag, "0.005", "--out", str(tmp_path)])
        assert lr[PerFedAvgConfig].inner_lr == 0.005
        assert lr[DataConfig] == base[DataConfig]
    line = one_error_line(capsys, m.main, ["--data.alpha", "0"])
    assert line == "error: --data.alpha must be > 0, got 0.0"


@pytest.mark.parametrize("name", sorted(SCRIPTS))
def test_every_field_is_a_documented_flag(name):
    c = SCRIPTS[name].CLI
    for _, cls, exclude in c.sections:
        fields = [f.name for f in dataclasses.fields(cls) if f.init and f.name not in exclude]
        assert [s.name for s in c.by_class[cls]] == fields
    for s in c.specs.values():
        assert s.help != s.name.replace("_", " "), f"{s.flag} has no help text"
    text = c.build_parser().format_help()
    for s in c.specs.values():
        assert s.flag in text


def test_perfedavg_flags_reach_the_config():
    """The fields the hand-written copy used to drop (reptile_b1/b2/eps, kt_*) arrive."""
    p = perfedavg.parse(
        [
            "--reptile-b1", "0.5", "--reptile-b2", "0.9", "--reptile-eps", "1e-6",
            "--kt-client-lr", "0.002", "--kt-epochs", "3", "--kt-server-lr", "0.05",
            "--pers-epochs", "3", "--no-shuffle", "--variant", "kt_pfa", "--seeds", "0", "2",
        ]
    )  # fmt: skip
    cfg = p[PersonalizedFedAvgConfig]
    assert (cfg.reptile_b1, cfg.reptile_b2, cfg.reptile_eps) == (0.5, 0.9, 1e-6)
    assert (cfg.kt_client_lr, cfg.kt_epochs, cfg.kt_server_lr) == (0.002, 3, 0.05)
    assert cfg.personalization_epochs == 3 and cfg.shuffle is False and cfg.variant == "kt_pfa"
    assert p[ExperimentConfig].seeds == (0, 2)
    # the preset's values sit below the flags
    assert cfg.rounds == 30 and cfg.local_epochs == 2 and p[Sampling].clients == 20


def test_fedavg_flags_reach_the_config():
    p = fedavg.parse(
        ["--lr", "0.005", "--server-b1", "0.8", "--local-steps", "4", "--no-weighted",
         "--drop-last", "--server-opt", "adam", "--clients", "5", "--num-clients", "10"]
    )  # fmt: skip
    cfg = p[FedAvgConfig]
    assert cfg.client_lr == 0.005 and cfg.server_b1 == 0.8 and cfg.local_steps == 4
    assert cfg.weighted is False and cfg.drop_last is True and cfg.server_opt == "adam"
    assert p[Sampling] == Sampling(clients=5)  # --clients drops the preset's participation
    assert p[DataConfig].num_clients == 10


@dataclasses.dataclass(frozen=True)
class Toy:
    """A toy config.

    Attributes:
      steps: how many steps
        (continued on a second line)
      rate: a rate
      tags: some integers
    """

    steps: int = 3
    rate: float | None = None
    tags: tuple[int, ...] = (1, 2)
    mode: str = dataclasses.field(default="a", metadata={"choices": ("a", "b"), "help": "mode"})
    flag: bool = False

    def __post_init__(self):
        if self.steps < 0:
            raise ConfigError(f"steps must be >= 0, got {self.steps}")


def test_generator_on_a_toy_dataclass(capsys):
    p = cli.CliParser(prog="toy")
    specs = cli.add_config_args(p, Toy, group="toy")
    assert [s.flag for s in specs] == ["--steps", "--rate", "--tags", "--mode", "--flag"]
    assert specs[0].help == "how many steps (continued on a second line)"
    text = p.format_help()
    assert "a rate [default: none]" in text and "--flag, --no-flag" in text
    got = cli.config_from_args(Toy, p.parse_args(["--rate", "none", "--tags", "4", "5", "--flag"]))
    assert got == Toy(rate=None, tags=(4, 5), flag=True)
    assert cli.config_from_args(Toy, p.parse_args(["--rate", "0.5"])).rate == 0.5
    with pytest.raises(ConfigError, match=r"^--steps must be >= 0, got -1$"):
        cli.config_from_args(Toy, p.parse_args(["--steps", "-1"]))
    line = one_error_line(capsys, p.parse_args, ["--mode", "c"])
    assert "invalid choice: 'c'" in line
    line = one_error_line(capsys, p.parse_args, ["--steps", "1.5"])
    assert "expected an integer, got '1.5'" in line and "how many steps" in line


def test_layers_default_preset_smoke_flags():
    c = perfedavg.CLI
    base = c.preset_values("jiang_emnist")
    assert base["dataset"] == "emnist_tff" and base["n_eval"] == 900
    smoke = c.preset_values("jiang_emnist", smoke=True)
    assert smoke["n_eval"] == 4 and smoke["rounds"] == 2 and smoke["dataset"] == "emnist_tff"
    p = perfedavg.parse(["--preset", "jiang_emnist", "--smoke", "--rounds", "3"])
    assert p[PersonalizedFedAvgConfig].rounds == 3 and p[DataConfig].n_eval == 4
    assert p.given == {"rounds"}
    p = perfedavg.parse(["--participation", "0.5"])  # replaces the preset's --clients 20
    assert p[Sampling] == Sampling(participation=0.5)
    help_text = " ".join(c.build_parser(base).format_help().split())
    assert "[default: emnist_tff]" in help_text and "[default: 900]" in help_text


def test_list_presets(capsys):
    for mod in SCRIPTS.values():
        with pytest.raises(SystemExit) as e:
            mod.main(["--list-presets"])
        assert e.value.code == 0
        out = capsys.readouterr().out
        for p in mod.PRESETS:
            assert out.count(f"{p.name}: ") >= 1 and p.command in out and p.cost in out
            assert p.smoke and p.cost and p.command.startswith("python experiments/")
        assert out.count("command:") == out.count("cost:") == len(mod.PRESETS)
    assert "Jiang et al. 2019 Table 1" in perfedavg.CLI.format_presets()


def test_preset_tables_are_checked():
    bad = cli.Preset("x", "about", {"no_such_field": 1}, "cmd", "cost")
    with pytest.raises(TypeError, match="no_such_field"):
        cli.ExperimentCli("d", [("s", Sampling)], [bad])
    bad = cli.Preset("x", "about", {"clients": 1.5}, "cmd", "cost")
    with pytest.raises(ConfigError, match="--clients must be an integer"):
        cli.ExperimentCli("d", [("s", Sampling)], [bad])


# ------------------------------------------------------------------ bad input: one line


@pytest.mark.parametrize(
    "script,argv,msg",
    [
        ("fedavg", ["--eval-every", "0"], "--eval-every must be >= 1"),
        ("perfedavg", ["--eval-every", "0"], "--eval-every must be >= 1"),
        ("fedavg", ["--n-eval", "0"], "--n-eval must be >= 1"),
        ("perfedavg", ["--n-eval", "0"], "--n-eval must be >= 1"),
        (
            "fedavg",
            ["--clients-per-round", "1.5"],
            "--clients-per-round was removed: use --clients",
        ),
        ("fedavg", ["--clients", "1.5"], "argument --clients: expected an integer"),
        ("perfedavg", ["--clients", "1.5"], "argument --clients: expected an integer"),
        ("fedavg", ["--participation", "1.5"], "--participation must be a fraction in (0, 1]"),
        ("perfedavg", ["--participation", "0"], "--participation must be a fraction in (0, 1]"),
        ("perfedavg", ["--clients", "0"], "--clients must be an integer >= 1"),
        ("fedavg", ["--clients", "2", "--participation", "0.5"], "not both"),
        ("perfedavg", ["--seed", "1", "--seeds", "0", "1"], "give --seed or --seeds, not both"),
        ("fedavg", ["--lr", "0"], "--lr must be > 0, got 0.0"),
        ("perfedavg", ["--reptile-b2", "1"], "--reptile-b2 must be in [0, 1)"),
        ("perfedavg", ["--variant", "x"], "invalid choice: 'x'"),
        ("fedavg", ["--rep", "3"], "unrecognized arguments: --rep"),
        ("fedavg", ["--alpha", "0"], "--alpha must be > 0"),
        ("fedavg", ["--train-frac", "1.5"], "--train-frac must be in [0, 1]"),
        ("fedavg", ["--chunk-size", "0"], "--chunk-size must be an integer >= 1"),
        ("fedavg", ["--buckets", "0"], "--buckets must be an integer >= 1"),
        ("fedavg", ["--model", "resnet"], "invalid choice: 'resnet'"),
        ("fedavg", ["--partition-file", "x.npz", "--alpha", "0.5"], "drop --alpha"),
        ("fedavg", ["--partition-file", "/nonexistent/x.npz"], "no such partition file"),
        ("fedavg", ["--dataset", "nope"], "unknown dataset 'nope'"),
        ("fedavg", ["--dataset", "fashion_mnist", "--data-dir", "/nonexistent"], "no folder"),
        ("perfedavg", ["--out", "/proc/no/such"], "--out /proc/no/such: cannot create"),
        # after loading the data, before training:
        ("fedavg", ["--train-frac", "1"], "the training clients have no test examples"),
        ("fedavg", ["--clients", "30"], "--clients 30 per round, but the data has 20 training"),
        ("perfedavg", ["--holdout-frac", "0"], "no held-out evaluation clients"),
        ("fedavg", ["--pool-layout", "per-device", "--strategy", "vmap"],
         "--pool-layout per-device needs --strategy sharded"),
        ("fedavg", ["--pool-layout", "nope"], "invalid choice: 'nope'"),
        ("fedavg", ["--strategy", "sharded", "--pool-layout", "per-device", "--pool", "train"],
         "the central test set belongs to no client"),
        ("fedavg", ["--strategy", "sharded", "--pool-layout", "per-device",
                    "--client-state", "host"], "host-resident client state needs the "
         "replicated pool"),
    ],
)
def test_bad_input_is_one_line_exit_2(capsys, script, argv, msg):
    line = one_error_line(capsys, SCRIPTS[script].main, [*argv, "--no-progress"])
    assert msg in line, line


def test_bad_input_in_a_real_process():
    for script, argv, msg in [
        ("fedavg.py", ["--clients-per-round", "1.5"], "--clients-per-round was removed"),
        ("perfedavg.py", ["--eval-every", "0"], "--eval-every must be >= 1"),
    ]:
        r = subprocess.run(
            [sys.executable, str(REPO / "experiments" / script), *argv],
            capture_output=True,
            text=True,
            timeout=300,
            cwd=REPO,
        )
        lines = r.stderr.strip().splitlines()
        assert r.returncode == 2 and len(lines) == 1 and msg in lines[0], r.stderr


def test_train_frac_1_with_central_test_set_is_evaluated(tmp_path):
    """--train-frac 1 is refused only when nothing can be evaluated: with --pool train the
    source's test set is the central test set (McMahan's setting)."""
    result = fedavg.main(
        ["--smoke", "--train-frac", "1", "--pool", "train", "--rounds", "1", "--no-progress",
         "--out", str(tmp_path)]
    )  # fmt: skip
    last = result["history"][-1]
    assert last["n_clients"] == 0 and last["n_empty_clients"] == 40  # no client test data
    assert 0.0 <= last["central_acc_pooled"] <= 1.0 and last["central_n_examples"] == 2000


# -------------------------------------------------------------------------- main_guard


@pytest.mark.parametrize(
    "exc", [ConfigError("--x must be >= 1"), DataError("bad file\nsecond"), RunError("nan")]
)
def test_main_guard_prints_project_errors(capsys, exc):
    def boom():
        raise exc

    line = one_error_line(capsys, cli.main_guard(boom))
    assert line == "error: " + " ".join(str(exc).split())


@pytest.mark.parametrize(
    "exc",
    [KeyError("k"), ValueError("deep"), TypeError("t"), jax.errors.JaxRuntimeError("INTERNAL: x")],
)
def test_main_guard_keeps_internal_bugs(exc):
    def boom():
        raise exc

    with pytest.raises(type(exc)):
        cli.main_guard(boom)()


def _oom(*args, **kwargs):
    raise jax.errors.JaxRuntimeError(
        "RESOURCE_EXHAUSTED: Out of memory while trying to allocate 12.00GiB."
    )


def test_device_oom_is_one_line_naming_what_to_lower(capsys, monkeypatch, tmp_path):
    monkeypatch.setattr(jaxpfl.pipeline, "run", _oom)
    line = one_error_line(
        capsys, fedavg.main, ["--smoke", "--no-progress", "--out", str(tmp_path / "o")]
    )
    assert "out of memory" in line and "--chunk-size" in line and "--clients" in line
    assert "--strategy sequential" in line and "12.00GiB" in line


def test_experiment_bug_keeps_its_traceback(monkeypatch, tmp_path):
    def bug(*args, **kwargs):
        raise KeyError("acc_pooled")

    monkeypatch.setattr(jaxpfl.pipeline, "run", bug)
    with pytest.raises(KeyError):
        perfedavg.main(["--smoke", "--no-progress", "--out", str(tmp_path / "o")])


# ------------------------------------------------------------------------- config text


def test_config_text_has_every_results_field_and_no_other():
    p = perfedavg.parse([])
    doc = json.loads(p.config_text())
    for cls, specs in perfedavg.CLI.by_class.items():
        names = {s.name for s in specs if s.affects_results}
        assert set(doc[cls.__name__]) == names
    assert {"reptile_b1", "reptile_b2", "reptile_eps", "kt_epochs"} <= set(
        doc["PersonalizedFedAvgConfig"]
    )
    assert set(doc["RunConfig"]) == {"seed", "eval_every"} and doc["StrategyArgs"] == {}
    assert "seeds" not in doc["ExperimentConfig"] and "data_dir" not in doc["DataConfig"]


@pytest.mark.parametrize("script", sorted(SCRIPTS))
def test_config_text_changes_exactly_with_results_fields(script):
    c = SCRIPTS[script].CLI
    base = c.parse([]).config_text()
    same = ["--out", "x", "--no-progress", "--strategy", "vmap", "--chunk-size", "2", "--resume",
            "--checkpoint-every", "3", "--data-dir", "d", "--step-block", "4",
            "--buckets", "2"]  # fmt: skip
    assert c.parse(same).config_text() == base
    skipped = []
    for name, s in c.specs.items():
        if not s.affects_results or s.exclusive:
            continue
        v = c.preset_values(c.default_preset)[name]
        if s.kind is bool:
            flag = "--no-" + s.flag[2:] if v else s.flag
            argv = [flag]
        elif s.choices:
            argv = [s.flag, str(next(x for x in s.choices if x != v))]
        elif s.many:
            argv = [s.flag, "7"]
        elif s.kind is str:
            argv = [s.flag, "other"]
        else:
            new = (v or 0) + 1 if s.kind is int else 0.5 if v != 0.5 else 0.25
            argv = [s.flag, str(new)]
        try:
            text = c.parse(argv).config_text()
        except ConfigError:
            skipped.append(name)  # an out-of-range probe value
            continue
        assert text != base, f"{argv} does not change the resume text"
    assert len(skipped) <= 3, skipped


# -------------------------------------------------------------------------- references


def _jiang_values(**over):
    v = perfedavg.CLI.preset_values("jiang_emnist")
    v.update(clients_per_round=20, data_clients=3400, eval_clients=900)
    v.update(over)
    return v


def test_jiang_published_only_without_reptile_and_in_a_table_cell():
    p = perfedavg.parse(["--preset", "jiang_emnist"])
    ours = {perfedavg.COLUMNS[0]: 80.0, perfedavg.COLUMNS[1]: 88.0}
    (line,) = p.reference_lines(_jiang_values(), ours)
    assert line.startswith("not comparable: Jiang et al. 2019 Table 1")
    assert "--reptile-rounds 0 (this run: 100)" in line and "84.80" not in line
    (line,) = p.reference_lines(_jiang_values(reptile_rounds=0), ours)
    assert line.startswith("published (Jiang et al. 2019 Table 1")
    assert "metric: initial / personalized accuracy" in line
    assert "initial acc (%) 84.80, personalized acc (%) 90.32" in line  # (20, 10)
    assert "this run: initial acc (%) 80.00, personalized acc (%) 88.00" in line
    (line,) = p.reference_lines(_jiang_values(reptile_rounds=0, local_epochs=3), ours)
    assert line.startswith("not comparable") and "(clients/round, --local-epochs) in" in line
    assert "(this run: (20, 3))" in line
    (line,) = p.reference_lines(_jiang_values(reptile_rounds=0, rounds=100, data_clients=12), ours)
    assert "--rounds >= 310 (this run: 100)" in line and "clients in the data 3400" in line
    (line,) = p.reference_lines(_jiang_values(reptile_rounds=0, partition_file="x.npz"), ours)
    assert "--partition-file none (this run: x.npz)" in line


def test_kt_pfa_published_in_its_whole_setting_only():
    p = perfedavg.parse(["--preset", "kt_pfa_femnist"])
    v = perfedavg.CLI.preset_values("kt_pfa_femnist")
    ours = {perfedavg.COLUMNS[0]: 80.0, perfedavg.COLUMNS[1]: 88.0}
    run = {**v, "clients_per_round": 5, "local_epochs": 2, "eval_every": 50, "seed": 3}
    (line,) = p.reference_lines(run, ours)
    assert line.startswith("published (KT-PFA README") and "81.70" in line and "88.49" in line
    (line,) = p.reference_lines({**run, "shuffle": True, "kt_epochs": 1}, ours)
    assert "--shuffle off (this run: on)" in line and "--kt-epochs 10 (this run: 1)" in line


def test_own_earlier_run_is_a_regression_reference_never_published():
    """The main job's reference is jaxpfl's own earlier run: in its own setting the line says
    "regression reference", the word "published" appears nowhere (line, --list-presets)."""
    (ref,) = perfedavg.CLI.presets["default"].references
    assert ref.kind == "regression" and ref.label == "regression reference"
    p = perfedavg.parse([])
    run = {**perfedavg.CLI.preset_values("default"), "clients_per_round": 20,
           "data_clients": 50, "eval_clients": 10}
    ours = {perfedavg.COLUMNS[0]: 95.0, perfedavg.COLUMNS[1]: 99.0}
    (line,) = p.reference_lines(run, ours)
    assert line.startswith("regression reference (jaxpfl's own earlier run")
    assert "published" not in line.replace("not a published number", "")
    listed = perfedavg.CLI.format_presets().split("fmnist_writers:")[0]
    assert "compare:   regression reference: jaxpfl's own earlier run" in listed
    with pytest.raises(TypeError, match="kind"):
        cli.Reference("x", "m", ("c",), {(): (1.0,)}, kind="ours")
    # every other reference of every script is a published one, and says so
    for mod in (fedavg, perfedavg):
        for preset in mod.CLI.presets.values():
            for r in preset.references:
                assert (r.kind == "regression") == r.source.startswith("jaxpfl")


def test_pfllib_references_by_rounds():
    p = fedavg.parse(["--preset", "pfllib"])
    v = {**fedavg.CLI.preset_values("pfllib"), "clients_per_round": 20}
    ours = {"best acc_pooled (%)": 70.0}
    full, short = p.reference_lines(v, ours)
    assert full.startswith("published (PFLlib benchmark") and "85.85" in full
    assert short.startswith("not comparable") and "--rounds 25 (this run: 2000)" in short
    full, short = p.reference_lines({**v, "rounds": 25, "client_lr": 0.01}, ours)
    assert "--client-lr 0.005 (this run: 0.01)" in short and "--rounds 2000" in full
    assert fedavg.parse([]).reference_lines(v, ours) == ["published: none for preset default"]


# ------------------------------------------------------------------- PFLlib split (§7.3)

GOLDEN_FMNIST = [61, 240, 656, 1952, 1091, 4104, 3288, 3345, 4170, 2667,
                 4627, 5102, 6413, 469, 996, 146, 2202, 3624, 3817, 3523]  # fmt: skip


def test_pfllib_preset_uses_pfllib_split_and_loader():
    p = fedavg.parse(["--preset", "pfllib"])
    cfg, data = p[FedAvgConfig], p[DataConfig]
    assert cfg.drop_last and (cfg.client_lr, cfg.batch_size, cfg.local_epochs) == (0.005, 10, 1)
    assert p[Sampling] == Sampling(participation=1.0) and data.num_clients == 20
    assert data.partition_seed is None  # the partition's own stream (RandomState(1))
    assert fedavg.parse(["--preset", "pfllib", "--seed", "5"])[DataConfig] == data
    if not os.path.exists(os.path.join(FMNIST_DIR, "train-labels-idx1-ubyte.gz")):
        msg = f"Fashion-MNIST IDX files not found in {FMNIST_DIR} (dataset-fashion-mnist)"
        if os.environ.get("CI"):
            pytest.fail(msg)
        pytest.skip(msg)
    ds = cli.load_dataset(data)
    assert ds.train.sizes.tolist() == GOLDEN_FMNIST and ds.meta["seed"] == 1
    assert ds.train.sizes.sum() == 52493 and ds.test.sizes.sum() == 17507
    other = cli.load_dataset(dataclasses.replace(data, partition_seed=2))
    assert other.train.sizes.tolist() != GOLDEN_FMNIST  # an explicit --partition-seed moves it


def test_strategy_args():
    s = cli.strategy_from_args(StrategyArgs(strategy="chunked", chunk_size=3))
    assert s.name == "chunked" and s.chunk_size == 3 and s.exec.step_block is None
    assert cli.strategy_from_args(StrategyArgs()).name in ("sequential", "vmap")
    assert cli.strategy_from_args(StrategyArgs()).buckets == Strategy("vmap").buckets
    assert cli.strategy_from_args(StrategyArgs(strategy="vmap", buckets=2)).buckets == 2
    assert isinstance(fedavg.parse([])[RunConfig], RunConfig)


def test_format_value_and_namespace_builder():
    assert [cli.format_value(v) for v in (None, True, 0.5, (1, 2))] == ["none", "on", "0.5", "1 2"]
    ns = argparse.Namespace(clients=3, participation=None)
    assert cli.config_from_args(Sampling, ns) == Sampling(clients=3)
    np.testing.assert_equal(Sampling(participation=0.25).per_round(10), 2)


def test_data_flags_are_federates_arguments_with_its_defaults():
    """DataConfig is federate's arguments (one definition of each default): every argument but
    the raw data is a field (renamed per cli.FEDERATE_NAMES), with federate's own default."""
    import inspect

    from jaxpfl.data.federate import federate

    params = dict(inspect.signature(federate).parameters)
    params.pop("raw")
    fields = {f.name: f for f in dataclasses.fields(DataConfig) if not f.metadata.get("source")}
    assert {cli.FEDERATE_NAMES.get(n, n) for n in fields} == set(params)
    for name, f in fields.items():
        want = params[cli.FEDERATE_NAMES.get(name, name)].default
        if want is not inspect.Parameter.empty:  # partition: positional, the CLI picks dirichlet
            assert f.default == want, name


@pytest.mark.parametrize("field,bad", [
    ("alpha", 0.0), ("alpha", -1.0), ("alpha", float("nan")), ("train_frac", 1.5),
    ("val_frac", 1.0), ("holdout_frac", -0.1), ("n_eval", 0), ("num_clients", 0),
    ("partition_seed", -1), ("holdout_seed", -2), ("min_size", -1), ("min_samples", 0),
    ("shards_per_client", 0), ("class_per_client", 0), ("num_shards", 0), ("shard_size", 0),
    ("max_tries", 0), ("partition_batch_size", 0), ("num_clients", 2.5),
])
def test_data_flags_are_checked_by_federates_own_rule(field, bad):
    """One definition of what the partition accepts: the flag is refused (before any data is
    loaded) with the message federate itself gives, its argument named as the field."""
    from jaxpfl.data import DataError
    from jaxpfl.data.federate import federate
    from jaxpfl.data.sources import load_raw

    arg = cli.FEDERATE_NAMES.get(field, field)
    with pytest.raises(DataError) as lib:
        federate(load_raw("mnist_embedded"), "dirichlet", **{"num_clients": 4, arg: bad})
    with pytest.raises(ConfigError) as flag:
        DataConfig(**{field: bad})
    assert str(lib.value).startswith(f"{arg} must be ")
    assert str(flag.value) == f"{field} " + str(lib.value).split(" ", 1)[1]


def test_data_flags_help_is_federates_text():
    """The data flags' help is federate's ``Args:`` text (one definition), names shown as
    flags: a field documented in DataConfig too would be a second copy."""
    specs = {s.name: s for s in cli.field_specs(DataConfig)}
    own = cli._attribute_docs(DataConfig)
    assert not set(own) & {n for n in specs if n not in ("dataset", "data_dir", "partition_file")}
    assert specs["alpha"].help.startswith("Dirichlet concentration, > 0")
    assert "--holdout-frac" in specs["n_eval"].help
    assert specs["partition_seed"].help.startswith("seed of the partition")
