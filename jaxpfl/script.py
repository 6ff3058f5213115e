"""Experiment scripts: an algorithm's config sections, its build function and its presets; the
rest of a script (sampling, model, rounds, seeds, data, run, device mapping, the call of
``jaxpfl.experiment``, the printed table and the reference comparisons) is common and lives
here. ``experiments/<name>.py`` is its presets and one :class:`ExperimentScript`.
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from jaxpfl.cli import (
    DataConfig,
    ExperimentCli,
    Parsed,
    Preset,
    Sampling,
    StrategyArgs,
    load_dataset,
    main_guard,
    prepare_dir,
    strategy_from_args,
)
from jaxpfl.errors import ConfigError
from jaxpfl.models import get_model
from jaxpfl.pipeline import ExperimentConfig, accuracy_keys, experiment
from jaxpfl.run import Phase, RunConfig


def _table(summary: Mapping[str, Any], keys: Sequence[str]) -> list[str]:
    """``| metric | final | best | best round | last-10 mean |`` of accuracy ``keys``."""
    lines = ["| metric | final | best | best round | last-10 mean |", "|---|---|---|---|---|"]
    for key in keys:
        v = summary[key]
        best_round = v.get("best_round", "")
        lines.append(f"| {key} | {100 * v['final']:.2f} | {100 * v['best']:.2f} | {best_round} "
                     f"| {100 * v['last10_mean']:.2f} |")
    return lines


def result_table(parsed: Parsed, ds: Any, results: Sequence[Mapping[str, Any]], m: int
                 ) -> list[str]:
    """The default printed result: a header line and, for the first seed, the table of every
    accuracy metric of its summary (and the validation-selected test metrics, if any)."""
    s = results[0]["summary"]
    wall = sum(r["final"]["wall_seconds"] for r in results) / len(results)
    held = len(ds.eval_clients)
    lines = [
        "",
        f"{parsed.cli.title} on {ds.name}: {ds.num_clients} clients"
        + (f" ({len(ds.train_clients)} train / {held} held out)" if held else "")
        + f", {m} per round, {s['rounds']} rounds, train {s['train_seconds']:.1f} s, "
        f"wall {wall:.0f} s per run" + (f", seeds {len(results)}" if len(results) > 1 else ""),
        *_table(s, accuracy_keys(s)),
    ]
    sel = s.get("val_selected")
    if sel:
        lines.append(
            f"val_selected ({sel['model']} model, round {sel['round']}, val acc_mean "
            f"{100 * sel['val_acc_mean']:.2f}): test acc_mean {100 * sel['acc_mean']:.2f}, min "
            f"{100 * sel['acc_min']:.2f}, max {100 * sel['acc_max']:.2f}, std "
            f"{100 * sel['acc_std']:.2f}"
        )
    return lines


class ExperimentScript(ExperimentCli):
    """An experiment script of ``experiments/``: its algorithm's config sections, how to build
    the algorithm, and its presets. Everything else is common and lives here: the sections
    clients per round (:class:`Sampling`), experiment (``jaxpfl.pipeline.ExperimentConfig``:
    rounds, model, evaluation sample, seeds), data (:class:`DataConfig`), run
    (``jaxpfl.run.RunConfig``) and device mapping (:class:`StrategyArgs`); and :meth:`main`,
    which parses the command line, loads the data, builds the model and the algorithm, runs
    ``jaxpfl.experiment`` once per seed, prints the result table and the reference
    comparisons (recorded in summary.json).

    ``build(parsed, model, dataset)`` returns an ``Algorithm``, or ``[(name, algorithm,
    rounds), ...]`` phases. ``algorithm``: ``(title, dataclass)`` sections of the algorithm's
    own settings (field names unique across every section). ``exclude``: ``{section title:
    fields}`` left out of a common section (e.g. ``rounds`` when the algorithm's config has
    its own). ``data(parsed)`` replaces the default loader (:func:`load_dataset`) for data
    that is built rather than partitioned; ``save_split``: write partition.npz. ``table``
    replaces :func:`result_table`. ``eval_clients`` and ``record`` go to ``experiment``.
    Other arguments are :class:`ExperimentCli`'s.
    """

    def __init__(
        self,
        title: str,
        description: str,
        algorithm: Sequence[tuple],
        build: Callable[..., Any],
        presets: Sequence[Preset] = (),
        *,
        prog: str,
        exclude: Mapping[str, Sequence[str]] | None = None,
        data: Callable[[Parsed], Any] | None = None,
        save_split: Callable[[Parsed], bool] | None = None,
        table: Callable[..., list[str]] | None = None,
        eval_clients: str = "auto",
        record: Callable[[Parsed], Any] | None = None,
        defaults: Mapping[str, Any] | None = None,
        **kwargs: Any,
    ):
        exclude = dict(exclude or {})
        common = [
            ("experiment", ExperimentConfig, tuple(exclude.pop("experiment", ()))),
            ("data", DataConfig, tuple(exclude.pop("data", ()))),
            ("run", RunConfig, ("strategy", "config_for_hash", *exclude.pop("run", ()))),
            ("device mapping", StrategyArgs, tuple(exclude.pop("device mapping", ()))),
        ]
        if exclude:
            raise TypeError(f"exclude: unknown sections {sorted(exclude)}")
        sections = [("clients per round", Sampling), *algorithm, *common]
        derived = {"clients_per_round": "clients/round", "data_clients": "clients in the data",
                   "eval_clients": "held-out clients", **kwargs.pop("derived", {})}
        exclusive = [("seed", "seeds"), *kwargs.pop("exclusive", ())]
        base = {"out": os.path.join("runs", prog.removesuffix(".py")), **(defaults or {})}
        super().__init__(description, sections, presets, defaults=base, derived=derived,
                         exclusive=exclusive, prog=prog, **kwargs)
        self.title, self.build, self.data = title, build, data
        self.save_split, self.table = save_split, table or result_table
        self.eval_clients, self.record = eval_clients, record

    def main(self, argv: Sequence[str] | None = None) -> Any:
        """Run the script (one-line errors, exit status 2: :func:`main_guard`)."""
        return main_guard(self._main)(argv)

    def _main(self, argv: Sequence[str] | None) -> Any:
        parsed = self.parse(argv)
        rc: RunConfig = parsed[RunConfig]
        exp: ExperimentConfig = parsed[ExperimentConfig]
        if rc.out:
            prepare_dir(rc.out)
        ds = self.data(parsed) if self.data else load_dataset(parsed[DataConfig])
        if len(ds.train_clients) == 0:
            raise ConfigError("every client is held out; lower --holdout-frac or --n-eval")
        m = parsed[Sampling].per_round(len(ds.train_clients))
        model = get_model(exp.model, ds.input_shape, ds.num_classes)
        strategy = strategy_from_args(parsed[StrategyArgs])
        built = self.build(parsed, model, ds)
        algorithm = built if not isinstance(built, list) else [
            Phase(name, alg, rounds, m) for name, alg, rounds in built]
        seeds = list(exp.seeds or (rc.seed,))
        record = self.record(parsed) if self.record else None
        results = []
        for seed in seeds:
            out = rc.out if len(seeds) == 1 or not rc.out else os.path.join(rc.out, f"seed{seed}")
            run_rc = dataclasses.replace(rc, seed=seed, out=out)
            text = parsed.config_text(run_rc, partition_hash=ds.meta.get("hash"),
                                      labels_sha256=ds.meta.get("labels_sha256"))
            run_rc = dataclasses.replace(run_rc, strategy=strategy, config_for_hash=text)
            results.append(experiment(
                algorithm, ds, model, rounds=exp.rounds, clients_per_round=m, config=run_rc,
                n_eval_clients=exp.n_eval_clients, clients=self.eval_clients, record=record,
                save_split=self.save_split(parsed) if self.save_split else True,
                title=f"{self.title} on {ds.name}",
            ))
        for line in self.table(parsed, ds, results, m):
            print(line)
        run_values = {**parsed.values, "clients_per_round": m, "data_clients": ds.num_clients,
                      "eval_clients": len(ds.eval_clients)}
        summaries = [r["summary"] for r in results]
        refs = parsed.report_references(run_values, summaries, rc.out if len(seeds) == 1 else None)
        if rc.out and len(seeds) > 1:
            with open(os.path.join(rc.out, "seeds.json"), "w") as f:
                json.dump({"seeds": seeds, "finals": [r["final"] for r in results],
                           "references": refs}, f, indent=2)
        if rc.out:
            print(f"metrics, summary and plot in {rc.out}/", file=sys.stderr)
        return results[0] if len(results) == 1 else results


__all__ = ["ExperimentScript", "result_table"]
