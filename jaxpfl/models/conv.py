"""Convolution and pooling as the models compute them, with a CPU formulation that XLA runs fast.

XLA:CPU runs a stride-1 convolution in one of two ways. Called on its own (one jitted step per
call), it goes to a fast library kernel; inside a loop construct (``lax.scan``/``while_loop``,
i.e. every jitted multi-step path of the engine) and under ``vmap`` it is emitted as a generic
loop nest that runs 6–12x slower (FedAvgCNN, batch 10, 2-core CPU: 6.5 ms per SGD step alone,
41 ms inside a scan, 75 ms per client-step vmapped over 8 clients). The same convolution written
as ``im2col`` (the k·k shifted views stacked, then one matrix product with the kernel) is plain
slicing and a ``dot``, which XLA:CPU runs well in every context: 5.6–5.9 ms per step in a scan
or alone, 6.2 ms per client-step vmapped (PyTorch's own loop: 6.7 ms, same machine and run).
``experiments/bench_engine.py --conv im2col,xla`` measures both side by side. For a forward
pass alone (evaluation) the picture turns: XLA's convolution is 2.5–3x faster than ``im2col``,
even inside ``lax.map``. So the CPU formulation is a ``custom_vjp``: evaluated, XLA's
convolution; differentiated, ``im2col`` forward and backward.

``im2col`` computes the same sums in a different order: losses agree with XLA's convolution to
float32 rounding (≤ 5e-7 after 200 SGD steps in the probe); ``tests/test_models.py`` checks the
outputs and gradients against ``lax.conv_general_dilated``.

Which formulation runs is chosen when a model is traced: ``JAXPFL_CONV=auto`` (default) uses
``im2col`` on the CPU backend and XLA's convolution elsewhere (cuDNN on a GPU); ``xla`` or
``im2col`` force one. The variable is read at trace time, so set it before the first call.
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


def conv2d_im2col(x: jax.Array, kernel: jax.Array, pads: Sequence[tuple[int, int]]) -> jax.Array:
    """Stride-1 2-D convolution of ``x [B, H, W, Cin]`` with ``kernel [kh, kw, Cin, Cout]``.

    ``y[b, i, j, o] = Σ_{p, q, c} x_pad[b, i+p, j+q, c] · kernel[p, q, c, o]`` — the k·k shifted
    views of ``x`` stacked on a patch axis, contracted with the kernel in one ``einsum``.
    """
    kh, kw, cin, cout = kernel.shape
    if any(lo or hi for lo, hi in pads):
        x = jnp.pad(x, ((0, 0), *pads, (0, 0)))
    h, w = x.shape[1] - kh + 1, x.shape[2] - kw + 1
    cols = jnp.stack([x[:, p : p + h, q : q + w, :] for p in range(kh) for q in range(kw)], axis=3)
    return jnp.einsum("bhwpc,pco->bhwo", cols, kernel.reshape(kh * kw, cin, cout))


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
    """Not differentiated (evaluation): XLA's convolution, 2.5–3x faster than ``im2col`` for a
    forward pass on XLA:CPU, even inside ``lax.map``. Differentiated (training): ``im2col``
    forward and its VJP (XLA:CPU's gradient convolutions are the slow ones)."""
    return lax.conv_general_dilated(x, kernel, (1, 1), list(pads), dimension_numbers=_NHWC)


def _conv_cpu_fwd(x, kernel, pads):
    return conv2d_im2col(x, kernel, pads), (x, kernel)


def _conv_cpu_bwd(pads, res, g):
    x, kernel = res
    _, vjp = jax.vjp(lambda a, b: conv2d_im2col(a, b, pads), x, kernel)
    return vjp(g)


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


def max_pool_2x2(x: jax.Array) -> jax.Array:
    """2×2 max pool, stride 2, floor (PyTorch ``MaxPool2d(2)``) on ``[..., H, W, C]``.

    A reshape and a max over the two window axes: the same values as ``lax.reduce_window``, and
    faster on every backend we measured. On exact ties inside a window the gradient is shared
    among the tied entries (PyTorch routes it to the first); after a ReLU the only ties in
    practice are all-zero windows, whose gradient the ReLU zeroes anyway.
    """
    h, w = x.shape[-3] // 2 * 2, x.shape[-2] // 2 * 2
    x = x[..., :h, :w, :]
    shape = x.shape[:-3] + (h // 2, 2, w // 2, 2, x.shape[-1])
    return x.reshape(shape).max(axis=(-4, -2))
