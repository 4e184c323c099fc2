"""Reading one row's inputs for preprocessing (`stages.PreprocessStage`): whole files, each read once
(their contents are fingerprinted and then decoded), sizes checked first. A failure while handling a field
becomes that row's `Problem` (`refusing`), never an exception that stops the job.
"""
from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass

from pipeline import storage
from pipeline.manifest import ClipSpec, Problem
from pipeline.pose_sources import PoseInput, read_pose_input
from pipeline.rows import JobSettings
from pipeline.steps import DEFAULT_SEED, resolve_params

__all__ = ["DEFAULT_SEED", "ClipInputs", "RowRefused", "read_clip_inputs", "refusing", "render_params"]


def render_params(spec: ClipSpec, settings: JobSettings) -> dict:
    """The row's parameters with the preset's defaults filled in: everything that changes its pixels."""
    return resolve_params(settings.preset, seed=spec.seed, steps=spec.steps, guidance=spec.guidance, fps=spec.fps,
                          width=spec.width, height=spec.height, segment_frames=settings.segment_frames,
                          overlap_frames=settings.overlap_frames, pose_align=spec.pose_align, gesture=spec.gesture,
                          person=spec.person)


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
    pose: PoseInput | None  # None: no pose input; gestures are generated from the audio

    @property
    def pose_hashes(self) -> list[tuple[str, str]]:
        return [] if self.pose is None else self.pose.hashes


def read_clip_inputs(spec: ClipSpec, settings: JobSettings) -> ClipInputs:
    """Whole input files (their contents are fingerprinted); sizes were checked first. The pose input is
    read by its source (`pipeline.pose_sources`), which checks it as it reads it."""
    limits = settings.limits

    def read(field_name: str, uri: str, max_bytes: int) -> bytes:
        with refusing(spec, field_name, uri):
            checked = storage.check_uri(uri, allow_http=settings.allow_http, input_root=settings.input_root)
            return storage.read_bytes(checked, max_bytes=max_bytes)

    image = read("image", spec.image, limits.max_image_bytes)
    audio = read("audio", spec.audio, limits.max_audio_bytes)
    if not audio:  # as validate says it (manifest._check_audio); the decoders check the rest from the headers
        raise RowRefused([Problem(spec.row, spec.clip_id, "audio", "file is empty")])
    if spec.pose is None:
        return ClipInputs(image, audio, None)
    with refusing(spec, "pose", spec.pose):
        pose_uri = storage.check_uri(spec.pose, allow_http=settings.allow_http, input_root=settings.input_root)
        return ClipInputs(image, audio, read_pose_input(pose_uri, limits))
