"""Many processes on JAX's own runtime: a 2-process CPU cluster on localhost.

Two subprocesses (2 fake CPU devices each, ``jax.distributed.initialize`` with a loopback
coordinator, gloo collectives) run sharded FedAvg through the driver; a 1-process run on 4
fake devices is the reference. Checked: the same parameters, only process 0 writes the
metrics, checkpoints cross process counts both ways (restore and resume), and the round
compiles once while the sampled clients and their sizes change. The workers are
tests/distributed_worker.py.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import pytest
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P
from toy import toy_dataset

from jaxpfl import distributed
from jaxpfl.errors import ConfigError

WORKER = Path(__file__).with_name("distributed_worker.py")
TIMEOUT_S = 300
_CLUSTER_VARS = ("JAX_COORDINATOR_ADDRESS", "JAX_NUM_PROCESSES", "JAX_PROCESS_ID",
                 "SLURM_NTASKS", "SLURM_PROCID", "SLURM_JOB_ID", "XLA_FLAGS")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _launch(jobs: list, processes: int, devices: int, logs: Path) -> None:
    """Run the worker's ``jobs`` on a cluster of ``processes`` × ``devices`` CPU devices."""
    base = {k: v for k, v in os.environ.items() if k not in _CLUSTER_VARS}
    # toy rounds: compiled with few optimisations and the emitters of the in-process tests
    # (conftest.py), on `devices` devices per process
    emitters = [f for f in os.environ.get("XLA_FLAGS", "").split() if "fusion_emitters" in f]
    base.update(JAX_PLATFORMS="cpu", PYTHONUNBUFFERED="1", JAX_DISABLE_MOST_OPTIMIZATIONS="1",
                XLA_FLAGS=" ".join([f"--xla_force_host_platform_device_count={devices}",
                                    *emitters]))
    port = _free_port()
    procs = []
    logs.mkdir(parents=True, exist_ok=True)
    for i in range(processes):
        env = dict(base)
        if processes > 1:
            env.update(JAX_COORDINATOR_ADDRESS=f"127.0.0.1:{port}",
                       JAX_NUM_PROCESSES=str(processes), JAX_PROCESS_ID=str(i))
        log = open(logs / f"p{i}.log", "w")
        procs.append((subprocess.Popen([sys.executable, str(WORKER), json.dumps(jobs)],
                                       env=env, stdout=log, stderr=subprocess.STDOUT), log))
    failed = []
    for i, (p, log) in enumerate(procs):
        try:
            rc = p.wait(timeout=TIMEOUT_S)
        except subprocess.TimeoutExpired:
            for q, _ in procs:
                if q.poll() is None:
                    q.kill()
            rc = "timeout"
        log.close()
        if rc != 0:
            failed.append((i, rc))
    if failed:
        tails = "\n".join(f"--- process {i} (rc {rc}):\n" + (logs / f"p{i}.log").read_text()[-3000:]
                          for i, rc in failed)
        pytest.fail(f"cluster of {processes} processes failed:\n{tails}")


def _state(out: Path, process: int = 0) -> list[np.ndarray]:
    got = np.load(out / f"p{process}.npz")
    return [got[f"arr_{i}"] for i in range(len(got.files))]


def _info(out: Path) -> dict:
    return json.loads((out / "info.json").read_text())


def _close(a: list, b: list, atol: float = 1e-6) -> None:
    assert len(a) == len(b)
    for x, y in zip(a, b):
        np.testing.assert_allclose(x, y, atol=atol, rtol=0)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Three launches: 2 processes (2 rounds); 1 process (2 rounds, restore and resume of
    the 2-process checkpoint, 4 rounds uninterrupted); 2 processes resuming the 1-process
    checkpoint to 4 rounds."""
    d = tmp_path_factory.mktemp("cluster")
    _launch([["run", str(d / "two"), 2, None], ["local", str(d / "two_local"), 2, None]], 2, 2,
            d / "logs_two")
    _launch([
        ["run", str(d / "one"), 2, None],
        ["restore", str(d / "one_restores_two"), 0, str(d / "two" / "run")],
        ["resume", str(d / "one_resumes_two"), 4, str(d / "two" / "run")],
        ["run", str(d / "one4"), 4, None],
    ], 1, 4, d / "logs_one")
    _launch([["resume", str(d / "two_resumes_one"), 4, str(d / "one" / "run")]], 2, 2,
            d / "logs_resume")
    return d


def test_two_processes_equal_one_process(runs):
    info = _info(runs / "two")
    assert (info["processes"], info["devices"], info["local_devices"]) == (2, 4, 2)
    assert _info(runs / "one")["processes"] == 1
    two = _state(runs / "two")
    _close(two, _state(runs / "two", 1), atol=0)  # every process holds the same state
    _close(two, _state(runs / "one"))
    # the evaluations (every process runs them) agree too
    hist = [{k: v for k, v in r.items() if not k.endswith("_seconds")} for r in info["history"]]
    ref = [{k: v for k, v in r.items() if not k.endswith("_seconds")}
           for r in _info(runs / "one")["history"]]
    assert [r["round"] for r in hist] == [0, 1, 2]
    for a, b in zip(hist, ref):
        assert a.keys() == b.keys()
        np.testing.assert_allclose([a[k] for k in a if k != "phase"],
                                   [b[k] for k in a if k != "phase"], atol=1e-6)


def test_per_device_pool_loads_each_process_its_own_clients_and_equals_one_process(runs):
    """--pool-layout per-device on 2 processes, images on disk (``MappedRows``, the default
    loader): each process reads only the examples of the clients its devices own (disjoint,
    together every client's; the whole file is never read), and the run equals the
    1-process run with the replicated pool (parameters and every evaluation)."""
    info = _info(runs / "two_local")
    ds = toy_dataset()
    examples = [np.concatenate([ds.train[k], ds.test[k]]) for k in range(ds.num_clients)]
    owned, loaded = info["owned"], info["loaded"]
    assert len(owned) == 2 and all(owned) and not set(owned[0]) & set(owned[1])
    assert sorted(owned[0] + owned[1]) == list(range(ds.num_clients))
    for clients, ids in zip(owned, loaded):
        assert ids == sorted(np.concatenate([examples[k] for k in clients]).tolist())
    total = sum(len(e) for e in examples)
    assert all(len(ids) < total for ids in loaded)  # neither process read the whole pool
    assert info["driver_round_compiles"] == 1  # device-affine phase plan: one compilation
    two = _state(runs / "two_local")
    _close(two, _state(runs / "two_local", 1), atol=0)
    _close(two, _state(runs / "one"))
    ref = [{k: v for k, v in r.items() if k.startswith("acc") or k == "client_train_loss"}
           for r in _info(runs / "one")["history"]]
    hist = [{k: r[k] for k in b} for r, b in zip(info["history"], ref)]
    for a, b in zip(hist, ref):
        np.testing.assert_allclose(list(a.values()), list(b.values()), atol=1e-6)


def test_only_process_zero_writes(runs):
    lines = (runs / "two" / "run" / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(x)["round"] for x in lines] == [0, 1, 2]  # each round once
    assert json.loads((runs / "two" / "run" / "checkpoints.json").read_text())["round"] == 2
    assert (runs / "two" / "run" / "summary.json").exists()


def test_two_process_checkpoint_restores_in_one_process(runs):
    assert _info(runs / "one_restores_two")["round"] == 2
    _close(_state(runs / "one_restores_two"), _state(runs / "two"), atol=0)


def test_checkpoints_resume_across_process_counts(runs):
    uninterrupted = _state(runs / "one4")
    _close(_state(runs / "one_resumes_two"), uninterrupted)  # 2 processes → 1
    _close(_state(runs / "two_resumes_one"), uninterrupted)  # 1 process → 2
    _close(_state(runs / "two_resumes_one", 1), uninterrupted)
    lines = (runs / "two_resumes_one" / "run" / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(x)["round"] for x in lines] == [0, 1, 2, 3, 4]


def test_no_recompilation_as_sampled_clients_change(runs):
    info = _info(runs / "two")
    sizes = info["client_sizes"]
    assert len({tuple(s) for s in sizes}) > 2  # really other clients and widths
    assert info["cache_sizes"] == [1] * len(sizes)  # engine: one compilation for all rounds
    assert info["driver_round_compiles"] == 1  # the driver's round, 2 sampled rounds


# ---- single-process helpers (no cluster) ---------------------------------------------------


def test_cluster_spec_from_arguments_jax_and_slurm_variables():
    assert distributed.cluster_spec(environ={}) == (None, 1, 0)
    assert distributed.cluster_spec("h:1", 4, 2, environ={}) == ("h:1", 4, 2)
    jax_env = {"JAX_COORDINATOR_ADDRESS": "10.0.0.1:1234", "JAX_NUM_PROCESSES": "3",
               "JAX_PROCESS_ID": "1"}
    assert distributed.cluster_spec(environ=jax_env) == ("10.0.0.1:1234", 3, 1)
    slurm = {"SLURM_NTASKS": "8", "SLURM_PROCID": "5", "SLURM_JOB_ID": "4097",
             "SLURM_STEP_NODELIST": "gpu[007-009,012],cpu1"}
    assert distributed.cluster_spec(environ=slurm) == ("gpu007:61441", 8, 5)
    assert distributed.cluster_spec(environ={**slurm, "JAX_COORDINATOR_PORT": "999"})[0] == \
        "gpu007:999"
    assert distributed.cluster_spec(environ={**slurm, **jax_env}) == ("10.0.0.1:1234", 3, 1)
    with pytest.raises(ConfigError, match="no coordinator"):
        distributed.cluster_spec(num_processes=2, process_id=0, environ={})
    with pytest.raises(ConfigError, match="not in"):
        distributed.cluster_spec("h:1", 2, 2, environ={})


@pytest.mark.parametrize("nodes,host", [
    ("node001", "node001"), ("node001,node002", "node001"), ("n[3-5]", "n3"),
    ("a[010,012-014],b1", "a010"), ("gpu-[01-02]", "gpu-01"),
])
def test_first_slurm_host(nodes, host):
    assert distributed.first_slurm_host(nodes) == host


def test_one_process_initialize_is_a_no_op(monkeypatch):
    for k in _CLUSTER_VARS:
        monkeypatch.delenv(k, raising=False)
    assert distributed.initialize() is False
    assert distributed.is_main() and not distributed.is_multiprocess()


def test_put_replicate_to_host_on_one_process():
    mesh = distributed.clients_mesh()
    host = np.arange(16, dtype=np.float32).reshape(8, 2)
    a = distributed.shard_clients(host, mesh)
    assert a.sharding.is_equivalent_to(NamedSharding(mesh, P("clients")), 2)
    r = distributed.replicate({"x": host, "k": jax.random.key(3)}, mesh)
    assert r["x"].sharding.is_fully_replicated
    np.testing.assert_array_equal(distributed.to_host(a), host)
    np.testing.assert_array_equal(distributed.to_host(r["k"]),
                                  jax.random.key_data(jax.random.key(3)))


def test_launcher_runs_a_script_as_main(tmp_path):
    """``python -m jaxpfl.distributed SCRIPT ARGS`` (one process: initialize is a no-op)."""
    script = tmp_path / "hello.py"
    script.write_text("import sys, jax\n"
                      "if __name__ == '__main__':\n"
                      "    print(sys.argv[1:], jax.process_count())\n")
    env = {k: v for k, v in os.environ.items() if k not in _CLUSTER_VARS}
    proc = subprocess.run([sys.executable, "-m", "jaxpfl.distributed", str(script), "a", "--b"],
                          capture_output=True, text=True, timeout=120, env=env)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip().splitlines()[-1] == "['a', '--b'] 1"
