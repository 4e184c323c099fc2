"""Reading one row's inputs for preprocessing (`stages.PreprocessStage`): whole files, each read once
(their contents are fingerprinted and then decoded), sizes checked first. A failure while handling a field
becomes that row's `Problem` (`refusing`), never an exception that stops the job.
"""
from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass

from pipeline import storage
from pipeline.driving_video import VideoLimits, is_video_name, poses_from_video
from pipeline.fingerprint import content_hash
from pipeline.manifest import ClipSpec, Limits, Problem, list_pose_files
from pipeline.rows import JobSettings
from pipeline.steps import DEFAULT_SEED, resolve_params

__all__ = ["DEFAULT_SEED", "ClipInputs", "RowRefused", "driving_video_poses", "read_clip_inputs",
           "read_poses", "refusing", "render_params"]

POSE_READ_THREADS = 8  # pose folders are many small objects: overlap the round trips


def render_params(spec: ClipSpec, settings: JobSettings) -> dict:
    """The row's parameters with the preset's defaults filled in: everything that changes its pixels."""
    return resolve_params(settings.preset, seed=spec.seed, steps=spec.steps, guidance=spec.guidance, fps=spec.fps,
                          width=spec.width, height=spec.height, segment_frames=settings.segment_frames,
                          overlap_frames=settings.overlap_frames, pose_align=spec.pose_align, gesture=spec.gesture)


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
    poses: list[dict] | None  # None: the row has no pose files; gestures are generated (or a driving video given)
    pose_hashes: list[tuple[str, str]]
    pose_video: bytes | None = None  # a driving video: its poses are extracted once the frame count is known


def read_poses(pose_uri: str, limits: Limits) -> tuple[list[dict], list[tuple[str, str]]]:
    """A checked pose URI (one `.npz`, or a folder of official per-frame `.npy` files) → the poses in frame
    order and (file name, content hash) of each file read."""
    from echomimic2.pose import load_pose_npz, read_pose_npy

    files = list_pose_files(pose_uri, limits)
    if len(files) == 1 and files[0] == pose_uri:
        data = storage.read_bytes(pose_uri, max_bytes=limits.max_pose_npz_bytes)
        return load_pose_npz(data), [(_name(pose_uri), content_hash(data))]
    with ThreadPoolExecutor(POSE_READ_THREADS) as pool:
        contents = list(pool.map(lambda uri: storage.read_bytes(uri, max_bytes=limits.max_pose_file_bytes), files))
    names = [_name(uri) for uri in files]
    poses = [read_pose_npy(data, name=name) for data, name in zip(contents, names)]
    return poses, [(name, content_hash(data)) for name, data in zip(names, contents)]


def read_clip_inputs(spec: ClipSpec, settings: JobSettings) -> ClipInputs:
    """Whole input files (their contents are fingerprinted); sizes were checked first."""
    limits = settings.limits

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
        if is_video_name(pose_uri):
            video = storage.read_bytes(pose_uri, max_bytes=VideoLimits().max_bytes)
            return ClipInputs(image, audio, None, [(_name(pose_uri), content_hash(video))], pose_video=video)
        poses, hashes = read_poses(pose_uri, limits)
    return ClipInputs(image, audio, poses, hashes)


def driving_video_poses(spec: ClipSpec, video: bytes, fps: float, frames: int, limits: Limits) -> tuple[list[dict], dict]:
    """The poses of a driving video at the clip's frame rate (at most `frames`; a shorter video is extended
    like any pose sequence) and its summary for results."""
    limits_for_video = VideoLimits(max_seconds=limits.max_audio_seconds, max_frames=limits.max_pose_frames)
    return poses_from_video(video, fps, frames, limits_for_video, name=_name(spec.pose))


def _name(uri: str) -> str:
    return uri.rstrip("/").rsplit("/", 1)[-1]
