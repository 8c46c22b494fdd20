#!/usr/bin/env python
"""Curation speed on this machine: clips/s and audio hours/s per expert, and for the whole
pipeline locally vs on Ray (a local Ray on this machine's CPUs), measured side by side.

    python scripts/bench_curation.py --clips 24 --out docs/bench/curation

Clips are generated (espeak-ng speech in several voices, plucked chords, noise, speech over
music) unless ``--data DIR`` names a folder. Expert times exclude loading (reported apart);
pipeline times are wall-clock for ``curate`` end to end (template writer, text consistency
filter), Ray's start-up included in the first Ray run and not in the second.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import soundfile as sf

RATE = 16000
SENTENCES = [
    "The weather today is sunny with a light breeze from the west.",
    "Please remember to close the door when you leave the office.",
    "Our train to the city leaves at half past nine in the morning.",
    "She bought fresh bread and cheese at the market on Saturday.",
]
VOICES = ["en-us", "en-us+f3", "en-gb", "en-us+m3"]


def make_clips(folder: Path, n: int, seed: int = 0) -> None:
    """``n`` clips of 3-10 s: speech, music, noise and speech over music, in turn."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        kind = ("speech", "music", "noise", "mix")[i % 4]
        seconds = float(rng.uniform(3, 10))
        t = np.arange(int(seconds * RATE)) / RATE
        notes = 220 * 2 ** (rng.choice([0, 2, 4, 5, 7, 9, 11, 12], size=3) / 12)
        music = 0.15 * sum(np.sin(2 * np.pi * f * t) * np.exp(-3 * (t % 0.5)) for f in notes)
        if kind in ("speech", "mix"):
            wav = folder / f"tmp-{i}.wav"
            subprocess.run(["espeak-ng", "-v", VOICES[i % len(VOICES)], "-w", str(wav),
                            " ".join(SENTENCES[(i + k) % len(SENTENCES)] for k in range(2))],
                           check=True)
            speech, rate = sf.read(wav, dtype="float32")
            wav.unlink()
            import soxr

            speech = soxr.resample(speech, rate, RATE)[: len(t)]
            audio = np.zeros(len(t), np.float32)
            audio[: len(speech)] = speech
            if kind == "mix":
                audio = audio + 0.3 * music
        elif kind == "music":
            audio = music
        else:
            audio = 0.1 * rng.standard_normal(len(t))
        sf.write(folder / f"{i:03d}-{kind}.wav", np.asarray(audio, np.float32), RATE)


def bench_experts(folder: Path) -> list[dict]:
    """Each available expert over every clip, in the registry's order (so ``needs`` hold)."""
    from midashenglm.audio import load_audio
    from midashenglm.curation.experts.registry import build_experts

    waves = [load_audio(p) for p in sorted(folder.glob("*.wav"))]
    hours = sum(len(w) for w in waves) / RATE / 3600
    experts, missing = build_experts()
    contexts: list[dict] = [{} for _ in waves]
    rows = []
    for expert in experts:
        start = time.perf_counter()
        expert.load()
        loaded = time.perf_counter() - start
        start = time.perf_counter()
        for wave, context in zip(waves, contexts, strict=True):
            context[expert.name] = expert.analyze(wave, context)
        seconds = time.perf_counter() - start
        rows.append({"expert": expert.name, "kind": expert.kind, "load_s": round(loaded, 2),
                     "seconds": round(seconds, 3), "clips_per_s": len(waves) / seconds,
                     "audio_h_per_s": hours / seconds})
    for name, reason in missing.items():
        rows.append({"expert": name, "kind": "-", "skipped": reason})
    return rows


def bench_pipeline(folder: Path, work: Path, workers: int) -> list[dict]:
    from midashenglm.curation.pipeline import CurationConfig, curate

    rows = []
    runs = [("local", False, 1), ("ray (start-up included)", True, workers),
            ("ray (warm)", True, workers)]
    for name, use_ray, n in runs:
        out = work / name.split()[0].replace("(", "") / str(len(rows))
        config = CurationConfig(workers=n, batch_size=4)
        start = time.perf_counter()
        report = curate(folder, out, config, use_ray=use_ray)
        seconds = time.perf_counter() - start
        hours = report.audio_seconds / 3600
        rows.append({"run": name, "workers": n, "clips": report.processed,
                     "seconds": round(seconds, 2), "clips_per_s": report.processed / seconds,
                     "audio_h_per_s": hours / seconds})
    return rows


def render(experts: list[dict], pipeline: list[dict], meta: dict) -> str:
    lines = [f"# Curation speed ({meta['date']})", "",
             f"Machine: {meta['machine']}; {meta['clips']} clips, {meta['audio_h']:.4f} h of "
             "audio (generated: speech, music, noise, speech over music, 3-10 s). Template "
             "writer, text consistency filter. Command: `python scripts/bench_curation.py "
             f"--clips {meta['clips']} --out docs/bench/curation`.", "",
             "## Per expert (loading excluded)", "",
             "| expert | kind | load s | clips/s | audio h/s | x real time |",
             "|---|---|---:|---:|---:|---:|"]
    for r in experts:
        if "skipped" in r:
            lines.append(f"| {r['expert']} | - | - | skipped: {r['skipped']} | | |")
            continue
        lines.append(f"| {r['expert']} | {r['kind']} | {r['load_s']:.2f} | "
                     f"{r['clips_per_s']:.2f} | {r['audio_h_per_s']:.4f} | "
                     f"{r['audio_h_per_s'] * 3600:.0f} |")
    timed = [r for r in experts if "seconds" in r]
    total = sum(r["seconds"] for r in timed) or 1.0
    top = sorted(timed, key=lambda r: -r["seconds"])[:3]
    lines += ["", "Where the time goes: " + ", ".join(
        f"{r['expert']} {100 * r['seconds'] / total:.0f} %" for r in top) + " of the experts' "
        "time."]
    lines += ["", "## Whole pipeline, local vs Ray", "",
              "| run | model-stage actors | clips | seconds | clips/s | audio h/s | "
              "x real time | vs local |", "|---|---:|---:|---:|---:|---:|---:|---:|"]
    base = pipeline[0]["clips_per_s"]
    for r in pipeline:
        lines.append(f"| {r['run']} | {r['workers']} | {r['clips']} | {r['seconds']:.1f} | "
                     f"{r['clips_per_s']:.2f} | {r['audio_h_per_s']:.4f} | "
                     f"{r['audio_h_per_s'] * 3600:.1f} | {r['clips_per_s'] / base:.2f}x |")
    lines += ["", f"Ray ran {pipeline[-1]['workers']} model-stage actor(s) beside the decoding "
              f"and signal tasks on {meta['cpus']} CPUs: Ray pays off when more CPUs (or nodes) "
              "let more actors run at once (`--workers`); on this machine it cannot beat the "
              "local run (scheduling and moving audio between processes cost a little)."]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clips", type=int, default=24, help="clips to generate")
    parser.add_argument("--data", type=Path, help="a folder of clips instead of generated ones")
    parser.add_argument("--workers", type=int, default=max(1, (os.cpu_count() or 2) - 1),
                        help="model-stage actors on Ray (default: CPUs - 1)")
    parser.add_argument("--out", type=Path, help="write report.md and results.json here")
    args = parser.parse_args()
    if args.data is None and shutil.which("espeak-ng") is None:
        sys.exit("error: espeak-ng is needed to generate clips (or pass --data DIR)")
    import torch

    threads = torch.get_num_threads()
    work = Path(tempfile.mkdtemp(prefix="bench-curation-"))
    try:
        folder = args.data or work / "clips"
        if args.data is None:
            make_clips(folder, args.clips)
        n = len(list(folder.rglob("*.wav")))
        audio_h = sum(sf.info(p).duration for p in folder.rglob("*.wav")) / 3600
        experts = bench_experts(folder)
        pipeline = bench_pipeline(folder, work, args.workers)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    meta = {"date": time.strftime("%Y-%m-%d"), "clips": n, "audio_h": audio_h,
            "cpus": os.cpu_count(),
            "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, "
                       f"torch threads {threads}"}
    text = render(experts, pipeline, meta)
    print(text)
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "report.md").write_text(text)
        (args.out / "results.json").write_text(json.dumps(
            {"meta": meta, "experts": experts, "pipeline": pipeline}, indent=2) + "\n")


if __name__ == "__main__":
    main()
