"""Property tests of the index schedules (docs/algorithms.md §1.3), written from the spec alone.

Nothing here reuses ``jaxpfl.core.schedule``'s logic as a reference: every expected value is a
plain-Python statement of §1.3 (permutations, ⌈n/B⌉ / ⌊n/B⌋ batch counts, full batches, epochs
that never mix). The grid of (width, B) pairs times every n ≤ width covers n = 0, n = 1, n < B,
n = B, n = width, n a multiple of B and width > n, under E = 3 epochs and all four
(drop_last, shuffle) settings. n is a traced argument, so one compilation per (width, B, flags)
serves every n; keep the grid small, compilation dominates the run time.
"""

from __future__ import annotations

import itertools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxpfl.core.schedule import Schedule, epoch_schedule, stream_schedule

# B -> widths; the widths sharing a B are compared against each other for width independence
WIDTHS_BY_B = {1: (1, 5), 3: (0, 6, 13), 4: (1, 4, 9), 8: (24, 40)}
GRID = [(w, b) for b, ws in WIDTHS_BY_B.items() for w in ws]
EPOCHS = 3
STREAM_BATCHES = 12
FLAGS = list(itertools.product([False, True], [True, False]))  # (drop_last, shuffle)


def sizes(width: int) -> list[int]:
    """Every n ≤ width for small rows; the edge values for the wide ones."""
    if width <= 13:
        return list(range(width + 1))
    picks = {0, 1, 2, 5, 7, 8, 9, 15, 16, 17, 23, 24, 31, 32, 39, 40}
    return sorted(n for n in picks if n <= width)


def grid_id(wb) -> str:
    return "w{}-B{}".format(*wb)


def key_for(*salt: int) -> jax.Array:
    return jax.random.key(1234 + 1000 * sum((i + 1) * s for i, s in enumerate(salt)))


def as_np(s: Schedule) -> tuple[np.ndarray, np.ndarray]:
    return np.asarray(s.positions), np.asarray(s.valid)


def epoch_batches(sched: Schedule, epochs: int, width: int, b: int) -> list[list[list[int]]]:
    """Split a [E·⌈W/B⌉, B] schedule into epochs; each epoch: its steps' valid positions.

    Checks the documented layout on the way: shape, dtypes, valid steps first in each epoch.
    """
    pos, valid = as_np(sched)
    spe = math.ceil(width / b)
    assert pos.shape == valid.shape == (epochs * spe, b)
    assert pos.dtype == np.int32 and valid.dtype == np.bool_
    out = []
    for e in range(epochs):
        steps = [pos[r][valid[r]].tolist() for r in range(e * spe, (e + 1) * spe)]
        nonzero = [len(s) > 0 for s in steps]
        assert nonzero == sorted(nonzero, reverse=True), "a masked step before a real one"
        out.append([s for s in steps if s])
    return out


def flat(batches: list[list[int]]) -> list[int]:
    return [p for bt in batches for p in bt]


def epochs_of(n, width, b, drop_last=False, shuffle=True, key=None, epochs=EPOCHS):
    key = key_for(n, width, b) if key is None else key
    sched = epoch_schedule(key, n, width, b, epochs, drop_last=drop_last, shuffle=shuffle)
    return epoch_batches(sched, epochs, width, b)


def stream_batches(sched: Schedule, num_batches: int, b: int) -> list[list[int]]:
    pos, valid = as_np(sched)
    assert pos.shape == valid.shape == (num_batches, b)
    assert pos.dtype == np.int32 and valid.dtype == np.bool_
    return [pos[j][valid[j]].tolist() for j in range(num_batches)]


def stream_of(n, width, b, key=None):
    key = key_for(n, width, b, 2) if key is None else key
    return stream_batches(stream_schedule(key, n, width, b, STREAM_BATCHES), STREAM_BATCHES, b)


# ------------------------------------------------------------------ epoch_schedule


@pytest.mark.parametrize("wb", GRID, ids=grid_id)
@pytest.mark.parametrize("drop_last, shuffle", FLAGS)
def test_epoch_schedule_covers_each_example_as_spec(wb, drop_last, shuffle):
    width, b = wb
    for n in sizes(width):
        full_steps, rest = divmod(n, b)
        for e, batches in enumerate(epochs_of(n, width, b, drop_last, shuffle)):
            where = f"n={n} epoch {e}"
            seq = flat(batches)
            assert all(0 <= p < n for p in seq), f"{where}: position outside 0..n-1"
            assert len(set(seq)) == len(seq), f"{where}: an example twice"
            if drop_last:
                # ⌊n/B⌋ full batches; n < B gives no valid step at all
                assert len(batches) == full_steps, where
                assert all(len(bt) == b for bt in batches), where
            else:
                # ⌈n/B⌉ batches covering 0..n-1 exactly once, all full but the last
                assert len(batches) == full_steps + (rest > 0), where
                assert sorted(seq) == list(range(n)), where
                assert all(len(bt) == b for bt in batches[:-1]), where
                if batches:
                    assert len(batches[-1]) == (rest or b), where
            if not shuffle:
                assert seq == list(range(len(seq))), f"{where}: shuffle=False must keep order"


@pytest.mark.parametrize("b", list(WIDTHS_BY_B))
@pytest.mark.parametrize("drop_last, shuffle", FLAGS)
def test_epoch_schedule_independent_of_width(b, drop_last, shuffle):
    widths = WIDTHS_BY_B[b]
    for n in sizes(max(widths)):
        key = key_for(n, b, 7)
        runs = [epochs_of(n, w, b, drop_last, shuffle, key=key) for w in widths if w >= n]
        assert all(r == runs[0] for r in runs), f"n={n}: the width changes the batches"


@pytest.mark.parametrize("wb", GRID, ids=grid_id)
@pytest.mark.parametrize("shuffle", [True, False])
def test_drop_last_keeps_the_same_permutation_prefix(wb, shuffle):
    """drop_last drops the tail of the same π: its batches are a prefix of the full ones."""
    width, b = wb
    for n in sizes(width):
        full = epochs_of(n, width, b, False, shuffle)
        dropped = epochs_of(n, width, b, True, shuffle)
        for f, d in zip(full, dropped):
            assert flat(d) == flat(f)[: (n // b) * b], f"n={n}"


def orders(n: int, k: int) -> int:
    """Number of ordered k-samples of n items: the chance two uniform draws agree is 1/this."""
    return math.perm(n, k)


@pytest.mark.parametrize("wb", [wb for wb in GRID if wb[0] >= 5], ids=grid_id)
def test_epochs_use_different_permutations(wb):
    """Fixed keys; for n ≥ 8 a repeat among 3 uniform epochs has probability < 1e-4, for
    5 ≤ n < 8 we only require that not every epoch repeats the first (< 1e-4 too)."""
    width, b = wb
    for n in (m for m in sizes(width) if m >= 5):
        perms = [tuple(flat(ep)) for ep in epochs_of(n, width, b)]
        if orders(n, n) >= 40_000:
            assert len(set(perms)) == EPOCHS, f"n={n}: two epochs share a permutation"
            assert tuple(range(n)) not in perms, f"n={n}: shuffle=True gave the identity"
        else:
            assert len(set(perms)) > 1, f"n={n}: every epoch uses the same permutation"


def test_epoch_permutation_is_uniform():
    """All 24 orders of n = 4 appear about equally often over 2,400 epochs (χ², 23 dof)."""
    n, epochs = 4, 2400
    pos, valid = as_np(epoch_schedule(jax.random.key(7), n, n, n, epochs))
    assert valid.all()
    counts: dict[tuple[int, ...], int] = {}
    for row in pos.tolist():
        counts[tuple(row)] = counts.get(tuple(row), 0) + 1
    assert set(counts) == set(itertools.permutations(range(n)))
    expected = epochs / math.factorial(n)
    chi2 = sum((c - expected) ** 2 / expected for c in counts.values())
    assert chi2 < 55.0, f"chi2 = {chi2:.1f} (p < 1e-4 for a uniform shuffle)"


def test_different_keys_give_different_orders():
    a = epochs_of(9, 9, 4, key=jax.random.key(0))
    b = epochs_of(9, 9, 4, key=jax.random.key(1))
    assert a != b


@pytest.mark.parametrize("wb", GRID, ids=grid_id)
def test_positions_stay_inside_the_row(wb):
    """Valid slots index 0..n-1; no slot (valid or padding) indexes past the row of width W."""
    width, b = wb
    for n in sizes(width):
        scheds = [
            epoch_schedule(key_for(n, 5), n, width, b, EPOCHS, drop_last=d, shuffle=s)
            for d, s in FLAGS
        ]
        scheds.append(stream_schedule(key_for(n, 6), n, width, b, STREAM_BATCHES))
        for sched in scheds:
            pos, valid = as_np(sched)
            assert np.all((pos[valid] >= 0) & (pos[valid] < n)), f"n={n}"
            assert np.all((pos >= 0) & (pos < max(width, 1))), f"n={n}"


# ------------------------------------------------------------------ stream_schedule


@pytest.mark.parametrize("wb", GRID, ids=grid_id)
def test_stream_batches_full_and_within_one_epoch(wb):
    width, b = wb
    for n in sizes(width):
        batches = stream_of(n, width, b)
        if n == 0:
            assert all(bt == [] for bt in batches), "n = 0 must give no valid slot"
            continue
        if n < b:  # every batch is the whole client set
            assert all(sorted(bt) == list(range(n)) for bt in batches), f"n={n}"
            continue
        assert all(len(bt) == b for bt in batches), f"n={n}: a batch is not full"
        assert all(0 <= p < n for p in flat(batches)), f"n={n}"
        # epochs are blocks of ⌊n/B⌋ consecutive batches with distinct positions
        per_epoch = n // b
        blocks = [flat(batches[i : i + per_epoch]) for i in range(0, len(batches), per_epoch)]
        for i, seq in enumerate(blocks):
            assert len(set(seq)) == len(seq), f"n={n}: epoch {i} repeats an example"
        # different epochs, different orders (thresholds as in the epoch_schedule test)
        whole = [tuple(s) for s in blocks if len(s) == per_epoch * b]
        space = orders(n, per_epoch * b)
        if space >= 10**6:
            assert len(set(whole)) == len(whole), f"n={n}: two epochs use the same order"
        elif space >= 100:
            assert len(set(whole)) > 1, f"n={n}: every epoch uses the same order"


@pytest.mark.parametrize("wb", [wb for wb in GRID if wb[1] >= 4], ids=grid_id)
def test_stream_small_client_reshuffles_each_batch(wb):
    """n < B: each batch is one whole epoch, so (for n ≥ 3) the orders vary across batches."""
    width, b = wb
    for n in (m for m in sizes(width) if 3 <= m < b):
        batches = stream_of(n, width, b)
        assert all(sorted(bt) == list(range(n)) for bt in batches)
        assert len({tuple(bt) for bt in batches}) > 1, f"n={n}"


@pytest.mark.parametrize("b", list(WIDTHS_BY_B))
def test_stream_independent_of_width(b):
    widths = WIDTHS_BY_B[b]
    for n in sizes(max(widths)):
        key = key_for(n, b, 11)
        runs = [stream_of(n, w, b, key=key) for w in widths if w >= n]
        assert all(r == runs[0] for r in runs), f"n={n}: the width changes the stream"


@pytest.mark.parametrize("wb", GRID, ids=grid_id)
def test_stream_is_the_drop_last_epochs_concatenated(wb):
    """§1.3: the stream concatenates epochs cut into ⌊n/B⌋ full batches (same keys per epoch)."""
    width, b = wb
    for n in (m for m in sizes(width) if m >= b):
        key = key_for(n, width, 13)
        concat = [bt for ep in epochs_of(n, width, b, True, key=key) for bt in ep]
        k = min(STREAM_BATCHES, len(concat))
        assert stream_of(n, width, b, key=key)[:k] == concat[:k], f"n={n}"


# ------------------------------------------------------------------ host hint


def _hint_agrees(s: Schedule, where: str):
    assert s.active is not None, f"{where}: a concrete n must give the host hint"
    active = np.asarray(s.active)
    assert active.dtype == np.bool_ and active.shape == (s.num_steps,), where
    np.testing.assert_array_equal(active, np.asarray(s.valid).any(axis=-1), err_msg=where)


@pytest.mark.parametrize("wb", GRID, ids=grid_id)
def test_active_hint_agrees_with_valid(wb):
    width, b = wb
    for n in sizes(width):
        for d, s in FLAGS:
            sched = epoch_schedule(key_for(n), n, width, b, EPOCHS, drop_last=d, shuffle=s)
            _hint_agrees(sched, f"epoch n={n} drop_last={d} shuffle={s}")
        _hint_agrees(stream_schedule(key_for(n), n, width, b, STREAM_BATCHES), f"stream n={n}")


def test_active_hint_for_numpy_and_jax_scalars():
    width, b = 9, 4
    for n in (0, 3, 4, 9):
        for n_as in (np.int64, jnp.int32):
            for d in (False, True):
                sched = epoch_schedule(key_for(n), n_as(n), width, b, EPOCHS, drop_last=d)
                _hint_agrees(sched, f"epoch n={n_as(n)!r} drop_last={d}")
            _hint_agrees(stream_schedule(key_for(n), n_as(n), width, b, 5), f"stream n={n}")


def test_traced_n_gives_no_hint_and_same_schedule():
    key, width, b = jax.random.key(3), 16, 4

    @jax.jit
    def both(n):
        e = epoch_schedule(key, n, width, b, 2)
        s = stream_schedule(key, n, width, b, 5)
        assert e.active is None and s.active is None
        return e.positions, e.valid, s.positions, s.valid

    for n in (0, 3, 9, 16):
        got = both(jnp.int32(n))
        e, s = epoch_schedule(key, n, width, b, 2), stream_schedule(key, n, width, b, 5)
        for g, w in zip(got, (e.positions, e.valid, s.positions, s.valid)):
            np.testing.assert_array_equal(np.asarray(g), np.asarray(w))
