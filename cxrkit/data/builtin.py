"""Registers the built-in dataset adapters (imported lazily by ``cxrkit.registry.datasets``)."""

from __future__ import annotations

from cxrkit.data.cohen import CohenDataset
from cxrkit.data.coronahack import CoronaHackDataset
from cxrkit.data.generic import CsvDataset, FolderDataset
from cxrkit.data.radiography import RadiographyDataset
from cxrkit.registry import datasets

for _adapter in (RadiographyDataset(), CoronaHackDataset(), CohenDataset(), FolderDataset(), CsvDataset()):
    datasets.register(_adapter.name, _adapter, origin=f"{type(_adapter).__module__}:{type(_adapter).__name__}")
