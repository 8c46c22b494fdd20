"""Micro-batches for training: the processor's one collation, plus what the batch cost.

:class:`Collator` hands the loaded conversations to
``processor(conversations, labels=True, add_generation_prompt=False, ...)``: left-padded
``input_ids``/``attention_mask`` (B, T), ``labels`` (B, T) equal to ``input_ids`` on the
assistant answers and their ``<|im_end|>`` and -100 elsewhere (system, user turns, audio,
role headers, padding), ``input_values`` (clips, longest clip samples) at 16 kHz and
``audio_length`` (clips,). Samples that failed to load (or are too long) are dropped from
the batch and listed in ``Batch.skipped``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from midashenglm.audio import SAMPLE_RATE
from midashenglm.data.dataset import LoadedSample, SampleError
from midashenglm.data.manifest import TrainingSample
from midashenglm.processing import IGNORE_INDEX

_PLACEHOLDER = {"type": "audio", "path": "-"}  # renders as <|audio_bos|><|AUDIO|><|audio_eos|>


@dataclass
class Batch:
    """One micro-batch and its cost.

    ``inputs``: the model's keyword arguments (``input_ids``, ``attention_mask``, ``labels``:
    (B, T) long; ``input_values``: (clips, samples) float32; ``audio_length``: (clips,)), or
    ``None`` when every sample was skipped. ``num_label_tokens``: labels != -100;
    ``num_tokens``: real (non-pad) decoder tokens; ``padded_tokens``: B * T;
    ``audio_seconds``: real audio; ``padded_audio_seconds``: clips * longest clip.
    """

    inputs: dict[str, torch.Tensor] | None
    sample_ids: list[str]
    skipped: list[SampleError] = field(default_factory=list)
    num_label_tokens: int = 0
    num_tokens: int = 0
    padded_tokens: int = 0
    audio_seconds: float = 0.0
    padded_audio_seconds: float = 0.0

    @property
    def padding_fraction(self) -> float:
        """Share of the decoder's (B, T) positions that are padding: ``1 - num_tokens /
        padded_tokens`` (0 for an empty batch)."""
        return 1.0 - self.num_tokens / self.padded_tokens if self.padded_tokens else 0.0

    @property
    def audio_padding_fraction(self) -> float:
        """Share of the encoder's input samples that are padding (0 without audio)."""
        if not self.padded_audio_seconds:
            return 0.0
        return 1.0 - self.audio_seconds / self.padded_audio_seconds


class Collator:
    """``collate_fn`` for a DataLoader over :class:`~midashenglm.data.dataset.TrainingDataset`.

    ``max_length``: samples longer than this many decoder tokens (audio tokens included)
    are skipped with a :class:`SampleError` rather than truncated (a cut answer teaches a
    wrong ending; a cut clip breaks the audio/token alignment).
    """

    def __init__(self, processor: Any, *, max_length: int | None = None) -> None:
        self.processor = processor
        self.max_length = max_length

    def __call__(self, items: Sequence[LoadedSample | SampleError]) -> Batch:
        loaded = [x for x in items if isinstance(x, LoadedSample)]
        skipped = [x for x in items if isinstance(x, SampleError)]
        inputs = self._encode(loaded, skipped)
        if self.max_length is not None and inputs is not None:
            lengths = inputs["attention_mask"].sum(1).tolist()
            if max(lengths) > self.max_length:
                keep = [x for x, n in zip(loaded, lengths, strict=True) if n <= self.max_length]
                skipped += [_error(x, f"{n} decoder tokens, more than max_length={self.max_length}")
                            for x, n in zip(loaded, lengths, strict=True) if n > self.max_length]
                loaded = keep
                inputs = self._encode(loaded, skipped)
        if inputs is None:
            return Batch(None, [], skipped)
        mask = inputs["attention_mask"]
        lengths = inputs.get("audio_length")
        values = inputs.get("input_values")
        return Batch(
            inputs=inputs,
            sample_ids=[x.sample.id for x in loaded],
            skipped=skipped,
            num_label_tokens=int((inputs["labels"] != IGNORE_INDEX).sum()),
            num_tokens=int(mask.sum()),
            padded_tokens=mask.numel(),
            audio_seconds=float(lengths.sum()) / SAMPLE_RATE if lengths is not None else 0.0,
            padded_audio_seconds=values.numel() / SAMPLE_RATE if values is not None else 0.0,
        )

    def _encode(self, loaded: list[LoadedSample], skipped: list[SampleError]
                ) -> dict[str, torch.Tensor] | None:
        """The processor's batch; a sample it refuses is moved to ``skipped`` (in place)."""
        if not loaded:
            return None
        try:
            return dict(self.encode([x.conversation for x in loaded]))
        except ValueError:
            pass  # find the culprit(s): rare, so one sample at a time is fine
        good = []
        for x in loaded:
            try:
                self.encode([x.conversation])
                good.append(x)
            except ValueError as err:
                skipped.append(_error(x, str(err)))
        loaded[:] = good
        return dict(self.encode([x.conversation for x in good])) if good else None

    def encode(self, conversations: list[list[dict[str, Any]]]) -> Any:
        """The processor's training batch of ``conversations`` (labels on the answers only)."""
        return self.processor(conversations=conversations, labels=True, add_generation_prompt=False,
                              return_tensors="pt", padding=True)


def _error(item: LoadedSample, message: str) -> SampleError:
    return SampleError(item.sample.id, item.sample.source, message)


def text_token_counts(samples: Sequence[TrainingSample], processor: Any) -> list[int]:
    """Decoder tokens of each sample as :class:`Collator` builds it: template, text and
    ``<|AUDIO|>`` tokens of each clip (from the parts' ``duration``, else the sample's
    ``duration`` split evenly over its clips; 0 s when unknown). The sampler's token costs.

    Renders with the chat template and tokenizes all samples in one batched call, so it
    costs about a millisecond per sample.
    """
    texts, audio_tokens = [], []
    for sample in samples:
        parts = sample.audio_parts
        even = (sample.duration or 0.0) / max(1, len(parts))
        seconds = [p.get("duration", even) for p in parts]
        audio_tokens.append(sum(processor.num_audio_tokens(round(s * SAMPLE_RATE)) - 1 for s in seconds))
        conversation = [m if isinstance(m["content"], str) else
                        {**m, "content": [_PLACEHOLDER if p["type"] == "audio" else p for p in m["content"]]}
                        for m in sample.messages]
        texts.append(processor.apply_chat_template(conversation, tokenize=False, add_generation_prompt=False))
    if not texts:
        return []
    ids = processor.tokenizer(texts, add_special_tokens=False)["input_ids"]
    return [len(row) + extra for row, extra in zip(ids, audio_tokens, strict=True)]
