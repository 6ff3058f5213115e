"""One table of checks for every algorithm, discovered, never listed: every experiment script
under experiments/ (each algorithm's own file with its presets; tests/scripts.py finds them as
experiments/reproduce.py does) builds its algorithm on the toy problem of tests/toy.py, and
every algorithm module of jaxpfl.algorithms is run by one of them. A new algorithm is checked
here by adding its files, without an edit of this test.

For each algorithm (each phase of a multi-phase one): the state's models have the
parameters' shapes (global, and personal models stacked over the K clients), one round on a
sampled subset gives the same global model, personal models and client state under ``vmap``
and ``sequential`` (each algorithm's own tests add ``sharded``), everything the NaN guard
checks is finite, and the evaluation ``jaxpfl.experiment`` builds from the algorithm gives
accuracies in [0, 1] for every evaluated client."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scripts import experiment_presets, load_script
from toy import MODEL, toy_dataset

import jaxpfl.algorithms
from jaxpfl.core import (
    Strategy,
    make_round,
    place_inputs,
    place_pool,
    place_rows,
    round_inputs,
    stage_groups,
)
from jaxpfl.core.train import _block
from jaxpfl.data.dataset import ClientIndex
from jaxpfl.pipeline import _personal_models, evaluation

ROOT = jax.random.key(11)
SCRIPTS = sorted({s for s, _ in experiment_presets()})


def _dataset():
    """The toy's 6 clients, each with a validation split (FEDORA's λ reads one); client 5
    is held out (a fine-tune evaluator personalizes it)."""
    ds = toy_dataset(test_per_client=8)
    val = [ds.test[k][:4] for k in range(ds.num_clients)]
    test = [ds.test[k][4:] for k in range(ds.num_clients)]
    return dataclasses.replace(
        ds, val=ClientIndex.from_lists(val), test=ClientIndex.from_lists(test),
        train_clients=np.arange(5), eval_clients=np.array([5]),
        meta={**ds.meta, "train_frac": 0.75},
    )


def _phases(script: str):
    """The script's algorithm(s) built from its default preset's settings on the toy."""
    mod = load_script(script)
    parsed = mod.CLI.parse(["--no-progress"])
    built = mod.CLI.build(parsed, MODEL, _dataset())
    return built if isinstance(built, list) else [(built.name, built, 1)]


def _params():
    return MODEL.init(jax.random.key(1), jnp.zeros((1, 4, 4, 1), jnp.uint8))


def _one_round(alg, strategy: Strategy):
    ds = _dataset()
    state = alg.init(ROOT, _params(), ds.num_clients)
    ids = np.arange(5) if alg.full_participation else np.array([4, 0, 2])
    stage = place_rows(stage_groups(ds, strategy), strategy) if alg.client_stage else None
    inputs = place_inputs(round_inputs(ds, ids, strategy), strategy)._replace(stage=stage)
    state, out = make_round(alg, strategy)(state, jnp.asarray(ds.x), jnp.asarray(ds.y), inputs,
                                           jnp.int32(1), ROOT)
    return jax.tree.map(np.asarray, state), out


def test_every_algorithm_module_has_a_script():
    """Each algorithm of jaxpfl.algorithms has an experiment script (its presets) whose
    algorithm factory is the module's."""
    covered = set()
    for s in SCRIPTS:
        for obj in vars(load_script(s)).values():
            where = getattr(obj, "__module__", "") or ""
            if callable(obj) and where.startswith("jaxpfl.algorithms."):
                covered.add(where.rsplit(".", 1)[1])
    modules = set(jaxpfl.algorithms.ALGORITHMS)
    assert modules <= covered, modules - covered


@pytest.mark.parametrize("script", SCRIPTS)
def test_algorithm_conformance(script):
    ds = _dataset()
    params = _params()
    shapes = [np.shape(a) for a in jax.tree.leaves(params)]
    for name, alg, _ in _phases(script):
        state = alg.init(ROOT, params, ds.num_clients)
        if alg.global_params is not None:
            w = alg.global_params(state.server)
            assert [np.shape(a) for a in jax.tree.leaves(w)] == shapes, name
        for pname, stack in _personal_models(alg, state).items():
            got = [np.shape(a) for a in jax.tree.leaves(stack)]
            assert got == [(ds.num_clients, *s) for s in shapes], (name, pname)
        # vmap == sequential here; every algorithm's own test file adds sharded (and chunked)
        runs = {s: _one_round(alg, Strategy(s, buckets=2)) for s in ("sequential", "vmap")}
        # a second eager round compiles no step block again (the engine keys step functions
        # by code and captured values, whatever objects the client update creates)
        compiled = _block._cache_size()
        _one_round(alg, Strategy("sequential"))
        assert _block._cache_size() == compiled, name
        (ref, out), others = runs["sequential"], [runs["vmap"]]
        assert all(np.isfinite(a).all() for a in jax.tree.leaves(alg.check_tree(ref))), name
        for got, _ in others:
            jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=2e-5, atol=2e-6),
                         got, ref)
        assert np.all(np.isfinite(np.asarray(out.metrics["train_loss"])[: len(out.ids)]))
        strategy = Strategy("vmap", buckets=2)
        evaluate, ids = evaluation(alg, MODEL, ds, place_pool(ds, strategy), strategy)
        rec = evaluate(jax.tree.map(jnp.asarray, ref), 1, True)
        accs = [k for k in rec if k.endswith("acc_mean")]
        assert accs, (name, sorted(rec))
        for k in accs:
            assert 0.0 <= rec[k] <= 1.0, (name, k, rec[k])
        if alg.personalize is not None:  # the held-out client, personalized
            assert ids.tolist() == [5] and rec["pers_n_clients"] == 1
        else:
            assert ids.tolist() == [0, 1, 2, 3, 4]
