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
import shutil
import time
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxpfl import distributed
from jaxpfl.core import keys as K
from jaxpfl.core.buckets import Splits
from jaxpfl.core.engine import (
    Algorithm,
    PerDevice,
    State,
    Strategy,
    default_strategy,
    make_round,
    place_rows,
)
from jaxpfl.core.evaluators import ClientEvaluator
from jaxpfl.core.placement import Pool, place_pool
from jaxpfl.core.residency import (
    HostRound,
    client_state_bytes,
    resolve_client_state,
    to_host,
)
from jaxpfl.core.rounds import phase_plan, round_inputs, stage_groups
from jaxpfl.core.tree import all_finite
from jaxpfl.data.dataset import FederatedDataset
from jaxpfl.errors import ConfigError, RunError

PyTree = Any


@dataclasses.dataclass(frozen=True)
class Phase:
    """``rounds`` rounds of ``algorithm``; the next phase starts from this one's global model.

    ``clients_per_round``: a count (int ≥ 1) or a participation fraction C (float in (0, 1]).
    """

    name: str
    algorithm: Algorithm
    rounds: int
    clients_per_round: int | float = 1.0

    def __post_init__(self):
        if self.rounds < 0:
            raise ConfigError(f"phase '{self.name}': rounds must be >= 0 (got {self.rounds})")


@dataclasses.dataclass(frozen=True)
class RunConfig:
    """How a run is driven (never what an algorithm computes).

    Attributes:
      seed: root of every key (init, sampling, data order, dropout, evaluation).
      eval_every: evaluate after every this many rounds (and after the last).
      out: directory for metrics.jsonl, summary.json and checkpoints (None: nothing written).
      checkpoint_every: also checkpoint every this many rounds (0: off).
      checkpoint_minutes: checkpoint when this many minutes passed since the last one (0: off);
        a checkpoint is always written after the last round and at phase boundaries.
      resume: continue from the latest checkpoint in ``out`` (an error when there is none).
      overwrite: a fresh run into a non-empty ``out`` clears it (otherwise it is refused).
      progress: show a progress bar.
      strategy: how clients are mapped; None = ``default_strategy()`` for the backend.
      config_for_hash: a JSON description of the experiment; resume refuses another one.
    """

    seed: int = 0
    eval_every: int = 1
    out: str | None = dataclasses.field(default=None, metadata={"affects_results": False})
    checkpoint_every: int = dataclasses.field(default=0, metadata={"affects_results": False})
    checkpoint_minutes: float = dataclasses.field(default=5.0, metadata={"affects_results": False})
    resume: bool = dataclasses.field(default=False, metadata={"affects_results": False})
    overwrite: bool = dataclasses.field(default=False, metadata={"affects_results": False})
    progress: bool = dataclasses.field(default=True, metadata={"affects_results": False})
    strategy: Strategy | None = dataclasses.field(default=None, metadata={"affects_results": False})
    config_for_hash: str = dataclasses.field(default="", metadata={"affects_results": False})

    def __post_init__(self):
        if self.eval_every < 1:
            raise ConfigError(f"eval_every must be >= 1 (got {self.eval_every}); "
                              "use a large value to evaluate only at the end")
        if self.checkpoint_every < 0 or self.checkpoint_minutes < 0:
            raise ConfigError("checkpoint_every and checkpoint_minutes must be >= 0")
        if self.resume and self.overwrite:
            raise ConfigError("resume and overwrite exclude each other")


EvalFn = Callable[[State, int, bool], dict[str, Any]]


def clients_per_round(spec: int | float, num: int) -> int:
    """M = max(1, ⌊C·K⌋) for a fraction C in (0, 1] given as float, else the count (≤ K)."""
    if isinstance(spec, bool) or not isinstance(spec, int | float | np.integer | np.floating):
        raise ConfigError(f"clients per round must be a count or a fraction (got {spec!r})")
    if isinstance(spec, float | np.floating):
        if not 0 < spec <= 1.0:
            raise ConfigError(
                f"participation fraction {spec} is not in (0, 1]; give a count of clients "
                "per round as an integer"
            )
        return max(1, math.floor(spec * num))
    m = int(spec)
    if m < 1 or m > num:
        raise ConfigError(
            f"--clients {m} per round, but the data has {num} training clients; use 1 to "
            f"{num} (lower --clients or raise --num-clients)"
        )
    return m


def sample_clients(root: jax.Array, t: int, pool: np.ndarray, m: int) -> np.ndarray:
    """S_t: m clients uniform without replacement from ``pool``, keyed by (SELECT, t)."""
    if m == len(pool):
        return np.asarray(pool)
    pick = jax.random.choice(K.derive(root, K.SELECT, t), len(pool), (m,), replace=False)
    return np.asarray(pool)[np.asarray(pick)]


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
        self.manager.wait_until_finished()  # every process calls save (multi-process orbax)
        if distributed.is_main():
            tmp = self.meta_path + ".tmp"
            with open(tmp, "w") as f:
                json.dump({"config_hash": self.hash, "round": t}, f)
            os.replace(tmp, self.meta_path)
        distributed.barrier(f"jaxpfl_checkpoint_{t}")

    def restore(self, t: int, like: State) -> State:
        def spec(a):  # onto like's placement: restores under any process / device count
            if isinstance(a, np.ndarray):  # host-resident client state restores as NumPy
                return a
            sharding = a.sharding if isinstance(a, jax.Array) else None
            return jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=sharding)

        abstract = jax.tree.map(spec, {"state": like})
        got = self.manager.restore(t, args=self.ocp.args.StandardRestore(abstract))
        return got["state"]


def _prepare_out(config: RunConfig) -> None:
    """A fresh run needs an empty ``out`` (or ``overwrite``); a resume needs a checkpoint."""
    out = config.out
    if config.resume:
        if not os.path.exists(os.path.join(out, "checkpoints.json")):
            raise RunError(f"--resume: no checkpoint in {out}; run without --resume to start")
        return
    if os.path.isdir(out) and os.listdir(out):
        if not config.overwrite:
            raise RunError(
                f"{out} is not empty (an earlier run?); pass --overwrite to replace it, "
                "--resume to continue it, or choose another --out"
            )
        distributed.barrier("jaxpfl_out_checked")  # every process checked before any clears
        if distributed.is_main():
            shutil.rmtree(out)
    if distributed.is_main():
        os.makedirs(out, exist_ok=True)
    distributed.barrier("jaxpfl_out_ready")


def _all_finite(tree: PyTree) -> bool:
    """Every value finite: NumPy leaves (host-resident client state) checked on the host,
    device leaves on the device."""
    leaves = jax.tree.leaves(tree)
    host = [a for a in leaves if isinstance(a, np.ndarray)]
    dev = [a for a in leaves if not isinstance(a, np.ndarray)]
    return all(bool(np.isfinite(a).all()) for a in host) and (not dev or bool(all_finite(dev)))


def _round_means(out, m: int) -> dict[str, float]:
    """Mean over the M real clients of every scalar client metric, and of every stage
    metric over all clients (``client_<key>``, ``stage_<key>``); a client metric pair
    ``<name>_correct`` / ``<name>_count`` also as the pooled accuracy ``<name>_acc_pooled``
    (Σ correct / Σ count over the round's clients)."""
    rec: dict[str, float] = {}
    for name, v in out.metrics.items():
        v = np.asarray(v)[:m]
        if v.ndim == 1 and v.size:
            rec[f"client_{name}"] = float(np.mean(v))
        count = out.metrics.get(name[: -len("_correct")] + "_count")
        if name.endswith("_correct") and count is not None and np.sum(np.asarray(count)[:m]):
            pooled = float(np.sum(v)) / float(np.sum(np.asarray(count)[:m]))
            rec[name[: -len("_correct")] + "_acc_pooled"] = pooled
    for name, v in out.stage.items():
        v = np.asarray(v)
        if v.ndim == 1 and v.size:
            rec[f"stage_{name}"] = float(np.mean(v))
            if v.dtype != np.float32 and v.dtype != np.float64:
                rec[f"stage_{name}_max"] = float(np.max(v))
    return rec


def run(
    phases: Sequence[Phase],
    dataset: FederatedDataset,
    init_params: Callable[[jax.Array], PyTree],
    evaluate: EvalFn,
    config: RunConfig = RunConfig(),
    pool: Pool | tuple[jax.Array, jax.Array] | None = None,
) -> dict[str, Any]:
    """Run all phases; returns ``{"history": [...], "summary": {...}, "state": State}``.

    ``init_params(key)`` gives w_0; ``evaluate(state, t, final)`` returns metrics after t
    rounds (``final`` on the last call; a record with ``subsampled: True`` is logged but not
    used for ``best``). With ``config.out`` set, writes ``metrics.jsonl``, ``summary.json``
    and checkpoints there. ``pool``: the dataset's (x, y) already on device, or a
    :class:`~jaxpfl.core.placement.Pool` (``place_pool``: the one ``evaluate`` reads; needed
    for ``pool_layout="per-device"``, built here when not given). Every record
    also holds the last round's client and stage metrics (``client_*``, ``stage_*``) and the
    useful-step share of the rounds since the previous record.
    """
    from tqdm.auto import tqdm

    root = jax.random.key(config.seed)
    strategy = config.strategy or default_strategy()
    train_pool = np.asarray(dataset.train_clients, np.int64)
    if len(train_pool) == 0:
        raise ConfigError("the dataset has no training clients")
    for ph in phases[:-1]:
        if ph.algorithm.global_params is None:
            raise ConfigError(f"phase '{ph.name}' ({ph.algorithm.name}) has no global model "
                              "to start the next phase from")
    if distributed.is_multiprocess() and strategy.name != "sharded":
        raise ConfigError(f"{distributed.process_count()} processes need the sharded strategy "
                          f"(got '{strategy.name}'); use --strategy sharded")
    if pool is None or strategy.pool_layout == "per-device" and not isinstance(pool, Pool):
        pool = place_pool(dataset, strategy)
    if isinstance(pool, Pool):
        if pool.per_device and (strategy.pool_layout != "per-device"
                                or pool.placement.devices != strategy.client_multiple):
            raise ConfigError("a per-device pool needs the sharded strategy with "
                              f"pool_layout='per-device' on {pool.placement.devices} devices")
        x, y, splits = pool.x, pool.y, pool.splits
    else:
        x, y = pool
        splits = Splits.of(dataset)
    if strategy.name == "sharded" and not isinstance(x, PerDevice):
        x, y = distributed.replicate((x, y), strategy.mesh())  # once, on the (global) mesh
    total = sum(p.rounds for p in phases)
    w0 = init_params(K.derive(root, K.INIT, 0))
    per_client = [client_state_bytes(p.algorithm, w0, dataset.num_clients) for p in phases]
    placements = [resolve_client_state(strategy, p.algorithm, b, dataset.num_clients)
                  for p, b in zip(phases, per_client)]
    rounds_fns = [HostRound(p.algorithm, strategy) if where == "host"
                  else make_round(p.algorithm, strategy) for p, where in zip(phases, placements)]
    ms = [clients_per_round(p.clients_per_round, len(train_pool)) for p in phases]
    plans: dict[int, Any] = {}
    stage = None
    if any(p.algorithm.client_stage is not None for p in phases):
        stage = place_rows(stage_groups(splits, strategy), strategy)

    def plan_of(i: int):
        """One grouping per phase, from the envelope of all its rounds' samples."""
        if i not in plans:
            start = sum(p.rounds for p in phases[:i])
            sel = [sample_clients(root, t, train_pool, ms[i])
                   for t in range(start, start + phases[i].rounds)]
            if ms[i] == len(train_pool):
                sel = sel[:1]
            plans[i] = phase_plan(splits, sel, strategy) if sel else None
        return plans[i]

    for ph, m in zip(phases, ms):
        if ph.algorithm.full_participation and m < len(train_pool):
            raise ConfigError(
                f"phase '{ph.name}' ({ph.algorithm.name}) needs full participation (every "
                f"training client in every round: it mixes every client's state); it samples "
                f"{m} of {len(train_pool)} (use --participation 1)"
            )

    def init_phase(i: int, params: PyTree) -> State:
        key = K.derive(root, K.INIT, i + 1)
        if placements[i] == "host":  # built on the CPU: the [K] stack never touches the device
            cpu = jax.devices("cpu")[0]
            with jax.default_device(cpu):
                state = phases[i].algorithm.init(jax.device_put(key, cpu),
                                                 jax.device_put(params, cpu), dataset.num_clients)
            server = jax.device_put(state.server, jax.devices()[0])
            return State(jax.tree.map(jnp.copy, server), to_host(state.clients, free=True))
        state = phases[i].algorithm.init(key, params, dataset.num_clients)
        state = jax.tree.map(jnp.copy, state)  # distinct buffers: the round donates its state
        if strategy.name == "sharded":  # replicated on the (global) mesh, as rounds return it
            state = distributed.replicate(state, strategy.mesh())
        return state

    state = init_phase(0, w0)
    t0 = 0
    history: list[dict[str, Any]] = []
    ckpt = None
    metrics_path = None
    if config.out:
        _prepare_out(config)
        metrics_path = os.path.join(config.out, "metrics.jsonl")
        ckpt = _Checkpoints(config.out, config.config_for_hash)
        if config.resume:
            t0 = ckpt.latest()
            if t0 is None:
                raise RunError(f"--resume: no checkpoint in {config.out}")
            i, _ = _phase_at(phases, max(t0 - 1, 0))  # the phase that wrote the checkpoint
            state = ckpt.restore(t0, init_phase(i, w0))
            if os.path.exists(metrics_path):
                with open(metrics_path) as f:
                    history = [r for r in map(json.loads, f) if r["round"] <= t0]
            if distributed.is_main():
                with open(metrics_path, "w") as f:  # each round exactly once
                    f.writelines(json.dumps(r) + "\n" for r in history)

    def log(rec: dict[str, Any]) -> None:
        history.append(rec)
        if metrics_path and distributed.is_main():
            with open(metrics_path, "a") as f:
                f.write(json.dumps(rec) + "\n")

    steps_acc = [0.0, 0.0]
    last_round: dict[str, float] = {}

    def do_eval(t: int, final: bool) -> dict[str, Any]:
        tic = time.perf_counter()
        m = evaluate(state, t, final)
        rec = {"round": t, "phase": phases[_phase_at(phases, max(t - 1, 0))[0]].name, **m}
        rec.update(last_round)
        if steps_acc[1]:
            rec["useful_step_share"] = steps_acc[0] / steps_acc[1]
        steps_acc[0] = steps_acc[1] = 0.0
        rec["eval_seconds"] = time.perf_counter() - tic
        log(rec)
        return rec

    if t0 == 0 and not history:
        do_eval(0, total == 0)
    bar = tqdm(range(t0, total), initial=t0, total=total, disable=not config.progress, unit="round")
    train_seconds = 0.0
    last_ckpt = time.monotonic()
    for t in bar:
        i, start = _phase_at(phases, t)
        alg = phases[i].algorithm
        if t == start and i > 0 and t > 0:
            state = init_phase(i, phases[i - 1].algorithm.global_params(state.server))
        ids = sample_clients(root, t, train_pool, ms[i])
        host = round_inputs(splits, ids, strategy, plan_of(i),
                            stage if alg.client_stage is not None else None)
        inputs = host._replace(groups=place_rows(host.groups, strategy))
        tic = time.perf_counter()
        state, out = rounds_fns[i](state, x, y, inputs, jnp.int32(t), root)
        if distributed.is_multiprocess():  # the round's outputs on every host
            out = distributed.to_host(out)
        loss = np.asarray(out.metrics["train_loss"])[: len(ids)] if "train_loss" in out.metrics \
            else np.zeros(len(ids))
        round_s = time.perf_counter() - tic
        train_seconds += round_s
        bad = ~np.isfinite(loss)
        if bad.any() or not _all_finite(alg.check_tree(state)):
            who = np.asarray(out.ids)[: len(ids)][bad].tolist() if bad.any() else "(server update)"
            raise RunError(
                f"non-finite loss or parameters in round {t} ({phases[i].name}), clients {who}; "
                "lower the learning rate or check the data"
            )
        if "steps" in out.metrics and "compiled_steps" in out.metrics:
            steps_acc[0] += float(np.sum(np.asarray(out.metrics["steps"])[: len(ids)]))
            steps_acc[1] += float(np.sum(np.asarray(out.metrics["compiled_steps"])))
        done = t + 1
        if done % config.eval_every == 0 or done == total:
            last_round.clear()
            last_round.update(_round_means(out, len(ids)))
            last_round["round_seconds"] = round_s  # the last round's (training, stage included)
            for part, sec in out.seconds.items():
                last_round[f"round_{part}_seconds"] = sec
            rec = do_eval(done, done == total)
            bar.set_postfix({k: f"{v:.4f}" for k, v in rec.items() if _is_headline(k, v)})
        boundary = done == total or _phase_at(phases, done)[1] == done
        if ckpt and (
            boundary
            or (config.checkpoint_every and done % config.checkpoint_every == 0)
            or (config.checkpoint_minutes
                and time.monotonic() - last_ckpt >= 60 * config.checkpoint_minutes)
        ):
            ckpt.save(done, state)
            last_ckpt = time.monotonic()
    bar.close()
    summary = summarize_history(history)
    summary["train_seconds"] = train_seconds
    summary["rounds"] = total
    summary["strategy"] = dataclasses.asdict(strategy)
    summary["client_state"] = {
        p.name: {"placement": where, "bytes_per_client": b,
                 "bytes_all_clients": b * dataset.num_clients}
        for p, where, b in zip(phases, placements, per_client)
    }
    if config.out and distributed.is_main():
        with open(os.path.join(config.out, "summary.json"), "w") as f:
            json.dump(summary, f, indent=2)
    return {"history": history, "summary": summary, "state": state}


def _is_headline(k: str, v: Any) -> bool:
    return isinstance(v, float) and (k.endswith("acc_mean") or k.endswith("acc_pooled"))


def summarize_history(history: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """``final``, ``best`` (max over evaluations, PFLlib's optimistic number) and
    ``last10_mean`` of every accuracy key. Records marked ``subsampled`` (evaluated on a
    sample of the clients) are left out of ``best`` and ``last10_mean``: a max over noisy
    subsamples is biased upwards; ``best_over`` says how many evaluations were used."""
    out: dict[str, Any] = {}
    if not history:
        return out
    keys = [k for k, v in history[-1].items() if "acc" in k and isinstance(v, float)]
    full = [r for r in history if not r.get("subsampled", False)] or history[-1:]
    # the test metrics at the (first) evaluation with the best mean validation accuracy of the
    # primary model: the personalized one (pers_) where there is one, else the global one
    val = [k for k in keys if k.startswith("val_") and k.endswith("acc_mean")]
    primary = next((k for k in ("val_pers_acc_mean", "val_acc_mean") if k in val),
                   val[0] if val else None)
    if primary is not None and any(primary in r for r in full):
        best = max((r for r in full if primary in r), key=lambda r: r[primary])
        prefix = primary[len("val_"): -len("acc_mean")]
        stats = ("acc_mean", "acc_min", "acc_max", "acc_std", "acc_pooled")
        out["val_selected"] = {
            "model": prefix.rstrip("_") or "global", "round": best["round"],
            "val_acc_mean": best[primary],
            **{s: best[prefix + s] for s in stats if prefix + s in best},
        }
    for k in keys:
        vals = [r[k] for r in full if k in r]
        if not vals:
            continue
        best_round = max((r for r in full if k in r), key=lambda r: r[k])["round"]
        out[k] = {
            "final": history[-1][k],
            "best": max(vals),
            "best_round": best_round,
            "last10_mean": float(np.mean(vals[-10:])),
            "best_over": len(vals),
        }
    return out


def plot_curves(
    history: Sequence[dict[str, Any]], keys: Sequence[str], path: str, title: str = ""
) -> None:
    """Accuracy curves over rounds (matplotlib, Agg) saved to ``path`` (by process 0 only)."""
    if not distributed.is_main():
        return
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


__all__ = [
    "ClientEvaluator",
    "EvalFn",
    "Phase",
    "RunConfig",
    "RunError",
    "clients_per_round",
    "plot_curves",
    "round_inputs",
    "run",
    "sample_clients",
    "summarize_history",
]
