"""MiDashengLM: Dasheng audio encoder + 5 Hz projector + any Hugging Face causal LM.

Heavy modules (torch, transformers) load on first use, so ``import midashenglm``
stays fast for command-line tools that only need a part of the package.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

_EXPORTS = {
    "AudioError": "midashenglm.audio",
    "load_audio": "midashenglm.audio",
    "SAMPLE_RATE": "midashenglm.audio",
    "DashengConfig": "midashenglm.modeling.config",
    "MiDashengLMConfig": "midashenglm.modeling.config",
    "DashengEncoder": "midashenglm.modeling.encoder",
    "AudioProjector": "midashenglm.modeling.projector",
    "MiDashengLM": "midashenglm.modeling.model",
    "MiDashengLMProcessor": "midashenglm.processing",
    "num_audio_tokens": "midashenglm.modeling.geometry",
}

__all__ = [
    "SAMPLE_RATE",
    "AudioError",
    "AudioProjector",
    "DashengConfig",
    "DashengEncoder",
    "MiDashengLM",
    "MiDashengLMConfig",
    "MiDashengLMProcessor",
    "__version__",
    "load_audio",
    "num_audio_tokens",
]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'midashenglm' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)


if TYPE_CHECKING:  # pragma: no cover
    from midashenglm.audio import SAMPLE_RATE, AudioError, load_audio
    from midashenglm.modeling.config import DashengConfig, MiDashengLMConfig
    from midashenglm.modeling.encoder import DashengEncoder
    from midashenglm.modeling.geometry import num_audio_tokens
    from midashenglm.modeling.model import MiDashengLM
    from midashenglm.modeling.projector import AudioProjector
    from midashenglm.processing import MiDashengLMProcessor
