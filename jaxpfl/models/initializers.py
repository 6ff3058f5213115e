"""Parameter initialisation schemes (docs/algorithms.md §8).

- ``'torch'``: every kernel and bias ~ U(−1/√fan_in, 1/√fan_in), PyTorch's default for
  ``nn.Linear`` and ``nn.Conv2d`` (its kaiming_uniform(a=√5) kernel bound equals 1/√fan_in);
- ``'flax'``: Flax defaults (LeCun-normal kernel, zero bias), i.e. the module's own ``init``;
- ``'kt_per'``: kernel ~ N(0, 1)·√(2/fan_in), bias ~ N(0, 1) (the KT-Per MLP, §8.4).

fan_in is the product of a kernel's input axes: ``in_features`` for a Dense kernel
``(in, out)``, ``kh·kw·in_ch`` for a Conv kernel ``(kh, kw, in, out)``; a bias uses the fan_in of
its layer's kernel. ``'torch'`` and ``'kt_per'`` draw all tensors from one flat random vector
(one random-number call per model, which keeps compile time low), cut in ``param_order``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import jax
import jax.numpy as jnp

from jaxpfl.models.base import Params, leaf_at

INITS = ("torch", "flax", "kt_per")


def fan_in(kernel_shape: Sequence[int]) -> int:
    """Inputs per output unit of a Dense ``(in, out)`` or Conv ``(kh, kw, in, out)`` kernel."""
    return math.prod(kernel_shape[:-1])


def init_scale(scheme: str, path: tuple[str, ...], fan: int) -> float:
    """Multiplier of the unit draw (U(−1, 1) or N(0, 1)) for the tensor at ``path``."""
    if scheme == "torch":
        return 1.0 / math.sqrt(fan)
    if scheme == "kt_per":
        return math.sqrt(2.0 / fan) if path[-1] == "kernel" else 1.0
    raise ValueError(f"init scheme {scheme!r} has no scale; choose 'torch' or 'kt_per'")


def draw_params(
    scheme: str, key: jax.Array, shapes: Params, param_order: Sequence[tuple[str, ...]]
) -> Params:
    """Parameters shaped like ``shapes`` (``jax.ShapeDtypeStruct`` leaves) drawn per ``scheme``.

    ``scheme`` is ``'torch'`` or ``'kt_per'``. Every leaf must be a ``kernel`` or ``bias`` listed
    in ``param_order``; a bias's layer must hold a kernel.
    """
    if scheme not in ("torch", "kt_per"):
        raise ValueError(f"draw_params: unknown scheme {scheme!r}; choose 'torch' or 'kt_per'")
    sizes = [math.prod(leaf_at(shapes, path).shape) for path in param_order]
    if scheme == "torch":
        flat = jax.random.uniform(key, (sum(sizes),), jnp.float32, -1.0, 1.0)
    else:
        flat = jax.random.normal(key, (sum(sizes),), jnp.float32)
    drawn: dict[tuple[str, ...], jax.Array] = {}
    offset = 0
    for path, size in zip(param_order, sizes):
        leaf = leaf_at(shapes, path)
        fan = fan_in(leaf_at(shapes, (*path[:-1], "kernel")).shape)
        segment = flat[offset : offset + size].reshape(leaf.shape) * init_scale(scheme, path, fan)
        drawn[tuple(path)] = segment.astype(leaf.dtype)
        offset += size

    def pick(path: tuple, leaf: jax.ShapeDtypeStruct) -> jax.Array:
        del leaf  # unused: the shape came from ``param_order``
        return drawn[tuple(k.key for k in path)]

    return jax.tree_util.tree_map_with_path(pick, shapes)
