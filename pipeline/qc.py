"""Per-clip quality checks, measured while the assembler streams a clip's frames into ffmpeg (the video is
never decoded a second time), plus a probe of the written MP4's container.

Two layers:
- ``FrameMeter`` sees every stitched frame once: per-frame luma mean / spread on a 64×64 area-averaged copy,
  the change from the previous frame, non-finite values, a few sampled frames for the face check and the
  contact strip. Memory is a few numbers per frame.
- ``CHECKS`` is a registry of small functions ``check(measured, thresholds) -> CheckResult``. Adding a check
  is one function plus one entry. Each returns its values (stored with the clip), a *severity* (the measure
  relative to its threshold: ≥ 1 means over it; None = not measured) and a reason when it flags the clip.

A clip over any threshold stays ``done`` but is *flagged* with the reasons; its QC score is the largest
severity (0 = nothing to see; sort by it to review the worst first).

Thresholds (``Thresholds``, all documented there) were chosen on constructed clips (tests/test_qc.py) and
should be revisited on real renders.
"""
from __future__ import annotations

import json
import math
import struct
import threading
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

THUMB_SIDE = 64  # frames are measured on a 64×64 area-averaged luma copy: cheap, and insensitive to pixel noise
STRIP_FRAMES = 6  # frames in a clip's contact strip
STRIP_HEIGHT = 96
FACE_SAMPLES = 24  # frames given to the face mesh per clip (a few: it costs ~15 ms each on a CPU)
FACE_GIVE_UP_AFTER = 4  # stop looking when this many samples in a row had no face (e.g. the tiny model's noise)


@dataclass(frozen=True)
class Thresholds:
    """Where a measure flags a clip. Seconds and ratios, so they hold at any fps and size."""

    # |frames / fps − audio seconds| above this many frame periods: the plan lost or gained frames.
    duration_frames: float = 1.0
    # |audio stream start − video stream start| in the MP4 (edit lists): 45 ms is where ITU-R BT.1359
    # puts the detectability of sound ahead of picture.
    av_offset_seconds: float = 0.045
    # |audio stream duration − video stream duration|: the assembler fits the audio to the video; AAC
    # frames (64 ms at 16 kHz) are trimmed by the edit list, so anything above one AAC frame is a fault.
    av_duration_seconds: float = 0.070
    # A frame is black when its mean luma (0-255) is below this and it is nearly uniform (spread below
    # black_spread). Any black frame flags the clip.
    black_luma: float = 16.0
    black_spread: float = 8.0
    max_black_frames: int = 0
    # A frame is frozen when it differs from the previous one by less than this mean luma change
    # (0-255 on the 64×64 copy; rendered frames never repeat exactly). A run this long flags the clip.
    frozen_change: float = 0.25
    frozen_seconds: float = 0.5
    # Any frame with NaN/inf values (frames handed over as floats) flags the clip.
    max_nonfinite_frames: int = 0
    # Seam score: the change across a segment join's cross-fade (last frame before it → first frame
    # after it) divided by the clip's median change over the same number of frames. A join that
    # continues the motion scores ≈ 1; two unrelated pictures joined score ≫ 3 (seam_scores).
    seam_ratio: float = 3.0
    # The clip's median change is floored at this (luma levels) so a nearly still clip does not make any
    # motion look like a seam (a still clip is the frozen check's business).
    seam_min_median_change: float = 0.5
    # Lip-sync proxy: Pearson correlation of mouth opening (face mesh) with audio energy over the sampled
    # frames. Below this the mouth is no more open when the voice is loud than when it is quiet.
    lip_sync_min_correlation: float = 0.0
    lip_sync_min_faces: int = 8  # fewer sampled frames with a face: not measured
    lip_sync_min_energy_variation: float = 0.2  # std/mean of the sampled audio energy; steadier: not measured
    # Face position: the rendered face box (face mesh, median over the sampled frames with a face) against the
    # framed reference's. The model keeps the reference's face in place, so a centre this many reference face
    # widths away, or a face this many times larger or smaller, means the face moved.
    face_max_shift: float = 0.5
    face_max_scale: float = 1.5
    # A reference with a face whose render shows one in under this share of the sampled frames: the face
    # vanished. A reference without a face whose render shows one in at least this share: a face appeared.
    face_min_share: float = 0.5


DEFAULT_THRESHOLDS = Thresholds()


# ---------------------------------------------------------------------------------------------------
# Streaming measurement


def _luma_thumb(frame: np.ndarray) -> np.ndarray:
    import cv2

    if frame.dtype != np.uint8:
        frame = np.nan_to_num(frame.astype(np.float32), nan=0.0, posinf=255.0, neginf=0.0)
    small = cv2.resize(frame, (THUMB_SIDE, THUMB_SIDE), interpolation=cv2.INTER_AREA).astype(np.float32)
    return small[..., 0] * 0.299 + small[..., 1] * 0.587 + small[..., 2] * 0.114


class FaceMouth:
    """Mouth opening on single frames with MediaPipe face_mesh (the legacy ``solutions`` API, offline).
    Opening = inner-lip gap (landmarks 13-14) over the distance between the eyes' outer corners (33-263),
    so it does not depend on the face's size in the frame. One mesh per process, reused by every clip
    (static-image mode keeps no state between frames); building it costs ~0.1 s and a few log lines."""

    _mesh = None
    _lock = threading.Lock()

    def __init__(self):
        with FaceMouth._lock:
            if FaceMouth._mesh is None:
                from echomimic2.pose_detect import import_mediapipe, native_log

                with native_log():
                    FaceMouth._mesh = import_mediapipe().solutions.face_mesh.FaceMesh(
                        static_image_mode=True, max_num_faces=1, refine_landmarks=False)

    def opening(self, frame: np.ndarray) -> float | None:
        found = self.measure(frame)
        return None if found is None else found[0]

    def measure(self, frame: np.ndarray) -> tuple[float | None, tuple[float, float, float, float]] | None:
        """(mouth opening or None, face box (x0, y0, x1, y1) of the mesh's points as fractions of the frame),
        or None without a face."""
        from echomimic2.pose_detect import native_log

        with FaceMouth._lock, native_log():
            found = FaceMouth._mesh.process(np.ascontiguousarray(frame, dtype=np.uint8)).multi_face_landmarks
        if not found:
            return None
        height, width = frame.shape[:2]
        points = found[0].landmark

        def distance(a: int, b: int) -> float:
            return math.hypot((points[a].x - points[b].x) * width, (points[a].y - points[b].y) * height)

        eyes = distance(33, 263)
        xs, ys = [p.x for p in points], [p.y for p in points]
        return (distance(13, 14) / eyes if eyes > 0 else None), (min(xs), min(ys), max(xs), max(ys))

    def close(self) -> None:
        """Nothing to free per clip: the mesh is kept for the next one."""


@dataclass
class Measured:
    """What the checks read: per-frame numbers from the stream, the written file's streams, the audio."""

    fps: float
    total_frames: int
    audio_seconds: float | None = None
    luma_mean: np.ndarray = field(default_factory=lambda: np.zeros(0))
    luma_spread: np.ndarray = field(default_factory=lambda: np.zeros(0))
    change: np.ndarray = field(default_factory=lambda: np.zeros(0))  # change[i]: frame i-1 → i (change[0] = nan)
    nonfinite: np.ndarray = field(default_factory=lambda: np.zeros(0, bool))
    joins: list[tuple[int, int]] = field(default_factory=list)  # shared frames [start, stop) of each join
    lag_change: dict[int, np.ndarray] = field(default_factory=dict)  # lag_change[k][i]: frame i-k → i
    streams: dict | None = None  # mp4_streams() of the written file
    mouth: list[tuple[int, float]] = field(default_factory=list)  # (frame, opening) where a face was found
    face_note: str | None = None  # why no mouth was measured
    face_boxes: list[tuple[int, tuple]] = field(default_factory=list)  # (frame, box as fractions) where a face was found
    face_samples: int = 0  # sampled frames given to the face mesh
    # The framed reference's face box as fractions of the frame (echomimic2.triage facts): [] when the
    # reference has no face, None when not known (the face position check is then not measured).
    reference_face: list[float] | None = None
    audio_energy: Callable[[float], float] | None = None  # RMS of the audio around a time (seconds)


class FrameMeter:
    """Feed it the clip's frames in order (``add``, chunks of ``(n, H, W, 3)``); then ``measured``."""

    def __init__(self, total_frames: int, fps: float, *, joins: list[tuple[int, int]] = (), face_samples: int = FACE_SAMPLES,
                 strip_frames: int = STRIP_FRAMES, reference_face: list[float] | None = None):
        self.total_frames, self.fps, self.joins = total_frames, fps, list(joins)
        self.reference_face = reference_face
        self.face_boxes: list[tuple[int, tuple]] = []
        self.face_samples = 0
        self.position = 0
        # Seams compare the change across each cross-fade with the clip's own change over as many frames.
        self._lags = sorted({stop - start + 1 for start, stop in self.joins})
        self._recent: list[np.ndarray] = []  # the last max(lags) thumbnails
        self._lag_change: dict[int, list[float]] = {k: [] for k in self._lags}
        self._mean, self._spread, self._change, self._nonfinite = [], [], [], []
        self._previous = None
        self._face_at = set(np.linspace(0, total_frames - 1, min(face_samples, total_frames)).round().astype(int).tolist()) \
            if face_samples and total_frames else set()
        self._strip_at = set(np.linspace(0, total_frames - 1, min(strip_frames, total_frames)).round().astype(int).tolist()) \
            if strip_frames and total_frames else set()
        self.strip: list[np.ndarray] = []
        self.mouth: list[tuple[int, float]] = []
        self._face: FaceMouth | None = None
        self._face_misses = 0
        self.face_note: str | None = None if self._face_at else "no frames sampled"

    def add(self, chunk: np.ndarray) -> None:
        for frame in chunk:
            finite = True if frame.dtype.kind in "ui" else bool(np.isfinite(frame).all())
            thumb = _luma_thumb(frame)
            self._nonfinite.append(not finite)
            self._mean.append(float(thumb.mean()))
            self._spread.append(float(thumb.std()))
            self._change.append(float(np.abs(thumb - self._previous).mean()) if self._previous is not None else math.nan)
            self._previous = thumb
            for k in self._lags:
                self._lag_change[k].append(float(np.abs(thumb - self._recent[-k]).mean()) if len(self._recent) >= k else math.nan)
            if self._lags:
                self._recent = (self._recent + [thumb])[-max(self._lags):]
            if self.position in self._strip_at:
                self.strip.append(_strip_tile(frame))
            if self.position in self._face_at and self.face_note is None:
                self._sample_face(frame)
            self.position += 1

    def _sample_face(self, frame: np.ndarray) -> None:
        if self._face is None:
            try:
                self._face = FaceMouth()
            except Exception as exc:  # noqa: BLE001 - no mediapipe here: the check is skipped, the clip is fine
                self.face_note = f"face mesh unavailable ({type(exc).__name__})"
                return
        found = self._face.measure(np.clip(np.nan_to_num(frame), 0, 255).astype(np.uint8))
        self.face_samples += 1
        if found is None:
            self._face_misses += 1
            if not self.mouth and self._face_misses >= FACE_GIVE_UP_AFTER:
                self.face_note = "no face found"
                self.close()
            return
        opening, box = found
        self.face_boxes.append((self.position, box))
        if opening is not None:
            self.mouth.append((self.position, opening))

    def close(self) -> None:
        if self._face is not None:
            self._face.close()
            self._face = None

    def measured(self, *, audio: np.ndarray | None = None, sample_rate: int = 16_000, streams: dict | None = None) -> Measured:
        self.close()
        note = self.face_note or (None if self.mouth else "no face found")
        return Measured(
            fps=self.fps, total_frames=self.total_frames,
            audio_seconds=None if audio is None else len(audio) / sample_rate,
            luma_mean=np.array(self._mean), luma_spread=np.array(self._spread), change=np.array(self._change),
            nonfinite=np.array(self._nonfinite, bool), joins=self.joins,
            lag_change={k: np.array(v) for k, v in self._lag_change.items()}, streams=streams, mouth=self.mouth,
            face_boxes=self.face_boxes, face_samples=self.face_samples, reference_face=self.reference_face,
            face_note=note, audio_energy=None if audio is None else _energy_at(audio, sample_rate, self.fps))

    def strip_jpeg(self, quality: int = 80) -> bytes | None:
        """The sampled frames side by side as one JPEG (the review page's contact strip)."""
        if not self.strip:
            return None
        import io

        from PIL import Image

        buffer = io.BytesIO()
        Image.fromarray(np.concatenate(self.strip, axis=1)).save(buffer, format="JPEG", quality=quality)
        return buffer.getvalue()


def _strip_tile(frame: np.ndarray) -> np.ndarray:
    import cv2

    frame = np.clip(np.nan_to_num(frame), 0, 255).astype(np.uint8)
    height, width = frame.shape[:2]
    return cv2.resize(frame, (max(1, round(width * STRIP_HEIGHT / height)), STRIP_HEIGHT), interpolation=cv2.INTER_AREA)


def _energy_at(audio: np.ndarray, sample_rate: int, fps: float) -> Callable[[float], float]:
    """RMS of the audio over two frame periods centred on a time: mouth shapes lead or trail the sound a little."""
    half = max(1, round(sample_rate / fps))

    def energy(seconds: float) -> float:
        centre = round(seconds * sample_rate)
        window = audio[max(0, centre - half): centre + half]
        return float(np.sqrt(np.mean(np.square(window, dtype=np.float64)))) if window.size else 0.0

    return energy


# ---------------------------------------------------------------------------------------------------
# The written file's streams (MP4 boxes: no ffprobe needed)


_CONTAINERS = {b"moov", b"trak", b"mdia", b"edts", b"minf"}


def _boxes(data: bytes, start: int, end: int):
    while start + 8 <= end:
        size, kind = struct.unpack(">I4s", data[start:start + 8])
        header = 8
        if size == 1:
            size, header = struct.unpack(">Q", data[start + 8:start + 16])[0], 16
        elif size == 0:
            size = end - start
        if size < header:
            raise ValueError(f"malformed MP4 box {kind!r}")
        yield kind, start + header, start + size
        start += size


def _top_level_moov(path: Path) -> bytes:
    """The ``moov`` box, read without loading ``mdat`` (it may be before or after the media)."""
    with open(path, "rb") as f:
        while True:
            header = f.read(8)
            if len(header) < 8:
                raise ValueError("no moov box")
            size, kind = struct.unpack(">I4s", header)
            if size == 1:
                size = struct.unpack(">Q", f.read(8))[0] - 8
            if kind == b"moov":
                return header + f.read(size - 8)
            if size == 0:
                raise ValueError("no moov box")
            f.seek(size - 8, 1)


def _times(data: bytes, at: int) -> tuple[int, int]:
    """(timescale, duration) of an mvhd / mdhd box body."""
    if data[at] == 1:
        return struct.unpack(">IQ", data[at + 20:at + 32])
    return struct.unpack(">II", data[at + 12:at + 20])


def mp4_streams(path: str | Path) -> dict:
    """Per stream kind (``video``, ``audio``): presentation ``start`` and ``seconds`` in the written MP4, as a
    player sees them: edit lists applied (an empty edit delays a stream; AAC priming is cut, not counted)."""
    data = _top_level_moov(Path(path))
    movie_scale = None
    tracks = []
    for kind, body, end in _boxes(data, 8, len(data)):
        if kind == b"mvhd":
            movie_scale = _times(data, body)[0]
        elif kind == b"trak":
            tracks.append((body, end))
    if not movie_scale:
        raise ValueError("no mvhd box")
    streams = {}
    for body, end in tracks:
        found = {}

        def walk(start: int, stop: int, found=found) -> None:
            for kind, inner, box_end in _boxes(data, start, stop):
                if kind in _CONTAINERS:
                    walk(inner, box_end)
                elif kind in (b"mdhd", b"hdlr", b"elst"):
                    found[kind] = inner

        walk(body, end)
        handler = data[found[b"hdlr"] + 8:found[b"hdlr"] + 12] if b"hdlr" in found else b""
        name = {b"vide": "video", b"soun": "audio"}.get(handler)
        if name is None or name in streams or b"mdhd" not in found:
            continue
        media_scale, media_duration = _times(data, found[b"mdhd"])
        start, seconds = 0.0, media_duration / media_scale
        if b"elst" in found:
            at = found[b"elst"]
            version, count = data[at], struct.unpack(">I", data[at + 4:at + 8])[0]
            entry, layout = (20, ">Qq") if version == 1 else (12, ">Ii")
            played = 0
            for i in range(count):
                duration, media_time = struct.unpack(layout, data[at + 8 + i * entry: at + 8 + i * entry + struct.calcsize(layout)])
                if media_time == -1:  # empty edit: nothing plays, the stream starts later
                    if not played:
                        start += duration / movie_scale
                else:
                    played += duration
            seconds = played / movie_scale if played else seconds
        streams[name] = dict(start=start, seconds=seconds)
    return streams


# ---------------------------------------------------------------------------------------------------
# Checks


@dataclass
class CheckResult:
    values: dict  # stored with the clip (JSON-able numbers / lists)
    severity: float | None  # measure / threshold: ≥ 1 flags; None = not measured
    reason: str | None = None  # set when it flags


def check_duration(m: Measured, t: Thresholds) -> CheckResult:
    video = m.total_frames / m.fps
    if m.audio_seconds is None:
        return CheckResult(dict(video_seconds=video), None)
    gap_frames = abs(video - m.audio_seconds) * m.fps
    severity = gap_frames / t.duration_frames
    reason = (f"duration: {m.total_frames} frames = {video:.3f} s, audio {m.audio_seconds:.3f} s "
              f"({gap_frames:.1f} frames apart)") if severity > 1 else None
    if m.luma_mean.size != m.total_frames:
        reason = f"frames: {m.luma_mean.size} streamed, {m.total_frames} planned"
        severity = max(severity, 10.0)
    return CheckResult(dict(video_seconds=video, audio_seconds=m.audio_seconds, duration_gap_frames=gap_frames), severity, reason)


def check_av_sync(m: Measured, t: Thresholds) -> CheckResult:
    if not m.streams or "video" not in m.streams or "audio" not in m.streams:
        missing = "not probed" if not m.streams else "no " + " and no ".join(k for k in ("video", "audio") if k not in m.streams) + " stream"
        return CheckResult(dict(av_note=missing), 10.0 if m.streams else None,
                           f"mux: {missing}" if m.streams else None)
    video, audio = m.streams["video"], m.streams["audio"]
    offset = audio["start"] - video["start"]
    gap = audio["seconds"] - video["seconds"]
    severity = max(abs(offset) / t.av_offset_seconds, abs(gap) / t.av_duration_seconds)
    reasons = []
    if abs(offset) > t.av_offset_seconds:
        reasons.append(f"audio starts {offset * 1000:+.0f} ms from the video")
    if abs(gap) > t.av_duration_seconds:
        reasons.append(f"audio stream {audio['seconds']:.3f} s, video stream {video['seconds']:.3f} s")
    return CheckResult(dict(video_start=video["start"], audio_start=audio["start"], av_offset=offset,
                            video_stream_seconds=video["seconds"], audio_stream_seconds=audio["seconds"]),
                       severity, "A/V sync: " + "; ".join(reasons) if reasons else None)


def _runs(mask: np.ndarray) -> list[tuple[int, int]]:
    """[start, stop) of each run of True."""
    padded = np.concatenate([[False], mask, [False]]).astype(np.int8)
    edges = np.flatnonzero(np.diff(padded))
    return list(zip(edges[::2].tolist(), edges[1::2].tolist()))


def check_black(m: Measured, t: Thresholds) -> CheckResult:
    black = (m.luma_mean < t.black_luma) & (m.luma_spread < t.black_spread)
    count = int(black.sum())
    runs = _runs(black)
    severity = count / (t.max_black_frames + 1)
    where = ", ".join(f"{a}-{b - 1}" for a, b in runs[:5])
    return CheckResult(dict(black_frames=count, black_runs=[list(r) for r in runs[:20]]), severity,
                       f"black: {count} frame(s) ({where})" if count > t.max_black_frames else None)


def check_frozen(m: Measured, t: Thresholds) -> CheckResult:
    still = np.nan_to_num(m.change, nan=np.inf) < t.frozen_change
    runs = _runs(still)
    # A run of n unchanged steps is n + 1 identical frames.
    longest = max(((b - a + 1, a - 1) for a, b in runs), default=(0, 0))
    seconds = longest[0] / m.fps if longest[0] else 0.0
    severity = seconds / t.frozen_seconds
    return CheckResult(dict(frozen_longest_frames=longest[0], frozen_longest_at=longest[1] if longest[0] else None),
                       severity,
                       f"frozen: {longest[0]} identical frames from frame {longest[1]} ({seconds:.2f} s)"
                       if severity > 1 else None)


def check_nonfinite(m: Measured, t: Thresholds) -> CheckResult:
    count = int(m.nonfinite.sum())
    first = int(np.flatnonzero(m.nonfinite)[0]) if count else None
    return CheckResult(dict(nonfinite_frames=count), count / (t.max_nonfinite_frames + 1),
                       f"non-finite values in {count} frame(s) (first: {first})" if count > t.max_nonfinite_frames else None)


def seam_scores(m: Measured, t: Thresholds) -> list[tuple[int, float]]:
    """(first shared frame, score) per join. A join sharing frames [s, e) is scored by the change from frame
    s-1 (the last frame before the cross-fade) to frame e (the first after it), over the clip's median
    change across the same number of frames: ≈ 1 where the join continues the motion, large where the
    cross-fade has to bridge two different pictures (spreading the jump over its frames does not hide it)."""
    scores = []
    for start, stop in m.joins:
        lag = stop - start + 1
        changes = m.lag_change.get(lag)
        if changes is None or not changes.size:
            continue
        finite = changes[np.isfinite(changes)]
        at = min(stop, changes.size - 1)
        if not finite.size or not np.isfinite(changes[at]):
            continue
        median = max(float(np.median(finite)), t.seam_min_median_change)
        scores.append((start, float(changes[at]) / median))
    return scores


def check_seams(m: Measured, t: Thresholds) -> CheckResult:
    scores = seam_scores(m, t)
    if not scores:
        return CheckResult(dict(seams=[], seam_max=None), None)
    worst_at, worst = max(scores, key=lambda s: s[1])
    bad = [(at, s) for at, s in scores if s > t.seam_ratio]
    return CheckResult(dict(seams=[[at, round(s, 3)] for at, s in scores], seam_max=worst), worst / t.seam_ratio,
                       f"seam: {len(bad)} join(s) jump (worst at frame {worst_at}: {worst:.1f}× the median change)"
                       if bad else None)


def check_lip_sync(m: Measured, t: Thresholds) -> CheckResult:
    """A PROXY, not a lip-sync model: does the mouth open more where the audio is louder?"""
    if m.audio_energy is None:
        return CheckResult(dict(lip_sync=None, lip_sync_note="no audio"), None)
    if len(m.mouth) < t.lip_sync_min_faces:
        note = m.face_note if not m.mouth else f"face in {len(m.mouth)} sampled frame(s) only"
        return CheckResult(dict(lip_sync=None, lip_sync_note=note, face_frames=len(m.mouth)), None)
    frames, opening = np.array([f for f, _ in m.mouth]), np.array([o for _, o in m.mouth])
    energy = np.array([m.audio_energy(f / m.fps) for f in frames])
    variation = float(energy.std() / energy.mean()) if energy.mean() > 0 else 0.0
    if variation < t.lip_sync_min_energy_variation:
        return CheckResult(dict(lip_sync=None, lip_sync_note="audio energy too steady", face_frames=len(m.mouth)), None)
    if opening.std() == 0:  # the voice comes and goes, the mouth stays put
        return CheckResult(dict(lip_sync=None, lip_sync_note="mouth never moves", face_frames=len(m.mouth)),
                           max(1.0, 1 / (1 - t.lip_sync_min_correlation)), "lip sync (proxy): the mouth never moves")
    correlation = float(np.corrcoef(opening, energy)[0, 1])
    severity = (1 - correlation) / (1 - t.lip_sync_min_correlation)
    return CheckResult(dict(lip_sync=correlation, face_frames=len(m.mouth)), severity,
                       f"lip sync (proxy): mouth opening vs audio energy correlates {correlation:+.2f}"
                       if correlation < t.lip_sync_min_correlation else None)


def check_face_position(m: Measured, t: Thresholds) -> CheckResult:
    """The rendered face where the framed reference's is: moved, resized, vanished or appeared flags the clip."""
    if m.reference_face is None:
        return CheckResult(dict(face_position=None, face_position_note="reference face not known"), None)
    share = len(m.face_boxes) / m.face_samples if m.face_samples else 0.0
    values = dict(face_share=round(share, 3), reference_face=list(m.reference_face))
    if not m.reference_face:
        severity = share / t.face_min_share
        return CheckResult(values, severity, f"face appeared: the reference has no face, {share:.0%} of the sampled "
                                             "frames show one" if severity >= 1 else None)
    if share < t.face_min_share:
        severity = max(1.0, (1 - share) / (1 - t.face_min_share))
        return CheckResult(values, severity, f"face vanished: the reference's face is in {share:.0%} of the sampled frames")
    rendered = np.median(np.array([box for _, box in m.face_boxes], dtype=np.float64), axis=0)
    reference = np.array(m.reference_face, dtype=np.float64)
    reference_width = max(reference[2] - reference[0], 1e-6)
    shift = float(np.linalg.norm((rendered[:2] + rendered[2:]) / 2 - (reference[:2] + reference[2:]) / 2)) / reference_width
    scale = float((rendered[2] - rendered[0]) / reference_width)
    severity = max(shift / t.face_max_shift, max(scale, 1 / max(scale, 1e-6)) / t.face_max_scale)
    values.update(face_box=[round(float(v), 4) for v in rendered], face_shift=round(shift, 3), face_scale=round(scale, 3))
    reason = None
    if severity > 1:
        reason = (f"face moved: {shift:.2f} reference face widths from the reference's face, {scale:.2f}x its size")
    return CheckResult(values, severity, reason)


CHECKS: dict[str, Callable[[Measured, Thresholds], CheckResult]] = {
    "duration": check_duration,
    "av_sync": check_av_sync,
    "black": check_black,
    "frozen": check_frozen,
    "nonfinite": check_nonfinite,
    "seams": check_seams,
    "lip_sync": check_lip_sync,
    "face_position": check_face_position,
}


def run_checks(measured: Measured, thresholds: Thresholds = DEFAULT_THRESHOLDS,
               checks: dict[str, Callable] | None = None) -> dict:
    """``dict(flagged, score, reasons, checks={name: values + severity})``. A check that raises is recorded
    under ``errors`` and does not flag the clip: a QC bug must not cost a rendered clip."""
    report = dict(flagged=False, score=0.0, reasons=[], checks={}, errors={})
    for name, check in (checks or CHECKS).items():
        try:
            result = check(measured, thresholds)
        except Exception as exc:  # noqa: BLE001
            report["errors"][name] = f"{type(exc).__name__}: {exc}"
            continue
        report["checks"][name] = dict(result.values, severity=None if result.severity is None else round(result.severity, 4))
        if result.severity is not None:
            report["score"] = max(report["score"], result.severity)
        if result.reason:
            report["reasons"].append(result.reason)
    report["flagged"] = bool(report["reasons"])
    report["score"] = round(report["score"], 4)
    return report


# ---------------------------------------------------------------------------------------------------
# Storage: results.parquet columns


QC_COLUMNS = ("qc_flagged", "qc_score", "qc_reasons", "qc")


def qc_columns(qc: dict | None) -> dict:
    """The QC report as results-row columns: ``qc_flagged`` (bool), ``qc_score`` (float, ≥ 1 = over a
    threshold), ``qc_reasons`` ('; '-joined), ``qc`` (the whole report as JSON). None → all None."""
    if qc is None:
        return dict.fromkeys(QC_COLUMNS)
    return dict(qc_flagged=bool(qc["flagged"]), qc_score=float(qc["score"]), qc_reasons="; ".join(qc["reasons"]),
                qc=json.dumps(qc, sort_keys=True, default=_json_default))


def _json_default(value):
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    raise TypeError(type(value).__name__)


def thresholds_table() -> list[tuple[str, object]]:
    """(name, value) of every threshold (for docs and the report's footer)."""
    return list(asdict(DEFAULT_THRESHOLDS).items())
