"""Pose encoder (spec §6): pose images -> features added to the denoising UNet's conv_in output."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class PoseEncoder(nn.Module):
    """3×3 convs, SiLU between them; three stride-2 stages give 1/8 resolution.

    `conv_out` starts at zero (as upstream), so an untrained encoder adds nothing.
    """

    def __init__(
        self,
        conditioning_channels: int = 3,
        block_out_channels: tuple[int, ...] = (16, 32, 96, 256),
        out_channels: int = 320,
    ):
        super().__init__()
        self.conv_in = nn.Conv2d(conditioning_channels, block_out_channels[0], 3, padding=1)
        blocks = []
        for c_in, c_out in zip(block_out_channels[:-1], block_out_channels[1:]):
            blocks.append(nn.Conv2d(c_in, c_in, 3, padding=1))
            blocks.append(nn.Conv2d(c_in, c_out, 3, padding=1, stride=2))
        self.blocks = nn.ModuleList(blocks)
        self.conv_out = nn.Conv2d(block_out_channels[-1], out_channels, 3, padding=1)
        nn.init.zeros_(self.conv_out.weight)
        nn.init.zeros_(self.conv_out.bias)

    def forward(self, pose: torch.Tensor) -> torch.Tensor:
        """pose (N, 3, H, W) in [0, 1] -> (N, out_channels, H/8, W/8)."""
        x = F.silu(self.conv_in(pose.to(self.conv_in.weight.dtype)))
        for block in self.blocks:
            x = F.silu(block(x))
        return self.conv_out(x)
