"""Analytical cost of one request: multiply-accumulates (MACs) per stage and KV-cache bytes.

Counted are the matrix products, the work ``torch.utils.flop_counter.FlopCounterMode``
counts (its FLOPs = 2 x MACs): linear layers, convolutions, attention scores and
values, the mel filterbank product. Element-wise work (norms, activations, softmax,
RoPE) and the FFT of the front end are left out; together they are well under 1 %
of the total for every shape used here.

Two ways of counting the attention and the windows:

* ``ideal`` (the default): the work the architecture needs, every window or chunk at
  its own length and causal attention over the lower triangle only. Achieved FLOP/s
  use this count, as the usual MFU convention does.
* ``executed``: what the kernels of this code base run for one clip alone; Dasheng
  windows padded to the longest one, SDPA computing the full square even when causal.
  The unit tests compare it with FlopCounterMode.

Paper check (30 s clip, Dasheng-0.6B vs Whisper-large-v3 encoder, Qwen2.5-Omni-7B
decoder, 30 text tokens): 0.49 vs 0.97 TMACs in the encoder, 180 vs 780 prefill
tokens, 56 KiB of bf16 KV cache per token.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from midashenglm.processing import MIN_AUDIO_SAMPLES, num_audio_tokens

SAMPLE_RATE = 16000
PAPER_TEXT_TOKENS = 30  # the paper's prompt around the audio: 180 - 150 (30 s) tokens


# ----------------------------------------------------------------------------- shapes
@dataclass(frozen=True)
class DashengShape:
    """The Dasheng encoder and the 5 Hz projector, as far as cost is concerned."""

    embed_dim: int = 1280
    depth: int = 32
    mlp_ratio: float = 4.0
    n_mels: int = 64
    n_fft: int = 512
    hop_length: int = 160
    patch_stride: int = 4
    window_patches: int = 252
    subsample_factor: int = 5
    freq_stride: int = 64  # mel bins per patch (all 64: the token sequence is purely temporal)
    qkv_bias: bool = True

    @classmethod
    def from_config(cls, config: Any, subsample_factor: int = 5) -> DashengShape:
        """From a ``DashengConfig``."""
        return cls(
            embed_dim=config.embed_dim,
            depth=config.depth,
            mlp_ratio=config.mlp_ratio,
            n_mels=config.n_mels,
            n_fft=config.n_fft,
            hop_length=config.hop_length,
            patch_stride=config.patch_stride[1],
            window_patches=config.window_patches,
            subsample_factor=subsample_factor,
            freq_stride=config.patch_stride[0],
            qkv_bias=bool(getattr(config, "qkv_bias", True)),
        )


@dataclass(frozen=True)
class WhisperShape:
    """The Qwen2.5-Omni audio encoder: Whisper-large-v3 layers, 2 s chunks, pool 2, proj."""

    d_model: int = 1280
    layers: int = 32
    ffn_dim: int = 5120
    n_mels: int = 128
    n_fft: int = 400
    hop_length: int = 160
    n_window: int = 100  # a chunk is 2 * n_window mel frames (2 s)

    @classmethod
    def from_config(cls, config: Any) -> WhisperShape:
        """From a ``Qwen2_5OmniAudioEncoderConfig``."""
        return cls(
            d_model=config.d_model,
            layers=config.encoder_layers,
            ffn_dim=config.encoder_ffn_dim,
            n_mels=config.num_mel_bins,
            n_window=config.n_window,
        )


@dataclass(frozen=True)
class DecoderShape:
    """A Qwen2/Llama-style decoder: GQA attention, gated MLP, untied or tied LM head."""

    hidden: int = 3584
    layers: int = 28
    heads: int = 28
    kv_heads: int = 4
    head_dim: int = 128
    intermediate: int = 18944
    vocab: int = 152064
    # Parameters that cost no MACs worth counting but are read with the weights (traffic.py).
    qkv_bias: bool = True  # Qwen2 has q/k/v biases; Qwen3 and Llama follow ``attention_bias``
    o_bias: bool = False
    qk_norm: bool = False  # Qwen3 normalises queries and keys per head

    @classmethod
    def from_config(cls, config: Any) -> DecoderShape:
        """From a transformers text config (Qwen2, Qwen2.5-Omni text, Qwen3, Llama)."""
        heads = config.num_attention_heads
        head_dim = getattr(config, "head_dim", None) or config.hidden_size // heads
        model_type = str(getattr(config, "model_type", ""))
        qwen2 = model_type.startswith("qwen2")
        bias = bool(getattr(config, "attention_bias", False))
        return cls(
            qkv_bias=True if qwen2 else bias,
            o_bias=False if qwen2 else bias,
            qk_norm=model_type.startswith("qwen3"),
            hidden=config.hidden_size,
            layers=config.num_hidden_layers,
            heads=heads,
            kv_heads=getattr(config, "num_key_value_heads", None) or heads,
            head_dim=head_dim,
            intermediate=config.intermediate_size,
            vocab=config.vocab_size,
        )

    @property
    def linear_macs_per_token(self) -> int:
        """q, k, v, o and the gated MLP of all layers, for one token."""
        q_dim, kv_dim = self.heads * self.head_dim, self.kv_heads * self.head_dim
        per_layer = self.hidden * (2 * q_dim + 2 * kv_dim) + 3 * self.hidden * self.intermediate
        return self.layers * per_layer

    def kv_bytes_per_token(self, bytes_per_value: int = 2) -> int:
        """Keys and values of every layer for one token (bf16: 2 bytes per value)."""
        return self.layers * 2 * self.kv_heads * self.head_dim * bytes_per_value


# The published shapes.
DASHENG_06B = DashengShape()
WHISPER_LARGE_V3 = WhisperShape()
QWEN25_OMNI_7B = DecoderShape()


# --------------------------------------------------------------------------- encoders
def _pad_min(num_samples: int) -> int:
    # The processor pads clips shorter than 0.2 s to 3200 samples before anything else.
    return max(int(num_samples), MIN_AUDIO_SAMPLES)


def dasheng_tokens(num_samples: int, shape: DashengShape = DASHENG_06B) -> int:
    """Audio tokens MiDashengLM gives a clip (5 per second)."""
    return num_audio_tokens(
        num_samples,
        hop_length=shape.hop_length,
        patch_stride=shape.patch_stride,
        subsample_factor=shape.subsample_factor,
    )


def baseline_tokens(num_samples: int, shape: WhisperShape = WHISPER_LARGE_V3) -> int:
    """Audio tokens the Qwen2.5-Omni-style encoder gives a clip (25 per second).

    ``n // 160`` mel frames, halved by the stride-2 conv (rounding up) and by the
    average pool (rounding down); this equals ``(1 + n // 160) // 4``, which is
    :func:`num_audio_tokens` with a subsample factor of 1.
    """
    return num_audio_tokens(
        num_samples, hop_length=shape.hop_length, patch_stride=4, subsample_factor=1
    )


def dasheng_encoder_macs(
    num_samples: int,
    shape: DashengShape = DASHENG_06B,
    decoder_hidden: int = QWEN25_OMNI_7B.hidden,
    *,
    executed: bool = False,
) -> dict[str, int]:
    """MACs of front end, encoder and projector for one clip."""
    n = _pad_min(num_samples)
    frames = 1 + n // shape.hop_length
    patches = frames // shape.patch_stride
    d = shape.embed_dim
    front_end = frames * (shape.n_fft // 2 + 1) * shape.n_mels
    patch_embed = patches * shape.n_mels * shape.patch_stride * d
    win = shape.window_patches
    windows = [min(win, patches - start) for start in range(0, patches, win)]
    if executed:
        # All windows of a batch run padded to its longest window.
        windows = [max(windows)] * len(windows)
    tokens = sum(windows)
    linear = shape.depth * tokens * (4 * d * d + 2 * d * int(d * shape.mlp_ratio))
    attention = shape.depth * sum(2 * w * w * d for w in windows)
    groups = patches // shape.subsample_factor
    projector = groups * (shape.subsample_factor * d * decoder_hidden + decoder_hidden**2)
    encoder = front_end + patch_embed + linear + attention
    return {
        "front_end": front_end,
        "encoder_linear": patch_embed + linear,
        "encoder_attention": attention,
        "encoder": encoder,
        "projector": projector,
        "audio_tokens": dasheng_tokens(n, shape),
    }


def baseline_chunks(frames: int, n_window: int) -> list[int]:
    """Mel-frame lengths of the 2 s chunks a clip is cut into (the last may be shorter)."""
    size = 2 * n_window
    return [min(size, frames - start) for start in range(0, frames, size)]


def baseline_encoder_macs(
    num_samples: int,
    shape: WhisperShape = WHISPER_LARGE_V3,
    decoder_hidden: int = QWEN25_OMNI_7B.hidden,
    *,
    pad_to_samples: int | None = None,
    executed: bool = False,
) -> dict[str, int]:
    """MACs of the Qwen2.5-Omni-style audio path for one clip.

    ``pad_to_samples`` (480000 = 30 s) makes the encoder run on the clip padded with
    silence to that length, as stock Whisper does; the decoder still receives only
    the tokens of the clip's own length, as Qwen2-Audio does.
    """
    n = _pad_min(num_samples)
    run = max(n, pad_to_samples) if pad_to_samples else n
    if pad_to_samples:
        run = -(-run // pad_to_samples) * pad_to_samples  # whole 30 s windows
    frames = run // shape.hop_length
    d = shape.d_model
    front_end = frames * (shape.n_fft // 2 + 1) * shape.n_mels
    chunks = baseline_chunks(frames, shape.n_window)
    conv_frames = chunks if not executed else [max(chunks)] * len(chunks)
    conv1 = sum(conv_frames) * shape.n_mels * 3 * d
    after_conv = [-(-c // 2) for c in conv_frames]
    conv2 = sum(after_conv) * d * d * 3
    tokens = [-(-c // 2) for c in chunks]  # the transformer runs packed, real lengths only
    linear = shape.layers * sum(tokens) * (4 * d * d + 2 * d * shape.ffn_dim)
    attn_tokens = tokens if not executed else [max(tokens)] * len(tokens)
    attention = shape.layers * sum(2 * t * t * d for t in attn_tokens)
    pooled = (sum(tokens) - 2) // 2 + 1
    projector = pooled * d * decoder_hidden
    encoder = front_end + conv1 + conv2 + linear + attention
    return {
        "front_end": front_end,
        "encoder_linear": conv1 + conv2 + linear,
        "encoder_attention": attention,
        "encoder": encoder,
        "projector": projector,
        "audio_tokens": baseline_tokens(n, shape),
    }


# ---------------------------------------------------------------------------- decoder
def decoder_prefill_macs(
    prompt_tokens: int,
    shape: DecoderShape = QWEN25_OMNI_7B,
    *,
    executed: bool = False,
    logits_to_keep: int = 1,
) -> int:
    """MACs of the prefill of one sequence; the LM head runs on the last position only."""
    q_dim = shape.heads * shape.head_dim
    length = prompt_tokens
    pairs = length * length if executed else length * (length + 1) // 2
    attention = shape.layers * 2 * q_dim * pairs
    return length * shape.linear_macs_per_token + attention + logits_to_keep * shape.hidden * shape.vocab


def decoder_decode_macs(
    prompt_tokens: int, new_tokens: int, shape: DecoderShape = QWEN25_OMNI_7B
) -> int:
    """MACs of the decode steps after the prefill: the prefill yields the first new
    token, each further token costs one step attending to everything before it."""
    q_dim = shape.heads * shape.head_dim
    steps = max(new_tokens - 1, 0)
    per_step = shape.linear_macs_per_token + shape.hidden * shape.vocab
    # Step i (1-based) feeds token i and attends to prompt_tokens + i positions.
    keys = steps * prompt_tokens + steps * (steps + 1) // 2
    return steps * per_step + shape.layers * 2 * q_dim * keys


# ---------------------------------------------------------------------------- request
@dataclass
class RequestCost:
    """Cost of one request (one clip, a prompt, ``new_tokens`` generated)."""

    model: str
    seconds: float
    audio_tokens: int
    prefill_tokens: int
    front_end: int
    encoder: int
    projector: int
    prefill: int
    decode: int
    kv_bytes_per_token: int
    kv_bytes: int

    @property
    def ttft_macs(self) -> int:
        """Everything before the first new token: audio path plus decoder prefill."""
        return self.encoder + self.projector + self.prefill

    @property
    def total_macs(self) -> int:
        return self.ttft_macs + self.decode

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "ttft_macs": self.ttft_macs, "total_macs": self.total_macs}


def request_cost(
    model: str,
    seconds: float,
    *,
    dasheng: DashengShape = DASHENG_06B,
    whisper: WhisperShape = WHISPER_LARGE_V3,
    decoder: DecoderShape = QWEN25_OMNI_7B,
    text_tokens: int = PAPER_TEXT_TOKENS,
    new_tokens: int = 100,
    kv_bytes_per_value: int = 2,
    pad_to_seconds: float | None = None,
) -> RequestCost:
    """Cost of one request for ``model`` "midashenglm" or "baseline".

    ``text_tokens`` counts every prompt token that is not an audio token (chat markup,
    audio bos/eos, the question); ``pad_to_seconds`` is the baseline's Whisper-style
    padding (30 s) or None for Qwen2.5-Omni's own variable-length chunks.
    """
    num_samples = round(seconds * SAMPLE_RATE)
    if model == "midashenglm":
        audio = dasheng_encoder_macs(num_samples, dasheng, decoder.hidden)
    elif model == "baseline":
        pad = round(pad_to_seconds * SAMPLE_RATE) if pad_to_seconds else None
        audio = baseline_encoder_macs(num_samples, whisper, decoder.hidden, pad_to_samples=pad)
    else:
        raise ValueError(f"model must be 'midashenglm' or 'baseline', not {model!r}")
    prompt = audio["audio_tokens"] + text_tokens
    per_token = decoder.kv_bytes_per_token(kv_bytes_per_value)
    return RequestCost(
        model=model,
        seconds=seconds,
        audio_tokens=audio["audio_tokens"],
        prefill_tokens=prompt,
        front_end=audio["front_end"],
        encoder=audio["encoder"],
        projector=audio["projector"],
        prefill=decoder_prefill_macs(prompt, decoder),
        decode=decoder_decode_macs(prompt, new_tokens, decoder),
        kv_bytes_per_token=per_token,
        kv_bytes=(prompt + new_tokens) * per_token,
    )


def ttft_ratio(seconds: float, **shapes: Any) -> float:
    """Analytical baseline / MiDashengLM ratio of the work before the first token."""
    base = request_cost("baseline", seconds, **shapes).ttft_macs
    ours = request_cost("midashenglm", seconds, **shapes).ttft_macs
    return base / ours


def encoder_share(seconds: float, model: str, **shapes: Any) -> float:
    """Fraction of the time-to-first-token work spent in the audio path."""
    cost = request_cost(model, seconds, **shapes)
    return (cost.encoder + cost.projector) / cost.ttft_macs


def fmt_macs(macs: float) -> str:
    """MACs with a unit: 0.49 TMAC, 12.3 GMAC, ..."""
    for unit, scale in (("TMAC", 1e12), ("GMAC", 1e9), ("MMAC", 1e6)):
        if abs(macs) >= scale:
            return f"{macs / scale:.3g} {unit}"
    return f"{macs:.0f} MAC"


def fmt_bytes(num: float) -> str:
    for unit, scale in (("TiB", 2**40), ("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if abs(num) >= scale:
            return f"{num / scale:.3g} {unit}"
    return f"{num:.0f} B"
