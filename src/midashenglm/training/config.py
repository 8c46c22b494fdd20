"""Recipe configs: one YAML per stage (``configs/``), overridden by ``key=value`` arguments.

torchtune's convention: the YAML names every setting a recipe reads, a command line
override ``optimizer.lr=3e-5`` replaces one of them (the value is read as YAML, so
``3e-5``, ``true``, ``null`` and ``[q_proj,v_proj]`` mean what they look like). An
unknown key, a value of the wrong type or a missing required value is a
:class:`~midashenglm.errors.UserError` naming it and the file.
"""

from __future__ import annotations

import dataclasses
import os
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from midashenglm.errors import UserError

STAGES = ("align", "pretrain", "sft", "mae")


@dataclass
class ModelConfig:
    checkpoint: str = ""  # a MiDashengLM folder or Hub id the stage starts from
    dtype: str = "float32"  # storage dtype of the weights while training
    encoder_from: str | None = None  # pretrain: take audio_encoder.* (and its BatchNorm) from align's export


@dataclass
class LoraSettings:
    r: int = 8
    alpha: int = 32
    dropout: float = 0.1
    # peft's target_modules: module names, or "all-linear" (every linear layer of the decoder but lm_head)
    target_modules: list[str] | str = field(default_factory=lambda: ["q_proj", "v_proj"])


@dataclass
class DatasetEntry:
    manifest: str = ""
    weight: float = 1.0  # per round this dataset gives round(weight * its size) samples


@dataclass
class DataConfig:
    train: list[DatasetEntry] = field(default_factory=list)
    validation: str | None = None
    max_tokens: int = 8192  # padded decoder tokens per micro-batch (rows x longest)
    max_audio_seconds: float | None = None  # padded audio per micro-batch (rows x longest)
    max_batch_size: int | None = None
    length_aware: bool = True  # False: fixed-size random batches of batch_size
    batch_size: int | None = None
    max_clip_seconds: float = 30.0  # longer clips are skipped (and counted)
    max_length: int | None = None  # longer sequences are skipped (and counted)
    num_workers: int = 0


@dataclass
class OptimizerConfig:
    name: str = "adamw8bit"  # adamw8bit (bitsandbytes) | adamw (torch)
    lr: float = 1e-5
    weight_decay: float = 0.1
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    eps: float = 1e-8


@dataclass
class ScheduleConfig:
    warmup_steps: int = 1000  # linear from 0
    warmup_ratio: float | None = None  # instead of warmup_steps: this fraction of max_steps
    min_lr_ratio: float = 0.1  # cosine decays to this fraction of the peak


@dataclass
class TrainingConfig:
    max_steps: int = 1000
    # When set, max_steps = ceil(epochs x micro-batches of the sampler's first round / (ranks x accumulation))
    epochs: float | None = None
    gradient_accumulation_steps: int = 1
    max_grad_norm: float | None = 1.0
    precision: str = "auto"  # bf16 (autocast), fp32, or auto: bf16 on a GPU that has it, else fp32
    gradient_checkpointing: bool = False
    seed: int = 0
    device: str = "auto"
    distributed: str = "ddp"  # ddp | fsdp (only used under torchrun with more than 1 process)


@dataclass
class CheckpointConfig:
    every_steps: int = 500
    keep_last: int = 3


@dataclass
class LoggingConfig:
    every_steps: int = 1
    tensorboard: bool = True  # when tensorboard is installed
    log_samples: bool = False  # write the ids of every step's samples to samples.jsonl


@dataclass
class ValidationConfig:
    every_steps: int = 500
    max_batches: int | None = 50


@dataclass
class MAESettings:
    """``mae:`` of ``recipe: mae`` (masked-autoencoder pretraining of the encoder, recipes/mae.py)."""

    mask_ratio: float = 0.75  # share of each clip's patches hidden from the encoder
    decoder_dim: int = 128  # the small transformer that reconstructs them (discarded)
    decoder_depth: int = 2
    decoder_heads: int = 4
    clip_seconds: float = 10.0  # random crop per clip (at most one 10.08 s encoder window)
    batch_size: int = 16  # clips per micro-batch


@dataclass
class RecipeConfig:
    recipe: str = ""
    output_dir: str = ""
    export_dir: str | None = None  # where the trained model is written; default OUTPUT_DIR/model
    model: ModelConfig = field(default_factory=ModelConfig)
    trainable: list[str] = field(default_factory=list)  # full-weight components: audio_encoder, audio_projector, decoder
    lora: LoraSettings | None = None
    mae: MAESettings | None = None  # recipe mae only
    data: DataConfig = field(default_factory=DataConfig)
    optimizer: OptimizerConfig = field(default_factory=OptimizerConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    training: TrainingConfig = field(default_factory=TrainingConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    logging: LoggingConfig = field(default_factory=LoggingConfig)
    validation: ValidationConfig = field(default_factory=ValidationConfig)
    source: str = field(default="", metadata={"internal": True})

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data.pop("source")
        return data


def load_config(path: str | os.PathLike, overrides: list[str] | tuple[str, ...] = (), *,
                need_data: bool = True) -> RecipeConfig:
    """Read a recipe YAML and apply ``key=value`` overrides.

    Relative paths in ``model.*``, ``data.*`` and ``output_dir`` resolve against the YAML's
    folder (overrides: against the current directory), so a config and its manifests move
    together. Raises :class:`UserError` for a missing file, bad YAML, an unknown key, a
    wrong type or a missing required setting.
    """
    import yaml

    path = Path(path)
    if not path.is_file():
        raise UserError(f"config {path}: no such file")
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except (yaml.YAMLError, UnicodeDecodeError) as err:
        raise UserError(f"config {path}: not valid YAML ({' '.join(str(err).split())})") from None
    if not isinstance(raw, dict):
        raise UserError(f"config {path}: the top level must be a mapping of settings")
    _resolve_paths(raw, path.parent)
    for item in overrides:
        _apply_override(raw, item, str(path))
    config = _build(RecipeConfig, raw, str(path), "")
    config.source = str(path)
    _check(config, str(path), need_data=need_data)
    return config


def _apply_override(raw: dict[str, Any], item: str, where: str) -> None:
    import yaml

    key, sep, text = item.partition("=")
    if not sep or not key.strip():
        raise UserError(f"override {item!r}: write key=value, e.g. optimizer.lr=3e-5")
    try:
        value = yaml.safe_load(text) if text.strip() else None
    except yaml.YAMLError:
        value = text
    parts = key.strip().split(".")
    node = raw
    for part in parts[:-1]:
        child = node.get(part)
        if child is None:
            child = node[part] = {}
        if not isinstance(child, dict):
            raise UserError(f"override {item!r}: {part} is not a group of settings")
        node = child
    if parts[-1] in PATH_KEYS and isinstance(value, str):
        value = _local_path(value, Path.cwd())
    if key.strip() == "data.train" and isinstance(value, str):
        value = [{"manifest": _local_path(value, Path.cwd())}]
    if key.strip() == "data.train" and isinstance(value, list):
        value = [{**e, "manifest": _local_path(e["manifest"], Path.cwd())}
                 if isinstance(e, dict) and isinstance(e.get("manifest"), str) else e for e in value]
    node[parts[-1]] = value


PATH_KEYS = ("checkpoint", "encoder_from", "validation", "output_dir", "export_dir", "manifest")


def _local_path(value: Any, base: Path) -> Any:
    """``value`` resolved against ``base``; a Hub id ("org/name") stays as it is unless a
    folder of that name exists there."""
    if not isinstance(value, str) or not value or Path(value).is_absolute():
        return value
    candidate = (base / value).resolve()
    looks_like_hub_id = value.count("/") == 1 and not value.startswith(".")
    return value if looks_like_hub_id and not candidate.exists() else str(candidate)


def _resolve_paths(raw: dict[str, Any], base: Path) -> None:
    def local(value: Any) -> Any:
        return _local_path(value, base)

    for key in ("output_dir", "export_dir"):
        if key in raw:
            raw[key] = local(raw[key])
    model = raw.get("model")
    if isinstance(model, dict):
        for key in ("checkpoint", "encoder_from"):
            if key in model:
                model[key] = local(model[key])
    data = raw.get("data")
    if isinstance(data, dict):
        if isinstance(data.get("train"), str):
            data["train"] = [{"manifest": data["train"]}]
        for entry in data.get("train") or []:
            if isinstance(entry, dict) and "manifest" in entry:
                entry["manifest"] = local(entry["manifest"])
        if "validation" in data:
            data["validation"] = local(data["validation"])


def _build(cls: type, raw: Any, where: str, prefix: str) -> Any:
    if not isinstance(raw, dict):
        raise UserError(f"config {where}: {prefix.rstrip('.') or 'the top level'} must be a mapping")
    fields = {f.name: f for f in dataclasses.fields(cls) if not f.metadata.get("internal")}
    unknown = sorted(set(raw) - set(fields))
    if unknown:
        names = ", ".join(prefix + name for name in unknown)
        raise UserError(f"config {where}: unknown setting {names} (known: "
                        f"{', '.join(prefix + name for name in fields)})")
    hints = typing.get_type_hints(cls)
    values = {name: _value(hints[name], raw[name], where, prefix + name) for name in raw}
    return cls(**values)


def _value(hint: Any, value: Any, where: str, name: str) -> Any:
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        options = typing.get_args(hint)
        if value is None and type(None) in options:
            return None
        errors = []
        for option in options:
            if option is type(None):
                continue
            try:
                return _value(option, value, where, name)
            except UserError as err:
                errors.append(err)
        raise errors[0]
    if dataclasses.is_dataclass(hint):
        return _build(hint, {} if value is None else value, where, name + ".")
    if origin is list:
        (item,) = typing.get_args(hint)
        if not isinstance(value, list):
            raise UserError(f"config {where}: {name} must be a list (got {value!r})")
        return [_value(item, v, where, f"{name}[{i}]") for i, v in enumerate(value)]
    if hint is float and isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if hint is float and isinstance(value, str):
        try:
            return float(value)  # YAML 1.1 reads "1e-5" (no dot) as a string
        except ValueError:
            pass
    if hint in (int, str, bool) and type(value) is hint:
        return value
    kind = {int: "an integer", float: "a number", str: "a text", bool: "true or false"}.get(hint, str(hint))
    raise UserError(f"config {where}: {name} must be {kind} (got {value!r})")


def _check(config: RecipeConfig, where: str, *, need_data: bool = True) -> None:
    def need(ok: bool, message: str) -> None:
        if not ok:
            raise UserError(f"config {where}: {message}")

    need(config.recipe in STAGES, f"recipe must be one of {', '.join(STAGES)} (got {config.recipe!r})")
    need(bool(config.output_dir), "output_dir is required")
    need(bool(config.model.checkpoint), "model.checkpoint is required (a folder or Hub id)")
    need(bool(config.data.train) or not need_data, "data.train needs at least one manifest")
    for i, entry in enumerate(config.data.train):
        need(bool(entry.manifest), f"data.train[{i}].manifest is required")
        need(entry.weight >= 0, f"data.train[{i}].weight must be >= 0")
    known = ("audio_encoder", "audio_projector", "decoder")
    for name in config.trainable:
        need(name in known, f"trainable: unknown component {name!r} (known: {', '.join(known)})")
    need(config.optimizer.name in ("adamw8bit", "adamw"), "optimizer.name must be adamw8bit or adamw")
    need(config.optimizer.lr > 0, "optimizer.lr must be > 0")
    need(config.optimizer.weight_decay >= 0, "optimizer.weight_decay must be >= 0")
    need(len(config.optimizer.betas) == 2 and all(0 <= b < 1 for b in config.optimizer.betas),
         "optimizer.betas must be two numbers in [0, 1), e.g. [0.9, 0.999]")
    need(config.schedule.warmup_steps >= 0, "schedule.warmup_steps must be >= 0")
    need(config.schedule.warmup_ratio is None or 0 <= config.schedule.warmup_ratio <= 1,
         "schedule.warmup_ratio must be in [0, 1]")
    need(0 <= config.schedule.min_lr_ratio <= 1, "schedule.min_lr_ratio must be in [0, 1]")
    need(config.model.dtype in ("float32", "bfloat16", "float16"),
         f"model.dtype must be float32, bfloat16 or float16 (got {config.model.dtype!r})")
    device = config.training.device
    need(device in ("auto", "cpu", "mps", "cuda") or (device.startswith("cuda:") and device[5:].isdigit()),
         f"training.device must be auto, cpu, cuda, cuda:N or mps (got {device!r})")
    need(config.data.max_tokens > 0, "data.max_tokens must be > 0")
    for name in ("batch_size", "max_batch_size", "max_length"):
        value = getattr(config.data, name)
        need(value is None or value > 0, f"data.{name} must be > 0 (or null)")
    need(config.validation.max_batches is None or config.validation.max_batches > 0,
         "validation.max_batches must be > 0 (or null: the whole validation set)")
    need(config.training.precision in ("auto", "bf16", "fp32"), "training.precision must be auto, bf16 or fp32")
    need(config.training.distributed in ("ddp", "fsdp"), "training.distributed must be ddp or fsdp")
    need(config.training.max_steps > 0, "training.max_steps must be > 0")
    need(config.training.epochs is None or config.training.epochs > 0, "training.epochs must be > 0")
    need(config.training.gradient_accumulation_steps > 0, "training.gradient_accumulation_steps must be > 0")
    need(config.checkpoint.keep_last > 0, "checkpoint.keep_last must be > 0")
    need(config.data.length_aware or bool(config.data.batch_size),
         "data.batch_size is required when data.length_aware is false")
    need(config.mae is None or config.recipe == "mae", "the mae section belongs to recipe mae only")
    if config.mae is not None:
        mae = config.mae
        need(0 < mae.mask_ratio < 1, "mae.mask_ratio must be in (0, 1)")
        need(mae.decoder_dim > 0 and mae.decoder_depth > 0 and mae.decoder_heads > 0
             and mae.decoder_dim % mae.decoder_heads == 0,
             "mae.decoder_dim, decoder_depth, decoder_heads must be > 0, decoder_dim a multiple of decoder_heads")
        need(0.2 <= mae.clip_seconds <= 10.08, "mae.clip_seconds must be in [0.2, 10.08] (one encoder window)")
        need(mae.batch_size > 0, "mae.batch_size must be > 0")
    if config.lora is not None:
        need(config.lora.r > 0, "lora.r must be > 0")
        need(0 <= config.lora.dropout < 1, "lora.dropout must be in [0, 1)")
        need("decoder" not in config.trainable, "trainable: with lora the decoder's full weights stay frozen "
             "(remove decoder, or set lora: null for full training)")
