"""Stage 3, supervised fine-tuning (a 352 k-hour subset, 1 epoch).

LoRA on every linear layer of the decoder (peft's ``all-linear``), the encoder and the
projector in full; lr 1e-5, weight decay 0.1. ``midashenglm finetune`` runs this stage
on a user's CSV of clips, prompts and answers.
"""

from __future__ import annotations

from torch import nn

from midashenglm.training.config import RecipeConfig
from midashenglm.training.recipes.pretrain import prepare_model as _lora_stage


def prepare_model(model: nn.Module, config: RecipeConfig, *, load_weights: bool = True) -> None:
    _lora_stage(model, config, load_weights=load_weights)
