"""Personalized FedAvg (docs/algorithms.md §3.6) against independent per-client NumPy loops."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from toy import MODEL, np_loss_grad, np_params, np_sgd_epochs, schedule_batches, toy_dataset

from jaxpfl.algorithms.personalized_fedavg import (
    PersonalizedFedAvgConfig,
    personalize,
    personalized_fedavg,
    reptile_stage,
)
from jaxpfl.core import (
    ClientEvaluator,
    Splits,
    Strategy,
    derive,
    epoch_schedule,
    evaluate_global,
    make_round,
    place_inputs,
    round_inputs,
    stream_schedule,
)
from jaxpfl.core import keys as K
from jaxpfl.run import Phase, RunConfig, run

ROOT = jax.random.key(7)

#: Two size groups: grouping is exercised with two copies of the client program to compile
#: (the default, 6 groups, has one per toy client).
VMAP = Strategy("vmap", buckets=2)


def _params():
    return MODEL.init(jax.random.key(3), jnp.zeros((1, 4, 4, 1), jnp.uint8))


def _reptile_rounds(cfg, rounds, strategy=VMAP):
    ds = toy_dataset()
    alg = reptile_stage(MODEL, cfg)
    state = alg.init(ROOT, _params(), ds.num_clients)
    rnd = make_round(alg, strategy)
    x, y = jnp.asarray(ds.x), jnp.asarray(ds.y)
    for t in range(rounds):
        inputs = place_inputs(round_inputs(ds, np.arange(6), strategy), strategy)
        state, _ = rnd(state, x, y, inputs, jnp.int32(t), ROOT)
    return state, ds


def _np_reptile_client(w, ds, k, t, cfg):
    key = derive(ROOT, K.DATA, t, k)
    n = len(ds.train[k])
    sched = stream_schedule(jax.random.fold_in(key, 0), n, n, cfg.batch_size, cfg.reptile_steps)
    return np_sgd_epochs(w, ds.x, ds.y, schedule_batches(sched, ds.train[k]), cfg.client_lr)


def _np_reptile(cfg, rounds, adam):
    ds = toy_dataset()
    w = np_params(_params())
    m = {k: 0.0 for k in w}
    v = {k: 0.0 for k in w}
    for t in range(rounds):
        thetas = [_np_reptile_client(w, ds, k, t, cfg) for k in range(6)]
        g = {k: np.mean([w[k] - th[k] for th in thetas], axis=0) for k in w}  # uniform
        if not adam:
            w = {k: w[k] - g[k] for k in w}
            continue
        b1, b2, eps, lr = cfg.reptile_b1, cfg.reptile_b2, cfg.reptile_eps, cfg.reptile_server_lr
        m = {k: b1 * m[k] + (1 - b1) * g[k] for k in w}
        v = {k: b2 * v[k] + (1 - b2) * g[k] ** 2 for k in w}
        c = t + 1
        w = {k: w[k] - lr * (m[k] / (1 - b1**c)) / (np.sqrt(v[k] / (1 - b2**c)) + eps) for k in w}
    return w


def test_reptile_equals_numpy_loop_with_server_adam():
    cfg = PersonalizedFedAvgConfig(
        reptile_steps=5, batch_size=4, client_lr=0.1, reptile_server_lr=0.05
    )
    state, _ = _reptile_rounds(cfg, 2)
    ref = _np_reptile(cfg, 2, adam=True)
    for k in ref:
        np.testing.assert_allclose(np.asarray(state.server.params[k]), ref[k], atol=1e-5)


def test_reptile_server_sgd1_is_uniform_mean_and_strategies_agree():
    """Server sgd(1.0) (lr 1, adam replaced through the config's server): w = mean θ_K."""
    from jaxpfl.algorithms.fedavg import FedAvgConfig, fedavg

    cfg = PersonalizedFedAvgConfig(reptile_steps=3, batch_size=4, client_lr=0.1)
    alg = fedavg(
        MODEL,
        FedAvgConfig(
            local_steps=3, batch_size=4, client_lr=0.1, weighted=False, server_opt="fedavg"
        ),
    )
    ds = toy_dataset()
    x, y = jnp.asarray(ds.x), jnp.asarray(ds.y)
    outs = []
    for strategy in [VMAP, Strategy("sequential"), Strategy("sharded", buckets=1)]:
        state = alg.init(ROOT, _params(), 6)
        inputs = place_inputs(round_inputs(ds, np.arange(6), strategy), strategy)
        state, _ = make_round(alg, strategy)(state, x, y, inputs, jnp.int32(0), ROOT)
        outs.append(state.server.params)
    ref = _np_reptile(cfg, 1, adam=False)
    for out in outs:
        for k in ref:
            np.testing.assert_allclose(np.asarray(out[k]), ref[k], atol=1e-5)


def test_reptile_k1_is_uniform_fedsgd():
    """K = 1 and B ≥ n_k: every client's single batch is its whole set → uniform FedSGD."""
    from jaxpfl.algorithms.fedavg import FedAvgConfig, fedavg

    ds = toy_dataset()
    alg = fedavg(
        MODEL,
        FedAvgConfig(
            local_steps=1, batch_size=64, client_lr=0.2, weighted=False, server_opt="fedavg"
        ),
    )
    state = alg.init(ROOT, _params(), 6)
    inputs = place_inputs(round_inputs(ds, np.arange(6), VMAP), VMAP)
    state, _ = make_round(alg, VMAP)(
        state, jnp.asarray(ds.x), jnp.asarray(ds.y), inputs, jnp.int32(0), ROOT
    )
    w = np_params(_params())
    grads = [np_loss_grad(w, ds.x[ds.train[k]], ds.y[ds.train[k]])[1] for k in range(6)]
    for k in w:
        np.testing.assert_allclose(
            np.asarray(state.server.params[k]),
            w[k] - 0.2 * np.mean([g[k] for g in grads], axis=0),
            atol=1e-5,
        )


def test_stage_switch_inside_run_starts_a_fresh_server_adam():
    """run() with FedAvg(1 round) then Reptile(1 round): the Reptile round starts from the
    stage-1 model with a FRESH Adam, whose first bias-corrected step is g / (|g| + ε)."""
    cfg = PersonalizedFedAvgConfig(
        rounds=1, local_epochs=1, batch_size=4, client_lr=0.1, reptile_rounds=1,
        reptile_steps=3, reptile_server_lr=0.05, reptile_eps=1e-3,
    )
    ds = toy_dataset()
    phases = [Phase(n, a, r, 6) for n, a, r in personalized_fedavg(MODEL, cfg)]
    rc = RunConfig(seed=7, progress=False, strategy=VMAP)  # ROOT = key(7)
    both = run(phases, ds, lambda key: _params(), lambda st, t, f: {}, rc)
    first = run(phases[:1], ds, lambda key: _params(), lambda st, t, f: {}, rc)
    w1 = np_params(first["state"].server.params)
    thetas = [_np_reptile_client(w1, ds, k, 1, cfg) for k in range(6)]  # global round t = 1
    lr, eps = cfg.reptile_server_lr, cfg.reptile_eps
    for k in w1:
        g = np.mean([w1[k] - th[k] for th in thetas], axis=0)
        want = w1[k] - lr * g / (np.abs(g) + eps)
        np.testing.assert_allclose(np.asarray(both["state"].server.params[k]), want, atol=1e-5)
    adam = both["state"].server.opt_state[0]
    assert int(adam.count) == 1  # one Adam step, not stage 1's round count


def _evaluator(cfg, strategy, ds):
    support = [ds.train[k] for k in range(6)]
    query = [ds.test[k] for k in range(6)]
    splits = Splits.from_lists(train=support, test=query)
    return ClientEvaluator(
        personalize(MODEL, cfg), jnp.asarray(ds.x), jnp.asarray(ds.y), splits, strategy
    )


def _keys(rows):
    return jnp.stack([derive(ROOT, K.EVAL, 0, int(r)) for r in rows])


def test_personalization_equals_numpy_reference_and_keeps_global():
    ds = toy_dataset(test_per_client=9)
    cfg = PersonalizedFedAvgConfig(personalization_epochs=3, batch_size=4, client_lr=0.1)
    params = _params()
    before = jax.tree.map(np.array, params)
    rows = np.arange(6)
    init, pers = _evaluator(cfg, VMAP, ds)(params, rows, _keys(rows))
    # w untouched (bit-identical)
    jax.tree.map(np.testing.assert_array_equal, before, jax.tree.map(np.asarray, params))
    # initial = a plain evaluation of the global model on the query sets
    plain = evaluate_global(
        MODEL, params, jnp.asarray(ds.x), jnp.asarray(ds.y), [ds.test[k] for k in rows]
    )
    np.testing.assert_array_equal(init.correct, plain.correct)
    np.testing.assert_allclose(init.loss_sum, plain.loss_sum, rtol=1e-5)
    # personalized: NumPy SGD on support with the same epoch schedules, evaluated per epoch
    w = np_params(params)
    for r in rows:
        key = _keys([r])[0]
        theta = w
        for e in range(3):
            sched = epoch_schedule(
                jax.random.fold_in(key, 2 * e), len(ds.train[r]), len(ds.train[r]), 4, 1
            )
            theta = np_sgd_epochs(theta, ds.x, ds.y, schedule_batches(sched, ds.train[r]), 0.1)
            q = ds.test[r]
            loss, _ = np_loss_grad(theta, ds.x[q], ds.y[q])
            np.testing.assert_allclose(pers.loss_sum[r, e], loss * len(q), rtol=1e-4, atol=1e-5)
            h = np.tanh(ds.x[q].reshape(len(q), -1) / 255.0 @ theta["w1"] + theta["b1"])
            hits = (np.argmax(h @ theta["w2"] + theta["b2"], axis=1) == ds.y[q]).sum()
            assert pers.correct[r, e] == hits


def test_personalization_vmap_equals_sequential_and_sharded():
    ds = toy_dataset(test_per_client=9)
    cfg = PersonalizedFedAvgConfig(personalization_epochs=2, batch_size=4, client_lr=0.1)
    rows = np.array([0, 2, 3, 5, 1])
    outs = [
        _evaluator(cfg, s, ds)(_params(), rows, _keys(rows))
        for s in (VMAP, Strategy("sequential"), Strategy("sharded", buckets=1))
    ]
    for init, pers in outs[1:]:
        np.testing.assert_array_equal(init.correct, outs[0][0].correct)
        np.testing.assert_array_equal(pers.correct, outs[0][1].correct)
        np.testing.assert_allclose(pers.loss_sum, outs[0][1].loss_sum, rtol=1e-5)


def test_zero_personalization_epochs_gives_pers_equal_init():
    """P = 0: both init and pers equal an independent NumPy evaluation of w on each query."""
    ds = toy_dataset(test_per_client=9)
    cfg = PersonalizedFedAvgConfig(personalization_epochs=0)
    params = _params()
    init, pers = _evaluator(cfg, VMAP, ds)(params, np.arange(6), _keys(range(6)))
    assert pers.correct.shape == (6, 1)
    w = np_params(params)
    for r in range(6):
        q = ds.test[r]
        h = np.tanh(ds.x[q].reshape(len(q), -1) / 255.0 @ w["w1"] + w["b1"])
        hits = int((np.argmax(h @ w["w2"] + w["b2"], axis=1) == ds.y[q]).sum())
        loss, _ = np_loss_grad(w, ds.x[q], ds.y[q])
        assert init.correct[r] == pers.correct[r, 0] == hits
        np.testing.assert_allclose([init.loss_sum[r], pers.loss_sum[r, 0]], loss * len(q),
                                   rtol=1e-5)


def test_kt_pfa_message_is_sum_of_adam_step_gradients():
    ds = toy_dataset()
    cfg = PersonalizedFedAvgConfig(variant="kt_pfa", kt_epochs=2, batch_size=4, kt_client_lr=0.01)
    alg = reptile_stage(MODEL, cfg)
    state = alg.init(ROOT, _params(), 6)
    captured = {}
    x, y = jnp.asarray(ds.x), jnp.asarray(ds.y)
    inputs = round_inputs(ds, np.array([4]), Strategy("sequential")).groups[0]
    from jaxpfl.core import ClientData

    data = ClientData(jnp.asarray(inputs.train_idx[0]), jnp.asarray(inputs.train_n[0]), x, y)
    key = derive(ROOT, K.DATA, 0, 4)
    _, msg, _ = alg.client_update(state.server, None, data, key)
    captured["g"] = msg.delta
    # NumPy: Adam(β1 = 0, β2 = 0.999) per step over unshuffled epochs; sum raw gradients
    width = inputs.train_idx.shape[1]
    sched = epoch_schedule(jax.random.fold_in(key, 0), 23, width, 4, 2, shuffle=False)
    w = np_params(_params())
    v = {k: 0.0 for k in w}
    gsum = {k: 0.0 for k in w}
    for c, b in enumerate(schedule_batches(sched, ds.train[4]), start=1):
        _, g = np_loss_grad(w, ds.x[b], ds.y[b])
        gsum = {k: gsum[k] + g[k] for k in w}
        v = {k: 0.999 * v[k] + 0.001 * g[k] ** 2 for k in w}
        w = {k: w[k] - 0.01 * g[k] / (np.sqrt(v[k] / (1 - 0.999**c)) + 1e-8) for k in w}
    for k in w:
        np.testing.assert_allclose(np.asarray(captured["g"][k]), gsum[k], atol=1e-4, rtol=1e-4)


def test_bad_config():
    with pytest.raises(ValueError, match="variant"):
        PersonalizedFedAvgConfig(variant="x")
    with pytest.raises(ValueError, match="rounds"):
        PersonalizedFedAvgConfig(rounds=-1)
