"""Model zoo (docs/algorithms.md §8): parameter counts, tensor order, shapes, dropout, init,
inputs."""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxpfl.models import MODELS, count_params, get_model, leaf_at, ordered_leaves
from jaxpfl.models.initializers import fan_in

MNIST = (28, 28, 1)
CIFAR = (32, 32, 3)

# (name, input_shape, num_classes, params): every count is the sum of the per-layer counts
# written in docs/algorithms.md §8.
COUNTS = [
    ("cnn", MNIST, 10, 832 + 51_264 + 524_800 + 5_130),  # 582,026
    ("cnn", CIFAR, 10, 2_432 + 51_264 + 819_712 + 5_130),  # 878,538
    ("cnn", MNIST, 62, 608_702),
    ("emnist_cnn", MNIST, 62, 832 + 51_264 + 3_212_288 + 63_550),  # 3,327,934
    ("emnist_cnn_tff", MNIST, 62, 320 + 18_496 + 1_179_776 + 7_998),  # 1,206,590
    ("emnist_cnn_tff", MNIST, 10, 1_199_882),
    ("mlp_2nn", MNIST, 10, 199_210),
    ("mcmahan_cnn", MNIST, 10, 1_663_370),
    ("sj_mlp", MNIST, 10, 159_010),
    ("sj_cnn", MNIST, 10, 21_840),
    ("perfedavg_mlp", MNIST, 10, 68_270),
    ("perfedavg_mlp", CIFAR, 10, 251_310),
    ("fedora_mlp", MNIST, 10, 100_480 + 16_512 + 1_290),  # 118,282
    ("lenet", CIFAR, 10, 456 + 2_416 + 48_120 + 10_164 + 850),  # 62,006
]

# One reference configuration per registered model (the one its paper uses).
CONFIGS = {
    "cnn": (MNIST, 10),
    "emnist_cnn": (MNIST, 62),
    "emnist_cnn_tff": (MNIST, 62),
    "mlp_2nn": (MNIST, 10),
    "mcmahan_cnn": (MNIST, 10),
    "sj_mlp": (MNIST, 10),
    "sj_cnn": (MNIST, 10),
    "perfedavg_mlp": (MNIST, 10),
    "fedora_mlp": (MNIST, 10),
    "lenet": (CIFAR, 10),
}
DROPOUT_MODELS = {"emnist_cnn", "emnist_cnn_tff", "sj_mlp", "sj_cnn"}


@pytest.fixture(autouse=True)
def _strict_numpy():
    """Implicit rank broadcasting and dtype promotion are errors (they hide client-axis bugs)."""
    with jax.numpy_rank_promotion("raise"), jax.numpy_dtype_promotion("strict"):
        yield


def images(n: int, shape: tuple[int, ...], seed: int = 0) -> jax.Array:
    return jnp.asarray(np.random.default_rng(seed).integers(0, 256, (n, *shape), np.uint8))


@functools.cache
def built(name: str, init: str | None = None):
    """(model, params) of ``name`` in its reference configuration; built once per session."""
    shape, classes = CONFIGS[name]
    model = get_model(name, shape, classes, init=init)
    return model, model.init(jax.random.key(0), images(2, shape))


def abstract_params(model):
    x = jax.ShapeDtypeStruct((1, *model.input_shape), jnp.uint8)
    return jax.eval_shape(model.init, jax.random.key(0), x)


def test_registry_is_covered():
    assert set(CONFIGS) == set(MODELS)


@pytest.mark.parametrize(("name", "shape", "classes", "expected"), COUNTS)
def test_param_count(name, shape, classes, expected):
    model = get_model(name, shape, classes)
    assert (model.name, model.input_shape, model.num_classes) == (name, shape, classes)
    assert count_params(abstract_params(model)) == expected


@pytest.mark.parametrize("name", sorted(MODELS))
def test_param_count_of_real_init(name):
    model, params = built(name)
    assert count_params(params) == count_params(abstract_params(model))
    assert all(leaf.dtype == jnp.float32 for leaf in jax.tree.leaves(params))


@pytest.mark.parametrize(("name", "shape", "classes", "expected"), COUNTS)
def test_param_order(name, shape, classes, expected):
    del expected  # unused
    model = get_model(name, shape, classes)
    params = abstract_params(model)
    order = model.param_order
    leaf_paths = [tuple(k.key for k in p) for p, _ in jax.tree_util.tree_leaves_with_path(params)]
    assert len(order) == len(leaf_paths) == len(set(order))
    assert set(order) == set(leaf_paths)
    assert [p[-1] for p in order] == ["kernel", "bias"] * (len(order) // 2)
    assert order[-1] == ("params", "fc", "bias")
    shapes = [leaf.shape for leaf in ordered_leaves(params, order)]
    kernels, biases = shapes[0::2], shapes[1::2]
    # First kernel consumes the image: a conv sees C channels, a dense layer all H·W·C pixels.
    first = kernels[0]
    assert first[-2] == shape[-1] if len(first) == 4 else first[0] == math.prod(shape)
    assert biases[-1] == (classes,)
    for kernel, bias in zip(kernels, biases):
        assert bias == (kernel[-1],)
    # Forward order: each layer's input width follows from the previous layer's outputs.
    for prev, kernel in zip(kernels, kernels[1:]):
        if len(kernel) == 4 or len(prev) == 2:
            assert kernel[-2] == prev[-1]
        else:  # first dense after the conv block: flattened (H', W', C_out)
            assert kernel[0] % prev[-1] == 0


def test_fedavg_cnn_names_and_head():
    model = get_model("cnn")
    assert model.param_order == tuple(
        ("params", layer, p)
        for layer in ("conv1", "conv2", "fc1", "fc")
        for p in ("kernel", "bias")
    )
    params = abstract_params(model)
    assert leaf_at(params, ("params", "fc", "kernel")).shape == (512, 10)
    assert leaf_at(params, ("params", "fc1", "kernel")).shape == (1024, 512)


@pytest.mark.parametrize("name", sorted(MODELS))
def test_output_shape_and_eval_determinism(name):
    model, params = built(name)
    x = images(3, model.input_shape)
    logits = model.apply(params, x)
    assert logits.shape == (3, model.num_classes) and logits.dtype == jnp.float32
    assert bool(jnp.all(jnp.isfinite(logits)))
    np.testing.assert_array_equal(logits, model.apply(params, x, train=False))
    # A key without train=True changes nothing.
    np.testing.assert_array_equal(logits, model.apply(params, x, False, jax.random.key(1)))


@pytest.mark.parametrize("name", sorted(MODELS))
def test_dropout_only_in_training_with_key(name):
    model, params = built(name)
    x = images(3, model.input_shape, seed=1)
    eval_logits = model.apply(params, x)
    if name not in DROPOUT_MODELS:
        np.testing.assert_array_equal(model.apply(params, x, train=True), eval_logits)
        return
    with pytest.raises(ValueError, match="dropout key"):
        model.apply(params, x, train=True)
    a = model.apply(params, x, train=True, key=jax.random.key(1))
    b = model.apply(params, x, train=True, key=jax.random.key(1))
    c = model.apply(params, x, train=True, key=jax.random.key(2))
    np.testing.assert_array_equal(a, b)
    assert not np.allclose(a, eval_logits)
    assert not np.allclose(a, c)


@pytest.mark.parametrize("batch", [1, 5])
def test_any_batch_size(batch):
    model, params = built("sj_cnn")
    x = images(5, MNIST, seed=2)
    logits = model.apply(params, x)
    # Each example is processed independently of the others.
    np.testing.assert_allclose(model.apply(params, x[:batch]), logits[:batch], rtol=1e-5, atol=1e-5)
    one = model.apply(params, x[0])  # a single unbatched example [H, W, C]
    np.testing.assert_allclose(one, logits[0], rtol=1e-5, atol=1e-5)


def test_dropout_rate_zero_needs_no_key():
    model = get_model("sj_mlp", dropout=0.0)
    params = model.init(jax.random.key(0), images(1, MNIST))
    x = images(3, MNIST)
    np.testing.assert_array_equal(model.apply(params, x, train=True), model.apply(params, x))


def _check_torch_bounds(model, params):
    for path in model.param_order:
        value = np.asarray(leaf_at(params, path))
        kernel = leaf_at(params, (*path[:-1], "kernel"))
        bound = 1.0 / math.sqrt(fan_in(kernel.shape))
        assert np.abs(value).max() <= bound * (1 + 1e-6), path
        if value.size >= 1000:  # U(-b, b): the extreme is near b, the std near b/√3
            assert np.abs(value).max() >= 0.99 * bound, path
            assert abs(value.std() / (bound / math.sqrt(3)) - 1) < 0.1, path


@pytest.mark.parametrize("name", sorted(set(MODELS) - {"perfedavg_mlp"}))
def test_torch_init_bounds(name):
    _check_torch_bounds(*built(name))


def test_torch_init_bounds_perfedavg_mlp():
    _check_torch_bounds(*built("perfedavg_mlp", init="torch"))


def test_torch_init_fan_in():
    _, params = built("cnn")
    # conv1: 1·5·5 = 25 inputs per unit; fc1: 4·4·64 = 1024.
    assert fan_in(leaf_at(params, ("params", "conv1", "kernel")).shape) == 25
    assert fan_in(leaf_at(params, ("params", "fc1", "kernel")).shape) == 1024


def test_kt_per_init_is_perfedavg_default():
    model, params = built("perfedavg_mlp")
    kernel = np.asarray(leaf_at(params, ("params", "fc1", "kernel")))
    assert abs(kernel.std() / math.sqrt(2 / 784) - 1) < 0.05
    assert abs(kernel.mean()) < 0.01
    biases = np.concatenate([np.asarray(params["params"][n]["bias"]) for n in ("fc1", "fc2", "fc")])
    assert 0.75 < biases.std() < 1.25  # N(0, 1), 150 draws


def test_flax_init():
    model = get_model("sj_mlp", init="flax")
    params = model.init(jax.random.key(0), images(1, MNIST))
    assert count_params(params) == 159_010
    for layer in ("fc1", "fc"):
        assert not np.any(np.asarray(params["params"][layer]["bias"]))
    kernel = np.asarray(params["params"]["fc1"]["kernel"])
    assert abs(kernel.std() / math.sqrt(1 / 784) - 1) < 0.1  # LeCun normal


def test_init_depends_on_key_only():
    model = get_model("mlp_2nn")
    a = model.init(jax.random.key(3), images(1, MNIST))
    b = model.init(jax.random.key(3), images(5, MNIST, seed=7))
    c = model.init(jax.random.key(4), images(1, MNIST))
    jax.tree.map(np.testing.assert_array_equal, a, b)
    assert not np.allclose(a["params"]["fc"]["kernel"], c["params"]["fc"]["kernel"])


@pytest.mark.parametrize(("name", "train"), [("sj_cnn", False), ("sj_mlp", True)])
def test_vmap_and_jit_match_a_loop(name, train):
    model = get_model(name)
    keys = jax.random.split(jax.random.key(0), 3)
    drop_keys = jax.random.split(jax.random.key(9), 3) if train else [None] * 3
    xs = jnp.stack([images(3, MNIST, seed=s) for s in range(3)])
    stacked = jax.jit(jax.vmap(model.init))(keys, xs)
    assert all(leaf.shape[0] == 3 for leaf in jax.tree.leaves(stacked))
    forward = functools.partial(model.apply, train=train)
    out = jax.jit(jax.vmap(forward))(stacked, xs, key=drop_keys if train else None)
    for k in range(3):
        params = model.init(keys[k], xs[k])
        expect = model.apply(params, xs[k], train=train, key=drop_keys[k])
        np.testing.assert_allclose(out[k], expect, rtol=1e-5, atol=1e-5)


def test_get_model_is_cached():
    assert get_model("cnn") is get_model("cnn", (28, 28, 1), 10, init="torch")
    assert get_model("cnn") is not get_model("cnn", init="flax")


def test_gradients_flow_to_every_tensor():
    model, params = built("fedora_mlp")
    x, y = images(3, MNIST), jnp.array([0, 1, 2])

    def loss(p):
        logits = model.apply(p, x)
        return -jnp.mean(jnp.take_along_axis(jax.nn.log_softmax(logits), y[:, None], axis=1))

    grads = jax.grad(loss)(params)
    for path in model.param_order:
        assert float(jnp.abs(leaf_at(grads, path)).sum()) > 0, path


# --- Independent NumPy forward passes (normalisation, layer order, flatten order) -------------


def np_conv(x: np.ndarray, kernel: np.ndarray, bias: np.ndarray, pad: int) -> np.ndarray:
    x = np.pad(x, ((0, 0), (pad, pad), (pad, pad), (0, 0)))
    kh, kw = kernel.shape[:2]
    windows = np.lib.stride_tricks.sliding_window_view(x, (kh, kw), axis=(1, 2))  # B,H,W,C,kh,kw
    return np.einsum("bhwcij,ijco->bhwo", windows, kernel) + bias


def np_pool(x: np.ndarray) -> np.ndarray:
    b, h, w, c = x.shape
    x = x[:, : h // 2 * 2, : w // 2 * 2]
    return x.reshape(b, h // 2, 2, w // 2, 2, c).max(axis=(2, 4))


def np_dense(x: np.ndarray, p: dict) -> np.ndarray:
    return x @ np.asarray(p["kernel"], np.float64) + np.asarray(p["bias"], np.float64)


def relu(x: np.ndarray) -> np.ndarray:
    return np.maximum(x, 0.0)


def np_params(params) -> dict:
    return jax.tree.map(lambda a: np.asarray(a, np.float64), params)["params"]


@pytest.mark.parametrize("shape", [MNIST, CIFAR])
def test_fedavg_cnn_matches_numpy(shape):
    model = get_model("cnn", shape)
    params = model.init(jax.random.key(5), images(1, shape))
    p = np_params(params)
    x = images(3, shape, seed=3)
    h = (np.asarray(x, np.float64) / 255 - 0.5) / 0.5
    h = np_pool(relu(np_conv(h, p["conv1"]["kernel"], p["conv1"]["bias"], 0)))
    h = np_pool(relu(np_conv(h, p["conv2"]["kernel"], p["conv2"]["bias"], 0)))
    h = relu(np_dense(h.reshape(3, -1), p["fc1"]))  # flatten in (H, W, C) order
    expect = np_dense(h, p["fc"])
    np.testing.assert_allclose(model.apply(params, x), expect, rtol=1e-4, atol=1e-4)


def test_mcmahan_cnn_same_padding_matches_numpy():
    model = get_model("mcmahan_cnn")
    params = model.init(jax.random.key(6), images(1, MNIST))
    p = np_params(params)
    x = images(3, MNIST, seed=4)
    h = (np.asarray(x, np.float64) / 255 - 0.1307) / 0.3081
    h = np_pool(relu(np_conv(h, p["conv1"]["kernel"], p["conv1"]["bias"], 2)))
    h = np_pool(relu(np_conv(h, p["conv2"]["kernel"], p["conv2"]["bias"], 2)))
    expect = np_dense(relu(np_dense(h.reshape(3, -1), p["fc1"])), p["fc"])
    np.testing.assert_allclose(model.apply(params, x), expect, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("elu_on_logits", [True, False])
def test_perfedavg_mlp_matches_numpy(elu_on_logits):
    model = get_model("perfedavg_mlp", elu_on_logits=elu_on_logits)
    params = model.init(jax.random.key(7), images(1, MNIST))
    p = np_params(params)
    x = images(3, MNIST, seed=5)

    def elu(z):
        return np.where(z >= 0, z, 0.2 * np.expm1(np.minimum(z, 0)))

    h = ((np.asarray(x, np.float64) / 255 - 0.1307) / 0.3015).reshape(3, -1)
    h = elu(np_dense(elu(np_dense(h, p["fc1"])), p["fc2"]))
    expect = np_dense(h, p["fc"])
    expect = elu(expect) if elu_on_logits else expect
    np.testing.assert_allclose(model.apply(params, x), expect, rtol=1e-4, atol=1e-4)
    if elu_on_logits:
        assert float(model.apply(params, x).min()) >= -0.2


def test_fedora_mlp_raw_input_and_normalize_override():
    model = get_model("fedora_mlp")
    params = model.init(jax.random.key(8), images(1, MNIST))
    p = np_params(params)
    x = images(3, MNIST, seed=6)
    h = (np.asarray(x, np.float64) / 255).reshape(3, -1)
    expect = np_dense(relu(np_dense(relu(np_dense(h, p["fc1"])), p["fc2"])), p["fc"])
    np.testing.assert_allclose(model.apply(params, x), expect, rtol=1e-4, atol=1e-4)
    # normalize=(mean, std) overrides the default; same params, shifted inputs.
    shifted = get_model("fedora_mlp", normalize=(0.5, 0.25))
    h2 = ((np.asarray(x, np.float64) / 255 - 0.5) / 0.25).reshape(3, -1)
    expect2 = np_dense(relu(np_dense(relu(np_dense(h2, p["fc1"])), p["fc2"])), p["fc"])
    np.testing.assert_allclose(shifted.apply(params, x), expect2, rtol=1e-4, atol=1e-4)


def test_per_channel_normalize():
    mean, std = (0.4914, 0.4822, 0.4465), (0.247, 0.243, 0.261)
    model = get_model("perfedavg_mlp", CIFAR, normalize=(mean, std), elu_on_logits=False)
    params = model.init(jax.random.key(9), images(1, CIFAR))
    p = np_params(params)
    x = images(3, CIFAR, seed=8)
    h = ((np.asarray(x, np.float64) / 255 - np.array(mean)) / np.array(std)).reshape(3, -1)

    def elu(z):
        return np.where(z >= 0, z, 0.2 * np.expm1(np.minimum(z, 0)))

    expect = np_dense(elu(np_dense(elu(np_dense(h, p["fc1"])), p["fc2"])), p["fc"])
    np.testing.assert_allclose(model.apply(params, x), expect, rtol=1e-4, atol=1e-4)
    # Default for 3-channel inputs: (x - 0.5) / 0.5 on every channel.
    default = get_model("perfedavg_mlp", CIFAR, elu_on_logits=False)
    half = get_model("perfedavg_mlp", CIFAR, elu_on_logits=False, normalize=(0.5, 0.5))
    np.testing.assert_array_equal(default.apply(params, x), half.apply(params, x))


# --- Errors -------------------------------------------------------------------------------------


def test_unknown_model_name():
    with pytest.raises(ValueError, match="unknown model 'resnet999'; choose one of: ") as info:
        get_model("resnet999")
    message = str(info.value)
    assert "\n" not in message
    assert all(name in message for name in MODELS)


def test_bad_arguments():
    with pytest.raises(ValueError, match="unknown init 'xavier'"):
        get_model("cnn", init="xavier")
    with pytest.raises(ValueError, match="unknown option"):
        get_model("cnn", dropout=0.5)
    with pytest.raises(ValueError, match="expected 1 or 3"):
        get_model("cnn", CIFAR, normalize=((0.1, 0.2), 0.5))
    model = get_model("mlp_2nn")
    with pytest.raises(ValueError, match="expects inputs"):
        model.init(jax.random.key(0), images(1, CIFAR))


# ----------------------------------------------------------------------------------------------
# The CPU convolution formulation (jaxpfl/models/conv.py) against XLA's convolution


def _numpy_conv(x: np.ndarray, k: np.ndarray, pads) -> np.ndarray:
    """Stride-1 NHWC/HWIO convolution as the textbook quadruple sum, in float64."""
    x = np.pad(x.astype(np.float64), ((0, 0), *pads, (0, 0)))
    kh, kw, _, cout = k.shape
    h, w = x.shape[1] - kh + 1, x.shape[2] - kw + 1
    y = np.zeros((x.shape[0], h, w, cout))
    for p in range(kh):
        for q in range(kw):
            view = x[:, p : p + h, q : q + w, :]
            y += np.einsum("bhwc,co->bhwo", view, k[p, q].astype(np.float64))
    return y


@pytest.mark.parametrize("padding,pads", [("VALID", [(0, 0), (0, 0)]), ("SAME", [(1, 2), (1, 2)])])
def test_im2col_conv_equals_the_sum(padding, pads):
    from jaxpfl.models.conv import conv2d_im2col, conv_general_dilated

    rng = np.random.default_rng(3)
    x = rng.normal(size=(2, 9, 8, 3)).astype(np.float32)
    k = rng.normal(size=(4, 4, 3, 5)).astype(np.float32)
    want = _numpy_conv(x, k, pads)
    got = conv2d_im2col(jnp.asarray(x), jnp.asarray(k), pads)
    np.testing.assert_allclose(np.asarray(got), want, rtol=1e-5, atol=1e-5)
    dims = ("NHWC", "HWIO", "NHWC")
    xla = jax.lax.conv_general_dilated(x, k, (1, 1), padding, dimension_numbers=dims)
    np.testing.assert_allclose(np.asarray(xla), want, rtol=1e-5, atol=1e-5)
    # the drop-in takes Flax's call form
    got2 = conv_general_dilated(jnp.asarray(x), jnp.asarray(k), (1, 1), padding,
                                dimension_numbers=("NHWC", "HWIO", "NHWC"))
    np.testing.assert_allclose(np.asarray(got2), want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name", ["cnn", "mcmahan_cnn", "sj_cnn", "lenet"])
def test_model_outputs_and_gradients_equal_across_conv_formulations(name, monkeypatch):
    model, params = built(name)
    x = images(4, model.input_shape)

    def loss(p):
        return jnp.sum(model.apply(p, x) ** 2)

    results = {}
    for impl in ("xla", "im2col"):
        monkeypatch.setenv("JAXPFL_CONV", impl)
        # jitted (one compilation, not one per eager op); a fresh function per formulation,
        # so each is traced with its own JAXPFL_CONV
        results[impl] = jax.jit(lambda p: (model.apply(p, x), jax.grad(loss)(p)))(params)
    np.testing.assert_allclose(results["im2col"][0], results["xla"][0], rtol=1e-5, atol=1e-5)
    for a, b in zip(jax.tree.leaves(results["im2col"][1]), jax.tree.leaves(results["xla"][1])):
        scale = float(jnp.abs(b).max()) + 1e-12
        assert float(jnp.abs(a - b).max()) / scale < 1e-5


def test_max_pool_equals_reduce_window_with_floor():
    import flax.linen as nn

    from jaxpfl.models.conv import max_pool_2x2

    x = jnp.asarray(np.random.default_rng(0).normal(size=(2, 7, 9, 3)).astype(np.float32))
    want = nn.max_pool(x, (2, 2), strides=(2, 2), padding="VALID")
    assert max_pool_2x2(x).shape == (2, 3, 4, 3)
    np.testing.assert_array_equal(np.asarray(max_pool_2x2(x)), np.asarray(want))


@pytest.mark.parametrize("pads", [[(0, 0), (0, 0)], [(1, 2), (2, 1)]])
def test_im2col_vjp_equals_the_numpy_sums(pads, monkeypatch):
    """The written-out VJP of the CPU formulation (∂kernel = colsᵀ·g, col2im of g·kernelᵀ)
    against the textbook sums in float64: ∂k[p,q,c,o] = Σ_{b,i,j} x_pad[b,i+p,j+q,c]·g[b,i,j,o]
    and ∂x_pad[b,i+p,j+q,c] += Σ_o g[b,i,j,o]·k[p,q,c,o], the padding cut off."""
    from jaxpfl.models.conv import conv_general_dilated

    monkeypatch.setenv("JAXPFL_CONV", "im2col")
    rng = np.random.default_rng(5)
    x = rng.normal(size=(2, 9, 8, 3)).astype(np.float32)
    k = rng.normal(size=(4, 3, 3, 5)).astype(np.float32)
    y, vjp = jax.vjp(lambda a, b: conv_general_dilated(
        a, b, (1, 1), pads, dimension_numbers=("NHWC", "HWIO", "NHWC")), x, k)
    g = rng.normal(size=y.shape).astype(np.float32)
    dx, dk = vjp(jnp.asarray(g))

    xp = np.pad(x.astype(np.float64), ((0, 0), *pads, (0, 0)))
    g64 = g.astype(np.float64)
    want_dk = np.zeros(k.shape)
    want_dxp = np.zeros(xp.shape)
    h, w = g.shape[1], g.shape[2]
    for p in range(k.shape[0]):
        for q in range(k.shape[1]):
            want_dk[p, q] = np.einsum("bhwc,bhwo->co", xp[:, p : p + h, q : q + w, :], g64)
            want_dxp[:, p : p + h, q : q + w, :] += np.einsum("bhwo,co->bhwc", g64, k[p, q])
    want_dx = want_dxp[:, pads[0][0] : pads[0][0] + x.shape[1],
                       pads[1][0] : pads[1][0] + x.shape[2], :]
    np.testing.assert_allclose(np.asarray(y), _numpy_conv(x, k, pads), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(np.asarray(dk), want_dk, rtol=1e-5, atol=1e-4)
    np.testing.assert_allclose(np.asarray(dx), want_dx, rtol=1e-5, atol=1e-5)


def test_max_pool_gradient_goes_to_the_first_maximum_as_pytorch():
    """Each window's gradient lands on its first maximal entry in row-major order (PyTorch's
    MaxPool2d); ties are frequent (flat background after a ReLU), and the dropped odd row and
    column get nothing. Reference: a literal loop over windows."""
    from jaxpfl.models.conv import max_pool_2x2

    rng = np.random.default_rng(1)
    x = rng.integers(0, 3, size=(2, 7, 9, 3)).astype(np.float32)  # many ties
    x[0, :2, :2, 0] = 1.0  # a window of four equal entries
    g = rng.normal(size=(2, 3, 4, 3)).astype(np.float32)
    y, vjp = jax.vjp(max_pool_2x2, jnp.asarray(x))
    (dx,) = vjp(jnp.asarray(g))
    want = np.zeros_like(x)
    ties = 0
    for b in range(2):
        for i in range(3):
            for j in range(4):
                for c in range(3):
                    window = x[b, 2 * i : 2 * i + 2, 2 * j : 2 * j + 2, c].reshape(-1)
                    first = int(np.argmax(window))  # NumPy's argmax: the first maximum
                    ties += int((window == window.max()).sum() > 1)
                    want[b, 2 * i + first // 2, 2 * j + first % 2, c] = g[b, i, j, c]
    assert ties > 20  # the case that matters is exercised
    want_y = x[:, :6, :8, :].reshape(2, 3, 2, 4, 2, 3).max(axis=(2, 4))
    np.testing.assert_array_equal(np.asarray(y), want_y)
    np.testing.assert_array_equal(np.asarray(dx), want)
    assert float(jnp.abs(dx[:, 6, :, :]).max()) == 0.0 and float(jnp.abs(dx[:, :, 8, :]).max()) == 0


def test_conv_impl_default_and_bad_value(monkeypatch):
    from jaxpfl.errors import ConfigError
    from jaxpfl.models.conv import conv_impl

    monkeypatch.delenv("JAXPFL_CONV", raising=False)
    assert conv_impl() == ("im2col" if jax.default_backend() == "cpu" else "xla")
    monkeypatch.setenv("JAXPFL_CONV", "winograd")
    with pytest.raises(ConfigError, match="JAXPFL_CONV"):
        conv_impl()
