"""Bounded LRU caches of the engine: encoder outputs by the audio's content, and the KV
cache of prompt heads (system prompt and user header) by their token ids."""

from __future__ import annotations

import hashlib
import threading
from collections import OrderedDict
from collections.abc import Hashable
from typing import Any

import numpy as np


def audio_key(wave: np.ndarray) -> str:
    """Content hash of a (loaded, 16 kHz float32) waveform: equal audio, equal key."""
    wave = np.ascontiguousarray(wave, dtype=np.float32)
    digest = hashlib.sha256(wave.view(np.uint8))
    return f"{digest.hexdigest()[:32]}-{wave.shape[0]}"


class LRUCache:
    """Values by key; the least recently used leaves first once ``max_items`` are held.

    ``max_items == 0`` disables it (``option`` names the setting in errors). Thread-safe,
    since a server's worker and the caller's thread may both use one engine.
    """

    def __init__(self, max_items: int, option: str = "max_items") -> None:
        if max_items < 0:
            raise ValueError(f"{option} must be >= 0, got {max_items}")
        self.max_items = max_items
        self._items: OrderedDict[Hashable, Any] = OrderedDict()
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0

    def __len__(self) -> int:
        return len(self._items)

    def __contains__(self, key: Hashable) -> bool:
        return key in self._items

    def get(self, key: Hashable) -> Any | None:
        with self._lock:
            value = self._items.get(key)
            if value is None:
                self.misses += 1
                return None
            self._items.move_to_end(key)
            self.hits += 1
            return value

    def put(self, key: Hashable, value: Any) -> None:
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

