"""Closed-QA accuracy: MMAU's official string match, used by the paper for MMAU and MuChoMusic.

An output is right when (1) every word of the answer appears in it and (2) it holds no
word that belongs only to a wrong choice. Words are ``\\b\\w+\\b`` tokens of the
lower-cased text.

Answers and outputs are known both as a letter and as option text: MuChoMusic files
store the answer as a letter (``"A"``), MMAU as the option text, and the model is asked
for a letter. When the output is a bare letter (``A``, ``(A)``, ``A.``, ``(A) text``,
``Answer: A``) and the answer can be mapped to a letter, the letters are compared
(what the official script does for MuChoMusic, where both are letters); otherwise the
answer is turned into its option text and the string match decides.

When rows carry a category (``task`` or ``category``, e.g. MMAU's sound / music /
speech), the value is the mean of the per-category accuracies, as MMAU reports it;
the overall (micro) accuracy is in the details.
"""

from __future__ import annotations

import re
import string
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


def _words(text: str) -> set[str]:
    return set(_WORD.findall(text.lower()))


def string_match(answer: str, prediction: str, choices: list[str] | None) -> bool:
    """MMAU's rule: all answer words in the prediction, no word only a wrong choice has."""
    predicted = _words(prediction)
    expected = _words(answer)
    if not predicted:
        return False
    if not expected <= predicted:
        return False
    if not choices:
        return True
    wrong: set[str] = set()
    for choice in choices:
        words = _words(choice)
        if words != expected:
            wrong |= words - expected
    return predicted.isdisjoint(wrong)


def letter_of(text: str, n_choices: int) -> str | None:
    """The option letter ``text`` names, if it is a bare letter answer (``A``, ``(B) ...``)."""
    text = text.strip()
    for pattern in _LETTER_PATTERNS:
        match = pattern.match(text)
        if match:
            letter = match.group(1).upper()
            return letter if LETTERS.index(letter) < n_choices else None
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


def is_correct(answer: str, output: str, choices: list[str]) -> bool:
    """One closed-QA item: letters compared when both are letters, else MMAU's string match."""
    expected = answer_letter(answer, choices)
    given = letter_of(output, len(choices))
    if expected is not None and given is not None:
        return expected == given
    answer_text = choices[LETTERS.index(expected)] if expected is not None else answer
    return string_match(answer_text, output, choices)


def _category(row: dict[str, Any]) -> str | None:
    for key in ("task", "category"):
        value = row.get(key)
        if isinstance(value, str) and value:
            return value
    return None


def qa_accuracy(rows: list[dict[str, Any]]) -> MetricOutput:
    """Closed-QA accuracy (macro over categories when the rows name one)."""
    correct = 0
    per_category: dict[str, list[int]] = {}
    for row in rows:
        hit = is_correct(row["answer"], row["model_output"], list(row["choices"]))
        correct += hit
        category = _category(row)
        if category is not None:
            stats = per_category.setdefault(category, [0, 0])
            stats[0] += hit
            stats[1] += 1
    if not rows:
        return MetricOutput(float("nan"), 0)
    micro = correct / len(rows)
    details: dict[str, Any] = {"correct": correct, "micro_accuracy": micro}
    value = micro
    if per_category:
        accuracies = {k: v[0] / v[1] for k, v in sorted(per_category.items())}
        details["per_category"] = accuracies
        details["categorised_rows"] = sum(v[1] for v in per_category.values())
        value = sum(accuracies.values()) / len(accuracies)
    return MetricOutput(value, len(rows), details)
