"""Network sizes: the official EchoMimic V2 configuration and a tiny one built from the same classes.

Official values come from the sd-image-variations UNet config plus EchoMimic V2's
`inference_v2.yaml` overrides (spec §2, §4.1, §6). The tiny configuration keeps every structural
choice (4 levels, 2 layers per block, motion modules everywhere, audio tokens 384 wide) and only
shrinks widths, so tests and the demo exercise the real code paths.
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class UNetConfig:
    """Sizes shared by the reference UNet, the denoising UNet and the pose encoder.

    The topology is SD-1.5's: `len(block_out_channels)` levels; every down level but the last and
    every up level but the first has spatial transformers; all levels downsample/upsample by 2
    except the deepest.
    """

    block_out_channels: tuple[int, ...] = (320, 640, 1280, 1280)
    layers_per_block: int = 2
    # Diffusers calls this `attention_head_dim` (= 8) but it is the number of heads.
    attention_heads: int = 8
    norm_num_groups: int = 32
    norm_eps: float = 1e-5  # resnets and conv_norm_out
    transformer_norm_eps: float = 1e-6  # GroupNorm in front of spatial transformers and motion modules
    in_channels: int = 4
    out_channels: int = 4
    # Width of the audio tokens fed to attn2 (whisper-tiny's hidden size); never shrinks.
    cross_attention_dim: int = 384
    audio_attention_scale: float = 3.0
    motion_module_heads: int = 8
    motion_module_max_len: int = 32
    # Upstream's motion modules keep their own default of 32 groups whatever the UNet uses.
    motion_module_norm_groups: int = 32
    pose_encoder_block_channels: tuple[int, ...] = (16, 32, 96, 256)
    pose_conditioning_channels: int = 3

    @property
    def time_embed_dim(self) -> int:
        return 4 * self.block_out_channels[0]

    @property
    def latent_multiple(self) -> int:
        """Latent h and w must be multiples of this: every downsampling halves them exactly."""
        return 2 ** (len(self.block_out_channels) - 1)


def official_unet_config() -> UNetConfig:
    return UNetConfig()


def tiny_unet_config() -> UNetConfig:
    # Head widths 8/16, norm groups divide every (concatenated) channel count, audio stays 384.
    return UNetConfig(
        block_out_channels=(32, 32, 64, 64),
        attention_heads=4,
        norm_num_groups=8,
        motion_module_heads=4,
        motion_module_norm_groups=8,
        pose_encoder_block_channels=(8, 8, 16, 16),
    )


VAE_SCALING_FACTOR = 0.18215


def official_vae_config() -> dict:
    """Keyword arguments of diffusers `AutoencoderKL` equal to sd-vae-ft-mse's config.json."""
    return dict(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        block_out_channels=(128, 256, 512, 512),
        layers_per_block=2,
        act_fn="silu",
        latent_channels=4,
        norm_num_groups=32,
        sample_size=256,
        scaling_factor=VAE_SCALING_FACTOR,
    )


def tiny_vae_config() -> dict:
    """Same 4-level, 8x-downsampling AutoencoderKL with small widths."""
    return dict(
        official_vae_config(),
        block_out_channels=(16, 32, 32, 32),
        layers_per_block=1,
        norm_num_groups=8,
    )
