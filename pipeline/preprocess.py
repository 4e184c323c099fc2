"""Reading one row's inputs for preprocessing (`stages.PreprocessStage`): whole files, each read once
(their contents are fingerprinted and then decoded), sizes bounded as they are read. A failure while handling a field
becomes that row's `Problem` (`refusing`), never an exception that stops the job.
"""
from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass

from pipeline import storage
from pipeline.manifest import ClipSpec, Problem
from pipeline.params import RenderParams
from pipeline.pose_sources import PoseInput, read_pose_input
from pipeline.rows import JobSettings

__all__ = ["RowFiles", "RowRefused", "read_clip_inputs", "refusing", "render_params"]


def render_params(spec: ClipSpec, settings: JobSettings) -> RenderParams:
    """The row's parameters with the job's and the preset's defaults filled in: everything that changes its pixels."""
    return RenderParams.for_row(spec, settings.preset, segment_frames=settings.segment_frames,
                                overlap_frames=settings.overlap_frames)


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
class RowFiles:
    """A row's input files as read, before decoding: their contents are fingerprinted."""

    image: bytes
    audio: bytes
    pose: PoseInput | None  # None: no pose input; gestures are generated from the audio

    @property
    def pose_hashes(self) -> list[tuple[str, str]]:
        return [] if self.pose is None else self.pose.hashes


def read_clip_inputs(spec: ClipSpec, settings: JobSettings) -> RowFiles:
    """Whole input files (their contents are fingerprinted), each read bounded by its size limit and, under
    an input root, confined to it as it is opened. The audio gets the check `validate` makes
    (`media.check_audio`); the pose input is read by its source (`pipeline.pose_sources`), which checks it as
    it reads it."""
    from pipeline.media import check_audio

    limits, root = settings.limits, settings.input_root

    def read(field_name: str, uri: str, max_bytes: int) -> bytes:
        with refusing(spec, field_name, uri):
            checked = storage.check_uri(uri, allow_http=settings.allow_http, input_root=root)
            return storage.read_bytes(checked, max_bytes=max_bytes, input_root=root)

    image = read("image", spec.image, limits.max_image_bytes)
    audio = read("audio", spec.audio, limits.max_audio_bytes)
    with refusing(spec, "audio", spec.audio):
        check_audio(audio, spec.fps, limits)
    if spec.pose is None:
        return RowFiles(image, audio, None)
    with refusing(spec, "pose", spec.pose):
        pose_uri = storage.check_uri(spec.pose, allow_http=settings.allow_http, input_root=root)
        return RowFiles(image, audio, read_pose_input(pose_uri, limits, root))
