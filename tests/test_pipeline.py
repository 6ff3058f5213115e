"""``jaxpfl.experiment`` called from research code (no script): the files it writes, and its
evaluation against one computed independently from the returned state."""

from __future__ import annotations

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from toy import MODEL, toy_dataset

import jaxpfl
from jaxpfl.errors import ConfigError


def _counts(params, ds, k):
    """Correct predictions and examples of ``params`` on client k's test split, in NumPy."""
    idx = ds.test[k]
    logits = np.asarray(MODEL.apply(params, jnp.asarray(ds.x[idx])))
    return int((logits.argmax(-1) == ds.y[idx]).sum()), len(idx)


def test_experiment_writes_the_files_and_evaluates_what_the_algorithm_declares(tmp_path):
    ds = toy_dataset(test_per_client=6)
    alg = jaxpfl.ditto(MODEL, jaxpfl.DittoConfig(mu=0.5),
                       jaxpfl.FedAvgConfig(client_lr=0.2, batch_size=4))
    out = tmp_path / "run"
    result = jaxpfl.experiment(alg, ds, MODEL, rounds=2, clients_per_round=3,
                               config=jaxpfl.RunConfig(seed=3, out=str(out), progress=False),
                               strategy=jaxpfl.Strategy("vmap", buckets=2))
    for name in ("metrics.jsonl", "summary.json", "final.json", "accuracy.png", "partition.npz"):
        assert (out / name).exists(), name
    records = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["round"] for r in records] == [0, 1, 2]
    final = json.loads((out / "final.json").read_text())
    assert final["round"] == 2 and final["wall_seconds"] > 0
    # the global model (init_: there are personal models too) and each client's own model,
    # pooled over every training client's test split, recomputed here from the final state
    state = result["state"]
    w = jax.tree.map(np.asarray, state.server.params)
    v = jax.tree.map(np.asarray, state.clients.personal)
    glob = [_counts(w, ds, k) for k in ds.train_clients]
    pers = [_counts(jax.tree.map(lambda a, k=k: a[k], v), ds, k) for k in ds.train_clients]
    def pooled(counts):
        return sum(c for c, _ in counts) / sum(n for _, n in counts)

    assert final["init_acc_pooled"] == pytest.approx(pooled(glob))
    assert final["pers_acc_pooled"] == pytest.approx(pooled(pers))
    assert result["summary"]["pers_acc_pooled"]["final"] == final["pers_acc_pooled"]


def test_experiment_needs_rounds_for_one_algorithm():
    ds = toy_dataset()
    with pytest.raises(ConfigError, match="give rounds"):
        jaxpfl.experiment(jaxpfl.fedavg(MODEL), ds, MODEL)
