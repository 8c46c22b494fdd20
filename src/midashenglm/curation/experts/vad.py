"""Voice activity: where in a clip someone speaks (Silero VAD, weights shipped by ``silero-vad``).

The Silero VAD v5 TorchScript model (MIT, ``silero_vad/data/silero_vad.jit``, 2 MB) gives a
speech probability for every 32 ms window (512 samples at 16 kHz);
``silero_vad.get_speech_timestamps`` turns those into segments with hysteresis (enter speech
above ``threshold``, leave below ``threshold - 0.15``), drops speech shorter than
``min_speech_s``, bridges pauses shorter than ``min_silence_s`` and pads each segment by
``pad_s``. The package's model code does not import torchaudio (only its file I/O helpers
do, lazily, and they are not used here).

Speed: about 100x real time on one CPU core.
"""

from __future__ import annotations

import threading
import warnings
from collections.abc import Mapping
from typing import Any, ClassVar

import numpy as np

from midashenglm.curation.experts.base import (
    SAMPLE_RATE,
    Availability,
    Expert,
    need_modules,
    need_resource,
    rounded,
)

NO_SPEECH: dict[str, Any] = {"speech_ratio": 0.0, "speech_segments": [], "speech": False}


class Reloadable:
    """Mixin: pickles without loaded weights and locks, which are rebuilt on the other side.

    Ray ships expert instances to its actors; a loaded model (a TorchScript module, a
    CTranslate2 model) or a lock would not pickle, and should not travel anyway: the actor
    calls :meth:`Expert.load` itself. Subclasses list the attributes in ``_transient``.
    """

    _transient: ClassVar[tuple[str, ...]] = ()

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state.pop("_lock", None)
        for key in self._transient:
            state[key] = None
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._lock = threading.Lock()


class Vad(Reloadable, Expert):
    """Speech segments of a clip.

    Output: ``speech_ratio`` (share of the clip's duration inside speech segments, 0..1),
    ``speech_segments`` (``[[start_s, end_s], ...]``, in order, not overlapping), ``speech``
    (at least one segment). Experts that need speech (``asr``, ``speakers``, ``gender``)
    read these from their ``context``.
    """

    name = "vad"
    version = "1"
    kind = "model"
    _transient = ("_model",)
    schema = {
        "speech_ratio": "share of the clip inside speech segments, 0..1",
        "speech_segments": "[[start_s, end_s], ...] speech segments in seconds",
        "speech": "bool: at least one speech segment",
    }

    def __init__(self, threshold: float = 0.5, min_speech_s: float = 0.25,
                 min_silence_s: float = 0.1, pad_s: float = 0.03) -> None:
        self.threshold = threshold
        self.min_speech_s = min_speech_s
        self.min_silence_s = min_silence_s
        self.pad_s = pad_s
        self._model: Any = None
        # The TorchScript model keeps recurrent state between windows: one clip at a time.
        self._lock = threading.Lock()

    def available(self) -> Availability:
        ok = need_modules("silero_vad", "torch")
        if not ok:
            return ok
        from midashenglm.curation import resources

        return need_resource(resources.silero_vad_path)

    def load(self) -> None:
        if self._model is not None:
            return
        from silero_vad.utils_vad import init_jit_model

        from midashenglm.curation import resources

        with warnings.catch_warnings():  # torch >= 2.9 deprecates jit.load; it still works
            warnings.simplefilter("ignore", DeprecationWarning)
            self._model = init_jit_model(str(resources.silero_vad_path()))

    def analyze(self, audio: np.ndarray, context: Mapping[str, Any]) -> dict[str, Any]:
        import torch
        from silero_vad import get_speech_timestamps

        self.load()
        n = len(audio)
        if n == 0:
            return dict(NO_SPEECH)
        with self._lock:
            stamps = get_speech_timestamps(
                torch.from_numpy(np.ascontiguousarray(audio, dtype=np.float32)), self._model,
                threshold=self.threshold, sampling_rate=SAMPLE_RATE,
                min_speech_duration_ms=int(self.min_speech_s * 1000),
                min_silence_duration_ms=int(self.min_silence_s * 1000),
                speech_pad_ms=int(self.pad_s * 1000))
        segs = [[rounded(s["start"] / SAMPLE_RATE), rounded(min(s["end"], n) / SAMPLE_RATE)]
                for s in stamps]
        speech_samples = sum(min(s["end"], n) - s["start"] for s in stamps)
        return {"speech_ratio": rounded(min(speech_samples / n, 1.0)),
                "speech_segments": segs, "speech": bool(segs)}

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "model": "silero-vad (silero_vad.jit)",
                "threshold": self.threshold}


def speech_segments(context: Mapping[str, Any]) -> list[tuple[float, float]] | None:
    """The VAD's segments from an expert's ``context``: None when VAD did not run.

    Helper for experts that need ``vad``: they decide what to do without it (usually: treat
    the whole clip as speech).
    """
    vad = context.get("vad")
    if not isinstance(vad, Mapping) or "speech_segments" not in vad:
        return None
    return [(float(a), float(b)) for a, b in vad["speech_segments"]]


def speech_audio(audio: np.ndarray, segs: list[tuple[float, float]]) -> np.ndarray:
    """The samples inside ``segs`` (seconds), concatenated; float32, possibly empty."""
    pieces = [audio[int(round(a * SAMPLE_RATE)):int(round(b * SAMPLE_RATE))] for a, b in segs]
    pieces = [p for p in pieces if len(p)]
    if not pieces:
        return np.zeros(0, dtype=np.float32)
    return np.concatenate(pieces).astype(np.float32, copy=False)
