"""Denoising UNet (spec §4): SD-1.5 layout applied per frame, plus motion modules, audio
cross-attention, pose features after conv_in and reference attention; predicts v."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .blocks import ReferenceKV, UNetBackbone, UNetContext
from .config import UNetConfig


class DenoisingUNet3D(UNetBackbone):
    # Compiled block by block (`fast.compile_regions`), as diffusers' ModelMixin.compile_repeated_blocks reads it.
    _repeated_blocks = ("ResnetBlock2D", "SpatialTransformer", "MotionModule")

    def __init__(self, cfg: UNetConfig):
        super().__init__(cfg, temporal=True, audio=True)
        # GroupNorm over (B·f, C, h, w) rows = the official "inflated" per-frame GroupNorm.
        self.conv_norm_out = nn.GroupNorm(cfg.norm_num_groups, cfg.block_out_channels[0], eps=cfg.norm_eps)
        self.conv_out = nn.Conv2d(cfg.block_out_channels[0], cfg.out_channels, 3, padding=1)

    @torch.no_grad()
    def reference_kv(self, banks: dict[str, torch.Tensor]) -> ReferenceKV:
        """Project each reference bank (1, L, C) through its block's attn1.to_k/to_v, once per clip.

        Linear layers act per token, so this equals projecting [own tokens ; bank] in every forward.
        """
        blocks = self.transformer_blocks()
        if set(banks) != set(blocks):
            raise ValueError(
                f"reference banks do not pair with the denoising UNet's transformer blocks: "
                f"missing {sorted(set(blocks) - set(banks))}, unexpected {sorted(set(banks) - set(blocks))}"
            )
        dtype = self.conv_in.weight.dtype
        return {path: block.attn1.project_kv(banks[path].to(dtype)) for path, block in blocks.items()}

    def forward(
        self,
        sample: torch.Tensor,
        timestep: torch.Tensor | float | int,
        audio: torch.Tensor,
        pose_features: torch.Tensor | None,
        reference_kv: ReferenceKV | None,
        uncond_batch: int = 0,
    ) -> torch.Tensor:
        """sample (B, 4, f, h, w), audio (B, f, T, 384), pose_features (B, C0, f, h, w) -> v (B, 4, f, h, w).

        Batch rows are independent samples at the same timestep (CFG halves, several context
        windows). The first `uncond_batch` rows are unconditional: they attend to themselves only,
        never to the reference. `reference_kv` (from `reference_kv()`) is shared by all other rows;
        None gives plain self-attention everywhere.
        """
        batch, _, frames, height, width = sample.shape
        self.check_latent_size(height, width)
        if audio.shape[:2] != (batch, frames):
            raise ValueError(f"audio tokens {tuple(audio.shape)} do not match sample batch {batch} × {frames} frames")
        if not 0 <= uncond_batch <= batch:
            raise ValueError(f"uncond_batch {uncond_batch} is outside the batch of {batch}")
        dtype = self.conv_in.weight.dtype
        rows = batch * frames

        def fold(t: torch.Tensor) -> torch.Tensor:  # (B, C, f, h, w) -> (B·f, C, h, w)
            return t.transpose(1, 2).reshape(rows, t.shape[1], t.shape[3], t.shape[4]).to(dtype)

        ctx = UNetContext(
            temb=self.time_embed(timestep, batch, dtype).repeat_interleave(frames, dim=0),
            frames=frames,
            audio=audio.reshape(rows, audio.shape[2], audio.shape[3]).to(dtype),
            reference_kv=reference_kv,
            uncond_rows=uncond_batch * frames,
        )
        x = self.conv_in(fold(sample))
        if pose_features is not None:
            x = x + fold(pose_features)
        x = self.body(x, ctx)
        x = self.conv_out(F.silu(self.conv_norm_out(x)))
        return x.view(batch, frames, *x.shape[1:]).transpose(1, 2)
