"""Emotion and age from Hugging Face audio-classification models (no weights ship offline).

:class:`AudioClassifier` wraps ``transformers.pipeline("audio-classification", model=...)``
around a local folder or a Hub id and reports the top label of the clip's speech (the VAD's
segments, concatenated; the whole clip when VAD did not run; ``None`` when VAD found no
speech). At most ``max_seconds`` of speech are classified, so a long clip costs no more than
a short one.

Defaults (downloaded on first use when online; neither has a PyPI-shipped copy):

- ``emotion``: ``superb/wav2vec2-base-superb-er`` (Apache-2.0; wav2vec2-base fine-tuned on
  IEMOCAP's four classes neutral / happy / angry / sad; SUPERB's labels ``neu``, ``hap``,
  ``ang``, ``sad`` are spelled out).
- ``age``: ``versae/wav2vec2-base-finetuned-coscan-age_group`` (Apache-2.0; wav2vec2-base
  fine-tuned on age groups of the Norwegian Coscan speech corpus; its card reports 0.64 test
  accuracy, so it is a weak default, chosen because it loads with the stock pipeline (audEERING's
  age model needs custom head code and is CC-BY-NC-SA). Pass a better model where you have one.

Offline: :func:`hub_model_status` says whether a model can load without the network: a local
folder with ``config.json``, or a Hub id whose ``config.json`` is in the Hugging Face cache.
Otherwise, when ``HF_HUB_OFFLINE`` (or ``TRANSFORMERS_OFFLINE``) is set, the expert is
unavailable with that reason. ``available()`` never touches the network; when online it
cannot know that the Hub is reachable, so a failed download shows up when the model loads.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Mapping
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from midashenglm.curation.experts.base import (
    AVAILABLE,
    SAMPLE_RATE,
    Availability,
    Expert,
    need_modules,
    rounded,
    unavailable,
)
from midashenglm.curation.experts.vad import Reloadable, speech_audio, speech_segments

MIN_SAMPLES = SAMPLE_RATE // 10  # wav2vec2's convolutions need a few hundred samples


def hub_offline() -> bool:
    """Whether the Hugging Face Hub is switched off (``HF_HUB_OFFLINE`` / ``TRANSFORMERS_OFFLINE``).

    Read from the environment at call time (``huggingface_hub.constants`` reads it once, at
    import), so a user or a test can set it late.
    """
    for var in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"):
        if os.environ.get(var, "").strip().upper() in {"1", "ON", "YES", "TRUE"}:
            return True
    return False


def hub_model_status(model: str, filename: str = "config.json") -> Availability:
    """Whether ``model`` (a local folder or a Hub id) can be loaded here.

    A folder must hold ``filename``. A Hub id is fine when ``filename`` is in the Hugging Face
    cache, or when the Hub answers (it will be downloaded on load: one TLS handshake checks,
    no download); otherwise the reason says what to do.
    """
    path = Path(model).expanduser()
    if path.is_dir():
        if (path / filename).is_file():
            return AVAILABLE
        return unavailable(f"model folder {path} has no {filename}")
    # Hub ids are "name" or "owner/name"; anything else is meant as a path.
    looks_local = model.startswith((".", "/", "~")) or model.count("/") > 1 or "\\" in model
    if looks_local:
        return unavailable(f"model folder {path} does not exist")
    try:
        from huggingface_hub import try_to_load_from_cache
    except ImportError:
        return unavailable("needs huggingface_hub (pip install 'midashenglm[curate]')")
    cached = try_to_load_from_cache(model, filename)
    if isinstance(cached, str):
        return AVAILABLE
    if hub_offline():
        return unavailable(
            f"model {model!r} is not in the Hugging Face cache and HF_HUB_OFFLINE is set: "
            "download it once online (hf download) or pass a local folder")
    from midashenglm.evaluation.metrics.fense import hub_reachable

    if not hub_reachable():  # a few seconds here, not minutes of download retries per worker
        return unavailable(f"model {model!r} is not in the Hugging Face cache and the Hub "
                           "cannot be reached: download it once online or pass a local folder")
    return AVAILABLE


def _cached_or_local(model: str) -> bool:
    if Path(model).expanduser().is_dir():
        return True
    from huggingface_hub import try_to_load_from_cache

    return isinstance(try_to_load_from_cache(model, "config.json"), str)


class AudioClassifier(Reloadable, Expert):
    """Top label of a transformers audio-classification model on the clip's speech.

    Subclasses set ``name``, ``label_key`` (the output field for the label),
    ``default_model`` and optionally ``label_names`` (model label -> word).
    ``model``: a local folder or a Hub id (default ``default_model``); ``device``: a torch
    device string; ``max_seconds``: speech classified at most (the first seconds of it).

    Output: ``{label_key: str | None, "score": float | None}``; both None when VAD found no
    speech or the speech is under 0.1 s.
    """

    kind = "model"
    _transient = ("_pipe",)
    needs = ("vad",)
    label_key: ClassVar[str]
    default_model: ClassVar[str]
    label_names: ClassVar[Mapping[str, str]] = {}

    def __init__(self, model: str | os.PathLike[str] | None = None, device: str = "cpu",
                 max_seconds: float = 30.0) -> None:
        self.model = str(model) if model is not None else self.default_model
        self._chosen = model is not None  # the user named it: downloading it is fine
        self.device = device
        self.max_seconds = max_seconds
        self._pipe: Any = None
        self._lock = threading.Lock()

    def available(self) -> Availability:
        ok = need_modules("transformers", "torch")
        if not ok:
            return ok
        if not self._chosen and not _cached_or_local(self.model):
            # The default model is only used once it is on disk: a run never stalls on
            # download retries for an expert the user did not ask for.
            return unavailable(
                f"default model {self.model!r} is not downloaded: pass "
                f"--{self.name}-model {self.model} to download and use it")
        return hub_model_status(self.model)

    def load(self) -> None:
        if self._pipe is not None:
            return
        from transformers import pipeline

        self._pipe = pipeline("audio-classification", model=self.model, device=self.device)

    def empty(self) -> dict[str, Any]:
        return {self.label_key: None, "score": None}

    def analyze(self, audio: np.ndarray, context: Mapping[str, Any]) -> dict[str, Any]:
        segs = speech_segments(context)
        if segs is not None and not segs:
            return self.empty()
        x = speech_audio(audio, segs) if segs is not None else np.asarray(audio, np.float32)
        x = x[:int(self.max_seconds * SAMPLE_RATE)]
        if len(x) < MIN_SAMPLES:
            return self.empty()
        self.load()
        with self._lock:
            top = self._pipe({"raw": x, "sampling_rate": SAMPLE_RATE}, top_k=1)[0]
        label = str(top["label"])
        return {self.label_key: self.label_names.get(label, label), "score": rounded(top["score"])}

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "model": self.model}


class Emotion(AudioClassifier):
    """Speech emotion (default: ``superb/wav2vec2-base-superb-er``, 4 IEMOCAP classes)."""

    name = "emotion"
    version = "1"
    label_key = "emotion"
    default_model = "superb/wav2vec2-base-superb-er"
    label_names = {"neu": "neutral", "hap": "happy", "ang": "angry", "sad": "sad"}
    schema = {"emotion": "top emotion label of the speech, or None without speech",
              "score": "its probability, 0..1, or None"}


class Age(AudioClassifier):
    """Speaker age group (default: ``versae/wav2vec2-base-finetuned-coscan-age_group``; weak)."""

    name = "age"
    version = "1"
    label_key = "age"
    default_model = "versae/wav2vec2-base-finetuned-coscan-age_group"
    schema = {"age": "top age-group label of the speech, or None without speech",
              "score": "its probability, 0..1, or None"}
