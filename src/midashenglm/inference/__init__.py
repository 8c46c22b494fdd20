"""Batched inference for MiDashengLM: the engine, its command-line commands, batch jobs.

``from midashenglm.inference import Engine, Request, SamplingParams``. Submodules load on
first use, so importing the package (the command line does) stays fast.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

_EXPORTS = {
    "Engine": "midashenglm.inference.engine",
    "Request": "midashenglm.inference.engine",
    "Result": "midashenglm.inference.engine",
    "PreparedRequest": "midashenglm.inference.engine",
    "EngineConfig": "midashenglm.inference.config",
    "SamplingParams": "midashenglm.inference.params",
    "LRUCache": "midashenglm.inference.cache",
}

__all__ = ["Engine", "EngineConfig", "LRUCache", "PreparedRequest", "Request", "Result", "SamplingParams"]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'midashenglm.inference' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)


if TYPE_CHECKING:  # pragma: no cover
    from midashenglm.inference.cache import LRUCache
    from midashenglm.inference.config import EngineConfig
    from midashenglm.inference.engine import Engine, PreparedRequest, Request, Result
    from midashenglm.inference.params import SamplingParams
