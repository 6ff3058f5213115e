"""Time one FedAvg round of the engine's client strategies against a naive per-step loop.

    python experiments/bench_engine.py                        # full run (minutes on a small CPU)
    python experiments/bench_engine.py --quick                # tiny settings (smoke test)
    python experiments/bench_engine.py --cpu-devices 4        # adds 'sharded' on CPU
    python experiments/bench_engine.py --torch                # adds a PyTorch per-client loop

Setting: FedAvgCNN (``get_model('cnn')``), SGD lr 0.005, batch 10, 1 local epoch, on the full
Fashion-MNIST pool split Dir(0.1) over 20 clients with PFLlib's recipe
(``federate(raw, 'pfllib_dir', 20, alpha=0.1, train_frac=0.75)``: ~52,500 training examples).
Every client takes part in the round. Rows:

- ``naive``: a Python loop over clients and over batches with one jitted SGD step per batch,
  batches gathered on the host with NumPy from a per-client shuffled order and sent per step
  (PFLlib's and fedjax's shape; the short last batch is padded and masked, one compilation);
- ``sequential(b=…)``, ``vmap``, ``chunked``, ``sharded``: ``make_round(fedavg(...), Strategy)``;
- ``torch`` (``--torch``): the same round as a PyTorch per-client loop (same FedAvgCNN, same
  initial weights, plain SGD, host batches moved to the device per step; CUDA when available).

Rounds are interleaved across rows (round r of every row, then round r + 1), so slow changes in
machine load hit every row alike. "first round s" includes compilation; "round s" is the mean of
the later rounds and "compile s" is first round minus that (for jitted strategies, the ahead-of-
time compile time, measured on its own). Training examples/s counts examples actually trained on
(Σ n_k × epochs); "ms/step" is round s per real SGD step. A row whose first round exceeds
``--max-seconds`` runs no more rounds. On CPU a jitted strategy is first timed on rounds cut to 4
and 12 steps per client, and not run at all if the line through them puts its round past
``--max-seconds`` (vmap on CPU: many minutes); the table then shows that estimate.

After round 1 every engine strategy's global parameters are compared with the reference
strategy's (same initial weights and keys; tolerance 1e-4); naive and torch draw their own batch
orders, so only their mean training loss is compared. Evaluation times ``evaluate_global`` on
every client's train and test indices (the whole pool). The scaling table times the best engine
strategy with 20 / 100 / 500 clients per round of a Dir(0.1) split of the same pool into 500
clients (PFLlib's recipe with its 40-example floor lowered where it cannot be met).

Prints markdown tables and writes JSON (``--out``) with the environment, every figure, and the
issue's targets with pass/fail.
"""

from __future__ import annotations

import os
import sys


def _set_cpu_devices(argv: list[str]) -> None:
    """Honour ``--cpu-devices N`` before jax is imported (XLA reads the flag at start-up)."""
    value = None
    for i, arg in enumerate(argv):
        if arg == "--cpu-devices" and i + 1 < len(argv):
            value = argv[i + 1]
        elif arg.startswith("--cpu-devices="):
            value = arg.split("=", 1)[1]
    if value is not None and int(value) > 1:
        flag = f"--xla_force_host_platform_device_count={int(value)}"
        os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " " + flag).strip()


if __name__ == "__main__":
    _set_cpu_devices(sys.argv[1:])

import abc  # noqa: E402
import argparse  # noqa: E402
import dataclasses  # noqa: E402
import datetime  # noqa: E402
import json  # noqa: E402
import math  # noqa: E402
import platform  # noqa: E402
import time  # noqa: E402
from collections.abc import Callable, Sequence  # noqa: E402
from typing import Any  # noqa: E402

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402

_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if _ROOT not in sys.path:
    sys.path.insert(0, _ROOT)

from jaxpfl.algorithms.fedavg import FedAvgConfig, fedavg  # noqa: E402
from jaxpfl.core.engine import (  # noqa: E402
    Algorithm,
    RoundInputs,
    State,
    Strategy,
    make_round,
    place_inputs,
)
from jaxpfl.core.evaluate import evaluate_global  # noqa: E402
from jaxpfl.core.train import ExecOptions  # noqa: E402
from jaxpfl.data.dataset import DataError, FederatedDataset, RawData  # noqa: E402
from jaxpfl.data.federate import federate  # noqa: E402
from jaxpfl.data.sources import load_raw  # noqa: E402
from jaxpfl.models import get_model  # noqa: E402
from jaxpfl.models.base import Model  # noqa: E402
from jaxpfl.run import round_inputs, sample_clients  # noqa: E402

PyTree = Any
ENGINE = ("sequential", "vmap", "chunked", "sharded")
AGREE_TOL = 1e-4
LOSS_TOL = 0.25  # naive / torch mean loss within 25% of the reference's (own batch orders)

# The targets: (name, backend, description, threshold, higher is better).
TARGETS = (
    ("cpu_best_vs_naive", "cpu", "best engine strategy examples/s / naive", 0.95, True),
    ("cpu_eval_seconds", "cpu", "evaluate_global over the whole pool (s)", 5.0, False),
    ("cpu_full_round_seconds", "cpu", "best strategy round + evaluation (s)", 45.0, False),
    ("gpu_examples_per_s_500", "gpu", "examples/s at 500 clients per round", 2e6, True),
    ("gpu_best_vs_naive", "gpu", "best engine strategy examples/s / naive", 50.0, True),
)


# ----------------------------------------------------------------------------------------------
# Data


def subsample(raw: RawData, n_train: int, n_test: int) -> RawData:
    """The first ``n_train`` train and ``n_test`` test examples of ``raw``."""
    return dataclasses.replace(
        raw,
        x_train=raw.x_train[:n_train],
        y_train=raw.y_train[:n_train],
        x_test=raw.x_test[:n_test],
        y_test=raw.y_test[:n_test],
    )


def synthetic_raw(n_train: int = 60_000, n_test: int = 10_000, seed: int = 0) -> RawData:
    """Random 28×28×1 uint8 images with random labels (timings only: no signal to learn)."""
    rng = np.random.default_rng(seed)

    def part(n: int) -> tuple[np.ndarray, np.ndarray]:
        x = rng.integers(0, 256, (n, 28, 28, 1), dtype=np.uint8)
        return x, rng.integers(0, 10, n).astype(np.int32)

    (xa, ya), (xb, yb) = part(n_train), part(n_test)
    return RawData("synthetic", xa, ya, xb, yb, num_classes=10)


def dirichlet_split(raw: RawData, clients: int, alpha: float) -> tuple[FederatedDataset, str]:
    """PFLlib's Dir(alpha) split into ``clients``; if its floor of 40 examples per client cannot
    be met (e.g. 500 clients at alpha 0.1), the floor is lowered to 4 (its ``batch_size`` 1)."""
    try:
        ds = federate(raw, "pfllib_dir", clients, alpha=alpha, train_frac=0.75)
        return ds, "pfllib_dir"
    except DataError:
        ds = federate(raw, "pfllib_dir", clients, alpha=alpha, train_frac=0.75, batch_size=1)
        return ds, "pfllib_dir (least_samples 4: batch_size=1 in the partitioner)"


# ----------------------------------------------------------------------------------------------
# Runners: one row of the table each


@dataclasses.dataclass
class RoundLog:
    """Seconds and mean training loss of one round."""

    seconds: float
    loss: float


def host_tree(tree: PyTree) -> PyTree:
    """A NumPy copy of a pytree (waits for it)."""
    return jax.tree.map(np.asarray, tree)


def copy_tree(tree: PyTree) -> PyTree:
    """A fresh device copy (rounds donate their state)."""
    return jax.tree.map(lambda a: jnp.array(a, copy=True), tree)


def weighted_loss(losses: np.ndarray, steps: np.ndarray) -> float:
    """Mean per-step training loss over the round (client means weighted by their steps)."""
    steps = np.asarray(steps, np.float64)
    return float(np.sum(np.asarray(losses, np.float64) * steps) / max(steps.sum(), 1.0))


class Runner(abc.ABC):
    """Base: ``round(t)`` trains one round; ``compile_seconds`` is set where measured apart."""

    label: str
    kind: str
    compile_seconds: float | None = None
    padded_steps: int | None = None  # steps computed including masked ones (jitted strategies)

    @abc.abstractmethod
    def round(self, t: int) -> RoundLog:
        """Train one round and time it."""


class EngineRunner(Runner):
    """``make_round(algorithm, strategy)`` over fixed clients ``ids``; jitted strategies are
    compiled ahead of time here (timed apart)."""

    def __init__(
        self,
        label: str,
        algorithm: Algorithm,
        strategy: Strategy,
        ds: FederatedDataset,
        ids: np.ndarray,
        params0: PyTree,
        root: jax.Array,
        pool: tuple[jax.Array, jax.Array],
        batch_size: int,
        epochs: int,
    ):
        self.label, self.kind, self.strategy = label, strategy.name, strategy
        self.algorithm, self.root = algorithm, root
        self.batch_size, self.epochs = batch_size, epochs
        self.host_inputs = round_inputs(ds, ids, strategy)
        self.inputs = place_inputs(self.host_inputs, strategy)
        self.real = len(ids)
        self.x, self.y = pool
        if strategy.name == "sharded":  # the pool replicated on the mesh once, not per call
            rep = jax.sharding.NamedSharding(strategy.mesh(), jax.sharding.PartitionSpec())
            self.x, self.y = jax.device_put(self.x, rep), jax.device_put(self.y, rep)
        self.state: State = algorithm.init(root, copy_tree(params0), ds.num_clients)
        self.make = make_round(algorithm, strategy)
        self.call = self.make
        if strategy.jitted:
            self.padded_steps = sum(
                len(g.ids) * self._row_steps(g.train_idx.shape[1]) for g in self.host_inputs.groups
            )
            tic = time.perf_counter()
            self.call = self._compile(self.inputs)
            self.compile_seconds = time.perf_counter() - tic

    def _row_steps(self, width: int) -> int:
        """Compiled steps of one client row (masked steps included)."""
        return math.ceil(width / self.batch_size) * self.epochs

    def _compile(self, inputs: RoundInputs) -> Callable:
        args = (self.state, self.x, self.y, inputs, jnp.int32(0), self.root)
        return self.make.lower(*args).compile()

    def _probe(self, steps: int) -> tuple[int, float]:
        """(client-steps, seconds) of one round cut to ``steps`` steps per client."""
        inp = self.host_inputs
        groups, total = [], 0
        for g in inp.groups:  # every group cut to at most `steps` steps per client
            width = min(g.train_idx.shape[1], steps * self.batch_size)
            groups.append(g._replace(train_idx=g.train_idx[:, :width],
                                     train_n=np.minimum(g.train_n, width)))
            total += len(g.ids) * self._row_steps(width)
        cut = place_inputs(RoundInputs(tuple(groups), inp.perm), self.strategy)
        call = self._compile(cut)
        state = copy_tree(self.state)
        tic = time.perf_counter()
        jax.block_until_ready(call(state, self.x, self.y, cut, jnp.int32(0), self.root))
        return total, time.perf_counter() - tic

    def estimate(self, probe_steps: int) -> tuple[float, str]:
        """Round seconds extrapolated from two rounds cut to ``probe_steps`` and 3x as many
        steps per client (a line: fixed cost + cost per compiled step, masked or not)."""
        (s1, t1), (s2, t2) = self._probe(probe_steps), self._probe(3 * probe_steps)
        per_step = max(t2 - t1, 0.0) / max(s2 - s1, 1) if s2 > s1 else t2 / max(s2, 1)
        fixed = max(t1 - per_step * s1, 0.0)
        est = fixed + per_step * self.padded_steps
        note = (
            f"probe: {s1} / {s2} client-steps in {t1:.2f} / {t2:.2f} s: "
            f"{1e3 * per_step:.1f} ms per client-step + {fixed:.2f} s fixed"
        )
        return est, note

    def round(self, t: int) -> RoundLog:
        tic = time.perf_counter()
        self.state, out = self.call(
            self.state, self.x, self.y, self.inputs, jnp.int32(t), self.root
        )
        jax.block_until_ready((self.state, out))
        seconds = time.perf_counter() - tic
        loss = np.asarray(out.metrics["train_loss"])[: self.real]
        steps = np.asarray(out.metrics["steps"])[: self.real]
        compiled = np.asarray(out.metrics["compiled_steps"])
        self.useful_share = float(steps.sum() / max(compiled.sum(), 1))
        return RoundLog(seconds, weighted_loss(loss, steps))

    def global_params(self) -> PyTree:
        return host_tree(self.algorithm.global_params(self.state.server))


def _naive_fns(model: Model, lr: float) -> tuple[Callable, Callable]:
    """The jitted SGD step on one host batch, and ``acc + w · params`` for aggregation."""

    def loss_fn(params, xb, yb, w):
        logits = model.apply(params, xb).astype(jnp.float32)
        ce = optax.softmax_cross_entropy_with_integer_labels(logits, yb)
        return jnp.sum(ce * w) / jnp.maximum(jnp.sum(w), 1.0)

    @jax.jit
    def step(params, xb, yb, w):
        loss, grads = jax.value_and_grad(loss_fn)(params, xb, yb, w)
        return jax.tree.map(lambda p, g: p - lr * g, params, grads), loss

    @jax.jit
    def axpy(acc, params, w):
        return jax.tree.map(lambda a, p: a + w * p, acc, params)

    return step, axpy


class NaiveRunner(Runner):
    """PFLlib / fedjax style: loops over clients and batches, one jitted step per batch, batches
    gathered on the host (NumPy) from a per-client shuffled order and sent per step."""

    def __init__(
        self,
        model: Model,
        ds: FederatedDataset,
        ids: np.ndarray,
        params0: PyTree,
        lr: float,
        batch_size: int,
        epochs: int,
        seed: int,
    ):
        self.label = self.kind = "naive"
        self.x, self.y = np.asarray(ds.x), np.asarray(ds.y)
        self.parts = [np.asarray(ds.train[int(k)]) for k in ids]
        self.params = copy_tree(params0)
        self.batch_size, self.epochs, self.seed = batch_size, epochs, seed
        self.step, self.axpy = _naive_fns(model, lr)

    def round(self, t: int) -> RoundLog:
        rng = np.random.default_rng([self.seed, t])
        b = self.batch_size
        total = sum(len(p) for p in self.parts)
        tic = time.perf_counter()
        acc = jax.tree.map(jnp.zeros_like, self.params)
        client_losses, client_steps = [], []
        for part in self.parts:
            params, loss_sum, steps = self.params, 0.0, 0
            for _ in range(self.epochs):
                order = part[rng.permutation(len(part))]
                for s in range(0, len(order), b):
                    batch = order[s : s + b]
                    w = np.zeros(b, np.float32)
                    w[: len(batch)] = 1.0
                    batch = np.pad(batch, (0, b - len(batch)))
                    params, loss = self.step(params, self.x[batch], self.y[batch], w)
                    loss_sum, steps = loss_sum + loss, steps + 1
            acc = self.axpy(acc, params, np.float32(len(part) / max(total, 1)))
            client_losses.append(loss_sum / max(steps, 1))
            client_steps.append(steps)
        self.params = acc
        jax.block_until_ready(self.params)
        seconds = time.perf_counter() - tic
        losses = np.asarray([float(v) for v in client_losses])
        return RoundLog(seconds, weighted_loss(losses, np.asarray(client_steps)))

    def global_params(self) -> PyTree:
        return host_tree(self.params)


def torch_available() -> bool:
    try:
        import torch  # noqa: F401
    except ImportError:
        return False
    return True


def flax_cnn_to_torch(params: PyTree, input_shape: Sequence[int]) -> dict[str, np.ndarray]:
    """FedAvgCNN weights (NHWC kernels, (H, W, C) flatten) as a torch state dict of the
    Sequential built by :func:`_torch_cnn` (OIHW kernels, (C, H, W) flatten)."""
    p = host_tree(params)["params"]
    side = ((input_shape[0] - 4) // 2 - 4) // 2
    fc1 = p["fc1"]["kernel"].reshape(side, side, 64, -1).transpose(3, 2, 0, 1)
    return {
        "0.weight": p["conv1"]["kernel"].transpose(3, 2, 0, 1),
        "0.bias": p["conv1"]["bias"],
        "3.weight": p["conv2"]["kernel"].transpose(3, 2, 0, 1),
        "3.bias": p["conv2"]["bias"],
        "7.weight": fc1.reshape(fc1.shape[0], -1),
        "7.bias": p["fc1"]["bias"],
        "9.weight": p["fc"]["kernel"].T,
        "9.bias": p["fc"]["bias"],
    }


def _torch_cnn(torch: Any, channels: int, side: int, num_classes: int) -> Any:
    """PFLlib's FedAvgCNN in PyTorch."""
    nn = torch.nn
    return nn.Sequential(
        nn.Conv2d(channels, 32, 5),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(32, 64, 5),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(64 * side * side, 512),
        nn.ReLU(),
        nn.Linear(512, num_classes),
    )


class TorchRunner(Runner):
    """The same round as a PyTorch per-client loop: copy the global model, plain SGD over
    shuffled host batches (normalised once, moved to the device per step), weighted average."""

    def __init__(
        self,
        model: Model,
        ds: FederatedDataset,
        ids: np.ndarray,
        params0: PyTree,
        lr: float,
        batch_size: int,
        epochs: int,
        seed: int,
        threads: int = 0,
    ):
        import torch

        if threads > 0:
            torch.set_num_threads(threads)
        self.threads = torch.get_num_threads()
        self.torch = torch
        self.label = self.kind = "torch"
        self.device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        h, _, c = model.input_shape
        side = ((h - 4) // 2 - 4) // 2
        self.net = _torch_cnn(torch, c, side, model.num_classes).to(self.device)
        state = {
            k: torch.from_numpy(np.array(v, copy=True))
            for k, v in flax_cnn_to_torch(params0, model.input_shape).items()
        }
        self.net.load_state_dict(state)
        vec = torch.nn.utils.parameters_to_vector
        self.global_vec = vec(self.net.parameters()).detach().clone()
        x = (np.asarray(ds.x, np.float32) / 255.0 - 0.5) / 0.5  # FedAvgCNN's normalisation
        x = torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2)))
        y = torch.from_numpy(np.asarray(ds.y, np.int64))
        self.parts = [torch.from_numpy(np.asarray(ds.train[int(k)])) for k in ids]
        self.client_x = [x[p] for p in self.parts]
        self.client_y = [y[p] for p in self.parts]
        self.lr, self.batch_size, self.epochs, self.seed = lr, batch_size, epochs, seed

    def _sync(self) -> None:
        if self.device.type == "cuda":
            self.torch.cuda.synchronize()

    def round(self, t: int) -> RoundLog:
        torch = self.torch
        to_vec = torch.nn.utils.parameters_to_vector
        from_vec = torch.nn.utils.vector_to_parameters
        gen = torch.Generator().manual_seed(self.seed * 100_003 + t)
        total = sum(len(p) for p in self.parts)
        self._sync()
        tic = time.perf_counter()
        acc = torch.zeros_like(self.global_vec)
        client_losses, client_steps = [], []
        for xk, yk in zip(self.client_x, self.client_y):
            from_vec(self.global_vec, self.net.parameters())
            opt = torch.optim.SGD(self.net.parameters(), lr=self.lr)
            loss_sum = torch.zeros((), device=self.device)
            steps = 0
            for _ in range(self.epochs):
                perm = torch.randperm(len(xk), generator=gen)
                for s in range(0, len(xk), self.batch_size):
                    b = perm[s : s + self.batch_size]
                    xb, yb = xk[b].to(self.device), yk[b].to(self.device)
                    opt.zero_grad(set_to_none=True)
                    loss = torch.nn.functional.cross_entropy(self.net(xb), yb)
                    loss.backward()
                    opt.step()
                    loss_sum += loss.detach()
                    steps += 1
            acc += (len(xk) / max(total, 1)) * to_vec(self.net.parameters()).detach()
            client_losses.append(loss_sum / max(steps, 1))
            client_steps.append(steps)
        self.global_vec = acc
        self._sync()
        seconds = time.perf_counter() - tic
        losses = np.asarray([float(v) for v in client_losses])
        return RoundLog(seconds, weighted_loss(losses, np.asarray(client_steps)))


# ----------------------------------------------------------------------------------------------
# Measurement


@dataclasses.dataclass
class Row:
    """One strategy's figures."""

    label: str
    kind: str
    clients: int
    examples: int
    real_steps: int
    rounds: list[float]
    losses: list[float]
    aot_compile_s: float | None = None
    padded_steps: int | None = None
    cut: str | None = None
    estimated_s: float | None = None
    probe: str | None = None
    max_abs_diff: float | None = None
    agrees: bool | None = None
    error: str | None = None
    useful_share: float | None = None  # active / compiled steps of the round (engine rows)
    groups: int | None = None  # size groups of the round (jitted engine rows)

    @property
    def first_s(self) -> float | None:
        """The first round including compilation (ahead-of-time compile added back)."""
        if not self.rounds:
            return None
        return self.rounds[0] + (self.aot_compile_s or 0.0)

    @property
    def round_s(self) -> float | None:
        """Steady-state round: mean of the rounds after the first (else the first)."""
        if len(self.rounds) > 1:
            return float(np.mean(self.rounds[1:]))
        return self.rounds[0] if self.rounds else None

    @property
    def steady(self) -> bool:
        return len(self.rounds) > 1

    @property
    def compile_s(self) -> float | None:
        if self.aot_compile_s is not None:
            return self.aot_compile_s
        if self.steady:
            return max(0.0, self.rounds[0] - self.round_s)
        return None

    @property
    def examples_per_s(self) -> float | None:
        return self.examples / self.round_s if self.round_s else None

    @property
    def note(self) -> str:
        """Errors, cuts, estimates and padded work, for the table."""
        parts = [self.error or ""]
        if self.cut and self.rounds:
            with_compile = "" if self.aot_compile_s is not None else ", round s includes compiling"
            parts.append(f"cut after 1 round ({self.cut}{with_compile})")
        elif self.cut:
            parts.append(self.cut)
        if self.padded_steps:
            parts.append(f"computes {self.padded_steps / self.real_steps:.2f}x the real steps")
        return "; ".join(p for p in parts if p)

    @property
    def ms_per_step(self) -> float | None:
        return 1e3 * self.round_s / max(self.real_steps, 1) if self.round_s else None

    def to_json(self, eval_s: float | None, naive: Row | None) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out.update(
            estimated_examples_per_s=self.examples / self.estimated_s if self.estimated_s else None,
            first_round_s=self.first_s,
            round_s=self.round_s,
            steady_state=self.steady,
            compile_s=self.compile_s,
            examples_per_s=self.examples_per_s,
            ms_per_real_step=self.ms_per_step,
            padded_work=(self.padded_steps / self.real_steps) if self.padded_steps else None,
            eval_s=eval_s,
            full_round_s=(self.round_s + eval_s) if self.round_s and eval_s else None,
            vs_naive=ratio(self, naive),
        )
        return out


def ratio(row: Row, naive: Row | None) -> float | None:
    if naive is None or not row.examples_per_s or not naive.examples_per_s:
        return None
    return row.examples_per_s / naive.examples_per_s


def max_abs_diff(a: PyTree, b: PyTree) -> float:
    return max(float(np.max(np.abs(x - y))) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))


def round_counts(ds: FederatedDataset, ids: np.ndarray, batch: int, epochs: int) -> tuple[int, int]:
    """(examples trained on, real SGD steps) in one round of clients ``ids``."""
    n = ds.train.sizes[np.asarray(ids)]
    return int(n.sum()) * epochs, int(np.sum(-(-n // batch))) * epochs


def run_rows(
    runners: Sequence[Runner | None],
    rows: list[Row],
    rounds: int,
    max_seconds: float,
    log: Callable[[str], None],
) -> dict[str, PyTree]:
    """Interleave rounds across runners; returns each engine/naive runner's params after round 0.

    A runner whose first round exceeds ``max_seconds`` runs no further rounds; one that raises
    is recorded with its error and dropped; ``None`` runners (setup failed) are skipped.
    """
    after_first: dict[str, PyTree] = {}
    live = [i for i, r in enumerate(runners) if r is not None]
    for t in range(rounds):
        for i in list(live):
            runner, row = runners[i], rows[i]
            try:
                got = runner.round(t)
            except Exception as e:  # a strategy that fails must not sink the others
                row.error = f"{type(e).__name__}: {str(e).splitlines()[0][:200]}"
                live.remove(i)
                log(f"  {row.label}: round {t} failed: {row.error}")
                continue
            row.rounds.append(got.seconds)
            row.losses.append(got.loss)
            if getattr(runner, "useful_share", None) is not None:
                row.useful_share = runner.useful_share
            log(f"  {row.label}: round {t}: {got.seconds:.2f} s, loss {got.loss:.4f}")
            if t == 0:
                if hasattr(runner, "global_params"):
                    after_first[row.label] = runner.global_params()
                if got.seconds > max_seconds and rounds > 1:
                    row.cut = f"first round {got.seconds:.0f} s > --max-seconds {max_seconds:g}"
                    live.remove(i)
    return after_first


def time_eval(
    model: Model,
    params: PyTree,
    pool: tuple[jax.Array, jax.Array],
    parts: list[np.ndarray],
    repeats: int,
) -> dict[str, Any]:
    """``evaluate_global`` over ``parts``: first call (with compilation) and steady mean."""
    times = []
    for _ in range(1 + repeats):
        tic = time.perf_counter()
        counts = evaluate_global(model, params, pool[0], pool[1], parts)
        times.append(time.perf_counter() - tic)
    steady = float(np.mean(times[1:])) if repeats else times[0]
    return {
        "examples": int(np.sum(counts.count)),
        "first_s": times[0],
        "seconds": steady,
        "compile_s": max(0.0, times[0] - steady) if repeats else None,
        "all_s": times,
        "accuracy": float(np.sum(counts.correct) / max(np.sum(counts.count), 1)),
    }


# ----------------------------------------------------------------------------------------------
# Report


def fmt(v: float | None, spec: str = ".2f") -> str:
    return "–" if v is None else format(v, spec)


def main_table(rows: Sequence[Row], naive: Row | None, eval_s: float | None) -> str:
    head = (
        "| strategy | clients | examples | useful steps | compile s | first round s | round s "
        "| examples/s | ms/step | eval s | round+eval s | vs naive | max abs diff | loss | note |"
    )
    lines = [head, "|" + "---|" * 15]
    for r in rows:
        round_s, per_s = fmt(r.round_s), fmt(r.examples_per_s, ",.0f")
        if r.round_s is None and r.estimated_s:
            round_s, per_s = f"~{r.estimated_s:,.0f} (est.)", f"~{r.examples / r.estimated_s:,.0f}"
        full = r.round_s + eval_s if r.round_s and eval_s else None
        diff = fmt(r.max_abs_diff, ".1e")
        if r.kind in ("naive", "torch"):
            diff = "loss"
        if r.agrees is not None:
            diff += " ok" if r.agrees else " FAIL"
        lines.append(
            f"| {r.label} | {r.clients} | {r.examples:,} | {fmt(r.useful_share, '.0%')} "
            f"| {fmt(r.compile_s)} | {fmt(r.first_s)} "
            f"| {round_s} | {per_s} | {fmt(r.ms_per_step, '.3f')} "
            f"| {fmt(eval_s)} | {fmt(full)} | {fmt(ratio(r, naive), '.2f')} | {diff} "
            f"| {fmt(r.losses[0] if r.losses else None, '.4f')} | {r.note} |"
        )
    return "\n".join(lines)


def scaling_table(rows: Sequence[Row]) -> str:
    lines = [
        "| clients/round | examples | compile s | first round s | round s | examples/s | note |",
        "|" + "---|" * 7,
    ]
    for r in rows:
        lines.append(
            f"| {r.clients} | {r.examples:,} | {fmt(r.compile_s)} | {fmt(r.first_s)} "
            f"| {fmt(r.round_s)} | {fmt(r.examples_per_s, ',.0f')} | {r.note} |"
        )
    return "\n".join(lines)


def check_targets(
    backend: str,
    best: Row | None,
    naive: Row | None,
    eval_res: dict[str, Any] | None,
    scaling: Sequence[Row],
    applicable: bool,
) -> list[dict[str, Any]]:
    """The issue's targets for this backend, each with its measured value and pass/fail."""
    kind = "cpu" if backend == "cpu" else "gpu"
    eval_s = eval_res["seconds"] if eval_res else None
    at_500 = [r for r in scaling if r.clients == 500]
    measured = {
        "cpu_best_vs_naive": ratio(best, naive) if best else None,
        "cpu_eval_seconds": eval_s,
        "cpu_full_round_seconds": best.round_s + eval_s
        if best and best.round_s and eval_s
        else None,
        "gpu_examples_per_s_500": at_500[0].examples_per_s if at_500 else None,
        "gpu_best_vs_naive": ratio(best, naive) if best else None,
    }
    out = []
    for name, where, desc, threshold, higher in TARGETS:
        if where != kind:
            continue
        value = measured[name]
        ok = None if value is None else (value >= threshold if higher else value <= threshold)
        out.append(
            {
                "target": name,
                "description": desc,
                "threshold": threshold,
                "op": ">=" if higher else "<=",
                "measured": value,
                "pass": ok,
                "applicable": applicable,
                "note": limit_note(name, ok, best, naive, eval_res),
            }
        )
    return out


def limit_note(
    name: str, ok: bool | None, best: Row | None, naive: Row | None, ev: dict[str, Any] | None
) -> str:
    """For a missed target, the measured figures that bound it."""
    if ok is None or ok or best is None:
        return ""
    parts = [f"best strategy {best.label}"]
    if best.cut:
        parts.append("cut after its first round (figure includes compilation)")
    if name.endswith("vs_naive") and naive is not None:
        parts.append(
            f"{fmt(best.ms_per_step, '.3f')} ms per real step vs naive "
            f"{fmt(naive.ms_per_step, '.3f')} ms"
        )
        if best.padded_steps:
            parts.append(f"computes {best.padded_steps / best.real_steps:.2f}x the real steps")
    if name == "cpu_full_round_seconds" and ev:
        parts.append(f"training {fmt(best.round_s)} s + evaluation {fmt(ev['seconds'])} s")
    if name == "cpu_eval_seconds" and ev:
        parts.append(f"{1e6 * ev['seconds'] / max(ev['examples'], 1):.1f} µs per example")
    if name == "gpu_examples_per_s_500":
        parts.append("see the scaling rows")
    return "; ".join(parts)


def targets_table(targets: Sequence[dict[str, Any]]) -> str:
    lines = ["| target | threshold | measured | pass | note |", "|---|---|---|---|---|"]
    for t in targets:
        status = {None: "–", True: "pass", False: "FAIL"}[t["pass"]]
        if not t["applicable"]:
            status += " (n/a: not the issue's settings)"
        lines.append(
            f"| {t['description']} | {t['op']} {t['threshold']:g} | {fmt(t['measured'], ',.3g')} "
            f"| {status} | {t['note']} |"
        )
    return "\n".join(lines)


def print_main_report(
    args: argparse.Namespace,
    env: dict[str, Any],
    data_name: str,
    num_clients: int,
    rows: Sequence[Row],
    naive: Row | None,
    eval_res: dict[str, Any],
    ref_label: str | None,
) -> None:
    """The main table and the evaluation / agreement line."""
    print(
        f"\n## One FedAvg round: FedAvgCNN, batch {args.batch_size}, {args.epochs} epoch(s), "
        f"{data_name} Dir({args.alpha}) over {num_clients} clients — {env['backend']} "
        f"({env['device_kind']}), jax {env['jax']}\n"
    )
    print(main_table(rows, naive, eval_res["seconds"]))
    print(
        f"\nEvaluation: {eval_res['examples']:,} examples in {eval_res['seconds']:.2f} s (first "
        f"call {eval_res['first_s']:.2f} s). Agreement reference: {ref_label} (tolerance "
        f"{AGREE_TOL:g}); naive/torch: loss within {LOSS_TOL:.0%} of the reference's."
    )


def print_scaling_and_targets(
    scaling_rows: Sequence[Row],
    scaling_info: dict[str, Any],
    targets: Sequence[dict[str, Any]],
    backend: str,
) -> None:
    """The scaling and target tables."""
    if scaling_rows:
        print(
            f"\n## Scaling: {scaling_info['strategy']}, clients per round of a "
            f"{scaling_info['num_clients']}-client split\n"
        )
        print(scaling_table(scaling_rows))
    print(f"\n## Targets ({backend})\n")
    print(targets_table(targets))


def environment() -> dict[str, Any]:
    dev = jax.devices()[0]
    env = {
        "backend": jax.default_backend(),
        "device_kind": dev.device_kind,
        "device_count": jax.device_count(),
        "jax": jax.__version__,
        "jaxlib": _version("jaxlib"),
        "flax": _version("flax"),
        "optax": optax.__version__,
        "numpy": np.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpu_count": os.cpu_count(),
        "xla_flags": os.environ.get("XLA_FLAGS", ""),
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
    }
    if hasattr(os, "getloadavg"):
        env["loadavg_start"] = list(os.getloadavg())
    return env


def _version(name: str) -> str | None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(name)
    except PackageNotFoundError:
        return None


# ----------------------------------------------------------------------------------------------
# Main


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data-dir", default=None, help="Fashion-MNIST IDX folder (default: Debian's)")
    p.add_argument("--synthetic", action="store_true", help="random data of the same shape")
    p.add_argument("--clients", type=int, default=20, help="clients in the main table")
    p.add_argument(
        "--strategies",
        default=None,
        help="comma list of naive,sequential,vmap,chunked,sharded (default: those that make "
        "sense for the backend; 'sharded' only with several devices)",
    )
    p.add_argument("--step-blocks", default="1,8", help="ExecOptions.step_block for sequential")
    p.add_argument("--chunk-size", type=int, default=8, help="clients per chunk for 'chunked'")
    p.add_argument(
        "--buckets",
        default="1,6",
        help="Strategy.buckets values for the jitted strategies (1 = one group padded to the "
        "widest client): one row per value",
    )
    p.add_argument("--model", default="cnn", help="model of the round (cnn = FedAvgCNN)")
    p.add_argument("--unroll", type=int, default=1, help="scan unroll for jitted strategies")
    p.add_argument("--rounds", type=int, default=2, help="rounds per strategy (first compiles)")
    p.add_argument("--scaling", default="20,100,500", help="clients per round, scaling table")
    p.add_argument("--scaling-strategy", default=None, help="row label (default: the best)")
    p.add_argument("--torch", action="store_true", help="add a PyTorch per-client loop row")
    p.add_argument("--torch-threads", type=int, default=0, help="torch CPU threads (0: default)")
    p.add_argument(
        "--max-seconds",
        type=float,
        default=300.0,
        help="a row whose first round (or probe estimate) exceeds this runs no further rounds",
    )
    p.add_argument(
        "--probe-steps",
        type=int,
        default=None,
        help="time jitted strategies on this many steps per client first and skip them if the "
        "extrapolated round exceeds --max-seconds (default: 4 on CPU, 0 = off elsewhere)",
    )
    p.add_argument("--eval-repeats", type=int, default=2, help="timed evaluations after the first")
    p.add_argument("--cpu-devices", type=int, default=None, help="fake CPU devices (sharded)")
    p.add_argument("--epochs", type=int, default=1)
    p.add_argument("--batch-size", type=int, default=10)
    p.add_argument("--lr", type=float, default=0.005)
    p.add_argument("--alpha", type=float, default=0.1)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="results/bench_engine.json")
    p.add_argument("--quick", action="store_true", help="2,000 examples, 4 clients (smoke test)")
    args = p.parse_args(argv)
    if args.probe_steps is None:
        args.probe_steps = 4 if jax.default_backend() == "cpu" else 0
    if args.quick:
        args.clients = min(args.clients, 4)
        if args.scaling == p.get_default("scaling"):
            args.scaling = "2,4"
    return args


def default_strategies() -> list[str]:
    """Every strategy on every backend ('sharded' only with several devices); ``--max-seconds``
    stops the ones that are slow on this backend after their first round."""
    names = ["naive", "sequential", "vmap", "chunked"]
    return names + ["sharded"] if jax.device_count() > 1 else names


def build_runner(
    name: str,
    step_block: int | None,
    args: argparse.Namespace,
    ctx: dict[str, Any],
    ds: FederatedDataset,
    ids: np.ndarray,
) -> Runner:
    """The runner for strategy ``name`` on clients ``ids`` of ``ds``."""
    model, params0 = ctx["model"], ctx["params0"]
    if name == "naive":
        return NaiveRunner(
            model, ds, ids, params0, args.lr, args.batch_size, args.epochs, args.seed
        )
    if name == "torch":
        return TorchRunner(
            model,
            ds,
            ids,
            params0,
            args.lr,
            args.batch_size,
            args.epochs,
            args.seed,
            args.torch_threads,
        )
    exec_opts = ExecOptions(unroll=args.unroll, step_block=step_block)
    buckets = 1 if name == "sequential" else int(step_block or 1)
    if name != "sequential":
        exec_opts = ExecOptions(unroll=args.unroll, step_block=None)
    strategy = Strategy(name, chunk_size=args.chunk_size, exec=exec_opts, buckets=buckets)
    label = f"sequential(b={step_block})" if name == "sequential" else f"{name}[g={buckets}]"
    if name == "chunked":
        label = f"chunked({args.chunk_size})[g={buckets}]"

    return EngineRunner(
        label,
        ctx["algorithm"],
        strategy,
        ds,
        ids,
        params0,
        ctx["root"],
        ctx["pool"],
        args.batch_size,
        args.epochs,
    )


def row_specs(
    names: Sequence[str], step_blocks: Sequence[int], buckets: Sequence[int] = (1,)
) -> list[tuple[str, int | None]]:
    """(strategy, option) rows: the step block for ``sequential``, the bucket count for the
    jitted strategies, nothing for naive/torch."""
    specs: list[tuple[str, int | None]] = []
    for name in names:
        if name == "sequential":
            specs += [("sequential", b) for b in step_blocks]
        elif name in ENGINE:
            specs += [(name, g) for g in buckets]
        else:
            specs.append((name, None))
    return specs


def measure(
    specs: Sequence[tuple[str, int | None]],
    args: argparse.Namespace,
    ctx: dict[str, Any],
    ds: FederatedDataset,
    ids: np.ndarray,
    log: Callable[[str], None],
) -> tuple[list[Row], dict[str, PyTree], dict[str, Runner]]:
    """Build every runner (jitted ones compile here, timed apart) and run the rounds."""
    examples, steps = round_counts(ds, ids, args.batch_size, args.epochs)
    runners: list[Runner | None] = []
    rows: list[Row] = []
    for name, block in specs:
        label = f"{name}(b={block})" if name == "sequential" else name
        if name in ENGINE and name != "sequential":
            label = f"{name}[g={block}]"
        row = Row(label, name, len(ids), examples, steps, [], [])
        try:
            runner = build_runner(name, block, args, ctx, ds, ids)
            row.label = runner.label
            row.aot_compile_s = runner.compile_seconds
            row.padded_steps = runner.padded_steps
            if isinstance(runner, EngineRunner) and runner.strategy.jitted:
                row.groups = len(runner.host_inputs.groups)
            if runner.compile_seconds is not None:
                log(f"  {row.label}: compiled in {runner.compile_seconds:.2f} s")
            if isinstance(runner, EngineRunner) and runner.strategy.jitted and args.probe_steps:
                row.estimated_s, row.probe = runner.estimate(args.probe_steps)
                log(f"  {row.label}: estimated round {row.estimated_s:.1f} s ({row.probe})")
                if row.estimated_s > args.max_seconds:
                    row.cut = (
                        f"not run: estimated {row.estimated_s:,.0f} s > --max-seconds "
                        f"{args.max_seconds:g} ({row.probe})"
                    )
                    runner = None
            runners.append(runner)
        except Exception as e:
            row.error = f"{type(e).__name__}: {str(e).splitlines()[0][:200]}"
            log(f"  {label}: setup failed: {row.error}")
            runners.append(None)
        rows.append(row)
    after = run_rows(runners, rows, args.rounds, args.max_seconds, log)
    by_label = {r.label: rn for r, rn in zip(rows, runners) if rn is not None}
    return rows, after, by_label


def check_agreement(rows: Sequence[Row], after: dict[str, PyTree]) -> str | None:
    """Compare every engine row's round-1 params with the reference row's; returns its label.

    The reference is the sequential row with the smallest step block, else vmap, else the first
    engine row. Naive and torch rows are checked on loss only (their own batch orders).
    """
    engine = [r for r in rows if r.kind in ENGINE and r.label in after]
    if not engine:
        return None
    seq = sorted((r for r in engine if r.kind == "sequential"), key=lambda r: len(r.label))
    ref = (seq or [r for r in engine if r.kind == "vmap"] or engine)[0]
    for r in engine:
        r.max_abs_diff = max_abs_diff(after[r.label], after[ref.label])
        r.agrees = r.max_abs_diff <= AGREE_TOL
    ref_loss = ref.losses[0]
    for r in rows:
        if r.kind in ("naive", "torch") and r.losses:
            r.agrees = abs(r.losses[0] - ref_loss) <= LOSS_TOL * abs(ref_loss)
    return ref.label


def run_scaling(
    args: argparse.Namespace,
    ctx: dict[str, Any],
    raw: RawData,
    main_split: tuple[FederatedDataset, str],
    rows: Sequence[Row],
    best: Row | None,
    log: Callable[[str], None],
) -> tuple[list[Row], dict[str, Any]]:
    """One row per count of ``--scaling``: the chosen strategy on that many clients of a
    Dir(alpha) split of the same pool into the largest count."""
    counts = sorted({int(c) for c in args.scaling.split(",") if c.strip()})
    pick = args.scaling_strategy or (best.label if best else None)
    spec = next(((r.kind, _block_of(r.label)) for r in rows if r.label == pick), None)
    if spec is None and pick:  # a strategy that is not in the main table
        kind = pick.split("(")[0].split("[")[0]
        if kind not in ("naive", "torch", *ENGINE):
            raise SystemExit(f"--scaling-strategy {pick!r}: unknown strategy")
        spec = (kind, _block_of(pick) or 1)
    if not counts or spec is None:
        return [], {}
    big, part = (
        main_split if counts[-1] == args.clients else dirichlet_split(raw, counts[-1], args.alpha)
    )
    pool_ids = np.asarray(big.train_clients, np.int64)
    info = {
        "strategy": pick,
        "num_clients": big.num_clients,
        "partition": part,
        "train_examples": int(big.train.sizes.sum()),
    }
    log(f"scaling: {pick} on a {big.num_clients}-client split ({part})")
    ctx = {**ctx, "pool": (jnp.asarray(big.x), jnp.asarray(big.y))}
    out: list[Row] = []
    for m in counts:
        sel = np.sort(sample_clients(ctx["root"], 0, pool_ids, min(m, len(pool_ids))))
        out += measure([spec], args, ctx, big, sel, log)[0]
    return out, info


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    t_start = time.perf_counter()

    def log(msg: str) -> None:
        print(f"[{time.perf_counter() - t_start:7.1f}s] {msg}", flush=True)

    env = environment()
    backend = env["backend"]
    log(f"backend {backend} ({env['device_kind']} x{env['device_count']}), jax {env['jax']}")

    # Data
    tic = time.perf_counter()
    sizes = (1500, 500) if args.quick else (60_000, 10_000)
    if args.synthetic:
        raw = synthetic_raw(*sizes, seed=args.seed)
    else:
        raw = subsample(load_raw("fashion_mnist", args.data_dir), *sizes)
    ds, part_name = dirichlet_split(raw, args.clients, args.alpha)
    ids = np.asarray(ds.train_clients, np.int64)
    log(
        f"data {raw.name}: pool {len(ds.y):,}, {ds.num_clients} clients ({part_name}), "
        f"{int(ds.train.sizes.sum()):,} train examples, largest client "
        f"{int(ds.train.sizes.max()):,} ({time.perf_counter() - tic:.1f} s)"
    )

    model = get_model(args.model, ds.input_shape, ds.num_classes)
    root = jax.random.key(args.seed)
    params0 = model.init(jax.random.key(args.seed + 1), jnp.zeros((1, *ds.input_shape), jnp.uint8))
    config = FedAvgConfig(local_epochs=args.epochs, batch_size=args.batch_size, client_lr=args.lr)
    ctx = {
        "model": model,
        "params0": params0,
        "algorithm": fedavg(model, config),
        "root": root,
        "pool": (jnp.asarray(ds.x), jnp.asarray(ds.y)),
    }

    names = (
        [s.strip() for s in args.strategies.split(",") if s.strip()]
        if args.strategies
        else default_strategies()
    )
    unknown = sorted(set(names) - {"naive", "torch", *ENGINE})
    if unknown:
        raise SystemExit(
            f"unknown strategies {unknown}; choose from naive,torch,{','.join(ENGINE)}"
        )
    if args.torch and "torch" not in names:
        names.append("torch")
    if "torch" in names and not torch_available():
        names.remove("torch")
        log("torch is not importable: no torch row")
    step_blocks = [int(b) for b in args.step_blocks.split(",") if b.strip()]
    buckets = [int(b) for b in args.buckets.split(",") if b.strip()]

    # Main table
    log(f"main table: {len(ids)} clients per round, {args.rounds} rounds per strategy")
    rows, after, runners = measure(
        row_specs(names, step_blocks, buckets), args, ctx, ds, ids, log
    )
    ref_label = check_agreement(rows, after)
    naive = next((r for r in rows if r.kind == "naive" and r.round_s), None)
    engine_rows = [r for r in rows if r.kind in ENGINE and r.round_s and not r.error]
    best = max(engine_rows, key=lambda r: r.examples_per_s, default=None)

    # Evaluation (of the reference strategy's current global model)
    log("evaluation of every client's train and test examples")
    eval_params = params0
    if ref_label and ref_label in runners:
        eval_params = jax.tree.map(jnp.asarray, runners[ref_label].global_params())
    parts = [ds.train[k] for k in range(ds.num_clients)] + [
        ds.test[k] for k in range(ds.num_clients)
    ]
    eval_res = time_eval(model, eval_params, ctx["pool"], parts, args.eval_repeats)
    log(f"  {eval_res['examples']:,} examples: {eval_res['seconds']:.2f} s")
    del runners, after

    scaling_rows, scaling_info = run_scaling(args, ctx, raw, (ds, part_name), rows, best, log)

    targets = check_targets(
        backend,
        best,
        naive,
        eval_res,
        scaling_rows,
        applicable=not args.quick and not args.synthetic and args.clients == 20,
    )

    eval_s = eval_res["seconds"]
    print_main_report(args, env, raw.name, ds.num_clients, rows, naive, eval_res, ref_label)
    print_scaling_and_targets(scaling_rows, scaling_info, targets, backend)

    if hasattr(os, "getloadavg"):
        env["loadavg_end"] = list(os.getloadavg())
    result = {
        "environment": env,
        "settings": {
            **vars(args),
            "model": args.model,
            "dataset": raw.name,
            "partition": part_name,
            "pool_size": int(len(ds.y)),
            "train_examples": int(ds.train.sizes.sum()),
            "largest_client": int(ds.train.sizes.max()),
        },
        "main": [r.to_json(eval_s, naive) for r in rows],
        "agreement_reference": ref_label,
        "agreement_tolerance": AGREE_TOL,
        "best_strategy": best.label if best else None,
        "evaluation": eval_res,
        "scaling": {**scaling_info, "rows": [r.to_json(None, None) for r in scaling_rows]},
        "targets": targets,
        "total_seconds": time.perf_counter() - t_start,
    }
    if args.out:
        os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
        with open(args.out, "w") as f:
            json.dump(result, f, indent=2, default=_json_default)
        log(f"wrote {args.out}")
    return result


def _block_of(label: str) -> int | None:
    """The step block of a ``sequential(b=N)`` label, or the groups of a ``name[g=N]`` one."""
    if label.startswith("sequential(b="):
        return int(label[len("sequential(b=") : -1])
    if "[g=" in label:
        return int(label.split("[g=")[1].rstrip("]"))
    return None


def _json_default(obj: Any) -> Any:
    if isinstance(obj, np.integer | np.floating):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    return str(obj)


if __name__ == "__main__":
    main()
