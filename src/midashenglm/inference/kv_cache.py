"""A KV cache that writes new keys and values in place instead of concatenating.

``DynamicCache`` grows by ``torch.cat`` every step, copying the whole cache of every
layer each time: on a CPU that copy was a third of a decode step. This layer reserves
room for the prompt plus the longest answer once and writes each step's keys and values
into it; attention reads a view of the filled part.
"""

from __future__ import annotations

from typing import Any

import torch
from transformers import DynamicCache
from transformers.cache_utils import DynamicLayer


class PreallocatedLayer(DynamicLayer):
    """A ``DynamicLayer`` whose storage is reserved up front (and doubled if ever outgrown)."""

    def __init__(self, capacity: int = 0) -> None:
        super().__init__()
        self.capacity = capacity
        self.length = 0
        self._keys: torch.Tensor | None = None
        self._values: torch.Tensor | None = None

    def lazy_initialization(self, key_states: torch.Tensor, value_states: torch.Tensor) -> None:
        self.device = key_states.device
        self.is_initialized = True

    def update(
        self, key_states: torch.Tensor, value_states: torch.Tensor, *args: Any, **kwargs: Any
    ) -> tuple[torch.Tensor, torch.Tensor]:
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        end = self.length + key_states.shape[-2]
        if self._keys is None or end > self._keys.shape[-2]:
            self._grow(key_states, value_states, end)
        self._keys[..., self.length:end, :].copy_(key_states)  # type: ignore[index]
        self._values[..., self.length:end, :].copy_(value_states)  # type: ignore[index]
        self.length = end
        self.keys = self._keys[..., :end, :]  # type: ignore[index]
        self.values = self._values[..., :end, :]  # type: ignore[index]
        return self.keys, self.values

    def _grow(self, key_states: torch.Tensor, value_states: torch.Tensor, end: int) -> None:
        size = max(end, self.capacity, 2 * (self._keys.shape[-2] if self._keys is not None else 0))
        keys = key_states.new_empty((*key_states.shape[:-2], size, key_states.shape[-1]))
        values = value_states.new_empty((*value_states.shape[:-2], size, value_states.shape[-1]))
        if self._keys is not None and self.length:
            keys[..., : self.length, :].copy_(self._keys[..., : self.length, :])
            values[..., : self.length, :].copy_(self._values[..., : self.length, :])  # type: ignore[index]
        self._keys, self._values = keys, values

    def get_seq_length(self) -> int:
        return self.length

    def batch_select_indices(self, indices: torch.Tensor) -> None:
        if self._keys is None:
            return
        self._keys = self._keys.index_select(0, indices.to(self._keys.device))
        self._values = self._values.index_select(0, indices.to(self._values.device))  # type: ignore[union-attr]
        self.keys = self._keys[..., : self.length, :]
        self.values = self._values[..., : self.length, :]

    def reorder_cache(self, beam_idx: torch.LongTensor) -> None:
        self.batch_select_indices(beam_idx)

    def batch_repeat_interleave(self, repeats: int) -> None:
        self.batch_select_indices(
            torch.arange(self._keys.shape[0] if self._keys is not None else 0).repeat_interleave(repeats)
        )

    def crop(self, tokens_to_remove: int) -> None:
        if tokens_to_remove > 0:
            raise ValueError("crop takes a negative number of tokens to remove")
        self.length = max(0, self.length + tokens_to_remove)
        if self._keys is not None:
            self.keys = self._keys[..., : self.length, :]
            self.values = self._values[..., : self.length, :]  # type: ignore[index]

    def reset(self) -> None:
        self.length = 0
        self._keys = self._values = None
        self.keys = self.values = None
        self.is_initialized = False


def preallocated(cache: DynamicCache) -> bool:
    return bool(cache.layers) and all(isinstance(layer, PreallocatedLayer) for layer in cache.layers)


def merge_right_aligned(parts: list[tuple[torch.Tensor, DynamicCache]], rows: int, width: int,
                        capacity: int) -> DynamicCache:
    """One cache of ``rows`` rows and ``width`` tokens from caches of row subsets.

    Each part (row indices, cache of those rows) ends at column ``width``: shorter parts are
    left-padded with zeros, which the attention mask hides, exactly like left-padded
    prompts. This lets prompts of very different lengths be prefilled in separate,
    barely padded batches and then decoded together.
    """
    first = parts[0][1]
    merged = DynamicCache()
    merged.layers = []
    for layer_index, template in enumerate(first.layers):
        layer = PreallocatedLayer(capacity)
        keys = template.keys.new_zeros((rows, *template.keys.shape[1:-2], max(width, capacity),
                                        template.keys.shape[-1]))
        values = template.values.new_zeros((rows, *template.values.shape[1:-2], max(width, capacity),
                                            template.values.shape[-1]))
        for index, cache in parts:
            part = cache.layers[layer_index]
            span = part.keys.shape[-2]
            index = index.to(keys.device)
            keys[index, ..., width - span:width, :] = part.keys
            values[index, ..., width - span:width, :] = part.values
        layer._keys, layer._values = keys, values
        layer.length = width
        layer.is_initialized = True
        layer.device = keys.device
        layer.keys, layer.values = keys[..., :width, :], values[..., :width, :]
        merged.layers.append(layer)
    return merged


def trim_left(cache: DynamicCache, columns: int) -> bool:
    """Drop the first ``columns`` positions of every row (padding no row attends to any more).

    Only views change: the storage stays and later steps keep writing in place. False (and
    nothing changed) when the cache is not made of :class:`PreallocatedLayer`.
    """
    if not preallocated(cache):
        return False
    for layer in cache.layers:
        if layer._keys is None:
            continue
        layer._keys = layer._keys[..., columns:, :]
        layer._values = layer._values[..., columns:, :]  # type: ignore[index]
        layer.length -= columns
        layer.keys = layer._keys[..., : layer.length, :]
        layer.values = layer._values[..., : layer.length, :]
    return True


def make_kv_cache(config: Any, capacity: int) -> DynamicCache:
    """A ``DynamicCache`` for ``config``; full-attention layers preallocate ``capacity`` tokens.

    Sliding-window or linear-attention layers keep their own transformers classes.
    """
    cache = DynamicCache(config=config)
    if cache.layers and all(type(layer) is DynamicLayer for layer in cache.layers):
        cache.layers = [PreallocatedLayer(capacity) for _ in cache.layers]
    return cache
