"""Run every preset of every experiment script at a chosen scale; record and report the results.

    python experiments/reproduce.py --list                                # what can run, and how
    python experiments/reproduce.py run fedavg:pfllib --scale cpu         # 3 seeds, ~30 min each
    python experiments/reproduce.py run fedala:pfllib --scale full --seeds 0
    python experiments/reproduce.py run fedavg:pfllib -- --data-dir DIR   # flags for the script
    python experiments/reproduce.py report                                # docs/results.md

A preset is named ``SCRIPT:PRESET`` (``fedala:pfllib``); the scripts are every
``experiments/*.py`` with a module-level :class:`~jaxpfl.script.ExperimentScript` (or
:class:`~jaxpfl.cli.ExperimentCli`) that has presets.
Scales: ``smoke`` (the preset's ``--smoke``: seconds, the numbers mean nothing; 1 seed),
``cpu`` (the preset with the overrides of its ``cpu`` :class:`~jaxpfl.cli.CpuScale`: under
about 30 minutes per seed on a 2-core CPU; 3 seeds), ``full`` (the preset unchanged; 3 seeds).

``run`` starts the script once per seed (``sys.executable``, from the repository root) into
``RUNS/<script>_<preset>/<scale>/seed<S>`` and writes ``RESULTS/<script>_<preset>_<scale>.json``
and ``.png`` (the headline metric per round, one line per seed). ``report`` rebuilds
docs/results.md from every JSON in the results folder.

Everything read here is a file the run wrote, never its printed text: summary.json (the
headline metric, and the ``references`` the script compared the run with: their setting,
whether the run's setting matches, their numbers and ours) and metrics.jsonl (the curves).
The headline metric is the last column of the preset's first :class:`~jaxpfl.cli.Reference`
(its ``reads`` says which summary.json entry and statistic it is); a preset without a
reference uses its :class:`~jaxpfl.cli.Headline`, else ``pers_acc_pooled`` best (else
``acc_pooled``, else the first accuracy in summary.json). A new preset needs no edit here: its
CPU scale, headline and baselines are fields of its :class:`~jaxpfl.cli.Preset`.
"""

from __future__ import annotations

import datetime
import importlib.util
import json
import os
import re
import shlex
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import ModuleType
from typing import Any, NamedTuple

REPO = Path(__file__).resolve().parents[1]
EXPERIMENTS = REPO / "experiments"
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from jaxpfl.cli import (  # noqa: E402
    REFERENCE_KINDS,
    Baseline,
    CliParser,
    CpuScale,
    ExperimentCli,
    Preset,
    Reference,
    format_value,
    main_guard,
)
from jaxpfl.errors import ConfigError, RunError  # noqa: E402

SCHEMA = "jaxpfl-reproduce/1"
SCALES = ("smoke", "cpu", "full")
DEFAULT_SEEDS: dict[str, tuple[int, ...]] = {"smoke": (0,), "cpu": (0, 1, 2), "full": (0, 1, 2)}
DEFAULT_RESULTS = REPO / "docs" / "results"
DEFAULT_RUNS = REPO / "runs" / "reproduce"
DEFAULT_REPORT = REPO / "docs" / "results.md"
#: A comparable gap larger than this (percentage points) needs an entry in EXPLANATIONS.
EXPLAIN_ABOVE = 1.0


#: ``script:preset:scale`` -> why our mean differs from a comparable published number by more
#: than EXPLAIN_ABOVE points. Entries only for results recorded in docs/results/.
EXPLANATIONS: dict[str, str] = {}


# ----------------------------------------------------------------------------- discovery


class Target(NamedTuple):
    script: str
    cli: ExperimentCli
    preset: Preset

    @property
    def name(self) -> str:
        return f"{self.script}:{self.preset.name}"


def load_script(path: Path) -> ModuleType:
    """``experiments/<name>.py`` as a module (registered, so its dataclasses resolve)."""
    modname = f"_experiment_{path.stem}"
    if modname not in sys.modules:
        spec = importlib.util.spec_from_file_location(modname, path)
        if spec is None or spec.loader is None:
            raise RunError(f"cannot load {path}")
        mod = importlib.util.module_from_spec(spec)
        sys.modules[modname] = mod
        spec.loader.exec_module(mod)
    return sys.modules[modname]


def scripts() -> dict[str, ExperimentCli]:
    """Every experiment script with presets: ``{name: its module-level ExperimentCli}``."""
    out: dict[str, ExperimentCli] = {}
    for path in sorted(EXPERIMENTS.glob("*.py")):
        if path.resolve() == Path(__file__).resolve():
            continue
        if not re.search(r"^\w+\s*=\s*Experiment(Cli|Script)\(", path.read_text(), re.M):
            continue
        mod = load_script(path)
        clis = [v for v in vars(mod).values() if isinstance(v, ExperimentCli) and v.presets]
        if clis:
            out[path.stem] = clis[0]
    return out


def targets() -> list[Target]:
    """Every ``script:preset``, scripts by name, presets in their script's order."""
    return [Target(s, cli, p) for s, cli in scripts().items() for p in cli.presets.values()]


def find_target(name: str) -> Target:
    found = {t.name: t for t in targets()}
    if name not in found:
        hint = "" if ":" in name else " (write SCRIPT:PRESET)"
        raise ConfigError(
            f"unknown preset {name!r}{hint}; choose one of: {', '.join(found)} (see --list)"
        )
    return found[name]


def parse_seeds(text: str) -> tuple[int, ...]:
    try:
        seeds = tuple(int(s) for s in text.split(","))
    except ValueError:
        seeds = ()
    if not seeds or min(seeds) < 0 or len(set(seeds)) != len(seeds):
        raise ConfigError(f"--seeds must be distinct integers >= 0 like 0,1,2, got {text!r}")
    return seeds


# ------------------------------------------------------------------------------ commands


def override_flags(cli: ExperimentCli, overrides: Mapping[str, Any]) -> list[str]:
    """Field overrides as the script's flags."""
    out: list[str] = []
    for name, v in overrides.items():
        if name not in cli.specs:
            raise TypeError(f"{cli.prog}: no flag for field {name!r}")
        spec = cli.specs[name]
        if spec.kind is bool and not spec.many and v is not None:
            out.append(spec.flag if v else "--no-" + spec.flag[2:])
        elif spec.many and v is not None:
            out += [spec.flag, *(format_value(a) for a in v)]
        else:
            out += [spec.flag, format_value(v)]
    return out


def scale_overrides(t: Target, scale: str) -> dict[str, Any]:
    if scale == "smoke":
        return dict(t.preset.smoke)
    if scale == "cpu":
        return dict(cpu_scale(t).overrides)
    return {}


def cpu_scale(t: Target) -> CpuScale:
    if t.preset.cpu is None:
        raise TypeError(f"preset {t.name} has no CPU scale: give its Preset a cpu=CpuScale(...)")
    return t.preset.cpu


def script_args(t: Target, scale: str) -> list[str]:
    """The script's flags for ``scale``, before seed, output and extra flags."""
    args = ["--preset", t.preset.name]
    if scale == "smoke":
        args.append("--smoke")
    elif scale == "cpu":
        args += override_flags(t.cli, cpu_scale(t).overrides)
    return args


def shown_path(path: Path) -> str:
    """``path`` relative to the repository when inside it (commands run from there)."""
    try:
        return str(path.resolve().relative_to(REPO))
    except ValueError:
        return str(path.resolve())


def command(t: Target, scale: str, seed: int, out: Path, extra: Sequence[str]) -> list[str]:
    return [
        sys.executable,
        f"experiments/{t.script}.py",
        *script_args(t, scale),
        "--seed",
        str(seed),
        "--out",
        shown_path(out),
        "--overwrite",
        *extra,
    ]


def format_list() -> str:
    """``--list``: every preset, its cost, and what each scale runs."""
    lines = [
        "Every preset of every experiment script (run one: reproduce.py run SCRIPT:PRESET "
        "--scale smoke|cpu|full). Each run adds --seed S --out "
        "RUNS/<script>_<preset>/<scale>/seed<S> --overwrite.",
        "",
    ]
    for t in targets():
        p = t.preset
        lines.append(f"{t.name}  {p.about}")
        lines.append(f"  cost:      {p.cost}")
        lines.append(f"  data:      {p.data}")
        for scale in SCALES:
            cmd = shlex.join(["python", f"experiments/{t.script}.py", *script_args(t, scale)])
            seeds = ",".join(map(str, DEFAULT_SEEDS[scale]))
            note = {
                "smoke": "seconds; the numbers mean nothing",
                "cpu": cpu_scale(t).why,
                "full": "the preset unchanged",
            }[scale]
            lines.append(f"  {scale + ':':10} {cmd}  [seeds {seeds}; {note}]")
        for ref in p.references:
            lines.append(f"  published: {ref.source}: {' / '.join(ref.columns)} {cells(ref)}")
        if not p.references:
            lines.append("  published: none")
        for b in t.preset.baselines:
            how = (f"the same command with {shlex.join(b.flags)}" if b.flags
                   else f"{b.metric[1]} {b.metric[0]} of the same run")
            lines.append(f"  baseline:  {b.name}: {how}")
        lines.append("")
    return "\n".join(lines).rstrip()


def cells(ref: Reference) -> str:
    """A reference's numbers as text (a long table by its size)."""
    if len(ref.values) > 2:
        return f"(a table of {len(ref.values)} settings of {', '.join(ref.cell)})"
    return "; ".join(
        ("(" + ", ".join(f"{n} {format_value(v)}" for n, v in zip(ref.cell, key)) + ") "
         if key else "")
        + " / ".join(f"{v:.2f}" for v in nums)
        for key, nums in ref.values.items()
    )


# ------------------------------------------------------------------------------- running


def headline_of(t: Target, summary: Mapping[str, Any]) -> dict[str, Any]:
    """The metric reported as ours: the last column of the first reference, else a fallback."""
    if t.preset.references:
        ref = t.preset.references[0]
        column = ref.columns[-1]
        metric, stat = ref.reads[column]
        return dict(
            column=column,
            metric=metric,
            statistic=stat,
            unit="%",
            chosen=f"the last column of the preset's first reference ({ref.source})",
        )
    if t.preset.headline is not None:
        h = t.preset.headline
        return dict(column=None, metric=h.metric, statistic=h.statistic,
                    history_metric=h.history_metric, label=h.label, unit="%",
                    chosen=f"no published reference for this preset: {h.why}")
    metrics = [k for k, v in summary.items() if "acc" in k and isinstance(v, dict) and "best" in v]
    pick = next((k for k in ("pers_acc_pooled", "acc_pooled") if k in metrics), None)
    pick = pick or (metrics[0] if metrics else None)
    if pick is None:
        raise RunError(f"{t.name}: summary.json has no accuracy metric to report")
    return dict(
        column=None,
        metric=pick,
        statistic="best",
        unit="%",
        chosen="no published reference for this preset: pers_acc_pooled best, else acc_pooled "
        "best, else the first accuracy metric in summary.json",
    )


def value_of(summary: Mapping[str, Any], metric: str, stat: str) -> float | None:
    entry = summary.get(metric)
    if not isinstance(entry, dict) or entry.get(stat) is None:
        return None
    return 100.0 * float(entry[stat])


def mean_std(values: Sequence[float | None]) -> tuple[float | None, float | None]:
    """Mean and population standard deviation (None when a value is missing)."""
    nums = [float(v) for v in values if v is not None]
    if not nums or len(nums) != len(values):
        return None, None
    m = sum(nums) / len(nums)
    return m, (sum((v - m) ** 2 for v in nums) / len(nums)) ** 0.5


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    return [json.loads(x) for x in path.read_text().splitlines() if x.strip()]


def run_seed(argv: list[str], out: Path) -> tuple[float, list[str]]:
    """Run one seed; echo and keep its stdout. Returns (wall seconds, stdout lines)."""
    print(f"$ {shlex.join(argv)}", file=sys.stderr, flush=True)
    tic = time.perf_counter()
    proc = subprocess.Popen(argv, cwd=REPO, stdout=subprocess.PIPE, text=True, bufsize=1)
    assert proc.stdout is not None
    lines = []
    for line in proc.stdout:
        sys.stdout.write(line)
        lines.append(line.rstrip("\n"))
    status = proc.wait()
    wall = time.perf_counter() - tic
    sys.stdout.flush()
    if status != 0:
        raise RunError(
            f"{shlex.join(argv[1:])} exited with status {status} (its error is above); no "
            "results written"
        )
    out.mkdir(parents=True, exist_ok=True)
    (out / "reproduce_stdout.txt").write_text("\n".join(lines) + "\n")
    record = dict(argv=argv[1:], wall_seconds=wall, lines=lines)
    (out / "reproduce_seed.json").write_text(json.dumps(record, indent=2) + "\n")
    return wall, lines


def finished_seed(argv: list[str], out: Path) -> tuple[float, list[str]] | None:
    """(wall seconds, stdout lines) of a finished run of exactly ``argv`` in ``out``, if any.

    A seed counts as finished only when ``run_seed`` recorded it with the same script flags
    (the interpreter path aside) and its summary.json exists; anything else is run again.
    """
    record_path = out / "reproduce_seed.json"
    if not (record_path.exists() and (out / "summary.json").exists()):
        return None
    record = json.loads(record_path.read_text())
    if record.get("argv") != argv[1:]:
        return None
    return float(record["wall_seconds"]), list(record["lines"])


def run_target(
    t: Target,
    scale: str,
    seeds: Sequence[int],
    results_dir: Path,
    runs_dir: Path,
    extra: Sequence[str] = (),
    reuse: bool = False,
) -> dict[str, Any]:
    """Run ``t`` at ``scale`` once per seed; write and return the results JSON (and plot).

    With ``reuse``, a seed already finished by the same command (see :func:`finished_seed`)
    is read back instead of run again, so seeds can be run in separate sittings and joined.
    """
    if scale == "cpu":
        cpu_scale(t)  # a preset without a CPU scale is found before any work
    base = runs_dir / f"{t.script}_{t.preset.name}" / scale
    per_seed: list[dict[str, Any]] = []
    histories: dict[int, list[dict[str, Any]]] = {}
    summaries: dict[int, dict[str, Any]] = {}
    for seed in seeds:
        out = base / f"seed{seed}"
        argv = command(t, scale, seed, out, extra)
        wall, lines = run_or_reuse(argv, out, reuse)
        summary = json.loads((out / "summary.json").read_text())
        summaries[seed] = summary
        histories[seed] = read_jsonl(out / "metrics.jsonl")
        per_seed.append(
            dict(
                seed=seed,
                command=shlex.join(argv),
                run_dir=shown_path(out),
                wall_seconds=wall,
                train_seconds=summary.get("train_seconds"),
                rounds=summary.get("rounds"),
                references=summary.get("references"),
                curves=curves_of(histories[seed], t.preset.curves),
            )
        )
    head = headline_of(t, summaries[seeds[0]])
    for row in per_seed:
        row["value"] = value_of(summaries[row["seed"]], head["metric"], head["statistic"])
    mean, std = mean_std([row["value"] for row in per_seed])
    baselines, baseline_histories = [], {}
    for b in t.preset.baselines:
        entry, hists = baseline_entry(t, b, scale, seeds, base, extra, reuse, head, summaries,
                                      mean)
        baselines.append(entry)
        baseline_histories[b.name] = hists
    references, gaps = [], []
    for ref in t.preset.references:
        entry = reference_entry(t, ref, per_seed)
        references.append(entry)
        for c, pub in (entry["published"] or {}).items():
            ours = entry["ours"][c]["mean"]
            gap = None if ours is None else ours - pub
            entry["gap"][c] = gap
            gaps.append(dict(source=ref.source, column=c, ours=ours, published=pub, gap=gap,
                             kind=ref.kind))
    walls = [row["wall_seconds"] for row in per_seed]
    stem = f"{t.script}_{t.preset.name}_{scale}"
    seeds_text = ",".join(map(str, seeds))
    doc = dict(
        schema=SCHEMA,
        script=t.script,
        preset=t.preset.name,
        scale=scale,
        about=t.preset.about,
        data=t.preset.data,
        cost=t.preset.cost,
        scale_overrides=scale_overrides(t, scale),
        scale_why=cpu_scale(t).why if scale == "cpu" else None,
        extra_args=list(extra),
        reproduce_command=shlex.join(
            ["python", "experiments/reproduce.py", "run", t.name, "--scale", scale,
             "--seeds", seeds_text, *(["--", *extra] if extra else [])]
        ),
        cwd=str(REPO),
        commands=[row["command"] for row in per_seed],
        seeds=list(seeds),
        headline=head,
        per_seed=per_seed,
        mean=mean,
        std=std,
        wall_seconds_mean=sum(walls) / len(walls),
        references=references,
        gaps=gaps,
        has_published=any(r.kind == "published" for r in t.preset.references),
        baselines=baselines,
        machine=machine_info(),
        plot=f"{stem}.png",
        created=datetime.datetime.now().isoformat(timespec="seconds"),
    )
    results_dir.mkdir(parents=True, exist_ok=True)
    plot(doc, histories, results_dir / f"{stem}.png", baseline_histories)
    (results_dir / f"{stem}.json").write_text(json.dumps(doc, indent=2) + "\n")
    return doc


def curves_of(hist: Sequence[Mapping[str, Any]], names: Sequence[str]) -> dict[str, list]:
    """``{metric: [[round, value], ...]}`` of each per-round metric in ``names`` the run
    recorded (a preset's ``curves``)."""
    out = {}
    for name in names:
        pts = [[r["round"], r[name]] for r in hist if isinstance(r.get(name), int | float)]
        if pts:
            out[name] = pts
    return out


def curves_table(doc: Mapping[str, Any], rows: int = 11) -> list[str]:
    """The preset's per-round curves as a Markdown table: at most ``rows`` evaluated rounds
    (evenly spaced, first and last included), each metric's mean over the seeds (accuracies
    and shares in %)."""
    per_seed = [row.get("curves") or {} for row in doc["per_seed"]]
    names = [n for n in dict.fromkeys(k for c in per_seed for k in c)]
    if not names:
        return []
    maps = [{n: dict((r, v) for r, v in c.get(n, [])) for n in names} for c in per_seed]
    common = sorted(set.intersection(*(set(m[n]) for m in maps for n in names)))
    if not common:
        return []
    step = max(1, -(-(len(common) - 1) // max(rows - 1, 1)))
    picked = sorted({*common[::step], common[-1]})

    def shown(name: str, vals: list[float]) -> str:
        m = sum(vals) / len(vals)
        return f"{m:.3f}" if "lambda" in name or "delta" in name else f"{100 * m:.2f}"

    lines = [f"Per round, `{doc['script']}:{doc['preset']}` at scale {doc['scale']} (mean over "
             f"seeds {','.join(map(str, doc['seeds']))}; λ as is, the rest in %):", "",
             "| round | " + " | ".join(f"`{n}`" for n in names) + " |",
             "|---" * (len(names) + 1) + "|"]
    for r in picked:
        lines.append(f"| {r} | " + " | ".join(shown(n, [m[n][r] for m in maps]) for n in names)
                     + " |")
    return [*lines, ""]


def run_or_reuse(argv: list[str], out: Path, reuse: bool) -> tuple[float, list[str]]:
    """(wall seconds, stdout lines): read back with ``reuse`` when finished, else run."""
    done = finished_seed(argv, out) if reuse else None
    if done is not None:
        print(f"reusing {shown_path(out)} (finished by the same command)", file=sys.stderr)
        return done
    return run_seed(argv, out)


def slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "_", text.lower()).strip("_")


def baseline_entry(
    t: Target,
    b: Baseline,
    scale: str,
    seeds: Sequence[int],
    base: Path,
    extra: Sequence[str],
    reuse: bool,
    head: Mapping[str, Any],
    summaries: Mapping[int, Mapping[str, Any]],
    ours: float | None,
) -> tuple[dict[str, Any], list[list[dict[str, Any]]]]:
    """One baseline over the same seeds: (its entry: headline per seed, mean ± std, ours − it;
    its runs' histories, for the plot)."""
    commands, walls, values, histories = [], [], [], []
    for seed in seeds:
        if b.metric is not None:
            values.append(value_of(summaries[seed], *b.metric))
            drawn = head.get("history_metric", head["metric"]).split("|")[0]
            histories.append([{"round": r["round"], drawn: r[b.metric[0]]}
                              for r in read_jsonl(base / f"seed{seed}" / "metrics.jsonl")
                              if b.metric[0] in r])  # our run's own curve of that metric
            continue
        out = base / f"seed{seed}_{slug(b.name)}"
        argv = command(t, scale, seed, out, [*b.flags, *extra])
        wall, _ = run_or_reuse(argv, out, reuse)
        summary = json.loads((out / "summary.json").read_text())
        values.append(value_of(summary, head["metric"], head["statistic"]))
        histories.append(read_jsonl(out / "metrics.jsonl"))
        commands.append(shlex.join(argv))
        walls.append(wall)
    m, sd = mean_std(values)
    return dict(
        name=b.name,
        flags=list(b.flags),
        metric=(f"{b.metric[1]} {b.metric[0]} of our run" if b.metric
                else f"{label_of(head)}, as ours"),
        per_seed=values,
        mean=m,
        std=sd,
        ours_minus_baseline=None if m is None or ours is None else ours - m,
        commands=commands,
        wall_seconds_mean=sum(walls) / len(walls) if walls else None,
    ), histories


def reference_entry(
    t: Target,
    ref: Reference,
    per_seed: Sequence[Mapping[str, Any]],
) -> dict[str, Any]:
    """One reference over the seeds, from what each seed's summary.json recorded
    (``references``, written by the script's ``Parsed.report_references``): whether every
    seed's run was in the reference's setting, our value of each column (mean ± std over the
    seeds) and the reference's numbers for the run's cell."""
    found = []
    for row in per_seed:
        recorded = [e for e in row.get("references") or ()
                    if e["source"] == ref.source and e["kind"] == ref.kind]
        found.append(recorded[0] if recorded else None)
    known = bool(found) and all(e is not None for e in found)
    comparable = all(e["comparable"] for e in found) if known else None
    ours = {}
    for c in ref.columns:
        metric, stat = ref.reads[c]
        vals = [None if e is None else e["ours"].get(c) for e in found]
        m, sd = mean_std(vals)
        ours[c] = dict(metric=metric, statistic=stat, per_seed=vals, mean=m, std=sd)
    first = found[0] if known else None
    reasons = None
    if first is not None and not first["comparable"]:
        reasons = "; ".join(first["not_comparable_because"])
    return dict(
        source=ref.source,
        kind=ref.kind,
        label=ref.label,
        metric=ref.metric,
        columns=list(ref.columns),
        cells=[
            dict(cell=dict(zip(ref.cell, key)), values=dict(zip(ref.columns, nums)))
            for key, nums in ref.values.items()
        ],
        setting=None if first is None else first["setting"],
        comparable=comparable,
        not_comparable_because=reasons,
        cell=first["cell"] if comparable else None,
        published=first["published"] if comparable else None,
        ours=ours,
        gap={},
    )


def machine_info() -> dict[str, Any]:
    """:func:`jaxpfl.machine.machine` (called after the runs: on a GPU the parent must not
    hold the device while a child trains)."""
    from jaxpfl.machine import machine

    return machine()


def label_of(head: Mapping[str, Any]) -> str:
    """The headline as read in the report: its ``label``, else ``statistic metric``."""
    return head.get("label") or f"{head['statistic']} {head['metric']}"


def curve(hist: Sequence[Mapping[str, Any]], head: Mapping[str, Any]) -> list[tuple]:
    """(round, %) of the headline's per-round metric: the first ``history_metric`` name the
    run recorded."""
    names = head.get("history_metric", head["metric"]).split("|")
    key = next((k for k in names if any(k in r for r in hist)), names[0])
    return [(r["round"], 100 * r[key]) for r in hist if key in r]


def plot(
    doc: Mapping[str, Any],
    histories: Mapping[int, Sequence[Mapping]],
    path: Path,
    baseline_histories: Mapping[str, Sequence[Sequence[Mapping]]] | None = None,
) -> None:
    """The headline metric per round, one line per seed; comparable published numbers dashed,
    baselines run on the same data dotted (one line per seed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    head = doc["headline"]
    fig, ax = plt.subplots(figsize=(6.4, 4.0))
    for seed, hist in histories.items():
        pts = curve(hist, head)
        if pts:
            ax.plot(*zip(*pts), marker="." if len(pts) < 30 else None, label=f"seed {seed}")
    for name, hists in (baseline_histories or {}).items():
        for i, hist in enumerate(hists):
            pts = curve(hist, head)
            if pts:
                ax.plot(*zip(*pts), ls=":", color="gray" if "local" in name else "black",
                        lw=1, label=f"{name} (baseline)" if i == 0 else None)
    for g in doc["gaps"]:
        if g["column"] == head["column"]:
            ax.axhline(g["published"], ls="--", color="gray", lw=1)
            what = "published" if g.get("kind", "published") == "published" else "regression ref."
            ax.annotate(f"{what} {g['published']:.2f}", (0, g["published"]), fontsize=7,
                        xytext=(2, 2), textcoords="offset points", color="gray")
    ax.set_xlabel("round")
    ax.set_ylabel(f"{head.get('history_metric', head['metric']).replace('|', ' / ')} (%)")
    ax.set_title(f"{doc['script']}:{doc['preset']} ({doc['scale']}), "
                 f"{label_of(head)} reported", fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


# -------------------------------------------------------------------------------- report


def load_results(results_dir: Path) -> list[dict[str, Any]]:
    """Every results JSON (this schema) in ``results_dir``, by script, preset and scale."""
    docs = []
    for path in sorted(results_dir.glob("*.json")):
        try:
            doc = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError) as e:
            print(f"warning: {path}: skipped ({e})", file=sys.stderr)
            continue
        if isinstance(doc, dict) and doc.get("schema") == SCHEMA:
            docs.append(doc)
        else:
            print(f"warning: {path}: not a reproduce.py result, skipped", file=sys.stderr)
    order = {t.name: i for i, t in enumerate(targets())}
    docs.sort(key=lambda d: (d["script"], order.get(f"{d['script']}:{d['preset']}", 1 << 30),
                             d["preset"], SCALES.index(d["scale"])))
    return docs


def cell_text(text: Any) -> str:
    return " ".join(str(text).split()).replace("|", "\\|")


def pct(v: float | None) -> str:
    return "n/a" if v is None else f"{v:.2f}"


def wall_text(seconds: float) -> str:
    return f"{seconds:.0f} s" if seconds < 120 else f"{seconds / 60:.1f} min"


def machine_text(m: Mapping[str, Any]) -> str:
    backend = str(m.get("backend", "cpu"))
    if backend != "cpu" and m.get("device_kind"):
        n = m.get("devices", 1)
        return f"{m['device_kind']}" + (f" x{n}" if n and n > 1 else "") + f" ({backend})"
    return f"{m.get('cpu', '?')} ({m.get('cpus', '?')} cores)"


def baselines_text(doc: Mapping[str, Any]) -> str:
    """The baselines on the same data: ``name mean ± std (ours − it: +d)``."""
    parts = []
    for b in doc.get("baselines", []):
        nums = "n/a" if b["mean"] is None else f"{b['mean']:.2f} ± {b['std']:.2f}"
        d = b["ours_minus_baseline"]
        parts.append(f"{b['name']}: {nums}" + ("" if d is None else f" (ours − it: {d:+.2f})"))
    return "<br>".join(parts)


def published_text(doc: Mapping[str, Any]) -> str:
    if not doc["references"]:
        text = "none: no published number for this preset"
        if doc.get("baselines"):
            text += "; baselines on the same data, same seeds:<br>" + baselines_text(doc)
        return text
    parts = []
    column = doc["headline"]["column"]
    for ref in doc["references"]:
        c = column if column in ref["columns"] else ref["columns"][-1]
        if ref["published"]:
            nums = pct(ref["published"][c])
        elif len(ref["cells"]) == 1:
            nums = pct(ref["cells"][0]["values"][c])
        else:
            nums = f"a table of {len(ref['cells'])} settings"
        state = {True: "comparable", False: "not comparable", None: "comparability unknown"}
        why = ref["not_comparable_because"]
        kind = "" if ref.get("kind", "published") == "published" else f"{ref['label']}: "
        parts.append(f"{kind}{nums} ({ref['source']}; {state[ref['comparable']]}"
                     + (f": {why}" if why else "") + ")")
    return "<br>".join(parts)


def gap_text(doc: Mapping[str, Any], notes: list[str]) -> str:
    if not doc["references"]:
        diffs = [f"{b['ours_minus_baseline']:+.2f} vs {b['name'].split(' (')[0]}"
                 for b in doc.get("baselines", []) if b["ours_minus_baseline"] is not None]
        return "no published number" + (": " + "<br>".join(diffs) if diffs else "")
    if not doc["gaps"]:
        return "not comparable"
    key = f"{doc['script']}:{doc['preset']}:{doc['scale']}"
    parts = []
    for g in doc["gaps"]:
        if g["gap"] is None:
            parts.append(f"n/a ({g['source']})")
            continue
        text = f"{g['gap']:+.2f}"
        if g["column"] != doc["headline"]["column"]:
            text += f" ({g['column']}: ours {pct(g['ours'])})"
        if abs(g["gap"]) > EXPLAIN_ABOVE:
            if key in EXPLANATIONS:
                note = f"{key}: {EXPLANATIONS[key]}"
                if note not in notes:
                    notes.append(note)
                text += f" (note {notes.index(note) + 1})"
            else:
                text += " unexplained"
        parts.append(text)
    return "<br>".join(parts)


def run_commands() -> list[str]:
    lines = []
    for t in targets():
        lines.append(f"    python experiments/reproduce.py run {t.name} --scale cpu   "
                     f"# {cpu_scale(t).why}")
    return lines


def render_report(results_dir: Path, out: Path) -> str:
    """docs/results.md from every results JSON in ``results_dir``."""
    docs = load_results(results_dir)
    rel = os.path.relpath(results_dir.resolve(), out.resolve().parent)
    lines = [
        "# Reproduction results",
        "",
        "<!-- Generated by `python experiments/reproduce.py report`: do not edit by hand. -->",
        "",
        f"Generated by `python experiments/reproduce.py report` from the JSON files in "
        f"`{shown_path(results_dir)}/`, which `python experiments/reproduce.py run "
        "SCRIPT:PRESET --scale smoke|cpu|full` writes; no number here is typed by hand. "
        "Scales: `smoke` (seconds, the numbers mean nothing), `cpu` (the preset shortened "
        "to about 30 minutes per seed on a 2-core CPU: the preset's `cpu` scale), `full` "
        "(the preset unchanged). *Ours* is the headline metric (the last column of the "
        "preset's first reference, else the preset's own `headline`, else best "
        "`pers_acc_pooled` / `acc_pooled`): mean ± population std over the seeds, in %. A "
        "preset without a published number is read against baselines run on the same data "
        "with the same seeds (the preset's `baselines`). A reference's number is compared "
        "only where the script judged the run's setting the same (the `references` its run "
        "recorded in summary.json); *gap* = ours − published in points, and a gap "
        f"over {EXPLAIN_ABOVE:g} point needs an entry in `EXPLANATIONS` (else it reads "
        "*unexplained*). A *regression reference* is jaxpfl's own earlier run of the same "
        "preset, not a published number: its gap only shows whether the code still gives "
        "what it gave.",
        "",
    ]
    if not docs:
        lines += [
            "No results have been recorded yet. Record them with (one preset at a time; "
            "`--list` shows every preset, its cost and what each scale runs):",
            "",
            "    python experiments/reproduce.py --list",
            *run_commands(),
            "    python experiments/reproduce.py report",
            "",
        ]
        return "\n".join(lines)
    clis = scripts()
    for script in dict.fromkeys(d["script"] for d in docs):
        title = clis[script].description.split(":")[0] if script in clis else script
        lines += [f"## {script}: {title}", ""]
        lines += [
            "| preset | scale | metric | ours (mean ± std, %) | published or regression reference "
            "(source) | gap (points) "
            "| seeds | wall per seed | machine | plot |",
            "|---|---|---|---|---|---|---|---|---|---|",
        ]
        notes: list[str] = []
        for d in (d for d in docs if d["script"] == script):
            head = d["headline"]
            ours = "n/a" if d["mean"] is None else f"{d['mean']:.2f} ± {d['std']:.2f}"
            row = [
                d["preset"],
                d["scale"],
                label_of(head),
                ours,
                published_text(d),
                gap_text(d, notes),
                ",".join(map(str, d["seeds"])),
                wall_text(d["wall_seconds_mean"]),
                machine_text(d.get("machine", {})),
                f"[png]({rel}/{d['plot']})",
            ]
            lines.append("| " + " | ".join(cell_text(x) for x in row) + " |")
        lines.append("")
        for i, n in enumerate(notes, 1):
            lines.append(f"{i}. {n}")
        if notes:
            lines.append("")
        for d in (d for d in docs if d["script"] == script):
            lines += curves_table(d)
        lines.append("Commands:")
        lines.append("")
        for d in (d for d in docs if d["script"] == script):
            lines.append(f"    {d['reproduce_command']}")
        lines.append("")
    ran = {f"{d['script']}:{d['preset']}" for d in docs}
    missing = [t.name for t in targets() if t.name not in ran]
    if missing:
        lines += ["## Not recorded yet", "", ", ".join(missing), ""]
    return "\n".join(lines)


# ---------------------------------------------------------------------------------- main


def build_parser() -> CliParser:
    p = CliParser(
        prog="reproduce.py",
        description="Run the experiment scripts' presets at a scale and report the results. "
        "Flags after -- go to the script (e.g. -- --data-dir DIR).",
    )
    p.add_argument("--list", action="store_true", help="every preset, its cost and each scale")
    sub = p.add_subparsers(dest="cmd", metavar="{run,report}")
    r = sub.add_parser("run", help="run SCRIPT:PRESET once per seed and record the result")
    r.add_argument("target", metavar="SCRIPT:PRESET")
    r.add_argument("--scale", choices=SCALES, default="cpu", help="[default: cpu]")
    r.add_argument("--seeds", help="comma-separated seeds [default: 0 for smoke, else 0,1,2]")
    r.add_argument("--results-dir", default=str(DEFAULT_RESULTS), help="[default: docs/results]")
    r.add_argument("--runs-dir", default=str(DEFAULT_RUNS), help="[default: runs/reproduce]")
    r.add_argument(
        "--reuse",
        action="store_true",
        help="read back seeds an earlier `run` finished with the same command instead of "
        "running them again (run seeds in separate sittings, then join them)",
    )
    g = sub.add_parser("report", help="rebuild docs/results.md from the results JSONs")
    g.add_argument("--results-dir", default=str(DEFAULT_RESULTS), help="[default: docs/results]")
    g.add_argument("--out", default=str(DEFAULT_REPORT), help="[default: docs/results.md]")
    return p


@main_guard
def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    extra: list[str] = []
    if "--" in argv:
        i = argv.index("--")
        argv, extra = argv[:i], argv[i + 1 :]
    parser = build_parser()
    args = parser.parse_args(argv)
    if extra and args.cmd != "run":
        parser.error("flags after -- are for the script of `run` only")
    if args.list:
        print(format_list())
        return 0
    if args.cmd == "run":
        t = find_target(args.target)
        seeds = parse_seeds(args.seeds) if args.seeds else DEFAULT_SEEDS[args.scale]
        doc = run_target(
            t, args.scale, seeds, Path(args.results_dir), Path(args.runs_dir), extra, args.reuse
        )
        head = doc["headline"]
        print(f"\n{t.name} ({args.scale}, seeds {','.join(map(str, seeds))}): "
              f"{label_of(head)} {pct(doc['mean'])} ± {pct(doc['std'])} %")
        for g in doc["gaps"]:
            print(f"  vs {g['source']}: {REFERENCE_KINDS[g['kind']]} {g['published']:.2f}, gap "
                  f"{'n/a' if g['gap'] is None else format(g['gap'], '+.2f')} points")
        for b in doc["baselines"]:
            d = b["ours_minus_baseline"]
            print(f"  baseline {b['name']}: {pct(b['mean'])} ± {pct(b['std'])} %, ours − it "
                  f"{'n/a' if d is None else format(d, '+.2f')} points")
        stem = Path(args.results_dir) / f"{t.script}_{t.preset.name}_{args.scale}"
        print(f"wrote {stem}.json and {stem}.png", file=sys.stderr)
        return 0
    if args.cmd == "report":
        out = Path(args.out)
        text = render_report(Path(args.results_dir), out)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(text.rstrip("\n") + "\n")
        print(f"wrote {out}", file=sys.stderr)
        return 0
    parser.error("give --list, run SCRIPT:PRESET or report")


if __name__ == "__main__":
    sys.exit(main())
