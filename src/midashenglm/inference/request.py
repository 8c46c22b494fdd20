"""What goes into the engine and what comes out: requests, prepared requests, results."""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

import numpy as np

from midashenglm.inference.params import SamplingParams

# vLLM's finish reasons, plus "error" for a request that could not run at all.
FinishReason = Literal["stop", "length", "error", "abort"]
TextCallback = Callable[[str], None]


@dataclass
class Request:
    """One conversation (official message format, audio parts included) and how to decode it."""

    conversation: list[dict[str, Any]]
    sampling: SamplingParams = field(default_factory=SamplingParams)
    request_id: str | None = None


@dataclass
class Result:
    """What one request produced, and what it cost.

    ``token_ids`` are the generated tokens (the final end-of-sequence token included);
    ``text`` is their decoded text without special tokens, cut before a stop string.
    ``timings`` (seconds): ``queue`` waiting for a batch, ``encode``/``prefill`` for the
    whole batch, ``first_token`` from batch start, ``decode`` until this row finished,
    ``total`` from submission (or loading) to the result.
    """

    request_id: str | None
    text: str
    token_ids: list[int]
    finish_reason: FinishReason
    audio_tokens: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    audio_seconds: float = 0.0
    error: str | None = None
    timings: dict[str, float] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return self.error is None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class Clip:
    """One decoded clip of a request: content key (encoder cache), waveform, token count."""

    key: str
    wave: np.ndarray | None  # dropped once the request finishes
    tokens: int
    seconds: float


@dataclass
class PreparedRequest:
    """A request whose audio is decoded once and whose prompt ids are built (audio slots
    expanded): what :meth:`Engine.prepare` returns and the scheduler queues.

    ``prefix_len`` is the number of tokens up to the end of the last audio part (0 without
    audio): requests that agree on them can share that prefix's KV. ``num_output_tokens``
    counts the tokens generated so far (the scheduler's view of a running request).
    """

    index: int
    request: Request
    ids: list[int]
    clips: list[Clip]
    prefix_len: int
    max_new: int
    t_start: float
    on_text: TextCallback | None = None
    future: Future | None = None
    sink: Callable[[PreparedRequest, Result], None] | None = None  # where its Result goes
    solo: bool = False  # preempted after its batch failed as a whole: it runs alone next
    num_output_tokens: int = 0

    @property
    def request_id(self) -> str | None:
        return self.request.request_id

    @property
    def prefix_key(self) -> tuple:
        return (tuple(self.ids[: self.prefix_len]), tuple(c.key for c in self.clips))

    @property
    def audio_tokens(self) -> int:
        return sum(c.tokens for c in self.clips)

    @property
    def audio_seconds(self) -> float:
        return sum(c.seconds for c in self.clips)

    @property
    def remaining(self) -> int:
        return self.max_new - self.num_output_tokens


def error_result(request: Any, err: BaseException) -> Result:
    """The Result of a request that failed: its error named, nothing generated."""
    message = str(err) or type(err).__name__
    if not isinstance(err, ValueError | TypeError | FileNotFoundError | OSError):
        message = f"{type(err).__name__}: {message}"
    return Result(
        request_id=getattr(request, "request_id", None),
        text="",
        token_ids=[],
        finish_reason="error",
        error=message,
    )


def aborted_result(item: PreparedRequest) -> Result:
    """The Result of a request aborted before it produced anything."""
    return Result(request_id=item.request_id, text="", token_ids=[], finish_reason="abort",
                  audio_tokens=item.audio_tokens, prompt_tokens=len(item.ids),
                  audio_seconds=item.audio_seconds)
