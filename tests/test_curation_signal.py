"""Signal experts against synthetic signals whose truth is known by construction (issue 14).

Every signal is made here, deterministically (fixed seeds), at the experts' 16 kHz, and kept
short (<= 8 s) so that the file runs in well under 40 s (pYIN's first call compiles with numba;
essentia's beat tracker is the next slowest).
"""

from __future__ import annotations

import importlib.util
import json

import numpy as np
import pytest

from midashenglm.curation.experts.base import SAMPLE_RATE, Expert, rounded
from midashenglm.curation.experts.signal import (
    SIGNAL_EXPERTS,
    Bandwidth,
    Key,
    Loudness,
    Peak,
    Pitch,
    Reverb,
    Silence,
    Snr,
    Tempo,
)

from .conftest import need

SR = SAMPLE_RATE


def _need_package(module: str) -> None:
    need(importlib.util.find_spec(module) is not None,
         f"{module} is not installed (pip install 'midashenglm[curate]')")


def _analyze(expert: Expert, audio: np.ndarray) -> dict:
    out = expert.analyze(np.asarray(audio, dtype=np.float32), {})
    assert set(out) == set(expert.schema), (expert.name, sorted(out))
    assert json.loads(json.dumps(out)) == out  # plain JSON values only
    return out


def sine(freq: float, seconds: float, amplitude: float = 0.5) -> np.ndarray:
    t = np.arange(int(seconds * SR)) / SR
    return amplitude * np.sin(2 * np.pi * freq * t)


def harmonic_tone(midi: float, seconds: float, harmonics: int = 6) -> np.ndarray:
    """A piano-ish tone: 1/k harmonics, 10 ms attack, 50 ms release."""
    f0 = 440.0 * 2 ** ((midi - 69) / 12)
    t = np.arange(int(seconds * SR)) / SR
    x = sum(np.sin(2 * np.pi * f0 * k * t) / k for k in range(1, harmonics + 1) if f0 * k < SR / 2)
    envelope = np.minimum(1.0, np.minimum(t / 0.01, (seconds - t) / 0.05))
    return 0.3 * x * envelope


def speech_like(seconds: float, seed: int = 0) -> np.ndarray:
    """Syllables with pauses: a glottal pulse train (f0 100-200 Hz, gliding) through three
    vowel formant resonators, 120-300 ms syllables separated by 50-250 ms gaps."""
    from scipy.signal import lfilter

    rng = np.random.default_rng(seed)
    vowels = [(730, 1090, 2440), (270, 2290, 3010), (530, 1840, 2480), (570, 840, 2410)]
    out = np.zeros(int(seconds * SR))
    t = 0.1
    while t < seconds - 0.4:
        n = int(rng.uniform(0.12, 0.3) * SR)
        f0 = rng.uniform(100, 200) * np.linspace(1, rng.uniform(0.8, 1.2), n)
        pulses = np.diff(np.floor(np.cumsum(f0 / SR)), prepend=0.0)
        x = lfilter([1, -1], [1, -0.95], pulses)  # glottal-flow derivative: no DC
        for formant in vowels[rng.integers(len(vowels))]:
            r, theta = np.exp(-np.pi * 80 / SR), 2 * np.pi * formant / SR
            x = lfilter([1 - r], [1, -2 * r * np.cos(theta), r * r], x)
        i = int(t * SR)
        out[i:i + n] += x * np.sin(np.pi * np.arange(n) / n) ** 0.5 / np.std(x)
        t += n / SR + rng.uniform(0.05, 0.25)
    return 0.5 * out / np.abs(out).max()


def tone_bursts(seconds: float, seed: int = 0) -> np.ndarray:
    """Harmonic notes (220-392 Hz, 0.2-0.5 s) with 0.1-0.3 s gaps."""
    rng = np.random.default_rng(seed)
    out = np.zeros(int(seconds * SR))
    t, k = 0.1, 0
    while t < seconds - 0.5:
        dur = rng.uniform(0.2, 0.5)
        note = harmonic_tone((57, 64, 60, 67)[k % 4], dur, harmonics=7)
        i = int(t * SR)
        out[i:i + len(note)] += note
        t, k = t + dur + rng.uniform(0.1, 0.3), k + 1
    return 0.5 * out / np.abs(out).max()


def add_noise(clean: np.ndarray, snr_db: float, seed: int = 1) -> np.ndarray:
    """White Gaussian noise scaled so that energy(clean) / energy(noise) is ``snr_db``."""
    noise = np.random.default_rng(seed).standard_normal(len(clean))
    noise *= np.sqrt(np.mean(clean**2) / 10 ** (snr_db / 10) / np.mean(noise**2))
    return clean + noise


def dry_events(seconds: float, kind: str, seed: int = 0) -> np.ndarray:
    """Noise bursts (50-200 ms) or 2 ms clicks, each followed by 0.6-1.0 s of silence."""
    rng = np.random.default_rng(seed)
    x = np.zeros(int(seconds * SR))
    t = 0.05
    while t < seconds - 0.3:
        n = int((rng.uniform(0.05, 0.2) if kind == "bursts" else 0.002) * SR)
        i = int(t * SR)
        x[i:i + n] = rng.standard_normal(n)
        t += n / SR + rng.uniform(0.6, 1.0)
    return x


def exponential_ir(rt60: float, seed: int = 1) -> np.ndarray:
    """Gaussian noise under an envelope whose energy falls 60 dB in ``rt60`` s, plus a direct
    impulse carrying as much energy as the tail (DRR 0 dB)."""
    t = np.arange(int(1.5 * rt60 * SR)) / SR
    h = np.random.default_rng(seed).standard_normal(len(t)) * 10 ** (-3 * t / rt60)
    h[0] = np.sqrt(np.sum(h[1:] ** 2))
    return h


def reverberate(x: np.ndarray, h: np.ndarray) -> np.ndarray:
    from scipy.signal import fftconvolve

    y = fftconvolve(x, h)[: len(x)]
    return 0.5 * y / np.abs(y).max()


# --- every expert -----------------------------------------------------------------------------


def test_signal_experts_declare_the_interface():
    names = [cls.name for cls in SIGNAL_EXPERTS]
    assert names == ["loudness", "peak", "silence", "bandwidth", "snr", "reverb", "tempo", "key",
                     "pitch"]
    for cls in SIGNAL_EXPERTS:
        assert issubclass(cls, Expert) and cls.kind == "signal" and cls.version == "1"
        assert cls.schema and all(isinstance(v, str) and v for v in cls.schema.values())
        available = cls().available()
        assert available or "pip install" in available.reason


@pytest.mark.parametrize("audio", [np.zeros(1), np.array([0.3]), np.zeros(SR),
                                   sine(440, 0.5)], ids=["1-zero", "1-sample", "zeros", "0.5s"])
def test_every_expert_survives_degenerate_clips(audio):
    for cls in SIGNAL_EXPERTS:
        expert = cls()
        if not expert.available():
            continue
        out = _analyze(expert, audio)
        if not np.any(audio) or len(audio) == 1:
            # nothing measurable: no numbers made up
            for key in ("lufs", "bandwidth_hz", "snr_db", "rt60_s", "bpm", "key", "f0_mean_hz"):
                assert out.get(key) is None
    # tempo and key need a second of audible sound
    for cls in (Tempo, Key):
        if cls().available():
            assert _analyze(cls(), sine(440, 0.5))[{"tempo": "bpm", "key": "key"}[cls.name]] is None


# --- loudness, peak, silence ------------------------------------------------------------------


def test_loudness_is_pyloudnorm_bs1770():
    _need_package("pyloudnorm")
    import pyloudnorm

    meter = pyloudnorm.Meter(SR)
    full_scale = sine(1000, 3.0, amplitude=1.0)
    out = _analyze(Loudness(), full_scale)
    # BS.1770: a full-scale 1 kHz sine reads -3.01 LKFS (pyloudnorm's 16 kHz filters: -3.08)
    assert out["lufs"] == pytest.approx(-3.01, abs=0.1)
    assert out["rms_dbfs"] == pytest.approx(-3.01, abs=0.01)
    rng = np.random.default_rng(3)
    music_ish = tone_bursts(4.0) + 0.01 * rng.standard_normal(4 * SR)
    for audio in (full_scale, 0.1 * full_scale, music_ish, speech_like(3.0)):
        audio = audio.astype(np.float32)
        expected = meter.integrated_loudness(audio.astype(np.float64))
        got = _analyze(Loudness(), audio)["lufs"]
        assert got == rounded(expected)
        assert abs(got - expected) <= 1e-6 * abs(expected) + 5e-4  # only the 3-decimal rounding
    assert _analyze(Loudness(), 0.1 * full_scale)["lufs"] == pytest.approx(-23.01, abs=0.1)


def test_peak_finds_clipping():
    clipped = np.clip(sine(440, 1.0, amplitude=2.0), -1.0, 1.0)
    out = _analyze(Peak(), clipped)
    # |2 sin| >= 1 for 2/3 of the time; the 0.999 threshold adds a little, isolated samples drop
    assert out["clipping"] is True
    assert 0.6 <= out["clipped_fraction"] <= 0.7
    assert out["peak_dbfs"] == pytest.approx(0.0, abs=0.01)
    # a full-scale sine that is not clipped: single samples at the crest, no flat top
    clean = _analyze(Peak(), sine(1000, 1.0, amplitude=1.0))
    assert clean["clipping"] is False and clean["clipped_fraction"] == 0.0
    quiet = _analyze(Peak(), sine(440, 1.0, amplitude=0.5))
    assert quiet == {"peak_dbfs": pytest.approx(-6.02, abs=0.01), "clipped_fraction": 0.0,
                     "clipping": False}


def test_silence_ratio():
    tone = sine(440, 1.0)
    half = _analyze(Silence(), np.concatenate([tone, np.zeros(SR)]))
    assert half == {"silence_ratio": 0.5, "silent": False}
    # a noise floor 50 dB under the tone counts as silence (the 40 dB relative rule)
    floor = 10 ** (-50 / 20) * 0.5 * np.random.default_rng(0).standard_normal(SR)
    assert _analyze(Silence(), np.concatenate([tone, floor]))["silence_ratio"] == 0.5
    assert _analyze(Silence(), np.zeros(SR)) == {"silence_ratio": 1.0, "silent": True}
    assert _analyze(Silence(), 1e-4 * tone)["silent"] is True  # -83 dBFS


# --- bandwidth --------------------------------------------------------------------------------


def test_bandwidth_of_band_limited_noise():
    import soxr
    from scipy.signal import firwin, lfilter

    noise = np.random.default_rng(0).standard_normal(4 * SR)
    low_passed = lfilter(firwin(511, 4000, fs=SR), 1.0, noise)  # 4 kHz low pass, -70 dB stop
    out = _analyze(Bandwidth(), 0.3 * low_passed)
    assert out["bandwidth_hz"] == pytest.approx(4000, rel=0.1)
    assert out["effective_sample_rate"] == 8000
    # narrowband audio upsampled to 16 kHz (a telephone recording) reads as 8 kHz
    upsampled = soxr.resample(np.random.default_rng(1).standard_normal(4 * 8000), 8000, SR)
    assert _analyze(Bandwidth(), 0.3 * upsampled)["effective_sample_rate"] == 8000
    up_11k = soxr.resample(np.random.default_rng(2).standard_normal(4 * 11025), 11025, SR)
    assert _analyze(Bandwidth(), 0.3 * up_11k)["effective_sample_rate"] == 11025
    full = _analyze(Bandwidth(), 0.3 * noise)
    assert full["bandwidth_hz"] >= 7800 and full["effective_sample_rate"] == 16000


# --- SNR --------------------------------------------------------------------------------------


@pytest.mark.parametrize("snr_db", [10.0, 20.0])
@pytest.mark.parametrize("make", [speech_like, tone_bursts], ids=["speech-like", "tone-bursts"])
def test_snr_of_noise_added_at_a_known_snr(make, snr_db):
    clean = make(8.0)
    got = _analyze(Snr(), add_noise(clean, snr_db))["snr_db"]
    assert got == pytest.approx(snr_db, abs=2.0)


def test_snr_of_steady_tone_and_of_espeak_speech(speech_wav):
    from midashenglm.audio import load_audio

    steady = harmonic_tone(57, 8.0)  # never pauses: noise read between its harmonics
    assert _analyze(Snr(), add_noise(steady, 10.0))["snr_db"] == pytest.approx(10.0, abs=2.0)
    speech = load_audio(str(speech_wav)).astype(np.float64)
    for snr_db in (10.0, 20.0):
        assert _analyze(Snr(), add_noise(speech, snr_db))["snr_db"] == pytest.approx(snr_db,
                                                                                     abs=2.0)
    # ordering holds beyond the tested range; a clean clip reads high
    readings = [_analyze(Snr(), add_noise(speech_like(6.0), s))["snr_db"] for s in (0, 5, 30)]
    assert readings == sorted(readings) and readings[0] == pytest.approx(0.0, abs=2.0)
    assert _analyze(Snr(), speech_like(6.0))["snr_db"] >= 40


# --- reverberation ----------------------------------------------------------------------------


@pytest.mark.parametrize("rt60", [0.3, 0.8])
@pytest.mark.parametrize("kind", ["bursts", "clicks"])
def test_rt60_of_exponential_decay(kind, rt60):
    wet = reverberate(dry_events(8.0, kind), exponential_ir(rt60))
    wet += 10 ** (-60 / 20) * np.random.default_rng(9).standard_normal(len(wet))  # -60 dB floor
    out = _analyze(Reverb(), wet)
    assert out["rt60_s"] == pytest.approx(rt60, rel=0.2)
    assert out["drr_db"] is None


def test_rt60_of_dry_and_of_continuous_sound():
    for kind in ("bursts", "clicks"):
        dry = _analyze(Reverb(), 0.5 * dry_events(8.0, kind))["rt60_s"]
        assert dry is not None and dry < 0.1
    steady = sine(440, 4.0) + 0.01 * np.random.default_rng(0).standard_normal(4 * SR)
    assert _analyze(Reverb(), steady)["rt60_s"] is None  # no free decay to measure


def test_rt60_in_a_simulated_room():
    _need_package("pyroomacoustics")
    import pyroomacoustics as pra

    room_dim = [6.0, 5.0, 3.0]
    absorption, max_order = pra.inverse_sabine(0.5, room_dim)
    room = pra.ShoeBox(room_dim, fs=SR, materials=pra.Material(absorption), max_order=max_order)
    room.add_source([2.0, 3.0, 1.5])
    room.add_microphone([4.0, 2.0, 1.5])
    room.compute_rir()
    rir = np.asarray(room.rir[0][0])
    truth = pra.experimental.measure_rt60(rir, fs=SR, decay_db=30)  # the RIR's own T30
    got = _analyze(Reverb(), reverberate(dry_events(8.0, "bursts"), rir))["rt60_s"]
    assert got == pytest.approx(truth, rel=0.2)


# --- tempo, key, pitch ------------------------------------------------------------------------


def click_track(bpm: float, seconds: float) -> np.ndarray:
    x = np.zeros(int(seconds * SR))
    t = np.arange(int(0.03 * SR)) / SR
    click = np.sin(2 * np.pi * 1000 * t) * np.exp(-t / 0.003)
    for start in np.arange(0.1, seconds - 0.05, 60.0 / bpm):
        i = int(round(start * SR))
        x[i:i + len(click)] += click[: len(x) - i]
    return 0.8 * x


def test_tempo_of_a_click_track():
    _need_package("essentia")
    out = _analyze(Tempo(), click_track(120, 8.0))
    assert out["bpm"] == pytest.approx(120, abs=2)
    beats = np.asarray(out["beats"])
    assert len(beats) >= 12 and np.median(np.diff(beats)) == pytest.approx(0.5, abs=0.02)
    assert out["confidence"] > 2
    assert _analyze(Tempo(), np.zeros(4 * SR)) == {"bpm": None, "beats": [], "confidence": 0.0}


SCALE_C_MAJOR = [60, 62, 64, 65, 67, 69, 71, 72]
SCALE_A_MINOR = [57, 59, 60, 62, 64, 65, 67, 69]


@pytest.mark.parametrize(("scale", "key", "mode"), [(SCALE_C_MAJOR, "C", "major"),
                                                    (SCALE_A_MINOR, "A", "minor"),
                                                    ([n + 3 for n in SCALE_C_MAJOR], "D#",
                                                     "major")])
def test_key_of_a_scale(scale, key, mode):
    _need_package("essentia")
    notes = (scale + scale[-2::-1]) * 2  # up and down twice: 30 notes of 0.25 s
    audio = np.concatenate([harmonic_tone(m, 0.25) for m in notes])
    out = _analyze(Key(), audio)
    assert (out["key"], out["mode"]) == (key, mode)  # D# major: essentia's "Eb" renamed
    assert 0.5 < out["strength"] <= 1.0


def test_pitch_of_a_tone():
    _need_package("librosa")
    out = _analyze(Pitch(), sine(220, 2.0))
    assert out["f0_mean_hz"] == pytest.approx(220, rel=0.02)
    assert out["f0_min_hz"] == pytest.approx(220, rel=0.02)
    assert out["f0_max_hz"] == pytest.approx(220, rel=0.02)
    assert out["f0_std_hz"] < 2 and out["voiced_ratio"] > 0.9
    glide = _analyze(Pitch(), np.concatenate([harmonic_tone(57, 1.0), harmonic_tone(69, 1.0)]))
    assert glide["f0_min_hz"] == pytest.approx(220, rel=0.02)
    assert glide["f0_max_hz"] == pytest.approx(440, rel=0.02)
    noise = _analyze(Pitch(), 0.3 * np.random.default_rng(0).standard_normal(SR))
    assert noise["voiced_ratio"] < 0.2
