"""Keyed randomness (docs/algorithms.md §1.7): every draw is ``fold_in`` of the root key with a
purpose tag and the integers that identify it, never split in driver iteration order."""

from __future__ import annotations

import jax

# Purpose tags (stable integers: changing one changes every result that uses it).
INIT = 1
SELECT = 2
DATA = 3
DROPOUT = 4
EVAL = 5
SPLIT = 6
STAGE = 7


def derive(root: jax.Array, tag: int, *ids: int | jax.Array) -> jax.Array:
    """``fold_in(...fold_in(fold_in(root, tag), ids[0])..., ids[-1])``."""
    key = jax.random.fold_in(root, tag)
    for i in ids:
        key = jax.random.fold_in(key, i)
    return key
