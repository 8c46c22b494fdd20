"""A ``midashenglm bench`` run: the machine's limits, the measurements a command asks for,
and the comparisons drawn from them.

One module per measurement (``ttft``, ``throughput``, ``memory``, ``encoder``, ``mixed``,
``realistic``; the limits in ``peak``); the comparisons are :func:`compare.compare` of
the records they return, nothing more.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from midashenglm.bench import analytic, encoder, memory, mixed, peak, realistic, throughput, ttft
from midashenglm.bench.compare import compare
from midashenglm.bench.context import Bench
from midashenglm.bench.measure import load_average
from midashenglm.bench.models import BenchModels
from midashenglm.bench.settings import MODELS, Settings, engine_available

__all__ = ["MODELS", "Settings", "Suite", "engine_available", "steps"]


@dataclass
class Suite:
    models: BenchModels
    settings: Settings
    advance: Callable[[str], None] = lambda label="": None
    results: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.bench = Bench(self.models, self.settings, self.advance)
        self.prompt = self.bench.prompt

    def _limits(self) -> dict[str, Any]:
        return peak.measure_limits(self.bench.device, self.models.dtype, budget_s=self.settings.limits_budget_s,
                                   bandwidth_bytes=self.settings.bandwidth_bytes,
                                   matmul_sizes=self.settings.matmul_sizes)

    def run(self, sections: tuple[str, ...]) -> dict[str, Any]:
        start = time.perf_counter()
        b, s, r = self.bench, self.settings, self.results
        r["analytic"] = analytic.tables(list(s.ttft_seconds) + [s.clip_seconds], s.new_tokens, b.shapes,
                                        b.prompt.text_tokens, b.bytes_per_value)
        # The memory command alone times nothing: no limits to compare with.
        timed = set(sections) != {"memory"}
        limits_start = self._limits() if timed else None
        self.advance("machine limits (matmul peak, memory bandwidth)")
        if "encoder" in sections:
            r["efficiency"] = encoder.measure(b)
        if "ttft" in sections:
            r["ttft"] = ttft.measure(b)
        if "throughput" in sections or "memory" in sections:
            r["throughput"] = throughput.measure(b, timed="throughput" in sections)
            r["memory"] = memory.summary(b, r["throughput"])
        if "throughput" in sections:
            r["mixed"] = mixed.measure(b)
            r["realistic"] = realistic.measure(b)
        # Measured again at the end: the better of the two is the limit, their gap a flag.
        if limits_start is not None:
            r["peak"] = peak.combine(limits_start, self._limits())
        self.advance("machine limits again")
        r["comparisons"] = compare(r)
        if b.skipped:
            r["skipped_for_time_budget"] = b.skipped
        r["wall_time_s"] = round(time.perf_counter() - start, 1)
        r["load_average_at_end"] = load_average()
        return r


def steps(sections: tuple[str, ...], settings: Settings) -> int:
    """Progress steps of a run: the limits twice, then one per round of every measurement."""
    count = 2
    if "encoder" in sections:
        count += len(settings.efficiency_batches) * (settings.repeats + 2)
    if "ttft" in sections:
        count += len(settings.ttft_seconds) * settings.repeats
    if "throughput" in sections or "memory" in sections:
        count += len(settings.batch_sizes) * (settings.throughput_repeats if "throughput" in sections else 1)
    if "throughput" in sections:
        count += 2 * settings.throughput_repeats  # the mixed workload and the task mix
    return count
