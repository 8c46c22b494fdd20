"""What a stage trains: full components and LoRA adapters (through peft) on the decoder.

SYSTEM.md section 7: alignment trains everything; pretraining puts LoRA (r 8, alpha 32,
dropout 0.1) on the decoder's q and v projections, SFT on every linear layer of the
decoder; in both the encoder and the projector train in full. Adapters are merged on
export, so the exported folder is the published layout (``decoder.model.*``) that
``from_pretrained``, ``serve`` and vLLM load.
"""

from __future__ import annotations

import warnings
from collections import Counter
from dataclasses import dataclass

from torch import nn

from midashenglm.training.config import LoraSettings
from midashenglm.training.optim import quiet_bitsandbytes

COMPONENTS = ("audio_encoder", "audio_projector", "decoder")


def set_trainable(model: nn.Module, components: list[str]) -> None:
    """Freeze everything, then unfreeze the named components (``audio_encoder``, ...)."""
    model.requires_grad_(False)
    for name in components:
        getattr(model, name).requires_grad_(True)


def apply_lora(model: nn.Module, settings: LoraSettings) -> None:
    """Wrap ``model.decoder`` with peft LoRA adapters; only the adapters of the decoder train.

    ``target_modules`` takes peft's forms: a list of module-name suffixes (``q_proj``) or
    ``"all-linear"`` (every ``nn.Linear`` of the decoder except the output layer).
    """
    quiet_bitsandbytes()
    from peft import LoraConfig, get_peft_model

    config = LoraConfig(r=settings.r, lora_alpha=settings.alpha, lora_dropout=settings.dropout,
                        target_modules=settings.target_modules, bias="none")
    with warnings.catch_warnings():
        # peft asks transformers' deprecated is_gradient_checkpointing; nothing for users to do.
        warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
        model.decoder = get_peft_model(model.decoder, config)


def has_lora(model: nn.Module) -> bool:
    return hasattr(model.decoder, "merge_and_unload")


def merge_lora(model: nn.Module) -> None:
    """Fold the adapters into the decoder's weights and drop peft's wrapper (for export)."""
    if has_lora(model):
        model.decoder = model.decoder.merge_and_unload()


def lora_targets(model: nn.Module) -> Counter[str]:
    """How many modules of each name carry an adapter, e.g. ``{"q_proj": 2, "v_proj": 2}``."""
    from peft.tuners.lora import LoraLayer

    return Counter(name.rsplit(".", 1)[-1] for name, module in model.named_modules()
                   if isinstance(module, LoraLayer))


@dataclass
class ParameterCount:
    total: int
    trainable: int


def parameter_counts(model: nn.Module) -> dict[str, ParameterCount]:
    """Parameters per component (``lora`` separate from the decoder's own weights)."""
    counts = {name: ParameterCount(0, 0) for name in (*COMPONENTS, "lora")}
    for name, param in model.named_parameters():
        component = "lora" if ".lora_" in name else name.split(".", 1)[0]
        count = counts.setdefault(component, ParameterCount(0, 0))
        count.total += param.numel()
        count.trainable += param.numel() if param.requires_grad else 0
    if not counts["lora"].total:
        del counts["lora"]
    return counts
