"""Server optimizers (docs/algorithms.md §2.1) against NumPy transcriptions of the papers' formulas.

Every reference below is written from the paper (float64, plain NumPy), not from optax's code:

- SGD: w ← w − η g.
- Heavy-ball momentum (Hsu et al. 2019, FedAvgM): m ← β m + g; w ← w − η m.
- Adam (Kingma & Ba 2015, Alg. 1): m ← β1 m + (1−β1) g, v ← β2 v + (1−β2) g²,
  m̂ = m/(1−β1ᵗ), v̂ = v/(1−β2ᵗ), w ← w − η m̂/(√v̂ + ε), m₀ = v₀ = 0. optax's ``adam`` puts ε
  outside the root as the paper does (its ``eps_root`` is 0), so it is tested against the
  paper's formula as is.
- Yogi (Zaheer et al. 2018, Alg. 2): m ← β1 m + (1−β1) g, v ← v − (1−β2) g² sign(v − g²),
  w ← w − η m/(√v + ε), m₀ = 0, no debiasing (our reading of the paper; v₀ is a small
  positive initialisation, 1e-6 here as in optax). **optax deviates**: it starts *both*
  accumulators at 10⁻⁶ (m₀ = v₀ = 1e-6) and divides by Adam's bias corrections,
  w ← w − η m̂/(√v̂ + ε) with m̂ = m/(1−β1ᵗ), v̂ = v/(1−β2ᵗ). ``yogi`` (what we ship) is tested
  against the paper's recurrences with exactly those two changes switched on, and a second
  test shows it is *not* the paper's Algorithm 2.
- Adagrad (Duchi et al. 2011): v ← v + g², w ← w − η g/(√v + ε). **optax deviates**: ε sits
  inside the root, w ← w − η g/√(v + ε), and the accumulator starts at v₀ = 0.1 (optax's
  documented ``initial_accumulator_value``). Tested as optax computes it; a second test shows
  the difference from the ε-outside form.
- Reddi et al. 2021, Alg. 2, with Δ = −g: m ← β1 m + (1−β1) Δ; v ← β2 v + (1−β2) Δ² (Adam),
  v ← v − (1−β2) Δ² sign(v − Δ²) (Yogi), v ← v + Δ² (Adagrad); w ← w + η m/(√v + τ);
  m₀ = 0, v₀ = τ², no bias correction.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxpfl.algorithms.server_optimizers import (
    SERVER_OPTIMIZERS,
    ReddiState,
    reddi_adagrad,
    reddi_adam,
    reddi_yogi,
    server_optimizer,
)

LR, MOMENTUM, B1, B2, EPS = 0.3, 0.7, 0.8, 0.95, 1e-2
HYPER = dict(lr=LR, momentum=MOMENTUM, b1=B1, b2=B2, eps=EPS)
SHAPES = {"a": (3,), "b": (2, 4)}


def w0() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    return {k: rng.normal(size=s).astype(np.float32) for k, s in SHAPES.items()}


def pseudo_gradients(rounds: int = 4) -> list[dict[str, np.ndarray]]:
    """Mixed signs and scales (1, 0.1, 2, 0.01): Yogi's sign(v − g²) takes both values."""
    rng = np.random.default_rng(1)
    scales = [1.0, 0.1, 2.0, 0.01, 0.5][:rounds]
    return [
        {k: (sc * rng.normal(size=s)).astype(np.float32) for k, s in SHAPES.items()}
        for sc in scales
    ]


# ------------------------------------------------------------------ NumPy references


def _leafwise(step):
    """Lift a one-array recurrence ``step(w, g, state, t) -> (w, state)`` to dicts of arrays."""

    def run(w, gs, init):
        w = {k: v.astype(np.float64) for k, v in w.items()}
        state = {k: init(w[k]) for k in w}
        out = []
        for t, g in enumerate(gs, start=1):
            for k in w:
                w[k], state[k] = step(w[k], g[k].astype(np.float64), state[k], t)
            out.append({k: v.copy() for k, v in w.items()})
        return out

    return run


def np_sgd(w, gs, lr=LR):
    return _leafwise(lambda w, g, s, t: (w - lr * g, s))(w, gs, lambda p: None)


def np_heavy_ball(w, gs, lr=LR, beta=MOMENTUM):
    def step(w, g, m, t):
        m = beta * m + g
        return w - lr * m, m

    return _leafwise(step)(w, gs, np.zeros_like)


def np_adam_kingma_ba(w, gs, lr=LR, b1=B1, b2=B2, eps=EPS):
    def step(w, g, s, t):
        m, v = s
        m = b1 * m + (1 - b1) * g
        v = b2 * v + (1 - b2) * g**2
        m_hat, v_hat = m / (1 - b1**t), v / (1 - b2**t)
        return w - lr * m_hat / (np.sqrt(v_hat) + eps), (m, v)

    return _leafwise(step)(w, gs, lambda p: (np.zeros_like(p), np.zeros_like(p)))


def np_yogi(w, gs, lr=LR, b1=B1, b2=B2, eps=EPS, m0=0.0, v0=1e-6, debias=False, branches=None):
    """Zaheer et al. Alg. 2 (m0=0, no debiasing); ``m0``/``debias`` switch on optax's changes.

    ``branches`` (a set), if given, collects the values sign(v − g²) took.
    """

    def step(w, g, s, t):
        m, v = s
        m = b1 * m + (1 - b1) * g
        sgn = np.sign(v - g**2)
        if branches is not None:
            branches.update(sgn.ravel().tolist())
        v = v - (1 - b2) * g**2 * sgn
        if debias:
            m_hat, v_hat = m / (1 - b1**t), v / (1 - b2**t)
        else:
            m_hat, v_hat = m, v
        return w - lr * m_hat / (np.sqrt(v_hat) + eps), (m, v)

    return _leafwise(step)(w, gs, lambda p: (np.full_like(p, m0), np.full_like(p, v0)))


def np_adagrad(w, gs, lr=LR, eps=EPS, v0=0.1, eps_inside=True):
    """v ← v + g²; w ← w − η g/√(v + ε) (optax) or w − η g/(√v + ε) (Duchi et al.)."""

    def step(w, g, v, t):
        v = v + g**2
        denom = np.sqrt(v + eps) if eps_inside else np.sqrt(v) + eps
        return w - lr * g / denom, v

    return _leafwise(step)(w, gs, lambda p: np.full_like(p, v0))


def np_reddi(kind, w, gs, lr=LR, b1=B1, b2=B2, tau=EPS, branches=None):
    """Reddi et al. 2021, Algorithm 2, in the paper's variables (Δ = −g, w ← w + η m/(√v+τ))."""

    def step(w, g, s, t):
        m, v = s
        delta = -g
        m = b1 * m + (1 - b1) * delta
        if kind == "adam":
            v = b2 * v + (1 - b2) * delta**2
        elif kind == "yogi":
            sgn = np.sign(v - delta**2)
            if branches is not None:
                branches.update(sgn.ravel().tolist())
            v = v - (1 - b2) * delta**2 * sgn
        else:
            v = v + delta**2
        return w + lr * m / (np.sqrt(v) + tau), (m, v)

    return _leafwise(step)(w, gs, lambda p: (np.zeros_like(p), np.full_like(p, tau**2)))


REFERENCES = {
    "fedavg": np_sgd,
    "fedavgm": np_heavy_ball,
    "adam": np_adam_kingma_ba,
    "yogi": lambda w, gs: np_yogi(w, gs, m0=1e-6, v0=1e-6, debias=True),  # what optax computes
    "adagrad": np_adagrad,
    "fedadam_reddi": lambda w, gs: np_reddi("adam", w, gs),
    "fedyogi_reddi": lambda w, gs: np_reddi("yogi", w, gs),
    "fedadagrad_reddi": lambda w, gs: np_reddi("adagrad", w, gs),
}


# ------------------------------------------------------------------ running the library


def run_server(tx: optax.GradientTransformation, w, gs, fresh_state: bool = False):
    """Apply ``tx`` to the pseudo-gradients ``gs`` round after round; returns w after each."""
    params = {k: jnp.asarray(v) for k, v in w.items()}
    update = jax.jit(tx.update)
    state = tx.init(params)
    out = []
    for g in gs:
        if fresh_state:
            state = tx.init(params)
        upd, state = update({k: jnp.asarray(v) for k, v in g.items()}, state, params)
        params = optax.apply_updates(params, upd)
        out.append(params)
    return out


def assert_rounds_close(got, want, rtol=2e-5, atol=1e-6):
    assert len(got) == len(want)
    for t, (g, r) in enumerate(zip(got, want), start=1):
        assert set(g) == set(r)
        for k in r:
            assert g[k].dtype == jnp.float32 and g[k].shape == r[k].shape
            np.testing.assert_allclose(
                np.asarray(g[k]), r[k], rtol=rtol, atol=atol, err_msg=f"round {t}, leaf {k}"
            )


# ------------------------------------------------------------------ tests


def test_registry_lists_the_eight_names():
    assert SERVER_OPTIMIZERS == (
        "fedavg",
        "fedavgm",
        "adam",
        "yogi",
        "adagrad",
        "fedadam_reddi",
        "fedyogi_reddi",
        "fedadagrad_reddi",
    )
    assert set(REFERENCES) == set(SERVER_OPTIMIZERS)


@pytest.mark.parametrize("name", SERVER_OPTIMIZERS)
def test_rounds_match_paper_formula(name):
    gs = pseudo_gradients(4)
    got = run_server(server_optimizer(name, **HYPER), w0(), gs)
    assert_rounds_close(got, REFERENCES[name](w0(), gs))


@pytest.mark.parametrize(
    "factory, kind",
    [(reddi_adam, "adam"), (reddi_yogi, "yogi"), (reddi_adagrad, "adagrad")],
)
def test_reddi_factories_match_paper_formula(factory, kind):
    gs = pseudo_gradients(5)
    lr, b1, b2, tau = 0.05, 0.6, 0.9, 3e-3
    tx = factory(lr, b1=b1, tau=tau) if kind == "adagrad" else factory(lr, b1=b1, b2=b2, tau=tau)
    assert_rounds_close(
        run_server(tx, w0(), gs), np_reddi(kind, w0(), gs, lr=lr, b1=b1, b2=b2, tau=tau)
    )


def test_reddi_yogi_and_yogi_references_exercise_both_sign_branches():
    """The fixed pseudo-gradients make v − Δ² change sign, so both Yogi branches are tested."""
    gs = pseudo_gradients(4)
    seen_reddi, seen_zaheer = set(), set()
    np_reddi("yogi", w0(), gs, branches=seen_reddi)
    np_yogi(w0(), gs, m0=1e-6, v0=1e-6, debias=True, branches=seen_zaheer)
    assert {-1.0, 1.0} <= seen_reddi and {-1.0, 1.0} <= seen_zaheer


def test_reddi_initial_state():
    params = {k: jnp.asarray(v) for k, v in w0().items()}
    for tx in (reddi_adam(0.1, tau=0.02), reddi_yogi(0.1, tau=0.02), reddi_adagrad(0.1, 0.02)):
        state = tx.init(params)
        assert isinstance(state, ReddiState)
        for k in params:
            np.testing.assert_array_equal(state.m[k], np.zeros(SHAPES[k], np.float32))
            np.testing.assert_allclose(state.v[k], np.full(SHAPES[k], 0.02**2), rtol=1e-6)
            assert state.m[k].dtype == state.v[k].dtype == jnp.float32
        assert int(state.count) == 0
        _, state = tx.update(params, state, params)
        assert int(state.count) == 1


def test_reddi_adagrad_without_momentum_is_classic_adagrad():
    """β1 = 0: w ← w − η g/(√(τ² + Σ g²) + τ), Adagrad with ε = τ outside the root."""
    gs = pseudo_gradients(4)
    tau = 1e-2
    want = np_adagrad(w0(), gs, lr=LR, eps=tau, v0=tau**2, eps_inside=False)
    assert_rounds_close(run_server(reddi_adagrad(LR, tau=tau, b1=0.0), w0(), gs), want)


def test_optax_yogi_is_not_zaheer_algorithm_2():
    """The documented deviation: the paper's form (m₀ = 0, no debiasing) differs from ``yogi``."""
    gs = pseudo_gradients(4)
    got = run_server(server_optimizer("yogi", **HYPER), w0(), gs)
    paper = np_yogi(w0(), gs, m0=0.0, v0=1e-6, debias=False)
    diff = max(float(np.max(np.abs(np.asarray(got[0][k]) - paper[0][k]))) for k in SHAPES)
    assert diff > 1e-3


def test_optax_adagrad_has_eps_inside_the_root():
    """The documented deviation: Duchi's g/(√v + ε) is measurably different from optax's."""
    gs = pseudo_gradients(4)
    got = run_server(server_optimizer("adagrad", **HYPER), w0(), gs)
    duchi = np_adagrad(w0(), gs, eps_inside=False)
    diff = max(float(np.max(np.abs(np.asarray(got[-1][k]) - duchi[-1][k]))) for k in SHAPES)
    assert diff > 1e-4


@pytest.mark.parametrize("name", SERVER_OPTIMIZERS)
def test_positive_pseudo_gradient_decreases_w(name):
    """g = w − θ̄ > 0 means the clients moved down: every optimizer must follow, every round."""
    w = w0()
    gs = [{k: np.full(s, 0.5 * (r + 1), np.float32) for k, s in SHAPES.items()} for r in range(3)]
    prev = w
    for cur in run_server(server_optimizer(name, **HYPER), w, gs):
        for k in SHAPES:
            assert np.all(np.asarray(cur[k]) < np.asarray(prev[k])), (name, k)
        prev = cur


@pytest.mark.parametrize("name", SERVER_OPTIMIZERS)
def test_state_is_carried_across_rounds(name):
    """Carrying the state differs from re-initialising it each round (except stateless SGD)."""
    gs = pseudo_gradients(3)
    carried = run_server(server_optimizer(name, **HYPER), w0(), gs)
    fresh = run_server(server_optimizer(name, **HYPER), w0(), gs, fresh_state=True)
    gap = max(float(np.max(np.abs(np.asarray(carried[-1][k] - fresh[-1][k])))) for k in SHAPES)
    if name == "fedavg":
        assert gap == 0.0
    else:
        assert gap > 1e-3, f"{name}: round-3 result is the same with a fresh state"


@pytest.mark.parametrize(
    "make, match",
    [
        (lambda: reddi_adam(0.0), "lr"),
        (lambda: reddi_adam(-1.0), "lr"),
        (lambda: reddi_adam(float("nan")), "lr"),
        (lambda: reddi_adam(float("inf")), "lr"),
        (lambda: reddi_adam(0.1, b1=1.0), "b1"),
        (lambda: reddi_adam(0.1, b1=-0.1), "b1"),
        (lambda: reddi_adam(0.1, b2=1.0), "b2"),
        (lambda: reddi_adam(0.1, tau=0.0), "tau"),
        (lambda: reddi_yogi(0.0), "lr"),
        (lambda: reddi_yogi(0.1, b2=1.5), "b2"),
        (lambda: reddi_yogi(0.1, tau=-1e-3), "tau"),
        (lambda: reddi_adagrad(0.0), "lr"),
        (lambda: reddi_adagrad(0.1, tau=0.0), "tau"),
        (lambda: reddi_adagrad(0.1, b1=1.0), "b1"),
        (lambda: reddi_adagrad(0.1, b1="0.9x"), "b1"),
        (lambda: server_optimizer("fedavg", lr=0.0), "lr"),
        (lambda: server_optimizer("fedavgm", momentum=1.0), "momentum"),
        (lambda: server_optimizer("adam", b1=1.0), "b1"),
        (lambda: server_optimizer("adam", eps=-1.0), "eps"),
        (lambda: server_optimizer("yogi", b2=-0.5), "b2"),
        (lambda: server_optimizer("adagrad", lr=-0.1), "lr"),
        (lambda: server_optimizer("fedadam_reddi", eps=0.0), r"eps \(tau\)"),
        (lambda: server_optimizer("fedyogi_reddi", b1=1.0), "b1"),
        (lambda: server_optimizer("fedadagrad_reddi", eps=0.0), r"eps \(tau\)"),
        (lambda: server_optimizer("sgdd"), "unknown server optimizer 'sgdd'"),
    ],
)
def test_bad_arguments_raise_value_error_naming_them(make, match):
    with pytest.raises(ValueError, match=match):
        make()


def test_several_bad_arguments_reported_together():
    with pytest.raises(ValueError, match="lr must be.*b2 must be.*tau must be"):
        reddi_yogi(0.0, b2=1.0, tau=0.0)


def test_unused_arguments_are_not_validated():
    """``fedavg`` ignores momentum/b1/b2/eps, ``adagrad`` ignores b1/b2."""
    server_optimizer("fedavg", momentum=5.0, b1=2.0, eps=-1.0)
    server_optimizer("adagrad", b1=2.0, b2=2.0)
    server_optimizer("fedadagrad_reddi", b2=2.0)
