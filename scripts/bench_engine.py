"""Engine throughput vs plain ``model.generate``, side by side in one run.

    python scripts/bench_engine.py                      # tiny encoder + small decoder, random weights
    python scripts/bench_engine.py --encoder base --decoder small --requests 32 --json out.json
    python scripts/bench_engine.py --model out/tiny-model

Measures on the same model and the same mixed-length clips (0.3 s .. 30 s):
  * ``loop``: ``model.generate`` one request at a time;
  * ``naive-N``: fixed batches of N requests in arrival order through ``model.generate``;
  * ``engine-N``: ``Engine.generate`` with ``max_num_seqs=N`` (length sorting, encoder
    batching by length, preallocated KV cache, continuous batching: finished rows leave
    the batch and waiting requests take their place);
  * ``engine``: the same with its default budgets (up to 32 rows, 600 s of audio);
and five questions about one clip: one engine call with all five vs one question alone
(target: <= 1.5x) vs five independent ``model.generate`` calls.

All runs are greedy and produce the same tokens (checked), so they do the same work.
Random weights rarely emit the end token, so the table is printed twice: with answers of
full length (``--max-new-tokens``), and with a token the model emits at varied depths taken
as the end token, so answers vary in length as a trained model's do (there the engine's
finished rows leave the batch while ``model.generate`` keeps computing them). A third
table gives each request the answer length of a task drawn from the benchmark's realistic
mix (``midashenglm.bench.workloads.TASKS``: ASR ~3 tokens per second of speech, captions
15-40, labels 2-8, closed QA 1-3, open QA 10-40) with the task's own prompt; a batch of
``model.generate`` then runs to its longest answer. Each timing is the best of
``--repeat`` round-robin runs (the machine may be shared).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from midashenglm.conversation import build_conversation

DECODERS: dict[str, dict[str, Any]] = {
    # A few-layer Qwen2 decoder: big enough that the model's work shows, small for a CPU.
    "small": {
        "model_type": "qwen2", "hidden_size": 256, "intermediate_size": 768,
        "num_hidden_layers": 4, "num_attention_heads": 4, "num_key_value_heads": 2,
        "max_position_embeddings": 4096, "rms_norm_eps": 1e-6, "rope_theta": 10000.0,
        "tie_word_embeddings": False, "hidden_act": "silu",
    },
}
QUESTIONS = [
    "Write an audio caption describing the sound",
    "What gender is the speaker?",
    "Which labels describe the sound?",
    "What's the music instrument?",
    "Describe the acoustic environment. Answer with 1-2 sentences",
]


def build_model(args: argparse.Namespace) -> tuple[Any, Any]:
    from midashenglm.checkpoint import load_model
    from midashenglm.modeling.config import DECODER_PRESETS, DashengConfig, MiDashengLMConfig
    from midashenglm.modeling.model import MiDashengLM
    from midashenglm.processing import MiDashengLMProcessor
    from midashenglm.tokenizer import build_tiny_tokenizer

    if args.model:
        return load_model(args.model, device="cpu", dtype=args.dtype)
    processor = MiDashengLMProcessor(build_tiny_tokenizer())
    if args.decoder in DECODERS:
        text = dict(DECODERS[args.decoder])
    elif args.decoder in DECODER_PRESETS:
        text = dict(DECODER_PRESETS[args.decoder])
    else:
        text = json.loads(Path(args.decoder).read_text())
    text.setdefault("vocab_size", max(512, len(processor.tokenizer)))
    config = MiDashengLMConfig(
        audio_encoder_config=DashengConfig.from_preset(args.encoder).to_dict(),
        text_config=text,
        audio_token_id=processor.audio_token_id,
    )
    torch.manual_seed(0)
    model = MiDashengLM(config).eval().to(getattr(torch, args.dtype))
    model.generation_config.eos_token_id = processor.tokenizer.convert_tokens_to_ids("<|im_end|>")
    model.generation_config.pad_token_id = processor.tokenizer.pad_token_id
    return model, processor


def clips(n: int, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    seconds = np.concatenate([[0.3, 30.0], rng.uniform(0.5, 30.0, size=max(0, n - 2))])[:n]
    rng.shuffle(seconds)
    out = []
    for i, s in enumerate(seconds):
        t = np.arange(int(s * 16000)) / 16000
        wave = 0.3 * np.sin(2 * np.pi * (200 + 10 * i) * t) + 0.05 * rng.standard_normal(t.size)
        out.append(wave.astype(np.float32))
    return out


def conversation(wave: np.ndarray, question: str) -> list[dict[str, Any]]:
    return build_conversation(wave, question, sampling_rate=16000)


def hf_generate(model: Any, processor: Any, convs: list[list[dict]], batch: int,
                max_new: int, lengths: list[int] | None = None) -> list[list[int]]:
    """Greedy ``model.generate`` in batches; with ``lengths`` (one per request), each batch
    runs to its longest and every row is cut to its own length."""
    out: list[list[int]] = []
    eos = model.generation_config.eos_token_id
    for start in range(0, len(convs), batch):
        wanted = lengths[start:start + batch] if lengths else [max_new] * len(convs[start:start + batch])
        inputs = processor.apply_chat_template(convs[start:start + batch], tokenize=True)
        tokens = model.generate(**inputs, max_new_tokens=max(wanted), do_sample=False)
        for row, n in zip(tokens.tolist(), wanted, strict=True):
            row = row[:n]
            # Padding after an early end is not an answer token.
            out.append(row[: row.index(eos) + 1] if eos in row else row)
    return out


def timed(fn: Any, repeat: int = 1) -> tuple[float, Any]:
    """Best wall time of ``repeat`` runs, and the last run's value."""
    best = float("inf")
    for _ in range(repeat):
        start = time.perf_counter()
        value = fn()
        best = min(best, time.perf_counter() - start)
    return best, value


def throughput(model: Any, processor: Any, convs: list[list[dict]], args: argparse.Namespace,
               lengths: list[int] | None = None) -> dict:
    """Best round-robin times of the four ways to run ``convs``, and their tokens
    (``lengths``: the answer length of each request, else ``--max-new-tokens``)."""
    from midashenglm.inference import Engine, Request, SamplingParams

    lengths = lengths or [args.max_new_tokens] * len(convs)
    requests = [Request(c, SamplingParams(max_new_tokens=n)) for c, n in zip(convs, lengths, strict=True)]

    def engine_run(batch: int) -> Any:
        return lambda: Engine(model, processor, max_num_seqs=batch).generate(requests)

    runs = {
        "loop": lambda: hf_generate(model, processor, convs, 1, args.max_new_tokens, lengths),
        "naive": lambda: hf_generate(model, processor, convs, args.batch, args.max_new_tokens, lengths),
        "engine": engine_run(args.batch),
        "budget": engine_run(32),
    }
    best, out = round_robin(runs, args.repeat)
    engine_tokens = [r.token_ids for r in out["engine"]]
    return {
        "seconds": best,
        "generated_tokens": sum(len(t) for t in engine_tokens),
        "answer_lengths": [len(t) for t in engine_tokens],
        "same_tokens": engine_tokens == out["loop"] == out["naive"]
        == [r.token_ids for r in out["budget"]],
    }


def five_questions(model: Any, processor: Any, clip: np.ndarray, args: argparse.Namespace) -> dict:
    from midashenglm.inference import Engine, Request, SamplingParams

    sampling = SamplingParams(max_new_tokens=args.max_new_tokens)
    five = [Request(conversation(clip, q), sampling) for q in QUESTIONS]
    engines: list[Any] = []

    def fresh(requests: list[Any]) -> Any:
        engines.append(Engine(model, processor))  # a cold encoder cache each time
        return engines[-1].generate(requests)

    best, out = round_robin({
        "one": lambda: fresh(five[:1]),
        "five": lambda: fresh(five),
        "five_generate": lambda: hf_generate(model, processor, [r.conversation for r in five], 1,
                                             args.max_new_tokens),
    }, args.repeat)
    return {"seconds": best, "ratio": best["five"] / best["one"],
            "encoder_calls": engines[-1].stats["encoder_calls"],
            "shared_prefix_rows": engines[-1].stats["shared_prefix_rows"]}


def round_robin(runs: dict[str, Any], repeat: int) -> tuple[dict[str, float], dict[str, Any]]:
    """Best time of each run over ``repeat`` rounds; a busy moment then slows every method alike."""
    best = dict.fromkeys(runs, float("inf"))
    out: dict[str, Any] = {}
    for _ in range(repeat):
        for name, run in runs.items():
            seconds, out[name] = timed(run)
            best[name] = min(best[name], seconds)
    return best, out


def varied_end_token(model: Any, processor: Any, convs: list[list[dict]], max_new: int) -> int:
    """A token that random weights emit at varied depths: used as the end token, it gives
    answers of varied length, as a trained model does (captions ~30 tokens, QA 1-5)."""
    from midashenglm.inference import Engine, Request, SamplingParams

    sampling = SamplingParams(max_new_tokens=max_new, ignore_eos=True)
    answers = [r.token_ids for r in Engine(model, processor).generate([Request(c, sampling) for c in convs])]
    first: dict[int, list[int]] = {}
    for tokens in answers:
        for position, token in enumerate(tokens):
            if token not in tokens[:position]:
                first.setdefault(token, []).append(position)
    # Most rows ending, at the most spread-out depths.
    return max(first, key=lambda t: (len(first[t]), float(np.std(first[t]))))


def print_table(title: str, numbers: dict, args: argparse.Namespace) -> None:
    seconds, generated = numbers["seconds"], numbers["generated_tokens"]
    lengths = numbers["answer_lengths"]
    print(f"\n{title}: {generated} generated tokens (answers {min(lengths)}..{max(lengths)} tokens), "
          f"greedy; all methods give the same tokens: {numbers['same_tokens']}")
    print(f"{'':44s} {'seconds':>8s} {'clips/s':>8s} {'tokens/s':>9s} {'vs loop':>8s} {'vs naive':>9s}")
    names = {"loop": "loop model.generate (1 at a time)",
             "naive": f"naive model.generate (batches of {args.batch})",
             "engine": f"engine (max_num_seqs={args.batch})",
             "budget": "engine (default budgets: up to 32 rows)"}
    for key, name in names.items():
        t = seconds[key]
        print(f"{name:44s} {t:8.2f} {args.requests / t:8.2f} {generated / t:9.1f} "
              f"{seconds['loop'] / t:7.2f}x {seconds['naive'] / t:8.2f}x")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", help="a checkpoint folder instead of a random model")
    parser.add_argument("--encoder", default="tiny", help="encoder preset (tiny, base, 0.6B, 1.2B)")
    parser.add_argument("--decoder", default="small",
                        help=f"decoder preset ({', '.join(DECODERS)}, or the project's presets) or a JSON file")
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--requests", type=int, default=24)
    parser.add_argument("--batch", type=int, default=8, help="batch size of the naive baseline and the engine")
    parser.add_argument("--max-new-tokens", type=int, default=32)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    parser.add_argument("--repeat", type=int, default=3, help="best of this many round-robin runs")
    parser.add_argument("--json", type=Path, help="also write the numbers here")
    args = parser.parse_args()
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
    from midashenglm.bench.workloads import draw_tasks

    if args.threads:
        torch.set_num_threads(args.threads)
    model, processor = build_model(args)
    waves = clips(args.requests)
    convs = [conversation(w, QUESTIONS[0]) for w in waves]
    audio_seconds = sum(len(w) for w in waves) / 16000
    print(f"model: encoder {args.encoder}, decoder {args.model or args.decoder}, {args.dtype}, "
          f"torch threads {torch.get_num_threads()}, {os.cpu_count()} CPUs; "
          f"{args.requests} requests, {audio_seconds:.0f} s of audio (0.3 .. 30 s clips)")
    print(f"timings: best of {args.repeat} round-robin runs; on a shared machine they are noisy")

    with torch.inference_mode():
        hf_generate(model, processor, convs, args.batch, 4)  # warm-up: first calls allocate
        full = throughput(model, processor, convs, args)
        print_table("answers of full length (random weights never end)", full, args)

        eos = model.generation_config.eos_token_id
        end = varied_end_token(model, processor, convs, args.max_new_tokens)
        model.generation_config.eos_token_id = end
        varied = throughput(model, processor, convs, args)
        model.generation_config.eos_token_id = eos
        print_table(f"answers of varied length (token {end} taken as the end token)", varied, args)

        tasks = draw_tasks([len(w) / 16000 for w in waves], seed=0)
        task_convs = [conversation(w, t.question) for w, t in zip(waves, tasks, strict=True)]
        mix = throughput(model, processor, task_convs, args, [t.new_tokens for t in tasks])
        print_table("answers of task-mix length (bench.workloads.TASKS: ASR 3 tokens/s, captions 15-40, "
                    "labels 2-8, closed QA 1-3, open QA 10-40)", mix, args)

        clip = waves[int(np.argmax([len(w) for w in waves]))]  # the 30 s clip
        five = five_questions(model, processor, clip, args)
    s = five["seconds"]
    print(f"\nfive questions about one {len(clip) / 16000:.0f} s clip ({args.max_new_tokens} tokens each):")
    print(f"  one question, engine               {s['one']:8.3f} s")
    print(f"  five questions, one engine call    {s['five']:8.3f} s  ({five['ratio']:.2f}x one question, "
          f"target <= 1.5x; encoder calls: {five['encoder_calls']}, "
          f"rows sharing the prefix: {five['shared_prefix_rows']})")
    print(f"  five model.generate calls          {s['five_generate']:8.3f} s  "
          f"({s['five_generate'] / s['one']:.2f}x one question)")
    if args.json:
        numbers = {
            "config": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
            "cpus": os.cpu_count(), "torch_threads": torch.get_num_threads(),
            "audio_seconds": audio_seconds, "full_length": full, "varied_length": varied,
            "task_mix": mix, "tasks": [t.as_dict() for t in tasks],
            "five_questions": five,
        }
        args.json.write_text(json.dumps(numbers, indent=2) + "\n")
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
