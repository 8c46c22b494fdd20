"""The machine's two limits, measured in the run itself: matmul peak and memory bandwidth.

Both run in the same process, dtype and thread count as the benchmark, at its start and
again at its end; the report keeps the better of the two (a limit is a best case) and
flags the run when they differ by more than :data:`DRIFT` (the load on the machine
changed while it ran).
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from typing import Any

import torch

from midashenglm.bench.measure import synchronize

DRIFT = 0.2  # start and end measurements further apart than this: the load changed


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


@dataclass
class Bandwidth:
    bytes_per_s: float  # the better of the two below
    read_bytes_per_s: float  # a sum over the tensor: reads it once
    copy_bytes_per_s: float  # a copy: reads it and writes as much
    size_bytes: int


def default_bandwidth_bytes(device: torch.device) -> int:
    """Large enough to stream from memory: 256 MiB on a CPU (8x a 32 MiB L3), 2 GiB on a GPU."""
    return 2 * 2**30 if device.type == "cuda" else 256 * 2**20


def memory_bandwidth(device: torch.device, dtype: torch.dtype, size_bytes: int | None = None,
                     budget_s: float = 1.0) -> Bandwidth:
    """Best bytes/s of streaming a tensor far larger than the caches: a sum (reads) and a
    copy (reads and writes), in the benchmark's dtype, threads and process."""
    size_bytes = size_bytes or default_bandwidth_bytes(device)
    itemsize = torch.tensor([], dtype=dtype).element_size()
    n = max(1, size_bytes // itemsize)
    x = torch.ones(n, device=device, dtype=dtype)
    y = torch.empty_like(x)  # touched by the first copy (the warm-up)
    best = {"read": float("inf"), "copy": float("inf")}
    ops = {"read": lambda: x.sum(), "copy": lambda: y.copy_(x)}
    for name, op in ops.items():
        op()
        synchronize(device)
        runs, elapsed = 0, 0.0
        while elapsed < budget_s / 2 or runs < 3:
            start = time.perf_counter()
            op()
            synchronize(device)
            dt = time.perf_counter() - start
            best[name] = min(best[name], dt)
            elapsed += dt
            runs += 1
    nbytes = n * itemsize
    read, copy = nbytes / best["read"], 2 * nbytes / best["copy"]
    return Bandwidth(max(read, copy), read, copy, nbytes)


def measure_limits(device: torch.device, dtype: torch.dtype, *, budget_s: float = 2.0,
                   bandwidth_bytes: int | None = None, matmul_sizes: tuple[int, ...] | None = None) -> dict[str, Any]:
    """One measurement of both limits."""
    peak = matmul_peak(device, dtype, sizes=matmul_sizes, budget_s=budget_s)
    bandwidth = memory_bandwidth(device, dtype, bandwidth_bytes, budget_s=budget_s / 2)
    return {"matmul": asdict(peak), "bandwidth": asdict(bandwidth), "time": time.time()}


def combine(start: dict[str, Any], end: dict[str, Any] | None = None) -> dict[str, Any]:
    """The run's limits: the better of the start and end measurements, both kept, and how far
    apart they were (``drift``: 1 - worse / better, per limit)."""
    runs = [start] + ([end] if end else [])
    best_mm = max(runs, key=lambda r: r["matmul"]["flops_per_s"])["matmul"]
    best_bw = max(runs, key=lambda r: r["bandwidth"]["bytes_per_s"])["bandwidth"]
    out: dict[str, Any] = {
        # The top-level numbers are the limits every comparison uses.
        "flops_per_s": best_mm["flops_per_s"],
        "bytes_per_s": best_bw["bytes_per_s"],
        "size": best_mm["size"],
        "dtype": best_mm["dtype"],
        "bandwidth_size_bytes": best_bw["size_bytes"],
        "measurements": runs,
    }
    if end:
        out["drift"] = {
            "matmul": 1 - min(r["matmul"]["flops_per_s"] for r in runs) / best_mm["flops_per_s"],
            "bandwidth": 1 - min(r["bandwidth"]["bytes_per_s"] for r in runs) / best_bw["bytes_per_s"],
        }
    return out
