"""Chat template, audio-token expansion and batch collation, for training and inference.

This module is the one place where a conversation becomes model inputs:

* ``CHAT_TEMPLATE``: Qwen's ChatML; an audio part renders as
  ``<|audio_bos|><|AUDIO|><|audio_eos|>`` and is expanded to one ``<|AUDIO|>``
  per audio token (:func:`num_audio_tokens`).
* :class:`MiDashengLMProcessor` turns messages (or pre-rendered text plus audio)
  into a left-padded batch of ``input_ids``, ``attention_mask``, ``input_values``
  and ``audio_length``; with ``labels=True`` it also returns ``labels`` that keep
  the loss on the assistant's answers (and their ``<|im_end|>``) only. Its
  ``apply_chat_template`` takes transformers' arguments.
* One audio path and one expansion: ``load_audio_parts`` decodes a conversation's
  audio parts once (honouring their stated sampling rates), ``prompt_ids`` turns a
  conversation plus clip lengths into prompt ids without touching audio, and the
  batch path uses both. :func:`pad_sequences` is the one left-padding helper.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from transformers import AutoTokenizer, BatchFeature, PreTrainedTokenizerBase

from midashenglm import hf_remote
from midashenglm.audio import SAMPLE_RATE, load_audio
from midashenglm.modeling.geometry import MIN_AUDIO_SAMPLES, num_audio_tokens
from midashenglm.modeling.weights import CheckpointError, read_json_file

# Files any transformers tokenizer is saved as: one of them must be in a checkpoint folder.
_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.json", "tokenizer.model", "vocab.txt")

AUDIO_TOKEN = "<|AUDIO|>"
AUDIO_BOS_TOKEN = "<|audio_bos|>"
AUDIO_EOS_TOKEN = "<|audio_eos|>"
IM_START, IM_END, ENDOFTEXT = "<|im_start|>", "<|im_end|>", "<|endoftext|>"
SPECIAL_TOKENS = [ENDOFTEXT, IM_START, IM_END, AUDIO_BOS_TOKEN, AUDIO_TOKEN, AUDIO_EOS_TOKEN]

# The system prompt of the official serving example. It is not injected unless asked.
DEFAULT_SYSTEM_PROMPT = "You are a helpful language and speech assistant."

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
        self._warned_rate = False  # the "array without a rate" warning, once per processor
        # A loaded checkpoint's own processor remote code, kept on save (None: write ours).
        self._published: hf_remote.PublishedCode | None = None
        self._templates: dict[tuple[str, bool], _Template] = {}  # default renderings, reused

    # ------------------------------------------------------------------ loading
    @classmethod
    def from_pretrained(cls, path_or_id: str | os.PathLike, **kwargs: Any) -> MiDashengLMProcessor:
        """Tokenizer and audio settings from a checkpoint folder or Hub id.

        The checkpoint's remote code (``auto_map``, ``processing_midashenglm.py``) is never
        imported; a checkpoint's own remote code is remembered, as bytes, so that
        :meth:`save_pretrained` writes it back unchanged.
        """
        from transformers import PretrainedConfig

        folder = Path(path_or_id).expanduser()
        if folder.is_dir() and not any((folder / name).is_file() for name in _TOKENIZER_FILES) \
                and not any(folder.glob("*.tiktoken")):
            raise CheckpointError(
                f"{folder}: no tokenizer files in this folder ({', '.join(_TOKENIZER_FILES[:2])}, ...). "
                "model.save_pretrained writes the weights only: save the processor there too "
                "(processor.save_pretrained(folder)), or load the processor from the original "
                "checkpoint or tokenizer"
            )
        config = read_json_file(path_or_id, "config.json")
        # A neutral config object: AutoTokenizer would otherwise parse config.json itself
        # and warn that it does not know the "midashenglm" model type.
        tokenizer = AutoTokenizer.from_pretrained(
            str(path_or_id), config=PretrainedConfig(), trust_remote_code=False
        )
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
        processor = cls(tokenizer, **{**settings, **kwargs})
        processor._published = hf_remote.read_published(
            folder if folder.is_dir() else _cached_folder(str(path_or_id))
        )
        return processor

    def save_pretrained(self, directory: str | os.PathLike) -> None:
        """Tokenizer files, the feature-extractor description of the official layout, and
        the processor remote code that ``transformers.AutoProcessor`` (and vLLM) load.

        The remote code is ``processing_midashenglm.py`` with ``auto_map`` entries in
        ``processor_config.json``, ``preprocessor_config.json`` and ``tokenizer_config.json``
        (see :mod:`midashenglm.hf_remote`); a processor loaded from a checkpoint with remote
        code of its own (a published one) writes that code and those configs back as they were.
        """
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
        if self._published is not None:
            hf_remote.write_published(directory, self._published, preprocessor)
            return
        hf_remote.write_own(
            directory,
            processor_config={
                "audio_token": AUDIO_TOKEN,
                "audio_bos_token": AUDIO_BOS_TOKEN,
                "audio_eos_token": AUDIO_EOS_TOKEN,
                "hop_length": self.hop_length,
                "patch_stride": self.patch_stride,
                "subsample_factor": self.subsample_factor,
                "min_audio_samples": self.min_audio_samples,
            },
            preprocessor_config=preprocessor,
        )

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
        chat_template: str | None = None,
        tools: list[Any] | None = None,
        documents: list[dict[str, str]] | None = None,
        add_generation_prompt: bool | None = None,
        continue_final_message: bool | str = False,
        return_assistant_tokens_mask: bool = False,
        tokenize: bool = False,
        return_tensors: str | None = "auto",
        return_dict: bool | None = None,
        load_audio_from_video: bool = False,
        processor_kwargs: dict[str, Any] | None = None,
        sanitize_control_tokens: bool = False,
        **kwargs: Any,
    ) -> str | list[str] | BatchFeature | Any:
        """Render messages to text, or with ``tokenize=True`` to a model-ready batch.

        The arguments are those of transformers' ``ProcessorMixin.apply_chat_template``:

        * ``tokenize=False``: the prompt text (a list for a batch of conversations).
        * ``tokenize=True``: the batch of :meth:`__call__` (``input_ids``, ``attention_mask``,
          ``input_values``, ``audio_length``; ``assistant_masks`` with
          ``return_assistant_tokens_mask``). ``return_dict=False`` returns ``input_ids`` only,
          as in transformers; left out, it means ``True`` here (ids alone would drop the audio).
        * ``add_generation_prompt`` defaults to ``True`` (``False`` with ``continue_final_message``).
        * ``tools``, ``documents`` and keyword arguments named by the template's variables go
          to the template; processor arguments (``padding``, ``padding_side``, ``truncation``,
          ``max_length``, ``pad_to_multiple_of``, ``add_special_tokens``, ``sampling_rate``,
          ``return_attention_mask``, ``labels``) go to :meth:`__call__`, as keywords or in
          ``processor_kwargs``. Anything else is a ``TypeError`` naming it.
        * ``return_tensors``: ``"auto"`` (the processor's ``"pt"``), ``"pt"``, ``"np"`` or
          ``None`` (lists).
        """
        if load_audio_from_video:
            raise NotImplementedError(
                "load_audio_from_video=True: MiDashengLM takes no video; give the sound track "
                "as an audio part"
            )
        names = _template_variables(chat_template or self.chat_template)
        variables: dict[str, Any] = {}
        options: dict[str, Any] = {}
        for name, value in kwargs.items():
            if name in names and name not in _RESERVED_TEMPLATE_NAMES:
                variables[name] = value
            elif name in _CALL_OPTIONS:
                options[name] = value
            else:
                raise _unexpected("apply_chat_template", name)
        for name, value in _flatten_processor_kwargs(processor_kwargs).items():
            if name == "return_tensors" and return_tensors == "auto":
                return_tensors = value
                continue
            if name not in _CALL_OPTIONS:
                raise _unexpected("apply_chat_template", name, where="processor_kwargs")
            if name in options and options[name] != value:
                raise TypeError(
                    f"apply_chat_template() got {name!r} both as a keyword and in processor_kwargs"
                )
            options[name] = value
        template = self._template(
            chat_template,
            add_generation_prompt=add_generation_prompt,
            continue_final_message=continue_final_message,
            tools=tools,
            documents=documents,
            variables=variables,
            sanitize=sanitize_control_tokens,
        )
        if return_assistant_tokens_mask and not (tokenize and return_dict is not False):
            raise ValueError("return_assistant_tokens_mask=True needs tokenize=True and return_dict=True")
        if sanitize_control_tokens:
            if not tokenize:
                raise ValueError("sanitize_control_tokens=True needs tokenize=True")
            if return_assistant_tokens_mask or options.get("labels"):
                raise ValueError("sanitize_control_tokens=True cannot be combined with assistant "
                                 "masks or labels")
            if not hasattr(self.tokenizer, "_mark_chat_inputs"):
                raise NotImplementedError(
                    "sanitize_control_tokens=True needs a transformers release whose tokenizers "
                    "support it (5.x)"
                )
        batched = _is_batch(conversation)
        conversations = list(conversation) if batched else [conversation]  # type: ignore[list-item]
        if not tokenize:
            texts = []
            for k, conv in enumerate(conversations):
                where = f"conversation {k}, " if batched else ""
                _check_messages(conv, where)
                texts.append(self._render(self._add_system(conv), template)[0])
            return texts if batched else texts[0]
        if return_tensors == "auto":
            return_tensors = "pt"
        batch = self._batch(
            None,
            None,
            conversations,
            template,
            return_assistant_tokens_mask=return_assistant_tokens_mask,
            return_tensors=return_tensors,
            prefix_errors=batched,
            **options,
        )
        return batch if return_dict is not False else batch["input_ids"]

    def _template(
        self,
        chat_template: str | None,
        *,
        add_generation_prompt: bool | None,
        continue_final_message: bool | str = False,
        tools: list[Any] | None = None,
        documents: list[dict[str, str]] | None = None,
        variables: dict[str, Any] | None = None,
        sanitize: bool = False,
    ) -> _Template:
        """How conversations are rendered; the default one is built once and reused."""
        if continue_final_message:
            if add_generation_prompt:
                raise ValueError(
                    "continue_final_message and add_generation_prompt are not compatible: the "
                    "first continues the last message, the second starts a new assistant turn"
                )
            add_generation_prompt = False
        elif add_generation_prompt is None:
            add_generation_prompt = True
        text = chat_template or self.chat_template
        if chat_template is not None and "{{" not in text and "{%" not in text:
            raise ValueError(f"chat_template {chat_template!r} is not a Jinja template")
        plain = not (continue_final_message or tools is not None or documents is not None
                     or variables or sanitize)
        key = (text, bool(add_generation_prompt))
        if plain and key in self._templates:
            return self._templates[key]
        names = _template_variables(text)
        for what, value in (("tools", tools), ("documents", documents)):
            if value is not None and what not in names:
                raise ValueError(f"{what} were given but the chat template does not use {what!r}")
        specials = {k: v for k, v in self.tokenizer.special_tokens_map.items() if k in names}
        template = _Template(
            text,
            add_generation_prompt=bool(add_generation_prompt),
            continue_final_message=continue_final_message,
            tools=tools,
            documents=documents,
            variables={**specials, **(variables or {})},
            sanitize=sanitize,
        )
        if plain:
            self._templates[key] = template
        return template

    def _add_system(self, conversation: Conversation) -> Conversation:
        if self.system_prompt and conversation[0].get("role") != "system":
            return [{"role": "system", "content": self.system_prompt}, *conversation]
        return conversation

    def _render(self, conversation: Conversation, template: _Template, spans: bool = False
                ) -> tuple[str, list[tuple[int, int]] | None]:
        """The prompt text, and with ``spans`` the character spans the assistant wrote."""
        from transformers.utils.chat_template_utils import render_jinja_template

        chats: list[Any] = [conversation]
        tools, documents, variables = template.tools, template.documents, template.variables
        if template.sanitize:
            chats, tools, documents, variables = self.tokenizer._mark_chat_inputs(
                template.text, chats, tools, documents, variables, True, False
            )
        texts, indices = render_jinja_template(
            chats,
            tools=tools,
            documents=documents,
            chat_template=template.text,
            return_assistant_tokens_mask=spans,
            continue_final_message=template.continue_final_message,
            add_generation_prompt=template.add_generation_prompt,
            **variables,
        )
        return texts[0], (indices[0] if spans else None)

    def _conversation_ids(
        self,
        conversation: Conversation,
        template: _Template,
        *,
        mask: bool = False,
        add_special_tokens: bool = False,
    ) -> tuple[list[int], list[int] | None]:
        """Token ids of a rendered conversation (one placeholder per audio part), and with
        ``mask`` which of them the assistant wrote (1) or not (0)."""
        text, spans = self._render(conversation, template, spans=mask)
        if add_special_tokens:
            bos = self.tokenizer.bos_token
            if bos is not None and text.startswith(bos):
                add_special_tokens = False  # the template wrote it already (as transformers does)
        extra: dict[str, Any] = {"sanitize_control_tokens": True} if template.sanitize else {}
        encoded = self.tokenizer(
            text, add_special_tokens=add_special_tokens, return_offsets_mapping=mask, **extra
        )
        ids = list(encoded["input_ids"])
        if not mask:
            return ids, None
        assert spans is not None
        assistant = [
            int(any(start < s_end and end > s_start for s_start, s_end in spans))
            for start, end in encoded["offset_mapping"]
        ]
        return ids, assistant

    # -------------------------------------------------------------- prompt ids
    def prompt_ids(
        self,
        conversation: Conversation,
        audio_lengths: Sequence[int],
        *,
        add_generation_prompt: bool = True,
    ) -> list[int]:
        """The prompt's token ids, each audio part expanded to its ``<|AUDIO|>`` tokens.

        ``audio_lengths`` are the clips' lengths in samples at the processor's rate (as
        :meth:`load_audio_parts` returns them), in message order; no audio is touched. The
        ids equal ``processor(conversations=[conversation])["input_ids"][0]`` (unpadded).
        """
        _check_messages(conversation)
        template = self._template(None, add_generation_prompt=add_generation_prompt)
        ids, _ = self._conversation_ids(self._add_system(conversation), template)
        return self._expand_row(ids, audio_lengths)[0]

    def _expand_row(
        self, ids: list[int], audio_lengths: Sequence[int], mask: list[int] | None = None,
        where: str = "",
    ) -> tuple[list[int], list[int] | None]:
        found = ids.count(self.audio_token_id)
        if found != len(audio_lengths):
            raise ValueError(
                f"{where}the prompt holds {found} {AUDIO_TOKEN} placeholder(s) but "
                f"{len(audio_lengths)} audio clip(s) were given"
            )
        return self._splice(ids, [self.num_audio_tokens(n) for n in audio_lengths], mask)

    def _splice(
        self, ids: list[int], counts: Sequence[int], mask: list[int] | None
    ) -> tuple[list[int], list[int] | None]:
        """Replace the i-th ``<|AUDIO|>`` by ``counts[i]`` of them, wrapped in audio bos/eos
        unless the prompt wrapped it already; expanded audio is never an assistant token."""
        audio, bos, eos = self.audio_token_id, self.audio_bos_id, self.audio_eos_id
        if not counts:
            return ids, mask
        out: list[int] = []
        out_mask: list[int] | None = None if mask is None else []
        n, start = len(ids), 0
        for count in counts:
            i = ids.index(audio, start)
            out += ids[start:i]
            wrapped = (i > 0 and ids[i - 1] == bos) or (i + 1 < n and ids[i + 1] == eos)
            piece = [audio] * count if wrapped else [bos, *([audio] * count), eos]
            out += piece
            if out_mask is not None:
                assert mask is not None
                out_mask += mask[start:i]
                out_mask += [0] * len(piece)
            start = i + 1
        out += ids[start:]
        if out_mask is not None:
            assert mask is not None
            out_mask += mask[start:]
        return out, out_mask

    # ------------------------------------------------------------------- batches
    def __call__(
        self,
        text: str | Sequence[str] | None = None,
        audio: Any = None,
        *,
        conversations: Sequence[Conversation] | None = None,
        sampling_rate: int | None = None,
        add_generation_prompt: bool = True,
        labels: bool = False,
        return_assistant_tokens_mask: bool = False,
        padding: bool | str = True,
        padding_side: str | None = None,
        truncation: bool | str | None = None,
        max_length: int | None = None,
        pad_to_multiple_of: int | None = None,
        add_special_tokens: bool = False,
        return_attention_mask: bool = True,
        return_tensors: str | None = "pt",
        **kwargs: Any,
    ) -> BatchFeature:
        """Build a batch from conversations, or from rendered ``text`` plus ``audio``.

        ``text`` holds one ``<|AUDIO|>`` (optionally wrapped in bos/eos) per clip in
        ``audio``; clips are taken in order over the whole batch. An audio clip is a path,
        encoded bytes, a file object, an array or tensor, an ``(array, rate)`` tuple or a
        ``datasets`` Audio dict; ``sampling_rate`` is the rate of arrays that do not state
        their own (without any, 16 kHz is assumed, with a warning once per processor).

        ``labels=True`` needs conversations and marks the assistant turns as the only
        targets; ``return_assistant_tokens_mask`` adds ``assistant_masks``. ``padding``
        (``True``/``"longest"``, ``"max_length"``, ``False``), ``padding_side`` (default
        ``"left"``), ``truncation`` + ``max_length`` (refused where it would cut audio
        tokens), ``pad_to_multiple_of``, ``add_special_tokens`` (default ``False``: the
        template writes every special token) and ``return_tensors`` (``"pt"``, ``"np"``,
        ``None`` for lists) work as in transformers.
        """
        if kwargs:
            raise _unexpected("__call__", next(iter(kwargs)))
        if (text is None) == (conversations is None):
            raise ValueError("pass either `text` (with `audio`) or `conversations`")
        template = self._template(None, add_generation_prompt=add_generation_prompt)
        return self._batch(
            text,
            audio,
            conversations,
            template,
            sampling_rate=sampling_rate,
            labels=labels,
            return_assistant_tokens_mask=return_assistant_tokens_mask,
            padding=padding,
            padding_side=padding_side,
            truncation=truncation,
            max_length=max_length,
            pad_to_multiple_of=pad_to_multiple_of,
            add_special_tokens=add_special_tokens,
            return_attention_mask=return_attention_mask,
            return_tensors=return_tensors,
            prefix_errors=True,
        )

    def _batch(
        self,
        text: str | Sequence[str] | None,
        audio: Any,
        conversations: Sequence[Conversation] | None,
        template: _Template,
        *,
        sampling_rate: int | None = None,
        labels: bool = False,
        return_assistant_tokens_mask: bool = False,
        padding: bool | str = True,
        padding_side: str | None = None,
        truncation: bool | str | None = None,
        max_length: int | None = None,
        pad_to_multiple_of: int | None = None,
        add_special_tokens: bool = False,
        return_attention_mask: bool = True,
        return_tensors: str | None = "pt",
        prefix_errors: bool = True,
    ) -> BatchFeature:
        """The one batch builder behind ``__call__`` and ``apply_chat_template(tokenize=True)``."""
        if return_tensors not in ("pt", "np", None):
            raise ValueError(f"return_tensors must be 'pt', 'np' or None, not {return_tensors!r}")
        side = padding_side or "left"
        if side not in ("left", "right"):
            raise ValueError(f"padding_side must be 'left' or 'right', not {side!r}")
        if sampling_rate is not None:
            _check_rate(sampling_rate, "sampling_rate")
        want_mask = labels or return_assistant_tokens_mask
        rows: list[tuple[list[int], list[int] | None]] = []
        waves: list[np.ndarray] = []
        if conversations is not None:
            if isinstance(conversations, dict) or (
                isinstance(conversations, list | tuple) and conversations
                and isinstance(conversations[0], dict)
            ):
                raise ValueError("`conversations` is a list of conversations: wrap a single "
                                 "conversation in a list")
            several = prefix_errors and len(conversations) > 1
            for k, conversation in enumerate(conversations):
                where = f"conversation {k}, " if several else ""
                clips = self._load_parts(conversation, sampling_rate, where)
                ids, mask = self._conversation_ids(
                    self._add_system(conversation), template, mask=want_mask,
                    add_special_tokens=add_special_tokens,
                )
                if labels and not any(mask or ()):
                    raise ValueError(f"{where}labels=True but the conversation has no assistant "
                                     "answer to learn")
                rows.append(self._expand_row(ids, [len(w) for w in clips], mask, where))
                waves.extend(clips)
        else:
            if want_mask:
                raise ValueError("labels and assistant masks need `conversations` (which turns "
                                 "are answers)")
            texts = [text] if isinstance(text, str) else list(text or [])
            waves = [
                self._load_clip(*_clip_input(clip, f"audio[{k}]"), sampling_rate, f"audio[{k}]")
                for k, clip in enumerate(_clip_list(audio))
            ]
            tokenized = [
                list(self.tokenizer(t, add_special_tokens=add_special_tokens)["input_ids"])
                for t in texts
            ]
            found = sum(ids.count(self.audio_token_id) for ids in tokenized)
            if found != len(waves):
                raise ValueError(
                    f"the prompts hold {found} {AUDIO_TOKEN} placeholder(s) but {len(waves)} "
                    f"audio clip(s) were given"
                )
            lengths = iter([len(w) for w in waves])
            for ids in tokenized:
                own = [next(lengths) for _ in range(ids.count(self.audio_token_id))]
                rows.append(self._expand_row(ids, own))
        rows = [self._truncate(ids, mask, i, truncation, max_length)
                for i, (ids, mask) in enumerate(rows)]
        return self._collate(rows, waves, side=side, labels=labels,
                             assistant_masks=return_assistant_tokens_mask, padding=padding,
                             max_length=max_length, pad_to_multiple_of=pad_to_multiple_of,
                             return_attention_mask=return_attention_mask,
                             return_tensors=return_tensors)

    def _truncate(self, ids: list[int], mask: list[int] | None, row: int,
                  truncation: bool | str | None, max_length: int | None
                  ) -> tuple[list[int], list[int] | None]:
        if truncation in (None, False, "do_not_truncate"):
            return ids, mask
        if truncation not in (True, "longest_first", "only_first"):
            raise ValueError(f"truncation must be True, False, 'longest_first' or 'only_first', "
                             f"not {truncation!r}")
        limit = max_length if max_length is not None else _model_max_length(self.tokenizer)
        if limit is None or len(ids) <= limit:
            return ids, mask
        keep = (slice(len(ids) - limit, None) if self.tokenizer.truncation_side == "left"
                else slice(0, limit))
        dropped = ids[: keep.start] if keep.start else ids[limit:]
        if self.audio_token_id in dropped:
            raise ValueError(
                f"row {row}: truncating its {len(ids)} tokens to max_length={limit} would cut "
                f"audio tokens; shorten the audio or raise max_length"
            )
        return ids[keep], (None if mask is None else mask[keep])

    def _collate(
        self,
        rows: list[tuple[list[int], list[int] | None]],
        waves: list[np.ndarray],
        *,
        side: str,
        labels: bool,
        assistant_masks: bool,
        padding: bool | str,
        max_length: int | None,
        pad_to_multiple_of: int | None,
        return_attention_mask: bool,
        return_tensors: str | None,
    ) -> BatchFeature:
        lengths = [len(ids) for ids, _ in rows]
        width = self._padded_width(lengths, padding, max_length, pad_to_multiple_of)
        if width is None and return_tensors is not None and len(set(lengths)) > 1:
            raise ValueError(
                f"padding=False but the rows have different lengths ({min(lengths)} to "
                f"{max(lengths)} tokens); pass padding=True or return_tensors=None"
            )
        tables: dict[str, Any] = {}
        if width is None:  # no padding: the rows as they are
            tables["input_ids"] = [ids for ids, _ in rows]
            if return_attention_mask:
                tables["attention_mask"] = [[1] * n for n in lengths]
            if labels:
                tables["labels"] = [_labels(ids, mask) for ids, mask in rows]
            if assistant_masks:
                tables["assistant_masks"] = [mask for _, mask in rows]
            if return_tensors is not None:
                tables = {k: torch.tensor(v, dtype=torch.long).reshape(len(rows), lengths[0] if rows else 0)
                          for k, v in tables.items()}
        else:
            pad_id = self.tokenizer.pad_token_id
            ids, attention = pad_sequences([ids for ids, _ in rows], pad_id, side, width=width)
            tables["input_ids"] = ids
            if return_attention_mask:
                tables["attention_mask"] = attention
            if labels:
                tables["labels"] = pad_sequences(
                    [_labels(i, m) for i, m in rows], IGNORE_INDEX, side, width=width)[0]
            if assistant_masks:
                tables["assistant_masks"] = pad_sequences(
                    [m or [] for _, m in rows], 0, side, width=width)[0]
        if waves:
            audio_lengths = [len(w) for w in waves]
            values = torch.zeros(len(waves), max(audio_lengths))
            for i, wave in enumerate(waves):
                values[i, : len(wave)] = torch.from_numpy(wave)
            tables["input_values"] = values
            tables["audio_length"] = torch.tensor(audio_lengths, dtype=torch.long)
        if return_tensors == "np":
            tables = {k: v.numpy() if isinstance(v, torch.Tensor) else v for k, v in tables.items()}
        elif return_tensors is None:
            for key, value in tables.items():
                if key == "input_values":
                    tables[key] = [
                        row[:n] if width is None else row
                        for row, n in zip(value.numpy(), audio_lengths, strict=True)
                    ]
                elif isinstance(value, torch.Tensor):
                    tables[key] = value.tolist()
        return BatchFeature(tables)

    def _padded_width(self, lengths: list[int], padding: bool | str, max_length: int | None,
                      pad_to_multiple_of: int | None) -> int | None:
        """The padded row width, or ``None`` for no padding."""
        if padding is True or padding == "longest":
            width = max(lengths, default=0)
        elif padding is False or padding is None or padding == "do_not_pad":
            return None
        elif padding == "max_length":
            limit = max_length if max_length is not None else _model_max_length(self.tokenizer)
            if limit is None:
                raise ValueError("padding='max_length' needs max_length")
            if max(lengths, default=0) > limit:
                raise ValueError(f"a row has {max(lengths)} tokens, more than max_length="
                                 f"{limit}; pass truncation=True or a larger max_length")
            width = limit
        else:
            raise ValueError(f"padding must be True, False, 'longest', 'max_length' or "
                             f"'do_not_pad', not {padding!r}")
        if pad_to_multiple_of:
            width = -(-width // pad_to_multiple_of) * pad_to_multiple_of
        return width

    # ------------------------------------------------------------------- audio
    def load_audio_parts(self, conversation: Conversation) -> list[np.ndarray]:
        """Every audio part of one conversation, in message order, as float32 mono at the
        processor's rate, padded to the minimum length; each is decoded once.

        The conversation is validated first (unknown keys, conflicting rates): see
        :meth:`load` for the forms an audio part may take.
        """
        return self._load_parts(conversation, None)

    def _load_parts(self, conversation: Conversation, sampling_rate: int | None,
                    where: str = "") -> list[np.ndarray]:
        _check_messages(conversation, where)
        return [
            self._load_clip(*_audio_input(part, f"{where}message {i}, part {j}"), sampling_rate,
                            f"{where}message {i}, part {j}")
            for i, j, part in _audio_part_positions(conversation)
        ]

    def load(self, clip: Any, sampling_rate: int | None = None) -> np.ndarray:
        """One clip as float32 mono at the model's rate, padded to the minimum length.

        ``clip`` is an audio content part (``{"type": "audio", ...}`` or OpenAI's
        ``input_audio``) or audio itself: a path, encoded bytes, a file object, an array or
        tensor, an ``(array, rate)`` tuple, or a ``datasets`` Audio dict (``{"array",
        "sampling_rate", "path"}`` or ``{"bytes", "path"}``). An array's rate comes from the
        part's ``sampling_rate`` (or ``sample_rate``), the tuple, the dict, or else
        ``sampling_rate`` here; with none of them it is taken as the processor's rate, with
        a warning once per processor. Rates that disagree are an error. Encoded audio
        declares its own rate: beside it, only ``sampling_rate`` equal to the processor's
        (the rate it is loaded at, as transformers reads it) is accepted.
        """
        if sampling_rate is not None:
            _check_rate(sampling_rate, "sampling_rate")
        return self._load_clip(*_clip_input(clip, "audio"), sampling_rate, "audio")

    def _load_clip(self, source: Any, rate: int | None, default_rate: int | None,
                   where: str) -> np.ndarray:
        if isinstance(source, np.ndarray | torch.Tensor):
            if rate is None:
                rate = default_rate if default_rate is not None else self._assumed_rate()
            elif default_rate is not None and default_rate != rate:
                raise ValueError(
                    f"{where}: the audio states a rate of {rate} Hz but sampling_rate="
                    f"{default_rate} was passed; give one rate"
                )
            wave = load_audio(source, sample_rate=self.sample_rate,
                              max_seconds=self.max_audio_seconds, source_sample_rate=rate)
        else:  # encoded audio states its own rate in its header
            if rate is not None and rate != self.sample_rate:
                # transformers' processors read sampling_rate beside a file as the rate to
                # load at, which is ours; any other value contradicts the file's header.
                raise ValueError(
                    f"{where}: sampling_rate={rate} beside encoded audio (a path, bytes or URL): "
                    f"the file states its own rate and is loaded at {self.sample_rate} Hz; "
                    "remove sampling_rate (it applies to arrays)"
                )
            wave = load_audio(source, sample_rate=self.sample_rate,
                              max_seconds=self.max_audio_seconds)
        if len(wave) < self.min_audio_samples:
            wave = np.pad(wave, (0, self.min_audio_samples - len(wave)))
        return wave

    def _assumed_rate(self) -> int:
        """The processor's rate for an array that states none; warns once per processor."""
        if not self._warned_rate:
            import sys
            import warnings

            self._warned_rate = True
            frame, level = sys._getframe(0), 1
            while frame.f_back is not None and frame.f_globals.get("__name__") == __name__:
                frame, level = frame.f_back, level + 1  # point at the caller's code
            warnings.warn(
                f"an audio array came without its sampling rate and is taken as "
                f"{self.sample_rate} Hz; state it ({{'type': 'audio', 'audio': x, "
                f"'sampling_rate': RATE}}, an (x, RATE) tuple, or sampling_rate=RATE). "
                f"This warning is shown once per processor.",
                UserWarning,
                stacklevel=level,
            )
        return self.sample_rate

    # ------------------------------------------------------------------ decoding
    def batch_decode(self, sequences: Any, skip_special_tokens: bool = True, **kw: Any) -> list[str]:
        return self.tokenizer.batch_decode(sequences, skip_special_tokens=skip_special_tokens, **kw)

    def decode(self, sequence: Any, skip_special_tokens: bool = True, **kw: Any) -> str:
        return self.tokenizer.decode(sequence, skip_special_tokens=skip_special_tokens, **kw)


class _Template:
    """A chat template with the options it is rendered with."""

    __slots__ = ("text", "add_generation_prompt", "continue_final_message", "tools", "documents",
                 "variables", "sanitize")

    def __init__(self, text: str, *, add_generation_prompt: bool,
                 continue_final_message: bool | str, tools: list[Any] | None,
                 documents: list[dict[str, str]] | None, variables: dict[str, Any],
                 sanitize: bool) -> None:
        self.text = text
        self.add_generation_prompt = add_generation_prompt
        self.continue_final_message = continue_final_message
        self.tools = tools
        self.documents = documents
        self.variables = variables
        self.sanitize = sanitize


# --------------------------------------------------------------------------- padding
def pad_sequences(
    rows: list[list[int]], pad_value: int, side: str = "left", *, width: int | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Pad rows of token ids into one ``(len(rows), width)`` long tensor, and its mask.

    ``side`` is ``"left"`` (for generation) or ``"right"``; ``width`` defaults to the
    longest row. The mask is 1 on the rows' own tokens and 0 on padding.
    """
    if side not in ("left", "right"):
        raise ValueError(f"side must be 'left' or 'right', not {side!r}")
    longest = max((len(row) for row in rows), default=0)
    width = longest if width is None else width
    if width < longest:
        raise ValueError(f"width {width} is shorter than the longest row ({longest})")
    ids = np.full((len(rows), width), pad_value, dtype=np.int64)
    mask = np.zeros((len(rows), width), dtype=np.int64)
    for i, row in enumerate(rows):
        n = len(row)
        if n:
            span = slice(width - n, width) if side == "left" else slice(0, n)
            ids[i, span] = row
            mask[i, span] = 1
    return torch.from_numpy(ids), torch.from_numpy(mask)


def _labels(ids: list[int], mask: list[int] | None) -> list[int]:
    assert mask is not None
    return [t if m else IGNORE_INDEX for t, m in zip(ids, mask, strict=True)]


def _cached_folder(repo_id: str) -> Path | None:
    """The local snapshot folder of a Hub id in the cache, if its tokenizer is there."""
    try:
        from huggingface_hub import try_to_load_from_cache

        cached = try_to_load_from_cache(repo_id, "tokenizer_config.json")
    except Exception:  # an id the cache does not know
        return None
    return Path(cached).parent if isinstance(cached, str) else None


def _model_max_length(tokenizer: PreTrainedTokenizerBase) -> int | None:
    limit = getattr(tokenizer, "model_max_length", None)
    return int(limit) if isinstance(limit, int) and limit < 1 << 40 else None


# --------------------------------------------------------------------------- arguments
# Processor arguments that apply_chat_template passes on to __call__.
_CALL_OPTIONS = frozenset({
    "sampling_rate", "padding", "padding_side", "truncation", "max_length", "pad_to_multiple_of",
    "add_special_tokens", "return_attention_mask", "labels",
})
# Template variables that apply_chat_template sets itself.
_RESERVED_TEMPLATE_NAMES = frozenset({
    "messages", "tools", "documents", "add_generation_prompt",
})
_HINTS = {
    "audios": "use `audio` (transformers renamed `audios` to `audio`)",
    "images": "MiDashengLM takes audio and text only",
    "videos": "MiDashengLM takes audio and text only",
    "sample_rate": "the keyword is `sampling_rate`",
    "conversation": "pass `conversations` (a list of conversations)",
    "messages": "pass `conversations` (a list of conversations)",
}


def _unexpected(method: str, name: str, where: str = "") -> TypeError:
    hint = _HINTS.get(name)
    place = f" in {where}" if where else ""
    return TypeError(
        f"MiDashengLMProcessor.{method}() got an unexpected keyword argument {name!r}{place}"
        + (f": {hint}" if hint else "")
    )


def _flatten_processor_kwargs(processor_kwargs: dict[str, Any] | None) -> dict[str, Any]:
    """transformers' processor kwargs, flat or grouped as text_kwargs/audio_kwargs/common_kwargs."""
    if not processor_kwargs:
        return {}
    if not isinstance(processor_kwargs, dict):
        raise TypeError("processor_kwargs must be a dict")
    flat: dict[str, Any] = {}
    for name, value in processor_kwargs.items():
        if name in ("text_kwargs", "audio_kwargs", "common_kwargs") and isinstance(value, dict):
            flat.update(value)
        else:
            flat[name] = value
    return flat


_TEMPLATE_VARIABLES: dict[str, frozenset[str]] = {}


def _template_variables(template: str) -> frozenset[str]:
    """The undeclared variables a Jinja chat template reads (cached per template)."""
    names = _TEMPLATE_VARIABLES.get(template)
    if names is None:
        import jinja2
        import jinja2.ext
        import jinja2.meta
        import jinja2.nodes

        class _Generation(jinja2.ext.Extension):  # {% generation %}...{% endgeneration %}
            tags = {"generation"}

            def parse(self, parser: Any) -> Any:
                lineno = next(parser.stream).lineno
                body = parser.parse_statements(("name:endgeneration",), drop_needle=True)
                return jinja2.nodes.Scope(body, lineno=lineno)

        env = jinja2.Environment(extensions=[_Generation, jinja2.ext.loopcontrols])
        names = frozenset(jinja2.meta.find_undeclared_variables(env.parse(template)))
        _TEMPLATE_VARIABLES[template] = names
    return names


# --------------------------------------------------------------------------- messages and parts
# The keys each kind of content part may hold. Any other key is refused: a typo such as
# "sampling_rat" must not silently change the input.
_PART_KEYS = {
    "text": frozenset({"type", "text"}),
    "audio": frozenset({"type", "audio", "path", "url", "sampling_rate", "sample_rate"}),
    "input_audio": frozenset({"type", "input_audio"}),
}
_AUDIO_TYPES = ("audio", "input_audio")
# A Hugging Face ``datasets`` Audio value: decoded {"array", "sampling_rate", "path"}, or
# not decoded {"bytes", "path"}.
_DATASETS_AUDIO_KEYS = frozenset({"array", "sampling_rate", "path", "bytes"})


def _check_messages(conversation: Any, where: str = "") -> None:
    """Validate a conversation: messages, part types, part keys and audio rates."""
    if not isinstance(conversation, list) or not conversation:
        raise ValueError(
            f"{where}a conversation is a non-empty list of {{'role', 'content'}} messages"
        )
    for i, message in enumerate(conversation):
        if not isinstance(message, dict) or "role" not in message or "content" not in message:
            raise ValueError(f"{where}message {i} must be a dict with 'role' and 'content'")
        content = message["content"]
        if isinstance(content, str):
            continue
        if not isinstance(content, list):
            raise ValueError(f"{where}message {i}: content must be a string or a list of parts")
        for j, part in enumerate(content):
            kind = part.get("type") if isinstance(part, dict) else None
            if kind not in _PART_KEYS:
                raise ValueError(
                    f"{where}message {i}, part {j}: type must be 'text' or 'audio', got {kind!r}"
                )
            _check_part(part, kind, f"{where}message {i}, part {j}")


def _check_part(part: dict[str, Any], kind: str, where: str) -> None:
    allowed = _PART_KEYS[kind]
    for key in part:
        if key not in allowed:
            raise ValueError(
                f"{where}: unknown key {key!r} in a {kind!r} part (allowed: "
                f"{', '.join(sorted(allowed))})"
            )
    if kind == "text":
        if not isinstance(part.get("text"), str):
            raise ValueError(f"{where}: a text part needs 'text' as a string")
    else:
        _audio_input(part, where, decode=False)


def _audio_part_positions(conversation: Conversation) -> list[tuple[int, int, dict[str, Any]]]:
    return [
        (i, j, part)
        for i, message in enumerate(conversation)
        if isinstance(message["content"], list)
        for j, part in enumerate(message["content"])
        if part.get("type") in _AUDIO_TYPES
    ]


def _audio_input(part: dict[str, Any], where: str, decode: bool = True) -> tuple[Any, int | None]:
    """The audio of a content part and the rate it states (``None``: not stated).

    With ``decode=False`` only validates (base64 is not decoded)."""
    if part.get("type") == "input_audio":
        payload = part.get("input_audio")
        if not isinstance(payload, dict) or not isinstance(payload.get("data"), str):
            raise ValueError(f"{where}: an input_audio part needs "
                             "{'input_audio': {'data': BASE64, 'format': ...}}")
        for key in payload:
            if key not in ("data", "format"):
                raise ValueError(f"{where}: unknown key {key!r} in 'input_audio' "
                                 "(allowed: data, format)")
        return (_b64decode(payload["data"], where) if decode else payload["data"]), None
    given = [key for key in ("audio", "path", "url") if part.get(key) is not None]
    if len(given) != 1:
        raise ValueError(
            f"{where}: an audio part needs exactly one of 'audio', 'path' or 'url', got "
            f"{given or 'none'}"
        )
    key = given[0]
    rates = {name: _check_rate(part[name], name, where)
             for name in ("sampling_rate", "sample_rate") if part.get(name) is not None}
    if key == "path":
        if not isinstance(part["path"], str | os.PathLike):
            raise ValueError(f"{where}: 'path' must be a string or path, "
                             f"not {type(part['path']).__name__}")
        source, own = part["path"], None
    elif key == "url":
        source, own = _url_source(part["url"], where, decode), None
    else:
        source, own = _unwrap_audio(part["audio"], where)
    if own is not None:
        rates["the audio's own rate"] = own
    if len(set(rates.values())) > 1:
        listed = ", ".join(f"{name} {rate}" for name, rate in rates.items())
        raise ValueError(f"{where}: conflicting sampling rates ({listed})")
    return source, next(iter(rates.values()), None)


def _clip_input(clip: Any, where: str) -> tuple[Any, int | None]:
    """A clip given directly (``processor.load``, ``processor(audio=...)``): a content part
    or audio itself."""
    if isinstance(clip, dict) and "type" in clip:
        kind = clip["type"]
        if kind not in _AUDIO_TYPES:
            raise ValueError(f"{where}: not an audio part (type {kind!r})")
        _check_part(clip, kind, where)
        return _audio_input(clip, where)
    return _unwrap_audio(clip, where)


def _clip_list(audio: Any) -> list[Any]:
    """``audio`` of ``__call__``: one clip or a list of clips."""
    if audio is None:
        return []
    single = (
        isinstance(audio, np.ndarray | torch.Tensor | str | bytes | bytearray | memoryview | dict
                   | os.PathLike)
        or hasattr(audio, "read")
        or (isinstance(audio, tuple) and len(audio) == 2 and _is_rate(audio[1]))
    )
    return [audio] if single else list(audio)


def _unwrap_audio(value: Any, where: str) -> tuple[Any, int | None]:
    """Audio with the rate it carries: an ``(array, rate)`` tuple, a ``datasets`` Audio dict,
    or plain audio (no rate)."""
    if isinstance(value, tuple):
        if len(value) != 2 or not _is_rate(value[1]):
            raise ValueError(f"{where}: an audio tuple must be (array, sampling_rate)")
        return value[0], _check_rate(value[1], "the tuple's rate", where)
    if isinstance(value, dict):
        for key in value:
            if key not in _DATASETS_AUDIO_KEYS:
                raise ValueError(
                    f"{where}: unknown key {key!r} in an audio dict (a datasets Audio value has "
                    f"{', '.join(sorted(_DATASETS_AUDIO_KEYS))})"
                )
        if value.get("array") is not None:
            rate = value.get("sampling_rate")
            return value["array"], (None if rate is None
                                    else _check_rate(rate, "sampling_rate", where))
        for key in ("bytes", "path"):
            if value.get(key) is not None:
                return value[key], None
        raise ValueError(f"{where}: the audio dict holds no 'array', 'bytes' or 'path'")
    return value, None


def _url_source(url: Any, where: str, decode: bool) -> Any:
    if not isinstance(url, str):
        raise ValueError(f"{where}: 'url' must be a string")
    if url.startswith("data:"):
        header, sep, data = url.partition(",")
        if not sep or not header.endswith(";base64"):
            raise ValueError(f"{where}: a data: URL must be base64 (data:audio/...;base64,...)")
        return _b64decode(data, where) if decode else url
    if url.startswith("file://"):
        from urllib.parse import unquote, urlparse

        return unquote(urlparse(url).path)
    scheme, sep, _ = url.partition("://")
    if sep and scheme.isalpha():
        raise ValueError(
            f"{where}: {scheme}:// URLs are not fetched; download the audio and give its "
            "'path' (or its bytes as 'audio')"
        )
    return url  # a local path


def _b64decode(data: str, where: str) -> bytes:
    import base64
    import binascii

    try:
        return base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError) as e:
        raise ValueError(f"{where}: invalid base64 audio data ({e})") from e


def _is_rate(value: Any) -> bool:
    return isinstance(value, int | np.integer) and not isinstance(value, bool)


def _check_rate(value: Any, name: str, where: str = "") -> int:
    if not _is_rate(value) or value <= 0:
        place = f"{where}: " if where else ""
        raise ValueError(f"{place}{name} must be a positive integer (Hz), got {value!r}")
    return int(value)


def _is_batch(conversation: Any) -> bool:
    return (isinstance(conversation, list | tuple) and bool(conversation)
            and isinstance(conversation[0], list | tuple))
