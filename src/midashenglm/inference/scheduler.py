"""The scheduler: which waiting requests join the running batch at each engine step.

It owns the ``waiting`` queue and the ``running`` set and enforces the budgets of
:class:`~midashenglm.inference.config.EngineConfig`; it touches no tensors. Each engine
step asks it for a :class:`SchedulerOutput` (the requests to prefill now, and whether the
running rows take a decode step), the model runner executes that plan, and the engine
reports back what finished (:meth:`Scheduler.finish`) or failed (:meth:`Scheduler.preempt`).
The split follows vLLM's v1 engine: schedule -> execute -> update.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field

from midashenglm.inference.config import EngineConfig
from midashenglm.inference.request import PreparedRequest


@dataclass
class SchedulerOutput:
    """The plan of one engine step.

    ``scheduled_new_reqs`` are prefilled in this step and join the running batch;
    ``decode`` says whether the rows running before this step take a decode step (with a
    segment runner it rides along in the newcomers' prefill pass).
    """

    scheduled_new_reqs: list[PreparedRequest] = field(default_factory=list)
    decode: bool = False


class Scheduler:
    """Waiting queue, running set and budgets (rows, distinct audio seconds, KV slots).

    The KV budget holds for the batch as it will be: rows x (widest row + longest answer
    still to come). ``can_join`` is False for decoders whose KV caches cannot be merged
    (sliding-window layers): a batch then runs to its end before the next one starts.
    """

    def __init__(self, config: EngineConfig, *, can_join: bool = True) -> None:
        self.config = config
        self.can_join = can_join
        self.waiting: deque[PreparedRequest] = deque()
        self.running: list[PreparedRequest] = []

    # ----------------------------------------------------------------- queues
    def add_requests(self, requests: Iterable[PreparedRequest]) -> None:
        """Queue requests in the given order (the engine sorts a window by length first)."""
        self.waiting.extend(requests)

    def has_unfinished_requests(self) -> bool:
        return bool(self.waiting or self.running)

    @property
    def num_waiting(self) -> int:
        return len(self.waiting)

    # -------------------------------------------------------------- schedule
    def schedule(self, kv_width: int) -> SchedulerOutput:
        """The plan of the next step; ``kv_width`` is the running batch's KV width in tokens."""
        stepping = bool(self.running)
        new = self._take(kv_width)
        self.running.extend(new)
        return SchedulerOutput(new, decode=stepping)

    def _take(self, kv_width: int) -> list[PreparedRequest]:
        running = self.running
        cfg = self.config
        if not self.waiting or any(r.solo for r in running) or len(running) >= cfg.max_num_seqs \
                or (running and not self.can_join):
            return []
        clips = {c.key: c.seconds for r in running for c in r.clips}
        seconds = sum(clips.values())
        width = kv_width if running else 0
        answer = max((r.remaining for r in running), default=0)
        group: list[PreparedRequest] = []
        while self.waiting:
            item = self.waiting[0]
            rows = len(running) + len(group) + 1
            new = {c.key: c.seconds for c in item.clips if c.key not in clips}
            fits = (
                not item.solo
                and rows <= cfg.max_num_seqs
                and seconds + sum(new.values()) <= cfg.max_batch_audio_seconds
                and rows * (max(width, len(item.ids)) + max(answer, item.max_new)) <= cfg.max_kv_cache_tokens
            )
            if not fits and (running or group):
                break
            # Alone it is always taken, even over budget: it could never fit better.
            group.append(self.waiting.popleft())
            if item.solo:
                break
            clips.update(new)
            seconds += sum(new.values())
            width, answer = max(width, len(item.ids)), max(answer, item.max_new)
        return group

    # ---------------------------------------------------------------- update
    def finish(self, requests: Iterable[PreparedRequest]) -> None:
        """These running requests are done (stopped, length, aborted or failed)."""
        gone = {id(r) for r in requests}
        self.running = [r for r in self.running if id(r) not in gone]

    def preempt(self, requests: list[PreparedRequest]) -> None:
        """Their pass failed as a whole (e.g. out of memory): back to the front of the
        queue, each to run alone next (vLLM preempts by recomputation the same way)."""
        self.finish(requests)
        for item in reversed(requests):
            item.solo = True
            item.num_output_tokens = 0
            self.waiting.appendleft(item)

    def abort(self, request_ids: set[str]) -> tuple[list[PreparedRequest], list[PreparedRequest]]:
        """Remove aborted requests: returns (were waiting, were running)."""
        waiting = [r for r in self.waiting if r.request_id in request_ids]
        if waiting:
            self.waiting = deque(r for r in self.waiting if r.request_id not in request_ids)
        running = [r for r in self.running if r.request_id in request_ids]
        self.finish(running)
        return waiting, running
