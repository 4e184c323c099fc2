"""Multi-head attention with the official parameter names (to_q/to_k/to_v without bias, to_out.0 with bias).

Split into `project_kv` and `attend` so callers can project keys/values once and reuse them
(the reference image's K/V stay fixed for a whole clip).
"""
from __future__ import annotations

import functools
import os

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


# --------------------------------------------------------------------------------------------------
# FlashAttention-4 (the optional `flash-attn-4` package's CuTe DSL kernels) where it beats SDPA on the GPU

# Head dim -> the width FA4 runs it at. Head dim 40 (the 96² level) is zero-padded to 48: cuDNN tiles it as 64,
# and FA4 is faster at 48 than at 40; head dim 80 (48²) as it is. 160 (24²) stays on SDPA, faster there
# (issue 37's table, one H100).
FA4_HEAD_DIMS = {40: 48, 80: 80}
# The spatial + reference attention has thousands of keys; the audio cross-attention (a few dozen) stays on SDPA.
FA4_MIN_KEYS = 2048
FA4_ENV = "ECHOMIMIC2_FA4"  # "0": never use FA4, even where it is installed


def fa4_width(head_dim: int, keys: int, dtype: torch.dtype) -> int | None:
    """The head width FA4 runs an attention of this shape at, or None where SDPA stays."""
    if dtype not in (torch.float16, torch.bfloat16) or keys < FA4_MIN_KEYS:
        return None
    return FA4_HEAD_DIMS.get(head_dim)


def padded_attention(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, width: int, attend) -> torch.Tensor:
    """SDPA's result for (N, heads, L, d) tensors, computed by `attend(q, k, v, softmax_scale)` on (N, L, heads,
    width) tensors (flash-attn's layout: the projections' own memory order, so no copy when width == d).

    Zero columns change no dot product and produce zero output columns, which are sliced off: exact. The scale
    stays the head dim's, 1/sqrt(d), not 1/sqrt(width)."""
    head_dim = query.shape[-1]

    def to_kernel_layout(t: torch.Tensor) -> torch.Tensor:
        t = t.transpose(1, 2)
        return F.pad(t, (0, width - head_dim)) if width != head_dim else t.contiguous()

    out = attend(to_kernel_layout(query), to_kernel_layout(key), to_kernel_layout(value), head_dim ** -0.5)
    return out[..., :head_dim].transpose(1, 2)


@torch.library.custom_op("echomimic2::fa4_attention", mutates_args=())
def fa4_attention(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, softmax_scale: float) -> torch.Tensor:
    """flash-attn-4's forward on (N, L, heads, d) CUDA tensors. A custom op: torch.compile keeps it as one opaque
    call (its CuTe DSL JIT is not traceable) and compiles the rest of the block around it."""
    from flash_attn.cute import flash_attn_func

    out, _ = flash_attn_func(query, key, value, softmax_scale=softmax_scale)
    return out


@fa4_attention.register_fake
def _fa4_attention_shape(query, key, value, softmax_scale):
    return query.new_empty((*query.shape[:-1], value.shape[-1]))


@functools.cache
def fa4_available() -> bool:
    """FA4 can run here: a Hopper or Blackwell GPU, `flash_attn.cute` importable (its `cutlass` too: the
    nvidia-cutlass-dsl `.pth` must have been processed), and not turned off by ECHOMIMIC2_FA4=0."""
    if os.environ.get(FA4_ENV, "1") == "0" or not torch.cuda.is_available():
        return False
    if torch.cuda.get_device_capability(0)[0] not in (9, 10):  # the SM90 and SM100 kernels
        return False
    try:
        import flash_attn.cute  # noqa: F401
    except Exception:  # noqa: BLE001 - missing, or a broken install (no cutlass): SDPA it is
        return False
    return True


def fa4_or_sdpa(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor) -> torch.Tensor:
    """`Attention.weighted_values` with FA4 for the shapes where it is faster (`fa4_width`), SDPA elsewhere
    (the CPU, other dtypes, head dims and key lengths). `fast.use_fa4_attention` installs it."""
    width = fa4_width(query.shape[-1], key.shape[-2], query.dtype) if query.is_cuda else None
    if width is None:
        return F.scaled_dot_product_attention(query, key, value)
    return padded_attention(query, key, value, width, fa4_attention)
