"""Controlled acoustics for the synthetic corpus: mixing at an exact SNR, room reverberation
with a known RT60, band limiting, clipping and coloured background noise.

All audio is 1-D float32 at :data:`~midashenglm.data.synth.base.RATE` (16 kHz). Every function
returns a new array of the input's length (``background_noise`` returns ``n`` samples).
"""

from __future__ import annotations

import numpy as np

from midashenglm.data.synth.base import RATE
from midashenglm.errors import UserError

NOISE_KINDS = ("white", "pink", "brown")
# Rooms for :func:`reverberate`: width/length/height ranges in metres, RT60 range in seconds.
ROOM_MIN_M = (3.0, 3.0, 2.4)
ROOM_MAX_M = (10.0, 8.0, 4.0)
RT60_RANGE_S = (0.2, 0.9)
WALL_MARGIN_M = 0.5  # source and microphone stay this far from every wall
RT60_DECAY_DB = 30  # T30
MAX_IMAGE_ORDER = 150  # caps the image-source order that Sabine inversion asks for (run time)


def _power(x: np.ndarray) -> float:
    return float(np.mean(np.square(x, dtype=np.float64)))


def mix(signal: np.ndarray, background: np.ndarray, snr_db: float) -> np.ndarray:
    """``signal`` plus ``background`` scaled so that the signal-to-background power ratio (mean
    square over the whole signal) is exactly ``snr_db`` dB. The background is tiled or cut to
    the signal's length; the signal keeps its level (the sum may exceed the signal's peak)."""
    signal = np.asarray(signal, dtype=np.float32)
    background = np.asarray(background, dtype=np.float32)
    if signal.ndim != 1 or background.ndim != 1 or not background.size:
        raise UserError("mix needs 1-D signal and non-empty 1-D background arrays")
    reps = -(-len(signal) // len(background))
    background = np.tile(background, reps)[: len(signal)]
    p_sig, p_bg = _power(signal), _power(background)
    if p_sig == 0 or p_bg == 0:
        raise UserError("mix needs a non-silent signal and background to set an SNR")
    gain = np.sqrt(p_sig / (p_bg * 10 ** (snr_db / 10)))
    return (signal.astype(np.float64) + gain * background).astype(np.float32)


def reverberate(audio: np.ndarray, rng: np.random.Generator, rt60: float | None = None
                ) -> tuple[np.ndarray, float]:
    """``audio`` as heard in a random shoebox room aiming at reverberation time ``rt60`` (s;
    drawn uniformly from :data:`RT60_RANGE_S` when None), and the room's actual RT60 (s).

    The room (dimensions from :data:`ROOM_MIN_M`..:data:`ROOM_MAX_M`, source and microphone at
    random points at least :data:`WALL_MARGIN_M` from the walls) is simulated with
    pyroomacoustics' image-source method; wall absorption and image order come from inverting
    Sabine's formula (``pyroomacoustics.inverse_sabine``; Sabine 1922, "Collected papers on
    acoustics"). Sabine assumes a diffuse field, which an image-source shoebox with uniform
    walls is not (flat rooms decay up to ~1.5x slower than asked), so the RT60 returned is the
    one measured on the simulated impulse response itself: Schroeder backward integration,
    -5 to -35 dB fit extrapolated to 60 dB (T30; ``pyroomacoustics.experimental.measure_rt60``,
    Schroeder 1965, JASA 37(3)). The output is aligned on the direct path (no propagation
    delay) and cut to the input's length, so a tail beyond the end is lost.
    """
    import pyroomacoustics as pra
    from scipy.signal import fftconvolve

    audio = np.asarray(audio, dtype=np.float32)
    if rt60 is None:
        rt60 = float(rng.uniform(*RT60_RANGE_S))
    dims = rng.uniform(ROOM_MIN_M, ROOM_MAX_M)
    absorption, max_order = pra.inverse_sabine(rt60, dims)
    room = pra.ShoeBox(dims, fs=RATE, materials=pra.Material(absorption),
                       max_order=min(int(max_order), MAX_IMAGE_ORDER))
    room.add_source(rng.uniform(WALL_MARGIN_M, dims - WALL_MARGIN_M))
    room.add_microphone(rng.uniform(WALL_MARGIN_M, dims - WALL_MARGIN_M))
    room.compute_rir()
    rir = np.asarray(room.rir[0][0], dtype=np.float64)
    rir = rir[int(np.argmax(np.abs(rir))):]
    measured = float(pra.experimental.measure_rt60(rir, fs=RATE, decay_db=RT60_DECAY_DB))
    out = fftconvolve(audio.astype(np.float64), rir)[: len(audio)]
    return out.astype(np.float32), round(measured, 3)


def band_limit(audio: np.ndarray, cutoff_hz: float, order: int = 10) -> np.ndarray:
    """``audio`` low-passed at ``cutoff_hz`` (Hz): a zero-phase Butterworth filter of ``order``
    (applied forwards and backwards, so -6 dB at the cutoff and about ``12 * order`` dB per
    octave above it), as a telephone line or a low-rate codec would band-limit it."""
    from scipy.signal import butter, sosfiltfilt

    if not 0 < cutoff_hz < RATE / 2:
        raise UserError(f"band_limit cutoff {cutoff_hz} Hz is not between 0 and {RATE // 2} Hz")
    sos = butter(order, cutoff_hz, btype="low", fs=RATE, output="sos")
    return sosfiltfilt(sos, np.asarray(audio, dtype=np.float64)).astype(np.float32)


def clip(audio: np.ndarray, level: float) -> np.ndarray:
    """``audio`` hard-clipped at ``±level`` (linear full-scale amplitude, e.g. 0.1 on a signal
    peaking at 0.5), as an overdriven recorder would."""
    if level <= 0:
        raise UserError(f"clip level must be positive, got {level}")
    return np.clip(np.asarray(audio, dtype=np.float32), -level, level)


def background_noise(rng: np.random.Generator, n: int, kind: str = "white") -> np.ndarray:
    """``n`` samples of Gaussian noise whose power spectrum falls as ``1/f**0`` (white),
    ``1/f`` (pink, -3 dB per octave) or ``1/f**2`` (brown, -6 dB per octave), shaped in the
    frequency domain (DC removed), peak-normalised to 0.5."""
    from midashenglm.data.synth.base import normalise

    if kind not in NOISE_KINDS:
        raise UserError(f"unknown noise kind {kind!r}; choose one of {', '.join(NOISE_KINDS)}")
    white = rng.standard_normal(n)
    if kind == "white" or n < 2:
        return normalise(white)
    spectrum = np.fft.rfft(white)
    freqs = np.fft.rfftfreq(n, d=1 / RATE)
    exponent = {"pink": 0.5, "brown": 1.0}[kind]  # amplitude ~ f^-exponent
    scale = np.zeros_like(freqs)
    scale[1:] = freqs[1:] ** -exponent
    return normalise(np.fft.irfft(spectrum * scale, n))
