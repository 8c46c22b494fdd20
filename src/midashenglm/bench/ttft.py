"""Time to first token at batch 1 (the paper's Figure 7): conversation in, first token id out.

For each audio length, the sides are timed interleaved: MiDashengLM, the baseline, the
baseline padded to 30 s (transformers ``generate``, one new token) and MiDashengLM
through the engine, round after round.
"""

from __future__ import annotations

from typing import Any

from midashenglm.bench.context import Bench, record
from midashenglm.bench.measure import Side
from midashenglm.bench.roofline import Spec
from midashenglm.bench.settings import MODELS, engine_available


def measure(b: Bench) -> list[dict[str, Any]]:
    engine = None
    if b.settings.engine and engine_available():
        engine = b.engine("midashenglm", 1)
    rows: list[dict[str, Any]] = []
    for seconds in b.settings.ttft_seconds:
        if b.out_of_time(f"ttft {seconds:g} s"):
            continue

        def make(i: int, s: float = seconds) -> Any:
            return b.conversations([s])

        sides = [Side(name, lambda convs, n=name: b.generate(n, convs, 1), make) for name in MODELS]
        if engine is not None:
            sides.append(Side("engine", lambda convs: b.engine_generate(engine, convs, 1), make))
        results = b.measure(f"ttft {seconds:g} s", sides)
        for side in sides:
            result = results[side.name]
            model, loop = ("midashenglm", "engine") if side.name == "engine" else (side.name, "transformers")
            skipped = (result.output or {}).get("skipped", 0)
            cost = b.cost(model, seconds, new_tokens=1)
            rows.append(record(
                result, model=model, loop=loop, seconds=seconds, requests=1,
                ttft_macs=cost.ttft_macs, prefill_tokens=cost.prefill_tokens,
                work=b.work(model, [Spec(seconds, b.prompt.text_tokens, 1)], 1, skipped_tokens=skipped)))
    return rows
