"""Which model the job renders with: loading it on a render worker (`stages.RenderStage.setup`) and the
identity the driver fingerprints clips with before any worker has loaded it."""
from __future__ import annotations

import hashlib
import os
from pathlib import Path

from pipeline.rows import JobSettings

TINY_MODEL_SEED = 0  # also the seed of the full-size random networks of --random-weights
# Render actors live for the whole job, so on CUDA they compile the networks (BENCHMARKS.md: ~1/3 less
# time per segment, after ~2 minutes of compilation per actor); ECHOMIMIC2_COMPILE=0 turns that off.
COMPILE_ENV = "ECHOMIMIC2_COMPILE"


def load_model(settings: JobSettings, device: str):
    import torch

    from echomimic2 import PRESETS, EchoMimicV2

    variant = PRESETS[settings.preset].variant
    dtype = torch.float16 if device == "cuda" else torch.float32
    compile_networks = device == "cuda" and os.environ.get(COMPILE_ENV, "1") != "0"
    if settings.random_weights:
        return EchoMimicV2.random(settings.preset, seed=TINY_MODEL_SEED, device=device, dtype=dtype, compile=compile_networks)
    if settings.weights is None:
        return EchoMimicV2.tiny(seed=TINY_MODEL_SEED, device=device)
    return EchoMimicV2.from_official(settings.weights, variant=variant, device=device, dtype=dtype, compile=compile_networks)


def model_identity(preset: str, weights: str | None, random_weights: bool = False) -> str:
    """What the frames depend on besides the inputs: the renderer's weights and the audio encoder's."""
    from echomimic2 import PRESETS, EchoMimicV2
    from echomimic2.model import official_identity, random_identity

    if random_weights:
        return f"{random_identity(preset, TINY_MODEL_SEED)}+whisper-random-seed{TINY_MODEL_SEED}"
    if weights is None:
        # Building the tiny networks takes ~0.1 s; their identity is the same string the actors will report.
        return f"{EchoMimicV2.tiny(seed=TINY_MODEL_SEED).identity}+whisper-random-seed{TINY_MODEL_SEED}"
    whisper = Path(weights) / "audio_processor" / "tiny.pt"
    return f"{official_identity(Path(weights), PRESETS[preset].variant)}+whisper-{_file_sha256(whisper)[:16]}"


def _file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()
