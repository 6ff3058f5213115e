"""Host-side inputs of mapped calls: which clients, grouped how (``buckets``), in what order.

``round_inputs`` builds one round's :class:`~jaxpfl.core.engine.RoundInputs` from the
sampled client ids; ``stage_groups`` the rows of ALL clients for an algorithm's client stage;
``phase_plan`` the one grouping a whole phase of sampled rounds uses (so a sampled run
compiles once per phase, and a resumed run uses the same groups as an uninterrupted one).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np

from jaxpfl.core.buckets import (
    BucketPlan,
    Rows,
    Splits,
    affine_envelope,
    envelope,
    fits_clients,
    make_rows,
    plan_buckets,
    single_plan,
)
from jaxpfl.core.engine import RoundInputs, Strategy
from jaxpfl.errors import ConfigError


def _splits(data) -> Splits:
    return data if isinstance(data, Splits) else Splits.of(data)


def plan_for(splits: Splits, sizes: np.ndarray, strategy: Strategy,
             key_split: str = "train") -> BucketPlan:
    """The grouping of clients of ``sizes`` for ``strategy``: one group at the global widths
    for ``sequential`` (its eager loop skips masked blocks), else ``plan_buckets``."""
    widths = splits.widths()
    if not strategy.jitted:
        return single_plan(len(sizes), widths, strategy.client_multiple)
    return plan_buckets(
        sizes, widths, max_groups=strategy.buckets, multiple=strategy.client_multiple,
        key_split=("train", "val", "test").index(key_split),
    )


def plan_clients(splits: Splits, selections: Sequence[np.ndarray], strategy: Strategy,
                 key_split: str = "train") -> BucketPlan:
    """One plan that fits every selection of clients: ``plan_for`` of the slot-wise envelope
    of their sorted sizes, per device for device-affine splits (``buckets``)."""
    if not splits.affine:
        return plan_for(splits, envelope(selections, splits.sizes(key_split)), strategy,
                        key_split)
    if strategy.name != "sharded" or strategy.client_multiple != splits.devices:
        raise ConfigError(f"splits placed on {splits.devices} devices need the sharded "
                          f"strategy on {splits.devices} devices")
    env = affine_envelope(splits, selections, key_split)
    plan = plan_buckets(env, splits.widths(), max_groups=strategy.buckets,
                        key_split=("train", "val", "test").index(key_split))
    return dataclasses.replace(plan, devices=splits.devices)


def phase_plan(data, selections: Sequence[np.ndarray], strategy: Strategy) -> BucketPlan:
    """One plan that fits every round of a phase: built from the slot-wise envelope of the
    rounds' sorted client sizes (exact when every round has the same clients)."""
    return plan_clients(_splits(data), selections, strategy)


def round_inputs(
    data,
    ids: np.ndarray,
    strategy: Strategy,
    plan: BucketPlan | None = None,
    stage: tuple[Rows, ...] | None = None,
) -> RoundInputs:
    """Host (NumPy) inputs of one round for clients ``ids`` (a FederatedDataset or Splits).

    ``plan`` (e.g. from ``phase_plan``) is used when the clients fit it; otherwise (or
    without one) the round gets its own plan. ``stage``: the all-client rows for an
    algorithm with a client stage (``stage_groups``)."""
    splits = _splits(data)
    ids = np.asarray(ids, np.int64)
    if plan is None or not fits_clients(plan, splits, ids):
        plan = plan_clients(splits, [ids], strategy)
    groups, order = make_rows(splits, ids, plan)
    real = np.zeros(plan.rows, bool)
    real[order] = True
    perm = np.concatenate([order, np.flatnonzero(~real)]).astype(np.int32)
    return RoundInputs(groups, perm, stage)


def stage_groups(data, strategy: Strategy) -> tuple[Rows, ...]:
    """Rows of ALL clients (ids 0..K−1), grouped for ``strategy``: the input of a client
    stage. Fixed for a run: build once, place once."""
    splits = _splits(data)
    ids = np.arange(splits.num_clients)
    groups, _ = make_rows(splits, ids, plan_clients(splits, [ids], strategy))
    return groups


def useful_share(steps: np.ndarray, compiled: np.ndarray, mask: np.ndarray) -> float:
    """Σ active steps / Σ compiled steps over real clients, the padding rows' steps included
    in the denominator (they are compiled too)."""
    total = float(np.sum(compiled))
    return float(np.sum(np.asarray(steps)[np.asarray(mask) > 0])) / total if total else 1.0


__all__ = ["phase_plan", "plan_clients", "plan_for", "round_inputs", "stage_groups", "useful_share"]
