"""The training recipe every stage shares: setup model, data, optimiser; loop; export.

The stages (``recipes/align.py``, ``recipes/pretrain.py``, ``recipes/sft.py``) differ
only in what they train (:func:`prepare_model` of each); this module reads top to
bottom as torchtune's recipes do. The loss of an optimiser step is the mean next-token
cross-entropy over every answer token of the step (all micro-batches, all ranks): each
micro-batch's summed loss is divided by the step's label-token count, so 1 process with
``gradient_accumulation_steps`` 2 and 2 processes with 1 compute the same loss and
gradients (SYSTEM.md section 7; tested with torchrun).
"""

from __future__ import annotations

import contextlib
import dataclasses
import importlib
import math
import signal
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from midashenglm.errors import UserError, stderr_console
from midashenglm.training import checkpointing, distributed
from midashenglm.training.config import RecipeConfig
from midashenglm.training.lora import lora_targets, merge_lora, parameter_counts
from midashenglm.training.metrics import RunLog
from midashenglm.training.optim import build_optimizer, build_scheduler, quiet_bitsandbytes

EXPORT_DIR = "model"


def stage_module(config: RecipeConfig) -> Any:
    """The stage's module (``midashenglm.training.recipes.<recipe>``): its ``prepare_model``."""
    return importlib.import_module(f"midashenglm.training.recipes.{config.recipe}")


def load_base_model(config: RecipeConfig, *, device: str | torch.device = "cpu") -> nn.Module:
    """The stage's starting model with what it trains set (``prepare_model`` of the stage)."""
    from midashenglm.modeling.model import MiDashengLM

    model = MiDashengLM.from_pretrained(config.model.checkpoint, dtype=config.model.dtype, device=device)
    stage_module(config).prepare_model(model, config)
    return model


class Recipe:
    """``Recipe(config).run()``: train ``config.training.max_steps`` optimiser steps and export.

    With ``resume`` the newest checkpoint in ``output_dir`` is loaded (model or adapters,
    optimiser, scheduler, sampler position, RNG states, step) and the run continues with
    the next unseen micro-batch; without one it starts at step 0.
    """

    def __init__(self, config: RecipeConfig, *, resume: bool = False, progress: bool = True) -> None:
        self.config = config
        self.resume = resume
        self.show_progress = progress
        self.console = stderr_console()
        self.step = 0
        self._stop_signal: int | None = None
        self._filler: dict[str, torch.Tensor] | None = None
        self._validation: tuple[Any, list[list[int]]] | None = None
        self._skips_shown = 0  # the first few skipped samples are named on the terminal too

    def notice(self, text: str) -> None:
        if self.world.main:
            self.console.print(text, highlight=False, markup=False)

    # ------------------------------------------------------------------ setup
    def setup(self) -> None:
        cfg = self.config
        quiet_bitsandbytes()
        self.world = distributed.init_world(cfg.training.device)
        self.device = self.world.device
        self.run_dir = Path(cfg.output_dir)
        if self.run_dir.exists() and not self.run_dir.is_dir():
            raise UserError(f"output_dir {self.run_dir} is a file; give a folder for the run")
        self._check_run_dir()
        if self.world.main:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            self._write_config()
        distributed.barrier(self.world)
        # The same seed on every rank while the model is built (FSDP2 does not broadcast
        # weights: LoRA's initial A must agree), then one stream per rank (LoRA dropout).
        torch.manual_seed(cfg.training.seed)
        self._setup_model()
        torch.manual_seed(cfg.training.seed + self.world.rank)
        self._setup_data()
        self._setup_optimizer()
        self.log = RunLog(self.run_dir, enabled=self.world.main, tensorboard=cfg.logging.tensorboard)
        if self.resume:
            self._load_checkpoint()

    def _write_config(self) -> None:
        import yaml

        text = yaml.safe_dump(self.config.to_dict(), sort_keys=False)
        (self.run_dir / "config.yaml").write_text(text, encoding="utf-8")

    def _setup_model(self) -> None:
        from midashenglm.processing import MiDashengLMProcessor

        cfg = self.config
        model = load_base_model(cfg)
        self.processor = MiDashengLMProcessor.from_pretrained(cfg.model.checkpoint)
        self._report_parameters(model)
        if cfg.training.gradient_checkpointing:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.to(self.device)
        self.encoder_frozen = not any(p.requires_grad for p in model.audio_encoder.parameters())
        # What a checkpoint holds: trainable weights and every buffer (BatchNorm statistics).
        self.saved_keys = {n for n, p in model.named_parameters() if p.requires_grad}
        self.saved_keys |= {n for n, _ in model.named_buffers()}
        self.model = distributed.wrap_model(model, self.world, cfg.training.distributed)
        self._train_mode()
        gpu_bf16 = self.device.type == "cuda" and torch.cuda.is_bf16_supported()
        use_bf16 = (cfg.training.precision == "bf16" and (self.device.type == "cpu" or gpu_bf16)) or (
            cfg.training.precision == "auto" and gpu_bf16)
        self.autocast = (lambda: torch.autocast(self.device.type, dtype=torch.bfloat16)) if use_bf16 \
            else contextlib.nullcontext
        if cfg.training.precision == "bf16" and not use_bf16:
            self.notice("notice: this GPU has no bf16; training in fp32")

    def _train_mode(self) -> None:
        """Training mode, except a frozen encoder: its BatchNorm statistics stay as loaded."""
        self.model.train()
        if self.encoder_frozen:
            distributed.unwrap(self.model).audio_encoder.eval()

    def _check_run_dir(self) -> None:
        """A new run needs a new folder: mixing two runs' checkpoints and logs loses both."""
        cfg = self.config
        if checkpointing.list_checkpoints(self.run_dir) and not self.resume:
            raise UserError(f"output_dir {self.run_dir} holds a run (checkpoints up to step "
                            f"{checkpointing.latest_checkpoint(self.run_dir).name.split('-')[1].lstrip('0')}): "
                            "pass --resume to continue it, or choose a new output_dir")
        export = Path(cfg.export_dir) if cfg.export_dir else self.run_dir / EXPORT_DIR
        if Path(cfg.model.checkpoint).exists() and export.resolve() == Path(cfg.model.checkpoint).resolve():
            raise UserError(f"export_dir {export} is the starting model.checkpoint: the export would "
                            "replace it; choose another folder")

    def _report_parameters(self, model: nn.Module) -> None:
        counts = parameter_counts(model)
        parts = [f"{name} {c.trainable:,}/{c.total:,}" for name, c in counts.items()]
        self.notice(f"{self.config.recipe}: trainable/total parameters: {', '.join(parts)}")
        targets = lora_targets(model)
        if targets:
            listed = ", ".join(f"{name} x{n}" for name, n in sorted(targets.items()))
            self.notice(f"{self.config.recipe}: LoRA adapters on {sum(targets.values())} modules: {listed}")

    def _setup_data(self) -> None:
        from midashenglm.data.collate import Collator, text_token_counts
        from midashenglm.data.dataset import TrainingDataset
        from midashenglm.data.manifest import read_training_manifest
        from midashenglm.data.sampler import BatchSampler

        cfg = self.config.data
        samples, weights = [], {}
        for entry in cfg.train:
            rows = read_training_manifest(entry.manifest)
            # Rows without a dataset field form a dataset named after their manifest, so
            # each manifest's weight applies to its own rows.
            rows = [dataclasses.replace(r, dataset=Path(entry.manifest).stem) if r.dataset == "default" else r
                    for r in rows]
            for name in {s.dataset for s in rows}:
                if weights.setdefault(name, entry.weight) != entry.weight:
                    raise UserError(f"data.train: dataset {name!r} is given two weights "
                                    f"({weights[name]} and {entry.weight})")
            samples.extend(rows)
        if not samples:
            raise UserError("data.train: the manifests hold no samples")
        self.sampler = BatchSampler(
            samples, text_token_counts(samples, self.processor), max_tokens=cfg.max_tokens,
            max_audio_seconds=cfg.max_audio_seconds, max_batch_size=cfg.max_batch_size,
            weights=weights, length_aware=cfg.length_aware, batch_size=cfg.batch_size,
            seed=self.config.training.seed)
        self.dataset = TrainingDataset(samples, max_seconds=cfg.max_clip_seconds)
        self.collator = Collator(self.processor, max_length=cfg.max_length)
        self.val_samples = read_training_manifest(cfg.validation) if cfg.validation else []
        self.notice(f"data: {len(samples):,} training samples in {len(weights)} dataset(s)"
                    + (f", {len(self.val_samples):,} validation samples" if self.val_samples else ""))

    def _loader(self, dataset: Any, batches: Any) -> torch.utils.data.DataLoader:
        # Its own generator: creating the iterator must not draw from the global RNG, whose
        # state (LoRA dropout) a checkpoint restores.
        generator = torch.Generator().manual_seed(self.config.training.seed)
        return torch.utils.data.DataLoader(dataset, batch_sampler=batches, collate_fn=self.collator,
                                           num_workers=self.config.data.num_workers, generator=generator)

    def _setup_optimizer(self) -> None:
        cfg = self.config
        if cfg.training.epochs is not None:
            per_step = self.world.world_size * cfg.training.gradient_accumulation_steps
            per_round = len(self.sampler.round(0))
            cfg.training.max_steps = max(1, math.ceil(cfg.training.epochs * per_round / per_step))
            self.notice(f"{cfg.training.epochs:g} epochs = {cfg.training.max_steps} optimiser steps "
                        f"({per_round} micro-batches per epoch)")
        params = [p for p in self.model.parameters() if p.requires_grad]
        sharded = self.world.distributed and cfg.training.distributed == "fsdp"
        self.optimizer = build_optimizer(params, cfg.optimizer, sharded=sharded, notify=self.notice)
        self.scheduler = build_scheduler(self.optimizer, cfg.schedule, cfg.training.max_steps)

    # ------------------------------------------------------------------- loop
    def run(self) -> Path | None:
        """Set up, train, export; returns the exported folder (None when stopped by a signal)."""
        self.setup()
        try:
            return self.train()
        finally:
            self.log.close()
            distributed.close_world(self.world)

    def train(self) -> Path | None:
        cfg = self.config.training
        per_step = self.world.world_size * cfg.gradient_accumulation_steps
        batches = iter(self._loader(self.dataset, self.sampler.rank_view(self.world.rank, self.world.world_size)))
        previous = {sig: signal.signal(sig, self._on_signal) for sig in (signal.SIGTERM, signal.SIGINT)}
        from midashenglm.progress import ProgressBar

        trained = skipped = 0
        start = self.step
        try:
            with ProgressBar(cfg.max_steps, f"{self.config.recipe}", enabled=self.show_progress and self.world.main) as bar:
                bar.advance(self.step)
                while self.step < cfg.max_steps:
                    started = time.perf_counter()
                    micro = [next(batches) for _ in range(cfg.gradient_accumulation_steps)]
                    stats = self.train_step(micro)
                    self.sampler.advance(per_step)
                    self.step += 1
                    stats["time_s"] = time.perf_counter() - started
                    self._log_step(stats, micro)
                    trained += stats["label_tokens"] > 0
                    skipped += stats["skipped"]
                    loss = f"loss {stats['loss']:.4f}" if stats["label_tokens"] else "every sample skipped"
                    bar.advance(1, loss + (f", {skipped} skipped" if skipped else ""))
                    stop = distributed.any_rank(self._stop_signal is not None, self.world)
                    if self._due(self.config.validation.every_steps) and self.val_samples:
                        self.validate()
                    if stop or self._due(self.config.checkpoint.every_steps):
                        self.save_checkpoint()
                    if stop:
                        self.notice(f"stopped by a signal after step {self.step}; checkpoint saved in "
                                    f"{self.run_dir}: continue with --resume")
                        return None
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
        if skipped:
            self.notice(f"{skipped} sample(s) skipped over the run: {self.run_dir / 'skipped.jsonl'}")
        if self.step > start and not trained:
            raise UserError(f"no sample could be used: every one was skipped ({self.run_dir / 'skipped.jsonl'} "
                            "says why); nothing was trained or exported")
        if self.val_samples and not self._due(self.config.validation.every_steps):
            self.validate()  # the last step's validation, unless the loop just ran it
        if not self._due(self.config.checkpoint.every_steps):
            self.save_checkpoint()  # likewise the last step's checkpoint
        return self.export()

    def _due(self, every: int) -> bool:
        return every > 0 and (self.step % every == 0 or self.step == self.config.training.max_steps)

    def _on_signal(self, signum: int, frame: Any) -> None:
        if self._stop_signal is not None:  # a second Ctrl-C: stop now
            raise KeyboardInterrupt
        self._stop_signal = signum
        self.notice("signal received: finishing this step, saving a checkpoint, then stopping")

    def train_step(self, micro: list[Any]) -> dict[str, Any]:
        """One optimiser step over this rank's micro-batches; returns the step's global stats."""
        cfg, world = self.config.training, self.world
        local_labels = sum(b.num_label_tokens for b in micro if b.inputs is not None)
        (label_tokens,) = distributed.all_reduce_sum([local_labels], world)
        loss_sum = 0.0
        if label_tokens > 0:
            for i, batch in enumerate(micro):
                inputs, weight = batch.inputs, 1.0
                if inputs is None:  # every sample of it was skipped
                    if not world.distributed:
                        continue
                    # DDP and FSDP need every rank in every forward and backward.
                    inputs, weight = self._filler_inputs(), 0.0
                inputs = {k: v.to(self.device) for k, v in inputs.items()}
                with distributed.no_sync(self.model, i < len(micro) - 1), self.autocast(), \
                        _frozen_batchnorm(self.model, weight == 0.0):
                    loss = answer_loss(self.model, inputs) / label_tokens * weight
                # DDP and FSDP average gradients over ranks; the loss is already the global mean.
                (loss * world.world_size).backward()
                loss_sum += float(loss.detach())
        params = [p for p in self.model.parameters() if p.requires_grad]
        max_norm = cfg.max_grad_norm if cfg.max_grad_norm is not None else math.inf
        norm = torch.nn.utils.clip_grad_norm_(params, max_norm)
        norm = float(norm.full_tensor() if hasattr(norm, "full_tensor") else norm)
        lr = self.scheduler.get_last_lr()[0]
        if label_tokens > 0:
            self.optimizer.step()
        with warnings.catch_warnings():
            # A step whose samples were all skipped has no optimiser step; the schedule still counts it.
            warnings.filterwarnings("ignore", message=".*lr_scheduler.step.*", category=UserWarning)
            self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        distributed.sync_buffers(self.model, world)
        sums = distributed.all_reduce_sum([
            loss_sum,
            sum(len(b.sample_ids) for b in micro),
            sum(b.audio_seconds for b in micro),
            sum(b.num_tokens for b in micro),
            sum(b.padded_tokens for b in micro),
            sum(len(b.skipped) for b in micro),
        ], world)
        loss, samples, audio, tokens, padded, skipped = sums
        return {"loss": loss, "lr": lr, "grad_norm": norm, "samples": int(samples),
                "audio_seconds": audio, "tokens": int(tokens), "label_tokens": int(label_tokens),
                "padding_fraction": 1 - tokens / padded if padded else 0.0, "skipped": int(skipped)}

    def _log_step(self, stats: dict[str, Any], micro: list[Any]) -> None:
        seconds = stats.pop("time_s")
        skipped = [dataclasses.asdict(e) | {"step": self.step} for b in micro for e in b.skipped]
        skipped = [row for rows in distributed.all_gather_objects(skipped, self.world) for row in rows]
        self.log.write("skipped.jsonl", skipped)
        for row in skipped[: max(0, 5 - self._skips_shown)]:
            self.notice(f"skipped {row['id']} ({row['source']}): {row['message']}")
        self._skips_shown += len(skipped)
        if self.config.logging.log_samples:
            ids = [i for b in micro for i in b.sample_ids]
            ids = [i for rows in distributed.all_gather_objects(ids, self.world) for i in rows]
            self.log.write("samples.jsonl", [{"step": self.step, "ids": ids}])
        every = self.config.logging.every_steps
        if every <= 0 or (self.step % every and self.step != self.config.training.max_steps):
            return
        trained = stats["label_tokens"] > 0  # else every sample of the step was skipped: no loss
        row = {"step": self.step, "loss": stats["loss"] if trained else None, "lr": stats["lr"],
               "grad_norm": stats["grad_norm"] if trained else None,
               "samples_per_s": stats["samples"] / seconds,
               "audio_seconds_per_s": stats["audio_seconds"] / seconds,
               "tokens_per_s": stats["tokens"] / seconds, "padding_fraction": stats["padding_fraction"],
               "memory_mib": _memory_mib(self.device), "epochs": self.sampler.epochs(),
               "skipped": stats["skipped"], "time": time.time()}
        self.log.write("metrics.jsonl", [row])

    @torch.no_grad()
    def validate(self) -> float:
        """Mean answer-token loss over the validation manifest (one pass, or ``max_batches``)."""
        from midashenglm.data.collate import text_token_counts
        from midashenglm.data.dataset import TrainingDataset
        from midashenglm.data.sampler import BatchSampler

        if self._validation is None:  # built once: the same batches at every validation
            cfg = self.config.data
            sampler = BatchSampler(self.val_samples, text_token_counts(self.val_samples, self.processor),
                                   max_tokens=cfg.max_tokens, max_audio_seconds=cfg.max_audio_seconds,
                                   max_batch_size=cfg.max_batch_size, seed=self.config.training.seed)
            limit = self.config.validation.max_batches
            self._validation = (TrainingDataset(self.val_samples, max_seconds=cfg.max_clip_seconds),
                                sampler.round(0)[:limit])  # one pass: every validation sample once
        dataset, batches = self._validation
        world = self.world
        mine = batches[world.rank::world.world_size]
        # Every rank runs as many forwards as the busiest one (FSDP gathers in each).
        rounds = -(-len(batches) // world.world_size)
        self.model.eval()
        total = tokens = 0.0
        done = 0
        for batch in self._loader(dataset, mine):
            done += 1
            if batch.inputs is not None:
                inputs = {k: v.to(self.device) for k, v in batch.inputs.items()}
                with self.autocast():
                    total += float(answer_loss(self.model, inputs))
                tokens += batch.num_label_tokens
            elif world.distributed:
                self._filler_forward()
        for _ in range(rounds - done if world.distributed else 0):
            self._filler_forward()
        self._train_mode()
        total, tokens = distributed.all_reduce_sum([total, tokens], self.world)
        value = total / tokens if tokens else float("nan")
        row_value = value if tokens else None  # JSON has no NaN
        self.log.write("metrics.jsonl", [{"step": self.step, "val_loss": row_value, "time": time.time()}])
        self.notice(f"step {self.step}: validation loss {value:.4f}")
        return value

    def _filler_inputs(self) -> dict[str, torch.Tensor]:
        """0.2 s of silence and a one-token answer: what a rank without a batch runs (at weight
        0) so that it stays in step with the others' collective operations."""
        if self._filler is None:
            from midashenglm.modeling.geometry import MIN_AUDIO_SAMPLES

            silence = {"type": "audio", "audio": np.zeros(MIN_AUDIO_SAMPLES, np.float32), "sampling_rate": 16000}
            conversation = [{"role": "user", "content": [silence, {"type": "text", "text": "."}]},
                            {"role": "assistant", "content": "."}]
            self._filler = dict(self.collator.encode([conversation]))
        return self._filler

    @torch.no_grad()
    def _filler_forward(self) -> None:
        inputs = {k: v.to(self.device) for k, v in self._filler_inputs().items()}
        with self.autocast():
            answer_loss(self.model, inputs)

    # ------------------------------------------------------- checkpoints, export
    def _state_dicts(self) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_state_dict

        options = StateDictOptions(full_state_dict=True, cpu_offload=True)
        model_state, optim_state = get_state_dict(self.model, self.optimizer, options=options)
        return {k: v for k, v in model_state.items() if k in self.saved_keys}, optim_state

    def save_checkpoint(self) -> None:
        if self.world.main:
            checkpointing.begin(self.run_dir, self.step)
        distributed.barrier(self.world)
        checkpointing.write_rng(checkpointing.staging_dir(self.run_dir, self.step), self.world.rank)
        model_state, optim_state = self._state_dicts()
        distributed.barrier(self.world)
        if self.world.main:
            state = {"step": self.step, "recipe": self.config.recipe, "checkpoint": self.config.model.checkpoint,
                     "scheduler": self.scheduler.state_dict(),
                     "sampler": self.sampler.state_dict(), "world_size": self.world.world_size}
            checkpointing.commit(self.run_dir, self.step, model_state=model_state, optimizer_state=optim_state,
                                 trainer_state=state, keep_last=self.config.checkpoint.keep_last)
        distributed.barrier(self.world)

    def _load_checkpoint(self) -> None:
        from torch.distributed.checkpoint.state_dict import StateDictOptions, set_state_dict

        path = checkpointing.latest_checkpoint(self.run_dir)
        if path is None:
            self.notice(f"--resume: no checkpoint in {self.run_dir}; starting at step 0")
            return
        model_state, optim_state, state, rng = checkpointing.load(path, self.world.rank)
        started = state.get("checkpoint", self.config.model.checkpoint)
        if started != self.config.model.checkpoint:
            raise UserError(f"--resume: {path} trained from model.checkpoint={started}, not "
                            f"{self.config.model.checkpoint}: frozen weights would come from another model")
        if state.get("recipe") != self.config.recipe:
            raise UserError(f"--resume: {path} is a {state.get('recipe')} checkpoint, not {self.config.recipe}")
        set_state_dict(self.model, self.optimizer, model_state_dict=model_state, optim_state_dict=optim_state,
                       options=StateDictOptions(full_state_dict=True, strict=False))
        self.scheduler.load_state_dict(state["scheduler"])
        self.sampler.load_state_dict(state["sampler"])
        self.step = int(state["step"])
        # The lr of the next step from this run's schedule (max_steps may have changed).
        self.scheduler.last_epoch = self.step - 1
        self.scheduler.step()
        if rng is not None and state.get("world_size") == self.world.world_size:
            checkpointing.set_rng_state(rng)
        self.log.truncate_after(self.step)
        self.notice(f"resumed from {path} (step {self.step})")

    def export(self) -> Path:
        """Merge LoRA into the decoder and write the published layout to ``RUN_DIR/model``."""
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

        target = Path(self.config.export_dir) if self.config.export_dir else self.run_dir / EXPORT_DIR
        model = distributed.unwrap(self.model)
        if self.world.distributed and self.config.training.distributed == "fsdp":
            full = get_model_state_dict(self.model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
            if self.world.main:
                model = load_base_model(self.config)
                model.load_state_dict(full)
        if self.world.main:
            export_model(model, self.processor, target)
            self.notice(f"exported the trained model to {target}")
        distributed.barrier(self.world)
        return target


@contextlib.contextmanager
def _frozen_batchnorm(model: nn.Module, frozen: bool) -> Any:
    """The encoder's BatchNorm in eval mode (running statistics untouched) while ``frozen``."""
    bn = distributed.unwrap(model).audio_encoder.init_bn
    was_training = bn.training
    if frozen:
        bn.eval()
    try:
        yield
    finally:
        bn.train(was_training)


def answer_loss(model: nn.Module, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
    """Summed next-token cross-entropy over the answer tokens of a batch (fp32).

    The decoder computes logits only at the positions that predict an answer token (the
    union over the rows: with left padding, the last few positions), through transformers'
    ``logits_to_keep``; the full (tokens x vocabulary) logits, the largest activation of a
    7B step, are never formed. Equal to transformers' causal-LM loss with
    ``reduction="sum"`` (tested).
    """
    labels = inputs["labels"]
    targets = labels[:, 1:]
    keep = (targets != -100).any(dim=0).nonzero().squeeze(1)  # positions t predicting t + 1
    model_inputs = {k: v for k, v in inputs.items() if k != "labels"}
    logits = model(**model_inputs, logits_to_keep=keep, use_cache=False).logits
    return torch.nn.functional.cross_entropy(
        logits.float().flatten(0, 1), targets[:, keep].flatten(), ignore_index=-100, reduction="sum")


def export_model(model: nn.Module, processor: Any, target: Path) -> Path:
    """Write ``model`` (LoRA merged) and the processor into ``target``.

    The files are written to a staging folder that then takes ``target``'s place; folders
    inside an earlier ``target`` (``finetune`` keeps its run in ``OUT/training``) move over.
    """
    import shutil

    merge_lora(model)
    disable = getattr(model, "activation_checkpointing_disable", None) or model.gradient_checkpointing_disable
    disable()
    staging = target.with_name(target.name + ".partial")
    shutil.rmtree(staging, ignore_errors=True)
    model.save_pretrained(staging)
    processor.save_pretrained(staging)
    if target.exists():
        previous = target.with_name(target.name + ".previous")
        shutil.rmtree(previous, ignore_errors=True)
        target.rename(previous)
        staging.rename(target)
        for entry in previous.iterdir():
            if entry.is_dir() and not (target / entry.name).exists():
                entry.rename(target / entry.name)
        shutil.rmtree(previous)
    else:
        staging.rename(target)
    return target


def _memory_mib(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    import psutil

    return psutil.Process().memory_info().rss / 2**20
