"""Dasheng audio encoder (SYSTEM.md section 3).

A ViT over log-mel patches that span all mel bins and 40 ms, so the token
sequence is purely temporal. Long inputs are cut into independent windows of
``target_length // 4`` patches (10.08 s). Because windows never see each other,
a padded batch is flattened into the windows that hold audio: one 30 s clip and
seven 2 s clips cost 3 + 7 = 10 windows, not 8 x 3 = 24.

Module attribute names are the checkpoint key names (``audio_encoder.*``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from midashenglm.modeling.config import DashengConfig
from midashenglm.modeling.frontend import LogMelFrontend


class PatchEmbed(nn.Module):
    def __init__(self, config: DashengConfig) -> None:
        super().__init__()
        self.proj = nn.Conv2d(
            config.input_channels,
            config.embed_dim,
            kernel_size=config.patch_size,
            stride=config.patch_stride,
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x)


class LayerScale(nn.Module):
    def __init__(self, dim: int, init_values: float) -> None:
        super().__init__()
        self.gamma = nn.Parameter(init_values * torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.gamma


class Attention(nn.Module):
    def __init__(self, dim: int, num_heads: int, qkv_bias: bool) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor, attn_mask: torch.Tensor | None = None) -> torch.Tensor:
        batch, length, dim = x.shape
        qkv = self.qkv(x).reshape(batch, length, 3, self.num_heads, dim // self.num_heads)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)
        x = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask)
        return self.proj(x.transpose(1, 2).reshape(batch, length, dim))


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class Block(nn.Module):
    """Pre-norm transformer block with optional LayerScale."""

    def __init__(self, config: DashengConfig) -> None:
        super().__init__()
        dim = config.embed_dim
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = Attention(dim, config.num_heads, config.qkv_bias)
        self.ls1 = LayerScale(dim, config.init_values) if config.init_values else nn.Identity()
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = Mlp(dim, int(dim * config.mlp_ratio))
        self.ls2 = LayerScale(dim, config.init_values) if config.init_values else nn.Identity()

    def forward(self, x: torch.Tensor, attn_mask: torch.Tensor | None = None) -> torch.Tensor:
        x = x + self.ls1(self.attn(self.norm1(x), attn_mask))
        return x + self.ls2(self.mlp(self.norm2(x)))


class DashengEncoder(nn.Module):
    """``audio_encoder(input_values, audio_length) -> (features, mask)``.

    ``features`` is (B, T, D) with T the patch count of the padded batch;
    ``mask`` is (B, T) bool, True where a frame lies inside its clip
    (``audio_length // 640`` frames), or None when no lengths were given.
    """

    def __init__(self, config: DashengConfig) -> None:
        super().__init__()
        self.config = config
        self.front_end = LogMelFrontend(
            n_fft=config.n_fft,
            win_length=config.win_length,
            hop_length=config.hop_length,
            n_mels=config.n_mels,
            sample_rate=config.sample_rate,
            f_min=config.f_min,
            f_max=config.f_max,
            center=config.center,
        )
        self.init_bn = nn.BatchNorm2d(config.n_mels, momentum=0.01)
        self.patch_embed = PatchEmbed(config)
        grid_t = config.target_length // config.patch_stride[1]
        grid_f = config.n_mels // config.patch_stride[0]
        self.time_pos_embed = nn.Parameter(torch.randn(1, config.embed_dim, 1, grid_t) * 0.02)
        self.freq_pos_embed = nn.Parameter(torch.randn(1, config.embed_dim, grid_f, 1) * 0.02)
        self.blocks = nn.ModuleList(Block(config) for _ in range(config.depth))
        self.norm = nn.LayerNorm(config.embed_dim, eps=1e-6)
        # Set by transformers' ``gradient_checkpointing_enable()`` / ``..._disable()`` on
        # MiDashengLM (it sets every sub-module that has this attribute), or directly for
        # an encoder trained alone: recompute each block in the backward pass.
        self.gradient_checkpointing = False
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Dasheng's initialisation: xavier-uniform linears, zero biases, unit norms."""
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.xavier_uniform_(module.weight)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
            elif isinstance(module, nn.LayerNorm):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)

    @property
    def dtype(self) -> torch.dtype:
        return self.time_pos_embed.dtype

    def log_mel(self, input_values: torch.Tensor, audio_length: torch.Tensor | None) -> torch.Tensor:
        """Normalised log-mel (B, 1, n_mels, frames) in fp32, whatever the model's dtype.

        ``input_values`` (B, N) waveforms, ``audio_length`` (B,) samples per clip (None: all N).
        In eval mode ``init_bn`` applies its running statistics. In training mode (or
        without running statistics) it normalises with the mean and variance of the
        *valid* frames only (``1 + length // hop`` per clip): padding a batch changes
        neither the normalised values of the valid frames nor the running statistics,
        which are updated as ``nn.BatchNorm2d`` does (momentum, unbiased variance,
        ``num_batches_tracked``). Always fp32, with autocast disabled.
        """
        mel = self.front_end(input_values, audio_length)  # (B, n_mels, frames), fp32
        bn = self.init_bn
        device_type = mel.device.type if mel.device.type in ("cuda", "cpu", "mps") else "cpu"
        with torch.autocast(device_type=device_type, enabled=False):
            weight = bn.weight.float() if bn.weight is not None else None
            bias = bn.bias.float() if bn.bias is not None else None
            if bn.training or not bn.track_running_stats or bn.running_mean is None:
                mel = self._batch_norm_valid_frames(mel, audio_length, weight, bias)
            else:
                mel = F.batch_norm(
                    mel,  # the mel axis is BatchNorm's channel axis
                    bn.running_mean.float(),
                    bn.running_var.float(),
                    weight,
                    bias,
                    training=False,
                    eps=bn.eps,
                )
        return mel.unsqueeze(1)

    def _batch_norm_valid_frames(
        self,
        mel: torch.Tensor,
        audio_length: torch.Tensor | None,
        weight: torch.Tensor | None,
        bias: torch.Tensor | None,
    ) -> torch.Tensor:
        """BatchNorm in training mode over the frames inside each clip (mel: (B, n_mels, T))."""
        bn = self.init_bn
        batch, _, total = mel.shape
        if audio_length is None:
            valid = torch.ones(batch, total, dtype=torch.bool, device=mel.device)
        else:
            lengths = audio_length.to(device=mel.device, dtype=torch.long).reshape(batch)
            frames = self.front_end.num_frames(lengths)
            valid = torch.arange(total, device=mel.device)[None, :] < frames[:, None]
        inside = valid[:, None, :]  # (B, 1, T)
        count = valid.sum()
        # Two passes (mean, then centred squares) keep fp32 exact enough for dB values
        # around -50 with a spread of a few dB; ``where``, not a product, so that no
        # value of a padded frame can leak in.
        mean = torch.where(inside, mel, 0.0).sum(dim=(0, 2)) / count
        centred = torch.where(inside, mel - mean[None, :, None], 0.0)
        var = centred.square().sum(dim=(0, 2)) / count
        out = (mel - mean[None, :, None]) * torch.rsqrt(var + bn.eps)[None, :, None]
        if weight is not None:
            out = out * weight[None, :, None]
        if bias is not None:
            out = out + bias[None, :, None]

        if bn.training and bn.track_running_stats and bn.running_mean is not None:
            with torch.no_grad():
                bn.num_batches_tracked.add_(1)
                if bn.momentum is None:  # cumulative moving average, as nn.BatchNorm
                    factor = 1.0 / float(bn.num_batches_tracked)
                else:
                    factor = bn.momentum
                n = count.to(var.dtype)  # a tensor: no device-to-host sync per step
                unbiased = var.detach() * n / (n - 1.0).clamp_min(1.0)
                bn.running_mean.copy_(torch.lerp(bn.running_mean.float(), mean.detach(), factor))
                bn.running_var.copy_(torch.lerp(bn.running_var.float(), unbiased, factor))
        return out

    def forward(
        self, input_values: torch.Tensor, audio_length: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        if input_values.ndim == 1:
            input_values = input_values.unsqueeze(0)
        batch, total = input_values.shape
        device = input_values.device
        lengths = (
            torch.full((batch,), total, dtype=torch.long, device=device)
            if audio_length is None
            else audio_length.to(device=device, dtype=torch.long).reshape(batch)
        )
        if int(lengths.max()) > total:
            raise ValueError(
                f"audio_length {int(lengths.max())} exceeds the input's {total} samples"
            )

        x = self.patch_embed(self.log_mel(input_values, lengths).to(self.dtype))  # (B, D, 1, T)
        x = x.flatten(2).transpose(1, 2)  # (B, T, D)
        num_patches = x.shape[1]
        hop, stride = self.config.hop_length, self.config.patch_stride[1]
        # Frames each clip has when run alone, and how many of them hold audio.
        clip_patches = ((lengths // hop + 1) // stride).clamp(max=num_patches)
        valid_patches = lengths // (hop * stride)
        # Without lengths every frame is audio, as in the reference without x_length.
        attend = clip_patches if audio_length is None else valid_patches
        features = self._forward_windows(x, clip_patches, attend)
        mask = None
        if audio_length is not None:
            mask = torch.arange(num_patches, device=device)[None, :] < valid_patches[:, None]
        return features, mask

    def _forward_windows(
        self, x: torch.Tensor, clip_patches: torch.Tensor, valid_patches: torch.Tensor
    ) -> torch.Tensor:
        """Run every non-empty 10.08 s window of every clip as one batch."""
        batch, num_patches, dim = x.shape
        win = self.config.window_patches
        num_windows = -(-num_patches // win)
        pos = self.time_pos_embed[0, :, 0, :].transpose(0, 1) + self.freq_pos_embed[0, :, 0, 0]

        # Pad time to whole windows, then view as (B, windows, win, D).
        x = F.pad(x, (0, 0, 0, num_windows * win - num_patches))
        x = x.view(batch, num_windows, win, dim)
        starts = torch.arange(num_windows, device=x.device) * win
        queries = (clip_patches[:, None] - starts).clamp(0, win)  # frames to compute per window
        keys = (valid_patches[:, None] - starts).clamp(0, win)  # frames that may be attended
        selected = queries > 0
        windows = x[selected]  # (W, win, D)
        n_queries, n_keys = queries[selected], keys[selected]
        length = int(n_queries.max()) if windows.shape[0] else 0
        windows = windows[:, :length] + pos[:length].to(windows.dtype)

        # Additive mask. Keys of the window beyond its clip: -inf (they do not exist
        # when the clip runs alone). Keys inside the clip but past its audio: a huge
        # negative number, not -inf, so that a window with no audio at all averages
        # its frames uniformly, exactly as the reference's masked_fill(finfo.min) does.
        idx = torch.arange(length, device=x.device)
        big = torch.finfo(windows.dtype).min / 2
        attn_mask = torch.zeros(windows.shape[0], length, dtype=windows.dtype, device=x.device)
        attn_mask = attn_mask.masked_fill(idx[None, :] >= n_keys[:, None], big)
        attn_mask = attn_mask.masked_fill(idx[None, :] >= n_queries[:, None], float("-inf"))
        attn_mask = attn_mask[:, None, None, :]
        if bool((n_keys == length).all()):
            attn_mask = None  # every window is full: let SDPA pick its fastest kernel

        checkpointing = self.gradient_checkpointing and self.training and torch.is_grad_enabled()
        for block in self.blocks:
            if checkpointing:
                # Non-reentrant: works when the input needs no gradient (a frozen patch
                # embedding under LoRA) and recomputes only the block, not the front end,
                # so BatchNorm's running statistics are updated once per step.
                windows = checkpoint(block, windows, attn_mask, use_reentrant=False)
            else:
                windows = block(windows, attn_mask)
        windows = self.norm(windows)

        out = x.new_zeros(batch, num_windows, win, dim)
        out[:, :, :length][selected] = windows
        return out.view(batch, num_windows * win, dim)[:, :num_patches]
