"""The Algorithm contract (engine, second shape) against a plain per-client NumPy loop.

A toy algorithm with everything the personalized algorithms need: per-client state (a personal
model θ_k and a visit counter), a client update that reads the client's validation row, a
cross-client server step that rewrites every client's state, an all-client stage, and
per-client evaluation of the stacked personal models. Every strategy must equal the loop.
"""

import dataclasses
import doctest
import gc
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from toy import (
    MODEL,
    CompileLog,
    np_loss_grad,
    np_params,
    np_sgd_epochs,
    schedule_batches,
    toy_dataset,
)

import jaxpfl.core.engine as engine_module
from jaxpfl.algorithms.fedavg import FedAvgConfig, fedavg
from jaxpfl.core import (
    Algorithm,
    ClientData,
    Splits,
    State,
    Strategy,
    client_eval,
    derive,
    epoch_schedule,
    evaluate_personal,
    local_steps,
    local_train,
    make_round,
    phase_plan,
    place_inputs,
    round_inputs,
    sgd_step,
    stage_groups,
    weighted_mean,
)
from jaxpfl.core import keys as K
from jaxpfl.core.placement import ClientPlacement, array_loader
from jaxpfl.core.tree import broadcast_clients, lerp
from jaxpfl.data.dataset import ClientIndex

ROOT = jax.random.key(7)
B, LR, STAGE_LR, MIX = 5, 0.1, 0.05, 0.1
#: Sampled clients per round (C < 1), the same number each round as the driver samples them,
#: so one ``phase_plan`` fits all three (one compilation per strategy).
ROUNDS = ([0, 2, 5, 3], [1, 4, 2, 0], [5, 0, 1, 2])
STRATEGIES = [  # 3 size groups: grouping exercised at a third of the compile time of 6
    Strategy("vmap", buckets=3),
    Strategy("vmap", buckets=1),
    Strategy("chunked", chunk_size=2, buckets=3),
    Strategy("sequential"),
    Strategy("sharded"),
]


class Clients(NamedTuple):
    theta: dict
    visits: jax.Array
    stage_loss: jax.Array


class Msg(NamedTuple):
    theta: dict
    n: jax.Array


def toy_algorithm() -> Algorithm:
    tx = optax.sgd(LR)
    stage_tx = optax.sgd(STAGE_LR)
    stage_step = sgd_step(MODEL, stage_tx)

    def init(key, params, k):
        del key
        return State(
            {"w": params, "round": jnp.zeros((), jnp.int32)},
            Clients(broadcast_clients(params, k), jnp.zeros(k, jnp.int32), jnp.zeros(k)),
        )

    def client_update(server, c: Clients, data: ClientData, key):
        start = lerp(c.theta, server["w"], 0.5)
        sched = epoch_schedule(jax.random.fold_in(key, 0), data.n, data.width, B, 1)
        theta, stats = local_train(MODEL, tx, start, data, sched, jax.random.fold_in(key, 1))
        val = client_eval(MODEL, theta, data.split("val"))
        val_loss = val.loss_sum / jnp.maximum(val.count, 1)
        metrics = {**stats.metrics(), "val_loss": val_loss, "id": data.id}
        return Clients(theta, c.visits + 1, c.stage_loss), Msg(theta, data.n * 1.0), metrics

    def server_update(server, msgs: Msg, ids, mask):
        del ids
        w = weighted_mean(msgs.theta, msgs.n * mask)
        return {"w": w, "round": server["round"] + 1}

    def mix(state):
        thetas = state.clients.theta  # ALL clients, after this round's scatter
        mean_all = jax.tree.map(lambda a: jnp.mean(a, axis=0), thetas)
        mixed = jax.tree.map(lambda a, m: a + MIX * (m[None] - a), thetas, mean_all)
        return State(state.server, state.clients._replace(theta=mixed))

    def client_stage(server, c: Clients, data: ClientData, key):
        del server
        # one full-batch SGD step on the client's whole training row
        sched = epoch_schedule(key, data.n, data.width, data.width, 1, shuffle=False)
        (theta, _), stats = local_steps(
            stage_step, (c.theta, stage_tx.init(c.theta)), None, data, sched, key
        )
        return c._replace(theta=theta, stage_loss=stats.last_loss), {"loss": stats.last_loss}

    return Algorithm(
        "toy", init, client_update, server_update, global_params=lambda s: s["w"],
        client_stage=client_stage, mix=mix, personal_params=lambda s: s.clients.theta,
    )


def _dataset():
    ds = toy_dataset(test_per_client=8)
    val = [ds.test[k][:4] for k in range(ds.num_clients)]
    test = [ds.test[k][4:] for k in range(ds.num_clients)]
    return dataclasses.replace(
        ds, val=ClientIndex.from_lists(val), test=ClientIndex.from_lists(test)
    )


def _params():
    return MODEL.init(jax.random.key(1), jnp.zeros((1, 4, 4, 1), jnp.uint8))


def run_engine(strategy: Strategy, per_device_pool: bool = False):
    """The three rounds and the personal evaluation through the engine; with
    ``per_device_pool`` every device holds only its own clients' examples
    (``ClientPlacement``: device-affine rows into a [D, N_max] pool)."""
    ds = _dataset()
    alg = toy_algorithm()
    state = alg.init(ROOT, _params(), ds.num_clients)
    rnd = make_round(alg, strategy)
    splits = Splits.of(ds)
    x, y = jnp.asarray(ds.x), jnp.asarray(ds.y)
    if per_device_pool:
        placement = ClientPlacement.balanced(splits, strategy.client_multiple)
        splits = placement.localize(splits)
        x, y = placement.pool(array_loader(ds.x, ds.y), strategy.mesh())
    stage = stage_groups(splits, strategy)
    # one grouping for the three rounds, as the driver builds it (``phase_plan``)
    plan = phase_plan(splits, [np.array(ids) for ids in ROUNDS], strategy)
    outs = []
    for t, ids in enumerate(ROUNDS):
        inputs = place_inputs(round_inputs(splits, np.array(ids), strategy, plan, stage),
                              strategy)
        state, out = rnd(state, x, y, inputs, jnp.int32(t), ROOT)
        outs.append(jax.tree.map(np.asarray, out))
    counts = evaluate_personal(
        MODEL, state.clients.theta, x, y, splits, np.arange(ds.num_clients), strategy
    )
    return ds, state, outs, counts


def run_reference():
    """The same three rounds as a literal per-client NumPy loop."""
    ds = _dataset()
    w = np_params(_params())
    theta = [dict(w) for _ in range(ds.num_clients)]
    outs = []
    for t, ids in enumerate(ROUNDS):
        msgs, val_losses, steps = [], [], []
        for k in ids:
            key = derive(ROOT, K.DATA, t, k)
            n = len(ds.train[k])
            start = {p: theta[k][p] + 0.5 * (w[p] - theta[k][p]) for p in w}
            sched = epoch_schedule(jax.random.fold_in(key, 0), n, max(n, 1), B, 1)
            batches = schedule_batches(sched, ds.train[k])
            theta[k] = np_sgd_epochs(start, ds.x, ds.y, batches, LR)
            v = ds.val[k]
            val_losses.append(np_loss_grad(theta[k], ds.x[v], ds.y[v])[0])
            steps.append(len(batches))
            msgs.append((theta[k], n))
        total = sum(n for _, n in msgs)
        w = {p: sum(th[p] * n for th, n in msgs) / total for p in w}
        mean_all = {p: np.mean([th[p] for th in theta], axis=0) for p in w}
        theta = [{p: th[p] + MIX * (mean_all[p] - th[p]) for p in w} for th in theta]
        stage_loss = np.zeros(ds.num_clients)
        for k in range(ds.num_clients):
            tr = ds.train[k]
            if len(tr):
                loss, g = np_loss_grad(theta[k], ds.x[tr], ds.y[tr])
                theta[k] = {p: theta[k][p] - STAGE_LR * g[p] for p in w}
                stage_loss[k] = loss
        outs.append((np.array(val_losses), np.array(steps), stage_loss))
    hits = []
    for k in range(ds.num_clients):
        q, th = ds.test[k], theta[k]
        h = np.tanh(ds.x[q].reshape(len(q), -1) / 255.0 @ th["w1"] + th["b1"])
        hits.append(int((np.argmax(h @ th["w2"] + th["b2"], axis=1) == ds.y[q]).sum()))
    return w, theta, outs, np.array(hits)


@pytest.fixture(scope="module")
def reference():
    return run_reference()


CASES = [(s, False) for s in STRATEGIES] + [
    (Strategy("sharded"), True),  # 8 devices, 6 clients: two devices own none
    (Strategy("sharded", num_devices=4, buckets=3), True),
    (Strategy("sequential", num_devices=3), False),  # clients round-robin over 3 devices
]


@pytest.mark.parametrize(
    "strategy,per_device_pool", CASES,
    ids=lambda c: c if isinstance(c, bool) else f"{c.name}{c.num_devices or ''}-b{c.buckets}",
)
def test_toy_contract_equals_numpy_loop(strategy, per_device_pool, reference):
    w_ref, theta_ref, outs_ref, hits_ref = reference
    ds, state, outs, counts = run_engine(strategy, per_device_pool)
    for p in w_ref:
        np.testing.assert_allclose(np.asarray(state.server["w"][p]), w_ref[p], atol=1e-5)
        for k in range(ds.num_clients):
            np.testing.assert_allclose(
                np.asarray(state.clients.theta[p][k]), theta_ref[k][p], atol=1e-5
            )
    # the visit counter counts exactly the rounds each client was sampled in
    visits = np.bincount(np.concatenate(ROUNDS), minlength=ds.num_clients)
    np.testing.assert_array_equal(np.asarray(state.clients.visits), visits)
    for (val_ref, steps_ref, stage_ref), out, ids in zip(outs_ref, outs, ROUNDS):
        m = len(ids)
        # metrics come back in sampled order, padding rows after the real ones
        np.testing.assert_array_equal(out.ids[:m], ids)
        np.testing.assert_array_equal(out.metrics["id"][:m], ids)
        assert out.mask[:m].all() and not out.mask[m:].any()
        np.testing.assert_allclose(out.metrics["val_loss"][:m], val_ref, atol=1e-5)
        np.testing.assert_array_equal(out.metrics["steps"][:m], steps_ref)
        np.testing.assert_allclose(out.stage["loss"], stage_ref, atol=1e-5)
    np.testing.assert_array_equal(counts.correct, hits_ref)
    np.testing.assert_array_equal(counts.count, [len(ds.test[k]) for k in range(6)])


def test_client_order_within_a_round_does_not_matter():
    ds = _dataset()
    alg = toy_algorithm()
    x, y = jnp.asarray(ds.x), jnp.asarray(ds.y)
    results = []
    for ids in ([0, 2, 5, 3], [3, 5, 0, 2]):
        state = alg.init(ROOT, _params(), ds.num_clients)
        strategy = Strategy("vmap", buckets=1)
        inputs = place_inputs(
            round_inputs(ds, np.array(ids), strategy, stage=stage_groups(ds, strategy)), strategy
        )
        state, _ = make_round(alg, strategy)(state, x, y, inputs, jnp.int32(0), ROOT)
        results.append(state)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-6), *results)


def test_stage_requires_stage_rows():
    ds = _dataset()
    alg = toy_algorithm()
    state = alg.init(ROOT, _params(), ds.num_clients)
    inputs = place_inputs(round_inputs(ds, np.array([0, 1]), Strategy("sequential")),
                          Strategy("sequential"))
    with pytest.raises(ValueError, match="client stage"):
        make_round(alg, Strategy("sequential"))(
            state, jnp.asarray(ds.x), jnp.asarray(ds.y), inputs, jnp.int32(0), ROOT
        )


def test_engine_docstring_toy_runs():
    """The contract's docstring example is executed (doctest)."""
    result = doctest.testmod(engine_module, raise_on_error=False, verbose=False)
    assert result.attempted >= 8 and result.failed == 0


def test_sequential_rounds_after_the_first_compile_nothing():
    """Round 1 starts from the uncommitted state ``init`` returns (a leaf over the 1 MiB at
    which the lanes reuse an array already on their device, as FedAvgCNN's fc1), later rounds
    from the committed one a round returns. Over 2 devices the step block compiles once per
    device and the server step once, all in round 1 (before the fix: a third step block in
    round 1, and the server step again in round 2)."""
    jax.clear_caches()  # what earlier tests in this process compiled would hide round 1's
    ds = _dataset()
    alg = fedavg(MODEL, FedAvgConfig(local_epochs=1, batch_size=B, client_lr=LR,
                                      server_opt="fedavgm", server_momentum=0.9))
    k1, k2 = jax.random.split(jax.random.key(3))
    wide = 1 << 15  # w1 [16, 32768] float32: 2 MiB
    params = {"w1": jax.random.normal(k1, (16, wide)) * 0.01, "b1": jnp.zeros(wide),
              "w2": jax.random.normal(k2, (wide, 3)) * 0.01, "b2": jnp.zeros(3)}
    assert not params["w1"].committed
    strategy = Strategy("sequential", num_devices=2)
    rnd = make_round(alg, strategy)
    state = alg.init(ROOT, params, ds.num_clients)
    x, y = jnp.asarray(ds.x), jnp.asarray(ds.y)
    per_round = []
    with CompileLog() as compiles:
        for t, ids in enumerate(ROUNDS):
            before = len(compiles.names)
            inputs = place_inputs(round_inputs(ds, np.array(ids), strategy), strategy)
            state, _ = rnd(state, x, y, inputs, jnp.int32(t), ROOT)
            jax.block_until_ready(state)
            per_round.append(compiles.names[before:])
    first = per_round[0]
    assert first.count("jit(_block)") == 2 and first.count("jit(server_update)") == 1, first
    for later in per_round[1:]:
        assert "jit(_block)" not in later and "jit(server_update)" not in later, later


def test_sequential_rounds_with_client_state_compile_only_in_round_one():
    """The toy algorithm (client state scattered back, a client stage, a mix) over 2
    devices: round 1 starts from ``init``'s uncommitted client state, and rounds 2 and 3 (the
    same numbers of clients and sizes, so the same shapes) compile nothing at all (before
    the fix: the row gather and the scatter compiled again in round 2)."""
    jax.clear_caches()  # what earlier tests in this process compiled would hide round 1's
    ds = _dataset()
    alg = toy_algorithm()
    strategy = Strategy("sequential", num_devices=2)
    rnd = make_round(alg, strategy)
    state = alg.init(ROOT, _params(), ds.num_clients)
    x, y = jnp.asarray(ds.x), jnp.asarray(ds.y)
    per_round = []
    with CompileLog() as compiles:
        for t, ids in enumerate(ROUNDS):
            before = len(compiles.names)
            inputs = place_inputs(round_inputs(ds, np.array(ids), strategy,
                                               stage=stage_groups(ds, strategy)), strategy)
            state, _ = rnd(state, x, y, inputs, jnp.int32(t), ROOT)
            jax.block_until_ready(state)
            per_round.append(compiles.names[before:])
    assert "jit(mix)" in per_round[0] and "jit(_scatter)" in per_round[0], per_round[0]
    assert per_round[1:] == [[], []], per_round[1:]


def test_lane_replicas_keep_the_pool_and_let_old_parameters_go():
    """``_replica``: a large array reaches a further device once (the same copy every time),
    its cache entry goes when the array does (a round's parameters are not kept alive), and
    an uncommitted array already on the lane's device is committed without a copy."""
    dev0, dev1 = jax.devices()[:2]
    replica, cache = engine_module._replica, engine_module._REPLICAS
    cache.clear()  # (other tests' live pools would only be copied again)
    pool = jnp.arange(1 << 19, dtype=jnp.float32)  # 2 MiB, over the threshold
    first = replica(pool, dev1)
    assert first is replica(pool, dev1) and first.devices() == {dev1}
    np.testing.assert_array_equal(np.asarray(first), np.asarray(pool))
    assert len(cache) == 1
    params = jnp.ones(1 << 19, jnp.float32)
    replica(params, dev1)
    assert len(cache) == 2
    del params
    gc.collect()
    assert len(cache) == 1
    fresh = jnp.ones(1 << 19, jnp.float32)
    assert not fresh.committed and fresh.devices() == {dev0}
    put = replica(fresh, dev0)
    assert put.committed and put.unsafe_buffer_pointer() == fresh.unsafe_buffer_pointer()
    assert len(cache) == 1
