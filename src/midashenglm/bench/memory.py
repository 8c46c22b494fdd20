"""Memory: weights, the peak each batch size of 30 s clips adds (measured by ``throughput``),
a linear fit (bytes per sample), and the largest batch that fits a budget."""

from __future__ import annotations

import math
from typing import Any

import torch

from midashenglm.bench.context import Bench
from midashenglm.bench.measure import available_memory_bytes

MODELS = ("midashenglm", "baseline")


def summary(b: Bench, rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Weights, peak memory per batch, and the largest batch that fits the budget."""
    budget = memory_budget(b)
    out: dict[str, Any] = {"budget_bytes": budget, "models": {}}
    for name in MODELS:
        model = b.models.model(name)
        weights = sum(p.numel() * p.element_size() for p in model.parameters())
        ok = [r for r in rows if r["model"] == name and r["status"] == "ok" and r.get("peak_memory_bytes")]
        fit = linear_fit([r["batch"] for r in ok], [r["peak_memory_bytes"] for r in ok])
        entry: dict[str, Any] = {
            "weights_bytes": weights,
            "peak_bytes_by_batch": {r["batch"]: r["peak_memory_bytes"] for r in ok},
            "kv_bytes_per_sample": b.cost(name, b.settings.clip_seconds).kv_bytes,
            "largest_batch_measured": max((r["batch"] for r in ok), default=None),
            "first_oom_batch": min((r["batch"] for r in rows if r["model"] == name and r["status"] == "OOM"),
                                   default=None),
        }
        if fit:
            intercept, slope = fit
            entry["fit_intercept_bytes"] = intercept
            entry["fit_bytes_per_sample"] = slope
            if budget and slope > 0:
                entry["largest_batch_in_budget"] = max(0, math.floor((budget - weights - intercept) / slope))
        out["models"][name] = entry
    return out


def memory_budget(b: Bench) -> int | None:
    """The given budget; else the GPU's memory, or on a CPU what the weights take plus
    the memory the system has available now."""
    if b.settings.memory_budget_gib:
        return int(b.settings.memory_budget_gib * 2**30)
    if b.device.type == "cuda":
        return torch.cuda.get_device_properties(b.device).total_memory
    available = available_memory_bytes()
    if available is None:
        return None
    weights = sum(p.numel() * p.element_size() for p in b.models.midashenglm.parameters())
    return available + weights


def linear_fit(xs: list[int], ys: list[int]) -> tuple[float, float] | None:
    """Least-squares ``y = a + b x``; with one point, a line through the origin."""
    if not xs:
        return None
    if len(set(xs)) == 1:
        return 0.0, ys[0] / xs[0]
    n = len(xs)
    mx, my = sum(xs) / n, sum(ys) / n
    slope = sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / sum((x - mx) ** 2 for x in xs)
    return my - slope * mx, slope
