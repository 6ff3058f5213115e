"""Algorithms: each a factory returning a small named tuple of pure one-client functions."""

from jaxpfl.algorithms.fedala import FedALAConfig, ala, fedala
from jaxpfl.algorithms.fedavg import FedAvgConfig, fedavg
from jaxpfl.algorithms.fedora import (
    FedoraConfig,
    client_summaries,
    client_summary,
    fedora,
    propagation_matrix,
)
from jaxpfl.algorithms.per_fedavg import PerFedAvgConfig, per_fedavg
from jaxpfl.algorithms.per_fedavg import personalize as per_fedavg_personalize
from jaxpfl.algorithms.personalized_fedavg import (
    PersonalizedFedAvgConfig,
    personalize,
    personalized_fedavg,
)
from jaxpfl.algorithms.server_optimizers import (
    SERVER_OPTIMIZERS,
    reddi_adagrad,
    reddi_adam,
    reddi_yogi,
    server_optimizer,
)

__all__ = [
    "SERVER_OPTIMIZERS",
    "FedALAConfig",
    "FedAvgConfig",
    "FedoraConfig",
    "PerFedAvgConfig",
    "PersonalizedFedAvgConfig",
    "ala",
    "client_summaries",
    "client_summary",
    "fedala",
    "fedavg",
    "fedora",
    "per_fedavg",
    "per_fedavg_personalize",
    "personalize",
    "personalized_fedavg",
    "propagation_matrix",
    "reddi_adagrad",
    "reddi_adam",
    "reddi_yogi",
    "server_optimizer",
]
