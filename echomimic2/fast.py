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
