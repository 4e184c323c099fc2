"""Reference UNet (spec §3): encodes the reference image latent once per clip into per-block banks."""
from __future__ import annotations

import torch

from .blocks import UNetBackbone, UNetContext
from .config import UNetConfig


class ReferenceUNet2D(UNetBackbone):
    """SD-1.5 UNet without cross-attention (no attn2/norm2) and without an output head.

    Its output is never used; what matters are the banks: each transformer block's LayerNorm1 output,
    keyed by the same module path as the paired block of the denoising UNet.
    """

    def __init__(self, cfg: UNetConfig):
        super().__init__(cfg, temporal=False, audio=False)

    def forward(self, latent: torch.Tensor, timestep: torch.Tensor | float | int = 0) -> dict[str, torch.Tensor]:
        """latent (N, 4, h, w) -> {block path: bank (N, h_l·w_l, C_l)}."""
        batch, _, height, width = latent.shape
        self.check_latent_size(height, width)
        dtype = self.conv_in.weight.dtype
        latent = latent.to(dtype)
        banks: dict[str, torch.Tensor] = {}
        ctx = UNetContext(temb=self.time_embed(timestep, batch, dtype), frames=1, banks=banks)
        self.body(self.conv_in(latent), ctx)
        return banks
