"""Stage 2, LoRA pretraining on ~1.1 M hours of mixed tasks (ASR down-weighted).

The encoder comes from the alignment stage (``model.encoder_from``: its export folder);
LoRA r 8, alpha 32, dropout 0.1 on the decoder's q and v projections; the encoder and
the projector train in full; lr 1e-4, weight decay 0.01.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from midashenglm.errors import UserError
from midashenglm.training.config import RecipeConfig
from midashenglm.training.lora import apply_lora, set_trainable


def prepare_model(model: nn.Module, config: RecipeConfig, *, load_weights: bool = True) -> None:
    """Set what the stage trains; ``load_weights=False`` (a model on the meta device, for
    ``--dry-run``) skips reading ``encoder_from``."""
    if config.model.encoder_from and load_weights:
        load_encoder(model, config.model.encoder_from)
    set_trainable(model, config.trainable)
    if config.lora is None:
        raise UserError(f"config {config.source}: the {config.recipe} stage needs a lora section")
    apply_lora(model, config.lora)


def load_encoder(model: nn.Module, folder: str) -> None:
    """Replace ``audio_encoder.*`` (weights and BatchNorm statistics) with those of ``folder``."""
    from midashenglm.modeling.weights import iter_tensors, resolve_checkpoint, weight_files

    path = resolve_checkpoint(folder)
    state = {key.removeprefix("audio_encoder."): tensor for key, tensor in iter_tensors(weight_files(Path(path)))
             if key.startswith("audio_encoder.")}
    if not state:
        raise UserError(f"model.encoder_from: {folder} holds no audio_encoder.* weights")
    own = model.audio_encoder.state_dict()
    missing = sorted(set(own) - set(state))
    if missing:
        raise UserError(f"model.encoder_from: {folder} lacks audio_encoder weights: {', '.join(missing[:5])}")
    with torch.no_grad():
        for key, tensor in own.items():
            tensor.copy_(state[key].to(tensor.dtype))
