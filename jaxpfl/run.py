"""The driver: the single round loop.

Samples clients, calls the compiled round, evaluates on a cadence, logs JSON lines, shows a
progress bar, checkpoints with orbax, resumes, and stops on non-finite values. Everything
random is keyed by (seed, purpose, round, client), so a resumed run equals an uninterrupted one.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import time
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxpfl.core import keys as K
from jaxpfl.core.engine import (
    Algorithm,
    RoundInputs,
    State,
    Strategy,
    make_round,
    mapped,
    place_inputs,
)
from jaxpfl.core.train import ClientData
from jaxpfl.core.tree import all_finite
from jaxpfl.data.dataset import ClientIndex, FederatedDataset

PyTree = Any


class RunError(RuntimeError):
    """A run cannot continue (non-finite values, incompatible resume); one-line message."""


@dataclasses.dataclass(frozen=True)
class Phase:
    """``rounds`` rounds of ``algorithm``; the next phase starts from this one's global model."""

    name: str
    algorithm: Algorithm
    rounds: int
    clients_per_round: int | float = 1.0  # count (int ≥ 1) or participation fraction C


@dataclasses.dataclass(frozen=True)
class RunConfig:
    seed: int = 0
    eval_every: int = 1
    out: str | None = None
    checkpoint_every: int = 0  # 0: only at the end (when out is set)
    resume: bool = False
    progress: bool = True
    strategy: Strategy = Strategy()
    config_for_hash: str = ""  # a JSON description of the experiment (resume refuses another)


EvalFn = Callable[[State, int, bool], dict[str, float]]


def clients_per_round(spec: int | float, num: int) -> int:
    """M = max(1, ⌊C·K⌋) for a fraction C ≤ 1 given as float, else the count itself (≤ K)."""
    if isinstance(spec, float) and spec <= 1.0:
        if spec <= 0:
            raise ValueError("clients per round must be > 0")
        return max(1, math.floor(spec * num))
    m = int(spec)
    if m < 1 or m > num:
        raise ValueError(
            f"clients per round {m} is not in [1, {num}] (the number of training clients); "
            "lower --clients"
        )
    return m


def sample_clients(root: jax.Array, t: int, pool: np.ndarray, m: int) -> np.ndarray:
    """S_t: m clients uniform without replacement from ``pool``, keyed by (SELECT, t)."""
    if m == len(pool):
        return np.asarray(pool)
    pick = jax.random.choice(K.derive(root, K.SELECT, t), len(pool), (m,), replace=False)
    return np.asarray(pool)[np.asarray(pick)]


def _bucket_width(max_sel: int, global_width: int) -> int:
    """Index-row width for a round: the selected maximum rounded up to 1/8 of the global one
    (at most 8 compiled shapes, at most 12.5% extra masked steps)."""
    q = max(1, -(-global_width // 8))
    return int(min(global_width, max(1, -(-max_sel // q) * q)))


def round_inputs(ds: FederatedDataset, ids: np.ndarray, multiple: int) -> RoundInputs:
    """Padded training index rows of the selected clients; padded to a multiple of clients."""
    global_width = int(max(1, ds.train.sizes.max(initial=0)))
    width = _bucket_width(int(ds.train.sizes[ids].max(initial=0)), global_width)
    idx, n = ds.train.padded(ids, width)
    pad = (-len(ids)) % multiple
    mask = np.ones(len(ids) + pad, np.float32)
    if pad:
        mask[len(ids) :] = 0
        ids = np.concatenate([ids, np.full(pad, ds.num_clients, ids.dtype)])
        idx = np.concatenate([idx, np.zeros((pad, width), idx.dtype)])
        n = np.concatenate([n, np.zeros(pad, n.dtype)])
    return RoundInputs(ids.astype(np.int32), idx, n, mask)


class ClientEvaluator:
    """Maps a one-client evaluation ``fn(params, support, query, key)`` over clients.

    ``support`` and ``query`` are per-client index lists (e.g. an evaluation client's own
    train/test split); rows are padded to the widest client once, so every call with the same
    number of clients reuses one compilation. Returns numpy outputs for the real rows only.
    """

    def __init__(
        self,
        fn: Callable,
        x: jax.Array,
        y: jax.Array,
        support: Sequence[np.ndarray],
        query: Sequence[np.ndarray],
        strategy: Strategy,
    ):
        self.x, self.y, self.strategy = x, y, strategy
        self.support = ClientIndex.from_lists(list(support))
        self.query = ClientIndex.from_lists(list(query))
        self.widths = (
            int(max(1, self.support.sizes.max(initial=1))),
            int(max(1, self.query.sizes.max(initial=1))),
        )

        def one(shared, pc):
            params, xs, ys = shared
            s_idx, s_n, q_idx, q_n, key = pc
            sup = ClientData(s_idx, s_n, xs, ys, exec=strategy.exec)
            qry = ClientData(q_idx, q_n, xs, ys, exec=strategy.exec)
            return fn(params, sup, qry, key)

        self._call = mapped(one, strategy)

    def __call__(self, params: PyTree, rows: np.ndarray, keys: jax.Array):
        rows = np.asarray(rows, np.int64)
        m = len(rows)
        pad = (-m) % self.strategy.client_multiple
        rows_p = np.concatenate([rows, np.repeat(rows[:1], pad)])
        s_idx, s_n = self.support.padded(rows_p, self.widths[0])
        q_idx, q_n = self.query.padded(rows_p, self.widths[1])
        keys = jnp.concatenate([keys, jnp.repeat(keys[:1], pad, axis=0)]) if pad else keys
        per_client = (s_idx, s_n, q_idx, q_n, keys)
        if self.strategy.name == "sharded":
            from jax.sharding import NamedSharding
            from jax.sharding import PartitionSpec as P

            sh = NamedSharding(self.strategy.mesh(), P("clients"))
            per_client = jax.tree.map(lambda a: jax.device_put(jnp.asarray(a), sh), per_client)
        else:
            per_client = jax.tree.map(jnp.asarray, per_client)
        out = self._call((params, self.x, self.y), per_client)
        return jax.tree.map(lambda a: np.asarray(a)[:m], out)


def _phase_at(phases: Sequence[Phase], t: int) -> tuple[int, int]:
    """(phase index, first round of that phase) for global round t."""
    start = 0
    for i, ph in enumerate(phases):
        if t < start + ph.rounds:
            return i, start
        start += ph.rounds
    return len(phases) - 1, start - phases[-1].rounds


def _config_hash(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:16]


class _Checkpoints:
    """Orbax checkpoints of (state, round) plus the experiment's config hash."""

    def __init__(self, out: str, config_text: str):
        import orbax.checkpoint as ocp

        self.ocp = ocp
        self.dir = os.path.abspath(os.path.join(out, "checkpoints"))
        self.meta_path = os.path.join(out, "checkpoints.json")
        self.hash = _config_hash(config_text)
        self.manager = ocp.CheckpointManager(
            self.dir, options=ocp.CheckpointManagerOptions(max_to_keep=2, create=True)
        )

    def latest(self) -> int | None:
        if not os.path.exists(self.meta_path):
            return None
        with open(self.meta_path) as f:
            meta = json.load(f)
        if meta.get("config_hash") != self.hash:
            raise RunError(
                f"refusing to resume from {self.dir}: it was written by another configuration "
                f"({meta.get('config_hash')} != {self.hash}); use a new --out or drop --resume"
            )
        return self.manager.latest_step()

    def save(self, t: int, state: State) -> None:
        self.manager.save(t, args=self.ocp.args.StandardSave({"state": state}))
        self.manager.wait_until_finished()
        with open(self.meta_path, "w") as f:
            json.dump({"config_hash": self.hash, "round": t}, f)

    def restore(self, t: int, like: State) -> State:
        abstract = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype), {"state": like})
        got = self.manager.restore(t, args=self.ocp.args.StandardRestore(abstract))
        return got["state"]


def run(
    phases: Sequence[Phase],
    dataset: FederatedDataset,
    init_params: Callable[[jax.Array], PyTree],
    evaluate: EvalFn,
    config: RunConfig = RunConfig(),
    pool: tuple[jax.Array, jax.Array] | None = None,
) -> dict[str, Any]:
    """Run all phases; returns ``{"history": [...], "summary": {...}}``.

    ``init_params(key)`` gives w_0; ``evaluate(state, t, final)`` returns metrics after t
    rounds (``final`` on the last call). With ``config.out`` set, writes ``metrics.jsonl``,
    ``summary.json`` and checkpoints there. ``pool``: the dataset's (x, y) already on device.
    """
    from tqdm.auto import tqdm

    root = jax.random.key(config.seed)
    strategy = config.strategy
    train_pool = np.asarray(dataset.train_clients, np.int64)
    if len(train_pool) == 0:
        raise ValueError("the dataset has no training clients")
    x, y = pool if pool is not None else (jnp.asarray(dataset.x), jnp.asarray(dataset.y))
    total = sum(p.rounds for p in phases)
    rounds_fns = [make_round(p.algorithm, strategy) for p in phases]
    ms = [clients_per_round(p.clients_per_round, len(train_pool)) for p in phases]

    def init_phase(i: int, params: PyTree) -> State:
        return phases[i].algorithm.init(K.derive(root, K.INIT, i + 1), params, dataset.num_clients)

    state = init_phase(0, init_params(K.derive(root, K.INIT, 0)))
    t0 = 0
    history: list[dict[str, Any]] = []
    ckpt = None
    metrics_path = None
    if config.out:
        os.makedirs(config.out, exist_ok=True)
        metrics_path = os.path.join(config.out, "metrics.jsonl")
        ckpt = _Checkpoints(config.out, config.config_for_hash)
        latest = ckpt.latest() if config.resume else None
        if config.resume and latest is not None:
            t0 = latest
            i, _ = _phase_at(phases, max(t0 - 1, 0))  # the phase that wrote the checkpoint
            like = init_phase(i, phases[0].algorithm.global_params(state.server))
            state = ckpt.restore(t0, like)
            if os.path.exists(metrics_path):
                with open(metrics_path) as f:
                    history = [r for r in map(json.loads, f) if r["round"] <= t0]
                with open(metrics_path, "w") as f:
                    f.writelines(json.dumps(r) + "\n" for r in history)
        elif os.path.exists(metrics_path):
            os.remove(metrics_path)

    def log(rec: dict[str, Any]) -> None:
        history.append(rec)
        if metrics_path:
            with open(metrics_path, "a") as f:
                f.write(json.dumps(rec) + "\n")

    def do_eval(t: int, final: bool) -> dict[str, Any]:
        tic = time.perf_counter()
        m = evaluate(state, t, final)
        rec = {"round": t, "phase": phases[_phase_at(phases, max(t - 1, 0))[0]].name, **m}
        rec["eval_seconds"] = time.perf_counter() - tic
        log(rec)
        return rec

    if t0 == 0 and not history:
        do_eval(0, total == 0)
    bar = tqdm(range(t0, total), initial=t0, total=total, disable=not config.progress, unit="round")
    train_seconds = 0.0
    for t in bar:
        i, start = _phase_at(phases, t)
        if t == start and i > 0 and t > 0:
            state = init_phase(i, phases[i - 1].algorithm.global_params(state.server))
        ids = sample_clients(root, t, train_pool, ms[i])
        inputs = place_inputs(round_inputs(dataset, ids, strategy.client_multiple), strategy)
        tic = time.perf_counter()
        state, cm = rounds_fns[i](state, x, y, inputs, jnp.int32(t), root)
        loss = np.asarray(cm["train_loss"])[: len(ids)]
        train_seconds += time.perf_counter() - tic
        bad = ~np.isfinite(loss)
        if bad.any() or not bool(all_finite(phases[i].algorithm.global_params(state.server))):
            who = ids[bad].tolist() if bad.any() else "(server update)"
            raise RunError(
                f"non-finite loss or parameters in round {t} ({phases[i].name}), clients {who}; "
                "lower the learning rate or check the data"
            )
        done = t + 1
        if done % config.eval_every == 0 or done == total:
            rec = do_eval(done, done == total)
            bar.set_postfix({k: f"{v:.4f}" for k, v in rec.items() if _is_headline(k, v)})
        if ckpt and (
            (config.checkpoint_every and done % config.checkpoint_every == 0) or done == total
        ):
            ckpt.save(done, state)
    bar.close()
    summary = summarize_history(history)
    summary["train_seconds"] = train_seconds
    summary["rounds"] = total
    if config.out:
        with open(os.path.join(config.out, "summary.json"), "w") as f:
            json.dump(summary, f, indent=2)
    return {"history": history, "summary": summary, "state": state}


def _is_headline(k: str, v: Any) -> bool:
    return isinstance(v, float) and (k.endswith("acc_mean") or k.endswith("acc_pooled"))


def summarize_history(history: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """``final``, ``best`` (max over evaluations) and ``last10_mean`` of every accuracy key."""
    out: dict[str, Any] = {}
    if not history:
        return out
    keys = [k for k, v in history[-1].items() if "acc" in k and isinstance(v, float)]
    for k in keys:
        vals = [r[k] for r in history if k in r]
        out[k] = {"final": vals[-1], "best": max(vals), "last10_mean": float(np.mean(vals[-10:]))}
    return out


def plot_curves(
    history: Sequence[dict[str, Any]], keys: Sequence[str], path: str, title: str = ""
) -> None:
    """Accuracy curves over rounds (matplotlib, Agg) saved to ``path``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for k in keys:
        pts = [(r["round"], r[k]) for r in history if k in r]
        if pts:
            ax.plot(*zip(*pts), marker="o", markersize=3, label=k)
    ax.set_xlabel("round")
    ax.set_ylabel("accuracy")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
