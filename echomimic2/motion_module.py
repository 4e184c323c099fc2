"""AnimateDiff-style "Vanilla" motion module (spec §4.4): self-attention over the frames of each pixel.

Works on frame-folded tensors (B·f, C, h, w), rows ordered batch-major then frame, which is the
layout the denoising UNet keeps between layers.
"""
from __future__ import annotations

import math

import torch
from diffusers.models.attention import FeedForward
from torch import nn

from .attention import Attention


def sinusoidal_position_table(max_len: int, dim: int) -> torch.Tensor:
    """(1, max_len, dim): sin on even channels, cos on odd, frequencies exp(-ln(1e4)·2i/dim)."""
    position = torch.arange(max_len, dtype=torch.float32).unsqueeze(1)
    frequencies = torch.exp(torch.arange(0, dim, 2, dtype=torch.float32) * (-math.log(10000.0) / dim))
    table = torch.zeros(1, max_len, dim)
    table[0, :, 0::2] = torch.sin(position * frequencies)
    table[0, :, 1::2] = torch.cos(position * frequencies)
    return table


class PositionalEncoding(nn.Module):
    def __init__(self, dim: int, max_len: int):
        super().__init__()
        # Persistent: the official state dict lists it (`pos_encoder.pe`); loaders may recompute it.
        self.register_buffer("pe", sinusoidal_position_table(max_len, dim))

    def forward(self, sequences: torch.Tensor) -> torch.Tensor:
        frames = sequences.shape[1]
        if frames > self.pe.shape[1]:
            raise ValueError(f"{frames} frames exceed the motion module's maximum of {self.pe.shape[1]}")
        return sequences + self.pe[:, :frames].to(sequences.dtype)


def short_sequence_attention(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor) -> torch.Tensor:
    """Softmax attention as two batched matmuls, scores and softmax in fp32 (the same math as SDPA's fused
    kernels). For sequences of a window's 12 frames, those kernels spend their time setting up each tiny
    sequence; two matmuls are faster there."""
    *batch, queries, _ = query.shape
    needs_grad = torch.is_grad_enabled() and (query.requires_grad or key.requires_grad)
    if query.is_cuda and query.dtype in (torch.float16, torch.bfloat16) and not needs_grad:
        # fp32 scores straight from half operands on cuBLAS's tensor cores (CUDA only; no backward: training
        # takes the upcast): upcasting first would run a slower fp32 GEMM. Exact products, fp32 sums either way.
        scores = torch.bmm(query.reshape(-1, queries, query.shape[-1]), key.reshape(-1, *key.shape[-2:]).transpose(-1, -2),
                           out_dtype=torch.float32).view(*batch, queries, key.shape[-2])
    else:
        precise = torch.promote_types(query.dtype, torch.float32)  # fp32 and fp64 kept
        scores = torch.matmul(query.to(precise), key.to(precise).transpose(-1, -2))
    return torch.matmul((scores * query.shape[-1] ** -0.5).softmax(dim=-1).to(value.dtype), value)


class TemporalAttention(Attention):
    """Self-attention over frames with the position encoding added to its input."""

    weighted_values = staticmethod(short_sequence_attention)

    def __init__(self, dim: int, heads: int, max_len: int):
        super().__init__(dim, heads)
        self.pos_encoder = PositionalEncoding(dim, max_len)

    def forward(self, sequences: torch.Tensor) -> torch.Tensor:  # (B·h·w, f, C)
        return super().forward(self.pos_encoder(sequences))


class TemporalTransformerBlock(nn.Module):
    def __init__(self, dim: int, heads: int, max_len: int):
        super().__init__()
        self.attention_blocks = nn.ModuleList([TemporalAttention(dim, heads, max_len) for _ in range(2)])
        self.norms = nn.ModuleList([nn.LayerNorm(dim) for _ in range(2)])
        self.ff = FeedForward(dim, activation_fn="geglu")
        self.ff_norm = nn.LayerNorm(dim)

    def forward(self, tokens: torch.Tensor, frames: int) -> torch.Tensor:
        """tokens (B·f, L, C) -> same shape."""
        rows, length, width = tokens.shape
        batch = rows // frames

        def to_sequences(t: torch.Tensor) -> torch.Tensor:  # (B·f, L, C) -> (B·L, f, C)
            return t.view(batch, frames, length, width).transpose(1, 2).reshape(batch * length, frames, width)

        def from_sequences(t: torch.Tensor) -> torch.Tensor:
            return t.view(batch, length, frames, width).transpose(1, 2).reshape(rows, length, width)

        for attention, norm in zip(self.attention_blocks, self.norms):
            tokens = tokens + from_sequences(attention(to_sequences(norm(tokens))))
        return tokens + self.ff(self.ff_norm(tokens))


class TemporalTransformer(nn.Module):
    def __init__(self, channels: int, heads: int, max_len: int, groups: int, eps: float):
        super().__init__()
        self.norm = nn.GroupNorm(groups, channels, eps=eps)
        self.proj_in = nn.Linear(channels, channels)
        self.transformer_blocks = nn.ModuleList([TemporalTransformerBlock(channels, heads, max_len)])
        self.proj_out = nn.Linear(channels, channels)

    def forward(self, x: torch.Tensor, frames: int) -> torch.Tensor:
        rows, channels, height, width = x.shape
        tokens = self.norm(x).permute(0, 2, 3, 1).reshape(rows, height * width, channels)
        tokens = self.proj_in(tokens)
        for block in self.transformer_blocks:
            tokens = block(tokens, frames)
        tokens = self.proj_out(tokens)
        return x + tokens.view(rows, height, width, channels).permute(0, 3, 1, 2)


class MotionModule(nn.Module):
    """x (B·f, C, h, w) -> same shape; mixes information across the f frames of each sample."""

    def __init__(self, channels: int, heads: int, max_len: int, groups: int, eps: float):
        super().__init__()
        self.temporal_transformer = TemporalTransformer(channels, heads, max_len, groups, eps)

    def forward(self, x: torch.Tensor, frames: int) -> torch.Tensor:
        return self.temporal_transformer(x, frames)
