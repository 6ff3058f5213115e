"""Partitioners (docs/algorithms.md §7): coverage, exact streams against literal recipes,
validation.

The literal references below transcribe the §7 pseudocode line by line (lists, appends, one
client at a time); the library's vectorised versions must reproduce them bit for bit.
"""

from __future__ import annotations

import gzip
import math
import os

import numpy as np
import pytest

from jaxpfl.data import partition as P
from jaxpfl.data.dataset import DataError

FMNIST_DIR = "/usr/share/datasets/fashion-mnist"


def synthetic_labels(n: int = 3000, c: int = 10, seed: int = 0, skew: bool = True) -> np.ndarray:
    rng = np.random.default_rng(seed)
    p = rng.dirichlet(np.full(c, 5.0)) if skew else np.full(c, 1.0 / c)
    return rng.choice(c, size=n, p=p).astype(np.int64)


def read_idx_labels(path: str) -> np.ndarray:
    with gzip.open(path, "rb") as f:
        data = f.read()
    assert int.from_bytes(data[:4], "big") == 2049, "not an IDX label file"
    return np.frombuffer(data, dtype=np.uint8, offset=8).astype(np.int64)


def fmnist_pool_labels() -> np.ndarray:
    paths = [os.path.join(FMNIST_DIR, f"{s}-labels-idx1-ubyte.gz") for s in ("train", "t10k")]
    if not all(os.path.exists(p) for p in paths):
        pytest.skip(f"Fashion-MNIST IDX files not found in {FMNIST_DIR}")
    return np.concatenate([read_idx_labels(p) for p in paths])


def assert_disjoint(parts, n, exact: bool):
    flat = np.concatenate(parts) if parts else np.zeros(0, np.int64)
    assert flat.dtype == np.int64
    assert len(np.unique(flat)) == len(flat), "an example is in two clients"
    assert flat.min(initial=0) >= 0 and flat.max(initial=-1) < n
    if exact:
        assert len(flat) == n, "not every example was assigned"


# ------------------------------------------------------------------ literal references


def ref_dirichlet(y, k, alpha, seed, min_size=10, balance=True, shuffle=True, max_tries=1000):
    rng = np.random.default_rng(seed)
    n, c = len(y), int(y.max()) + 1
    for _ in range(max_tries):
        idx = [[] for _ in range(k)]
        for cls in range(c):
            i_c = rng.permutation(np.flatnonzero(y == cls))
            p = rng.dirichlet(np.full(k, alpha))
            if balance:
                q = np.array([pk if len(idx[j]) < n / k else 0.0 for j, pk in enumerate(p)])
                if q.sum() > 0:
                    p = q / q.sum()
            cuts = (np.cumsum(p) * len(i_c)).astype(int)[:-1]
            for j, part in enumerate(np.split(i_c, cuts)):
                idx[j].extend(part.tolist())
        if min(len(a) for a in idx) >= min_size:
            out = [np.array(a, np.int64) for a in idx]
            if shuffle:
                for a in out:
                    rng.shuffle(a)
            return out
    raise AssertionError("reference: min_size not reached")


def ref_flower(y, k, alpha, seed, min_size=10, self_balancing=False, shuffle=True):
    rng = np.random.default_rng(seed)
    classes = list(dict.fromkeys(y.tolist()))  # order of first appearance
    avg = len(y) / k
    for _ in range(11):
        parts = {j: [] for j in range(k)}
        for cls in classes:
            i_c = np.nonzero(y == cls)[0]
            prop = dict(enumerate(rng.dirichlet(np.full(k, float(alpha)))))
            if self_balancing:
                for j in list(prop):
                    if len(parts[j]) > avg:
                        prop[j] = 0
                total = sum(prop.values())
                prop = {j: v / total for j, v in prop.items()}
            cuts = (np.cumsum(list(prop.values())) * len(i_c)).astype(int)[:-1]
            for j, part in enumerate(np.split(i_c, cuts)):
                parts[j].extend(part.tolist())
        if min(len(v) for v in parts.values()) >= min_size:
            if shuffle:
                for v in parts.values():
                    rng.shuffle(v)
            return [np.array(parts[j], np.int64) for j in range(k)]
    raise AssertionError("reference: no partition in 11 tries")


def ref_pfllib(y, k, mode, alpha=0.1, cpc=2, balance=False, batch_size=10, ratio=0.75):
    """PFLlib generate script, transcribed from §7.3/§7.4 with the global RNG as RandomState(1)."""
    rs = np.random.RandomState(1)
    n, c = len(y), int(y.max()) + 1
    least = int(min(batch_size / (1 - ratio), n / k / 2))
    if mode == "dir":
        min_size = 0
        while min_size < least:
            batch = [[] for _ in range(k)]
            for cls in range(c):
                i_c = np.where(y == cls)[0]
                rs.shuffle(i_c)
                p = rs.dirichlet(np.repeat(alpha, k))
                p = np.array([pj * (len(b) < n / k) for pj, b in zip(p, batch)])
                p = p / p.sum()
                cuts = (np.cumsum(p) * len(i_c)).astype(int)[:-1]
                batch = [b + part.tolist() for b, part in zip(batch, np.split(i_c, cuts))]
                min_size = min(len(b) for b in batch)
        parts = [np.array(b, np.int64) for b in batch]
    else:
        by_class = [np.arange(n)[y == cls] for cls in range(c)]
        budget = [cpc] * k
        got = {}
        for cls in range(c):
            sel = [j for j in range(k) if budget[j] > 0]
            if not sel:
                break
            sel = sel[: int(np.ceil((k / c) * cpc))]
            total = len(by_class[cls])
            per = total / len(sel)
            if balance:
                sizes = [int(per)] * (len(sel) - 1)
            else:
                sizes = rs.randint(max(per / 10, least / c), per, len(sel) - 1).tolist()
            sizes.append(total - sum(sizes))
            start = 0
            for j, s in zip(sel, sizes):
                piece = by_class[cls][start : start + s]
                got[j] = piece if j not in got else np.append(got[j], piece, axis=0)
                start += s
                budget[j] -= 1
        parts = [np.asarray(got[j], np.int64) for j in range(k)]
    train, test = [], []
    for part in parts:  # sklearn train_test_split(train_size=ratio) on the same global stream
        m = len(part)
        n_te = m - math.floor(ratio * m)
        perm = rs.permutation(m)
        test.append(part[perm[:n_te]])
        train.append(part[perm[n_te:]])
    return parts, train, test


def assert_lists_equal(a, b):
    assert len(a) == len(b)
    for x, z in zip(a, b):
        np.testing.assert_array_equal(x, z)


# ------------------------------------------------------------------ coverage and exactness


def test_iid_sizes_and_coverage():
    parts = P.iid(1003, 10, seed=3)
    assert_disjoint(parts, 1003, exact=True)
    sizes = [len(p) for p in parts]
    assert max(sizes) - min(sizes) <= 1
    perm = np.random.default_rng(3).permutation(1003)
    np.testing.assert_array_equal(np.concatenate(parts), perm)
    assert [len(p) for p in P.iid(60000, 100, 0)] == [600] * 100  # McMahan MNIST IID


@pytest.mark.parametrize("alpha,balance,seed", [(0.1, True, 0), (0.5, False, 1), (1.0, True, 7)])
def test_dirichlet_matches_literal_recipe(alpha, balance, seed):
    y = synthetic_labels(2500, 10, seed=seed)
    got = P.dirichlet(y, 15, alpha, seed, balance=balance)
    assert_disjoint(got, len(y), exact=True)
    assert min(len(p) for p in got) >= 10
    assert_lists_equal(got, ref_dirichlet(y, 15, alpha, seed, balance=balance))


def test_dirichlet_vector_alpha_and_no_shuffle():
    y = synthetic_labels(2000, 5, seed=2)
    a = np.linspace(0.2, 2.0, 8)
    parts = P.dirichlet(y, 8, a, seed=4, shuffle=False, min_size=1)
    assert_disjoint(parts, len(y), exact=True)
    for p in parts:  # stored order: class blocks in ascending class order
        assert np.all(np.diff(y[p]) >= 0)


@pytest.mark.parametrize("self_balancing", [False, True])
def test_flower_matches_literal_recipe(self_balancing):
    y = synthetic_labels(2000, 7, seed=5)
    y = (y + 3) % 7  # first-appearance order differs from sorted order
    got = P.flower_dirichlet(y, 12, 0.5, seed=42, self_balancing=self_balancing)
    assert_disjoint(got, len(y), exact=True)
    want = ref_flower(y, 12, 0.5, 42, self_balancing=self_balancing)
    assert_lists_equal(got, want)


def test_flower_fails_after_eleven_tries():
    y = synthetic_labels(300, 3, seed=0)
    with pytest.raises(DataError, match="min_partition_size=25 not reached after 11 tries"):
        P.flower_dirichlet(y, 10, 0.01, min_partition_size=25)
    with pytest.raises(DataError, match="min_partition_size=50 is unreachable"):
        P.flower_dirichlet(y, 10, 0.01, min_partition_size=50)


@pytest.mark.parametrize(
    "mode,alpha,balance",
    [("dir", 0.1, False), ("dir", 1.0, False), ("pat", 0.1, False), ("pat", 0.1, True)],
)
def test_pfllib_split_matches_literal_recipe(mode, alpha, balance):
    y = synthetic_labels(6000, 10, seed=11, skew=False)
    parts_ref, train_ref, test_ref = ref_pfllib(y, 20, mode, alpha=alpha, balance=balance)
    train, test = P.pfllib_split(y, 20, mode, alpha=alpha, balance=balance)
    assert_lists_equal(train, train_ref)
    assert_lists_equal(test, test_ref)
    if mode == "dir":
        assert_lists_equal(P.pfllib_dirichlet(y, 20, alpha), parts_ref)
    else:
        assert_lists_equal(P.pfllib_pathological(y, 20, balance=balance), parts_ref)
    for tr, te in zip(train, test):
        n = len(tr) + len(te)
        assert len(tr) == math.floor(0.75 * n)
    assert_disjoint(train + test, len(y), exact=True)


def test_pfllib_pat_k20_c10_class_pairs():
    y = synthetic_labels(7000, 10, seed=3, skew=False)
    parts = P.pfllib_pathological(y, 20, 2)
    assert_disjoint(parts, len(y), exact=True)
    for m in range(5):
        for j in range(4 * m, 4 * m + 4):
            assert set(np.unique(y[parts[j]]).tolist()) == {2 * m, 2 * m + 1}
    # balanced: every candidate but the last gets int(n_c / 4) of each class
    parts = P.pfllib_pathological(y, 20, 2, balance=True)
    for cls in range(10):
        n_c = int((y == cls).sum())
        got = [int((y[parts[j]] == cls).sum()) for j in range(20) if (y[parts[j]] == cls).any()]
        assert got[:3] == [n_c // 4] * 3 and sum(got) == n_c


@pytest.mark.parametrize("k,c,cpc", [(10, 10, 2), (20, 10, 2), (10, 5, 5), (30, 10, 1)])
def test_pfllib_pat_each_client_holds_exactly_its_classes(k, c, cpc):
    y = synthetic_labels(6000, c, seed=1, skew=False)
    parts = P.pfllib_pathological(y, k, cpc, balance=True)
    for p in parts:
        assert len(np.unique(y[p])) == cpc


def test_pfllib_iid_mode_all_classes():
    y = synthetic_labels(5000, 10, seed=1, skew=False)
    train, test = P.pfllib_split(y, 10, "iid", balance=True)
    assert_disjoint(train + test, len(y), exact=True)
    for tr, te in zip(train, test):
        assert len(np.unique(y[np.concatenate([tr, te])])) == 10


def test_shards_mcmahan_layout():
    y = np.repeat(np.arange(10), 6000)[np.random.default_rng(0).permutation(60000)]
    parts = P.shards(y, 100, 2, num_shards=200, shard_size=300, seed=0)
    assert_disjoint(parts, len(y), exact=True)
    assert all(len(p) == 600 for p in parts)
    assert all(len(np.unique(y[p])) <= 2 for p in parts)
    order = np.argsort(y, kind="stable")
    for p in parts:  # two whole shards of the stable label order, ascending shard id
        s0, s1 = (int(np.flatnonzero(order == p[0])[0]), int(np.flatnonzero(order == p[300])[0]))
        assert s0 % 300 == 0 and s1 % 300 == 0 and s0 < s1
        np.testing.assert_array_equal(
            p, np.concatenate([order[s0 : s0 + 300], order[s1 : s1 + 300]])
        )


def test_shards_drop_remainder_and_noniid_slicing():
    y = synthetic_labels(1005, 10, seed=0)
    parts = P.shards(y, 10, 2, seed=1)  # S = 20, z = 50, 5 dropped
    assert_disjoint(parts, len(y), exact=False)
    assert sum(len(p) for p in parts) == 1000
    parts = P.noniid_slicing(y, 9, seed=2)  # 18 shards of 55
    assert [len(p) for p in parts] == [110] * 9
    assert_disjoint(parts, len(y), exact=False)


def test_natural_sorted_ids_and_min_samples():
    w = np.array(["b", "a", "c", "a", "b", "a", "d"])
    ids, parts = P.natural(w)
    assert ids.tolist() == ["a", "b", "c", "d"]
    assert [p.tolist() for p in parts] == [[1, 3, 5], [0, 4], [2], [6]]
    ids, parts = P.natural(w, min_samples=2)
    assert ids.tolist() == ["a", "b"]
    assert_disjoint(P.natural(np.array([3, 1, 3, 2]))[1], 4, exact=True)


def test_split_clients_sklearn_semantics():
    parts = [np.arange(10) + 100, np.arange(1), np.arange(7) + 50, np.zeros(0, np.int64)]
    train, test = P.split_clients(parts, 0.75, seed=5)
    rs = np.random.RandomState(5)
    for p, tr, te in zip(parts, train, test):
        n = len(p)
        n_te = n - math.floor(0.75 * n)
        perm = rs.permutation(n)
        np.testing.assert_array_equal(te, p[perm[:n_te]])
        np.testing.assert_array_equal(tr, p[perm[n_te:]])
    assert (len(train[1]), len(test[1])) == (0, 1)  # n = 1: 0 train, 1 test (allowed)
    tr, te = P.split_clients(parts, 1.0, seed=5)
    assert_lists_equal(tr, parts)
    assert all(len(t) == 0 for t in te)


def test_holdout_clients():
    tr, ev = P.holdout_clients(3400, n_eval=900, seed=42)
    assert len(tr) == 2500 and len(ev) == 900
    perm = np.random.RandomState(42).permutation(3400)
    np.testing.assert_array_equal(np.concatenate([tr, ev]), perm)
    tr2, ev2 = P.holdout_clients(3400, 900 / 3400, seed=42)
    np.testing.assert_array_equal(ev, ev2)
    ids = np.array([f"w{i}" for i in range(10)])
    tr, ev = P.holdout_clients(ids, 0.3, seed=0)
    assert len(ev) == 3 and set(tr) | set(ev) == set(ids)


# ------------------------------------------------------------------ seeds and label skew


SEEDED = {
    "iid": lambda y, s: P.iid(len(y), 10, s),
    "dirichlet": lambda y, s: P.dirichlet(y, 10, 0.3, s),
    "flower": lambda y, s: P.flower_dirichlet(y, 10, 0.3, s),
    "shards": lambda y, s: P.shards(y, 10, 2, seed=s),
    "pfllib_dir": lambda y, s: P.pfllib_dirichlet(y, 10, 0.3, rng=s),
    "pfllib_pat": lambda y, s: P.pfllib_pathological(y, 10, 2, rng=s),
    "split": lambda y, s: P.split_clients(P.iid(len(y), 10, 0), 0.75, s)[0],
}


@pytest.mark.parametrize("name", list(SEEDED))
def test_same_seed_same_partition_different_seed_different(name):
    y = synthetic_labels(2000, 10, seed=0, skew=False)
    fn = SEEDED[name]
    a, b, c = fn(y, 1), fn(y, 1), fn(y, 2)
    assert_lists_equal(a, b)
    assert any(len(x) != len(z) or not np.array_equal(x, z) for x, z in zip(a, c))


def test_smaller_alpha_fewer_labels_per_client():
    y = synthetic_labels(4000, 10, seed=0, skew=False)

    def mean_labels(alpha):
        return np.mean(
            [
                np.mean([len(np.unique(y[p])) for p in P.dirichlet(y, 20, alpha, s, min_size=1)])
                for s in range(5)
            ]
        )

    m = [mean_labels(a) for a in (0.05, 0.5, 5.0)]
    assert m[0] < m[1] < m[2], m


# ------------------------------------------------------------------ validation


@pytest.mark.parametrize(
    "fn",
    [
        lambda y, k: P.iid(len(y), k),
        lambda y, k: P.dirichlet(y, k, 0.5),
        lambda y, k: P.flower_dirichlet(y, k, 0.5),
        lambda y, k: P.pfllib_dirichlet(y, k, 0.5),
        lambda y, k: P.pfllib_pathological(y, k),
        lambda y, k: P.shards(y, k),
    ],
)
def test_bad_num_clients(fn):
    y = synthetic_labels(50, 5)
    for k, msg in [(0, ">= 1"), (-3, ">= 1"), (51, "more clients than samples"), (2.5, "integer")]:
        with pytest.raises(DataError, match=msg):
            fn(y, k)


@pytest.mark.parametrize(
    "alpha",
    [
        0.0,
        -1.0,
        float("nan"),
        float("inf"),
        [0.5, 0.0, 1.0],
        [0.5, float("nan"), 1.0],
        [0.5, 0.5],
        "x",
    ],
)
def test_bad_alpha(alpha):
    y = synthetic_labels(100, 3)
    for fn in (P.dirichlet, P.flower_dirichlet):
        with pytest.raises(DataError, match="alpha"):
            fn(y, 3, alpha)
    with pytest.raises(DataError, match="alpha"):
        P.pfllib_dirichlet(y, 3, alpha)


def test_min_size_unreachable_message():
    y = synthetic_labels(200, 4)
    with pytest.raises(DataError, match="try a larger alpha, fewer clients or a smaller min_size"):
        P.dirichlet(y, 10, 0.01, min_size=19, max_tries=20)
    with pytest.raises(DataError, match="min_size=21 is unreachable: 10 clients x 21 > 200"):
        P.dirichlet(y, 10, 0.01, min_size=21)
    with pytest.raises(DataError, match="try a larger alpha or fewer clients"):
        P.pfllib_dirichlet(y, 10, 0.01, least_samples=19, max_tries=5)


def test_empty_clients_rejected_unless_allowed():
    y = synthetic_labels(60, 3, seed=0)
    parts = P.dirichlet(y, 40, 0.01, 0, min_size=0, allow_empty=True)
    assert any(len(p) == 0 for p in parts)
    assert_disjoint(parts, len(y), exact=True)
    with pytest.raises(DataError, match="got no examples"):
        P.dirichlet(y, 40, 0.01, 0, min_size=0)


def test_bad_labels_and_shards():
    with pytest.raises(DataError, match="integers"):
        P.dirichlet(np.array([0.5, 1.0, 2.0]), 2, 1.0)
    with pytest.raises(DataError, match="integers"):
        P.dirichlet(np.array([0, -1, 2]), 2, 1.0)
    with pytest.raises(DataError, match="1-D"):
        P.dirichlet(np.zeros((3, 2), int), 2, 1.0)
    with pytest.raises(DataError, match="num_classes"):
        P.dirichlet(np.array([0, 5, 2]), 2, 1.0, num_classes=3)
    y = synthetic_labels(100, 5)
    with pytest.raises(DataError, match="more clients than shards"):
        P.shards(y, 30, 2, num_shards=50)
    with pytest.raises(DataError, match="more shards than samples"):
        P.shards(y, 5, 2, num_shards=200)
    with pytest.raises(DataError, match="need 120 samples"):
        P.shards(y, 5, 2, num_shards=12, shard_size=10)
    with pytest.raises(DataError, match="class_per_client"):
        P.pfllib_pathological(y, 5, 6)
    with pytest.raises(DataError, match="train_frac"):
        P.split_clients([np.arange(3)], 1.5)
    with pytest.raises(DataError, match="n_eval"):
        P.holdout_clients(5, n_eval=5)
    with pytest.raises(DataError, match="frac"):
        P.holdout_clients(5, 1.0)
    with pytest.raises(DataError, match="unknown mode"):
        P.pfllib_split(y, 5, "foo")


# ------------------------------------------------------------------ real data and scale


def test_golden_fmnist_pfllib_dir_sizes():
    y = fmnist_pool_labels()
    assert len(y) == 70000
    train, test = P.pfllib_split(y, 20, "dir", alpha=0.1)
    # docs/algorithms.md §7.3 golden sizes (PFLlib's generated FMNIST Dir(0.1), 20 clients)
    golden = (
        "61 240 656 1952 1091 4104 3288 3345 4170 2667 "
        "4627 5102 6413 469 996 146 2202 3624 3817 3523"
    )
    assert [len(t) for t in train] == [int(v) for v in golden.split()]
    assert sum(len(t) for t in train) == 52493 and sum(len(t) for t in test) == 17507
    assert_disjoint(train + test, 70000, exact=True)


def test_golden_fmnist_pfllib_pat_pairs():
    y = fmnist_pool_labels()
    train, test = P.pfllib_split(y, 20, "pat")
    for m in range(5):
        for j in range(4 * m, 4 * m + 4):
            held = np.unique(y[np.concatenate([train[j], test[j]])]).tolist()
            assert held == [2 * m, 2 * m + 1]
