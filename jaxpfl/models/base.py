"""The model contract seen by the engine: a pair of pure functions on plain pytrees."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from typing import Any

import jax

Params = Any


@dataclasses.dataclass(frozen=True)
class Model:
    """A model as the engine sees it.

    Attributes:
      name: registry name.
      init: ``init(key, x) -> params`` where ``x`` is a uint8 batch ``[B, H, W, C]``.
      apply: ``apply(params, x, train=False, key=None) -> logits [B, num_classes]``; ``x`` is the
        raw uint8 batch: scaling to [0, 1] and the model's normalisation happen inside, on device.
        ``key`` drives dropout when ``train=True``.
      param_order: parameter tensor paths in forward order, kernel before bias
        (docs/algorithms.md §1.2).
      num_classes: C.
      uses_dropout: whether ``apply(..., train=True)`` is stochastic.
      features: ``features(params, x, layer) -> h``, the input of layer ``layer`` (a name in
        ``param_order``) for the uint8 batch ``x``, computed deterministically (``train=False``).
      head: ``head(params, h, layer, train=False, key=None) -> logits``, the model from layer
        ``layer`` on, fed ``h`` instead of what the layers below would compute. With
        ``h = features(params, x, layer)`` it equals ``apply(params, x)``; the layers below
        are not evaluated (their output is unused: XLA removes them under ``jit``).
    """

    name: str
    init: Callable[[jax.Array, jax.Array], Params]
    apply: Callable[..., jax.Array]
    param_order: tuple[tuple[str, ...], ...]
    num_classes: int
    input_shape: tuple[int, ...]
    uses_dropout: bool = False
    features: Callable[..., jax.Array] | None = None
    head: Callable[..., jax.Array] | None = None


def count_params(params: Params) -> int:
    """Total number of scalars in a parameter pytree (arrays or ``jax.ShapeDtypeStruct`` leaves)."""
    return sum(math.prod(leaf.shape) for leaf in jax.tree.leaves(params))


def leaf_at(params: Params, path: tuple[str, ...]) -> Any:
    """The tensor at ``path`` (a ``param_order`` entry), e.g. ``('params', 'fc', 'kernel')``."""
    node = params
    for name in path:
        node = node[name]
    return node


def ordered_leaves(params: Params, param_order: tuple[tuple[str, ...], ...]) -> list[Any]:
    """Parameter tensors in forward order (``Model.param_order``), not Flax's sorted order."""
    return [leaf_at(params, path) for path in param_order]
