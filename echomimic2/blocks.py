"""UNet building blocks shared by the reference UNet (2D) and the denoising UNet (3D).

Everything runs on frame-folded tensors (B·f, C, h, w), rows ordered batch-major then frame. Per-frame
2D layers (convs, resnet GroupNorms, "inflated" GroupNorm) are then plain 2D layers; only motion
modules look across frames. The reference UNet is the same code with f = 1, no motion modules and
no audio cross-attention.

Reused from diffusers where parameter names equal the official keys: ResnetBlock2D, Upsample2D,
Timesteps/TimestepEmbedding, the GEGLU FeedForward.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch
from diffusers.models.attention import FeedForward
from diffusers.models.embeddings import TimestepEmbedding, Timesteps
from diffusers.models.resnet import ResnetBlock2D
from diffusers.models.upsampling import Upsample2D
from torch import nn

from .attention import Attention
from .config import UNetConfig
from .motion_module import MotionModule

ReferenceKV = dict[str, tuple[torch.Tensor, torch.Tensor]]


@dataclass
class UNetContext:
    """What every block of one forward needs besides its input."""

    temb: torch.Tensor  # (rows, time_embed_dim), one row per frame
    frames: int  # frames per sample: rows = batch · frames
    audio: torch.Tensor | None = None  # (rows, tokens, cross_attention_dim)
    reference_kv: ReferenceKV | None = None  # block path -> (k_ref, v_ref), each (1, L, C)
    uncond_rows: int = 0  # the first rows are CFG's unconditional half: no reference attention
    banks: dict[str, torch.Tensor] | None = None  # filled by the reference UNet: block path -> norm1 output
    reference: tuple[torch.Tensor, torch.Tensor] | None = None  # the current block's entry of reference_kv

    def for_block(self, path: str) -> UNetContext:
        """This context with `reference` set to the block's K/V. The lookup by path happens here, outside the
        block's forward: a path is a per-block constant, so a compiled block that read it would compile once
        per block instead of once per shape (fast.compile_regions)."""
        if self.reference_kv is None:
            return self
        return dataclasses.replace(self, reference=self.reference_kv[path])


class Downsample(nn.Module):
    """3×3 stride-2 conv (diffusers' Downsample2D registers the conv under two names, `conv` and `Conv2d_0`)."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, stride=2, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


class TransformerBlock(nn.Module):
    """Spatial transformer block (spec §3 write mode, §4.3 read mode).

    Self-attention (attn1) reads the reference image: keys/values are [own tokens ; reference bank]
    for conditional rows, own tokens only for unconditional rows. attn2 (denoising UNet only)
    cross-attends to the frame's audio tokens, scaled by `audio_scale`.
    """

    path = ""  # set by the UNet to this block's module path; names its bank and reference K/V

    def __init__(self, dim: int, heads: int, audio_dim: int | None, audio_scale: float):
        super().__init__()
        self.attn1 = Attention(dim, heads)
        self.norm1 = nn.LayerNorm(dim)
        if audio_dim is not None:
            self.attn2 = Attention(dim, heads, kv_dim=audio_dim)
            self.norm2 = nn.LayerNorm(dim)
        else:
            self.attn2 = None
        self.ff = FeedForward(dim, activation_fn="geglu")
        self.norm3 = nn.LayerNorm(dim)
        self.audio_scale = audio_scale

    def forward(self, x: torch.Tensor, ctx: UNetContext) -> torch.Tensor:
        normed = self.norm1(x)
        if ctx.banks is not None:
            ctx.banks[self.path] = normed
        x = x + self._self_attention(normed, ctx)
        if self.attn2 is not None:
            x = x + self.audio_scale * self.attn2(self.norm2(x), ctx.audio)
        return x + self.ff(self.norm3(x))

    def _self_attention(self, normed: torch.Tensor, ctx: UNetContext) -> torch.Tensor:
        if ctx.reference is None:
            return self.attn1(normed)
        key_ref, value_ref = ctx.reference
        uncond, cond = normed[: ctx.uncond_rows], normed[ctx.uncond_rows :]
        outputs = []
        if len(uncond):
            outputs.append(self.attn1(uncond))
        if len(cond):
            key, value = self.attn1.project_kv(cond)
            rows = len(cond)
            key = torch.cat([key, key_ref.expand(rows, -1, -1)], dim=1)
            value = torch.cat([value, value_ref.expand(rows, -1, -1)], dim=1)
            outputs.append(self.attn1.attend(cond, key, value))
        return torch.cat(outputs) if len(outputs) > 1 else outputs[0]


class SpatialTransformer(nn.Module):
    """GroupNorm → 1×1 conv → one TransformerBlock over the h·w tokens → 1×1 conv → + input."""

    def __init__(self, channels: int, cfg: UNetConfig, audio: bool):
        super().__init__()
        self.norm = nn.GroupNorm(cfg.norm_num_groups, channels, eps=cfg.transformer_norm_eps)
        self.proj_in = nn.Conv2d(channels, channels, 1)
        self.transformer_blocks = nn.ModuleList(
            [
                TransformerBlock(
                    channels,
                    cfg.attention_heads,
                    cfg.cross_attention_dim if audio else None,
                    cfg.audio_attention_scale,
                )
            ]
        )
        self.proj_out = nn.Conv2d(channels, channels, 1)

    @property
    def path(self) -> str:
        return self.transformer_blocks[0].path

    def forward(self, x: torch.Tensor, ctx: UNetContext) -> torch.Tensor:
        """x (rows, C, h, w) -> same shape; `ctx.reference` is this block's reference K/V (`ctx.for_block`)."""
        rows, channels, height, width = x.shape
        tokens = self.proj_in(self.norm(x)).permute(0, 2, 3, 1).reshape(rows, height * width, channels)
        for block in self.transformer_blocks:
            tokens = block(tokens, ctx)
        tokens = tokens.view(rows, height, width, channels).permute(0, 3, 1, 2)
        return x + self.proj_out(tokens)


def _resnet(in_channels: int, out_channels: int, cfg: UNetConfig) -> ResnetBlock2D:
    return ResnetBlock2D(
        in_channels=in_channels,
        out_channels=out_channels,
        temb_channels=cfg.time_embed_dim,
        eps=cfg.norm_eps,
        groups=cfg.norm_num_groups,
    )


def _motion_module(channels: int, cfg: UNetConfig) -> MotionModule:
    return MotionModule(
        channels, cfg.motion_module_heads, cfg.motion_module_max_len, cfg.motion_module_norm_groups, cfg.transformer_norm_eps
    )


class _Level(nn.Module):
    """One UNet level: layers of [resnet → spatial transformer? → motion module?]."""

    def __init__(self, resnet_channels: list[tuple[int, int]], cfg: UNetConfig, attention: bool, temporal: bool, audio: bool):
        super().__init__()
        out = [c_out for _, c_out in resnet_channels]
        self.attentions = nn.ModuleList([SpatialTransformer(c, cfg, audio) for c in out]) if attention else None
        self.resnets = nn.ModuleList([_resnet(c_in, c_out, cfg) for c_in, c_out in resnet_channels])
        self.motion_modules = nn.ModuleList([_motion_module(c, cfg) for c in out]) if temporal else None

    def layer(self, index: int, x: torch.Tensor, ctx: UNetContext) -> torch.Tensor:
        x = self.resnets[index](x, ctx.temb)
        if self.attentions is not None:
            attention = self.attentions[index]
            x = attention(x, ctx.for_block(attention.path))
        if self.motion_modules is not None:
            x = self.motion_modules[index](x, ctx.frames)
        return x


class DownBlock(_Level):
    def __init__(self, in_channels: int, out_channels: int, cfg: UNetConfig, attention: bool, downsample: bool, temporal: bool, audio: bool):
        channels = [(in_channels if i == 0 else out_channels, out_channels) for i in range(cfg.layers_per_block)]
        super().__init__(channels, cfg, attention, temporal, audio)
        self.downsamplers = nn.ModuleList([Downsample(out_channels)]) if downsample else None

    def forward(self, x: torch.Tensor, ctx: UNetContext) -> tuple[torch.Tensor, list[torch.Tensor]]:
        skips = []
        for index in range(len(self.resnets)):
            x = self.layer(index, x, ctx)
            skips.append(x)
        if self.downsamplers is not None:
            x = self.downsamplers[0](x)
            skips.append(x)
        return x, skips


class UpBlock(_Level):
    def __init__(self, prev_channels: int, out_channels: int, skip_in_channels: int, cfg: UNetConfig, attention: bool, upsample: bool, temporal: bool, audio: bool):
        layers = cfg.layers_per_block + 1
        channels = [
            ((prev_channels if i == 0 else out_channels) + (skip_in_channels if i == layers - 1 else out_channels), out_channels)
            for i in range(layers)
        ]
        super().__init__(channels, cfg, attention, temporal, audio)
        self.upsamplers = nn.ModuleList([Upsample2D(out_channels, use_conv=True)]) if upsample else None

    def forward(self, x: torch.Tensor, skips: list[torch.Tensor], ctx: UNetContext) -> torch.Tensor:
        for index in range(len(self.resnets)):
            x = self.layer(index, torch.cat([x, skips.pop()], dim=1), ctx)
        if self.upsamplers is not None:
            x = self.upsamplers[0](x)
        return x


class MidBlock(nn.Module):
    """resnet → spatial transformer → motion module? → resnet."""

    def __init__(self, channels: int, cfg: UNetConfig, temporal: bool, audio: bool):
        super().__init__()
        self.attentions = nn.ModuleList([SpatialTransformer(channels, cfg, audio)])
        self.resnets = nn.ModuleList([_resnet(channels, channels, cfg) for _ in range(2)])
        self.motion_modules = nn.ModuleList([_motion_module(channels, cfg)]) if temporal else None

    def forward(self, x: torch.Tensor, ctx: UNetContext) -> torch.Tensor:
        x = self.resnets[0](x, ctx.temb)
        x = self.attentions[0](x, ctx.for_block(self.attentions[0].path))
        if self.motion_modules is not None:
            x = self.motion_modules[0](x, ctx.frames)
        return self.resnets[1](x, ctx.temb)


class UNetBackbone(nn.Module):
    """SD-1.5 topology without the output head: conv_in, time embedding, down/up/mid blocks.

    `temporal` adds motion modules to every level; `audio` adds the audio cross-attention (attn2).
    """

    def __init__(self, cfg: UNetConfig, temporal: bool, audio: bool):
        super().__init__()
        self.config = cfg
        channels = cfg.block_out_channels
        levels = len(channels)
        self.conv_in = nn.Conv2d(cfg.in_channels, channels[0], 3, padding=1)
        self.time_proj = Timesteps(channels[0], flip_sin_to_cos=True, downscale_freq_shift=0)
        self.time_embedding = TimestepEmbedding(channels[0], cfg.time_embed_dim)
        self.down_blocks = nn.ModuleList(
            [
                DownBlock(
                    channels[max(i - 1, 0)], channels[i], cfg,
                    attention=i < levels - 1, downsample=i < levels - 1, temporal=temporal, audio=audio,
                )
                for i in range(levels)
            ]
        )
        reversed_channels = channels[::-1]
        self.up_blocks = nn.ModuleList(
            [
                UpBlock(
                    reversed_channels[max(i - 1, 0)], reversed_channels[i], reversed_channels[min(i + 1, levels - 1)], cfg,
                    attention=i > 0, upsample=i < levels - 1, temporal=temporal, audio=audio,
                )
                for i in range(levels)
            ]
        )
        self.mid_block = MidBlock(channels[-1], cfg, temporal=temporal, audio=audio)
        for name, module in self.named_modules():
            if isinstance(module, TransformerBlock):
                module.path = name

    def transformer_blocks(self) -> dict[str, TransformerBlock]:
        return {m.path: m for m in self.modules() if isinstance(m, TransformerBlock)}

    def time_embed(self, timestep: torch.Tensor | float | int, batch: int, dtype: torch.dtype) -> torch.Tensor:
        """(batch, time_embed_dim) in the model dtype."""
        device = self.conv_in.weight.device
        timestep = torch.as_tensor(timestep, device=device).reshape(-1)
        if timestep.numel() not in (1, batch):
            raise ValueError(f"timestep has {timestep.numel()} values for a batch of {batch}")
        projected = self.time_proj(timestep.expand(batch)).to(dtype)
        return self.time_embedding(projected)

    def check_latent_size(self, height: int, width: int) -> None:
        multiple = self.config.latent_multiple
        if height % multiple or width % multiple:
            raise ValueError(f"latent size {height}x{width} is not a multiple of {multiple} (image sides multiples of {8 * multiple})")

    def body(self, x: torch.Tensor, ctx: UNetContext) -> torch.Tensor:
        """conv_in output (rows, C0, h, w) -> last up block output."""
        skips = [x]
        for block in self.down_blocks:
            x, block_skips = block(x, ctx)
            skips.extend(block_skips)
        x = self.mid_block(x, ctx)
        for block in self.up_blocks:
            x = block(x, skips, ctx)
        return x
