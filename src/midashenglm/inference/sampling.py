"""The per-row sampler, incremental detokenisation and stop strings.

Everything here works on whole batches at once: one batch row may decode greedily
while its neighbour samples at temperature 0.7 with top-p 0.9 and its own seed.
"""

from __future__ import annotations

import secrets
from collections.abc import Sequence
from typing import Any

import torch

from midashenglm.inference.params import SamplingParams

__all__ = ["Sampler", "SamplingParams", "TextStream", "find_stop"]


class Sampler:
    """Picks the next token of every row, each with its own parameters and random stream.

    Sampling draws one uniform number per row from the row's own ``torch.Generator`` and
    inverts the row's filtered CDF with it, so a seeded row gives the same tokens alone
    or in any batch.
    """

    def __init__(self, params: Sequence[SamplingParams], device: torch.device) -> None:
        self.device = device
        self.greedy = torch.tensor([p.greedy for p in params], dtype=torch.bool)
        self.all_greedy = bool(self.greedy.all())
        self.temperature = torch.tensor([p.temperature if not p.greedy else 1.0 for p in params])
        self.top_p = torch.tensor([p.top_p for p in params])
        self.top_k = torch.tensor([p.top_k for p in params], dtype=torch.long)
        self.generators: list[torch.Generator | None] = [
            None if p.greedy else _generator(p.seed) for p in params
        ]

    def select(self, keep: list[int]) -> None:
        """Keep only these rows (finished rows leave the batch)."""
        index = torch.tensor(keep, dtype=torch.long)
        self.greedy = self.greedy[index]
        self.all_greedy = bool(self.greedy.all())
        self.temperature = self.temperature[index]
        self.top_p = self.top_p[index]
        self.top_k = self.top_k[index]
        self.generators = [self.generators[i] for i in keep]

    def extend(self, other: Sampler) -> None:
        """Append the rows of ``other`` (requests joining a running batch)."""
        self.greedy = torch.cat([self.greedy, other.greedy])
        self.all_greedy = self.all_greedy and other.all_greedy
        self.temperature = torch.cat([self.temperature, other.temperature])
        self.top_p = torch.cat([self.top_p, other.top_p])
        self.top_k = torch.cat([self.top_k, other.top_k])
        self.generators = self.generators + other.generators

    def __call__(self, logits: torch.Tensor) -> torch.Tensor:
        """Next token per row from (rows, vocab) logits."""
        tokens = logits.argmax(dim=-1)
        if self.all_greedy:
            return tokens
        rows = (~self.greedy).nonzero().flatten()
        sampled = self._sample(logits[rows.to(logits.device)].float(), rows)
        tokens[rows.to(tokens.device)] = sampled
        return tokens

    def _sample(self, logits: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        device = logits.device
        logits = logits / self.temperature[rows].to(device)[:, None]
        top_k = self.top_k[rows].to(device)
        top_p = self.top_p[rows].to(device)
        filtered = bool((top_k > 0).any() or (top_p < 1).any())
        if filtered:
            logits, order = logits.sort(dim=-1, descending=True)
            rank = torch.arange(logits.shape[-1], device=device)[None, :]
            limit = torch.where(top_k > 0, top_k, logits.shape[-1])
            logits = logits.masked_fill(rank >= limit[:, None], float("-inf"))
        probs = logits.softmax(dim=-1)
        if filtered:
            # Nucleus: drop a token when the tokens before it already reach top_p
            # (the first token always stays).
            before = probs.cumsum(dim=-1) - probs
            probs = probs.masked_fill(before >= top_p[:, None], 0.0)
        cdf = probs.cumsum(dim=-1)
        draws = torch.stack([torch.rand((), generator=self.generators[int(r)]) for r in rows])
        targets = draws.to(device=device, dtype=cdf.dtype) * cdf[:, -1]
        picked = torch.searchsorted(cdf, targets[:, None]).clamp_max(cdf.shape[-1] - 1)
        # searchsorted can land on a zero-probability slot when a draw falls exactly on
        # a boundary; step back to the last token that has mass.
        picked = _nearest_with_mass(probs, picked.squeeze(-1))
        return order.gather(-1, picked[:, None]).squeeze(-1) if filtered else picked


def _nearest_with_mass(probs: torch.Tensor, picked: torch.Tensor) -> torch.Tensor:
    has_mass = probs.gather(-1, picked[:, None]).squeeze(-1) > 0
    if bool(has_mass.all()):
        return picked
    fallback = probs.argmax(dim=-1)
    return torch.where(has_mass, picked, fallback)


def _generator(seed: int | None) -> torch.Generator:
    generator = torch.Generator(device="cpu")
    generator.manual_seed(seed if seed is not None else secrets.randbits(63))
    return generator


class TextStream:
    """Incremental detokenisation that never emits half a UTF-8 character.

    The text of the last few tokens is decoded again with their left context (byte-level
    BPE merges across token boundaries); new text is released only once it no longer
    ends in the replacement character that marks an incomplete multi-byte sequence.
    """

    def __init__(self, tokenizer: Any) -> None:
        self.tokenizer = tokenizer
        self.ids: list[int] = []
        self.text = ""
        self._prefix = 0
        self._read = 0

    def push(self, token: int) -> str:
        """Add one token; return the text it completes (often '', sometimes several chars)."""
        self.ids.append(token)
        decode = self.tokenizer.decode
        before = decode(self.ids[self._prefix:self._read], skip_special_tokens=True)
        after = decode(self.ids[self._prefix:], skip_special_tokens=True)
        if len(after) <= len(before) or after.endswith("\ufffd"):
            return ""
        delta = after[len(before):]
        self._prefix, self._read = self._read, len(self.ids)
        self.text += delta
        return delta


def find_stop(text: str, stops: Sequence[str], start: int = 0) -> int:
    """Index of the earliest stop string in ``text[start:]`` (absolute), or -1."""
    hits = [i for i in (text.find(s, start) for s in stops) if i >= 0]
    return min(hits) if hits else -1
