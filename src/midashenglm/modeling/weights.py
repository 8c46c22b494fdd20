"""Checkpoint files, below the model: paths, JSON, shards, key mapping, checks (SYSTEM.md section 5).

A checkpoint folder holds ``config.json``, ``model.safetensors`` or
``model-0000i-of-0000n.safetensors`` + ``model.safetensors.index.json``,
``generation_config.json`` and the tokenizer files. Keys are
``audio_encoder.*``, ``audio_projector.net.{0,2}.*``, ``decoder.model.*`` and
``decoder.lm_head.weight``. Variants accepted on load:

* ``audio_encoder.init_bn.1.*`` (Dasheng wraps its BatchNorm in a Sequential);
* stored front-end constants (``audio_encoder.front_end.0.*``), ignored because
  the front end is recomputed from its formula;
* ``model_type`` "miaudiollm" (early uploads);
* a tied ``lm_head`` absent from the files (the model decides which keys are tied).

This module knows files and tensors, not the model: it imports only
:mod:`midashenglm.modeling.config` (inside :func:`load_config`), so the model
(:meth:`MiDashengLM.from_pretrained`), the processor (:func:`read_json_file`) and
the command line build on it without importing each other.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

if TYPE_CHECKING:  # pragma: no cover
    from midashenglm.modeling.config import MiDashengLMConfig

CONFIG_NAME = "config.json"
SAFE_WEIGHTS_NAME = "model.safetensors"
SAFE_INDEX_NAME = "model.safetensors.index.json"
PICKLE_WEIGHTS_NAME = "pytorch_model.bin"
PICKLE_INDEX_NAME = "pytorch_model.bin.index.json"
GENERATION_CONFIG_NAME = "generation_config.json"
ACCEPTED_MODEL_TYPES = ("midashenglm", "miaudiollm")

_IGNORED_KEYS = re.compile(r"(^|\.)front_end\.0\.(mel_scale\.fb|spectrogram\.window)$")
_KEY_RENAMES = [(re.compile(r"(^|\.)init_bn\.1\."), r"\1init_bn.")]
# "*.py": a checkpoint's remote code, kept (never imported) when it is saved again.
_HUB_PATTERNS = ["*.json", "*.safetensors", "*.jinja", "*.txt", "*.model", "*.tiktoken", "*.py"]


class CheckpointError(RuntimeError):
    """A checkpoint that does not fit the model: names what is wrong and where."""


# ---------------------------------------------------------------------------- paths
def resolve_checkpoint(
    path_or_id: str | os.PathLike,
    *,
    revision: str | None = None,
    token: str | bool | None = None,
    allow_pickle: bool = False,
) -> Path:
    """A local folder for ``path_or_id``: itself if it exists, else a Hub snapshot."""
    path = Path(path_or_id).expanduser()
    if path.is_dir():
        return path
    if path.exists():
        raise CheckpointError(f"{path}: expected a checkpoint folder, found a file")
    if _looks_local(str(path_or_id)):
        raise CheckpointError(f"{path}: no such checkpoint folder (the folder does not exist)")
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError

    patterns = _HUB_PATTERNS + (["*.bin"] if allow_pickle else [])
    try:
        return Path(
            snapshot_download(
                str(path_or_id), revision=revision, token=token, allow_patterns=patterns
            )
        )
    except (LocalEntryNotFoundError, HfHubHTTPError, OSError, ValueError) as err:
        raise CheckpointError(
            f"{path_or_id}: not a local folder, and the Hub download failed ({err}). "
            "Offline? Download it once (hf download ID) or pass a folder."
        ) from None


_REPO_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")


def _looks_local(text: str) -> bool:
    """A path the user meant as a folder: starts with / . ~, or has a separator and is no repo id."""
    if text.startswith((".", "/", "~")) or os.sep + os.sep in text:
        return True
    seps = {os.sep, "/"} if os.altsep is None else {os.sep, os.altsep, "/"}
    return any(sep in text for sep in seps) and not _REPO_ID.match(text)


def read_json_file(path_or_id: str | os.PathLike, name: str) -> dict[str, Any] | None:
    """A JSON file of a local checkpoint folder, or None (Hub ids: from the local cache)."""
    path = Path(path_or_id).expanduser()
    if not path.is_dir():
        try:
            from huggingface_hub import try_to_load_from_cache

            cached = try_to_load_from_cache(str(path_or_id), name)
        except Exception:  # an id the cache does not know: nothing to read
            return None
        path = Path(cached).parent if isinstance(cached, str) else None
        if path is None:
            return None
    file = path / name
    if not file.is_file():
        return None
    try:
        return json.loads(file.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise CheckpointError(f"{file}: not valid JSON ({err})") from None


# ----------------------------------------------------------------------------- config
def load_config(folder: Path) -> MiDashengLMConfig:
    """``config.json`` of a checkpoint folder as a :class:`MiDashengLMConfig`, checked."""
    from midashenglm.modeling.config import MiDashengLMConfig

    data = read_json_file(folder, CONFIG_NAME)
    if data is None:
        raise CheckpointError(f"{folder}: no {CONFIG_NAME}")
    if not isinstance(data, dict):
        raise CheckpointError(f"{folder / CONFIG_NAME}: expected a JSON object, found {type(data).__name__}")
    model_type = data.get("model_type")
    if model_type not in ACCEPTED_MODEL_TYPES:
        raise CheckpointError(
            f"{folder / CONFIG_NAME}: model_type {model_type!r} is not a MiDashengLM "
            f"checkpoint (expected one of {ACCEPTED_MODEL_TYPES})"
        )
    data = {k: v for k, v in data.items() if k not in ("model_type", "auto_map", "transformers_version")}
    try:
        return MiDashengLMConfig(**data)
    except (TypeError, ValueError, AttributeError, KeyError) as err:
        raise CheckpointError(f"{folder / CONFIG_NAME}: {err}") from None


def resolve_dtype(dtype: str | torch.dtype | None, config: Any = None) -> torch.dtype:
    """A torch dtype from a name (``"bfloat16"``, ``"torch.float16"``) or a dtype.

    ``"auto"`` means the dtype stored in ``config`` (``dtype`` or ``torch_dtype``),
    float32 when it stores none; ``None`` means float32.
    """
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype in (None, "auto"):
        stored = getattr(config, "dtype", None) or getattr(config, "torch_dtype", None)
        if dtype is None or stored is None:
            return torch.float32
        dtype = stored
    if isinstance(dtype, torch.dtype):
        return dtype
    name = str(dtype).removeprefix("torch.")
    value = getattr(torch, name, None)
    if not isinstance(value, torch.dtype):
        raise ValueError(f"unknown dtype {dtype!r} (use float32, bfloat16 or float16)")
    return value


def resolve_dtype_args(dtype: Any = "auto", torch_dtype: Any = None) -> Any:
    """``dtype``, or transformers' older name ``torch_dtype`` for it (refused when both differ)."""
    if torch_dtype is None:
        return dtype
    if dtype not in (None, "auto") and resolve_dtype(dtype) != resolve_dtype(torch_dtype):
        raise ValueError(f"dtype={dtype!r} and torch_dtype={torch_dtype!r} differ: pass only dtype")
    return torch_dtype


_DEVICE_HELP = "use cpu, cuda, cuda:N, mps or auto"


def device_from_map(device_map: Any) -> str | torch.device:
    """transformers' ``device_map`` for a model on one device: "auto", a device, or ``{"": device}``."""
    if isinstance(device_map, Mapping):
        if set(device_map) == {""}:
            return device_from_map(device_map[""])
        raise ValueError(
            f"device_map={dict(device_map)!r}: per-module device maps are not supported; the model "
            f"runs on one device (pass device_map='auto', a device, or {{'': device}}; {_DEVICE_HELP})"
        )
    if isinstance(device_map, bool):  # bool is an int: refuse before the int case
        raise ValueError(f"device_map={device_map!r}: not a device ({_DEVICE_HELP})")
    if isinstance(device_map, int):
        return torch.device("cuda", device_map)
    if isinstance(device_map, torch.device):
        return device_map
    if isinstance(device_map, str):
        if device_map in ("balanced", "balanced_low_0", "sequential"):
            raise ValueError(
                f"device_map={device_map!r}: splitting the model over devices is not supported; "
                f"the model runs on one device ({_DEVICE_HELP})"
            )
        return device_map
    raise ValueError(f"device_map={device_map!r}: not a device ({_DEVICE_HELP})")


def resolve_device_args(device: Any = None, device_map: Any = None, *, default: Any = "cpu") -> torch.device:
    """One device from ``device`` and/or ``device_map`` (refused when both name different ones)."""
    if device_map is not None:
        mapped = resolve_device(device_from_map(device_map))
        if device is not None and resolve_device(device) != mapped:
            raise ValueError(f"device={device!r} and device_map={device_map!r} differ: pass only one")
        return mapped
    return resolve_device(default if device is None else device)


def resolve_device(device: str | torch.device | int | None = "auto") -> torch.device:
    """A usable torch device: ``"auto"`` (or None) is the first CUDA GPU, else Apple's MPS, else the CPU.

    A device this machine lacks (``cuda`` without CUDA, ``cuda:7`` with two GPUs, ``mps``
    off a Mac) or an unknown name is a ``ValueError`` saying so, before any weight is read.
    """
    if device is None or device == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if _mps_available():
            return torch.device("mps")
        return torch.device("cpu")
    if isinstance(device, bool):
        raise ValueError(f"unknown device {device!r} ({_DEVICE_HELP})")
    if isinstance(device, int):
        device = torch.device("cuda", device)
    if not isinstance(device, torch.device):
        try:
            device = torch.device(str(device).strip())
        except (RuntimeError, ValueError, TypeError):
            raise ValueError(f"unknown device {device!r} ({_DEVICE_HELP})") from None
    if device.type in ("cpu", "meta"):
        return device
    if device.type == "cuda":
        if not torch.cuda.is_available():
            built = "built without CUDA" if torch.version.cuda is None else "no CUDA GPU or driver found"
            raise ValueError(
                f"device {str(device)!r}: CUDA is not available on this machine "
                f"(torch {torch.__version__}, {built}); use cpu or auto"
            )
        count = torch.cuda.device_count()
        if device.index is not None and device.index >= count:
            raise ValueError(
                f"device {str(device)!r}: this machine has {count} CUDA GPU(s) (cuda:0 to cuda:{count - 1})"
            )
        return device
    if device.type == "mps":
        if not _mps_available():
            raise ValueError(f"device {str(device)!r}: Apple MPS is not available on this machine; use cpu or auto")
        return device
    backend = getattr(torch, device.type, None)
    if backend is not None and callable(getattr(backend, "is_available", None)) and backend.is_available():
        return device
    raise ValueError(f"device {str(device)!r}: {device.type} is not available on this machine ({_DEVICE_HELP})")


def _mps_available() -> bool:
    mps = getattr(torch.backends, "mps", None)
    return bool(mps is not None and mps.is_available())


# ---------------------------------------------------------------------- reading tensors
def weight_files(folder: Path, *, allow_pickle: bool = False) -> list[Path]:
    """The weight files of a checkpoint folder, safetensors preferred."""
    for index_name, single in ((SAFE_INDEX_NAME, SAFE_WEIGHTS_NAME), (PICKLE_INDEX_NAME, PICKLE_WEIGHTS_NAME)):
        pickled = index_name == PICKLE_INDEX_NAME
        index = folder / index_name
        files: list[Path] = []
        if index.is_file():
            try:
                weight_map = json.loads(index.read_text()).get("weight_map", {})
            except (json.JSONDecodeError, UnicodeDecodeError, AttributeError) as err:
                raise CheckpointError(f"{index}: not a valid index file ({err})") from None
            files = [folder / f for f in sorted(set(weight_map.values()))]
            absent = [f.name for f in files if not f.is_file()]
            if absent:
                raise CheckpointError(f"{index}: shard(s) missing: {', '.join(absent)}")
        elif (folder / single).is_file():
            files = [folder / single]
        if files and pickled and not allow_pickle:
            raise CheckpointError(
                f"{folder}: only pickle weights ({files[0].name}) found. Pickle files can run "
                "code when loaded; pass allow_pickle=True if you trust them, or convert them "
                "to safetensors."
            )
        if files:
            return files
    raise CheckpointError(f"{folder}: no {SAFE_WEIGHTS_NAME} or {SAFE_INDEX_NAME} found")


def open_safetensors(file: Path) -> Any:
    """``safe_open`` on ``file``; a truncated or corrupt file is a CheckpointError naming it."""
    from safetensors import safe_open

    try:
        return safe_open(str(file), framework="pt", device="cpu")
    except Exception as err:  # safetensors' own error type (Rust) or an OSError
        raise CheckpointError(f"{file}: not a valid safetensors file (truncated?): {err}") from None


def iter_tensors(files: list[Path]) -> Iterator[tuple[str, torch.Tensor]]:
    """(key, tensor) over every shard, one shard in memory at a time."""
    for file in files:
        if file.suffix == ".safetensors":
            with open_safetensors(file) as shard:
                for key in shard.keys():  # noqa: SIM118 - safe_open is not a dict
                    try:
                        tensor = shard.get_tensor(key)
                    except Exception as err:
                        raise CheckpointError(
                            f"{file}: not a valid safetensors file (truncated?): tensor {key}: {err}"
                        ) from None
                    yield key, tensor
        else:
            try:
                state = torch.load(file, map_location="cpu", weights_only=True)
            except Exception as err:
                raise CheckpointError(f"{file}: not a loadable weights file ({err})") from None
            yield from state.items()


def normalize_key(key: str) -> str | None:
    """The model's name for a stored key, or None for keys that are recomputed."""
    if _IGNORED_KEYS.search(key):
        return None
    for pattern, replacement in _KEY_RENAMES:
        key = pattern.sub(replacement, key)
    return key


def load_state(
    module: torch.nn.Module,
    tensors: Iterator[tuple[str, torch.Tensor]],
    *,
    source: str,
    prefix: str = "",
    optional: set[str] | None = None,
) -> None:
    """Copy tensors into ``module`` (keys without ``prefix``), checking every name and shape."""
    own = dict(module.state_dict(keep_vars=True))
    seen: set[str] = set()
    unexpected, mismatched = [], []
    for raw_key, tensor in tensors:
        key = normalize_key(raw_key)
        if key is None:
            continue
        if prefix:
            if not key.startswith(prefix):
                unexpected.append(raw_key)
                continue
            key = key[len(prefix) :]
        target = own.get(key)
        if target is None:
            unexpected.append(raw_key)
            continue
        if tuple(target.shape) != tuple(tensor.shape):
            mismatched.append(f"{raw_key}: checkpoint {tuple(tensor.shape)} vs model {tuple(target.shape)}")
            seen.add(key)  # present, only the wrong shape: reported once, as a mismatch
            continue
        with torch.no_grad():
            target.copy_(tensor.to(dtype=target.dtype))
        seen.add(key)
    missing = [k for k in own if k not in seen and k not in (optional or set())]
    if missing or unexpected or mismatched:
        raise CheckpointError(_mismatch_report(source, missing, unexpected, mismatched))


def _mismatch_report(source: str, missing: list, unexpected: list, mismatched: list) -> str:
    lines = [f"{source} does not fit the model:"]
    for title, items in (("missing keys", missing), ("unexpected keys", unexpected), ("shape mismatches", mismatched)):
        if items:
            shown = "\n    ".join(items[:12])
            more = f"\n    ... and {len(items) - 12} more" if len(items) > 12 else ""
            lines.append(f"  {len(items)} {title}:\n    {shown}{more}")
    return "\n".join(lines)


# ---------------------------------------------------------------------- writing tensors
def write_weights(
    state: Mapping[str, torch.Tensor],
    directory: Path,
    *,
    max_shard_size: int | str = "5GB",
) -> None:
    """Write ``state`` as ``model.safetensors`` or shards + index, replacing older weight files.

    Tensors are written as given (detach, move and cast them first).
    """
    from huggingface_hub import split_torch_state_dict_into_shards
    from safetensors.torch import save_file

    directory.mkdir(parents=True, exist_ok=True)
    for stale in list(directory.glob("model*.safetensors")) + [directory / SAFE_INDEX_NAME]:
        stale.unlink(missing_ok=True)
    split = split_torch_state_dict_into_shards(
        dict(state), max_shard_size=max_shard_size, filename_pattern="model{suffix}.safetensors"
    )
    for filename, keys in split.filename_to_tensors.items():
        save_file({k: state[k] for k in keys}, str(directory / filename), metadata={"format": "pt"})
    if split.is_sharded:
        index = {"metadata": {"total_size": split.metadata["total_size"]}, "weight_map": split.tensor_to_filename}
        (directory / SAFE_INDEX_NAME).write_text(json.dumps(index, indent=2, sort_keys=True) + "\n")


def write_json_file(directory: Path, name: str, data: Mapping[str, Any]) -> None:
    """``name`` in ``directory``: indented, sorted keys, a final newline."""
    (directory / name).write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
