"""pFedMe (docs/algorithms.md §13) against a literal per-client NumPy loop: three rounds of a
sampled subset (the global w and every client's θ_k) on every strategy and with the client
state in host memory; the limiting cases K = 0 (θ stays at w_k, so w_k never moves), β = 1
(the plain weighted or uniform average of the w_k), β = 0 (w frozen) and a very large λ (θ ≈ w_k,
and w_k takes FedAvg's SGD steps); the driver evaluates θ_k and w; one-line config errors."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from toy import MODEL, np_loss_grad, np_params, schedule_batches, toy_dataset

import jaxpfl
from jaxpfl.algorithms.fedavg import FedAvgConfig, fedavg
from jaxpfl.algorithms.pfedme import Message, PFedMeConfig, pfedme
from jaxpfl.core import (
    ClientData,
    HostRound,
    Splits,
    State,
    Strategy,
    derive,
    epoch_schedule,
    evaluate_personal,
    make_round,
    phase_plan,
    place_inputs,
    round_inputs,
)
from jaxpfl.core import keys as K
from jaxpfl.core.residency import to_host
from jaxpfl.errors import ConfigError, RunError
from jaxpfl.run import sample_clients

ROOT = jax.random.key(11)
# 3 of the toy's 6 clients per round: client 4 is never selected (θ_4 stays w_0), client 1
# trains once and sits out the last round (its θ_1 must survive), client 0 (n = 1 < B, with
# drop_last) takes no step.
ROUNDS = ([0, 3, 5], [1, 2, 5], [2, 0, 3])
BASE = FedAvgConfig(client_lr=0.2, batch_size=4, local_epochs=2, drop_last=True)
# μ = 0.01 (not PFLlib's 0.001) so that a dropped weight decay shows in the 3-round check
CONFIG = PFedMeConfig(personal_lr=0.3, lam=2.0, inner_steps=3, beta=0.7,
                      personal_weight_decay=0.01)


def _init():
    return MODEL.init(jax.random.key(1), jnp.zeros((1, 4, 4, 1), jnp.uint8))


def _row(stacked, k):
    return {p: a[k] for p, a in stacked.items()}


def run_engine(alg, strategy=Strategy("sequential"), rounds=ROUNDS, host=False):
    """The engine's rounds; returns the final state and each round's metrics (NumPy)."""
    ds = toy_dataset()
    state = alg.init(ROOT, _init(), ds.num_clients)
    if host:
        rnd = HostRound(alg, strategy)
        state = State(state.server, to_host(state.clients))
    else:
        rnd = make_round(alg, strategy)
    x, y = jnp.asarray(ds.x), jnp.asarray(ds.y)
    plan = phase_plan(ds, [np.array(ids) for ids in rounds], strategy)
    metrics = []
    for t, ids in enumerate(rounds):
        inputs = place_inputs(round_inputs(ds, np.array(ids), strategy, plan), strategy)
        state, out = rnd(state, x, y, inputs, jnp.int32(t), ROOT)
        metrics.append(jax.tree.map(np.asarray, out.metrics))
    return jax.tree.map(np.array, state), metrics


def reference(config=CONFIG, base=BASE, rounds=ROUNDS, root=ROOT, w0=None, restart=False):
    """PFLlib's clientpFedMe / serverpFedMe, literally, in float64 NumPy. Returns the global w
    and every client's θ_k (w_0 for a client never selected). ``restart``: the inner solve
    starts from w_k at every batch instead of the previous θ (not PFLlib; a foil)."""
    ds = toy_dataset()
    w = np_params(_init() if w0 is None else w0)
    theta = [dict(w) for _ in range(ds.num_clients)]
    plr, lam, mu = config.personal_lr, config.lam, config.personal_weight_decay
    for t, ids in enumerate(rounds):
        sent, ns = [], []
        for k in ids:
            n = len(ds.train[k])
            sched = epoch_schedule(jax.random.fold_in(derive(root, K.DATA, t, k), 0), n,
                                   max(n, 1), base.batch_size, base.local_epochs,
                                   drop_last=base.drop_last)
            local = {p: v.copy() for p, v in w.items()}  # set_parameters: model = local = w
            th = {p: v.copy() for p, v in w.items()}
            for b in schedule_batches(sched, ds.train[k]):
                if restart:
                    th = {p: v.copy() for p, v in local.items()}
                for _ in range(config.inner_steps):  # pFedMeOptimizer.step, K times, same batch
                    _, g = np_loss_grad(th, ds.x[b], ds.y[b])
                    th = {p: th[p] - plr * (g[p] + lam * (th[p] - local[p]) + mu * th[p])
                          for p in th}
                local = {p: local[p] - lam * base.client_lr * (local[p] - th[p]) for p in local}
            theta[k] = th
            sent.append(local)
            ns.append(float(n) if base.weighted else 1.0)
        avg = {p: sum(n * m[p] for n, m in zip(ns, sent)) / sum(ns) for p in w}
        w = {p: (1 - config.beta) * w[p] + config.beta * avg[p] for p in w}  # beta_aggregate
    return w, theta


def assert_close(got, want, atol):
    for p in want:
        np.testing.assert_allclose(got[p], want[p], atol=atol, rtol=0, err_msg=p)


def max_diff(a, b):
    return max(float(np.abs(np.asarray(a[p]) - np.asarray(b[p])).max()) for p in b)


@pytest.fixture(scope="module")
def ref():
    return reference()


STRATEGIES = [  # the eager loop, vmap over two size groups, lax.map chunks, 8 fake devices
    (Strategy("sequential"), False),
    (Strategy("vmap", buckets=2), False),
    (Strategy("chunked", chunk_size=2, buckets=1), False),
    (Strategy("sharded", buckets=1), False),
    (Strategy("sequential"), True),  # client state in host memory
    (Strategy("vmap", buckets=2), True),
]


@pytest.mark.parametrize("strategy,host", STRATEGIES,
                         ids=lambda v: v.name if isinstance(v, Strategy) else
                         ("host" if v else "device"))
def test_three_sampled_rounds_equal_the_numpy_loop(strategy, host, ref):
    w, theta = ref
    state, metrics = run_engine(pfedme(MODEL, CONFIG, BASE), strategy, host=host)
    if host:
        assert isinstance(state.clients.theta["w1"], np.ndarray)
    assert_close(state.server.params, w, 2e-5)
    for k, th in enumerate(theta):
        assert_close(_row(state.clients.theta, k), th, 2e-5)
    jax.tree.map(np.testing.assert_array_equal, _row(state.clients.theta, 4),
                 jax.tree.map(np.asarray, _init()))  # never selected: w_0, bit for bit
    assert int(state.server.round) == 3
    # the last round's metrics in sampled order (clients 2, 0, 3; n = 10, 1, 13): ⌊n/4⌋
    # batches per epoch, 2 epochs
    np.testing.assert_array_equal(metrics[-1]["steps"][:3], [2 * 2, 0, 3 * 2])


def test_the_reference_tells_the_choices_apart(ref):
    """The 3-round check above discriminates: the loop that restarts θ from w_k at every batch
    (a reading of the paper), the one without the β mix (β = 1) and the one without PFLlib's
    inner weight decay land elsewhere; and every θ_k is its own."""
    w, theta = ref
    for other in (reference(restart=True),
                  reference(dataclasses.replace(CONFIG, beta=1.0)),
                  reference(dataclasses.replace(CONFIG, personal_weight_decay=0.0))):
        assert max(max_diff(other[0], w), max(max_diff(a, b) for a, b in zip(other[1], theta))
                   ) > 1e-4
    assert max_diff(theta[1], theta[3]) > 1e-2 and max_diff(theta[2], w) > 1e-2


def _client_data(k):
    ds = toy_dataset()
    return ClientData(idx=jnp.asarray(ds.train[k], jnp.int32), n=jnp.int32(len(ds.train[k])),
                      x=jnp.asarray(ds.x), y=jnp.asarray(ds.y), id=jnp.int32(k),
                      round=jnp.int32(0))


def test_zero_inner_steps_leave_theta_and_w_local_at_w():
    """K = 0: θ never moves from its start w_k = w, so w_k ← w_k − ηλ(w_k − θ) = w_k: the
    client sends w and keeps θ_k = w, bit for bit; the server's mix of copies of w is w (up
    to the rounding of the weighted mean)."""
    alg = pfedme(MODEL, dataclasses.replace(CONFIG, inner_steps=0), BASE)
    state = alg.init(ROOT, _init(), 6)
    for k in (0, 4, 5):
        c = jax.tree.map(lambda a, k=k: a[k], state.clients)
        c, message, metrics = alg.client_update(state.server, c, _client_data(k),
                                                derive(ROOT, K.DATA, 0, k))
        jax.tree.map(np.testing.assert_array_equal, message.local, state.server.params)
        jax.tree.map(np.testing.assert_array_equal, c.theta, state.server.params)
        assert float(metrics["delta_norm"]) == 0.0 and float(metrics["personal_gap"]) == 0.0
        assert int(metrics["steps"]) == len(toy_dataset().train[k]) // 4 * 2  # steps still run
    w0 = np_params(_init())
    end, metrics = run_engine(alg)
    assert_close(end.server.params, w0, 1e-6)
    for k in range(6):
        assert_close(_row(end.clients.theta, k), w0, 1e-6)
    assert all(float(m["delta_norm"].max()) == 0.0 for m in metrics)
    assert float(metrics[0]["train_loss"][1]) > 0  # the loss is still read (at θ = w)


@pytest.mark.parametrize("weighted", [True, False])
def test_beta_one_is_the_plain_average_of_the_local_models(weighted):
    """β = 1: w ← 0·w + 1·avg = Σ p_k w_k (p_k = n_k / Σ n_j, or 1/M); padding rows weigh
    nothing. Then three rounds against the NumPy loop at β = 1."""
    base = dataclasses.replace(BASE, weighted=weighted)
    config = dataclasses.replace(CONFIG, beta=1.0)
    alg = pfedme(MODEL, config, base)
    state = alg.init(ROOT, _init(), 6)
    rng = np.random.default_rng(0)
    local = jax.tree.map(lambda a: jnp.asarray(rng.normal(size=(4,) + a.shape), jnp.float32),
                         state.server.params)
    n = jnp.asarray([7.0, 13.0, 40.0, 99.0])
    mask = jnp.asarray([1.0, 1.0, 1.0, 0.0])  # the last row is padding
    new = alg.server_update(state.server, Message(local, n), jnp.asarray([1, 3, 5, 6]), mask)
    p = np.array([7.0, 13.0, 40.0]) if weighted else np.ones(3)
    p = p / p.sum()
    for name, a in local.items():
        want = np.tensordot(p, np.asarray(a[:3], np.float64), axes=1)
        np.testing.assert_allclose(new.params[name], want, atol=1e-6, rtol=0)
    end, _ = run_engine(alg)
    w, theta = reference(config, base)
    assert_close(end.server.params, w, 2e-5)
    for k, th in enumerate(theta):
        assert_close(_row(end.clients.theta, k), th, 2e-5)


def test_beta_zero_freezes_w_and_a_round_of_empty_clients_keeps_it():
    """β = 0 (PFLlib's main.py default): w ← w, whatever the clients send. A round whose
    sampled clients all have n_k = 0 (weights sum to 0) also leaves w as it is."""
    w0 = jax.tree.map(np.asarray, _init())
    end, _ = run_engine(pfedme(MODEL, dataclasses.replace(CONFIG, beta=0.0), BASE))
    jax.tree.map(np.testing.assert_array_equal, end.server.params, w0)
    assert max_diff(_row(end.clients.theta, 3), w0) > 1e-2  # the clients did train
    alg = pfedme(MODEL, CONFIG, BASE)
    state = alg.init(ROOT, _init(), 6)
    local = jax.tree.map(lambda a: jnp.stack([a + 1.0, a - 2.0]), state.server.params)
    new = alg.server_update(state.server, Message(local, jnp.zeros(2)), jnp.asarray([0, 1]),
                            jnp.ones(2))
    jax.tree.map(np.testing.assert_array_equal, new.params, state.server.params)


def test_large_lambda_keeps_theta_at_w_local_and_w_local_takes_fedavg_steps():
    """λ → ∞ with η_p = 1/λ: an inner step gives θ = w_k − η_p(∇ℓ(θ') + μθ') (θ' the previous
    inner iterate), so ‖θ − w_k‖ = O(1/λ); and w_k ← w_k − ηλ(w_k − θ) = w_k − η(∇ℓ(θ') + μθ')
    with θ' itself within O(1/λ) of w_k when K ≥ 2: w_k takes FedAvg's SGD step with weight
    decay μ on the same batches, and the server at β = 1 is FedAvg's average."""
    mu = 0.01

    def config(lam):
        return PFedMeConfig(personal_lr=1.0 / lam, lam=lam, inner_steps=2, beta=1.0,
                            personal_weight_decay=mu)

    # one local step (B ≥ n_k): θ_k against the w_k = w it was solved for
    one = FedAvgConfig(client_lr=0.5, batch_size=64, local_epochs=1)
    gaps = []
    for lam in (1e2, 1e4):
        alg = pfedme(MODEL, config(lam), one)
        state = alg.init(ROOT, _init(), 6)
        c = jax.tree.map(lambda a: a[5], state.clients)
        c, _, metrics = alg.client_update(state.server, c, _client_data(5),
                                          derive(ROOT, K.DATA, 0, 5))
        assert int(metrics["steps"]) == 1
        gaps.append(max_diff(c.theta, state.server.params))
    assert gaps[1] < 1e-4 and 50 < gaps[0] / gaps[1] < 200  # ‖θ − w_k‖ ∝ 1/λ
    # three rounds: w approaches FedAvg's as λ grows (float32 bounds λ: at 1e4 the
    # difference w_k − θ ~ 1e-4 has lost most of its digits)
    base = FedAvgConfig(client_lr=0.5, batch_size=4, local_epochs=2, drop_last=True)
    fed, _ = run_engine(fedavg(MODEL, dataclasses.replace(base, weight_decay=mu)))
    dists = [max_diff(run_engine(pfedme(MODEL, config(lam), base))[0].server.params,
                      fed.server.params) for lam in (1e2, 1e3)]
    moved = max_diff(fed.server.params, np_params(_init()))
    assert dists[1] < dists[0] / 5 and dists[1] < 1e-2 * moved


def test_local_steps_count_batches_as_the_original_code():
    """``base.local_steps = R``: R batches of the step stream (the original code's R local
    rounds of one fresh batch each), K inner steps on each; E is then unused."""
    base = FedAvgConfig(client_lr=0.2, batch_size=4, local_steps=5)
    _, metrics = run_engine(pfedme(MODEL, CONFIG, base), rounds=([0, 3, 5],))
    np.testing.assert_array_equal(metrics[0]["steps"][:3], [5, 5, 5])


def _np_correct(p, x, y):
    h = np.tanh(x.reshape(len(x), -1).astype(np.float64) / 255.0 @ p["w1"] + p["b1"])
    return int(np.sum(np.argmax(h @ p["w2"] + p["b2"], axis=1) == y))


def test_the_driver_evaluates_personal_and_global_models():
    """``jaxpfl.simulate`` with the driver's own sampling: ``personal_params`` is the stacked
    θ_k and ``global_params`` w, and per-client evaluation counts what the NumPy reference's
    θ_k and w predict on each client's test split."""
    ds = toy_dataset()
    strategy = Strategy("vmap", buckets=2)
    alg = pfedme(MODEL, CONFIG, BASE)
    splits = Splits.of(ds)
    x, y = jnp.asarray(ds.x), jnp.asarray(ds.y)
    clients = np.arange(ds.num_clients)
    seen = {}

    def evaluate(state, t, final):
        theta, w = alg.personal_params(state), alg.global_params(state.server)
        pers = evaluate_personal(MODEL, theta, x, y, splits, clients, strategy)
        glob = jaxpfl.evaluate_model(MODEL, w, x, y, splits, clients, strategy)
        if final:
            seen.update(pers=np.asarray(pers.correct), glob=np.asarray(glob.correct))
        return {**jaxpfl.summarize(glob), **jaxpfl.summarize(pers, "pers_")}

    seed = 3
    result = jaxpfl.simulate([jaxpfl.Phase("pfedme", alg, 3, 3)], ds,
                             lambda key: MODEL.init(key, x[:1]), evaluate,
                             jaxpfl.RunConfig(seed=seed, progress=False, strategy=strategy))
    root = jax.random.key(seed)
    rounds = [sample_clients(root, t, clients, 3).tolist() for t in range(3)]
    w0 = MODEL.init(derive(root, K.INIT, 0), x[:1])
    w, theta = reference(rounds=rounds, root=root, w0=w0)
    state = result["state"]
    assert_close(jax.tree.map(np.asarray, state.server.params), w, 2e-5)
    for k in clients:
        assert_close(_row(jax.tree.map(np.asarray, state.clients.theta), k), theta[k], 2e-5)
        test = ds.test[k]
        assert seen["pers"][k] == _np_correct(theta[k], ds.x[test], ds.y[test])
        assert seen["glob"][k] == _np_correct(w, ds.x[test], ds.y[test])
    assert "pers_acc_pooled" in result["summary"]


def test_client_order_and_reruns():
    """§1.8: permuting S_t within a round changes nothing beyond 1e-6; a rerun is bit-identical."""
    alg = pfedme(MODEL, CONFIG, BASE)
    strategy = Strategy("vmap", buckets=2)
    a, ma = run_engine(alg, strategy)
    b, _ = run_engine(alg, strategy, rounds=tuple(ids[::-1] for ids in ROUNDS))
    jax.tree.map(lambda u, v: np.testing.assert_allclose(u, v, atol=1e-6, rtol=0), a, b)
    c, mc = run_engine(alg, strategy)
    jax.tree.map(np.testing.assert_array_equal, a, c)
    jax.tree.map(np.testing.assert_array_equal, ma, mc)


def test_a_diverging_personal_model_stops_the_run():
    """A diverging inner solve stops the run: with η_p λ = 10⁶ every inner step multiplies
    θ − w_k by about 1 − 10⁶, so θ (and the loss read at it) overflows within a round. At
    β = 0 the global w stays w_0, finite: the guard must look past it (it reads the
    personal models and the client losses)."""
    ds = toy_dataset()
    alg = pfedme(MODEL, PFedMeConfig(personal_lr=0.1, lam=1e7, inner_steps=3, beta=0.0), BASE)
    with pytest.raises(RunError, match="non-finite"):
        jaxpfl.simulate([jaxpfl.Phase("pfedme", alg, 2, 6)], ds,
                        lambda key: MODEL.init(key, jnp.asarray(ds.x[:1])), lambda *a: {},
                        jaxpfl.RunConfig(progress=False, strategy=Strategy("sequential")))


def test_init_and_defaults():
    """Every θ_k starts at w_0; the defaults are PFLlib's inner solver (η_p 0.01, K 5, μ 0.001)
    with λ = 15 and β = 1 (the paper's and PFLlib's own earlier defaults, §13.3)."""
    p = _init()
    state = pfedme(MODEL).init(ROOT, p, 4)
    for k in range(4):
        jax.tree.map(np.testing.assert_array_equal, _row(state.clients.theta, k), p)
    assert PFedMeConfig() == PFedMeConfig(personal_lr=0.01, lam=15.0, inner_steps=5, beta=1.0,
                                          personal_weight_decay=0.001)


@pytest.mark.parametrize("field,value,match", [
    ("personal_lr", 0.0, "personal_lr must be > 0"),
    ("lam", -1.0, "lam must be >= 0"),
    ("lam", float("inf"), "lam must be >= 0"),
    ("inner_steps", -1, "inner_steps must be an integer >= 0"),
    ("inner_steps", 2.5, "inner_steps must be an integer >= 0"),
    ("beta", -0.5, "beta must be >= 0"),
    ("personal_weight_decay", "x", "personal_weight_decay must be >= 0"),
])
def test_bad_config_is_one_line(field, value, match):
    with pytest.raises(ConfigError, match=match):
        PFedMeConfig(**{field: value})


@pytest.mark.parametrize("base", [
    FedAvgConfig(server_opt="adam"), FedAvgConfig(server_lr=0.5),
    FedAvgConfig(client_momentum=0.9), FedAvgConfig(weight_decay=1e-4),
], ids=["server_opt", "server_lr", "momentum", "weight_decay"])
def test_fedavg_settings_pfedme_has_no_use_for_are_refused(base):
    with pytest.raises(ConfigError, match="pFedMe's"):
        pfedme(MODEL, PFedMeConfig(), base)
