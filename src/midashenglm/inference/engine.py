"""Batched inference: budgets instead of a fixed batch size, continuous batching, one
encoder pass per clip, shared prompt prefixes, and a lean KV-cached decode loop.

The engine is split the way vLLM's v1 engine is:

* input processing (:meth:`Engine.prepare`): a request's audio is decoded once
  (``processor.load_audio_parts``) and its prompt ids are built from the conversation and
  the clips' lengths (``processor.prompt_ids``), then checked against the context window;
* the :class:`~midashenglm.inference.scheduler.Scheduler` owns the waiting queue and the
  running set and the budgets, touches no tensors, and returns a plan each step;
* the :class:`~midashenglm.inference.model_runner.ModelRunner` owns the running batch's
  tensors (:class:`~midashenglm.inference.input_batch.InputBatch`: KV cache, masks), the
  encoder and prompt-head caches, and executes the plan (encode, prefill, decode step,
  sampling);
* output processing (:class:`~midashenglm.inference.output.RequestState`): tokens, stop
  strings, streamed text, results;
* this module: the public API (``generate``, ``iter_results``, ``submit``, ``abort``) and
  the loop ``schedule -> execute -> update`` (:meth:`Engine.step`).

Requests are sorted by prompt length and queued. Between decode steps, waiting requests
that fit the budgets are prefilled and their KV cache merged into the running one
(right-aligned, the narrower side left-padded with masked zeros), so the batch stays full
instead of draining to its longest answer. Every row has its own positions and mask, so a
row gives the same tokens whatever joins or leaves the batch around it.
"""

from __future__ import annotations

import os
import queue
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from itertools import islice
from typing import Any

import numpy as np
import torch

from midashenglm.inference.cache import audio_key
from midashenglm.inference.config import EngineConfig
from midashenglm.inference.model_runner import ModelRunner
from midashenglm.inference.output import RequestState, StepClock
from midashenglm.inference.params import SamplingParams
from midashenglm.inference.request import (
    Clip,
    FinishReason,
    PreparedRequest,
    Request,
    Result,
    TextCallback,
    aborted_result,
    error_result,
)
from midashenglm.inference.scheduler import Scheduler
from midashenglm.inference.text_budget import (
    PIECE_CHARS,
    conversation_texts,
    max_token_chars,
    min_text_tokens,
)

__all__ = ["Engine", "EngineConfig", "FinishReason", "PreparedRequest", "Request", "Result", "SamplingParams"]

# A submitted request while its audio loads: request, callback, its future, submit time, loading.
_Pending = tuple[Any, TextCallback | None, Future, float, Future]


class Engine:
    """Batched, cached generation for MiDashengLM.

    ``generate(requests)`` for batch jobs (order preserved; a request whose audio fails
    gets a Result with ``error`` set and the others go on), ``iter_results`` to consume
    results as requests finish, ``submit`` for servers (thread-safe, one worker thread,
    optional streaming of new text) and ``abort`` to stop a submitted request. All of them
    batch continuously: waiting requests join the running batch as its rows finish.
    Greedy results are deterministic and equal to running each request alone.

    ``config`` (:class:`EngineConfig`) holds the budgets and cache sizes; keyword
    ``overrides`` replace single fields (``Engine(model, processor, max_num_seqs=8)``).

    ``stats`` counts ``batches`` (batches started empty), ``prefills`` (groups of requests
    prefilled together), ``joined_running_batch`` (requests that joined a batch already
    decoding), ``requests``, ``encoder_calls``, ``encoded_clips``, ``encoder_cache_hits``,
    ``shared_prefix_rows``, ``shared_prefix_tokens_saved``, ``prefix_cache_hits`` (rows
    that started from a cached head), ``prefix_cache_tokens_saved``, ``prefill_tokens``
    (computed in prefill, padding included), ``decode_steps``, ``steps_in_prefill``
    (decode steps that ran in a prefill pass), ``preempted_batches`` (passes that failed
    as a whole, e.g. out of memory) and ``preemptions`` (their requests, sent back to the
    queue to run alone), and ``aborted``.
    """

    def __init__(self, model: Any, processor: Any, config: EngineConfig | None = None, **overrides: Any) -> None:
        unknown = sorted(set(overrides) - set(EngineConfig.field_names()))
        if unknown:
            raise TypeError(f"unknown engine option(s) {unknown}; EngineConfig has {list(EngineConfig.field_names())}")
        self.config = (config or EngineConfig()).replace(**overrides)
        self.model = model.eval()
        self.processor = processor
        self.tokenizer = processor.tokenizer
        self.device = next(model.parameters()).device
        self.eos_token_ids = _eos_ids(model.generation_config)
        self.context_window = getattr(model.config.text_config, "max_position_embeddings", None)
        self.sample_rate = processor.sample_rate
        self.stats: Counter[str] = Counter()
        self.model_runner = ModelRunner(model, self.config, pad_token_id=self.tokenizer.pad_token_id or 0,
                                        stats=self.stats)
        self.scheduler = Scheduler(self.config, can_join=self.model_runner.can_join)
        self._run_lock = threading.RLock()
        self._tokenizer_lock = threading.Lock()
        self._chars_per_token: int | None = None  # text_budget.max_token_chars, found once
        self._worker_lock = threading.Lock()
        self._abort_lock = threading.Lock()
        self._aborted: set[str] = set()
        self._submitted: Counter[str] = Counter()  # ids of submitted requests not yet resolved
        self._queue: queue.Queue = queue.Queue()
        self._worker: threading.Thread | None = None
        self._closed = False
        self._window = max(64, 4 * self.config.max_num_seqs)  # requests loaded ahead of the batch

    @classmethod
    def from_pretrained(
        cls,
        path_or_id: str | os.PathLike,
        *,
        device: str | torch.device | None = "auto",
        dtype: str | torch.dtype | None = "auto",
        config: EngineConfig | None = None,
        **overrides: Any,
    ) -> Engine:
        """Load a checkpoint (folder or Hub id) and build an engine; ``overrides`` replace
        fields of ``config`` (:class:`EngineConfig`)."""
        from midashenglm.checkpoint import load_model

        model, processor = load_model(path_or_id, device=device, dtype=dtype)
        return cls(model, processor, config, **overrides)

    @property
    def encoder_cache(self) -> Any:
        return self.model_runner.encoder_cache

    @property
    def prefix_cache(self) -> Any:
        return self.model_runner.prefix_cache

    # ---------------------------------------------------------- input processing
    def prepare(self, request: Request) -> PreparedRequest:
        """Decode the request's audio, build its prompt ids and check them against the
        context window, in the caller's thread (vLLM's input processing step).

        Raises ``ValueError``/``TypeError`` (``AudioError`` is a ``ValueError``) naming what
        is wrong, before anything is queued; a server answers those with 400 before its
        response starts. ``submit`` takes the result and does none of this again.
        """
        if not isinstance(request, Request):
            raise TypeError(f"expected a Request, got {type(request).__name__}")
        return self._tokenize(0, request, self._load_audio(request), time.perf_counter())

    def _load_audio(self, request: Request) -> list[tuple[np.ndarray, str]]:
        """Waveforms (decoded once) and their content keys (hashing runs in the loader threads too)."""
        waves = self.processor.load_audio_parts(request.conversation)
        return [(wave, audio_key(wave)) for wave in waves]

    def _tokenize(self, index: int, request: Request, loaded: list[tuple[np.ndarray, str]],
                  t_start: float) -> PreparedRequest:
        clips = [Clip(key, wave, self.processor.num_audio_tokens(len(wave)), len(wave) / self.sample_rate)
                 for wave, key in loaded]
        if self.context_window:
            self._check_text_budget(request, clips)
        with self._tokenizer_lock:
            ids = self.processor.prompt_ids(request.conversation, [len(wave) for wave, _ in loaded])
        audio_id = self.model_runner.audio_token_id
        last_audio = max((i for i, t in enumerate(ids) if t == audio_id), default=-1)
        prefix_len = last_audio + 1
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
                    f"the prompt has {len(ids)} tokens ({_audio_part(clips)}) but the "
                    f"decoder's context window is {self.context_window} tokens; shorten "
                    f"{_what_to_shorten(audio + 2 * len(clips), len(ids) - audio - 2 * len(clips), self.context_window)}"
                )
            max_new = min(max_new, room)
        return PreparedRequest(index, request, ids, clips, prefix_len, max_new, t_start)

    def _check_text_budget(self, request: Request, clips: list[Clip]) -> None:
        """Refuse text that cannot fit the context window before tokenizing all of it
        (:mod:`~midashenglm.inference.text_budget`): megabytes of text would otherwise hold
        the tokenizer for seconds."""
        if sum(len(text) for text in conversation_texts(request.conversation)) <= PIECE_CHARS:
            return  # cheap to tokenize: the exact check after tokenizing says more
        if self._chars_per_token is None:
            self._chars_per_token = max_token_chars(self.tokenizer)
        audio = sum(c.tokens for c in clips)
        text = min_text_tokens(self.tokenizer, request.conversation, self.context_window,
                               chars_per_token=self._chars_per_token, lock=self._tokenizer_lock)
        if audio + text >= self.context_window:
            raise ValueError(
                f"the prompt's text needs at least {text} tokens (its audio: "
                f"{_audio_part(clips)}) but the decoder's context window is "
                f"{self.context_window} tokens; shorten "
                f"{_what_to_shorten(audio, text, self.context_window)}")

    def _prepare(self, index: int, request: Any, t_start: float | None = None
                 ) -> PreparedRequest | Result:
        """Load and tokenize one request (in a loader thread); any failure becomes an
        error Result."""
        t_start = time.perf_counter() if t_start is None else t_start
        try:
            if not isinstance(request, Request):
                raise TypeError(f"expected a Request, got {type(request).__name__}")
            return self._tokenize(index, request, self._load_audio(request), t_start)
        except Exception as err:  # noqa: BLE001 - one bad request never stops the others
            return error_result(request, err)

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
        holds more audio in memory. Default: 4 x ``max_num_seqs``, at least 64.
        """
        window = window or self._window
        source = enumerate(requests)
        finished: list[tuple[int, Result]] = []
        pending = 0

        def sink(item: PreparedRequest, result: Result) -> None:
            finished.append((item.index, result))

        with ThreadPoolExecutor(self.config.loader_threads, thread_name_prefix="midashenglm-load") as pool:

            # Loading and tokenizing happen in the loader threads, never on this thread,
            # which runs the model.
            def load_window() -> list[tuple[int, Request, Future]]:
                return [(i, r, pool.submit(self._prepare, i, r)) for i, r in islice(source, window)]

            upcoming = load_window()
            while upcoming or pending or finished:
                if upcoming and self.scheduler.num_waiting < self.config.max_num_seqs:
                    current, upcoming = upcoming, load_window()
                    items: list[PreparedRequest] = []
                    for index, _, loading in current:
                        prepared = loading.result()
                        if isinstance(prepared, Result):
                            yield index, prepared
                        else:
                            prepared.sink = sink
                            prepared.t_start = time.perf_counter()  # queued now
                            items.append(prepared)
                    pending += len(items)
                    # Longest first: long prompts tend to have long answers (a transcript
                    # grows with the speech), and starting them early leaves the short ones
                    # to fill the rows that free up, instead of a tail of a few long rows.
                    with self._run_lock:
                        self.scheduler.add_requests(_by_length(items, longest_first=True))
                if not finished and pending:
                    if self.scheduler.has_unfinished_requests():
                        self.step()
                    elif not finished:
                        raise RuntimeError("engine: requests pending but none scheduled (a bug)")
                while finished:
                    pending -= 1
                    yield finished.pop(0)

    # ----------------------------------------------------------------- server API
    def submit(self, request: Request | PreparedRequest, on_text: TextCallback | None = None) -> Future:
        """Queue one request; returns a Future of its Result. Thread-safe.

        One background worker loads the audio of what arrives (in threads; a
        :class:`PreparedRequest` from :meth:`prepare` is not loaded again), lets it join the
        running batch as soon as rows finish and the budgets allow, and resolves each
        future when its request finishes. ``on_text`` receives the answer's new text as it
        is generated (called from the worker thread, never half a character, never text
        that a stop string later removes); the pieces add up to ``Result.text``.
        """
        if self._closed:
            raise RuntimeError("the engine is closed")
        future: Future = Future()
        request_id = request.request_id
        if request_id is not None:
            with self._abort_lock:
                self._submitted[request_id] += 1
            future.add_done_callback(lambda _: self._resolved(request_id))
        self._queue.put((request, on_text, future, time.perf_counter()))
        self._ensure_worker()
        return future

    def abort(self, request_id: str) -> None:
        """Stop the submitted request ``request_id`` (vLLM's ``abort``): a waiting request
        leaves the queue, a running row leaves the batch at the next step. Its future
        resolves with ``finish_reason="abort"`` and the tokens made so far. Thread-safe. An
        id that no submitted, unresolved request carries (finished already, never
        submitted, ``None``) is ignored: it never touches a later request."""
        with self._abort_lock:
            if self._submitted[request_id] > 0:
                self._aborted.add(request_id)

    def _resolved(self, request_id: str) -> None:
        with self._abort_lock:
            self._submitted[request_id] -= 1
            if self._submitted[request_id] <= 0:
                del self._submitted[request_id]
                self._aborted.discard(request_id)

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
                self._worker = threading.Thread(target=self._serve, name="midashenglm-engine", daemon=True)
                self._worker.start()

    def _serve(self) -> None:
        loading: list[_Pending] = []
        stop = False
        with ThreadPoolExecutor(self.config.loader_threads, thread_name_prefix="midashenglm-load") as pool:
            while True:
                busy = self.scheduler.has_unfinished_requests()
                # At most a window of requests loads ahead; the rest waits in the queue.
                room = self._window - len(loading) - self.scheduler.num_waiting
                if not stop and room > 0:
                    stop = self._receive(pool, loading, room, block=not busy and not loading)
                if loading:
                    self._ready(loading, block=not busy)
                if self.scheduler.has_unfinished_requests():
                    self.step()
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
            if isinstance(request, PreparedRequest):
                loaded: Future = Future()
                loaded.set_result(request)
            else:  # loaded and tokenized in a loader thread, never on the model's thread
                loaded = pool.submit(self._prepare, 0, request, t_start)
            loading.append((request, on_text, future, t_start, loaded))
            room -= 1
            if room <= 0:
                return False
            try:
                entry = self._queue.get_nowait()
            except queue.Empty:
                return False
        return True

    def _ready(self, loading: list[_Pending], block: bool) -> None:
        """Queue the requests whose audio has loaded (when ``block``, wait for one)."""
        if block:
            wait([entry[4] for entry in loading], return_when=FIRST_COMPLETED)
        done = [entry[4].done() for entry in loading]
        if not any(done):
            return
        items = []
        for (_, on_text, future, t_start, loaded), ready in zip(loading, done, strict=True):
            if not ready or not future.set_running_or_notify_cancel():
                continue  # still loading, or cancelled while it waited
            prepared: PreparedRequest | Result = loaded.result()
            if isinstance(prepared, PreparedRequest):
                prepared.t_start = t_start
            if isinstance(prepared, Result):
                future.set_result(prepared)
                continue
            prepared.on_text, prepared.future, prepared.sink = on_text, future, _resolve_future
            items.append(prepared)
        loading[:] = [entry for entry, ready in zip(loading, done, strict=True) if not ready]
        with self._run_lock:
            self.scheduler.add_requests(_by_length(items))  # shortest first: the lowest mean latency

    # ------------------------------------------------------------------ the loop
    def step(self) -> None:
        """One engine step: schedule -> execute -> update. Finished requests go to their
        sinks (a future, or the ``iter_results`` that queued them)."""
        with self._run_lock, torch.inference_mode():
            try:
                done = self._abort_requested() if self._aborted else []
                plan = self.scheduler.schedule(self.model_runner.batch.width)
                if plan.scheduled_new_reqs:
                    done += self._execute_prefill(plan.scheduled_new_reqs, step_running=plan.decode)
                elif plan.decode:
                    done += self._execute_step()
            except Exception as err:  # noqa: BLE001 - the loop must outlive any one batch
                rows = self.model_runner.batch.rows
                done = [(row.item, error_result(row.item.request, err)) for row in rows]
                self.scheduler.finish([row.item for row in rows])
                self.model_runner.batch.clear()
        for item, result in done:
            for clip in item.clips:
                clip.wave = None  # the audio is no longer needed; free it now
            sink = getattr(item, "sink", None)
            if sink is not None:
                sink(item, result)

    def _execute_prefill(self, group: list[PreparedRequest], step_running: bool
                         ) -> list[tuple[PreparedRequest, Result]]:
        """Prefill the scheduled requests and merge them into the running batch. The
        running rows take their decode step in the same pass (segment runner) or, with the
        newcomers, right after it."""
        runner, batch = self.model_runner, self.model_runner.batch
        if step_running:
            self.stats["joined_running_batch"] += len(group)
        else:
            self.stats["batches"] += 1
        rider = runner.step_segment() if step_running and runner.rides_along else None
        before = runner.kv_written()

        def make_rows(t0: float, encode: float, prefill: float) -> list[RequestState]:
            clock = StepClock(start=t0, encode=encode, prefill=prefill, decode_start=t0 + encode + prefill)
            return [RequestState(item, self.tokenizer, self.eos_token_ids, clock) for item in group]

        try:
            new, tokens, rider_logits = runner.start(group, make_rows, rider)
        except Exception as err:  # noqa: BLE001 - e.g. out of memory: preempt, run alone
            done: list[tuple[PreparedRequest, Result]] = []
            if rider is not None and runner.kv_written() != before:
                # The pass failed after writing to the running rows' cache: they start over too.
                group = [row.item for row in batch.rows] + group
                batch.clear()
            if len(group) == 1 and rider is None:  # it failed alone: it would fail again
                self.scheduler.finish(group)
                done.append((group[0], error_result(group[0].request, err)))
            else:
                self._preempt(group)
            return done + (self._execute_step() if batch.rows else [])
        done = self._collect(new, tokens)
        if rider is not None:
            self.stats["steps_in_prefill"] += 1
            done += self._collect(batch, runner.advance(rider, rider_logits))
        if new.rows:
            batch.join(new)
        if rider is None and batch.rows:  # no shared pass: the whole batch steps now
            done += self._execute_step()
        return done

    def _execute_step(self) -> list[tuple[PreparedRequest, Result]]:
        """One decode step of every running row; a failed step preempts them (to run alone)."""
        runner = self.model_runner
        try:
            tokens = runner.step()
        except Exception as err:  # noqa: BLE001 - e.g. out of memory: run its requests alone
            items = [row.item for row in runner.batch.rows]
            runner.batch.clear()
            if len(items) == 1:
                self.scheduler.finish(items)
                return [(items[0], error_result(items[0].request, err))]
            self._preempt(items)
            return []
        return self._collect(runner.batch, tokens)

    def _preempt(self, items: list[PreparedRequest]) -> None:
        self.scheduler.preempt(items)
        self.stats["preempted_batches"] += 1
        self.stats["preemptions"] += len(items)

    def _collect(self, batch: Any, tokens: torch.Tensor) -> list[tuple[PreparedRequest, Result]]:
        """Update: give each row its next token; finished rows leave the batch and the scheduler."""
        now = time.perf_counter()
        finished = [row.add(t, now) for row, t in zip(batch.rows, tokens.tolist(), strict=True)]
        batch.tokens = tokens
        if not any(finished):
            return []
        done = [(row.item, row.result(self.tokenizer)) for row, end in zip(batch.rows, finished, strict=True) if end]
        batch.keep([j for j, end in enumerate(finished) if not end])
        self.scheduler.finish([item for item, _ in done])
        return done

    def _abort_requested(self) -> list[tuple[PreparedRequest, Result]]:
        """Aborted requests leave the queue and the batch, with what they made so far."""
        with self._abort_lock:
            ids, self._aborted = self._aborted, set()
        waiting, running = self.scheduler.abort(ids)
        batch, now = self.model_runner.batch, time.perf_counter()
        done = [(item, aborted_result(item)) for item in waiting]
        gone = {id(item) for item in running}
        for row in batch.rows:
            if id(row.item) in gone:
                row.abort(now)
                done.append((row.item, row.result(self.tokenizer)))
        if running:
            batch.keep([j for j, row in enumerate(batch.rows) if id(row.item) not in gone])
        found = {item.request_id for item, _ in done}
        with self._abort_lock:  # ids of requests still loading stay for later steps
            self._aborted |= {i for i in ids - found if self._submitted[i] > 0}
        self.stats["aborted"] += len(done)
        return done


# ------------------------------------------------------------------------- helpers
def _audio_part(clips: list[Clip]) -> str:
    if not clips:
        return "all text, no audio"
    return (f"{sum(c.tokens for c in clips)} of them audio, "
            f"{sum(c.seconds for c in clips):.1f} s at 5 tokens/s")


def _what_to_shorten(audio: int, text: int, window: int) -> str:
    """Name the part to shorten: the one that alone overflows the window, else the larger."""
    if text >= window or not audio:
        return "the text"
    return "the audio" if audio >= window or audio >= text else "the text"


def _resolve_future(item: PreparedRequest, result: Result) -> None:
    item.future.set_result(result)  # type: ignore[union-attr]


def _by_length(items: list[PreparedRequest], longest_first: bool = False) -> list[PreparedRequest]:
    """Sorted by length, rows that can share a prefix next to each other."""
    return sorted(items, reverse=longest_first,
                  key=lambda it: (it.prefix_len, [c.key for c in it.clips], it.ids[: it.prefix_len],
                                  len(it.ids), -it.index if longest_first else it.index))


def _eos_ids(generation_config: Any) -> frozenset[int]:
    eos = getattr(generation_config, "eos_token_id", None)
    if eos is None:
        return frozenset()
    return frozenset([eos] if isinstance(eos, int) else eos)
