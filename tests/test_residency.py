"""Client state in host memory (jaxpfl.core.residency): the driver's results equal the
device-resident run's, a resume restores the host stack, and the placement rules.

The engine-level equality (HostRound vs make_round against the NumPy FedALA loop, chunked
stage) is in tests/test_fedala.py."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from toy import MODEL, toy_dataset

from jaxpfl.algorithms.fedala import FedALAConfig, fedala
from jaxpfl.algorithms.fedavg import FedAvgConfig, fedavg
from jaxpfl.algorithms.fedora import FedoraConfig, fedora
from jaxpfl.core import Splits, Strategy, evaluate_personal
from jaxpfl.core.buckets import Rows
from jaxpfl.core.residency import (
    chunk_groups,
    client_state_bytes,
    host_gather,
    host_scatter,
    resolve_client_state,
)
from jaxpfl.errors import ConfigError
from jaxpfl.run import Phase, RunConfig, run

SIZES = (3, 10, 17, 25, 6)
CFG = FedALAConfig(eta=1.0, threshold=0.01, max_start_passes=6, client_lr=0.1, batch_size=5)


def _run(tmp_path, name: str, rounds: int, client_state: str, resume: bool = False):
    ds = toy_dataset(SIZES)
    alg = fedala(MODEL, CFG)
    x, y = jnp.asarray(ds.x), jnp.asarray(ds.y)
    strategy = Strategy("sequential", client_state=client_state)

    def evaluate(state, t, final):
        c = evaluate_personal(MODEL, alg.personal_params(state), x, y, Splits.of(ds),
                              np.arange(ds.num_clients), strategy)
        return {"acc": float(np.sum(c.correct) / np.sum(c.count))}

    config = RunConfig(seed=5, out=str(tmp_path / name), strategy=strategy, progress=False,
                       resume=resume, checkpoint_every=1)
    return run([Phase("fedala", alg, rounds, 0.6)], ds, lambda k: MODEL.init(
        k, jnp.zeros((1, 4, 4, 1), jnp.uint8)), evaluate, config, pool=(x, y))


def test_driver_host_equals_device_and_a_resume_restores_the_host_stack(tmp_path):
    dev = _run(tmp_path, "dev", 4, "device")
    host = _run(tmp_path, "host", 4, "host")
    assert host["summary"]["client_state"]["fedala"]["placement"] == "host"
    assert dev["summary"]["client_state"]["fedala"]["placement"] == "device"
    assert isinstance(host["state"].clients.theta["w1"], np.ndarray)
    assert [r["acc"] for r in host["history"]] == [r["acc"] for r in dev["history"]]
    jax.tree.map(np.testing.assert_array_equal, jax.tree.map(np.asarray, dev["state"]),
                 host["state"])
    # stop after 2 rounds, then continue to 4 from the checkpoint: the same final state
    _run(tmp_path, "cut", 2, "host")
    resumed = _run(tmp_path, "cut", 4, "host", resume=True)
    assert isinstance(resumed["state"].clients.theta["w1"], np.ndarray)
    jax.tree.map(np.testing.assert_array_equal, host["state"], resumed["state"])
    assert [r["acc"] for r in resumed["history"]] == [r["acc"] for r in host["history"]]


def test_bytes_per_client_and_placement_rules():
    params = MODEL.init(jax.random.key(0), jnp.zeros((1, 4, 4, 1), jnp.uint8))
    n_params = sum(a.size for a in jax.tree.leaves(params))
    top = params["w2"].size + params["b2"].size  # layer_idx 2: W_k of the last two tensors
    alg = fedala(MODEL, CFG)
    per = client_state_bytes(alg, params, 7)
    assert per >= 4 * (n_params + top)  # θ_k and W_k in float32, plus small flags
    assert per - 4 * (n_params + top) < 64
    assert client_state_bytes(fedavg(MODEL, FedAvgConfig()), params, 7) == 0
    # on a CPU backend auto keeps the stack on the device (device memory is host memory)
    assert resolve_client_state(Strategy(client_state="auto"), alg, per, 10**6) == "device"
    assert resolve_client_state(Strategy(client_state="host"), alg, per, 7) == "host"
    fed = fedora(MODEL, FedoraConfig(propagate=False))
    assert resolve_client_state(Strategy(client_state="auto"), fed, per, 7) == "device"
    with pytest.raises(ConfigError, match="stays on the device"):
        resolve_client_state(Strategy(client_state="host"), fed, per, 7)
    with pytest.raises(ConfigError, match="client_state"):
        Strategy(client_state="disk")


def test_chunks_cover_every_row_once_with_one_shape_per_group():
    def group(ids, width):
        n = len(ids)
        return Rows(np.array(ids, np.int32), np.ones(n, np.float32),
                    np.zeros((n, width), np.int32), np.ones(n, np.int32),
                    np.zeros((n, 1), np.int32), np.zeros(n, np.int32),
                    np.zeros((n, 1), np.int32), np.zeros(n, np.int32))

    groups = (group([4, 0, 9, 2, 7], 3), group([1, 3], 8))
    chunks = chunk_groups(groups, 2, num_clients=10)
    assert [len(c.ids) for c in chunks] == [2, 2, 2, 2]
    assert [c.train_idx.shape[1] for c in chunks] == [3, 3, 3, 8]
    real = np.concatenate([c.ids[c.mask > 0] for c in chunks])
    assert sorted(real.tolist()) == [0, 1, 2, 3, 4, 7, 9]
    pad = chunks[2]
    assert pad.ids.tolist() == [7, 10] and pad.mask.tolist() == [1, 0] and pad.train_n[1] == 0


def test_host_gather_clamps_padding_and_scatter_drops_it():
    tree = {"a": np.arange(12, dtype=np.float32).reshape(4, 3)}
    got = host_gather(tree, np.array([2, 4]))  # 4 = padding id (K)
    np.testing.assert_array_equal(got["a"], tree["a"][[2, 3]])
    host_scatter(tree, np.array([1, 4]), np.array([1.0, 0.0]),
                 {"a": np.full((2, 3), -1.0, np.float32)})
    assert tree["a"][1].tolist() == [-1.0] * 3 and tree["a"][3].tolist() == [9.0, 10.0, 11.0]
