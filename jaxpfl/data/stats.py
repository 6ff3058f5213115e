"""Partition reports (§7): per-client sizes and label histograms, a text table and a figure."""

from __future__ import annotations

import os
from typing import Any

import numpy as np

from jaxpfl.data.dataset import ClientIndex, FederatedDataset
from jaxpfl.data.store import partition_hash

__all__ = ["class_counts", "partition_stats", "format_stats_table", "plot_partition"]


def class_counts(ds: FederatedDataset, split: str = "train") -> np.ndarray:
    """``[K, C]`` int64: ``counts[k, c]`` = examples of class c in client k's split."""
    ci: ClientIndex = getattr(ds, split)
    k, c = len(ci), int(ds.num_classes)
    owner = np.repeat(np.arange(k, dtype=np.int64), ci.sizes)
    labels = np.asarray(ds.y, np.int64)[ci.flat]
    return np.bincount(owner * c + labels, minlength=k * c).reshape(k, c)


def _summary(v: np.ndarray) -> dict[str, float]:
    if len(v) == 0:
        return {"min": 0, "max": 0, "mean": 0.0, "std": 0.0, "median": 0.0}
    return {
        "min": int(v.min()),
        "max": int(v.max()),
        "mean": float(v.mean()),
        "std": float(v.std()),
        "median": float(np.median(v)),
    }


def partition_stats(ds: FederatedDataset) -> dict[str, Any]:
    """JSON-ready report: per-client train/test sizes, per-class counts ``[K][C]``, number of
    distinct labels (train and test together), totals, size summaries, client roles and the content
    hash."""
    tr, te = class_counts(ds, "train"), class_counts(ds, "test")
    both = tr + te
    distinct = (both > 0).sum(axis=1)
    n_tr, n_te = ds.train.sizes, ds.test.sizes
    owned = int(n_tr.sum() + n_te.sum())
    return {
        "name": ds.name,
        "num_clients": ds.num_clients,
        "num_classes": int(ds.num_classes),
        "client_ids": list(ds.client_ids),
        "train_sizes": n_tr.tolist(),
        "test_sizes": n_te.tolist(),
        "train_class_counts": tr.tolist(),
        "test_class_counts": te.tolist(),
        "distinct_labels": distinct.tolist(),
        "totals": {
            "train": int(n_tr.sum()),
            "test": int(n_te.sum()),
            "pool": int(len(ds.y)),
            "unassigned": int(len(ds.y)) - owned,
            "train_by_class": tr.sum(axis=0).tolist(),
            "test_by_class": te.sum(axis=0).tolist(),
        },
        "train_size": _summary(n_tr),
        "test_size": _summary(n_te),
        "distinct_labels_summary": {
            "mean": float(distinct.mean()) if len(distinct) else 0.0,
            "min": int(distinct.min(initial=0)),
            "max": int(distinct.max(initial=0)),
        },
        "empty_clients": int(((n_tr + n_te) == 0).sum()),
        "train_clients": np.asarray(ds.train_clients).tolist(),
        "eval_clients": np.asarray(ds.eval_clients).tolist(),
        "hash": partition_hash(ds.train, ds.test),
        "meta": dict(ds.meta),
    }


def _top_labels(row: np.ndarray, n: int = 4) -> str:
    nz = np.flatnonzero(row)
    top = nz[np.argsort(-row[nz], kind="stable")][:n]
    s = " ".join(f"{c}:{row[c]}" for c in top)
    return s + (f" +{len(nz) - n}" if len(nz) > n else "")


def format_stats_table(stats: dict[str, Any], max_rows: int = 40) -> str:
    """A fixed-width table: one row per client (id, role, train, test, #labels, largest classes),
    the first and last ``max_rows // 2`` rows when there are more, then totals and summaries."""
    k = stats["num_clients"]
    evals = set(stats["eval_clients"])
    counts = np.asarray(stats["train_class_counts"]) + np.asarray(stats["test_class_counts"])
    ids = stats["client_ids"]
    w_id = max(6, *(len(s) for s in ids[:200])) if ids else 6
    head = (
        f"{'client':>6} {'id':>{w_id}} {'role':>5} {'train':>7} {'test':>6} {'labels':>6}"
        "  top classes (class:count)"
    )
    lines = [head, "-" * len(head)]
    rows = list(range(k))
    if k > max_rows:
        half = max(1, max_rows // 2)
        rows = rows[:half] + [-1] + rows[-half:]
    for i in rows:
        if i < 0:
            lines.append(f"{'...':>6}  ({k - 2 * half} clients not shown)")
            continue
        lines.append(
            f"{i:>6} {ids[i]:>{w_id}} {'eval' if i in evals else 'train':>5} "
            f"{stats['train_sizes'][i]:>7} {stats['test_sizes'][i]:>6} "
            f"{stats['distinct_labels'][i]:>6}  {_top_labels(counts[i])}"
        )
    t, s = stats["totals"], stats["train_size"]
    lines.append("-" * len(head))
    lines.append(
        f"{k} clients ({len(stats['train_clients'])} train, {len(evals)} eval), "
        f"{stats['num_classes']} classes; examples: train {t['train']}, test {t['test']}, "
        f"pool {t['pool']}, unassigned {t['unassigned']}"
    )
    lines.append(
        f"train size min/median/mean/max {s['min']}/{s['median']:.0f}/{s['mean']:.1f}/{s['max']}; "
        f"labels per client mean {stats['distinct_labels_summary']['mean']:.2f}; "
        f"empty clients {stats['empty_clients']}; hash {stats['hash'][:16]}"
    )
    return "\n".join(lines)


def plot_partition(ds: FederatedDataset, path: str | os.PathLike, max_clients: int = 100) -> str:
    """Save a PNG: top, a stacked bar per client of its label histogram (train + test); bottom,
    train and test sizes per client. Shows the first ``max_clients`` clients (noted in the title)
    and, above that, adds a histogram of all client sizes. Draws on an Agg canvas (no pyplot)."""
    import matplotlib
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    counts = class_counts(ds, "train") + class_counts(ds, "test")
    k, c = counts.shape
    shown = min(k, max_clients)
    xs = np.arange(shown)
    n_tr, n_te = ds.train.sizes, ds.test.sizes
    many = k > max_clients
    fig = Figure(figsize=(max(8, shown * 0.12 + 4), 10 if many else 7))
    FigureCanvasAgg(fig)
    axes = fig.subplots(3 if many else 2, 1)
    cmap = matplotlib.colormaps["tab20" if c <= 20 else "gist_ncar"].resampled(max(c, 1))
    bottom = np.zeros(shown)
    for cls in range(c):
        axes[0].bar(
            xs,
            counts[:shown, cls],
            bottom=bottom,
            color=cmap(cls),
            width=0.9,
            label=str(cls) if c <= 20 else None,
            linewidth=0,
        )
        bottom += counts[:shown, cls]
    sub = f" (first {shown} of {k} clients)" if many else ""
    axes[0].set_title(
        f"{ds.name} / {ds.meta.get('partition', '?')}: label histogram per client{sub}"
    )
    axes[0].set_xlabel("client")
    axes[0].set_ylabel("examples")
    if c <= 20:
        axes[0].legend(title="class", fontsize=7, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    for ax in axes[:2]:
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    axes[1].bar(xs - 0.2, n_tr[:shown], width=0.4, label="train")
    axes[1].bar(xs + 0.2, n_te[:shown], width=0.4, label="test")
    axes[1].set_xlabel("client")
    axes[1].set_ylabel("examples")
    axes[1].set_title(f"client sizes{sub}")
    axes[1].legend(loc="upper left", bbox_to_anchor=(1.0, 1.0))
    if many:
        axes[2].hist(n_tr + n_te, bins=50)
        axes[2].set_xlabel("examples per client (train + test)")
        axes[2].set_ylabel("clients")
        axes[2].set_title(f"size distribution over all {k} clients")
    fig.tight_layout()
    path = os.fspath(path)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.savefig(path, dpi=100)
    return path
