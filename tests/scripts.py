"""Helpers of the end-to-end tests (not collected): the experiment scripts as modules,
fixture data in each dataset's on-disk layout, and a smoke run of a preset."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]


def load_script(name: str):
    """``experiments/<name>.py`` as a module (registered, so its dataclasses resolve)."""
    modname = f"_experiment_{name}"
    if modname not in sys.modules:
        spec = importlib.util.spec_from_file_location(modname, REPO / "experiments" / f"{name}.py")
        mod = importlib.util.module_from_spec(spec)
        sys.modules[modname] = mod
        spec.loader.exec_module(mod)
    return sys.modules[modname]


def _fixtures():
    spec = importlib.util.spec_from_file_location(
        "make_fixtures", REPO / "data_prep" / "make_fixtures.py"
    )
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def fixture_args(dataset: str, tmp: Path, packed: bool = True) -> list[str]:
    """Fake data in the exact on-disk layout of ``dataset``; the ``--data-dir`` flag for it.
    ``packed=False``: IDX files uncompressed (the loader memory-maps their images)."""
    fx = _fixtures()
    if dataset == "mnist_embedded":
        return []
    if dataset == "emnist_tff":
        fx.write_tff_emnist(tmp / "tff", num_writers=12)
        return ["--data-dir", str(tmp / "tff")]
    if dataset == "femnist":
        fx.write_leaf_femnist(tmp / "leaf", layout="user", num_writers=10)
        return ["--data-dir", str(tmp / "leaf" / "data")]
    if dataset in ("fashion_mnist", "mnist"):
        rng = np.random.default_rng(0)
        folder = tmp / "idx"
        folder.mkdir()
        gz = ".gz" if packed else ""
        for stem, n in (("train", 1600), ("t10k", 400)):
            fx.write_idx(folder / f"{stem}-labels-idx1-ubyte{gz}", rng.integers(0, 10, n))
            fx.write_idx(folder / f"{stem}-images-idx3-ubyte{gz}",
                         rng.integers(0, 256, (n, 28, 28)))
        return ["--data-dir", str(folder)]
    raise AssertionError(f"no fixture for dataset {dataset!r}: add one for the new preset")


def experiment_presets() -> list[tuple[str, str]]:
    """Every (script, preset) of the experiment scripts, discovered as reproduce.py discovers
    them (every ``experiments/*.py`` with a module-level ``ExperimentCli`` with presets): a new
    script is tested without an edit here."""
    scripts = load_script("reproduce").scripts()
    return [(name, p) for name, cli in scripts.items() for p in cli.presets]


def smoke_run(script: str, preset: str, tmp_path, capsys, extra: tuple[str, ...] = ()):
    """``script --preset preset --smoke`` on fixture data: (module, out dir, stdout, records)."""
    mod = load_script(script)
    dataset = mod.CLI.preset_values(preset)["dataset"]
    out = tmp_path / "o"
    argv = ["--preset", preset, "--smoke", "--no-progress", "--out", str(out), *extra]
    mod.main([*argv, *fixture_args(dataset, tmp_path)])
    stdout = capsys.readouterr().out
    records = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    return mod, out, stdout, records


RECORDED = REPO / "tests" / "data" / "smoke_records.json"


def assert_matches_recorded(script: str, preset: str, records: list[dict], extra: str = ""):
    """The smoke run's records equal those recorded before the experiment layer was reworked
    (``tests/data/smoke_records.json``), metric for metric: every recorded key (metrics added
    since may join them), the same rounds, every number within 1e-4 (relative or absolute;
    timings are not compared). Values from another CPU or compiler setting may differ in the
    last bits, hence the tolerance. Such a difference can flip a near-tie prediction, so the
    accuracies may differ by a few examples: 0.01 in a pooled accuracy (2 of the 502 examples
    of per_fedavg:pfllib's round 2 flip under the tests' compiler setting, conftest.py), 0.05 in
    the per-client statistics (one example of a 20-example client), while the losses beside
    them stay within 1e-4."""
    key = f"{script}:{preset}" + (f":{extra}" if extra else "")
    runs = json.loads(RECORDED.read_text())["runs"]
    if key not in runs:  # a preset added since: nothing recorded to compare (see recorded_runs)
        return False
    want = runs[key]
    got = [{k: v for k, v in r.items() if "seconds" not in k} for r in records]
    assert len(got) == len(want), (key, len(got), len(want))
    for g, w in zip(got, want):
        assert set(w) <= set(g), (key, "metrics no longer recorded:", set(w) - set(g))
        for k, wv in w.items():
            gv = g[k]
            if isinstance(wv, bool) or isinstance(wv, str) or wv is None:
                assert gv == wv, (key, g["round"], k, gv, wv)
            else:
                atol = 1e-4
                if "_acc_" in k:  # a few near-tie predictions (see the docstring)
                    atol = 0.01 if k.endswith("_pooled") else 0.05
                np.testing.assert_allclose(np.asarray(gv, np.float64), np.asarray(wv, np.float64),
                                           rtol=1e-4, atol=atol, err_msg=f"{key} round "
                                           f"{g['round']} {k}")
    return True


def recorded_runs() -> set[str]:
    """The keys of every recorded smoke run (``script:preset`` or ``script:preset:flags``)."""
    return set(json.loads(RECORDED.read_text())["runs"])
