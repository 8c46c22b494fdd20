"""The 5 Hz projector (SYSTEM.md section 4): stack 5 encoder frames, then an MLP."""

from __future__ import annotations

import torch
from torch import nn


class AudioProjector(nn.Module):
    """(B, T, D) encoder frames -> (B, T // k, H) decoder embeddings.

    Keys ``audio_projector.net.0.*`` and ``audio_projector.net.2.*``.
    """

    def __init__(self, in_dim: int, out_dim: int, downsample_rate: int = 5) -> None:
        super().__init__()
        self.k = downsample_rate
        self.net = nn.Sequential(
            nn.Linear(in_dim * downsample_rate, out_dim),
            nn.GELU(),
            nn.Linear(out_dim, out_dim),
        )

    def forward(
        self, x: torch.Tensor, mask: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        batch, frames, dim = x.shape
        keep = frames - frames % self.k  # trailing frames that do not fill a group are dropped
        x = x[:, :keep].reshape(batch, keep // self.k, self.k * dim)
        if mask is None:
            mask = torch.ones(batch, keep, dtype=torch.bool, device=x.device)
        # A group is valid when any of its frames is.
        group_mask = mask[:, :keep].reshape(batch, keep // self.k, self.k).any(-1)
        return self.net(x), group_mask
