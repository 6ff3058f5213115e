"""Engine benchmark: rounds of federated training per row, timed interleaved in one run.

Every row trains the same clients from the same initial weights (FedAvgCNN by default on
PFLlib's Fashion-MNIST Dir(0.1) split, B 10, E 1, SGD 0.005):

- engine rows: FedAvg through ``make_round`` for each ``--strategies`` × ``--conv``
  (``JAXPFL_CONV``: the CPU ``im2col`` formulation or XLA's own convolution) × ``--buckets``;
- ``naive``: a Python loop over clients and batches, one jitted SGD step per batch gathered on
  the host, on the engine's batch order (``fedavg.client_schedule``): the same round;
- ``torch`` (``--torch``): the same round in PyTorch — same initial weights, same per-client
  batch order, one ``optim.SGD`` step per batch, weighted average;
- ``torch_loader`` (``--torch``): PFLlib's client loop shape — per client per round a fresh
  ``DataLoader(list of (x, y), shuffle=True)`` (its own order), a deep copy of the global
  model, ``SGD``; it computes a different batch order, so only its loss is comparable;
- algorithm rows (``--algorithms``): Per-FedAvg FO / HF (fd, exact), FedALA or an experiment
  script's algorithm (fedprox, ditto, ...) on the first engine strategy, interleaved with a
  FedAvg row of their own, seconds per round beside FedAvg's (FedALA: its ALA stage apart;
  round 0 holds the start phase).

Timing: every row is built first and runs its round 0 (warm-up: it includes the compilations
of an eagerly dispatched strategy; reported apart as "first round s"). Then the ``--rounds``
timed rounds run interleaved, round by round: round 1 of every row in turn, then round 2 of
every row, ... (A, B, C, A, B, C, ...), so that a drift of the machine's speed during the run
reaches every row alike instead of the rows timed last. Each row's state advances on its own,
so its parameters after N rounds are those of N rounds run back to back.

Per row: compile seconds (where measured apart), the first round's seconds, the median and the
min seconds over the timed rounds and their spread ((max − min) / median), training examples
per second (from the median), the seconds relative to the reference row (the first engine
row; from the medians and from the mins), the last round's training loss, the largest
parameter difference to the reference row after the same rounds, and the useful-step share
(active / compiled steps). Plus the evaluation of the global model on every client's test
split. Figures printed and written as JSON (``--out``).

    python experiments/bench_engine.py --torch                      # CPU table
    python experiments/bench_engine.py --conv im2col,xla --strategies sequential,vmap
    python experiments/bench_engine.py --algorithms per_fedavg_fo,per_fedavg_hf,fedala
"""

from __future__ import annotations

import os
import sys


def _set_cpu_devices(argv: list[str]) -> None:
    """Honour ``--cpu-devices N`` before jax is imported (XLA reads the flag at start-up)."""
    for i, arg in enumerate(argv):
        value = argv[i + 1] if arg == "--cpu-devices" and i + 1 < len(argv) else None
        if arg.startswith("--cpu-devices="):
            value = arg.split("=", 1)[1]
        if value is not None and int(value) > 1:
            flag = f"--xla_force_host_platform_device_count={int(value)}"
            os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " " + flag).strip()


if __name__ == "__main__":
    _set_cpu_devices(sys.argv[1:])

import argparse  # noqa: E402
import copy  # noqa: E402
import dataclasses  # noqa: E402
import importlib.util  # noqa: E402
import json  # noqa: E402
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

from jaxpfl.algorithms.fedala import FedALAConfig, fedala  # noqa: E402
from jaxpfl.algorithms.fedavg import FedAvgConfig, client_schedule, fedavg  # noqa: E402
from jaxpfl.algorithms.per_fedavg import PerFedAvgConfig, per_fedavg  # noqa: E402
from jaxpfl.core import keys as K  # noqa: E402
from jaxpfl.core.engine import Algorithm, Strategy, make_round, place_inputs  # noqa: E402
from jaxpfl.core.evaluate import evaluate_global  # noqa: E402
from jaxpfl.core.rounds import round_inputs, stage_groups  # noqa: E402
from jaxpfl.core.train import ExecOptions  # noqa: E402
from jaxpfl.data.dataset import FederatedDataset, RawData  # noqa: E402
from jaxpfl.data.federate import federate  # noqa: E402
from jaxpfl.data.sources import load_raw  # noqa: E402
from jaxpfl.errors import DataError  # noqa: E402
from jaxpfl.machine import machine  # noqa: E402
from jaxpfl.models import get_model  # noqa: E402
from jaxpfl.models.base import Model  # noqa: E402
from jaxpfl.models.conv import conv_impl  # noqa: E402

PyTree = Any
ENGINE = ("sequential", "vmap", "chunked", "sharded")
ALGORITHMS = ("per_fedavg_fo", "per_fedavg_hf", "per_fedavg_hf_exact", "fedala")
#: Any other name: the experiment script experiments/<name>.py (fedprox, ditto, fedrep,
#: pfedme, ... : discovered) builds the algorithm from its ``pfllib`` preset (else its default
#: one) with this benchmark's --lr, --batch-size and --epochs.


# ----------------------------------------------------------------------------------------------
# Data


def synthetic_raw(n_train: int, n_test: int, seed: int = 0) -> RawData:
    """Random 28×28×1 uint8 images with 10 labels (shape-only stand-in for Fashion-MNIST)."""
    rng = np.random.default_rng(seed)

    def part(n: int) -> tuple[np.ndarray, np.ndarray]:
        return (rng.integers(0, 256, (n, 28, 28, 1), dtype=np.uint8),
                rng.integers(0, 10, n).astype(np.int32))

    return RawData("synthetic", *part(n_train), *part(n_test), 10)


def load_split(args: argparse.Namespace) -> tuple[FederatedDataset, str]:
    """PFLlib's Dir(α) split (its seed 1: at 20 clients and α 0.1 the split of ALGORITHMS.md
    §7.3); where its floor of 40 examples per client cannot be met the floor is lowered."""
    if args.synthetic or args.quick:
        raw = synthetic_raw(2_000 if args.quick else 60_000, 500 if args.quick else 10_000)
    else:
        raw = load_raw("fashion_mnist", args.data_dir)
    for batch in (10, 1):
        try:
            ds = federate(raw, "pfllib_dir", args.clients, alpha=args.alpha, train_frac=0.75,
                          seed=1, batch_size=batch)
            return ds, "pfllib_dir" + ("" if batch == 10 else " (least_samples 4)")
        except DataError:
            continue
    raise DataError(f"no Dir({args.alpha}) split of {args.clients} clients; raise --alpha")


# ----------------------------------------------------------------------------------------------
# Rows


@dataclasses.dataclass
class Row:
    """One row's figures. ``first_round_s``: round 0, the warm-up (it includes the compilations
    of an eagerly dispatched strategy); ``rounds``: the seconds of the timed rounds 1..R in
    order (run interleaved with the other rows); ``losses`` and ``stage_s``: every round from
    round 0."""

    label: str
    kind: str
    first_round_s: float | None = None
    rounds: list[float] = dataclasses.field(default_factory=list)
    losses: list[float] = dataclasses.field(default_factory=list)
    compile_s: float | None = None
    useful_share: float | None = None
    stage_s: list[float] = dataclasses.field(default_factory=list)
    max_param_diff: float | None = None
    note: str = ""

    def median_s(self) -> float:
        """Median seconds per timed round."""
        return float(np.median(self.rounds))

    def min_s(self) -> float:
        """Fastest timed round's seconds."""
        return float(np.min(self.rounds))

    def spread(self) -> float:
        """(max − min) / median of the timed rounds' seconds."""
        return float((np.max(self.rounds) - np.min(self.rounds)) / self.median_s())

    def summary(self, examples: int, ref: Row) -> dict[str, float]:
        """The derived figures (JSON): medians, mins, spread, examples/s, ratios to ``ref``."""
        return {"median_s": self.median_s(), "min_s": self.min_s(), "spread": self.spread(),
                "examples_per_s": examples / self.median_s(),
                "vs_ref_median": self.median_s() / ref.median_s(),
                "vs_ref_min": self.min_s() / ref.min_s()}


def host(tree: PyTree) -> PyTree:
    return jax.tree.map(np.asarray, tree)


def fresh(tree: PyTree) -> PyTree:
    """A new device copy (engine rounds donate their state)."""
    return jax.tree.map(lambda a: jnp.array(a, copy=True), tree)


def mean_loss(losses: Sequence[float], steps: Sequence[int]) -> float:
    """Mean per-step training loss over the round (client means weighted by their steps)."""
    s = np.asarray(steps, np.float64)
    return float(np.sum(np.asarray(losses, np.float64) * s) / max(s.sum(), 1.0))


def batch_order(cfg: FedAvgConfig, root: jax.Array, t: int, k: int, n: int) -> list[np.ndarray]:
    """Client k's batches in round t as local positions (the engine's order, padding dropped)."""
    sched = client_schedule(cfg, K.derive(root, K.DATA, t, k), n, n)
    pos, valid = np.asarray(sched.positions), np.asarray(sched.valid)
    return [p[v] for p, v in zip(pos, valid) if v.any()]


class EngineRow:
    """An algorithm's rounds through ``make_round`` on fixed clients (all of them)."""

    def __init__(self, row: Row, alg: Algorithm, strategy: Strategy, ds: FederatedDataset,
                 params0: PyTree, root: jax.Array, pool: tuple[jax.Array, jax.Array]):
        self.row, self.alg, self.strategy, self.root = row, alg, strategy, root
        ids = np.asarray(ds.train_clients)
        self.m = len(ids)
        stage = stage_groups(ds, strategy) if alg.client_stage is not None else None
        self.inputs = place_inputs(round_inputs(ds, ids, strategy, stage=stage), strategy)
        self.x, self.y = pool
        if strategy.name == "sharded":  # the pool replicated on the mesh once
            rep = jax.sharding.NamedSharding(strategy.mesh(), jax.sharding.PartitionSpec())
            self.x, self.y = jax.device_put(self.x, rep), jax.device_put(self.y, rep)
        self.state = alg.init(root, fresh(params0), ds.num_clients)
        self.call = make_round(alg, strategy)
        if strategy.jitted:
            tic = time.perf_counter()
            args = (self.state, self.x, self.y, self.inputs, jnp.int32(0), root)
            self.call = self.call.lower(*args).compile()
            row.compile_s = time.perf_counter() - tic

    def round(self, t: int) -> float:
        """Round t; returns its seconds (the losses and stage seconds go to the row)."""
        tic = time.perf_counter()
        self.state, out = self.call(self.state, self.x, self.y, self.inputs, jnp.int32(t),
                                    self.root)
        jax.block_until_ready((self.state, out))
        seconds = time.perf_counter() - tic
        if "stage" in out.seconds:
            self.row.stage_s.append(out.seconds["stage"])
        m = out.metrics
        steps = np.asarray(m["steps"])[: self.m]
        self.row.losses.append(mean_loss(np.asarray(m["train_loss"])[: self.m], steps))
        if "compiled_steps" in m:
            self.row.useful_share = float(steps.sum() / max(np.sum(m["compiled_steps"]), 1))
        return seconds

    def params(self) -> PyTree:
        glob = self.alg.global_params
        return host(glob(self.state.server)) if glob else None


class NaiveRow:
    """One jitted SGD step per batch from a Python loop over clients and batches; batches
    gathered on the host (NumPy) in the engine's order and sent per step."""

    def __init__(self, row: Row, model: Model, ds: FederatedDataset, params0: PyTree,
                 cfg: FedAvgConfig, root: jax.Array):
        self.row, self.cfg, self.root = row, cfg, root
        self.x, self.y = np.asarray(ds.x), np.asarray(ds.y)
        self.parts = [np.asarray(ds.train[int(k)]) for k in ds.train_clients]
        self.ids = [int(k) for k in ds.train_clients]
        self.params = fresh(params0)
        lr, b = cfg.client_lr, cfg.batch_size

        def loss_fn(p, xb, yb, w):
            ce = optax.softmax_cross_entropy_with_integer_labels(
                model.apply(p, xb).astype(jnp.float32), yb)
            return jnp.sum(ce * w) / jnp.maximum(jnp.sum(w), 1.0)

        @jax.jit
        def step(p, xb, yb, w):
            loss, g = jax.value_and_grad(loss_fn)(p, xb, yb, w)
            return jax.tree.map(lambda a, ga: a - lr * ga, p, g), loss

        self.step, self.b = step, b

    def round(self, t: int) -> float:
        """Round t; returns its seconds (the loss goes to the row)."""
        b, total = self.b, sum(len(p) for p in self.parts)
        tic = time.perf_counter()
        acc = jax.tree.map(jnp.zeros_like, self.params)
        losses, counts = [], []
        for k, part in zip(self.ids, self.parts):
            params, loss_sum, steps = self.params, 0.0, 0
            for pos in batch_order(self.cfg, self.root, t, k, len(part)):
                idx = np.zeros(b, np.int64)
                idx[: len(pos)] = part[pos]
                w = (np.arange(b) < len(pos)).astype(np.float32)
                params, loss = self.step(params, self.x[idx], self.y[idx], w)
                loss_sum, steps = loss_sum + loss, steps + 1
            acc = jax.tree.map(lambda a, p, wk=len(part) / total: a + wk * p, acc, params)
            losses.append(float(loss_sum) / max(steps, 1))
            counts.append(steps)
        self.params = jax.block_until_ready(acc)
        seconds = time.perf_counter() - tic
        self.row.losses.append(mean_loss(losses, counts))
        return seconds

    def params_host(self) -> PyTree:
        return host(self.params)


def torch_cnn(torch: Any, model: Model) -> Any:
    """PFLlib's FedAvgCNN in PyTorch (NCHW)."""
    if model.name != "cnn":
        raise DataError("--torch rows exist for --model cnn (FedAvgCNN) only")
    nn = torch.nn
    h, _, c = model.input_shape
    side = ((h - 4) // 2 - 4) // 2
    return nn.Sequential(
        nn.Conv2d(c, 32, 5), nn.ReLU(), nn.MaxPool2d(2), nn.Conv2d(32, 64, 5), nn.ReLU(),
        nn.MaxPool2d(2), nn.Flatten(), nn.Linear(64 * side * side, 512), nn.ReLU(),
        nn.Linear(512, model.num_classes),
    )


def flax_to_torch(params: PyTree, model: Model) -> dict[str, np.ndarray]:
    """FedAvgCNN weights (HWIO kernels, (H, W, C) flatten) as the state dict of
    :func:`torch_cnn` (OIHW kernels, (C, H, W) flatten)."""
    p = host(params)["params"]
    side = ((model.input_shape[0] - 4) // 2 - 4) // 2
    fc1 = p["fc1"]["kernel"].reshape(side, side, 64, -1).transpose(3, 2, 0, 1)
    return {
        "0.weight": p["conv1"]["kernel"].transpose(3, 2, 0, 1), "0.bias": p["conv1"]["bias"],
        "3.weight": p["conv2"]["kernel"].transpose(3, 2, 0, 1), "3.bias": p["conv2"]["bias"],
        "7.weight": fc1.reshape(fc1.shape[0], -1), "7.bias": p["fc1"]["bias"],
        "9.weight": p["fc"]["kernel"].T, "9.bias": p["fc"]["bias"],
    }


def torch_to_flax(state: dict[str, Any], like: PyTree, model: Model) -> PyTree:
    """The inverse of :func:`flax_to_torch` (for the parameter comparison)."""
    side = ((model.input_shape[0] - 4) // 2 - 4) // 2
    s = {k: v.detach().cpu().numpy() for k, v in state.items()}
    fc1 = s["7.weight"].reshape(-1, 64, side, side).transpose(2, 3, 1, 0).reshape(-1, 512)
    out = {"conv1": {"kernel": s["0.weight"].transpose(2, 3, 1, 0), "bias": s["0.bias"]},
           "conv2": {"kernel": s["3.weight"].transpose(2, 3, 1, 0), "bias": s["3.bias"]},
           "fc1": {"kernel": fc1, "bias": s["7.bias"]},
           "fc": {"kernel": s["9.weight"].T, "bias": s["9.bias"]}}
    return jax.tree.map(lambda a, b: np.asarray(a, b.dtype), {"params": out}, host(like))


class TorchRow:
    """The round in PyTorch. ``loader=False``: the engine's batch order on tensors prepared
    once; ``loader=True``: PFLlib's shape (per client per round a DataLoader over a list of
    (x, y) pairs, ``shuffle=True``, a deep copy of the global model)."""

    def __init__(self, row: Row, model: Model, ds: FederatedDataset, params0: PyTree,
                 cfg: FedAvgConfig, root: jax.Array, loader: bool, seed: int):
        import torch

        self.torch, self.row, self.cfg, self.root, self.loader = torch, row, cfg, root, loader
        self.model, self.like = model, params0
        self.net = torch_cnn(torch, model)
        self.net.load_state_dict({k: torch.from_numpy(np.array(v, copy=True))
                                  for k, v in flax_to_torch(params0, model).items()})
        x = (np.asarray(ds.x, np.float32) / 255.0 - 0.5) / 0.5  # FedAvgCNN's normalisation
        x = torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2)))
        y = torch.from_numpy(np.asarray(ds.y, np.int64))
        self.ids = [int(k) for k in ds.train_clients]
        self.parts = [np.asarray(ds.train[k]) for k in self.ids]
        self.cx = [x[torch.from_numpy(p)] for p in self.parts]
        self.cy = [y[torch.from_numpy(p)] for p in self.parts]
        self.gen = torch.Generator().manual_seed(seed)
        row.note = f"torch {torch.__version__}, {torch.get_num_threads()} threads"

    def _batches(self, t: int, i: int):
        xk, yk = self.cx[i], self.cy[i]
        if not self.loader:
            for pos in batch_order(self.cfg, self.root, t, self.ids[i], len(xk)):
                idx = self.torch.from_numpy(pos.astype(np.int64))
                yield xk[idx], yk[idx]
            return
        data = [(xk[j], yk[j]) for j in range(len(xk))]
        yield from self.torch.utils.data.DataLoader(
            data, batch_size=self.cfg.batch_size, shuffle=True, generator=self.gen)

    def round(self, t: int) -> float:
        """Round t; returns its seconds (the loss goes to the row)."""
        torch = self.torch
        total = sum(len(p) for p in self.parts)
        tic = time.perf_counter()
        acc = {k: torch.zeros_like(v) for k, v in self.net.state_dict().items()}
        losses, counts = [], []
        for i in range(len(self.ids)):
            local = copy.deepcopy(self.net)
            opt = torch.optim.SGD(local.parameters(), lr=self.cfg.client_lr)
            loss_sum, steps = torch.zeros(()), 0
            for _ in range(self.cfg.local_epochs if self.loader else 1):
                for xb, yb in self._batches(t, i):
                    loss = torch.nn.functional.cross_entropy(local(xb), yb)
                    opt.zero_grad(set_to_none=True)
                    loss.backward()
                    opt.step()
                    loss_sum += loss.detach()
                    steps += 1
            w = len(self.parts[i]) / total
            for k, v in local.state_dict().items():
                acc[k] += w * v
            losses.append(float(loss_sum) / max(steps, 1))
            counts.append(steps)
        self.net.load_state_dict(acc)
        seconds = time.perf_counter() - tic
        self.row.losses.append(mean_loss(losses, counts))
        return seconds

    def params_host(self) -> PyTree:
        return torch_to_flax(self.net.state_dict(), self.like, self.model)


# ----------------------------------------------------------------------------------------------
# Running


def strategy_of(name: str, args: argparse.Namespace, buckets: int) -> Strategy:
    """``name`` is a strategy, or ``sequential@D``: sequential with clients round-robin over
    D local devices (``--cpu-devices D`` on a CPU)."""
    name, _, devices = name.partition("@")
    block = args.step_block if name == "sequential" else None
    return Strategy(name, chunk_size=args.chunk_size, buckets=buckets,
                    num_devices=int(devices) if devices else None,
                    exec=ExecOptions(unroll=1, step_block=block))


def algorithm_of(name: str, model: Model, args: argparse.Namespace,
                 dataset: Any = None) -> Algorithm:
    lr, b = args.lr, args.batch_size
    if name.startswith("per_fedavg"):
        variant = "fo" if name.endswith("_fo") else "hf"
        hvp = "exact" if name.endswith("_exact") else "fd"
        cfg = PerFedAvgConfig(inner_lr=lr, outer_lr=lr, variant=variant, hvp=hvp,
                              batch_size=b, epochs=args.epochs, weighted=True)
        return per_fedavg(model, cfg)
    if name == "fedala":
        return fedala(model, FedALAConfig(client_lr=lr, batch_size=b, local_epochs=args.epochs,
                                          drop_last=True))
    path = os.path.join(_ROOT, "experiments", f"{name}.py")
    if not name.isidentifier() or not os.path.exists(path):
        raise DataError(f"--algorithms: unknown {name!r}; use {', '.join(ALGORITHMS)} or the "
                        "name of an experiment script (fedprox, ditto, fedrep, pfedme, ...)")
    spec = importlib.util.spec_from_file_location(f"_bench_script_{name}", path)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod
    spec.loader.exec_module(mod)
    preset = "pfllib" if "pfllib" in mod.CLI.presets else mod.CLI.default_preset
    parsed = mod.CLI.parse(["--preset", preset, "--no-progress", "--lr", str(lr),
                            "--batch-size", str(b), "--local-epochs", str(args.epochs)])
    return mod.CLI.build(parsed, model, dataset)


def param_diff(a: PyTree, b: PyTree) -> float:
    return max(float(np.max(np.abs(np.asarray(x, np.float64) - np.asarray(y, np.float64))))
               for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))


Order = list[tuple[str, int]]


def run_interleaved(builders: Sequence[tuple[Row, str, Callable[[], Any]]], rounds: int,
                    log: Callable[[str], None], order: Order | None = None
                    ) -> list[tuple[Row, Any]]:
    """Build every row and run its round 0 (the warm-up: compilations), each under its own
    ``JAXPFL_CONV``; then time rounds 1..``rounds`` interleaved: round t of every row in turn
    before round t + 1 of any (A, B, C, A, B, C, ...). Each runner keeps its own state, so a
    row's parameters after N rounds do not depend on the order. ``order`` (if given) receives
    (label, round) in the order run.

    The formulation is read at trace time, and every row traces programs of its own: the jitted
    strategies compile ahead of time in their builder, the eager ``sequential`` blocks are
    cached per step function (one per algorithm object, i.e. per row), the naive row jits its
    own step. So the compilation caches are cleared once before the builds, not between rows:
    clearing them would drop the earlier rows' eager programs and recompile them inside the
    timed rounds. (A later row's first round may thus skip a compilation of a small shared
    helper that an earlier row already paid.) The variable is set again before every round,
    so a row that traces anew later still gets its own formulation."""
    jax.clear_caches()
    built = []
    for row, conv, make in builders:
        os.environ["JAXPFL_CONV"] = conv
        if row.kind in ENGINE or row.kind == "naive":
            row.note = (row.note + " " if row.note else "") + f"conv {conv_impl()}"
        runner = make()
        if row.compile_s is not None:
            log(f"  {row.label}: compiled in {row.compile_s:.1f} s")
        row.first_round_s = runner.round(0)
        if order is not None:
            order.append((row.label, 0))
        log(_round_line(row, 0, row.first_round_s) + " (warm-up)")
        built.append((row, conv, runner))
    for t in range(1, rounds + 1):
        for row, conv, runner in built:
            os.environ["JAXPFL_CONV"] = conv
            row.rounds.append(runner.round(t))
            if order is not None:
                order.append((row.label, t))
            log(_round_line(row, t, row.rounds[-1]))
    os.environ["JAXPFL_CONV"] = "auto"
    jax.clear_caches()
    return [(row, runner) for row, _, runner in built]


def _round_line(row: Row, t: int, seconds: float) -> str:
    stage = f", stage {row.stage_s[-1]:.2f} s" if row.stage_s else ""
    return f"  {row.label}: round {t}: {seconds:.2f} s{stage}, loss {row.losses[-1]:.4f}"


def _pct(x: float) -> str:
    return f"{100 * x:.1f}%"


def table(rows: Sequence[Row], examples: int, ref: Row) -> str:
    out = ["| row | compile s | first round s | median round s | min round s | spread | "
           "examples/s | ÷ ref (median) | ÷ ref (min) | loss | max abs Δparams | "
           "useful steps | note |", "|" + "---|" * 13]
    for r in rows:
        diff = "" if r.max_param_diff is None else f"{r.max_param_diff:.1e}"
        share = "" if r.useful_share is None else f"{100 * r.useful_share:.0f}%"
        comp = "" if r.compile_s is None else f"{r.compile_s:.1f}"
        out.append(f"| {r.label} | {comp} | {r.first_round_s:.2f} | {r.median_s():.2f} | "
                   f"{r.min_s():.2f} | {_pct(r.spread())} | {examples / r.median_s():,.0f} | "
                   f"{r.median_s() / ref.median_s():.2f}x | {r.min_s() / ref.min_s():.2f}x | "
                   f"{r.losses[-1]:.4f} | {diff} | {share} | {r.note} |")
    return "\n".join(out)


def alg_table(rows: Sequence[Row], base: Row) -> str:
    out = ["| algorithm | first round s | median round s | min round s | spread | "
           "÷ FedAvg (median) | ÷ FedAvg (min) | stage s (round 0 / median timed) | "
           "stage share |", "|" + "---|" * 9]
    for r in rows:
        st = share = ""
        if r.stage_s:
            timed = float(np.median(r.stage_s[1:])) if len(r.stage_s) > 1 else r.stage_s[0]
            st, share = f"{r.stage_s[0]:.2f} / {timed:.2f}", f"{100 * timed / r.median_s():.0f}%"
        out.append(f"| {r.label} | {r.first_round_s:.2f} | {r.median_s():.2f} | "
                   f"{r.min_s():.2f} | {_pct(r.spread())} | "
                   f"{r.median_s() / base.median_s():.2f}x | {r.min_s() / base.min_s():.2f}x | "
                   f"{st} | {share} |")
    return "\n".join(out)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data-dir", help="Fashion-MNIST IDX folder (default: Debian's)")
    p.add_argument("--synthetic", action="store_true", help="random data of the same shape")
    p.add_argument("--quick", action="store_true", help="2,000 synthetic examples (smoke test)")
    p.add_argument("--clients", type=int, default=20, help="clients (all train every round)")
    p.add_argument("--alpha", type=float, default=0.1, help="Dirichlet α of the split")
    p.add_argument("--model", default="cnn", help="model (cnn = FedAvgCNN)")
    p.add_argument("--strategies", default="sequential",
                   help=f"comma list of {', '.join(ENGINE)}")
    p.add_argument("--conv", default="auto",
                   help="comma list of JAXPFL_CONV values for the engine rows (auto, im2col, xla)")
    p.add_argument("--buckets", default="6", help="Strategy.buckets of the jitted strategies")
    p.add_argument("--step-block", type=int, default=64, help="steps per call (sequential)")
    p.add_argument("--chunk-size", type=int, default=8, help="clients per chunk (chunked)")
    p.add_argument("--no-naive", action="store_true", help="leave the naive row out")
    p.add_argument("--torch", action="store_true", help="add the torch and torch_loader rows")
    p.add_argument("--algorithms", default="", help=f"comma list of {', '.join(ALGORITHMS)}")
    p.add_argument("--rounds", type=int, default=3,
                   help="timed rounds per row, after an untimed warm-up round 0 (interleaved)")
    p.add_argument("--eval-repeats", type=int, default=2, help="timed evaluations")
    p.add_argument("--batch-size", type=int, default=10)
    p.add_argument("--epochs", type=int, default=1)
    p.add_argument("--lr", type=float, default=0.005)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--cpu-devices", type=int, default=1, help="fake CPU devices (sharded)")
    p.add_argument("--out", help="JSON file")
    args = p.parse_args(argv)
    if args.rounds < 1:
        p.error("--rounds: at least 1 timed round")
    if args.quick:
        args.clients, args.rounds = min(args.clients, 4), min(args.rounds, 2)
    return args


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    start = time.perf_counter()

    def log(msg: str) -> None:
        print(f"[{time.perf_counter() - start:7.1f}s] {msg}", flush=True)

    ds, split = load_split(args)
    model = get_model(args.model, ds.input_shape, ds.num_classes)
    root = jax.random.key(args.seed)
    params0 = host(model.init(K.derive(root, K.INIT), jnp.zeros((1,) + ds.input_shape,
                                                                 jnp.uint8)))
    pool = (jnp.asarray(ds.x), jnp.asarray(ds.y))
    examples = sum(len(ds.train[int(k)]) for k in ds.train_clients) * args.epochs
    cfg = FedAvgConfig(client_lr=args.lr, batch_size=args.batch_size, local_epochs=args.epochs)
    log(f"{jax.default_backend()} x{len(jax.devices())}, jax {jax.__version__}; {args.clients} "
        f"clients ({split}), {examples:,} training examples per round, model {args.model}")

    builders: list[tuple[Row, str, Callable[[], Any]]] = []
    convs = [c.strip() for c in args.conv.split(",") if c.strip()]
    for conv in convs:
        for name in [s.strip() for s in args.strategies.split(",") if s.strip()]:
            eager = name.partition("@")[0] == "sequential"
            for g in ([1] if eager else [int(v) for v in args.buckets.split(",")]):
                label = name + (f"[g={g}]" if not eager else f"(b={args.step_block})")
                label += f" {conv}" if len(convs) > 1 else ""
                row = Row(label, name.partition("@")[0])
                builders.append((row, conv, lambda row=row, name=name, g=g: EngineRow(
                    row, fedavg(model, cfg), strategy_of(name, args, g), ds, params0, root,
                    pool)))
    if not args.no_naive:
        row = Row("naive", "naive")
        builders.append((row, "auto", lambda row=row: NaiveRow(row, model, ds, params0, cfg,
                                                               root)))
    if args.torch:
        for loader in (False, True):
            row = Row("torch_loader" if loader else "torch", "torch")
            builders.append((row, "auto", lambda row=row, loader=loader: TorchRow(
                row, model, ds, params0, cfg, root, loader, args.seed)))
    order: Order = []
    built = run_interleaved(builders, args.rounds, log, order)
    ref_row, ref = next(((r, x) for r, x in built if r.kind in ENGINE), built[0])
    ref_params = ref.params() if isinstance(ref, EngineRow) else ref.params_host()
    for r, x in built:
        p = x.params() if isinstance(x, EngineRow) else x.params_host()
        if r is not ref_row and r.label != "torch_loader":
            r.max_param_diff = param_diff(p, ref_params)
    total = args.rounds + 1
    print(f"\nFedAvg, {args.model}, B {args.batch_size}, E {args.epochs}, {args.clients} clients "
          f"per round, {examples:,} examples.\nRows interleaved round by round: {args.rounds} "
          f"timed rounds per row after its warm-up round 0 (first round s); spread = (max − "
          f"min) / median; examples/s from the median;\n÷ ref = seconds relative to "
          f"{ref_row.label}'s (> 1: slower), from the medians and from the mins; loss of round "
          f"{args.rounds}; Δparams vs {ref_row.label} after {total} rounds (torch_loader: its "
          f"own batch order)\n")
    rows = [r for r, _ in built]
    print(table(rows, examples, ref_row))

    alg_rows: list[Row] = []
    names = [a.strip() for a in args.algorithms.split(",") if a.strip()]
    if names:
        first = next(s.strip() for s in args.strategies.split(","))
        strat = strategy_of(first, args, int(args.buckets.split(",")[0]))
        alg_builders = []
        for name in ["fedavg", *names]:
            row = Row(name, first)

            def make_alg(row=row, name=name):
                alg = (fedavg(model, cfg) if name == "fedavg"
                       else algorithm_of(name, model, args, ds))
                return EngineRow(row, alg, strat, ds, params0, root, pool)

            alg_builders.append((row, convs[0], make_alg))
        log(f"algorithms on {first}")
        alg_rows = [r for r, _ in run_interleaved(alg_builders, args.rounds, log, order)]
        print(f"\nAlgorithms on {first} (same clients and batch size; interleaved with FedAvg "
              f"round by round, {args.rounds} timed rounds per row after its warm-up round 0; "
              f"÷ FedAvg = seconds relative to FedAvg's (> 1: slower) from the medians and "
              f"from the mins; FedALA's stage = ALA on every client, round 0 = start phase)\n")
        print(alg_table(alg_rows, alg_rows[0]))

    test = [np.asarray(ds.test[int(k)]) for k in ds.train_clients]
    w = jax.tree.map(jnp.asarray, ref_params)
    evaluate_global(model, w, pool[0], pool[1], test)  # compiles
    times = []
    for _ in range(max(args.eval_repeats, 1)):
        tic = time.perf_counter()
        evaluate_global(model, w, pool[0], pool[1], test)
        times.append(time.perf_counter() - tic)
    n_test = sum(len(t) for t in test)
    print(f"\nevaluation of the global model on every client's test split: {n_test:,} examples "
          f"in {min(times):.2f} s ({n_test / min(times):,.0f} examples/s)")

    result = {
        "settings": {k: v for k, v in vars(args).items()},
        "split": split,
        "examples_per_round": examples,
        "machine": machine(),
        "timing": {"interleaved": True, "timed_rounds": args.rounds, "warmup_rounds": 1,
                   "ref": ref_row.label, "order": order},
        "rows": [dataclasses.asdict(r) | r.summary(examples, ref_row) for r in rows],
        "algorithms": [dataclasses.asdict(r) | r.summary(examples, alg_rows[0])
                       for r in alg_rows],
        "evaluation": {"examples": n_test, "seconds": min(times)},
    }
    if args.out:
        os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
        with open(args.out, "w") as f:
            json.dump(result, f, indent=1)
        log(f"wrote {args.out}")
    return result


if __name__ == "__main__":
    main()
