"""What every measurement module shares: the models, fresh inputs, the generation loops
(transformers and the engine), the time budget, and the record of one timed side.

Every timing runs end to end from conversations (audio arrays in memory) to token
ids: the processor's template and audio-token expansion, the move to the device,
the audio path, the decoder. "transformers" means ``model.generate`` (which calls
the decoder's transformers ``generate``), greedy, exactly ``new_tokens`` new tokens
(``min_new_tokens = max_new_tokens``, so EOS never ends a row early); "engine" means
``midashenglm.inference.Engine`` with ``ignore_eos``, its encoder cache off.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from midashenglm.bench import costs
from midashenglm.bench.measure import Side, SideResult, time_interleaved
from midashenglm.bench.models import BenchModels
from midashenglm.bench.roofline import PHASES, Spec, workload_work
from midashenglm.bench.settings import Settings
from midashenglm.bench.workloads import SAMPLE_RATE, Prompt, conversations, make_prompt
from midashenglm.processing import DEFAULT_SYSTEM_PROMPT, num_audio_tokens

# engine.stats counters of prompt tokens a cache or a shared prefix let it skip.
_SKIP_COUNTERS = ("prefix_cache_tokens_saved", "shared_prefix_tokens_saved")


@dataclass
class Bench:
    """The state of one benchmark run, handed to every measurement module."""

    models: BenchModels
    settings: Settings
    advance: Callable[[str], None] = lambda label="": None
    skipped: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.device = self.models.device
        self.prompt = make_prompt(self.models.processor, self.settings.text_tokens)
        self.shapes = self.models.spec.shapes()
        self.bytes_per_value = torch.finfo(self.models.dtype).bits // 8
        self._seed = self.settings.seed * 1_000_003
        self._deadline = (
            time.perf_counter() + self.settings.time_budget_s if self.settings.time_budget_s else None
        )
        self._text_tokens: dict[str, int] = {}

    # ------------------------------------------------------------------ time budget
    def spent(self) -> bool:
        return self._deadline is not None and time.perf_counter() >= self._deadline

    def out_of_time(self, what: str) -> bool:
        """True (and ``what`` noted as skipped) once the time budget is spent."""
        if not self.spent():
            return False
        self.skipped.append(what)
        self.advance(f"skipped {what} (time budget)")
        return True

    # ----------------------------------------------------------------------- inputs
    def fresh_seed(self) -> int:
        self._seed += 1
        return self._seed

    def conversations(self, lengths: list[float]) -> list[list[dict[str, Any]]]:
        return conversations(self.prompt, lengths, self.fresh_seed())

    def text_tokens(self, question: str) -> int:
        """Prompt tokens around the audio for ``question`` (system prompt and markup included)."""
        if question not in self._text_tokens:
            wave = np.zeros(SAMPLE_RATE, dtype=np.float32)
            conv = Prompt(DEFAULT_SYSTEM_PROMPT, question, 0).conversation(wave)
            ids = self.models.processor(conversations=[conv])["input_ids"]
            self._text_tokens[question] = int(ids.shape[1]) - num_audio_tokens(len(wave))
        return self._text_tokens[question]

    # ------------------------------------------------------------------------ loops
    def generate(self, name: str, convs: list[Any], new_tokens: int) -> dict[str, int]:
        """transformers generation of one batch, from conversations."""
        batch = self.models.processor_for(name)(conversations=convs).to(self.device)
        with torch.inference_mode():
            out = self.models.model(name).generate(
                **batch, max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False
            )
        return {"asked": int(out.numel()), "computed": int(out.numel()), "skipped": 0}

    def engine(self, name: str, rows: int | None) -> Any:
        """The engine on ``name``: at most ``rows`` rows (no other budget), or its defaults (None)."""
        from midashenglm.inference import Engine

        limits: dict[str, Any] = {}
        if rows is not None:
            limits = {"max_num_seqs": rows, "max_batch_audio_seconds": 1e9, "max_kv_cache_tokens": 1 << 40}
        return Engine(
            self.models.model(name),
            self.models.processor_for(name),
            encoder_cache_items=0,  # fresh clips anyway; never let a cache hit flatter it
            **limits,
        )

    def engine_generate(self, engine: Any, convs: list[Any], new_tokens: int | list[int]) -> dict[str, int]:
        """The engine on ``convs``, ``new_tokens`` each (or one count per conversation); also
        the prompt tokens its caches let it skip (from ``engine.stats``)."""
        from midashenglm.inference import Request, SamplingParams

        counts = new_tokens if isinstance(new_tokens, list) else [new_tokens] * len(convs)
        before = _skipped(engine)
        results = engine.generate([Request(c, SamplingParams(max_new_tokens=n, ignore_eos=True))
                                   for c, n in zip(convs, counts, strict=True)])
        failed = [r.error for r in results if not r.ok]
        if failed:
            raise RuntimeError(f"the engine failed {len(failed)} request(s): {failed[0]}")
        made = sum(r.completion_tokens for r in results)
        skipped = _skipped(engine) - before
        return {"asked": made, "computed": made, "skipped": int(skipped)}

    # ---------------------------------------------------------------------- timing
    def measure(self, label: str, sides: list[Side], *, repeats: int | None = None,
                warmup: int | None = None) -> dict[str, SideResult]:
        """Time ``sides`` interleaved (A, B, A, B, ...); rounds stop early once the time
        budget is spent (at least one round runs)."""
        repeats = self.settings.repeats if repeats is None else repeats

        def on_round(r: int) -> None:
            self.advance(f"{label} ({r + 1}/{repeats})" if repeats > 1 else label)

        return time_interleaved(
            sides, device=self.device, warmup=self.settings.warmup if warmup is None else warmup,
            repeats=repeats, stop=self.spent, on_round=on_round)

    # ------------------------------------------------------------------------ costs
    def cost(self, model: str, seconds: float, new_tokens: int | None = None) -> costs.RequestCost:
        return costs.request_cost(
            "midashenglm" if model == "midashenglm" else "baseline",
            seconds,
            **self.shapes,
            text_tokens=self.prompt.text_tokens,
            new_tokens=self.settings.new_tokens if new_tokens is None else new_tokens,
            kv_bytes_per_value=self.bytes_per_value,
            pad_to_seconds=30.0 if model == "baseline_pad30" else None,
        )

    def work(self, model: str, specs: list[Spec], rows: int, *, phases: tuple[str, ...] = PHASES,
             skipped_tokens: int = 0) -> dict[str, Any]:
        """MACs and bytes per phase of ``specs`` run with at most ``rows`` rows a pass
        (``roofline.workload_work``), less the prompt tokens a cache skipped."""
        kind = "midashenglm" if model == "midashenglm" else "baseline"
        pad = 30.0 if model == "baseline_pad30" else None
        work = workload_work(kind, specs, rows=rows, shapes=self.shapes, bytes_per_value=self.bytes_per_value,
                             pad_to_seconds=pad, phases=phases)
        if skipped_tokens:
            work = workload_work(kind, specs, rows=rows, shapes=self.shapes, bytes_per_value=self.bytes_per_value,
                                 pad_to_seconds=pad, phases=phases,
                                 prefill_skipped=skipped_tokens / max(1, work["prompt_tokens"]))
            work["prompt_tokens_skipped"] = skipped_tokens
        return work


def _skipped(engine: Any) -> int:
    """Prompt tokens the engine has skipped so far (0 where its stats do not count them)."""
    stats = engine.stats
    get = stats.get if hasattr(stats, "get") else (lambda k, d: getattr(stats, k, d))
    return int(sum(get(k, 0) or 0 for k in _SKIP_COUNTERS))


@dataclass
class Loop:
    """One way of running a workload's requests, for :meth:`Bench.run_loops`.

    ``run(conversations)`` returns ``{"asked", "computed", "skipped"}`` tokens; ``specs``
    is the work asked (clip, prompt and answer length per request) and ``rows`` the most
    rows a pass of this loop holds: both size the roofline.
    """

    model: str
    loop: str
    description: str
    run: Callable[[list[Any]], dict[str, int]]
    make: Callable[[], list[Any]]
    specs: list[Spec]
    rows: int


def run_loops(b: Bench, workload: str, loops: list[Loop]) -> list[dict[str, Any]]:
    """Time every loop on fresh conversations, interleaved (one round runs each loop once),
    and return one record per loop (skipped loops: none, and noted as skipped)."""
    if not loops or b.out_of_time(f"{workload} ({len(loops)} loops)"):
        return []
    sides = [Side(f"{x.model}/{x.loop}", x.run, lambda i, x=x: x.make(), warmup=0) for x in loops]
    results = b.measure(workload, sides, repeats=b.settings.throughput_repeats, warmup=0)
    out = []
    for x, side in zip(loops, sides, strict=True):
        result = results[side.name]
        skipped = (result.output or {}).get("skipped", 0)
        row = record(result, model=x.model, loop=x.loop, description=x.description, requests=len(x.specs),
                     rows=x.rows, work=b.work(x.model, x.specs, x.rows, skipped_tokens=skipped))
        if "time" in row:
            row["samples_per_s"] = len(x.specs) / row["time"]["median"]
        out.append(row)
    return out


def record(result: SideResult, **fields: Any) -> dict[str, Any]:
    """The record of one measured side: its fields, status, timings and tokens made."""
    out: dict[str, Any] = {**fields, "status": result.status}
    stats = result.stats
    if stats is not None:
        out["time"] = stats.as_dict()
    output = result.output
    if isinstance(output, dict):
        out["new_tokens_made"] = output.get("asked")
        out["new_tokens_computed"] = output.get("computed")
    return out
