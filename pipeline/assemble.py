"""Assembly: stitch a clip's rendered segments (linear cross-fade over the frames neighbouring segments
share), encode H.264 yuv420p with the clip's audio as AAC, trimmed or padded to exactly the video's
duration, and write the MP4 atomically. Frames stream from storage into ffmpeg a chunk at a time; the QC
meter (pipeline/qc.py) measures them on the way, so checking a clip costs no second decode."""
from __future__ import annotations

import functools
import io
import itertools
import json
import re
import shutil
import subprocess
import tempfile
import threading
from collections.abc import Iterator
from fractions import Fraction
from pathlib import Path

import ffmpeg
import imageio_ffmpeg
import numpy as np
import soundfile as sf

from pipeline import qc, storage
from pipeline.manifest import Limits
from pipeline.media import SAMPLE_RATE, audio_input_options, decode_audio, ffmpeg_exe, ffmpeg_report, report_duration
from pipeline.segment_store import iter_segment


@functools.cache
def ffprobe_exe() -> str | None:
    """ffprobe on PATH, looked up on first use; optional: probe_video falls back to parsing `ffmpeg -i`."""
    return shutil.which("ffprobe")
CHUNK_FRAMES = 8


def _check_plan(segments: list[tuple[int, int, str]], total_frames: int) -> None:
    """Segments must cover 0..total_frames, each frame shared by at most two neighbours."""
    if not segments:
        raise ValueError("no segments to assemble")
    if segments[0][0] != 0 or segments[-1][1] != total_frames:
        raise ValueError(f"segments cover {segments[0][0]}..{segments[-1][1]}, not 0..{total_frames}")
    for i, (start, stop, _) in enumerate(segments):
        if stop <= start:
            raise ValueError(f"empty segment {start}-{stop}")
        if i and not segments[i - 1][0] < start <= segments[i - 1][1]:
            raise ValueError(f"segment {start}-{stop} does not follow {segments[i - 1][0]}-{segments[i - 1][1]}")
        if i > 1 and start < segments[i - 2][1]:
            raise ValueError(f"segment {start}-{stop} overlaps two earlier segments")


def crossfade_weight(k: int, overlap: int) -> float:
    """Weight of the later segment in the k-th of ``overlap`` shared frames: a linear ramp that excludes
    0 and 1, so every shared frame is a true blend of both renders."""
    return (k + 1) / (overlap + 1)


def stitched_frames(segments: list[tuple[int, int, str]], total_frames: int,
                    chunk_frames: int = CHUNK_FRAMES, read_segment=None) -> Iterator[np.ndarray]:
    """The clip's frames 0..total_frames in order, as uint8 chunks of ``chunk_frames`` frames (the last may
    be shorter). Holds at most one chunk plus the frames one overlap needs.
    ``read_segment(source, chunk_frames)`` yields a segment's frames; the third item of each segment is its
    source (a storage URI read by `iter_segment` by default; the one-clip pipeline passes arrays and `array_chunks`)."""
    read_segment = read_segment or iter_segment  # looked up per call, not bound at definition
    segments = sorted(segments)
    _check_plan(segments, total_frames)
    ready: list[np.ndarray] = []
    held: list[np.ndarray] = []  # the previous segment's frames that the current one shares
    frame_shape = None
    for i, (start, stop, uri) in enumerate(segments):
        shared_with_previous = segments[i - 1][1] - start if i else 0
        next_start = segments[i + 1][0] if i + 1 < len(segments) else stop
        tail = []
        position = start
        for chunk in read_segment(uri, chunk_frames):
            if frame_shape is None:
                frame_shape = chunk.shape[1:]
            if chunk.shape[1:] != frame_shape:
                raise ValueError(f"{uri}: frames are {chunk.shape[1:]}, earlier segments {frame_shape}")
            for frame in chunk:
                if position >= stop:
                    raise ValueError(f"{uri}: more frames than segment {start}-{stop}")
                k = position - start
                if k < shared_with_previous:
                    w = crossfade_weight(k, shared_with_previous)
                    blended = (1.0 - w) * held[k].astype(np.float32) + w * frame.astype(np.float32)
                    frame = np.round(blended).astype(np.uint8)
                if position >= next_start:
                    tail.append(frame)
                else:
                    ready.append(frame)
                    if len(ready) == chunk_frames:
                        yield np.stack(ready)
                        ready = []
                position += 1
        if position != stop:
            raise ValueError(f"{uri}: {position - start} frames, segment {start}-{stop} needs {stop - start}")
        held = tail
    if ready:
        yield np.stack(ready)


def _qc_report(meter: qc.FrameMeter, audio: bytes, video_path: Path, thresholds: qc.Thresholds) -> dict:
    """The QC report of the encoded clip: the frames as streamed, the written file's streams, the audio."""
    problems = {}
    try:
        streams = qc.mp4_streams(video_path)
    except Exception as exc:  # noqa: BLE001 - an unreadable container is reported, the check then flags it
        streams, problems["mp4_streams"] = {}, f"{type(exc).__name__}: {exc}"
    try:
        wave, rate = _audio_samples(audio)
    except Exception as exc:  # noqa: BLE001
        (wave, rate), problems["audio"] = (None, SAMPLE_RATE), storage.describe_error(exc)
    report = qc.run_checks(meter.measured(audio=wave, sample_rate=rate, streams=streams), thresholds)
    report["errors"].update(problems)
    return report


def _audio_samples(audio: bytes) -> tuple[np.ndarray, int]:
    """Mono samples and their rate, for the audio's duration and energy: soundfile's formats at their own
    rate (no resampling needed), anything else through the decoder the preprocessing used."""
    try:
        wave, rate = sf.read(io.BytesIO(audio), dtype="float32")
        return (wave.mean(axis=1, dtype=np.float32) if wave.ndim == 2 else wave), rate
    except (sf.LibsndfileError, RuntimeError):
        return decode_audio(audio, Limits(), "audio"), SAMPLE_RATE


def array_chunks(frames: np.ndarray, chunk_frames: int = CHUNK_FRAMES) -> Iterator[np.ndarray]:
    """A segment held in memory, read like a stored one (`stitched_frames`'s ``read_segment``)."""
    for start in range(0, len(frames), chunk_frames):
        yield frames[start : start + chunk_frames]


def _drain(stream, sink: list[bytes]) -> None:
    sink.append(stream.read())


def segment_joins(segments) -> list[tuple[int, int]]:
    """[start, stop) of the frames each pair of neighbouring segments shares (empty for a butt join), from
    ``(start, stop, ...)`` items: the assembler's segments or the one-clip output's frame ranges."""
    spans = sorted((segment[0], segment[1]) for segment in segments)
    return [(spans[i][0], spans[i - 1][1]) for i in range(1, len(spans))]


def assemble_clip(segments: list[tuple[int, int, str]], total_frames: int, fps: float, audio: bytes,
                  output_uri: str, *, scratch_dir: str | Path | None = None, read_segment=None,
                  strip_uri: str | None = None, joins: list[tuple[int, int]] | None = None,
                  thresholds: qc.Thresholds = qc.DEFAULT_THRESHOLDS, reference_face: list[float] | None = None) -> dict:
    """Encode the stitched segments with ``audio`` (the bytes of the row's audio file, as read once by preprocessing) into ``output_uri``.
    The video is exactly ``total_frames / fps`` seconds; the audio is padded with silence or trimmed to
    that. Returns ``dict(frames=, seconds=, bytes=, qc=)``, ``qc`` being the clip's QC report
    (``pipeline.qc.run_checks``; ``qc.qc_columns`` turns it into results columns). With ``strip_uri``
    a contact strip of a few frames (JPEG) is written there too, for the review page. ``joins`` (the shared
    frame ranges, ``segment_joins``) are where the seam check looks; by default the segments' own overlaps,
    but frames stitched before they get here (the one-clip pipeline) come as one segment and name them."""
    rate = Fraction(fps).limit_denominator(1001)
    seconds = total_frames / float(rate)
    scratch = Path(tempfile.mkdtemp(prefix="assemble-", dir=scratch_dir))
    try:
        audio_path = scratch / "audio"
        audio_path.write_bytes(audio)
        video_path = scratch / "clip.mp4"
        frames = stitched_frames(segments, total_frames, read_segment=read_segment)
        meter = qc.FrameMeter(total_frames, float(rate), joins=segment_joins(segments) if joins is None else joins,
                              reference_face=reference_face)  # the framed reference's face box, for the face check
        first = next(frames)
        height, width = first.shape[1:3]
        if height % 2 or width % 2:
            raise ValueError(f"frame size {width}x{height} must be even for yuv420p")
        video_in = ffmpeg.input("pipe:", format="rawvideo", pix_fmt="rgb24", s=f"{width}x{height}",
                                framerate=str(rate))
        audio_track = ffmpeg.input(str(audio_path), **audio_input_options(audio)).audio.filter("apad").filter("atrim", duration=f"{seconds:.6f}")
        process = (
            ffmpeg.output(video_in, audio_track, str(video_path), vcodec="libx264", pix_fmt="yuv420p",
                          acodec="aac", r=str(rate), movflags="+faststart")
            .global_args("-hide_banner", "-loglevel", "error")
            .overwrite_output()
            .run_async(cmd=ffmpeg_exe(), pipe_stdin=True, pipe_stderr=True)
        )
        errors: list[bytes] = []
        reader = threading.Thread(target=_drain, args=(process.stderr, errors))  # a full pipe would stall ffmpeg
        reader.start()
        try:
            for chunk in itertools.chain([first], frames):
                process.stdin.write(memoryview(np.ascontiguousarray(chunk)).cast("B"))
                meter.add(chunk)  # while ffmpeg encodes the chunk
            process.stdin.close()
        except BrokenPipeError:
            pass  # ffmpeg stopped early; its exit status and message say why
        except BaseException:
            process.kill()
            process.wait()
            reader.join()
            raise
        returncode = process.wait()
        reader.join()
        if returncode != 0:
            message = b"".join(errors).decode(errors="replace").strip()[-500:]
            raise RuntimeError(f"ffmpeg failed with status {returncode}: {storage.redact(message)}")
        report = _qc_report(meter, audio, video_path, thresholds)
        storage.write_atomic(output_uri, video_path)
        strip = meter.strip_jpeg()
        if strip_uri and strip:
            storage.write_atomic(strip_uri, strip)
        return dict(frames=total_frames, seconds=seconds, bytes=video_path.stat().st_size, qc=report)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


# ---------------------------------------------------------------------------------------------------
# Probing (QC and tests)


def _probe_local(path: str) -> dict:
    ffprobe = ffprobe_exe()
    if ffprobe:
        report = json.loads(subprocess.run(
            [ffprobe, "-v", "error", "-show_streams", "-show_format", "-of", "json", path],
            capture_output=True, text=True, check=True, timeout=60).stdout)
        streams = report.get("streams", [])
        video = next((s for s in streams if s.get("codec_type") == "video"), {})
        audio = next((s for s in streams if s.get("codec_type") == "audio"), {})
        return dict(vcodec=video.get("codec_name"), acodec=audio.get("codec_name"),
                    fps=float(Fraction(video["avg_frame_rate"])) if video else None,
                    duration=float(report["format"]["duration"]),
                    frames=int(video["nb_frames"]) if "nb_frames" in video else None,
                    width=video.get("width"), height=video.get("height"))
    report = ffmpeg_report(path)
    video = re.search(r"Stream #\S+.*?: Video: (\w+).*?, (\d+)x(\d+)[^\n]*?, ([\d.]+) fps", report)
    audio = re.search(r"Stream #\S+.*?: Audio: (\w+)", report)
    return dict(vcodec=video.group(1) if video else None, acodec=audio.group(1) if audio else None,
                fps=float(video.group(4)) if video else None, duration=report_duration(report),
                frames=imageio_ffmpeg.count_frames_and_secs(path)[0] if video else None,
                width=int(video.group(2)) if video else None, height=int(video.group(3)) if video else None)


def probe_video(path_or_uri: str) -> dict:
    """dict(vcodec, acodec, fps, duration, frames, width, height) of a video file: ffprobe when it is on
    PATH, else ffmpeg's header report plus a frame count."""
    if storage.is_local(path_or_uri):
        return _probe_local(str(storage.local_path(path_or_uri)))
    with tempfile.NamedTemporaryFile(suffix=".mp4") as tmp:
        with storage.open_input(path_or_uri) as src:
            shutil.copyfileobj(src, tmp, 1 << 20)
        tmp.flush()
        return _probe_local(tmp.name)
