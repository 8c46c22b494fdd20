"""Output processing: each running request's tokens, streamed text, stop strings, Result."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from midashenglm.inference.request import FinishReason, PreparedRequest, Result
from midashenglm.inference.sampling import TextStream, find_stop


@dataclass(frozen=True)
class StepClock:
    """When a group of requests started, and what its audio encoding and prefill took."""

    start: float
    encode: float
    prefill: float
    decode_start: float


class RequestState:
    """The output side of one running request: tokens so far, text stream, finish reason."""

    def __init__(self, item: PreparedRequest, tokenizer: Any, eos: frozenset[int], clock: StepClock) -> None:
        self.item = item
        self.clock = clock
        sampling = item.request.sampling
        self.stops = sampling.stop
        self.eos = frozenset() if sampling.ignore_eos else eos
        self.tokens: list[int] = []
        self.stream = TextStream(tokenizer) if (self.stops or item.on_text) else None
        # Text that could still turn into a stop string is held back from the stream.
        self.hold = max((len(s) for s in self.stops), default=1) - 1
        self.emitted = 0
        self.finish: FinishReason | None = None
        self.t_first: float | None = None
        self.t_done = 0.0

    @property
    def remaining(self) -> int:
        return self.item.max_new - len(self.tokens)

    def add(self, token: int, now: float) -> bool:
        """Take the next token; True when the request is finished."""
        if self.t_first is None:
            self.t_first = now
        self.tokens.append(token)
        self.item.num_output_tokens = len(self.tokens)
        if token in self.eos:
            self.finish = "stop"
        elif self.stream is not None:
            checked = len(self.stream.text)
            self.stream.push(token)
            if self.stops and find_stop(self.stream.text, self.stops, max(0, checked - self.hold)) >= 0:
                self.finish = "stop"
            elif self.item.on_text is not None:
                self._emit(self.stream.text[: max(self.emitted, len(self.stream.text) - self.hold)])
        if self.finish is None and len(self.tokens) >= self.item.max_new:
            self.finish = "length"
        if self.finish is not None:
            self.t_done = now
        return self.finish is not None

    def abort(self, now: float) -> None:
        self.finish, self.t_done = "abort", now

    def _emit(self, text: str) -> None:
        if len(text) > self.emitted and self.item.on_text is not None:
            delta, self.emitted = text[self.emitted:], len(text)
            try:
                self.item.on_text(delta)
            except Exception:  # noqa: BLE001 - a broken client callback must not stop the batch
                self.item.on_text = None

    def result(self, tokenizer: Any) -> Result:
        # An answer cut short (token limit, abort) can end inside a character, whose bytes
        # decode to U+FFFD; it is dropped, as vLLM's detokenizer does and as streaming does.
        text = tokenizer.decode(self.tokens, skip_special_tokens=True).rstrip("\ufffd")
        finish = self.finish or "length"
        cut = find_stop(text, self.stops) if self.stops else -1
        if cut >= 0:
            text, finish = text[:cut], "stop"
        if self.stream is not None and text.startswith(self.stream.text[: self.emitted]):
            self._emit(text)
        item, clock = self.item, self.clock
        return Result(
            request_id=item.request.request_id,
            text=text,
            token_ids=list(self.tokens),
            finish_reason=finish,
            audio_tokens=item.audio_tokens,
            prompt_tokens=len(item.ids),
            completion_tokens=len(self.tokens),
            audio_seconds=item.audio_seconds,
            timings={
                "queue": clock.start - item.t_start,
                "encode": clock.encode,
                "prefill": clock.prefill,
                "first_token": (self.t_first or self.t_done) - clock.start,
                "decode": self.t_done - clock.decode_start,
                "total": self.t_done - item.t_start,
            },
        )
