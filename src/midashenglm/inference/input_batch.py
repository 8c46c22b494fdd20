"""The running batch's tensors: KV cache, attention mask, positions, next input tokens."""

from __future__ import annotations

from typing import Any

import torch

from midashenglm.inference.kv_cache import merge_right_aligned, trim_left
from midashenglm.inference.output import RequestState
from midashenglm.inference.sampling import Sampler


class InputBatch:
    """The rows decoding together: their KV cache, attention mask (bool, rows x width), the
    next position and input token of each row, and the sampler. Rows leave when they
    finish; newcomers join between steps (:meth:`join`)."""

    def __init__(self) -> None:
        self.clear()

    def clear(self) -> None:
        self.rows: list[RequestState] = []
        self.cache: Any = None
        self.mask: torch.Tensor = torch.empty(0, 0, dtype=torch.bool)
        self.positions: torch.Tensor = torch.empty(0, dtype=torch.long)
        self.tokens: torch.Tensor = torch.empty(0, dtype=torch.long)
        self.sampler: Sampler | None = None
        self.padded = False

    def __len__(self) -> int:
        return len(self.rows)

    @property
    def width(self) -> int:
        """KV columns of the batch (what the scheduler budgets against)."""
        return int(self.mask.shape[1]) if self.rows else 0

    def start(self, rows: list[RequestState], cache: Any, mask: torch.Tensor, positions: torch.Tensor,
              sampler: Sampler) -> None:
        self.rows, self.cache, self.mask, self.positions, self.sampler = rows, cache, mask, positions, sampler
        self.padded = bool((~mask).any())

    def keep(self, keep: list[int]) -> None:
        """Only these rows stay: select them in the cache and in every per-row tensor."""
        if not keep:
            self.clear()
            return
        index = torch.tensor(keep, device=self.mask.device)
        self.cache.batch_select_indices(index)
        self.mask, self.positions, self.tokens = self.mask[index], self.positions[index], self.tokens[index]
        self.sampler.select(keep)  # type: ignore[union-attr]
        self.rows = [self.rows[j] for j in keep]
        # Columns no remaining row attends to (the prompt of a long row that left) would
        # cost attention every step: drop them.
        first = int(self.mask.any(0).to(torch.uint8).argmax())
        if first and trim_left(self.cache, first):
            self.mask = self.mask[:, first:]
        self.padded = bool((~self.mask).any())

    def join(self, new: InputBatch) -> None:
        """Merge ``new`` into this batch: both caches end at the same column, the narrower
        one left-padded with masked zeros, as left-padded prompts are."""
        if not self.rows:
            self.__dict__.update(new.__dict__)
            return
        rows = len(self) + len(new)
        width = max(self.mask.shape[1], new.mask.shape[1])
        capacity = width + max(row.remaining for row in (*self.rows, *new.rows))
        device = self.mask.device
        parts = [(torch.arange(len(self), device=device), self.cache),
                 (torch.arange(len(self), rows, device=device), new.cache)]
        self.cache = merge_right_aligned(parts, rows, width, capacity)
        self.mask = torch.cat([_pad_left(self.mask, width), _pad_left(new.mask, width)])
        self.positions = torch.cat([self.positions, new.positions])
        self.tokens = torch.cat([self.tokens, new.tokens])
        self.sampler.extend(new.sampler)  # type: ignore[union-attr, arg-type]
        self.rows += new.rows
        self.padded = bool((~self.mask).any())


def _pad_left(mask: torch.Tensor, width: int) -> torch.Tensor:
    missing = width - mask.shape[1]
    return torch.cat([mask.new_zeros(mask.shape[0], missing), mask], dim=1) if missing else mask
