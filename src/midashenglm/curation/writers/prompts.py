"""The prompts the LLM writers send, and the checks on what comes back.

Bump :data:`PROMPT_VERSION` whenever a prompt's text changes: it is part of every cache key,
so a new prompt never reuses answers to the old one.

* Caption: one short general caption (<= :data:`CAPTION_WORDS` words) fusing speech content,
  sound events, music and acoustics, ACAVCaps style, as plain text.
* QA: exactly five MECAT-QA pairs as a JSON array
  ``[{"subcategory", "question", "answer"}]`` over the six sub-categories.

A re-ask after the grounding check rejected an answer adds ``feedback``: the terms the facts
do not support, named in the user message (and in the cache key).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

from midashenglm.curation.facts import ClipFacts
from midashenglm.curation.qa import QA_PAIRS, SUBCATEGORIES, MalformedAnswer

PROMPT_VERSION = "curation-v1"
CAPTION_WORDS = 40  # what the prompt asks for
CAPTION_MAX_WORDS = 60  # what is accepted (models overshoot a little; longer is rejected)

CAPTION_SYSTEM = (
    "You write audio captions for a training data set. You are given facts about one audio "
    "clip, produced by expert models: sound-event tags (AudioSet labels with confidence), "
    "speech analysis (language, transcript, speakers, gender, emotion), music analysis "
    "(genres, instruments, tempo, key) and signal measurements (noise, reverberation, "
    "bandwidth, clipping, loudness). Write ONE short general caption, at most "
    f"{CAPTION_WORDS} words, that fuses what is said, the sound events, the music and the "
    "recording conditions into one or two fluent sentences, like: 'A man speaks English in a "
    "calm tone about the weather while cars pass by; the recording is noisy and "
    "reverberant.' Rules: mention only sounds, instruments, languages, genders and numbers of "
    "people that the facts list; never invent places, objects or people; you may paraphrase "
    "the transcript briefly; do not mention confidence scores, durations or the facts "
    "themselves. Answer with the caption only, as plain text."
)

QA_SYSTEM = (
    "You write question-answer pairs about one audio clip for a training data set, in the "
    "style of MECAT-QA. You are given facts about the clip produced by expert models. Write "
    f"exactly {QA_PAIRS} QA pairs, each from one of these sub-categories (use at least four "
    f"different ones): {', '.join(SUBCATEGORIES)}. Questions ask about what can be heard; "
    "answers are one or two short sentences and use only the facts: never name a sound, "
    "instrument, language, gender or number of people that the facts do not list. Answer "
    'with a JSON array only: [{"subcategory": "...", "question": "...", "answer": "..."}, '
    "...]."
)


class WriterError(RuntimeError):
    """A writer gave up on a clip (timeouts, server errors, malformed answers after every
    retry); the message holds the last error. The pipeline records it for the clip."""


TRANSCRIPT_ONLY = "(only the transcript)"  # the marker of a caption that only quotes the speech


def feedback_text(unsupported: Sequence[str]) -> str:
    """The re-ask instruction naming the terms the grounding check rejected."""
    parts = []
    terms = [t for t in unsupported if t != TRANSCRIPT_ONLY]
    if terms:
        listed = ", ".join(f'"{t}"' for t in terms)
        parts.append(f"Your previous answer mentioned {listed}, which the facts do not "
                     "support. Write it again without them, using only what the facts list.")
    if TRANSCRIPT_ONLY in unsupported:
        parts.append("Your previous answer only repeated the transcript. Describe the audio "
                     "instead: who speaks, in which language, what else is heard.")
    return " ".join(parts)


def _user(facts: ClipFacts, ask: str, feedback: Sequence[str] | None) -> str:
    text = "Facts:\n" + "\n".join(facts.summary_lines()) + "\n\n" + ask
    if feedback:
        text += "\n\n" + feedback_text(feedback)
    return text


def caption_messages(facts: ClipFacts, feedback: Sequence[str] | None = None
                     ) -> list[dict[str, Any]]:
    """Chat messages asking for the caption of ``facts`` (with the re-ask ``feedback``)."""
    return [{"role": "system", "content": CAPTION_SYSTEM},
            {"role": "user", "content": _user(facts, "Write the caption.", feedback)}]


def qa_messages(facts: ClipFacts, feedback: Sequence[str] | None = None
                ) -> list[dict[str, Any]]:
    """Chat messages asking for the QA pairs of ``facts`` (with the re-ask ``feedback``)."""
    return [{"role": "system", "content": QA_SYSTEM},
            {"role": "user", "content": _user(
                facts, f"Write the {QA_PAIRS} QA pairs as a JSON array.", feedback)}]


_THINK = re.compile(r"<think>.*?</think>", re.S | re.I)
_REFUSAL = re.compile(r"^\W*(i'?m sorry|i am sorry|sorry[,.!]|i can(?:no|')t|i cannot|"
                      r"i am unable|i'm unable|as an ai|i apologi[sz]e|i won't)", re.I)


def strip_think(text: str) -> str:
    """A reasoning model's answer without its ``<think>...</think>`` blocks (an unclosed
    block is all thinking; a lone ``</think>`` ends the thinking before it)."""
    text = _THINK.sub("", text)
    if "</think>" in text.lower():
        text = re.split(r"</think>", text, flags=re.I)[-1]
    if "<think>" in text.lower():
        text = re.split(r"<think>", text, flags=re.I)[0]
    return text.strip()


# The facts block echoed back instead of a caption (small models do): its field names, or
# the scores it shows ("Speech (1.00)").
_FACTS_ECHO = re.compile(r"\b(?:facts|duration|category|sound events|transcript|acoustics)\s*:|"
                         r"\(\s*[01]\.\d\d\s*\)|\b0\.\d+\b", re.I)
# An answer cut off by the token limit ends on a dangling word, a dash or comma, or a number.
_CUT = re.compile(r"(?:[-–,;:]|\d|\b(?:a|an|the|and|or|of|with|to|in|on|at|while|as|by|"
                  r"from|for|is|are))\W*$", re.I)


def clean_caption(text: str) -> str:
    """The caption in an answer, on one line, or :class:`MalformedAnswer`.

    Drops a ``Caption:`` prefix and surrounding quotes; rejects empty answers, refusals,
    JSON or lists, the facts echoed back (their field names, scores or fractions), answers
    cut off (a dangling word, dash or number at the end) and captions over
    :data:`CAPTION_MAX_WORDS` words; a missing final full stop is added.
    """
    text = strip_think(text)
    text = re.sub(r"^\s*(?:\*\*)?caption(?:\*\*)?\s*:\s*", "", text, flags=re.I)
    text = " ".join(text.split())
    if len(text) >= 2 and text[0] == text[-1] and text[0] in "\"'":
        text = text[1:-1].strip()
    text = text.strip("\u201c\u201d").strip()
    if not text:
        raise MalformedAnswer("empty caption")
    if _REFUSAL.match(text):
        raise MalformedAnswer(f"a refusal, not a caption: {text[:80]!r}")
    if text[0] in "[{" or text.startswith(("- ", "* ", "1.")):
        raise MalformedAnswer(f"not a plain-text caption: {text[:80]!r}")
    words = len(text.split())
    if words > CAPTION_MAX_WORDS:
        raise MalformedAnswer(f"caption too long ({words} words, at most {CAPTION_MAX_WORDS})")
    if _FACTS_ECHO.search(text):
        raise MalformedAnswer(f"the facts repeated, not a caption: {text[:80]!r}")
    if _CUT.search(text.rstrip(".")) and not text.rstrip().endswith(("BPM.", "BPM")):
        raise MalformedAnswer(f"cut off: {text[-80:]!r}")
    return text if text[-1] in ".!?\"'”)" else text + "."
