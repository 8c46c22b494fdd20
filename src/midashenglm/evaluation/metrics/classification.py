"""Classification metrics as the official scripts compute them.

- ``accuracy``: the lower-cased, stripped first reference label is a substring of the
  lower-cased output (``"bass"`` is right for ``"It is a bass."``).
- ``gender_accuracy``: the output becomes ``male`` when it contains "male" and not
  "female", ``female`` when it contains "female" and no other "male"; then exact match.
- ``map``: the output is split into labels by the model's rule, predictions are kept
  only for labels that occur in the references, and scikit-learn's macro average
  precision is taken over hard 0/1 label matrices.

Output splitting for ``map`` (from the official ``compute_map.py``), chosen by the
row's ``model_name``:

- MiDashengLM (and any other model): split on ``;``; for FSD50K, ``", and "`` and
  ``", "`` inside a label become ``" and "`` (FSD50K names such as "Chewing and
  mastication");
- Qwen2.5-Omni (a name containing "qwen"): split on ``;`` when there is one, else on
  ``,``; ``_`` becomes a space; ``" - "`` becomes ``" and "`` for FSD50K and ``", "``
  elsewhere;
- Kimi-Audio (a name containing "kimi"): split on ``,``; ``_`` becomes a space.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

from midashenglm.evaluation.metrics.base import MetricOutput


def _labels(row: dict[str, Any]) -> list[str]:
    label = row["label"]
    return [label] if isinstance(label, str) else list(label)


def accuracy(rows: list[dict[str, Any]]) -> MetricOutput:
    """Single-label accuracy: the reference label (lower-cased) is contained in the output."""
    correct = 0
    per_label: dict[str, list[int]] = {}
    for row in rows:
        ref = _labels(row)[0].lower().strip()
        hit = ref in row["model_output"].lower().strip()
        correct += hit
        stats = per_label.setdefault(ref, [0, 0])
        stats[0] += hit
        stats[1] += 1
    details = {
        "correct": correct,
        "per_label": {k: v[0] / v[1] for k, v in sorted(per_label.items())},
    }
    return MetricOutput(correct / len(rows) if rows else float("nan"), len(rows), details)


def gender_of(output: str) -> str:
    """The official mapping of a free-form answer to ``male`` / ``female`` (or itself)."""
    text = output.lower().strip()
    if "male" in text and "female" not in text:
        return "male"
    if "female" in text and "male" not in text.replace("female", ""):
        return "female"
    return text


def gender_accuracy(rows: list[dict[str, Any]]) -> MetricOutput:
    """Gender accuracy: the mapped output equals the lower-cased reference label."""
    correct = 0
    predicted: Counter[str] = Counter()
    for row in rows:
        guess = gender_of(row["model_output"])
        predicted[guess if guess in ("male", "female") else "other"] += 1
        correct += guess == _labels(row)[0].lower().strip()
    details = {"correct": correct, "predicted": dict(predicted)}
    return MetricOutput(correct / len(rows) if rows else float("nan"), len(rows), details)


def split_labels(output: str, model_name: str = "", dataset_name: str = "") -> list[str]:
    """A tagging answer as a list of labels, by the splitting rule of ``model_name``.

    The output is lower-cased first, as the official script does.
    """
    text = output.lower()
    model = model_name.lower()
    fsd50k = dataset_name == "FSD50K"
    if "qwen" in model:
        parts = text.split(";") if ";" in text else text.split(",")
        joiner = " and " if fsd50k else ", "
        return [p.strip().replace("_", " ").replace(" - ", joiner) for p in parts]
    if "kimi" in model:
        return [p.strip().replace("_", " ") for p in text.split(",")]
    parts = text.split(";")
    if fsd50k:
        return [p.strip().replace(", and ", " and ").replace(", ", " and ") for p in parts]
    return [p.strip() for p in parts]


def mean_average_precision(
    rows: list[dict[str, Any]], *, model_name: str | None = None
) -> MetricOutput:
    """Macro AP of hard multi-label predictions (scikit-learn), the paper's mAP.

    ``model_name`` overrides the rows' ``model_name`` when choosing the splitting rule.
    """
    import numpy as np
    from sklearn.metrics import average_precision_score

    refs = [[label.lower() for label in _labels(row)] for row in rows]
    vocabulary = sorted({label for labels in refs for label in labels})
    index = {label: i for i, label in enumerate(vocabulary)}
    target = np.zeros((len(rows), len(vocabulary)), dtype=np.int64)
    predicted = np.zeros_like(target)
    unknown: Counter[str] = Counter()
    for i, (row, labels) in enumerate(zip(rows, refs, strict=True)):
        target[i, [index[label] for label in labels]] = 1
        name = model_name if model_name is not None else str(row.get("model_name", ""))
        for label in split_labels(row["model_output"], name, str(row.get("dataset_name", ""))):
            if label in index:
                predicted[i, index[label]] = 1
            elif label:
                unknown[label] += 1
    if not rows:
        return MetricOutput(float("nan"), 0)
    value = float(average_precision_score(target, predicted, average="macro"))
    details = {
        "classes": len(vocabulary),
        "predicted_labels": int(predicted.sum()),
        "labels_not_in_references": sum(unknown.values()),
        "most_common_unknown": unknown.most_common(10),
    }
    return MetricOutput(value, len(rows), details)
