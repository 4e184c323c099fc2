"""The one place the four networks are built: `build_networks` for a pair of configs (the official
checkpoints' loader, the tiny model, the full-size random model and the bench all start here)."""
from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import torch
from diffusers import AutoencoderKL
from torch import nn

from .config import UNetConfig
from .denoising_unet import DenoisingUNet3D
from .motion_module import PositionalEncoding, sinusoidal_position_table
from .pose_encoder import PoseEncoder
from .reference_unet import ReferenceUNet2D


@dataclass
class OfficialNetworks:
    reference_unet: ReferenceUNet2D
    denoising_unet: DenoisingUNet3D
    pose_encoder: PoseEncoder
    vae: AutoencoderKL

    def __iter__(self) -> Iterator[nn.Module]:
        return iter((self.reference_unet, self.denoising_unet, self.pose_encoder, self.vae))


def build_networks(unet_config: UNetConfig, vae_config: dict) -> OfficialNetworks:
    """The four networks for the configs, with PyTorch's default initialisation, built in the current
    default device (inside ``with torch.device("meta")`` nothing is allocated). The construction order is
    fixed: the tiny model's weights depend on it."""
    return OfficialNetworks(
        reference_unet=ReferenceUNet2D(unet_config),
        denoising_unet=DenoisingUNet3D(unet_config),
        pose_encoder=PoseEncoder(unet_config.pose_conditioning_channels, unet_config.pose_encoder_block_channels,
                                 unet_config.block_out_channels[0]),
        vae=AutoencoderKL(**vae_config),
    )


def random_networks(unet_config: UNetConfig, vae_config: dict, device: torch.device, dtype: torch.dtype, seed: int = 0) -> OfficialNetworks:
    """The four networks with PyTorch's default random initialisation, done on `device` (built on `meta`, so
    a GPU does not wait minutes for 2.2 B parameters initialised on the CPU).

    Every parameter is first poisoned with NaN and must come out finite: a layer that the
    initialisation missed would otherwise keep uninitialised memory and time on garbage.
    """
    with torch.device("meta"):
        networks = build_networks(unet_config, vae_config)
    torch.manual_seed(seed)
    for module in networks:
        module.to_empty(device=device)
        with torch.no_grad():
            for tensor in module.parameters():
                tensor.fill_(float("nan"))
            for layer in module.modules():
                if isinstance(layer, PositionalEncoding):
                    layer.pe.copy_(sinusoidal_position_table(layer.pe.shape[1], layer.pe.shape[2]))
                elif any(True for _ in layer.parameters(recurse=False)):
                    layer.reset_parameters()
        missed = [name for name, tensor in module.named_parameters() if not torch.isfinite(tensor).all()]
        if missed:
            raise RuntimeError(f"{type(module).__name__}: no initialisation for {missed[:5]} ({len(missed)} tensors)")
        # torch's own cast: diffusers' `ModelMixin.to` warns of "modules that should be kept in float32" on every
        # dtype move, even with an empty list of them (the VAE has none).
        torch.nn.Module.to(module, dtype=dtype)
        module.eval().requires_grad_(False)
    return networks
