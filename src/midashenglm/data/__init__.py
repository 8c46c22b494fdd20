"""Training data: manifests, WebDataset shards, the dataset, collation and the batch sampler.

``from midashenglm.data import read_training_manifest, TrainingDataset, Collator, BatchSampler``.
Submodules load on first use, so importing the package (the command line does) stays fast.
The pieces and how they fit: ``docs/data.md``.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

_EXPORTS = {
    "TrainingSample": "midashenglm.data.manifest",
    "read_training_manifest": "midashenglm.data.manifest",
    "write_training_manifest": "midashenglm.data.manifest",
    "ShardError": "midashenglm.data.archive",
    "read_member": "midashenglm.data.archive",
    "PackReport": "midashenglm.data.shards",
    "pack": "midashenglm.data.shards",
    "LoadedSample": "midashenglm.data.dataset",
    "SampleError": "midashenglm.data.dataset",
    "TrainingDataset": "midashenglm.data.dataset",
    "Batch": "midashenglm.data.collate",
    "Collator": "midashenglm.data.collate",
    "text_token_counts": "midashenglm.data.collate",
    "BatchSampler": "midashenglm.data.sampler",
}

__all__ = [
    "Batch", "BatchSampler", "Collator", "LoadedSample", "PackReport", "SampleError", "ShardError",
    "TrainingDataset", "TrainingSample", "pack", "read_member", "read_training_manifest",
    "text_token_counts", "write_training_manifest",
]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'midashenglm.data' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)


if TYPE_CHECKING:  # pragma: no cover
    from midashenglm.data.archive import ShardError, read_member
    from midashenglm.data.collate import Batch, Collator, text_token_counts
    from midashenglm.data.dataset import LoadedSample, SampleError, TrainingDataset
    from midashenglm.data.manifest import (
        TrainingSample,
        read_training_manifest,
        write_training_manifest,
    )
    from midashenglm.data.sampler import BatchSampler
    from midashenglm.data.shards import PackReport, pack
