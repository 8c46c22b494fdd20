"""MiDashengLM: Dasheng encoder -> 5 Hz projector -> any transformers causal LM.

Attribute names are the published checkpoint's key prefixes: ``audio_encoder``,
``audio_projector``, ``decoder`` (``decoder.model.*``, ``decoder.lm_head.weight``).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
from transformers import AutoModelForCausalLM, GenerationConfig, PreTrainedModel

from midashenglm.modeling.config import MiDashengLMConfig, decoder_config
from midashenglm.modeling.encoder import DashengEncoder
from midashenglm.modeling.geometry import num_audio_tokens
from midashenglm.modeling.projector import AudioProjector
from midashenglm.modeling.weights import (
    CONFIG_NAME,
    GENERATION_CONFIG_NAME,
    iter_tensors,
    load_config,
    load_state,
    resolve_checkpoint,
    resolve_device_args,
    resolve_dtype,
    resolve_dtype_args,
    weight_files,
    write_json_file,
    write_weights,
)


class MiDashengLM(PreTrainedModel):
    config_class = MiDashengLMConfig
    base_model_prefix = ""
    main_input_name = "input_ids"
    # gradient_checkpointing_enable()/_disable() (transformers) set the flag on every
    # sub-module that has one: the decoder's layers and DashengEncoder, whose blocks are
    # then recomputed in the backward pass (torch.utils.checkpoint, non-reentrant).
    supports_gradient_checkpointing = True
    _supports_sdpa = True
    _no_split_modules = ["Block"]

    def __init__(self, config: MiDashengLMConfig) -> None:
        super().__init__(config)
        enc = config.audio_encoder_config
        self.audio_encoder = DashengEncoder(enc)
        self.audio_projector = AudioProjector(
            enc.embed_dim, config.text_config.hidden_size, config.subsample_factor
        )
        self.decoder = AutoModelForCausalLM.from_config(decoder_config(config.text_config))
        self.generation_config = GenerationConfig.from_model_config(config.text_config)
        self.post_init()

    def _init_weights(self, module: torch.nn.Module) -> None:
        # Sub-modules initialise themselves when built (Dasheng's scheme for the
        # encoder, the decoder's own scheme for the decoder); nothing to redo here.
        return

    # ------------------------------------------------------------------ loading
    @classmethod
    def from_pretrained(  # type: ignore[override]
        cls,
        path_or_id: str | os.PathLike,
        *,
        dtype: str | torch.dtype | None = "auto",
        device: str | torch.device | None = None,
        allow_pickle: bool = False,
        revision: str | None = None,
        token: str | bool | None = None,
        torch_dtype: str | torch.dtype | None = None,
        device_map: Any = None,
    ) -> MiDashengLM:
        """Load a checkpoint in the published layout (folder or Hub id).

        Every key is checked (missing, unexpected, wrong shape: one
        :class:`~midashenglm.modeling.weights.CheckpointError` naming them all); the
        weights are allocated once, in their final dtype and on their final device.
        ``dtype="auto"`` uses the dtype stored in config.json; the log-mel front end
        always runs in fp32 whatever the dtype. ``torch_dtype`` is transformers' older
        name for ``dtype``.

        ``device``: "cpu" (the default), "cuda", "cuda:N", "mps", a ``torch.device``, or
        "auto" (the first CUDA GPU, else MPS, else the CPU); a device this machine lacks is
        a ``ValueError``. transformers' ``device_map`` works for a model on one device:
        "auto", a device, or ``{"": device}``; per-module maps are refused.
        """
        target = resolve_device_args(device, device_map, default="cpu")
        dtype = resolve_dtype_args(dtype, torch_dtype)
        folder = resolve_checkpoint(path_or_id, revision=revision, token=token, allow_pickle=allow_pickle)
        config = load_config(folder)
        files = weight_files(folder, allow_pickle=allow_pickle)
        torch_dtype = resolve_dtype(dtype, config)
        model = cls.build_empty(config, torch_dtype, target)
        optional = model.tied_checkpoint_keys()
        load_state(model, iter_tensors(files), source=str(folder), optional=optional)
        if optional:
            model.decoder.tie_weights()
        if (folder / GENERATION_CONFIG_NAME).is_file():
            model.generation_config = GenerationConfig.from_pretrained(str(folder))
        model.config.dtype = torch_dtype
        model.name_or_path = str(path_or_id)
        return model.eval()

    @classmethod
    def build_empty(
        cls, config: MiDashengLMConfig, dtype: torch.dtype, device: str | torch.device
    ) -> MiDashengLM:
        """The model with uninitialised weights, allocated once in its final dtype and device."""
        from transformers.initialization import no_init_weights

        previous = torch.get_default_dtype()
        torch.set_default_dtype(dtype)
        try:
            with no_init_weights(), torch.device(device):
                model = cls(config)
        finally:
            torch.set_default_dtype(previous)
        return model

    def tied_checkpoint_keys(self) -> set[str]:
        """Keys that the files leave out because they share a tensor (a tied ``lm_head``)."""
        if getattr(self.decoder.config, "tie_word_embeddings", False):
            return {"decoder.lm_head.weight"}
        return set()

    def save_pretrained(  # type: ignore[override]
        self,
        directory: str | os.PathLike,
        *,
        max_shard_size: int | str = "5GB",
        dtype: torch.dtype | None = None,
    ) -> Path:
        """Write the published layout (config.json, safetensors shards + index, generation config).

        The tokenizer and chat template are the processor's: save both into the same
        folder, as with transformers (``model.save_pretrained(d); processor.save_pretrained(d)``),
        and the folder loads and runs alone. What this writes loads back bit-identically; ``dtype`` casts the stored
        floating-point tensors (and is recorded in config.json).
        """
        directory = Path(directory)
        state = {k: v.detach() for k, v in self.state_dict().items()}
        for key in self.tied_checkpoint_keys():
            state.pop(key, None)
        if dtype is not None:
            state = {k: v.to(dtype) if v.is_floating_point() else v for k, v in state.items()}
        state = {k: v.cpu().contiguous() for k, v in state.items()}
        write_weights(state, directory, max_shard_size=max_shard_size)

        config = self.config.to_dict()
        stored = next((v.dtype for v in state.values() if v.is_floating_point()), torch.float32)
        config["dtype"] = str(stored).removeprefix("torch.")
        config.pop("torch_dtype", None)
        write_json_file(directory, CONFIG_NAME, config)
        self.generation_config.save_pretrained(str(directory))
        return directory

    # -------------------------------------------------------------- embeddings
    def get_input_embeddings(self) -> torch.nn.Module:
        return self.decoder.get_input_embeddings()

    def set_input_embeddings(self, value: torch.nn.Module) -> None:
        self.decoder.set_input_embeddings(value)

    def audio_token_counts(self, audio_length: torch.Tensor) -> list[int]:
        enc = self.config.audio_encoder_config
        return [
            num_audio_tokens(
                int(n),
                hop_length=enc.hop_length,
                patch_stride=enc.patch_stride[1],
                subsample_factor=self.config.subsample_factor,
                min_samples=0,
            )
            for n in audio_length
        ]

    def encode_audio(
        self, input_values: torch.Tensor, audio_length: torch.Tensor | None = None
    ) -> list[torch.Tensor]:
        """One (tokens, hidden) tensor of decoder embeddings per clip."""
        if input_values.ndim == 1:
            input_values = input_values.unsqueeze(0)
        if audio_length is None:
            audio_length = torch.full((input_values.shape[0],), input_values.shape[1])
        features, mask = self.audio_encoder(input_values, audio_length)
        embeds, _ = self.audio_projector(features, mask)
        counts = self.audio_token_counts(audio_length)
        if max(counts) > embeds.shape[1]:
            raise ValueError(
                f"a clip of {int(audio_length[counts.index(max(counts))])} samples needs "
                f"{max(counts)} audio tokens but the encoder gave {embeds.shape[1]}; "
                "clips must hold at least 3200 samples (the processor pads them)"
            )
        return [embeds[i, :n] for i, n in enumerate(counts)]

    def embed(
        self,
        input_ids: torch.Tensor,
        input_values: torch.Tensor | None = None,
        audio_length: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Token embeddings with the audio embeddings placed at the ``<|AUDIO|>`` positions, in order."""
        embeds = self.get_input_embeddings()(input_ids)
        slots = input_ids == self.config.audio_token_id
        num_slots = int(slots.sum())
        if input_values is None:
            if num_slots:
                raise ValueError(
                    f"the prompt holds {num_slots} audio placeholder token(s) but no audio was given"
                )
            return embeds
        audio = torch.cat(self.encode_audio(input_values.to(embeds.device), audio_length))
        return fill_audio_slots(embeds, input_ids, audio, self.config.audio_token_id)

    # ---------------------------------------------------------------- forward
    def forward(
        self,
        input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        input_values: torch.Tensor | None = None,
        audio_length: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        inputs_embeds: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        **kwargs: Any,
    ) -> Any:
        """Decoder outputs (``logits``, ``loss`` when ``labels`` are given, the KV cache).

        Extra keyword arguments (``use_cache``, the cache object, ...) go to the decoder.
        """
        if inputs_embeds is None:
            if input_ids is None:
                raise ValueError("pass input_ids or inputs_embeds")
            inputs_embeds = self.embed(input_ids, input_values, audio_length)
        cached = kwargs.get("cache", kwargs.get("past_key_values")) is not None
        if position_ids is None and attention_mask is not None and not cached:
            # Left padding must not shift positions: count them from each row's first token.
            position_ids = (attention_mask.long().cumsum(-1) - 1).clamp_min(0)
        return self.decoder(
            inputs_embeds=inputs_embeds,
            attention_mask=attention_mask,
            position_ids=position_ids,
            labels=labels,
            **kwargs,
        )

    @torch.no_grad()
    def generate(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        input_values: torch.Tensor | None = None,
        audio_length: torch.Tensor | None = None,
        **kwargs: Any,
    ) -> torch.Tensor:
        """Generate with the decoder's ``generate``; returns only the new tokens."""
        inputs_embeds = self.embed(input_ids, input_values, audio_length)
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        # One generation config: the checkpoint's, unless the caller passes another.
        self.decoder.generation_config = self.generation_config
        return self.decoder.generate(
            inputs_embeds=inputs_embeds, attention_mask=attention_mask, **kwargs
        )


def fill_audio_slots(
    embeds: torch.Tensor,
    input_ids: torch.Tensor,
    audio: torch.Tensor,
    audio_token_id: int,
    attention_mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """Place audio embeddings in the ``<|AUDIO|>`` slots, in reading order.

    ``embeds`` (batch, seq, hidden) token embeddings, ``input_ids`` (batch, seq), ``audio``
    (slots, hidden) the clips' projected embeddings concatenated in prompt order; slots
    under a zero ``attention_mask`` are padding and skipped. The one place where audio
    enters the decoder's input (the model's forward/generate and the inference engine).
    Raises ``ValueError`` when the number of slots and of audio embeddings differ.
    """
    slots = input_ids == audio_token_id
    if attention_mask is not None:
        slots = slots & attention_mask.bool()
    num_slots = int(slots.sum())
    if audio.shape[0] != num_slots:
        raise ValueError(
            f"the prompt holds {num_slots} audio placeholder token(s) but the clip(s) give "
            f"{audio.shape[0]} audio embeddings; build inputs with MiDashengLMProcessor so "
            "the counts agree"
        )
    return embeds.masked_scatter(slots.unsqueeze(-1), audio.to(embeds.dtype))
