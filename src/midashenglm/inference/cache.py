"""A bounded LRU cache of encoder outputs keyed by the audio's content."""

from __future__ import annotations

import hashlib
import threading
from collections import OrderedDict

import numpy as np
import torch


def audio_key(wave: np.ndarray) -> str:
    """Content hash of a (loaded, 16 kHz float32) waveform: equal audio, equal key."""
    wave = np.ascontiguousarray(wave, dtype=np.float32)
    digest = hashlib.sha256(wave.view(np.uint8))
    return f"{digest.hexdigest()[:32]}-{wave.shape[0]}"


class EncoderCache:
    """Audio embeddings (tokens, hidden) by content hash; least recently used leaves first.

    ``max_items == 0`` disables it. Thread-safe, since a server's worker and the
    caller's thread may both use one engine.
    """

    def __init__(self, max_items: int) -> None:
        if max_items < 0:
            raise ValueError(f"encoder_cache_items must be >= 0, got {max_items}")
        self.max_items = max_items
        self._items: OrderedDict[str, torch.Tensor] = OrderedDict()
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0

    def __len__(self) -> int:
        return len(self._items)

    def __contains__(self, key: str) -> bool:
        return key in self._items

    def get(self, key: str) -> torch.Tensor | None:
        with self._lock:
            value = self._items.get(key)
            if value is None:
                self.misses += 1
                return None
            self._items.move_to_end(key)
            self.hits += 1
            return value

    def put(self, key: str, value: torch.Tensor) -> None:
        if self.max_items == 0:
            return
        with self._lock:
            self._items[key] = value
            self._items.move_to_end(key)
            while len(self._items) > self.max_items:
                self._items.popitem(last=False)

    def clear(self) -> None:
        with self._lock:
            self._items.clear()
