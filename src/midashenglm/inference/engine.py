"""Batched inference: budgets instead of a fixed batch size, continuous batching, one
encoder pass per clip, shared prompt prefixes, and a lean KV-cached decode loop.

How requests run
    1. Requests are loaded (audio through ``processor.load``, prompts through the
       processor's template and audio-token expansion), sorted by prompt length and
       queued.
    2. Continuous batching: the batch is filled from the queue up to ``max_batch_size``
       rows, ``max_batch_audio_seconds`` of distinct audio and ``max_batch_tokens``
       KV-cache slots (rows x (widest prompt + longest answer still to come)). Rows that
       finish leave the batch and the cache (``batch_select_indices``); between decode
       steps, queued requests that fit the budgets are prefilled and their KV cache is
       merged into the running one (right-aligned, the narrower side left-padded with
       masked zeros), so the batch stays full instead of draining to its longest answer.
    3. Every distinct clip (by content hash) goes through the encoder once; the
       embeddings stay in a bounded LRU cache, so five questions about one clip, in one
       batch or in five, encode it once.
    4. Requests prefilled together whose prompts agree up to the end of their audio (same
       system prompt, user header, same clip) share that prefix: its KV is computed once
       and copied to each row, which then runs only its own suffix. The 2-D attention
       mask keeps padding between prefix and suffix, and positions come from the mask's
       cumulative sum, so each row computes what it would alone.
    5. Prompt heads (the text before the first audio part: system prompt, user header)
       are computed once and their KV cache kept in a bounded LRU cache by token ids; a
       prompt starting with a cached head prefills only the rest. Every request of a
       service shares its system prompt and header, a quarter or more of a short clip's
       prompt. Positions come from the mask, so a cached head is exactly what the prompt
       would have computed (the engine assumes the weights do not change under it).
    6. Every decoder pass goes through ``Engine._forward``: for Llama-family decoders a
       :class:`~midashenglm.inference.runner.SegmentRunner` pass, in which the running
       rows' decode step rides along with the newcomers' prefill (one read of the weights
       for both), else the decoder's transformers forward. The KV cache is preallocated
       (written in place); every row has its own positions and mask, so a row gives the
       same tokens whatever joins or leaves the batch around it.
"""

from __future__ import annotations

import os
import queue
import threading
import time
from collections import Counter, deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import asdict, dataclass, field
from itertools import islice
from typing import Any, Literal, TypeVar

import numpy as np
import torch

from midashenglm.inference.cache import LRUCache, audio_key
from midashenglm.inference.kv_cache import (
    make_kv_cache,
    merge_right_aligned,
    preallocated,
    trim_left,
)
from midashenglm.inference.params import SamplingParams
from midashenglm.inference.runner import Segment, SegmentRunner, forward_segments
from midashenglm.inference.sampling import Sampler, TextStream, find_stop

FinishReason = Literal["stop", "length", "error"]
T = TypeVar("T")
TextCallback = Callable[[str], None]
# A submitted request while its audio loads: request, callback, its future, submit time, loading.
_Pending = tuple["Request", TextCallback | None, Future, float, Future]


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
class _Clip:
    key: str
    wave: np.ndarray | None
    tokens: int
    seconds: float


@dataclass
class _Item:
    """A request that loaded: token ids with audio slots expanded, and its clips."""

    index: int
    request: Request
    ids: list[int]
    clips: list[_Clip]
    prefix_len: int  # tokens up to the end of the last audio part (0 without audio)
    max_new: int
    t_start: float
    on_text: TextCallback | None = None
    future: Future | None = None
    solo: bool = False  # run alone: its batch failed as a whole (e.g. out of memory)

    @property
    def prefix_key(self) -> tuple:
        return (tuple(self.ids[: self.prefix_len]), tuple(c.key for c in self.clips))

    @property
    def audio_tokens(self) -> int:
        return sum(c.tokens for c in self.clips)

    @property
    def audio_seconds(self) -> float:
        return sum(c.seconds for c in self.clips)


class _Row:
    """Decode state of one batch row."""

    def __init__(self, item: _Item, tokenizer: Any, eos: frozenset[int], clock: _Clock) -> None:
        self.item = item
        self.clock = clock
        sampling = item.request.sampling
        self.stops = sampling.stop
        self.eos = frozenset() if sampling.ignore_eos else eos
        self.tokens: list[int] = []
        self.stream = TextStream(tokenizer) if (self.stops or item.on_text) else None
        self.hold = max((len(s) for s in self.stops), default=1) - 1
        self.emitted = 0
        self.finish: FinishReason | None = None
        self.t_first: float | None = None
        self.t_done = 0.0

    @property
    def remaining(self) -> int:
        return self.item.max_new - len(self.tokens)

    def add(self, token: int, now: float) -> bool:
        """Take the next token; True when the row is finished."""
        if self.t_first is None:
            self.t_first = now
        self.tokens.append(token)
        if token in self.eos:
            self.finish = "stop"
        elif self.stream is not None:
            checked = len(self.stream.text)
            self.stream.push(token)
            if self.stops and find_stop(self.stream.text, self.stops, max(0, checked - self.hold)) >= 0:
                self.finish = "stop"
            elif self.item.on_text is not None:
                # Hold back what could still become a stop string, so streamed text is final text.
                self._emit(self.stream.text[: max(self.emitted, len(self.stream.text) - self.hold)])
        if self.finish is None and len(self.tokens) >= self.item.max_new:
            self.finish = "length"
        if self.finish is not None:
            self.t_done = now
        return self.finish is not None

    def _emit(self, text: str) -> None:
        if len(text) > self.emitted and self.item.on_text is not None:
            delta, self.emitted = text[self.emitted:], len(text)
            try:
                self.item.on_text(delta)
            except Exception:  # noqa: BLE001 - a broken client callback must not stop the batch
                self.item.on_text = None

    def result(self, tokenizer: Any) -> Result:
        text = tokenizer.decode(self.tokens, skip_special_tokens=True)
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


@dataclass(frozen=True)
class _Clock:
    """When a group of requests started, and what its audio encoding and prefill took."""

    start: float
    encode: float
    prefill: float
    decode_start: float


class _Batch:
    """The rows decoding together: their KV cache, attention mask (bool, rows x width), the
    next position and input token of each row, and the sampler. Rows leave when they
    finish; newcomers join between steps."""

    def __init__(self) -> None:
        self.clear()

    def clear(self) -> None:
        self.rows: list[_Row] = []
        self.cache: Any = None
        self.mask: torch.Tensor = torch.empty(0, 0, dtype=torch.bool)
        self.positions: torch.Tensor = torch.empty(0, dtype=torch.long)
        self.tokens: torch.Tensor = torch.empty(0, dtype=torch.long)
        self.sampler: Sampler | None = None
        self.padded = False
        self.solo = False  # a request retried alone after its batch failed: nothing joins it

    def __len__(self) -> int:
        return len(self.rows)

    def start(self, rows: list[_Row], cache: Any, mask: torch.Tensor, positions: torch.Tensor,
              sampler: Sampler) -> None:
        self.rows, self.cache, self.mask, self.positions, self.sampler = rows, cache, mask, positions, sampler
        self.padded = bool((~mask).any())
        self.solo = any(row.item.solo for row in rows)

    def adopt(self, other: _Batch) -> None:
        self.__dict__.update(other.__dict__)

    def keep(self, keep: list[int]) -> None:
        """Only these rows stay: select them in the cache and in every per-row tensor."""
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


class Engine:
    """Batched, cached generation for MiDashengLM.

    ``generate(requests)`` for batch jobs (order preserved; a request whose audio fails
    gets a Result with ``error`` set and the others go on), ``iter_results`` to consume
    results as requests finish, ``submit`` for servers (thread-safe, one worker thread,
    optional streaming of new text). All three batch continuously: waiting requests join
    the running batch as its rows finish. Greedy results are deterministic and equal to
    running each request alone.

    ``stats`` counts ``batches`` (batches started empty), ``prefills`` (groups of requests
    prefilled together), ``joined_running_batch`` (requests that joined a batch already
    decoding), ``requests``, ``encoder_calls``, ``encoded_clips``, ``encoder_cache_hits``,
    ``shared_prefix_rows``, ``shared_prefix_tokens_saved``, ``prefix_cache_hits`` (rows
    that started from a cached head), ``prefix_cache_tokens_saved``, ``prefill_tokens``
    (computed in prefill, padding included), ``decode_steps``, ``steps_in_prefill``
    (decode steps that ran in a prefill pass) and ``batch_fallbacks``.
    """

    def __init__(
        self,
        model: Any,
        processor: Any,
        *,
        max_batch_audio_seconds: float = 600.0,
        max_batch_tokens: int = 32768,
        max_batch_size: int = 32,
        encoder_cache_items: int = 256,
        prefix_cache_items: int = 64,
        share_prefix: bool = True,
        loader_threads: int = 4,
    ) -> None:
        if max_batch_size < 1 or max_batch_tokens < 1 or not max_batch_audio_seconds > 0:
            raise ValueError(
                "batch budgets must be positive: max_batch_size="
                f"{max_batch_size}, max_batch_tokens={max_batch_tokens}, "
                f"max_batch_audio_seconds={max_batch_audio_seconds}"
            )
        self.model = model.eval()
        self.processor = processor
        self.decoder = model.decoder
        self.tokenizer = processor.tokenizer
        self.device = next(model.parameters()).device
        self.max_batch_audio_seconds = float(max_batch_audio_seconds)
        self.max_batch_tokens = int(max_batch_tokens)
        self.max_batch_size = int(max_batch_size)
        self.share_prefix = share_prefix
        self.loader_threads = max(1, loader_threads)
        self.encoder_cache = LRUCache(encoder_cache_items, "encoder_cache_items")
        self.prefix_cache = LRUCache(prefix_cache_items, "prefix_cache_items")
        self.audio_token_id = model.config.audio_token_id
        self.pad_token_id = self.tokenizer.pad_token_id or 0
        self.eos_token_ids = _eos_ids(model.generation_config)
        self.context_window = getattr(model.config.text_config, "max_position_embeddings", None)
        self.sample_rate = processor.sample_rate
        self.stats: Counter[str] = Counter()
        self._run_lock = threading.RLock()
        self._tokenizer_lock = threading.Lock()
        self._worker_lock = threading.Lock()
        self._queue: queue.Queue = queue.Queue()
        self._worker: threading.Thread | None = None
        self._closed = False
        config = self.decoder.config
        # Rows join a running batch by merging KV caches, which needs plain full-attention
        # layers (sliding-window layers keep their own cache class): else batches run static.
        self._joinable = preallocated(make_kv_cache(config, 1))
        self._window = max(64, 4 * self.max_batch_size)  # requests loaded ahead of the batch
        # Llama-family decoders run the running rows' step in the newcomers' prefill pass.
        self._runner = SegmentRunner(self.decoder) if self._joinable and SegmentRunner.supports(
            self.decoder) else None

    @classmethod
    def from_pretrained(
        cls,
        path_or_id: str | os.PathLike,
        *,
        device: str | torch.device | None = "auto",
        dtype: str | torch.dtype | None = "auto",
        **options: Any,
    ) -> Engine:
        """Load a checkpoint (folder or Hub id) and build an engine; ``options`` are the budgets."""
        from midashenglm.checkpoint import load_model

        model, processor = load_model(path_or_id, device=device, dtype=dtype)
        return cls(model, processor, **options)

    # ------------------------------------------------------------------ batch API
    def generate(
        self, requests: Sequence[Request], progress: Callable[[Result], None] | None = None
    ) -> list[Result]:
        """Run every request; results in the order of ``requests``.

        ``progress`` is called with each result as its request finishes.
        """
        results: list[Result | None] = [None] * len(requests)
        for index, result in self.iter_results(requests):
            results[index] = result
            if progress is not None:
                progress(result)
        return results  # type: ignore[return-value]

    def iter_results(
        self, requests: Iterable[Request], *, window: int | None = None
    ) -> Iterator[tuple[int, Result]]:
        """Yield ``(index, result)`` as requests finish; reads ``requests`` lazily.

        ``window`` requests at a time are loaded (in threads, the next window while the
        current one computes), sorted by length (longest first) and queued; whenever rows
        of the running batch finish, queued requests join it. A larger window pads less and
        holds more audio in memory. Default: 4 x ``max_batch_size``, at least 64.
        """
        window = window or self._window
        source = enumerate(requests)
        batch, waiting = _Batch(), deque[_Item]()
        with ThreadPoolExecutor(self.loader_threads, thread_name_prefix="midashenglm-load") as pool:

            def load_window() -> list[tuple[int, Request, Future]]:
                return [(i, r, pool.submit(self._load_audio, r)) for i, r in islice(source, window)]

            upcoming = load_window()
            while upcoming or waiting or batch.rows:
                if upcoming and len(waiting) < self.max_batch_size:
                    current, upcoming = upcoming, load_window()
                    items: list[_Item] = []
                    for index, request, loading in current:
                        prepared = self._prepare(index, request, loading)
                        if isinstance(prepared, Result):
                            yield index, prepared
                        else:
                            items.append(prepared)
                    # Longest first: long prompts tend to have long answers (a transcript
                    # grows with the speech), and starting them early leaves the short ones
                    # to fill the rows that free up, instead of a tail of a few long rows.
                    waiting.extend(_by_length(items, longest_first=True))
                for item, result in self._tick(batch, waiting):
                    yield item.index, result

    # ----------------------------------------------------------------- server API
    def submit(self, request: Request, on_text: TextCallback | None = None) -> Future:
        """Queue one request; returns a Future of its Result. Thread-safe.

        One background worker loads the audio of what arrives (in threads), lets it join the
        running batch as soon as rows finish and the budgets allow, and resolves each
        future when its request finishes. ``on_text`` receives the answer's
        new text as it is generated (called from the worker thread, never half a
        character, never text that a stop string later removes); the pieces add up to
        ``Result.text``.
        """
        if self._closed:
            raise RuntimeError("the engine is closed")
        future: Future = Future()
        self._queue.put((request, on_text, future, time.perf_counter()))
        self._ensure_worker()
        return future

    def close(self) -> None:
        """Answer what was already submitted, then stop the worker; later submits raise."""
        if self._closed:
            return
        self._closed = True
        self._queue.put(None)
        if self._worker is not None:
            self._worker.join()
        while True:
            try:
                pending = self._queue.get_nowait()
            except queue.Empty:
                break
            if pending is not None:
                pending[2].cancel()

    def __enter__(self) -> Engine:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _ensure_worker(self) -> None:
        with self._worker_lock:
            if self._worker is None or not self._worker.is_alive():
                self._worker = threading.Thread(
                    target=self._serve, name="midashenglm-engine", daemon=True
                )
                self._worker.start()

    def _serve(self) -> None:
        batch, waiting = _Batch(), deque[_Item]()
        loading: list[_Pending] = []
        stop = False
        with ThreadPoolExecutor(self.loader_threads, thread_name_prefix="midashenglm-load") as pool:
            while True:
                idle = not batch.rows and not waiting
                # At most a window of requests loads ahead; the rest waits in the queue.
                room = self._window - len(loading) - len(waiting)
                if not stop and room > 0:
                    stop = self._receive(pool, loading, room, block=idle and not loading)
                if loading:
                    self._ready(loading, waiting, block=idle)
                if batch.rows or waiting:
                    try:
                        done = self._tick(batch, waiting)
                    except Exception as err:  # noqa: BLE001 - the worker must outlive any one batch
                        done = [(row.item, _error_result(row.item.request, err)) for row in batch.rows]
                        batch.clear()
                    for item, result in done:
                        item.future.set_result(result)  # type: ignore[union-attr]
                elif stop and not loading:
                    return

    def _receive(self, pool: ThreadPoolExecutor, loading: list[_Pending], room: int, block: bool) -> bool:
        """Start loading the audio of up to ``room`` submitted requests; True once ``close``
        was called."""
        try:
            entry = self._queue.get() if block else self._queue.get_nowait()
        except queue.Empty:
            return False
        while entry is not None:
            request, on_text, future, t_start = entry
            loading.append((request, on_text, future, t_start, pool.submit(self._load_audio, request)))
            room -= 1
            if room <= 0:
                return False
            try:
                entry = self._queue.get_nowait()
            except queue.Empty:
                return False
        return True

    def _ready(self, loading: list[_Pending], waiting: deque[_Item], block: bool) -> None:
        """Queue the requests whose audio has loaded (when ``block``, wait for one)."""
        if block:
            wait([entry[4] for entry in loading], return_when=FIRST_COMPLETED)
        done = [entry[4].done() for entry in loading]
        if not any(done):
            return
        items = []
        for (request, on_text, future, t_start, loaded), ready in zip(loading, done, strict=True):
            if not ready or not future.set_running_or_notify_cancel():
                continue  # still loading, or cancelled while it waited
            prepared = self._prepare(0, request, loaded, t_start=t_start, on_text=on_text)
            if isinstance(prepared, Result):
                future.set_result(prepared)
            else:
                prepared.future = future
                items.append(prepared)
        loading[:] = [entry for entry, ready in zip(loading, done, strict=True) if not ready]
        waiting.extend(_by_length(items))  # shortest first: the lowest mean latency

    # -------------------------------------------------------------- preparation
    def _load_audio(self, request: Request) -> list[tuple[np.ndarray, str]]:
        """Waveforms and their content keys (hashing runs in the loader threads too)."""
        waves = [self.processor.load(part) for part in _audio_parts(request.conversation)]
        return [(wave, audio_key(wave)) for wave in waves]

    def _prepare(
        self,
        index: int,
        request: Request,
        loading: Future | None,
        *,
        t_start: float | None = None,
        on_text: TextCallback | None = None,
    ) -> _Item | Result:
        """Load and tokenize one request; any failure becomes an error Result."""
        t_start = time.perf_counter() if t_start is None else t_start
        try:
            if not isinstance(request, Request):
                raise TypeError(f"expected a Request, got {type(request).__name__}")
            loaded = loading.result() if loading is not None else self._load_audio(request)
            return self._tokenize(index, request, loaded, t_start, on_text)
        except Exception as err:  # noqa: BLE001 - one bad request never stops the others
            return _error_result(request, err)

    def _tokenize(
        self,
        index: int,
        request: Request,
        loaded: list[tuple[np.ndarray, str]],
        t_start: float,
        on_text: TextCallback | None,
    ) -> _Item:
        waves = [wave for wave, _ in loaded]
        with self._tokenizer_lock:
            text = self.processor.apply_chat_template(request.conversation)
            ids = self.processor(text=text, audio=waves or None)["input_ids"][0].tolist()
        clips = [
            _Clip(key, wave, self.processor.num_audio_tokens(len(wave)), len(wave) / self.sample_rate)
            for wave, key in loaded
        ]
        audio_positions = [i for i, t in enumerate(ids) if t == self.audio_token_id]
        prefix_len = audio_positions[-1] + 1 if audio_positions else 0
        if prefix_len and prefix_len < len(ids) and ids[prefix_len] == self.processor.audio_eos_id:
            prefix_len += 1
        if len(ids) < 2 or prefix_len >= len(ids):
            raise ValueError("the prompt must end with text after the audio (use the chat template)")
        max_new = request.sampling.max_new_tokens
        if self.context_window:
            room = self.context_window - len(ids)
            if room < 1:
                audio = sum(c.tokens for c in clips)
                raise ValueError(
                    f"the prompt has {len(ids)} tokens ({audio} of them audio, "
                    f"{sum(c.seconds for c in clips):.1f} s at 5 tokens/s) but the decoder's "
                    f"context window is {self.context_window} tokens; shorten the audio"
                )
            max_new = min(max_new, room)
        return _Item(index, request, ids, clips, prefix_len, max_new, t_start, on_text)

    # ---------------------------------------------------------------- execution
    def _tick(self, batch: _Batch, waiting: deque[_Item]) -> list[tuple[_Item, Result]]:
        """Let waiting requests join the batch as far as the budgets allow, then one decode
        step; returns the requests that finished."""
        with self._run_lock, torch.inference_mode():
            done, stepped = self._admit(batch, waiting) if waiting else ([], False)
            if batch.rows and not stepped:
                done += self._step(batch, waiting)
        for item, _ in done:
            for clip in item.clips:
                clip.wave = None  # the audio is no longer needed; free it now
        return done

    def _take(self, batch: _Batch, waiting: deque[_Item]) -> list[_Item]:
        """The waiting requests, in order, that fit beside the running rows.

        The budgets hold for the batch as it will be: rows, distinct audio, and KV-cache
        slots (rows x (widest prompt + longest answer still to come)).
        """
        running = batch.rows
        if batch.solo or len(running) >= self.max_batch_size or (running and not self._joinable):
            return []
        clips = {c.key: c.seconds for row in running for c in row.item.clips}
        seconds = sum(clips.values())
        width = batch.mask.shape[1] if running else 0
        answer = max((row.remaining for row in running), default=0)
        group: list[_Item] = []
        while waiting:
            item = waiting[0]
            rows = len(running) + len(group) + 1
            new = {c.key: c.seconds for c in item.clips if c.key not in clips}
            fits = (
                not item.solo
                and rows <= self.max_batch_size
                and seconds + sum(new.values()) <= self.max_batch_audio_seconds
                and rows * (max(width, len(item.ids)) + max(answer, item.max_new)) <= self.max_batch_tokens
            )
            if not fits and (running or group):
                break
            group.append(waiting.popleft())
            if item.solo:
                break
            clips.update(new)
            seconds += sum(new.values())
            width, answer = max(width, len(item.ids)), max(answer, item.max_new)
        return group

    def _admit(self, batch: _Batch, waiting: deque[_Item]) -> tuple[list[tuple[_Item, Result]], bool]:
        """Prefill the waiting requests that fit and merge them into the running batch.

        With a :class:`SegmentRunner`, the running rows' decode step rides along in the
        prefill pass; returns the finished requests and whether that step was taken.
        """
        group = self._take(batch, waiting)
        if not group:
            return [], False
        if batch.rows:
            self.stats["joined_running_batch"] += len(group)
        else:
            self.stats["batches"] += 1
        rider = self._step_segment(batch) if batch.rows and self._runner is not None else None
        before = batch.cache.layers[0].get_seq_length() if rider is not None else 0
        try:
            new, done, rider_logits = self._start(group, rider)
        except Exception as err:  # noqa: BLE001 - e.g. out of memory: run its requests alone
            if rider is not None and batch.cache.layers[0].get_seq_length() != before:
                # The pass failed after writing to the running rows' cache: they start over alone.
                group = [row.item for row in batch.rows] + group
                batch.clear()
            if len(group) == 1 and rider is None:  # it failed alone: it would fail again
                return [(group[0], _error_result(group[0].request, err))], False
            self.stats["batch_fallbacks"] += 1
            for item in reversed(group):
                item.solo = True
                waiting.appendleft(item)
            return [], False
        if rider is not None:
            self.stats["steps_in_prefill"] += 1
            done += self._step_done(batch, rider, rider_logits)
        if new.rows:
            self._join(batch, new)
        return done, rider is not None

    def _start(self, items: list[_Item], rider: Segment | None = None
               ) -> tuple[_Batch, list[tuple[_Item, Result]], torch.Tensor | None]:
        """Encode and prefill a group of requests and pick their first tokens (and run the
        ``rider`` step in the prefill pass: its logits are returned)."""
        t0 = time.perf_counter()
        self.stats["prefills"] += 1
        self.stats["requests"] += len(items)
        audio = self._encode(items)
        t1 = time.perf_counter()
        cache, logits, mask, positions, rider_logits = self._prefill(items, audio, rider)
        t2 = time.perf_counter()
        clock = _Clock(start=t0, encode=t1 - t0, prefill=t2 - t1, decode_start=t2)
        rows = [_Row(item, self.tokenizer, self.eos_token_ids, clock) for item in items]
        new = _Batch()
        sampler = Sampler([item.request.sampling for item in items], self.device)
        new.start(rows, cache, mask.bool(), positions, sampler)
        return new, self._collect(new, sampler(logits)), rider_logits

    def _join(self, batch: _Batch, new: _Batch) -> None:
        """Merge ``new`` into ``batch``: both caches end at the same column, the narrower one
        left-padded with masked zeros, as left-padded prompts are."""
        if not batch.rows:
            batch.adopt(new)
            return
        rows = len(batch) + len(new)
        width = max(batch.mask.shape[1], new.mask.shape[1])
        capacity = width + max(row.remaining for row in (*batch.rows, *new.rows))
        device = batch.mask.device
        parts = [(torch.arange(len(batch), device=device), batch.cache),
                 (torch.arange(len(batch), rows, device=device), new.cache)]
        batch.cache = merge_right_aligned(parts, rows, width, capacity)
        batch.mask = torch.cat([_pad_left(batch.mask, width), _pad_left(new.mask, width)])
        batch.positions = torch.cat([batch.positions, new.positions])
        batch.tokens = torch.cat([batch.tokens, new.tokens])
        batch.sampler.extend(new.sampler)  # type: ignore[union-attr, arg-type]
        batch.rows += new.rows
        batch.padded = bool((~batch.mask).any())

    def _forward(self, segments: list[Segment]) -> list[torch.Tensor]:
        """Every decoder pass of the engine: one shared pass with the runner, else one
        transformers forward per segment."""
        return forward_segments(self.decoder, self._runner, segments)

    def _step_segment(self, batch: _Batch) -> Segment:
        """The next decode step of the running rows (nothing in ``batch`` changes yet)."""
        mask = torch.cat([batch.mask, batch.mask.new_ones(len(batch), 1)], dim=-1)
        return Segment(self.decoder.get_input_embeddings()(batch.tokens[:, None]), batch.positions[:, None],
                       mask if batch.padded else None, batch.cache)

    def _step(self, batch: _Batch, waiting: deque[_Item]) -> list[tuple[_Item, Result]]:
        """One decode step of every row; returns the requests that finished."""
        segment = self._step_segment(batch)
        try:
            (logits,) = self._forward([segment])
        except Exception as err:  # noqa: BLE001 - e.g. out of memory: run its requests alone
            rows = batch.rows
            batch.clear()
            if len(rows) == 1:
                return [(rows[0].item, _error_result(rows[0].item.request, err))]
            self.stats["batch_fallbacks"] += 1
            for row in reversed(rows):
                row.item.solo = True
                waiting.appendleft(row.item)
            return []
        return self._step_done(batch, segment, logits)

    def _step_done(self, batch: _Batch, segment: Segment, logits: torch.Tensor) -> list[tuple[_Item, Result]]:
        """The step of ``segment`` ran: advance the rows and give each its token."""
        batch.mask = torch.cat([batch.mask, batch.mask.new_ones(len(batch), 1)], dim=-1) \
            if segment.mask is None else segment.mask
        batch.positions = batch.positions + 1
        self.stats["decode_steps"] += 1
        return self._collect(batch, batch.sampler(logits))  # type: ignore[misc]

    def _collect(self, batch: _Batch, tokens: torch.Tensor) -> list[tuple[_Item, Result]]:
        """Give each row its next token; finished rows leave the batch."""
        now = time.perf_counter()
        finished = [row.add(t, now) for row, t in zip(batch.rows, tokens.tolist(), strict=True)]
        batch.tokens = tokens
        if not any(finished):
            return []
        done = [(row.item, row.result(self.tokenizer))
                for row, end in zip(batch.rows, finished, strict=True) if end]
        keep = [j for j, end in enumerate(finished) if not end]
        if keep:
            batch.keep(keep)
        else:
            batch.clear()
        return done

    def _encode(self, items: list[_Item]) -> dict[str, torch.Tensor]:
        """Embeddings of every distinct clip of the batch: from the cache, else one encoder call."""
        audio: dict[str, torch.Tensor] = {}
        todo: dict[str, _Clip] = {}
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
        for clips in _group_by_length(todo.values(), lambda c: len(c.wave), waste=0.5):  # type: ignore[arg-type]
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
        ids, mask = self._left_pad(units)
        embeds = self.decoder.get_input_embeddings()(ids)
        slots = (ids == self.audio_token_id) & mask.bool()
        wanted = [audio[k] for keys in clip_keys for k in keys]
        if wanted:
            values = torch.cat(wanted).to(embeds.dtype)
            embeds = embeds.masked_scatter(slots.unsqueeze(-1), values)
        return embeds, mask

    def _left_pad(self, rows: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
        width = max(len(r) for r in rows)
        ids = torch.full((len(rows), width), self.pad_token_id, dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for i, row in enumerate(rows):
            if row:
                ids[i, width - len(row):] = torch.tensor(row)
                mask[i, width - len(row):] = 1
        return ids.to(self.device), mask.to(self.device)

    def _prefill(self, items: list[_Item], audio: dict[str, torch.Tensor], rider: Segment | None = None) -> tuple:
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
        (logits,) = self._forward([Segment(suffix_embeds, positions, mask, cache)])
        self.stats["prefill_tokens"] += suffix_mask.numel()
        return cache, logits, mask, positions[:, -1] + 1, rider_logits

    def _prefill_units(self, units: list[list[int]], unit_clips: list[list[str]], audio: dict[str, torch.Tensor],
                       room: int, rider: Segment | None = None) -> tuple[Any, torch.Tensor, torch.Tensor, Any]:
        """KV cache (with ``room`` free slots per row), next-token logits and 2-D mask of
        left-padded prompts, and the logits of the ``rider`` step (run in the first pass).

        Each prompt's head comes from the prefix cache; the rest runs in groups of similar
        length, then the groups' caches are joined. One padded batch would compute every
        short prompt at the longest one's width; the groups pad little, and the joined cache
        (rows right-aligned, the gaps masked zeros) is what one padded prefill would have
        left, minus the wasted work.
        """
        if not self._joinable:  # caches that cannot be merged: one padded pass, no heads, no riders
            embeds, mask = self._embed(units, unit_clips, audio)
            cache = make_kv_cache(self.decoder.config, mask.shape[1] + room)
            (logits,) = self._forward([Segment(embeds, (mask.cumsum(-1) - 1).clamp_min(0), mask, cache)])
            self.stats["prefill_tokens"] += mask.numel()
            return cache, logits, mask, None
        riders = [rider] if rider is not None else []
        heads = [self._head_length(unit) for unit in units]
        bodies = [len(unit) - head for unit, head in zip(units, heads, strict=True)]
        groups = [sorted(rows) for rows in _group_by_length(range(len(units)), lambda i: bodies[i], waste=0.25)]
        parts, masks, logits, rider_logits = [], [], None, None
        for rows in groups:
            index = torch.tensor(rows, device=self.device)
            embeds, body_mask = self._embed([units[r][heads[r]:] for r in rows], [unit_clips[r] for r in rows], audio)
            # A lone group keeps its cache: room for the suffixes and answers, no copy.
            cache, head_mask = self._head_cache(
                [units[r][: heads[r]] for r in rows], body_mask.shape[1] + (room if len(groups) == 1 else 0))
            mask = torch.cat([head_mask, body_mask], dim=-1)
            positions = (mask.cumsum(-1) - 1).clamp_min(0)[:, head_mask.shape[1]:]
            group_logits, *rest = self._forward([Segment(embeds, positions, mask, cache), *riders])
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
                self._forward([Segment(
                    self.decoder.get_input_embeddings()(ids), torch.arange(len(head), device=self.device)[None],
                    None, cached)])
                self.prefix_cache.put(head, cached)
                self.stats["prefill_tokens"] += len(head)
            else:
                self.stats["prefix_cache_hits"] += len(members)
                self.stats["prefix_cache_tokens_saved"] += len(head) * len(members)
            parts.append((torch.tensor(members, device=self.device), cached))
        return merge_right_aligned(parts, len(heads), width, width + room), mask


# ------------------------------------------------------------------------- helpers
def _audio_parts(conversation: Any) -> list[dict[str, Any]]:
    if not isinstance(conversation, list):
        raise ValueError("a conversation is a list of {'role', 'content'} messages")
    return [
        part
        for message in conversation
        if isinstance(message, dict) and isinstance(message.get("content"), list)
        for part in message["content"]
        if isinstance(part, dict) and part.get("type") in ("audio", "input_audio")
    ]


def _group_by_length(things: Iterable[T], length: Callable[[T], int], waste: float) -> Iterator[list[T]]:
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


def _by_length(items: list[_Item], longest_first: bool = False) -> list[_Item]:
    """Sorted by length, rows that can share a prefix next to each other."""
    return sorted(items, reverse=longest_first,
                  key=lambda it: (it.prefix_len, [c.key for c in it.clips], it.ids[: it.prefix_len],
                                  len(it.ids), -it.index if longest_first else it.index))


def _pad_left(mask: torch.Tensor, width: int) -> torch.Tensor:
    missing = width - mask.shape[1]
    return torch.cat([mask.new_zeros(mask.shape[0], missing), mask], dim=1) if missing else mask


def _common_prefix(seqs: list[list[int]], limit: int) -> int:
    first = seqs[0]
    n = 0
    while n < limit and all(s[n] == first[n] for s in seqs):
        n += 1
    return n


def _eos_ids(generation_config: Any) -> frozenset[int]:
    eos = getattr(generation_config, "eos_token_id", None)
    if eos is None:
        return frozenset()
    return frozenset([eos] if isinstance(eos, int) else eos)


def _error_result(request: Any, err: BaseException) -> Result:
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
