"""Where a clip's poses come from: one small class per kind of `pose` input, and the registry that picks one.

    source = source_for(uri)                      # the first entry of POSE_SOURCES whose `matches(uri)` is true
    given = source.read(uri, limits, input_root)  # every file read once: (name, content hash) of each, parsed where it can be
    poses, info = given.sequence(fps, frames, limits)   # once the clip's frame count is known (the audio's)
    source.check(uri, limits, input_root)         # what `validate` runs (may be cheaper than a full read)

Adding a pose source is one class with those four members plus one entry in `POSE_SOURCES`. A refused input
raises InputError (or the source's own ValueError) whose message starts with the file's name; the caller
names the row and the field (`preprocess.refusing`, `manifest.check_clip_inputs`). Every file is read with
`_read`: a regular file, bounded, and with `input_root` inside it after resolving, folder members included.
"""
from __future__ import annotations

import re
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from pipeline import storage
from pipeline.fingerprint import content_hash
from pipeline.limits import Limits
from pipeline.storage import InputError

__all__ = ["POSE_SOURCES", "DrivingVideo", "NpyFolder", "NpzSequence", "PoseInput", "PoseSource", "list_pose_files",
           "read_pose_input", "source_for"]

POSE_READ_THREADS = 8  # pose folders are many small objects: overlap the round trips
_POSE_FRAME = re.compile(r"^(0|[1-9][0-9]*)\.npy$")
InputRoot = Path | str | None  # local files must resolve inside it (`storage.read_bytes`)


@dataclass
class PoseInput:
    """A row's pose input as its source read it."""

    source: PoseSource
    name: str  # the file or folder name, for messages
    hashes: list[tuple[str, str]]  # (file name, content hash) in frame order: part of the clip's fingerprint
    poses: list[dict] | None = None  # parsed official pose dicts (files), or None: made by `sequence`
    data: bytes | None = field(default=None, repr=False)  # what `sequence` decodes (a driving video)

    def sequence(self, fps: float, frames: int, limits: Limits) -> tuple[list[dict], dict]:
        """At most `frames` poses at `fps` (a shorter sequence is extended later, like any) and what to add to
        the clip's poses summary in results."""
        return self.source.sequence(self, fps, frames, limits)


class PoseSource(Protocol):
    def matches(self, uri: str) -> bool: ...

    def read(self, uri: str, limits: Limits, input_root: InputRoot = None) -> PoseInput: ...

    def sequence(self, given: PoseInput, fps: float, frames: int, limits: Limits) -> tuple[list[dict], dict]: ...

    def check(self, uri: str, limits: Limits, input_root: InputRoot = None) -> None: ...


def _name(uri: str) -> str:
    return uri.rstrip("/").rsplit("/", 1)[-1]


def _read(uri: str, max_bytes: int, input_root: InputRoot) -> bytes:
    try:
        return storage.read_bytes(uri, max_bytes=max_bytes, input_root=input_root)
    except InputError as exc:  # e.g. over the size limit: say which file
        raise InputError(f"{_name(uri)}: {exc}") from None


class _ParsedFiles:
    """Sources whose files hold the poses themselves: read parses them, validate runs the same read."""

    def sequence(self, given: PoseInput, fps: float, frames: int, limits: Limits) -> tuple[list[dict], dict]:
        return given.poses, {}

    def check(self, uri: str, limits: Limits, input_root: InputRoot = None) -> None:
        self.read(uri, limits, input_root)


class NpzSequence(_ParsedFiles):
    """One pickle-free `.npz` holding the whole sequence (echomimic2.pose.save_pose_npz)."""

    def matches(self, uri: str) -> bool:
        return uri.rstrip("/").lower().endswith(".npz")

    def read(self, uri: str, limits: Limits, input_root: InputRoot = None) -> PoseInput:
        from echomimic2.pose import PoseFormatError, load_pose_npz

        name, data = _name(uri), _read(uri, limits.max_pose_npz_bytes, input_root)
        try:
            poses = load_pose_npz(data, name=name)
        except PoseFormatError as exc:  # names the file and the refused content
            raise InputError(str(exc)) from None
        if len(poses) > limits.max_pose_frames:
            raise InputError(f"{name} holds {len(poses)} frames, over the limit of {limits.max_pose_frames}")
        return PoseInput(self, name, [(name, content_hash(data))], poses=poses)


class NpyFolder(_ParsedFiles):
    """A folder of the official per-frame `0.npy, 1.npy, …` dicts, read with a restricted unpickler."""

    def matches(self, uri: str) -> bool:
        return True  # the fallback: anything that is not a file of another source names a folder

    def read(self, uri: str, limits: Limits, input_root: InputRoot = None) -> PoseInput:
        from echomimic2.pose import PoseFormatError, read_pose_npy

        files = list_pose_files(uri, limits)  # counted before anything is read
        with ThreadPoolExecutor(POSE_READ_THREADS) as pool:
            contents = list(pool.map(lambda file_uri: _read(file_uri, limits.max_pose_file_bytes, input_root), files))
        names = [_name(file_uri) for file_uri in files]
        try:
            poses = [read_pose_npy(data, name=name) for data, name in zip(contents, names)]
        except PoseFormatError as exc:
            raise InputError(str(exc)) from None
        return PoseInput(self, _name(uri), [(name, content_hash(data)) for name, data in zip(names, contents)],
                         poses=poses)


class DrivingVideo:
    """A video of a person talking (mp4, mov, webm, mkv, …): the poses are extracted with MediaPipe at the
    clip's fps once the clip's frame count is known (pipeline.driving_video)."""

    def matches(self, uri: str) -> bool:
        from pipeline.driving_video import is_video_name

        return is_video_name(uri)

    @staticmethod
    def video_limits(limits: Limits):
        from pipeline.driving_video import VideoLimits

        return VideoLimits(max_bytes=limits.max_video_bytes, max_seconds=limits.max_audio_seconds,
                           max_pixels=limits.max_video_frame_pixels, max_frames=limits.max_pose_frames)

    def read(self, uri: str, limits: Limits, input_root: InputRoot = None) -> PoseInput:
        name, data = _name(uri), _read(uri, self.video_limits(limits).max_bytes, input_root)
        return PoseInput(self, name, [(name, content_hash(data))], data=data)

    def sequence(self, given: PoseInput, fps: float, frames: int, limits: Limits) -> tuple[list[dict], dict]:
        from pipeline.driving_video import poses_from_video

        poses, summary = poses_from_video(given.data, fps, frames, self.video_limits(limits), name=given.name)
        return poses, dict(pose_source="driving video", driving_video=summary)

    def check(self, uri: str, limits: Limits, input_root: InputRoot = None) -> None:
        """The header limits, then hands sought in a few sampled frames (not the whole extraction)."""
        from pipeline.driving_video import DrivingVideoError, check_driving_video

        video_limits = self.video_limits(limits)
        try:
            check_driving_video(_read(uri, video_limits.max_bytes, input_root), video_limits, name=_name(uri))
        except DrivingVideoError as exc:
            raise InputError(str(exc)) from None


# Tried in order; the first that matches reads the input (the folder last: it matches anything).
POSE_SOURCES: list[PoseSource] = [DrivingVideo(), NpzSequence(), NpyFolder()]


def source_for(uri: str) -> PoseSource:
    return next(source for source in POSE_SOURCES if source.matches(uri))


def read_pose_input(uri: str, limits: Limits, input_root: InputRoot = None) -> PoseInput:
    """A checked pose URI read by its source (each file once)."""
    return source_for(uri).read(uri, limits, input_root)


def list_pose_files(uri: str, limits: Limits) -> list[str]:
    """The frames of a pose folder in frame order: ``0.npy, 1.npy, …`` (numbered from 0 without gaps;
    dot-files ignored, anything else refused). A folder with more than ``limits.max_pose_frames`` entries
    is refused without listing the rest."""
    files = storage.list_files(uri, max_entries=limits.max_pose_frames)
    frames = {}
    for file_uri in files:
        name = _name(file_uri)
        if name.startswith("."):
            continue
        if not _POSE_FRAME.match(name):
            raise InputError(f"unexpected file {name!r} in the pose folder (expected 0.npy, 1.npy, …)")
        frames[int(name[:-4])] = file_uri
    if not frames:
        raise InputError("pose folder holds no frames (expected 0.npy, 1.npy, …)")
    gaps = sorted(set(range(len(frames))) - frames.keys())
    if gaps:
        raise InputError(f"pose frames must be numbered 0..{len(frames) - 1} without gaps; {gaps[0]}.npy is missing")
    return [frames[i] for i in range(len(frames))]
