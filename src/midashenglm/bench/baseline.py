"""The baseline of the speed comparison: a Qwen2.5-Omni-style audio path on MiDashengLM's decoder.

Qwen2.5-Omni-7B, the paper's baseline, runs a Whisper-large-v3-shaped encoder:
128 Whisper log-mel bins, a conv stem (kernel 3, then kernel 3 stride 2), 32 layers
of width 1280 that attend within 2 s chunks (100 frames after the stem), average
pooling by 2 and a linear projection to the decoder width: 25 audio tokens per
second against MiDashengLM's 5. Both feed the same Qwen2.5-7B text decoder.

:class:`OmniAudioEncoder` computes what transformers' ``Qwen2_5OmniAudioEncoder``
computes (same parameter names, so its state dict loads into ours; a test checks
equal outputs), but as efficiently as our Dasheng encoder: a padded batch runs as one
set of chunks, the linear layers run on the real frames only (packed), and only the
attention sees the chunks padded to a common length. The baseline is thus never
slower for want of engineering, and the measured ratio is the architecture's.

:class:`BaselineAudioLM` is a :class:`~midashenglm.modeling.model.MiDashengLM` whose
audio path is swapped: ``embed``, ``forward`` and ``generate`` are MiDashengLM's own,
and it can share the very decoder module of a MiDashengLM. With ``pad_to_seconds=30``
the encoder runs on every clip padded with silence to 30 s, as stock Whisper does,
while the decoder still receives only the tokens of the clip's own length (as
Qwen2-Audio does).
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from transformers import AutoModelForCausalLM, GenerationConfig, PreTrainedModel
from transformers.models.qwen2_5_omni.configuration_qwen2_5_omni import (
    Qwen2_5OmniAudioEncoderConfig,
)

from midashenglm.modeling.config import MiDashengLMConfig, decoder_config
from midashenglm.modeling.model import MiDashengLM
from midashenglm.processing import MiDashengLMProcessor, num_audio_tokens

SAMPLE_RATE = 16000

# Whisper-large-v3 / Qwen2.5-Omni-7B audio encoder shapes (output_dim = decoder width).
WHISPER_LARGE_V3: dict[str, Any] = {
    "num_mel_bins": 128,
    "encoder_layers": 32,
    "encoder_attention_heads": 20,
    "encoder_ffn_dim": 5120,
    "d_model": 1280,
    "max_source_positions": 1500,
    "n_window": 100,
    "output_dim": 3584,
}


def baseline_audio_config(**overrides: Any) -> Qwen2_5OmniAudioEncoderConfig:
    """A Qwen2.5-Omni audio-encoder config, Whisper-large-v3 shapes unless overridden."""
    return Qwen2_5OmniAudioEncoderConfig(**{**WHISPER_LARGE_V3, **overrides})


# ------------------------------------------------------------------------ front end
class WhisperLogMel(nn.Module):
    """Whisper's log-mel, batched in torch: n_fft 400, hop 160, Slaney mel bins, log10,
    an 8-decade floor under each clip's own maximum, then ``(x + 4) / 4``.

    A clip of n samples gives ``n // 160`` frames (Whisper drops the last STFT frame).
    Beyond a clip's end the batch holds zeros, which is what Whisper's own padding
    feeds the STFT.
    """

    def __init__(self, n_mels: int = 128, n_fft: int = 400, hop_length: int = 160) -> None:
        super().__init__()
        from transformers.audio_utils import mel_filter_bank

        self.n_fft = n_fft
        self.hop_length = hop_length
        filters = mel_filter_bank(
            num_frequency_bins=1 + n_fft // 2,
            num_mel_filters=n_mels,
            min_frequency=0.0,
            max_frequency=8000.0,
            sampling_rate=SAMPLE_RATE,
            norm="slaney",
            mel_scale="slaney",
        )
        # Plain attributes, not buffers: casting the model to bf16 must not round them.
        self._mel_filters = torch.tensor(filters, dtype=torch.float32, device="cpu").T.contiguous()
        self._window = torch.hann_window(n_fft, dtype=torch.float32, device="cpu")
        self._constants: dict[torch.device, tuple[torch.Tensor, torch.Tensor]] = {}

    def constants(self, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        """The Hann window and the (n_mels, n_freqs) filters on ``device``, fp32."""
        if device not in self._constants:
            self._constants[device] = (self._window.to(device), self._mel_filters.to(device))
        return self._constants[device]

    def forward(self, wav: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, N) waveforms -> ((B, n_mels, N // 160) log-mel in fp32, (B,) frames per clip)."""
        wav = wav.float() * (torch.arange(wav.shape[1], device=wav.device)[None, :] < lengths[:, None])
        window, filters = self.constants(wav.device)
        spec = torch.stft(wav, self.n_fft, self.hop_length, window=window, return_complex=True)
        power = (spec[..., :-1].abs() ** 2).contiguous()
        mel = torch.matmul(filters, power)
        log_spec = mel.clamp_min(1e-10).log10()
        frames = lengths // self.hop_length
        valid = torch.arange(log_spec.shape[-1], device=wav.device)[None, :] < frames[:, None]
        peak = log_spec.masked_fill(~valid[:, None, :], -math.inf).amax(dim=(1, 2))
        log_spec = torch.maximum(log_spec, (peak - 8.0)[:, None, None])
        return (log_spec + 4.0) / 4.0, frames


def sinusoids(length: int, channels: int, max_timescale: float = 10000.0) -> torch.Tensor:
    """Whisper's fixed sinusoidal position embedding (length, channels)."""
    increment = math.log(max_timescale) / (channels // 2 - 1)
    inv_timescales = torch.exp(-increment * torch.arange(channels // 2, dtype=torch.float32))
    scaled = torch.arange(length, dtype=torch.float32)[:, None] * inv_timescales[None, :]
    return torch.cat([torch.sin(scaled), torch.cos(scaled)], dim=1)


# -------------------------------------------------------------------------- encoder
class _Packing:
    """Where the real frames of the padded chunk grid (C, L) sit in the packed (T,) order."""

    def __init__(self, tokens_per_chunk: torch.Tensor, length: int) -> None:
        self.chunks = int(tokens_per_chunk.shape[0])
        self.length = length
        grid = torch.arange(length, device=tokens_per_chunk.device)[None, :] < tokens_per_chunk[:, None]
        self.full = bool(grid.all())
        self.index = grid.flatten().nonzero().squeeze(-1)
        # Keys beyond a chunk's frames are never attended; their queries are dropped.
        self.attn_mask = None
        if not self.full:
            mask = torch.zeros(grid.shape, dtype=torch.float32, device=grid.device)
            self.attn_mask = mask.masked_fill(~grid, -math.inf)[:, None, None, :]

    def pad(self, packed: torch.Tensor) -> torch.Tensor:
        """(T, ...) -> (C, L, ...)."""
        if self.full:
            return packed.reshape(self.chunks, self.length, *packed.shape[1:])
        grid = packed.new_zeros(self.chunks * self.length, *packed.shape[1:])
        grid[self.index] = packed
        return grid.view(self.chunks, self.length, *packed.shape[1:])

    def pack(self, grid: torch.Tensor) -> torch.Tensor:
        """(C, L, ...) -> (T, ...)."""
        flat = grid.reshape(self.chunks * self.length, *grid.shape[2:])
        return flat if self.full else flat[self.index]


class OmniAttention(nn.Module):
    def __init__(self, config: Qwen2_5OmniAudioEncoderConfig) -> None:
        super().__init__()
        dim = config.d_model
        self.num_heads = config.encoder_attention_heads
        self.q_proj = nn.Linear(dim, dim, bias=True)
        self.k_proj = nn.Linear(dim, dim, bias=False)
        self.v_proj = nn.Linear(dim, dim, bias=True)
        self.out_proj = nn.Linear(dim, dim, bias=True)

    def forward(self, x: torch.Tensor, packing: _Packing) -> torch.Tensor:
        tokens, dim = x.shape
        qkv = torch.stack([self.q_proj(x), self.k_proj(x), self.v_proj(x)], dim=1)  # (T, 3, D)
        grid = packing.pad(qkv)  # (C, L, 3, D)
        chunks, length = grid.shape[:2]
        q, k, v = grid.view(chunks, length, 3, self.num_heads, dim // self.num_heads).permute(
            2, 0, 3, 1, 4
        )
        mask = None if packing.attn_mask is None else packing.attn_mask.to(q.dtype)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        out = packing.pack(out.transpose(1, 2).reshape(chunks, length, dim))
        return self.out_proj(out)


class OmniEncoderLayer(nn.Module):
    """Whisper's pre-norm encoder layer (names as transformers' ``Qwen2_5OmniAudioEncoderLayer``)."""

    def __init__(self, config: Qwen2_5OmniAudioEncoderConfig) -> None:
        super().__init__()
        dim = config.d_model
        self.self_attn = OmniAttention(config)
        self.self_attn_layer_norm = nn.LayerNorm(dim)
        self.fc1 = nn.Linear(dim, config.encoder_ffn_dim)
        self.fc2 = nn.Linear(config.encoder_ffn_dim, dim)
        self.final_layer_norm = nn.LayerNorm(dim)

    def forward(self, x: torch.Tensor, packing: _Packing) -> torch.Tensor:
        x = x + self.self_attn(self.self_attn_layer_norm(x), packing)
        return x + self.fc2(F.gelu(self.fc1(self.final_layer_norm(x))))


class OmniAudioEncoder(nn.Module):
    """Qwen2.5-Omni's audio encoder on waveforms: ``(input_values, audio_length) ->
    list of (tokens, output_dim)`` embeddings, 25 per second of each clip."""

    def __init__(self, config: Qwen2_5OmniAudioEncoderConfig) -> None:
        super().__init__()
        self.config = config
        dim = config.d_model
        self.front_end = WhisperLogMel(config.num_mel_bins)
        self.conv1 = nn.Conv1d(config.num_mel_bins, dim, kernel_size=3, padding=1)
        self.conv2 = nn.Conv1d(dim, dim, kernel_size=3, stride=2, padding=1)
        self.register_buffer(
            "positional_embedding", sinusoids(config.max_source_positions, dim), persistent=False
        )
        self.layers = nn.ModuleList(OmniEncoderLayer(config) for _ in range(config.encoder_layers))
        self.ln_post = nn.LayerNorm(dim)
        self.proj = nn.Linear(dim, config.output_dim)

    @property
    def dtype(self) -> torch.dtype:
        return self.conv1.weight.dtype

    def forward_features(self, mel: torch.Tensor, frames: torch.Tensor) -> list[torch.Tensor]:
        """(B, n_mels, F) features with (B,) valid frames -> one (tokens, output_dim) per clip."""
        chunk = 2 * self.config.n_window
        batch, n_mels, total = mel.shape
        num = -(-total // chunk)
        mel = F.pad(mel, (0, num * chunk - total)).view(batch, n_mels, num, chunk).transpose(1, 2)
        lengths = (frames[:, None] - torch.arange(num, device=mel.device) * chunk).clamp(0, chunk)
        selected = lengths > 0
        chunk_len = lengths[selected]  # (C,) mel frames per chunk, clip-major order
        longest = int(chunk_len.max())
        x = mel[selected][..., :longest]  # (C, n_mels, longest)
        in_chunk = torch.arange(longest, device=x.device)[None, None, :] < chunk_len[:, None, None]
        x = x.masked_fill(~in_chunk, 0.0).to(self.dtype)
        x = F.gelu(self.conv1(x)) * in_chunk.to(self.dtype)
        x = F.gelu(self.conv2(x)).transpose(1, 2)  # (C, L, D)
        x = x + self.positional_embedding[: x.shape[1]].to(x.dtype)

        tokens_per_chunk = (chunk_len + 1) // 2
        packing = _Packing(tokens_per_chunk, x.shape[1])
        x = packing.pack(x)  # (T, D): the linear layers see real frames only
        for layer in self.layers:
            x = layer(x, packing)

        # Average pool by 2 within each clip, over its frames in order.
        per_clip = ((frames + 1) // 2).tolist()
        out = []
        for clip in x.split(per_clip):
            pooled = clip.shape[0] // 2
            pairs = clip[: 2 * pooled].view(pooled, 2, -1).mean(dim=1)
            out.append(pairs)
        lens = [o.shape[0] for o in out]
        return list(self.proj(self.ln_post(torch.cat(out))).split(lens))

    def forward(self, input_values: torch.Tensor, audio_length: torch.Tensor) -> list[torch.Tensor]:
        if input_values.ndim == 1:
            input_values = input_values.unsqueeze(0)
        lengths = audio_length.to(device=input_values.device, dtype=torch.long).reshape(-1)
        mel, frames = self.front_end(input_values, lengths)
        return self.forward_features(mel, frames)


# -------------------------------------------------------------------------- the model
class BaselineAudioLM(MiDashengLM):
    """Qwen2.5-Omni-style audio path + a MiDashengLM decoder, with MiDashengLM's
    ``embed`` / ``forward`` / ``generate``.

    It subclasses :class:`MiDashengLM` so that every code path that runs a MiDashengLM
    (``model.generate``, an inference engine calling ``encode_audio`` / ``embed`` /
    ``decoder``) runs the baseline the same way; only the audio path is its own.
    """

    def __init__(
        self,
        config: MiDashengLMConfig,
        audio_config: Qwen2_5OmniAudioEncoderConfig,
        *,
        decoder: nn.Module | None = None,
        audio_encoder: OmniAudioEncoder | None = None,
        pad_to_seconds: float | None = None,
    ) -> None:
        # MiDashengLM.__init__ would build a Dasheng encoder we do not want; the rest of
        # its construction is PreTrainedModel's and the three attributes below.
        PreTrainedModel.__init__(self, config)
        if audio_config.output_dim != config.text_config.hidden_size:
            raise ValueError(
                f"baseline audio encoder output_dim {audio_config.output_dim} must equal the "
                f"decoder hidden size {config.text_config.hidden_size}"
            )
        self.audio_config = audio_config
        self.pad_to_seconds = pad_to_seconds
        self.audio_encoder = audio_encoder or OmniAudioEncoder(audio_config)
        self.decoder = decoder or AutoModelForCausalLM.from_config(decoder_config(config.text_config))
        self.generation_config = GenerationConfig.from_model_config(config.text_config)
        self.post_init()

    @classmethod
    def sharing_decoder(
        cls,
        model: MiDashengLM,
        audio_config: Qwen2_5OmniAudioEncoderConfig,
        *,
        audio_encoder: OmniAudioEncoder | None = None,
        pad_to_seconds: float | None = None,
    ) -> BaselineAudioLM:
        """A baseline that uses ``model``'s decoder module itself (same weights, no copy),
        and ``audio_encoder`` when given (to run one encoder both unpadded and padded)."""
        param = next(model.decoder.parameters())
        with torch.device(param.device):
            baseline = cls(
                model.config,
                audio_config,
                decoder=model.decoder,
                audio_encoder=audio_encoder,
                pad_to_seconds=pad_to_seconds,
            )
        baseline.audio_encoder.to(dtype=param.dtype)
        baseline.generation_config = model.generation_config
        return baseline.eval()

    def audio_token_counts(self, audio_length: torch.Tensor) -> list[int]:
        return [baseline_token_count(int(n)) for n in audio_length]

    def encode_audio(
        self, input_values: torch.Tensor, audio_length: torch.Tensor | None = None
    ) -> list[torch.Tensor]:
        """One (tokens, hidden) tensor of decoder embeddings per clip, 25 per second."""
        if input_values.ndim == 1:
            input_values = input_values.unsqueeze(0)
        if audio_length is None:
            audio_length = torch.full((input_values.shape[0],), input_values.shape[1])
        counts = self.audio_token_counts(audio_length)
        run_length = audio_length.to(input_values.device)
        if self.pad_to_seconds:
            # Whisper-style: the encoder sees every clip padded with silence to whole 30 s windows.
            window = round(self.pad_to_seconds * SAMPLE_RATE)
            run_length = (run_length + window - 1) // window * window
            extra = int(run_length.max()) - input_values.shape[1]
            if extra > 0:
                input_values = F.pad(input_values, (0, extra))
        embeds = self.audio_encoder(input_values, run_length)
        return [e[:n] for e, n in zip(embeds, counts, strict=True)]


def baseline_token_count(num_samples: int) -> int:
    """Audio tokens of the Qwen2.5-Omni-style path for a clip (no minimum padding:
    the processor has already padded it)."""
    return num_audio_tokens(num_samples, patch_stride=4, subsample_factor=1, min_samples=0)


def baseline_processor(processor: MiDashengLMProcessor) -> MiDashengLMProcessor:
    """The same tokenizer and template, expanding each clip to 25 audio tokens per second."""
    return MiDashengLMProcessor(
        processor.tokenizer,
        sample_rate=processor.sample_rate,
        hop_length=processor.hop_length,
        patch_stride=4,
        subsample_factor=1,
        min_audio_samples=processor.min_audio_samples,
        max_audio_seconds=processor.max_audio_seconds,
        chat_template=processor.chat_template,
        system_prompt=processor.system_prompt,
    )
