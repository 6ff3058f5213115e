"""The driver: determinism, checkpoint/resume, NaN guard, no recompilation, CLI errors."""

import dataclasses
import json
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from toy import MODEL, toy_dataset

from jaxpfl.algorithms.fedavg import FedAvgConfig, fedavg
from jaxpfl.core import Strategy, evaluate_global, summarize
from jaxpfl.models.base import Model
from jaxpfl.run import Phase, RunConfig, RunError, clients_per_round, run

REPO = Path(__file__).resolve().parents[1]


#: One size group: the driver is the subject here (grouping: tests/test_buckets.py), and a
#: round compiles once per group.
VMAP = Strategy("vmap", buckets=1)


def _setup(model=MODEL, lr=0.1, rounds=(3, 2)):
    ds = toy_dataset()
    phases = [
        Phase(
            "fedavg",
            fedavg(
                model,
                FedAvgConfig(local_epochs=1, batch_size=5, client_lr=lr, server_opt="fedavgm"),
            ),
            rounds[0],
            4,
        ),
        Phase(
            "reptile",
            fedavg(
                model,
                FedAvgConfig(
                    local_steps=2,
                    batch_size=5,
                    client_lr=lr,
                    server_opt="adam",
                    server_lr=0.01,
                    weighted=False,
                ),
            ),
            rounds[1],
            3,
        ),
    ]

    def init_params(key):
        return model.init(key, jnp.zeros((1, 4, 4, 1), jnp.uint8))

    def evaluate(state, t, final):
        counts = evaluate_global(
            model, state.server.params, jnp.asarray(ds.x), jnp.asarray(ds.y), list(ds.test)
        )
        return summarize(counts)

    return ds, phases, init_params, evaluate


def _run(tmp=None, resume=False, total=None, strategy=VMAP, seed=0, cfg_text="a"):
    ds, phases, init_params, evaluate = _setup()
    if total is not None:  # stop early: truncate the phases at `total` rounds
        first = min(total, phases[0].rounds)
        phases = [
            dataclasses.replace(phases[0], rounds=first),
            dataclasses.replace(phases[1], rounds=total - first),
        ]
    rc = RunConfig(
        seed=seed,
        eval_every=1,
        out=str(tmp) if tmp else None,
        resume=resume,
        progress=False,
        strategy=strategy,
        config_for_hash=cfg_text,
    )
    return run(phases, ds, init_params, evaluate, rc)


def _params(result):
    return jax.tree.map(np.asarray, result["state"].server.params)


def test_same_seed_bit_identical_other_seed_differs():
    a, b, c = _run(seed=1), _run(seed=1), _run(seed=2)
    jax.tree.map(np.testing.assert_array_equal, _params(a), _params(b))
    assert [r["loss_pooled"] for r in a["history"]] == [r["loss_pooled"] for r in b["history"]]
    assert any(
        not np.array_equal(x, y)
        for x, y in zip(jax.tree.leaves(_params(a)), jax.tree.leaves(_params(c)))
    )


def test_resume_equals_uninterrupted(tmp_path):
    full = _run()
    # interrupted after 4 rounds (inside phase 2), then resumed with the full schedule
    _run(tmp_path, total=4)
    ckpt = json.loads((tmp_path / "checkpoints.json").read_text())
    assert ckpt["round"] == 4
    resumed = _run(tmp_path, resume=True)
    jax.tree.map(np.testing.assert_array_equal, _params(full), _params(resumed))
    lines = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["round"] for r in lines] == list(range(6))
    assert [r["loss_pooled"] for r in lines] == [r["loss_pooled"] for r in full["history"]]


def test_resume_at_phase_boundary(tmp_path):
    full = _run()
    _run(tmp_path, total=3)  # exactly the end of phase 1
    resumed = _run(tmp_path, resume=True)
    jax.tree.map(np.testing.assert_array_equal, _params(full), _params(resumed))


def test_resume_with_other_config_is_refused(tmp_path):
    _run(tmp_path, total=2)
    with pytest.raises(RunError, match="another configuration"):
        _run(tmp_path, resume=True, cfg_text="b")


def _poisoned_model():
    """The toy MLP, but logits are NaN for images whose every pixel is 7."""

    def apply(params, x, train=False, key=None):
        logits = MODEL.apply(params, x, train, key)
        bad = jnp.all(x == 7, axis=(1, 2, 3))[:, None]
        return jnp.where(bad, jnp.nan, logits)

    return Model("poisoned", MODEL.init, apply, MODEL.param_order, 3, (4, 4, 1))


def test_nan_guard_names_round_and_client():
    model = _poisoned_model()
    ds, _, init_params, evaluate = _setup(model)
    ds.x[ds.train[3][0]] = 7  # poison one example of client 3
    phases = [Phase("fedavg", fedavg(model, FedAvgConfig(batch_size=5)), 2, 1.0)]
    with pytest.raises(RunError, match=r"round 0 \(fedavg\), clients \[3\]"):
        run(phases, ds, init_params, lambda s, t, f: {}, RunConfig(progress=False))


def test_rounds_with_other_clients_and_widths_do_not_recompile():
    """Sampled rounds differ in clients and in their sizes; the phase's one grouping plan
    keeps the compiled round's shapes fixed: one compilation for all rounds."""
    from jaxpfl.core import make_round, place_inputs
    from jaxpfl.core.rounds import phase_plan
    from jaxpfl.run import round_inputs, sample_clients

    ds, phases, init_params, evaluate = _setup()
    alg = phases[0].algorithm
    strategy = VMAP
    rnd = make_round(alg, strategy)
    state = alg.init(jax.random.key(0), init_params(jax.random.key(1)), ds.num_clients)
    x, y = jnp.asarray(ds.x), jnp.asarray(ds.y)
    root = jax.random.key(0)
    sel = [sample_clients(root, t, np.arange(6), 3) for t in range(6)]
    assert len({tuple(sorted(s)) for s in sel}) > 2  # really different clients (and widths)
    plan = phase_plan(ds, sel, strategy)
    for t, ids in enumerate(sel):
        inputs = place_inputs(round_inputs(ds, ids, strategy, plan), strategy)
        state, _ = rnd(state, x, y, inputs, jnp.int32(t), root)
    assert rnd._cache_size() == 1


def test_clients_per_round():
    assert clients_per_round(1.0, 20) == 20
    assert clients_per_round(0.1, 100) == 10
    assert clients_per_round(0.001, 100) == 1
    assert clients_per_round(5, 20) == 5
    with pytest.raises(ValueError, match="lower --clients"):
        clients_per_round(30, 20)


def _cli(*args):
    return subprocess.run(
        [sys.executable, str(REPO / "experiments" / "perfedavg.py"), *args, "--no-progress"],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=REPO,
    )


@pytest.mark.parametrize(
    "args,needle",
    [
        (["--dataset", "nope"], "unknown dataset 'nope'"),
        (["--alpha", "0"], "alpha"),
        (["--alpha", "nan"], "alpha"),
        (["--clients", "500"], "lower --clients"),
        (["--num-clients", "20000"], "more clients than"),
        (["--dataset", "fashion_mnist", "--data-dir", "/nonexistent/dir"], "/nonexistent/dir"),
    ],
)
def test_cli_bad_input_is_one_line_and_exit_2(args, needle, tmp_path):
    proc = _cli(*args, "--out", str(tmp_path), "--rounds", "1", "--reptile-rounds", "0")
    assert proc.returncode == 2, proc.stderr
    lines = [x for x in proc.stderr.strip().splitlines() if x.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr
    assert needle in lines[0]
