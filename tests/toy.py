"""Tiny independent problem of docs/algorithms.md §1.8: a 2-layer tanh MLP on 16 inputs, 3 classes,
K = 6 clients with n_k ∈ {1, 7, 10, 13, 23, 40}; a plain NumPy forward/backward as reference."""

from __future__ import annotations

import logging

import jax
import jax.numpy as jnp
import numpy as np

from jaxpfl.data.dataset import ClientIndex, FederatedDataset
from jaxpfl.models.base import Model

SIZES = (1, 7, 10, 13, 23, 40)
HIDDEN, CLASSES = 8, 3


def _apply(params, x, train=False, key=None):
    del train, key  # no dropout
    h = x.reshape(x.shape[0], -1).astype(jnp.float32) / 255.0
    h = jnp.tanh(h @ params["w1"] + params["b1"][None, :])
    return h @ params["w2"] + params["b2"][None, :]


def _init(key, x):
    k1, k2 = jax.random.split(key)
    d = int(np.prod(x.shape[1:]))
    return {
        "w1": jax.random.normal(k1, (d, HIDDEN), jnp.float32) * 0.5,
        "b1": jnp.zeros((HIDDEN,), jnp.float32),
        "w2": jax.random.normal(k2, (HIDDEN, CLASSES), jnp.float32) * 0.5,
        "b2": jnp.zeros((CLASSES,), jnp.float32),
    }


MODEL = Model(
    name="toy_mlp",
    init=_init,
    apply=_apply,
    param_order=(("w1",), ("b1",), ("w2",), ("b2",)),
    num_classes=CLASSES,
    input_shape=(4, 4, 1),
)


def toy_dataset(sizes=SIZES, test_per_client: int = 5, seed: int = 0) -> FederatedDataset:
    rng = np.random.default_rng(seed)
    total = sum(sizes) + test_per_client * len(sizes)
    y = rng.integers(0, CLASSES, total).astype(np.int32)
    # class-dependent means so the task is learnable
    base = rng.integers(0, 256, (CLASSES, 4, 4, 1))
    x = np.clip(base[y] + rng.normal(0, 40, (total, 4, 4, 1)), 0, 255).astype(np.uint8)
    train, test, o = [], [], 0
    for n in sizes:
        train.append(np.arange(o, o + n))
        o += n
    for _ in sizes:
        test.append(np.arange(o, o + test_per_client))
        o += test_per_client
    k = len(sizes)
    return FederatedDataset(
        name="toy",
        x=x,
        y=y,
        train=ClientIndex.from_lists(train),
        test=ClientIndex.from_lists(test),
        client_ids=tuple(str(i) for i in range(k)),
        num_classes=CLASSES,
        train_clients=np.arange(k),
        eval_clients=np.zeros(0, np.int64),
    )


# ---- NumPy reference (float64) -------------------------------------------------------------


def np_params(params):
    return {k: np.asarray(v, np.float64) for k, v in params.items()}


def np_loss_grad(p, x, y):
    """Mean CE over the rows of (x, y) and its gradient, by hand."""
    h0 = x.reshape(len(x), -1).astype(np.float64) / 255.0
    a = h0 @ p["w1"] + p["b1"]
    h = np.tanh(a)
    z = h @ p["w2"] + p["b2"]
    z = z - z.max(axis=1, keepdims=True)
    prob = np.exp(z) / np.exp(z).sum(axis=1, keepdims=True)
    n = len(y)
    loss = -np.log(prob[np.arange(n), y]).mean()
    dz = prob.copy()
    dz[np.arange(n), y] -= 1.0
    dz /= n
    g = {"w2": h.T @ dz, "b2": dz.sum(0)}
    da = (dz @ p["w2"].T) * (1 - h**2)
    g["w1"] = h0.T @ da
    g["b1"] = da.sum(0)
    return loss, g


def np_sgd_epochs(p, x, y, batches, lr, momentum=0.0, weight_decay=0.0):
    """Plain SGD over a list of index batches (PyTorch SGD semantics)."""
    p = {k: v.copy() for k, v in p.items()}
    buf = None
    for b in batches:
        _, g = np_loss_grad(p, x[b], y[b])
        g = {k: g[k] + weight_decay * p[k] for k in p}
        buf = g if buf is None else {k: momentum * buf[k] + g[k] for k in p}
        p = {k: p[k] - lr * buf[k] for k in p}
    return p


def schedule_batches(schedule, idx_row):
    """The list of example-index batches of a schedule (masked steps dropped)."""
    pos, valid = np.asarray(schedule.positions), np.asarray(schedule.valid)
    out = []
    for s in range(pos.shape[0]):
        if valid[s].any():
            out.append(np.asarray(idx_row)[pos[s][valid[s]]])
    return out


class CompileLog(logging.Handler):
    """``with CompileLog() as log:`` the names of the functions jit compiles meanwhile
    (``log.names``, e.g. ``'jit(_block)'``), from the records of ``jax_log_compiles``."""

    def __init__(self):
        super().__init__()
        self.names: list[str] = []

    def emit(self, record):
        msg = record.getMessage()
        if msg.startswith("Compiling "):
            self.names.append(msg.split()[1])

    def __enter__(self) -> CompileLog:
        logging.getLogger("jax").addHandler(self)
        self._was = jax.config.jax_log_compiles
        # the global setting: ``jax.log_compiles(True)`` is thread-local, and the sequential
        # strategy's lanes compile in threads of their own
        jax.config.update("jax_log_compiles", True)
        return self

    def __exit__(self, *exc) -> None:
        jax.config.update("jax_log_compiles", self._was)
        logging.getLogger("jax").removeHandler(self)
