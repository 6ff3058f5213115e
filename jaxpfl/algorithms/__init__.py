"""Algorithms: each a factory returning a small named tuple of pure one-client functions.

Every module of this package is an algorithm (``server_optimizers`` holds FedOpt's server
optimizers). Its factory (the function named like the module) and its config classes (the
``*Config`` names of its ``__all__``) are exported here, and from ``jaxpfl``, without an edit
of this file: adding an algorithm is adding its module. ``ALGORITHMS`` maps each module name
to its factory.
"""

import importlib as _importlib
import pkgutil as _pkgutil

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
    "ALGORITHMS",
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

#: Every algorithm module's factory, by module name (discovered: see the module docstring).
ALGORITHMS = {}
for _info in sorted(_pkgutil.iter_modules(__path__), key=lambda m: m.name):
    _mod = _importlib.import_module(f"{__name__}.{_info.name}")
    for _name in getattr(_mod, "__all__", ()):
        if _name == _info.name or _name.endswith("Config"):
            _old = globals().get(_name)
            if _old is not None and _old is not getattr(_mod, _name) and _old is not _mod:
                raise ImportError(f"jaxpfl.algorithms.{_info.name}: {_name!r} is exported by "
                                  "another algorithm module too")
            globals()[_name] = getattr(_mod, _name)
            if _name not in __all__:
                __all__.append(_name)
    if callable(getattr(_mod, _info.name, None)) and _info.name in getattr(_mod, "__all__", ()):
        ALGORITHMS[_info.name] = getattr(_mod, _info.name)
