"""The training dataset: a sample's chat with its audio parts decoded, or why it could not be.

A corrupt, missing or over-long clip must not stop a run of a million samples: the dataset
returns a :class:`SampleError` (picklable, so it crosses DataLoader workers), the collator
drops it from the batch and the trainer logs and counts it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from midashenglm.audio import SAMPLE_RATE, AudioError, load_audio
from midashenglm.data.archive import ShardError, clip_source, describe_part
from midashenglm.data.manifest import TrainingSample


@dataclass
class LoadedSample:
    """A sample ready for the processor: ``conversation`` is ``sample.messages`` with every
    audio part replaced by ``{"type": "audio", "audio": float32 (n,) at 16 kHz mono,
    "sampling_rate": 16000}``."""

    sample: TrainingSample
    conversation: list[dict[str, Any]]


@dataclass
class SampleError:
    """A sample that could not be loaded: its ``id``, ``source`` (``manifest:line``) and why."""

    id: str
    source: str
    message: str


class TrainingDataset(torch.utils.data.Dataset):
    """Map-style dataset over :class:`TrainingSample` rows (the sampler picks the indices).

    ``max_seconds``: the longest clip accepted (per clip, seconds); longer ones make the
    sample a :class:`SampleError`, as do missing files, undecodable audio and bad shard
    members. ``__getitem__`` never raises for such problems.
    """

    def __init__(self, samples: Sequence[TrainingSample], *, max_seconds: float | None = None) -> None:
        self.samples = list(samples)
        self.max_seconds = max_seconds

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> LoadedSample | SampleError:
        sample = self.samples[index]
        try:
            conversation = [self._load(message) for message in sample.messages]
        except (AudioError, ShardError, OSError) as err:
            return SampleError(sample.id, sample.source, str(err))
        return LoadedSample(sample, conversation)

    def _load(self, message: dict[str, Any]) -> dict[str, Any]:
        if isinstance(message["content"], str):
            return message
        return {**message, "content": [self._clip(p) if p["type"] == "audio" else p
                                       for p in message["content"]]}

    def _clip(self, part: dict[str, Any]) -> dict[str, Any]:
        try:
            wave: np.ndarray = load_audio(clip_source(part), max_seconds=self.max_seconds)
        except AudioError as err:  # bytes from a shard describe themselves as "<bytes: N B>"
            raise AudioError(describe_part(part), err.problem) from None
        return {"type": "audio", "audio": wave, "sampling_rate": SAMPLE_RATE}
