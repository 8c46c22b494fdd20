"""Stage 1, alignment: the whole model trains on general captions (ACAVCaps, 3 epochs).

The paper tried a frozen decoder and LoRA-only alignment and found both worse. The
export (``RUN_DIR/model``) carries the trained encoder with its BatchNorm statistics;
``pretrain`` takes it with ``model.encoder_from``.
"""

from __future__ import annotations

from torch import nn

from midashenglm.training.config import RecipeConfig
from midashenglm.training.lora import set_trainable


def prepare_model(model: nn.Module, config: RecipeConfig, *, load_weights: bool = True) -> None:
    set_trainable(model, config.trainable or ["audio_encoder", "audio_projector", "decoder"])
