"""Decoding parameters of one request (no torch here: the command line imports it early)."""

from __future__ import annotations

from dataclasses import dataclass

MAX_TOP_K = 2**31 - 1  # larger than any vocabulary; a bigger value would not fit a tensor


@dataclass(frozen=True)
class SamplingParams:
    """How one request is decoded.

    ``temperature == 0`` is greedy decoding (``top_p``/``top_k``/``seed`` are then unused).
    ``top_k == 0`` keeps the whole vocabulary, as does any ``top_k`` above its size (at most
    :data:`MAX_TOP_K`). ``stop`` strings end generation and are
    trimmed from the text; the model's end-of-sequence tokens end it too unless
    ``ignore_eos``. ``seed`` makes sampling reproducible, whatever the batch around it.
    """

    max_new_tokens: int = 256
    temperature: float = 0.0
    top_p: float = 1.0
    top_k: int = 0
    stop: tuple[str, ...] = ()
    seed: int | None = None
    ignore_eos: bool = False

    def __post_init__(self) -> None:
        if isinstance(self.stop, str):
            object.__setattr__(self, "stop", (self.stop,))
        else:
            object.__setattr__(self, "stop", tuple(self.stop))
        if isinstance(self.max_new_tokens, bool) or not isinstance(self.max_new_tokens, int) \
                or self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be a positive integer, got {self.max_new_tokens!r}")
        if not self.temperature >= 0:
            raise ValueError(f"temperature must be >= 0, got {self.temperature!r}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p!r}")
        if (isinstance(self.top_k, bool) or not isinstance(self.top_k, int)
                or not 0 <= self.top_k <= MAX_TOP_K):
            raise ValueError(f"top_k must be an integer from 0 to {MAX_TOP_K}, got {self.top_k!r}")
        if any(not isinstance(s, str) or not s for s in self.stop):
            raise ValueError(f"stop strings must be non-empty strings, got {self.stop!r}")
        if self.seed is not None and (isinstance(self.seed, bool) or not isinstance(self.seed, int)):
            raise ValueError(f"seed must be an integer or None, got {self.seed!r}")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0 or self.top_k == 1
