"""GPU execution settings that keep the math: cuDNN autotuning and optional torch.compile.

Neither changes what is computed, only how: cuDNN choosing its fastest algorithm per shape, and
compiled (fused) elementwise/normalisation kernels.
Measured one by one in BENCHMARKS.md.
"""
from __future__ import annotations

import torch

from .checkpoints import OfficialNetworks


def prepare_for_gpu(networks: OfficialNetworks, compile_networks: bool = False) -> OfficialNetworks:
    """Enable cuDNN autotuning; optionally compile the denoising UNet's forward and the VAE decoder.

    channels_last was measured and dropped: no gain for either UNet or the VAE (BENCHMARKS.md).
    """
    torch.backends.cudnn.benchmark = True
    if compile_networks:
        # Fuses the norms, GEGLU, residual adds and layout copies between the cuBLAS/cuDNN calls.
        # No CUDA graphs: a step's window batches come in two lengths, each would pin its own pool.
        networks.denoising_unet.forward = torch.compile(networks.denoising_unet.forward, dynamic=False)
        networks.vae.decoder.forward = torch.compile(networks.vae.decoder.forward, dynamic=False)
    return networks


def compile_cache_key() -> str:
    """Names the compiled-kernel cache a process can reuse: the same torch, CUDA and GPU model, or a
    cache from elsewhere would only be rejected (or, worse, half-used) by the compiler."""
    import re

    if torch.cuda.is_available():
        major, minor = torch.cuda.get_device_capability(0)
        device = f"sm{major}{minor}-{torch.cuda.get_device_name(0)}"
    else:
        device = "cpu"
    text = f"torch{torch.__version__}-cuda{torch.version.cuda}-{device}"
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text)


def load_compile_artifacts(data: bytes) -> bool:
    """Pre-fill PyTorch's compile caches (inductor + AOT autograd) from `compile_artifacts()` bytes of an
    earlier process, so `torch.compile` finds its kernels instead of generating them (warm start).
    A corrupt or foreign cache is ignored: the networks then compile as if there were none."""
    try:
        return torch.compiler.load_cache_artifacts(data) is not None
    except Exception:  # noqa: BLE001 - any unusable cache means a cold compile, never a failed job
        return False


def compile_artifacts() -> bytes | None:
    """What this process compiled so far, as bytes for `load_compile_artifacts` (None: nothing compiled)."""
    saved = torch.compiler.save_cache_artifacts()
    return None if saved is None else saved[0]


def generated_kernel_graphs() -> int:
    """How many graphs this process compiled from scratch (inductor cache misses): when it grows, there is
    something new worth saving; cache hits (a warm start) leave it unchanged."""
    from torch._dynamo.utils import counters

    return int(counters["inductor"].get("fxgraph_cache_miss", 0))
