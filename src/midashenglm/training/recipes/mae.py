"""Encoder pretraining, ``recipe: mae``: Dasheng's masked autoencoder on log-mel patches.

As Dasheng is pretrained (Dinkel et al., 2024, after He et al.'s MAE): every clip is cropped
at random to ``mae.clip_seconds``, its normalised log-mel is cut into the encoder's own
patches (64 mels x 4 frames, 40 ms), ``mae.mask_ratio`` of each clip's patches are hidden,
only the visible ones (plus their positions) go through the encoder blocks, and a small
transformer decoder (``decoder_dim``/``depth``/``heads``; discarded) predicts every patch
from the encoder's outputs and mask tokens. The loss is the mean squared error over the
masked patches only, against per-patch normalised targets (each patch's 256 values minus
their mean, over their standard deviation: MAE's ``norm_pix_loss``).

Only ``audio_encoder`` trains (with its BatchNorm statistics); the whole MiDashengLM
checkpoint is loaded and exported to ``OUTPUT_DIR/model`` with the new encoder, the
projector and decoder untouched, so ``midashenglm probe --encoder RUN/model`` and the
``align`` stage start from it. Clips come from ``data.train`` manifests: training rows (their
audio parts; answers ignored) or corpus rows with an ``audio`` path (``data synth``).
"""

from __future__ import annotations

import math
import os
import signal
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from midashenglm.errors import UserError, stderr_console
from midashenglm.modeling.config import DashengConfig
from midashenglm.modeling.encoder import Block, DashengEncoder
from midashenglm.training import checkpointing, distributed
from midashenglm.training.config import MAESettings, RecipeConfig
from midashenglm.training.lora import set_trainable
from midashenglm.training.metrics import RunLog
from midashenglm.training.optim import build_optimizer, build_scheduler


def prepare_model(model: nn.Module, config: RecipeConfig, *, load_weights: bool = True) -> None:
    """Only the encoder trains (what ``--dry-run`` counts)."""
    set_trainable(model, ["audio_encoder"])


class MAEDecoder(nn.Module):
    """Encoder outputs of the visible patches (B, K, D) -> every patch's prediction (B, P, 256)."""

    def __init__(self, encoder_dim: int, patch_dim: int, max_patches: int, settings: MAESettings) -> None:
        super().__init__()
        dim = settings.decoder_dim
        block_config = DashengConfig(embed_dim=dim, num_heads=settings.decoder_heads, depth=settings.decoder_depth)
        self.embed = nn.Linear(encoder_dim, dim)
        self.mask_token = nn.Parameter(torch.randn(1, 1, dim) * 0.02)
        self.pos_embed = nn.Parameter(torch.randn(1, max_patches, dim) * 0.02)
        self.blocks = nn.ModuleList(Block(block_config) for _ in range(settings.decoder_depth))
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        self.head = nn.Linear(dim, patch_dim)
        for module in self.modules():  # MAE's and Dasheng's initialisation
            if isinstance(module, nn.Linear):
                nn.init.xavier_uniform_(module.weight)
                nn.init.zeros_(module.bias)

    def forward(self, visible: torch.Tensor, ids_keep: torch.Tensor, keep_valid: torch.Tensor,
                valid: torch.Tensor) -> torch.Tensor:
        """``ids_keep`` (B, K) patch index of each visible token, ``keep_valid`` (B, K) False for
        a row's filler tokens, ``valid`` (B, P) True for patches inside the clip."""
        tokens = self.embed(visible)
        mask = self.mask_token.to(tokens.dtype)
        tokens = torch.where(keep_valid[..., None], tokens, mask)  # filler tokens: never their content
        x = mask.expand(valid.shape[0], valid.shape[1], -1).clone()
        x = x.scatter(1, ids_keep[..., None].expand_as(tokens), tokens) + self.pos_embed[:, : valid.shape[1]]
        attn_mask = None if bool(valid.all()) else valid[:, None, None, :]
        for block in self.blocks:
            x = block(x, attn_mask)
        return self.head(self.norm(x))


def random_masking(valid: torch.Tensor, num_patches: int, ratio: float
                   ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per clip, a random ``1 - ratio`` of its ``valid`` (B,) patches stay visible (at least one,
    and at least one is masked). Returns ``ids_keep`` (B, K), ``keep_valid`` (B, K) and
    ``masked`` (B, P), the patches the loss is taken on. Draws from torch's global RNG (CPU)."""
    positions = torch.arange(num_patches)
    keep = (valid * (1 - ratio)).round().long().clamp(min=1).minimum((valid - 1).clamp(min=1))
    noise = torch.rand(len(valid), num_patches).masked_fill(positions >= valid[:, None], 2.0)
    order = noise.argsort(dim=1)  # the clip's patches in random order, then the padding
    rank = order.argsort(dim=1)
    ids_keep = order[:, : int(keep.max())]
    keep_valid = torch.arange(ids_keep.shape[1]) < keep[:, None]
    masked = (rank >= keep[:, None]) & (positions < valid[:, None])
    return ids_keep, keep_valid, masked


def encode_visible(encoder: DashengEncoder, mel: torch.Tensor, ids_keep: torch.Tensor,
                   keep_valid: torch.Tensor) -> torch.Tensor:
    """The encoder on the visible patches only: log-mel (B, 1, 64, T) -> (B, K, D)."""
    x = encoder.patch_embed(mel.to(encoder.dtype)).flatten(2).transpose(1, 2)  # (B, P, D)
    pos = encoder.time_pos_embed[0, :, 0, : x.shape[1]].transpose(0, 1) + encoder.freq_pos_embed[0, :, 0, 0]
    x = (x + pos).gather(1, ids_keep[..., None].expand(-1, -1, x.shape[2]))
    attn_mask = None if bool(keep_valid.all()) else keep_valid[:, None, None, :]
    for block in encoder.blocks:
        x = block(x, attn_mask)
    return encoder.norm(x)


def patchify(mel: torch.Tensor, patch_frames: int) -> torch.Tensor:
    """Log-mel (B, 1, M, T) -> (B, T // patch_frames, M * patch_frames), the patch embedding's layout."""
    batch, _, mels, frames = mel.shape
    count = frames // patch_frames
    x = mel[..., : count * patch_frames].reshape(batch, mels, count, patch_frames)
    return x.permute(0, 2, 1, 3).reshape(batch, count, mels * patch_frames)


def mae_loss(encoder: DashengEncoder, decoder: MAEDecoder, wav: torch.Tensor, lengths: torch.Tensor,
             ratio: float) -> torch.Tensor:
    """Mean squared error over the masked patches of a batch (B, N) of ``lengths`` samples; fp32."""
    mel = encoder.log_mel(wav, lengths)  # BatchNorm over the valid frames (and its statistics)
    patches = patchify(mel.detach(), encoder.config.patch_stride[1])
    valid = (lengths.cpu() // encoder.config.samples_per_patch).clamp(max=patches.shape[1])
    ids_keep, keep_valid, masked = (t.to(wav.device) for t in random_masking(valid, patches.shape[1], ratio))
    pred = decoder(encode_visible(encoder, mel, ids_keep, keep_valid), ids_keep, keep_valid,
                   torch.arange(patches.shape[1], device=wav.device) < valid.to(wav.device)[:, None])
    target = (patches - patches.mean(-1, keepdim=True)) / (patches.var(-1, keepdim=True) + 1e-6).sqrt()
    error = (pred.float() - target).square().mean(-1)
    return (error * masked).sum() / masked.sum()


@dataclass(frozen=True)
class Clip:
    part: dict[str, Any]  # {"path": ...} or {"shard": ..., "key": ...}
    source: str  # manifest:line


def read_clips(manifest: str) -> list[Clip]:
    """Every audio clip of a training or corpus manifest (JSONL or CSV), in order."""
    from midashenglm.data.manifest import read_audio_parts

    return [Clip(part, where) for part, where in read_audio_parts(manifest)]


class MAERecipe:
    """``MAERecipe(config, resume=...).run()``: train ``training.max_steps`` steps, export the model."""

    def __init__(self, config: RecipeConfig, *, resume: bool = False, progress: bool = True) -> None:
        self.config, self.resume, self.show_progress = config, resume, progress
        self.settings = config.mae or MAESettings()
        self.run_dir = Path(config.output_dir)
        self.console = stderr_console()
        self.step, self.position, self.skipped = 0, 0, 0
        self._stop: int | None = None
        self._order: tuple[int, np.ndarray] = (-1, np.zeros(0, dtype=np.int64))

    def notice(self, text: str) -> None:
        self.console.print(text, highlight=False, markup=False)

    def setup(self) -> None:
        from midashenglm.modeling.model import MiDashengLM
        from midashenglm.processing import MiDashengLMProcessor

        cfg, mae = self.config, self.settings
        if int(os.environ.get("WORLD_SIZE", "1")) > 1:
            raise UserError("recipe mae runs in one process: start it without torchrun")
        if checkpointing.list_checkpoints(self.run_dir) and not self.resume:
            raise UserError(f"output_dir {self.run_dir} holds a run: pass --resume to continue it, "
                            "or choose a new output_dir")
        self.device = distributed.resolve_device(cfg.training.device)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        import yaml

        (self.run_dir / "config.yaml").write_text(yaml.safe_dump(cfg.to_dict(), sort_keys=False), encoding="utf-8")
        torch.manual_seed(cfg.training.seed)
        self.model = MiDashengLM.from_pretrained(cfg.model.checkpoint, dtype=cfg.model.dtype)
        self.processor = MiDashengLMProcessor.from_pretrained(cfg.model.checkpoint)
        prepare_model(self.model, cfg)
        enc = self.model.config.audio_encoder_config
        self.crop = int(mae.clip_seconds * enc.sample_rate)
        if (self.crop // enc.hop_length + 1) // enc.patch_stride[1] > enc.window_patches:
            raise UserError(f"mae.clip_seconds {mae.clip_seconds} is longer than the encoder's "
                            f"{enc.window_patches * enc.samples_per_patch / enc.sample_rate:g} s window")
        decoder = MAEDecoder(enc.embed_dim, enc.n_mels * enc.patch_stride[1], enc.window_patches, mae)
        self.net = nn.ModuleDict({"audio_encoder": self.model.audio_encoder, "mae_decoder": decoder})
        self.net.to(self.device).train()
        self.clips = [clip for entry in cfg.data.train for clip in read_clips(entry.manifest)]
        if any(entry.weight != 1 for entry in cfg.data.train):
            self.notice("notice: recipe mae takes every clip once per epoch; data.train weights are not used")
        per_step = mae.batch_size * cfg.training.gradient_accumulation_steps
        if cfg.training.epochs is not None:
            cfg.training.max_steps = max(1, math.ceil(cfg.training.epochs * len(self.clips) / per_step))
        self.notice(f"mae: {len(self.clips):,} clips, {per_step} per step, {cfg.training.max_steps} steps; "
                    f"trainable parameters: encoder {sum(p.numel() for p in self.model.audio_encoder.parameters()):,}"
                    f", MAE decoder {sum(p.numel() for p in decoder.parameters()):,} (discarded)")
        params = [p for p in self.net.parameters() if p.requires_grad]
        self.optimizer = build_optimizer(params, cfg.optimizer, notify=self.notice)
        self.scheduler = build_scheduler(self.optimizer, cfg.schedule, cfg.training.max_steps)
        gpu_bf16 = self.device.type == "cuda" and torch.cuda.is_bf16_supported()
        self.bf16 = (cfg.training.precision == "bf16" and (self.device.type == "cpu" or gpu_bf16)) or (
            cfg.training.precision == "auto" and gpu_bf16)
        self.log = RunLog(self.run_dir, enabled=True, tensorboard=cfg.logging.tensorboard)
        if self.resume:
            self.load_checkpoint()

    # ------------------------------------------------------------------ data
    def next_batch(self) -> tuple[torch.Tensor, torch.Tensor, list[dict[str, Any]]]:
        """The next ``batch_size`` clips of the seeded epoch orders, randomly cropped (torch RNG)
        and zero-padded: waveforms (B, N), lengths (B,), and the clips that could not be read."""
        from midashenglm.audio import AudioError, load_audio
        from midashenglm.data.archive import ShardError, clip_source, describe_part
        from midashenglm.modeling.geometry import MIN_AUDIO_SAMPLES

        waves, failed = [], []
        for _ in range(self.settings.batch_size):
            epoch, index = divmod(self.position, len(self.clips))
            if self._order[0] != epoch:  # each epoch a permutation of every clip, from (seed, epoch)
                self._order = (epoch, np.random.default_rng([self.config.training.seed, epoch]).permutation(len(self.clips)))
            clip = self.clips[self._order[1][index]]
            self.position += 1
            try:
                wave = load_audio(clip_source(clip.part), max_seconds=self.config.data.max_clip_seconds)
            except (AudioError, ShardError, OSError) as err:
                failed.append({"step": self.step + 1, "source": clip.source, "audio": describe_part(clip.part),
                               "message": str(err)})
                continue
            if len(wave) > self.crop:
                start = int(torch.randint(len(wave) - self.crop + 1, ()))
                wave = wave[start : start + self.crop]
            waves.append(np.pad(wave, (0, max(0, MIN_AUDIO_SAMPLES - len(wave)))))
        lengths = torch.tensor([len(w) for w in waves], dtype=torch.long)
        batch = torch.zeros(len(waves), int(lengths.max()) if waves else 0)
        for row, wave in enumerate(waves):
            batch[row, : len(wave)] = torch.from_numpy(wave)
        return batch, lengths, failed

    # ------------------------------------------------------------------ loop
    def run(self) -> Path | None:
        """Set up, train, export; the exported folder (None when stopped by a signal)."""
        from midashenglm.progress import ProgressBar
        from midashenglm.training.recipe import export_model

        self.setup()
        cfg = self.config.training
        start, trained = self.step, 0
        previous = {sig: signal.signal(sig, self._on_signal) for sig in (signal.SIGTERM, signal.SIGINT)}
        try:
            with ProgressBar(cfg.max_steps, "mae", enabled=self.show_progress) as bar:
                bar.advance(self.step)
                while self.step < cfg.max_steps:
                    row = self.train_step()
                    trained += row["loss"] is not None
                    loss = "every clip skipped" if row["loss"] is None else f"loss {row['loss']:.4f}"
                    bar.advance(1, loss + (f", {self.skipped} skipped" if self.skipped else ""))
                    every = self.config.checkpoint.every_steps
                    if self._stop is not None or (every > 0 and self.step % every == 0) or self.step == cfg.max_steps:
                        self.save_checkpoint()
                    if self._stop is not None:
                        self.notice(f"stopped by a signal after step {self.step}; checkpoint saved in "
                                    f"{self.run_dir}: continue with --resume")
                        return None
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
            self.log.close()
        if self.step > start and not trained:
            raise UserError(f"no clip could be read ({self.run_dir / 'skipped.jsonl'} says why); nothing was "
                            "trained or exported")
        target = Path(self.config.export_dir) if self.config.export_dir else self.run_dir / "model"
        export_model(self.model, self.processor, target)
        self.notice(f"exported the model with the pretrained encoder to {target}")
        return target

    def _on_signal(self, signum: int, frame: Any) -> None:
        if self._stop is not None:
            raise KeyboardInterrupt
        self._stop = signum
        self.notice("signal received: finishing this step, saving a checkpoint, then stopping")

    def train_step(self) -> dict[str, Any]:
        cfg = self.config.training
        started, losses, clips, seconds = time.perf_counter(), [], 0, 0.0
        micro = [self.next_batch() for _ in range(cfg.gradient_accumulation_steps)]
        for wav, lengths, failed in micro:
            self.log.write("skipped.jsonl", failed)
            for row in failed[: max(0, 5 - self.skipped)]:
                self.notice(f"skipped {row['audio']} ({row['source']}): {row['message']}")
            self.skipped += len(failed)
            if not len(wav):
                continue
            autocast = torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.bf16)
            with autocast:
                loss = mae_loss(self.net["audio_encoder"], self.net["mae_decoder"], wav.to(self.device),
                                   lengths.to(self.device), self.settings.mask_ratio)
            (loss / len(micro)).backward()
            losses.append(float(loss.detach()))
            clips, seconds = clips + len(wav), seconds + float(lengths.sum()) / 16000
        params = [p for p in self.net.parameters() if p.requires_grad]
        norm = torch.nn.utils.clip_grad_norm_(params, cfg.max_grad_norm or math.inf) if losses else None
        lr = self.scheduler.get_last_lr()[0]
        if losses:
            self.optimizer.step()
        with warnings.catch_warnings():  # a step without clips: no optimiser step, the schedule counts it
            warnings.filterwarnings("ignore", message=".*lr_scheduler.step.*", category=UserWarning)
            self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.step += 1
        took = time.perf_counter() - started
        row = {"step": self.step, "loss": sum(losses) / len(micro) if losses else None, "lr": lr,
               "grad_norm": float(norm) if norm is not None else None, "clips": clips,
               "audio_seconds_per_s": seconds / took, "step_s": took,
               "skipped": sum(len(m[2]) for m in micro), "time": time.time()}
        self.log.write("metrics.jsonl", [row])
        return row

    # ------------------------------------------------------------------ checkpoints
    def save_checkpoint(self) -> None:
        checkpointing.write_rng(checkpointing.begin(self.run_dir, self.step), 0)
        state = {"step": self.step, "recipe": "mae", "checkpoint": self.config.model.checkpoint,
                 "scheduler": self.scheduler.state_dict(), "position": self.position, "skipped": self.skipped,
                 "world_size": 1}
        checkpointing.commit(self.run_dir, self.step, model_state=self.net.state_dict(),
                             optimizer_state=self.optimizer.state_dict(), trainer_state=state,
                             keep_last=self.config.checkpoint.keep_last)

    def load_checkpoint(self) -> None:
        path = checkpointing.latest_checkpoint(self.run_dir)
        if path is None:
            self.notice(f"--resume: no checkpoint in {self.run_dir}; starting at step 0")
            return
        model_state, optim_state, state, rng = checkpointing.load(path, 0)
        if state.get("recipe") != "mae" or state.get("checkpoint") != self.config.model.checkpoint:
            raise UserError(f"--resume: {path} is not an mae run from model.checkpoint={self.config.model.checkpoint}")
        try:
            self.net.load_state_dict(model_state)
            self.optimizer.load_state_dict(optim_state)
        except (RuntimeError, ValueError) as err:
            raise UserError(f"--resume: {path} does not fit this model and mae settings ({err})") from None
        self.scheduler.load_state_dict(state["scheduler"])
        self.step, self.position, self.skipped = int(state["step"]), int(state["position"]), int(state["skipped"])
        self.scheduler.last_epoch = self.step - 1  # this run's schedule (max_steps may have changed)
        self.scheduler.step()
        if rng is not None:
            checkpointing.set_rng_state(rng)
        self.log.truncate_after(self.step)
        self.notice(f"resumed from {path} (step {self.step})")
