"""Benchmark inputs: random clips, prompts of a fixed text length, and clip-length workloads.

The mixed workload follows the shape of the paper's Figure 3 (training-set sample
lengths: most clips between 1 and 10 s, a tail up to 30 s). The figure gives no
numbers, so the bins below are our reading of it, not a digitisation; mean 7.0 s.

The realistic workload adds what the fixed-100-token one leaves out: real requests ask
for different things and their answers differ in length. :data:`TASKS` is a mix of the
paper's task families, each with its own prompt (the paper's, SYSTEM.md section 6) and
answer length; see the notes on each task and ``docs/efficiency.md``.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from midashenglm.conversation import build_conversation
from midashenglm.processing import DEFAULT_SYSTEM_PROMPT

SAMPLE_RATE = 16000
QUESTION = "Write an audio caption describing the sound"

# (low s, high s, share of clips); uniform within a bin.
FIGURE3_BINS: tuple[tuple[float, float, float], ...] = (
    (0.5, 1.0, 0.06),
    (1.0, 2.0, 0.14),
    (2.0, 5.0, 0.30),
    (5.0, 10.0, 0.32),
    (10.0, 20.0, 0.12),
    (20.0, 30.0, 0.06),
)


def mixed_lengths(count: int, seed: int = 0) -> list[float]:
    """``count`` clip lengths in seconds drawn from :data:`FIGURE3_BINS`, in arrival order."""
    rng = np.random.default_rng(seed)
    shares = np.array([b[2] for b in FIGURE3_BINS])
    picks = rng.choice(len(FIGURE3_BINS), size=count, p=shares / shares.sum())
    return [round(float(rng.uniform(FIGURE3_BINS[i][0], FIGURE3_BINS[i][1])), 2) for i in picks]


def random_clip(seconds: float, seed: int) -> np.ndarray:
    """Noise plus a tone (a realistic dynamic range), float32 at 16 kHz."""
    rng = np.random.default_rng(seed)
    n = max(1, round(seconds * SAMPLE_RATE))
    t = np.arange(n, dtype=np.float32) / SAMPLE_RATE
    tone = 0.3 * np.sin(2 * np.pi * float(rng.uniform(100, 1000)) * t)
    return (tone + 0.05 * rng.standard_normal(n)).astype(np.float32)


@dataclass(frozen=True)
class Prompt:
    """The text around the audio: a system message and a question."""

    system: str | None
    question: str
    text_tokens: int  # prompt tokens that are not audio tokens (markup and bos/eos included)

    def conversation(self, audio: np.ndarray) -> list[dict[str, Any]]:
        """``[system?, user: [audio, question]]``, as every other path of the package builds it."""
        return build_conversation(audio, self.question, system_prompt=self.system, sampling_rate=SAMPLE_RATE)


def make_prompt(processor: Any, text_tokens: int = 30) -> Prompt:
    """A prompt with ``text_tokens`` non-audio tokens (the paper's prompts have about 30).

    The question stays; words of the default system prompt (repeated if need be) are
    added until the count is reached, or as close as the tokenizer allows.
    """
    words = (DEFAULT_SYSTEM_PROMPT.split() * 8)[:64]
    dummy = np.zeros(SAMPLE_RATE, dtype=np.float32)
    best: Prompt | None = None
    for k in range(len(words) + 1):
        system = " ".join(words[:k]) if k else None
        prompt = Prompt(system, QUESTION, 0)
        batch = processor(conversations=[prompt.conversation(dummy)])
        count = int(batch["input_ids"].shape[1]) - processor.num_audio_tokens(len(dummy))
        prompt = Prompt(system, QUESTION, count)
        if best is None or abs(count - text_tokens) < abs(best.text_tokens - text_tokens):
            best = prompt
        if count >= text_tokens:
            break
    assert best is not None
    return best


def conversations(prompt: Prompt, lengths: list[float], seed: int) -> list[list[dict[str, Any]]]:
    """One conversation per length, each with a fresh random clip."""
    return [prompt.conversation(random_clip(s, seed * 100_003 + i)) for i, s in enumerate(lengths)]


def batches(items: list[Any], size: int) -> list[list[Any]]:
    """Consecutive groups of ``size`` (arrival order, the last may be smaller)."""
    return [items[i : i + size] for i in range(0, len(items), size)]


# ------------------------------------------------------------------- realistic workload
@dataclass(frozen=True)
class Task:
    """A task family: its share of the requests, its prompts and its answer length.

    The answer length (new tokens, end token included) is drawn uniformly from
    ``answer_tokens``, or, when ``tokens_per_second`` is set (speech recognition), is that
    rate times the clip's length, +-20 %.
    """

    name: str
    share: float
    questions: tuple[str, ...]
    answer_tokens: tuple[int, int] = (1, 1)
    tokens_per_second: float = 0.0
    note: str = ""

    def draw_tokens(self, seconds: float, rng: np.random.Generator) -> int:
        if self.tokens_per_second:
            return max(2, round(self.tokens_per_second * seconds * float(rng.uniform(0.8, 1.2))))
        low, high = self.answer_tokens
        return int(rng.integers(low, high + 1))


# Shares are our assumption for a general audio-understanding service (the paper gives its
# training-data sampling, Figure 6, not a serving mix): speech recognition the largest single
# use, captions next (the model's first purpose), then labels and question answering.
TASKS: tuple[Task, ...] = (
    Task("asr", 0.30, ("Transcribe the speech into text <|en|>",), tokens_per_second=3.0,
         note="transcript: ~2.5 words/s of speech, ~1.3 tokens per word"),
    Task("caption", 0.25, ("Write an audio caption describing the sound", "Caption this music track"),
         (15, 40), note="ACAVCaps captions average 22 words (paper, Table 2), ~29 tokens"),
    Task("classification", 0.20, ("What gender is the speaker?", "Which labels describe the sound?",
                                   "What's the music instrument?"),
         (2, 8), note="a label or a few tags"),
    Task("closed_qa", 0.10, ("What is making this sound?\n(A) a dog\n(B) a car engine\n(C) rain\n"
                             "(D) a church bell\nAnswer with a single Letter:",),
         (1, 3), note="a letter, the end token"),
    Task("open_qa", 0.15, ("What is happening in this recording, and where? Answer with 1-2 sentences",),
         (10, 40), note="one or two short sentences"),
)


@dataclass(frozen=True)
class TaskRequest:
    """One request of the realistic workload."""

    task: str
    question: str
    seconds: float
    new_tokens: int

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def realistic_requests(count: int, seed: int = 0, tasks: tuple[Task, ...] = TASKS) -> list[TaskRequest]:
    """``count`` requests in arrival order: clip lengths as :func:`mixed_lengths` (the same
    lengths for the same seed), a task drawn by its share, a prompt and an answer length."""
    return draw_tasks(mixed_lengths(count, seed), seed, tasks)


def draw_tasks(lengths: list[float], seed: int = 0, tasks: tuple[Task, ...] = TASKS) -> list[TaskRequest]:
    """A task, a prompt and an answer length for each clip length, by the tasks' shares."""
    rng = np.random.default_rng([seed, 1])
    shares = np.array([t.share for t in tasks])
    picks = rng.choice(len(tasks), size=len(lengths), p=shares / shares.sum())
    out = []
    for seconds, pick in zip(lengths, picks, strict=True):
        task = tasks[int(pick)]
        question = task.questions[int(rng.integers(len(task.questions)))]
        out.append(TaskRequest(task.name, question, seconds, task.draw_tokens(seconds, rng)))
    return out


def task_conversations(requests: list[TaskRequest], seed: int,
                       system: str | None = DEFAULT_SYSTEM_PROMPT) -> list[list[dict[str, Any]]]:
    """One conversation per request (its own prompt), each with a fresh random clip."""
    return [Prompt(system, r.question, 0).conversation(random_clip(r.seconds, seed * 100_003 + i))
            for i, r in enumerate(requests)]
