"""Timers, peak memory, and what the run ran on (the machine's limits: ``peak.py``).

Method: every measurement runs its warm-up first, then ``repeats`` timed runs, each
on fresh random inputs made outside the timed region; we keep the median, min and
max. On a GPU every timed region ends with ``torch.cuda.synchronize()``.

The two sides of a comparison are timed *interleaved* (:func:`time_interleaved`:
A, B, A, B, ...): a burst of load from another process then hits both sides of a
pair instead of one side's whole series, and the ratio of the minimums (the best run
of each side) stays meaningful even when the medians do not.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import platform
import statistics
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

import torch


# ------------------------------------------------------------------------------ threads
def pin_threads(threads: int | None) -> dict[str, Any]:
    """Fix the intra-op thread count (and, on Linux, the CPU affinity to that many cores).

    Returns what the run uses, for the report. ``None`` keeps torch's default.
    """
    info: dict[str, Any] = {}
    if threads:
        available = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else []
        if available and threads <= len(available):
            os.sched_setaffinity(0, available[:threads])
            info["cpu_affinity"] = available[:threads]
        torch.set_num_threads(threads)
        for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
            os.environ[var] = str(threads)  # for any subprocess (the pool is already sized)
    info["torch_threads"] = torch.get_num_threads()
    info["interop_threads"] = torch.get_num_interop_threads()
    return info


def machine_info(device: torch.device) -> dict[str, Any]:
    info: dict[str, Any] = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "platform": platform.platform(),
        "cpu": _cpu_name(),
        "cpu_cores_visible": os.cpu_count(),
    }
    with contextlib.suppress(OSError, AttributeError):
        info["load_average_at_start"] = [round(x, 2) for x in os.getloadavg()]
    try:
        import transformers

        info["transformers"] = transformers.__version__
    except ImportError:  # pragma: no cover - a dependency of the package
        pass
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        info["gpu"] = props.name
        info["gpu_memory_gib"] = round(props.total_memory / 2**30, 1)
    return info


def _cpu_name() -> str:
    with contextlib.suppress(OSError):
        for line in open("/proc/cpuinfo", encoding="utf-8"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


def load_average() -> list[float] | None:
    with contextlib.suppress(OSError, AttributeError):
        return [round(x, 2) for x in os.getloadavg()]
    return None


# ------------------------------------------------------------------------------ timing
def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@dataclass
class Stats:
    """Median, min and max of the timed repeats, in seconds."""

    median: float
    min: float
    max: float
    times: list[float] = field(default_factory=list)

    @classmethod
    def of(cls, times: list[float]) -> Stats:
        return cls(statistics.median(times), min(times), max(times), list(times))

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class Side:
    """One side of an interleaved measurement: ``run(make(i))`` is timed, ``make`` is not.

    ``memory``: also record the peak memory each run adds (:class:`PeakMemory`).
    """

    name: str
    run: Callable[[Any], Any]
    make: Callable[[int], Any]
    memory: bool = False
    warmup: int | None = None  # None: the measurement's warm-up count


@dataclass
class SideResult:
    """What one side gave: its timings, its last output, its peak memory, or its failure."""

    status: Literal["ok", "OOM", "skipped"] = "ok"
    times: list[float] = field(default_factory=list)
    output: Any = None
    peak_memory_bytes: int | None = None

    @property
    def stats(self) -> Stats | None:
        return Stats.of(self.times) if self.times else None


def time_interleaved(
    sides: list[Side],
    *,
    device: torch.device,
    warmup: int = 1,
    repeats: int = 3,
    stop: Callable[[], bool] | None = None,
    on_round: Callable[[int], None] | None = None,
) -> dict[str, SideResult]:
    """Time every side ``repeats`` times, in rounds: A, B, ..., then A, B, ... again.

    The warm-up runs are interleaved the same way. A side that runs out of memory is
    marked ``OOM`` and leaves the rounds; the others go on. ``stop()``, asked before
    every round after the first, ends the rounds early (a time budget); ``on_round(r)``
    is called after each round.
    """
    results = {side.name: SideResult() for side in sides}

    def call(side: Side, index: int, timed: bool) -> None:
        result = results[side.name]
        if result.status != "ok":
            return
        inputs = side.make(index)
        memory = PeakMemory(device) if side.memory else contextlib.nullcontext()
        try:
            synchronize(device)
            with memory:
                start = time.perf_counter()
                output = side.run(inputs)
                synchronize(device)
                elapsed = time.perf_counter() - start
        except Exception as err:
            if not is_out_of_memory(err):
                raise
            result.status = "OOM"
            free_memory(device)
            return
        if timed:
            result.times.append(elapsed)
            result.output = output
            if isinstance(memory, PeakMemory) and memory.peak_bytes is not None:
                result.peak_memory_bytes = max(result.peak_memory_bytes or 0, memory.peak_bytes)

    rounds = max((warmup if s.warmup is None else s.warmup) for s in sides) if sides else 0
    for i in range(rounds):
        for side in sides:
            if i < (warmup if side.warmup is None else side.warmup):
                call(side, 10_000 + i, timed=False)
    for r in range(repeats):
        if r and stop is not None and stop():
            break
        for side in sides:
            call(side, r, timed=True)
        if on_round is not None:
            on_round(r)
    return results


def free_memory(device: torch.device) -> None:
    import gc

    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


# ------------------------------------------------------------------------------ memory
class PeakMemory:
    """Peak memory a block adds above what was in use when it started, in bytes.

    GPU: the CUDA caching allocator's peak of allocated bytes. CPU: the process's peak
    resident set size (Linux ``VmHWM``, reset through ``/proc/self/clear_refs``) after
    returning freed heap memory to the system (``malloc_trim``), so memory the
    allocator keeps from earlier runs does not hide new allocations. The CPU number is
    thus approximate (pages, not tensors) and includes the allocator's own slack.
    """

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.peak_bytes: int | None = None
        self.start_bytes: int | None = None

    @staticmethod
    def cpu_supported() -> bool:
        return os.path.exists("/proc/self/clear_refs") and os.path.exists("/proc/self/status")

    def __enter__(self) -> PeakMemory:
        if self.device.type == "cuda":
            synchronize(self.device)
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats(self.device)
            self.start_bytes = torch.cuda.memory_allocated(self.device)
        elif self.cpu_supported():
            _malloc_trim()
            with contextlib.suppress(OSError), open("/proc/self/clear_refs", "w") as f:
                f.write("5")
            self.start_bytes = _proc_status_kib("VmRSS") * 1024
        return self

    def __exit__(self, *exc: Any) -> None:
        if self.start_bytes is None:
            return
        if self.device.type == "cuda":
            synchronize(self.device)
            peak = torch.cuda.max_memory_allocated(self.device)
        else:
            peak = _proc_status_kib("VmHWM") * 1024
        self.peak_bytes = max(peak - self.start_bytes, 0)


def available_memory_bytes() -> int | None:
    """``MemAvailable`` of /proc/meminfo: what the system can give without swapping."""
    with contextlib.suppress(OSError, ValueError):
        with open("/proc/meminfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    return None


def _proc_status_kib(key: str) -> int:
    with open("/proc/self/status", encoding="utf-8") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    return 0


def _malloc_trim() -> None:
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)


def is_out_of_memory(err: BaseException) -> bool:
    return isinstance(err, torch.OutOfMemoryError) or "out of memory" in str(err).lower()
