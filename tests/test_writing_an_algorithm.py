"""docs/engine.md, "Writing an algorithm": the worked example runs exactly as written, and it
computes what the section says: w is FedAvg's, bit for bit, and each client's personal model
v_k is its own local training over the rounds it was sampled in (a per-client loop here)."""

from __future__ import annotations

import re
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxpfl
from jaxpfl.core import ClientData, derive
from jaxpfl.core import keys as K
from jaxpfl.run import sample_clients

DOC = Path(__file__).resolve().parents[1] / "docs" / "engine.md"


@pytest.fixture(scope="module")
def example() -> dict:
    text = DOC.read_text()
    section = text[text.index("## Writing an algorithm"):]
    (code,) = re.findall(r"```python\n(.*?)```", section, re.S)
    ns: dict = {"__name__": "engine_md_example"}
    exec(compile(code, str(DOC), "exec"), ns)  # the block as a user would paste it
    return ns


def test_the_example_runs_and_reports_both_models(example):
    s = example["result"]["summary"]
    assert s["rounds"] == 3
    for key in ("acc_pooled", "pers_acc_pooled"):
        assert 0.0 <= s[key]["final"] <= 1.0


def test_the_global_model_is_fedavg_exactly(example):
    ns = example
    plain = jaxpfl.fedavg(ns["model"], ns["config"])
    pool = ns["pool"]

    def evaluate(state, t, final):
        return {}

    ref = jaxpfl.simulate([jaxpfl.Phase("fedavg", plain, 3, 5)], ns["ds"],
                          lambda key: ns["model"].init(key, pool.x[:1]), evaluate,
                          jaxpfl.RunConfig(seed=0, progress=False))
    got = ns["result"]["state"].server.params
    jax.tree.map(np.testing.assert_array_equal, got, ref["state"].server.params)


def test_each_personal_model_is_its_own_local_training(example):
    ns = example
    ds, model, cfg = ns["ds"], ns["model"], ns["config"]
    root = jax.random.key(0)
    w0 = model.init(derive(root, K.INIT, 0), ns["pool"].x[:1])
    tx = jaxpfl.client_sgd(cfg.client_lr)
    x, y = jnp.asarray(ds.x), jnp.asarray(ds.y)
    v = {int(k): w0 for k in ds.train_clients}
    for t in range(3):
        for k in sample_clients(root, t, np.asarray(ds.train_clients), 5):
            k = int(k)
            idx = jnp.asarray(ds.train[k], jnp.int32)
            data = ClientData(idx, jnp.int32(len(idx)), x, y)
            key = derive(root, K.DATA, t, k)
            order = jaxpfl.epoch_schedule(jax.random.fold_in(key, 2), len(idx), len(idx),
                                          cfg.batch_size, cfg.local_epochs)
            v[k], _ = jaxpfl.local_train(model, tx, v[k], data, order, jax.random.fold_in(key, 3))
    stacked = ns["alg"].personal_params(ns["result"]["state"])
    trained = 0
    for k in ds.train_clients:
        got = jax.tree.map(lambda a, r=int(k): np.asarray(a[r]), stacked)
        jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-5), got,
                     jax.tree.map(np.asarray, v[int(k)]))
        trained += not all(np.array_equal(a, b) for a, b in
                           zip(jax.tree.leaves(got), jax.tree.leaves(w0)))
    assert 0 < trained < len(ds.train_clients)  # some clients trained, some were never sampled
