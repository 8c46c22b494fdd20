"""Optimiser and learning-rate schedule of every stage (SYSTEM.md section 7).

AdamW 8-bit through bitsandbytes (its 8-bit states run on CPU too); when bitsandbytes
is missing, torch's AdamW with a notice. Schedule: linear warm-up from 0 over
``warmup_steps``, then cosine decay to ``min_lr_ratio`` of the peak at ``max_steps``.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable

import torch

from midashenglm.training.config import OptimizerConfig, ScheduleConfig


def quiet_bitsandbytes() -> None:
    """Silence bitsandbytes' import-time warning about a 4-bit CPU kernel we never use.

    peft imports bitsandbytes too, so this runs before either is imported.
    """
    logging.getLogger("bitsandbytes.backends.cpu.ops").setLevel(logging.ERROR)


def optimizer_name(config: OptimizerConfig, *, sharded: bool = False) -> str:
    """The optimiser that will run: bitsandbytes' 8-bit kernels do not take FSDP2's DTensor
    parameters, so a sharded model gets torch AdamW (whose states FSDP shards over the GPUs)."""
    return "adamw" if sharded else config.name


def build_optimizer(params: Iterable[torch.nn.Parameter], config: OptimizerConfig,
                    *, sharded: bool = False, notify=print) -> torch.optim.Optimizer:
    """AdamW over ``params`` (the trainable ones); weight decay on matrices only.

    Biases, norms and LoRA-free vectors (ndim < 2) are not decayed, as in most LM recipes.
    ``sharded``: the parameters are FSDP2 DTensors (see :func:`optimizer_name`).
    """
    if config.name == "adamw8bit" and sharded:
        notify("notice: 8-bit AdamW (bitsandbytes) cannot update FSDP-sharded parameters; using "
               "torch AdamW, whose 32-bit states FSDP shards over the GPUs")
    params = list(params)
    groups = [
        {"params": [p for p in params if p.ndim >= 2], "weight_decay": config.weight_decay},
        {"params": [p for p in params if p.ndim < 2], "weight_decay": 0.0},
    ]
    groups = [g for g in groups if g["params"]]
    kwargs = {"lr": config.lr, "betas": tuple(config.betas), "eps": config.eps}
    if optimizer_name(config, sharded=sharded) == "adamw8bit":
        quiet_bitsandbytes()
        try:
            import bitsandbytes as bnb
        except ImportError:
            notify("notice: bitsandbytes is not installed; using torch AdamW (32-bit states, "
                   "4x the optimiser memory). pip install bitsandbytes for 8-bit AdamW.")
        else:
            return bnb.optim.AdamW8bit(groups, **kwargs)
    return torch.optim.AdamW(groups, **kwargs)


def lr_factor(step: int, *, warmup_steps: int, max_steps: int, min_lr_ratio: float) -> float:
    """Multiplier of the peak lr at optimiser step ``step`` (0-based: the step about to run)."""
    if step < warmup_steps:  # warmup_steps 0: no warm-up
        return (step + 1) / warmup_steps
    span = max(1, max_steps - warmup_steps)
    progress = min(1.0, (step - warmup_steps) / span)
    return min_lr_ratio + (1 - min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


def build_scheduler(optimizer: torch.optim.Optimizer, config: ScheduleConfig,
                    max_steps: int) -> torch.optim.lr_scheduler.LambdaLR:
    warmup = config.warmup_steps if config.warmup_ratio is None else round(config.warmup_ratio * max_steps)
    warmup = min(max(warmup, 0), max_steps)
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer,
        lambda step: lr_factor(step, warmup_steps=warmup, max_steps=max_steps,
                               min_lr_ratio=config.min_lr_ratio),
    )
