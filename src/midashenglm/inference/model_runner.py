"""The model runner: encodes audio, prefills prompts, runs decode steps, samples.

It owns the running batch's tensors (:class:`InputBatch`) and the two caches that hold
tensors: encoder outputs by clip content (LRU) and the KV of prompt heads (the text
before the first audio part: system prompt, user header) by token ids. Every decoder pass
goes through :meth:`ModelRunner.forward`: for Llama-family decoders a
:class:`~midashenglm.inference.segment_runner.SegmentRunner` pass, in which the running
rows' decode step rides along with the newcomers' prefill (one read of the weights for
both), else the decoder's transformers forward.

Prefill, in detail
    * Requests prefilled together whose prompts agree up to the end of their audio (same
      system prompt, user header, same clip) share that prefix: its KV is computed once and
      copied to each row, which then runs only its own suffix. The 2-D attention mask keeps
      padding between prefix and suffix, and positions come from the mask's cumulative sum,
      so each row computes what it would alone.
    * A prompt starting with a cached head prefills only the rest; heads are computed once
      (the runner assumes the weights do not change under it).
    * The rest runs in groups of similar length whose caches are then joined right-aligned
      (the gaps masked zeros): what one padded prefill would have left, minus the waste.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from typing import Any, TypeVar

import torch

from midashenglm.inference.cache import LRUCache
from midashenglm.inference.config import EngineConfig
from midashenglm.inference.input_batch import InputBatch
from midashenglm.inference.kv_cache import make_kv_cache, merge_right_aligned, preallocated
from midashenglm.inference.output import RequestState
from midashenglm.inference.request import Clip, PreparedRequest
from midashenglm.inference.sampling import Sampler
from midashenglm.inference.segment_runner import Segment, SegmentRunner, forward_segments
from midashenglm.modeling.model import fill_audio_slots
from midashenglm.processing import pad_sequences

T = TypeVar("T")


class ModelRunner:
    """Tensor work of the engine; see the module docstring. ``stats`` is the engine's counter."""

    def __init__(self, model: Any, config: EngineConfig, *, pad_token_id: int, stats: Counter[str]) -> None:
        self.model = model
        self.decoder = model.decoder
        self.device = next(model.parameters()).device
        self.audio_token_id = model.config.audio_token_id
        self.pad_token_id = pad_token_id
        self.share_prefix = config.enable_prefix_sharing
        self.stats = stats
        self.encoder_cache = LRUCache(config.encoder_cache_items, "encoder_cache_items")
        self.prefix_cache = LRUCache(config.prefix_cache_items, "prefix_cache_items")
        self.batch = InputBatch()
        # Rows join a running batch by merging KV caches, which needs plain full-attention
        # layers (sliding-window layers keep their own cache class): else batches run static.
        self.can_join = preallocated(make_kv_cache(self.decoder.config, 1))
        self.segment_runner = SegmentRunner(self.decoder) if self.can_join and SegmentRunner.supports(
            self.decoder) else None

    @property
    def rides_along(self) -> bool:
        """Whether the running rows' decode step can run inside a prefill pass."""
        return self.segment_runner is not None

    # ---------------------------------------------------------------- passes
    def forward(self, segments: list[Segment]) -> list[torch.Tensor]:
        """Every decoder pass: one shared pass with the segment runner, else one
        transformers forward per segment. Returns each segment's last-token logits."""
        return forward_segments(self.decoder, self.segment_runner, segments)

    def step_segment(self) -> Segment:
        """The next decode step of the running rows (nothing in the batch changes yet)."""
        batch = self.batch
        mask = torch.cat([batch.mask, batch.mask.new_ones(len(batch), 1)], dim=-1)
        return Segment(self.decoder.get_input_embeddings()(batch.tokens[:, None]), batch.positions[:, None],
                       mask if batch.padded else None, batch.cache)

    def step(self) -> torch.Tensor:
        """One decode step of every running row; returns the sampled tokens."""
        segment = self.step_segment()
        (logits,) = self.forward([segment])
        return self.advance(segment, logits)

    def advance(self, segment: Segment, logits: torch.Tensor) -> torch.Tensor:
        """The step of ``segment`` ran: advance mask and positions, sample each row's token."""
        batch = self.batch
        batch.mask = torch.cat([batch.mask, batch.mask.new_ones(len(batch), 1)], dim=-1) \
            if segment.mask is None else segment.mask
        batch.positions = batch.positions + 1
        self.stats["decode_steps"] += 1
        return batch.sampler(logits)  # type: ignore[misc]

    def kv_written(self) -> int:
        """Columns in the running batch's cache (tells whether a failed pass wrote to it)."""
        return self.batch.cache.layers[0].get_seq_length() if self.batch.rows else 0

    def start(self, items: list[PreparedRequest], make_rows: Callable[[float, float, float], list[RequestState]],
              rider: Segment | None = None) -> tuple[InputBatch, torch.Tensor, torch.Tensor | None]:
        """Encode and prefill ``items``: a new batch of their rows (``make_rows(t0, encode,
        prefill)`` builds the output states), their first tokens, and the logits of the
        ``rider`` step when it ran in the prefill pass."""
        t0 = time.perf_counter()
        self.stats["prefills"] += 1
        self.stats["requests"] += len(items)
        audio = self.encode(items)
        t1 = time.perf_counter()
        cache, logits, mask, positions, rider_logits = self._prefill(items, audio, rider)
        t2 = time.perf_counter()
        new = InputBatch()
        sampler = Sampler([item.request.sampling for item in items], self.device)
        new.start(make_rows(t0, t1 - t0, t2 - t1), cache, mask.bool(), positions, sampler)
        tokens = sampler(logits)
        new.tokens = tokens
        return new, tokens, rider_logits

    # ----------------------------------------------------------------- audio
    def encode(self, items: list[PreparedRequest]) -> dict[str, torch.Tensor]:
        """Embeddings of every distinct clip of ``items``: from the cache, else one encoder call."""
        audio: dict[str, torch.Tensor] = {}
        todo: dict[str, Clip] = {}
        for clip in (c for it in items for c in it.clips):
            if clip.key in audio or clip.key in todo:
                continue
            cached = self.encoder_cache.get(clip.key)
            if cached is not None:
                audio[clip.key] = cached
                self.stats["encoder_cache_hits"] += 1
            else:
                todo[clip.key] = clip
        # The encoder skips empty 10.08 s windows, but its mel front end runs over the padding
        # too: a 0.5 s clip beside a 30 s one would cost 30 s of front end.
        for clips in group_by_length(todo.values(), lambda c: len(c.wave), waste=0.5):  # type: ignore[arg-type]
            lengths = torch.tensor([len(c.wave) for c in clips])  # type: ignore[arg-type]
            values = torch.zeros(len(clips), int(lengths.max()))
            for i, clip in enumerate(clips):
                values[i, : lengths[i]] = torch.from_numpy(clip.wave)
            embeds = self.model.encode_audio(values.to(self.device), lengths.to(self.device))
            for clip, embed in zip(clips, embeds, strict=True):
                # A copy, so the cache holds this clip only, not the whole padded batch output.
                audio[clip.key] = embed.clone()
                self.encoder_cache.put(clip.key, audio[clip.key])
            self.stats["encoder_calls"] += 1
            self.stats["encoded_clips"] += len(clips)
        return audio

    def _embed(self, units: list[list[int]], clip_keys: list[list[str]],
               audio: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """Left-padded embeddings with audio in the ``<|AUDIO|>`` slots, and the 2-D mask."""
        ids, mask = pad_sequences(units, self.pad_token_id, side="left")
        ids, mask = ids.to(self.device), mask.to(self.device)
        embeds = self.decoder.get_input_embeddings()(ids)
        wanted = [audio[k] for keys in clip_keys for k in keys]
        if wanted:
            embeds = fill_audio_slots(embeds, ids, torch.cat(wanted), self.audio_token_id, mask)
        return embeds, mask

    # --------------------------------------------------------------- prefill
    def _prefill(self, items: list[PreparedRequest], audio: dict[str, torch.Tensor],
                 rider: Segment | None = None) -> tuple:
        """KV cache, next-token logits, 2-D mask and next positions for the batch, and the
        logits of the ``rider`` step run in the first prefill pass."""
        groups: dict[tuple, list[int]] = {}
        if self.share_prefix:
            for i, item in enumerate(items):
                if item.prefix_len:
                    groups.setdefault(item.prefix_key, []).append(i)
        shared = [members for members in groups.values() if len(members) > 1]

        units: list[list[int]] = []
        unit_clips: list[list[str]] = []
        row_unit = [0] * len(items)
        suffixes: list[list[int]] = [[] for _ in items]
        if not shared:
            units = [it.ids for it in items]
            unit_clips = [[c.key for c in it.clips] for it in items]
            row_unit = list(range(len(items)))
        else:
            grouped = {i for members in shared for i in members}
            for members in shared:
                seqs = [items[i].ids for i in members]
                cut = _common_prefix(seqs, limit=min(len(s) for s in seqs) - 1)
                self.stats["shared_prefix_rows"] += len(members)
                self.stats["shared_prefix_tokens_saved"] += cut * (len(members) - 1)
                for i in members:
                    row_unit[i] = len(units)
                    suffixes[i] = items[i].ids[cut:]
                units.append(seqs[0][:cut])
                unit_clips.append([c.key for c in items[members[0]].clips])
            for i, item in enumerate(items):
                if i not in grouped:
                    row_unit[i] = len(units)
                    units.append(item.ids[:-1])
                    unit_clips.append([c.key for c in item.clips])
                    suffixes[i] = item.ids[-1:]

        room = max(len(s) for s in suffixes) + max(it.max_new for it in items)
        cache, logits, mask, rider_logits = self._prefill_units(units, unit_clips, audio, room, rider)
        if not shared:
            return cache, logits, mask, mask.sum(-1), rider_logits

        index = torch.tensor(row_unit, device=self.device)
        cache.batch_select_indices(index)
        suffix_embeds, suffix_mask = self._embed(suffixes, [[] for _ in items], audio)
        mask = torch.cat([mask[index], suffix_mask], dim=-1)
        positions = (mask.cumsum(-1) - 1).clamp_min(0)[:, -suffix_mask.shape[1]:]
        (logits,) = self.forward([Segment(suffix_embeds, positions, mask, cache)])
        self.stats["prefill_tokens"] += suffix_mask.numel()
        return cache, logits, mask, positions[:, -1] + 1, rider_logits

    def _prefill_units(self, units: list[list[int]], unit_clips: list[list[str]], audio: dict[str, torch.Tensor],
                       room: int, rider: Segment | None = None) -> tuple[Any, torch.Tensor, torch.Tensor, Any]:
        """KV cache (with ``room`` free slots per row), next-token logits and 2-D mask of
        left-padded prompts, and the logits of the ``rider`` step (run in the first pass)."""
        if not self.can_join:  # caches that cannot be merged: one padded pass, no heads, no riders
            embeds, mask = self._embed(units, unit_clips, audio)
            cache = make_kv_cache(self.decoder.config, mask.shape[1] + room)
            (logits,) = self.forward([Segment(embeds, (mask.cumsum(-1) - 1).clamp_min(0), mask, cache)])
            self.stats["prefill_tokens"] += mask.numel()
            return cache, logits, mask, None
        riders = [rider] if rider is not None else []
        heads = [self._head_length(unit) for unit in units]
        bodies = [len(unit) - head for unit, head in zip(units, heads, strict=True)]
        groups = [sorted(rows) for rows in group_by_length(range(len(units)), lambda i: bodies[i], waste=0.25)]
        parts, masks, logits, rider_logits = [], [], None, None
        for rows in groups:
            index = torch.tensor(rows, device=self.device)
            embeds, body_mask = self._embed([units[r][heads[r]:] for r in rows], [unit_clips[r] for r in rows], audio)
            # A lone group keeps its cache: room for the suffixes and answers, no copy.
            cache, head_mask = self._head_cache(
                [units[r][: heads[r]] for r in rows], body_mask.shape[1] + (room if len(groups) == 1 else 0))
            mask = torch.cat([head_mask, body_mask], dim=-1)
            positions = (mask.cumsum(-1) - 1).clamp_min(0)[:, head_mask.shape[1]:]
            group_logits, *rest = self.forward([Segment(embeds, positions, mask, cache), *riders])
            if rest:
                rider_logits, riders = rest[0], []
            if logits is None:
                logits = group_logits.new_empty((len(units), group_logits.shape[-1]))
            logits[index] = group_logits
            parts.append((index, cache))
            masks.append((index, mask))
            self.stats["prefill_tokens"] += body_mask.numel()
        if len(groups) == 1:
            return parts[0][1], logits, masks[0][1], rider_logits
        width = max(m.shape[1] for _, m in masks)
        mask = torch.zeros((len(units), width), dtype=torch.long, device=self.device)
        for index, part in masks:
            mask[index, width - part.shape[1]:] = part
        return merge_right_aligned(parts, len(units), width, width + room), logits, mask, rider_logits

    def _head_length(self, ids: list[int]) -> int:
        """Tokens before the first audio token: the part many prompts share (0 without audio)."""
        try:
            return ids.index(self.audio_token_id)
        except ValueError:
            return 0

    def _head_cache(self, heads: list[list[int]], room: int) -> tuple[Any, torch.Tensor]:
        """A cache holding each row's head right-aligned (from the prefix cache, or computed
        and kept), with ``room`` more slots, and its mask."""
        width = max(len(h) for h in heads)
        mask = torch.zeros((len(heads), width), dtype=torch.long, device=self.device)
        if not width:
            return make_kv_cache(self.decoder.config, room), mask
        rows: dict[tuple[int, ...], list[int]] = {}
        for i, head in enumerate(heads):
            rows.setdefault(tuple(head), []).append(i)
        parts = []
        for head, members in rows.items():
            if not head:
                continue
            mask[members, width - len(head):] = 1
            cached = self.prefix_cache.get(head)
            if cached is None:
                cached = make_kv_cache(self.decoder.config, len(head))
                ids = torch.tensor([head], device=self.device)
                self.forward([Segment(
                    self.decoder.get_input_embeddings()(ids), torch.arange(len(head), device=self.device)[None],
                    None, cached)])
                self.prefix_cache.put(head, cached)
                self.stats["prefill_tokens"] += len(head)
            else:
                self.stats["prefix_cache_hits"] += len(members)
                self.stats["prefix_cache_tokens_saved"] += len(head) * len(members)
            parts.append((torch.tensor(members, device=self.device), cached))
        return merge_right_aligned(parts, len(heads), width, width + room), mask


def group_by_length(things: Iterable[T], length: Callable[[T], int], waste: float) -> Iterator[list[T]]:
    """Sort by length and cut into groups whose padding is at most ``waste`` of their content."""
    group: list[T] = []
    total = 0
    for thing in sorted(things, key=length):
        n = length(thing)
        if group and (len(group) + 1) * n > (1 + waste) * (total + n):
            yield group
            group, total = [], 0
        group.append(thing)
        total += n
    if group:
        yield group


def _common_prefix(seqs: list[list[int]], limit: int) -> int:
    first = seqs[0]
    n = 0
    while n < limit and all(s[n] == first[n] for s in seqs):
        n += 1
    return n
