"""Ditto (docs/algorithms.md §11) against a literal per-client NumPy loop: three sampled rounds
on every strategy and with the client state in host memory; λ = 0 (personal models are plain
local training, the global model is FedAvg's); a large λ with a small step (the geometric pull
toward w); the driver evaluates v_k and w; one-line config errors."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from toy import MODEL, np_loss_grad, np_params, np_sgd_epochs, schedule_batches, toy_dataset

import jaxpfl
from jaxpfl.algorithms.ditto import DittoConfig, ditto
from jaxpfl.algorithms.fedavg import FedAvgConfig, fedavg
from jaxpfl.core import (
    ClientData,
    HostRound,
    Splits,
    State,
    Strategy,
    client_sgd,
    derive,
    epoch_schedule,
    evaluate_personal,
    local_train,
    make_round,
    phase_plan,
    place_inputs,
    round_inputs,
)
from jaxpfl.core import keys as K
from jaxpfl.core.residency import to_host
from jaxpfl.errors import ConfigError, RunError
from jaxpfl.run import sample_clients

ROOT = jax.random.key(7)
# 3 of the toy's 6 clients per round; client 4 (23 examples) is never selected, clients 0, 2,
# 3 and 5 twice (their v_k carries over a round), client 0 (1 example) takes no step
# (drop_last with B = 4).
ROUNDS = ([0, 3, 5], [1, 2, 5], [2, 0, 3])
BASE = FedAvgConfig(client_lr=0.3, batch_size=4, local_epochs=2, drop_last=True)
# the personal side differs from FedAvg's on purpose (epochs, rate), so a field read from the
# wrong config shows
CFG = DittoConfig(mu=0.5, personal_epochs=3, personal_lr=0.2)


def _init():
    return MODEL.init(jax.random.key(1), jnp.zeros((1, 4, 4, 1), jnp.uint8))


def _copy(p):
    return {k: v.copy() for k, v in p.items()}


def _sched(root, t, k, fold, n, epochs, base):
    return epoch_schedule(jax.random.fold_in(derive(root, K.DATA, t, k), fold), n, max(n, 1),
                          base.batch_size, epochs, drop_last=base.drop_last, shuffle=base.shuffle)


def reference(cfg=CFG, base=BASE, rounds=ROUNDS, root=ROOT, w0=None):
    """Ditto as PFLlib runs it, literally (serverditto.py / clientditto.py): for each selected
    client, ``ptrain`` (v ← v − η_p(∇ℓ(v) + λ(v − w)) per batch of its personal epochs, w the
    model received this round), then ``train`` (FedAvg's local SGD from w); the server averages
    the θ_k weighted by n_k. Unselected clients keep v_k.

    Returns (w, v, records): records[t][k] = (v_k before the round, number of personal steps,
    largest |∇ℓ| entry met in them) for the clients of round t."""
    ds = toy_dataset()
    w = np_params(_init() if w0 is None else w0)
    v = {k: _copy(w) for k in range(ds.num_clients)}
    eta = base.client_lr if cfg.personal_lr is None else cfg.personal_lr
    records = []
    for t, ids in enumerate(rounds):
        thetas, ns, rec = [], [], {}
        for k in ids:
            n = len(ds.train[k])
            before, steps, gmax = _copy(v[k]), 0, 0.0
            pers = _sched(root, t, k, 2, n, cfg.personal_epochs, base)
            for b in schedule_batches(pers, ds.train[k]):
                _, g = np_loss_grad(v[k], ds.x[b], ds.y[b])
                v[k] = {p: v[k][p] - eta * (g[p] + cfg.mu * (v[k][p] - w[p])) for p in w}
                steps += 1
                gmax = max(gmax, max(float(np.abs(g[p]).max()) for p in g))
            rec[k] = (before, steps, gmax)
            glob = _sched(root, t, k, 0, n, base.local_epochs, base)
            thetas.append(np_sgd_epochs(w, ds.x, ds.y, schedule_batches(glob, ds.train[k]),
                                        base.client_lr))
            ns.append(n)
        records.append(rec)
        total = float(sum(ns))
        w = {p: sum(n * th[p] for n, th in zip(ns, thetas)) / total for p in w}
    return w, v, records


def fedavg_reference(base=BASE, rounds=ROUNDS):
    """The NumPy FedAvg loop: θ_k = SGD_{E,B,η_c}(w) on FedAvg's batches, w ← Σ n_k θ_k / Σ n_k."""
    ds = toy_dataset()
    w = np_params(_init())
    for t, ids in enumerate(rounds):
        thetas = [np_sgd_epochs(w, ds.x, ds.y,
                                schedule_batches(_sched(ROOT, t, k, 0, len(ds.train[k]),
                                                        base.local_epochs, base), ds.train[k]),
                                base.client_lr) for k in ids]
        ns = [len(ds.train[k]) for k in ids]
        w = {p: sum(n * th[p] for n, th in zip(ns, thetas)) / sum(ns) for p in w}
    return w


def run_engine(alg, strategy=Strategy("sequential"), rounds=ROUNDS, host=False):
    """The engine's rounds; returns the state after each round (NumPy)."""
    ds = toy_dataset()
    state = alg.init(ROOT, _init(), ds.num_clients)
    if host:
        rnd = HostRound(alg, strategy)
        state = State(state.server, to_host(state.clients))
    else:
        rnd = make_round(alg, strategy)
    x, y = jnp.asarray(ds.x), jnp.asarray(ds.y)
    plan = phase_plan(ds, [np.array(ids) for ids in rounds], strategy)
    states = []
    for t, ids in enumerate(rounds):
        inputs = place_inputs(round_inputs(ds, np.array(ids), strategy, plan), strategy)
        state, out = rnd(state, x, y, inputs, jnp.int32(t), ROOT)
        states.append(jax.tree.map(np.array, state))
    return states, jax.tree.map(np.asarray, out.metrics)


def _close(got, want, atol):
    for p in want:
        np.testing.assert_allclose(got[p], want[p], atol=atol, rtol=0)


def _row(stacked, k):
    return {p: a[k] for p, a in stacked.items()}


def _gap(a, b):
    return max(float(np.abs(a[p] - b[p]).max()) for p in a)


STRATEGIES = [  # the eager loop, vmap over two size groups, lax.map chunks, 8 fake devices
    (Strategy("sequential"), False),
    (Strategy("vmap", buckets=2), False),
    (Strategy("chunked", chunk_size=2, buckets=1), False),
    (Strategy("sharded", buckets=1), False),
    (Strategy("sequential"), True),  # client state in host memory
    (Strategy("vmap", buckets=2), True),
]


@pytest.fixture(scope="module")
def ref():
    return reference()


@pytest.mark.parametrize("strategy,host", STRATEGIES,
                         ids=lambda v: v.name if isinstance(v, Strategy) else
                         ("host" if v else "device"))
def test_three_sampled_rounds_equal_the_numpy_loop(strategy, host, ref):
    w_ref, v_ref, _ = ref
    states, metrics = run_engine(ditto(MODEL, CFG, BASE), strategy, host=host)
    final = states[-1]
    if host:
        assert isinstance(final.clients.personal["w1"], np.ndarray)
    _close(final.server.params, w_ref, 2e-5)
    for k in range(6):
        _close(_row(final.clients.personal, k), v_ref[k], 2e-5)
    # client 4 was never selected: its v_k is w_0, bit for bit
    w0 = jax.tree.map(np.asarray, _init())
    jax.tree.map(np.testing.assert_array_equal, _row(final.clients.personal, 4), w0)
    # the last round's metrics, in sampled order (clients 2, 0, 3; n = 10, 1, 13): ⌊n/4⌋
    # steps per epoch, 3 personal epochs; ``steps`` adds FedAvg's 2 epochs
    np.testing.assert_array_equal(metrics["personal_steps"][:3], [3 * 2, 0, 3 * 3])
    np.testing.assert_array_equal(metrics["steps"][:3], [3 * 2 + 2 * 2, 0, 3 * 3 + 2 * 3])


def test_the_pull_matters_in_this_setting(ref):
    """λ = 0.5 lands the personal models elsewhere than λ = 0 does (so the test above checks
    the proximal term), and w is the same for both."""
    w_ref, v_ref, _ = ref
    w0_, v0_, _ = reference(DittoConfig(0.0, CFG.personal_epochs, CFG.personal_lr))
    assert max(_gap(v_ref[k], v0_[k]) for k in (2, 3, 5)) > 1e-3
    _close(w0_, w_ref, 0)


@pytest.mark.parametrize("mu", [0.0, CFG.mu])
def test_global_model_is_fedavg(mu):
    """w never reads v_k: for any λ it is FedAvg's, bit for bit through the engine (same
    batches, folds 0 and 1) and to float32 tolerance against the NumPy FedAvg loop."""
    cfg = DittoConfig(mu, CFG.personal_epochs, CFG.personal_lr)
    for strategy in (Strategy("sequential"), Strategy("vmap", buckets=2)):
        got = run_engine(ditto(MODEL, cfg, BASE), strategy)[0]
        want = run_engine(fedavg(MODEL, BASE), strategy)[0]
        for g, f in zip(got, want):  # after every round
            jax.tree.map(np.testing.assert_array_equal, g.server.params, f.server.params)
    _close(got[-1].server.params, fedavg_reference(), 2e-5)


def test_mu_zero_personal_models_are_plain_local_training():
    """λ = 0: v_k is E_p epochs of plain SGD(η_p) from v_k in each round k is selected. Two
    checks: the NumPy loop with λ = 0, and an independent per-client loop through the
    library's plain ``local_train`` (``sgd_step``, not the proximal step) on Ditto's folds,
    equal bit for bit."""
    cfg = DittoConfig(0.0, CFG.personal_epochs, CFG.personal_lr)
    states, _ = run_engine(ditto(MODEL, cfg, BASE))
    got = states[-1].clients.personal
    _, v_np, _ = reference(cfg)
    ds = toy_dataset()
    x, y = jnp.asarray(ds.x), jnp.asarray(ds.y)
    tx = client_sgd(cfg.personal_lr)
    v = {k: _init() for k in range(6)}
    for t, ids in enumerate(ROUNDS):
        for k in ids:
            idx = jnp.asarray(ds.train[k], jnp.int32)
            data = ClientData(idx, jnp.int32(len(idx)), x, y)
            key = derive(ROOT, K.DATA, t, k)
            order = _sched(ROOT, t, k, 2, len(idx), cfg.personal_epochs, BASE)
            v[k], _ = local_train(MODEL, tx, v[k], data, order, jax.random.fold_in(key, 3))
    for k in range(6):
        _close(_row(got, k), v_np[k], 2e-5)
        # the same eager step loop: at λ = 0 the proximal step IS the plain SGD step
        jax.tree.map(np.testing.assert_array_equal, _row(got, k), v[k])


def test_large_mu_small_step_is_the_geometric_pull_toward_w():
    """With c = η_p λ, one personal step is v − w ← (1 − c)(v − w) − η_p ∇ℓ(v), so after s
    steps against the received w

        v_new = w + (1 − c)^s (v_old − w) + r,   |r| ≤ η_p G Σ_i (1 − c)^i ≤ η_p G / c

    entrywise, G the largest |∇ℓ| entry met. λ = 10⁴, η_p = 10⁻⁵ (c = 0.1) makes r tiny
    (≤ 10⁻⁴ G) while the interpolation term stays visible: v_k is the geometric blend of its
    old value and w, independent of the data. Checked in round 1 for the clients selected in
    rounds 0 and 1 (v_old ≠ w there: w moved in round 0), against the engine's v_k."""
    lam, eta = 1e4, 1e-5
    cfg = DittoConfig(mu=lam, personal_epochs=2, personal_lr=eta)
    c = eta * lam
    rounds = ([2, 3, 5], [3, 5, 1])
    states, _ = run_engine(ditto(MODEL, cfg, BASE), rounds=rounds)
    _, v_np, records = reference(cfg, rounds=rounds)
    w1 = states[0].server.params
    for k in (3, 5):
        v_old, s, gmax = records[1][k]
        assert s > 0
        _close(v_old, _row(states[0].clients.personal, k), 1e-5)
        want = {p: w1[p] + (1 - c) ** s * (v_old[p] - w1[p]) for p in w1}
        bound = eta * gmax / c + 1e-5  # + float32 rounding of values of order 1
        got = _row(states[1].clients.personal, k)
        assert _gap(got, want) <= bound
        assert _gap(v_old, w1) > 100 * bound  # the closed form is not vacuous
        _close(got, v_np[k], 1e-5)
    # client 1, first selected in round 1, moves the same way from v_old = w_0 toward w_1
    v_old, s, gmax = records[1][1]
    want = {p: w1[p] + (1 - c) ** s * (v_old[p] - w1[p]) for p in w1}
    assert _gap(_row(states[1].clients.personal, 1), want) <= eta * gmax / c + 1e-5


def _np_correct(p, x, y):
    h = np.tanh(x.reshape(len(x), -1).astype(np.float64) / 255.0 @ p["w1"] + p["b1"])
    return int(np.sum(np.argmax(h @ p["w2"] + p["b2"], axis=1) == y))


def test_the_driver_evaluates_personal_and_global_models():
    """``jaxpfl.simulate`` with the driver's own sampling: ``personal_params`` is the stacked
    v_k and ``global_params`` w, and per-client evaluation of them counts what the NumPy
    reference's v_k and w predict on each client's test split."""
    ds = toy_dataset()
    strategy = Strategy("vmap", buckets=2)
    alg = ditto(MODEL, CFG, BASE)
    splits = Splits.of(ds)
    x, y = jnp.asarray(ds.x), jnp.asarray(ds.y)
    clients = np.arange(ds.num_clients)
    seen = {}

    def evaluate(state, t, final):
        v, w = alg.personal_params(state), alg.global_params(state.server)
        pers = evaluate_personal(MODEL, v, x, y, splits, clients, strategy)
        glob = jaxpfl.evaluate_model(MODEL, w, x, y, splits, clients, strategy)
        if final:
            seen.update(pers=np.asarray(pers.correct), glob=np.asarray(glob.correct))
        return {**jaxpfl.summarize(glob), **jaxpfl.summarize(pers, "pers_")}

    seed = 3
    result = jaxpfl.simulate([jaxpfl.Phase("ditto", alg, 3, 3)], ds,
                             lambda key: MODEL.init(key, x[:1]), evaluate,
                             jaxpfl.RunConfig(seed=seed, progress=False, strategy=strategy))
    root = jax.random.key(seed)
    rounds = [sample_clients(root, t, clients, 3).tolist() for t in range(3)]
    w0 = MODEL.init(derive(root, K.INIT, 0), x[:1])
    w, v, _ = reference(rounds=rounds, root=root, w0=w0)
    state = result["state"]
    _close(jax.tree.map(np.asarray, state.server.params), w, 2e-5)
    for k in clients:
        _close(jax.tree.map(lambda a, k=k: np.asarray(a[k]), state.clients.personal), v[k], 2e-5)
        test = ds.test[k]
        assert seen["pers"][k] == _np_correct(v[k], ds.x[test], ds.y[test])
        assert seen["glob"][k] == _np_correct(w, ds.x[test], ds.y[test])
    assert "pers_acc_pooled" in result["summary"]


def test_client_order_and_reruns():
    """§1.8: permuting S_t within a round changes nothing beyond 1e-6; a rerun is bit-identical."""
    alg = ditto(MODEL, CFG, BASE)
    strategy = Strategy("vmap", buckets=2)
    a = run_engine(alg, strategy)[0][-1]
    b = run_engine(alg, strategy, rounds=tuple(ids[::-1] for ids in ROUNDS))[0][-1]
    jax.tree.map(lambda u, v: np.testing.assert_allclose(u, v, atol=1e-6, rtol=0), a, b)
    jax.tree.map(np.testing.assert_array_equal, a, run_engine(alg, strategy)[0][-1])


def test_a_diverging_personal_model_stops_the_run():
    """The driver's NaN guard reads ``personal_params``: with η_p λ = 10⁶ every personal step
    multiplies v − w by 1 − 10⁶, so v_k overflows within a round while w (FedAvg's) stays
    finite, and the run stops."""
    ds = toy_dataset()
    alg = ditto(MODEL, DittoConfig(mu=1e7, personal_epochs=2, personal_lr=0.1), BASE)
    with pytest.raises(RunError, match="non-finite"):
        jaxpfl.simulate([jaxpfl.Phase("ditto", alg, 2, 6)], ds,
                        lambda key: MODEL.init(key, jnp.asarray(ds.x[:1])), lambda *a: {},
                        jaxpfl.RunConfig(progress=False, strategy=Strategy("sequential")))


def test_init_and_defaults():
    """Every client's v_k starts at w_0; the defaults are PFLlib's (λ = 0, one personal epoch,
    the personal rate is FedAvg's client rate)."""
    p = _init()
    state = ditto(MODEL).init(ROOT, p, 4)
    for k in range(4):
        jax.tree.map(np.testing.assert_array_equal, _row(state.clients.personal, k), p)
    assert DittoConfig() == DittoConfig(mu=1.0, personal_epochs=1, personal_lr=None)


@pytest.mark.parametrize("kwargs,match", [
    ({"mu": -0.1}, "mu must be >= 0"),
    ({"mu": float("inf")}, "mu must be >= 0"),
    ({"mu": "x"}, "mu must be >= 0"),
    ({"personal_epochs": -1}, "personal_epochs must be an integer >= 0"),
    ({"personal_epochs": 1.5}, "personal_epochs must be an integer >= 0"),
    ({"personal_lr": 0.0}, "personal_lr must be > 0"),
    ({"personal_lr": float("nan")}, "personal_lr must be > 0"),
])
def test_bad_config_is_one_line(kwargs, match):
    with pytest.raises(ConfigError, match=match):
        DittoConfig(**kwargs)
