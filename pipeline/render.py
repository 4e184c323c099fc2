"""Which model the job renders with: loading it on a render worker (`stages.RenderStage.setup`), the
compiled-kernel cache its workers share (warm starts), and the identity the driver fingerprints clips with
before any worker has loaded it."""
from __future__ import annotations

import hashlib
import logging
import time
from pathlib import Path

from pipeline import storage
from pipeline.rows import JobSettings

log = logging.getLogger(__name__)

TINY_MODEL_SEED = 0  # the tiny preset's audio encoder (it was trained with it) and the --random-weights networks


# Where render workers keep compiled kernels when the job names no --compile-cache: beside its outputs, so
# every node of a cluster (and the next job into the same root) finds them.
DEFAULT_COMPILE_CACHE = "_cache/compile"
MAX_COMPILE_CACHE_BYTES = 2 << 30


def compiles_networks(settings: JobSettings, device: str) -> bool:
    """Whether a render worker on `device` compiles its networks: render actors live for the whole job, so on
    CUDA they do unless the job is --eager (compilation is offered for CUDA only)."""
    return device == "cuda" and settings.compile


def load_model(settings: JobSettings, device: str, compile_networks: bool):
    import torch

    from echomimic2 import PRESETS, EchoMimicV2

    variant = PRESETS[settings.preset].variant
    dtype = torch.float16 if device == "cuda" else torch.float32
    if settings.random_weights:
        return EchoMimicV2.random(settings.preset, seed=TINY_MODEL_SEED, device=device, dtype=dtype, compile=compile_networks,
                                  fp8=settings.fp8)
    if settings.weights is None:
        return EchoMimicV2.tiny(device=device, fp8=settings.fp8)
    from pipeline.weights_source import local_weights

    weights = local_weights(settings.weights, variant)  # a URI: this node's checked copy (downloaded once)
    return EchoMimicV2.from_official(weights, variant=variant, device=device, dtype=dtype, compile=compile_networks,
                                     fp8=settings.fp8)


class CompileCache:
    """Compiled kernels that render workers share across processes, nodes and jobs: one file per torch/CUDA/GPU
    model and preset (`echomimic2.fast.compile_cache_key`) in a folder or storage URI. A worker loads it before
    its first render (so `torch.compile` finds its kernels instead of generating them) and saves it again
    whenever it generated new ones. Any problem with the cache (missing, corrupt, foreign, unwritable) costs a
    cold compile and a log line, never a segment."""

    def __init__(self, folder_uri: str, preset: str, fp8: bool = False, saved_traces: bool = False):
        from echomimic2.fast import compile_cache_key

        # The fast mode compiles other graphs: its own file, or the two modes' workers would overwrite each other's.
        self.uri = storage.join(folder_uri, f"{compile_cache_key()}-{preset}{'-fp8' if fp8 else ''}.bin")
        self.loaded = False
        self.load_seconds = 0.0  # reading and unpacking the file: part of a warm start's setup
        self.saved_at_graphs: int | None = None
        self.saved_traces = saved_traces  # Dynamo's traces too (`fast.enable_saved_traces`), not only kernels

    def load(self) -> bool:
        from echomimic2.fast import enable_saved_traces, generated_kernel_graphs, load_compile_artifacts

        started = time.perf_counter()
        if self.saved_traces:
            enable_saved_traces()  # a cold worker too: what it compiles is saved with its traces
        try:
            data = storage.read_bytes(self.uri, max_bytes=MAX_COMPILE_CACHE_BYTES) if storage.exists(self.uri) else None
        except Exception as exc:  # noqa: BLE001 - an unreadable cache means compiling, not failing
            log.warning("compile cache %s unreadable, compiling: %s", storage.redact(self.uri), storage.describe_error(exc))
            data = None
        self.loaded = data is not None and load_compile_artifacts(data)
        if data is not None and not self.loaded:
            log.warning("compile cache %s is not usable here (corrupt or from another torch), compiling",
                        storage.redact(self.uri))
        self.saved_at_graphs = generated_kernel_graphs()
        self.load_seconds = time.perf_counter() - started
        return self.loaded

    def save_if_new(self) -> bool:
        """Save what this process compiled when it generated kernels since the last save; True if written."""
        from echomimic2.fast import compile_artifacts, generated_kernel_graphs

        graphs = generated_kernel_graphs()
        if graphs == self.saved_at_graphs:
            return False
        try:
            data = compile_artifacts()
            if data:
                storage.write_atomic(self.uri, data)
        except Exception as exc:  # noqa: BLE001 - the next worker compiles again; this one renders on
            log.warning("compile cache %s not saved: %s", storage.redact(self.uri), storage.describe_error(exc))
            return False
        self.saved_at_graphs = graphs
        return bool(data)


def compile_cache_folder(settings: JobSettings) -> str:
    return settings.compile_cache or storage.join(settings.output, DEFAULT_COMPILE_CACHE)


def model_identity(preset: str, weights: str | None, random_weights: bool = False, fp8: bool = False) -> str:
    """What the frames depend on besides the inputs: the renderer's weights (and the fast mode's fp8 rounding, as
    `EchoMimicV2`'s identity says) and the audio encoder's. Torch-free (`echomimic2.identity`): the driver decides
    skips and refuses bad weights before importing any network."""
    from echomimic2.identity import official_identity, random_identity, tiny_identity, with_fast_mode
    from echomimic2.presets import PRESETS
    from echomimic2.weights_layout import WHISPER_FILE

    if random_weights:
        return f"{with_fast_mode(random_identity(preset, TINY_MODEL_SEED), fp8)}+whisper-random-seed{TINY_MODEL_SEED}"
    if weights is None:
        return f"{with_fast_mode(tiny_identity(), fp8)}+whisper-random-seed{TINY_MODEL_SEED}"
    whisper = Path(weights) / WHISPER_FILE
    renderer = with_fast_mode(official_identity(Path(weights), PRESETS[preset].variant), fp8)
    return f"{renderer}+whisper-{_file_sha256(whisper)[:16]}"


def _file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()
