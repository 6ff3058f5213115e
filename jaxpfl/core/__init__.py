"""The engine: pytree helpers, schedules, the one local step loop, client mapping, evaluation."""

from jaxpfl.core.engine import (
    STRATEGIES,
    Algorithm,
    RoundInputs,
    State,
    Strategy,
    default_strategy,
    make_round,
    map_clients,
    mapped,
    place_inputs,
)
from jaxpfl.core.evaluate import Counts, client_eval, evaluate_global, summarize
from jaxpfl.core.keys import derive
from jaxpfl.core.schedule import Schedule, epoch_schedule, stream_schedule
from jaxpfl.core.train import (
    Batch,
    ClientData,
    ExecOptions,
    StepStats,
    client_sgd,
    gather_batch,
    local_steps,
    local_train,
    masked_cross_entropy,
    sgd_step,
)
from jaxpfl.core.tree import weighted_mean

__all__ = [
    "STRATEGIES",
    "Algorithm",
    "Batch",
    "ClientData",
    "Counts",
    "ExecOptions",
    "RoundInputs",
    "Schedule",
    "State",
    "StepStats",
    "Strategy",
    "client_eval",
    "client_sgd",
    "default_strategy",
    "derive",
    "epoch_schedule",
    "evaluate_global",
    "gather_batch",
    "local_steps",
    "local_train",
    "make_round",
    "map_clients",
    "mapped",
    "masked_cross_entropy",
    "place_inputs",
    "sgd_step",
    "stream_schedule",
    "summarize",
    "weighted_mean",
]
