"""Rendering (GPU actors): the model is loaded once per actor; each work row is one segment.

A segment's frames go straight to storage (`<root>/_segments/...`, atomic), then a ledger record;
only a small row travels on. A segment that keeps failing is tried SEGMENT_ATTEMPTS times, then
reported as `segment_failed` (its clip fails, the job goes on): Ray's own retries are unbounded.
"""
from __future__ import annotations

import hashlib
import json
import os
import time
from pathlib import Path

import numpy as np
import ray

from pipeline import storage
from pipeline.ledger import Ledger
from pipeline.preprocess import WORK_COLUMNS, JobSettings, unpack_arrays, work_row
from pipeline.segment_store import write_segment

SEGMENT_ATTEMPTS = 3
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


class SegmentRenderer:
    """Ray Data actor: `map_batches(SegmentRenderer, batch_size=1, num_gpus=1, num_cpus=0, ...)`."""

    def __init__(self, settings: JobSettings):
        import torch

        device = "cuda" if torch.cuda.is_available() else "cpu"  # Ray sets CUDA_VISIBLE_DEVICES even with logical GPUs
        if device == "cpu" and settings.render_threads:
            torch.set_num_threads(settings.render_threads)
        self.model = load_model(settings, device)
        if not settings.model_identity.startswith(self.model.identity + "+"):
            raise RuntimeError(f"weights changed since the job started: model is {self.model.identity}, "
                               f"the job's fingerprints use {settings.model_identity}")
        self.ledger = Ledger(settings.output)
        # Which Ray node rendered each segment (ledger records): shows placement and re-renders after node loss.
        self.node_id = ray.get_runtime_context().get_node_id()

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        row = {name: batch[name][0] for name in WORK_COLUMNS}
        if row["kind"] != "segment":  # clip plans and refusals pass through to the driver
            return _result(work_row(row["kind"], row["clip_id"], row["fingerprint"], int(row["start"]),
                                    int(row["stop"]), json.loads(row["info"])))
        clip_id, fingerprint = str(row["clip_id"]), str(row["fingerprint"])
        start, stop, info = int(row["start"]), int(row["stop"]), json.loads(row["info"])
        inputs = unpack_arrays(row["arrays"])
        uri = self.ledger.segment_uri(clip_id, fingerprint, start, stop)
        errors = []
        for attempt in range(1, SEGMENT_ATTEMPTS + 1):
            started = time.perf_counter()
            try:
                frames = self.model.render(inputs["reference"], inputs["audio"], inputs["poses"], seed=info["seed"],
                                           first_frame=start, steps=info["steps"], guidance=info["guidance"])
                render_seconds = time.perf_counter() - started
                write_segment(frames, uri)
                self.ledger.record_segment(clip_id, fingerprint, start, stop, seconds=render_seconds,
                                           attempt=attempt, pid=os.getpid(), node_id=self.node_id,
                                           model=self.model.identity)
            except Exception as exc:  # noqa: BLE001 - any failure of this segment is retried, then reported
                errors.append(f"attempt {attempt}: {storage.describe_error(exc)}")
                continue
            return _result(work_row("rendered", clip_id, fingerprint, start, stop,
                                    dict(seconds=render_seconds, attempts=attempt, uri=uri)))
        error = f"segment {start}-{stop} failed {SEGMENT_ATTEMPTS} times: " + "; ".join(errors)
        return _result(work_row("segment_failed", clip_id, fingerprint, start, stop, dict(error=error)))


def _result(row: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Rows leaving the GPU stage carry no arrays."""
    row.pop("arrays")
    return row
