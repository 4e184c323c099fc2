"""What a model's frames depend on, as a short string the batch job fingerprints clips with: computed from the
weights files (or the seed of random networks) without importing torch or building any network, and the same
string the loaded `EchoMimicV2` reports."""
from __future__ import annotations

import functools
import hashlib
from pathlib import Path

from .weights_layout import TINY_DEMO_WEIGHTS, official_weight_files

FLOAT8_IDENTITY = "fp8-linears"  # what the fp8 fast mode adds to a model's identity: its frames differ


def with_fast_mode(weights_identity: str, fp8: bool) -> str:
    """The frames depend on the weights and, in the fp8 fast mode, on its rounding: so does the identity."""
    return f"{weights_identity}+{FLOAT8_IDENTITY}" if fp8 else weights_identity

TINY_VERSION = "v1"  # bump when the tiny architecture or its initialisation changes
RANDOM_VERSION = "v1"  # bump when random() changes its initialisation
IDENTITY_HASH_BYTES = 4 << 20  # hash the first and last 4 MiB of each file: cheap, yet any other checkpoint differs there


def tiny_identity() -> str:
    """The identity `EchoMimicV2.tiny()` reports: the trained demo weights' file hash."""
    return f"tiny-demo-{_whole_file_digest(TINY_DEMO_WEIGHTS)}"


def tiny_random_identity(seed: int) -> str:
    """The identity `EchoMimicV2.tiny_random(seed)` reports."""
    return f"tiny-seed{seed}-{TINY_VERSION}"


def random_identity(preset: str, seed: int) -> str:
    """The identity `EchoMimicV2.random(preset, seed)` reports, without building it."""
    return f"random-{preset}-seed{seed}-{RANDOM_VERSION}"


def official_identity(weights_dir: str | Path, variant: str) -> str:
    """The identity `from_official(weights_dir, variant)` reports, without loading any network
    (the batch job fingerprints clips with it before its render actors load the model)."""
    return f"official-{variant}-" + _files_digest(official_weight_files(weights_dir, variant), Path(weights_dir))


@functools.cache
def _whole_file_digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()[:16]


def _files_digest(paths: list[Path], root: Path) -> str:
    """A short hash of each file's relative name, size, and first and last bytes."""
    digest = hashlib.sha256()
    for path in sorted(paths):
        size = path.stat().st_size
        digest.update(f"{path.relative_to(root).as_posix()}:{size}\n".encode())
        with path.open("rb") as handle:
            digest.update(handle.read(IDENTITY_HASH_BYTES))
            if size > IDENTITY_HASH_BYTES:
                handle.seek(max(size - IDENTITY_HASH_BYTES, IDENTITY_HASH_BYTES))
                digest.update(handle.read())
    return digest.hexdigest()[:16]
