"""``midashenglm plot RUN_DIR``: loss and learning-rate curves of a run as a PNG.

Reads ``RUN_DIR/metrics.jsonl`` (written by :mod:`midashenglm.training.metrics`): training
rows ``{"step", "loss", "lr", ...}`` and validation rows ``{"step", "val_loss"}``.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any

from midashenglm import jsonl
from midashenglm.errors import UserError

METRICS_FILE = "metrics.jsonl"
CURVES_FILE = "curves.png"


def read_curves(path: Path) -> dict[str, list[tuple[float, float]]]:
    """``{"loss": [(step, value), ...], "val_loss": [...], "lr": [...]}`` sorted by step.

    A line that is not a JSON object (a run killed mid-write leaves a torn last line)
    and values that are not finite numbers are skipped; unknown keys are ignored. When
    a step was logged twice (a run resumed from an earlier checkpoint), the later row wins.
    Raises :class:`UserError` naming the file when it is missing or unreadable.
    """
    if not path.is_file():
        raise UserError(f"{path}: no such file (a training run writes it into its output_dir)")
    curves: dict[str, dict[float, float]] = {"loss": {}, "val_loss": {}, "lr": {}}
    for _, row, _problem in jsonl.parse_lines(path):
        if row is None:
            continue
        step = _number(row.get("step"))
        if step is None:
            continue
        for key, points in curves.items():
            value = _number(row.get(key))
            if value is not None:
                points[step] = value
    return {key: sorted(points.items()) for key, points in curves.items()}


def plot_run(run_dir: str | os.PathLike, out: str | os.PathLike | None = None) -> Path:
    """Draw loss (with validation loss as points) and learning rate against step.

    Two panels sharing the step axis, written as a PNG to ``out`` (default
    ``RUN_DIR/curves.png``); returns its path. Raises :class:`UserError` naming the file
    when ``RUN_DIR/metrics.jsonl`` is missing or holds no loss, validation loss or lr.
    """
    from matplotlib.figure import Figure  # no pyplot: no global state, no display needed

    run_dir = Path(run_dir)
    path = run_dir / METRICS_FILE
    curves = read_curves(path)
    if not any(curves.values()):
        raise UserError(f"{path}: no rows with a step and a loss, val_loss or lr to plot")
    target = Path(out) if out is not None else run_dir / CURVES_FILE

    fig = Figure(figsize=(8, 6), constrained_layout=True)
    loss_ax, lr_ax = fig.subplots(2, 1, sharex=True, height_ratios=(2, 1))
    if curves["loss"]:
        loss_ax.plot(*zip(*curves["loss"], strict=True), lw=1, label="train loss")
    if curves["val_loss"]:
        loss_ax.plot(*zip(*curves["val_loss"], strict=True), "o", ms=4, label="validation loss")
    loss_ax.set_ylabel("loss")
    loss_ax.set_title(run_dir.resolve().name or str(run_dir))
    loss_ax.grid(alpha=0.3)
    if curves["loss"] or curves["val_loss"]:
        loss_ax.legend(loc="upper right")
    else:
        _empty(loss_ax, "no loss logged")
    if curves["lr"]:
        lr_ax.plot(*zip(*curves["lr"], strict=True), lw=1, color="tab:orange")
        lr_ax.ticklabel_format(axis="y", style="sci", scilimits=(-3, 3))
    else:
        _empty(lr_ax, "no learning rate logged")
    lr_ax.set_ylabel("learning rate")
    lr_ax.set_xlabel("optimiser step")
    lr_ax.grid(alpha=0.3)

    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        fig.savefig(target, format="png", dpi=120)
    except OSError as err:
        raise UserError(f"{target}: cannot write the plot ({err.strerror or err})") from None
    return target


def _empty(ax: Any, text: str) -> None:
    ax.text(0.5, 0.5, text, ha="center", va="center", transform=ax.transAxes, color="gray")


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value) if math.isfinite(value) else None
