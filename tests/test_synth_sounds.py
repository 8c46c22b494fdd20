"""Synthetic corpus: labelled sound events (sounds.py) and controlled acoustics (acoustics.py)."""

from __future__ import annotations

import numpy as np
import pytest

from midashenglm.data.synth import acoustics, sounds
from midashenglm.data.synth.base import RATE, split_of
from midashenglm.errors import UserError
from tests.conftest import need


def _power_db(x: np.ndarray) -> float:
    return 10 * np.log10(np.mean(np.square(x, dtype=np.float64)))


@pytest.mark.parametrize("snr_db", [-5.0, 0.0, 12.5, 30.0])
def test_mix_sets_exact_snr(snr_db):
    rng = np.random.default_rng(0)
    signal = sounds.synthesize("siren", rng, 3 * RATE).astype(np.float32)
    background = acoustics.background_noise(rng, RATE, "pink")  # shorter: tiled
    mixed = acoustics.mix(signal, background, snr_db)
    assert mixed.shape == signal.shape and mixed.dtype == np.float32
    measured = _power_db(signal) - _power_db(mixed.astype(np.float64) - signal)
    assert abs(measured - snr_db) < 0.1
    with pytest.raises(UserError):
        acoustics.mix(np.zeros(100, np.float32), background, 0.0)


def test_band_limit_removes_energy_above_cutoff():
    rng = np.random.default_rng(1)
    noise = acoustics.background_noise(rng, 2 * RATE, "white")
    out = acoustics.band_limit(noise, 3400.0)
    freqs = np.fft.rfftfreq(len(noise), 1 / RATE)
    spec_in, spec_out = np.abs(np.fft.rfft(noise)) ** 2, np.abs(np.fft.rfft(out)) ** 2
    above, below = freqs > 3400 * 1.25, freqs < 3400 * 0.8
    assert spec_out[above].sum() / spec_in[above].sum() < 1e-3
    assert spec_out[below].sum() / spec_in[below].sum() > 0.95
    with pytest.raises(UserError):
        acoustics.band_limit(noise, 9000.0)


@pytest.mark.parametrize("target", [0.3, 0.6, 0.9])
def test_reverberate_rt60_matches_reverb_expert(target):
    from midashenglm.curation.experts.signal import Reverb

    clicks = np.zeros(8 * RATE, np.float32)
    clicks[RATE // 2::2 * RATE] = 1.0  # a click every 2 s: free decays of over 60 dB
    out, rt60 = acoustics.reverberate(clicks, np.random.default_rng(2), target)
    assert out.shape == clicks.shape and out.dtype == np.float32
    assert 0.5 * target < rt60 < 2 * target  # Sabine inversion lands near the target
    measured = Reverb().analyze(out, {})["rt60_s"]
    assert measured is not None and abs(measured - rt60) <= 0.25 * rt60


def test_clip_and_noise_colours():
    rng = np.random.default_rng(3)
    x = np.sin(2 * np.pi * 440 * np.arange(RATE) / RATE).astype(np.float32) * 0.5
    assert np.abs(acoustics.clip(x, 0.1)).max() == pytest.approx(0.1)
    freqs = np.fft.rfftfreq(4 * RATE, 1 / RATE)
    for kind, slope in (("white", 0.0), ("pink", -3.0), ("brown", -6.0)):
        noise = acoustics.background_noise(rng, 4 * RATE, kind)
        assert noise.dtype == np.float32 and np.abs(noise).max() == pytest.approx(0.5)
        power = np.abs(np.fft.rfft(noise)) ** 2
        low = power[(freqs > 250) & (freqs < 500)].mean()
        high = power[(freqs > 2000) & (freqs < 4000)].mean()
        per_octave = 10 * np.log10(high / low) / 3  # 3 octaves apart
        assert abs(per_octave - slope) < 0.7, kind
    with pytest.raises(UserError):
        acoustics.background_noise(rng, 10, "purple")


def test_dsp_sounds_are_labelled_and_audible():
    for kind, label in sounds.DSP_LABELS.items():
        audio = sounds.synthesize(kind, np.random.default_rng(4), 3 * RATE)
        assert label and audio.shape == (3 * RATE,) and np.isfinite(audio).all()
        assert np.sqrt(np.mean(audio**2)) > 1e-3, kind
    rng = np.random.default_rng(5)
    assert all(split_of(f"dsp:{sounds.dsp_seed('heldout', rng)}") == "heldout" for _ in range(5))


def test_label_table_and_file_splits():
    need(sounds.available_sources()["tuxpaint"] is None, "tuxpaint-stamps-default is absent")
    need(sounds.available_sources()["freedesktop"] is None, "sound-theme-freedesktop is absent")
    table = sounds.label_table()
    assert all(label.strip() for label in table)
    assert sum(c["train"] + c["heldout"] for c in table.values()) == len(sounds.sound_files())
    assert len(sounds.sound_files()) == len(sounds.TUXPAINT_LABELS) + len(
        sounds.FREEDESKTOP_LABELS)
    train = {f.path for f in sounds.sound_files("train")}
    heldout = {f.path for f in sounds.sound_files("heldout")}
    assert train and heldout and not train & heldout


@pytest.mark.parametrize("split", ["train", "heldout"])
def test_sound_source_samples(split):
    need(sounds.available_sources()["tuxpaint"] is None, "tuxpaint-stamps-default is absent")
    source = sounds.SoundSource(split)
    rng = np.random.default_rng(6)
    seen = set()
    for _ in range(12):
        sound = source.sample(rng, 2.5)
        assert sound.audio.shape == (int(2.5 * RATE),) and sound.audio.dtype == np.float32
        assert np.abs(sound.audio).max() == pytest.approx(0.5, abs=1e-4)
        assert sound.label
        if not sound.source.startswith("dsp:"):
            assert split_of(sound.source) == split
        seen.add(sound.source.split("/")[0].split(":")[0])
    assert seen == {"tuxpaint", "freedesktop", "dsp"}
    with pytest.raises(UserError):
        sounds.SoundSource(split, sources=("nope",))
