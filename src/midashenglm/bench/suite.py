"""The measurements behind ``midashenglm bench``, and the three comparisons drawn from them.

Every timing runs end to end from conversations (audio arrays in memory) to token
ids: the processor's template and audio-token expansion, the move to the device,
the audio path, the decoder. "transformers" means ``model.generate`` (which calls
the decoder's transformers ``generate``), greedy, exactly ``new_tokens`` new tokens
(``min_new_tokens = max_new_tokens``, so EOS never ends a row early); "engine" means
``midashenglm.inference.Engine`` with ``ignore_eos``, its encoder cache off.

Two mixed-length workloads: the fixed one (every request makes ``new_tokens``, as the
paper's Table 13) and the realistic task mix (:data:`workloads.TASKS`: each request
asks for its own answer length).
"""

from __future__ import annotations

import importlib.util
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from typing import Any

import numpy as np
import torch

from midashenglm.bench import costs
from midashenglm.bench.measure import (
    PeakMemory,
    Stats,
    available_memory_bytes,
    is_out_of_memory,
    load_average,
    matmul_peak,
    time_call,
)
from midashenglm.bench.models import BenchModels
from midashenglm.bench.workloads import (
    SAMPLE_RATE,
    TASKS,
    Prompt,
    TaskRequest,
    batches,
    conversations,
    make_prompt,
    mixed_lengths,
    realistic_requests,
    task_conversations,
)
from midashenglm.processing import DEFAULT_SYSTEM_PROMPT, num_audio_tokens

MODELS = ("midashenglm", "baseline", "baseline_pad30")


@dataclass
class Settings:
    """What to measure and how often. ``for_scale`` gives the defaults of each scale."""

    ttft_seconds: tuple[float, ...] = (1, 2, 5, 10, 20, 30)
    warmup: int = 1
    repeats: int = 3
    throughput_repeats: int = 2  # also for the mixed workload: each repeat is long
    clip_seconds: float = 30.0
    new_tokens: int = 100
    batch_sizes: tuple[int, ...] = (1, 2, 4, 8, 16)
    efficiency_batches: tuple[int, ...] = (1, 4)
    mixed_requests: int = 16
    mixed_batch: int = 8
    one_at_a_time_requests: int = 4
    realistic_requests: int = 32  # the task mix: per-request answer lengths
    realistic_one_at_a_time: int = 16
    text_tokens: int = 30
    memory_budget_gib: float | None = None
    seed: int = 0
    engine: bool = True
    time_budget_s: float | None = None  # measurements not started by then are skipped

    @classmethod
    def for_scale(cls, scale: str, device: torch.device, quick: bool = False) -> Settings:
        settings = cls()
        if scale == "full" or device.type == "cuda":
            settings = replace(
                settings,
                batch_sizes=(1, 2, 4, 8, 16, 32, 64, 128, 256, 512),
                throughput_repeats=2,
                mixed_requests=128,
                mixed_batch=32,
                one_at_a_time_requests=8,
                realistic_requests=128,
                realistic_one_at_a_time=16,
                efficiency_batches=(1, 8, 32),
            )
        if quick:
            settings = replace(
                settings,
                ttft_seconds=(1, 10, 30),
                repeats=2,
                throughput_repeats=1,
                new_tokens=min(settings.new_tokens, 10),
                batch_sizes=(1, 4),
                efficiency_batches=(1, 4),
                mixed_requests=8,
                mixed_batch=4,
                one_at_a_time_requests=4,
                realistic_requests=8,
                realistic_one_at_a_time=4,
            )
        return settings


def engine_available() -> bool:
    """True when the inference engine (``midashenglm.inference.engine``) is installed."""
    try:
        return importlib.util.find_spec("midashenglm.inference.engine") is not None
    except ModuleNotFoundError:
        return False


@dataclass
class Suite:
    models: BenchModels
    settings: Settings
    advance: Callable[[str], None] = lambda label="": None
    results: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.device = self.models.device
        self.prompt = make_prompt(self.models.processor, self.settings.text_tokens)
        self.shapes = self.models.spec.shapes()
        self.kv_bytes_per_value = torch.finfo(self.models.dtype).bits // 8
        self._seed = self.settings.seed * 1_000_003
        self._deadline = (
            time.perf_counter() + self.settings.time_budget_s if self.settings.time_budget_s else None
        )
        self.skipped: list[str] = []
        self._text_tokens: dict[str, int] = {}

    def out_of_time(self, what: str) -> bool:
        """True (and ``what`` noted as skipped) once the time budget is spent."""
        if self._deadline is None or time.perf_counter() < self._deadline:
            return False
        self.skipped.append(what)
        self.advance(f"skipped {what} (time budget)")
        return True

    # ------------------------------------------------------------------- helpers
    def _fresh_seed(self) -> int:
        self._seed += 1
        return self._seed

    def _conversations(self, lengths: list[float]) -> list[list[dict[str, Any]]]:
        return conversations(self.prompt, lengths, self._fresh_seed())

    def cost(self, model: str, seconds: float) -> costs.RequestCost:
        return costs.request_cost(
            "midashenglm" if model == "midashenglm" else "baseline",
            seconds,
            **self.shapes,
            text_tokens=self.prompt.text_tokens,
            new_tokens=self.settings.new_tokens,
            kv_bytes_per_value=self.kv_bytes_per_value,
            pad_to_seconds=30.0 if model == "baseline_pad30" else None,
        )

    def workload_macs(self, lengths: list[float], new_tokens: list[int], text_tokens: list[int]) -> dict[str, Any]:
        """Analytic MACs of a whole workload per model (audio path + prefill, decode) and the
        baselines' ratios to MiDashengLM: what the arithmetic alone predicts."""
        out: dict[str, Any] = {}
        for name in MODELS:
            ttft = decode = 0
            for seconds, new, text in zip(lengths, new_tokens, text_tokens, strict=True):
                cost = costs.request_cost(
                    "midashenglm" if name == "midashenglm" else "baseline", seconds, **self.shapes,
                    text_tokens=text, new_tokens=new, kv_bytes_per_value=self.kv_bytes_per_value,
                    pad_to_seconds=30.0 if name == "baseline_pad30" else None)
                ttft += cost.ttft_macs
                decode += cost.decode
            out[name] = {"ttft_macs": ttft, "decode_macs": decode, "total_macs": ttft + decode}
        ours = out["midashenglm"]["total_macs"]
        out["ratio"] = {name: out[name]["total_macs"] / ours for name in MODELS if name != "midashenglm"}
        return out

    def text_tokens(self, question: str) -> int:
        """Prompt tokens around the audio for ``question`` (system prompt and markup included)."""
        if question not in self._text_tokens:
            wave = np.zeros(SAMPLE_RATE, dtype=np.float32)
            conv = Prompt(DEFAULT_SYSTEM_PROMPT, question, 0).conversation(wave)
            ids = self.models.processor(conversations=[conv])["input_ids"]
            self._text_tokens[question] = int(ids.shape[1]) - num_audio_tokens(len(wave))
        return self._text_tokens[question]

    def generate(self, name: str, convs: list[Any], new_tokens: int) -> int:
        """transformers generation of one batch, from conversations; returns new tokens made."""
        batch = self.models.processor_for(name)(conversations=convs).to(self.device)
        with torch.inference_mode():
            out = self.models.model(name).generate(
                **batch, max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False
            )
        return int(out.numel())

    def engine(self, name: str, max_batch_size: int | None) -> Any:
        """The engine on ``name``; a fixed row limit (no other budget), or its defaults (None)."""
        from midashenglm.inference.engine import Engine

        limits: dict[str, Any] = {}
        if max_batch_size is not None:
            limits = {"max_batch_size": max_batch_size, "max_batch_audio_seconds": 1e9,
                      "max_batch_tokens": 1 << 40}
        return Engine(
            self.models.model(name),
            self.models.processor_for(name),
            encoder_cache_items=0,  # fresh clips anyway; never let a cache hit flatter it
            **limits,
        )

    def engine_generate(self, engine: Any, convs: list[Any], new_tokens: int | list[int]) -> int:
        """The engine on ``convs``, ``new_tokens`` each (or one count per conversation)."""
        from midashenglm.inference.engine import Request
        from midashenglm.inference.sampling import SamplingParams

        counts = new_tokens if isinstance(new_tokens, list) else [new_tokens] * len(convs)
        results = engine.generate([Request(c, SamplingParams(max_new_tokens=n, ignore_eos=True))
                                   for c, n in zip(convs, counts, strict=True)])
        failed = [r.error for r in results if not r.ok]
        if failed:
            raise RuntimeError(f"the engine failed {len(failed)} request(s): {failed[0]}")
        return sum(r.completion_tokens for r in results)

    def _time(self, fn: Callable[[Any], Any], make: Callable[[int], Any], *, warmup: int | None = None,
              repeats: int | None = None) -> Stats:
        return time_call(
            fn,
            make,
            device=self.device,
            warmup=self.settings.warmup if warmup is None else warmup,
            repeats=self.settings.repeats if repeats is None else repeats,
        )

    # ------------------------------------------------------------------ sections
    def run(self, sections: tuple[str, ...]) -> dict[str, Any]:
        start = time.perf_counter()
        self.results["analytic"] = self.analytic()
        if "peak" in sections or "encoder" in sections:
            self.results["peak"] = self.measure_peak()
        if "encoder" in sections:
            self.results["efficiency"] = self.measure_efficiency()
        if "ttft" in sections:
            self.results["ttft"] = self.measure_ttft()
        if "throughput" in sections or "memory" in sections:
            self.results["throughput"] = self.measure_throughput(
                timed="throughput" in sections
            )
            self.results["memory"] = self.memory_summary(self.results["throughput"])
        if "throughput" in sections:
            self.results["mixed"] = self.measure_mixed()
            self.results["realistic"] = self.measure_realistic()
        self.results["comparisons"] = self.comparisons()
        if self.skipped:
            self.results["skipped_for_time_budget"] = self.skipped
        self.results["wall_time_s"] = round(time.perf_counter() - start, 1)
        self.results["load_average_at_end"] = load_average()
        return self.results

    def analytic(self) -> dict[str, Any]:
        """Cost per request for the paper's shapes and for the shapes this run measures."""
        full = {
            "dasheng": costs.DASHENG_06B,
            "whisper": costs.WHISPER_LARGE_V3,
            "decoder": costs.QWEN25_OMNI_7B,
        }
        lengths = sorted(set(self.settings.ttft_seconds) | {self.settings.clip_seconds})
        out: dict[str, Any] = {"text_tokens_paper": costs.PAPER_TEXT_TOKENS}
        for label, shapes, text, kv in (
            ("full_bf16", full, costs.PAPER_TEXT_TOKENS, 2),
            ("run", self.shapes, self.prompt.text_tokens, self.kv_bytes_per_value),
        ):
            rows = []
            for seconds in lengths:
                for model, pad in (("midashenglm", None), ("baseline", None), ("baseline", 30.0)):
                    cost = costs.request_cost(
                        model,
                        seconds,
                        **shapes,
                        text_tokens=text,
                        new_tokens=self.settings.new_tokens,
                        kv_bytes_per_value=kv,
                        pad_to_seconds=pad,
                    )
                    name = "baseline_pad30" if pad else model
                    rows.append({**cost.as_dict(), "model": name})
            out[label] = rows
        out["run_shapes"] = {k: asdict(v) for k, v in self.shapes.items()}
        out["run_text_tokens"] = self.prompt.text_tokens
        return out

    def measure_peak(self) -> dict[str, Any]:
        peak = matmul_peak(self.device, self.models.dtype)
        self.advance("matmul peak")
        return asdict(peak)

    def measure_efficiency(self) -> list[dict[str, Any]]:
        """Achieved FLOP/s of the audio path and of the decoder prefill, 30 s clips."""
        peak = self.results.get("peak") or self.measure_peak()
        seconds = self.settings.clip_seconds
        rows = []
        for name in ("midashenglm", "baseline"):
            model = self.models.model(name)
            processor = self.models.processor_for(name)
            cost = self.cost(name, seconds)
            for batch_size in self.settings.efficiency_batches:

                def make(i: int, b: int = batch_size, p: Any = processor) -> Any:
                    return p(conversations=self._conversations([seconds] * b)).to(self.device)

                def encode(batch: Any, m: Any = model) -> Any:
                    with torch.inference_mode():
                        return m.encode_audio(batch["input_values"], batch["audio_length"])

                def make_embeds(i: int, b: int = batch_size, m: Any = model) -> Any:
                    batch = make(i, b)
                    with torch.inference_mode():
                        embeds = m.embed(batch["input_ids"], batch["input_values"], batch["audio_length"])
                    return embeds, batch["attention_mask"]

                def prefill(inputs: Any, m: Any = model) -> Any:
                    embeds, mask = inputs
                    with torch.inference_mode():
                        return m.decoder(
                            inputs_embeds=embeds, attention_mask=mask, use_cache=True, logits_to_keep=1
                        )

                # Short runs on a shared machine are noisy: two more repeats than elsewhere.
                repeats = self.settings.repeats + 2
                try:
                    enc = self._time(encode, make, repeats=repeats)
                    pre = self._time(prefill, make_embeds, repeats=repeats)
                except Exception as err:
                    if not is_out_of_memory(err):
                        raise
                    rows.append({"model": name, "batch": batch_size, "status": "OOM"})
                    continue
                enc_macs = batch_size * (cost.encoder + cost.projector)
                pre_macs = batch_size * cost.prefill
                for stage, stats, macs in (("audio path", enc, enc_macs), ("prefill", pre, pre_macs)):
                    achieved = 2 * macs / stats.median
                    rows.append(
                        {
                            "model": name,
                            "stage": stage,
                            "batch": batch_size,
                            "seconds": seconds,
                            "macs": macs,
                            "time": stats.as_dict(),
                            "flops_per_s": achieved,
                            "fraction_of_peak": achieved / peak["flops_per_s"],
                            "status": "ok",
                        }
                    )
                self.advance(f"efficiency {name} x{batch_size}")
        return rows

    def measure_ttft(self) -> list[dict[str, Any]]:
        """Time to first token at batch 1: conversation in, first token id out."""
        rows = []
        runners: list[tuple[str, Callable[[Any], Any]]] = [
            (name, lambda convs, n=name: self.generate(n, convs, 1)) for name in MODELS
        ]
        if self.settings.engine and engine_available():
            eng = self.engine("midashenglm", 1)
            runners.append(("midashenglm_engine", lambda convs: self.engine_generate(eng, convs, 1)))
        for seconds in self.settings.ttft_seconds:
            for name, fn in runners:
                if self.out_of_time(f"ttft {name} {seconds:g} s"):
                    continue
                stats = self._time(fn, lambda i, s=seconds: self._conversations([s]))
                model = name.removesuffix("_engine")
                cost = self.cost(model, seconds)
                rows.append(
                    {
                        "model": name,
                        "seconds": seconds,
                        "time": stats.as_dict(),
                        "ttft_macs": cost.ttft_macs,
                        "prefill_tokens": cost.prefill_tokens,
                    }
                )
                self.advance(f"ttft {name} {seconds:g}s")
        return rows

    def measure_throughput(self, timed: bool = True) -> list[dict[str, Any]]:
        """Samples/s for batches of 30 s clips, ``new_tokens`` each (the paper's Table 13),
        with the peak memory of each batch size. Stops a model at its first OOM."""
        settings = self.settings
        seconds, tokens = settings.clip_seconds, settings.new_tokens
        rows = []
        for name in ("midashenglm", "baseline"):
            oom = False
            for i, batch_size in enumerate(settings.batch_sizes):
                if oom:
                    rows.append({"model": name, "batch": batch_size, "status": "OOM"})
                    continue
                if self.out_of_time(f"throughput {name} x{batch_size}"):
                    rows.append({"model": name, "batch": batch_size, "status": "skipped"})
                    continue
                memory = PeakMemory(self.device)
                try:
                    with memory:
                        stats = self._time(
                            lambda convs, n=name: self.generate(n, convs, tokens),
                            lambda j, b=batch_size: self._conversations([seconds] * b),
                            warmup=settings.warmup if i == 0 else 0,
                            repeats=settings.throughput_repeats if timed else 1,
                        )
                except Exception as err:
                    if not is_out_of_memory(err):
                        raise
                    oom = True
                    self._free()
                    rows.append({"model": name, "batch": batch_size, "status": "OOM"})
                    self.advance(f"throughput {name} x{batch_size}: OOM")
                    continue
                cost = self.cost(name, seconds)
                rows.append(
                    {
                        "model": name,
                        "batch": batch_size,
                        "status": "ok",
                        "time": stats.as_dict(),
                        "samples_per_s": batch_size / stats.median,
                        "tokens_per_s": batch_size * tokens / stats.median,
                        "peak_memory_bytes": memory.peak_bytes,
                        "kv_bytes": batch_size * cost.kv_bytes,
                        "timed": timed,
                    }
                )
                self.advance(f"throughput {name} x{batch_size}")
        return rows

    def _free(self) -> None:
        import gc

        gc.collect()
        if self.device.type == "cuda":
            torch.cuda.empty_cache()

    def memory_summary(self, rows: list[dict[str, Any]]) -> dict[str, Any]:
        """Weights, peak memory per batch, and the largest batch that fits the budget."""
        budget = self.memory_budget()
        out: dict[str, Any] = {"budget_bytes": budget, "models": {}}
        for name in ("midashenglm", "baseline"):
            model = self.models.model(name)
            weights = sum(p.numel() * p.element_size() for p in model.parameters())
            ok = [r for r in rows if r["model"] == name and r["status"] == "ok" and r["peak_memory_bytes"]]
            fit = _linear_fit([r["batch"] for r in ok], [r["peak_memory_bytes"] for r in ok])
            largest_measured = max((r["batch"] for r in ok), default=None)
            entry: dict[str, Any] = {
                "weights_bytes": weights,
                "peak_bytes_by_batch": {r["batch"]: r["peak_memory_bytes"] for r in ok},
                "kv_bytes_per_sample": self.cost(name, self.settings.clip_seconds).kv_bytes,
                "largest_batch_measured": largest_measured,
                "first_oom_batch": min((r["batch"] for r in rows if r["model"] == name
                                        and r["status"] == "OOM"), default=None),
            }
            if fit:
                intercept, slope = fit
                entry["fit_intercept_bytes"] = intercept
                entry["fit_bytes_per_sample"] = slope
                if budget and slope > 0:
                    room = budget - weights - intercept
                    entry["largest_batch_in_budget"] = max(0, math.floor(room / slope))
            out["models"][name] = entry
        return out

    def memory_budget(self) -> int | None:
        """The given budget; else the GPU's memory, or on a CPU what the weights take plus
        the memory the system has available now."""
        if self.settings.memory_budget_gib:
            return int(self.settings.memory_budget_gib * 2**30)
        if self.device.type == "cuda":
            return torch.cuda.get_device_properties(self.device).total_memory
        available = available_memory_bytes()
        if available is None:
            return None
        weights = sum(p.numel() * p.element_size() for p in self.models.midashenglm.parameters())
        return available + weights

    def measure_mixed(self) -> dict[str, Any]:
        """The Figure 3 workload: architecture ratio (same transformers loop for every
        model) and implementation ratio (engine against transformers, MiDashengLM)."""
        s = self.settings
        lengths = mixed_lengths(s.mixed_requests, s.seed)
        tokens = s.new_tokens
        out: dict[str, Any] = {
            "lengths_s": lengths,
            "mean_length_s": sum(lengths) / len(lengths),
            "batch": s.mixed_batch,
            "new_tokens": tokens,
            "analytic": self.workload_macs(lengths, [tokens] * len(lengths),
                                           [self.prompt.text_tokens] * len(lengths)),
            "analytic_prompt_only": self.workload_macs(lengths, [1] * len(lengths),
                                                       [self.prompt.text_tokens] * len(lengths)),
            "runs": [],
        }

        def naive(name: str, size: int, new: int = tokens) -> Callable[[list[Any]], int]:
            def run(convs: list[Any]) -> int:
                return sum(self.generate(name, group, new) for group in batches(convs, size))

            return run

        def measure(name: str, loop: str, description: str, run: Callable[[list[Any]], int],
                    requests: list[float]) -> None:
            self._measure_run(out, "mixed", name, loop, description, run,
                              lambda: self._conversations(requests), len(requests))

        for name in MODELS:
            measure(name, "transformers_batched",
                    f"transformers generate, batches of {s.mixed_batch} in arrival order",
                    naive(name, s.mixed_batch), lengths)
        # The same requests with one new token: the prompt processing the architecture
        # changes (audio path + prefill), without the decode steps both models share.
        for name in MODELS:
            measure(name, "prompt_only",
                    f"prompt processing only (1 new token), batches of {s.mixed_batch}",
                    naive(name, s.mixed_batch, 1), lengths)
        # One request at a time is slow: every k-th request, a sample of the same workload.
        step = max(1, len(lengths) // s.one_at_a_time_requests)
        few = lengths[::step][: s.one_at_a_time_requests]
        measure("midashenglm", "transformers_one_at_a_time",
                f"transformers generate, one request at a time ({len(few)} of the requests, "
                f"one in {step}, mean {sum(few) / len(few):.1f} s)", naive("midashenglm", 1), few)

        self._measure_engines(out, ("midashenglm", "baseline"), measure, lengths,
                              lambda: self._conversations(lengths[:2]), tokens)
        return out

    def _measure_run(self, out: dict[str, Any], workload: str, name: str, loop: str, description: str,
                     run: Callable[[list[Any]], Any], make: Callable[[], list[Any]], count: int) -> None:
        """Time ``run`` on fresh conversations from ``make`` and add the row to ``out["runs"]``.

        ``run`` returns the new tokens the requests asked for, or (asked for, computed).
        """
        if self.out_of_time(f"{workload} {name} {loop}"):
            return
        made: list[Any] = []
        stats = self._time(
            lambda convs: made.append(run(convs)),
            lambda i: make(),
            warmup=0,
            repeats=self.settings.throughput_repeats,
        )
        asked, computed = made[-1] if isinstance(made[-1], tuple) else (made[-1], made[-1])
        out["runs"].append(
            {
                "model": name,
                "loop": loop,
                "description": description,
                "requests": count,
                "time": stats.as_dict(),
                "samples_per_s": count / stats.median,
                "new_tokens_made": asked,
                "new_tokens_computed": computed,
            }
        )
        self.advance(f"{workload} {name} {loop}")

    def measure_realistic(self) -> dict[str, Any]:
        """The task mix (:data:`workloads.TASKS`): every request asks for its own answer length.

        transformers runs batches in arrival order with ``max_new_tokens`` = the longest
        answer of the batch (a plain batched ``generate`` runs every row that long; only
        the tokens asked for count); the engine gives each request its own length, and
        rows that finish make room for waiting requests (continuous batching).
        """
        s = self.settings
        requests = realistic_requests(s.realistic_requests, s.seed)
        out: dict[str, Any] = {
            "tasks": [asdict(t) for t in TASKS],
            "requests": [r.as_dict() for r in requests],
            "lengths_s": [r.seconds for r in requests],
            "mean_length_s": sum(r.seconds for r in requests) / len(requests),
            "mean_new_tokens": sum(r.new_tokens for r in requests) / len(requests),
            "batch": s.mixed_batch,
            "analytic": self.workload_macs([r.seconds for r in requests], [r.new_tokens for r in requests],
                                           [self.text_tokens(r.question) for r in requests]),
            "runs": [],
        }

        def naive(name: str, size: int, reqs: list[TaskRequest]) -> Callable[[list[Any]], tuple[int, int]]:
            wanted = [r.new_tokens for r in reqs]

            def run(convs: list[Any]) -> tuple[int, int]:
                asked = computed = 0
                for start in range(0, len(convs), size):
                    group = wanted[start:start + size]
                    computed += self.generate(name, convs[start:start + size], max(group))
                    asked += sum(group)
                return asked, computed

            return run

        def measure(name: str, loop: str, description: str, run: Callable[[list[Any]], Any],
                    reqs: list[TaskRequest]) -> None:
            self._measure_run(out, "realistic", name, loop, description, run,
                              lambda: task_conversations(reqs, self._fresh_seed()), len(reqs))

        for name in MODELS:
            measure(name, "transformers_batched",
                    f"transformers generate, batches of {s.mixed_batch} in arrival order, each "
                    "batch as long as its longest answer", naive(name, s.mixed_batch, requests), requests)
        step = max(1, len(requests) // s.realistic_one_at_a_time)
        few = requests[::step][: s.realistic_one_at_a_time]
        measure("midashenglm", "transformers_one_at_a_time",
                f"transformers generate, one request at a time ({len(few)} of the requests, one in "
                f"{step}, mean {sum(r.seconds for r in few) / len(few):.1f} s, "
                f"{sum(r.new_tokens for r in few) / len(few):.1f} tokens)", naive("midashenglm", 1, few), few)
        self._measure_engines(out, MODELS, measure, requests,
                              lambda: task_conversations(requests[:2], self._fresh_seed()),
                              [r.new_tokens for r in requests])
        return out

    def _measure_engines(self, out: dict[str, Any], names: tuple[str, ...], measure: Callable[..., None],
                         requests: list[Any], warm_up: Callable[[], list[Any]],
                         new_tokens: int | list[int]) -> None:
        """The engine on each of ``names`` with at most ``mixed_batch`` rows, then MiDashengLM's
        engine as shipped (its default budgets). Each is warmed up first, as a running
        service is (its caches of prompt heads included)."""
        if not (self.settings.engine and engine_available()):
            out["engine"] = "not available: midashenglm.inference.engine is not installed"
            return
        rows = self.settings.mixed_batch
        for name, limit in [*((n, rows) for n in names), ("midashenglm", None)]:
            eng = self.engine(name, limit)
            self.engine_generate(eng, warm_up(), 2)
            loop, description = (
                ("engine", f"inference engine, at most {rows} rows, continuous batching") if limit else
                ("engine_default", f"inference engine, default budgets (at most {eng.max_batch_size} rows)"))
            measure(name, loop, description,
                    lambda convs, e=eng: self.engine_generate(e, convs, new_tokens), requests)

    # --------------------------------------------------------------- comparisons
    def comparisons(self) -> dict[str, Any]:
        r = self.results
        arch: dict[str, Any] = {}
        if "ttft" in r:
            by = {(row["model"], row["seconds"]): row for row in r["ttft"]}
            arch["ttft"] = []
            for seconds in self.settings.ttft_seconds:
                ours = by.get(("midashenglm", seconds))
                for base in ("baseline", "baseline_pad30"):
                    other = by.get((base, seconds))
                    if ours is None or other is None:
                        continue
                    arch["ttft"].append(
                        {
                            "seconds": seconds,
                            "against": base,
                            "measured_ratio": other["time"]["median"] / ours["time"]["median"],
                            "analytic_ratio": other["ttft_macs"] / ours["ttft_macs"],
                        }
                    )
        if any(row.get("timed") for row in r.get("throughput", [])):
            by = {(row["model"], row["batch"]): row for row in r["throughput"]}
            arch["throughput_30s"] = []
            for batch in self.settings.batch_sizes:
                ours, base = by.get(("midashenglm", batch)), by.get(("baseline", batch))
                if not ours or ours["status"] != "ok":
                    continue
                entry = {"batch": batch, "midashenglm": ours["samples_per_s"]}
                if base and base["status"] == "ok":
                    entry["baseline"] = base["samples_per_s"]
                    entry["ratio"] = ours["samples_per_s"] / base["samples_per_s"]
                else:
                    entry["baseline"] = base["status"] if base else None
                arch["throughput_30s"].append(entry)
            best = [row for row in r["throughput"] if row["status"] == "ok"]
            if best:
                top = {m: max((x["samples_per_s"] for x in best if x["model"] == m), default=None)
                       for m in ("midashenglm", "baseline")}
                if all(top.values()):
                    arch["best_throughput_ratio"] = top["midashenglm"] / top["baseline"]
        impl: dict[str, Any] = {}
        if "mixed" in r:
            runs = {(x["model"], x["loop"]): x["samples_per_s"] for x in r["mixed"]["runs"]}
            ours = runs.get(("midashenglm", "transformers_batched"))
            for base in ("baseline", "baseline_pad30"):
                other = runs.get((base, "transformers_batched"))
                if ours and other:
                    arch[f"mixed_vs_{base}"] = ours / other
            prompt_ours = runs.get(("midashenglm", "prompt_only"))
            for base in ("baseline", "baseline_pad30"):
                other = runs.get((base, "prompt_only"))
                if prompt_ours and other:
                    arch[f"mixed_prompt_only_vs_{base}"] = prompt_ours / other
            eng = runs.get(("midashenglm", "engine"))
            eng_default = runs.get(("midashenglm", "engine_default"))
            eng_base = runs.get(("baseline", "engine"))
            one = runs.get(("midashenglm", "transformers_one_at_a_time"))
            if eng_default and ours:
                impl["engine_default_vs_transformers_batched"] = eng_default / ours
            if eng and eng_base:
                arch["mixed_engine_vs_baseline_engine"] = eng / eng_base
            if eng:
                impl["engine_samples_per_s"] = eng
                if ours:
                    impl["vs_transformers_batched"] = eng / ours
                if one:
                    impl["vs_transformers_one_at_a_time"] = eng / one
            else:
                impl["status"] = r["mixed"].get("engine", "engine not measured")
            if ours and one:
                impl["transformers_batched_vs_one_at_a_time"] = ours / one
        if "realistic" in r:
            arch["realistic"], impl["realistic"] = _realistic_ratios(r["realistic"])
        hw: list[dict[str, Any]] = []
        for row in r.get("efficiency", []):
            if row.get("status") == "ok":
                hw.append({k: row[k] for k in ("model", "stage", "batch", "flops_per_s", "fraction_of_peak")})
        return {"architecture": arch, "implementation": impl, "hardware": hw}


def _realistic_ratios(realistic: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """Architecture and implementation ratios (samples/s) of the realistic task mix."""
    runs = {(x["model"], x["loop"]): x["samples_per_s"] for x in realistic["runs"]}

    def ratio(a: tuple[str, str], b: tuple[str, str]) -> float | None:
        return runs[a] / runs[b] if a in runs and b in runs else None

    arch = {
        "transformers_vs_baseline": ratio(("midashenglm", "transformers_batched"),
                                          ("baseline", "transformers_batched")),
        "transformers_vs_baseline_pad30": ratio(("midashenglm", "transformers_batched"),
                                                ("baseline_pad30", "transformers_batched")),
        "engine_vs_baseline": ratio(("midashenglm", "engine"), ("baseline", "engine")),
        "engine_vs_baseline_pad30": ratio(("midashenglm", "engine"), ("baseline_pad30", "engine")),
    }
    ours = ("midashenglm", "transformers_batched")
    impl = {
        "engine_samples_per_s": runs.get(("midashenglm", "engine")),
        "vs_transformers_batched": ratio(("midashenglm", "engine"), ours),
        "vs_transformers_one_at_a_time": ratio(("midashenglm", "engine"),
                                               ("midashenglm", "transformers_one_at_a_time")),
        "engine_default_vs_transformers_batched": ratio(("midashenglm", "engine_default"), ours),
        "transformers_batched_vs_one_at_a_time": ratio(ours, ("midashenglm", "transformers_one_at_a_time")),
    }
    if "engine" in realistic:
        impl["status"] = realistic["engine"]
    return ({k: v for k, v in arch.items() if v is not None},
            {k: v for k, v in impl.items() if v is not None})


def _linear_fit(xs: list[int], ys: list[int]) -> tuple[float, float] | None:
    """Least-squares ``y = a + b x``; with one point, a line through the origin."""
    if not xs:
        return None
    if len(set(xs)) == 1:
        return 0.0, ys[0] / xs[0]
    n = len(xs)
    mx, my = sum(xs) / n, sum(ys) / n
    slope = sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / sum((x - mx) ** 2 for x in xs)
    return my - slope * mx, slope

