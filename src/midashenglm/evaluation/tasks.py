"""The benchmark tasks of the MiDashengLM paper: dataset, prompt, metric and loader of each.

The prompts are the published prompt table (``evaluate/prompt.csv`` of the official
repository, copied in ``../shared/fixtures/official-outputs/prompts.csv``) for
MiDashengLM and for the two baselines the paper compares with. They are facts: change
them and the numbers stop being comparable with the paper's.

``dataset_name`` is what the result rows carry (the official JSONL files use
``LibriSpeech_test-clean``, ``NSynth``, ``VoxCeleb-Gender``, ``FSD50K``,
``MuChoMusic``, ``AutoACD``, ``MusicQA``); the scorer picks its metric from it and the
report finds the paper's numbers by it.
"""

from __future__ import annotations

import string
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from midashenglm.errors import UserError

# Prompt styles: the model whose published prompt is used.
MIDASHENGLM = "midashenglm"
QWEN = "qwen2.5-omni"
KIMI = "kimi-audio"
PROMPT_STYLES = (MIDASHENGLM, QWEN, KIMI)


LETTERS = string.ascii_uppercase

# Task categories: they decide which reference fields an item carries.
ASR = "asr"  # text: transcript
CAPTION = "caption"  # text: one reference or a list of references
CLASSIFICATION = "classification"  # label: [one label]
GENDER = "gender"  # label: ["male"] or ["female"]
MULTILABEL = "multilabel"  # label: [labels]
CLOSED_QA = "closed_qa"  # question, choices, answer
OPEN_QA = "open_qa"  # question, answer
MECAT_CAPTION = "mecat_caption"  # text: references of the item's subtask, subtask, domain
MECAT_QA = "mecat_qa"  # question, answer, category, domain


@dataclass(frozen=True)
class Prompt:
    """A user prompt (a template over the item's fields) and an optional system prompt."""

    text: str
    system: str | None = None


@dataclass(frozen=True)
class Task:
    """One benchmark: what to load, what to ask, how to score."""

    name: str  # the --task name
    dataset_name: str  # dataset_name of the result rows
    category: str
    metric: str  # a metric of midashenglm.evaluation.metrics: wer, fense, qa_accuracy, mecat...
    loader: str  # a name in midashenglm.evaluation.loaders.LOADERS
    prompts: dict[str, Prompt]  # prompt style -> prompt
    lang: str = "en"
    description: str = ""
    loader_options: dict[str, Any] = field(default_factory=dict)
    paper_table: int | None = None

    def prompt(self, item: dict[str, Any], style: str = MIDASHENGLM) -> Prompt:
        """The prompt of ``item`` in ``style``: the template filled with the item's fields."""
        if style not in self.prompts:
            raise UserError(
                f"task {self.name}: no {style!r} prompt (it has {', '.join(self.prompts)})"
            )
        template = self.prompts[style]
        if self.category == MECAT_CAPTION:
            template = MECAT_CAPTION_PROMPTS[item["subtask"]][style]
        fields = {"question": item.get("question", "")}
        if self.category == CLOSED_QA:
            choices = list(item.get("choices") or [])
            fields["options"] = "\n".join(f"({LETTERS[i]}) {c}" for i, c in enumerate(choices))
            fields["inline_options"] = ", ".join(
                f"({LETTERS[i]}) {c}" for i, c in enumerate(choices)
            )
        return Prompt(template.text.format(**fields), template.system)


# ------------------------------------------------------------------------- prompts
def _qwen(prompt: str, system: str) -> Prompt:
    return Prompt(prompt, system)


_ASR_KIMI = Prompt("Please transcribe the spoken content into written text.")
_CAPTION_QWEN = _qwen("Listen to the provided audio and produce an audio caption.",
                      "You are an audio caption model.")
_CAPTION_KIMI = Prompt("Please write an audio caption describing the following audio.")
_SINGLE_SOUND_QWEN = _qwen("Classify the single-label sound with keywords in English.",
                           "You are a single-label sound classification model.")
_MULTI_SOUND_QWEN = _qwen("Classify the multi-label sound with keywords in English.",
                          "You are a multi-label sound classification model.")


def _asr(lang_tag: str, language: str, *, typo: bool = False) -> dict[str, Prompt]:
    # The published MiDashengLM prompt for Vietnamese really says "in to".
    ours = f"Transcribe the speech {'in to' if typo else 'into'} text <|{lang_tag}|>"
    return {
        MIDASHENGLM: Prompt(ours),
        QWEN: _qwen(f"Transcribe the {language} audio into text without any punctuation marks.",
                    "You are a speech recognition model."),
        KIMI: _ASR_KIMI,
    }


def _caption(ours: str) -> dict[str, Prompt]:
    return {MIDASHENGLM: Prompt(ours), QWEN: _CAPTION_QWEN, KIMI: _CAPTION_KIMI}


_OPEN_QA = {
    MIDASHENGLM: Prompt("{question} Answer with 1-2 sentences"),
    QWEN: _qwen("{question}", "You are a helpful assistant."),
    KIMI: Prompt("{question}"),
}
_CLOSED_QA = {
    MIDASHENGLM: Prompt("{question}\n{options}\nAnswer with a single Letter: "),
    QWEN: _qwen("{question} Please choose the answer from the following options: "
                "{inline_options}.", "You are an audio question answering model."),
    KIMI: Prompt("{question}\n{options}\nAnswer with the option's letter from the given "
                 "choices directly and only give the best option."),
}
# MECAT-QA has no row in the prompt table; MECAT's own example asks the bare question.
_MECAT_QA = {MIDASHENGLM: Prompt("{question}"), QWEN: _qwen("{question}",
             "You are a helpful assistant."), KIMI: Prompt("{question}")}

MECAT_SUBTASKS = ("short", "long", "speech", "music", "sound", "environment")
MECAT_CAPTION_PROMPTS: dict[str, dict[str, Prompt]] = {
    "short": {
        MIDASHENGLM: Prompt("What is happening in this audio? Provide a brief caption within "
                            "15 words."),
        QWEN: _qwen("Listen to the audio and provide a caption for this audio within 15 words.",
                    "You are a helpful assistant."),
        KIMI: Prompt("Provide a caption for this audio within 15 words"),
    },
    "long": {
        MIDASHENGLM: Prompt("What is happening in this audio? Provide a detailed caption within "
                            "1-2 sentences."),
        QWEN: _qwen("Listen to this audio and provide a detailed caption for this audio within "
                    "1-2 sentences.", "You are a helpful assistant."),
        KIMI: Prompt("Provide a caption for this audio within 1-2 sentences"),
    },
    "speech": {
        MIDASHENGLM: Prompt("What is the speech content can be heard in this audio?"),
        QWEN: _qwen("Listen to the audio and provide a caption describing the speech content in "
                    "this audio.", "You are a helpful assistant."),
        KIMI: Prompt("Provide a caption for the speech content in this audio"),
    },
    "music": {  # "cotent" as published
        MIDASHENGLM: Prompt("What is the musical content in this audio?"),
        QWEN: _qwen("Listen to the audio and provide a caption for the music cotent in this "
                    "audio.", "You are a helpful assistant."),
        KIMI: Prompt("Provide a caption for the music cotent in this audio"),
    },
    "sound": {
        MIDASHENGLM: Prompt("What are the sound effects in this audio?"),
        QWEN: _qwen("Listen to the audio and provide a general sound excluding speech and "
                    "music.", "You are a helpful assistant."),
        KIMI: Prompt("Provide a caption for general sound excluding speech and music"),
    },
    "environment": {
        MIDASHENGLM: Prompt("What is the acoustic environment and recording quality of this "
                            "audio?"),
        QWEN: _qwen("Listen to the audio and provide a caption for quality or acoustic "
                    "environment for this audio.", "You are a helpful assistant."),
        KIMI: Prompt("Provide a caption for quality or acoustic environment for this audio"),
    },
}


# --------------------------------------------------------------------------- tasks
def _task(name: str, dataset_name: str, category: str, metric: str, loader: str,
          prompts: dict[str, Prompt], description: str, table: int | None, *,
          lang: str = "en", **options: Any) -> Task:
    return Task(name, dataset_name, category, metric, loader, prompts, lang=lang,
                description=description, loader_options=options, paper_table=table)


def _static(ours: str, qwen: Prompt, kimi: str) -> dict[str, Prompt]:
    return {MIDASHENGLM: Prompt(ours), QWEN: qwen, KIMI: Prompt(kimi)}


_TASK_LIST: list[Task] = [
    # ASR (table 10)
    _task("librispeech-test-clean", "LibriSpeech_test-clean", ASR, "wer", "librispeech",
          _asr("en", "English"), "LibriSpeech test-clean, 2620 utterances", 10,
          split="test-clean"),
    _task("librispeech-test-other", "LibriSpeech_test-other", ASR, "wer", "librispeech",
          _asr("en", "English"), "LibriSpeech test-other, 2939 utterances", 10,
          split="test-other"),
    _task("peoples-speech", "PeoplesSpeech", ASR, "wer", "transcripts", _asr("en", "English"),
          "People's Speech test split (transcript table + audio)", 10),
    _task("aishell2-mic", "AISHELL2_Mic", ASR, "cer", "transcripts", _asr("zh", "Chinese"),
          "AISHELL-2 test set, Mic channel (wav.scp + trans.txt)", 10, lang="zh",
          subset="Mic"),
    _task("aishell2-ios", "AISHELL2_iOS", ASR, "cer", "transcripts", _asr("zh", "Chinese"),
          "AISHELL-2 test set, iOS channel (wav.scp + trans.txt)", 10, lang="zh",
          subset="iOS"),
    _task("aishell2-android", "AISHELL2_Android", ASR, "cer", "transcripts",
          _asr("zh", "Chinese"), "AISHELL-2 test set, Android channel (wav.scp + trans.txt)",
          10, lang="zh", subset="Android"),
    _task("gigaspeech2-id", "GigaSpeech2_Indo", ASR, "wer", "transcripts",
          _asr("id", "Indonesian"), "GigaSpeech 2 Indonesian test set", 10, lang="id"),
    _task("gigaspeech2-th", "GigaSpeech2_Thai", ASR, "wer", "transcripts", _asr("th", "Thai"),
          "GigaSpeech 2 Thai test set", 10, lang="th"),
    _task("gigaspeech2-vi", "GigaSpeech2_Viet", ASR, "wer", "transcripts",
          _asr("vi", "Vietnamese", typo=True), "GigaSpeech 2 Vietnamese test set", 10,
          lang="vi"),
    # Captioning (table 7)
    _task("musiccaps", "MusicCaps", CAPTION, "fense", "musiccaps",
          _caption("Caption this music track"), "MusicCaps (AudioSet eval clips by default)", 7),
    _task("songdescriber", "Songdescriber", CAPTION, "fense", "songdescriber",
          _caption("Caption this music track"), "Song Describer Dataset (valid subset)", 7),
    _task("audiocaps", "AudioCaps", CAPTION, "fense", "audiocaps",
          _caption("Write an audio caption describing the sound"),
          "AudioCaps test set, 5 references per clip", 7),
    _task("clotho", "ClothoV2", CAPTION, "fense", "clotho",
          _caption("Write an audio caption describing the sound"),
          "Clotho v2 evaluation split, 5 references per clip", 7),
    _task("autoacd", "AutoACD", CAPTION, "fense", "caption_table",
          _caption("Write an audio caption describing the sound"), "Auto-ACD test set", 7),
    # MECAT (tables 8 and 12)
    _task("mecat-caption", "MECAT-Caption", MECAT_CAPTION, "mecat", "mecat",
          MECAT_CAPTION_PROMPTS["long"],
          "MECAT-Caption test set: every clip asked all six caption prompts", 8,
          kind="caption"),
    *[
        _task(f"mecat-caption-{sub}", "MECAT-Caption", MECAT_CAPTION, "mecat", "mecat",
              MECAT_CAPTION_PROMPTS[sub], f"MECAT-Caption test set, {sub} captions only", 8,
              kind="caption", subtasks=(sub,))
        for sub in MECAT_SUBTASKS
    ],
    _task("mecat-qa", "MECAT-QA", MECAT_QA, "mecat", "mecat", _MECAT_QA,
          "MECAT-QA test set (6 question categories)", 12, kind="qa"),
    # Classification and paralinguistics (table 9)
    _task("voxceleb1", "VoxCeleb1", CLASSIFICATION, "accuracy", "voxceleb_pairs",
          _static("Are the two speakers in this utterance the same?",
                  _qwen("Are the two speakers in this audio the same? Only answer 'Same' or "
                        "'Different'.", "You are a helpful assistant."),
                  "This audio contains two speech segments. Please determine if they are spoken "
                  "by the same person. Answer with 'Same' or 'Different' only."),
          "VoxCeleb1 speaker verification: the two clips of a trial pair, joined", 9),
    _task("voxceleb-gender", "VoxCeleb-Gender", GENDER, "gender_accuracy", "voxceleb_gender",
          _static("What gender is the speaker?",
                  _qwen("Recognize the gender of the speaker with keywords in English.",
                        "You are a gender classification model."),
                  "Identify the gender of the speaker in the audio. Answer only 'male' or "
                  "'female'."),
          "VoxCeleb1 test speakers' utterances with the speaker's gender", 9),
    _task("voxlingua107", "VoxLingua107", CLASSIFICATION, "accuracy", "voxlingua107",
          _static("What language is spoken?",
                  _qwen("Recognize the language of the speaker with keywords in English.",
                        "You are a language classification model."),
                  "Identify the language of the spoken content. Answer only with the language "
                  "name."),
          "VoxLingua107 dev set (language folders), labels as English language names", 9),
    _task("vggsound", "VGGSound", CLASSIFICATION, "accuracy", "vggsound",
          _static("Which label describes the sound?", _SINGLE_SOUND_QWEN,
                  "Which label describes the sound?"),
          "VGGSound test split", 9),
    _task("cochlscene", "CochlScene", CLASSIFICATION, "accuracy", "cochlscene",
          _static("what's the environmental sound heard?", _SINGLE_SOUND_QWEN,
                  "Classify the sound event with a keyword in English. Output only one label "
                  "and nothing else."),
          "CochlScene test split (13 scene folders)", 9),
    _task("nsynth", "NSynth", CLASSIFICATION, "accuracy", "nsynth",
          _static("What's the music instrument?",
                  _qwen("Recognize the music instrument with keywords in English.",
                        "You are a music instrument classification model."),
                  # Cut off like this in the published table.
                  "Classify the music instrument with a keyword in English. Output only one "
                  "label and noth"),
          "NSynth test set, instrument family", 9),
    _task("fma", "FMA", CLASSIFICATION, "accuracy", "fma",
          _static("What's the music genre?",
                  _qwen("Recognize the music genre with keywords in English.",
                        "You are a music genre classification model."),
                  "Identify the single most appropriate music genre label. Output only one "
                  "label and nothing else."),
          "Free Music Archive (large) test split, top-level genre", 9),
    _task("fsdkaggle2018", "FSDKaggle2018", CLASSIFICATION, "accuracy", "fsdkaggle2018",
          _static("What sound is heard?", _SINGLE_SOUND_QWEN,
                  "Classify the environmental sound with a keyword in English. Output only one "
                  "label and nothing else."),
          "FSDKaggle2018 test set (1600 clips)", 9),
    _task("audioset", "AudioSet", MULTILABEL, "map", "audioset",
          _static("Which labels describe the sound?", _MULTI_SOUND_QWEN,
                  "Which labels describe the sound?"),
          "AudioSet evaluation segments", 9),
    _task("fsd50k", "FSD50K", MULTILABEL, "map", "fsd50k",
          _static("Which labels describe the sound?", _MULTI_SOUND_QWEN,
                  "Which labels describe the sound?"),
          "FSD50K evaluation set (10231 clips)", 9),
    _task("esc50", "ESC-50", CLASSIFICATION, "accuracy", "esc50",
          _static("What sound is heard?", _SINGLE_SOUND_QWEN,
                  "Classify the environmental sound with a keyword in English. Output only one "
                  "label and nothing else."),
          "ESC-50 (not in the paper; FSDKaggle2018's prompt)", None),
    # Question answering (table 11)
    _task("mmau", "MMAU", CLOSED_QA, "qa_accuracy", "mmau", _CLOSED_QA,
          "MMAU test-mini (sound, music, speech)", 11),
    _task("muchomusic", "MuChoMusic", CLOSED_QA, "qa_accuracy", "muchomusic", _CLOSED_QA,
          "MuChoMusic (1187 questions, 4 options)", 11),
    _task("musicqa", "MusicQA", OPEN_QA, "fense", "qa_table", _OPEN_QA,
          "MusicQA evaluation split", 11),
    _task("audiocaps-qa", "AudioCaps-QA", OPEN_QA, "fense", "qa_table", _OPEN_QA,
          "AudioCaps-QA (questions about AudioCaps clips)", 11),
]

TASKS: dict[str, Task] = {task.name: task for task in _TASK_LIST}


def _key(name: str) -> str:
    return "".join(ch for ch in name.lower() if ch.isalnum())


def get_task(name: str) -> Task:
    """A task by its --task name or its dataset_name (case, dashes and spaces do not matter)."""
    if name in TASKS:
        return TASKS[name]
    key = _key(name)
    for task in _TASK_LIST:
        if key in (_key(task.name), _key(task.dataset_name)):
            return task
    raise UserError(f"--task {name!r}: unknown task; choose one of {', '.join(TASKS)}")


def task_for_dataset(dataset_name: str) -> Task | None:
    """The task whose result rows carry ``dataset_name``, if any."""
    key = _key(dataset_name)
    return next((t for t in _TASK_LIST if _key(t.dataset_name) == key), None)


def iter_items(task: Task, data: str | Path, **options: Any) -> Iterator[dict[str, Any]]:
    """The items of ``task`` from ``data``: the dataset's own folder, or a manifest file.

    Each item holds ``id`` (unique, the resume key), ``audio`` (the name written to the
    result rows), ``source`` (what to load: a path, bytes, or a list of paths to join),
    the reference fields of the task's category, ``lang`` and any extra fields.
    """
    from midashenglm.evaluation.loaders import get_loader, load_manifest

    path = Path(data).expanduser()
    if not path.exists():
        raise UserError(f"--data {path}: no such file or folder")
    merged = {**task.loader_options, **options}
    if path.is_file():
        raw = load_manifest(path, **merged)
    else:
        raw = get_loader(task.loader)(path, **merged)
    for item in raw:
        yield finalize_item(task, item)


def finalize_item(task: Task, item: dict[str, Any]) -> dict[str, Any]:
    """Give every item the fields its task needs, in the shape the result rows use."""
    item = dict(item)
    item.setdefault("lang", task.lang)
    if "id" not in item or item["id"] in (None, ""):
        item["id"] = str(item.get("audio"))
    item["id"] = str(item["id"])
    if task.category in (CLASSIFICATION, GENDER, MULTILABEL) and "label" in item:
        label = item["label"]
        item["label"] = [str(x) for x in label] if isinstance(label, list | tuple) else [str(label)]
    if task.category == CLOSED_QA:
        _map_answer(item)
    if task.category == MECAT_CAPTION and "subtask" not in item:
        item["subtask"] = "long"
    return item


# Prompt styles whose closed-QA prompt asks for the option's letter.
LETTER_ANSWER_STYLES = (MIDASHENGLM, KIMI)


def scored_answer(item: dict[str, Any], style: str = MIDASHENGLM) -> str:
    """The closed-QA answer in the form ``style``'s prompt asks for, as result rows store it.

    The official string match (dasheng-lm ``compute_qa_acc.py``, MMAU ``evaluation.py``)
    compares ``answer`` with the output as they are, so the row holds the letter when the
    prompt asks for one (as the official MuChoMusic result file does) and the option text
    when the prompt asks to choose among the listed options (Qwen2.5-Omni's). An answer
    that maps to no option stays as the dataset gave it.
    """
    key = "answer_letter" if style in LETTER_ANSWER_STYLES else "answer_text"
    return str(item.get(key, item.get("answer", "")))


def _map_answer(item: dict[str, Any]) -> None:
    """Know a closed-QA answer both as its letter and as its option text.

    MuChoMusic files store the letter, MMAU the option text; the row keeps the
    dataset's own form in ``answer`` and both in ``answer_letter`` and ``answer_text``.
    """
    choices = [str(c) for c in item.get("choices") or []]
    item["choices"] = choices
    answer = str(item.get("answer", "")).strip()
    letter = answer.strip("()").upper()
    if answer in choices:
        item["answer_text"] = answer
        item["answer_letter"] = LETTERS[choices.index(answer)]
    elif len(letter) == 1 and letter in LETTERS[: len(choices)]:
        item["answer_letter"] = letter
        item["answer_text"] = choices[LETTERS.index(letter)]
    else:
        lowered = [c.lower().strip() for c in choices]
        if answer.lower() in lowered:
            index = lowered.index(answer.lower())
            item["answer_text"], item["answer_letter"] = choices[index], LETTERS[index]
