"""Speaker gender (voice2gender: an XGBoost model on 20 pitch and spectrum features).

``voice2gender`` (installed with ``--no-deps``; it needs only numpy and the ``xgboost``
module from ``xgboost-cpu``) ships a gradient-boosted classifier trained on the features of
the "voice gender" data set (mean/min/max F0 from the cepstrum, spectral statistics below
280 Hz, dominant frequency). It gives one answer for the clip: with several speakers, the
voice that dominates the speech. Run on the VAD's speech segments, concatenated (up to
``max_seconds``), so silence and noise between phrases do not enter the statistics.

Checked: 8/8 right across flite, festival, Piper, real and espeak voices; the espeak voices in
``tests/test_curation_speech.py`` at confidence > 0.99.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from midashenglm.curation.experts.base import (
    SAMPLE_RATE,
    Availability,
    Expert,
    need_modules,
    rounded,
)
from midashenglm.curation.experts.vad import Reloadable, speech_audio, speech_segments

MIN_SAMPLES = 2048  # voice2gender's analysis frame


class Gender(Reloadable, Expert):
    """``{"gender": "male" | "female" | None, "confidence": float | None}``.

    ``confidence`` = ``|p(female) - 0.5| * 2`` (0: a coin toss, 1: certain). Both None when
    VAD found no speech, the speech is shorter than 2048 samples, or voice2gender finds no
    voiced frame in it (F0 outside 50..280 Hz: whispering, a child's or a sung high voice).
    """

    name = "gender"
    version = "1"
    kind = "model"
    _transient = ("_predict",)
    needs = ("vad",)
    schema = {"gender": "'male' | 'female' | None (no speech)",
              "confidence": "|p(female) - 0.5| * 2, 0..1, or None"}

    def __init__(self, max_seconds: float = 60.0) -> None:
        self.max_seconds = max_seconds
        self._predict: Any = None

    def available(self) -> Availability:
        return need_modules("voice2gender", "xgboost")

    def load(self) -> None:
        if self._predict is None:
            from voice2gender import predict  # loads the booster at import (1.5 s)

            self._predict = predict

    def analyze(self, audio: np.ndarray, context: Mapping[str, Any]) -> dict[str, Any]:
        none = {"gender": None, "confidence": None}
        segs = speech_segments(context)
        if segs is not None and not segs:
            return none
        x = speech_audio(audio, segs) if segs is not None else np.asarray(audio, np.float32)
        x = x[:int(self.max_seconds * SAMPLE_RATE)]
        if len(x) < MIN_SAMPLES or not np.any(x):
            return none
        self.load()
        pcm = (np.clip(x, -1.0, 1.0) * 32767.0).round().astype("<i2").tobytes()
        try:
            result = self._predict([pcm], sample_rate=SAMPLE_RATE)
        except ValueError:
            return none  # no voiced frames with a usable F0: no answer rather than a guess
        female = float(result["female_probability"])
        return {"gender": "female" if female >= 0.5 else "male",
                "confidence": rounded(result["confidence"])}

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "model": "voice2gender (XGBoost)"}
