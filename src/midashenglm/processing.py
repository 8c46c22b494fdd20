"""Chat template, audio-token expansion and batch collation, for training and inference.

This module is the one place where a conversation becomes model inputs:

* ``CHAT_TEMPLATE``: Qwen's ChatML; an audio part renders as
  ``<|audio_bos|><|AUDIO|><|audio_eos|>`` and is expanded to one ``<|AUDIO|>``
  per audio token (:func:`num_audio_tokens`).
* :class:`MiDashengLMProcessor` turns messages (or pre-rendered text plus audio)
  into a left-padded batch of ``input_ids``, ``attention_mask``, ``input_values``
  and ``audio_length``; with ``labels=True`` it also returns ``labels`` that keep
  the loss on the assistant's answers (and their ``<|im_end|>``) only.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from transformers import AutoTokenizer, BatchFeature, PreTrainedTokenizerBase

from midashenglm.audio import SAMPLE_RATE, load_audio

AUDIO_TOKEN = "<|AUDIO|>"
AUDIO_BOS_TOKEN = "<|audio_bos|>"
AUDIO_EOS_TOKEN = "<|audio_eos|>"
IM_START, IM_END, ENDOFTEXT = "<|im_start|>", "<|im_end|>", "<|endoftext|>"
SPECIAL_TOKENS = [ENDOFTEXT, IM_START, IM_END, AUDIO_BOS_TOKEN, AUDIO_TOKEN, AUDIO_EOS_TOKEN]

# The system prompt of the official serving example. It is not injected unless asked.
DEFAULT_SYSTEM_PROMPT = "You are a helpful language and speech assistant."

# Clips shorter than 0.2 s are zero-padded to this many samples, as the published processor does.
MIN_AUDIO_SAMPLES = 3200
IGNORE_INDEX = -100

# ChatML. The {% generation %} markers let the tokenizer report which tokens the
# assistant wrote, which is how training labels are built from this same template.
CHAT_TEMPLATE = (
    "{%- macro render(content) -%}"
    "{%- if content is string -%}{{- content -}}"
    "{%- else -%}{%- for part in content -%}"
    "{%- if part['type'] == 'text' -%}{{- part['text'] -}}"
    "{%- elif part['type'] in ('audio', 'input_audio') -%}"
    "{{- '<|audio_bos|><|AUDIO|><|audio_eos|>' -}}"
    "{%- endif -%}"
    "{%- endfor -%}{%- endif -%}"
    "{%- endmacro -%}"
    "{%- for message in messages -%}"
    "{{- '<|im_start|>' + message['role'] + '\\n' -}}"
    "{%- if message['role'] == 'assistant' -%}"
    "{%- generation -%}{{- render(message['content']) + '<|im_end|>' -}}{%- endgeneration -%}"
    "{%- else -%}{{- render(message['content']) + '<|im_end|>' -}}"
    "{%- endif -%}"
    "{{- '\\n' -}}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{- '<|im_start|>assistant\\n' -}}{%- endif -%}"
)


def num_audio_tokens(
    num_samples: int,
    *,
    hop_length: int = 160,
    patch_stride: int = 4,
    subsample_factor: int = 5,
    min_samples: int = MIN_AUDIO_SAMPLES,
) -> int:
    """Audio tokens for a clip of ``num_samples`` samples: ``(1 + n // 160) // 4 // 5``, >= 1.

    10 s -> 50 tokens, 30 s -> 150 tokens. Clips shorter than ``min_samples`` are
    padded to it first.
    """
    num_samples = max(int(num_samples), min_samples)
    return max(1, (1 + num_samples // hop_length) // patch_stride // subsample_factor)


Conversation = list[dict[str, Any]]


class MiDashengLMProcessor:
    """Tokenizer + audio handling for MiDashengLM, in the style of a transformers processor."""

    def __init__(
        self,
        tokenizer: PreTrainedTokenizerBase,
        *,
        sample_rate: int = SAMPLE_RATE,
        hop_length: int = 160,
        patch_stride: int = 4,
        subsample_factor: int = 5,
        min_audio_samples: int = MIN_AUDIO_SAMPLES,
        max_audio_seconds: float | None = None,
        chat_template: str | None = None,
        system_prompt: str | None = None,
    ) -> None:
        self.tokenizer = tokenizer
        self.sample_rate = sample_rate
        self.hop_length = hop_length
        self.patch_stride = patch_stride
        self.subsample_factor = subsample_factor
        self.min_audio_samples = min_audio_samples
        self.max_audio_seconds = max_audio_seconds
        self.chat_template = chat_template or CHAT_TEMPLATE
        self.system_prompt = system_prompt
        vocab = tokenizer.get_vocab()
        missing = [t for t in (AUDIO_TOKEN, AUDIO_BOS_TOKEN, AUDIO_EOS_TOKEN) if t not in vocab]
        if missing:
            raise ValueError(f"tokenizer lacks the audio special tokens {missing}")
        self.audio_token_id = vocab[AUDIO_TOKEN]
        self.audio_bos_id = vocab[AUDIO_BOS_TOKEN]
        self.audio_eos_id = vocab[AUDIO_EOS_TOKEN]
        if tokenizer.pad_token_id is None:
            tokenizer.pad_token = ENDOFTEXT if ENDOFTEXT in vocab else tokenizer.eos_token

    # ------------------------------------------------------------------ loading
    @classmethod
    def from_pretrained(cls, path_or_id: str | os.PathLike, **kwargs: Any) -> MiDashengLMProcessor:
        """Tokenizer and audio settings from a checkpoint folder or Hub id."""
        from transformers import PretrainedConfig

        from midashenglm.checkpoint import read_json_file

        config = read_json_file(path_or_id, "config.json")
        # A neutral config object: AutoTokenizer would otherwise parse config.json itself
        # and warn that it does not know the "midashenglm" model type.
        tokenizer = AutoTokenizer.from_pretrained(str(path_or_id), config=PretrainedConfig())
        settings: dict[str, Any] = {}
        if config:
            enc = config.get("audio_encoder_config") or {}
            stride = enc.get("patch_stride", 4)
            settings.update(
                hop_length=enc.get("hop_length", 160),
                patch_stride=stride[-1] if isinstance(stride, list) else stride,
                subsample_factor=config.get("subsample_factor", 5),
                sample_rate=enc.get("sample_rate", SAMPLE_RATE),
            )
        return cls(tokenizer, **{**settings, **kwargs})

    def save_pretrained(self, directory: str | os.PathLike) -> None:
        """Tokenizer files plus the feature-extractor description of the official layout."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        self.tokenizer.chat_template = self.chat_template
        self.tokenizer.save_pretrained(str(directory))
        preprocessor = {
            "feature_extractor_type": "Wav2Vec2FeatureExtractor",
            "feature_size": 1,
            "sampling_rate": self.sample_rate,
            "padding_side": "right",
            "padding_value": 0.0,
            "do_normalize": False,
            "return_attention_mask": True,
            "processor_class": "MiDashengLMProcessor",
        }
        (directory / "preprocessor_config.json").write_text(json.dumps(preprocessor, indent=2))

    # ---------------------------------------------------------------- counting
    def num_audio_tokens(self, num_samples: int) -> int:
        return num_audio_tokens(
            num_samples,
            hop_length=self.hop_length,
            patch_stride=self.patch_stride,
            subsample_factor=self.subsample_factor,
            min_samples=self.min_audio_samples,
        )

    # ---------------------------------------------------------------- templates
    def apply_chat_template(
        self,
        conversation: Conversation | Sequence[Conversation],
        *,
        add_generation_prompt: bool = True,
        tokenize: bool = False,
        return_tensors: str = "pt",
        **kwargs: Any,
    ) -> str | list[str] | BatchFeature:
        """Render messages to text, or with ``tokenize=True`` to a model-ready batch."""
        batched = _is_batch(conversation)
        conversations = list(conversation) if batched else [conversation]  # type: ignore[list-item]
        if tokenize:
            return self(
                conversations=conversations,
                add_generation_prompt=add_generation_prompt,
                return_tensors=return_tensors,
                **kwargs,
            )
        texts = [self._render(c, add_generation_prompt) for c in conversations]
        return texts if batched else texts[0]

    def _with_system(self, conversation: Conversation) -> Conversation:
        _check_messages(conversation)
        if self.system_prompt and conversation[0].get("role") != "system":
            return [{"role": "system", "content": self.system_prompt}, *conversation]
        return conversation

    def _render(self, conversation: Conversation, add_generation_prompt: bool) -> str:
        return self.tokenizer.apply_chat_template(
            self._with_system(conversation),
            chat_template=self.chat_template,
            add_generation_prompt=add_generation_prompt,
            tokenize=False,
        )

    # ------------------------------------------------------------------- batches
    def __call__(
        self,
        text: str | Sequence[str] | None = None,
        audio: Sequence[Any] | None = None,
        *,
        conversations: Sequence[Conversation] | None = None,
        add_generation_prompt: bool = True,
        labels: bool = False,
        padding_side: str = "left",
        return_tensors: str = "pt",
    ) -> BatchFeature:
        """Build a batch from conversations, or from rendered ``text`` plus ``audio``.

        ``text`` holds one ``<|AUDIO|>`` (optionally wrapped in bos/eos) per clip in
        ``audio``; clips are taken in order over the whole batch. ``labels=True``
        needs conversations and marks the assistant turns as the only targets.
        """
        if return_tensors != "pt":
            raise ValueError("only return_tensors='pt' is supported")
        if (text is None) == (conversations is None):
            raise ValueError("pass either `text` (with `audio`) or `conversations`")
        if conversations is not None:
            rows, clips = [], []
            for conversation in conversations:
                conversation = self._with_system(conversation)
                clips.extend(self._audio_parts(conversation))
                rows.append(self._tokenize_conversation(conversation, add_generation_prompt, labels))
        else:
            if labels:
                raise ValueError("labels=True needs `conversations` (which turns are answers)")
            texts = [text] if isinstance(text, str) else list(text or [])
            clips = list(audio or [])
            rows = [(self.tokenizer(t, add_special_tokens=False)["input_ids"], None) for t in texts]
        waves = [self.load(clip) for clip in clips]
        lengths = [len(w) for w in waves]
        expanded = self._expand(rows, [self.num_audio_tokens(n) for n in lengths])
        batch = self._pad(expanded, padding_side, labels)
        if waves:
            values = torch.zeros(len(waves), max(lengths))
            for i, wave in enumerate(waves):
                values[i, : len(wave)] = torch.from_numpy(wave)
            batch["input_values"] = values
            batch["audio_length"] = torch.tensor(lengths, dtype=torch.long)
        return BatchFeature(batch)

    def load(self, clip: Any) -> np.ndarray:
        """One clip as float32 mono at the model's rate, padded to the minimum length."""
        if isinstance(clip, dict):
            clip = _audio_source(clip)
        wave = load_audio(clip, sample_rate=self.sample_rate, max_seconds=self.max_audio_seconds)
        if len(wave) < self.min_audio_samples:
            wave = np.pad(wave, (0, self.min_audio_samples - len(wave)))
        return wave

    def _audio_parts(self, conversation: Conversation) -> list[Any]:
        return [
            part
            for message in conversation
            if not isinstance(message.get("content"), str)
            for part in message.get("content") or []
            if part.get("type") in ("audio", "input_audio")
        ]

    def _tokenize_conversation(
        self, conversation: Conversation, add_generation_prompt: bool, labels: bool
    ) -> tuple[list[int], list[int] | None]:
        if not labels:
            text = self._render(conversation, add_generation_prompt)
            return self.tokenizer(text, add_special_tokens=False)["input_ids"], None
        out = self.tokenizer.apply_chat_template(
            conversation,
            chat_template=self.chat_template,
            add_generation_prompt=add_generation_prompt,
            tokenize=True,
            return_dict=True,
            return_assistant_tokens_mask=True,
        )
        ids = list(out["input_ids"])
        mask = list(out["assistant_masks"])
        if not any(mask):
            raise ValueError("labels=True but the conversation has no assistant answer to learn")
        return ids, [t if m else IGNORE_INDEX for t, m in zip(ids, mask, strict=True)]

    def _expand(
        self, rows: list[tuple[list[int], list[int] | None]], counts: list[int]
    ) -> list[tuple[list[int], list[int] | None]]:
        """Replace each ``<|AUDIO|>`` by its clip's number of audio tokens, wrapped in bos/eos."""
        found = sum(ids.count(self.audio_token_id) for ids, _ in rows)
        if found != len(counts):
            raise ValueError(
                f"the prompts hold {found} {AUDIO_TOKEN} placeholder(s) but {len(counts)} "
                f"audio clip(s) were given"
            )
        remaining = iter(counts)
        out = []
        for ids, labels in rows:
            new_ids: list[int] = []
            new_labels: list[int] | None = None if labels is None else []
            for i, token in enumerate(ids):
                piece = [token]
                if token == self.audio_token_id:
                    piece = [token] * next(remaining)
                    if not (i > 0 and ids[i - 1] == self.audio_bos_id) and not (
                        i + 1 < len(ids) and ids[i + 1] == self.audio_eos_id
                    ):
                        piece = [self.audio_bos_id, *piece, self.audio_eos_id]
                new_ids.extend(piece)
                if new_labels is not None:
                    keep = labels[i] != IGNORE_INDEX and token != self.audio_token_id
                    new_labels.extend(piece if keep else [IGNORE_INDEX] * len(piece))
            out.append((new_ids, new_labels))
        return out

    def _pad(
        self, rows: list[tuple[list[int], list[int] | None]], side: str, with_labels: bool
    ) -> dict[str, torch.Tensor]:
        if side not in ("left", "right"):
            raise ValueError(f"padding_side must be 'left' or 'right', not {side!r}")
        width = max((len(ids) for ids, _ in rows), default=0)
        pad_id = self.tokenizer.pad_token_id
        input_ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
        attention = torch.zeros((len(rows), width), dtype=torch.long)
        labels = torch.full((len(rows), width), IGNORE_INDEX, dtype=torch.long)
        for i, (ids, row_labels) in enumerate(rows):
            span = slice(width - len(ids), width) if side == "left" else slice(0, len(ids))
            input_ids[i, span] = torch.tensor(ids, dtype=torch.long)
            attention[i, span] = 1
            if row_labels is not None:
                labels[i, span] = torch.tensor(row_labels, dtype=torch.long)
        batch = {"input_ids": input_ids, "attention_mask": attention}
        if with_labels:
            batch["labels"] = labels
        return batch

    # ------------------------------------------------------------------ decoding
    def batch_decode(self, sequences: Any, skip_special_tokens: bool = True, **kw: Any) -> list[str]:
        return self.tokenizer.batch_decode(sequences, skip_special_tokens=skip_special_tokens, **kw)

    def decode(self, sequence: Any, skip_special_tokens: bool = True, **kw: Any) -> str:
        return self.tokenizer.decode(sequence, skip_special_tokens=skip_special_tokens, **kw)


def _audio_source(part: dict[str, Any]) -> Any:
    """The audio inside a content part: ``path``, ``audio``, or OpenAI-style ``input_audio``."""
    for key in ("audio", "path"):
        if part.get(key) is not None:
            return part[key]
    if part.get("type") == "input_audio" and isinstance(part.get("input_audio"), dict):
        import base64

        return base64.b64decode(part["input_audio"]["data"])
    raise ValueError(f"audio content part has no 'path' or 'audio': keys {sorted(part)}")


def _check_messages(conversation: Any) -> None:
    if not isinstance(conversation, list) or not conversation:
        raise ValueError("a conversation is a non-empty list of {'role', 'content'} messages")
    for i, message in enumerate(conversation):
        if not isinstance(message, dict) or "role" not in message or "content" not in message:
            raise ValueError(f"message {i} must be a dict with 'role' and 'content'")
        content = message["content"]
        if isinstance(content, str):
            continue
        if not isinstance(content, list):
            raise ValueError(f"message {i}: content must be a string or a list of parts")
        for j, part in enumerate(content):
            kind = part.get("type") if isinstance(part, dict) else None
            if kind not in ("text", "audio", "input_audio"):
                raise ValueError(
                    f"message {i}, part {j}: type must be 'text' or 'audio', got {kind!r}"
                )


def _is_batch(conversation: Any) -> bool:
    return bool(conversation) and isinstance(conversation[0], list | tuple)

