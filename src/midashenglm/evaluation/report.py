"""``midashenglm report``: score every result file of a folder and set the scores beside the
paper's numbers, as a markdown table and a bar chart.

Scores are shown in the paper's units (x100: FENSE, accuracy %, mAP, WER/CER %). The
difference is this run minus the paper's MiDashengLM number, and says whether that is
better or worse given the metric's direction.
"""

from __future__ import annotations

import datetime as _dt
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from midashenglm.errors import UserError
from midashenglm.evaluation import paper as P

_METRIC_FAMILY = {  # metric names of the scorer -> the paper's metric
    "wer": "wer", "cer": "cer", "fense": "fense", "map": "map", "mecat": "fense",
    "accuracy": "accuracy", "gender_accuracy": "accuracy", "qa_accuracy": "accuracy",
    "qa_accuracy_strict": "accuracy", "muchomusic_accuracy": "accuracy",
}


@dataclass
class ReportRow:
    """One scored number and, where the paper has it, the paper's numbers."""

    file: str
    model: str
    dataset: str
    subset: str | None
    metric: str
    value: float | None  # x100, paper units
    count: int | None
    paper: P.PaperResult | None
    notes: list[str] = field(default_factory=list)

    @property
    def label(self) -> str:
        if self.paper is not None:
            return self.paper.title
        return f"{self.dataset} ({self.subset})" if self.subset else self.dataset

    @property
    def higher_is_better(self) -> bool | None:
        if self.paper is not None:
            return self.paper.higher_is_better
        return P.HIGHER_IS_BETTER.get(_METRIC_FAMILY.get(self.metric.lower(), ""), None)

    @property
    def difference(self) -> float | None:
        ours = self.paper.ours if self.paper else None
        if self.value is None or not isinstance(ours, int | float):
            return None
        return self.value - ours


# ---------------------------------------------------------------------------- scoring
def score_folder(folder: Path, **options: Any) -> tuple[list[ReportRow], list[str]]:
    """Report rows for every ``*.jsonl`` in ``folder``, and a note per file not scored.

    ``options`` go to the metrics (``device``, ``sbert_model``, ``echecker_model``...).
    """
    from midashenglm.evaluation.scoring import score_file

    files = sorted(folder.glob("*.jsonl"))
    if not files:
        raise UserError(f"{folder}: no *.jsonl result files in it")
    rows: list[ReportRow] = []
    failures: list[str] = []
    for path in files:
        try:
            # The paper reports MECAT with FENSE (MECAT's own default is DATE).
            result = score_file(path, None, **{"mecat_metric": "fense", **options})
        except Exception as err:  # noqa: BLE001 - one unscorable file must not hide the others
            failures.append(f"{path.name}: {type(err).__name__}: {err}")
            continue
        rows.extend(rows_for_result(path, result))
    return rows, failures


def rows_for_result(path: Path, result: Any) -> list[ReportRow]:
    """The headline score of a scored file, then every per-part score the paper also has."""
    dataset = str(getattr(result, "dataset", "") or path.stem)
    metric = str(getattr(result, "metric", ""))
    model = _model_name(path)
    details = getattr(result, "details", None) or {}
    notes = _notes(result)
    value = _percent(getattr(result, "value", None))
    if metric == "fense" and isinstance(details.get("similarity"), int | float):
        # The official compute_fense.py (hence the paper) averages the similarity before
        # the fluency penalty: compare that, and show the penalised value beside it.
        notes.append(f"penalised FENSE {value:.2f}" if value is not None else "penalised FENSE n/a")
        value = _percent(details["similarity"])
    if isinstance(details.get("task_mean"), int | float) and len(details.get("per_task", {})) > 1:
        # MMAU's evaluation.py reports correct / all; the paper's Average is the task mean.
        notes.append(f"mean of the task accuracies {_percent(details['task_mean']):.2f}")
    for name, other in (getattr(result, "beside", None) or {}).items():
        shown = _percent(other)
        notes.append(f"{name} {'n/a' if shown is None else f'{shown:.2f}'} (a deviation, "
                     "see docs/evaluation-metrics.md)")
    rows = [ReportRow(path.name, model, dataset, None, metric, value,
                      getattr(result, "count", None), P.paper_row(dataset), notes)]
    seen = {id(rows[0].paper)}
    for name, sub_value in _numbers(details):
        row = P.paper_row(dataset, name)
        if row is None or row.subset is None or id(row) in seen:
            continue
        seen.add(id(row))
        rows.append(ReportRow(path.name, model, dataset, row.subset, metric,
                              _percent(sub_value), None, row))
    return rows


def _numbers(details: Any, prefix: str = "") -> list[tuple[str, float]]:
    """Named numbers anywhere in the details (``{"per_category": {"sound": 0.7}}`` too)."""
    found: list[tuple[str, float]] = []
    if isinstance(details, dict):
        for key, value in details.items():
            if isinstance(value, bool):
                continue
            if isinstance(value, int | float):
                found.append((str(key), float(value)))
            elif isinstance(value, dict):
                # {"sound": {"value": 0.7, "count": 10}} or {"per_task": {...}}
                inner = value.get("value", value.get("score"))
                if isinstance(inner, int | float) and not isinstance(inner, bool):
                    found.append((str(key), float(inner)))
                found.extend(_numbers(value, f"{prefix}{key}."))
    return found


def _percent(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float) or math.isnan(value):
        return None  # NaN: nothing could be scored (or a MECAT overall lacks groups)
    return 100.0 * float(value)


def _notes(result: Any) -> list[str]:
    notes = []
    skipped = getattr(result, "skipped", None)
    n_skipped = len(skipped) if isinstance(skipped, list | tuple | set | dict) else skipped
    if n_skipped:
        notes.append(f"{n_skipped} rows skipped")
    problems = getattr(result, "problems", None)
    if problems:
        notes.append(f"{len(problems)} unusable lines (errors, empty outputs)")
    return notes


def _model_name(path: Path) -> str:
    """The ``model_name`` of the file's first row (the file name when there is none)."""
    import json

    try:
        with path.open(encoding="utf-8") as fh:
            for line in fh:
                if line.strip():
                    return str(json.loads(line).get("model_name") or path.stem)
    except (OSError, ValueError):
        pass
    return path.stem


# ---------------------------------------------------------------------------- markdown
def _fmt(value: Any, digits: int = 2) -> str:
    if value is None:
        return "-"
    if isinstance(value, str):
        return value
    return f"{value:.{digits}f}"


def _difference(row: ReportRow) -> str:
    diff = row.difference
    if diff is None:
        return "-"
    if abs(diff) < 5e-3:
        return "0.00 (same)"
    better = diff > 0 if row.higher_is_better else diff < 0
    return f"{diff:+.2f} ({'better' if better else 'worse'})"


def _direction(row: ReportRow) -> str:
    return {True: "higher", False: "lower", None: "?"}[row.higher_is_better]


def markdown(rows: list[ReportRow], failures: list[str], *, folder: Path,
             chart: Path | None) -> str:
    lines = [
        "# Benchmark report",
        "",
        f"Results: `{folder}` ({len({r.file for r in rows})} files scored), "
        f"{_dt.datetime.now().strftime('%Y-%m-%d %H:%M')}.",
        "",
        "Scores in the paper's units (x100). *Diff* is this run minus the paper's "
        "MiDashengLM-7B number; *better* follows the metric's direction.",
        "",
    ]
    if chart is not None:
        lines += [f"![scores beside the paper]({chart.name})", ""]
    header = ["result", "model", "metric", "better is", "rows", "this run",
              "paper MiDashengLM", "diff", "paper Qwen2.5-Omni", "paper Kimi-Audio", "notes"]
    lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in rows:
        paper = row.paper.values if row.paper else {}
        notes = list(row.notes) + ([row.paper.note] if row.paper and row.paper.note else [])
        if row.paper is None and row.subset is None:
            notes.append("no paper number")
        cells = [row.label, row.model, row.metric or "-", _direction(row),
                 _fmt(row.count, 0) if row.count is not None else "-", _fmt(row.value),
                 _fmt(paper.get(P.MIDASHENGLM)), _difference(row), _fmt(paper.get(P.QWEN)),
                 _fmt(paper.get(P.KIMI)), "; ".join(notes)]
        lines.append("| " + " | ".join(c.replace("|", "/") for c in cells) + " |")
    if failures:
        lines += ["", "## Not scored", ""] + [f"- {f}" for f in failures]
    covered = {id(r.paper) for r in rows if r.paper is not None}
    missing = [r for r in P.PAPER_RESULTS if id(r) not in covered]
    if missing:
        lines += ["", "## Paper numbers without a result here", "",
                  "| table | result | metric | better is | MiDashengLM | Qwen2.5-Omni | "
                  "Kimi-Audio |", "|---|---|---|---|---|---|---|"]
        for r in missing:
            direction = "higher" if r.higher_is_better else "lower"
            lines.append(
                f"| {r.table} | {r.title} | {r.metric} | {direction} | "
                f"{_fmt(r.values.get(P.MIDASHENGLM))} | {_fmt(r.values.get(P.QWEN))} | "
                f"{_fmt(r.values.get(P.KIMI))} |"
            )
    return "\n".join(lines) + "\n"


# ------------------------------------------------------------------------------ chart
def bar_chart(rows: list[ReportRow], path: Path) -> Path | None:
    """Grouped horizontal bars: this run beside the paper's three models, one group per result."""
    shown = [r for r in rows if r.value is not None]
    if not shown:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    series = [("this run", None, "#d62728")] + [
        (f"paper {m}", m, c) for m, c in
        ((P.MIDASHENGLM, "#1f77b4"), (P.QWEN, "#7f7f7f"), (P.KIMI, "#bcbd22"))
    ]
    height = 0.8 / len(series)
    ys = np.arange(len(shown))
    fig, ax = plt.subplots(figsize=(10, 1.8 + 0.75 * len(shown)))
    for k, (name, model, color) in enumerate(series):
        values = [r.value if model is None else
                  _numeric(r.paper.values.get(model) if r.paper else None) for r in shown]
        positions = ys - 0.4 + height * (k + 0.5)
        bars = ax.barh(positions, [v if v is not None else 0 for v in values], height,
                       label=name, color=color)
        for bar, v in zip(bars, values, strict=True):
            if v is not None:
                ax.text(bar.get_width(), bar.get_y() + bar.get_height() / 2, f" {v:.1f}",
                        va="center", fontsize=7)
    several_models = len({r.model for r in shown}) > 1
    labels = [f"{r.label}{f' [{r.model}]' if several_models else ''}\n"
              f"{r.metric.upper()} ({_direction(r)} is better)" for r in shown]
    ax.set_yticks(ys, labels, fontsize=8)
    ax.invert_yaxis()
    ax.set_xlabel("score (paper units, x100)")
    ax.set_title("Benchmark results beside the MiDashengLM paper")
    # Below the axes, so that it never hides a bar.
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.45 / (1 + 0.75 * len(shown)) - 0.08),
              ncol=len(series), fontsize=8, frameon=False)
    ax.grid(axis="x", alpha=0.3)
    ax.set_xlim(0, max(ax.get_xlim()[1], 10) * 1.08)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def _numeric(value: Any) -> float | None:
    return float(value) if isinstance(value, int | float) else None


# ---------------------------------------------------------------------------- command
def write_report(folder: Path, out: Path | None = None,
                 **options: Any) -> tuple[Path, Path | None]:
    """Score ``folder``'s result files; write the markdown report and its PNG chart."""
    if not folder.is_dir():
        raise UserError(f"{folder}: no such results folder")
    out = out or folder / "report.md"
    rows, failures = score_folder(folder, **options)
    out.parent.mkdir(parents=True, exist_ok=True)
    chart = bar_chart(rows, out.with_suffix(".png"))
    out.write_text(markdown(rows, failures, folder=folder, chart=chart), encoding="utf-8")
    return out, chart
