"""FedALA (docs/algorithms.md §5.8): closed forms, the stop rule on scripted losses, the sample
slice, and four full rounds against a plain per-client NumPy loop on every strategy."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from toy import MODEL, np_loss_grad, np_params, np_sgd_epochs, schedule_batches, toy_dataset

from jaxpfl.algorithms.fedala import (
    FedALAConfig,
    ala,
    ala_schedule,
    fedala,
    merge,
    start_phase_done,
    top_paths,
)
from jaxpfl.core import (
    Batch,
    ClientData,
    HostRound,
    Schedule,
    Splits,
    State,
    Strategy,
    derive,
    epoch_schedule,
    evaluate_personal,
    local_steps,
    make_round,
    masked_cross_entropy,
    phase_plan,
    place_inputs,
    round_inputs,
    stage_groups,
)
from jaxpfl.core import keys as K
from jaxpfl.core.residency import to_host
from jaxpfl.errors import ConfigError
from jaxpfl.models import get_model
from jaxpfl.models.base import count_params, leaf_at

ROOT = jax.random.key(3)
SIZES = (1, 10, 23, 40)  # n_s = 0 (no learning), 8 (two short-ish batches), 18, 32
ROUNDS = ([0, 2], [1, 3], [3, 0], [2, 1])  # C = 0.5: every client sits out some rounds
# A small threshold so that the first start phase stops at different passes per client, one
# client reaching the cap (checked by the reference below).
CFG = FedALAConfig(eta=5.0, threshold=0.0025, max_start_passes=25, client_lr=0.1, batch_size=5)
TOP = ("w2", "b2")  # layer_idx 2 on the toy MLP (param_order w1, b1, w2, b2)
STRATEGIES = [  # vmap over two size groups, lax.map chunks, the eager loop, 8 fake devices
    Strategy("vmap", buckets=2),
    Strategy("chunked", chunk_size=2, buckets=1),
    Strategy("sequential"),
    Strategy("sharded", buckets=1),
]


def _params():
    return MODEL.init(jax.random.key(1), jnp.zeros((1, 4, 4, 1), jnp.uint8))


def _client(ds, k: int) -> ClientData:
    idx = jnp.asarray(ds.train[k], jnp.int32)
    return ClientData(idx, jnp.int32(len(idx)), jnp.asarray(ds.x), jnp.asarray(ds.y))


@functools.cache
def _ala(cfg: FedALAConfig):
    """One client's ALA for ``cfg``, jitted (one compilation; the eager step loop is covered
    by the sequential strategy below)."""
    return jax.jit(functools.partial(ala, MODEL, cfg))


def _perturbed(params, scale=0.5, seed=0):
    rng = np.random.default_rng(seed)
    return jax.tree.map(lambda a: a + scale * jnp.asarray(rng.normal(size=a.shape), a.dtype),
                        params)


# ---- parameter selection, configuration ----------------------------------------------------


def test_layer_idx_counts_tensors_in_forward_order():
    model = get_model("cnn")
    shapes = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, 28, 28, 1), jnp.uint8))
    top = top_paths(model, 2)
    assert top == (("params", "fc", "kernel"), ("params", "fc", "bias"))
    assert sum(int(np.prod(leaf_at(shapes, p).shape)) for p in top) == 5130
    everything = top_paths(model, 0)
    assert sum(int(np.prod(leaf_at(shapes, p).shape)) for p in everything) == 582_026
    assert count_params(shapes) == 582_026
    # Flax's sorted order would end in fc1 (524,800 weights): the wrong "last layer"
    flat = sorted(jax.tree_util.tree_flatten_with_path(shapes)[0], key=lambda kv: str(kv[0]))
    assert sum(int(np.prod(v.shape)) for _, v in flat[-2:]) == 524_800
    with pytest.raises(ConfigError, match="layer_idx 9"):
        top_paths(model, 9)
    with pytest.raises(ConfigError):
        fedala(model, FedALAConfig(layer_idx=9))


@pytest.mark.parametrize("bad", [dict(layer_idx=-1), dict(rand_percent=101), dict(threshold=0.0),
                                 dict(eta=-1.0), dict(num_pre_loss=0), dict(max_start_passes=0)])
def test_config_validation(bad):
    with pytest.raises(ConfigError):
        FedALAConfig(**bad)


# ---- the sample ------------------------------------------------------------------------------


def test_sample_is_a_contiguous_keyed_slice_reused_by_every_pass():
    width, b = 40, 5
    schedule = jax.jit(ala_schedule, static_argnums=(2, 3, 4, 5))
    for n in (2, 7, 10, 13, 23, 40):
        starts = set()
        for i in range(60):
            sched, r, n_s = schedule(jax.random.key(i), n, width, 80, b, 3)
            r, n_s = int(r), int(n_s)
            assert n_s == (80 * n) // 100
            assert 0 <= r <= n - n_s
            starts.add(r)
            pos, valid = np.asarray(sched.positions), np.asarray(sched.valid)
            for p in range(3):  # every pass reads the same batches
                np.testing.assert_array_equal(pos[p], pos[0])
                np.testing.assert_array_equal(valid[p], valid[0])
            np.testing.assert_array_equal(pos[0][valid[0]], r + np.arange(n_s))  # in order
            sizes = valid[0].sum(axis=1)  # consecutive batches of B, the last may be short
            want = [b] * (n_s // b) + ([n_s % b] if n_s % b else [])
            np.testing.assert_array_equal(sizes[: len(want)], want)
            assert not sizes[len(want):].any()
        assert starts == set(range(n - (80 * n) // 100 + 1))  # both ends inclusive
    # n_s = 0: one dummy slot only, so each pass is an active step the stop rule can end
    sched, r, n_s = ala_schedule(jax.random.key(0), 1, width, 80, b, 3)
    assert int(n_s) == 0 and 0 <= int(r) <= 1 and int(np.asarray(sched.valid[0]).sum()) == 1


# ---- ALA on one client: closed forms ------------------------------------------------------


def test_eta_zero_is_the_fedavg_broadcast():
    ds = toy_dataset()
    w = _params()
    theta = _perturbed(w)
    ones = tuple(jnp.ones_like(w[k]) for k in TOP)
    cfg = FedALAConfig(eta=0.0, batch_size=5)
    out, weights, st = _ala(cfg)(w, theta, ones, True, _client(ds, 5), jax.random.key(0))
    for k in w:
        np.testing.assert_allclose(out[k], w[k], rtol=0, atol=1e-6)
    for a in weights:
        np.testing.assert_array_equal(a, 1.0)
    # W does not move, so every pass has the same loss: the start phase stops at pass m + 1
    assert int(st.passes) == cfg.num_pre_loss + 1 and not bool(st.cap_hit)


def test_zero_weights_keep_the_local_top_and_take_w_below():
    ds = toy_dataset()
    w = _params()
    theta = _perturbed(w)
    zeros = tuple(jnp.zeros_like(w[k]) for k in TOP)
    cfg = FedALAConfig(eta=0.0, batch_size=5)
    out, _, _ = _ala(cfg)(w, theta, zeros, False, _client(ds, 5), jax.random.key(0))
    for k in ("w1", "b1"):
        np.testing.assert_array_equal(out[k], w[k])
    for k in TOP:
        np.testing.assert_array_equal(out[k], theta[k])


def test_weight_gradient_is_the_closed_form_float64():
    ds = toy_dataset()
    with jax.enable_x64(True):
        w = jax.tree.map(lambda a: jnp.asarray(a, jnp.float64), _params())
        theta = _perturbed(w)
        rng = np.random.default_rng(1)
        W = tuple(jnp.asarray(rng.uniform(size=w[k].shape)) for k in TOP)
        idx = ds.train[5][:10]
        batch = Batch(jnp.asarray(ds.x[idx]), jnp.asarray(ds.y[idx]), jnp.ones(10, bool))
        paths = top_paths(MODEL, 2)
        th_top = tuple(theta[k] for k in TOP)

        def loss(params):
            return masked_cross_entropy(MODEL, params, batch)

        @jax.jit
        def grads(W):
            merged = merge(w, th_top, W, paths)
            return jax.grad(lambda W: loss(merge(w, th_top, W, paths)))(W), merged, \
                jax.grad(loss)(merged)

        g_w, merged, g_theta = grads(W)
        for i, k in enumerate(TOP):
            closed = g_theta[k] * (w[k] - theta[k])
            np.testing.assert_allclose(g_w[i], closed, rtol=0, atol=1e-10)
        # and the NumPy gradient (the library's CE is float32, hence 1e-6)
        _, g_np = np_loss_grad(np_params(merged), ds.x[idx], ds.y[idx])
        for i, k in enumerate(TOP):
            closed = g_np[k] * (np.asarray(w[k]) - np.asarray(theta[k]))
            np.testing.assert_allclose(g_w[i], closed, rtol=0, atol=1e-6)


def test_one_pass_in_a_normal_round_and_weights_stay_in_unit_interval():
    ds = toy_dataset()
    w = _params()
    theta = _perturbed(w, scale=1.0)
    ones = tuple(jnp.ones_like(w[k]) for k in TOP)
    data = _client(ds, 5)  # n = 40: n_s = 32, batches 10, 10, 10, 2
    cfg = FedALAConfig(eta=3.0, batch_size=10)
    out, weights, st = _ala(cfg)(w, theta, ones, False, data, jax.random.key(4))
    assert int(st.passes) == 1
    # NumPy: one pass over the contiguous slice, W ← clip(W − η G, 0, 1)
    r, n_s = int(st.sample_start), int(st.sample_size)
    sample = ds.train[5][r : r + n_s]
    wn, tn = np_params(w), np_params(theta)
    Wn = {k: np.ones_like(wn[k]) for k in TOP}
    for j in range(0, n_s, 10):
        b = sample[j : j + 10]
        p = {**wn, **{k: tn[k] + (wn[k] - tn[k]) * Wn[k] for k in TOP}}
        loss, g = np_loss_grad(p, ds.x[b], ds.y[b])
        Wn = {k: np.clip(Wn[k] - 3.0 * g[k] * (wn[k] - tn[k]), 0, 1) for k in TOP}
    np.testing.assert_allclose(st.loss, loss, atol=1e-5)  # last batch, before its update
    for i, k in enumerate(TOP):
        np.testing.assert_allclose(weights[i], Wn[k], atol=1e-5)
        np.testing.assert_allclose(out[k], tn[k] + (wn[k] - tn[k]) * Wn[k], atol=1e-5)
    # a long start phase with a large η: clipping is active, W never leaves [0, 1]
    cfg = FedALAConfig(eta=200.0, batch_size=5, max_start_passes=8, threshold=1e-6)
    _, weights, st = _ala(cfg)(w, theta, ones, True, data, jax.random.key(4))
    flat = np.concatenate([np.ravel(a) for a in weights])
    assert flat.min() >= 0.0 and flat.max() <= 1.0
    assert (flat == 0.0).any()  # from W = 1, only the clip lands exactly on 0
    assert int(st.passes) == 8 and bool(st.cap_hit)


# ---- the stop rule -------------------------------------------------------------------------


@functools.cache
def _scripted(start: bool, threshold: float):
    """A step that replays a loss script (carry = pass number) and FedALA's stop rule."""

    def step(carry, script, batch, key):
        del batch, key  # unused
        return carry + 1, script[carry]

    def stop(carry, script, losses, count):
        del carry, script  # unused
        return (not start) | start_phase_done(losses, count, 10, threshold)

    return step, stop


def _passes(script, start=True, threshold=0.1, traced=False):
    cap = len(script)
    sched = Schedule(jnp.zeros((cap, 1), jnp.int32), jnp.ones((cap, 1), bool))
    data = ClientData(jnp.zeros(1, jnp.int32), jnp.int32(1), jnp.zeros((1, 1), jnp.uint8),
                      jnp.zeros(1, jnp.int32))
    step, stop = _scripted(start, threshold)

    def go(script):
        return local_steps(step, jnp.int32(0), script, data, sched, jax.random.key(0), stop=stop)

    carry, st = (jax.jit(go) if traced else go)(jnp.asarray(script, jnp.float32))
    assert int(carry) == int(st.steps)
    return int(st.steps), bool(st.cap_hit)


def _numpy_stop(script, threshold, m=10):
    losses = []
    for p, v in enumerate(script, 1):
        losses.append(v)
        if len(losses) > m and np.std(losses[-m:]) < threshold:
            return p
    return None


@pytest.mark.parametrize("traced", [False, True], ids=["eager", "jit"])
def test_stop_rule_on_scripted_losses(traced):
    cap = 60
    assert _passes([0.7] * cap, traced=traced) == (11, False)  # constant: pass m + 1
    assert _passes([0.0, 1.0] * (cap // 2), traced=traced) == (cap, True)  # std 0.5: cap
    noisy = list(np.random.default_rng(0).uniform(0, 5, cap))
    assert _passes(noisy, threshold=1e9, traced=traced) == (11, False)  # huge threshold
    assert _passes(noisy, start=False, traced=traced) == (1, False)  # normal round: one pass
    decaying = list(2.0 / np.arange(1, cap + 1))  # converges at a pass NumPy decides
    want = _numpy_stop(decaying, 0.01)
    assert 11 < want < cap
    assert _passes(decaying, threshold=0.01, traced=traced) == (want, False)


# ---- four full rounds against a NumPy loop -------------------------------------------------


def _np_ala(w, theta, W, start, ds, k, r, n_s, cfg):
    """§5.2 literally (float64): lower tensors ← w; passes over the contiguous slice."""
    theta = {**theta, **{k2: w[k2] for k2 in w if k2 not in TOP}}
    W = {k2: W[k2].copy() for k2 in TOP}

    def merged():
        return {k2: theta[k2] + (w[k2] - theta[k2]) * W[k2] if k2 in TOP else w[k2] for k2 in w}

    if n_s == 0:
        return merged(), W, 0
    sample = ds.train[k][r : r + n_s]
    batches = [sample[j : j + cfg.batch_size] for j in range(0, n_s, cfg.batch_size)]
    losses = []
    while True:
        for b in batches:
            loss, g = np_loss_grad(merged(), ds.x[b], ds.y[b])
            for k2 in TOP:
                W[k2] = np.clip(W[k2] - cfg.eta * g[k2] * (w[k2] - theta[k2]), 0.0, 1.0)
        losses.append(loss)
        if not start:
            break
        m = cfg.num_pre_loss
        if len(losses) > m and np.std(losses[-m:]) < cfg.threshold:
            break
        if len(losses) == cfg.max_start_passes:
            break
    return merged(), W, len(losses)


def run_reference(cfg=CFG):
    """§5.3 literally: ALA on every client (skipped in round 0), then the selected train, then
    the weighted mean. The ALA of round t uses the key the engine's stage after round t−1
    uses. Returns, per round t ≥ 1, the ALA outputs (what PFLlib evaluates at round t)."""
    ds = toy_dataset(SIZES)
    n_clients = len(SIZES)
    w = np_params(_params())
    theta = [dict(w) for _ in range(n_clients)]
    W = [{k: np.ones_like(w[k]) for k in TOP} for _ in range(n_clients)]
    start = [True] * n_clients
    out = []
    for t in range(len(ROUNDS) + 1):
        if t > 0:
            passes = []
            for k in range(n_clients):
                n = len(ds.train[k])
                _, r, n_s = ala_schedule(derive(ROOT, K.STAGE, t - 1, k), n, max(n, 1),
                                         cfg.rand_percent, cfg.batch_size, 1)
                theta[k], W[k], p = _np_ala(w, theta[k], W[k], start[k], ds, k, int(r),
                                            int(n_s), cfg)
                start[k] = False
                passes.append(p)
            out.append(dict(w=w, theta=[dict(th) for th in theta], W=[dict(x) for x in W],
                            passes=passes))
        if t == len(ROUNDS):
            break
        msgs = []
        for k in ROUNDS[t]:
            n = len(ds.train[k])
            sched = epoch_schedule(jax.random.fold_in(derive(ROOT, K.DATA, t, k), 0), n,
                                   max(n, 1), cfg.batch_size, cfg.local_epochs, drop_last=True)
            theta[k] = np_sgd_epochs(theta[k], ds.x, ds.y, schedule_batches(sched, ds.train[k]),
                                     cfg.client_lr)
            msgs.append((theta[k], n))
        total = sum(n for _, n in msgs)
        w = {p: sum(th[p] * n for th, n in msgs) / total for p in w}
    return ds, out


def run_engine(strategy: Strategy, cfg=CFG, rounds=ROUNDS, host_chunk: int | None = None):
    """The engine's rounds; with ``host_chunk``, the client state in host memory
    (``HostRound``, the stage in chunks of that many rows)."""
    ds = toy_dataset(SIZES)
    alg = fedala(MODEL, cfg)
    state = alg.init(ROOT, _params(), ds.num_clients)
    if host_chunk is None:
        rnd = make_round(alg, strategy)
    else:
        rnd = HostRound(alg, strategy, stage_chunk=host_chunk)
        state = State(state.server, to_host(state.clients))
    x, y = jnp.asarray(ds.x), jnp.asarray(ds.y)
    stage = stage_groups(ds, strategy) if alg.client_stage is not None else None
    plan = phase_plan(ds, [np.array(ids) for ids in rounds], strategy)  # one compilation
    out = []
    for t, ids in enumerate(rounds):
        inputs = place_inputs(round_inputs(ds, np.array(ids), strategy, plan, stage), strategy)
        state, o = rnd(state, x, y, inputs, jnp.int32(t), ROOT)
        out.append((jax.tree.map(np.array, state), jax.tree.map(np.array, o.stage)))
    return ds, alg, state, out


@pytest.fixture(scope="module")
def reference():
    return run_reference()


def test_reference_setting_is_meaningful(reference):
    """The first start phase stops at different passes, one client at the cap, one client
    without a sample; later rounds take one pass (the engine tests below compare to this)."""
    _, out = reference
    first = out[0]["passes"]
    assert first[0] == 0 and CFG.max_start_passes in first
    assert len(set(first[1:])) == 3 and min(first[1:]) > CFG.num_pre_loss
    for rec in out[1:]:
        assert rec["passes"] == [0, 1, 1, 1]


HOST = [  # the eager loop, vmap, 8 fake devices (a chunk of 2 rows padded to 8)
    (Strategy("sequential"), 3),
    (Strategy("vmap", buckets=2), 1),
    (Strategy("sharded", buckets=1), 2),
]


@pytest.mark.parametrize(
    "strategy,host_chunk",
    [(s, None) for s in STRATEGIES] + HOST,
    ids=lambda v: v if isinstance(v, int) or v is None else f"{v.name}-b{v.buckets}",
)
def test_four_rounds_equal_the_numpy_loop(strategy, host_chunk, reference):
    """Every strategy, and client state in host memory (HostRound: only the round's rows on
    the device, the stage in chunks of 3 or 1 rows), against the NumPy loop."""
    ds, ref = reference
    _, alg, state, out = run_engine(strategy, host_chunk=host_chunk)
    if host_chunk is not None:
        assert isinstance(state.clients.theta["w1"], np.ndarray)
    for t, ((st, stage), want) in enumerate(zip(out, ref)):
        server, clients = st
        for p in want["w"]:
            np.testing.assert_allclose(server.params[p], want["w"][p], atol=1e-5)
        np.testing.assert_array_equal(clients.passes, want["passes"])
        np.testing.assert_array_equal(stage["ala_passes"], want["passes"])
        np.testing.assert_array_equal(clients.start, False)
        np.testing.assert_array_equal(stage["ala_start_phase"], t == 0)
        np.testing.assert_array_equal(clients.cap_hit,
                                      [t == 0 and p == CFG.max_start_passes
                                       for p in want["passes"]])
        for k in range(len(SIZES)):
            for p in want["w"]:
                np.testing.assert_allclose(clients.theta[p][k], want["theta"][k][p], atol=1e-5)
            for i, p in enumerate(TOP):
                np.testing.assert_allclose(clients.weights[i][k], want["W"][k][p], atol=1e-5)
    # the driver's per-client evaluation sees the ALA outputs
    counts = evaluate_personal(MODEL, alg.personal_params(state), jnp.asarray(ds.x),
                               jnp.asarray(ds.y), Splits.of(ds), np.arange(len(SIZES)), strategy)
    for k in range(len(SIZES)):
        th, q = ref[-1]["theta"][k], ds.test[k]
        h = np.tanh(ds.x[q].reshape(len(q), -1) / 255.0 @ th["w1"] + th["b1"])
        hits = int((np.argmax(h @ th["w2"] + th["b2"], axis=1) == ds.y[q]).sum())
        assert int(counts.correct[k]) == hits


def test_host_resident_state_is_bit_identical_to_device_resident():
    """sequential: the same per-client computations, so the same bits; the host stack is
    NumPy after every round."""
    _, _, _, dev = run_engine(Strategy("sequential"))
    _, _, _, host = run_engine(Strategy("sequential"), host_chunk=3)
    jax.tree.map(np.testing.assert_array_equal, dev, host)


def test_deterministic():
    _, _, _, a = run_engine(Strategy("sequential"))
    _, _, _, b = run_engine(Strategy("sequential"))
    jax.tree.map(np.testing.assert_array_equal, a, b)


def test_eta_zero_broadcasts_w_to_every_client():
    cfg = FedALAConfig(eta=0.0, client_lr=0.1, batch_size=5, max_start_passes=12)
    _, _, state, _ = run_engine(Strategy("sequential"), cfg, ROUNDS[:2])
    for p, v in state.server.params.items():
        for k in range(len(SIZES)):
            np.testing.assert_allclose(state.clients.theta[p][k], v, atol=1e-6)


def test_ala_on_selected_only():
    """ALA inside client_update on S_t only, skipped in round 0: clients 1 and 3 (selected in
    round 1) run their start phase, clients 0 and 2 never run ALA."""
    cfg = FedALAConfig(client_lr=0.1, batch_size=5, max_start_passes=12,
                       ala_on_selected_only=True)
    assert fedala(MODEL, cfg).client_stage is None
    _, _, _, out = run_engine(Strategy("sequential"), cfg, ROUNDS[:2])
    (_, c0), _ = out[0]
    (_, c1), _ = out[1]
    np.testing.assert_array_equal(c0.start, True)
    np.testing.assert_array_equal(c0.passes, 0)
    np.testing.assert_array_equal(c1.start, [True, False, True, False])
    assert (c1.passes[[1, 3]] > 0).all() and (c1.passes[[0, 2]] == 0).all()
    for p in c0.theta:  # clients 0 and 2 keep what they trained in round 0
        np.testing.assert_array_equal(c1.theta[p][[0, 2]], c0.theta[p][[0, 2]])


def run_selected_only_reference(cfg: FedALAConfig, rounds) -> list[list[dict]]:
    """``ala_on_selected_only`` literally: in round t >= 1 each selected client runs ALA of
    w_t (sample key ``fold_in(data key, 2)``) right before its training; the others keep their
    stored model. Returns every client's stored θ_k after each round (what the driver's
    evaluation after the round sees)."""
    ds = toy_dataset(SIZES)
    n_clients = len(SIZES)
    w = np_params(_params())
    theta = [dict(w) for _ in range(n_clients)]
    W = [{k: np.ones_like(w[k]) for k in TOP} for _ in range(n_clients)]
    start = [True] * n_clients
    out = []
    for t, ids in enumerate(rounds):
        msgs = []
        for k in ids:
            n = len(ds.train[k])
            key = derive(ROOT, K.DATA, t, k)
            if t > 0:
                _, r, n_s = ala_schedule(jax.random.fold_in(key, 2), n, max(n, 1),
                                         cfg.rand_percent, cfg.batch_size, 1)
                theta[k], W[k], _ = _np_ala(w, theta[k], W[k], start[k], ds, k, int(r),
                                            int(n_s), cfg)
                start[k] = False
            sched = epoch_schedule(jax.random.fold_in(key, 0), n, max(n, 1), cfg.batch_size,
                                   cfg.local_epochs, drop_last=True)
            theta[k] = np_sgd_epochs(theta[k], ds.x, ds.y, schedule_batches(sched, ds.train[k]),
                                     cfg.client_lr)
            msgs.append((theta[k], n))
        total = sum(n for _, n in msgs)
        w = {p: sum(th[p] * n for th, n in msgs) / total for p in w}
        out.append([dict(th) for th in theta])
    return out


FULL = ([0, 1, 2, 3],) * 3  # C = 1


@pytest.mark.parametrize("rounds", [ROUNDS, FULL], ids=["C=0.5", "C=1"])
def test_ala_on_selected_only_equals_its_literal_loop(rounds):
    """What ala_on_selected_only computes, numerically: the stored (and evaluated) θ_k after
    each round are the selected clients' trained models and the others' stale ones."""
    cfg = FedALAConfig(eta=5.0, threshold=0.0025, max_start_passes=25, client_lr=0.1,
                       batch_size=5, ala_on_selected_only=True)
    want = run_selected_only_reference(cfg, rounds)
    _, _, _, out = run_engine(Strategy("sequential"), cfg, rounds)
    for t, ((st, _), ref) in enumerate(zip(out, want)):
        for k in range(len(SIZES)):
            for p in ref[k]:
                np.testing.assert_allclose(st.clients.theta[p][k], ref[k][p], atol=1e-5,
                                           err_msg=f"round {t} client {k} {p}")


def test_ala_on_selected_only_differs_from_the_reference_at_full_participation():
    """Even with C = 1 the option is not the reference's schedule: the models evaluated after
    a round are trained models, not ALA outputs, and the ALA sample uses another key."""
    sel = FedALAConfig(eta=5.0, threshold=0.0025, max_start_passes=25, client_lr=0.1,
                       batch_size=5, ala_on_selected_only=True)
    _, _, _, ref = run_engine(Strategy("sequential"), CFG, FULL)
    _, _, _, opt = run_engine(Strategy("sequential"), sel, FULL)
    gap = max(float(np.abs(ref[-1][0].clients.theta[p] - opt[-1][0].clients.theta[p]).max())
              for p in TOP)
    assert gap > 1e-3


def test_cache_features_is_a_setting_that_takes_effect(monkeypatch):
    """The feature cache is a field of the config (no module switch to set by mistake): off,
    the cached path is never entered; on, it is."""
    import sys

    module = sys.modules[ala.__module__]  # the package exports a function of that name

    def no_cache(*args, **kwargs):
        raise AssertionError("the cached-feature path ran")

    monkeypatch.setattr(module, "_feature_rows", no_cache)
    assert not hasattr(module, "CACHE_FEATURES")
    model = get_model("cnn", (28, 28, 1), 10)
    x = jnp.zeros((12, 28, 28, 1), jnp.uint8)
    w = model.init(jax.random.key(0), x[:1])
    ones = tuple(jnp.ones_like(leaf_at(w, p)) for p in top_paths(model, 2))
    data = ClientData(jnp.arange(12, dtype=jnp.int32), jnp.int32(12), x, jnp.zeros(12, jnp.int32))
    off = FedALAConfig(batch_size=5, max_start_passes=2, cache_features=False)
    ala(model, off, w, w, ones, False, data, jax.random.key(1))  # runs the full model
    with pytest.raises(AssertionError, match="cached-feature path ran"):
        ala(model, FedALAConfig(batch_size=5, max_start_passes=2), w, w, ones, False, data,
            jax.random.key(1))


# ---- the ALA passes on cached features (FedAvgCNN: the conv body is w's in every pass) -----


@pytest.mark.parametrize("start", [True, False], ids=["start-phase", "one-pass"])
@pytest.mark.parametrize("traced", [False, True], ids=["eager", "jit"])
def test_cached_features_equal_the_full_model(start, traced):
    _cached_vs_full(start, traced)


def test_eager_feature_pass_computes_only_the_real_chunks():
    """A padded row (width 50, n = 37: 29 sample examples in 40 slots) and chunks of 8: the
    eager path computes 4 of the 5 chunks and zero-fills the last; the same result."""
    _cached_vs_full(False, False, width=50, chunk=8)


def _cached_vs_full(start, traced, width: int = 37, chunk: int = 256):
    model = get_model("cnn", (28, 28, 1), 10)
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.integers(0, 256, (50, 28, 28, 1)).astype(np.uint8))
    y = jnp.asarray(rng.integers(0, 10, 50).astype(np.int32))
    w = model.init(jax.random.key(0), x[:1])
    theta = _perturbed(w, scale=0.05)
    paths = top_paths(model, 2)
    ones = tuple(jnp.ones_like(leaf_at(w, p)) for p in paths)
    data = ClientData(jnp.arange(width, dtype=jnp.int32), jnp.int32(37), x, y)
    outs = {}
    for cache in (False, True):
        cfg = FedALAConfig(eta=1.0, batch_size=5, max_start_passes=12, threshold=1e-4,
                           cache_features=cache, feature_chunk=chunk)
        fn = functools.partial(ala, model, cfg)
        fn = jax.jit(fn) if traced or not cache else fn  # the full model jitted: the reference
        outs[cache] = fn(w, theta, ones, start, data, jax.random.key(2))
    (full, wf, sf), (cached, wc, sc) = outs[False], outs[True]
    assert int(sf.passes) == int(sc.passes) == (12 if start else 1)
    np.testing.assert_allclose(float(sc.loss), float(sf.loss), rtol=1e-5)
    for a, b in zip(jax.tree.leaves((cached, wc)), jax.tree.leaves((full, wf))):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-5)
