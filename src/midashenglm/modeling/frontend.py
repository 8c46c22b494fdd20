"""Log-mel front end (SYSTEM.md section 2), always computed in fp32.

It matches torchaudio's ``MelSpectrogram`` + ``AmplitudeToDB(top_db=120)`` that
Dasheng was trained with, with two deliberate choices that make a batch give the
same numbers as its items run alone:

* each clip is reflect-padded at *its own* end (as when it is run alone), not at
  the end of the zero-padded batch;
* the 120 dB floor is taken from each clip's own maximum over its own frames
  (torchaudio takes one maximum over the whole batch).
"""

from __future__ import annotations

import math

import torch
from torch import nn


def hz_to_mel_htk(freq: torch.Tensor) -> torch.Tensor:
    return 2595.0 * torch.log10(1.0 + freq / 700.0)


def mel_to_hz_htk(mel: torch.Tensor) -> torch.Tensor:
    return 700.0 * (10.0 ** (mel / 2595.0) - 1.0)


def mel_filterbank(
    n_fft: int = 512,
    n_mels: int = 64,
    sample_rate: int = 16000,
    f_min: float = 0.0,
    f_max: float | None = 8000.0,
) -> torch.Tensor:
    """Triangular HTK mel filters without area normalisation, shape (n_fft//2+1, n_mels).

    Computed in float64 and returned as float32, so it is exactly reproducible.
    """
    f_max = sample_rate / 2 if f_max is None else f_max
    # Always on the CPU: the constants must exist even when a model is built on "meta".
    cpu64 = {"dtype": torch.float64, "device": "cpu"}
    fft_freqs = torch.linspace(0.0, sample_rate / 2, n_fft // 2 + 1, **cpu64)
    lo, hi = hz_to_mel_htk(torch.tensor([f_min, f_max], **cpu64)).tolist()
    mel_edges = torch.linspace(lo, hi, n_mels + 2, **cpu64)
    hz_edges = mel_to_hz_htk(mel_edges)
    widths = hz_edges[1:] - hz_edges[:-1]
    # distance of every FFT bin to every filter edge: (n_freqs, n_mels + 2)
    ramps = hz_edges[None, :] - fft_freqs[:, None]
    rising = -ramps[:, :-2] / widths[:-1]
    falling = ramps[:, 2:] / widths[1:]
    return torch.clamp(torch.minimum(rising, falling), min=0.0).to(torch.float32)


def num_frames(num_samples: int, hop_length: int = 160) -> int:
    """Centred STFT frames for a clip of ``num_samples`` samples."""
    return 1 + num_samples // hop_length


class LogMelFrontend(nn.Module):
    """Waveform (B, N) -> log-mel (B, n_mels, 1 + N // hop) in dB, fp32.

    Holds no weights: its constants are recomputed from the formula, so checkpoints
    with or without stored (possibly bf16-rounded) buffers give the same result.
    """

    def __init__(
        self,
        n_fft: int = 512,
        win_length: int = 512,
        hop_length: int = 160,
        n_mels: int = 64,
        sample_rate: int = 16000,
        f_min: float = 0.0,
        f_max: float = 8000.0,
        center: bool = True,
        top_db: float = 120.0,
    ) -> None:
        super().__init__()
        self.n_fft = n_fft
        self.win_length = win_length
        self.hop_length = hop_length
        self.center = center
        self.top_db = top_db
        # Plain attributes, not buffers: model.to(bf16) must never round them, and
        # they are never written to or expected in a checkpoint. The dtype is explicit:
        # loading builds the model under a bf16/fp16 default dtype.
        self._window = torch.hann_window(win_length, dtype=torch.float32, device="cpu")
        self._mel_fb = mel_filterbank(n_fft, n_mels, sample_rate, f_min, f_max)
        self._constants: dict[torch.device, tuple[torch.Tensor, torch.Tensor]] = {}

    def constants(self, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        """The Hann window and mel filterbank on ``device``, fp32."""
        if device not in self._constants:
            self._constants[device] = (self._window.to(device), self._mel_fb.to(device))
        return self._constants[device]

    def _pad(self, wav: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """Reflect-pad every clip at its own start and end, as torch.stft(center=True)."""
        pad = self.n_fft // 2
        if int(lengths.min()) <= pad:
            raise ValueError(
                f"audio is too short for the front end: {int(lengths.min())} samples, "
                f"need more than {pad} (the processor pads clips to 3200 samples)"
            )
        batch, total = wav.shape
        out = wav.new_zeros(batch, total + 2 * pad)
        out[:, pad : pad + total] = wav
        out[:, :pad] = wav[:, 1 : pad + 1].flip(-1)
        offsets = torch.arange(pad, device=wav.device)
        src = (lengths[:, None] - 2 - offsets).clamp_min(0)
        dst = lengths[:, None] + pad + offsets
        out.scatter_(1, dst, wav.gather(1, src))
        return out

    def num_frames(self, lengths: torch.Tensor) -> torch.Tensor:
        """Frames of each clip of ``lengths`` samples, as when the clip runs alone."""
        if self.center:
            return lengths // self.hop_length + 1
        return (lengths - self.n_fft) // self.hop_length + 1

    def forward(self, wav: torch.Tensor, lengths: torch.Tensor | None = None) -> torch.Tensor:
        device_type = wav.device.type if wav.device.type in ("cuda", "cpu", "mps") else "cpu"
        with torch.autocast(device_type=device_type, enabled=False):
            wav = wav.float()
            batch, total = wav.shape
            if lengths is None:
                lengths = torch.full((batch,), total, device=wav.device, dtype=torch.long)
            lengths = lengths.to(device=wav.device, dtype=torch.long)
            # Beyond a clip's own end the batch holds zeros whatever the caller passed.
            valid = torch.arange(total, device=wav.device)[None, :] < lengths[:, None]
            wav = wav * valid
            if self.center:
                wav = self._pad(wav, lengths)
            window, mel_fb = self.constants(wav.device)
            spec = torch.stft(
                wav,
                n_fft=self.n_fft,
                hop_length=self.hop_length,
                win_length=self.win_length,
                window=window,
                center=False,
                return_complex=True,
            )
            power = spec.real.square() + spec.imag.square()
            mel = torch.matmul(power.transpose(1, 2), mel_fb).transpose(1, 2)
            db = 10.0 * torch.log10(mel.clamp_min(1e-10))
            frames = self.num_frames(lengths)
            in_clip = torch.arange(db.shape[-1], device=db.device)[None, :] < frames[:, None]
            peak = db.masked_fill(~in_clip[:, None, :], -math.inf).amax(dim=(1, 2))
            return torch.maximum(db, (peak - self.top_db)[:, None, None])
