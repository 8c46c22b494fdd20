"""The realistic task mix (:data:`workloads.TASKS`): the mixed workload's clip lengths, each
request with its task's prompt and answer length.

transformers runs batches in arrival order with ``max_new_tokens`` = the longest answer
of the batch (a plain batched ``generate`` runs every row that long; only the tokens
asked for count); the engine gives each request its own length, and rows that finish
make room for waiting requests (continuous batching). All loops are timed interleaved.
"""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

from midashenglm.bench.context import Bench, Loop, run_loops
from midashenglm.bench.mixed import engine_loops
from midashenglm.bench.roofline import Spec
from midashenglm.bench.settings import MODELS
from midashenglm.bench.workloads import TASKS, TaskRequest, realistic_requests, task_conversations


def transformers_batched(b: Bench, name: str, size: int, reqs: list[TaskRequest]) -> Any:
    """Batches of ``size`` in arrival order, each as long as its longest answer."""
    wanted = [r.new_tokens for r in reqs]

    def run(convs: list[Any]) -> dict[str, int]:
        asked = computed = 0
        for start in range(0, len(convs), size):
            group = wanted[start:start + size]
            computed += b.generate(name, convs[start:start + size], max(group))["computed"]
            asked += sum(group)
        return {"asked": asked, "computed": computed, "skipped": 0}

    return run


def measure(b: Bench) -> dict[str, Any]:
    s = b.settings
    requests = realistic_requests(s.realistic_requests, s.seed)

    def specs(reqs: list[TaskRequest]) -> list[Spec]:
        return [Spec(r.seconds, b.text_tokens(r.question), r.new_tokens) for r in reqs]

    def make(reqs: list[TaskRequest]) -> Any:
        return lambda: task_conversations(reqs, b.fresh_seed())

    out: dict[str, Any] = {
        "tasks": [asdict(t) for t in TASKS],
        "requests": [r.as_dict() for r in requests],
        "lengths_s": [r.seconds for r in requests],
        "mean_length_s": sum(r.seconds for r in requests) / len(requests),
        "mean_new_tokens": sum(r.new_tokens for r in requests) / len(requests),
        "batch": s.mixed_batch,
    }
    loops = [Loop(name, "transformers_batched",
                  f"transformers generate, batches of {s.mixed_batch} in arrival order, each batch as long as "
                  "its longest answer", transformers_batched(b, name, s.mixed_batch, requests),
                  make(requests), specs(requests), s.mixed_batch) for name in MODELS]
    step = max(1, len(requests) // s.realistic_one_at_a_time)
    few = requests[::step][: s.realistic_one_at_a_time]
    loops.append(Loop("midashenglm", "transformers_one_at_a_time",
                      f"transformers generate, one request at a time ({len(few)} of the requests, one in {step}, "
                      f"mean {sum(r.seconds for r in few) / len(few):.1f} s, "
                      f"{sum(r.new_tokens for r in few) / len(few):.1f} tokens)",
                      transformers_batched(b, "midashenglm", 1, few), make(few), specs(few), 1))
    loops += engine_loops(b, MODELS, specs(requests), make(requests), make(requests[:2]),
                          [r.new_tokens for r in requests], out)
    out["runs"] = run_loops(b, "realistic", loops)
    return out
