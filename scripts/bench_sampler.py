"""Training samples/s with the length-aware sampler vs fixed-size random batches (issue 13).

One run: synthetic clips whose durations follow the paper's Figure 3 (mostly 1-10 s, a
tail to 30 s) are written to a temporary folder and listed in a manifest; a tiny
MiDashengLM (the test-suite shapes) trains on them with forward + backward + AdamW steps,
once with micro-batches from ``BatchSampler`` (length-aware, under a padded-audio budget
of rows x longest clip <= ``--budget-seconds``) and once with fixed-size random batches
at the same budget (``budget // 30 s`` rows: the batch size that fits whatever the draw).
Each round trains one epoch in each mode, the two alternating every 16 samples (A B B A
...), so a change in machine load hits both alike; audio is decoded before timing (in a
real run DataLoader workers load it). Reported: samples/s (wall) and samples per
CPU-second of this process (steadier on a shared machine).

    .venv/bin/python scripts/bench_sampler.py --threads 1     # ~1.5 min on a CPU core
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import soundfile as sf
import torch
from rich.console import Console
from rich.table import Table

from midashenglm.data.collate import Collator, text_token_counts
from midashenglm.data.dataset import LoadedSample, TrainingDataset
from midashenglm.data.manifest import read_training_manifest
from midashenglm.data.sampler import BatchSampler
from midashenglm.modeling.config import DECODER_PRESETS, DashengConfig, MiDashengLMConfig
from midashenglm.modeling.model import MiDashengLM
from midashenglm.processing import MiDashengLMProcessor
from midashenglm.tokenizer import build_tiny_tokenizer

LONGEST = 30.0  # seconds: the longest clip of the manifest, which fixed-size batches must fit
WORDS = "a dog barks while cars pass by and a woman speaks softly over music in a room".split()


def figure3_durations(n: int, rng: np.random.Generator) -> np.ndarray:
    """Mostly 1-10 s (log-normal, median 4.5 s), 10 % spread over 10-30 s."""
    short = np.clip(rng.lognormal(np.log(4.5), 0.5, n), 1.0, 10.0)
    tail = rng.uniform(10.0, LONGEST, n)
    return np.where(rng.random(n) < 0.1, tail, short)


def write_corpus(folder: Path, n: int, seed: int) -> Path:
    rng = np.random.default_rng(seed)
    rows = []
    for i, seconds in enumerate(figure3_durations(n, rng)):
        t = np.arange(int(seconds * 16000)) / 16000
        wave = 0.3 * np.sin(2 * np.pi * rng.uniform(100, 2000) * t) + 0.05 * rng.standard_normal(len(t))
        sf.write(folder / f"{i}.wav", wave.astype(np.float32), 16000, subtype="PCM_16")
        answer = " ".join(rng.choice(WORDS, int(rng.integers(4, 20))))
        rows.append({"audio": f"{i}.wav", "prompt": "Describe the sound.", "answer": answer})
    manifest = folder / "train.jsonl"
    manifest.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return manifest


def tiny_model(processor: MiDashengLMProcessor, seed: int) -> MiDashengLM:
    torch.manual_seed(seed)
    config = MiDashengLMConfig(audio_encoder_config=DashengConfig.from_preset("tiny").to_dict(),
                               text_config=DECODER_PRESETS["tiny"], audio_token_id=processor.audio_token_id)
    return MiDashengLM(config).train()


class Tally:
    """Training steps of one mode: samples, wall and CPU seconds, padding."""

    def __init__(self) -> None:
        self.samples = self.steps = 0
        self.wall = self.cpu = self.tokens = self.padded = self.audio = self.padded_audio = 0.0

    def step(self, indices, cache, collator, model, optimizer) -> None:
        """One micro-batch: collate, forward, backward, AdamW step (all timed)."""
        wall, cpu = time.perf_counter(), time.process_time()
        batch = collator([cache[i] for i in indices])
        model(**batch.inputs).loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        self.wall += time.perf_counter() - wall
        self.cpu += time.process_time() - cpu
        self.samples, self.steps = self.samples + len(batch.sample_ids), self.steps + 1
        self.tokens, self.padded = self.tokens + batch.num_tokens, self.padded + batch.padded_tokens
        self.audio += batch.audio_seconds
        self.padded_audio += batch.padded_audio_seconds

    def result(self) -> dict[str, float]:
        return {"samples_per_s": self.samples / self.wall, "samples_per_cpu_s": self.samples / self.cpu,
                "batch": self.samples / self.steps, "token_padding": 1 - self.tokens / self.padded,
                "audio_padding": 1 - self.audio / self.padded_audio}


def side_by_side(plans: dict[str, list[list[int]]], chunk: int, *args) -> dict[str, dict[str, float]]:
    """Train every mode on its own epoch, alternating between modes every ``chunk`` samples,
    so a change in machine load falls on both modes alike."""
    tallies = {name: Tally() for name in plans}
    pending = {name: list(reversed(batches)) for name, batches in plans.items()}
    turn = 0
    while any(pending.values()):
        target = min(t.samples for name, t in tallies.items() if pending[name]) + chunk
        names = list(plans) if turn % 2 == 0 else list(reversed(plans))
        for name in names:
            while pending[name] and tallies[name].samples < target:
                tallies[name].step(pending[name].pop(), *args)
        turn += 1
    return {name: t.result() for name, t in tallies.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--samples", type=int, default=480, help="clips in the manifest (one epoch per round)")
    parser.add_argument("--rounds", type=int, default=3, help="rounds: each trains one epoch per mode")
    parser.add_argument("--budget-seconds", type=float, default=240.0,
                        help="padded audio per micro-batch, rows x longest clip (default: the paper's "
                        "batch of 8 at the 30 s worst case)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: all cores)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    processor = MiDashengLMProcessor(build_tiny_tokenizer())
    with tempfile.TemporaryDirectory() as tmp:
        samples = read_training_manifest(write_corpus(Path(tmp), args.samples, args.seed))
        dataset = TrainingDataset(samples)
        cache = [dataset[i] for i in range(len(dataset))]
    assert all(isinstance(x, LoadedSample) for x in cache)
    counts = text_token_counts(samples, processor)
    rows = int(args.budget_seconds // LONGEST)
    max_tokens = rows * max(counts)  # the decoder budget that fixed-size batches also respect
    samplers = {
        "length-aware": BatchSampler(samples, counts, max_tokens=max_tokens, seed=args.seed,
                                     max_audio_seconds=args.budget_seconds),
        f"random, {rows} per batch": BatchSampler(samples, counts, max_tokens=max_tokens, seed=args.seed,
                                                  length_aware=False, batch_size=rows),
    }
    model = tiny_model(processor, args.seed)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    collator = Collator(processor)
    work = (cache, collator, model, optimizer)
    side_by_side({name: s.round(0)[:2] for name, s in samplers.items()}, rows, *work)  # warm-up
    results: dict[str, list[dict[str, float]]] = {name: [] for name in samplers}
    for r in range(1, args.rounds + 1):  # a sampler round is one epoch: both modes train the same samples
        for name, result in side_by_side({n: s.round(r) for n, s in samplers.items()}, 16, *work).items():
            results[name].append(result)
    report(results, samples, args, torch.get_num_threads())


def report(results, samples, args, threads: int) -> None:
    hours = sum(s.duration for s in samples) / 3600
    durations = np.array([s.duration for s in samples])
    table = Table(title=f"{len(samples)} clips, {hours:.2f} h, {np.mean(durations <= 10) * 100:.0f} % <= 10 s; "
                        f"budget {args.budget_seconds:g} padded audio s per micro-batch; {threads} threads")
    for column in ("batches", "samples/s (median)", "per round", "samples/CPU-s", "mean rows",
                   "token padding", "audio padding"):
        table.add_column(column, justify="left" if column == "batches" else "right")
    medians, cpu = {}, {}
    for name, runs in results.items():
        medians[name] = statistics.median(r["samples_per_s"] for r in runs)
        cpu[name] = statistics.median(r["samples_per_cpu_s"] for r in runs)
        table.add_row(name, f"{medians[name]:.2f}", " ".join(f"{r['samples_per_s']:.1f}" for r in runs),
                      f"{cpu[name]:.2f}",
                      f"{statistics.mean(r['batch'] for r in runs):.1f}",
                      f"{statistics.mean(r['token_padding'] for r in runs):.1%}",
                      f"{statistics.mean(r['audio_padding'] for r in runs):.1%}")
    console = Console(width=max(Console().width, 130))
    console.print(table)
    (aware, plain), (aware_cpu, plain_cpu) = medians.values(), cpu.values()
    console.print(f"length-aware / random: {aware / plain:.2f}x samples/s, {aware_cpu / plain_cpu:.2f}x "
                  "samples per CPU-second (target >= 2x)")


if __name__ == "__main__":
    main()
