"""FedProx (docs/algorithms.md §10) against a literal per-client NumPy loop: three rounds of a
sampled subset, every strategy, μ = 0 is FedAvg, a large μ keeps every client at w, reruns are
bit-identical."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from toy import MODEL, np_loss_grad, np_params, schedule_batches, toy_dataset

from jaxpfl.algorithms.fedavg import FedAvgConfig, fedavg
from jaxpfl.algorithms.fedprox import FedProxConfig, fedprox
from jaxpfl.core import (
    Strategy,
    derive,
    epoch_schedule,
    make_round,
    phase_plan,
    place_inputs,
)
from jaxpfl.core import keys as K
from jaxpfl.errors import ConfigError
from jaxpfl.run import round_inputs

ROOT = jax.random.key(5)
ROUNDS = ([0, 3, 5], [1, 2, 5], [4, 0, 2])  # 3 of the toy's 6 clients per round
BASE = FedAvgConfig(client_lr=0.3, batch_size=4, local_epochs=2, drop_last=True)
MU = 0.5


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
    return jax.tree.map(np.asarray, state.server.params), out.metrics


def reference(mu, base=BASE, rounds=ROUNDS):
    """Li et al.'s client, literally (PFLlib's PerturbedGradientDescent): for each batch
    θ ← θ − η(∇ℓ(θ) + μ(θ − w)); then w ← Σ_k n_k θ_k / Σ_k n_k over the round's clients."""
    ds = toy_dataset()
    w = np_params(_init())
    for t, ids in enumerate(rounds):
        thetas, ns = [], []
        for k in ids:
            n = len(ds.train[k])
            sched = epoch_schedule(jax.random.fold_in(derive(ROOT, K.DATA, t, k), 0), n,
                                   max(n, 1), base.batch_size, base.local_epochs,
                                   drop_last=base.drop_last)
            theta = {p: v.copy() for p, v in w.items()}
            for b in schedule_batches(sched, ds.train[k]):
                _, g = np_loss_grad(theta, ds.x[b], ds.y[b])
                theta = {p: theta[p] - base.client_lr * (g[p] + mu * (theta[p] - w[p]))
                         for p in theta}
            thetas.append(theta)
            ns.append(n)
        total = float(sum(ns))
        w = {p: sum(n * th[p] for n, th in zip(ns, thetas)) / total for p in w}
    return w


STRATEGIES = [Strategy("sequential"), Strategy("vmap", buckets=2), Strategy("sharded", buckets=1)]


@pytest.mark.parametrize("strategy", STRATEGIES, ids=lambda s: s.name)
def test_three_sampled_rounds_equal_the_numpy_loop(strategy):
    got, _ = run_engine(fedprox(MODEL, FedProxConfig(mu=MU), BASE), strategy)
    want = reference(MU)
    for p in want:
        np.testing.assert_allclose(got[p], want[p], atol=2e-5, rtol=0)
    # the proximal term matters in this setting: FedAvg's loop lands elsewhere
    plain = reference(0.0)
    assert max(float(np.abs(plain[p] - want[p]).max()) for p in want) > 1e-3


def test_mu_zero_is_fedavg():
    got, _ = run_engine(fedprox(MODEL, FedProxConfig(mu=0.0), BASE))
    want, _ = run_engine(fedavg(MODEL, BASE))
    jax.tree.map(np.testing.assert_array_equal, got, want)  # bit for bit


def test_large_mu_keeps_every_client_at_w():
    """μ η = 0.99 pulls θ almost back to w after every step (θ − w ← (1 − μη)(θ − w) − η∇ℓ,
    so a client drifts at most about ‖∇ℓ‖ / μ from w): w moves several times less."""
    base = FedAvgConfig(client_lr=0.01, batch_size=4, local_epochs=2, drop_last=True)
    w0 = jax.tree.map(np.asarray, _init())
    small, _ = run_engine(fedprox(MODEL, FedProxConfig(mu=0.0), base))
    large, _ = run_engine(fedprox(MODEL, FedProxConfig(mu=99.0), base))

    def moved(w):
        return max(float(np.abs(w[p] - w0[p]).max()) for p in w)

    assert moved(large) < 0.2 * moved(small)
    want = reference(99.0, base)
    for p in want:
        np.testing.assert_allclose(large[p], want[p], atol=1e-6, rtol=0)


def test_bit_identical_reruns():
    a, ma = run_engine(fedprox(MODEL, FedProxConfig(mu=MU), BASE), Strategy("vmap", buckets=2))
    b, mb = run_engine(fedprox(MODEL, FedProxConfig(mu=MU), BASE), Strategy("vmap", buckets=2))
    jax.tree.map(np.testing.assert_array_equal, a, b)
    jax.tree.map(np.testing.assert_array_equal, ma, mb)


@pytest.mark.parametrize("mu", [-0.1, float("inf"), "x"])
def test_bad_mu_is_one_line(mu):
    with pytest.raises(ConfigError, match="mu must be >= 0"):
        FedProxConfig(mu=mu)
