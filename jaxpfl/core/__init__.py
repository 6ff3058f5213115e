"""The engine: pytree helpers, schedules, the one local step loop, client mapping, grouping by
size, evaluation."""

from jaxpfl.core.buckets import BucketPlan, Rows, Splits, plan_buckets
from jaxpfl.core.engine import (
    CLIENT_STATES,
    STRATEGIES,
    Algorithm,
    GroupStates,
    RoundInputs,
    RoundOutput,
    State,
    Strategy,
    default_strategy,
    make_round,
    make_stage,
    map_clients,
    mapped,
    place_inputs,
    place_rows,
)
from jaxpfl.core.evaluate import Counts, client_eval, evaluate_global, summarize
from jaxpfl.core.evaluators import ClientEvaluator, evaluate_personal, personal_counts
from jaxpfl.core.keys import derive
from jaxpfl.core.residency import HostRound, client_state_bytes, resolve_client_state
from jaxpfl.core.rounds import phase_plan, round_inputs, stage_groups
from jaxpfl.core.schedule import Schedule, epoch_schedule, group_steps, stream_schedule
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
    "CLIENT_STATES",
    "STRATEGIES",
    "Algorithm",
    "Batch",
    "BucketPlan",
    "ClientData",
    "ClientEvaluator",
    "Counts",
    "ExecOptions",
    "GroupStates",
    "HostRound",
    "RoundInputs",
    "RoundOutput",
    "Rows",
    "Schedule",
    "Splits",
    "State",
    "StepStats",
    "Strategy",
    "client_eval",
    "client_sgd",
    "client_state_bytes",
    "default_strategy",
    "derive",
    "epoch_schedule",
    "evaluate_global",
    "evaluate_personal",
    "gather_batch",
    "group_steps",
    "local_steps",
    "local_train",
    "make_round",
    "make_stage",
    "map_clients",
    "mapped",
    "masked_cross_entropy",
    "personal_counts",
    "phase_plan",
    "place_inputs",
    "place_rows",
    "plan_buckets",
    "resolve_client_state",
    "round_inputs",
    "sgd_step",
    "stage_groups",
    "stream_schedule",
    "summarize",
    "weighted_mean",
]
