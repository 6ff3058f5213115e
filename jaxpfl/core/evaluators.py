"""The evaluator family: one-client evaluation functions mapped over a fixed set of clients.

Three kinds of model are evaluated per client (docs/algorithms.md §1.6), all through
:class:`ClientEvaluator` and the engine's strategies:

* a **global** model shared by every client (``fn(params, data, key)`` with one ``params``;
  ``evaluate_global`` is the faster flat-stream form when no per-client work is needed);
* each client's **own** model, stacked ``[K, ...]`` (``stacked=True``: row k of the params
  goes to client k) — FedALA's θ̂_k, FEDORA's θ_k;
* **fine-tune then evaluate**: ``fn`` trains a copy on the client's train row and evaluates
  on its test row (Personalized FedAvg, Per-FedAvg).

``fn(params, data: ClientData, key) -> pytree`` sees the client's train / val / test rows
(``data.split("test")``); its outputs come back as NumPy arrays with one row per client.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxpfl import distributed
from jaxpfl.core.buckets import Splits, affine_single_plan, make_rows, single_plan
from jaxpfl.core.engine import GroupStates, PerDevice, Strategy, map_groups, place_rows
from jaxpfl.core.evaluate import Counts, client_eval, evaluate_global
from jaxpfl.core.placement import Pool
from jaxpfl.core.residency import host_gather, is_host_tree, placer
from jaxpfl.core.rounds import plan_clients
from jaxpfl.core.train import ClientData

PyTree = Any


class ClientEvaluator:
    """Maps ``fn(params, data, key)`` over clients of ``splits`` with ``strategy``.

    ``splits`` holds one entry per client (``Splits.of(dataset)``, or
    ``Splits.from_lists(train=support, test=query)``). Calling with ``rows`` (entry numbers,
    i.e. client ids when the splits are the dataset's) returns ``fn``'s outputs for those rows
    in that order. The full set of rows is grouped by size once (one compilation); a subset
    uses one group at the global widths (one compilation per subset size).
    ``stacked=True``: ``params`` has a leading ``[K]`` axis and row k is client k's model.
    """

    def __init__(
        self,
        fn: Callable,
        x: jax.Array,
        y: jax.Array,
        splits: Splits,
        strategy: Strategy,
        *,
        stacked: bool = False,
        key_split: str = "test",
    ):
        if isinstance(x, PerDevice) != splits.affine:
            raise ValueError("a per-device pool is read through splits localized to its "
                             "placement (Pool.splits / ClientPlacement.localize), and only so")
        self.x, self.y, self.strategy, self.splits = x, y, strategy, splits
        self.stacked = stacked
        self.key_split = key_split
        self._full = None
        self.fn = fn

    def _groups(self, rows: np.ndarray):
        k = self.splits.num_clients
        full = len(rows) == k and np.array_equal(np.sort(rows), np.arange(k))
        if full and self._full is not None:
            return self._full
        if full:
            plan = plan_clients(self.splits, [rows], self.strategy, self.key_split)
        elif self.splits.affine:
            plan = affine_single_plan(self.splits, rows)
        else:
            plan = single_plan(len(rows), self.splits.widths(), self.strategy.client_multiple)
        groups, order = make_rows(self.splits, rows, plan, self.key_split)
        placed = place_rows(groups, self.strategy)
        out = (placed, order, plan)
        if full:
            self._full = out
        return out

    def __call__(self, params: PyTree, rows: np.ndarray, keys: jax.Array | None = None):
        rows = np.asarray(rows, np.int64)
        groups, order, plan = self._groups(rows)
        if keys is None:
            keys = jax.vmap(jax.random.key)(jnp.zeros(len(rows), jnp.uint32))
        # keys of each group's rows (padding rows reuse the first key: their outputs are dropped)
        keys = jnp.asarray(keys)
        group_keys, start = [], 0
        pos = np.zeros(plan.rows, np.int64)
        pos[order] = np.arange(len(rows))
        for count in plan.group_rows:
            group_keys.append(keys[jnp.asarray(pos[start : start + count])])
            start += count
        if self.stacked and is_host_tree(params):  # host-resident models: one group at a time
            place = placer(self.strategy)
            params = GroupStates(tuple(place(host_gather(params, np.asarray(g.ids)))
                                       for g in groups))
        call = _call_jit if self.strategy.jitted else _call
        outs = call(self.fn, self.strategy, self.stacked, params, self.x, self.y, groups,
                    group_keys)
        outs = distributed.to_host(outs)  # (an all-gather when sharded over processes)
        cat = jax.tree.map(lambda *a: np.concatenate(a), *outs)
        return jax.tree.map(lambda a: a[order], cat)


def _call(fn, strategy: Strategy, stacked: bool, params, x, y, groups, keys):
    """``fn`` mapped over each group of rows (module level, so every evaluator with the same
    ``fn`` and strategy shares one compilation)."""

    def one(shared, pc):
        shared_params, xs, ys = shared
        rows = pc.rows
        data = ClientData(
            rows.train_idx, rows.train_n, xs, ys, rows.val_idx, rows.val_n, rows.test_idx,
            rows.test_n, rows.ids, jnp.int32(0), exec=strategy.exec,
        )
        return fn(pc.state if stacked else shared_params, data, pc.key)

    outs = []
    for i, (g, kg) in enumerate(zip(groups, keys)):
        if isinstance(params, GroupStates):
            clients = GroupStates((params.rows[i],))
        else:
            clients = params if stacked else None
        outs += map_groups(
            one, (None if stacked else params, x, y), (g,), clients, lambda ids, kg=kg: kg,
            strategy,
        )
    return outs


_call_jit = jax.jit(_call, static_argnums=(0, 1, 2))


@functools.cache
def personal_counts(model, split: str = "test") -> Callable:
    """``fn(params_k, data, key) -> Counts`` of a client's own model on its ``split``."""

    def fn(params, data: ClientData, key):
        del key  # unused: evaluation is deterministic
        return client_eval(model, params, data.split(split))

    return fn


def evaluate_personal(
    model,
    stacked_params: PyTree,
    x: jax.Array,
    y: jax.Array,
    splits: Splits,
    clients: np.ndarray,
    strategy: Strategy,
    split: str = "test",
) -> Counts:
    """Counts of each client's own model (row k of ``stacked_params``) on its ``split``."""
    return evaluate_model(model, stacked_params, x, y, splits, clients, strategy, split,
                          stacked=True)


def evaluate_model(
    model,
    params: PyTree,
    x: jax.Array,
    y: jax.Array,
    splits: Splits,
    clients: np.ndarray,
    strategy: Strategy,
    split: str = "test",
    *,
    stacked: bool = False,
) -> Counts:
    """Counts of ONE model (``params``; ``stacked``: row k is client k's own) on each
    client's ``split``, mapped with the engine: the form of ``evaluate_global`` that also
    reads a per-device pool (``jaxpfl.core.placement``), whose indices are per device."""
    ev = ClientEvaluator(personal_counts(model, split), x, y, splits, strategy,
                         stacked=stacked, key_split=split)
    return Counts(*ev(params, np.asarray(clients)))


def evaluate_clients(model, params: PyTree, pool: Pool, clients: np.ndarray,
                     strategy: Strategy, split: str = "test") -> Counts:
    """Counts of ONE model on the ``split`` of each of ``clients``, read from ``pool``
    (``place_pool``): ``evaluate_global``'s flat stream for a whole pool, ``evaluate_model``
    for a per-device one."""
    clients = np.asarray(clients, np.int64)
    if pool.per_device:
        return evaluate_model(model, params, pool.x, pool.y, pool.splits, clients, strategy,
                              split)
    index = getattr(pool.splits, split)
    return evaluate_global(model, params, pool.x, pool.y, [index[int(k)] for k in clients])


__all__ = [
    "ClientEvaluator",
    "evaluate_clients",
    "evaluate_model",
    "evaluate_personal",
    "personal_counts",
]
