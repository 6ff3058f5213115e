"""Runs a researcher can trust: the driver's defaults, refusals and summaries (each of these
failed, or passed silently with a wrong result, before)."""

import importlib
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from toy import MODEL, toy_dataset

import jaxpfl
from jaxpfl.algorithms.fedavg import FedAvgConfig, fedavg
from jaxpfl.core import Algorithm, evaluate_global, summarize
from jaxpfl.errors import ConfigError, RunError
from jaxpfl.run import Phase, RunConfig, clients_per_round, run, summarize_history


def _init(key):
    return MODEL.init(key, jnp.zeros((1, 4, 4, 1), jnp.uint8))


def _phases(rounds=3):
    return [Phase("fedavg", fedavg(MODEL, FedAvgConfig(batch_size=5, client_lr=0.1)), rounds, 3)]


def _eval(ds):
    def evaluate(state, t, final):
        del t, final
        x, y = jnp.asarray(ds.x), jnp.asarray(ds.y)
        return summarize(evaluate_global(MODEL, state.server.params, x, y, list(ds.test)))

    return evaluate


def test_import_jaxpfl_run_is_the_module():
    mod = importlib.import_module("jaxpfl.run")
    assert hasattr(mod, "run") and callable(mod.run) and hasattr(mod, "RunConfig")
    assert jaxpfl.simulate is mod.run


def test_library_default_strategy_is_chosen_per_backend():
    ds = toy_dataset()
    res = run(_phases(1), ds, _init, _eval(ds), RunConfig(progress=False))
    want = "sequential" if jax.default_backend() == "cpu" else "vmap"
    assert RunConfig().strategy is None and res["summary"]["strategy"]["name"] == want


@pytest.mark.parametrize("kwargs", [dict(eval_every=0), dict(checkpoint_every=-1),
                                    dict(resume=True, overwrite=True)])
def test_bad_run_config_is_a_config_error(kwargs):
    with pytest.raises(ConfigError):
        RunConfig(**kwargs)


def test_participation_must_be_a_count_or_a_fraction():
    assert clients_per_round(1.0, 20) == 20 and clients_per_round(1, 20) == 1
    for bad in (1.5, 0.0, -0.1, True):
        with pytest.raises(ConfigError):
            clients_per_round(bad, 20)


def test_fresh_run_into_non_empty_out_is_refused_and_overwrite_clears(tmp_path):
    ds = toy_dataset()
    run(_phases(2), ds, _init, _eval(ds), RunConfig(out=str(tmp_path), progress=False))
    with pytest.raises(RunError, match="not empty"):
        run(_phases(2), ds, _init, _eval(ds), RunConfig(out=str(tmp_path), progress=False))
    (tmp_path / "stray.txt").write_text("old")
    run(_phases(2), ds, _init, _eval(ds),
        RunConfig(out=str(tmp_path), progress=False, overwrite=True))
    assert not (tmp_path / "stray.txt").exists()
    rounds = [json.loads(x)["round"] for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert rounds == [0, 1, 2]


def test_resume_without_checkpoint_is_an_error(tmp_path):
    ds = toy_dataset()
    with pytest.raises(RunError, match="no checkpoint"):
        run(_phases(2), ds, _init, _eval(ds),
            RunConfig(out=str(tmp_path), progress=False, resume=True))


def test_resume_after_a_mid_run_checkpoint_logs_each_round_once(tmp_path):
    ds = toy_dataset()
    full = run(_phases(4), ds, _init, _eval(ds), RunConfig(progress=False))
    run(_phases(2), ds, _init, _eval(ds),  # the first 2 rounds, checkpointed at the end
        RunConfig(out=str(tmp_path), progress=False, config_for_hash="x"))
    # ... a longer run of the same configuration resumes from round 2
    res = run(_phases(4), ds, _init, _eval(ds),
              RunConfig(out=str(tmp_path), progress=False, resume=True, config_for_hash="x"))
    rounds = [json.loads(x)["round"] for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert rounds == [0, 1, 2, 3, 4]
    jax.tree.map(np.testing.assert_array_equal, full["state"].server.params,
                 res["state"].server.params)


def test_algorithm_without_train_loss_runs():
    """The driver reads only what the contract says: no ``train_loss`` metric is fine."""
    base = fedavg(MODEL, FedAvgConfig(batch_size=5, client_lr=0.1))

    def client_update(server, c, data, key):
        c, msg, _ = base.client_update(server, c, data, key)
        return c, msg, {}

    alg = Algorithm("quiet", base.init, client_update, base.server_update, base.global_params)
    ds = toy_dataset()
    res = run([Phase("quiet", alg, 2, 3)], ds, _init, _eval(ds), RunConfig(progress=False))
    assert len(res["history"]) == 3


def test_no_global_model_checks_the_whole_state_for_nan():
    """An algorithm without global params (FEDORA-like) is NaN-checked on its whole state."""
    base = fedavg(MODEL, FedAvgConfig(batch_size=5, client_lr=0.1))

    def server_update(server, msgs, ids, mask):
        new = base.server_update(server, msgs, ids, mask)
        return new._replace(params=jax.tree.map(lambda a: a * jnp.nan, new.params))

    alg = Algorithm("no_global", base.init, base.client_update, server_update)
    ds = toy_dataset()
    with pytest.raises(RunError, match=r"round 0 \(p\)"):
        run([Phase("p", alg, 2, 3)], ds, _init, lambda s, t, f: {}, RunConfig(progress=False))


def test_best_ignores_subsampled_evaluations():
    hist = [
        {"round": 0, "acc_mean": 0.5, "subsampled": True},
        {"round": 5, "acc_mean": 0.9, "subsampled": True},  # a lucky sample
        {"round": 10, "acc_mean": 0.7, "subsampled": False},
    ]
    s = summarize_history(hist)["acc_mean"]
    assert s["best"] == 0.7 and s["final"] == 0.7 and s["best_over"] == 1
