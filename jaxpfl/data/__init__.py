"""Federated datasets in memory: sources, partitioners, splits, storage and statistics."""

from jaxpfl.data.dataset import ClientIndex, DataError, FederatedDataset, MappedRows, RawData
from jaxpfl.data.rotated import fedora_rotated, rotate

__all__ = ["ClientIndex", "DataError", "FederatedDataset", "MappedRows", "RawData",
           "fedora_rotated", "rotate"]
