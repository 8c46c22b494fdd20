"""The engine's budgets and caches in one typed object (no torch here: the CLI imports it early)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields, replace
from typing import Any


@dataclass(frozen=True)
class EngineConfig:
    """How much the engine may batch and cache. Names follow vLLM's engine arguments where the meaning is the same.

    * ``max_num_seqs``: rows decoding together (vLLM's ``max_num_seqs``).
    * ``max_kv_cache_tokens``: KV-cache slots of the running batch, counted as
      rows x (widest prompt + longest answer still to come) (vLLM sizes its KV cache in
      blocks instead; this is the same bound in tokens).
    * ``max_batch_audio_seconds``: seconds of distinct audio encoded for one batch
      (bounds the encoder's activation memory).
    * ``encoder_cache_items``: clips whose encoder output is kept (LRU, by content hash).
    * ``prefix_cache_items``: prompt heads (system prompt + user header) whose KV is kept.
    * ``enable_prefix_sharing``: requests prefilled together that agree up to the end of
      their audio compute that prefix once.
    * ``loader_threads``: threads that decode audio ahead of the batch.

    Raises ``ValueError`` naming the field when a budget is not positive.
    """

    max_num_seqs: int = 32
    max_kv_cache_tokens: int = 32768
    max_batch_audio_seconds: float = 600.0
    encoder_cache_items: int = 256
    prefix_cache_items: int = 64
    enable_prefix_sharing: bool = True
    loader_threads: int = 4

    def __post_init__(self) -> None:
        for name in ("max_num_seqs", "max_kv_cache_tokens", "loader_threads"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"EngineConfig.{name} must be a positive integer, got {value!r}")
        for name in ("encoder_cache_items", "prefix_cache_items"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ValueError(f"EngineConfig.{name} must be an integer >= 0, got {value!r}")
        if not isinstance(self.enable_prefix_sharing, bool):
            raise ValueError("EngineConfig.enable_prefix_sharing must be True or False, "
                             f"got {self.enable_prefix_sharing!r}")
        seconds = self.max_batch_audio_seconds
        if isinstance(seconds, bool) or not (isinstance(seconds, int | float) and seconds > 0):
            raise ValueError("EngineConfig.max_batch_audio_seconds must be > 0, "
                             f"got {self.max_batch_audio_seconds!r}")

    def replace(self, **changes: Any) -> EngineConfig:
        """A copy with ``changes``; ``None`` values leave a field as it is (CLI defaults)."""
        return replace(self, **{k: v for k, v in changes.items() if v is not None})

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def field_names(cls) -> tuple[str, ...]:
        return tuple(f.name for f in fields(cls))
