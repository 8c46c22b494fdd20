"""Command-line commands: ``train`` (a recipe YAML), ``finetune`` (one command on a CSV), ``plot``.

Multi-GPU and multi-node runs use torchrun, e.g.
``torchrun --nproc-per-node 8 -m midashenglm train configs/align.yaml``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from midashenglm.errors import UserError, stderr_console


def register(app: typer.Typer) -> None:
    from midashenglm.training import probe_commands

    app.command("train")(train)
    app.command("finetune")(finetune)
    app.command("plot")(plot)
    probe_commands.register(app)


def train(
    config: Annotated[Path, typer.Argument(help="A recipe YAML (configs/align.yaml, pretrain.yaml, sft.yaml, default/mae.yaml).")],
    overrides: Annotated[list[str] | None, typer.Argument(
        help="Settings to change, as key=value (YAML values): optimizer.lr=3e-5 training.max_steps=100.",
        show_default=False)] = None,
    resume: Annotated[bool, typer.Option(
        "--resume", help="Continue from the newest checkpoint in output_dir (start at step 0 if there is none).")] = False,
    dry_run: Annotated[bool, typer.Option(
        "--dry-run", help="Print the parameters (total and trainable per component) and the estimated memory "
        "per GPU for 1 and --gpus GPUs, then exit without training.")] = False,
    gpus: Annotated[int, typer.Option(help="--dry-run: the N of the N-GPU column (DDP or FSDP, as training.distributed).")] = 8,
    gpu_memory: Annotated[float, typer.Option(help="--dry-run: GiB per GPU to judge whether it fits.")] = 80.0,
    progress: Annotated[bool, typer.Option(help="Show a progress bar.")] = True,
) -> None:
    """Run a training recipe: setup model, data, optimiser; train; export to OUTPUT_DIR/model.

    Checkpoints (model or adapters, optimiser, scheduler, sampler, RNG) go to
    OUTPUT_DIR/checkpoints every checkpoint.every_steps steps and on SIGTERM/SIGINT;
    metrics to OUTPUT_DIR/metrics.jsonl (draw them with `midashenglm plot OUTPUT_DIR`).
    """
    from midashenglm.training.config import load_config

    cfg = load_config(config, overrides or [], need_data=not dry_run)
    if dry_run:
        if cfg.recipe == "mae":
            raise UserError("--dry-run estimates the chat stages (align, pretrain, sft); recipe mae trains "
                            "the encoder alone and prints its parameters when it starts")
        if gpus < 1 or gpu_memory <= 0:
            raise UserError("--gpus must be >= 1 and --gpu-memory > 0")
        from midashenglm.training.dry_run import print_dry_run

        print_dry_run(cfg, gpus=gpus, gpu_memory_gib=gpu_memory)
        return
    if cfg.recipe == "mae":
        from midashenglm.training.recipes.mae import MAERecipe

        MAERecipe(cfg, resume=resume, progress=progress).run()
        return
    from midashenglm.training.recipe import Recipe

    Recipe(cfg, resume=resume, progress=progress).run()


def finetune(
    model: Annotated[str, typer.Option(help="The checkpoint to fine-tune: a folder or Hub id (mispeech/midashenglm-7b).")],
    data: Annotated[Path, typer.Option(help="A CSV or JSONL with audio, prompt, answer columns (and optionally system).")],
    out: Annotated[Path, typer.Option(help="Folder for the merged model (servable as it is); the run's "
                                       "checkpoints and logs go to OUT/training.")],
    validation: Annotated[Path | None, typer.Option(help="A manifest of held-out rows for the validation loss.")] = None,
    epochs: Annotated[float, typer.Option(help="Passes over the data.")] = 3.0,
    lr: Annotated[float, typer.Option(help="Peak learning rate (LoRA).")] = 1e-4,
    lora_r: Annotated[int, typer.Option(help="LoRA rank.")] = 8,
    lora_alpha: Annotated[int, typer.Option(help="LoRA alpha (scale alpha/r).")] = 32,
    lora_dropout: Annotated[float, typer.Option(help="LoRA dropout.")] = 0.05,
    target_modules: Annotated[str, typer.Option(
        help="Decoder modules that get adapters: all-linear, or names such as q_proj,v_proj.")] = "all-linear",
    train_encoder: Annotated[bool, typer.Option(
        help="Also train the audio encoder in full (the paper's SFT does; on small data it overfits).")] = False,
    max_tokens: Annotated[int, typer.Option(help="Padded decoder tokens per micro-batch.")] = 4096,
    batch_size: Annotated[int, typer.Option(help="Most rows per micro-batch.")] = 8,
    gradient_accumulation_steps: Annotated[int, typer.Option(help="Micro-batches per optimiser step.")] = 1,
    precision: Annotated[str, typer.Option(
        help="auto (bf16 autocast on a GPU that has it, else fp32), bf16 or fp32.")] = "auto",
    dtype: Annotated[str, typer.Option(help="Weights' dtype while training: float32 or bfloat16.")] = "float32",
    seed: Annotated[int, typer.Option(help="Seed of the data order and the adapters.")] = 0,
    resume: Annotated[bool, typer.Option("--resume", help="Continue an interrupted fine-tune in OUT.")] = False,
    progress: Annotated[bool, typer.Option(help="Show a progress bar.")] = True,
) -> None:
    """Fine-tune a published checkpoint on your clips with LoRA, and write a merged model.

    The result in OUT is the published layout: `midashenglm serve --model OUT`, vLLM and
    `MiDashengLM.from_pretrained(OUT)` load it as they load the original.
    """
    from midashenglm.training.finetune import finetune_config
    from midashenglm.training.recipe import Recipe

    cfg = finetune_config(
        model=model, data=data, out=out, validation=validation, epochs=epochs, lr=lr, lora_r=lora_r,
        lora_alpha=lora_alpha, lora_dropout=lora_dropout, target_modules=target_modules,
        train_encoder=train_encoder, max_tokens=max_tokens, batch_size=batch_size, precision=precision, dtype=dtype,
        gradient_accumulation_steps=gradient_accumulation_steps, seed=seed)
    target = Recipe(cfg, resume=resume, progress=progress).run()
    if target is not None:
        stderr_console().print(f"model written to {target}: midashenglm serve --model {target}",
                               highlight=False, markup=False)


def plot(
    run_dir: Annotated[Path, typer.Argument(help="A training run's folder (with metrics.jsonl).")],
    out: Annotated[Path | None, typer.Option(help="PNG to write. Default: RUN_DIR/curves.png.")] = None,
) -> None:
    """Draw the loss (and validation loss) and the learning rate against the step."""
    from midashenglm.training.plot import plot_run

    if not run_dir.is_dir():
        raise UserError(f"{run_dir}: no such folder")
    path = plot_run(run_dir, out)
    print(path)
