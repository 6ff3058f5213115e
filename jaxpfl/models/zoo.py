"""Flax (linen) modules of the reference models (docs/algorithms.md §8). Layout is NHWC.

Every module takes the raw pixel batch ``x: [..., H, W, C]`` on the 0..255 scale (uint8 in
practice), scales it to [0, 1] and applies the model's normalisation ``(x − mean) / std`` itself,
so stored data stays uint8. Layers are named explicitly (``conv1``, ``conv2``, ``fc1``, …); the
last dense layer of every model is named ``fc`` (the FedALA head). ``LAYERS`` lists the layer
names in forward order (each layer holds a ``kernel`` and a ``bias``); ``DROPOUT_FIELDS`` names
the dropout-rate fields. ``__call__(x, train)`` applies dropout only when ``train`` is True (the
caller then passes a ``'dropout'`` rng).

The modules describe architecture only and carry Flax's default initialisers; ``get_model``
draws the parameters with the requested scheme (``jaxpfl.models.initializers``), by default
``'torch'`` or the module's ``DEFAULT_INIT``.

Where a PyTorch reference flattens a conv block, it orders features (C, H, W); these modules
flatten NHWC, i.e. (H, W, C) (see §1.2 for weight import).
"""

from __future__ import annotations

from typing import ClassVar

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxpfl.models.conv import conv_general_dilated, max_pool_2x2

Normalize = tuple[tuple[float, ...], tuple[float, ...]]

RAW: Normalize = ((0.0,), (1.0,))
HALF: Normalize = ((0.5,), (0.5,))
MNIST: Normalize = ((0.1307,), (0.3081,))
MNIST_KT_PER: Normalize = ((0.1307,), (0.3015,))


# ----------------------------------------------------------------------------------------------
# Layer helpers


def _dense(x: jax.Array, features: int, name: str) -> jax.Array:
    return nn.Dense(features, name=name)(x)


def _conv(x: jax.Array, features: int, size: int, padding: str, name: str) -> jax.Array:
    conv = nn.Conv(features, (size, size), padding=padding, name=name,
                   conv_general_dilated=conv_general_dilated)
    return conv(x)


def _pool(x: jax.Array) -> jax.Array:
    """2×2 max pool, stride 2, floor (PyTorch ``MaxPool2d(2)``)."""
    return max_pool_2x2(x)


def _flatten(x: jax.Array) -> jax.Array:
    """Flatten the trailing (H, W, C) axes."""
    return x.reshape(x.shape[:-3] + (-1,))


def preprocess(x: jax.Array, normalize: Normalize) -> jax.Array:
    """Pixels on the 0..255 scale -> float32 ``(x/255 − mean) / std`` (per channel)."""
    x = x.astype(jnp.float32) / 255.0
    mean, std = normalize
    if all(m == 0.0 for m in mean) and all(s == 1.0 for s in std):
        return x
    shape = (1,) * (x.ndim - 1) + (-1,)
    mean_arr = jnp.asarray(mean, jnp.float32).reshape(shape)
    std_arr = jnp.asarray(std, jnp.float32).reshape(shape)
    return (x - mean_arr) / std_arr


# ----------------------------------------------------------------------------------------------
# Models


class FedAvgCNN(nn.Module):
    """PFLlib/FedALA "CNN" (§8.1): 582,026 params on 28×28×1 (C=10), 878,538 on 32×32×3."""

    LAYERS: ClassVar[tuple[str, ...]] = ("conv1", "conv2", "fc1", "fc")
    DROPOUT_FIELDS: ClassVar[tuple[str, ...]] = ()

    num_classes: int = 10
    normalize: Normalize = HALF

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        del train  # unused: no dropout
        x = preprocess(x, self.normalize)
        x = _pool(nn.relu(_conv(x, 32, 5, "VALID", "conv1")))
        x = _pool(nn.relu(_conv(x, 64, 5, "VALID", "conv2")))
        x = nn.relu(_dense(_flatten(x), 512, "fc1"))
        return _dense(x, self.num_classes, "fc")


class EmnistCNN(nn.Module):
    """KT-PFA EMNIST CNN (§8.2): two SAME 5×5 convs, dense 1024, dropout 0.6; 3,327,934 (C=62)."""

    LAYERS: ClassVar[tuple[str, ...]] = ("conv1", "conv2", "fc1", "fc")
    DROPOUT_FIELDS: ClassVar[tuple[str, ...]] = ("dropout",)

    num_classes: int = 62
    normalize: Normalize = RAW
    dropout: float = 0.6

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        x = preprocess(x, self.normalize)
        x = _pool(nn.relu(_conv(x, 32, 5, "SAME", "conv1")))
        x = _pool(nn.relu(_conv(x, 64, 5, "SAME", "conv2")))
        x = nn.relu(_dense(_flatten(x), 1024, "fc1"))
        x = nn.Dropout(self.dropout, deterministic=not train)(x)
        return _dense(x, self.num_classes, "fc")


class ConvDropoutCNN(nn.Module):
    """TFF-p13n / fedjax EMNIST CNN (§8.2): 1,206,590 params (C=62), 1,199,882 (C=10)."""

    LAYERS: ClassVar[tuple[str, ...]] = ("conv1", "conv2", "fc1", "fc")
    DROPOUT_FIELDS: ClassVar[tuple[str, ...]] = ("dropout_conv", "dropout_dense")

    num_classes: int = 62
    normalize: Normalize = RAW
    dropout_conv: float = 0.25
    dropout_dense: float = 0.5

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        x = preprocess(x, self.normalize)
        x = nn.relu(_conv(x, 32, 3, "VALID", "conv1"))
        x = _pool(nn.relu(_conv(x, 64, 3, "VALID", "conv2")))
        x = nn.Dropout(self.dropout_conv, deterministic=not train)(x)
        x = nn.relu(_dense(_flatten(x), 128, "fc1"))
        x = nn.Dropout(self.dropout_dense, deterministic=not train)(x)
        return _dense(x, self.num_classes, "fc")


class McMahan2NN(nn.Module):
    """McMahan et al. 2NN (§8.3): 784 → 200 → 200 → C, ReLU; 199,210 params."""

    LAYERS: ClassVar[tuple[str, ...]] = ("fc1", "fc2", "fc")
    DROPOUT_FIELDS: ClassVar[tuple[str, ...]] = ()

    num_classes: int = 10
    normalize: Normalize = MNIST

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        del train  # unused: no dropout
        x = _flatten(preprocess(x, self.normalize))
        x = nn.relu(_dense(x, 200, "fc1"))
        x = nn.relu(_dense(x, 200, "fc2"))
        return _dense(x, self.num_classes, "fc")


class McMahanCNN(nn.Module):
    """McMahan et al. CNN (§8.3): SAME 5×5 convs 32, 64, dense 512; 1,663,370 params."""

    LAYERS: ClassVar[tuple[str, ...]] = ("conv1", "conv2", "fc1", "fc")
    DROPOUT_FIELDS: ClassVar[tuple[str, ...]] = ()

    num_classes: int = 10
    normalize: Normalize = MNIST

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        del train  # unused: no dropout
        x = preprocess(x, self.normalize)
        x = _pool(nn.relu(_conv(x, 32, 5, "SAME", "conv1")))
        x = _pool(nn.relu(_conv(x, 64, 5, "SAME", "conv2")))
        x = nn.relu(_dense(_flatten(x), 512, "fc1"))
        return _dense(x, self.num_classes, "fc")


class SJMLP(nn.Module):
    """SJ ``MLP`` (§8.3): 784 → dense 200 → dropout 0.5 → ReLU → dense C; 159,010 params."""

    LAYERS: ClassVar[tuple[str, ...]] = ("fc1", "fc")
    DROPOUT_FIELDS: ClassVar[tuple[str, ...]] = ("dropout",)

    num_classes: int = 10
    normalize: Normalize = MNIST
    dropout: float = 0.5

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        x = _flatten(preprocess(x, self.normalize))
        x = _dense(x, 200, "fc1")
        x = nn.relu(nn.Dropout(self.dropout, deterministic=not train)(x))
        return _dense(x, self.num_classes, "fc")


class SJCNN(nn.Module):
    """SJ ``CNNMnist`` (§8.3): convs 10, 20 (VALID 5×5), dropout2d, dense 50; 21,840 params."""

    LAYERS: ClassVar[tuple[str, ...]] = ("conv1", "conv2", "fc1", "fc")
    DROPOUT_FIELDS: ClassVar[tuple[str, ...]] = ("dropout",)

    num_classes: int = 10
    normalize: Normalize = MNIST
    dropout: float = 0.5

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        x = preprocess(x, self.normalize)
        x = nn.relu(_pool(_conv(x, 10, 5, "VALID", "conv1")))
        x = _conv(x, 20, 5, "VALID", "conv2")
        # Dropout2d: one Bernoulli draw per (example, channel), shared over H and W.
        x = nn.Dropout(self.dropout, broadcast_dims=(-3, -2), deterministic=not train)(x)
        x = nn.relu(_pool(x))
        x = nn.relu(_dense(_flatten(x), 50, "fc1"))
        x = nn.Dropout(self.dropout, deterministic=not train)(x)
        return _dense(x, self.num_classes, "fc")


class PerFedAvgMLP(nn.Module):
    """KT-Per MLP (§8.4): d → 80 → 60 → C with ELU(α=0.2), also on the logits by default.

    68,270 params on MNIST, 251,310 on CIFAR-10 (d = 3,072).
    """

    LAYERS: ClassVar[tuple[str, ...]] = ("fc1", "fc2", "fc")
    DROPOUT_FIELDS: ClassVar[tuple[str, ...]] = ()
    DEFAULT_INIT: ClassVar[str] = "kt_per"

    num_classes: int = 10
    normalize: Normalize = MNIST_KT_PER
    elu_on_logits: bool = True
    alpha: float = 0.2

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        del train  # unused: no dropout
        x = _flatten(preprocess(x, self.normalize))
        x = nn.elu(_dense(x, 80, "fc1"), self.alpha)
        x = nn.elu(_dense(x, 60, "fc2"), self.alpha)
        x = _dense(x, self.num_classes, "fc")
        return nn.elu(x, self.alpha) if self.elu_on_logits else x


class FedoraMLP(nn.Module):
    """FEDORA MLP (§8.5): 784 → 128 → 128 → C, ReLU, raw [0, 1] input; 118,282 params."""

    LAYERS: ClassVar[tuple[str, ...]] = ("fc1", "fc2", "fc")
    DROPOUT_FIELDS: ClassVar[tuple[str, ...]] = ()

    num_classes: int = 10
    normalize: Normalize = RAW

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        del train  # unused: no dropout
        x = _flatten(preprocess(x, self.normalize))
        x = nn.relu(_dense(x, 128, "fc1"))
        x = nn.relu(_dense(x, 128, "fc2"))
        return _dense(x, self.num_classes, "fc")


class LeNet(nn.Module):
    """PyTorch-tutorial LeNet / SJ ``CNNCifar`` (§8.6): 62,006 params on 32×32×3."""

    LAYERS: ClassVar[tuple[str, ...]] = ("conv1", "conv2", "fc1", "fc2", "fc")
    DROPOUT_FIELDS: ClassVar[tuple[str, ...]] = ()

    num_classes: int = 10
    normalize: Normalize = HALF

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        del train  # unused: no dropout
        x = preprocess(x, self.normalize)
        x = _pool(nn.relu(_conv(x, 6, 5, "VALID", "conv1")))
        x = _pool(nn.relu(_conv(x, 16, 5, "VALID", "conv2")))
        x = nn.relu(_dense(_flatten(x), 120, "fc1"))
        x = nn.relu(_dense(x, 84, "fc2"))
        return _dense(x, self.num_classes, "fc")
