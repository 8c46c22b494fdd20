"""Training speed and memory of the real-shaped 0.6B model on one GPU (issue 13).

Dasheng-0.6B + a Qwen3-0.6B decoder with random weights, stored in bf16, trained by the
``align`` recipe (the whole model trainable) with bf16 autocast and 8-bit AdamW, on a
synthetic caption manifest whose lengths follow the paper's Figure 3 (mostly 1-10 s, a
tail to 30 s), with and without gradient checkpointing. Prints samples/s, audio seconds
per second, tokens/s and peak GPU memory per setting, and writes a report naming the
device:

    python scripts/bench_train_gpu.py --out docs/bench/training-gpu      # on a CUDA GPU
    python scripts/bench_train_gpu.py --scale tiny --out /tmp/bench       # a CPU smoke run

Needs the project's packages (peft, bitsandbytes with CUDA kernels, transformers).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import soundfile as sf
import torch

REPO = Path(__file__).resolve().parents[1]
WORDS = ("a dog barks twice while rain falls on a metal roof and a man speaks calmly in the "
         "distance with traffic passing by music plays softly birds sing").split()


def figure3_durations(n: int, rng: np.random.Generator) -> np.ndarray:
    """Mostly 1-10 s (log-normal around 4 s), one clip in ten from 10 to 30 s."""
    short = np.clip(rng.lognormal(np.log(4.0), 0.5, n), 1.0, 10.0)
    long = rng.uniform(10.0, 30.0, n)
    return np.round(np.where(rng.random(n) < 0.1, long, short), 2)


def write_manifest(folder: Path, n: int, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    rows = []
    for i, seconds in enumerate(figure3_durations(n, rng)):
        path = folder / f"clip{i:04d}.flac"
        sf.write(path, (0.1 * rng.standard_normal(int(seconds * 16000))).astype(np.float32), 16000)
        caption = " ".join(rng.choice(WORDS, size=int(rng.integers(12, 40))))
        rows.append({"audio": path.name, "prompt": "Write an audio caption describing the sound",
                     "answer": caption, "duration": float(seconds)})
    manifest = folder / "manifest.jsonl"
    manifest.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return manifest


def write_model(folder: Path, scale: str) -> Path:
    from midashenglm.modeling.config import DECODER_PRESETS, DashengConfig, MiDashengLMConfig
    from midashenglm.modeling.model import MiDashengLM
    from midashenglm.processing import MiDashengLMProcessor
    from midashenglm.tokenizer import build_tiny_tokenizer

    processor = MiDashengLMProcessor(build_tiny_tokenizer())
    encoder, decoder = ("0.6B", "qwen3-0.6b") if scale == "full" else ("tiny", "tiny")
    config = MiDashengLMConfig(audio_encoder_config=DashengConfig.from_preset(encoder).to_dict(),
                               text_config=DECODER_PRESETS[decoder], audio_token_id=processor.audio_token_id)
    torch.manual_seed(0)
    model = MiDashengLM(config)
    model.save_pretrained(folder, dtype=torch.bfloat16 if scale == "full" else torch.float32)
    processor.save_pretrained(folder)
    return folder


def run_setting(checkpoint: Path, manifest: Path, run: Path, *, steps: int, checkpointing: bool,
                scale: str) -> dict:
    from midashenglm.training.config import load_config
    from midashenglm.training.recipe import Recipe

    full = scale == "full"
    config = load_config(REPO / "configs" / ("align.yaml" if full else "tiny/align.yaml"), [
        f"model.checkpoint={checkpoint}", f"data.train={manifest}", f"output_dir={run}",
        "data.validation=null", f"training.max_steps={steps}", "training.epochs=null",
        "checkpoint.every_steps=0", "logging.tensorboard=false", "schedule.warmup_steps=2",
        f"training.gradient_checkpointing={str(checkpointing).lower()}",
        f"model.dtype={'bfloat16' if full else 'float32'}", f"training.precision={'bf16' if full else 'fp32'}",
        "optimizer.name=adamw8bit", "data.num_workers=4" if full else "data.num_workers=0",
        "data.max_tokens=8192", "data.max_audio_seconds=320", "data.max_batch_size=32"])
    recipe = Recipe(config, progress=True)
    recipe.setup()
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    started = time.perf_counter()
    try:
        recipe.train()
    finally:
        recipe.log.close()
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    rows = [r for r in rows if "loss" in r][2:]  # the first steps warm up kernels and caches
    return {
        "gradient_checkpointing": checkpointing,
        "steps": len(rows),
        "samples_per_s": statistics.median(r["samples_per_s"] for r in rows),
        "audio_seconds_per_s": statistics.median(r["audio_seconds_per_s"] for r in rows),
        "tokens_per_s": statistics.median(r["tokens_per_s"] for r in rows),
        "padding_fraction": statistics.mean(r["padding_fraction"] for r in rows),
        "peak_memory_gib": max(r["memory_mib"] for r in rows) / 1024,
        "final_loss": rows[-1]["loss"],
        "wall_s": time.perf_counter() - started,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--scale", choices=["full", "tiny"], default="full")
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--clips", type=int, default=256)
    parser.add_argument("--out", type=Path, default=REPO / "docs" / "bench" / "training-gpu")
    args = parser.parse_args()
    if args.scale == "full" and not torch.cuda.is_available():
        sys.exit("--scale full needs a CUDA GPU (use --scale tiny for a CPU smoke run)")
    device = torch.cuda.get_device_name() if torch.cuda.is_available() else "CPU"
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        (tmp / "data").mkdir()
        manifest = write_manifest(tmp / "data", args.clips)
        checkpoint = write_model(tmp / "model", args.scale)
        for checkpointing in (True, False):
            try:
                results.append(run_setting(checkpoint, manifest, tmp / f"run-{checkpointing}",
                                           steps=args.steps, checkpointing=checkpointing, scale=args.scale))
            except torch.OutOfMemoryError as err:
                results.append({"gradient_checkpointing": checkpointing, "error": f"out of memory: {err}"[:200]})
                torch.cuda.empty_cache()
    lines = [f"# Training speed, {args.scale} scale, on {device}", "",
             f"align recipe, {'bf16 weights and autocast' if args.scale == 'full' else 'fp32'}, 8-bit AdamW "
             f"(bitsandbytes), {args.clips} synthetic clips with "
             f"Figure-3 lengths, length-aware micro-batches of <= 8,192 padded tokens; medians over "
             f"steps 3-{args.steps}. torch {torch.__version__}.", "",
             "| gradient checkpointing | samples/s | audio s/s | tokens/s | padding | peak memory (GiB) |",
             "|---|---:|---:|---:|---:|---:|"]
    for r in results:
        if "error" in r:
            lines.append(f"| {r['gradient_checkpointing']} | {r['error']} | | | | |")
        else:
            lines.append(f"| {r['gradient_checkpointing']} | {r['samples_per_s']:.2f} | {r['audio_seconds_per_s']:.1f} "
                         f"| {r['tokens_per_s']:.0f} | {r['padding_fraction']:.1%} | {r['peak_memory_gib']:.1f} |")
    report = "\n".join(lines) + "\n"
    print(report)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "report.md").write_text(report)
    (args.out / "report.json").write_text(json.dumps({"device": device, "results": results}, indent=1))


if __name__ == "__main__":
    main()
