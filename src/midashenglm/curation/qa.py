"""MECAT-QA style question-answer pairs: five per clip across six sub-categories.

MECAT-QA (SYSTEM.md section 8) asks five questions per clip, each from one of six
sub-categories: direct perception, sound characteristics, quality assessment, environment
reasoning, inference and judgement, application context. :func:`parse_qa` reads an LLM's
answer (a JSON array of ``{"subcategory", "question", "answer"}``), :func:`validate_pairs`
checks the count, the sub-categories and that nothing is empty, and :func:`check_pairs` runs
the grounding check over the answers (questions may name what is absent: "Is there music?").
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from midashenglm.curation import grounding
from midashenglm.curation.facts import ClipFacts

SUBCATEGORIES = ("direct perception", "sound characteristics", "quality assessment",
                 "environment reasoning", "inference and judgement", "application context")
QA_PAIRS = 5
MAX_QUESTION_WORDS = 40
MAX_ANSWER_WORDS = 60

# Spellings models use for the same sub-category.
_ALIASES = {"inference and judgment": "inference and judgement",
            "inference judgement": "inference and judgement",
            "inference": "inference and judgement", "judgement": "inference and judgement",
            "perception": "direct perception", "characteristics": "sound characteristics",
            "quality": "quality assessment", "environment": "environment reasoning",
            "application": "application context", "applications": "application context"}


class MalformedAnswer(ValueError):
    """An LLM answer that is not what was asked (empty, too long, a refusal, JSON that does
    not parse, the wrong number of QA pairs...): rejected and asked again."""


@dataclass(frozen=True)
class QAPair:
    """One question about a clip and its answer; ``subcategory`` is one of
    :data:`SUBCATEGORIES`."""

    subcategory: str
    question: str
    answer: str

    def to_json(self) -> dict[str, str]:
        return {"subcategory": self.subcategory, "question": self.question,
                "answer": self.answer}


def normalize_subcategory(name: str) -> str | None:
    """``"Inference & Judgment"`` -> ``"inference and judgement"``; None if not one of the six."""
    key = re.sub(r"[\s_\-]+", " ", name.strip().lower().replace("&", "and")).strip(" .:")
    if key in SUBCATEGORIES:
        return key
    return _ALIASES.get(key)


def _json_array(text: str) -> Any:
    """The JSON array in ``text`` (code fences and text around it tolerated)."""
    body = re.sub(r"^```[a-zA-Z]*\s*|\s*```$", "", text.strip())
    start, end = body.find("["), body.rfind("]")
    if start < 0 or end <= start:
        raise MalformedAnswer("no JSON array in the answer")
    try:
        return json.loads(body[start:end + 1])
    except json.JSONDecodeError as err:
        raise MalformedAnswer(f"the QA JSON does not parse ({err.msg})") from None


def parse_qa(text: str, *, count: int = QA_PAIRS) -> list[QAPair]:
    """The QA pairs of an LLM answer; :class:`MalformedAnswer` says what is wrong with it."""
    data = _json_array(text)
    if isinstance(data, Mapping) and isinstance(data.get("pairs"), list):
        data = data["pairs"]
    if not isinstance(data, list):
        raise MalformedAnswer("the QA answer is not a JSON array")
    pairs = []
    for k, item in enumerate(data):
        if not isinstance(item, Mapping):
            raise MalformedAnswer(f"QA item {k + 1} is not an object")
        values = [item.get(name) for name in ("subcategory", "question", "answer")]
        if not all(isinstance(v, str) for v in values):
            raise MalformedAnswer(f"QA item {k + 1} lacks a subcategory, question or answer")
        pairs.append(QAPair(*(" ".join(str(v).split()) for v in values)))
    return validate_pairs(pairs, count=count)


def validate_pairs(pairs: Sequence[QAPair], *, count: int = QA_PAIRS) -> list[QAPair]:
    """``pairs`` with normalized sub-categories, or :class:`MalformedAnswer`: exactly ``count``
    pairs, known sub-categories, non-empty question and answer within the word limits."""
    if len(pairs) != count:
        raise MalformedAnswer(f"expected {count} QA pairs, got {len(pairs)}")
    out = []
    for k, pair in enumerate(pairs, start=1):
        sub = normalize_subcategory(pair.subcategory)
        if sub is None:
            raise MalformedAnswer(f"QA pair {k}: unknown subcategory {pair.subcategory!r} "
                                  f"(expected one of: {', '.join(SUBCATEGORIES)})")
        question, answer = pair.question.strip(), pair.answer.strip()
        if not question or not answer:
            raise MalformedAnswer(f"QA pair {k}: empty question or answer")
        if len(question.split()) > MAX_QUESTION_WORDS or len(answer.split()) > MAX_ANSWER_WORDS:
            raise MalformedAnswer(f"QA pair {k}: question or answer too long")
        out.append(QAPair(sub, question, answer))
    return out


def pairs_from_json(items: Iterable[Mapping[str, Any]]) -> list[QAPair]:
    """Pairs from their :meth:`QAPair.to_json` dicts (no validation)."""
    return [QAPair(str(i["subcategory"]), str(i["question"]), str(i["answer"])) for i in items]


def check_pairs(pairs: Sequence[QAPair], facts: ClipFacts) -> grounding.GroundingReport:
    """The grounding check over every answer, merged into one report."""
    unsupported: list[str] = []
    checked: list[str] = []
    for pair in pairs:
        report = grounding.check(pair.answer, facts)
        unsupported.extend(report.unsupported)
        checked.extend(report.checked)
    unsupported = list(dict.fromkeys(unsupported))
    return grounding.GroundingReport(ok=not unsupported, unsupported=unsupported,
                                     checked=list(dict.fromkeys(checked)))
