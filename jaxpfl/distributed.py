"""Many devices, many hosts: jaxpfl on JAX's own multi-controller runtime.

One Python process runs per host (or per accelerator); every process runs the SAME program
(the driver, every round, every evaluation), and ``jax.distributed.initialize`` joins them
into one runtime in which ``jax.devices()`` lists every process's devices. The ``sharded``
strategy's ``Mesh`` over ``jax.devices()`` then spans all hosts, the client axis of a round
is split over all of them (``jax.shard_map``), and the server's weighted mean becomes a
cross-host all-reduce. There is no transport of our own: the collectives are XLA's (NCCL on
GPUs, gloo on CPUs).

Every host input of a round (the sampled clients, their index rows, the pool) is a
deterministic function of the seed, so every process computes the SAME host value and
:func:`global_array` builds the global array from it without communication: each process
fills only its own devices' shards (``jax.make_array_from_callback``). :func:`to_host`
brings a global array back (the local copy of a replicated array; an all-gather otherwise).

Usage (see docs/scale.md)::

    from jaxpfl import distributed
    distributed.initialize()          # before anything else touches a JAX backend
    ...                               # the same script on every process
    if distributed.is_main(): ...     # process 0 writes files

``initialize`` takes its settings from its arguments, else from the environment:

==================  ==========================  ===============================================
setting             JAX's variable              SLURM fallback
==================  ==========================  ===============================================
coordinator         ``JAX_COORDINATOR_ADDRESS`` first host of ``SLURM_STEP_NODELIST`` (else
                                                ``SLURM_JOB_NODELIST``, ``SLURM_NODELIST``),
                                                port ``JAX_COORDINATOR_PORT`` or
                                                61440 + ``SLURM_JOB_ID`` mod 4096
number of processes ``JAX_NUM_PROCESSES``       ``SLURM_NTASKS``
process id          ``JAX_PROCESS_ID``          ``SLURM_PROCID``
==================  ==========================  ===============================================

With one process (nothing set, or a count of 1) it does nothing. ``JAX_LOCAL_DEVICE_IDS``
(read by JAX itself) restricts the accelerators a process uses.
"""

from __future__ import annotations

import os
import re
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, Sharding
from jax.sharding import PartitionSpec as P

from jaxpfl.errors import ConfigError

PyTree = Any

ENV_COORDINATOR = "JAX_COORDINATOR_ADDRESS"
ENV_NUM_PROCESSES = "JAX_NUM_PROCESSES"
ENV_PROCESS_ID = "JAX_PROCESS_ID"
ENV_PORT = "JAX_COORDINATOR_PORT"
SLURM_NODELISTS = ("SLURM_STEP_NODELIST", "SLURM_JOB_NODELIST", "SLURM_NODELIST")

_started = False


def first_slurm_host(nodelist: str) -> str:
    """The first host of a SLURM node list: ``node[003-005,9],gpu1`` → ``node003``."""
    nodelist = nodelist.strip()
    m = re.match(r"([^,\[]*)(\[([^\]]*)\])?", nodelist)
    if not m or not (m.group(1) or m.group(3)):
        raise ConfigError(f"cannot read a host from SLURM node list {nodelist!r}")
    prefix, ranges = m.group(1), m.group(3)
    if ranges is None:
        return prefix
    return prefix + re.split(r"[,-]", ranges)[0]


def cluster_spec(
    coordinator: str | None = None,
    num_processes: int | None = None,
    process_id: int | None = None,
    environ: dict[str, str] | None = None,
) -> tuple[str | None, int, int]:
    """``(coordinator, num_processes, process_id)`` from the arguments, else JAX's variables,
    else SLURM's (module docstring). One process when nothing is set; the coordinator is
    ``None`` only then."""
    env = os.environ if environ is None else environ

    def pick(arg, *names):
        if arg is not None:
            return arg
        for n in names:
            if env.get(n):
                return env[n]
        return None

    num = pick(num_processes, ENV_NUM_PROCESSES, "SLURM_NTASKS")
    num = 1 if num is None else int(num)
    pid = int(pick(process_id, ENV_PROCESS_ID, "SLURM_PROCID") or 0)
    if num < 1 or not 0 <= pid < num:
        raise ConfigError(f"process id {pid} is not in [0, {num}) (number of processes {num})")
    coord = pick(coordinator, ENV_COORDINATOR)
    if coord is None and num > 1:
        nodelist = pick(None, *SLURM_NODELISTS)
        if nodelist is None:
            raise ConfigError(
                f"{num} processes but no coordinator: pass coordinator='host:port' or set "
                f"{ENV_COORDINATOR} (or run under SLURM)"
            )
        port = env.get(ENV_PORT) or str(61440 + int(env.get("SLURM_JOB_ID", "0")) % 4096)
        coord = f"{first_slurm_host(nodelist)}:{port}"
    return coord, num, pid


def initialize(
    coordinator: str | None = None,
    num_processes: int | None = None,
    process_id: int | None = None,
    *,
    local_device_ids: list[int] | None = None,
    timeout_s: int = 300,
) -> bool:
    """Join this process to a multi-process JAX runtime (``jax.distributed.initialize``);
    settings from the arguments or the environment (module docstring). Call it before any
    other JAX call that touches a backend. Returns whether a multi-process runtime was
    started (False for one process: a no-op). CPU processes talk over gloo."""
    global _started
    coord, num, pid = cluster_spec(coordinator, num_processes, process_id)
    if num == 1 or _started:
        return _started
    # CPU backends need a cross-process collective implementation (gloo is the default on
    # jax 0.10, set here so an older default of "none" does not silently break collectives).
    if jax.config.jax_cpu_collectives_implementation in (None, "none"):
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(
        coord, num_processes=num, process_id=pid, local_device_ids=local_device_ids,
        initialization_timeout=timeout_s,
    )
    _started = True
    return True


def shutdown() -> None:
    """Leave the multi-process runtime (a no-op if :func:`initialize` started none)."""
    global _started
    if _started:
        jax.distributed.shutdown()
        _started = False


def process_count() -> int:
    return jax.process_count()


def process_index() -> int:
    return jax.process_index()


def is_multiprocess() -> bool:
    return jax.process_count() > 1


def is_main() -> bool:
    """Process 0: the one that writes metrics, plots, summaries (checkpoints are written
    by all processes together)."""
    return jax.process_index() == 0


def barrier(name: str) -> None:
    """Wait until every process reached ``barrier(name)`` (a no-op for one process)."""
    if is_multiprocess():
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices(name)


def clients_mesh(num_devices: int | None = None) -> Mesh:
    """A 1-D mesh ``clients`` over ``jax.devices()`` (every process's devices)."""
    devs = jax.devices()
    return Mesh(devs[: num_devices or len(devs)], ("clients",))


def _is_key(a) -> bool:
    return hasattr(a, "dtype") and jnp.issubdtype(a.dtype, jax.dtypes.prng_key)


def global_array(host: np.ndarray, sharding: Sharding) -> jax.Array:
    """The global array of value ``host`` with ``sharding``; every process passes the same
    ``host`` and fills only the shards of its own devices (no communication)."""
    host = np.asarray(host)
    return jax.make_array_from_callback(host.shape, sharding, lambda idx: host[idx])


def _placed(a, sharding: Sharding) -> bool:
    return (isinstance(a, jax.Array) and getattr(a, "_committed", True)
            and a.sharding.is_equivalent_to(sharding, a.ndim))


def put(tree: PyTree, sharding: Sharding) -> PyTree:
    """Every leaf of ``tree`` with ``sharding``. One process: ``jax.device_put``. Several:
    leaves already placed so are kept; every other leaf must have the same value on every
    process and becomes a global array built from the local copy (:func:`global_array`);
    PRNG key arrays are carried as their key data."""

    if not is_multiprocess():
        return jax.tree.map(lambda a: jax.device_put(jnp.asarray(a), sharding), tree)

    def one(a):
        if _placed(a, sharding):
            return a
        if _is_key(a):
            impl = jax.random.key_impl(a)
            return jax.random.wrap_key_data(one(jax.random.key_data(a)), impl=impl)
        if isinstance(a, jax.Array) and not a.is_fully_addressable:
            return jax.device_put(a, sharding)  # a global reshard (same device set)
        return global_array(np.asarray(a), sharding)

    return jax.tree.map(one, tree)


def shard_clients(tree: PyTree, mesh: Mesh | None = None) -> PyTree:
    """Leaves split over the mesh's ``clients`` axis along their first dimension."""
    return put(tree, NamedSharding(mesh or clients_mesh(), P("clients")))


def replicate(tree: PyTree, mesh: Mesh | None = None) -> PyTree:
    """Leaves replicated on every device of the mesh (all processes' devices)."""
    return put(tree, NamedSharding(mesh or clients_mesh(), P()))


def to_host(tree: PyTree) -> PyTree:
    """NumPy copies of every leaf, the same on every process: a local copy of a fully
    replicated (or fully addressable) array, a cross-process all-gather of a sharded one.
    Every process must call it when any leaf is sharded across processes."""

    def one(a):
        if _is_key(a):
            a = jax.random.key_data(a)
        if not isinstance(a, jax.Array) or a.is_fully_addressable:
            return np.asarray(a)
        if a.is_fully_replicated:
            return np.asarray(a.addressable_data(0))
        from jax.experimental import multihost_utils

        return np.asarray(multihost_utils.process_allgather(a, tiled=True))

    return jax.tree.map(one, tree)


def local_copy(tree: PyTree) -> PyTree:
    """Every leaf as an array on this process's default device (``to_host`` then
    ``jnp.asarray``): for process-local work on a global state, e.g. an evaluation every
    process runs on its own."""
    return jax.tree.map(jnp.asarray, to_host(tree))


def main(argv: list[str] | None = None) -> None:
    """``python -m jaxpfl.distributed SCRIPT [ARGS...]``: :func:`initialize` from the
    environment, then run SCRIPT as ``__main__`` with ARGS (e.g. an experiment of
    ``experiments/`` with ``--strategy sharded``), so a script need not call it itself."""
    import runpy
    import sys

    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] in ("-h", "--help"):
        print(main.__doc__)
        raise SystemExit(0 if argv else 2)
    from jaxpfl import distributed  # the package's copy of this module (not __main__'s)

    distributed.initialize()
    sys.argv = list(argv)
    runpy.run_path(argv[0], run_name="__main__")


__all__ = [
    "barrier",
    "clients_mesh",
    "cluster_spec",
    "first_slurm_host",
    "global_array",
    "initialize",
    "is_main",
    "is_multiprocess",
    "local_copy",
    "main",
    "process_count",
    "process_index",
    "put",
    "replicate",
    "shard_clients",
    "shutdown",
    "to_host",
]


if __name__ == "__main__":
    main()
