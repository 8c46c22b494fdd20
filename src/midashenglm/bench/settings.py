"""What ``midashenglm bench`` measures and how often: :class:`Settings` per scale."""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass, replace

import torch

MODELS = ("midashenglm", "baseline", "baseline_pad30")


@dataclass
class Settings:
    """What to measure and how often. ``for_scale`` gives the defaults of each scale."""

    ttft_seconds: tuple[float, ...] = (1, 2, 5, 10, 20, 30)
    warmup: int = 1
    repeats: int = 3
    throughput_repeats: int = 2  # also for the mixed workloads: each repeat is long
    clip_seconds: float = 30.0
    new_tokens: int = 100
    batch_sizes: tuple[int, ...] = (1, 2, 4, 8, 16)
    efficiency_batches: tuple[int, ...] = (1, 4)
    mixed_requests: int = 16
    mixed_batch: int = 8
    one_at_a_time_requests: int = 4
    realistic_requests: int = 32  # the task mix: per-request answer lengths
    realistic_one_at_a_time: int = 16
    text_tokens: int = 30
    memory_budget_gib: float | None = None
    seed: int = 0
    engine: bool = True
    time_budget_s: float | None = None  # measurements not started by then are skipped
    limits_budget_s: float = 2.0  # seconds per measurement of the matmul peak (bandwidth: half)
    bandwidth_bytes: int | None = None  # tensor streamed for the bandwidth (default: peak.py)
    matmul_sizes: tuple[int, ...] | None = None  # square matmuls of the peak (default: peak.py)

    @classmethod
    def for_scale(cls, scale: str, device: torch.device, quick: bool = False) -> Settings:
        settings = cls()
        if scale == "full" or device.type == "cuda":
            settings = replace(
                settings,
                batch_sizes=(1, 2, 4, 8, 16, 32, 64, 128, 256, 512),
                throughput_repeats=2,
                mixed_requests=128,
                mixed_batch=32,
                one_at_a_time_requests=8,
                realistic_requests=128,
                realistic_one_at_a_time=16,
                efficiency_batches=(1, 8, 32),
            )
        if quick:
            settings = replace(
                settings,
                ttft_seconds=(1, 10, 30),
                repeats=2,
                throughput_repeats=1,
                new_tokens=min(settings.new_tokens, 10),
                batch_sizes=(1, 4),
                efficiency_batches=(1, 4),
                mixed_requests=8,
                mixed_batch=4,
                one_at_a_time_requests=4,
                realistic_requests=8,
                realistic_one_at_a_time=4,
                limits_budget_s=0.4,
                bandwidth_bytes=128 * 2**20 if device.type == "cpu" else None,
                matmul_sizes=(1024,) if device.type == "cpu" else None,
            )
        return settings


def engine_available() -> bool:
    """True when the inference engine (``midashenglm.inference.engine``) is installed."""
    try:
        return importlib.util.find_spec("midashenglm.inference.engine") is not None
    except ModuleNotFoundError:
        return False
