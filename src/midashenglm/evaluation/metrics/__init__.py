"""The metrics of the evaluation suite: each one a function plus an entry in :data:`METRICS`.

A metric function takes the rows to score (dicts in the official result format, already
checked by the entry's ``check``) and keyword options, and returns a
:class:`~midashenglm.evaluation.metrics.base.MetricOutput` whose value is a fraction.
Implementations are imported on first use, so that listing metrics stays instant.
"""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from midashenglm.errors import UserError
from midashenglm.evaluation.metrics.base import (
    MetricOutput,
    check_closed_qa,
    check_label,
    check_references,
    check_transcript,
)

__all__ = ["METRICS", "Metric", "MetricOutput", "get_metric", "metric_names"]


@dataclass(frozen=True)
class Metric:
    """A registered metric: where its function lives and what a row must carry."""

    name: str
    target: str  # "module:function", imported on first use
    description: str
    check: Callable[[dict[str, Any]], str | None]
    higher_is_better: bool = True
    aliases: tuple[str, ...] = ()

    @property
    def function(self) -> Callable[..., MetricOutput]:
        module, _, func = self.target.partition(":")
        return getattr(importlib.import_module(module), func)

    def __call__(self, rows: list[dict[str, Any]], **options: Any) -> MetricOutput:
        """Run the metric, passing only the options its function accepts."""
        func = self.function
        params = inspect.signature(func).parameters
        if not any(p.kind is p.VAR_KEYWORD for p in params.values()):
            options = {k: v for k, v in options.items() if k in params}
        return func(rows, **{k: v for k, v in options.items() if v is not None})


_PKG = "midashenglm.evaluation.metrics"
_CAPTION = "references in 'text' (or 'answer'), one string or a list"
METRICS: dict[str, Metric] = {
    m.name: m
    for m in (
        Metric("wer", f"{_PKG}.wer:wer",
               "corpus WER with the official normalisation (CER for zh/yue)",
               check_transcript, higher_is_better=False),
        Metric("cer", f"{_PKG}.wer:cer",
               "corpus character error rate, every language per character",
               check_transcript, higher_is_better=False),
        Metric("accuracy", f"{_PKG}.classification:accuracy",
               "single-label accuracy: the reference label is contained in the output",
               check_label),
        Metric("gender_accuracy", f"{_PKG}.classification:gender_accuracy",
               "gender accuracy (output mapped to male/female first)", check_label,
               aliases=("gender",)),
        Metric("map", f"{_PKG}.classification:mean_average_precision",
               "multi-label macro AP of hard predictions (output split per model)",
               check_label, aliases=("mAP",)),
        Metric("qa_accuracy", f"{_PKG}.qa:qa_accuracy",
               "closed-QA accuracy, the official string match (compute_qa_acc.py, MMAU)",
               check_closed_qa, aliases=("closed_qa",)),
        Metric("qa_accuracy_strict", f"{_PKG}.qa:qa_accuracy_strict",
               "closed-QA accuracy, our stricter reading (letters <-> option text; a deviation)",
               check_closed_qa),
        Metric("muchomusic_accuracy", f"{_PKG}.qa:muchomusic_accuracy",
               "closed-QA accuracy, MuChoMusic's own answer extraction (not the paper's)",
               check_closed_qa),
        Metric("fense", f"{_PKG}.fense:fense",
               f"FENSE (Sentence-BERT similarity x fluency penalty); {_CAPTION}",
               check_references),
        Metric("date", f"{_PKG}.date:date",
               "DATE, MECAT's discriminability-aware metric, over one group of rows",
               check_references),
        Metric("mecat", f"{_PKG}.date:mecat",
               "MECAT overall: DATE per subtask group, weighted caption / mean QA score",
               check_references),
        Metric("bleu", f"{_PKG}.captioning:bleu", "BLEU-4 (COCO caption tools)",
               check_references, aliases=("bleu_4",)),
        Metric("meteor", f"{_PKG}.captioning:meteor", "METEOR 1.5 (needs Java)",
               check_references),
        Metric("rouge_l", f"{_PKG}.captioning:rouge_l", "ROUGE-L (COCO caption tools)",
               check_references),
        Metric("cider_d", f"{_PKG}.captioning:cider_d", "CIDEr-D (COCO caption tools)",
               check_references, aliases=("cider",)),
        Metric("spice", f"{_PKG}.captioning:spice",
               "SPICE (needs Java and Stanford CoreNLP jars)", check_references),
        Metric("spider", f"{_PKG}.captioning:spider", "SPIDEr = (CIDEr-D + SPICE) / 2",
               check_references),
    )
}
_ALIASES = {alias.lower(): m.name for m in METRICS.values() for alias in m.aliases}


def metric_names() -> list[str]:
    return list(METRICS)


def get_metric(name: str) -> Metric:
    """A metric by name or alias (case does not matter)."""
    key = name.strip().lower()
    key = _ALIASES.get(key, key)
    if key not in METRICS:
        raise UserError(f"unknown metric {name!r}; choose one of {', '.join(METRICS)}")
    return METRICS[key]
