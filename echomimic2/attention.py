"""Multi-head attention with the official parameter names (to_q/to_k/to_v without bias, to_out.0 with bias).

Split into `project_kv` and `attend` so callers can project keys/values once and reuse them
(the reference image's K/V stay fixed for a whole clip).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class Attention(nn.Module):
    def __init__(self, query_dim: int, heads: int, kv_dim: int | None = None):
        super().__init__()
        if query_dim % heads:
            raise ValueError(f"attention width {query_dim} is not divisible by {heads} heads")
        self.heads = heads
        self.to_q = nn.Linear(query_dim, query_dim, bias=False)
        self.to_k = nn.Linear(kv_dim or query_dim, query_dim, bias=False)
        self.to_v = nn.Linear(kv_dim or query_dim, query_dim, bias=False)
        # A list so the key is `to_out.0.*` as in the official checkpoints (index 1 was a no-op dropout).
        self.to_out = nn.ModuleList([nn.Linear(query_dim, query_dim)])

    def project_kv(self, context: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(N, Lk, kv_dim) -> keys and values (N, Lk, C)."""
        return self.to_k(context), self.to_v(context)

    def attend(self, x: torch.Tensor, key: torch.Tensor, value: torch.Tensor) -> torch.Tensor:
        """Queries from x (N, Lq, C) over projected key/value (N, Lk, C) -> (N, Lq, C)."""
        rows, length, width = x.shape
        head_dim = width // self.heads

        def split(t: torch.Tensor) -> torch.Tensor:
            return t.reshape(t.shape[0], t.shape[1], self.heads, head_dim).transpose(1, 2)

        out = self.weighted_values(split(self.to_q(x)), split(key), split(value))
        return self.to_out[0](out.transpose(1, 2).reshape(rows, length, width))

    @staticmethod
    def weighted_values(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor) -> torch.Tensor:
        """Softmax attention per head: (N, heads, Lq, d) over (N, heads, Lk, d) -> (N, heads, Lq, d)."""
        return F.scaled_dot_product_attention(query, key, value)

    def forward(self, x: torch.Tensor, context: torch.Tensor | None = None) -> torch.Tensor:
        """Self-attention, or cross-attention over `context` when given."""
        key, value = self.project_kv(x if context is None else context)
        return self.attend(x, key, value)
