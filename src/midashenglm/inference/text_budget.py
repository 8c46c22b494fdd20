"""How many tokens a prompt's text needs at least, found without tokenizing all of it.

A server must refuse a prompt whose text cannot fit the context window before it spends
seconds (and gigabytes) tokenizing megabytes of it. Two bounds, cheapest first:

1. **Characters.** No token covers more characters than the longest entry of the
   vocabulary (byte-level BPE: one character per byte, so this also bounds UTF-8 text;
   added tokens count too). A tokenizer with a normalizer may compose characters (NFC
   turns three Hangul jamo into one syllable), so its bound is divided by
   :data:`NORMALIZER_SLACK`. The result is a true lower bound: 10 MiB of text against
   Qwen's longest token (128 characters, a run of spaces) needs over 27,000 tokens.
2. **Counting in pieces.** Text longer than :data:`PIECE_CHARS` is tokenized piece by
   piece (split at white space where possible), and counting stops as soon as the total
   passes the limit, so the work never exceeds about one context window of tokens.
   A cut can fall inside a token of the whole text (a 12-character special token, a
   Japanese word), whose two halves then take several tokens; the pieces' sum therefore
   has one token's worth of characters (bound 1's divisor) subtracted per cut. That
   keeps the sum a lower bound, and it still passes the limit for the texts this is for:
   megabytes of text, where a cut every 32 KiB costs at most a few hundred tokens.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator
from typing import Any

__all__ = ["NORMALIZER_SLACK", "PIECE_CHARS", "conversation_texts", "max_token_chars",
           "min_text_tokens"]

NORMALIZER_SLACK = 3  # NFC composes at most three code points into one (Hangul L+V+T)
PIECE_CHARS = 32_768  # below this, tokenizing the whole text is cheap (~10 ms)


def conversation_texts(conversation: Any) -> Iterator[str]:
    """Every text of a conversation in the official message format (string contents and
    ``text`` parts); anything malformed is left to the processor's own checks."""
    if not isinstance(conversation, list):
        return
    for message in conversation:
        content = message.get("content") if isinstance(message, dict) else None
        if isinstance(content, str):
            yield content
        elif isinstance(content, list):
            for part in content:
                if isinstance(part, dict) and isinstance(part.get("text"), str):
                    yield part["text"]


def max_token_chars(tokenizer: Any) -> int:
    """The most characters one token of ``tokenizer`` can stand for (see the module notes)."""
    longest = max((len(token) for token in tokenizer.get_vocab()), default=1)
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None or getattr(backend, "normalizer", None) is not None:
        longest *= NORMALIZER_SLACK  # a slow tokenizer may normalise too: assume it does
    return max(1, longest)


def min_text_tokens(tokenizer: Any, conversation: Any, limit: int, *,
                    chars_per_token: int | None = None,
                    lock: threading.Lock | None = None) -> int:
    """A lower bound on the tokens the texts of ``conversation`` need; exact enough to
    compare with ``limit`` (once it passes ``limit`` counting stops).

    ``chars_per_token``: :func:`max_token_chars` of the tokenizer (pass it to compute it
    once). ``lock``: held around each tokenizer call only, so other threads get their turn
    between pieces.
    """
    texts = list(conversation_texts(conversation))
    chars = sum(len(text) for text in texts)
    per_token = chars_per_token or max_token_chars(tokenizer)
    floor = -(-chars // per_token)
    if floor > limit or chars <= PIECE_CHARS:
        return floor
    count = 0  # the pieces' tokens, less per_token for every piece after a text's first
    guard = lock if lock is not None else contextlib.nullcontext()
    for text in texts:
        for i, piece in enumerate(_pieces(text)):
            with guard:
                ids = tokenizer(piece, add_special_tokens=False)["input_ids"]
            count += len(ids) - (per_token if i else 0)
            if count > limit:
                return count
    return max(count, floor)


def _pieces(text: str) -> Iterator[str]:
    start = 0
    while start < len(text):
        end = min(len(text), start + PIECE_CHARS)
        if end < len(text):
            cut = text.rfind(" ", start + PIECE_CHARS // 2, end)
            end = cut if cut > start else end
        yield text[start:end]
        start = end
