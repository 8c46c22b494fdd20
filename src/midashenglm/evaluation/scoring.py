"""Score result files: pick the metric from the dataset name, check rows, report problems.

>>> from midashenglm.evaluation.scoring import score_file
>>> result = score_file("MiDashengLM_LibriSpeech_test-clean.jsonl")
>>> result.metric, round(result.value, 4), result.count, result.skipped
('wer', 0.0372, 2620, 0)

Every line that is not scored is accounted for: ``result.problems`` lists each with
its file and line number, ``result.skipped`` counts them and ``result.skipped_reasons``
counts them by reason.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from midashenglm.errors import UserError
from midashenglm.evaluation.metrics import get_metric
from midashenglm.evaluation.results import Problem, ResultRow, read_results

# Dataset name (case, spaces, dashes and underscores ignored) -> metric. The first
# pattern that matches the start of the name wins, so specific names come first.
DATASET_METRICS: tuple[tuple[str, str], ...] = (
    # ASR (WER; Chinese per character)
    ("librispeech", "wer"),
    ("aishell", "cer"),
    ("gigaspeech", "wer"),
    ("peoplesspeech", "wer"),
    ("commonvoice", "wer"),
    ("fleurs", "wer"),
    ("wenetspeech", "cer"),
    # paralinguistics and classification
    ("voxcelebgender", "gender_accuracy"),
    ("voxceleb1gender", "gender_accuracy"),
    ("voxceleb", "accuracy"),
    ("voxlingua", "accuracy"),
    ("vggsound", "accuracy"),
    ("cochlscene", "accuracy"),
    ("cochlsence", "accuracy"),  # as spelled in the published prompt table
    ("nsynth", "accuracy"),
    ("freemusicarchive", "accuracy"),
    ("fma", "accuracy"),
    ("fsdkaggle", "accuracy"),
    ("esc50", "accuracy"),
    ("audioset", "map"),
    ("fsd50k", "map"),
    # question answering
    ("mmau", "qa_accuracy"),
    ("muchomusic", "qa_accuracy"),
    ("musicqa", "fense"),
    ("audiocapsqa", "fense"),
    ("clothoaqa", "fense"),
    # captioning
    ("audiocaps", "fense"),
    ("clotho", "fense"),
    ("musiccaps", "fense"),
    ("songdescriber", "fense"),
    ("autoacd", "fense"),
    ("mecat", "mecat"),
)


# Default language of ASR datasets, for rows without a 'lang' field or <|xx|> prompt tag.
DATASET_LANGUAGES: tuple[tuple[str, str], ...] = (
    ("librispeech", "en"), ("peoplesspeech", "en"), ("aishell", "zh"), ("wenetspeech", "zh"),
    ("gigaspeech2indo", "id"), ("gigaspeech2thai", "th"), ("gigaspeech2viet", "vi"),
)


# Metric -> documented deviations computed on the same rows and reported beside it
# (``ScoreResult.beside``, the ``--json`` line, the report). See docs/evaluation-metrics.md.
BESIDE: dict[str, tuple[str, ...]] = {"qa_accuracy": ("qa_accuracy_strict",)}


def _key(name: str) -> str:
    return re.sub(r"[^a-z0-9]", "", name.lower())


def language_for_dataset(name: str) -> str | None:
    """The language of an ASR dataset's speech, when its name tells (``AISHELL2_iOS`` -> zh)."""
    key = _key(name)
    return next((lang for pattern, lang in DATASET_LANGUAGES if key.startswith(pattern)), None)


def metric_for_dataset(name: str) -> str:
    """The paper's metric for a dataset name (``LibriSpeech_test-clean`` -> ``wer``)."""
    key = _key(name)
    if "gender" in key:
        return "gender_accuracy"
    for pattern, metric in DATASET_METRICS:
        if key.startswith(pattern):
            return metric
    for pattern, metric in DATASET_METRICS:
        if pattern in key:
            return metric
    raise UserError(
        f"no metric known for dataset {name!r}: name one with `midashenglm evaluate "
        "--metric NAME` (wer, cer, accuracy, gender_accuracy, map, qa_accuracy, fense, mecat...)"
    )


@dataclass
class ScoreResult:
    """The score of one file (or list of rows) with one metric; ``value`` is a fraction."""

    file: str
    dataset: str | None
    metric: str
    value: float
    count: int
    skipped: int
    skipped_reasons: dict[str, int] = field(default_factory=dict)
    details: dict[str, Any] = field(default_factory=dict)
    problems: list[Problem] = field(default_factory=list)
    # scored rows whose output was empty (counted as the official scripts count them)
    empty_outputs: list[Problem] = field(default_factory=list)
    # metric name -> value of a documented deviation on the same rows (see BESIDE)
    beside: dict[str, float] = field(default_factory=dict)

    def to_json(self, *, details: bool = False) -> dict[str, Any]:
        """The ``--json`` line: value ``None`` when nothing could be scored."""
        out = {
            "file": self.file,
            "dataset": self.dataset,
            "metric": self.metric,
            "value": None if math.isnan(self.value) else self.value,
            "count": self.count,
            "skipped": self.skipped,
            "skipped_reasons": self.skipped_reasons,
            "empty_outputs": len(self.empty_outputs),
        }
        if self.beside:
            out["beside"] = {k: None if math.isnan(v) else v for k, v in self.beside.items()}
        if details:
            out["details"] = self.details
        return out


def _reason_kind(reason: str) -> str:
    # "invalid JSON (Expecting value at column 1)" -> "invalid JSON"
    return reason.split(" (", 1)[0]


def score_rows(
    rows: Iterable[dict[str, Any] | ResultRow],
    metric: str,
    *,
    file: str = "<rows>",
    dataset: str | None = None,
    problems: Sequence[Problem] = (),
    **options: Any,
) -> ScoreResult:
    """Score rows (dicts or :class:`ResultRow`) with ``metric``.

    Rows missing the fields the metric needs become problems (with their line number
    when they are ``ResultRow``s, else their 1-based position). ``problems`` are
    earlier ones (unparsable lines) to count in the same result. ``options`` go to the
    metric function (``lang``, ``model_name``, ``sbert_model``...), unknown ones are
    ignored.
    """
    spec = get_metric(metric)
    found = list(problems)
    good: list[dict[str, Any]] = []
    lines: list[int] = []
    for position, row in enumerate(rows, start=1):
        data, line = (row.data, row.line) if isinstance(row, ResultRow) else (row, position)
        reason = spec.check(data)
        if reason is not None:
            found.append(Problem(file, line, reason))
        else:
            good.append(data)
            lines.append(line)
    output = spec(good, **options)
    beside = {name: float(get_metric(name)(good, **options).value)
              for name in BESIDE.get(spec.name, ())}
    found.extend(Problem(file, lines[i], reason) for i, reason in output.skipped)
    found.sort(key=lambda p: p.line)
    reasons = Counter(_reason_kind(p.reason) for p in found)
    return ScoreResult(
        file=file,
        dataset=dataset,
        metric=spec.name,
        value=float(output.value),
        count=output.count,
        skipped=len(found),
        skipped_reasons=dict(reasons),
        details=output.details,
        problems=found,
        beside=beside,
    )


def score_file(path: str | Path, metric: str | None = None, **options: Any) -> ScoreResult:
    """Score one result file; the metric comes from its ``dataset_name`` unless given."""
    results = read_results(path)
    names = results.dataset_names
    dataset = names.most_common(1)[0][0] if names else None
    if metric is None:
        if dataset is None:
            raise UserError(f"{path}: no row names its dataset_name; score it with "
                            "`midashenglm evaluate FILE --metric NAME`")
        metric = metric_for_dataset(dataset)
    if options.get("lang") is None and dataset is not None:
        options["lang"] = language_for_dataset(dataset)
    result = score_rows(results.rows, metric, file=str(path), dataset=dataset,
                        problems=results.problems, **options)
    skipped_lines = {p.line for p in result.problems}
    result.empty_outputs = [p for p in results.empty_outputs if p.line not in skipped_lines]
    if len(names) > 1:
        result.details["datasets"] = dict(names)
    return result
