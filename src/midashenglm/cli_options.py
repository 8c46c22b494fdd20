"""Command-line options shared by several commands, declared once.

Each command module takes its model, device, dtype and engine-budget options from here,
so every command spells and explains them the same way; :func:`model_or_default` gives
the shipped default model when ``--model`` is absent; :func:`engine_config` turns the
budget options into the engine's :class:`~midashenglm.inference.config.EngineConfig`.
"""

from __future__ import annotations

from typing import Annotated

import typer

from midashenglm.errors import UserError, stderr_console
from midashenglm.inference.config import EngineConfig

ModelOption = Annotated[str | None, typer.Option(
    "--model", "-m", envvar="MIDASHENGLM_MODEL", show_default=False,
    help="Checkpoint folder or Hub id (also read from $MIDASHENGLM_MODEL). Default: the default "
    "model shipped in the package, assembled into the cache at first use (midashenglm "
    "default-model info).")]
DeviceOption = Annotated[str, typer.Option(
    help="cpu, cuda, cuda:1, mps, or auto (the first GPU, else the CPU).")]
DtypeOption = Annotated[str, typer.Option(
    help="auto (the checkpoint's), float32, bfloat16 or float16. The mel front end always runs in float32.")]

_DEFAULTS = EngineConfig()
MaxNumSeqsOption = Annotated[int, typer.Option(
    "--max-num-seqs", "--batch-size", "--max-batch-size",
    help="Engine budget: at most this many requests decode together (vLLM's --max-num-seqs).")]
MaxBatchAudioOption = Annotated[float, typer.Option(
    "--max-batch-audio-seconds", "--batch-audio-seconds",
    help="Engine budget: at most this many seconds of distinct audio per batch (bounds the "
    "encoder's memory). Bigger batches raise throughput, not the latency of one answer.")]
MaxKVCacheOption = Annotated[int, typer.Option(
    "--max-kv-cache-tokens", "--max-batch-tokens",
    help="Engine budget: KV-cache slots of the running batch, rows x (widest prompt + longest "
    "answer still to come).")]


def model_or_default(model: str | None) -> str:
    """The model a command loads: ``--model`` (or ``$MIDASHENGLM_MODEL``) as given, else the
    shipped default model's folder, assembled at first use
    (:func:`midashenglm.default_model.path`), announced with one line on stderr.

    Raises :class:`UserError` when no default model is shipped or it cannot be assembled.
    """
    if model is not None:
        return model
    from midashenglm import default_model

    data = default_model.manifest()
    folder = default_model.path(verbose=True)
    stderr_console().print(f"using the default model ({default_model.describe(data)}, {folder}); "
                           "--model chooses another", highlight=False, markup=False)
    return str(folder)


def engine_config(max_num_seqs: int = _DEFAULTS.max_num_seqs,
                  max_batch_audio_seconds: float = _DEFAULTS.max_batch_audio_seconds,
                  max_kv_cache_tokens: int = _DEFAULTS.max_kv_cache_tokens) -> EngineConfig:
    """The engine's config from the budget options; a bad value is a :class:`UserError`."""
    try:
        return EngineConfig(max_num_seqs=max_num_seqs, max_batch_audio_seconds=max_batch_audio_seconds,
                            max_kv_cache_tokens=max_kv_cache_tokens)
    except ValueError as err:
        flag = {"max_num_seqs": "--max-num-seqs", "max_batch_audio_seconds": "--max-batch-audio-seconds",
                "max_kv_cache_tokens": "--max-kv-cache-tokens"}
        message = str(err)
        for field, option in flag.items():
            message = message.replace(f"EngineConfig.{field}", option)
        raise UserError(message) from None
