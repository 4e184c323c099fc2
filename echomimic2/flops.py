"""Spec §12 FLOP counts of rendering with our window schedule: what `cli.py bench` reports throughput
against and what `cli.py plan` estimates GPU time from. Plain Python (no torch), so `plan` starts quickly."""
from __future__ import annotations

import math

from .windows import segment_windows

WHISPER_SLICE_SECONDS = 30  # whisper encodes audio in 30 s slices

# Spec §12.2 FLOP counts. Per denoising window of 12 frames: alpha·P + beta·P², P = latent pixels per frame.
WINDOW_FIT = {True: (6.066e9, 4.371e5), False: (2.958e9, 1.748e5)}  # keyed by "CFG on"
REFERENCE_UNET_FLOPS = {256: 1.699e11, 384: 4.036e11, 512: 7.711e11, 640: 1.312e12, 768: 2.079e12}
VAE_DECODE_FLOPS_PER_FRAME = {256: 6.222e11, 384: 1.406e12, 512: 2.515e12, 640: 3.959e12, 768: 5.754e12}
VAE_ENCODE_FLOPS = {256: 2.727e11, 384: 6.197e11, 512: 1.117e12, 640: 1.775e12, 768: 2.609e12}
POSE_ENCODER_FLOPS_PER_12_FRAMES = {256: 4.417e10, 384: 9.937e10, 512: 1.767e11, 640: 2.760e11, 768: 3.975e11}
WHISPER_FLOPS_PER_SLICE = 3.694e10


def _sized(table: dict[int, float], size: int) -> float:
    """The spec's figure at `size`; other sizes scale with the pixel count from the nearest listed size."""
    if size in table:
        return table[size]
    nearest = min(table, key=lambda listed: abs(listed - size))
    return table[nearest] * (size / nearest) ** 2


def spec_flops(size: int, frames: int, steps: int, guidance: float, fps: float = 24.0) -> dict[str, float]:
    """Official FLOPs of rendering `frames` frames (at `fps`) at size² with our window schedule."""
    pixels = (size // 8) ** 2
    alpha, beta = WINDOW_FIT[guidance > 1.0]
    windows = sum(len(segment_windows(frames, step)) for step in range(steps))
    return {
        "audio": WHISPER_FLOPS_PER_SLICE * math.ceil(frames / fps / WHISPER_SLICE_SECONDS),
        "reference": _sized(VAE_ENCODE_FLOPS, size) + _sized(REFERENCE_UNET_FLOPS, size),
        "denoise": windows * (alpha * pixels + beta * pixels**2),
        "decode": frames * _sized(VAE_DECODE_FLOPS_PER_FRAME, size),
    }

