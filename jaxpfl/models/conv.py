"""Convolution and pooling as the models compute them, with a CPU formulation that XLA runs fast.

XLA:CPU runs a stride-1 convolution in one of two ways. Called on its own (one jitted step per
call), it goes to a fast library kernel; inside a loop construct (``lax.scan``/``while_loop``,
i.e. every jitted multi-step path of the engine) and under ``vmap`` its gradient convolutions
are emitted as generic loop nests that run tens of times slower (FedAvgCNN, batch 10: 169 ms
per step for conv2's kernel gradient alone inside a scan, against about 10 ms for the whole
step below; ``experiments/profile_step.py --variants im2col,xla``). The same convolution
written as ``im2col`` (the k·k shifted views of the input side by side on the channel axis,
then one matrix product with the reshaped kernel) is slicing and a ``dot``, which XLA:CPU runs
well in every context. For a forward pass alone (evaluation) XLA's convolution is the faster
one. So the CPU formulation is a ``custom_vjp``: evaluated, XLA's convolution; differentiated,
``im2col`` forward and a written-out VJP (``∂kernel = colsᵀ·g``; ``∂x`` = col2im of
``g·kernelᵀ`` by in-place slice updates).

``im2col`` computes the same sums in a different order: outputs and gradients agree with XLA's
convolution and with the textbook sums to float32 rounding (``tests/test_models.py``).

Which formulation runs is chosen when a model is traced: ``JAXPFL_CONV=auto`` (default) uses
``im2col`` on the CPU backend and XLA's convolution elsewhere (cuDNN on a GPU); ``xla`` or
``im2col`` force one. The variable is read at trace time, so set it before the first call.

Max pooling (:func:`max_pool_2x2`) is a reshape and a max, with PyTorch's gradient rule (the
first maximum of each window) written as a select.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
from jax import lax

from jaxpfl.errors import ConfigError

CONV_IMPLS = ("auto", "xla", "im2col")

# Flax's dimension numbers for NHWC inputs / HWIO kernels (``nn.Conv``'s own layout).
_NHWC = lax.ConvDimensionNumbers(
    lhs_spec=(0, 3, 1, 2), rhs_spec=(3, 2, 0, 1), out_spec=(0, 3, 1, 2)
)


def conv_impl() -> str:
    """The convolution formulation in force: ``'im2col'`` or ``'xla'`` (``JAXPFL_CONV``)."""
    value = os.environ.get("JAXPFL_CONV", "auto").strip().lower() or "auto"
    if value not in CONV_IMPLS:
        raise ConfigError(f"JAXPFL_CONV={value!r}: use one of {', '.join(CONV_IMPLS)}")
    if value == "auto":
        return "im2col" if jax.default_backend() == "cpu" else "xla"
    return value


def _pads(
    padding: Any, kernel: Sequence[int], spatial: Sequence[int]
) -> list[tuple[int, int]] | None:
    """Padding as (lo, hi) pairs for stride 1, or None when the form is not one we handle."""
    if isinstance(padding, str):
        mode = padding.upper()
        if mode == "VALID":
            return [(0, 0)] * len(kernel)
        if mode == "SAME":
            return [((k - 1) // 2, k - 1 - (k - 1) // 2) for k in kernel]
        return None
    pairs = [tuple(int(v) for v in p) for p in padding]
    if len(pairs) != len(spatial) or any(len(p) != 2 for p in pairs):
        return None
    return pairs  # type: ignore[return-value]


def _patches(x: jax.Array, kh: int, kw: int) -> jax.Array:
    """``[B, H, W, C] -> [B, h, w, kh·kw·C]``: the kh·kw shifted views side by side on the
    channel axis, patch-major (``(p·kw + q)·C + c``, the order of an HWIO kernel's reshape)."""
    h, w = x.shape[1] - kh + 1, x.shape[2] - kw + 1
    return jnp.concatenate([x[:, p : p + h, q : q + w, :] for p in range(kh) for q in range(kw)],
                           axis=-1)


def _im2col(
    x: jax.Array, kernel: jax.Array, pads: Sequence[tuple[int, int]]
) -> tuple[jax.Array, jax.Array]:
    """:func:`conv2d_im2col`'s output and its patch matrix ``[B·h·w, kh·kw·Cin]``."""
    kh, kw, cin, cout = kernel.shape
    if any(lo or hi for lo, hi in pads):
        x = jnp.pad(x, ((0, 0), *pads, (0, 0)))
    cols = _patches(x, kh, kw)
    cols2 = cols.reshape(-1, kh * kw * cin)
    y = cols2 @ kernel.reshape(kh * kw * cin, cout)
    return y.reshape(*cols.shape[:3], cout), cols2


def conv2d_im2col(x: jax.Array, kernel: jax.Array, pads: Sequence[tuple[int, int]]) -> jax.Array:
    """Stride-1 2-D convolution of ``x [B, H, W, Cin]`` with ``kernel [kh, kw, Cin, Cout]``.

    ``y[b, i, j, o] = Σ_{p, q, c} x_pad[b, i+p, j+q, c] · kernel[p, q, c, o]``: the patches of
    :func:`_patches` as a ``[B·h·w, kh·kw·Cin]`` matrix times the kernel reshaped to
    ``[kh·kw·Cin, Cout]``, one plain matrix product.
    """
    return _im2col(x, kernel, pads)[0]


def conv_general_dilated(
    lhs: jax.Array,
    rhs: jax.Array,
    window_strides: Sequence[int],
    padding: Any,
    lhs_dilation: Sequence[int] | None = None,
    rhs_dilation: Sequence[int] | None = None,
    dimension_numbers: Any = None,
    feature_group_count: int = 1,
    precision: Any = None,
    **kwargs: Any,
) -> jax.Array:
    """Drop-in for ``lax.conv_general_dilated`` (``flax.linen.Conv(conv_general_dilated=...)``).

    Runs :func:`conv2d_im2col` when :func:`conv_impl` says so and the call is a plain stride-1
    NHWC/HWIO 2-D convolution; every other call goes to XLA's convolution unchanged.
    """
    pads = None
    plain = (
        conv_impl() == "im2col"
        and lhs.ndim == 4
        and tuple(window_strides) == (1, 1)
        and all(d == 1 for d in (lhs_dilation or (1, 1)))
        and all(d == 1 for d in (rhs_dilation or (1, 1)))
        and feature_group_count == 1
        and not kwargs
        and _dims(dimension_numbers, lhs.ndim) == _NHWC
    )
    if plain:
        pads = _pads(padding, rhs.shape[:2], lhs.shape[1:3])
    if pads is None:
        return lax.conv_general_dilated(
            lhs, rhs, window_strides, padding, lhs_dilation=lhs_dilation,
            rhs_dilation=rhs_dilation, dimension_numbers=dimension_numbers,
            feature_group_count=feature_group_count, precision=precision, **kwargs,
        )
    return _conv_cpu(lhs, rhs, tuple(tuple(p) for p in pads))


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def _conv_cpu(x: jax.Array, kernel: jax.Array, pads: tuple) -> jax.Array:
    """Not differentiated (evaluation): XLA's convolution, 3–4x faster than ``im2col`` for a
    forward pass over evaluation batches on XLA:CPU, even inside ``lax.map``. Differentiated
    (training): ``im2col`` forward and the VJP below (XLA:CPU's gradient convolutions are the
    slow ones)."""
    return lax.conv_general_dilated(x, kernel, (1, 1), list(pads), dimension_numbers=_NHWC)


def _conv_cpu_fwd(x, kernel, pads):
    y, cols2 = _im2col(x, kernel, pads)
    return y, (cols2, kernel, x.shape)


def _conv_cpu_bwd(pads, res, g):
    """The VJP of :func:`conv2d_im2col`, written out:

    - ``∂kernel = colsᵀ · g`` (``[kh·kw·Cin, B·h·w] · [B·h·w, Cout]``);
    - ``∂cols = g · kernelᵀ``, then col2im: patch (p, q) of ``∂cols`` is added into
      ``∂x_pad[:, p:p+h, q:q+w, :]``, one in-place slice update after another; the padding
      is cut off.

    JAX's own VJP of the patches is a chain of 25 pads and adds that XLA fuses into whatever
    consumes ``∂x`` (the pooling and ReLU backward), recomputing the chain for each element
    of that consumer; the in-place updates and an ``optimization_barrier`` on ``∂x`` keep col2im
    a pass of its own (docs/performance.md, "The training step, op by op")."""
    cols2, kernel, x_shape = res
    kh, kw, cin, cout = kernel.shape
    g2 = g.reshape(-1, cout)
    d_kernel = (cols2.T @ g2).reshape(kernel.shape)
    d_cols = (g2 @ kernel.reshape(kh * kw * cin, cout).T).reshape(*g.shape[:3], kh * kw, cin)
    (top, bottom), (left, right) = pads
    h, w = g.shape[1], g.shape[2]
    dx = jnp.zeros((x_shape[0], x_shape[1] + top + bottom, x_shape[2] + left + right, cin),
                   g.dtype)
    for p in range(kh):
        for q in range(kw):
            window = dx[:, p : p + h, q : q + w, :] + d_cols[:, :, :, p * kw + q, :]
            dx = lax.dynamic_update_slice(dx, window, (0, p, q, 0))
    dx = dx[:, top : top + x_shape[1], left : left + x_shape[2], :]
    return lax.optimization_barrier(dx), d_kernel


_conv_cpu.defvjp(_conv_cpu_fwd, _conv_cpu_bwd)


def _dims(dimension_numbers: Any, ndim: int) -> Any:
    if dimension_numbers is None:
        return None
    if isinstance(dimension_numbers, lax.ConvDimensionNumbers):
        return dimension_numbers
    try:
        return lax.conv_dimension_numbers((1,) * ndim, (1,) * ndim, dimension_numbers)
    except (TypeError, ValueError):
        return None


def _pool_view(x: jax.Array) -> jax.Array:
    """``[..., H, W, C] -> [..., H//2, 2, W//2, 2, C]`` (an odd last row or column dropped)."""
    h, w = x.shape[-3] // 2 * 2, x.shape[-2] // 2 * 2
    x = x[..., :h, :w, :]
    return x.reshape(x.shape[:-3] + (h // 2, 2, w // 2, 2, x.shape[-1]))


@jax.custom_vjp
def max_pool_2x2(x: jax.Array) -> jax.Array:
    """2×2 max pool, stride 2, floor (PyTorch ``MaxPool2d(2)``) on ``[..., H, W, C]``.

    Forward: a reshape and a max over the two window axes (the same values as
    ``lax.reduce_window``, and faster on every backend we measured). Backward, as PyTorch: each
    window's gradient goes to its first maximal entry in row-major order (top-left, top-right,
    bottom-left, bottom-right); the other entries, and a dropped odd row or column, get 0.
    Ties are common: after the first ReLU every background window of an image holds four equal
    values. The gradient is then a select over the window, with no reduction.
    """
    return _pool_view(x).max(axis=(-4, -2))


def _max_pool_fwd(x: jax.Array) -> tuple[jax.Array, tuple[jax.Array, jax.Array]]:
    y = _pool_view(x).max(axis=(-4, -2))
    return y, (x, y)


def _max_pool_bwd(res: tuple[jax.Array, jax.Array], g: jax.Array) -> tuple[jax.Array]:
    x, y = res
    v = _pool_view(x)
    y6 = y[..., :, None, :, None, :]
    top_left = v[..., 0:1, :, 0:1, :] == y6
    top_right = (v[..., 0:1, :, 1:2, :] == y6) & ~top_left
    bottom_left = (v[..., 1:2, :, 0:1, :] == y6) & ~(top_left | top_right)
    bottom_right = ~(top_left | top_right | bottom_left)
    first = jnp.concatenate([jnp.concatenate([top_left, top_right], axis=-2),
                             jnp.concatenate([bottom_left, bottom_right], axis=-2)], axis=-4)
    dx = jnp.where(first, g[..., :, None, :, None, :], 0.0).astype(x.dtype)
    h, w = v.shape[-5] * 2, v.shape[-3] * 2
    dx = dx.reshape(x.shape[:-3] + (h, w, x.shape[-1]))
    extra = [(0, 0)] * (x.ndim - 3) + [(0, x.shape[-3] - h), (0, x.shape[-2] - w), (0, 0)]
    return (jnp.pad(dx, extra) if any(hi for _, hi in extra) else dx,)


max_pool_2x2.defvjp(_max_pool_fwd, _max_pool_bwd)
