"""A corpus of clips in the six categories (SYSTEM.md section 8), each with its known truth.

``synthesize(out, split="train", hours=20)`` writes ``out/clips/NNNNNNN.wav`` (16 kHz mono) and
``out/manifest.jsonl``: one row per clip with ``id``, ``audio`` (relative path), ``duration``,
``split``, ``category`` and the truth of what is in it: ``speech`` (text, language, voice,
gender, source), ``sound`` (label, source), ``music`` (instrument, program, family, tempo,
key, mode, source), ``background`` (what was mixed under the main event and at which SNR) and
``acoustics`` (RT60 of the simulated room, band limit, clipping, added noise and its SNR).
``midashenglm curate`` reads the manifest as it is (its ``audio`` column).

Clip ``i`` of a corpus is made from its own random generator (``seed``, ``i``), so a run
interrupted at any point continues where it stopped and writes the same corpus.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np

from midashenglm.data.synth.base import RATE, Sound, Speech, Split, normalise

CATEGORIES = ("pure speech", "mixed speech", "pure sound", "mixed sound", "pure music",
              "mixed music")
MIN_SECONDS, MAX_SECONDS = 1.0, 12.0
# Chances that a clip gets each acoustic treatment (a clip may get several).
P_REVERB, P_BAND_LIMIT, P_CLIP, P_NOISE = 0.3, 0.15, 0.05, 0.2


class Sources:
    """The three sources for one split, built once (they index files and sentences)."""

    def __init__(self, split: Split) -> None:
        from midashenglm.data.synth.music import MusicSource
        from midashenglm.data.synth.sounds import SoundSource
        from midashenglm.data.synth.speech import SpeechSource

        self.speech = SpeechSource(split)
        self.music = MusicSource(split)
        self.sound = SoundSource(split)


def _fit(audio: np.ndarray, n: int) -> np.ndarray:
    """``audio`` cut or looped to ``n`` samples."""
    if len(audio) >= n:
        return audio[:n]
    reps = int(np.ceil(n / max(1, len(audio))))
    return np.tile(audio, reps)[:n]


def _speech(sources: Sources, rng: np.random.Generator, max_seconds: float) -> Speech:
    """One or two utterances of one voice (a pause between), at most ``max_seconds``."""
    first = sources.speech.sample(rng)
    if len(first.audio) / RATE < max_seconds / 2 and rng.random() < 0.5:
        second = sources.speech.sample(rng)
        if second.voice == first.voice and second.language == first.language:
            gap = np.zeros(int(rng.uniform(0.2, 0.6) * RATE), np.float32)
            first = Speech(np.concatenate([first.audio, gap, second.audio]),
                           f"{first.text} {second.text}", first.language, first.voice,
                           first.gender, first.source)
    first.audio = first.audio[: int(max_seconds * RATE)]
    return first


def make_clip(index: int, split: Split, seed: int, sources: Sources) -> tuple[np.ndarray, dict]:
    """Clip ``index``: ``(audio (n,) float32 16 kHz, truth row without id/audio)``."""
    from midashenglm.data.synth import acoustics

    rng = np.random.default_rng([seed, index, 0 if split == "train" else 1])
    category = CATEGORIES[index % len(CATEGORIES)]  # balanced, in turn
    seconds = float(rng.uniform(MIN_SECONDS + 1.0, MAX_SECONDS))
    truth: dict[str, Any] = {"category": category, "speech": None, "sound": None,
                             "music": None, "background": None}
    kind = category.split()[1]
    if kind == "speech":
        speech = _speech(sources, rng, MAX_SECONDS)
        audio = normalise(speech.audio)
        truth["speech"] = {k: v for k, v in asdict(speech).items() if k != "audio"}
    elif kind == "sound":
        sound = sources.sound.sample(rng, seconds)
        audio = normalise(sound.audio)
        truth["sound"] = {"label": sound.label, "source": sound.source}
    else:
        music = sources.music.sample(rng, seconds)
        audio = normalise(music.audio)
        truth["music"] = {k: v for k, v in asdict(music).items() if k != "audio"}
    if category.startswith("mixed"):
        audio, truth["background"] = _background(kind, audio, rng, sources)
    audio, truth["acoustics"] = _acoustics(audio, rng, acoustics)
    audio = np.clip(audio, -1.0, 1.0).astype(np.float32)
    truth["duration"] = round(len(audio) / RATE, 3)
    return audio, truth


def _background(kind: str, audio: np.ndarray, rng: np.random.Generator, sources: Sources
                ) -> tuple[np.ndarray, dict[str, Any]]:
    """Something else under the main event, at an SNR that keeps the main event dominant."""
    from midashenglm.data.synth import acoustics

    n = len(audio)
    choices = {"speech": ("sound", "music"), "sound": ("sound", "noise"),
               "music": ("speech", "sound")}[kind]
    what = choices[int(rng.integers(len(choices)))]
    snr = float(rng.uniform(5.0, 15.0))
    record: dict[str, Any] = {"kind": what, "snr_db": round(snr, 2)}
    if what == "speech":
        other = sources.speech.sample(rng)
        bed = other.audio
        record.update(text=other.text, language=other.language, gender=other.gender)
    elif what == "music":
        other_music = sources.music.sample(rng, n / RATE)
        bed = other_music.audio
        record.update(instrument=other_music.instrument)
    elif what == "sound":
        other_sound: Sound = sources.sound.sample(rng, n / RATE)
        bed = other_sound.audio
        record.update(label=other_sound.label)
    else:
        noise_kind = ("white", "pink", "brown")[int(rng.integers(3))]
        bed = acoustics.background_noise(rng, n, noise_kind)
        record.update(label=f"{noise_kind} noise")
    return acoustics.mix(audio, _fit(np.asarray(bed, np.float32), n), snr), record


def _acoustics(audio: np.ndarray, rng: np.random.Generator, acoustics: Any
               ) -> tuple[np.ndarray, dict[str, Any]]:
    record: dict[str, Any] = {"rt60_s": None, "bandwidth_hz": None, "clipped": False,
                              "noise": None}
    if rng.random() < P_REVERB:
        audio, rt60 = acoustics.reverberate(audio, rng)
        record["rt60_s"] = round(float(rt60), 3)
    if rng.random() < P_NOISE:
        snr = float(rng.uniform(10.0, 30.0))
        noise_kind = ("white", "pink", "brown")[int(rng.integers(3))]
        audio = acoustics.mix(audio, acoustics.background_noise(rng, len(audio), noise_kind), snr)
        record["noise"] = {"kind": noise_kind, "snr_db": round(snr, 2)}
    if rng.random() < P_BAND_LIMIT:
        cutoff = float(rng.choice([3400.0, 4000.0, 5500.0]))
        audio = acoustics.band_limit(audio, cutoff)
        record["bandwidth_hz"] = cutoff
    audio = normalise(audio, float(rng.uniform(0.3, 0.9)))
    if rng.random() < P_CLIP:
        audio = acoustics.clip(normalise(audio, 1.6), 1.0)
        record["clipped"] = True
    return audio, record


def synthesize(out: str | os.PathLike, *, split: Split = "train", hours: float | None = None,
               clips: int | None = None, seed: int = 0,
               progress: Callable[[dict[str, Any]], None] | None = None) -> Path:
    """Write (or continue) a corpus of ``hours`` of audio or ``clips`` clips into ``out``.

    Returns the manifest's path. Clips already in the manifest are kept (resumable). Raises
    :class:`~midashenglm.errors.UserError` when neither or both of ``hours``/``clips`` is given.
    """
    import soundfile as sf

    from midashenglm import jsonl
    from midashenglm.errors import UserError

    if (hours is None) == (clips is None):
        raise UserError("give the corpus size as hours or as a number of clips (one of them)")
    out = Path(out)
    (out / "clips").mkdir(parents=True, exist_ok=True)
    manifest = out / "manifest.jsonl"
    done: dict[int, dict[str, Any]] = {}
    if manifest.exists():
        jsonl.repair_tail(manifest)
        done = {row["index"]: row for _, row in jsonl.existing_rows(manifest) if "index" in row}
    total_seconds = sum(r["duration"] for r in done.values())
    sources = Sources(split)
    with manifest.open("a", encoding="utf-8") as fh:
        index = 0
        while (clips is not None and index < clips) or (
                hours is not None and total_seconds < hours * 3600):
            if index in done:
                index += 1
                continue
            audio, truth = make_clip(index, split, seed, sources)
            name = f"clips/{split}-{seed}-{index:07d}.wav"
            sf.write(out / name, audio, RATE, subtype="PCM_16")
            row = {"id": f"{split}-{seed}-{index:07d}", "index": index, "audio": name,
                   "split": split, "seed": seed, **truth}
            jsonl.append_rows(fh, [row])
            total_seconds += truth["duration"]
            if progress is not None:
                progress(row)
            index += 1
    return manifest


def read_truth(manifest: str | os.PathLike) -> list[dict[str, Any]]:
    """The rows of a corpus manifest, in order."""
    return [json.loads(line) for line in Path(manifest).read_text().splitlines() if line.strip()]
