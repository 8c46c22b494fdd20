"""Types every corpus source shares, and the rule that keeps train and held-out apart.

A sentence, a voice, a sound file or a melody seed belongs to one split only, decided by a
stable hash of its key (:func:`split_of`), so that held-out scores measure generalisation to
new sentences, voices and recordings, not memory.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Literal

import numpy as np

RATE = 16000
Split = Literal["train", "heldout"]
HELDOUT_SHARE = 0.15


def split_of(key: str, heldout_share: float = HELDOUT_SHARE) -> Split:
    """``"heldout"`` for about ``heldout_share`` of all keys, ``"train"`` for the rest; stable
    across runs and machines (SHA-1 of the key)."""
    digest = hashlib.sha1(key.encode("utf-8")).digest()
    return "heldout" if int.from_bytes(digest[:4], "big") / 2**32 < heldout_share else "train"


def normalise(audio: np.ndarray, peak: float = 0.5) -> np.ndarray:
    """``audio`` as float32 with its peak at ``peak`` (silence stays silence)."""
    audio = np.asarray(audio, dtype=np.float32)
    top = float(np.max(np.abs(audio))) if audio.size else 0.0
    return audio * (peak / top) if top > 0 else audio


@dataclass
class Speech:
    """Spoken ``text`` in ``language`` (ISO 639-1) by ``voice`` (``gender`` "male"/"female");
    ``source``: "espeak-ng", "flite", "asterisk"..."""

    audio: np.ndarray
    text: str
    language: str
    voice: str
    gender: str
    source: str


@dataclass
class Music:
    """A rendered piece: General MIDI ``program`` (0-127, or -1 for the drum kit) named
    ``instrument`` in ``family``, ``tempo`` in BPM, ``key`` ("C", "F#"...) and ``mode``
    ("major"/"minor"); real recordings have None where the truth is unknown."""

    audio: np.ndarray
    instrument: str | None
    program: int | None
    family: str | None
    tempo: float | None
    key: str | None
    mode: str | None
    source: str


@dataclass
class Sound:
    """A sound event labelled ``label`` (plain English, e.g. "dog barking"), from ``source``."""

    audio: np.ndarray
    label: str
    source: str
