"""Timers, peak memory, the machine's matmul peak, and what the run ran on.

Method: every measurement runs its warm-up first, then ``repeats`` timed runs, each
on fresh random inputs made outside the timed region; we keep the median, min and
max. On a GPU every timed region ends with ``torch.cuda.synchronize()``.
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
from typing import Any

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


def time_call(
    fn: Callable[[Any], Any],
    make_inputs: Callable[[int], Any],
    *,
    device: torch.device,
    warmup: int = 1,
    repeats: int = 3,
) -> Stats:
    """Time ``fn(make_inputs(i))``: ``warmup`` untimed runs, then ``repeats`` timed runs
    on inputs made fresh (``i`` is the run's index, a seed) outside the timed region."""
    for i in range(warmup):
        fn(make_inputs(10_000 + i))
    synchronize(device)
    times = []
    for i in range(repeats):
        inputs = make_inputs(i)
        synchronize(device)
        start = time.perf_counter()
        fn(inputs)
        synchronize(device)
        times.append(time.perf_counter() - start)
    return Stats.of(times)


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


def resident_bytes(device: torch.device) -> int:
    """Memory in use now: CUDA allocated bytes, or the process's resident set."""
    if device.type == "cuda":
        return torch.cuda.memory_allocated(device)
    return _proc_status_kib("VmRSS") * 1024 if PeakMemory.cpu_supported() else 0


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


# ------------------------------------------------------------------------ matmul peak
@dataclass
class MatmulPeak:
    flops_per_s: float
    size: int
    dtype: str
    seconds_per_matmul: float


def matmul_peak(
    device: torch.device, dtype: torch.dtype, sizes: tuple[int, ...] | None = None, budget_s: float = 2.0
) -> MatmulPeak:
    """The best FLOP/s of square matmuls on this machine, in this process, now.

    It is the practical ceiling the model's FLOP/s are compared with (achieved / peak):
    the same threads, the same library, the same dtype as the benchmark itself.
    """
    if sizes is None:
        sizes = (1024, 2048) if device.type == "cpu" else (4096, 8192)
    best: MatmulPeak | None = None
    for size in sizes:
        a = torch.randn(size, size, device=device, dtype=dtype)
        b = torch.randn(size, size, device=device, dtype=dtype)
        torch.matmul(a, b)  # warm-up: library initialisation, kernel choice
        synchronize(device)
        runs, elapsed = 0, 0.0
        best_time = float("inf")
        while elapsed < budget_s / len(sizes) or runs < 3:
            start = time.perf_counter()
            torch.matmul(a, b)
            synchronize(device)
            dt = time.perf_counter() - start
            best_time = min(best_time, dt)
            elapsed += dt
            runs += 1
        flops = 2 * size**3 / best_time
        if best is None or flops > best.flops_per_s:
            best = MatmulPeak(flops, size, str(dtype).removeprefix("torch."), best_time)
        del a, b
    assert best is not None
    return best

