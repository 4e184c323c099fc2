"""QC measures on constructed videos: each fault scores as pipeline/qc.py documents, a clean clip is not flagged,
and the measures come from the assembler's single pass over the frames (plus a probe of the written file)."""
import io
import json
import subprocess

import cv2
import numpy as np
import pytest
import soundfile as sf

from pipeline import qc
from pipeline.assemble import assemble_clip
from pipeline.media import ffmpeg_exe
from pipeline.segment_store import write_segment

FPS = 25


def talking_scene(seed: int, frames: int, size=(96, 128)) -> np.ndarray:
    """A still textured background with a bobbing, swaying 'head' and a little sensor-like noise (rendered
    frames never repeat exactly): small motion everywhere, like a talking half-body clip."""
    rng = np.random.default_rng(seed)
    height, width = size
    background = cv2.resize(rng.integers(0, 256, (6, 8, 3)).astype(np.uint8), (width, height), interpolation=cv2.INTER_CUBIC)
    colour = tuple(int(c) for c in rng.integers(60, 256, 3))
    video = []
    for i in range(frames):
        frame = background.copy()
        centre = (width // 2 + round(6 * np.sin(i / 5)), height // 2 + round(3 * np.sin(i / 3)))
        cv2.ellipse(frame, centre, (18, 24), 0, 0, 360, colour, -1)
        noise = rng.normal(0, 2, frame.shape)
        video.append(np.clip(frame + noise, 0, 255).astype(np.uint8))
    return np.stack(video)


def write_segments(tmp_path, spans, sources, name="s"):
    """Segment files cut from per-segment source videos (a global frame index into each)."""
    segments = []
    for (start, stop), source in zip(spans, sources):
        uri = str(tmp_path / f"{name}{start}-{stop}.npy")
        write_segment(np.ascontiguousarray(source[start:stop]), uri)
        segments.append((start, stop, uri))
    return segments


def speech_like(seconds: float, sr: int = 16000, envelope=None) -> bytes:
    """A 300 Hz voice whose loudness follows ``envelope(t)`` (default: two syllables a second with pauses)."""
    t = np.arange(int(seconds * sr)) / sr
    loudness = envelope(t) if envelope else np.clip(np.sin(2 * np.pi * 2 * t), 0, None)
    buffer = io.BytesIO()
    sf.write(buffer, (0.3 * loudness * np.sin(2 * np.pi * 300 * t)).astype(np.float32), sr, format="WAV")
    return buffer.getvalue()


def assemble(tmp_path, spans, sources, *, frames, audio_seconds=None, name="clip"):
    segments = write_segments(tmp_path, spans, sources, name=name)
    seconds = frames / FPS if audio_seconds is None else audio_seconds
    output = tmp_path / f"{name}.mp4"
    result = assemble_clip(segments, frames, FPS, speech_like(seconds), str(output), scratch_dir=tmp_path)
    return result, output


def test_clean_clip_passes_every_check(tmp_path):
    video = talking_scene(0, 60)
    result, output = assemble(tmp_path, [(0, 32), (26, 60)], [video, video], frames=60)
    report = result["qc"]
    assert report["flagged"] is False and report["reasons"] == [] and report["errors"] == {}
    assert 0 <= report["score"] < 1
    assert set(report["checks"]) == set(qc.CHECKS)
    checks = report["checks"]
    assert checks["duration"]["duration_gap_frames"] == pytest.approx(0, abs=1e-6)
    assert abs(checks["av_sync"]["av_offset"]) < 0.001
    assert checks["av_sync"]["audio_stream_seconds"] == pytest.approx(60 / FPS, abs=0.002)
    assert checks["black"]["black_frames"] == 0 and checks["nonfinite"]["nonfinite_frames"] == 0
    assert checks["frozen"]["frozen_longest_frames"] == 0
    assert checks["lip_sync"]["lip_sync"] is None and checks["lip_sync"]["severity"] is None  # no face: skipped
    assert result.keys() >= {"frames", "seconds", "bytes", "qc"} and result["bytes"] == output.stat().st_size


def test_black_segment_is_flagged_with_its_frames(tmp_path):
    video = talking_scene(1, 60)
    black = np.zeros_like(video)
    # The middle segment rendered black: frames 24..35 are black, the cross-fades around them are not.
    result, _ = assemble(tmp_path, [(0, 24), (20, 40), (36, 60)], [video, black, video], frames=60)
    checks = result["qc"]["checks"]
    assert checks["black"]["black_frames"] == 12
    assert checks["black"]["black_runs"] == [[24, 36]]
    assert result["qc"]["flagged"] and any(r.startswith("black: 12 frame(s) (24-35)") for r in result["qc"]["reasons"])
    assert checks["black"]["severity"] == 12  # any black frame is over the threshold of 0


def test_frozen_run_is_flagged_and_a_short_pause_is_not(tmp_path):
    video = talking_scene(2, 60)
    frozen = video.copy()
    frozen[20:40] = video[20]  # 20 identical frames = 0.8 s
    result, _ = assemble(tmp_path, [(0, 60)], [frozen], frames=60, name="frozen")
    checks = result["qc"]["checks"]
    assert checks["frozen"]["frozen_longest_frames"] == 20 and checks["frozen"]["frozen_longest_at"] == 20
    assert checks["frozen"]["severity"] == pytest.approx(0.8 / qc.DEFAULT_THRESHOLDS.frozen_seconds)
    assert any(r.startswith("frozen: 20 identical frames from frame 20") for r in result["qc"]["reasons"])

    paused = video.copy()
    paused[30:35] = video[30]  # 5 identical frames = 0.2 s: under the 0.5 s threshold
    result, _ = assemble(tmp_path, [(0, 60)], [paused], frames=60, name="paused")
    assert result["qc"]["checks"]["frozen"]["frozen_longest_frames"] == 5
    assert not result["qc"]["flagged"]


def remux(source, target, *, delay_audio=0.0, delay_video=0.0):
    """The same streams, one of them shifted in time (an edit list), without re-encoding."""
    video_in = ["-itsoffset", str(delay_video)] if delay_video else []
    audio_in = ["-itsoffset", str(delay_audio)] if delay_audio else []
    subprocess.run([ffmpeg_exe(), "-y", "-loglevel", "error", *video_in, "-i", str(source), *audio_in, "-i", str(source),
                    "-map", "0:v", "-map", "1:a", "-c", "copy", str(target)], check=True)


def test_out_of_sync_mux_is_flagged(tmp_path):
    video = talking_scene(3, 50)
    result, output = assemble(tmp_path, [(0, 50)], [video], frames=50)
    good = qc.mp4_streams(output)
    assert good["video"] == pytest.approx(dict(start=0.0, seconds=2.0), abs=0.002)
    assert good["audio"] == pytest.approx(dict(start=0.0, seconds=2.0), abs=0.002)

    for name, shift in (("late_audio", dict(delay_audio=0.3)), ("late_video", dict(delay_video=0.3))):
        remux(output, tmp_path / f"{name}.mp4", **shift)
        streams = qc.mp4_streams(tmp_path / f"{name}.mp4")
        measured = qc.Measured(fps=FPS, total_frames=50, streams=streams)
        check = qc.check_av_sync(measured, qc.DEFAULT_THRESHOLDS)
        # Copying the audio drops its priming edit (64 ms at 16 kHz): it lands 0.236-0.3 s late.
        expected = 0.3 if "video" in name else 0.236
        assert abs(check.values["av_offset"]) == pytest.approx(expected, abs=0.01), name
        assert check.severity > 5 and check.reason.startswith("A/V sync: audio starts"), name
    report = qc.run_checks(qc.Measured(fps=FPS, total_frames=50, streams={"video": good["video"]}))
    assert report["flagged"] and "mux: no audio stream" in report["reasons"]


def test_obvious_seam_scores_high_and_a_seamless_join_scores_one(tmp_path):
    first, second = talking_scene(4, 60), talking_scene(5, 60)
    seamless, _ = assemble(tmp_path, [(0, 36), (30, 60)], [first, first], frames=60, name="seamless")
    seam, _ = assemble(tmp_path, [(0, 36), (30, 60)], [first, second], frames=60, name="seam")
    cut, _ = assemble(tmp_path, [(0, 30), (30, 60)], [first, second], frames=60, name="cut")  # no cross-fade

    (at, seamless_score), = seamless["qc"]["checks"]["seams"]["seams"]
    assert at == 30 and seamless_score == pytest.approx(1.0, abs=0.35)
    assert not seamless["qc"]["flagged"]
    for report in (seam["qc"], cut["qc"]):
        (at, score), = report["checks"]["seams"]["seams"]
        assert at == 30 and score > 2 * qc.DEFAULT_THRESHOLDS.seam_ratio
        assert report["flagged"] and any(r.startswith("seam: 1 join(s) jump (worst at frame 30") for r in report["reasons"])


def test_seams_of_frames_stitched_before_the_assembler(tmp_path):
    """The one-clip pipeline hands over frames already cross-faded, as one segment: it names the joins."""
    from pipeline.assemble import segment_joins, stitched_frames

    first, second = talking_scene(4, 60), talking_scene(5, 60)
    segments = write_segments(tmp_path, [(0, 36), (30, 60)], [first, second])
    stitched = np.concatenate(list(stitched_frames(segments, 60)))
    whole = write_segments(tmp_path, [(0, 60)], [stitched], name="whole")
    joins = segment_joins([(0, 36), (30, 60)])
    assert joins == [(30, 36)]
    named = assemble_clip(whole, 60, FPS, speech_like(2.4), str(tmp_path / "a.mp4"), joins=joins)["qc"]
    unnamed = assemble_clip(whole, 60, FPS, speech_like(2.4), str(tmp_path / "b.mp4"))["qc"]
    assert named["checks"]["seams"]["seam_max"] > 2 * qc.DEFAULT_THRESHOLDS.seam_ratio and named["flagged"]
    assert unnamed["checks"]["seams"] == dict(seams=[], seam_max=None, severity=None)


def test_non_finite_frames_are_counted():
    meter = qc.FrameMeter(10, FPS, face_samples=0)
    frames = talking_scene(6, 10).astype(np.float32)
    frames[3, 5, 5, 0] = np.nan
    frames[7, 0, 0, 1] = np.inf
    meter.add(frames)
    report = qc.run_checks(meter.measured())
    assert report["checks"]["nonfinite"]["nonfinite_frames"] == 2
    assert "non-finite values in 2 frame(s) (first: 3)" in report["reasons"]


def test_frames_shorter_than_the_audio_are_flagged(tmp_path):
    video = talking_scene(7, 40)
    result, _ = assemble(tmp_path, [(0, 40)], [video], frames=40, audio_seconds=2.0)
    check = result["qc"]["checks"]["duration"]
    assert check["duration_gap_frames"] == pytest.approx(10)
    assert any(r.startswith("duration: 40 frames = 1.600 s, audio 2.000 s") for r in result["qc"]["reasons"])


def face_video(frames: int, opening) -> np.ndarray:
    """A real portrait (NASA's public-domain astronaut photo) whose jaw drops by ``opening(i)`` pixels."""
    skimage_data = pytest.importorskip("skimage.data")
    image = skimage_data.astronaut()[0:256, 96:352]
    mouth_y, left, right = 145, 96, 160  # below the lips, across the chin (image coordinates after the crop)
    video = []
    for i in range(frames):
        frame = image.copy()
        drop = int(round(opening(i)))
        if drop:
            frame[mouth_y + drop:, left:right] = image[mouth_y:256 - drop, left:right]
            frame[mouth_y:mouth_y + drop, left + 12:right - 12] = (40, 10, 15)  # the open mouth
        video.append(frame)
    return np.stack(video)


def test_lip_sync_proxy_follows_the_mouth_against_the_voice(tmp_path):
    pytest.importorskip("mediapipe")
    frames, seconds = 72, 72 / FPS
    envelope = (lambda t: np.clip(np.sin(2 * np.pi * 1.3 * t), 0, None))
    loudness = envelope(np.arange(frames) / FPS)
    audio = speech_like(seconds, envelope=envelope)
    results = {}
    for name, opening in (("in_sync", lambda i: 12 * loudness[i]), ("against", lambda i: 12 * (1 - loudness[i]))):
        segments = write_segments(tmp_path, [(0, frames)], [face_video(frames, opening)], name=name)
        results[name] = assemble_clip(segments, frames, FPS, audio, str(tmp_path / f"{name}.mp4"))["qc"]
    in_sync, against = results["in_sync"]["checks"]["lip_sync"], results["against"]["checks"]["lip_sync"]
    assert in_sync["face_frames"] >= 20 and against["face_frames"] >= 20
    assert in_sync["lip_sync"] > 0.6 and not results["in_sync"]["flagged"]
    assert against["lip_sync"] < -0.3 and against["severity"] > 1
    assert any(r.startswith("lip sync (proxy): mouth opening vs audio energy correlates -") for r in results["against"]["reasons"])


def test_checks_are_a_registry_and_a_failing_check_does_not_flag():
    meter = qc.FrameMeter(20, FPS, face_samples=0)
    meter.add(talking_scene(8, 20))
    measured = meter.measured()

    def always_loud(m, t):
        return qc.CheckResult(dict(loudness=11), 2.0, "too loud")

    def broken(m, t):
        raise ZeroDivisionError("bug")

    report = qc.run_checks(measured, checks={**qc.CHECKS, "loud": always_loud, "broken": broken})
    assert report["checks"]["loud"] == dict(loudness=11, severity=2.0)
    assert "too loud" in report["reasons"] and report["score"] == 2.0
    assert report["errors"] == {"broken": "ZeroDivisionError: bug"} and "broken" not in report["checks"]


def test_qc_columns_for_results_parquet(tmp_path):
    import pandas as pd

    meter = qc.FrameMeter(20, FPS, face_samples=0)
    frames = talking_scene(9, 20)
    frames[5:8] = 0
    meter.add(frames)
    report = qc.run_checks(meter.measured())
    columns = qc.qc_columns(report)
    assert tuple(columns) == qc.QC_COLUMNS
    assert columns["qc_flagged"] is True and columns["qc_score"] == report["score"]
    assert columns["qc_reasons"].startswith("black: 3 frame(s)")
    assert json.loads(columns["qc"]) == json.loads(json.dumps(report))
    frame = pd.DataFrame([dict(clip_id="a", **columns), dict(clip_id="b", **qc.qc_columns(None))])
    frame.to_parquet(tmp_path / "r.parquet")
    back = pd.read_parquet(tmp_path / "r.parquet")
    assert back["qc_flagged"].tolist()[0] == True and back["qc_score"].isna().tolist() == [False, True]  # noqa: E712


def test_contact_strip_is_written_beside_the_clip(tmp_path):
    from PIL import Image

    video = talking_scene(10, 30)
    segments = write_segments(tmp_path, [(0, 30)], [video])
    strip = tmp_path / "strips" / "clip.jpg"
    assemble_clip(segments, 30, FPS, speech_like(1.2), str(tmp_path / "c.mp4"), strip_uri=str(strip))
    image = Image.open(strip)
    assert image.size == (qc.STRIP_FRAMES * round(128 * qc.STRIP_HEIGHT / 96), qc.STRIP_HEIGHT)


@pytest.fixture(scope="module")
def framed_astronaut():
    """The astronaut framed at 256x256 as the job frames a reference, and what framing recorded."""
    pytest.importorskip("mediapipe")
    from echomimic2.pose_align import frame_reference
    from tests.synthetic_person import astronaut

    framed, _, framing = frame_reference(astronaut(), 256, 256)
    return framed, framing.as_dict()["reference_face_box"]


def face_position(frames: np.ndarray, reference_face) -> dict:
    meter = qc.FrameMeter(len(frames), FPS, face_samples=len(frames), reference_face=reference_face)
    meter.add(frames)
    return qc.run_checks(meter.measured(), checks={"face_position": qc.check_face_position})


def test_face_position_flags_a_face_that_moved_vanished_or_appeared(framed_astronaut):
    framed, reference_face = framed_astronaut
    assert len(reference_face) == 4 and reference_face[0] < reference_face[2]
    still = np.stack([framed] * 8)
    report = face_position(still, reference_face)
    check = report["checks"]["face_position"]
    assert not report["flagged"] and check["face_share"] == 1.0 and check["face_shift"] < 0.05
    assert 0.95 < check["face_scale"] < 1.05  # the QC's mesh measures the box framing recorded
    moved = np.stack([np.roll(framed, 70, axis=1)] * 8)  # the face 70 px (more than a face width) to the right
    report = face_position(moved, reference_face)
    assert report["flagged"] and report["reasons"][0].startswith("face moved: ")
    assert report["checks"]["face_position"]["face_shift"] > 1
    vanished = talking_scene(3, 8, size=(256, 256))
    report = face_position(vanished, reference_face)
    assert report["flagged"] and report["reasons"][0].startswith("face vanished: ")
    report = face_position(still, [])  # a reference without a face (a cat) rendered with one
    assert report["flagged"] and report["reasons"][0].startswith("face appeared: ")
    assert not face_position(vanished, [])["flagged"]
    unknown = face_position(still, None)["checks"]["face_position"]
    assert unknown["severity"] is None and unknown["face_position_note"] == "reference face not known"
