"""Per-FedAvg FO / HF (ALGORITHMS.md §4.6, §1.8) against independent per-client loops.

The references below implement §4.1's pseudocode literally, client by client, reading the
batches from the exported schedules (``stream_schedule``; ``epoch_schedule`` for ``epochs``)
themselves: NumPy gradients of the toy MLP (``toy.py``), the fd formula, and for ``exact`` the
full Hessian matrix (``jax.hessian`` of a literal float64 loss) times v.
"""

import dataclasses
import importlib.util
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P
from toy import MODEL, np_loss_grad, np_params, np_sgd_epochs, schedule_batches, toy_dataset

from jaxpfl.algorithms.per_fedavg import (
    PerFedAvgConfig,
    meta_schedule,
    meta_step,
    per_fedavg,
    personalize,
)
from jaxpfl.core import (
    Batch,
    ClientData,
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
from jaxpfl.errors import ConfigError, RunError
from jaxpfl.models.base import Model
from jaxpfl.run import Phase, RunConfig, run

ROOT = jax.random.key(11)
REPO = Path(__file__).resolve().parents[1]
SEQ = Strategy("sequential")
# Small learning rates keep the float32 engine within 1e-5 of the float64 references.
FO = PerFedAvgConfig(variant="fo", inner_lr=0.1, outer_lr=0.2, batch_size=5, meta_steps=3)
HF = dataclasses.replace(FO, variant="hf")
HF_EXACT = dataclasses.replace(HF, hvp="exact")
FO_EPOCHS = dataclasses.replace(FO, meta_steps=None, epochs=1, calls_per_round=2, weighted=True)


def _params(model=MODEL):
    return model.init(jax.random.key(1), jnp.zeros((1, 4, 4, 1), jnp.uint8))


def run_rounds(cfg, rounds=3, strategy=SEQ, clients=None, ds=None, model=MODEL, loss=None):
    ds = ds or toy_dataset()
    alg = per_fedavg(model, cfg) if loss is None else per_fedavg(model, cfg, loss=loss)
    state = alg.init(ROOT, _params(model), ds.num_clients)
    if strategy.name == "sharded":  # replicated on the mesh as the round returns it (1 compile)
        state = jax.device_put(state, NamedSharding(strategy.mesh(), P()))
    rnd = make_round(alg, strategy)
    x, y = jnp.asarray(ds.x), jnp.asarray(ds.y)
    clients = np.arange(ds.num_clients) if clients is None else np.asarray(clients)
    outs = []
    for t in range(rounds):
        inputs = place_inputs(round_inputs(ds, clients, strategy), strategy)
        state, out = rnd(state, x, y, inputs, jnp.int32(t), ROOT)
        outs.append(jax.tree.map(np.asarray, out.metrics))
    return state, outs


# ---- the independent reference ------------------------------------------------------------


def _width(ds):
    """One index-row width for every client (the positions of a client's examples do not
    depend on it, §1.3; one width = one compilation of the schedule functions)."""
    return int(ds.train.sizes.max())


def client_batches(cfg, ds, k, t):
    """Client k's batches of round t as a list of meta-steps, each a list of 2 or 3 index
    arrays, read from the exported schedules directly."""
    nb = 2 if cfg.variant == "fo" else 3
    order = jax.random.fold_in(derive(ROOT, K.DATA, t, k), 0)
    n, width = len(ds.train[k]), _width(ds)
    if cfg.epochs is None:  # the next nb batches of the step stream, τ times
        num = nb * cfg.meta_steps * cfg.calls_per_round
        flat = schedule_batches(stream_schedule(order, n, width, cfg.batch_size, num),
                                ds.train[k])
        return [flat[i : i + nb] for i in range(0, len(flat), nb)]
    big = epoch_schedule(order, n, width, nb * cfg.batch_size,
                         cfg.epochs * cfg.calls_per_round, drop_last=True, shuffle=cfg.shuffle)
    b = cfg.batch_size  # one nb·B loader batch split into nb consecutive batches of B
    return [[s[i * b : (i + 1) * b] for i in range(nb)]
            for s in schedule_batches(big, ds.train[k])]


def _flat(p):
    return np.concatenate([p[k].ravel() for k in ("w1", "b1", "w2", "b2")])


def _unflat(v, like):
    out, o = {}, 0
    for k in ("w1", "b1", "w2", "b2"):
        out[k] = v[o : o + like[k].size].reshape(like[k].shape)
        o += like[k].size
    return out


def _literal_loss(vec, x, y):
    q = _unflat(vec, SHAPES)
    h = jnp.tanh(x.reshape(len(x), -1) / 255.0 @ q["w1"] + q["b1"][None, :])
    z = h @ q["w2"] + q["b2"][None, :]
    return -jnp.mean(jax.nn.log_softmax(z)[jnp.arange(len(y)), y])


SHAPES = {k: np.zeros(np.shape(v)) for k, v in _params().items()}
_hessian = jax.jit(jax.hessian(_literal_loss))


def hessian_times(p, x, y, v):
    """H(θ; batch) v with the full Hessian matrix of a literal float64 loss."""
    with jax.enable_x64(True):
        vec = jnp.asarray(_flat(p), jnp.float64)
        hess = np.asarray(_hessian(vec, jnp.asarray(x, jnp.float64), jnp.asarray(y)))
    return _unflat(hess @ _flat(v), p)


def reference_client(w, cfg, ds, k, t):
    """§4.1 for client k in round t, literally."""
    a, b, d = cfg.inner_lr, cfg.outer_lr, cfg.delta
    theta = dict(w)
    for batches in client_batches(cfg, ds, k, t):
        D, D1 = batches[0], batches[1]
        _, g = np_loss_grad(theta, ds.x[D], ds.y[D])
        w_tilde = {p: theta[p] - a * g[p] for p in w}
        _, v = np_loss_grad(w_tilde, ds.x[D1], ds.y[D1])
        if cfg.variant == "fo":
            theta = {p: theta[p] - b * v[p] for p in w}
            continue
        D2 = batches[2]  # the Hessian at the PRE-inner weights θ
        if cfg.hvp == "fd":
            _, gp = np_loss_grad({p: theta[p] + d * v[p] for p in w}, ds.x[D2], ds.y[D2])
            _, gm = np_loss_grad({p: theta[p] - d * v[p] for p in w}, ds.x[D2], ds.y[D2])
            h = {p: (gp[p] - gm[p]) / (2 * d) for p in w}
        else:
            h = hessian_times(theta, ds.x[D2], ds.y[D2], v)
        theta = {p: theta[p] - b * (v[p] - a * h[p]) for p in w}
    return theta


def reference_per_fedavg(cfg, rounds=3, ds=None):
    ds = ds or toy_dataset()
    w = np_params(_params())
    for t in range(rounds):
        thetas = [reference_client(w, cfg, ds, k, t) for k in range(ds.num_clients)]
        n = ds.train.sizes.astype(np.float64)
        p = n / n.sum() if cfg.weighted else np.full(len(n), 1.0 / len(n))
        w = {key: sum(pk * th[key] for pk, th in zip(p, thetas)) for key in w}
    return w


def assert_close(params, ref, tol=1e-5):
    for key in ref:
        np.testing.assert_allclose(np.asarray(params[key]), ref[key], atol=tol, rtol=0)


@pytest.mark.parametrize("cfg", [FO, HF, HF_EXACT, FO_EPOCHS],
                         ids=["fo", "hf_fd", "hf_exact", "fo_epochs_weighted_2calls"])
def test_three_rounds_equal_reference_loop(cfg):
    state, outs = run_rounds(cfg)
    assert_close(state.server.params, reference_per_fedavg(cfg))
    ds = toy_dataset()
    steps = [len(client_batches(cfg, ds, k, 2)) for k in range(ds.num_clients)]
    assert outs[-1]["steps"].tolist() == steps
    if cfg.epochs:  # PFLlib's count: 2 calls x floor(n_k / 2B) meta-steps
        assert steps == [2 * (n // 10) for n in ds.train.sizes]


# ---- closed forms ---------------------------------------------------------------------------


def quadratic_loss(model, params, batch, key, train):
    """ℓ(θ; b) = ½θᵀA_bθ − c_bᵀθ, A_b = I + mean_i u_i u_iᵀ, c_b = mean_i y_i u_i (valid i)."""
    del model, key, train
    u, wv = batch.x, batch.valid.astype(batch.x.dtype)
    m = jnp.maximum(jnp.sum(wv), 1.0)
    A = jnp.eye(u.shape[-1], dtype=u.dtype) + jnp.einsum("i,ij,ik->jk", wv, u, u) / m
    c = jnp.einsum("i,i,ij->j", wv, batch.y, u) / m
    th = params["theta"]
    return 0.5 * th @ A @ th - c @ th


def _quad_ab(x, y, idx):
    u = x[idx]
    return np.eye(u.shape[1]) + u.T @ u / len(idx), (y[idx][:, None] * u).mean(0)


@pytest.mark.parametrize("hvp", ["fd", "exact"])
def test_quadratic_losses_equal_closed_form(hvp):
    """θ_t = θ_{t−1} − β (I − αA_{D''})(A_{D'} w̃ − c_{D'}), w̃ = θ − α(A_D θ − c_D) (float64)."""
    with jax.enable_x64(True):
        rng = np.random.default_rng(0)
        n, d = 30, 4
        x, y = rng.normal(size=(n, d)), rng.normal(size=n)
        cfg = PerFedAvgConfig(inner_lr=0.3, outer_lr=0.5, batch_size=4, meta_steps=2, hvp=hvp)
        alg = per_fedavg("quadratic", cfg, loss=quadratic_loss)
        w = {"theta": jnp.asarray(rng.normal(size=d))}
        data = ClientData(jnp.arange(n, dtype=jnp.int32), jnp.int32(n), jnp.asarray(x),
                          jnp.asarray(y))
        key = jax.random.key(5)
        _, msg, metrics = alg.client_update(alg.init(None, w, 1).server, None, data, key)
        sched = meta_schedule(cfg, jax.random.fold_in(key, 0), n, n)
        theta = np.asarray(w["theta"])
        for s in range(2):
            (A0, c0), (A1, c1), (A2, _) = (_quad_ab(x, y, np.asarray(sched.positions[s, i]))
                                           for i in range(3))
            w_tilde = theta - 0.3 * (A0 @ theta - c0)
            theta = theta - 0.5 * (np.eye(d) - 0.3 * A2) @ (A1 @ w_tilde - c1)
        np.testing.assert_allclose(np.asarray(msg.params["theta"]), theta, atol=1e-10, rtol=0)
        assert int(metrics["steps"]) == 2


@pytest.mark.parametrize("shuffle", [False, True], ids=["stored_order", "shuffled"])
def test_hf_epochs_equal_literal_3b_slice_loop(shuffle):
    """HF with epochs = 1, one call: a literal loop over the 3B slices of the epoch order
    (first B → D, next B → D', last B → D''), the short remainder dropped, the fd formula on
    the quadratic's gradient (float64). Stored order: the slices are written out here; shuffled:
    the order is the one of ``meta_schedule`` (the same index schedule)."""
    with jax.enable_x64(True):
        rng = np.random.default_rng(1)
        n, width, d, b = 31, 40, 4, 4  # ⌊31/12⌋ = 2 meta-steps; 7 examples dropped
        a, beta, delta = 0.3, 0.5, 1e-3
        x, y = rng.normal(size=(n + 5, d)), rng.normal(size=n + 5)  # pool larger than the row
        row = rng.permutation(n + 5)[:n]  # the client's examples in the pool, stored order
        cfg = PerFedAvgConfig(inner_lr=a, outer_lr=beta, batch_size=b, epochs=1, delta=delta,
                              shuffle=shuffle)
        assert (cfg.variant, cfg.hvp, cfg.calls_per_round) == ("hf", "fd", 1)
        alg = per_fedavg("quadratic", cfg, loss=quadratic_loss)
        w = {"theta": jnp.asarray(rng.normal(size=d))}
        idx = jnp.asarray(np.pad(row, (0, width - n)), jnp.int32)
        data = ClientData(idx, jnp.int32(n), jnp.asarray(x), jnp.asarray(y))
        key = jax.random.key(8)
        _, msg, metrics = alg.client_update(alg.init(None, w, 1).server, None, data, key)
        if shuffle:
            sched = meta_schedule(cfg, jax.random.fold_in(key, 0), n, width)
            on = np.asarray(sched.valid).any(axis=(1, 2))
            order = np.asarray(sched.positions)[on].reshape(-1)  # the epoch's order, sliced
            assert not np.array_equal(order, np.arange(len(order)))  # really shuffled
        else:
            order = np.arange(n)
        slices = [order[3 * b * j : 3 * b * (j + 1)] for j in range(n // (3 * b))]

        def grad(theta, pos):
            A, c = _quad_ab(x, y, row[pos])
            return A @ theta - c

        theta = np.asarray(w["theta"])
        for sl in slices:
            D, D1, D2 = sl[:b], sl[b : 2 * b], sl[2 * b :]
            assert len(D2) == b
            w_tilde = theta - a * grad(theta, D)
            v = grad(w_tilde, D1)
            h = (grad(theta + delta * v, D2) - grad(theta - delta * v, D2)) / (2 * delta)
            theta = theta - beta * (v - a * h)
        assert len(slices) == 2 and int(metrics["steps"]) == 2
        np.testing.assert_allclose(np.asarray(msg.params["theta"]), theta, atol=1e-10, rtol=0)


def _logit_apply(params, x, train=False, key=None):
    """Two classes with logits (xᵀθ, 0): the evaluation loss reveals θ."""
    del train, key
    z = x @ params["theta"]
    return jnp.stack([z, jnp.zeros_like(z)], axis=-1)


LOGIT = Model("logit2", lambda key, x: {"theta": jnp.zeros(x.shape[-1])}, _logit_apply,
              (("theta",),), 2, (4,))


def _quadratic_int_y(model, params, batch, key, train):
    """The quadratic loss with the integer class labels as its targets c_b."""
    return quadratic_loss(model, params, batch._replace(y=batch.y.astype(batch.x.dtype)), key,
                          train)


def test_personalize_trains_with_the_given_loss():
    """personalize(..., loss=quadratic): θ_P = P SGD steps θ ← θ − α(A_b θ − c_b) on the
    training stream (NumPy), then counted by the cross-entropy of §1.6 on the test row. Cross-
    entropy training (the loss ignored) gives another θ, hence another test loss."""
    with jax.enable_x64(True):
        rng = np.random.default_rng(2)
        n_tr, n_te, d, steps = 20, 7, 3, 3
        x = rng.normal(size=(n_tr + n_te, d))
        y = rng.integers(0, 2, size=n_tr + n_te).astype(np.int32)
        tr = rng.permutation(n_tr + n_te)[:n_tr]
        te = np.setdiff1d(np.arange(n_tr + n_te), tr)
        data = ClientData(jnp.asarray(tr, jnp.int32), jnp.int32(n_tr), jnp.asarray(x),
                          jnp.asarray(y), test_idx=jnp.asarray(te, jnp.int32),
                          test_n=jnp.int32(n_te))
        cfg = PerFedAvgConfig(inner_lr=0.4, batch_size=4, personalization_steps=steps)
        w = {"theta": jnp.asarray(rng.normal(size=d))}
        key = jax.random.key(4)
        init, pers = personalize(LOGIT, cfg, loss=_quadratic_int_y)(w, data, key)
        _, ce_pers = personalize(LOGIT, cfg)(w, data, key)
        sched = stream_schedule(jax.random.fold_in(key, 0), n_tr, n_tr, 4, steps)
        theta = np.asarray(w["theta"])
        for pos in np.asarray(sched.positions):
            A, c = _quad_ab(x, y.astype(np.float64), tr[pos])
            theta = theta - 0.4 * (A @ theta - c)

        def test_loss(th):  # Σ CE of logits (xᵀθ, 0) over the test row
            z = x[te] @ th
            return float(np.sum(np.logaddexp(z, 0.0) - np.where(y[te] == 0, z, 0.0)))

        np.testing.assert_allclose(float(pers.loss_sum), test_loss(theta), rtol=1e-5)
        np.testing.assert_allclose(float(init.loss_sum), test_loss(np.asarray(w["theta"])),
                                   rtol=1e-5)
        assert abs(float(ce_pers.loss_sum) - test_loss(theta)) > 1e-3 * test_loss(theta)
        assert int(pers.count) == n_te


def _ce64(model, params, batch, key, train):
    logits = model.apply(params, batch.x, train=train, key=key)
    nll = -jnp.take_along_axis(jax.nn.log_softmax(logits), batch.y[:, None], axis=1)[:, 0]
    v = batch.valid.astype(logits.dtype)
    return jnp.sum(nll * v) / jnp.maximum(jnp.sum(v), 1.0)


def test_fd_error_shrinks_like_delta_squared_on_tanh_mlp():
    """‖h_fd − h_exact‖ = ‖θ⁺_fd − θ⁺_exact‖ / (αβ) (v is shared); halving δ divides it by ≈ 4."""
    ds = toy_dataset()
    with jax.enable_x64(True):
        w = jax.tree.map(lambda a: jnp.asarray(a, jnp.float64), _params())
        pos = np.asarray(ds.train[5][:24]).reshape(3, 8)
        batch = Batch(jnp.asarray(ds.x[pos]), jnp.asarray(ds.y[pos]), jnp.ones((3, 8), bool))

        def after(**kw):
            cfg = PerFedAvgConfig(inner_lr=1.0, outer_lr=1.0, **kw)
            carry = (w, jnp.zeros((), jnp.float32))
            (theta, _), _ = meta_step(MODEL, cfg, _ce64)(carry, None, batch, ROOT)
            return np.concatenate([np.ravel(a) for a in jax.tree.leaves(theta)])

        exact = after(hvp="exact")
        errs = [np.linalg.norm(after(hvp="fd", delta=d) - exact) for d in (0.04, 0.02, 0.01)]
    assert errs[2] < 1e-3 * np.linalg.norm(exact)
    for big, small in zip(errs, errs[1:]):
        assert 3.5 < big / small < 4.5, errs


def test_alpha_zero_is_sgd_with_outer_lr_on_the_second_batches():
    """α = 0: w̃ = θ and HF's α·Hv term vanishes, so FO and HF are SGD with lr β on D'. With
    τ = 1 both read D' = batch 1 of the same stream, so FO == HF as well."""
    ds = toy_dataset()
    results = []
    for cfg in (FO, HF):
        cfg = dataclasses.replace(cfg, inner_lr=0.0, meta_steps=1)
        state, _ = run_rounds(cfg, ds=ds)
        w = np_params(_params())
        for t in range(3):
            thetas = [np_sgd_epochs(w, ds.x, ds.y, [b[1] for b in client_batches(cfg, ds, k, t)],
                                    cfg.outer_lr) for k in range(6)]
            w = {p: np.mean([th[p] for th in thetas], 0) for p in w}
        assert_close(state.server.params, w)
        results.append(state.server.params)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-7), *results)


# ---- schedules --------------------------------------------------------------------------------


@pytest.mark.parametrize("variant", ["fo", "hf"])
def test_each_meta_step_reads_distinct_batches_of_the_stream(variant):
    nb = 2 if variant == "fo" else 3
    n, b = 40, 5  # 8 stream batches per epoch
    cfg = PerFedAvgConfig(variant=variant, batch_size=b, meta_steps=8 // nb)
    key = jax.random.key(3)
    s = meta_schedule(cfg, key, n, n)
    assert s.positions.shape == (8 // nb, nb, b) and bool(jnp.all(s.valid))
    seen = np.asarray(s.positions).ravel()
    assert len(set(seen.tolist())) == len(seen)  # no example twice within the stream epoch
    stream = stream_schedule(key, n, n, b, nb * (8 // nb))  # step t = stream batches nb·t..
    np.testing.assert_array_equal(np.asarray(s.positions).reshape(-1, b), stream.positions)
    # epochs: floor(n / nb·B) meta-steps per epoch, each epoch's examples distinct
    e = meta_schedule(dataclasses.replace(cfg, meta_steps=None, epochs=2), key, 43, 50)
    active = np.asarray(e.valid).any(axis=(1, 2))
    per_epoch = 43 // (nb * b)
    assert active.sum() == 2 * per_epoch and np.asarray(e.valid)[active].all()
    pos = np.asarray(e.positions)[active].reshape(2, -1)
    for epoch in pos:
        assert len(set(epoch.tolist())) == len(epoch) and epoch.max() < 43


def _onehot_loss(model, params, batch, key, train):
    """ℓ(θ; b) = ½‖θ‖² − c_bᵀθ, c_b = mean of the valid one-hot rows x_i: ∇ℓ = θ − c_b."""
    del model, key, train
    wv = batch.valid.astype(batch.x.dtype)
    c = jnp.einsum("i,ij->j", wv, batch.x) / jnp.maximum(jnp.sum(wv), 1.0)
    th = params["theta"]
    return 0.5 * th @ th - c @ th


def test_fresh_stream_every_round_and_no_stale_batch():
    """KT-Per's stale iterator (the same first batch at every step) and a stream replayed
    across rounds must both be visible in θ_τ. With one-hot examples x_i = e_i, α = β = 1 and
    FO: w̃ = c_D, v = c_D − c_D', so θ_τ − w = Σ_t (c_{D'_t} − c_{D_t}): example i's entry is
    ±1/B per read. The engine hands client k of round t the key derive(root, DATA, t, k)."""
    n, b, tau = 40, 5, 3  # 2τ = 6 of the 8 batches of one stream epoch
    cfg = PerFedAvgConfig(variant="fo", inner_lr=1.0, outer_lr=1.0, batch_size=b,
                          meta_steps=tau)
    alg = per_fedavg("onehot", cfg, loss=_onehot_loss)
    idx = jnp.asarray(np.random.default_rng(0).permutation(n), jnp.int32)  # row -> pool id
    data = ClientData(idx, jnp.int32(n), jnp.eye(n, dtype=jnp.float32),
                      jnp.zeros(n, jnp.int32))
    w = {"theta": jnp.zeros(n, jnp.float32)}
    server = alg.init(None, w, 1).server
    deltas = []
    for t in (0, 1):
        key = derive(ROOT, K.DATA, t, 0)
        _, msg, metrics = alg.client_update(server, None, data, key)
        delta = np.asarray(msg.params["theta"])
        pos = np.asarray(meta_schedule(cfg, jax.random.fold_in(key, 0), n, n).positions)
        expect = np.zeros(n)
        for step in pos:  # this round's schedule, read through the index row
            np.add.at(expect, np.asarray(idx)[step[1]], 1.0 / b)
            np.add.at(expect, np.asarray(idx)[step[0]], -1.0 / b)
        np.testing.assert_allclose(delta, expect, atol=1e-6)
        # no batch read twice in the round: 2τB examples touched, each exactly once
        reads = np.abs(delta) * b
        np.testing.assert_allclose(reads[reads > 0.5], 1.0, atol=1e-5)
        assert int((reads > 0.5).sum()) == 2 * tau * b and int(metrics["steps"]) == tau
        deltas.append(delta)
    assert not np.allclose(deltas[0], deltas[1])  # round 1 reads a new stream


def _load_script():
    name = "_experiment_per_fedavg"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, REPO / "experiments" / "per_fedavg.py")
        mod = importlib.util.module_from_spec(spec)
        sys.modules[name] = mod
        spec.loader.exec_module(mod)
    return sys.modules[name]


def test_pfllib_preset_splits_one_2b_batch_into_halves():
    """PFLlib's loader: an epoch order cut into 2B = 20 slices (drop_last); a meta-step takes
    slice j's first B for D and its next B for D'; one epoch per call, 2 calls. Written out on
    the identity order (shuffle off), then the preset's shuffled orders checked the same way."""
    cfg = _load_script().parse(["--preset", "pfllib"])[PerFedAvgConfig]
    assert (cfg.variant, cfg.inner_lr, cfg.outer_lr, cfg.batch_size) == ("fo", 0.005, 0.005, 10)
    assert (cfg.epochs, cfg.calls_per_round, cfg.weighted, cfg.meta_steps) == (1, 2, True, None)
    assert cfg.shuffle
    key, n, b = jax.random.key(9), 61, 10
    per_call = n // (2 * b)  # 3 slices; examples 60.. are dropped

    def active_steps(c):
        s = meta_schedule(c, key, n, 70)
        on = np.asarray(s.valid).any(axis=(1, 2))
        assert np.asarray(s.valid)[on].all()  # every active step is two full batches
        return np.asarray(s.positions)[on]

    ident = active_steps(dataclasses.replace(cfg, shuffle=False))
    order = np.arange(n)  # the loader's order without shuffling
    expect = [(order[2 * b * j : 2 * b * j + b], order[2 * b * j + b : 2 * b * (j + 1)])
              for _ in range(2) for j in range(per_call)]
    assert ident.shape == (2 * per_call, 2, b)
    for (first, second), (d, d1) in zip(ident, expect):
        np.testing.assert_array_equal(first, d)
        np.testing.assert_array_equal(second, d1)
    steps = active_steps(cfg)  # shuffled: per call a permutation's first 3 slices of 20
    assert steps.shape == (2 * per_call, 2, b)
    calls = steps.reshape(2, -1)
    for seen in calls:
        assert len(set(seen.tolist())) == 2 * b * per_call and seen.max() < n
    assert not np.array_equal(calls[0], calls[1])  # reshuffled for the second call
    assert not np.array_equal(calls[0], order[: 2 * b * per_call])


# ---- strategies, determinism, the driver -----------------------------------------------------


def test_vmap_sequential_sharded_agree():
    """HF with epochs (masked tail steps), two calls and weights: every strategy, permuted
    client order, two rounds. The exact HVP: fd's float32 cancellation would amplify last-bit
    differences between strategies by α/2δ (§4.5), beyond 1e-6."""
    cfg = dataclasses.replace(HF_EXACT, batch_size=2, meta_steps=None, epochs=1,
                              calls_per_round=2, weighted=True)
    base, _ = run_rounds(cfg, rounds=2)
    for strategy in (Strategy("vmap", buckets=1), Strategy("sharded", buckets=1)):
        other, _ = run_rounds(cfg, rounds=2, strategy=strategy, clients=[4, 1, 5, 0, 2, 3])
        jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-6),
                     base.server.params, other.server.params)


def _driver(cfg, seed, rounds=2, model=MODEL):
    ds = toy_dataset()
    alg = per_fedavg(model, cfg)
    rc = RunConfig(seed=seed, progress=False, strategy=SEQ)
    return run([Phase("p", alg, rounds)], ds, lambda key: _params(model), lambda s, t, f: {}, rc)


def test_two_runs_with_one_seed_are_bit_identical():
    a, b, c = (_driver(HF, seed)["state"].server.params for seed in (4, 4, 5))
    jax.tree.map(np.testing.assert_array_equal, a, b)
    assert any(not np.array_equal(x, y) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(c)))


def _linear_apply(params, x, train=False, key=None):
    del train, key  # no dropout
    h = x.reshape(x.shape[0], -1).astype(jnp.float32) / 255.0
    return h @ params["w1"] @ params["w2"]


LINEAR = Model("linear2", lambda key, x: {
    "w1": jax.random.normal(key, (16, 8)), "w2": jax.random.normal(jax.random.fold_in(key, 1),
                                                                    (8, 3))},
    _linear_apply, (("w1",), ("w2",)), 3, (4, 4, 1))


def test_nan_guard_stops_a_diverging_hf_run_naming_the_round():
    """A two-layer linear net: each layer's gradient grows with the other layer, so a large β
    blows up geometrically. The first non-finite round is found by stepping rounds by hand."""
    cfg = PerFedAvgConfig(inner_lr=1.0, outer_lr=30.0, batch_size=5, meta_steps=3)
    ds, alg = toy_dataset(), per_fedavg(LINEAR, cfg)
    state = alg.init(ROOT, _params(LINEAR), ds.num_clients)
    rnd, x, y = make_round(alg, SEQ), jnp.asarray(ds.x), jnp.asarray(ds.y)
    first = None
    for t in range(8):
        inputs = place_inputs(round_inputs(ds, np.arange(6), SEQ), SEQ)
        state, out = rnd(state, x, y, inputs, jnp.int32(t), ROOT)
        leaves = [out.metrics["train_loss"], *jax.tree.leaves(state.server.params)]
        if not all(np.isfinite(np.asarray(a)).all() for a in leaves):
            first = t
            break
    assert first is not None and first >= 1, first  # diverges, and not in the first round
    with pytest.raises(RunError, match=rf"non-finite loss or parameters in round {first} \("):
        _driver(cfg, 11, rounds=8, model=LINEAR)  # seed 11: the root key ROOT of this file


# ---- personalization ----------------------------------------------------------------------------


def _evaluate(cfg, params, strategy=SEQ, ds=None):
    ds = ds or toy_dataset(test_per_client=9)
    rows = np.arange(ds.num_clients)
    keys = jnp.stack([derive(ROOT, K.EVAL, 0, int(r)) for r in rows])
    ev = ClientEvaluator(personalize(MODEL, cfg), jnp.asarray(ds.x), jnp.asarray(ds.y),
                         Splits.of(ds), strategy)
    return ds, keys, ev(params, rows, keys)


def test_personalization_steps_on_training_stream_start_from_w():
    """init = w's counts (evaluated separately); every client's pers = P NumPy SGD steps from
    w itself (not from θ of another client or of a previous call, nor from a moved w) on its
    training stream; P > 0 moves the model (pers ≠ init)."""
    cfg = dataclasses.replace(FO, personalization_steps=2)
    params = _params()
    ds, keys, (init, pers) = _evaluate(cfg, params)
    _, _, (init2, pers2) = _evaluate(cfg, params, ds=ds)  # a second call: same results
    x, y = jnp.asarray(ds.x), jnp.asarray(ds.y)
    plain = evaluate_global(MODEL, params, x, y, [ds.test[k] for k in range(6)])
    np.testing.assert_array_equal(init.correct, plain.correct)
    np.testing.assert_allclose(init.loss_sum, plain.loss_sum, rtol=1e-5)
    np.testing.assert_allclose(init2.loss_sum, plain.loss_sum, rtol=1e-5)
    w = np_params(params)
    for k in range(6):
        tr, q = ds.train[k], ds.test[k]
        sched = stream_schedule(jax.random.fold_in(keys[k], 0), len(tr), _width(ds), 5, 2)
        theta = np_sgd_epochs(w, ds.x, ds.y, schedule_batches(sched, tr), cfg.inner_lr)
        loss, _ = np_loss_grad(theta, ds.x[q], ds.y[q])
        np.testing.assert_allclose(pers.loss_sum[k], loss * len(q), rtol=1e-4)
        np.testing.assert_allclose(pers2.loss_sum[k], loss * len(q), rtol=1e-4)
        assert abs(pers.loss_sum[k] - init.loss_sum[k]) > 1e-3 * init.loss_sum[k]


def test_zero_personalization_steps_give_pers_equal_plain_evaluation():
    params = _params()
    ds, _, (_, pers) = _evaluate(dataclasses.replace(FO, personalization_steps=0), params)
    plain = evaluate_global(MODEL, params, jnp.asarray(ds.x), jnp.asarray(ds.y),
                            [ds.test[k] for k in range(6)])
    np.testing.assert_array_equal(pers.correct, plain.correct)
    np.testing.assert_array_equal(pers.count, plain.count)
    np.testing.assert_allclose(pers.loss_sum, plain.loss_sum, rtol=1e-5)


def test_bad_config_raises_one_line_errors():
    with pytest.raises(ConfigError, match="variant"):
        PerFedAvgConfig(variant="so")
    with pytest.raises(ConfigError, match="not both"):
        PerFedAvgConfig(meta_steps=2, epochs=1)
    with pytest.raises(ConfigError, match="shuffle off needs epochs"):
        PerFedAvgConfig(shuffle=False)
    with pytest.raises(ConfigError, match="outer_lr"):
        PerFedAvgConfig(outer_lr=0.0)

