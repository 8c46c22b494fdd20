"""Signal experts: measurements computed from the waveform alone, no weights.

The acoustics half of a clip's metadata (SYSTEM.md section 8: "quality, reverberation, noise"):
loudness, peak and clipping, silence, bandwidth, SNR, reverberation, plus the musical
measurements tempo, key and pitch. Every expert takes 16 kHz mono float32 audio of any length
(one sample included) and never raises on silence or very short audio: a measurement that
cannot be made is ``None`` (floats) or ``0.0`` / ``False`` where the schema has no ``None``.
Levels are in dB relative to digital full scale (|x| = 1), times in seconds, frequencies in Hz.

Packages: ``loudness`` needs pyloudnorm, ``tempo`` and ``key`` need essentia, ``pitch`` needs
librosa (all in the ``curate`` extra); the others need only numpy and scipy. Essentia is
licensed AGPL-3.0: it is an optional extra, imported only when ``tempo`` or ``key`` runs.

Methods and sources (details in each class):

- loudness: ITU-R BS.1770-4 integrated loudness (K-weighting, 400 ms blocks, -70 LUFS absolute
  and -10 LU relative gates) as implemented by pyloudnorm (Steinmetz & Reiss, 2021).
- peak: sample peak; clipping as runs of samples at full scale.
- silence: share of 20 ms frames below an absolute and a clip-relative level.
- bandwidth: the highest frequency of the long-term spectrum (Welch, 1959) within 60 dB of its
  maximum.
- snr: noise power spectrum by minimum statistics (after Martin, 2001), bias calibrated on
  Gaussian noise.
- reverb: blind RT60 from the slopes of free decays of the energy envelope (after Ratnam et al.,
  2003, and Loellmann et al., 2010, with a least-squares slope as in Schroeder's T20/T30).
- tempo: essentia RhythmExtractor2013 (multifeature beat tracker: Zapata, Davies & Gomez, 2014).
- key: essentia KeyExtractor (HPCP chroma, Gomez 2006, with key profiles).
- pitch: probabilistic YIN (pYIN, Mauch & Dixon, 2014) as implemented by librosa.
"""

from __future__ import annotations

import functools
import warnings
from collections.abc import Mapping
from typing import Any

import numpy as np

from .base import SAMPLE_RATE, Availability, Expert, need_modules, rounded

# ---------------------------------------------------------------------------------------------
# Shared helpers

SILENCE_FRAME_SECONDS = 0.02
SILENCE_ABS_DBFS = -60.0  # a frame below this level is silent
SILENCE_REL_DB = 40.0  # ... and so is one this far under the clip's loudest frame


def _samples(audio: np.ndarray) -> np.ndarray:
    """``audio`` as a 1-D float64 array (the experts' arithmetic is done in double)."""
    return np.asarray(audio, dtype=np.float64).reshape(-1)


def _db(power: np.ndarray | float, floor: float = 1e-20) -> np.ndarray | float:
    """Power -> dB, with a floor so that silence is a (very low) number, not -inf."""
    return 10.0 * np.log10(np.maximum(power, floor))


def _frame_levels(x: np.ndarray, seconds: float = SILENCE_FRAME_SECONDS) -> np.ndarray:
    """Mean-square level in dBFS of consecutive ``seconds``-long frames (the last may be short).

    dBFS here: 10*log10(mean(x**2)), so a full-scale square wave is 0 dB and a full-scale sine
    -3.01 dB. Shape ``(ceil(n / frame),)``; silence is -200 dB.
    """
    size = max(1, int(round(seconds * SAMPLE_RATE)))
    n_full = len(x) // size
    power = list((x[: n_full * size].reshape(n_full, size) ** 2).mean(axis=1))
    if len(x) > n_full * size:
        power.append(float(np.mean(x[n_full * size:] ** 2)))
    return np.asarray(_db(np.asarray(power)), dtype=np.float64)


def _is_silent(x: np.ndarray) -> bool:
    """True when no 20 ms frame reaches -60 dBFS (nothing audible: tempo, key, pitch skip it)."""
    return len(x) == 0 or float(np.max(_frame_levels(x))) < SILENCE_ABS_DBFS


def _stft_power(x: np.ndarray, n_fft: int, hop: int) -> np.ndarray:
    """Blackman-windowed power spectrogram ``|X|**2``, shape ``(n_fft // 2 + 1, frames)``.

    Blackman rather than Hann: its side lobes (-58 dB, falling fast) keep a steady tone's
    leakage out of the bins between its harmonics, where the SNR expert reads the noise.
    Frames start at 0 and step by ``hop`` without padding; needs ``len(x) >= n_fft``.
    """
    frames = np.lib.stride_tricks.sliding_window_view(x, n_fft)[::hop]
    window = np.blackman(n_fft + 1)[:-1]  # periodic
    return (np.abs(np.fft.rfft(frames * window, axis=1)) ** 2).T


# ---------------------------------------------------------------------------------------------
# Loudness


class Loudness(Expert):
    """Integrated loudness (ITU-R BS.1770-4) and RMS level.

    ``lufs``: pyloudnorm's ``Meter(16000).integrated_loudness`` (K-weighted, gated; a full-scale
    1 kHz sine reads about -3.0 LUFS). ``None`` for clips shorter than one 400 ms gating block
    and for clips whose every block falls under the -70 LUFS absolute gate (silence).
    ``rms_dbfs``: 20*log10 of the RMS over the whole clip (full-scale sine: -3.01 dB);
    ``None`` for digital silence.
    """

    name = "loudness"
    version = "1"
    kind = "signal"
    schema = {
        "lufs": "integrated loudness, LUFS (ITU-R BS.1770-4 via pyloudnorm); None when shorter "
                "than 0.4 s or silent",
        "rms_dbfs": "RMS level over the clip, dBFS (full-scale sine = -3.01); None when all zeros",
    }

    def available(self) -> Availability:
        return need_modules("pyloudnorm")

    def analyze(self, audio: np.ndarray, context: Mapping[str, Any]) -> dict[str, Any]:
        x = _samples(audio)
        mean_square = float(np.mean(x**2)) if len(x) else 0.0
        rms_dbfs = float(_db(mean_square)) if mean_square > 0 else None
        lufs = None
        if len(x) >= int(0.4 * SAMPLE_RATE) and mean_square > 0:
            import pyloudnorm

            with warnings.catch_warnings(), np.errstate(all="ignore"):
                # pyloudnorm warns (and returns -inf) when every block is gated out.
                warnings.simplefilter("ignore")
                lufs = float(pyloudnorm.Meter(SAMPLE_RATE).integrated_loudness(x))
        return {"lufs": rounded(lufs), "rms_dbfs": rounded(rms_dbfs)}


# ---------------------------------------------------------------------------------------------
# Peak and clipping

CLIP_LEVEL = 0.999  # of full scale
CLIP_MIN_RUN = 3  # consecutive samples: a lone full-scale sample is a peak, a run is a flat top
CLIPPING_FRACTION = 1e-4  # clipped share from which a clip is flagged (1.6 samples a second)


class Peak(Expert):
    """Sample peak and hard clipping.

    ``peak_dbfs``: 20*log10(max |x|) (above 0 for float audio that overshoots full scale).
    ``clipped_fraction``: share of the clip's samples that lie in runs of at least 3
    consecutive samples with |x| >= 0.999 of full scale (a clipper's flat top; a single
    sample at full scale is an ordinary peak). ``clipping``: that share is >= 1e-4.

    Limits: clipping is detected at full scale only (audio clipped and then attenuated is not
    found), and on the 16 kHz audio the experts see: a file clipped at a higher rate and
    resampled shows ripple around the clip level (Gibbs), so part of its flat tops (at high
    frequencies, all of them) can fall under 0.999 and be missed.
    """

    name = "peak"
    version = "1"
    kind = "signal"
    schema = {
        "peak_dbfs": "sample peak, dBFS; None when all zeros",
        "clipped_fraction": "share 0..1 of samples in runs of >= 3 at >= 0.999 of full scale",
        "clipping": "clipped_fraction >= 1e-4",
    }

    def analyze(self, audio: np.ndarray, context: Mapping[str, Any]) -> dict[str, Any]:
        x = _samples(audio)
        peak = float(np.max(np.abs(x))) if len(x) else 0.0
        at_full_scale = (np.abs(x) >= CLIP_LEVEL).astype(np.int8)
        edges = np.diff(np.concatenate([[0], at_full_scale, [0]]))
        runs = np.flatnonzero(edges == -1) - np.flatnonzero(edges == 1)
        clipped = int(runs[runs >= CLIP_MIN_RUN].sum())
        fraction = clipped / len(x) if len(x) else 0.0
        return {
            "peak_dbfs": rounded(20.0 * np.log10(peak)) if peak > 0 else None,
            "clipped_fraction": rounded(fraction, 6),
            "clipping": bool(fraction >= CLIPPING_FRACTION),
        }


# ---------------------------------------------------------------------------------------------
# Silence


class Silence(Expert):
    """Share of silent 20 ms frames.

    A frame (20 ms, non-overlapping; the last may be shorter) is silent when its mean-square
    level is below -60 dBFS or more than 40 dB under the clip's loudest frame (so a quiet
    noise floor between loud events counts as silence). ``silent``: no frame reaches -60 dBFS.
    """

    name = "silence"
    version = "1"
    kind = "signal"
    schema = {
        "silence_ratio": "share 0..1 of 20 ms frames below -60 dBFS or 40 dB under the "
                         "loudest frame",
        "silent": "no 20 ms frame reaches -60 dBFS",
    }

    def analyze(self, audio: np.ndarray, context: Mapping[str, Any]) -> dict[str, Any]:
        x = _samples(audio)
        if len(x) == 0:
            return {"silence_ratio": 1.0, "silent": True}
        levels = _frame_levels(x)
        loudest = float(levels.max())
        quiet = (levels < SILENCE_ABS_DBFS) | (levels < loudest - SILENCE_REL_DB)
        return {"silence_ratio": rounded(float(quiet.mean())),
                "silent": bool(loudest < SILENCE_ABS_DBFS)}


# ---------------------------------------------------------------------------------------------
# Bandwidth

BANDWIDTH_DROP_DB = 60.0
STANDARD_RATES = (8000, 11025, 12000, 16000, 22050, 24000, 32000, 44100, 48000)
RATE_TOLERANCE = 1.1  # a resampler's stop band lies a little above the nominal Nyquist


class Bandwidth(Expert):
    """Effective audio bandwidth and the sample rate it suggests.

    Method: the long-term power spectrum (Welch's method: 1024-point Hann frames, 50 %
    overlap, mean removed) in dB; ``bandwidth_hz`` is the highest frequency whose level is
    within 60 dB of the spectrum's maximum. A level criterion, not an energy share, because
    the question is "was this audio band-limited (recorded at 8 kHz, coded narrowband,
    upsampled)?": a resampler or codec leaves nothing but numerical noise above its cut-off,
    whereas natural wideband sound (speech fricatives, cymbals) lies 30-50 dB under its peak
    up there and would fall outside a 99 %-of-energy share.
    ``effective_sample_rate``: the smallest standard rate (8000, 11025, 12000, 16000 ...,
    at most the 16 kHz the experts see) whose Nyquist frequency, widened by 10 % for a
    resampler's transition band, covers ``bandwidth_hz``.

    Gentle roll-offs (a low-order filter) read above their -3 dB corner: this measures where
    the content stops, not a filter's nominal cut-off. Both fields are ``None`` for digital
    silence or a clip of fewer than 16 samples.
    """

    name = "bandwidth"
    version = "1"
    kind = "signal"
    schema = {
        "bandwidth_hz": "highest frequency within 60 dB of the long-term spectrum's peak, Hz; "
                        "None when silent",
        "effective_sample_rate": "smallest standard rate (8000/11025/12000/16000) covering the "
                                 "bandwidth, Hz; None when silent",
    }

    def analyze(self, audio: np.ndarray, context: Mapping[str, Any]) -> dict[str, Any]:
        x = _samples(audio)
        none = {"bandwidth_hz": None, "effective_sample_rate": None}
        if len(x) < 16:
            return none
        x = x - x.mean()
        if not np.any(x):
            return none
        from scipy.signal import welch

        n_fft = min(1024, len(x))
        freqs, power = welch(x, fs=SAMPLE_RATE, window="hann", nperseg=n_fft,
                             noverlap=n_fft // 2, detrend=False)
        level = _db(power, floor=1e-30)
        bandwidth = float(freqs[np.flatnonzero(level >= level.max() - BANDWIDTH_DROP_DB)[-1]])
        rate = next((r for r in STANDARD_RATES if r / 2 * RATE_TOLERANCE >= bandwidth),
                    SAMPLE_RATE)
        return {"bandwidth_hz": rounded(bandwidth, 1),
                "effective_sample_rate": int(min(rate, SAMPLE_RATE))}


# ---------------------------------------------------------------------------------------------
# SNR

SNR_N_FFT = 1024  # 64 ms: harmonics of a 220 Hz tone leave noise-only bins between them
SNR_HOP = 256
SNR_SMOOTH_SECONDS = 0.08  # periodogram averaged over this long before taking minima
SNR_WINDOW_SECONDS = 3.0  # each window must hold one pause per frequency band
SNR_MEDIAN_BINS = 15  # across-frequency median that removes steady tones from the floor
SNR_MIN_HZ = 50.0
SNR_MAX_SECONDS = 60.0
SNR_RANGE_DB = (-10.0, 60.0)  # reported values are clamped to this range


def _noise_floor(power: np.ndarray, smooth: int, window: int) -> np.ndarray:
    """Per-bin noise floor statistic of a power spectrogram ``(bins, frames)`` -> ``(bins,)``.

    Moving average over ``smooth`` frames, minimum over sliding ``window`` frames, median of
    those minima over time, then the smaller of that and its median across neighbouring bins.
    """
    from scipy.ndimage import median_filter, minimum_filter1d, uniform_filter1d

    smoothed = uniform_filter1d(power, smooth, axis=1, mode="nearest")
    floor = np.median(minimum_filter1d(smoothed, window, axis=1, mode="nearest"), axis=1)
    return np.minimum(floor, median_filter(floor, size=SNR_MEDIAN_BINS, mode="nearest"))


def _noise_floor_bias(n_samples: int) -> float:
    """What :func:`_noise_floor` reads, as a share of the true noise power, on white noise.

    Calibrated per clip length (the minimum over a shorter clip is less biased), rounded up to
    a quarter second so that clips of similar length share one calibration, on Gaussian noise
    with a fixed seed; the ratio holds for any stationary Gaussian noise, coloured or not,
    because each frequency bin's periodogram has the same (exponential) distribution.
    """
    quantum = SAMPLE_RATE // 4
    return _noise_floor_bias_at(-(-n_samples // quantum) * quantum)


@functools.lru_cache(maxsize=64)
def _noise_floor_bias_at(n_samples: int) -> float:
    reference = np.random.default_rng(0).standard_normal(n_samples)
    power = _snr_spectrogram(reference)
    smooth, window = _snr_windows(power.shape[1])
    return float(_noise_floor(power, smooth, window).sum() / power.mean(axis=1).sum())


def _snr_spectrogram(x: np.ndarray) -> np.ndarray:
    power = _stft_power(x, SNR_N_FFT, SNR_HOP)
    freqs = np.fft.rfftfreq(SNR_N_FFT, 1.0 / SAMPLE_RATE)
    return power[(freqs >= SNR_MIN_HZ) & (freqs < SAMPLE_RATE / 2)]


def _snr_windows(frames: int) -> tuple[int, int]:
    frame_rate = SAMPLE_RATE / SNR_HOP
    smooth = max(1, int(round(SNR_SMOOTH_SECONDS * frame_rate)))
    return smooth, max(1, min(frames, int(round(SNR_WINDOW_SECONDS * frame_rate))))


class Snr(Expert):
    """Blind signal-to-noise ratio, dB: clip energy of the signal over that of the noise.

    Method (minimum statistics, after Martin 2001, "Noise power spectral density estimation
    based on optimal smoothing and minimum statistics", IEEE TSAP 9(5)): a 64 ms / 16 ms-hop
    Blackman-window power spectrogram over 50 Hz .. 8 kHz; in each frequency bin the
    periodogram is averaged over 80 ms, its minimum taken over sliding 3 s windows and the
    median of those minima kept; a steady tone that never leaves its bin is removed by taking
    the smaller of that and the median over 15 neighbouring bins. The minimum of noise is
    biased low; the bias is calibrated by running the same estimator on Gaussian noise of the
    clip's length. Noise power N is the sum of the per-bin floors; signal power S = (mean
    frame power) - N; ``snr_db`` = 10*log10(S / N), the *global* SNR (signal and noise
    energies over the whole clip, as when mixing noise into a clip at a given SNR), clamped to
    [-10, 60] dB. A clean clip reads high (a clean steady tone ~50 dB, digital silence between
    events 60).

    Assumptions: the noise is stationary over the clip (a noise that swells reads partly as
    signal) and the signal leaves every frequency band free for at least ~80 ms in each 3 s
    (pauses between words, notes or events; between the harmonics of a tone). Speech with
    few pauses breaks the second at high SNR: the floor then includes speech and the SNR is
    underestimated (espeak-ng speech in white noise: about 1.5 dB low at 20 dB, 2.5 dB low at
    30 dB). Analyses the first 60 s. ``None`` for digital silence or a clip shorter than
    0.25 s.
    """

    name = "snr"
    version = "1"
    kind = "signal"
    schema = {"snr_db": "global signal-to-noise ratio estimate, dB (minimum statistics), "
                        "clamped to [-10, 60]; None when silent or shorter than 0.25 s"}

    def analyze(self, audio: np.ndarray, context: Mapping[str, Any]) -> dict[str, Any]:
        x = _samples(audio)[: int(SNR_MAX_SECONDS * SAMPLE_RATE)]
        if len(x) < max(SNR_N_FFT, int(0.25 * SAMPLE_RATE)) or not np.any(x):
            return {"snr_db": None}
        power = _snr_spectrogram(x)
        smooth, window = _snr_windows(power.shape[1])
        noise = float(_noise_floor(power, smooth, window).sum()) / _noise_floor_bias(len(x))
        total = float(power.sum(axis=0).mean())
        if total <= 0:
            return {"snr_db": None}
        low, high = SNR_RANGE_DB
        signal = total - noise
        snr = high if noise <= total * 10 ** (-high / 10) else (
            low if signal <= 0 else 10 * np.log10(signal / noise))
        return {"snr_db": rounded(float(np.clip(snr, low, high)), 2)}


# ---------------------------------------------------------------------------------------------
# Reverberation

REVERB_WINDOW_SECONDS = 0.01
REVERB_HOP_SECONDS = 0.005
REVERB_MIN_DROP_DB = 20.0  # a free decay must fall at least this far
REVERB_RISE_DB = 3.0  # a rise of this much over the decay's running minimum is a new onset
REVERB_FIT_START_DB = 5.0  # as in Schroeder's T20/T30: skip the first 5 dB (direct sound)
REVERB_FIT_RANGE_DB = 30.0
REVERB_FLOOR_MARGIN_DB = 5.0
REVERB_DYNAMIC_RANGE_DB = 90.0
REVERB_MIN_DECAYS = 3


def _free_decays(level: np.ndarray, floor: float) -> list[np.ndarray]:
    """Free decays of a dB envelope: from a local maximum down, until a new onset or the floor.

    Each decay is the envelope from its start through its last frame (the first frame at or
    under ``floor`` ends it and is kept), clamped at ``floor``; only decays that fall at least
    :data:`REVERB_MIN_DROP_DB` and start that far (plus 5 dB) above the floor are kept.
    """
    out = []
    n = len(level)
    i = 0
    while i < n - 2:
        if level[i] < floor + REVERB_MIN_DROP_DB + REVERB_FIT_START_DB or level[i + 1] >= level[i]:
            i += 1
            continue
        j = i + 1
        running_min = level[j]
        while j + 1 < n and level[j] > floor and level[j + 1] <= running_min + REVERB_RISE_DB:
            j += 1
            running_min = min(running_min, level[j])
        decay = np.maximum(level[i:j + 1], floor)
        if decay[0] - decay.min() >= REVERB_MIN_DROP_DB:
            out.append(decay)
        i = j + 1
    return out


def _decay_rt60(decay: np.ndarray, floor: float, hop: float) -> float:
    """RT60 (s) of one free decay: -60 / (least-squares slope in dB/s).

    Fit from 5 dB under the decay's start down 30 dB, stopping 5 dB above the noise floor and
    3 dB above the decay's own minimum (where the next onset or the floor bends it). A decay
    too fast to leave 3 frames in that range (a dry offset) gets the slope from its start to
    its minimum, i.e. an RT60 of a few milliseconds.
    """
    top = decay[0]
    upper = top - REVERB_FIT_START_DB
    lower = max(upper - REVERB_FIT_RANGE_DB, floor + REVERB_FLOOR_MARGIN_DB, decay.min() + 3.0)
    k0 = int(np.argmax(decay <= upper))
    below = np.flatnonzero(decay[k0:] < lower)
    k1 = k0 + (int(below[0]) if len(below) else len(decay) - k0)
    if k1 - k0 >= 3:
        slope = np.polyfit(np.arange(k0, k1) * hop, decay[k0:k1], 1)[0]
    else:
        k = int(np.argmin(decay))
        slope = (decay[k] - top) / (k * hop) if k > 0 else 0.0
    return -60.0 / slope if slope < 0 else float("inf")


class Reverb(Expert):
    """Blind reverberation time (RT60, s) from free decays.

    Method: the energy envelope in dB (10 ms frames, 5 ms hop); the noise floor is its 5th
    percentile (at most 90 dB under the peak). Free decays are the stretches that fall at least
    20 dB from a local maximum without a new onset (a rise of 3 dB). Each decay's slope is
    fitted by least squares from 5 dB under its start down 30 dB (Schroeder's T20/T30 range,
    Schroeder 1965), stopping 5 dB above the floor; RT60 = -60 dB / slope. After an abrupt
    offset the reverberant tail decays at the room's rate (Ratnam et al. 2003, "Blind estimation
    of reverberation time", JASA 114(5)); a source that fades out itself only slows a decay, so,
    as in Loellmann et al. 2010 ("An improved algorithm for blind reverberation time
    estimation", IWAENC), the estimate is an order statistic of the decays: the median of the
    faster half. At least 3 decays are needed, else ``None``: continuous sound (steady music,
    noise) and speech without pauses long enough for a 20 dB fall give ``None``.

    Accuracy: within a few % for clicks or noise bursts with gaps in a diffuse exponential
    decay, and against a simulated (image-source) room's own T30; speech offsets are slower
    than a room's tail, so dry speech reads about 0.04-0.07 s and reverberant speech reads
    high (espeak-ng speech: 0.38 s at 0.3 s, 0.54 s at 0.5 s) or, when its pauses are too
    short for a 20 dB fall (0.8 s), ``None``. A dry signal with abrupt offsets reads a few
    milliseconds.
    ``drr_db`` (direct-to-reverberant ratio) is not estimated (``None``): a blind DRR needs
    impulsive onsets or several microphones, and no single-channel method tested here was
    reliable enough to report.
    """

    name = "reverb"
    version = "1"
    kind = "signal"
    schema = {
        "rt60_s": "blind reverberation time, s (median of the faster half of free-decay "
                  "slopes); None without 3 free decays of >= 20 dB",
        "drr_db": "direct-to-reverberant ratio, dB: not estimated blindly, always None",
    }

    def analyze(self, audio: np.ndarray, context: Mapping[str, Any]) -> dict[str, Any]:
        x = _samples(audio)
        size = int(REVERB_WINDOW_SECONDS * SAMPLE_RATE)
        hop = int(REVERB_HOP_SECONDS * SAMPLE_RATE)
        if len(x) < 4 * size or not np.any(x):
            return {"rt60_s": None, "drr_db": None}
        frames = np.lib.stride_tricks.sliding_window_view(x, size)[::hop]
        level = np.asarray(_db((frames**2).mean(axis=1)))
        floor = max(float(np.percentile(level, 5)), float(level.max()) - REVERB_DYNAMIC_RANGE_DB)
        times = np.sort([_decay_rt60(d, floor, hop / SAMPLE_RATE)
                         for d in _free_decays(level, floor)])
        times = times[np.isfinite(times)]
        if len(times) < REVERB_MIN_DECAYS:
            return {"rt60_s": None, "drr_db": None}
        rt60 = float(np.median(times[: (len(times) + 1) // 2]))
        return {"rt60_s": rounded(rt60), "drr_db": None}


# ---------------------------------------------------------------------------------------------
# Tempo, key (essentia) and pitch (librosa)

MIN_MUSIC_SECONDS = 1.0
MUSIC_MAX_SECONDS = 60.0
ESSENTIA_RATE = 44100  # RhythmExtractor2013 assumes 44.1 kHz input
MAX_BEATS = 64
_SHARPS = {"Db": "C#", "Eb": "D#", "Gb": "F#", "Ab": "G#", "Bb": "A#"}


@functools.cache
def _essentia():
    """``essentia.standard``, imported quietly (its INFO lines would go to stdout)."""
    import essentia

    essentia.log.infoActive = False
    essentia.log.warningActive = False
    import essentia.standard

    return essentia.standard


@functools.cache
def _rhythm_extractor():
    # One per process (never pickled with the expert: a Ray task builds its own).
    return _essentia().RhythmExtractor2013(method="multifeature")


@functools.cache
def _key_extractor():
    return _essentia().KeyExtractor(sampleRate=SAMPLE_RATE)


def _music_excerpt(audio: np.ndarray) -> np.ndarray | None:
    """The first 60 s as float32, or None when under 1 s or silent."""
    x = _samples(audio)[: int(MUSIC_MAX_SECONDS * SAMPLE_RATE)]
    if len(x) < MIN_MUSIC_SECONDS * SAMPLE_RATE or _is_silent(x):
        return None
    return x.astype(np.float32)


class Tempo(Expert):
    """Tempo (BPM) and beat times.

    Method: essentia's RhythmExtractor2013, multifeature beat tracker (Zapata, Davies & Gomez
    2014, "Multi-feature beat tracking", IEEE/ACM TASLP 22(4)), on the first 60 s resampled to
    the 44.1 kHz it assumes. ``bpm`` is 60 / the Theil-Sen slope of beat time against beat index,
    which averages out the tracker's 11.6 ms frame grid (the extractor's own histogram BPM is
    quantised to that grid and read 117.5 for a 120 BPM click track); as with any tracker the
    metrical level can be half or double the one a listener taps. ``beats``: the first 64 beat
    times (s). ``confidence``: the tracker's own, 0..5.32 (above ~3.5: very reliable, under 1.5:
    unreliable); 0 when not measured. ``bpm`` is ``None`` (and ``beats`` empty) for clips under
    1 s, silent clips, or fewer than 4 beats.
    """

    name = "tempo"
    version = "1"
    kind = "signal"
    schema = {
        "bpm": "tempo, beats per minute; None when under 1 s, silent or < 4 beats",
        "beats": "first 64 beat times, s",
        "confidence": "beat tracker confidence 0..5.32 (essentia multifeature); 0 when none",
    }

    def available(self) -> Availability:
        return need_modules("essentia")

    def analyze(self, audio: np.ndarray, context: Mapping[str, Any]) -> dict[str, Any]:
        none = {"bpm": None, "beats": [], "confidence": 0.0}
        x = _music_excerpt(audio)
        if x is None:
            return none
        import soxr
        from scipy.stats import theilslopes

        resampled = soxr.resample(x, SAMPLE_RATE, ESSENTIA_RATE).astype(np.float32)
        _, beats, confidence, _, _ = _rhythm_extractor()(resampled)
        beats = np.asarray(beats, dtype=np.float64)
        if len(beats) < 4:
            return none
        period = float(theilslopes(beats)[0])
        if not period > 0:
            return none
        return {"bpm": rounded(60.0 / period, 2),
                "beats": [rounded(b) for b in beats[:MAX_BEATS]],
                "confidence": rounded(float(confidence))}


class Key(Expert):
    """Musical key and mode.

    Method: essentia's KeyExtractor at 16 kHz (HPCP chroma, Gomez 2006, "Tonal description of
    music audio signals", PhD thesis, UPF; matched against key profiles, default "bgate") on
    the first 60 s. ``key``: tonic with sharps ("C", "C#", ... "B"; essentia's flats are
    renamed), ``mode``: "major" / "minor", ``strength``: the profile correlation 0..1.
    Computed for any audible clip: on speech or noise the key is meaningless and its strength
    is not a reliable guard (white noise reads ~0.6), so read it together with a music tag.
    ``None`` key and mode (strength 0) for clips under 1 s or silent.
    """

    name = "key"
    version = "1"
    kind = "signal"
    schema = {
        "key": "tonic, 'C', 'C#', ..., 'B'; None when under 1 s or silent",
        "mode": "'major' or 'minor'; None when under 1 s or silent",
        "strength": "key profile correlation 0..1; 0 when none",
    }

    def available(self) -> Availability:
        return need_modules("essentia")

    def analyze(self, audio: np.ndarray, context: Mapping[str, Any]) -> dict[str, Any]:
        x = _music_excerpt(audio)
        if x is None:
            return {"key": None, "mode": None, "strength": 0.0}
        key, scale, strength = _key_extractor()(x)
        if scale not in ("major", "minor"):
            return {"key": None, "mode": None, "strength": 0.0}
        return {"key": _SHARPS.get(key, key), "mode": scale, "strength": rounded(float(strength))}


PITCH_FMIN_HZ = 65.41  # C2
PITCH_FMAX_HZ = 1046.5  # C6
PITCH_FRAME = 1024  # 64 ms: two periods of C2
PITCH_HOP = 320  # 20 ms
PITCH_MAX_SECONDS = 30.0  # pYIN costs ~0.1 s per second of audio


class Pitch(Expert):
    """Fundamental frequency statistics.

    Method: probabilistic YIN (Mauch & Dixon 2014, "pYIN: a fundamental frequency estimator
    using probabilistic threshold distributions", ICASSP) as ``librosa.pyin`` (64 ms frames,
    20 ms hop, C2..C6 = 65..1047 Hz) on the first 30 s. Over the voiced frames:
    ``f0_mean_hz``, ``f0_std_hz``, and ``f0_min_hz`` / ``f0_max_hz`` as the 5th and 95th
    percentiles (robust to pYIN's isolated octave jumps at voicing edges).
    ``voiced_ratio``: share of frames pYIN calls voiced. The statistics are ``None`` (ratio
    0) when no frame is voiced, the clip is silent, or shorter than 0.1 s.
    """

    name = "pitch"
    version = "1"
    kind = "signal"
    schema = {
        "f0_mean_hz": "mean f0 over voiced frames, Hz; None when nothing voiced",
        "f0_std_hz": "standard deviation of f0 over voiced frames, Hz; None when nothing voiced",
        "f0_min_hz": "5th percentile of f0 over voiced frames, Hz; None when nothing voiced",
        "f0_max_hz": "95th percentile of f0 over voiced frames, Hz; None when nothing voiced",
        "voiced_ratio": "share 0..1 of 20 ms frames that pYIN calls voiced",
    }

    def available(self) -> Availability:
        return need_modules("librosa")

    def analyze(self, audio: np.ndarray, context: Mapping[str, Any]) -> dict[str, Any]:
        out: dict[str, Any] = {"f0_mean_hz": None, "f0_std_hz": None, "f0_min_hz": None,
                               "f0_max_hz": None, "voiced_ratio": 0.0}
        x = _samples(audio)[: int(PITCH_MAX_SECONDS * SAMPLE_RATE)]
        if len(x) < 0.1 * SAMPLE_RATE or _is_silent(x):
            return out
        import librosa

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # librosa warns on frames it pads
            f0, voiced, _ = librosa.pyin(x.astype(np.float32), fmin=PITCH_FMIN_HZ,
                                         fmax=PITCH_FMAX_HZ, sr=SAMPLE_RATE,
                                         frame_length=PITCH_FRAME, hop_length=PITCH_HOP)
        out["voiced_ratio"] = rounded(float(np.mean(voiced)))
        f0 = f0[voiced & np.isfinite(f0)]
        if len(f0):
            out.update(f0_mean_hz=rounded(float(f0.mean()), 2),
                       f0_std_hz=rounded(float(f0.std()), 2),
                       f0_min_hz=rounded(float(np.percentile(f0, 5)), 2),
                       f0_max_hz=rounded(float(np.percentile(f0, 95)), 2))
        return out


SIGNAL_EXPERTS = (Loudness, Peak, Silence, Bandwidth, Snr, Reverb, Tempo, Key, Pitch)
