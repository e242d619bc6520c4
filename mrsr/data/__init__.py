"""Data: volume readers, LR degradations, slice datasets and LightningDataModules."""

from mrsr.data.types import Sample, SliceMeta

__all__ = ["Sample", "SliceMeta"]
