"""FedAvg/FedOpt against an independent per-client NumPy loop (docs/algorithms.md §2.6, §1.8)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from toy import (
    MODEL,
    np_loss_grad,
    np_params,
    np_sgd_epochs,
    schedule_batches,
    toy_dataset,
)

from jaxpfl.algorithms.fedavg import FedAvgConfig, fedavg
from jaxpfl.core import ClientData, Strategy, derive, epoch_schedule, make_round, place_inputs
from jaxpfl.core import keys as K
from jaxpfl.run import round_inputs

ROOT = jax.random.key(42)

#: Two size groups: grouping is exercised with two copies of the client program to compile
#: (the default, 6 groups, has one per toy client).
VMAP = Strategy("vmap", buckets=2)


def _init_params():
    return MODEL.init(jax.random.key(1), jnp.zeros((1, 4, 4, 1), jnp.uint8))


def run_rounds(cfg, rounds=3, strategy=VMAP, clients=None, ds=None):
    ds = ds or toy_dataset()
    alg = fedavg(MODEL, cfg)
    state = alg.init(ROOT, _init_params(), ds.num_clients)
    rnd = make_round(alg, strategy)
    x, y = jnp.asarray(ds.x), jnp.asarray(ds.y)
    clients = np.arange(ds.num_clients) if clients is None else np.asarray(clients)
    for t in range(rounds):
        inputs = place_inputs(round_inputs(ds, clients, strategy), strategy)
        state, out = rnd(state, x, y, inputs, jnp.int32(t), ROOT)
    return state, out.metrics


def reference_client(w, ds, k, t, cfg):
    """Client k of round t, by hand: the exported schedule, plain NumPy SGD."""
    key = derive(ROOT, K.DATA, t, k)
    n = len(ds.train[k])
    sched = epoch_schedule(
        jax.random.fold_in(key, 0),
        n,
        max(n, 1),
        cfg.batch_size,
        cfg.local_epochs,
        drop_last=cfg.drop_last,
        shuffle=cfg.shuffle,
    )
    batches = schedule_batches(sched, ds.train[k])
    return np_sgd_epochs(
        w, ds.x, ds.y, batches, cfg.client_lr, cfg.client_momentum, cfg.weight_decay
    )


def reference_fedavg(cfg, rounds=3, ds=None, server=None):
    """w ← w + server(Σ p_k (w − θ_k)); ``server`` maps (g, state, t) -> (update, state)."""
    ds = ds or toy_dataset()
    w = np_params(_init_params())
    sstate = None
    for t in range(rounds):
        thetas = [reference_client(w, ds, k, t, cfg) for k in range(ds.num_clients)]
        n = ds.train.sizes.astype(np.float64)
        p = n / n.sum() if cfg.weighted else np.full(len(n), 1 / len(n))
        g = {key: sum(pk * (w[key] - th[key]) for pk, th in zip(p, thetas)) for key in w}
        if server is None:
            w = {key: w[key] - g[key] for key in w}
        else:
            upd, sstate = server(g, sstate, t + 1)
            w = {key: w[key] + upd[key] for key in w}
    return w


def assert_close(params, ref, tol=1e-5):
    for key in ref:
        np.testing.assert_allclose(np.asarray(params[key]), ref[key], atol=tol, rtol=0)


@pytest.mark.parametrize(
    "cfg",
    [
        FedAvgConfig(local_epochs=2, batch_size=10, client_lr=0.1),
        FedAvgConfig(
            local_epochs=1, batch_size=4, client_lr=0.05, client_momentum=0.9, weight_decay=1e-3
        ),
        FedAvgConfig(local_epochs=2, batch_size=10, client_lr=0.1, drop_last=True),
        FedAvgConfig(local_epochs=1, batch_size=10, client_lr=0.1, weighted=False),
    ],
    ids=["plain", "momentum_wd", "drop_last", "uniform"],
)
def test_three_rounds_equal_numpy_reference(cfg):
    state, _ = run_rounds(cfg)
    assert_close(state.server.params, reference_fedavg(cfg))


def test_strategies_agree_and_client_order_irrelevant():
    cfg = FedAvgConfig(local_epochs=2, batch_size=10, client_lr=0.1)
    base, _ = run_rounds(cfg, strategy=VMAP)
    for strategy in [
        Strategy("sequential"),
        Strategy("chunked", chunk_size=4, buckets=1),
        Strategy("sharded", buckets=1),
    ]:
        other, _ = run_rounds(cfg, strategy=strategy)
        jax.tree.map(
            lambda a, b: np.testing.assert_allclose(a, b, atol=1e-6),
            base.server.params,
            other.server.params,
        )
    permuted, _ = run_rounds(cfg, clients=[5, 2, 0, 4, 1, 3])
    jax.tree.map(
        lambda a, b: np.testing.assert_allclose(a, b, atol=1e-6),
        base.server.params,
        permuted.server.params,
    )


def test_fedsgd_invariant():
    """E = 1, B ≥ n_k: w⁺ = w − η Σ p_k ∇ℓ_k(w) (one full-batch step per client)."""
    ds = toy_dataset()
    cfg = FedAvgConfig(local_epochs=1, batch_size=64, client_lr=0.3)
    state, _ = run_rounds(cfg, rounds=1, ds=ds)
    w = np_params(_init_params())
    n = ds.train.sizes / ds.train.sizes.sum()
    grads = [np_loss_grad(w, ds.x[ds.train[k]], ds.y[ds.train[k]])[1] for k in range(6)]
    ref = {key: w[key] - 0.3 * sum(p * g[key] for p, g in zip(n, grads)) for key in w}
    assert_close(state.server.params, ref)


def test_tiny_client_trains_as_if_alone():
    """A 1-example client next to a 500-example client: same update as alone (masking)."""
    ds = toy_dataset(sizes=(1, 500))
    cfg = FedAvgConfig(local_epochs=2, batch_size=10, client_lr=0.1)
    alg = fedavg(MODEL, cfg)
    x, y = jnp.asarray(ds.x), jnp.asarray(ds.y)

    def delta_of_client0(clients):
        """Client 0's message when mapped (vmap) together with ``clients`` in one padded group."""
        state = alg.init(ROOT, _init_params(), 2)
        inputs = round_inputs(ds, np.asarray(clients), Strategy("sequential")).groups[0]

        def one(idx, n, key):
            data = ClientData(idx, n, x, y)
            return alg.client_update(state.server, None, data, key)

        keys = jnp.stack([derive(ROOT, K.DATA, 0, int(k)) for k in clients])
        _, msg, metrics = jax.jit(jax.vmap(one))(
            jnp.asarray(inputs.train_idx), jnp.asarray(inputs.train_n), keys
        )
        return jax.tree.map(lambda a: a[0], msg.delta), np.asarray(metrics["steps"])

    together, steps = delta_of_client0([0, 1])
    alone, steps_alone = delta_of_client0([0])
    assert steps.tolist() == [2, 100] and steps_alone.tolist() == [2]
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-7), together, alone)
    ref = reference_client(np_params(_init_params()), ds, 0, 0, cfg)
    w = np_params(_init_params())
    for key in w:
        np.testing.assert_allclose(np.asarray(together[key]), w[key] - ref[key], atol=1e-6)


def test_drop_last_client_smaller_than_batch_takes_no_step_but_keeps_weight():
    ds = toy_dataset()
    cfg = FedAvgConfig(local_epochs=1, batch_size=10, client_lr=0.1, drop_last=True)
    _, metrics = run_rounds(cfg, rounds=1, ds=ds)
    assert np.asarray(metrics["steps"]).tolist() == [0, 0, 1, 1, 2, 4]
    assert float(metrics["delta_norm"][0]) == 0.0


def _np_server(name, lr, b1=0.9, b2=0.99, eps=1e-3, momentum=0.9):
    """NumPy server optimizers written from the papers' formulas (not from optax's code):
    heavy-ball momentum (Hsu et al. 2019), Adam with bias correction (Kingma & Ba 2015), and
    Reddi et al. 2021's FedAdam / FedYogi (Δ = −g, v₀ = τ², no bias correction)."""

    def step(g, s, t):
        if name == "fedavgm":
            s = {k: momentum * (s[k] if s else 0) + g[k] for k in g}
            return {k: -lr * s[k] for k in g}, s
        if name == "adam":
            m0, v0 = s if s else ({k: 0 for k in g}, {k: 0 for k in g})
            m = {k: b1 * m0[k] + (1 - b1) * g[k] for k in g}
            v = {k: b2 * v0[k] + (1 - b2) * g[k] ** 2 for k in g}
            upd = {k: -lr * (m[k] / (1 - b1**t)) / (np.sqrt(v[k] / (1 - b2**t)) + eps) for k in g}
            return upd, (m, v)
        if name in ("fedadam_reddi", "fedyogi_reddi"):
            d = {k: -g[k] for k in g}
            m0, v0 = s if s else ({k: 0 for k in g}, {k: eps**2 for k in g})
            m = {k: b1 * m0[k] + (1 - b1) * d[k] for k in g}
            if name == "fedadam_reddi":
                v = {k: b2 * v0[k] + (1 - b2) * d[k] ** 2 for k in g}
            else:
                v = {k: v0[k] - (1 - b2) * d[k] ** 2 * np.sign(v0[k] - d[k] ** 2) for k in g}
            return {k: lr * m[k] / (np.sqrt(v[k]) + eps) for k in g}, (m, v)
        raise AssertionError(name)

    return step


@pytest.mark.parametrize("name", ["fedavgm", "adam", "fedadam_reddi", "fedyogi_reddi"])
def test_server_optimizers_match_numpy_formulas(name):
    cfg = FedAvgConfig(
        local_epochs=1,
        batch_size=10,
        client_lr=0.1,
        server_opt=name,
        server_lr=0.5 if name == "fedavgm" else 0.05,
    )
    state, _ = run_rounds(cfg)
    ref = reference_fedavg(cfg, server=_np_server(name, cfg.server_lr))
    assert_close(state.server.params, ref, tol=2e-5)


def test_pseudo_gradient_sign_fedavg_moves_to_client_average():
    """server 'fedavg' (sgd 1.0) gives w = Σ p_k θ_k: a wrong sign would move away."""
    cfg = FedAvgConfig(local_epochs=1, batch_size=10, client_lr=0.1)
    state, _ = run_rounds(cfg, rounds=1)
    assert_close(state.server.params, reference_fedavg(cfg, rounds=1))


def test_bad_config_raises_clear_error():
    with pytest.raises(ValueError, match="unknown server optimizer 'sgdd'"):
        FedAvgConfig(server_opt="sgdd")
    with pytest.raises(ValueError, match="client_lr"):
        FedAvgConfig(client_lr=0.0)
