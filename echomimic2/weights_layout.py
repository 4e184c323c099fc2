"""The official weights folder's layout: which files a variant reads (torch-free, so the batch job can name
and fingerprint them before any network is imported; loading is `echomimic2.checkpoints`).

Layout of a weights folder:

    reference_unet.pth  pose_encoder.pth
    denoising_unet.pth  motion_module.pth          (variant "quality")
    denoising_unet_acc.pth  motion_module_acc.pth  (variant "acc")
    sd-vae-ft-mse/config.json + diffusion_pytorch_model.safetensors (or .bin)
    audio_processor/tiny.pt                        (read by echomimic2.audio, checked by echomimic2.checkpoints too)
"""
from __future__ import annotations

from pathlib import Path

VARIANTS = ("quality", "acc")
REFERENCE_UNET_FILE = "reference_unet.pth"
POSE_ENCODER_FILE = "pose_encoder.pth"
VAE_DIR = "sd-vae-ft-mse"
VAE_WEIGHT_FILES = ("diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.bin")
WHISPER_FILE = "audio_processor/tiny.pt"

# The tiny preset's trained networks, shipped in the package (training/, issue 15): the four networks' state
# dicts in one safetensors file, each key prefixed with its network's name.
TINY_DEMO_WEIGHTS = Path(__file__).resolve().parent / "weights" / "tiny_demo.safetensors"
NETWORK_PREFIXES = ("reference_unet", "denoising_unet", "pose_encoder", "vae")


def denoising_files(variant: str) -> tuple[str, str]:
    """(2D part, motion modules) file names of a variant."""
    if variant not in VARIANTS:
        raise ValueError(f"variant must be one of {VARIANTS}, got {variant!r}")
    suffix = "" if variant == "quality" else "_acc"
    return f"denoising_unet{suffix}.pth", f"motion_module{suffix}.pth"


def vae_weight_file(vae_dir: Path) -> Path:
    for name in VAE_WEIGHT_FILES:
        if (vae_dir / name).is_file():
            return vae_dir / name
    return vae_dir / VAE_WEIGHT_FILES[0]


def checked_files(weights_dir: str | Path, variants: tuple[str, ...] = VARIANTS) -> list[Path]:
    """Every file `weights check` reads for `variants` (both: the 9 files of a complete folder), in layout order."""
    files = [path for variant in variants for path in official_weight_files(weights_dir, variant)]
    return [*dict.fromkeys(files), Path(weights_dir) / WHISPER_FILE]


def official_weight_files(weights_dir: str | Path, variant: str) -> list[Path]:
    """The files `load_official_networks` reads for `variant` (what the rendered frames depend on)."""
    weights_dir = Path(weights_dir)
    vae_dir = weights_dir / VAE_DIR
    return [
        weights_dir / REFERENCE_UNET_FILE,
        *(weights_dir / name for name in denoising_files(variant)),
        weights_dir / POSE_ENCODER_FILE,
        vae_dir / "config.json",
        vae_weight_file(vae_dir),
    ]
