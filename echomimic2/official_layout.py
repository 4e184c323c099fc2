"""Write a weights folder in the official EchoMimic V2 layout, filled with random full-size networks.

No official weights can be downloaded in CI or on a lent GPU, yet the product path (`from_official`,
`cli.py run --weights`, `weights check`) must run end to end on exactly that layout. These files have
the official names, keys and shapes (spec §1, §11) and PyTorch's default initialisation (finite
activations in fp16, unlike unit-variance noise), so loading, compiling and rendering cost what the
real checkpoints cost. The frames are noise.
"""
from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import save_file

from .audio import TINY_DIMS, WhisperFeatures
from .config import official_unet_config, official_vae_config
from .networks import random_networks
from .weights_layout import POSE_ENCODER_FILE, REFERENCE_UNET_FILE, VAE_DIR, VARIANTS, WHISPER_FILE, denoising_files

MOTION_KEY = ".motion_modules."  # the denoising UNet's temporal part lives in motion_module*.pth


def _host_state(module: torch.nn.Module, dtype: torch.dtype) -> dict[str, torch.Tensor]:
    return {key: (tensor.to(dtype) if tensor.is_floating_point() else tensor).detach().cpu().contiguous()
            for key, tensor in module.state_dict().items()}


def write_random_official_weights(root: str | Path, *, variants: tuple[str, ...] = VARIANTS, seed: int = 0,
                                  device: str | torch.device = "cpu", file_dtype: torch.dtype = torch.float16) -> Path:
    """Write `root` with every file `from_official` and the audio encoder read for `variants`.

    The networks are initialised on `device` (a GPU does the 2.2 B parameters in seconds); each
    variant gets its own denoising UNet (seeds `seed + 1 + i`). Files are stored in `file_dtype`
    (fp16 halves the ~9 GB of fp32; the loader casts to the dtype asked for). Returns `root`.
    """
    unknown = set(variants) - set(VARIANTS)
    if not variants or unknown:
        raise ValueError(f"variants must be a non-empty subset of {VARIANTS}, got {variants!r}")
    root = Path(root)
    (root / VAE_DIR).mkdir(parents=True, exist_ok=True)
    (root / WHISPER_FILE).parent.mkdir(parents=True, exist_ok=True)
    unet_config, vae_config = official_unet_config(), official_vae_config()
    networks = random_networks(unet_config, vae_config, torch.device(device), torch.float32, seed)
    torch.save(_host_state(networks.reference_unet, file_dtype), root / REFERENCE_UNET_FILE)
    torch.save(_host_state(networks.pose_encoder, file_dtype), root / POSE_ENCODER_FILE)
    save_file(_host_state(networks.vae, file_dtype), root / VAE_DIR / "diffusion_pytorch_model.safetensors")
    (root / VAE_DIR / "config.json").write_text(json.dumps({"_class_name": "AutoencoderKL", **vae_config}, indent=1))
    del networks
    for index, variant in enumerate(variants):
        unet = random_networks(unet_config, vae_config, torch.device(device), torch.float32, seed + 1 + index).denoising_unet
        state = _host_state(unet, file_dtype)
        del unet
        two_d_name, motion_name = denoising_files(variant)
        torch.save({k: v for k, v in state.items() if MOTION_KEY not in k}, root / two_d_name)
        torch.save({k: v for k, v in state.items() if MOTION_KEY in k}, root / motion_name)
        del state
    whisper = WhisperFeatures.tiny(seed=seed)
    torch.save({"dims": dict(TINY_DIMS), "model_state_dict": whisper.official_state_dict()}, root / WHISPER_FILE)
    return root
