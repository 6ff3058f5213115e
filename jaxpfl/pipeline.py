"""One experiment, owned by the library (``jaxpfl.experiment``): data, model, algorithm,
evaluation, driver, files.

:func:`experiment` is what every script under ``experiments/`` calls, and what research code
calls to get the same evaluation, files and summary without copying a script::

    import jaxpfl
    ds = jaxpfl.federate(jaxpfl.load_raw("mnist_embedded"), "dirichlet", 20, alpha=0.1)
    model = jaxpfl.get_model("cnn", ds.input_shape, ds.num_classes)
    result = jaxpfl.experiment(jaxpfl.fedala(model), ds, model, rounds=5,
                               config=jaxpfl.RunConfig(out="runs/mine"))
    result["summary"]["pers_acc_pooled"]["best"]

The evaluation is built from what the :class:`~jaxpfl.core.Algorithm` declares
(docs/algorithms.md §1.6 for the metrics):

* ``personalize`` (fine-tune then evaluate, Personalized FedAvg, Per-FedAvg): on the
  evaluation clients (the held-out clients when the data has some, else every training
  client), each adapting on its support set (train split) and measured on its query set (test
  split): ``init_*`` (the global model) and ``pers_*`` (the personalized one; with a curve
  over personalization epochs, ``pers_acc_mean_by_epoch``);
* otherwise, on every training client's test split (and validation split when every client
  has one, ``val_*``): the global model ``global_params`` as ``*`` (``init_*`` when the
  algorithm also has personal models) and the central test set as ``central_*`` when the
  data has one; each per-client model of ``personal_params`` as ``pers_*`` (several,
  ``PersonalModels(pers=..., received=...)``, as ``<name>_*``).

Intermediate evaluations of a ``personalize`` evaluator may sample ``n_eval_clients``
clients (``subsampled``, left out of ``best``); the final one uses all. Files written in
``config.out``: metrics.jsonl and summary.json (the driver), final.json (the last record with
the run's wall time), accuracy.png, partition.npz (the split, replayable with
``--partition-file``) and the driver's checkpoints.
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxpfl import distributed
from jaxpfl.core import (
    Algorithm,
    ClientEvaluator,
    Counts,
    PersonalModels,
    Splits,
    Strategy,
    default_strategy,
    derive,
    evaluate_clients,
    evaluate_global,
    evaluate_personal,
    place_pool,
    summarize,
)
from jaxpfl.core import keys as K
from jaxpfl.core.placement import Pool
from jaxpfl.data.dataset import FederatedDataset
from jaxpfl.data.federate import support_query
from jaxpfl.data.store import save_partition
from jaxpfl.errors import ConfigError
from jaxpfl.models import MODELS, Model
from jaxpfl.run import Phase, RunConfig, plot_curves, run

PyTree = Any
#: Which clients a ``personalize`` evaluator measures: ``auto`` the held-out clients when the
#: data has some, else every training client; ``heldout`` the held-out clients only.
EVAL_CLIENTS = ("auto", "heldout")


@dataclasses.dataclass(frozen=True)
class ExperimentConfig:
    """What every experiment has beside its algorithm, data and run settings.

    Attributes:
      rounds: communication rounds R
      model: model name (jaxpfl.models): cnn (FedAvgCNN, PFLlib's), mlp_2nn, perfedavg_mlp,
        fedora_mlp, emnist_cnn, ...
      n_eval_clients: evaluation clients sampled at each intermediate evaluation of a
        fine-tune evaluator (none: all; the final evaluation uses all)
      seeds: run these seeds one after another and report mean ± std (instead of --seed)
    """

    rounds: int = 50
    model: str = dataclasses.field(default="cnn", metadata={"choices": tuple(MODELS)})
    n_eval_clients: int | None = None
    seeds: tuple[int, ...] | None = dataclasses.field(
        default=None, metadata={"affects_results": False}
    )

    def __post_init__(self):
        r = self.rounds
        if isinstance(r, bool) or not isinstance(r, int) or r < 0:
            raise ConfigError(f"rounds must be an integer >= 0, got {r!r}")
        if self.model not in MODELS:
            raise ConfigError(f"unknown model {self.model!r}; choose one of: {', '.join(MODELS)}")
        n = self.n_eval_clients
        if n is not None and (isinstance(n, bool) or not isinstance(n, int) or n < 1):
            raise ConfigError(f"n_eval_clients must be an integer >= 1 or none, got {n!r}")
        if self.seeds is not None and (not self.seeds or min(self.seeds) < 0):
            raise ConfigError(f"seeds must be integers >= 0, got {self.seeds!r}")


def _personal_models(alg: Algorithm, state) -> dict[str, PyTree]:
    """``personal_params`` as ``{name: stacked params}`` (a single stack is ``pers``)."""
    if alg.personal_params is None:
        return {}
    got = alg.personal_params(state)
    return dict(got) if isinstance(got, PersonalModels) else {"pers": got}


def _fine_tune_evaluator(alg, ds, pool, strategy, *, seed, n_eval_clients, clients):
    """The ``personalize`` evaluator over the evaluation clients (module docstring)."""
    heldout = np.asarray(ds.eval_clients, np.int64)
    if clients == "heldout" and len(heldout) == 0:
        raise ConfigError("no held-out evaluation clients: set --holdout-frac > 0 or --n-eval "
                          "(personalization is measured on clients that never trained)")
    ids = heldout if len(heldout) else np.asarray(ds.train_clients, np.int64)
    if len(heldout):
        support, query = support_query(ds, ids, frac=float(ds.meta.get("train_frac", 0.75)),
                                       seed=seed)
        splits = pool.localize(Splits.from_lists(train=support, test=query), ids)
    else:
        splits = pool.localize(Splits.from_lists(train=[ds.train[k] for k in ids],
                                                 test=[ds.test[k] for k in ids]), ids)
    if sum(len(ds.test[k]) for k in ids) == 0 and not len(heldout):
        raise ConfigError("the evaluation clients have no test examples; use --train-frac < 1 "
                          "(each client's test split is what personalization is measured on)")
    evaluator = ClientEvaluator(alg.personalize, pool.x, pool.y, splits, strategy)
    root = jax.random.key(seed)
    n_sample = min(n_eval_clients or len(ids), len(ids))

    def evaluate(params, t: int, final: bool) -> dict[str, Any]:
        rows = np.arange(len(ids))
        sub = not final and n_sample < len(rows)
        if sub:
            pick = jax.random.choice(derive(root, K.EVAL, t), len(rows), (n_sample,),
                                     replace=False)
            rows = np.sort(np.asarray(pick))
        keys = jnp.stack([derive(root, K.EVAL, t, int(ids[r])) for r in rows])
        init, pers = evaluator(params, rows, keys)
        rec = summarize(Counts(*init), "init_")
        if np.ndim(pers.correct) == 2:  # a curve over personalization epochs
            rec.update(summarize(Counts(*(a[:, -1] for a in pers)), "pers_"))
            rec["pers_acc_mean_by_epoch"] = [
                float(np.mean(pers.correct[:, e] / np.maximum(pers.count[:, e], 1)))
                for e in range(pers.correct.shape[1])
            ]
        else:
            rec.update(summarize(Counts(*pers), "pers_"))
        rec["final"] = bool(final)
        rec["subsampled"] = bool(sub)
        return rec

    return evaluate, ids


def evaluation(
    algorithm: Algorithm,
    model: Model,
    dataset: FederatedDataset,
    pool: Pool,
    strategy: Strategy,
    *,
    seed: int = 0,
    n_eval_clients: int | None = None,
    clients: str = "auto",
) -> tuple[Callable[[Any, int, bool], dict[str, Any]], np.ndarray]:
    """``(evaluate(state, t, final) -> record, evaluated client ids)`` built from what
    ``algorithm`` declares (module docstring)."""
    if clients not in EVAL_CLIENTS:
        raise ConfigError(f"clients must be one of {EVAL_CLIENTS}, got {clients!r}")
    ds = dataset
    if algorithm.personalize is not None:
        if algorithm.global_params is None:
            raise ConfigError(f"{algorithm.name}: personalize needs a global model to start from")
        tune, ids = _fine_tune_evaluator(algorithm, ds, pool, strategy, seed=seed,
                                         n_eval_clients=n_eval_clients, clients=clients)
        return (lambda state, t, final: tune(algorithm.global_params(state.server), t, final)), ids
    if algorithm.global_params is None and algorithm.personal_params is None:
        raise ConfigError(f"{algorithm.name} declares no model to evaluate (global_params, "
                          "personal_params or personalize)")
    ids = np.asarray(ds.train_clients, np.int64)
    central = ds.meta.get("central_test")
    if sum(len(ds.test[k]) for k in ids) == 0 and not central:
        raise ConfigError(
            f"the training clients have no test examples (--train-frac "
            f"{ds.meta.get('train_frac', '?')}) and there is no central test set; use "
            "--train-frac < 1, or --pool train to evaluate on the source's test set"
        )
    if central and pool.per_device:
        raise ConfigError("the central test set belongs to no client, so no device holds it "
                          "with --pool-layout per-device; use --pool concat or separate")
    central_idx = [np.arange(*central)] if central else None
    has_val = bool(len(ids)) and bool(np.all(ds.val.sizes[ids] > 0))
    splits = ("test", "val") if has_val else ("test",)
    glob = "" if algorithm.personal_params is None else "init_"

    def evaluate(state, t: int, final: bool) -> dict[str, Any]:
        del t, final  # unused: every evaluation covers every training client
        rec: dict[str, Any] = {}
        if algorithm.global_params is not None:
            w = algorithm.global_params(state.server)
            for split in splits:
                pre = ("val_" if split == "val" else "") + glob
                rec.update(summarize(evaluate_clients(model, w, pool, ids, strategy, split),
                                     pre))
            if central_idx is not None:
                rec.update(summarize(evaluate_global(model, w, pool.x, pool.y, central_idx),
                                     "central_"))
        for name, stack in _personal_models(algorithm, state).items():
            for split in splits:
                pre = ("val_" if split == "val" else "") + f"{name}_"
                rec.update(summarize(evaluate_personal(model, stack, pool.x, pool.y,
                                                       pool.splits, ids, strategy, split), pre))
        return rec

    return evaluate, ids


def accuracy_keys(summary: dict[str, Any]) -> list[str]:
    """The accuracy metrics a table and a plot show: every ``*acc_pooled`` / ``*acc_mean``
    of the summary (validation ones last)."""
    keys = [k for k, v in summary.items() if isinstance(v, dict) and "best" in v
            and (k.endswith("acc_pooled") or k.endswith("acc_mean"))]
    return sorted(keys, key=lambda k: (k.startswith("val_"), k.startswith("central_")))


def experiment(
    algorithm: Algorithm | Sequence[Phase],
    dataset: FederatedDataset,
    model: Model,
    *,
    rounds: int | None = None,
    clients_per_round: int | float = 1.0,
    config: RunConfig = RunConfig(),
    strategy: Strategy | None = None,
    n_eval_clients: int | None = None,
    clients: str = "auto",
    record: Callable[[Any, np.ndarray], dict[str, Any]] | None = None,
    save_split: bool = True,
    title: str | None = None,
) -> dict[str, Any]:
    """Train ``algorithm`` on ``dataset`` for ``rounds`` rounds (or run ``Phase`` s), evaluate
    it as it declares, write the run's files, and return the driver's result.

    Args:
      algorithm: an ``Algorithm`` (with ``rounds`` and ``clients_per_round``) or a sequence
        of ``jaxpfl.Phase`` (Personalized FedAvg's FedAvg then Reptile).
      dataset, model: the federated data and the model the algorithm was built for.
      clients_per_round: M, a count (int) or a participation fraction C (float).
      config: the driver's settings (``seed``, ``eval_every``, ``out``, checkpoints, ...);
        ``config.strategy`` or ``strategy`` maps clients (none: the backend's default).
      n_eval_clients, clients: the fine-tune evaluator's sample size and client set
        (module docstring).
      record: ``record(state, evaluated ids) -> dict``: extra entries of every evaluation
        record (an algorithm's own diagnostics, e.g. FedALA's start-phase passes).
      save_split: write partition.npz (off for data that is not a partition of a source).
      title: the plot's title (default: the algorithm's name and the dataset's).

    Returns:
      ``{"history", "summary", "state", "final"}``: the driver's result plus the final
      record with ``wall_seconds``.
    """
    if isinstance(algorithm, Algorithm):
        if rounds is None:
            raise ConfigError("experiment(algorithm, ...): give rounds")
        phases = [Phase(algorithm.name, algorithm, rounds, clients_per_round)]
    else:
        phases = list(algorithm)
        if not phases:
            raise ConfigError("experiment: no phase to run")
    if len(dataset.train_clients) == 0:
        raise ConfigError("every client is held out; lower --holdout-frac or --n-eval")
    strategy = strategy or config.strategy or default_strategy()
    pool = place_pool(dataset, strategy)
    last = phases[-1].algorithm
    evaluate_fn, ids = evaluation(last, model, dataset, pool, strategy, seed=config.seed,
                                  n_eval_clients=n_eval_clients, clients=clients)
    clock: dict[str, Any] = {"round": 0, "end": None}

    def evaluate(state, t: int, final: bool) -> dict[str, Any]:
        start = time.perf_counter()
        rec = evaluate_fn(state, t, final)
        if record is not None:
            rec.update(record(state, ids))
        if clock["end"] is not None and t > clock["round"]:
            rec["round_train_seconds"] = (start - clock["end"]) / (t - clock["round"])
        clock.update(round=t, end=time.perf_counter())
        return rec

    def init_params(key):
        return model.init(key, jnp.zeros((1,) + tuple(dataset.input_shape), jnp.uint8))

    config = dataclasses.replace(config, strategy=strategy)
    tic = time.perf_counter()
    result = run(phases, dataset, init_params, evaluate, config, pool=pool)
    final = {**result["history"][-1], "wall_seconds": time.perf_counter() - tic,
             "train_seconds": result["summary"]["train_seconds"]}
    result["final"] = final
    if config.out and distributed.is_main():  # one writer when several processes run
        keys = [k for k in accuracy_keys(result["summary"]) if not k.startswith("val_")]
        plot_curves(result["history"], keys, os.path.join(config.out, "accuracy.png"),
                    title=title or f"{last.name} on {dataset.name}")
        with open(os.path.join(config.out, "final.json"), "w") as f:
            json.dump(final, f, indent=2)
        if save_split:
            save_partition(os.path.join(config.out, "partition.npz"), dataset)
    return result


__all__ = ["EVAL_CLIENTS", "ExperimentConfig", "accuracy_keys", "evaluation", "experiment"]
