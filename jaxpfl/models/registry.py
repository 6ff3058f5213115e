"""Model registry: ``get_model(name, ...)`` turns a Flax module of the zoo into a ``Model``."""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxpfl.errors import ConfigError
from jaxpfl.models import zoo
from jaxpfl.models.base import Model, Params, count_params, leaf_at
from jaxpfl.models.initializers import INITS, draw_params

MODELS: dict[str, type[nn.Module]] = {
    "cnn": zoo.FedAvgCNN,
    "emnist_cnn": zoo.EmnistCNN,
    "emnist_cnn_tff": zoo.ConvDropoutCNN,
    "mlp_2nn": zoo.McMahan2NN,
    "mcmahan_cnn": zoo.McMahanCNN,
    "sj_mlp": zoo.SJMLP,
    "sj_cnn": zoo.SJCNN,
    "perfedavg_mlp": zoo.PerFedAvgMLP,
    "fedora_mlp": zoo.FedoraMLP,
    "lenet": zoo.LeNet,
}

# Fields set by get_model's own arguments, not by **kwargs.
_COMMON_FIELDS = ("num_classes", "normalize")

FloatOrSeq = float | Sequence[float]


def _options(cls: type[nn.Module]) -> list[str]:
    """Module-specific keyword options of ``cls`` (dropout rates, ``elu_on_logits``, ...)."""
    skip = {"parent", "name", *_COMMON_FIELDS}
    return [f.name for f in dataclasses.fields(cls) if f.name not in skip]


def _channels(value: FloatOrSeq, channels: int, what: str) -> tuple[float, ...]:
    values = (value,) if isinstance(value, int | float) else tuple(value)
    if len(values) not in (1, channels):
        raise ConfigError(f"normalize {what} has {len(values)} values; expected 1 or {channels}")
    return tuple(float(v) for v in values)


def _resolve_normalize(
    cls: type[nn.Module], normalize: tuple[FloatOrSeq, FloatOrSeq] | None, channels: int
) -> zoo.Normalize:
    if normalize is None:
        # colour inputs: PFLlib's 0.5/0.5 per channel, except for models that read raw [0, 1]
        return zoo.HALF if channels == 3 and cls.normalize != zoo.RAW else cls.normalize
    mean, std = normalize
    std_t = _channels(std, channels, "std")
    if any(s <= 0.0 for s in std_t):
        raise ConfigError(f"normalize std must be positive, got {std_t}")
    return _channels(mean, channels, "mean"), std_t


def get_model(
    name: str,
    input_shape: Sequence[int] = (28, 28, 1),
    num_classes: int = 10,
    *,
    init: str | None = None,
    normalize: tuple[FloatOrSeq, FloatOrSeq] | None = None,
    **kwargs: float | bool,
) -> Model:
    """Build the registered model ``name`` as a ``Model`` (pure ``init``/``apply`` functions).

    Args:
      name: a key of ``MODELS``.
      input_shape: ``(H, W, C)`` of one example.
      num_classes: number of logits C.
      init: ``'torch'``, ``'flax'`` or ``'kt_per'``; ``None`` takes the model's default
        (``'kt_per'`` for ``perfedavg_mlp``, ``'torch'`` for every other model;
        docs/algorithms.md §8).
      normalize: ``(mean, std)``, scalars or per-channel sequences, applied after scaling pixels to
        [0, 1]; ``None`` takes the model's default ((0.5, 0.5) for 3-channel inputs, except for
        models on raw [0, 1] pixels).
      **kwargs: model options, e.g. ``dropout=0.6`` (``emnist_cnn``), ``elu_on_logits=False``
        (``perfedavg_mlp``).

    Returns:
      A ``Model`` whose ``apply(params, x, train=False, key=None)`` maps a pixel batch
      ``[B, H, W, C]`` (uint8) to logits ``[B, num_classes]``; ``train`` must be a Python bool.
      Equal arguments return the same (immutable) ``Model``, so compiled code is reused.

    >>> model = get_model("cnn")
    >>> params = model.init(jax.random.key(0), jnp.zeros((2, 28, 28, 1), jnp.uint8))
    >>> count_params(params)
    582026
    """
    if name not in MODELS:
        raise ConfigError(f"unknown model {name!r}; choose one of: {', '.join(MODELS)}")
    cls = MODELS[name]
    input_shape = tuple(int(d) for d in input_shape)
    if len(input_shape) != 3 or min(input_shape) < 1:
        raise ConfigError(f"input_shape must be (H, W, C) with positive sizes, got {input_shape}")
    if int(num_classes) < 1:
        raise ConfigError(f"num_classes must be >= 1, got {num_classes}")
    init = getattr(cls, "DEFAULT_INIT", "torch") if init is None else init
    if init not in INITS:
        raise ConfigError(f"unknown init {init!r}; choose one of: {', '.join(INITS)}")
    unknown = sorted(set(kwargs) - set(_options(cls)))
    if unknown:
        valid = ", ".join(_options(cls)) or "none"
        raise ConfigError(f"model {name!r} got unknown option(s) {unknown}; valid options: {valid}")
    normalize = _resolve_normalize(cls, normalize, input_shape[-1])
    return _build(
        name, input_shape, int(num_classes), init, normalize, tuple(sorted(kwargs.items()))
    )


def _check_input(name: str, input_shape: tuple[int, ...], x: jax.Array) -> None:
    if x.ndim < 3 or tuple(x.shape[-3:]) != input_shape:
        raise ConfigError(
            f"model {name!r} expects inputs [..., {', '.join(map(str, input_shape))}], "
            f"got shape {tuple(x.shape)}"
        )


@functools.cache
def _drawer(init: str, layout: tuple[tuple[tuple[str, ...], tuple[int, ...], Any], ...]) -> Any:
    """Jitted ``key -> params`` for a tensor layout ``((path, shape, dtype), ...)`` in forward
    order; shared by every model with that layout, so it compiles once."""
    shapes: dict = {}
    for path, shape, dtype in layout:
        node = shapes
        for name in path[:-1]:
            node = node.setdefault(name, {})
        node[path[-1]] = jax.ShapeDtypeStruct(shape, dtype)
    order = tuple(path for path, _, _ in layout)
    return jax.jit(lambda key: draw_params(init, key, shapes, order))


@functools.cache
def _build(
    name: str,
    input_shape: tuple[int, ...],
    num_classes: int,
    init: str,
    normalize: zoo.Normalize,
    options: tuple[tuple[str, float | bool], ...],
) -> Model:
    """The ``Model`` for validated arguments (cached: one set of jitted functions per config)."""
    cls = MODELS[name]
    module = cls(num_classes=num_classes, normalize=normalize, **dict(options))
    uses_dropout = any(float(getattr(module, f)) > 0.0 for f in cls.DROPOUT_FIELDS)
    param_order = tuple(("params", layer, p) for layer in cls.LAYERS for p in ("kernel", "bias"))
    shapes = jax.eval_shape(
        functools.partial(module.init, train=False),
        jax.random.key(0),
        jax.ShapeDtypeStruct((1, *input_shape), jnp.uint8),
    )
    paths = {tuple(k.key for k in p) for p, _ in jax.tree_util.tree_leaves_with_path(shapes)}
    assert paths == set(param_order), f"{name}: param_order {param_order} != {sorted(paths)}"

    # ``init`` is jitted (eager calls compile once). The forward passes are NOT: a nested jit
    # stays a call inside the engine's compiled step loop, where XLA:CPU then leaves the
    # weight-gradient convolutions in a non-canonical layout that runs ~9x slower (measured).
    if init == "flax":

        @jax.jit
        def draw(key: jax.Array) -> Params:
            return module.init(key, jnp.zeros((1, *input_shape), jnp.uint8), train=False)

    else:
        layout = tuple((p, leaf_at(shapes, p).shape, leaf_at(shapes, p).dtype) for p in param_order)
        draw = _drawer(init, layout)

    def forward(params: Params, x: jax.Array) -> jax.Array:
        return module.apply(params, x, train=False)

    def forward_train(params: Params, x: jax.Array, key: jax.Array) -> jax.Array:
        return module.apply(params, x, train=True, rngs={"dropout": key})

    def init_fn(key: jax.Array, x: jax.Array) -> Params:
        """Parameters ``{'params': ...}``; ``x`` [B, H, W, C] only fixes the shapes."""
        _check_input(name, input_shape, x)
        return draw(key)

    def apply_fn(
        params: Params, x: jax.Array, train: bool = False, key: jax.Array | None = None
    ) -> jax.Array:
        """Logits [B, C]; dropout is active only when ``train`` is True (needs ``key``)."""
        _check_input(name, input_shape, x)
        if train and uses_dropout:
            if key is None:
                raise ConfigError(
                    f"model {name!r} uses dropout: apply(..., train=True) needs a dropout key"
                )
            return forward_train(params, x, key)
        return forward(params, x)

    layers = tuple(cls.LAYERS)

    def _layer(layer: str) -> str:
        if layer not in layers:
            raise ConfigError(f"model {name!r} has no layer {layer!r}; layers: {layers}")
        return layer

    def features_fn(params: Params, x: jax.Array, layer: str) -> jax.Array:
        """The input of ``layer`` for batch ``x`` (train=False), captured on its way in."""
        layer, seen = _layer(layer), []

        def capture(next_fun, args, kwargs, context):
            if context.module.name == layer and context.method_name == "__call__" and not seen:
                seen.append(args[0])
            return next_fun(*args, **kwargs)

        _check_input(name, input_shape, x)
        with nn.intercept_methods(capture):
            forward(params, x)
        return seen[0]

    def head_fn(params: Params, h: jax.Array, layer: str, train: bool = False,
                key: jax.Array | None = None) -> jax.Array:
        """Logits of the model from ``layer`` on, with ``h`` as that layer's input."""
        layer = _layer(layer)

        def substitute(next_fun, args, kwargs, context):
            if context.module.name == layer and context.method_name == "__call__":
                return next_fun(h, *args[1:], **kwargs)
            return next_fun(*args, **kwargs)

        dummy = jnp.zeros((h.shape[0], *input_shape), jnp.uint8)  # feeds the unused layers
        with nn.intercept_methods(substitute):
            return apply_fn(params, dummy, train, key)

    return Model(
        name=name,
        init=init_fn,
        apply=apply_fn,
        param_order=param_order,
        num_classes=num_classes,
        input_shape=input_shape,
        uses_dropout=uses_dropout,
        features=features_fn,
        head=head_fn,
    )


__all__ = ["MODELS", "count_params", "get_model"]
