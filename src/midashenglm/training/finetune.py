"""``midashenglm finetune``: the SFT recipe on a user's (audio, prompt, answer) rows.

Defaults, chosen for small data on one GPU (or a CPU): LoRA r 8, alpha 32, dropout 0.05
on every linear layer of the decoder (the paper's SFT targets), the projector trained
in full, the encoder frozen (``--train-encoder`` trains it as the paper's SFT does; on a
few hundred clips it overfits), 8-bit AdamW at lr 1e-4 with weight decay 0.01, warm-up
over the first 10 % of the steps then cosine to 10 % of the peak, 3 epochs, micro-batches
of at most 8 rows and 4,096 padded tokens grouped by length, a checkpoint every 100 steps. Unlike the
official toolkit, the loss covers the answers only (not the assistant header, not
padding), the waveform stays fp32 through the front end, and rows may hold several clips
and turns (JSONL ``messages``).
"""

from __future__ import annotations

from pathlib import Path

from midashenglm.errors import UserError
from midashenglm.training.config import (
    CheckpointConfig,
    DataConfig,
    DatasetEntry,
    LoraSettings,
    ModelConfig,
    OptimizerConfig,
    RecipeConfig,
    ScheduleConfig,
    TrainingConfig,
    ValidationConfig,
    _check,
)

WARMUP_FRACTION = 0.1


def finetune_config(*, model: str, data: Path, out: Path, validation: Path | None = None,
                    epochs: float = 3.0, lr: float = 1e-4, lora_r: int = 8, lora_alpha: int = 32,
                    lora_dropout: float = 0.05, target_modules: str = "all-linear",
                    train_encoder: bool = False, max_tokens: int = 4096, batch_size: int = 8,
                    precision: str = "auto",
                    dtype: str = "float32", gradient_accumulation_steps: int = 1,
                    seed: int = 0) -> RecipeConfig:
    """The SFT recipe's config for a fine-tune of ``model`` on ``data``, exported to ``out``."""
    local = Path(model)
    if not Path(data).is_file():
        raise UserError(f"--data {data}: no such file")
    if validation is not None and not Path(validation).is_file():
        raise UserError(f"--validation {validation}: no such file")
    out = Path(out).resolve()
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out}: is a file; give a folder for the model")
    if local.exists() and local.resolve() == out:
        raise UserError(f"--out {out}: is the model being fine-tuned; choose another folder")
    if out.is_dir() and any(out.iterdir()) and not (out / "training").is_dir():
        # Not a previous fine-tune's folder: the export would replace what is there.
        raise UserError(f"--out {out}: the folder exists and holds other files; choose a new folder")
    targets: list[str] | str = target_modules if target_modules == "all-linear" else \
        [name.strip() for name in target_modules.split(",") if name.strip()]
    config = RecipeConfig(
        recipe="sft",
        output_dir=str(out / "training"),
        export_dir=str(out),
        model=ModelConfig(checkpoint=str(local.resolve()) if local.exists() else model, dtype=dtype),
        trainable=["audio_projector"] + (["audio_encoder"] if train_encoder else []),
        lora=LoraSettings(r=lora_r, alpha=lora_alpha, dropout=lora_dropout, target_modules=targets),
        data=DataConfig(train=[DatasetEntry(manifest=str(Path(data).resolve()))],
                        validation=str(Path(validation).resolve()) if validation else None,
                        max_tokens=max_tokens, max_batch_size=batch_size),
        optimizer=OptimizerConfig(name="adamw8bit", lr=lr, weight_decay=0.01),
        schedule=ScheduleConfig(warmup_steps=0, warmup_ratio=WARMUP_FRACTION, min_lr_ratio=0.1),
        training=TrainingConfig(max_steps=1, epochs=epochs, precision=precision, seed=seed,
                                gradient_accumulation_steps=gradient_accumulation_steps),
        checkpoint=CheckpointConfig(every_steps=100, keep_last=1),
        validation=ValidationConfig(every_steps=100),
        source="midashenglm finetune",
    )
    _check(config, "midashenglm finetune")
    return config
