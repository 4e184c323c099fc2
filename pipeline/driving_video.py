"""Driving videos: checked from their header, decoded with ffmpeg at the clip's fps into bounded RGB
frames, turned into official pose dicts (echomimic2.pose_detect); and the `poses extract` command.

Nothing is decoded before the header passed the limits (file size, duration, pixels); the decoder
asks ffmpeg for at most `max_frames` frames at most `max_side` pixels long, and frames stream one at
a time into the detector, so memory stays flat whatever the clip's length.
"""
from __future__ import annotations

import re
import stat
import subprocess
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pipeline.limits import Limits
from pipeline.media import ffmpeg_exe, restricted_input

VIDEO_SUFFIXES = (".mp4", ".mov", ".webm", ".mkv", ".m4v", ".avi")
_DURATION = re.compile(r"Duration: (\d+):(\d\d):(\d\d(?:\.\d+)?)")
_VIDEO_STREAM = re.compile(r"Stream #\S+.*?: Video: (\w+).*?, (\d{2,5})x(\d{2,5})")
# Only the containers of mp4/mov/webm/mkv/avi, only local input (`media.restricted_input`).
INPUT_RESTRICTIONS = restricted_input(("mov", "mp4", "matroska", "webm", "avi"))


class DrivingVideoError(ValueError):
    """A driving video that cannot be used; the message says why (for the row's error)."""


@dataclass(frozen=True)
class VideoLimits:
    """The reader's bounds, from the row limits (`pipeline.limits.Limits`, their one home)."""

    max_bytes: int = Limits.max_video_bytes
    max_seconds: float = Limits.max_audio_seconds
    max_pixels: int = Limits.max_video_frame_pixels
    max_frames: int = Limits.max_pose_frames
    max_side: int = 960  # frames are decoded at most this long (MediaPipe works at ~256 px inside): not a limit


@dataclass(frozen=True)
class VideoInfo:
    width: int
    height: int
    seconds: float
    codec: str


def is_video_name(name: str) -> bool:
    return Path(name.split("?")[0]).suffix.lower() in VIDEO_SUFFIXES


def probe_video(path: str | Path, limits: VideoLimits = VideoLimits()) -> VideoInfo:
    """Size, duration and codec from ffmpeg's header report; DrivingVideoError for a file that is not
    a video, or one over the limits. Nothing is decoded."""
    path = str(path)
    info = Path(path).stat()
    if not stat.S_ISREG(info.st_mode):  # a FIFO or device would block ffmpeg or never end
        raise DrivingVideoError("driving video is not a regular file")
    size = info.st_size
    if size > limits.max_bytes:
        raise DrivingVideoError(f"driving video is {size} bytes, over the limit of {limits.max_bytes}")
    report = subprocess.run([ffmpeg_exe(), "-hide_banner", "-nostdin", *INPUT_RESTRICTIONS, "-i", path], capture_output=True,
                            text=True, errors="replace", timeout=60).stderr.replace(path, "<file>")
    stream = _VIDEO_STREAM.search(report)
    duration = _DURATION.search(report)
    if stream is None or duration is None:
        lines = [line.strip() for line in report.splitlines() if line.strip()]
        detail = "no video stream" if " Stream #" in report or not lines else lines[-1]
        raise DrivingVideoError(f"not a readable video: mp4/mov/webm/mkv/avi expected ({detail})")
    hours, minutes, seconds = duration.groups()
    info = VideoInfo(int(stream.group(2)), int(stream.group(3)),
                     int(hours) * 3600 + int(minutes) * 60 + float(seconds), stream.group(1))
    if info.seconds > limits.max_seconds:
        raise DrivingVideoError(f"driving video is {info.seconds:.1f} s long, over the limit of {limits.max_seconds:g} s")
    if info.width * info.height > limits.max_pixels:
        raise DrivingVideoError(f"driving video frames are {info.width}x{info.height}, over {limits.max_pixels} pixels")
    return info


def decoded_size(info: VideoInfo, max_side: int) -> tuple[int, int]:
    """(width, height) the frames are decoded at: at most max_side long, even (yuv420 sources)."""
    scale = min(1.0, max_side / max(info.width, info.height))
    return max(2, round(info.width * scale / 2) * 2), max(2, round(info.height * scale / 2) * 2)


def decode_frames(path: str | Path, fps: float, max_frames: int | None = None,
                  limits: VideoLimits = VideoLimits()) -> Iterator[np.ndarray]:
    """uint8 (h, w, 3) RGB frames resampled to `fps` (ffmpeg's fps filter: nearest frame in time),
    at most min(max_frames, limits.max_frames), one at a time."""
    if not (fps > 0 and np.isfinite(fps)):
        raise ValueError(f"fps must be positive, got {fps!r}")
    info = probe_video(path, limits)
    width, height = decoded_size(info, limits.max_side)
    count = limits.max_frames if max_frames is None else min(max_frames, limits.max_frames)
    command = [ffmpeg_exe(), "-hide_banner", "-nostdin", "-loglevel", "error", *INPUT_RESTRICTIONS, "-i", str(path), "-an", "-sn",
               "-vf", f"fps={fps:.6f},scale={width}:{height}:flags=area", "-frames:v", str(count),
               "-f", "rawvideo", "-pix_fmt", "rgb24", "pipe:1"]
    frame_bytes = width * height * 3
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    produced = 0
    try:
        while produced < count:
            data = process.stdout.read(frame_bytes)
            if len(data) < frame_bytes:
                break
            produced += 1
            yield np.frombuffer(data, dtype=np.uint8).reshape(height, width, 3)
    finally:
        process.stdout.close()
        if process.poll() is None:
            process.kill()
        error = process.stderr.read().decode(errors="replace").strip()
        process.stderr.close()
        returncode = process.wait()
    if produced == 0:
        raise DrivingVideoError(f"no frame could be decoded ({error.splitlines()[-1] if error else f'ffmpeg exit {returncode}'})")


def _local_file(data_or_path: bytes | str | Path, name: str):
    """A context manager giving a local path: the path itself, or the bytes in a temporary file."""
    if isinstance(data_or_path, (str, Path)):
        return _Given(str(data_or_path))
    suffix = Path(name).suffix.lower() if Path(name).suffix.lower() in VIDEO_SUFFIXES else ".mp4"  # never .m3u8 & co
    tmp = tempfile.NamedTemporaryFile(suffix=suffix)
    tmp.write(data_or_path)
    tmp.flush()
    return _Temporary(tmp)


class _Given:
    def __init__(self, path: str):
        self.path = path

    def __enter__(self) -> str:
        return self.path

    def __exit__(self, *exc_info) -> None:
        pass


class _Temporary:
    def __init__(self, tmp):
        self.tmp = tmp

    def __enter__(self) -> str:
        return self.tmp.name

    def __exit__(self, *exc_info) -> None:
        self.tmp.close()


def poses_from_video(data_or_path: bytes | str | Path, fps: float, n_frames: int | None = None,
                     limits: VideoLimits = VideoLimits(), name: str = "driving video",
                     progress: Callable[[int], None] | None = None) -> tuple[list[dict], dict]:
    """One official pose dict per output frame: the first n_frames frames at `fps` (fewer if the video
    is shorter; the caller extends them as any pose sequence), normalised to the video's official
    square pose box. Returns (poses, summary for results). DrivingVideoError for a bad video and for
    one in which no frame has a detectable hand."""
    from echomimic2.pose_detect import poses_from_frames

    with _local_file(data_or_path, name) as path:
        try:
            poses, summary = poses_from_frames(decode_frames(path, fps, n_frames, limits), progress)
        except DrivingVideoError as error:
            raise DrivingVideoError(f"{name}: {error}") from None
    if summary["frames_with_hands"] == 0:
        raise DrivingVideoError(f"{name}: no detectable hands in any of its {summary['frames']} frames")
    return poses, summary


VALIDATE_SAMPLES = 8


def check_driving_video(data_or_path: bytes | str | Path, limits: VideoLimits = VideoLimits(),
                        name: str = "driving video", samples: int = VALIDATE_SAMPLES) -> VideoInfo:
    """For `validate`: the header checks, then hands looked for in `samples` frames spread over the
    video (about a second of CPU, not the full extraction). DrivingVideoError names the problem."""
    from echomimic2.pose_detect import PoseDetector

    with _local_file(data_or_path, name) as path:
        try:
            info = probe_video(path, limits)
            sample_fps = samples / max(info.seconds, 1e-3)
            with PoseDetector(video=False) as detector:
                for frame in decode_frames(path, sample_fps, samples, limits):
                    if detector.detect(frame).hands:
                        return info
        except DrivingVideoError as error:
            raise DrivingVideoError(f"{name}: {error}") from None
    raise DrivingVideoError(f"{name}: no detectable hands in {samples} frames sampled over {info.seconds:.1f} s")


# ---- preview and the standalone command ----------------------------------------------------------


def write_video(frames: Iterator[np.ndarray], path: str | Path, fps: float, width: int, height: int) -> int:
    """Encode RGB frames (H.264, yuv420p) to `path`; returns the number of frames written."""
    command = [ffmpeg_exe(), "-hide_banner", "-nostdin", "-loglevel", "error", "-y", "-f", "rawvideo",
               "-pix_fmt", "rgb24", "-s", f"{width}x{height}", "-r", f"{fps:.6f}", "-i", "pipe:0",
               "-c:v", "libx264", "-pix_fmt", "yuv420p", "-preset", "veryfast", "-crf", "18", str(path)]
    process = subprocess.Popen(command, stdin=subprocess.PIPE, stderr=subprocess.PIPE)
    count = 0
    try:
        for frame in frames:
            process.stdin.write(np.ascontiguousarray(frame, dtype=np.uint8).tobytes())
            count += 1
    finally:
        process.stdin.close()
        error = process.stderr.read().decode(errors="replace")
        if process.wait() != 0:
            raise RuntimeError(f"ffmpeg could not write {path}: {error.strip()}")
    return count


def save_poses(poses: list[dict], out: str | Path) -> str:
    """`.npz` (the project's pickle-free sequence) when `out` ends so, else a folder of official
    `<i>.npy` dicts. Returns what was written."""
    from echomimic2.pose import save_pose_npz

    out = Path(out)
    if out.suffix.lower() == ".npz":
        out.parent.mkdir(parents=True, exist_ok=True)
        save_pose_npz(poses, out)
        return f"{len(poses)} poses in {out}"
    out.mkdir(parents=True, exist_ok=True)
    for index, pose in enumerate(poses):
        np.save(out / f"{index}.npy", np.array(pose, dtype=object), allow_pickle=True)  # the official layout
    # frames beyond this sequence, left by an earlier longer run, would be read as part of it
    stale = [path for path in out.glob("*.npy") if path.stem.isdigit() and int(path.stem) >= len(poses)]
    for path in stale:
        path.unlink()
    removed = f" (removed {len(stale)} stale frame files of an earlier run)" if stale else ""
    return f"{len(poses)} official pose files in {out}/{removed}"


def preview_path(out: str | Path) -> Path:
    out = Path(out)
    return out.with_name(f"{out.stem if out.suffix.lower() == '.npz' else out.name}_preview.mp4")


def extract_poses_command(video: Path, out: Path, fps: float, max_frames: int | None, preview: bool,
                          preview_size: int) -> int:
    """`cli.py poses extract`: exit 0 written, 1 the video cannot be used."""
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    from echomimic2.pose import render_pose

    console = Console(stderr=True, soft_wrap=True)  # messages stay one line (logs, greps)
    try:
        info = probe_video(video)
    except (DrivingVideoError, OSError) as error:
        console.print(f"[red]{video}: {error}")
        return 1
    expected = int(info.seconds * fps) + 1
    if max_frames is not None:
        expected = min(expected, max_frames)
    with Progress(TextColumn("poses"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(), console=console) as bar:
        task = bar.add_task("poses", total=expected)
        try:
            poses, summary = poses_from_video(video, fps, max_frames, name=str(video),
                                              progress=lambda done: bar.update(task, completed=done))
        except DrivingVideoError as error:
            console.print(f"[red]{error}")
            return 1
        bar.update(task, completed=summary["frames"], total=summary["frames"])
    console.print(save_poses(poses, out))
    console.print(f"hands found in {summary['frames_with_hands']} of {summary['frames']} frames; "
                  f"pose box {summary['pose_box']} ({summary['pose_box_from']})")
    if preview:
        target = preview_path(out)
        size = preview_size
        write_video((render_pose(pose, size, size) for pose in poses), target, fps, size, size)
        console.print(f"preview: {target}")
    return 0
