"""The log-mel front end: filterbank, STFT framing, dB floor, fp32 under any model dtype."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from midashenglm.modeling.config import DashengConfig
from midashenglm.modeling.encoder import DashengEncoder
from midashenglm.modeling.frontend import LogMelFrontend, mel_filterbank, num_frames
from tests.conftest import clip


def test_filterbank_equals_librosa_htk_unnormalised():
    librosa = pytest.importorskip("librosa")
    ours = mel_filterbank(n_fft=512, n_mels=64, sample_rate=16000, f_min=0.0, f_max=8000.0)
    ref = librosa.filters.mel(sr=16000, n_fft=512, n_mels=64, fmin=0.0, fmax=8000.0, htk=True, norm=None)
    assert ours.shape == (257, 64)
    assert ours.dtype == torch.float32
    np.testing.assert_allclose(ours.numpy(), ref.T, atol=1e-6, rtol=0)


def _reference_logmel(wave: np.ndarray) -> torch.Tensor:
    """The textbook computation for one clip: centred reflect STFT, power, mel, dB, 120 dB floor."""
    x = torch.from_numpy(wave).double()
    spec = torch.stft(
        x,
        n_fft=512,
        hop_length=160,
        win_length=512,
        window=torch.hann_window(512, dtype=torch.float64),
        center=True,
        pad_mode="reflect",
        return_complex=True,
    ).abs() ** 2
    mel = mel_filterbank().double().T @ spec
    db = 10 * torch.log10(mel.clamp_min(1e-10))
    return torch.maximum(db, db.max() - 120.0).float()


@pytest.mark.parametrize("seconds", [0.2, 1.0, 3.33, 12.0])
def test_single_clip_matches_textbook_logmel(seconds):
    wave = clip(seconds, seed=3)
    ours = LogMelFrontend()(torch.from_numpy(wave)[None])[0]
    ref = _reference_logmel(wave)
    assert ours.shape == ref.shape == (64, num_frames(len(wave)))
    assert (ours - ref).abs().max().item() < 1e-3  # dB units; fp32 vs fp64 STFT


def test_batch_items_equal_items_alone():
    lengths = [3200, 16000, 16000 * 5 + 321, 16000 * 9]
    batch = torch.zeros(len(lengths), max(lengths))
    waves = [clip(n / 16000, seed=i) for i, n in enumerate(lengths)]
    waves[2] *= 1e-4  # a quiet clip: its dB floor must come from its own maximum
    for i, w in enumerate(waves):
        batch[i, : len(w)] = torch.from_numpy(w)
    front = LogMelFrontend()
    together = front(batch, torch.tensor(lengths))
    for i, w in enumerate(waves):
        alone = front(torch.from_numpy(w)[None])[0]
        frames = num_frames(len(w))
        assert torch.equal(together[i, :, :frames], alone) or (
            (together[i, :, :frames] - alone).abs().max() < 1e-4
        )


def test_too_short_audio_is_a_clear_error():
    with pytest.raises(ValueError, match="too short"):
        LogMelFrontend()(torch.zeros(1, 100))


def test_bf16_model_keeps_logmel_in_fp32():
    config = DashengConfig.from_preset("tiny")
    torch.manual_seed(0)
    encoder = DashengEncoder(config).eval()
    wave = torch.from_numpy(clip(2.0))[None]
    spectrum = encoder.front_end(wave)
    encoder_bf16 = encoder.to(torch.bfloat16)
    window, fb = encoder_bf16.front_end.constants(wave.device)
    assert window.dtype == fb.dtype == torch.float32
    assert torch.equal(fb, mel_filterbank())  # never rounded through bf16
    assert torch.equal(encoder_bf16.front_end(wave), spectrum)
    # A bf16 waveform is promoted, not computed in bf16: the STFT stays exact fp32.
    assert torch.equal(encoder_bf16.front_end(wave.bfloat16()), encoder.front_end(wave.bfloat16().float()))
    mel = encoder_bf16.log_mel(wave.bfloat16(), None)
    assert mel.dtype == torch.float32 and torch.isfinite(mel).all()
    features, _ = encoder_bf16(wave.to(torch.bfloat16), torch.tensor([wave.shape[1]]))
    assert features.dtype == torch.bfloat16 and torch.isfinite(features.float()).all()


def test_frontend_constants_are_not_weights():
    encoder = DashengEncoder(DashengConfig.from_preset("tiny"))
    assert not [k for k in encoder.state_dict() if "front_end" in k]
