"""Closed-QA accuracy (MMAU, MuChoMusic): the official rule, and two other readings.

``qa_accuracy`` (the default) is the rule of the official scripts, reproduced on every
input: ``evaluate/compute_qa_acc.py`` of xiaomi-research/dasheng-lm (what the paper ran)
and ``evaluation.py`` of Sakshi113/MMAU share one ``string_match``. Per row, with
``words(t)`` the set of ``\\b\\w+\\b`` matches in ``t.lower()``:

1. an output without any word is wrong;
2. every word of ``answer`` must be in the output;
3. the output must hold no word of a *wrong* choice (a choice whose word set differs
   from the answer's), leaving out the words that choice shares with the answer;
   without choices (empty or null) only rule 2 applies.

``answer``, ``model_output`` and ``choices`` are compared as stored: nothing maps a
letter to its option text. With a letter answer (MuChoMusic's files) "The answer is A.",
"**A**" and "A or B" are right and "Reggae" (the right option's text) is wrong; with an
option-text answer (MMAU's files) a bare letter is wrong. The value is correct / rows,
the "Total Accuracy" of MMAU's script and the ACC of compute_qa_acc.py. The details
hold what MMAU's script prints besides: accuracy per ``task`` (sound / music / speech),
per ``difficulty`` and per ``sub-category``, and ``task_mean``, the mean of the task
accuracies (the paper's "MMAU Average" is that mean of its Sound / Music / Speech).

``qa_accuracy_strict`` is our stricter reading, a documented deviation: letters and
option text are mapped both ways (an output that is a bare letter - ``A``, ``(A)``,
``A.``, ``(A) text``, ``Answer: A`` - is compared by letter; otherwise the answer's
option text is string-matched), so "Reggae" is right for answer ``A`` while
"A or B" and "The answer is A." are wrong.

``muchomusic_accuracy`` is MuChoMusic's own rule (``muchomusic_eval/scoring.py``
``extract_responses`` of mulab-mir/muchomusic), which the paper did not use: after the
last "The correct answer is:", if exactly one of the characters A, B, C, D occurs in the
output (upper case, anywhere) that option is chosen; otherwise the first option whose
lower-cased, stripped text occurs in the lower-cased output; otherwise none.
"""

from __future__ import annotations

import re
import string
from collections.abc import Callable
from typing import Any

from midashenglm.evaluation.metrics.base import MetricOutput

LETTERS = string.ascii_uppercase
_WORD = re.compile(r"\b\w+\b")
_LETTER_PATTERNS = (
    re.compile(r"^\(?([A-Za-z])\)?[.:)]?$"),  # A  (A)  A.  A)  A:
    re.compile(r"^\(([A-Za-z])\)"),  # (A) option text
    re.compile(r"^([A-Z])[.)]\s"),  # A. option text  /  A) option text
    re.compile(r"^answer\s*(?:is)?\s*:?\s*\(?([A-Za-z])\)?\.?$", re.IGNORECASE),  # Answer: A
)
# MuChoMusic's extract_responses: its fixed letters and the prefix it cuts off.
_MUCHOMUSIC_LETTERS = ("A", "B", "C", "D")
_MUCHOMUSIC_PREFIX = "The correct answer is:"


def _words(text: str) -> set[str]:
    return set(_WORD.findall(text.lower()))


def string_match(answer: str, prediction: str, choices: list[str] | None) -> bool:
    """The official rule for one row (compute_qa_acc.py / MMAU evaluation.py ``string_match``)."""
    predicted = _words(prediction)
    expected = _words(answer)
    if not predicted or not expected <= predicted:
        return False
    wrong: set[str] = set()
    for choice in choices or ():
        words = _words(choice)
        if words != expected:
            wrong |= words - expected
    return predicted.isdisjoint(wrong)


# ------------------------------------------------------------------ strict reading
def letter_of(text: str, n_choices: int) -> str | None:
    """The option letter ``text`` names, if it is a bare letter answer (``A``, ``(B) ...``)."""
    text = text.strip()
    for pattern in _LETTER_PATTERNS:
        match = pattern.match(text)
        if match:
            letter = match.group(1).upper()
            return letter if letter in LETTERS[:n_choices] else None  # not "İ" (IGNORECASE)
    return None


def answer_letter(answer: str, choices: list[str]) -> str | None:
    """The letter of ``answer``: itself when it is a letter, else the matching choice's."""
    stripped = answer.strip()
    letter = stripped.strip("()").upper()
    if stripped in choices:
        return LETTERS[choices.index(stripped)]
    if len(letter) == 1 and letter in LETTERS[: len(choices)]:
        return letter
    lowered = [c.strip().lower() for c in choices]
    if stripped.lower() in lowered:
        return LETTERS[lowered.index(stripped.lower())]
    return None


def strict_match(answer: str, output: str, choices: list[str] | None) -> bool:
    """Our stricter reading (a deviation): letters compared when both are letters, else the
    answer's option text string-matched against the output."""
    choices = list(choices or [])
    expected = answer_letter(answer, choices)
    given = letter_of(output, len(choices))
    if expected is not None and given is not None:
        return expected == given
    answer_text = choices[LETTERS.index(expected)] if expected is not None else answer
    return string_match(answer_text, output, choices)


# ------------------------------------------------------------------ MuChoMusic's rule
def muchomusic_choice(output: str, choices: list[str]) -> int:
    """The option index MuChoMusic's ``extract_responses`` reads from ``output`` (-1: none)."""
    output = output.split(_MUCHOMUSIC_PREFIX)[-1].strip()
    named = set(_MUCHOMUSIC_LETTERS).intersection(output)
    if len(named) == 1:
        return _MUCHOMUSIC_LETTERS.index(named.pop())
    lowered = output.lower().strip()
    return next((i for i, c in enumerate(choices) if c.lower().strip() in lowered), -1)


# -------------------------------------------------------------------- aggregation
def _accuracies(groups: dict[str, list[int]]) -> dict[str, float]:
    return {k: v[0] / v[1] for k, v in sorted(groups.items())}


def _score(rows: list[dict[str, Any]], correct: Callable[[dict[str, Any]], bool | None]
           ) -> MetricOutput:
    """correct / rows, with MMAU's breakdowns; ``correct`` returns None to skip a row."""
    hits = 0
    scored = 0
    skipped: list[tuple[int, str]] = []
    groups: dict[str, dict[str, list[int]]] = {"per_task": {}, "per_difficulty": {},
                                               "per_subcategory": {}}
    for i, row in enumerate(rows):
        hit = correct(row)
        if hit is None:
            skipped.append((i, "the answer is neither an option letter nor an option's text"))
            continue
        hits += hit
        scored += 1
        for name, key in (("per_task", row.get("task") or row.get("category")),
                          ("per_difficulty", row.get("difficulty")),
                          ("per_subcategory", row.get("sub-category"))):
            if isinstance(key, str) and key:
                stats = groups[name].setdefault(key, [0, 0])
                stats[0] += hit
                stats[1] += 1
    if not scored:
        return MetricOutput(float("nan"), 0, skipped=skipped)
    details: dict[str, Any] = {"correct": hits}
    for name, stats in groups.items():
        if stats:
            details[name] = _accuracies(stats)
    if "per_task" in details:
        details["task_mean"] = sum(details["per_task"].values()) / len(details["per_task"])
    return MetricOutput(hits / scored, scored, details, skipped)


def qa_accuracy(rows: list[dict[str, Any]]) -> MetricOutput:
    """Closed-QA accuracy by the official rule (correct / rows)."""
    return _score(rows, lambda r: string_match(r["answer"], r["model_output"], r.get("choices")))


def qa_accuracy_strict(rows: list[dict[str, Any]]) -> MetricOutput:
    """Closed-QA accuracy by our stricter reading (a deviation from the official rule)."""
    return _score(rows, lambda r: strict_match(r["answer"], r["model_output"], r.get("choices")))


def muchomusic_accuracy(rows: list[dict[str, Any]]) -> MetricOutput:
    """Closed-QA accuracy by MuChoMusic's own ``extract_responses`` / ``compare_answers``."""

    def correct(row: dict[str, Any]) -> bool | None:
        choices = list(row.get("choices") or [])
        letter = answer_letter(row["answer"], choices)
        if letter is None:
            return None
        return muchomusic_choice(row["model_output"], choices) == LETTERS.index(letter)

    return _score(rows, correct)
