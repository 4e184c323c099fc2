"""`EchoMimicV2`: the networks of one preset plus `render`, the only call the batch system makes."""
from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from .checkpoints import load_official_networks, load_prefixed_networks
from .config import official_unet_config, official_vae_config, tiny_unet_config, tiny_vae_config
from .fast import prepare_for_gpu, use_float8_linears
from .identity import official_identity, random_identity, tiny_identity, tiny_random_identity, with_fast_mode
from .networks import OfficialNetworks, build_networks, random_networks
from .presets import PRESETS, Preset, full_size_preset
from .sampler import VAE_DOWNSCALE, RenderProgress, render_segment
from .weights_layout import TINY_DEMO_WEIGHTS

AUDIO_TOKENS, AUDIO_WIDTH = 50, 384
SIZE_MULTIPLE = 64  # latent sides must be multiples of 8 (spec §4.2)


class EchoMimicV2:
    """Reference UNet, denoising UNet, pose encoder and VAE on one device and dtype."""

    def __init__(self, networks: OfficialNetworks, preset: Preset, identity: str):
        self.networks = networks
        self.preset = preset
        self.identity = identity
        parameter = next(networks.denoising_unet.parameters())
        self.device, self.dtype = parameter.device, parameter.dtype

    @classmethod
    def from_official(
        cls,
        weights_dir: str | Path,
        variant: str = "quality",
        device: str | torch.device = "cuda",
        dtype: torch.dtype = torch.float16,
        compile: bool = False,
        fp8: bool = False,
    ) -> EchoMimicV2:
        """Load the official checkpoints of `variant` ("quality" or "acc") from `weights_dir`.

        On CUDA, cuDNN autotuning is switched on; `compile=True` also compiles the denoising UNet and
        the VAE decoder (same math, ~25% faster per step, ~2x faster decode on an H100; the first
        render of each new shape then takes ~2 minutes longer): for long-lived processes only.
        `fp8=True` is the opt-in fast mode: the denoising UNet's linear layers run as fp8 matmuls
        (`fast.Float8Linear`; different numerics, measured in BENCHMARKS.md), and the identity says so.
        """
        if variant not in ("quality", "acc"):
            raise ValueError(f"variant must be 'quality' or 'acc', got {variant!r}")
        _check_compile(compile, device)
        weights_dir = Path(weights_dir)
        networks = _gpu_settings(_fast_mode(load_official_networks(weights_dir, variant, device, dtype), fp8), compile)
        return cls(networks, PRESETS[variant], with_fast_mode(official_identity(weights_dir, variant), fp8))

    @classmethod
    def tiny(cls, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32, fp8: bool = False) -> EchoMimicV2:
        """The tiny preset: the same classes with tiny widths (`tiny_unet_config`, `tiny_vae_config`), trained by
        the project on drawn talking figures (`training/train_tiny.py`; not people), weights shipped in the
        package (`TINY_DEMO_WEIGHTS`, 14 MB). It reads audio features of `WhisperFeatures.tiny(seed=0)`, the
        encoder it was trained with. For the demo and tests that look at the frames. `fp8` as in `from_official`."""
        with torch.device("meta"):  # nothing initialised only to be overwritten
            networks = build_networks(tiny_unet_config(), tiny_vae_config())
        networks = _fast_mode(load_prefixed_networks(networks, TINY_DEMO_WEIGHTS, device, dtype), fp8)
        return cls(networks, PRESETS["tiny"], with_fast_mode(tiny_identity(), fp8))

    @classmethod
    def tiny_random(cls, seed: int = 0, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32) -> EchoMimicV2:
        """The tiny preset's networks randomly initialised from `seed` (tests of the engine's structure and
        numerics; the trainer's starting point). Frames are noise.

        Built on the CPU in float32 inside a forked RNG, so the weights depend on `seed` only.
        Layers that upstream zero-initialises (the pose encoder's conv_out) get PyTorch's default
        initialisation instead, otherwise the tiny model would ignore the pose entirely.
        """
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            networks = build_networks(tiny_unet_config(), tiny_vae_config())
            for layer in (layer for network in networks for layer in network.modules()):
                weight = getattr(layer, "weight", None)
                if isinstance(weight, torch.Tensor) and hasattr(layer, "reset_parameters") and not weight.any():
                    layer.reset_parameters()
        for module in networks:
            # torch's own cast: diffusers' `ModelMixin.to` warns of float32 modules on any dtype move, even with none
            torch.nn.Module.to(module, device=device, dtype=dtype).eval().requires_grad_(False)
        return cls(networks, PRESETS["tiny"], tiny_random_identity(seed))

    @classmethod
    def random(cls, preset: str = "acc", seed: int = 0, device: str | torch.device = "cuda",
               dtype: torch.dtype = torch.float16, compile: bool = False, fp8: bool = False) -> EchoMimicV2:
        """Full-size networks (the official configs) with random weights, for benchmarks only: the
        batch system's speed without the official checkpoints. Its frames are noise.

        Built on `meta` and initialised directly on `device` (`networks.random_networks`), so a GPU
        actor does not spend minutes initialising 2.2 B parameters on the CPU. `preset` ("acc" or
        "quality") gives the default steps, guidance and size; `compile` and `fp8` as in `from_official`.
        """
        chosen = full_size_preset(preset)
        _check_compile(compile, device)
        networks = random_networks(official_unet_config(), official_vae_config(), torch.device(device), dtype, seed)
        networks = _gpu_settings(_fast_mode(networks, fp8), compile)
        return cls(networks, chosen, with_fast_mode(random_identity(preset, seed), fp8))

    def render(
        self,
        reference_image: np.ndarray,
        frame_audio: np.ndarray,
        pose_images: np.ndarray,
        seed: int,
        first_frame: int,
        steps: int | None = None,
        guidance: float | None = None,
        reference_compatible: bool = False,
        initial_latents: torch.Tensor | None = None,
        windows_per_batch: int | None = None,
        on_frames: Callable[[np.ndarray], None] | None = None,
        on_progress: Callable[[RenderProgress], None] | None = None,
    ) -> np.ndarray:
        """Frames [first_frame, first_frame + n) of a clip → uint8 (n, H, W, 3).

        reference_image uint8 (H, W, 3) with H, W multiples of 64; frame_audio float (n, 50, 384);
        pose_images uint8 (n, H, W, 3). The initial noise of global frame i depends on (seed, i) only.
        `reference_compatible` treats the inputs as a whole clip and samples exactly as the official
        pipeline (one wrap-around window schedule, one whole-clip noise draw); first_frame must be 0.
        `initial_latents` (1, 4, n, H/8, W/8) replaces the noise, for comparison runs.
        `windows_per_batch` (context windows per UNet call; same math, more memory) defaults to the
        device's measured best (`sampler.default_batches`: 2 on CUDA, 4 on the CPU).
        `on_frames` receives the frames in order, in chunks, as they are decoded (on a GPU while it decodes the
        rest), e.g. to write them meanwhile; each chunk is a view of the returned array.
        `on_progress` receives a `sampler.RenderProgress` after every UNet call and every decoded batch (for a
        progress bar: how many calls, steps and frames are done, and the fraction of the work).
        """
        steps = self.preset.steps if steps is None else steps
        guidance = self.preset.guidance if guidance is None else guidance
        _validate_render_inputs(reference_image, frame_audio, pose_images, seed, first_frame, steps, guidance)
        frames, (height, width) = len(frame_audio), reference_image.shape[:2]
        if reference_compatible and first_frame != 0:
            raise ValueError(f"first_frame: reference_compatible renders a whole clip, so it must be 0, got {first_frame}")
        latent_shape = (1, 4, frames, height // VAE_DOWNSCALE, width // VAE_DOWNSCALE)
        if initial_latents is not None and tuple(initial_latents.shape) != latent_shape:
            raise ValueError(f"initial_latents: expected shape {latent_shape}, got {tuple(initial_latents.shape)}")
        if windows_per_batch is not None and (not isinstance(windows_per_batch, int) or windows_per_batch < 1):
            raise ValueError(f"windows_per_batch: expected a positive int, got {windows_per_batch!r}")
        return render_segment(
            self.networks, reference_image, frame_audio, pose_images, seed, first_frame, steps, guidance,
            reference_compatible=reference_compatible, initial_latents=initial_latents,
            windows_per_batch=windows_per_batch, on_frames=on_frames, on_progress=on_progress,
        )


def _check_compile(compile: bool, device: str | torch.device) -> None:
    if compile and torch.device(device).type != "cuda":
        raise ValueError(f"compile: torch.compile is offered for CUDA devices only, got device {device!r}")


def _fast_mode(networks: OfficialNetworks, fp8: bool) -> OfficialNetworks:
    """The opt-in fp8 fast mode: the denoising UNet only (it is ~90 % of the time; the reference pass runs once)."""
    if fp8:
        use_float8_linears(networks.denoising_unet)
    return networks


def _gpu_settings(networks: OfficialNetworks, compile: bool, device_type: str | None = None) -> OfficialNetworks:
    """On CUDA: cuDNN autotuning, and the compiled networks when asked (fast.prepare_for_gpu).

    `device_type` defaults to the networks' own; tests pass "cuda" to run this branch on CPU networks
    (an error on a CUDA-only line must fail the CPU suite, not a user's first GPU job).
    """
    device_type = device_type or next(networks.denoising_unet.parameters()).device.type
    if device_type == "cuda":
        networks = prepare_for_gpu(networks, compile_networks=compile)
    return networks


def _validate_render_inputs(reference_image, frame_audio, pose_images, seed, first_frame, steps, guidance) -> None:
    def require(condition: bool, field: str, problem: str) -> None:
        if not condition:
            raise ValueError(f"{field}: {problem}")

    def describe(array) -> str:
        if isinstance(array, np.ndarray):
            return f"{array.dtype} array of shape {array.shape}"
        return type(array).__name__

    require(isinstance(reference_image, np.ndarray) and reference_image.dtype == np.uint8 and reference_image.ndim == 3
            and reference_image.shape[2] == 3,
            "reference_image", f"expected a uint8 (H, W, 3) RGB array, got {describe(reference_image)}")
    height, width = reference_image.shape[:2]
    require(height >= SIZE_MULTIPLE and width >= SIZE_MULTIPLE and height % SIZE_MULTIPLE == 0 and width % SIZE_MULTIPLE == 0,
            "reference_image", f"height and width must be positive multiples of {SIZE_MULTIPLE}, got {height}x{width}")
    require(isinstance(frame_audio, np.ndarray) and np.issubdtype(frame_audio.dtype, np.floating) and frame_audio.ndim == 3
            and frame_audio.shape[1:] == (AUDIO_TOKENS, AUDIO_WIDTH),
            "frame_audio", f"expected a float (n, {AUDIO_TOKENS}, {AUDIO_WIDTH}) array, got {describe(frame_audio)}")
    frames = len(frame_audio)
    require(frames >= 1, "frame_audio", "needs at least one frame, got 0")
    require(bool(np.isfinite(frame_audio).all()), "frame_audio", "contains NaN or infinite values")
    require(isinstance(pose_images, np.ndarray) and pose_images.dtype == np.uint8
            and pose_images.shape == (frames, height, width, 3),
            "pose_images", f"expected a uint8 array of shape {(frames, height, width, 3)} (one pose image per audio "
            f"frame, same size as the reference image), got {describe(pose_images)}")
    require(isinstance(seed, (int, np.integer)) and not isinstance(seed, bool), "seed", f"expected an int, got {seed!r}")
    require(isinstance(first_frame, (int, np.integer)) and not isinstance(first_frame, bool) and first_frame >= 0,
            "first_frame", f"expected an int ≥ 0, got {first_frame!r}")
    require(isinstance(steps, (int, np.integer)) and not isinstance(steps, bool) and 1 <= steps <= 1000,
            "steps", f"expected an int in [1, 1000], got {steps!r}")
    require(isinstance(guidance, (int, float, np.floating)) and not isinstance(guidance, bool) and math.isfinite(guidance)
            and guidance >= 0, "guidance", f"expected a finite number ≥ 0, got {guidance!r}")
