"""One process of the localhost clusters of tests/test_distributed.py (not collected).

``python tests/distributed_worker.py JOBS`` with the cluster given by JAX's variables
(``JAX_COORDINATOR_ADDRESS``, ``JAX_NUM_PROCESSES``, ``JAX_PROCESS_ID``; unset: one process)
and the device count by ``XLA_FLAGS``. ``JOBS`` is a JSON list of ``[mode, out, rounds,
ckpt]``, run in order. Every process runs the same program; each writes
``out/p<process>.npz`` (the state it holds after the job) and process 0 ``out/info.json``.

Modes: ``run`` (``rounds`` rounds of sharded FedAvg on the toy dataset through the driver,
checkpoints in out/run; then the compile check), ``local`` (the same run with the
per-device pool over images left on disk: every device holds only its own clients'
examples, and info.json records the example ids each process read), ``resume`` (continue
the run directory ``ckpt`` to ``rounds`` rounds), ``restore`` (read the checkpoint of run
directory ``ckpt``).
The compile check: sampled rounds with other clients and sizes through one phase plan, the
round's cache size after each; and the driver's compilations of its round
(``jax_log_compiles``).
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from jaxpfl import distributed  # noqa: E402

distributed.initialize(timeout_s=60)  # from the environment; a no-op for one process

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from toy import MODEL, CompileLog, toy_dataset  # noqa: E402

from jaxpfl.algorithms.fedavg import FedAvgConfig, fedavg  # noqa: E402
from jaxpfl.core import (  # noqa: E402
    Strategy,
    evaluate_global,
    evaluate_model,
    make_round,
    place_pool,
    place_rows,
    summarize,
)
from jaxpfl.core.rounds import phase_plan, round_inputs  # noqa: E402
from jaxpfl.data.dataset import MappedRows  # noqa: E402
from jaxpfl.run import Phase, RunConfig, _Checkpoints, run, sample_clients  # noqa: E402

CLIENTS = 4  # of 6: sampled rounds (C < 1) with changing clients and sizes
STRATEGY = Strategy("sharded")


def algorithm():
    return fedavg(MODEL, FedAvgConfig(local_epochs=1, batch_size=5, client_lr=0.1,
                                      server_opt="fedavgm"))


def init_params(key):
    return MODEL.init(key, jnp.zeros((1, 4, 4, 1), jnp.uint8))


class _OnDisk:
    """An image file's rows (as a memory map reads them): records the pool ids read and
    refuses to be read whole."""

    def __init__(self, a: np.ndarray, start: int, log: list[int]):
        self.a, self.start, self.log = a, start, log
        self.shape, self.dtype = a.shape, a.dtype

    def __len__(self) -> int:
        return len(self.a)

    def __getitem__(self, ids):
        self.log.extend(int(i) + self.start for i in np.asarray(ids).reshape(-1))
        return self.a[ids]

    def __array__(self, *args, **kwargs):
        raise AssertionError("the whole image file was read")


def drive(out: str, rounds: int, resume: bool, per_device: bool = False) -> dict:
    """The driver's run; ``per_device``: each device holds only its own clients' examples,
    the images are on disk (``MappedRows``, read by the default loader), and the result gets
    ``loaded``: the example ids this process read."""
    ds = toy_dataset()
    loaded: list[int] = []
    if per_device:  # images "on disk": the default loader reads rows of MappedRows, recorded
        half = len(ds.x) // 2
        ds = dataclasses.replace(ds, x=MappedRows(_OnDisk(ds.x[:half], 0, loaded),
                                            _OnDisk(ds.x[half:], half, loaded)))
    strategy = dataclasses.replace(STRATEGY, pool_layout="per-device") if per_device \
        else STRATEGY
    pool = place_pool(ds, strategy) if per_device else None
    x, y = (pool.x, pool.y) if pool else (jnp.asarray(ds.x), jnp.asarray(ds.y))

    def evaluate(state, t, final):
        if pool:
            return summarize(evaluate_model(MODEL, state.server.params, x, y, pool.splits,
                                            np.arange(ds.num_clients), strategy))
        return summarize(evaluate_global(MODEL, state.server.params, x, y, list(ds.test)))

    rc = RunConfig(seed=3, out=out, resume=resume, progress=False, strategy=strategy,
                   config_for_hash="distributed-test", checkpoint_every=1)
    res = run([Phase("fedavg", algorithm(), rounds, CLIENTS)], ds, init_params, evaluate, rc,
              pool=pool or (x, y))
    if pool:
        res["loaded"] = sorted(loaded)
        res["owned"] = pool.placement.process_clients(strategy.mesh()).tolist()
        res["pool_rows_here"] = sum(int(np.prod(s.data.shape[:2]))
                                    for s in x.value.addressable_shards)
    return res


def save(out: str, state, info: dict) -> None:
    leaves = distributed.to_host(jax.tree.leaves(state))
    np.savez(os.path.join(out, f"p{jax.process_index()}.npz"), *leaves)
    if distributed.is_main():
        info.update(processes=jax.process_count(), devices=jax.device_count(),
                    local_devices=jax.local_device_count())
        with open(os.path.join(out, "info.json"), "w") as f:
            json.dump(info, f)


def every_process(values: list[int]) -> list[list[int]]:
    """Each process's list of non-negative ints (< 4096 of them), on every process."""
    from jax.experimental import multihost_utils

    mine = np.full(4096, -1, np.int64)
    mine[: len(values)] = values
    rows = np.asarray(multihost_utils.process_allgather(mine)).reshape(-1, 4096)
    return [[int(v) for v in row if v >= 0] for row in rows]


def compile_check() -> dict:
    ds = toy_dataset()
    alg = algorithm()
    rnd = make_round(alg, STRATEGY)
    mesh = STRATEGY.mesh()
    root = jax.random.key(0)
    state = distributed.replicate(alg.init(root, init_params(jax.random.key(1)), 6), mesh)
    x, y = distributed.replicate((jnp.asarray(ds.x), jnp.asarray(ds.y)), mesh)
    sel = [sample_clients(root, t, np.arange(6), 3) for t in range(5)]
    sizes = [sorted(ds.train.sizes[s].tolist()) for s in sel]
    plan = phase_plan(ds, sel, STRATEGY)
    cache = []
    for t, ids in enumerate(sel):
        host = round_inputs(ds, ids, STRATEGY, plan)
        inputs = host._replace(groups=place_rows(host.groups, STRATEGY))
        state, _ = rnd(state, x, y, inputs, jnp.int32(t), root)
        cache.append(rnd._cache_size())
    return {"cache_sizes": cache, "client_sizes": sizes}


def job(mode: str, out: str, rounds: int, ckpt: str | None) -> None:
    os.makedirs(out, exist_ok=True)
    if mode == "run":
        with CompileLog() as compiles:
            res = drive(os.path.join(out, "run"), rounds, resume=False)
        info = {"history": res["history"],
                "driver_round_compiles": compiles.names.count("jit(round_fn)")}
        save(out, res["state"], {**info, **compile_check()})
    elif mode == "local":  # the per-device pool: each process loads its own clients only
        with CompileLog() as compiles:
            res = drive(os.path.join(out, "run"), rounds, resume=False, per_device=True)
        info = {"history": res["history"],
                "driver_round_compiles": compiles.names.count("jit(round_fn)"),
                "pool_rows": every_process([res["pool_rows_here"]]),
                "loaded": every_process(res["loaded"]), "owned": every_process(res["owned"])}
        save(out, res["state"], info)
    elif mode == "resume":
        run_dir = os.path.join(out, "run")
        if distributed.is_main():
            shutil.copytree(ckpt, run_dir)
        distributed.barrier("copied")
        res = drive(run_dir, rounds, resume=True)
        save(out, res["state"], {"history": res["history"]})
    elif mode == "restore":
        ckpts = _Checkpoints(ckpt, "distributed-test")
        t = ckpts.latest()
        like = distributed.replicate(
            algorithm().init(None, init_params(jax.random.key(0)), 6), STRATEGY.mesh()
        )
        save(out, ckpts.restore(t, like), {"round": t})
    else:
        raise SystemExit(f"unknown mode {mode}")
    distributed.barrier("done")


def main() -> None:
    for mode, out, rounds, ckpt in json.loads(sys.argv[1]):
        job(mode, out, rounds, ckpt)


if __name__ == "__main__":
    main()
