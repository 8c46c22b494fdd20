"""The expert interface every analysis of a clip implements.

An expert is a small class: a ``name`` (its key in a clip's metadata), a ``version`` (bumped
when its output changes, so a rerun knows old metadata is stale), a ``schema`` (output field ->
description with unit), and :meth:`Expert.available`, which says *why not* when its package or
weights are missing; the pipeline then runs the experts it has and records which ran.

Experts see 16 kHz mono float32 audio (``midashenglm.audio.load_audio``). Segment-level experts
(sound-event tags, pitch, speakers) work on 2 s segments as the paper does (SYSTEM.md section 8):
:func:`segments` cuts them. An expert may read the outputs of experts listed in ``needs``
(e.g. ASR runs only where VAD found speech); the pipeline runs experts in an order that
respects ``needs`` and passes earlier outputs in ``context``.

Outputs are JSON values only (floats, ints, str, bool, None, lists, dicts), rounded to a few
decimals by the expert so that reruns and Ray/local runs write identical files.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

import numpy as np

SAMPLE_RATE = 16000
SEGMENT_SECONDS = 2.0  # the paper's tagging hop: "sound-event tags every 2 s"


@dataclass(frozen=True)
class Availability:
    """Whether an expert can run here; ``reason`` says why not (shown to the user, recorded)."""

    ok: bool
    reason: str = ""

    def __bool__(self) -> bool:
        return self.ok


AVAILABLE = Availability(True)


def unavailable(reason: str) -> Availability:
    return Availability(False, reason)


def need_modules(*modules: str, extra: str = "curate") -> Availability:
    """Available when every module imports; else names the missing ones and how to install.

    Only looks the modules up (``importlib.util.find_spec``): nothing heavy is imported.
    """
    missing = [m for m in modules if importlib.util.find_spec(m) is None]
    if missing:
        return unavailable(f"needs {', '.join(missing)} (pip install 'midashenglm[{extra}]')")
    return AVAILABLE


def need_resource(locate: Callable[[], object]) -> Availability:
    """Available when ``locate()`` (a :mod:`midashenglm.curation.resources` function) finds
    the shipped weights; else its message, which names the package to install."""
    from midashenglm.curation.resources import ResourceMissing

    try:
        locate()
    except ResourceMissing as e:
        return unavailable(str(e))
    return AVAILABLE


class ExpertError(Exception):
    """An expert could not analyse this clip (recorded in the clip's metadata; the run goes on)."""


class Expert:
    """Base class. Subclasses set the class attributes and implement :meth:`analyze`.

    ``kind``: ``"signal"`` (no weights: cheap CPU tasks on Ray) or ``"model"`` (weights loaded
    once by :meth:`load`: an actor pool on Ray).
    """

    name: ClassVar[str]
    version: ClassVar[str] = "1"
    kind: ClassVar[Literal["signal", "model"]] = "signal"
    schema: ClassVar[Mapping[str, str]] = {}
    needs: ClassVar[tuple[str, ...]] = ()

    def available(self) -> Availability:
        return AVAILABLE

    def load(self) -> None:
        """Load weights (once per process or Ray actor). Called before the first :meth:`analyze`."""

    def analyze(self, audio: np.ndarray, context: Mapping[str, Any]) -> dict[str, Any]:
        """Analyse one clip. ``audio``: (n,) float32 at 16 kHz, n >= 1.

        ``context``: outputs of experts that ran before (by name; those in ``needs`` are
        present unless they failed or were unavailable, in which case the expert decides).
        Returns a dict with exactly the keys of ``schema``. Raises :class:`ExpertError`
        (or any exception: the pipeline records it for this clip and expert and goes on).
        """
        raise NotImplementedError

    def describe(self) -> dict[str, Any]:
        """What ran, for the run record: name, version, kind, plus subclass details (model)."""
        return {"name": self.name, "version": self.version, "kind": self.kind}


def segments(audio: np.ndarray, seconds: float = SEGMENT_SECONDS, *, min_seconds: float = 0.5
             ) -> Iterator[tuple[float, float, np.ndarray]]:
    """``(start_s, end_s, samples)`` of consecutive ``seconds``-long segments of 16 kHz audio.

    The last segment is kept when it has at least ``min_seconds`` (or when it is the only one).
    """
    hop = int(round(seconds * SAMPLE_RATE))
    n = len(audio)
    for start in range(0, max(n, 1), hop):
        chunk = audio[start:start + hop]
        if start > 0 and len(chunk) < min_seconds * SAMPLE_RATE:
            break
        yield round(start / SAMPLE_RATE, 3), round((start + len(chunk)) / SAMPLE_RATE, 3), chunk


def rounded(value: float | None, digits: int = 3) -> float | None:
    """``value`` rounded for stable JSON; NaN and +-inf become None."""
    if value is None or not np.isfinite(value):
        return None
    return round(float(value), digits)
