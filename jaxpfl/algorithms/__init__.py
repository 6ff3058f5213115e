"""Algorithms: each a factory returning a small named tuple of pure one-client functions."""

from jaxpfl.algorithms.fedavg import FedAvgConfig, fedavg, server_optimizer
from jaxpfl.algorithms.personalized_fedavg import (
    PersonalizedFedAvgConfig,
    personalize,
    personalized_fedavg,
)

__all__ = [
    "FedAvgConfig",
    "PersonalizedFedAvgConfig",
    "fedavg",
    "personalize",
    "personalized_fedavg",
    "server_optimizer",
]
