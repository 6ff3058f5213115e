"""FedRep (docs/algorithms.md §12) against a literal per-client NumPy loop: three rounds of a
sampled subset (the global body and every client's head), every strategy; zero body epochs
keep the body bit for bit, zero head epochs keep every head; the head split of param_order;
personal models; host-resident heads through the driver; reruns are bit-identical."""

from __future__ import annotations

import doctest
import importlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from toy import MODEL, np_loss_grad, np_params, schedule_batches, toy_dataset

from jaxpfl.algorithms.fedavg import FedAvgConfig
from jaxpfl.algorithms.fedrep import (
    FedRepConfig,
    fedrep,
    head_paths,
    merge_params,
    split_params,
)
from jaxpfl.core import (
    Splits,
    Strategy,
    derive,
    epoch_schedule,
    evaluate_personal,
    make_round,
    phase_plan,
    place_inputs,
)
from jaxpfl.core import keys as K
from jaxpfl.errors import ConfigError
from jaxpfl.models import get_model
from jaxpfl.run import Phase, RunConfig, round_inputs, run

ROOT = jax.random.key(5)
# 3 of the toy's 6 clients per round; client 3 trains every round, client 2 never does,
# client 0 (n = 1 < B under drop_last) is sampled but takes no step
ROUNDS = ([0, 3, 5], [1, 3, 5], [4, 0, 3])
BASE = FedAvgConfig(client_lr=0.3, batch_size=4, local_epochs=1, drop_last=True)
CONFIG = FedRepConfig(head_epochs=2)
HEAD = ("w2", "b2")  # the toy's param_order is w1, b1, w2, b2: the head is the last two


def _init():
    return MODEL.init(jax.random.key(1), jnp.zeros((1, 4, 4, 1), jnp.uint8))


def run_engine(alg, strategy=Strategy("sequential"), rounds=ROUNDS):
    ds = toy_dataset()
    state = alg.init(ROOT, _init(), ds.num_clients)
    rnd = make_round(alg, strategy)
    x, y = jnp.asarray(ds.x), jnp.asarray(ds.y)
    plan = phase_plan(ds, [np.array(ids) for ids in rounds], strategy)  # one compilation
    for t, ids in enumerate(rounds):
        inputs = place_inputs(round_inputs(ds, np.array(ids), strategy, plan), strategy)
        state, out = rnd(state, x, y, inputs, jnp.int32(t), ROOT)
    body = jax.tree.map(np.asarray, state.server.params)
    heads = jax.tree.map(np.asarray, state.clients.head)
    return body, heads, state, out.metrics


def _sgd_part(theta, x, y, batches, lr, trained):
    """SGD over ``batches`` that updates only the tensors named in ``trained``."""
    for b in batches:
        _, g = np_loss_grad(theta, x[b], y[b])
        theta = {p: theta[p] - lr * g[p] if p in trained else theta[p] for p in theta}
    return theta


def reference(config=CONFIG, base=BASE, rounds=ROUNDS, head_first=True):
    """Collins et al.'s client, literally (PFLlib clientrep.train): θ = (received body, own
    head); head epochs with the body frozen, then body epochs with the head frozen, both plain
    SGD at η_c; the server averages the bodies, φ ← Σ n_k φ_k / Σ n_k, over the round's
    clients. Head batches: fold 2 of the client key; body batches: FedAvg's fold 0.
    ``head_first=False`` swaps the two phases (to show the order matters)."""
    ds = toy_dataset()
    w0 = np_params(_init())
    body = {p: w0[p] for p in w0 if p not in HEAD}
    heads = [{p: w0[p].copy() for p in HEAD} for _ in range(ds.num_clients)]
    for t, ids in enumerate(rounds):
        bodies, ns = [], []
        for k in ids:
            n = len(ds.train[k])
            key = derive(ROOT, K.DATA, t, k)

            def batches(fold, epochs, n=n, key=key, k=k):
                sched = epoch_schedule(jax.random.fold_in(key, fold), n, max(n, 1),
                                       base.batch_size, epochs, drop_last=base.drop_last)
                return schedule_batches(sched, ds.train[k])

            theta = {**body, **heads[k]}
            phases = [(batches(2, config.head_epochs), HEAD),
                      (batches(0, base.local_epochs), tuple(body))]
            for bs, trained in (phases if head_first else phases[::-1]):
                theta = _sgd_part(theta, ds.x, ds.y, bs, base.client_lr, trained)
            heads[k] = {p: theta[p] for p in HEAD}
            bodies.append({p: theta[p] for p in body})
            ns.append(n)
        total = float(sum(ns))
        body = {p: sum(n * b[p] for n, b in zip(ns, bodies)) / total for p in body}
    return body, heads


def _assert_close(got_body, got_heads, want_body, want_heads, atol):
    for p in want_body:
        np.testing.assert_allclose(got_body[p], want_body[p], atol=atol, rtol=0, err_msg=p)
    for k, want in enumerate(want_heads):
        for p in HEAD:
            np.testing.assert_allclose(got_heads[p][k], want[p], atol=atol, rtol=0,
                                       err_msg=f"client {k} {p}")


STRATEGIES = [Strategy("sequential"), Strategy("vmap", buckets=2), Strategy("sharded", buckets=1)]


@pytest.mark.parametrize("strategy", STRATEGIES, ids=lambda s: s.name)
def test_three_sampled_rounds_equal_the_numpy_loop(strategy):
    body, heads, _, metrics = run_engine(fedrep(MODEL, CONFIG, BASE), strategy)
    want_body, want_heads = reference()
    _assert_close(body, heads, want_body, want_heads, atol=2e-5)
    w0 = np_params(_init())
    # the unsampled client keeps the initial head, the step-less client 0 too; the trained
    # ones moved, and the body is split the way param_order says
    for k in (0, 2):
        for p in HEAD:
            np.testing.assert_array_equal(heads[p][k], w0[p].astype(np.float32))
    assert all(np.abs(heads["w2"][k] - w0["w2"]).max() > 1e-3 for k in (1, 3, 4, 5))
    assert set(body) == {"w1", "b1"} and set(heads) == set(HEAD)
    # the test can tell the order apart: body-then-head lands elsewhere
    swapped_body, swapped_heads = reference(head_first=False)
    assert max(float(np.abs(swapped_heads[3][p] - want_heads[3][p]).max()) for p in HEAD) > 1e-3
    assert max(float(np.abs(swapped_body[p] - want_body[p]).max()) for p in want_body) > 1e-4
    # last round: clients 4, 0, 3 (sampled order); client 0 took no step of either phase
    steps = np.asarray(metrics["steps"])[:3]
    head_steps = np.asarray(metrics["head_steps"])[:3]
    per_epoch = np.array([23 // 4, 0, 13 // 4])
    np.testing.assert_array_equal(head_steps, 2 * per_epoch)
    np.testing.assert_array_equal(steps, 3 * per_epoch)


def test_zero_body_epochs_keep_the_body_exactly():
    base = FedAvgConfig(client_lr=0.3, batch_size=4, local_epochs=0, drop_last=True)
    body, heads, _, metrics = run_engine(fedrep(MODEL, CONFIG, base))
    w0 = jax.tree.map(np.asarray, _init())
    for p in ("w1", "b1"):
        np.testing.assert_array_equal(body[p], w0[p])  # bit for bit: Δ_k = 0 exactly
    assert float(np.max(np.asarray(metrics["delta_norm"]))) == 0.0
    want_body, want_heads = reference(base=base)
    _assert_close(body, heads, want_body, want_heads, atol=2e-5)
    assert np.abs(heads["w2"][3] - w0["w2"]).max() > 1e-3  # the heads did train


def test_zero_head_epochs_keep_every_head():
    config = FedRepConfig(head_epochs=0)
    body, heads, _, _ = run_engine(fedrep(MODEL, config, BASE))
    w0 = jax.tree.map(np.asarray, _init())
    for p in HEAD:
        np.testing.assert_array_equal(heads[p], np.broadcast_to(w0[p], heads[p].shape))
    want_body, want_heads = reference(config=config)
    _assert_close(body, heads, want_body, want_heads, atol=2e-5)
    assert np.abs(body["w1"] - w0["w1"]).max() > 1e-3  # the body did train


def test_momentum_and_weight_decay_touch_the_trained_part_only():
    """With momentum and weight decay the frozen part still never moves: zero head epochs
    keep every head, zero body epochs keep the body (weight decay would shrink them)."""
    base = FedAvgConfig(client_lr=0.1, batch_size=4, local_epochs=1, drop_last=True,
                        client_momentum=0.9, weight_decay=0.5)
    w0 = jax.tree.map(np.asarray, _init())
    _, heads, _, _ = run_engine(fedrep(MODEL, FedRepConfig(head_epochs=0), base))
    for p in HEAD:
        np.testing.assert_array_equal(heads[p], np.broadcast_to(w0[p], heads[p].shape))
    zero_body = FedAvgConfig(client_lr=0.1, batch_size=4, local_epochs=0, drop_last=True,
                             client_momentum=0.9, weight_decay=0.5)
    body, _, _, _ = run_engine(fedrep(MODEL, FedRepConfig(head_epochs=2), zero_body))
    for p in ("w1", "b1"):
        np.testing.assert_array_equal(body[p], w0[p])


def test_personal_params_are_the_body_with_each_head():
    alg = fedrep(MODEL, CONFIG, BASE)
    body, heads, state, _ = run_engine(alg)
    pers = jax.tree.map(np.asarray, alg.personal_params(state))
    assert alg.global_params is None
    for k in range(6):
        for p in ("w1", "b1"):
            np.testing.assert_array_equal(pers[p][k], body[p])
        for p in HEAD:
            np.testing.assert_array_equal(pers[p][k], heads[p][k])
    # host-resident heads give host views of the same models
    host = alg.personal_params(state._replace(clients=jax.tree.map(np.asarray, state.clients)))
    assert all(isinstance(a, np.ndarray) for a in jax.tree.leaves(host))
    jax.tree.map(np.testing.assert_array_equal, host, pers)


def _driver(tmp_path, name: str, client_state: str):
    ds = toy_dataset()
    alg = fedrep(MODEL, CONFIG, BASE)
    x, y = jnp.asarray(ds.x), jnp.asarray(ds.y)
    strategy = Strategy("sequential", client_state=client_state)

    def evaluate(state, t, final):
        c = evaluate_personal(MODEL, alg.personal_params(state), x, y, Splits.of(ds),
                              np.arange(ds.num_clients), strategy)
        return {"acc": float(np.sum(c.correct) / np.sum(c.count))}

    config = RunConfig(seed=5, out=str(tmp_path / name), strategy=strategy, progress=False)
    return run([Phase("fedrep", alg, 3, 0.5)], ds, lambda k: MODEL.init(
        k, jnp.zeros((1, 4, 4, 1), jnp.uint8)), evaluate, config, pool=(x, y))


def test_driver_runs_with_host_heads_as_on_the_device(tmp_path):
    dev = _driver(tmp_path, "dev", "device")
    host = _driver(tmp_path, "host", "host")
    assert isinstance(host["state"].clients.head["w2"], np.ndarray)
    assert [r["acc"] for r in host["history"]] == [r["acc"] for r in dev["history"]]
    jax.tree.map(np.testing.assert_array_equal, jax.tree.map(np.asarray, dev["state"]),
                 host["state"])


def test_bit_identical_reruns():
    a = run_engine(fedrep(MODEL, CONFIG, BASE), Strategy("vmap", buckets=2))
    b = run_engine(fedrep(MODEL, CONFIG, BASE), Strategy("vmap", buckets=2))
    for x, y in ((a[0], b[0]), (a[1], b[1]), (a[3], b[3])):
        jax.tree.map(np.testing.assert_array_equal, x, y)


def test_head_split_follows_param_order():
    assert head_paths(MODEL) == (("w2",), ("b2",))
    assert head_paths(MODEL, 3) == (("b1",), ("w2",), ("b2",))
    cnn = get_model("cnn", (28, 28, 1), 10)
    paths = head_paths(cnn)
    assert paths == (("params", "fc", "kernel"), ("params", "fc", "bias"))
    shapes = jax.eval_shape(cnn.init, jax.random.key(0),
                            jax.ShapeDtypeStruct((1, 28, 28, 1), jnp.uint8))
    body, head = split_params(shapes, paths)
    assert sum(int(np.prod(a.shape)) for a in jax.tree.leaves(head)) == 5_130
    assert sum(int(np.prod(a.shape)) for a in jax.tree.leaves(body)) == 582_026 - 5_130
    params = _init()
    again = merge_params(*split_params(params, head_paths(MODEL)))
    jax.tree.map(np.testing.assert_array_equal, again, params)
    for bad in (0, 4):
        with pytest.raises(ConfigError, match="head_tensors must be in 1..3"):
            head_paths(MODEL, bad)



@pytest.mark.parametrize("field,value", [("head_epochs", -1), ("head_epochs", 1.5),
                                         ("head_tensors", 0), ("head_tensors", True)])
def test_bad_config_is_one_line(field, value):
    with pytest.raises(ConfigError, match=f"{field} must be an integer"):
        FedRepConfig(**{field: value})
    with pytest.raises(ConfigError, match="head_tensors must be in 1..3"):
        fedrep(MODEL, FedRepConfig(head_tensors=4))


def test_docstring_example_runs():
    module = importlib.import_module("jaxpfl.algorithms.fedrep")  # the module, not the factory
    result = doctest.testmod(module, raise_on_error=False, verbose=False)
    assert result.attempted > 0 and result.failed == 0
