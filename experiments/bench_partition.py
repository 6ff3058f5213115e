"""Time the partitioners at EMNIST scale and compare with literal per-client loops.

    python experiments/bench_partition.py                  # ~10 s on a 2-core CPU
    python experiments/bench_partition.py --skip-reference # library only

Cases (synthetic labels with EMNIST-like class frequencies: 62 classes, digits ~10x a letter):
  a0) ``dirichlet`` alpha=0.1 of 200,000 examples into 1,000 clients (min_size 5): the figure
      the test suite used to bound (< 10 s), now reported here with its coverage check;
  a) ``dirichlet`` (generic §7.2) alpha=0.1 of 700,000 examples into 3,400 clients;
  b) ``pfllib_split`` (§7.3, partition + 75/25 split) into 20 clients, on 70,000 and 700,000;
  c) support pieces at the 3,400-client scale: ``split_clients``, ``partition_stats`` and a
     save/load round trip of the index file.
The reference columns run the same recipes written as plain Python list appends (PFLlib's style)
and must produce identical client lists. Prints a table; writes JSON to ``--out``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time

import numpy as np

_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if _ROOT not in sys.path:
    sys.path.insert(0, _ROOT)

from jaxpfl.data import partition as P  # noqa: E402
from jaxpfl.data.dataset import ClientIndex, FederatedDataset  # noqa: E402
from jaxpfl.data.stats import partition_stats  # noqa: E402
from jaxpfl.data.store import load_partition, partition_hash, save_partition  # noqa: E402


def emnist_like_labels(n: int, num_classes: int = 62, seed: int = 0) -> np.ndarray:
    """Digits (first 10 classes) weigh 10 each, letters lognormal around 2: EMNIST-ByClass-like."""
    rng = np.random.default_rng(seed)
    w = np.concatenate([np.full(10, 10.0), 2.0 * rng.lognormal(0.0, 0.8, num_classes - 10)])
    return rng.choice(num_classes, size=n, p=w / w.sum()).astype(np.int64)


def literal_dirichlet(y, k, alpha, seed, min_size, max_tries=1000):
    """§7.2 as a per-client list-append loop (the shape of PFLlib's code)."""
    rng = np.random.default_rng(seed)
    n, c = len(y), int(y.max()) + 1
    for _ in range(max_tries):
        idx = [[] for _ in range(k)]
        for cls in range(c):
            i_c = rng.permutation(np.flatnonzero(y == cls))
            p = rng.dirichlet(np.full(k, alpha))
            q = np.array([pk if len(idx[j]) < n / k else 0.0 for j, pk in enumerate(p)])
            if q.sum() > 0:
                p = q / q.sum()
            cuts = (np.cumsum(p) * len(i_c)).astype(int)[:-1]
            idx = [a + part.tolist() for a, part in zip(idx, np.split(i_c, cuts))]
        if min(len(a) for a in idx) >= min_size:
            out = [np.array(a, np.int64) for a in idx]
            for a in out:
                rng.shuffle(a)
            return out
    raise RuntimeError("min_size not reached")


def literal_pfllib(y, k, alpha, ratio=0.75, batch_size=10):
    """PFLlib's Dirichlet generator + sklearn-style split, as PFLlib writes it (RandomState(1))."""
    rs = np.random.RandomState(1)
    n, c = len(y), int(y.max()) + 1
    least = int(min(batch_size / (1 - ratio), n / k / 2))
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
    train, test = [], []
    for b in batch:
        b = np.array(b, np.int64)
        n_te = len(b) - int(np.floor(ratio * len(b)))
        perm = rs.permutation(len(b))
        test.append(b[perm[:n_te]])
        train.append(b[perm[n_te:]])
    return train, test


def timed(fn, repeats: int):
    best, out = float("inf"), None
    for _ in range(repeats):
        t = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t)
    return best, out


def same(a, b) -> bool:
    return len(a) == len(b) and all(np.array_equal(x, z) for x, z in zip(a, b))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=700_000, help="examples in the large cases (700,000)")
    ap.add_argument("--clients", type=int, default=3400, help="clients in case a (3,400)")
    ap.add_argument("--classes", type=int, default=62, help="label classes (62, EMNIST)")
    ap.add_argument("--alpha", type=float, default=0.1, help="Dirichlet concentration (0.1)")
    ap.add_argument(
        "--min-size",
        type=int,
        default=10,
        help="case a: smallest allowed client (10, the generic default)",
    )
    ap.add_argument("--repeats", type=int, default=3, help="timing repeats; the best is kept")
    ap.add_argument(
        "--skip-reference",
        action="store_true",
        help="do not time the literal Python-loop references",
    )
    ap.add_argument("--out", default="results/bench_partition.json", help="JSON output path")
    args = ap.parse_args(argv)

    rows = []
    y = emnist_like_labels(args.n, args.classes)

    # a0) the figure the test suite used to assert (< 10 s): Dirichlet of 200,000 into 1,000
    n0, k0, min0 = 200_000, 1000, 5
    y0 = emnist_like_labels(n0, args.classes)
    t, parts0 = timed(lambda: P.dirichlet(y0, k0, args.alpha, 0, min_size=min0), args.repeats)
    flat = np.concatenate(parts0)
    row = {
        "case": f"dirichlet a={args.alpha} N={n0} K={k0} C={args.classes} min={min0}",
        "min_size": min0,
        "jaxpfl_s": t,
        "budget_s": 10.0,
        "covers_each_once": bool(len(flat) == n0 and np.array_equal(np.sort(flat), np.arange(n0))),
    }
    if not args.skip_reference:
        tr, ref = timed(lambda: literal_dirichlet(y0, k0, args.alpha, 0, min0), 1)
        row.update(reference_s=tr, identical=same(parts0, ref))
    rows.append(row)

    # a) generic Dirichlet at EMNIST scale
    t, parts = timed(
        lambda: P.dirichlet(y, args.clients, args.alpha, 0, min_size=args.min_size), args.repeats
    )
    sizes = np.array([len(p) for p in parts])
    row = {
        "case": f"dirichlet a={args.alpha} N={args.n} K={args.clients} C={args.classes}",
        "min_size": args.min_size,
        "jaxpfl_s": t,
        "sizes_min_max": [int(sizes.min()), int(sizes.max())],
    }
    if not args.skip_reference:
        tr, ref = timed(lambda: literal_dirichlet(y, args.clients, args.alpha, 0, args.min_size), 1)
        row.update(reference_s=tr, identical=same(parts, ref))
    rows.append(row)

    # b) PFLlib Dirichlet + split, 20 clients
    for n in (70_000, args.n):
        yy = y[:n]
        t, (train, test) = timed(
            lambda yy=yy: P.pfllib_split(yy, 20, "dir", alpha=args.alpha), args.repeats
        )
        row = {
            "case": f"pfllib_split dir a={args.alpha} N={n} K=20 C={args.classes}",
            "jaxpfl_s": t,
            "train_total": int(sum(len(a) for a in train)),
        }
        if not args.skip_reference:
            tr, (rtr, rte) = timed(lambda yy=yy: literal_pfllib(yy, 20, args.alpha), 1)
            row.update(reference_s=tr, identical=same(train, rtr) and same(test, rte))
        rows.append(row)

    # c) the rest of the pipeline at 3,400 clients
    t, (tr3, te3) = timed(lambda: P.split_clients(parts, 0.75, 0), args.repeats)
    rows.append({"case": f"split_clients 0.75, K={args.clients}", "jaxpfl_s": t})
    ds = FederatedDataset(
        name="synthetic",
        x=np.zeros((len(y), 1, 1, 1), np.uint8),
        y=y.astype(np.int32),
        train=ClientIndex.from_lists(tr3),
        test=ClientIndex.from_lists(te3),
        client_ids=tuple(str(k) for k in range(len(tr3))),
        num_classes=args.classes,
        train_clients=np.arange(len(tr3)),
        eval_clients=np.zeros(0, np.int64),
    )
    t, _ = timed(lambda: partition_stats(ds), args.repeats)
    rows.append({"case": f"partition_stats K={args.clients}", "jaxpfl_s": t})
    from jaxpfl.data.dataset import RawData

    raw = RawData("synthetic", ds.x, ds.y, ds.x[:0], ds.y[:0], args.classes)
    with tempfile.TemporaryDirectory() as d:
        t_save, path = timed(lambda: save_partition(os.path.join(d, "p.npz"), ds), 1)
        t_load, back = timed(lambda: load_partition(path, raw), 1)
        ok = partition_hash(back.train, back.test) == partition_hash(ds.train, ds.test)
        mb = os.path.getsize(path) / 2**20
    rows.append({"case": f"save_partition K={args.clients} ({mb:.1f} MiB)", "jaxpfl_s": t_save})
    rows.append(
        {
            "case": f"load_partition K={args.clients} (validated)",
            "jaxpfl_s": t_load,
            "identical": ok,
        }
    )

    print(f"{'case':<58} {'jaxpfl s':>9} {'loop ref s':>10} {'speed-up':>8}  same")
    for r in rows:
        ref, t = r.get("reference_s"), r["jaxpfl_s"]
        ref_s = "" if ref is None else f"{ref:.2f}"
        gain = "" if ref is None else f"{ref / t:.0f}x"
        note = ""
        if "budget_s" in r:
            ok = t < r["budget_s"] and r["covers_each_once"]
            note = f"  (budget {r['budget_s']:.0f} s, covers each once: {'ok' if ok else 'FAIL'})"
        print(f"{r['case']:<58} {t:>9.3f} {ref_s:>10} {gain:>8}  {r.get('identical', '')}{note}")
    result = {
        "rows": rows,
        "machine": {
            "python": platform.python_version(),
            "numpy": np.__version__,
            "cpu": platform.processor(),
            "cores": os.cpu_count(),
        },
        "args": vars(args),
    }
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(result, f, indent=1)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
