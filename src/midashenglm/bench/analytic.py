"""The analytic side alone: MACs and bytes per request for the published 7B shapes and for the
shapes a run measures (the report's "Analytical cost per request" tables)."""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

from midashenglm.bench import costs
from midashenglm.bench.roofline import Spec, weight_bytes, workload_work

FULL_SHAPES = {"dasheng": costs.DASHENG_06B, "whisper": costs.WHISPER_LARGE_V3, "decoder": costs.QWEN25_OMNI_7B}


def tables(lengths: list[float], new_tokens: int, run_shapes: dict[str, Any], run_text_tokens: int,
           run_bytes_per_value: int) -> dict[str, Any]:
    """Cost per request (batch 1): MACs per stage, KV bytes, and bytes moved per phase."""
    out: dict[str, Any] = {"text_tokens_paper": costs.PAPER_TEXT_TOKENS}
    for label, shapes, text, bpv in (
        ("full_bf16", FULL_SHAPES, costs.PAPER_TEXT_TOKENS, 2),
        ("run", run_shapes, run_text_tokens, run_bytes_per_value),
    ):
        rows = []
        for seconds in sorted(set(lengths)):
            for model, pad in (("midashenglm", None), ("baseline", None), ("baseline", 30.0)):
                cost = costs.request_cost(model, seconds, **shapes, text_tokens=text, new_tokens=new_tokens,
                                          kv_bytes_per_value=bpv, pad_to_seconds=pad)
                work = workload_work(model, [Spec(seconds, text, new_tokens)], rows=1, shapes=shapes,
                                     bytes_per_value=bpv, pad_to_seconds=pad)
                weights = weight_bytes(model, **shapes, bytes_per_value=bpv)
                rows.append({**cost.as_dict(), "model": "baseline_pad30" if pad else model,
                             "bytes": {p: work[p]["bytes"] for p in ("audio", "prefill", "decode")},
                             "weights_bytes": weights})
        out[label] = rows
    out["run_shapes"] = {k: asdict(v) for k, v in run_shapes.items()}
    out["run_text_tokens"] = run_text_tokens
    return out
