"""The one step loop: stop predicate (data-dependent length, per client, capped), step keys
owned by the client, and masking — on the eager path, under jit, and under vmap."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxpfl.core import ClientData, ExecOptions, Schedule, local_steps

S = 12  # the cap: schedule length


def _step(carry, consts, batch, key):
    """carry x ← x·r + mean of the batch's labels; loss = |x − target| (consts = (r, target))."""
    del key
    r, target = consts
    w = batch.valid.astype(jnp.float32)
    new = carry * r + jnp.sum(batch.y * w) / jnp.maximum(jnp.sum(w), 1.0)
    return new, jnp.abs(new - target)


def _stop(carry, consts, losses, count):
    """Stop once the last loss is below 0.5 (and at least 2 steps ran)."""
    del carry, consts
    return (count >= 2) & (losses[jnp.maximum(count - 1, 0)] < 0.5)


def _client(n_valid_steps: int, exec_=ExecOptions(step_block=1)):
    x = jnp.zeros((8, 1, 1, 1), jnp.uint8)
    y = jnp.arange(8, dtype=jnp.int32) % 3
    data = ClientData(jnp.arange(8, dtype=jnp.int32), jnp.int32(8), x, y, exec=exec_)
    pos = (jnp.arange(S * 2, dtype=jnp.int32) % 8).reshape(S, 2)
    valid = jnp.broadcast_to((jnp.arange(S) < n_valid_steps)[:, None], (S, 2))
    return data, Schedule(pos, valid)


def _python_loop(r, target, n_valid):
    """The reference: a plain loop with the same rule."""
    x = 0.0
    ys = np.arange(8) % 3
    losses, steps, stopped = [], 0, False
    for s in range(S):
        if s >= n_valid:
            break
        b = np.array([(2 * s) % 8, (2 * s + 1) % 8])
        x = float(x) * r + ys[b].mean()
        losses.append(abs(x - target))
        steps += 1
        if steps >= 2 and losses[-1] < 0.5:
            stopped = True
            break
    return x, steps, stopped


CASES = [(0.5, 1.0, S), (0.9, 3.0, S), (0.5, 100.0, S), (0.0, 1.0, 5), (0.5, 1.0, 0)]


@pytest.mark.parametrize("r,target,n_valid", CASES)
def test_stop_predicate_eager_and_jit_equal_python_loop(r, target, n_valid):
    want_x, want_steps, want_stopped = _python_loop(r, target, n_valid)
    consts = (jnp.float32(r), jnp.float32(target))
    for block in (1, 3, None):  # eager blocks of 1 and 3 steps; None = traced while_loop
        data, sched = _client(n_valid, ExecOptions(step_block=block))
        x, st = local_steps(_step, jnp.float32(0), consts, data, sched, jax.random.key(0),
                            stop=_stop)
        assert float(x) == pytest.approx(want_x, abs=1e-5)
        assert int(st.steps) == want_steps
        assert bool(st.stopped) == want_stopped
        assert bool(st.cap_hit) == (not want_stopped and want_steps > 0)
    data, sched = _client(n_valid, ExecOptions(step_block=None))
    x, st = jax.jit(lambda c, k: local_steps(_step, c, k, data, sched, jax.random.key(0),
                                             stop=_stop))(jnp.float32(0), consts)
    assert float(x) == pytest.approx(want_x, abs=1e-5) and int(st.steps) == want_steps


def test_stop_predicate_under_vmap_clients_stop_at_different_steps():
    """Clients that stop after 2, 3, ... steps and one that never stops (cap): each equals its
    own run alone."""
    rs = jnp.array([c[0] for c in CASES], jnp.float32)
    targets = jnp.array([c[1] for c in CASES], jnp.float32)
    n_valid = [c[2] for c in CASES]
    data, _ = _client(S, ExecOptions(step_block=None))
    scheds = [_client(n)[1] for n in n_valid]
    stacked = jax.tree.map(lambda *a: jnp.stack(a), *[(s.positions, s.valid) for s in scheds])

    def one(r, tg, pos, valid):
        return local_steps(_step, jnp.float32(0), (r, tg), data, Schedule(pos, valid),
                           jax.random.key(0), stop=_stop)

    xs, st = jax.jit(jax.vmap(one))(rs, targets, *stacked)
    steps = []
    for i, (r, tg, n) in enumerate(CASES):
        want_x, want_steps, want_stopped = _python_loop(r, tg, n)
        assert float(xs[i]) == pytest.approx(want_x, abs=1e-5)
        assert int(st.steps[i]) == want_steps
        assert bool(st.cap_hit[i]) == (not want_stopped and want_steps > 0)
        steps.append(want_steps)
    assert len(set(steps)) >= 3  # they really stop at different steps
    assert bool(st.cap_hit[2]) and int(st.steps[2]) == S  # the cap is honoured


def test_masked_steps_leave_carry_and_count_unchanged():
    data, sched = _client(4, ExecOptions(step_block=1))
    consts = (jnp.float32(0.5), jnp.float32(-1.0))
    x, st = local_steps(_step, jnp.float32(0), consts, data, sched, jax.random.key(0))
    x4, st4 = local_steps(_step, jnp.float32(0), consts, data,
                          Schedule(sched.positions[:4], sched.valid[:4]), jax.random.key(0))
    assert float(x) == float(x4) and int(st.steps) == int(st4.steps) == 4
    assert int(st.compiled) == 4  # eager: only blocks with an active step are dispatched
    traced = data.replace(exec=ExecOptions(step_block=None))
    _, st_j = jax.jit(
        lambda: local_steps(_step, jnp.float32(0), consts, traced, sched, jax.random.key(0))
    )()
    assert int(st_j.compiled) == S and int(st_j.steps) == 4


def test_step_keys_are_the_clients_own_step_ids():
    """The key of step s is fold_in(key, schedule.ids()[s]): shifting the schedule's ids shifts
    the keys, whatever the compiled position of the step."""
    def step(carry, consts, batch, key):
        del consts, batch
        return carry + jax.random.uniform(key), jnp.float32(0)

    data, sched = _client(S, ExecOptions(step_block=None))
    key = jax.random.key(3)
    a, _ = local_steps(step, jnp.float32(0), None, data, sched, key)
    ids = jnp.arange(S, dtype=jnp.int32)[::-1]
    b, _ = local_steps(step, jnp.float32(0), None, data,
                       Schedule(sched.positions, sched.valid, None, ids), key)
    want = sum(float(jax.random.uniform(jax.random.fold_in(key, i))) for i in range(S))
    assert float(a) == pytest.approx(want, rel=1e-6) and float(b) == pytest.approx(want, rel=1e-6)


def test_empty_client_costs_no_iterations_under_the_stop_loop():
    """A client without an active step ends the while loop at once (no cap's worth of masked
    iterations); a client whose active steps run out ends when they do."""
    consts = (jnp.float32(0.5), jnp.float32(100.0))  # never stops by the predicate
    for n_valid, want in ((0, 0), (5, 5)):
        data, sched = _client(n_valid, ExecOptions(step_block=None))
        _, st = jax.jit(lambda d, s: local_steps(_step, jnp.float32(0), consts, d, s,
                                                 jax.random.key(0), stop=_stop))(data, sched)
        assert int(st.compiled) == want and int(st.steps) == want
        assert bool(st.cap_hit) == (want > 0)


def _made_per_call(scale, extra=None):
    """A step function created anew at every call (as a client update may do), closing over a
    float and, optionally, an array."""

    def step(carry, consts, batch, key):
        del consts, key
        w = batch.valid.astype(jnp.float32)
        add = jnp.sum(batch.y * w) / jnp.maximum(jnp.sum(w), 1.0)
        if extra is not None:
            add = add + extra[0]
        return carry * scale + add, jnp.float32(0.0)

    return step


def test_step_functions_made_per_call_compile_once_and_never_share_a_wrong_compilation():
    """The eager loop identifies a step function by its code and captured values: the same
    function re-created per call reuses one compilation (no identity rule for algorithms), and
    a different captured value (a float, or another array, even one created after the first
    died) compiles its own and computes its own result (a plain loop is the reference)."""
    from jaxpfl.core.train import _block

    data, sched = _client(S, ExecOptions(step_block=4))

    def run(fn):
        out, _ = local_steps(fn, jnp.float32(0.0), None, data, sched, jax.random.key(0))
        return float(out)

    def reference(scale, add0=0.0):
        x, ys = 0.0, np.arange(8) % 3
        for s in range(S):
            x = x * scale + ys[[(2 * s) % 8, (2 * s + 1) % 8]].mean() + add0
        return x

    run(_made_per_call(0.5))  # the first compilation of this code
    before = _block._cache_size()
    outs = [run(_made_per_call(0.5)) for _ in range(4)]  # four new objects, same values
    assert _block._cache_size() == before
    np.testing.assert_allclose(outs, reference(0.5), rtol=1e-6)

    np.testing.assert_allclose(run(_made_per_call(0.25)), reference(0.25), rtol=1e-6)
    assert _block._cache_size() == before + 1  # another value: its own compilation
    for v in (1.0, 2.0, 3.0):  # arrays by identity: a new array never reuses a stale constant
        np.testing.assert_allclose(run(_made_per_call(0.5, jnp.array([v]))),
                                   reference(0.5, v), rtol=1e-6)
