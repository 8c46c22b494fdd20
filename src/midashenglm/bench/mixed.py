"""The mixed-length workload with fixed answers (clip lengths like the paper's Figure 3,
``new_tokens`` each), run by every loop: transformers batches in arrival order for the
three models, the same requests with one new token (prompt processing alone), one
request at a time, and the engine (at most ``mixed_batch`` rows, and its defaults).

All loops are timed interleaved: each round runs every loop once on fresh audio.
"""

from __future__ import annotations

from typing import Any

from midashenglm.bench.context import Bench, Loop, run_loops
from midashenglm.bench.roofline import Spec
from midashenglm.bench.settings import MODELS, engine_available
from midashenglm.bench.workloads import batches, mixed_lengths

ENGINE_UNAVAILABLE = "not available: midashenglm.inference.engine is not installed"


def transformers_batched(b: Bench, name: str, size: int, new_tokens: int) -> Any:
    """``model.generate`` on consecutive batches of ``size`` (a naive server)."""
    def run(convs: list[Any]) -> dict[str, int]:
        made = [b.generate(name, group, new_tokens) for group in batches(convs, size)]
        return {k: sum(m[k] for m in made) for k in ("asked", "computed", "skipped")}

    return run


def engine_loops(b: Bench, names: tuple[str, ...], specs: list[Spec], make: Any, warm_up: Any,
                 new_tokens: int | list[int], out: dict[str, Any]) -> list[Loop]:
    """The engine on each of ``names`` with at most ``mixed_batch`` rows, then MiDashengLM's
    engine as shipped (its default budgets). Each is warmed up first, as a running service
    is (its caches of prompt heads included)."""
    if not (b.settings.engine and engine_available()):
        out["engine"] = ENGINE_UNAVAILABLE
        return []
    rows = b.settings.mixed_batch
    loops = []
    for name, limit in [*((n, rows) for n in names), ("midashenglm", None)]:
        eng = b.engine(name, limit)
        b.engine_generate(eng, warm_up(), 2)
        if limit:
            loop, description = "engine", f"inference engine, at most {rows} rows, continuous batching"
        else:
            limit = eng.config.max_num_seqs
            loop, description = "engine_default", f"inference engine, default budgets (at most {limit} rows)"
        loops.append(Loop(name, loop, description, lambda convs, e=eng: b.engine_generate(e, convs, new_tokens),
                          make, specs, limit))
    return loops


def measure(b: Bench) -> dict[str, Any]:
    s = b.settings
    lengths = mixed_lengths(s.mixed_requests, s.seed)
    tokens, text = s.new_tokens, b.prompt.text_tokens
    specs = [Spec(x, text, tokens) for x in lengths]
    out: dict[str, Any] = {"lengths_s": lengths, "mean_length_s": sum(lengths) / len(lengths),
                           "batch": s.mixed_batch, "new_tokens": tokens}

    def make() -> list[Any]:
        return b.conversations(lengths)

    loops = [Loop(name, "transformers_batched", f"transformers generate, batches of {s.mixed_batch} in arrival order",
                  transformers_batched(b, name, s.mixed_batch, tokens), make, specs, s.mixed_batch)
             for name in MODELS]
    # The same requests with one new token: the prompt processing the architecture changes
    # (audio path + prefill), without the decode steps both models share.
    loops += [Loop(name, "prompt_only", f"prompt processing only (1 new token), batches of {s.mixed_batch}",
                   transformers_batched(b, name, s.mixed_batch, 1), make,
                   [Spec(x, text, 1) for x in lengths], s.mixed_batch) for name in MODELS]
    # One request at a time is slow: every k-th request, a sample of the same workload.
    step = max(1, len(lengths) // s.one_at_a_time_requests)
    few = lengths[::step][: s.one_at_a_time_requests]
    loops.append(Loop("midashenglm", "transformers_one_at_a_time",
                      f"transformers generate, one request at a time ({len(few)} of the requests, one in {step}, "
                      f"mean {sum(few) / len(few):.1f} s)", transformers_batched(b, "midashenglm", 1, tokens),
                      lambda: b.conversations(few), [Spec(x, text, tokens) for x in few], 1))
    loops += engine_loops(b, ("midashenglm", "baseline"), specs, make,
                          lambda: b.conversations(lengths[:2]), tokens, out)
    out["runs"] = run_loops(b, "mixed", loops)
    return out
