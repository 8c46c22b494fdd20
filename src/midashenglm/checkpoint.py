"""Loading, on top of the model and the processor: what commands and services start from.

The layers, bottom up (no module imports one above it; ``tests/test_import_graph.py``
checks there is no cycle, function-local imports included):

1. :mod:`midashenglm.modeling.geometry` (audio-token count), :mod:`~midashenglm.modeling.config`,
   and :mod:`midashenglm.modeling.weights`: the published files (paths, JSON, Hub
   resolution, safetensors shards and index, key variants, checks, ``CheckpointError``);
2. :mod:`midashenglm.modeling.model` (``MiDashengLM.from_pretrained/save_pretrained``
   on layer 1) and :mod:`midashenglm.processing` (the processor, on layer 1);
3. this module: :func:`load_model` (model + processor together), the original
   Dasheng ``.pt`` loader, and the names of layer 1 re-exported, so that
   ``from midashenglm.checkpoint import load_model, CheckpointError, read_json_file``
   keeps working.

The model and the processor are imported inside the functions that need them, so that
``from midashenglm.checkpoint import CheckpointError`` stays as light as ``torch``.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from midashenglm.modeling.weights import (
    ACCEPTED_MODEL_TYPES,
    CONFIG_NAME,
    GENERATION_CONFIG_NAME,
    PICKLE_INDEX_NAME,
    PICKLE_WEIGHTS_NAME,
    SAFE_INDEX_NAME,
    SAFE_WEIGHTS_NAME,
    CheckpointError,
    device_from_map,
    iter_tensors,
    load_config,
    load_state,
    normalize_key,
    read_json_file,
    resolve_checkpoint,
    resolve_device,
    resolve_device_args,
    resolve_dtype,
    resolve_dtype_args,
    weight_files,
    write_weights,
)

if TYPE_CHECKING:  # pragma: no cover
    from midashenglm.modeling.config import DashengConfig, MiDashengLMConfig
    from midashenglm.modeling.encoder import DashengEncoder
    from midashenglm.modeling.model import MiDashengLM
    from midashenglm.processing import MiDashengLMProcessor

__all__ = [
    "ACCEPTED_MODEL_TYPES",
    "CONFIG_NAME",
    "GENERATION_CONFIG_NAME",
    "PICKLE_INDEX_NAME",
    "PICKLE_WEIGHTS_NAME",
    "SAFE_INDEX_NAME",
    "SAFE_WEIGHTS_NAME",
    "CheckpointError",
    "build_empty",
    "device_from_map",
    "iter_tensors",
    "load_config",
    "load_dasheng_checkpoint",
    "load_model",
    "load_pretrained",
    "load_state",
    "normalize_key",
    "read_json_file",
    "resolve_checkpoint",
    "resolve_device",
    "resolve_device_args",
    "resolve_dtype",
    "resolve_dtype_args",
    "save_pretrained",
    "weight_files",
    "write_weights",
]


# ------------------------------------------------------------------------- the model
def load_pretrained(path_or_id: str | os.PathLike, **kwargs: Any) -> MiDashengLM:
    """``MiDashengLM.from_pretrained``: a checkpoint (folder or Hub id) in the published layout.

    Keywords: ``dtype`` ("auto": the one in config.json), ``device``, ``allow_pickle``,
    ``revision``, ``token``.
    """
    from midashenglm.modeling.model import MiDashengLM

    return MiDashengLM.from_pretrained(path_or_id, **kwargs)


def save_pretrained(model: MiDashengLM, directory: str | os.PathLike, **kwargs: Any) -> Path:
    """``model.save_pretrained``: the published layout; it loads back bit-identically."""
    return model.save_pretrained(directory, **kwargs)


def build_empty(config: MiDashengLMConfig, dtype: torch.dtype, device: str | torch.device) -> MiDashengLM:
    """``MiDashengLM.build_empty``: uninitialised weights, in their final dtype and device."""
    from midashenglm.modeling.model import MiDashengLM

    return MiDashengLM.build_empty(config, dtype, device)


def load_model(
    path_or_id: str | os.PathLike,
    *,
    device: str | torch.device | None = "auto",
    dtype: str | torch.dtype | None = "auto",
    device_map: Any = None,
    torch_dtype: str | torch.dtype | None = None,
    **kwargs: Any,
) -> tuple[MiDashengLM, MiDashengLMProcessor]:
    """Model and processor of a checkpoint: what every command and service starts from.

    ``device`` (default "auto": the first CUDA GPU, else MPS, else the CPU) is checked
    before any file is read: a device this machine lacks is a ``ValueError``.
    ``device_map`` and ``torch_dtype`` are accepted as in :meth:`MiDashengLM.from_pretrained`.
    """
    from midashenglm.modeling.model import MiDashengLM
    from midashenglm.processing import MiDashengLMProcessor

    if device_map is not None and device == "auto":
        device = None  # the map decides
    target = resolve_device_args(device, device_map, default="auto")
    dtype = resolve_dtype_args(dtype, torch_dtype)
    model = MiDashengLM.from_pretrained(path_or_id, device=target, dtype=dtype, **kwargs)
    processor = MiDashengLMProcessor.from_pretrained(
        resolve_checkpoint(path_or_id, revision=kwargs.get("revision"), token=kwargs.get("token"))
    )
    return model, processor


# ------------------------------------------------------------- original Dasheng .pt
_DASHENG_CONFIG_RENAMES = {"hop_size": "hop_length", "win_size": "win_length"}


def read_dasheng_dump(path: str | os.PathLike) -> tuple[dict[str, Any], dict[str, Any]]:
    """``(config dict, state dict)`` of an original Dasheng ``.pt`` (a dict with ``model`` and
    ``config``), read with ``torch.load(weights_only=True)``. Raises :class:`CheckpointError`."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such file")
    try:
        dump = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # weights_only refuses code objects: say so plainly
        raise CheckpointError(f"{path}: not a loadable Dasheng checkpoint ({err})") from None
    if not isinstance(dump, dict) or "model" not in dump:
        raise CheckpointError(f"{path}: expected a dict with 'model' and 'config'")
    return dict(dump.get("config") or {}), dict(dump["model"])


def dasheng_config_from(raw: dict[str, Any], state: dict[str, Any], source: str) -> DashengConfig:
    """The encoder's config from a Dasheng config dict (original or ours), with the sizes the
    dict lacks read off the weights (width, depth) or the published presets (head count)."""
    from midashenglm.modeling.config import ENCODER_PRESETS, DashengConfig

    fields = DashengConfig().to_dict().keys()
    settings = {_DASHENG_CONFIG_RENAMES.get(k, k): v for k, v in raw.items()}
    settings = {k: v for k, v in settings.items() if k in fields and k != "model_type"}
    if "embed_dim" not in settings and "patch_embed.proj.weight" in state:
        settings["embed_dim"] = int(state["patch_embed.proj.weight"].shape[0])
    blocks = {int(k.split(".")[1]) for k in state if k.startswith("blocks.")}
    if "depth" not in settings and blocks:
        settings["depth"] = 1 + max(blocks)
    if "num_heads" not in settings:
        # The published loaders pass the head count as an argument, not in the dump.
        by_width = {p["embed_dim"]: p["num_heads"] for p in ENCODER_PRESETS.values()}
        if settings.get("embed_dim") not in by_width:
            raise CheckpointError(f"{source}: config has no num_heads and embed_dim is not a known size")
        settings["num_heads"] = by_width[settings["embed_dim"]]
    return DashengConfig(**settings)


def load_dasheng_checkpoint(path: str | os.PathLike) -> DashengEncoder:
    """An original Dasheng encoder checkpoint (``dasheng_base.pt``: a dict with ``model``
    and ``config``), loaded with ``torch.load(weights_only=True)``."""
    from midashenglm.modeling.encoder import DashengEncoder

    raw, state = read_dasheng_dump(path)
    encoder = DashengEncoder(dasheng_config_from(raw, state, str(path)))
    load_state(encoder, iter(state.items()), source=str(path))
    return encoder.eval()
