"""Model zoo (docs/algorithms.md §8): ``get_model(name, input_shape, num_classes) -> Model``."""

from jaxpfl.models.base import Model, Params, count_params, leaf_at, ordered_leaves
from jaxpfl.models.registry import MODELS, get_model

__all__ = [
    "MODELS",
    "Model",
    "Params",
    "count_params",
    "get_model",
    "leaf_at",
    "ordered_leaves",
]
