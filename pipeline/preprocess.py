"""Preprocessing (CPU actors): one manifest row in; out come its clip row and one work row per
segment still to render, each carrying only that segment's inputs.

The whisper encoder is loaded once per actor. A row whose inputs are refused becomes a single
`failed` row naming the row, field and reason; nothing here stops the job.
"""
from __future__ import annotations

import io
import json
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from pipeline import storage
from pipeline.fingerprint import clip_fingerprint, content_hash
from pipeline.ledger import Ledger
from pipeline.manifest import ClipSpec, Limits, Problem, check_clip_inputs, list_pose_files
from pipeline.media import SAMPLE_RATE, decode_audio, load_reference_image
from pipeline.segments import plan_segments

DEFAULT_SEED = 0
POSE_READ_THREADS = 8  # pose folders are many small objects: overlap the round trips
WORK_COLUMNS = ("kind", "clip_id", "fingerprint", "start", "stop", "info", "arrays")


@dataclass(frozen=True)
class JobSettings:
    """Everything a worker needs to know about the job (sent to every actor)."""

    output: str
    preset: str
    weights: str | None
    model_identity: str
    segment_frames: int
    overlap_frames: int
    force: bool = False
    allow_http: bool = False
    input_root: str | None = None
    limits: Limits = field(default_factory=Limits)
    render_threads: int = 0  # torch CPU threads per render actor when there is no GPU (0: torch's default)
    random_weights: bool = False  # benchmarks only: full-size networks with random weights (EchoMimicV2.random)


def render_params(spec: ClipSpec, settings: JobSettings) -> dict:
    """The row's parameters with the preset's defaults filled in: everything that changes its pixels."""
    from echomimic2 import PRESETS

    preset = PRESETS[settings.preset]
    return dict(
        preset=preset.name,
        seed=DEFAULT_SEED if spec.seed is None else spec.seed,
        steps=preset.steps if spec.steps is None else spec.steps,
        guidance=preset.guidance if spec.guidance is None else spec.guidance,
        fps=spec.fps,
        width=preset.width if spec.width is None else spec.width,
        height=preset.height if spec.height is None else spec.height,
        segment_frames=settings.segment_frames,
        overlap_frames=settings.overlap_frames,
    )


def work_row(kind: str, clip_id: str, fingerprint: str = "", start: int = -1, stop: int = -1,
             info: dict | None = None, arrays: bytes = b"") -> dict[str, np.ndarray]:
    """One row as a batch of one. Every row has the same columns, so Ray Data blocks always concatenate."""
    values = dict(kind=kind, clip_id=clip_id, fingerprint=fingerprint, start=start, stop=stop,
                  info=json.dumps(info or {}), arrays=arrays)
    return {name: np.array([values[name]], dtype=object if name == "arrays" else None) for name in WORK_COLUMNS}


def pack_arrays(**arrays: np.ndarray) -> bytes:
    """Segment inputs as one uncompressed .npz: a flat bytes column, read back without pickle."""
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    return buffer.getvalue()


def unpack_arrays(data: bytes) -> dict[str, np.ndarray]:
    with np.load(io.BytesIO(data), allow_pickle=False) as archive:
        return {name: archive[name] for name in archive.files}


class RowRefused(Exception):
    def __init__(self, problems: list[Problem]):
        super().__init__("; ".join(str(p) for p in problems))
        self.problems = problems


@contextmanager
def refusing(spec: ClipSpec, field_name: str, uri: str | None = None):
    """Turn any failure while handling one field of a row into that row's Problem."""
    try:
        yield
    except RowRefused:
        raise
    except FileNotFoundError:
        raise RowRefused([Problem(spec.row, spec.clip_id, field_name, f"not found: {storage.redact(uri or '')}")]) from None
    except Exception as exc:
        raise RowRefused([Problem(spec.row, spec.clip_id, field_name, storage.describe_error(exc))]) from exc


@dataclass
class ClipInputs:
    image: bytes
    audio: bytes
    poses: list[dict] | None  # None: the row has no pose; default poses are generated
    pose_hashes: list[tuple[str, str]]


class Preprocessor:
    """Ray Data actor: `map_batches(Preprocessor, batch_size=1, ...)` over rows {"spec": ClipSpec as JSON}."""

    def __init__(self, settings: JobSettings):
        from echomimic2.audio import WhisperFeatures

        self.settings = settings
        self.ledger = Ledger(settings.output)
        if settings.weights is None:
            self.whisper = WhisperFeatures.tiny(seed=0)
        else:
            self.whisper = WhisperFeatures.from_official(Path(settings.weights) / "audio_processor" / "tiny.pt")

    def __call__(self, batch: dict[str, np.ndarray]) -> Iterator[dict[str, np.ndarray]]:
        for spec_json in batch["spec"]:
            yield from self.clip_rows(ClipSpec(**json.loads(spec_json)))

    def clip_rows(self, spec: ClipSpec) -> Iterator[dict[str, np.ndarray]]:
        """The clip row (its plan), then a work row per segment that is not already rendered."""
        from echomimic2.audio import frame_windows, video_frame_count
        from echomimic2.pose import default_pose_sequence, extend_poses, render_pose

        started = time.perf_counter()
        settings, limits = self.settings, self.settings.limits
        try:
            problems = check_clip_inputs(spec, limits, allow_http=settings.allow_http, input_root=settings.input_root)
            if problems:
                raise RowRefused(problems)
            inputs = self.read_inputs(spec)
            params = render_params(spec, settings)
            audio_sha = content_hash(inputs.audio)
            fingerprint = clip_fingerprint(
                image_sha=content_hash(inputs.image), audio_sha=audio_sha,
                pose_shas=inputs.pose_hashes, params=params, model_identity=settings.model_identity)
            record = None if settings.force else self.ledger.finished_clip(spec.clip_id, fingerprint)
            if record is not None:
                yield work_row("skipped", spec.clip_id, fingerprint, info=dict(row=spec.row, record=record))
                return
            width, height, fps = params["width"], params["height"], params["fps"]
            with refusing(spec, "image", spec.image):
                reference = load_reference_image(inputs.image, width, height, limits, _name(spec.image))
            with refusing(spec, "audio", spec.audio):
                waveform = decode_audio(inputs.audio, limits, _name(spec.audio))
                seconds = len(waveform) / SAMPLE_RATE
                features = self.whisper(waveform)
                del waveform
                # Video length = audio length (within a frame), never more than the audio's features cover.
                n_frames = min(round(seconds * fps), video_frame_count(len(features), fps))
                if n_frames < 1:
                    raise ValueError(f"audio is {seconds:.3f} s long: too short for one frame at {fps:g} fps")
            with refusing(spec, "pose", spec.pose):
                # Poses never shorten a video: a short sequence is extended, a missing one generated.
                poses = (default_pose_sequence(n_frames, fps) if inputs.poses is None
                         else extend_poses(inputs.poses, n_frames))
            segments = plan_segments(n_frames, settings.segment_frames, settings.overlap_frames)
            pending = [(start, stop) for start, stop in segments
                       if settings.force or not storage.exists(self.ledger.segment_uri(spec.clip_id, fingerprint, start, stop))]
        except RowRefused as refused:
            yield work_row("failed", spec.clip_id, info=dict(row=spec.row, error=str(refused)))
            return

        yield work_row("clip", spec.clip_id, fingerprint, info=dict(
            row=spec.row, frames=n_frames, fps=fps, seconds=seconds, width=width, height=height,
            audio=spec.audio, audio_sha=audio_sha, params=params,
            segments=segments, pending=pending, preprocess_seconds=time.perf_counter() - started))
        del inputs
        for start, stop in pending:
            segment_started = time.perf_counter()
            try:
                pose_images = np.stack([render_pose(pose, width, height) for pose in poses[start:stop]])
                arrays = pack_arrays(reference=reference, audio=frame_windows(features, fps, start, stop),
                                     poses=pose_images)
            except Exception as exc:
                error = str(Problem(spec.row, spec.clip_id, "pose", storage.describe_error(exc)))
                yield work_row("segment_failed", spec.clip_id, fingerprint, start, stop, info=dict(error=error))
                continue
            info = dict(seed=params["seed"], steps=params["steps"], guidance=params["guidance"],
                        preprocess_seconds=time.perf_counter() - segment_started)
            yield work_row("segment", spec.clip_id, fingerprint, start, stop, info=info, arrays=arrays)

    def read_inputs(self, spec: ClipSpec) -> ClipInputs:
        """Whole input files (their contents are fingerprinted); sizes were checked first."""
        from echomimic2.pose import load_pose_npz, read_pose_npy

        limits, settings = self.settings.limits, self.settings

        def read(field_name: str, uri: str, max_bytes: int) -> bytes:
            with refusing(spec, field_name, uri):
                checked = storage.check_uri(uri, allow_http=settings.allow_http, input_root=settings.input_root)
                return storage.read_bytes(checked, max_bytes=max_bytes)

        image = read("image", spec.image, limits.max_image_bytes)
        audio = read("audio", spec.audio, limits.max_audio_bytes)
        if spec.pose is None:
            return ClipInputs(image, audio, None, [])
        with refusing(spec, "pose", spec.pose):
            pose_uri = storage.check_uri(spec.pose, allow_http=settings.allow_http, input_root=settings.input_root)
            files = list_pose_files(pose_uri, limits)
            if len(files) == 1 and files[0] == pose_uri:
                data = storage.read_bytes(pose_uri, max_bytes=limits.max_pose_npz_bytes)
                return ClipInputs(image, audio, load_pose_npz(data), [(_name(pose_uri), content_hash(data))])
            with ThreadPoolExecutor(POSE_READ_THREADS) as pool:
                contents = list(pool.map(lambda uri: storage.read_bytes(uri, max_bytes=limits.max_pose_file_bytes), files))
            names = [_name(uri) for uri in files]
            poses = [read_pose_npy(data, name=name) for data, name in zip(contents, names)]
            return ClipInputs(image, audio, poses, [(name, content_hash(data)) for name, data in zip(names, contents)])


def _name(uri: str) -> str:
    return uri.rstrip("/").rsplit("/", 1)[-1]


def spec_json(spec: ClipSpec) -> str:
    return json.dumps(asdict(spec))
