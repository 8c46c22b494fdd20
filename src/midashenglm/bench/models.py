"""Model shapes for the benchmark and the random-weight models built from them.

``full`` is the published 7B system: Dasheng-0.6B + Qwen2.5-Omni-7B's text decoder
against Whisper-large-v3 (as in Qwen2.5-Omni) + the same decoder.

``cpu`` shrinks all three networks by the same factors, so that every component's
per-token work falls by the same amount and the encoder/decoder cost ratio of each
model is kept: widths / 8 (encoders 1280 -> 160, decoder 3584 -> 448, MLPs
likewise), depths / 4 (encoders 32 -> 8 layers, decoder 28 -> 7), vocabulary / 32
(so the LM head keeps its share: it scales with width x vocab). Linear-layer MACs
fall 256x; attention MACs, linear in the width, fall 32x, which moves the analytical
time-to-first-token ratio at 30 s from 3.66 to 3.66 and at 10 s from 3.14 to 3.07
(``midashenglm bench`` prints both). Sequence lengths, token rates, windows and
chunks are those of the real models: they are what the comparison is about.

``tiny`` is for tests: a few layers of width 64, seconds to build and run.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch

from midashenglm.bench.costs import DashengShape, DecoderShape, WhisperShape
from midashenglm.modeling.config import DECODER_PRESETS, ENCODER_PRESETS

SCALES = ("full", "cpu", "tiny")


@dataclass(frozen=True)
class ScaleSpec:
    """Config dicts for the three networks of one scale."""

    name: str
    dasheng: dict[str, Any]
    whisper: dict[str, Any]
    decoder: dict[str, Any]
    note: str

    def shapes(self) -> dict[str, Any]:
        """The shapes the cost formulas take (``dasheng=``, ``whisper=``, ``decoder=``)."""
        from midashenglm.modeling.config import DashengConfig, build_text_config

        from .baseline import baseline_audio_config

        text = build_text_config(dict(self.decoder))
        return {
            "dasheng": DashengShape.from_config(DashengConfig(**self.dasheng)),
            "whisper": WhisperShape.from_config(
                baseline_audio_config(**self.whisper, output_dim=text.hidden_size)
            ),
            "decoder": DecoderShape.from_config(text),
        }


def _scaled(width: int, depth: int, vocab: int) -> ScaleSpec:
    full_dec = DECODER_PRESETS["qwen2.5-omni-7b"]
    enc = ENCODER_PRESETS["0.6B"]
    # Head widths stay near the originals (80 in both encoders, 64 in the decoder) and
    # the decoder keeps its 7:1 query:key-value head ratio.
    enc_dim = enc["embed_dim"] // width
    hidden = full_dec["hidden_size"] // width
    head_dim = 64 if width > 4 else 128
    heads = hidden // head_dim
    decoder = {
        **full_dec,
        "hidden_size": hidden,
        "intermediate_size": full_dec["intermediate_size"] // width,
        "num_hidden_layers": full_dec["num_hidden_layers"] // depth,
        "max_window_layers": full_dec["num_hidden_layers"] // depth,
        "num_attention_heads": heads,
        "num_key_value_heads": max(1, heads // 7),
        "head_dim": head_dim,
        "vocab_size": vocab,
    }
    return ScaleSpec(
        name="cpu",
        dasheng={"embed_dim": enc_dim, "depth": enc["depth"] // depth, "num_heads": enc_dim // 80},
        whisper={
            "d_model": enc_dim,
            "encoder_layers": 32 // depth,
            "encoder_attention_heads": enc_dim // 80,
            "encoder_ffn_dim": 5120 // width,
        },
        decoder=decoder,
        note=f"widths / {width}, depths / {depth}, vocabulary / {width * depth} of the 7B system",
    )


def scale_spec(name: str) -> ScaleSpec:
    if name == "full":
        return ScaleSpec(
            name="full",
            dasheng=dict(ENCODER_PRESETS["0.6B"]),
            whisper={},
            decoder=dict(DECODER_PRESETS["qwen2.5-omni-7b"]),
            note="published shapes: Dasheng-0.6B, Whisper-large-v3, Qwen2.5-Omni-7B text decoder",
        )
    if name == "cpu":
        return _scaled(width=8, depth=4, vocab=152064 // 32)
    if name == "tiny":
        return ScaleSpec(
            name="tiny",
            dasheng=dict(ENCODER_PRESETS["tiny"]),
            whisper={
                "d_model": 64,
                "encoder_layers": 2,
                "encoder_attention_heads": 4,
                "encoder_ffn_dim": 256,
            },
            decoder=dict(DECODER_PRESETS["tiny"]),
            note="test shapes (width 64, 2 layers)",
        )
    raise ValueError(f"unknown scale {name!r}; choose from {', '.join(SCALES)}")


@dataclass
class BenchModels:
    """MiDashengLM, the two baseline variants sharing its decoder, and their processors."""

    midashenglm: Any
    baseline: Any
    baseline_pad30: Any
    processor: Any
    baseline_processor: Any
    spec: ScaleSpec
    device: torch.device
    dtype: torch.dtype

    def model(self, name: str) -> Any:
        return {"midashenglm": self.midashenglm, "baseline": self.baseline, "baseline_pad30": self.baseline_pad30}[name]

    def processor_for(self, name: str) -> Any:
        return self.processor if name == "midashenglm" else self.baseline_processor

    def parameters(self) -> dict[str, int]:
        count = lambda module: sum(p.numel() for p in module.parameters())  # noqa: E731
        return {
            "dasheng_encoder+projector": count(self.midashenglm.audio_encoder)
            + count(self.midashenglm.audio_projector),
            "baseline_encoder+proj": count(self.baseline.audio_encoder),
            "decoder (shared)": count(self.midashenglm.decoder),
        }


@contextlib.contextmanager
def default_dtype(dtype: torch.dtype) -> Iterator[None]:
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        yield
    finally:
        torch.set_default_dtype(previous)


def build_models(
    scale: str | ScaleSpec,
    *,
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
    seed: int = 0,
) -> BenchModels:
    """Random-weight models of ``scale``, built directly on ``device`` in ``dtype``.

    Speed does not depend on the weights' values. The baseline shares MiDashengLM's
    decoder module: one copy in memory, and the same decoder by construction.
    """
    from midashenglm.modeling.config import DashengConfig, MiDashengLMConfig
    from midashenglm.modeling.model import MiDashengLM
    from midashenglm.processing import MiDashengLMProcessor
    from midashenglm.tokenizer import build_tiny_tokenizer

    from .baseline import BaselineAudioLM, baseline_audio_config, baseline_processor

    spec = scale_spec(scale) if isinstance(scale, str) else scale
    device = torch.device(device)
    processor = MiDashengLMProcessor(build_tiny_tokenizer())
    config = MiDashengLMConfig(
        audio_encoder_config=DashengConfig(**spec.dasheng).to_dict(),
        text_config=dict(spec.decoder),
        audio_token_id=processor.audio_token_id,
    )
    torch.manual_seed(seed)
    with torch.device(device), default_dtype(dtype):
        model = MiDashengLM(config).eval()
    gen = model.generation_config
    gen.eos_token_id = processor.tokenizer.convert_tokens_to_ids("<|im_end|>")
    gen.pad_token_id = processor.tokenizer.pad_token_id
    gen.bos_token_id = None
    audio_config = baseline_audio_config(**spec.whisper, output_dim=config.text_config.hidden_size)
    baseline = BaselineAudioLM.sharing_decoder(model, audio_config)
    padded = BaselineAudioLM.sharing_decoder(
        model, audio_config, audio_encoder=baseline.audio_encoder, pad_to_seconds=30.0
    )
    return BenchModels(
        midashenglm=model,
        baseline=baseline,
        baseline_pad30=padded,
        processor=processor,
        baseline_processor=baseline_processor(processor),
        spec=spec,
        device=device,
        dtype=dtype,
    )
