"""Training samples and evaluation items from the known truth of a ``data synth`` corpus.

Every task has one fixed prompt and one rule that reads its answer from a clip's truth row
(``manifest.jsonl`` of ``midashenglm data synth``, see docs/data.md); a rule returns None
where the truth does not define the answer unambiguously, and the clip gets no item of that
task. Answers are short (a word, a label, a transcript), for a small decoder.

==================  ==============================================================  ===============
task                prompt -> answer                                                metric
==================  ==============================================================  ===============
transcription       the ``transcribe`` command's prompt with the truth's language    wer
                    tag -> the spoken text (speech clips)
gender              "What is the gender of the speaker?" -> female / male            gender_accuracy
language            "Which language is spoken?" -> English, German, ...              accuracy
sound               "What sound event is heard?" -> the sound's label                accuracy
instrument          "What instrument is playing?" -> the GM instrument name          accuracy
instrument-family   "Which instrument family is playing?" -> the GM family           accuracy
tempo               "What is the tempo?" -> "about 120 BPM" (rounded)                 accuracy
key                 "What key is the music in?" -> "C major"                          accuracy
category            "Is this speech, music or a sound? Answer with one word."        qa_accuracy
                    -> speech / music / sound
reverberant,        yes/no questions about the acoustics (:data:`ACOUSTIC_PROMPTS`)   qa_accuracy
band-limited,
clipped, noisy
==================  ==============================================================  ===============

The metric is the one of ``midashenglm evaluate`` (docs/evaluation-metrics.md) that scores an
evaluation row of the task; the reference field follows it: ``text`` for ``wer``, ``label``
for the accuracies (for tempo the rounded BPM, e.g. ``"120"``), ``answer`` and ``choices``
for ``qa_accuracy``.

What the truth defines unambiguously (the rules below):

* ``key``: not for unpitched programs (GM families "percussive" and "sound effects", and
  the drum kit, whose key is None); ``category``: not for music played by a GM sound-effect
  program (a "gunshot" or "applause" piece sounds like a sound event).
* The acoustic questions answer **yes** when the corpus applied the treatment (``rt60_s``,
  ``bandwidth_hz``, ``clipped``; for ``noisy``: a mixed-in background, or added noise at
  :data:`NOISY_MAX_SNR_DB` dB SNR or louder), and **no** only for a clip without a
  background whose source is known to be free of it (:data:`CLEAN_SOURCES`): a real
  recording may be reverberant, band-limited or noisy of its own (asterisk music on hold
  is 8 kHz audio), FluidSynth renders with its own reverb, an engine hum has no high band
  to lose, rain, wind and an engine are noise, and the overdriven and distortion guitars
  are distorted on purpose. Anything else gets no item.
"""

from __future__ import annotations

import os
import random
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from midashenglm.errors import UserError

# ISO 639-1 -> the answer of the language task (the corpus speaks the first five).
LANGUAGE_NAMES = {"en": "English", "de": "German", "fr": "French", "es": "Spanish",
                  "it": "Italian", "zh": "Chinese", "ja": "Japanese", "ko": "Korean",
                  "ru": "Russian", "pt": "Portuguese", "nl": "Dutch", "pl": "Polish"}
YES_NO = ("yes", "no")
CATEGORY_CHOICES = ("speech", "music", "sound")
# GM families whose pieces have no key (the drum kit has key None in the truth).
UNPITCHED_FAMILIES = frozenset({"percussive", "sound effects"})
# Programs that are distorted on purpose: "clipped? no" would be wrong for them.
DISTORTED_INSTRUMENTS = frozenset({"overdriven guitar", "distortion guitar"})
# Added noise quieter than this (higher SNR, dB) is too faint for "noisy? yes".
NOISY_MAX_SNR_DB = 20.0
# Per acoustic question: the main-event sources that are known to be free of what it asks
# about (``dsp`` stands for every ``dsp:...`` sound).
CLEAN_SOURCES: dict[str, frozenset[str]] = {
    "reverberant": frozenset({"espeak-ng", "flite", "dsp"}),
    "band-limited": frozenset({"espeak-ng", "flite", "fluidsynth"}),
    "clipped": frozenset({"espeak-ng", "flite", "dsp", "fluidsynth"}),
    "noisy": frozenset({"espeak-ng", "flite", "dsp", "fluidsynth"}),
}
NOISE_LIKE_SOUNDS = frozenset({"rain", "wind", "engine humming"})
ACOUSTIC_PROMPTS = {
    "reverberant": "Is the recording reverberant? Answer yes or no.",
    "band-limited": "Is the audio band-limited, like a telephone line? Answer yes or no.",
    "clipped": "Is the audio clipped? Answer yes or no.",
    "noisy": "Is there noise or another sound in the background? Answer yes or no.",
}
FORMATS = ("train", "eval")

Row = dict[str, Any]


@dataclass(frozen=True)
class Task:
    """One task: its name, prompt (a string, or a function of the truth row), the rule that
    reads the answer from a truth row (None: not defined for this clip), the metric of
    ``midashenglm evaluate`` that scores it, and for closed questions the choices."""

    name: str
    prompt: str | Callable[[Row], str]
    answer: Callable[[Row], str | None]
    metric: str
    choices: tuple[str, ...] = ()
    label: Callable[[Row], str] | None = None  # the accuracy reference when not the answer

    def prompt_for(self, row: Row) -> str:
        return self.prompt(row) if callable(self.prompt) else self.prompt


@dataclass(frozen=True)
class TaskItem:
    """One question about one clip.

    ``id``: ``"<clip id>:<task>"``; ``audio``: the clip's path; ``reference``: what the
    metric compares the model's output with (the transcript, the label, or the closed
    answer); ``lang``: the speech's ISO 639-1 code (transcription); ``value``: the numeric
    truth where there is one (tempo in BPM); ``duration``: seconds.
    """

    id: str
    clip: str
    task: str
    prompt: str
    answer: str
    audio: Path
    metric: str
    reference: str
    choices: tuple[str, ...] = ()
    lang: str | None = None
    value: float | None = None
    duration: float | None = None

    def train_row(self, folder: Path) -> Row:
        """A training-manifest row (docs/data.md), ``audio`` relative to ``folder``."""
        row: Row = {"id": self.id, "audio": _relative(self.audio, folder), "prompt": self.prompt,
                    "answer": self.answer, "dataset": f"synth-{self.task}", "task": self.task}
        if self.duration is not None:
            row["duration"] = self.duration
        return row

    def eval_row(self, folder: Path) -> Row:
        """A row that ``midashenglm run`` answers and ``midashenglm evaluate`` scores (with
        ``--metric`` this item's metric): ``dataset_name``, ``prompt``, ``audio`` (relative to
        ``folder``) and the reference field of the metric."""
        row: Row = {"id": self.id, "dataset_name": f"synth-{self.task}", "task": self.task,
                    "clip": self.clip, "audio": _relative(self.audio, folder),
                    "prompt": self.prompt, "metric": self.metric}
        if self.metric in ("wer", "cer"):
            row.update(text=self.reference, lang=self.lang)
        elif self.metric == "qa_accuracy":
            row.update(answer=self.reference, choices=list(self.choices))
        else:
            row["label"] = [self.reference]
        return row


def _relative(path: Path, folder: Path) -> str:
    return os.path.relpath(os.path.abspath(path), os.path.abspath(folder))


# ------------------------------------------------------------------------------ rules
def _source(row: Row) -> str | None:
    """The main event's source: "espeak-ng", "flite", "asterisk", "dsp", "tuxpaint"..."""
    for kind in ("speech", "sound", "music"):
        if row.get(kind):
            return str(row[kind].get("source") or "").split(":")[0].split("/")[0] or None
    return None


def _speech(field: str) -> Callable[[Row], str | None]:
    return lambda row: (row.get("speech") or {}).get(field) or None


def _language(row: Row) -> str | None:
    return LANGUAGE_NAMES.get((row.get("speech") or {}).get("language") or "")


def _transcribe_prompt(row: Row) -> str:
    from midashenglm.inference.commands import transcribe_prompt

    return transcribe_prompt(row["speech"]["language"])


def _gender(row: Row) -> str | None:
    gender = (row.get("speech") or {}).get("gender")
    return gender if gender in ("female", "male") else None


def _sound(row: Row) -> str | None:
    return (row.get("sound") or {}).get("label") or None


def _music(field: str) -> Callable[[Row], str | None]:
    return lambda row: (row.get("music") or {}).get(field) or None


def _tempo_bpm(row: Row) -> int | None:
    tempo = (row.get("music") or {}).get("tempo")
    return round(float(tempo)) if tempo else None


def _tempo(row: Row) -> str | None:
    bpm = _tempo_bpm(row)
    return None if bpm is None else f"about {bpm} BPM"


def _key(row: Row) -> str | None:
    music = row.get("music") or {}
    if not music.get("key") or not music.get("mode") or music.get("family") in UNPITCHED_FAMILIES:
        return None
    return f"{music['key']} {music['mode']}"


def _category(row: Row) -> str | None:
    kind = str(row.get("category", "")).split()[-1:]
    if not kind or kind[0] not in CATEGORY_CHOICES:
        return None
    if kind[0] == "music" and (row.get("music") or {}).get("family") == "sound effects":
        return None
    return kind[0]


def _clean(row: Row, question: str) -> bool:
    """No background and a main-event source known to be free of what ``question`` asks."""
    if row.get("background") or _source(row) not in CLEAN_SOURCES[question]:
        return False
    if question == "clipped" and (row.get("music") or {}).get("instrument") in DISTORTED_INSTRUMENTS:
        return False
    return not (question == "noisy" and _sound(row) in NOISE_LIKE_SOUNDS)


def _yes_no(question: str, applied: Callable[[Row], bool | None]) -> Callable[[Row], str | None]:
    """yes when the corpus applied it; no where :func:`_clean`; else None (a ``None`` from
    ``applied`` means: applied too faintly to ask)."""
    def rule(row: Row) -> str | None:
        done = applied(row)
        if done:
            return "yes"
        return "no" if done is False and _clean(row, question) else None
    return rule


def _acoustics(row: Row) -> Row:
    return row.get("acoustics") or {}


def _noisy(row: Row) -> bool | None:
    if row.get("background"):
        return True
    noise = _acoustics(row).get("noise")
    if not noise:
        return False
    return True if float(noise.get("snr_db", 0.0)) <= NOISY_MAX_SNR_DB else None


def _label_of(rule: Callable[[Row], Any]) -> Callable[[Row], str]:
    return lambda row: str(rule(row))


TASK_LIST: tuple[Task, ...] = (
    Task("transcription", _transcribe_prompt, _speech("text"), "wer"),
    Task("gender", "What is the gender of the speaker?", _gender, "gender_accuracy"),
    Task("language", "Which language is spoken?", _language, "accuracy"),
    Task("sound", "What sound event is heard?", _sound, "accuracy"),
    Task("instrument", "What instrument is playing?", _music("instrument"), "accuracy"),
    Task("instrument-family", "Which instrument family is playing?", _music("family"),
         "accuracy"),
    Task("tempo", "What is the tempo?", _tempo, "accuracy", label=_label_of(_tempo_bpm)),
    Task("key", "What key is the music in?", _key, "accuracy"),
    Task("category", "Is this speech, music or a sound? Answer with one word.", _category,
         "qa_accuracy", CATEGORY_CHOICES),
    Task("reverberant", ACOUSTIC_PROMPTS["reverberant"],
         _yes_no("reverberant", lambda r: _acoustics(r).get("rt60_s") is not None),
         "qa_accuracy", YES_NO),
    Task("band-limited", ACOUSTIC_PROMPTS["band-limited"],
         _yes_no("band-limited", lambda r: _acoustics(r).get("bandwidth_hz") is not None),
         "qa_accuracy", YES_NO),
    Task("clipped", ACOUSTIC_PROMPTS["clipped"],
         _yes_no("clipped", lambda r: bool(_acoustics(r).get("clipped"))), "qa_accuracy", YES_NO),
    Task("noisy", ACOUSTIC_PROMPTS["noisy"], _yes_no("noisy", _noisy), "qa_accuracy", YES_NO),
)
TASKS: dict[str, Task] = {task.name: task for task in TASK_LIST}


def select_tasks(names: str | Sequence[str] | None) -> list[Task]:
    """The tasks named (comma-separated string or list), in :data:`TASK_LIST` order; all when
    None or empty. An unknown name is a :class:`UserError`."""
    if isinstance(names, str):
        names = [n.strip() for n in names.split(",") if n.strip()]
    if not names:
        return list(TASK_LIST)
    unknown = [n for n in names if n not in TASKS]
    if unknown:
        raise UserError(f"unknown task(s) {', '.join(unknown)}; choose from {', '.join(TASKS)}")
    return [t for t in TASK_LIST if t.name in names]


# ------------------------------------------------------------------------------ items
def task_items(row: Row, corpus_dir: str | os.PathLike, tasks: Iterable[Task] | None = None
               ) -> list[TaskItem]:
    """The items of one truth ``row`` of the corpus in ``corpus_dir`` (its ``audio`` is
    relative to that folder), one per task whose answer the truth defines, in task order."""
    audio = Path(corpus_dir) / row["audio"]
    items = []
    for task in TASK_LIST if tasks is None else tasks:
        answer = task.answer(row)
        if answer is None:
            continue
        reference = task.label(row) if task.label is not None else answer
        lang = (row.get("speech") or {}).get("language") if task.metric == "wer" else None
        value = float(row["music"]["tempo"]) if task.name == "tempo" else None
        items.append(TaskItem(f"{row['id']}:{task.name}", str(row["id"]), task.name,
                              task.prompt_for(row), answer, audio, task.metric, reference,
                              task.choices, lang, value, row.get("duration")))
    return items


def read_corpus(path: str | os.PathLike) -> tuple[Path, list[Row]]:
    """``(corpus folder, truth rows)`` of a corpus folder or its ``manifest.jsonl``.

    A torn last line (a corpus still being written) is left out; any other line that is not
    a JSON object, or a missing manifest, is a :class:`UserError`.
    """
    from midashenglm import jsonl

    path = Path(path)
    manifest = path / "manifest.jsonl" if path.is_dir() else path
    if not manifest.is_file():
        raise UserError(f"{path}: no corpus manifest (expected a `midashenglm data synth` folder "
                        "with manifest.jsonl)")
    lines = list(jsonl.parse_lines(manifest))
    rows = []
    for position, (number, row, problem) in enumerate(lines, 1):
        if row is None:
            if position == len(lines):
                break  # being written
            raise UserError(f"{manifest}, line {number}: {problem}")
        if "id" not in row or "audio" not in row or "category" not in row:
            raise UserError(f"{manifest}, line {number}: not a synth truth row (needs id, audio "
                            "and category)")
        rows.append(row)
    return manifest.parent, rows


def corpus_items(corpora: Iterable[str | os.PathLike], tasks: Iterable[Task] | None = None, *,
                 per_clip: int | None = None, seed: int = 0) -> list[TaskItem]:
    """Every item of the corpora, clip by clip; ``per_clip`` keeps at most that many items per
    clip, drawn at random (the draw depends on ``seed`` and the clip's id alone)."""
    tasks = list(TASK_LIST if tasks is None else tasks)
    if per_clip is not None and per_clip < 1:
        raise UserError(f"--per-clip must be at least 1, got {per_clip}")
    items: list[TaskItem] = []
    for corpus in corpora:
        folder, rows = read_corpus(corpus)
        for row in rows:
            mine = task_items(row, folder, tasks)
            if per_clip is not None and len(mine) > per_clip:
                keep = set(random.Random(f"{seed}:{row['id']}").sample(range(len(mine)), per_clip))
                mine = [item for k, item in enumerate(mine) if k in keep]
            items.extend(mine)
    return items


def write_items(items: Sequence[TaskItem], out: str | os.PathLike, fmt: str = "train") -> Path:
    """Write ``items`` as ``fmt`` rows (``train``: a training manifest; ``eval``: a
    ``run``/``evaluate`` manifest) to ``out`` (JSONL, replaced atomically); audio paths
    relative to its folder."""
    from midashenglm import jsonl

    if fmt not in FORMATS:
        raise UserError(f"--format {fmt!r}: choose {' or '.join(FORMATS)}")
    out = Path(out)
    if out.is_dir():
        raise UserError(f"--out {out} is a folder: give a .jsonl file path")
    out.parent.mkdir(parents=True, exist_ok=True)
    folder = out.parent
    partial = out.with_name(out.name + ".partial")
    with partial.open("w", encoding="utf-8") as fh:
        jsonl.append_rows(fh, (item.train_row(folder) if fmt == "train" else item.eval_row(folder)
                               for item in items))
    partial.replace(out)
    return out
