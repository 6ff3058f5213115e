"""Grouping clients by size (less padding) changes execution only, never results; a client's
training does not depend on the clients it shares a round with (per-step keys, dropout)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from toy import MODEL, toy_dataset

from jaxpfl.algorithms.fedavg import FedAvgConfig, fedavg
from jaxpfl.core import Strategy, make_round, place_inputs, round_inputs
from jaxpfl.core.buckets import Splits, envelope, fits, make_rows, plan_buckets
from jaxpfl.core.rounds import phase_plan
from jaxpfl.models import get_model
from jaxpfl.run import sample_clients

ROOT = jax.random.key(5)
# PFLlib's Fashion-MNIST Dir(0.1) 20-client train sizes (docs/algorithms.md §7.3)
PFLLIB_FMNIST = np.array([61, 240, 656, 1952, 1091, 4104, 3288, 3345, 4170, 2667, 4627, 5102,
                          6413, 469, 996, 146, 2202, 3624, 3817, 3523])


def _share(sizes, plan, b=10):
    """Useful / compiled steps of one epoch with drop_last (FedAvg, PFLlib's loader)."""
    useful = sum(int(n) // b for n in sizes)
    compiled = sum(c * -(-w[0] // b) for c, w in zip(plan.counts, plan.widths))
    return useful / compiled


def test_plan_fits_every_client_and_beats_one_group():
    rng = np.random.default_rng(0)
    for _ in range(50):
        m = int(rng.integers(1, 60))
        sizes = rng.integers(0, 3000, m)
        gw = (int(sizes.max(initial=1)) or 1, 7, 9)
        for mult in (1, 8):
            plan = plan_buckets(sizes, gw, max_groups=6, multiple=mult)
            assert fits(plan, sizes)
            assert len(plan.counts) <= 6
            assert all(c % mult == 0 and c >= s for c, s in zip(plan.counts, plan.slots))
            assert all(w[1:] == gw[1:] for w in plan.widths)
            one = plan_buckets(sizes, gw, max_groups=1, multiple=mult)
            assert plan.cost() <= one.cost()


def test_useful_share_on_pfllib_split_reaches_75_percent():
    gw = (int(PFLLIB_FMNIST.max()), 1, 1)
    one = plan_buckets(PFLLIB_FMNIST, gw, max_groups=1)
    six = plan_buckets(PFLLIB_FMNIST, gw, max_groups=6)
    assert _share(PFLLIB_FMNIST, one) == pytest.approx(0.41, abs=0.01)
    assert _share(PFLLIB_FMNIST, six) >= 0.75


def test_rows_hold_each_client_once_in_size_order():
    ds = toy_dataset()
    splits = Splits.of(ds)
    ids = np.array([5, 0, 3, 1])
    plan = plan_buckets(splits.sizes("train")[ids], splits.widths(), max_groups=3)
    groups, order = make_rows(splits, ids, plan)
    flat_ids = np.concatenate([g.ids for g in groups])
    np.testing.assert_array_equal(flat_ids[order], ids)
    for g in groups:
        for row, k in enumerate(g.ids):
            if g.mask[row]:
                n = len(ds.train[int(k)])
                assert g.train_n[row] == n
                np.testing.assert_array_equal(g.train_idx[row, :n], ds.train[int(k)])


def _fedavg_round(strategy, ids, cfg, model=MODEL, ds=None, rounds=2):
    ds = ds or toy_dataset()
    alg = fedavg(model, cfg)
    params = model.init(jax.random.key(1), jnp.zeros((1,) + ds.input_shape, jnp.uint8))
    state = alg.init(ROOT, params, ds.num_clients)
    rnd = make_round(alg, strategy)
    x, y = jnp.asarray(ds.x), jnp.asarray(ds.y)
    for t in range(rounds):
        inputs = place_inputs(round_inputs(ds, np.asarray(ids), strategy), strategy)
        state, out = rnd(state, x, y, inputs, jnp.int32(t), ROOT)
    return state, out


@pytest.mark.parametrize("name", ["vmap", "chunked", "sharded"])
def test_bucketed_round_equals_unbucketed(name):
    cfg = FedAvgConfig(local_epochs=2, batch_size=4, client_lr=0.1)
    ids = np.arange(6)
    one, out1 = _fedavg_round(Strategy(name, buckets=1, chunk_size=2), ids, cfg)
    many, out6 = _fedavg_round(Strategy(name, buckets=6, chunk_size=2), ids, cfg)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-6), one.server.params,
                 many.server.params)
    np.testing.assert_array_equal(np.asarray(out1.metrics["steps"]),
                                  np.asarray(out6.metrics["steps"]))
    # fewer compiled steps with groups (sharded: 6 clients on 8 devices fit one group best)
    c1 = np.asarray(out1.metrics["compiled_steps"]).sum()
    c6 = np.asarray(out6.metrics["compiled_steps"]).sum()
    assert c6 <= c1 if name == "sharded" else c6 < c1


@pytest.mark.parametrize(
    "strategy",
    [Strategy("vmap", buckets=1), Strategy("vmap"), Strategy("chunked", chunk_size=2),
     Strategy("sequential")],
    ids=lambda s: f"{s.name}-b{s.buckets}",
)
def test_dropout_client_trains_the_same_whoever_shares_its_round(strategy):
    """Client 0 (7 examples) with E = 2 and a dropout model: its update is identical whether it
    shares the round with a 40-example client (a wider padded row, more compiled steps per
    epoch) or with a 1-example one. Step keys are the client's own (epoch, batch)."""
    model = get_model("sj_mlp", (4, 4, 1), 3)
    cfg = FedAvgConfig(local_epochs=2, batch_size=3, client_lr=0.1)
    ds = toy_dataset(sizes=(7, 40, 1))
    deltas = []
    for ids in ([0, 1], [0, 2], [0]):
        _, out = _fedavg_round(strategy, ids, cfg, model=model, ds=ds, rounds=1)
        deltas.append(np.asarray(out.metrics["delta_norm"])[0])
    assert deltas[0] == pytest.approx(deltas[1], rel=1e-6) == pytest.approx(deltas[2], rel=1e-6)
    assert deltas[0] > 0


def test_phase_plan_fits_every_sampled_round_and_compiles_once():
    ds = toy_dataset(sizes=(1, 7, 10, 13, 23, 40, 3, 17, 29, 31))
    pool = np.arange(ds.num_clients)
    sel = [sample_clients(ROOT, t, pool, 4) for t in range(12)]
    strategy = Strategy("vmap")
    plan = phase_plan(ds, sel, strategy)
    sizes = Splits.of(ds).sizes("train")
    assert all(fits(plan, sizes[s]) for s in sel)
    env = envelope(sel, sizes)
    assert all(np.all(np.sort(sizes[s]) <= env) for s in sel)
    alg = fedavg(MODEL, FedAvgConfig(batch_size=4, client_lr=0.1))
    rnd = make_round(alg, strategy)
    params = MODEL.init(jax.random.key(1), jnp.zeros((1, 4, 4, 1), jnp.uint8))
    state = alg.init(ROOT, params, ds.num_clients)
    x, y = jnp.asarray(ds.x), jnp.asarray(ds.y)
    for t, s in enumerate(sel):
        inputs = place_inputs(round_inputs(ds, s, strategy, plan), strategy)
        state, _ = rnd(state, x, y, inputs, jnp.int32(t), ROOT)
    assert rnd._cache_size() == 1


# ---- device-affine layout (per-device pools) ------------------------------------------------


def _placed(sizes=(1, 7, 10, 13, 23, 40, 3, 5, 18), devices=4):
    from jaxpfl.core.placement import ClientPlacement

    ds = toy_dataset(sizes=sizes)
    splits = Splits.of(ds)
    placement = ClientPlacement.balanced(splits, devices)
    return ds, splits, placement, placement.localize(splits)


def test_placement_is_balanced_by_examples_and_owns_every_example_once():
    ds, splits, placement, _ = _placed()
    total = splits.sizes("train") + splits.sizes("test")
    load = np.bincount(placement.owner, weights=total, minlength=4)
    # greedy largest-first: no device exceeds the mean by more than the largest client
    assert load.max() - load.mean() <= total.max()
    held = np.concatenate(placement.examples)
    assert len(held) == len(np.unique(held)) == int(total.sum())
    for d, ex in enumerate(placement.examples):
        mine = np.flatnonzero(placement.owner == d)
        want = np.concatenate([ds.train[k] for k in mine] + [ds.test[k] for k in mine])
        np.testing.assert_array_equal(ex, np.sort(want))


def test_localized_rows_read_the_same_examples_from_the_owner_pool():
    ds, splits, placement, local = _placed()
    for k in range(ds.num_clients):
        pool = placement.examples[placement.owner[k]]
        for split in ("train", "test"):
            np.testing.assert_array_equal(pool[getattr(local, split)[k]],
                                          getattr(splits, split)[k])  # same examples, same order


def test_affine_rows_put_each_client_in_its_owner_block_and_order_restores_it():
    from jaxpfl.core.buckets import affine_envelope, fits_clients
    from jaxpfl.core.engine import Strategy
    from jaxpfl.core.rounds import plan_clients, round_inputs

    ds, splits, placement, local = _placed()
    strategy = Strategy("sharded", num_devices=4, buckets=3)
    rng = np.random.default_rng(0)
    selections = [rng.choice(ds.num_clients, 5, replace=False) for _ in range(6)]
    plan = plan_clients(local, selections, strategy)
    assert plan.devices == 4
    for ids in selections:
        assert fits_clients(plan, local, ids)
        inputs = round_inputs(local, ids, strategy, plan)
        seen = []
        for g, rows in zip(inputs.groups, plan.group_rows):
            assert len(g.ids) == rows and rows % 4 == 0
            for d, block in enumerate(np.split(np.arange(rows), 4)):
                real = block[g.mask[block] > 0]
                assert all(placement.owner[g.ids[r]] == d for r in real)
                seen += g.ids[real].tolist()
                for r in real:  # the row's width fits, its indices are the client's local ones
                    n = g.train_n[r]
                    np.testing.assert_array_equal(g.train_idx[r, :n], local.train[g.ids[r]])
        assert sorted(seen) == sorted(ids.tolist())
        cat = np.concatenate([g.ids for g in inputs.groups])
        np.testing.assert_array_equal(cat[inputs.perm[: len(ids)]], ids)  # sampled order
    # the envelope: per round and device, sorted sizes right-aligned; the slot-wise max
    lists = [sorted(splits.sizes("train")[[k for k in ids if placement.owner[k] == d]])
             for ids in selections for d in range(4)]
    m = max(map(len, lists))
    want = np.max([[0] * (m - len(v)) + list(v) for v in lists], axis=0)
    np.testing.assert_array_equal(affine_envelope(local, selections), want)
    # one slot per device: one client per device fits, two on one device do not
    one_each = np.array([np.flatnonzero(placement.owner == d)[0] for d in range(4)])
    single = plan_clients(local, [one_each], strategy)
    assert sum(single.slots) == 1 and fits_clients(single, local, one_each)
    busy = int(np.argmax(np.bincount(placement.owner)))
    assert not fits_clients(single, local, np.flatnonzero(placement.owner == busy)[:2])


def test_localize_rejects_examples_outside_the_owner_pool():
    from jaxpfl.core.placement import ClientPlacement

    ds = toy_dataset()
    splits = Splits.of(ds)
    placement = ClientPlacement.balanced(splits, 2)
    other = int(np.flatnonzero(placement.owner != placement.owner[0])[0])
    wrong = Splits.from_lists(train=[splits.train[other]] + [splits.train[k] for k in range(1, 6)])
    with pytest.raises(ValueError, match="outside its device's pool"):
        placement.localize(wrong)


def test_a_per_device_pool_is_read_only_through_localized_splits():
    from jaxpfl.core import ClientEvaluator, personal_counts
    from jaxpfl.core.engine import Strategy
    from jaxpfl.core.placement import array_loader

    ds, splits, placement, local = _placed(devices=2)
    strategy = Strategy("sharded", num_devices=2, pool_layout="per-device")
    x, y = placement.pool(array_loader(ds.x, ds.y), strategy.mesh())
    assert x.value.shape[:2] == (2, placement.pool_rows)
    with pytest.raises(ValueError, match="localized"):
        ClientEvaluator(personal_counts(MODEL), x, y, splits, strategy)  # global indices
    with pytest.raises(ValueError, match="localized"):
        ClientEvaluator(personal_counts(MODEL), jnp.asarray(ds.x), jnp.asarray(ds.y), local,
                        strategy)
    ClientEvaluator(personal_counts(MODEL), x, y, local, strategy)
