"""Scaling measurements: clients per round on one device, devices (and processes) with the
sharded strategy. It measures only: no targets, no extrapolation.

    python experiments/bench_scale.py --quick                 # smoke: FedAvg, 5 rows
    nice -n 5 python experiments/bench_scale.py               # the full sweep (CPU: long)
    python experiments/bench_scale.py --model cnn             # on a GPU

Two tables, every row measured in its own subprocess (so its peak host RSS is its own):

1. **Clients per round** (20, 100, 500, 1,000): one device, the backend's default strategy
   (``default_strategy()``: sequential on CPU, vmap elsewhere). Dataset: the Fashion-MNIST
   pool (or ``--data synthetic``: random images, timings only) split Dir(0.1) over K = M
   clients with PFLlib's recipe (``federate(raw, 'pfllib_dir', K, alpha=0.1,
   train_frac=0.75)``; where its 40-example floor cannot be met it is lowered to 4, 1, then
   0 with empty clients allowed, and the row's ``split`` says so), every client in every
   round. The work per round is the same pool
   for every M; what grows is the number of clients it is cut into.
2. **Devices** (1, 2, 4, 8 fake CPU devices via ``--xla_force_host_platform_device_count``,
   or the real accelerators), strategy ``sharded``, on one Dir(0.1) split into K clients
   (``--device-pool-clients``; default the largest M) of which M are sampled per round, so
   the examples per round grow with M: *strong* scaling keeps M fixed
   (``--strong-clients``), *weak* scaling gives each device the same number of clients
   (``--weak-per-device``). Rows ``2p×d`` run 2 processes of d devices each on localhost
   (``jaxpfl.distributed``, loopback coordinator, gloo on CPU). Fake CPU devices share the
   host's cores: this table shows the overhead of sharding there, not a speed-up. Each row
   runs with each ``--pool-layouts``: ``replicated`` (every device holds every example) and
   ``per-device`` (each device only its own clients', ``jaxpfl.core.placement``); "pool
   MB/device" is what one device holds.
4. **Pool layouts** (``--layout-cost K:M ...``): the price of the per-device pool in
   padding. For each device count > 1, the phase plan of 20 sampled rounds under both
   layouts: rows, Σ rows × width (proportional to the compiled local steps) and the useful
   share. Plans only: nothing is compiled.
3. **Resident pools** (``--pool-clients``, default 3,400 (the FEMNIST writer count) and
   10,000): K clients in the split, ``--pool-sampled`` of them per round, a personalized
   algorithm whose state every client keeps (FedALA: θ_k and W_k, run over ALL K in its
   stage), the client state on the device and in host memory (``client_state`` device /
   host, ``jaxpfl.core.residency``) side by side, strategy ``--pool-strategy`` (vmap);
   "resident MB" is K × state/client.

Algorithms: FedAvg and, when ``jaxpfl/algorithms/fedala.py`` imports, FedALA (per-client
state θ_k, W_k and an all-client ALA stage after every server step).

Columns: "first s" is round 0 (compilation included; FedALA's start phase of ALA runs in
round 0's stage); "round s" is the mean of the later rounds; "examples/s" is
Σ n_k · E over the round's clients (local training only, ALA's examples not counted) divided
by "round s"; "peak RSS" is the subprocess's peak resident host memory (``ru_maxrss``,
process 0 for 2-process rows); "anon MB" (devices table) its resident anonymous memory at
the end (``RssAnon``: heap and CPU device buffers, not the file pages of a pool left on disk
by ``--data-dir`` with uncompressed IDX files), "data anon MB" what loading and partitioning
the dataset added to it; "device peak" is
``memory_stats()['peak_bytes_in_use']`` where the backend reports it (not on CPU);
"state/client" is the bytes of one client's persistent state (0 for FedAvg).

Prints markdown tables and writes ``<out>/bench_scale.json`` and ``<out>/bench_scale.png``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import resource
import socket
import subprocess
import sys
import tempfile
import time
from typing import Any

_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if _ROOT not in sys.path:
    sys.path.insert(0, _ROOT)

ALGORITHMS = ("fedavg", "fedala")


@dataclasses.dataclass(frozen=True)
class Job:
    """One measured configuration (run by :func:`measure` in a subprocess)."""

    table: str  # "clients" or "devices"
    algorithm: str
    clients: int  # clients per round M
    devices: int = 1
    processes: int = 1
    strategy: str = "default"
    scaling: str = ""  # "strong" / "weak" in the devices table
    rounds: int = 3
    model: str = "mlp_2nn"
    data: str = "fmnist"
    data_dir: str = ""  # the Fashion-MNIST IDX folder ("": Debian's; uncompressed: on disk)
    n_train: int = 0  # 0: the whole pool
    batch_size: int = 10
    buckets: int = 6  # Strategy.buckets of the jitted strategies
    num_clients: int = 0  # K clients in the split (0: K = M, every client in every round)
    client_state: str = "device"  # where the [K] client state lives: device or host
    pool_layout: str = "replicated"  # sharded: every device holds all examples, or its own
    seed: int = 0


def fedala_available() -> tuple[bool, str]:
    """Whether FedALA imports here (it is written in parallel with this benchmark)."""
    try:
        from jaxpfl.algorithms.fedala import FedALAConfig, fedala  # noqa: F401
    except Exception as e:  # noqa: BLE001 — any import failure means: not available
        return False, f"{type(e).__name__}: {e}"
    return True, ""


# ----------------------------------------------------------------------------------------------
# The worker (one configuration, in its own process)


def _raw(job: Job):
    import numpy as np

    from jaxpfl.data.dataset import DataError, RawData
    from jaxpfl.data.sources import load_raw

    if job.data == "fmnist":
        try:
            raw = load_raw("fashion_mnist", job.data_dir or None)
        except DataError:
            raw = None
        if raw is not None:
            if job.n_train:
                raw = dataclasses.replace(
                    raw, x_train=raw.x_train[: job.n_train], y_train=raw.y_train[: job.n_train],
                    x_test=raw.x_test[: job.n_train // 6], y_test=raw.y_test[: job.n_train // 6])
            return raw, "fashion_mnist"
    rng = np.random.default_rng(job.seed)
    n = job.n_train or 60_000
    m = max(n // 6, 1)
    xa = rng.integers(0, 256, (n, 28, 28, 1), dtype=np.uint8)
    xb = rng.integers(0, 256, (m, 28, 28, 1), dtype=np.uint8)
    ya, yb = rng.integers(0, 10, n).astype(np.int32), rng.integers(0, 10, m).astype(np.int32)
    return RawData("synthetic", xa, ya, xb, yb, num_classes=10), "synthetic"


FLOORS = ((None, "pfllib_dir"), (1, "pfllib_dir, floor 4 (batch_size=1 in the partitioner)"),
          (0.25, "pfllib_dir, floor 1 (batch_size=0.25 in the partitioner)"),
          (0, "pfllib_dir, floor 0 (batch_size=0, empty clients allowed)"))


def _split(raw, k: int, seed: int):
    """PFLlib's Dir(0.1) split into k clients; where its floor of 40 training examples per
    client cannot be met, the floor is lowered (4, 1, then 0 with empty clients allowed) and
    the returned description says so."""
    from jaxpfl.data.dataset import DataError
    from jaxpfl.data.federate import federate

    for bs, what in FLOORS:
        kw = {} if bs is None else {"batch_size": bs, "allow_empty": bs == 0}
        try:
            ds = federate(raw, "pfllib_dir", k, alpha=0.1, train_frac=0.75, seed=seed, **kw)
        except DataError:
            if bs == 0:
                raise
            continue
        empty = int((ds.train.sizes == 0).sum())
        return ds, what + (f": {empty} of {k} clients without training examples" if empty else "")
    raise AssertionError("unreachable")


def _algorithm(name: str, model, batch_size: int):
    if name == "fedavg":
        from jaxpfl.algorithms.fedavg import FedAvgConfig, fedavg

        return fedavg(model, FedAvgConfig(local_epochs=1, batch_size=batch_size,
                                          client_lr=0.005))
    from jaxpfl.algorithms.fedala import FedALAConfig, fedala

    return fedala(model, FedALAConfig(batch_size=batch_size, client_lr=0.005))


def layout_cost(job: Job) -> dict[str, Any]:
    """The compiled work of one phase of ``LAYOUT_ROUNDS`` sampled rounds (M of K clients on
    D devices) under both pool layouts: rows and Σ rows × width of the phase plan
    (``phase_plan``; proportional to the compiled local steps), and the useful share
    Σ n_k / Σ rows × width. Host-side plans only: nothing is compiled or run."""
    import jax
    import numpy as np

    from jaxpfl.core.buckets import Splits
    from jaxpfl.core.engine import Strategy
    from jaxpfl.core.placement import ClientPlacement
    from jaxpfl.core.rounds import phase_plan
    from jaxpfl.run import sample_clients

    raw, data_name = _raw(job)
    ds, split = _split(raw, job.num_clients, job.seed)
    splits = Splits.of(ds)
    root = jax.random.key(job.seed)
    pool = np.asarray(ds.train_clients, np.int64)
    sel = [sample_clients(root, t, pool, job.clients) for t in range(LAYOUT_ROUNDS)]
    useful = float(np.mean([splits.sizes("train")[s].sum() for s in sel]))
    strategy = Strategy("sharded", num_devices=job.devices, buckets=job.buckets)
    rep = phase_plan(splits, sel, strategy)
    local = ClientPlacement.balanced(splits, job.devices).localize(splits)
    aff = phase_plan(local, sel, strategy)
    return {**dataclasses.asdict(job), "data": data_name, "split": split,
            "num_clients": ds.num_clients, "rounds_in_phase": LAYOUT_ROUNDS,
            "replicated_rows": rep.rows, "per_device_rows": aff.rows,
            "replicated_cost": rep.cost(), "per_device_cost": aff.cost(),
            "cost_ratio": aff.cost() / rep.cost(),
            "replicated_useful": useful / rep.cost(), "per_device_useful": useful / aff.cost()}


LAYOUT_ROUNDS = 20


def measure(job: Job) -> dict[str, Any]:
    """Time ``job.rounds`` rounds of the driver's loop (sampling, phase plan, round inputs,
    placement, the compiled round, its outputs to the host), without evaluation."""
    if job.table == "layout":
        return layout_cost(job)
    from jaxpfl import distributed

    distributed.initialize(timeout_s=120)  # from the environment; one process: no-op
    import jax
    import jax.numpy as jnp
    import numpy as np

    from jaxpfl.core import keys as K
    from jaxpfl.core.engine import State, Strategy, default_strategy, make_round, place_rows
    from jaxpfl.core.placement import place_pool
    from jaxpfl.core.residency import HostRound, client_state_bytes, to_host
    from jaxpfl.core.rounds import phase_plan, round_inputs, stage_groups
    from jaxpfl.data.dataset import MappedRows
    from jaxpfl.models import count_params, get_model
    from jaxpfl.run import sample_clients

    tic, anon0 = time.perf_counter(), _anon_mb()
    raw, data_name = _raw(job)
    ds, split = _split(raw, job.num_clients or job.clients, job.seed)
    setup_s, anon_data = time.perf_counter() - tic, _anon_mb()
    model = get_model(job.model, raw.x_train.shape[1:], raw.num_classes)
    alg = _algorithm(job.algorithm, model, job.batch_size)
    strategy = default_strategy() if job.strategy == "default" else Strategy(job.strategy)
    strategy = dataclasses.replace(strategy, buckets=job.buckets)
    root = jax.random.key(job.seed)
    params = model.init(K.derive(root, K.INIT, 0), jnp.zeros((1, *raw.x_train.shape[1:]),
                                                            jnp.uint8))
    strategy = dataclasses.replace(strategy, client_state=job.client_state)
    per_client = client_state_bytes(alg, params, ds.num_clients)
    if job.client_state == "host":  # built on the host, as the driver does
        with jax.default_device(jax.devices("cpu")[0]):
            state = alg.init(K.derive(root, K.INIT, 1), params, ds.num_clients)
        state = State(state.server, to_host(state.clients, free=True))
    else:
        state = alg.init(K.derive(root, K.INIT, 1), params, ds.num_clients)
    if strategy.name == "sharded":
        strategy = dataclasses.replace(strategy, pool_layout=job.pool_layout)
    tic = time.perf_counter()
    pool_data = place_pool(ds, strategy)
    x, y, splits = pool_data.x, pool_data.y, pool_data.splits
    if strategy.name == "sharded":
        mesh = strategy.mesh()
        state = distributed.replicate(state, mesh)
        if not pool_data.per_device:
            x, y = distributed.replicate((x, y), mesh)
    jax.block_until_ready((x, y))
    place_s = time.perf_counter() - tic
    row_bytes = int(ds.x[:1].nbytes + ds.y[:1].nbytes)
    pool_rows = pool_data.placement.pool_rows if pool_data.per_device else len(ds.y)
    pool = np.asarray(ds.train_clients, np.int64)
    m = min(job.clients, len(pool))
    sel = [sample_clients(root, t, pool, m) for t in range(job.rounds)]
    plan = phase_plan(splits, sel[:1] if m == len(pool) else sel, strategy)
    stage = None
    if alg.client_stage is not None:
        stage = place_rows(stage_groups(splits, strategy), strategy)
    rnd = HostRound(alg, strategy) if job.client_state == "host" else make_round(alg, strategy)
    sizes = splits.sizes("train")
    seconds, examples = [], []
    for t, ids in enumerate(sel):
        tic = time.perf_counter()
        host = round_inputs(splits, ids, strategy, plan, stage)
        inputs = host._replace(groups=place_rows(host.groups, strategy))
        state, out = rnd(state, x, y, inputs, jnp.int32(t), root)
        loss = distributed.to_host(out.metrics["train_loss"])[: len(ids)]
        jax.block_until_ready(state)
        seconds.append(time.perf_counter() - tic)
        examples.append(int(np.sum(sizes[ids])))  # E = 1 local epoch
        if not np.all(np.isfinite(loss)):
            raise RuntimeError(f"non-finite training loss in round {t}")
    later = seconds[1:] or seconds
    round_s = float(np.mean(later))
    dev = jax.local_devices()[0]
    stats = dev.memory_stats() if hasattr(dev, "memory_stats") else None
    return {
        **dataclasses.asdict(job),
        "strategy": strategy.name,
        "data": data_name,
        "split": split,
        "num_clients": ds.num_clients,
        "train_examples": int(sizes.sum()),
        "params": int(count_params(params)),
        "global_devices": jax.device_count(),
        "backend": jax.default_backend(),
        "setup_s": setup_s,
        "pool_layout": strategy.pool_layout,
        "pool_place_s": place_s,
        "pool_mb_per_device": pool_rows * row_bytes / 2**20,
        "pool_mb_all": len(ds.y) * row_bytes / 2**20,
        "round_seconds": seconds,
        "first_s": seconds[0],
        "round_s": round_s,
        "examples_per_round": int(np.mean(examples[1:] or examples)),
        "examples_per_s": float(np.mean(examples[1:] or examples)) / round_s,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "anon_mb": _anon_mb(),
        "data_anon_mb": None if anon0 is None else anon_data - anon0,
        "pool_on_disk": isinstance(ds.x, MappedRows),
        "device_peak_mb": (stats["peak_bytes_in_use"] / 2**20
                           if stats and "peak_bytes_in_use" in stats else None),
        "state_bytes_per_client": per_client,
        "resident_mb": per_client * ds.num_clients / 2**20,
        "client_state": job.client_state,
        "compilations": rnd._cache_size() if hasattr(rnd, "_cache_size") else None,
    }


def _anon_mb() -> float | None:
    """This process's resident anonymous memory now (Linux ``RssAnon``: the heap and the
    CPU devices' buffers, not file pages such as a memory-mapped pool), MB."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("RssAnon:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None


def _worker_main(job_json: str, out_path: str) -> None:
    job = Job(**json.loads(job_json))
    res = measure(job)
    from jaxpfl import distributed

    if distributed.is_main():
        with open(out_path, "w") as f:
            json.dump(res, f)
    distributed.barrier("bench_scale_done")


# ----------------------------------------------------------------------------------------------
# The launcher


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch(job: Job, timeout_s: float) -> dict[str, Any]:
    """Run ``job`` in ``job.processes`` fresh subprocesses; its result or an error row."""
    env = {k: v for k, v in os.environ.items()
           if k not in ("XLA_FLAGS", "JAX_COORDINATOR_ADDRESS", "JAX_NUM_PROCESSES",
                        "JAX_PROCESS_ID")}
    if job.devices > 1 or job.processes > 1:
        env.setdefault("JAX_PLATFORMS", "cpu")  # fake devices are CPU devices
    if env.get("JAX_PLATFORMS", "") == "cpu" or job.devices > 1:
        env["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={job.devices}"
    port = _free_port()
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "result.json")
        procs = []
        for i in range(job.processes):
            penv = dict(env)
            if job.processes > 1:
                penv.update(JAX_COORDINATOR_ADDRESS=f"127.0.0.1:{port}",
                            JAX_NUM_PROCESSES=str(job.processes), JAX_PROCESS_ID=str(i))
            cmd = [sys.executable, os.path.abspath(__file__), "--worker",
                   json.dumps(dataclasses.asdict(job)), out]
            procs.append(subprocess.Popen(cmd, env=penv, stdout=subprocess.PIPE,
                                          stderr=subprocess.STDOUT, text=True))
        logs, deadline = [], time.monotonic() + timeout_s
        for p in procs:
            try:
                logs.append(p.communicate(timeout=max(deadline - time.monotonic(), 1))[0])
            except subprocess.TimeoutExpired:
                for q in procs:
                    q.kill()
                return {**dataclasses.asdict(job), "error": f"timeout after {timeout_s:.0f} s"}
        if any(p.returncode for p in procs) or not os.path.exists(out):
            tail = (logs[0] or "")[-600:].strip().splitlines()
            return {**dataclasses.asdict(job), "error": tail[-1] if tail else "failed"}
        with open(out) as f:
            return json.load(f)


def _fmt(v, spec: str) -> str:
    return "—" if v is None else format(v, spec)


def _label(r: dict) -> str:
    return f"{r['processes']}p×{r['devices']}" if r["processes"] > 1 else str(r["devices"])


def table(rows: list[dict], kind: str) -> str:
    lead_head = {"clients": ["clients/round"],
                 "devices": ["devices", "scaling", "K", "clients/round", "pool layout",
                             "pool MB/device", "data anon MB", "anon MB"],
                 "pool": ["K resident", "clients/round", "client state"]}[kind]
    head = lead_head + [
        "algorithm", "strategy", "first s", "round s", "examples/s", "peak RSS MB",
        "device peak MB", "state/client KB"] + (["resident MB"] if kind == "pool" else [])
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        if kind == "clients":
            lead = [str(r["clients"])]
        elif kind == "devices":
            lead = [_label(r), r["scaling"], str(r.get("num_clients") or r["clients"]),
                    str(r["clients"]), r.get("pool_layout", "replicated"),
                    _fmt(r.get("pool_mb_per_device"), ",.1f"),
                    _fmt(r.get("data_anon_mb"), ",.0f"), _fmt(r.get("anon_mb"), ",.0f")]
        else:
            lead = [str(r["num_clients"]), str(r["clients"]), r["client_state"]]
        if "error" in r:
            cells = lead + [r["algorithm"], r.get("strategy", ""), "error: " + r["error"]]
            cells += [""] * (len(head) - len(cells))
        else:
            cells = lead + [
                r["algorithm"], r["strategy"], f"{r['first_s']:.2f}", f"{r['round_s']:.3f}",
                f"{r['examples_per_s']:,.0f}", f"{r['peak_rss_mb']:,.0f}",
                _fmt(r["device_peak_mb"], ",.0f"),
                f"{r['state_bytes_per_client'] / 1024:,.1f}",
            ] + ([f"{r['resident_mb']:,.0f}"] if kind == "pool" else [])
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def layout_table(rows: list[dict]) -> str:
    head = ["K", "clients/round", "devices", "rows replicated", "rows per-device",
            "Σ rows×width replicated", "Σ rows×width per-device", "per-device / replicated",
            "useful replicated", "useful per-device"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        if "error" in r:
            cells = [str(r["num_clients"]), str(r["clients"]), str(r["devices"]),
                     "error: " + r["error"]] + [""] * 6
        else:
            cells = [str(r["num_clients"]), str(r["clients"]), str(r["devices"]),
                     str(r["replicated_rows"]), str(r["per_device_rows"]),
                     f"{r['replicated_cost']:,}", f"{r['per_device_cost']:,}",
                     f"{r['cost_ratio']:.2f}", f"{r['replicated_useful']:.2f}",
                     f"{r['per_device_useful']:.2f}"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _splits_note(rows: list[dict]) -> str:
    """Which split each K got (the floor is lowered where PFLlib's cannot be met)."""
    seen = {}
    for r in rows:
        if "split" in r:
            seen.setdefault(r["num_clients"], r["split"])
    return "\nSplits: " + "; ".join(f"K={k}: {v}" for k, v in sorted(seen.items()))


def plot(rows: list[dict], path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    ok = [r for r in rows if "error" not in r]
    for alg in ALGORITHMS:
        pts = sorted((r["clients"], r["examples_per_s"]) for r in ok
                     if r["table"] == "clients" and r["algorithm"] == alg)
        if pts:
            axes[0].plot(*zip(*pts), marker="o", label=alg)
        for layout, style in (("replicated", "-"), ("per-device", "--")):
            mine = [r for r in ok if r["table"] == "devices" and r["algorithm"] == alg
                    and r.get("pool_layout", "replicated") == layout]
            tag = "" if layout == "replicated" else " per-device pool"
            for scaling in ("strong", "weak"):
                pts = sorted((r["devices"] * r["processes"], r["examples_per_s"]) for r in mine
                             if scaling in r["scaling"] and r["processes"] == 1)
                if pts:
                    axes[1].plot(*zip(*pts), style, marker="o", label=f"{alg} {scaling}{tag}")
            pts = [(r["devices"] * r["processes"], r["examples_per_s"]) for r in mine
                   if r["processes"] > 1]
            if pts:
                axes[1].scatter(*zip(*pts), marker="s" if not tag else "D", s=60,
                                label=f"{alg} 2 processes{tag}")
    axes[0].set(xscale="log", xlabel="clients per round (one device)",
                ylabel="training examples / s", title="clients")
    axes[1].set(xlabel="devices in all (sharded)", ylabel="training examples / s", title="devices")
    for ax in axes:
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def jobs_for(args: argparse.Namespace, algorithms: list[str]) -> list[Job]:
    base = dict(rounds=args.rounds, model=args.model, data=args.data, n_train=args.n_train,
                data_dir=args.data_dir,
                batch_size=args.batch_size, seed=args.seed, buckets=args.buckets)
    jobs = [Job("clients", a, m, **base) for a in algorithms for m in args.clients
            if a == algorithms[0] or m <= args.max_clients_personal]
    seen = set()
    pool_k = args.device_pool_clients or max(
        [args.strong_clients] + [args.weak_per_device * d for d in args.devices])
    for a in algorithms if args.device_algorithms == "all" else algorithms[:1]:
        for d in args.devices:
            strong, weak = args.strong_clients, args.weak_per_device * d
            pairs = [("strong+weak", strong)] if strong == weak else [("strong", strong),
                                                                      ("weak", weak)]
            pairs = [(s, m) for s, m in pairs if m > 0]  # --weak-per-device 0: no weak rows
            for scaling, m in pairs:
                if (a, d, m) in seen:
                    continue
                seen.add((a, d, m))
                jobs += [Job("devices", a, m, d, 1, "sharded", scaling, num_clients=pool_k,
                             pool_layout=lay, **base) for lay in args.pool_layouts]
        for d in args.process_devices:
            jobs += [Job("devices", a, args.strong_clients, d, 2, "sharded", "strong",
                         num_clients=pool_k, pool_layout=lay, **base)
                     for lay in args.pool_layouts]
    for km in args.layout_cost:
        k, m = (int(v) for v in km.split(":"))
        jobs += [Job("layout", algorithms[0], m, d, num_clients=k, **base)
                 for d in args.devices if d > 1]
    personal = [a for a in algorithms if a != "fedavg"]
    for k in args.pool_clients if personal else []:
        for where in args.pool_states:
            jobs.append(Job("pool", personal[0], min(args.pool_sampled, k), num_clients=k,
                            client_state=where, strategy=args.pool_strategy,
                            **{**base, "data": args.pool_data}))
    return jobs


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true",
                   help="smoke settings: FedAvg only, 5 rows (about a minute on 2 CPU cores)")
    p.add_argument("--quick-personal", action="store_true",
                   help="with --quick: add FedALA's row at 20 clients")
    p.add_argument("--model", default="mlp_2nn", help="mlp_2nn (CPU) or cnn (GPU)")
    p.add_argument("--data", default="fmnist", choices=("fmnist", "synthetic"),
                   help="fmnist (synthetic when the files are missing) or synthetic")
    p.add_argument("--data-dir", default="",
                   help="Fashion-MNIST IDX folder (default: Debian's .gz files); uncompressed "
                   "files stay on disk and each process reads only the rows it needs")
    p.add_argument("--n-train", type=int, default=0, help="first N train examples (0: all)")
    p.add_argument("--clients", type=int, nargs="*", default=[20, 100, 500, 1000],
                   help="clients per round of the clients table (none: no such rows)")
    p.add_argument("--devices", type=int, nargs="*", default=[1, 2, 4, 8],
                   help="device counts of the devices table (none: no such rows)")
    p.add_argument("--process-devices", type=int, nargs="*", default=[2],
                   help="devices per process of the 2-process rows (none: no such rows)")
    p.add_argument("--strong-clients", type=int, default=100)
    p.add_argument("--weak-per-device", type=int, default=25, help="0: no weak rows")
    p.add_argument("--device-pool-clients", type=int, default=0,
                   help="K of the devices table's split, M sampled per round (0: the largest M)")
    p.add_argument("--pool-layouts", nargs="+", default=["replicated", "per-device"],
                   choices=("replicated", "per-device"),
                   help="pool layouts of the devices table's rows (sharded strategy)")
    p.add_argument("--layout-cost", nargs="*", default=["200:100", "200:200", "3400:100",
                                                          "3400:500"],
                   help="K:M pairs of the pool-layout cost table (plans only, nothing runs)")
    p.add_argument("--algorithms", nargs="+", default=list(ALGORITHMS), choices=ALGORITHMS)
    p.add_argument("--device-algorithms", default="first", choices=("first", "all"),
                   help="the devices table for the first algorithm only, or for all")
    p.add_argument("--rounds", type=int, default=3, help="rounds per row (round 0 compiles)")
    p.add_argument("--batch-size", type=int, default=10)
    p.add_argument("--buckets", type=int, default=6,
                   help="size groups per mapped call of the jitted strategies (6: default)")
    p.add_argument("--max-clients-personal", type=int, default=10**9,
                   help="clients-table rows of algorithms after the first only up to this M")
    p.add_argument("--pool-clients", type=int, nargs="*", default=[3400, 10000],
                   help="K of the resident-pools table (none: no such rows)")
    p.add_argument("--pool-sampled", type=int, default=100,
                   help="clients per round of the resident-pools table")
    p.add_argument("--pool-states", nargs="+", default=["device", "host"],
                   choices=("device", "host"), help="client-state placements per pool row")
    p.add_argument("--pool-data", default="synthetic", choices=("fmnist", "synthetic"),
                   help="data of the resident-pools table")
    p.add_argument("--pool-strategy", default="vmap",
                   help="strategy of the resident-pools table (vmap: the stage over all K "
                   "clients batched; sequential would run it one client at a time)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--timeout", type=float, default=1800, help="seconds per row")
    p.add_argument("--out", default="results/bench_scale")
    args = p.parse_args(argv)
    if args.quick:  # smoke settings: one size group (sharded compiles ~6x faster), tiny pool
        args.data, args.n_train, args.rounds, args.buckets = "synthetic", 8000, 2, 1
        args.clients, args.devices, args.process_devices = [20, 100], [1, 2], [1]
        args.strong_clients, args.weak_per_device, args.timeout = 16, 0, 120
        args.device_pool_clients = 32
        args.max_clients_personal = 20 if args.quick_personal else 0
        args.pool_clients = [200] if args.quick_personal else []
        args.layout_cost = ["32:16"]
    algorithms = list(args.algorithms)
    fedala_ok, why = fedala_available()
    notes = []
    if "fedala" in algorithms and not fedala_ok:
        algorithms.remove("fedala")
        notes.append(f"FedALA not measured: jaxpfl/algorithms/fedala.py does not import ({why})")
    if args.quick and not args.quick_personal and "fedala" in algorithms:
        notes.append("--quick measures FedAvg only; --quick-personal adds FedALA at 20 clients")
    tic = time.perf_counter()
    rows = []
    for job in jobs_for(args, algorithms):
        rows.append(launch(job, args.timeout))
        r = rows[-1]
        status = r.get("error") or (f"round {r['round_s']:.3f} s" if "round_s" in r
                                    else f"per-device / replicated {r['cost_ratio']:.2f}")
        where = f" K={job.num_clients} {job.client_state}" if job.table == "pool" else ""
        if job.table == "devices":
            where = f" {job.pool_layout}"
        print(f"  {job.table}: {job.algorithm} M={job.clients} {job.processes}p×{job.devices}"
              f" {job.scaling}{where}: {status}", flush=True)
    total_s = time.perf_counter() - tic
    from jaxpfl.machine import machine

    env = machine()
    c_rows = [r for r in rows if r["table"] == "clients"]
    d_rows = [r for r in rows if r["table"] == "devices"]
    p_rows = [r for r in rows if r["table"] == "pool"]
    l_rows = [r for r in rows if r["table"] == "layout"]
    first = next((r for r in rows if "error" not in r), {})
    print(f"\n## Clients per round (one device, default strategy)\n\nmodel {args.model}, "
          f"data {first.get('data', args.data)} ({first.get('train_examples', '?')} training "
          f"examples), Dir(0.1) split into K = M clients, batch {args.batch_size}, "
          f"1 local epoch, {args.rounds} rounds per row\n")
    print(table(c_rows, "clients"))
    print(_splits_note(c_rows))
    print("\n## Devices (sharded strategy; fake CPU devices share the host's cores)\n")
    print(table(d_rows, "devices"))
    print(_splits_note(d_rows))
    if l_rows:
        print(f"\n## Pool layouts: compiled work of a {LAYOUT_ROUNDS}-round phase (plans "
              "only)\n")
        print(layout_table(l_rows))
    if p_rows:
        print(f"\n## Resident pools (one device, {args.pool_strategy}; client state on the "
              "device vs in host memory)\n")
        print(table(p_rows, "pool"))
        print(_splits_note(p_rows))
    for n in notes:
        print(f"\nNote: {n}")
    print(f"\n{len(rows)} rows in {total_s:.0f} s")
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "bench_scale.json"), "w") as f:
        json.dump({"environment": env, "args": vars(args), "notes": notes, "rows": rows,
                   "total_seconds": total_s}, f, indent=2)
    plot(rows, os.path.join(args.out, "bench_scale.png"))
    print(f"wrote {args.out}/bench_scale.json and bench_scale.png")


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--worker":
        _worker_main(sys.argv[2], sys.argv[3])
    else:
        main()
