"""Samples/s for batches of 30 s clips, ``new_tokens`` each (the paper's Table 13), with the
peak memory each batch size adds. Per batch size MiDashengLM and the baseline are timed
interleaved; a model stops at its first OOM (larger batches are reported as OOM).
"""

from __future__ import annotations

from typing import Any

from midashenglm.bench.context import Bench, record
from midashenglm.bench.measure import Side
from midashenglm.bench.roofline import Spec

MODELS = ("midashenglm", "baseline")


def measure(b: Bench, timed: bool = True) -> list[dict[str, Any]]:
    """``timed=False`` (the ``memory`` command alone): one run per batch size, for its memory."""
    s = b.settings
    seconds, tokens = s.clip_seconds, s.new_tokens
    rows: list[dict[str, Any]] = []
    oom: set[str] = set()
    for i, batch in enumerate(s.batch_sizes):
        if b.out_of_time(f"throughput x{batch}"):
            rows += [{"model": m, "loop": "transformers", "batch": batch, "status": "skipped"} for m in MODELS]
            continue

        def make(j: int, size: int = batch) -> Any:
            return b.conversations([seconds] * size)

        sides = [Side(m, lambda convs, n=m: b.generate(n, convs, tokens), make, memory=True,
                      warmup=s.warmup if i == 0 else 0) for m in MODELS if m not in oom]
        results = b.measure(f"throughput x{batch}", sides, repeats=s.throughput_repeats if timed else 1) \
            if sides else {}
        for model in MODELS:
            result = results.get(model)
            if result is None or result.status == "OOM":
                oom.add(model)
                rows.append({"model": model, "loop": "transformers", "batch": batch, "status": "OOM"})
                continue
            cost = b.cost(model, seconds)
            row = record(result, model=model, loop="transformers", batch=batch, requests=batch,
                         seconds=seconds, peak_memory_bytes=result.peak_memory_bytes,
                         kv_bytes=batch * cost.kv_bytes, timed=timed,
                         work=b.work(model, [Spec(seconds, b.prompt.text_tokens, tokens)] * batch, batch))
            median = row["time"]["median"]
            row["samples_per_s"] = batch / median
            row["tokens_per_s"] = batch * tokens / median
            rows.append(row)
    return rows
