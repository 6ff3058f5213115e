"""Federated datasets in memory: sources, partitioners, splits, storage and statistics."""

from jaxpfl.data.dataset import ClientIndex, DataError, FederatedDataset, RawData

__all__ = ["ClientIndex", "DataError", "FederatedDataset", "RawData"]
