"""``midashenglm train CONFIG --dry-run``: what a recipe trains and the memory it needs.

The model is built on the meta device from the checkpoint's config.json alone (no
weights are read: instant for 7B), prepared as the stage prepares it (LoRA, trainable
components), and :func:`~midashenglm.training.memory.estimate_memory` gives the memory
per GPU for 1 and N GPUs at the configured micro-batch.
"""

from __future__ import annotations

from typing import Any

from midashenglm.training.config import RecipeConfig

# Logits are formed only where answers are predicted; captions and transcripts are about
# half of a typical sample's decoder tokens (50 audio tokens for 10 s, ~20 of prompt).
ANSWER_FRACTION = 0.5


def dry_run_estimate(config: RecipeConfig, *, gpus: int) -> Any:
    from midashenglm.modeling.model import MiDashengLM
    from midashenglm.modeling.weights import load_config, resolve_checkpoint, resolve_dtype
    from midashenglm.training.memory import estimate_memory
    from midashenglm.training.optim import optimizer_name
    from midashenglm.training.recipe import stage_module

    folder = resolve_checkpoint(config.model.checkpoint)
    model_config = load_config(folder)
    model = MiDashengLM.build_empty(model_config, resolve_dtype(config.model.dtype), "meta")
    stage_module(config).prepare_model(model, config, load_weights=False)
    strategy = config.training.distributed
    return estimate_memory(
        model, world_sizes=(1, gpus), strategy=strategy,
        optimizer=optimizer_name(config.optimizer, sharded=strategy == "fsdp" and gpus > 1),
        autocast=config.training.precision in ("bf16", "auto"),  # auto: bf16 on the GPUs estimated for
        micro_batch_tokens=config.data.max_tokens, micro_batch_audio_seconds=config.data.max_audio_seconds,
        sequence_length=config.data.max_length,
        gradient_checkpointing=config.training.gradient_checkpointing, gradient_as_bucket_view=True,
        answer_fraction=ANSWER_FRACTION)


def print_dry_run(config: RecipeConfig, *, gpus: int, gpu_memory_gib: float) -> None:
    from rich.console import Console

    from midashenglm.training.memory import format_table, parameter_table

    estimate = dry_run_estimate(config, gpus=gpus)
    console = Console()
    console.print(f"recipe {config.recipe}: {config.source}")
    console.print(parameter_table(estimate))
    console.print(format_table(estimate, gpu_gib=gpu_memory_gib))
    for line in estimate.assumptions:
        console.print(f"  - {line}", highlight=False, markup=False)
    console.print(f"  - logits only at answer positions, taken as {ANSWER_FRACTION:.0%} of the tokens",
                  highlight=False, markup=False)
