"""Pack a training run into the shipped default model (``midashenglm default-model pack``).

Reads the newest checkpoint of an SFT run (``RUN_DIR/checkpoints/step-N/model.pt``: the
trainable weights, the unmerged LoRA adapters under peft's key names, every buffer) on
top of the run's starting model (``RUN_DIR/config.yaml``'s ``model.checkpoint``, loaded
as the recipe loads it, so frozen weights and the added tokens' embedding rows come from
there), and writes what differs from the base decoder: see :mod:`midashenglm.default_model`.

Before anything is replaced, the written files are assembled again on the base decoder
(:func:`midashenglm.default_model.assemble.build`) and compared with the trained model,
LoRA merged: every tensor must agree within float16 storage (largest difference at most
1 % of the tensor's largest value), and the tokenizer must be the run's. A starting model
whose decoder is not the base decoder, or a decoder trained in full, is a :class:`UserError`.
"""

from __future__ import annotations

import json
import os
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from midashenglm.default_model.shipped import DEFAULT_BASE, FORMAT, MANIFEST_NAME, WEIGHTS_NAME
from midashenglm.errors import UserError
from midashenglm.progress import ProgressBar
from midashenglm.terminal import quote_name

DTYPES = ("float16", "bfloat16", "float32")
TOLERANCE = 1e-2  # largest |assembled - trained| over the tensor's largest |trained|
_PEFT_PREFIX = "decoder.base_model.model."
_PEFT_LORA = re.compile(r"\.lora_([AB])\.[^.]+\.weight$")  # ...q_proj.lora_A.default.weight


@dataclass
class PackResult:
    out: Path
    weights_bytes: int
    manifest_bytes: int
    parts: dict[str, int] = field(default_factory=dict)  # parameters per part
    worst: tuple[str, float] = ("", 0.0)  # the tensor that differs most, relative difference
    step: int = 0
    version: str = ""
    seconds: float = 0.0


def pack(run_dir: Path, out: Path, *, base: str = DEFAULT_BASE, dtype: str = "float16",
         version: str | None = None, progress: bool = True) -> PackResult:
    """Write ``weights.safetensors`` and ``default_model.json`` of ``run_dir`` into ``out``."""
    import torch
    from safetensors.torch import save_file

    from midashenglm.default_model.assemble import base_spec, build, digest, load_base
    from midashenglm.training.lora import merge_lora

    if dtype not in DTYPES:
        raise UserError(f"--dtype {dtype!r}: choose {', '.join(DTYPES)}")
    start = time.perf_counter()
    spec = base_spec(base)  # a missing base package fails before the model loads
    with ProgressBar(6, "packing", enabled=progress, transient=True) as bar:
        bar.advance(0, "loading the trained model")
        model, config, step = _trained_model(Path(run_dir))
        start_processor = _processor(config.model.checkpoint)
        bar.advance(1, f"loading the base decoder {spec['file']}")
        model_dtype = model.decoder.get_input_embeddings().weight.dtype
        dec = load_base(spec, model_dtype, check=False)
        base_vocab = int(dec.text_config["vocab_size"])
        base_tokens = len(dec.tokenizer)
        bar.advance(1, "collecting the trained tensors")
        tensors, lora = _shipped_tensors(model, getattr(torch, dtype), base_vocab)
        parts = _parts(tensors)
        tok = start_processor.tokenizer
        data = {
            "format": FORMAT,
            "version": version or f"{_package_version()}+{Path(run_dir).resolve().name}.step{step}",
            "dtype": dtype,
            "model_dtype": str(model_dtype).removeprefix("torch."),
            "weights": {"file": WEIGHTS_NAME},
            "base_decoder": spec,
            "config": {k: v for k, v in model.config.to_dict().items() if k != "dtype"},
            "generation_config": model.generation_config.to_diff_dict(),
            "vocab_size": int(model.decoder.get_input_embeddings().weight.shape[0]),
            "tokenizer_size": len(tok),
            "added_tokens": {tok.convert_ids_to_tokens(i): i for i in range(base_tokens, len(tok))},
            "lora": lora,
            "processor": _processor_settings(start_processor),
            "trained": {"recipe": config.recipe, "step": step, "run": Path(run_dir).resolve().name,
                        "starting_model": Path(config.model.checkpoint).name},
        }
        data["generation_config"].pop("transformers_version", None)
        out = Path(out)
        out.mkdir(parents=True, exist_ok=True)
        weights_tmp = out / f".{WEIGHTS_NAME}.partial"
        save_file({k: v.contiguous() for k, v in tensors.items()}, str(weights_tmp), metadata={"format": "pt"})
        size, sha = digest(weights_tmp)
        data["weights"].update(size=size, sha256=sha)
        bar.advance(1, "assembling the packed files on the base decoder")
        try:
            built, processor = build(data, weights_tmp, dec)
            del dec
            bar.advance(1, "comparing with the trained model")
            merge_lora(model)
            worst = _compare(model, built)
            _compare_tokenizers(start_processor, processor)
        except BaseException:
            weights_tmp.unlink(missing_ok=True)
            raise
        manifest_text = json.dumps(data, indent=1, ensure_ascii=False) + "\n"
        manifest_tmp = out / f".{MANIFEST_NAME}.partial"
        manifest_tmp.write_text(manifest_text, encoding="utf-8")
        for tmp in (weights_tmp, manifest_tmp):  # readable by all (safetensors writes 0600)
            os.chmod(tmp, 0o666 & ~_umask())
        os.replace(weights_tmp, out / WEIGHTS_NAME)
        os.replace(manifest_tmp, out / MANIFEST_NAME)
        bar.advance(1)
    return PackResult(out=out, weights_bytes=size, manifest_bytes=len(manifest_text.encode()), parts=parts,
                      worst=worst, step=step, version=data["version"], seconds=time.perf_counter() - start)


# ------------------------------------------------------------------ the trained model
def _trained_model(run_dir: Path) -> tuple[Any, Any, int]:
    """The run's starting model (stage prepared: LoRA wrapped) with its newest checkpoint loaded."""
    import torch

    from midashenglm.training import checkpointing
    from midashenglm.training.config import load_config
    from midashenglm.training.recipe import load_base_model

    if not run_dir.is_dir():
        raise UserError(f"{quote_name(run_dir)}: no such run folder")
    if not (run_dir / "config.yaml").is_file():
        raise UserError(f"{quote_name(run_dir)}: no config.yaml (not a training run folder: "
                        "midashenglm train writes one)")
    config = load_config(run_dir / "config.yaml", need_data=False)
    ckpt = checkpointing.latest_checkpoint(run_dir)
    if ckpt is None:
        raise UserError(f"{quote_name(run_dir)}: no checkpoint yet (checkpoints/step-*)")
    trainer = json.loads((ckpt / checkpointing.STATE_FILE).read_text(encoding="utf-8"))
    if trainer.get("checkpoint", config.model.checkpoint) != config.model.checkpoint:
        raise UserError(f"{ckpt} trained from {trainer['checkpoint']}, not config.yaml's "
                        f"model.checkpoint {config.model.checkpoint}")
    model = load_base_model(config)
    try:
        state = torch.load(ckpt / "model.pt", map_location="cpu", weights_only=True)
    except (OSError, RuntimeError) as err:
        raise UserError(f"{ckpt}/model.pt: cannot be read ({err})") from None
    params = dict(model.named_parameters())
    full = sorted(k for k in state if k.startswith("decoder.") and ".lora_" not in k and k in params)
    if full:
        raise UserError(f"{ckpt} trained decoder weights in full ({full[0]}, ...): the default model "
                        "ships LoRA adapters on the base decoder only")
    unknown = sorted(set(state) - set(model.state_dict()))
    if unknown:
        raise UserError(f"{ckpt}/model.pt does not fit the run's model: {', '.join(unknown[:3])}")
    model.load_state_dict(state, strict=False)
    return model.eval(), config, int(trainer.get("step", 0))


def _processor(checkpoint: str) -> Any:
    from midashenglm.processing import MiDashengLMProcessor

    return MiDashengLMProcessor.from_pretrained(checkpoint)


def _processor_settings(processor: Any) -> dict[str, Any]:
    """What :class:`MiDashengLMProcessor` takes besides the tokenizer (the chat template too)."""
    names = ("sample_rate", "hop_length", "patch_stride", "subsample_factor", "min_audio_samples",
             "chat_template")
    return {name: getattr(processor, name) for name in names}


def _shipped_tensors(model: Any, dtype: Any, base_vocab: int) -> tuple[dict[str, Any], dict[str, Any] | None]:
    """The tensors to ship (parameters in ``dtype``, buffers as they are) and the LoRA settings."""
    buffers = {name for name, _ in model.named_buffers()}
    state = model.state_dict()
    tensors: dict[str, Any] = {}
    for key, value in state.items():
        if key.startswith(("audio_encoder.", "audio_projector.")):
            keep = key in buffers or not value.is_floating_point()
            tensors[key] = value.detach().clone() if keep else value.detach().to(dtype)
        elif ".lora_" in key:
            match = _PEFT_LORA.search(key)
            if match is None or not key.startswith(_PEFT_PREFIX):
                raise UserError(f"{key}: only LoRA A/B matrices of linear layers can be shipped")
            name = "decoder." + key[len(_PEFT_PREFIX): match.start()] + f".lora_{match.group(1)}.weight"
            tensors[name] = value.detach().to(dtype)
    embeddings = model.decoder.get_input_embeddings().weight
    if embeddings.shape[0] < base_vocab:
        raise UserError(f"the trained decoder has {embeddings.shape[0]} embedding rows, fewer than the "
                        f"base decoder's {base_vocab}")
    if embeddings.shape[0] > base_vocab:
        tensors["added_tokens.embed_tokens"] = embeddings[base_vocab:].detach().to(dtype)
        if not model.config.text_config.tie_word_embeddings:
            head = model.decoder.get_output_embeddings().weight
            tensors["added_tokens.lm_head"] = head[base_vocab:].detach().to(dtype)
    return tensors, _lora_settings(model)


def _lora_settings(model: Any) -> dict[str, Any] | None:
    """r, alpha, scaling and target module names of the decoder's adapters (one setting for all)."""
    from peft.tuners.lora import LoraLayer

    layers = [(name, m) for name, m in model.decoder.named_modules() if isinstance(m, LoraLayer)]
    if not layers:
        return None
    settings = {(m.r["default"], m.lora_alpha["default"], m.scaling["default"]) for _, m in layers}
    if len(settings) != 1:
        raise UserError(f"the adapters differ in rank or alpha ({sorted(settings)}): one setting is shipped")
    r, alpha, scaling = settings.pop()
    return {"r": int(r), "alpha": alpha, "scaling": float(scaling),
            "target_modules": sorted({name.rsplit(".", 1)[-1] for name, _ in layers})}


def _parts(tensors: dict[str, Any]) -> dict[str, int]:
    parts: dict[str, int] = {}
    for key, value in tensors.items():
        part = "lora" if ".lora_" in key else key.split(".", 1)[0]
        parts[part] = parts.get(part, 0) + value.numel()
    return parts


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _package_version() -> str:
    from midashenglm import __version__

    return __version__


# ------------------------------------------------------------------------ the checks
def _compare(trained: Any, built: Any) -> tuple[str, float]:
    """The tensor of ``built`` that differs most from ``trained`` (relative), checked."""
    ref, got = trained.state_dict(), built.state_dict()
    if set(ref) != set(got):
        extra = sorted(set(ref) ^ set(got))
        raise UserError(f"the assembled model's tensors are not the trained model's: {', '.join(extra[:5])}")
    worst = ("", 0.0)
    for key, value in ref.items():
        if not value.is_floating_point():
            continue
        scale = float(value.float().abs().max()) or 1.0
        diff = float((got[key].float() - value.float()).abs().max()) / scale
        if diff > worst[1]:
            worst = (key, diff)
    if worst[1] > TOLERANCE:
        raise UserError(
            f"the packed files do not give back the trained model: {worst[0]} differs by "
            f"{100 * worst[1]:.1f} % of its largest value (is model.checkpoint's decoder the base "
            "decoder given with --base, unchanged?)")
    return worst


def _compare_tokenizers(started: Any, built: Any) -> None:
    a, b = started.tokenizer, built.tokenizer
    same = a.get_vocab() == b.get_vocab() and all(
        getattr(a, name) == getattr(b, name) for name in ("bos_token", "eos_token", "pad_token", "unk_token"))
    if not same:
        raise UserError("the base decoder's tokenizer with the special tokens added is not the run's "
                        "tokenizer: the default model could not rebuild it")
