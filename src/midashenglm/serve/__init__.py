"""An OpenAI-compatible HTTP server and a web page for MiDashengLM.

``midashenglm serve --model DIR`` runs it; in Python, ``create_app(engine, ServeConfig(...))``
builds the FastAPI app around a :class:`midashenglm.inference.Engine`. Submodules load on
first use, so importing this package (the command line does) stays fast.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

# The environment variable that sets ``midashenglm serve --api-key``.
API_KEY_ENV = "MIDASHENGLM_API_KEY"

_EXPORTS = {
    "create_app": "midashenglm.serve.app",
    "ServeConfig": "midashenglm.serve.app",
    "AudioPolicy": "midashenglm.serve.audio_input",
}

__all__ = ["API_KEY_ENV", "AudioPolicy", "ServeConfig", "create_app"]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'midashenglm.serve' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)


if TYPE_CHECKING:  # pragma: no cover
    from midashenglm.serve.app import ServeConfig, create_app
    from midashenglm.serve.audio_input import AudioPolicy
