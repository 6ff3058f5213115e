"""Evaluation: per-client counts, and the summaries of docs/algorithms.md §1.6.

For client k: c_k = correct predictions (argmax, ties → lowest class), m_k = examples,
L_k = Σ per-example cross-entropy. Summaries: ``acc_pooled`` = Σc/Σm (PFLlib), ``acc_mean`` =
mean_k c_k/m_k (unweighted), ``acc_std`` (population), ``acc_min``, ``acc_p10``,
``loss_pooled`` = ΣL/Σm, ``loss_mean`` = mean_k L_k/m_k; clients with m_k = 0 are excluded and
counted in ``n_empty_clients``.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxpfl.core.train import ClientData

PyTree = Any


class Counts(NamedTuple):
    """Per-client ``correct``, ``count`` and ``loss_sum`` (arrays ``[M]`` or scalars)."""

    correct: Any
    count: Any
    loss_sum: Any


def _example_stats(model, params, x, y, valid):
    logits = model.apply(params, x, train=False).astype(jnp.float32)
    ce = optax.softmax_cross_entropy_with_integer_labels(logits, y)
    hit = (jnp.argmax(logits, axis=-1) == y) & valid
    return hit.astype(jnp.int32), jnp.where(valid, ce, 0.0)


@functools.partial(jax.jit, static_argnames=("model",))
def _predict_batch(model, params, x_pool, y_pool, ids, valid):
    return _example_stats(model, params, x_pool[ids], y_pool[ids], valid)


def evaluate_global(
    model,
    params: PyTree,
    x: jax.Array,
    y: jax.Array,
    parts: Sequence[np.ndarray],
    batch_size: int = 2048,
) -> Counts:
    """Counts of one model (``params``) on each client's index array in ``parts``.

    All clients' examples are evaluated as one flat stream in fixed-size batches (one
    compilation), then summed per client on the host.
    """
    sizes = np.array([len(p) for p in parts], dtype=np.int64)
    flat = np.concatenate([np.asarray(p, np.int64) for p in parts]) if len(parts) else np.zeros(0)
    seg = np.repeat(np.arange(len(parts)), sizes)
    total = len(flat)
    padded = max(batch_size, -(-total // batch_size) * batch_size)
    ids = np.zeros(padded, np.int32)
    ids[:total] = flat
    valid = np.arange(padded) < total
    hits, losses = [], []
    for s in range(0, padded, batch_size):
        h, lo = _predict_batch(
            model,
            params,
            x,
            y,
            jnp.asarray(ids[s : s + batch_size]),
            jnp.asarray(valid[s : s + batch_size]),
        )
        hits.append(h)
        losses.append(lo)
    hit = np.asarray(jnp.concatenate(hits))[:total]
    loss = np.asarray(jnp.concatenate(losses), dtype=np.float64)[:total]
    k = len(parts)
    return Counts(
        np.bincount(seg, weights=hit, minlength=k).astype(np.int64),
        sizes,
        np.bincount(seg, weights=loss, minlength=k),
    )


@functools.partial(jax.jit, static_argnames=("model", "chunk"))
def client_eval(model, params: PyTree, data: ClientData, chunk: int = 256) -> Counts:
    """Counts of ``params`` on one client's examples ``data.idx[:data.n]`` (traceable, for one
    client: map it over clients with the engine). Evaluated in chunks to bound memory."""
    width = data.width
    chunk = min(chunk, width)
    padded = -(-width // chunk) * chunk
    pos = jnp.arange(padded)
    idx = jnp.pad(data.idx, (0, padded - width))
    valid = pos < data.n

    def one(args):
        ids, ok = args
        h, lo = _example_stats(model, params, data.x[ids], data.y[ids], ok)
        return jnp.sum(h), jnp.sum(lo)

    hits, losses = jax.lax.map(one, (idx.reshape(-1, chunk), valid.reshape(-1, chunk)))
    return Counts(jnp.sum(hits), jnp.asarray(data.n, jnp.int32), jnp.sum(losses))


def summarize(counts: Counts, prefix: str = "") -> dict[str, float]:
    """§1.6 summary of per-client counts, keys prefixed (e.g. ``init_``, ``pers_``)."""
    c = np.asarray(counts.correct, np.float64)
    m = np.asarray(counts.count, np.float64)
    L = np.asarray(counts.loss_sum, np.float64)
    ok = m > 0
    out: dict[str, float] = {"n_clients": int(ok.sum()), "n_empty_clients": int((~ok).sum())}
    if ok.any():
        acc = c[ok] / m[ok]
        out.update(
            acc_pooled=float(c[ok].sum() / m[ok].sum()),
            acc_mean=float(acc.mean()),
            acc_std=float(acc.std()),
            acc_min=float(acc.min()),
            acc_max=float(acc.max()),
            acc_p10=float(np.percentile(acc, 10)),
            loss_pooled=float(L[ok].sum() / m[ok].sum()),
            loss_mean=float((L[ok] / m[ok]).mean()),
            n_examples=int(m[ok].sum()),
        )
    return {f"{prefix}{k}": v for k, v in out.items()}
