"""Configuration classes with the field names of the published ``config.json``.

``MiDashengLMConfig.to_dict()`` writes exactly the official layout:
``audio_encoder_config``, ``subsample_factor``, ``text_config``, ``audio_token_id``.
"""

from __future__ import annotations

import copy
import inspect
from typing import Any

from transformers import AutoConfig, PretrainedConfig

# Encoder sizes (SYSTEM.md section 3). "tiny" exists for tests and CPU smoke runs.
ENCODER_PRESETS: dict[str, dict[str, Any]] = {
    "tiny": {"embed_dim": 64, "depth": 2, "num_heads": 4},
    # The encoder of the shipped default model (docs/default-model.md): trains on a CPU.
    "small": {"embed_dim": 256, "depth": 6, "num_heads": 4},
    "base": {"embed_dim": 768, "depth": 12, "num_heads": 12},
    "0.6B": {"embed_dim": 1280, "depth": 32, "num_heads": 16},
    "1.2B": {"embed_dim": 1536, "depth": 40, "num_heads": 24},
}

# Decoder shapes. The real presets copy the published shapes so that speed and
# memory numbers measured on random weights are those of the released models.
DECODER_PRESETS: dict[str, dict[str, Any]] = {
    "tiny": {
        "model_type": "qwen2",
        "vocab_size": 512,
        "hidden_size": 64,
        "intermediate_size": 128,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "max_position_embeddings": 4096,
        "rms_norm_eps": 1e-6,
        "rope_theta": 10000.0,
        "tie_word_embeddings": False,
        "hidden_act": "silu",
    },
    "qwen2.5-omni-7b": {
        "model_type": "qwen2_5_omni_text",
        "vocab_size": 152064,
        "hidden_size": 3584,
        "intermediate_size": 18944,
        "num_hidden_layers": 28,
        "num_attention_heads": 28,
        "num_key_value_heads": 4,
        "max_position_embeddings": 32768,
        "rms_norm_eps": 1e-6,
        "rope_theta": 1000000.0,
        "rope_scaling": {"mrope_section": [16, 24, 24], "rope_type": "default", "type": "default"},
        "sliding_window": 32768,
        "use_sliding_window": False,
        "max_window_layers": 28,
        "tie_word_embeddings": False,
        "hidden_act": "silu",
    },
    "qwen3-0.6b": {
        "model_type": "qwen3",
        "vocab_size": 151936,
        "hidden_size": 1024,
        "intermediate_size": 3072,
        "num_hidden_layers": 28,
        "num_attention_heads": 16,
        "num_key_value_heads": 8,
        "head_dim": 128,
        "max_position_embeddings": 40960,
        "rms_norm_eps": 1e-6,
        "rope_theta": 1000000.0,
        "tie_word_embeddings": True,
        "hidden_act": "silu",
    },
}

# Text configs that describe a Qwen2.5-Omni thinker: its text model is a Qwen2
# decoder whose mRoPE reduces to plain RoPE for the 1-D positions MiDashengLM uses.
_QWEN2_ALIASES = {"qwen2_5_omni_text", "qwen2_5_omni_thinker", "qwen2_5_omni"}


class DashengConfig(PretrainedConfig):
    """Dasheng audio encoder hyper-parameters (the ``audio_encoder_config`` block)."""

    model_type = "midashenglm_dasheng_encoder"

    def __init__(
        self,
        embed_dim: int = 768,
        outputdim: int = 527,
        patch_size: int | list[int] | tuple[int, int] = (64, 4),
        patch_stride: int | list[int] | tuple[int, int] = (64, 4),
        input_channels: int = 1,
        target_length: int = 1008,
        depth: int = 12,
        num_heads: int = 12,
        mlp_ratio: float = 4.0,
        qkv_bias: bool = True,
        init_values: float | None = None,
        drop_rate: float = 0.0,
        attn_drop_rate: float = 0.0,
        f_min: float = 0.0,
        f_max: float = 8000.0,
        center: bool = True,
        win_length: int = 512,
        hop_length: int = 160,
        sample_rate: int = 16000,
        n_fft: int = 512,
        n_mels: int = 64,
        **kwargs: Any,
    ) -> None:
        self.embed_dim = embed_dim
        self.outputdim = outputdim
        self.patch_size = _pair(patch_size)
        self.patch_stride = _pair(patch_stride)
        self.input_channels = input_channels
        self.target_length = target_length
        self.depth = depth
        self.num_heads = num_heads
        self.mlp_ratio = mlp_ratio
        self.qkv_bias = qkv_bias
        self.init_values = init_values
        self.drop_rate = drop_rate
        self.attn_drop_rate = attn_drop_rate
        self.f_min = f_min
        self.f_max = f_max
        self.center = center
        self.win_length = win_length
        self.hop_length = hop_length
        self.sample_rate = sample_rate
        self.n_fft = n_fft
        self.n_mels = n_mels
        super().__init__(**kwargs)
        self._validate()

    def _validate(self) -> None:
        if self.embed_dim % self.num_heads:
            raise ValueError(
                f"audio_encoder_config: embed_dim {self.embed_dim} is not divisible by "
                f"num_heads {self.num_heads}"
            )
        if self.patch_size[0] != self.n_mels or self.patch_stride[0] != self.n_mels:
            # The encoder's token sequence is purely temporal: one patch spans every mel bin.
            raise ValueError(
                f"audio_encoder_config: patch_size/patch_stride {self.patch_size}/"
                f"{self.patch_stride} must span all {self.n_mels} mel bins"
            )
        if self.target_length % self.patch_stride[1]:
            raise ValueError(
                f"audio_encoder_config: target_length {self.target_length} is not a multiple "
                f"of the time stride {self.patch_stride[1]}"
            )

    @property
    def samples_per_patch(self) -> int:
        """Waveform samples covered by one encoder frame (640 = 40 ms at 16 kHz)."""
        return self.hop_length * self.patch_stride[1]

    @property
    def window_patches(self) -> int:
        """Patches per independent attention window (252 = 10.08 s)."""
        return self.target_length // self.patch_stride[1]

    @classmethod
    def from_preset(cls, name: str, **overrides: Any) -> DashengConfig:
        if name not in ENCODER_PRESETS:
            raise ValueError(f"unknown encoder preset {name!r}; choose from {sorted(ENCODER_PRESETS)}")
        return cls(**{**ENCODER_PRESETS[name], **overrides})


# The fields of a published ``audio_encoder_config`` block, in DashengConfig's order.
DASHENG_FIELDS = [
    name for name in inspect.signature(DashengConfig.__init__).parameters if name not in ("self", "kwargs")
]


class MiDashengLMConfig(PretrainedConfig):
    """The top-level ``config.json`` of a MiDashengLM checkpoint."""

    model_type = "midashenglm"
    sub_configs = {"audio_encoder_config": DashengConfig, "text_config": AutoConfig}

    def __init__(
        self,
        audio_encoder_config: dict[str, Any] | DashengConfig | None = None,
        subsample_factor: int = 5,
        text_config: dict[str, Any] | PretrainedConfig | None = None,
        audio_token_id: int | None = None,
        **kwargs: Any,
    ) -> None:
        if isinstance(audio_encoder_config, DashengConfig):
            self.audio_encoder_config = audio_encoder_config
        else:
            self.audio_encoder_config = DashengConfig(**(audio_encoder_config or {}))
        self.subsample_factor = subsample_factor
        self.text_config = build_text_config(text_config)
        self.audio_token_id = audio_token_id
        kwargs.setdefault("architectures", ["MiDashengLMModel"])
        super().__init__(**kwargs)

    def get_text_config(self, *args: Any, **kwargs: Any) -> PretrainedConfig:
        return self.text_config

    @property
    def audio_tokens_per_second(self) -> float:
        enc = self.audio_encoder_config
        return enc.sample_rate / (enc.samples_per_patch * self.subsample_factor)

    def to_dict(self) -> dict[str, Any]:
        """The published config.json fields, without transformers' generic defaults."""
        base = super().to_dict()
        encoder = self.audio_encoder_config.to_dict()
        text = self.text_config.to_dict()
        text.pop("transformers_version", None)
        out = {
            "architectures": base.get("architectures") or ["MiDashengLMModel"],
            "model_type": self.model_type,
            "audio_encoder_config": {k: encoder[k] for k in DASHENG_FIELDS},
            "subsample_factor": self.subsample_factor,
            "text_config": text,
            "audio_token_id": self.audio_token_id,
        }
        if base.get("dtype") is not None:
            out["dtype"] = base["dtype"]
        return out


def build_text_config(text_config: dict[str, Any] | PretrainedConfig | None) -> PretrainedConfig:
    """The decoder's config object from a dict (``model_type`` picks the class)."""
    if isinstance(text_config, PretrainedConfig):
        return text_config
    data = copy.deepcopy(text_config) if text_config else dict(DECODER_PRESETS["tiny"])
    model_type = data.pop("model_type", None) or "qwen2_5_omni_text"
    if model_type in _QWEN2_ALIASES:
        from transformers.models.qwen2_5_omni.configuration_qwen2_5_omni import (
            Qwen2_5OmniTextConfig,
        )

        return Qwen2_5OmniTextConfig(**data)
    try:
        return AutoConfig.for_model(model_type, **data)
    except ValueError as err:
        raise ValueError(
            f"text_config: model_type {model_type!r} is not known to transformers "
            f"{_transformers_version()}: {err}"
        ) from None


def decoder_config(text_config: PretrainedConfig) -> PretrainedConfig:
    """The config the decoder is actually built from.

    A Qwen2.5-Omni text config becomes a plain Qwen2 config: same weights and key
    names, and with mRoPE dropped the positions are ordinary 1-D RoPE.
    """
    if text_config.model_type not in _QWEN2_ALIASES:
        return text_config
    from transformers import Qwen2Config

    data = text_config.to_dict()
    for key in ("model_type", "architectures", "transformers_version", "rope_scaling"):
        data.pop(key, None)
    rope = dict(data.pop("rope_parameters", None) or {})
    rope.pop("mrope_section", None)
    rope.pop("type", None)
    rope.setdefault("rope_type", "default")
    rope.setdefault("rope_theta", getattr(text_config, "rope_theta", 1000000.0))
    return Qwen2Config(**data, rope_parameters=rope)


def _pair(value: int | list[int] | tuple[int, int]) -> tuple[int, int]:
    if isinstance(value, int):
        return (value, value)
    value = tuple(int(v) for v in value)
    if len(value) != 2:
        raise ValueError(f"expected an int or a pair, got {value}")
    return value  # type: ignore[return-value]


def _transformers_version() -> str:
    import transformers

    return transformers.__version__
