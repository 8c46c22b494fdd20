"""``midashenglm bench ttft|throughput|encoder|memory|all|vllm``.

Heavy modules (torch, transformers, the benchmark itself) load inside the commands,
so ``midashenglm --help`` stays fast.
"""

from __future__ import annotations

import functools
import os
import time
from pathlib import Path
from typing import Annotated, Any

import typer

from midashenglm.errors import UserError
from midashenglm.terminal import markup_text, quote_name

bench_app = typer.Typer(
    help="Speed, measured side by side in one run: MiDashengLM against a Qwen2.5-Omni-style "
    "baseline on the same decoder (the architecture's ratio), our inference engine against "
    "plain transformers generation (the implementation's ratio), and achieved against the "
    "machine's measured matmul peak and memory bandwidth (the roofline). The two sides of "
    "each comparison are timed interleaved; the report gives the ratio of medians and the "
    "ratio of minimums, and flags results the limits make impossible. Random weights, "
    "full-size shapes on a GPU "
    "(--scale full) or proportionally scaled shapes on a CPU (--scale cpu). Writes "
    "report.md, report.json and plots with --out.",
    no_args_is_help=True,
    add_completion=False,
)

SECTIONS = {
    "ttft": ("ttft",),
    "throughput": ("throughput",),
    "encoder": ("peak", "encoder"),
    "memory": ("memory",),
    "all": ("peak", "encoder", "ttft", "throughput", "memory"),
}


def register(app: typer.Typer) -> None:
    app.add_typer(bench_app, name="bench")


def _options(
    scale: Annotated[
        str,
        typer.Option(
            help="Model shapes: 'cpu' (all three networks scaled by the same factors, see "
            "docs/efficiency.md), 'full' (Dasheng-0.6B / Whisper-large-v3 encoders, "
            "Qwen2.5-Omni-7B decoder: needs a GPU), 'tiny' (smoke tests)."
        ),
    ] = "cpu",
    out: Annotated[
        Path | None, typer.Option(help="Folder for report.md, report.json and the PNG plots.")
    ] = None,
    device: Annotated[str, typer.Option(help="auto (CUDA when present), cpu or cuda[:N].")] = "auto",
    dtype: Annotated[
        str, typer.Option(help="auto (float32 on CPU, bfloat16 on GPU), float32, bfloat16 or float16.")
    ] = "auto",
    threads: Annotated[
        int | None,
        typer.Option(help="CPU threads, pinned to that many cores (default: all cores visible)."),
    ] = None,
    quick: Annotated[
        bool, typer.Option(help="Few lengths, batch sizes and repeats, 10 new tokens: a fast check.")
    ] = False,
    repeats: Annotated[
        int | None,
        typer.Option(help="Timed repeats per measurement, in rounds: the sides of a comparison "
                     "alternate (A, B, A, B, ...)."),
    ] = None,
    warmup: Annotated[int | None, typer.Option(help="Untimed warm-up runs before each measurement.")] = None,
    new_tokens: Annotated[
        int | None, typer.Option(help="New tokens per request, EOS ignored (default 100, as the paper).")
    ] = None,
    lengths: Annotated[
        str | None, typer.Option(help="TTFT audio lengths in seconds, comma-separated (default 1,2,5,10,20,30).")
    ] = None,
    batch_sizes: Annotated[
        str | None,
        typer.Option(help="Throughput batch sizes, comma-separated (default 1,2,4,8,16 on CPU, 1..512 on GPU)."),
    ] = None,
    mixed_requests: Annotated[
        int | None, typer.Option(help="Requests in the mixed-length (Figure 3) workload.")
    ] = None,
    mixed_batch: Annotated[
        int | None, typer.Option(help="Batch size of the mixed-length workload (default 8 on CPU).")
    ] = None,
    realistic_requests: Annotated[
        int | None,
        typer.Option(help="Requests in the realistic task mix (ASR, captions, labels, QA: each "
                     "with its own answer length; default 32 on CPU, 128 on GPU)."),
    ] = None,
    memory_budget_gib: Annotated[
        float | None,
        typer.Option(help="Memory budget in GiB for 'largest batch that fits' (default: the GPU's total "
                     "memory; on a CPU, the memory the system has available at the start (MemAvailable) "
                     "plus the weights)."),
    ] = None,
    engine: Annotated[
        bool, typer.Option(help="Also measure midashenglm.inference.Engine when it is installed.")
    ] = True,
    time_budget_s: Annotated[
        float | None,
        typer.Option(help="Skip (and report as skipped) measurements not started within this many seconds."),
    ] = None,
    seed: Annotated[int, typer.Option(help="Seed of the weights and of the random audio.")] = 0,
    as_json: Annotated[bool, typer.Option("--json", help="Print the whole report as JSON.")] = False,
) -> None:  # pragma: no cover - a signature template, never called
    """Options shared by every bench command."""


def _command(name: str, doc: str) -> Any:
    @functools.wraps(_options)
    def command(**options: Any) -> None:
        run(name, **options)

    command.__doc__ = doc
    command.__name__ = f"bench_{name}"
    return command


def _ints(text: str | None, option: str) -> tuple[int, ...] | None:
    if text is None:
        return None
    try:
        values = tuple(int(x) for x in text.split(",") if x.strip())
    except ValueError:
        raise UserError(f"{option} {text!r}: expected comma-separated integers, e.g. 1,2,4,8") from None
    if not values or min(values) < 1:
        raise UserError(f"{option} {text!r}: values must be positive integers")
    return values


def _floats(text: str | None, option: str) -> tuple[float, ...] | None:
    if text is None:
        return None
    try:
        values = tuple(float(x) for x in text.split(",") if x.strip())
    except ValueError:
        raise UserError(f"{option} {text!r}: expected comma-separated seconds, e.g. 1,5,30") from None
    if not values or min(values) < 0.2:
        raise UserError(f"{option} {text!r}: lengths must be at least 0.2 s")
    return values


def _positive(value: int | None, option: str) -> int | None:
    if value is not None and value < 1:
        raise UserError(f"{option} must be at least 1, got {value}")
    return value


def run(name: str, **options: Any) -> dict[str, Any]:
    """Run the sections of bench command ``name``; returns the report."""
    from dataclasses import asdict, replace

    import torch
    from rich.console import Console

    from midashenglm.bench.measure import machine_info, pin_threads
    from midashenglm.bench.models import SCALES, build_models
    from midashenglm.bench.report import headline, write_report
    from midashenglm.bench.suite import Settings, Suite, engine_available, steps
    from midashenglm.checkpoint import resolve_device, resolve_dtype
    from midashenglm.errors import stderr_console
    from midashenglm.progress import ProgressBar

    console = stderr_console() if options["as_json"] else Console(soft_wrap=True)
    scale = options["scale"]
    if scale not in SCALES:
        raise UserError(f"--scale {scale!r}: choose one of {', '.join(SCALES)}")
    device = resolve_device(options["device"])
    if device.type not in ("cpu", "cuda"):
        device = torch.device("cpu")  # MPS timings are not comparable; measure the CPU
    if scale == "full" and device.type != "cuda":
        raise UserError(
            "--scale full builds the 7B models (about 8 B parameters): it needs a CUDA GPU. "
            "On a CPU use --scale cpu (the same comparison with proportionally scaled shapes)."
        )
    dtype = (torch.bfloat16 if device.type == "cuda" else torch.float32) if options["dtype"] == "auto" \
        else resolve_dtype(options["dtype"], None)
    if options["out"] is not None and options["out"].exists() and not options["out"].is_dir():
        raise UserError(f"--out {quote_name(options['out'])}: exists and is not a folder")

    threads = _positive(options["threads"], "--threads")
    if threads is None and device.type == "cpu":
        threads = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    thread_info = pin_threads(threads if device.type == "cpu" else None)

    settings = Settings.for_scale(scale, device, quick=options["quick"])
    overrides = {
        "repeats": _positive(options["repeats"], "--repeats"),
        "throughput_repeats": _positive(options["repeats"], "--repeats"),
        "warmup": options["warmup"],
        "new_tokens": _positive(options["new_tokens"], "--new-tokens"),
        "ttft_seconds": _floats(options["lengths"], "--lengths"),
        "batch_sizes": _ints(options["batch_sizes"], "--batch-sizes"),
        "mixed_requests": _positive(options["mixed_requests"], "--mixed-requests"),
        "mixed_batch": _positive(options["mixed_batch"], "--mixed-batch"),
        "realistic_requests": _positive(options["realistic_requests"], "--realistic-requests"),
        "memory_budget_gib": options["memory_budget_gib"],
        "seed": options["seed"],
        "engine": options["engine"],
        "time_budget_s": options["time_budget_s"],
    }
    if options["warmup"] is not None and options["warmup"] < 0:
        raise UserError(f"--warmup must be >= 0, got {options['warmup']}")
    settings = replace(settings, **{k: v for k, v in overrides.items() if v is not None})
    if settings.batch_sizes:
        settings = replace(settings, batch_sizes=tuple(sorted(set(settings.batch_sizes))))

    started = time.perf_counter()
    machine = machine_info(device)
    console.print(
        f"[bold]midashenglm bench {name}[/]: scale {scale}, {device} {str(dtype).removeprefix('torch.')}, "
        f"{thread_info['torch_threads']} threads, {machine.get('gpu') or machine['cpu']}; "
        f"engine {'on' if settings.engine and engine_available() else 'off (not installed)'}",
        highlight=False,
    )
    with console.status("building random-weight models"):
        models = build_models(scale, device=device, dtype=dtype, seed=settings.seed)
    sections = SECTIONS[name]
    with ProgressBar(steps(sections, settings), f"bench {name}", enabled=not options["as_json"]) as bar:
        suite = Suite(models, settings, advance=lambda label="": bar.advance(1, label))
        results = suite.run(sections)

    report = {
        "meta": {
            "command": f"midashenglm bench {name} --scale {scale}" + (" --quick" if options["quick"] else ""),
            "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
            "scale": scale,
            "scale_note": models.spec.note,
            "device": str(device),
            "dtype": str(dtype).removeprefix("torch."),
            "threads": thread_info,
            "machine": machine,
            "parameters": models.parameters(),
            "text_tokens": suite.prompt.text_tokens,
            "new_tokens": settings.new_tokens,
            "wall_time_s": round(time.perf_counter() - started, 1),
            "load_average_at_end": results.pop("load_average_at_end", None),
        },
        "settings": asdict(settings),
        **results,
    }
    for line in headline(report):
        console.print(line, highlight=False)
    if "memory" in sections and not options["as_json"]:
        from midashenglm.bench.report import _memory_section

        # The memory numbers themselves (the headline has none): the report's table, on stdout.
        print("\n".join(_memory_section(report)), flush=True)
    if options["out"] is not None:
        files = write_report(report, options["out"])
        console.print(f"wrote {markup_text(', '.join(quote_name(f) for f in files))}", highlight=False)
    console.print(f"wall time {report['meta']['wall_time_s']} s", highlight=False)
    if options["as_json"]:
        import json

        print(json.dumps(report, default=str))
    return report


bench_app.command("ttft")(_command(
    "ttft",
    "Time to first token at batch 1 for audio of 1, 2, 5, 10, 20 and 30 s: MiDashengLM, the "
    "Qwen2.5-Omni-style baseline, the baseline with clips padded to 30 s (and our engine), "
    "with measured and analytical ratios.",
))
bench_app.command("throughput")(_command(
    "throughput",
    "Samples/s for 30 s clips and 100 new tokens at batch sizes 1..N (the paper's Table 13), "
    "then two mixed-length workloads (clip lengths like the paper's Figure 3): every request "
    "making 100 tokens, and a realistic task mix (ASR, captions, labels, closed and open QA, "
    "each with its own answer length): MiDashengLM against the baseline, and our engine "
    "(continuous batching) against plain transformers generation. Latency does not improve "
    "with batch size; throughput does.",
))
bench_app.command("encoder")(_command(
    "encoder",
    "Achieved FLOP/s of the audio path (front end, encoder, projector) and of the decoder "
    "prefill for 30 s clips, as a fraction of the matmul peak measured in the same run, and "
    "their distance from the roofline (matmul peak and memory bandwidth, both measured).",
))
bench_app.command("memory")(_command(
    "memory",
    "Peak memory per batch size of 30 s clips (one run each), bytes per sample, and the "
    "largest batch that fits --memory-budget-gib (default: the GPU's memory; on a CPU the "
    "available system memory plus the weights), printed as a table.",
))
bench_app.command("all")(_command(
    "all",
    "Everything above in one run (the peak, encoder/prefill efficiency, TTFT, throughput, "
    "mixed workload, engine, memory), printed as the three comparisons; --out writes the report.",
))


@bench_app.command("vllm")
def bench_vllm(
    out: Annotated[Path | None, typer.Option(help="Folder for report.md, report.json and report.png.")] = None,
    vllm_python: Annotated[
        Path | None,
        typer.Option(help="The Python of vLLM's venv (default .venv-vllm/bin/python, built by `make "
                     "vllm-env`; on a GPU machine, a venv with CUDA vLLM)."),
    ] = None,
    quick: Annotated[
        bool, typer.Option(help="Few requests and batch sizes, 10 new tokens, 2 rounds, vLLM eager: a smoke test.")
    ] = False,
    repeats: Annotated[int | None, typer.Option(help="Rounds per workload and measurement (ours, vLLM, ...).")] = None,
    new_tokens: Annotated[int | None, typer.Option(help="New tokens per request (default 100; EOS ignored).")] = None,
    batch_sizes: Annotated[
        str | None, typer.Option(help="Batch sizes of 30 s clips, comma-separated (default 1,2,4,8,16).")
    ] = None,
    mixed_requests: Annotated[int | None, typer.Option(help="Requests of the Figure 3 workload.")] = None,
    realistic_requests: Annotated[int | None, typer.Option(help="Requests of the realistic task mix.")] = None,
    max_num_seqs: Annotated[int, typer.Option(help="Rows decoding together, both engines.")] = 32,
    threads: Annotated[
        int | None, typer.Option(help="Our engine's torch threads (default: all cores visible; vLLM binds its own).")
    ] = None,
    scale: Annotated[str, typer.Option(help="Model shapes: 'cpu' (the bench's scaled shapes) or 'full' (GPU).")] = "cpu",
    device: Annotated[str, typer.Option(help="Our engine's device: auto, cpu or cuda[:N].")] = "auto",
    dtype: Annotated[str, typer.Option(help="auto (float32 on CPU, bfloat16 on GPU), float32 or bfloat16.")] = "auto",
    vllm_eager: Annotated[
        bool | None,
        typer.Option("--vllm-eager/--vllm-compile",
                     help="vLLM eager, or compiled (its default; ~1 min of start-up). Default: eager with --quick."),
    ] = None,
    vllm_kv_cache_gib: Annotated[float, typer.Option(help="vLLM's KV cache on a CPU (preallocated).")] = 0.25,
    quiet_wait: Annotated[
        float, typer.Option(help="Before each run, wait up to this many seconds until other processes keep "
                            "fewer than 0.3 cores busy (a shared machine).")
    ] = 10.0,
    quiet_wait_total: Annotated[float, typer.Option(help="The most seconds of such waiting in all.")] = 240.0,
    profile: Annotated[
        bool, typer.Option(help="Profile our engine (torch.profiler, cProfile) on each workload where it is not faster.")
    ] = False,
    notes: Annotated[Path | None, typer.Option(help="Markdown added to report.md as its Findings.")] = None,
    work: Annotated[Path | None, typer.Option(help="Scratch folder: the model, clips, logs (default out/bench_vllm).")] = None,
    timeout: Annotated[float, typer.Option(help="Seconds for an engine's start-up or for one run.")] = 900.0,
    seed: Annotated[int, typer.Option(help="Seed of the weights and of the random audio.")] = 0,
    as_json: Annotated[bool, typer.Option("--json", help="Print the whole report as JSON.")] = False,
) -> None:
    """Our inference engine against vLLM (offline LLM, in its own venv), same model and same
    requests, side by side in one run: TTFT, requests/s, output tokens/s and peak memory on the
    paper's Figure 3 lengths, the realistic task mix and 30 s clips at batch 1..16. Without vLLM's
    venv it says how to build it (`make vllm-env`) and exits 2."""
    from rich.console import Console

    from midashenglm.bench.vllm import (
        check_vllm_python,
        default_vllm_python,
        headline,
        run,
        write_report,
    )
    from midashenglm.errors import stderr_console

    check_vllm_python(vllm_python or default_vllm_python())
    if scale not in ("cpu", "full"):
        raise UserError(f"--scale {scale!r}: choose cpu or full")
    if notes is not None and not notes.is_file():
        raise UserError(f"--notes {quote_name(notes)}: no such file")
    console = stderr_console() if as_json else Console(soft_wrap=True)
    options = {
        "out": out, "vllm_python": vllm_python, "quick": quick, "repeats": _positive(repeats, "--repeats"),
        "new_tokens": _positive(new_tokens, "--new-tokens"), "batch_sizes": _ints(batch_sizes, "--batch-sizes"),
        "mixed_requests": _positive(mixed_requests, "--mixed-requests"),
        "realistic_requests": _positive(realistic_requests, "--realistic-requests"),
        "max_num_seqs": _positive(max_num_seqs, "--max-num-seqs"), "threads": _positive(threads, "--threads"),
        "scale": scale, "device": device, "dtype": dtype, "vllm_eager": vllm_eager,
        "vllm_kv_cache_gib": vllm_kv_cache_gib, "profile": profile, "notes": notes, "work": work,
        "timeout": timeout, "seed": seed, "quiet_wait": quiet_wait, "quiet_wait_total": quiet_wait_total,
    }
    log = lambda text: console.print(f"[dim]{time.strftime('%H:%M:%S')}[/] {markup_text(text)}",  # noqa: E731
                                     highlight=False)
    report = run(options, log)
    for line in headline(report["rows"]):
        console.print(line, highlight=False)
    if out is not None:
        files = write_report(report, out)
        console.print(f"wrote {markup_text(', '.join(quote_name(f) for f in files))}", highlight=False)
    if as_json:
        import json

        print(json.dumps(report, default=str))
