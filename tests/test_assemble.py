"""Segment store and assembly: chunked segment reads, the cross-fade, H.264 + AAC with the audio fitted to
the video's duration, atomic output, bounded memory, and the probe's ffmpeg-only fallback."""
import io
import tracemalloc

import numpy as np
import pytest
import soundfile as sf
from conftest import encoded_audio, hls_playlist, wav_bytes

from pipeline import assemble
from pipeline.assemble import assemble_clip, crossfade_weight, probe_video, stitched_frames
from pipeline.segment_store import iter_segment, write_segment
from pipeline.storage import InputError


def speech_like(seconds: float, sr: int = 16000) -> bytes:
    t = np.arange(int(seconds * sr)) / sr
    buffer = io.BytesIO()
    sf.write(buffer, (0.3 * np.sin(2 * np.pi * 300 * t)).astype(np.float32), sr, format="WAV")
    return buffer.getvalue()


def constant_segments(tmp_path, spans, colours, size=(32, 48)):
    segments = []
    for (start, stop), colour in zip(spans, colours):
        uri = str(tmp_path / f"{start}-{stop}.npy")
        write_segment(np.full((stop - start, *size, 3), colour, np.uint8), uri)
        segments.append((start, stop, uri))
    return segments


def test_segment_store_round_trip_in_chunks(tmp_path):
    frames = np.random.default_rng(0).integers(0, 256, (19, 16, 24, 3), dtype=np.uint8)
    write_segment(frames, str(tmp_path / "s.npy"))
    chunks = list(iter_segment(str(tmp_path / "s.npy"), chunk_frames=8))
    assert [len(c) for c in chunks] == [8, 8, 3]
    assert np.array_equal(np.concatenate(chunks), frames)
    with pytest.raises(ValueError, match=r"uint8 \(n, H, W, 3\)"):
        write_segment(frames.astype(np.float32), str(tmp_path / "f.npy"))
    data = (tmp_path / "s.npy").read_bytes()
    (tmp_path / "cut.npy").write_bytes(data[: len(data) - 100])
    with pytest.raises(ValueError, match="truncated"):
        list(iter_segment(str(tmp_path / "cut.npy")))


def test_crossfade_blends_only_the_shared_frames(tmp_path):
    spans, colours = [(0, 20), (14, 34), (28, 45)], [0, 120, 240]
    segments = constant_segments(tmp_path, spans, colours)
    video = np.concatenate(list(stitched_frames(segments, 45, chunk_frames=7)))
    assert video.shape == (45, 32, 48, 3)
    values = video[:, 0, 0, 0].astype(int)
    assert (video == video[:, :1, :1, :1]).all()  # every frame stays a flat colour
    expected = [0] * 14 + [round((1 - crossfade_weight(k, 6)) * 0 + crossfade_weight(k, 6) * 120) for k in range(6)] \
        + [120] * 8 + [round((1 - crossfade_weight(k, 6)) * 120 + crossfade_weight(k, 6) * 240) for k in range(6)] \
        + [240] * 11
    assert values.tolist() == expected
    assert all(0 < v < 120 for v in values[14:20]) and all(120 < v < 240 for v in values[28:34])
    assert values[14:20].tolist() == sorted(values[14:20].tolist())  # a monotone ramp


def test_plan_errors(tmp_path):
    segments = constant_segments(tmp_path, [(0, 10), (12, 20)], [0, 0])
    with pytest.raises(ValueError, match="does not follow"):
        list(stitched_frames(segments, 20))
    with pytest.raises(ValueError, match="not 0..30"):
        list(stitched_frames(segments[:1], 30))
    with pytest.raises(ValueError, match="2 frames, segment 0-3 needs 3"):
        write_segment(np.zeros((2, 8, 8, 3), np.uint8), str(tmp_path / "short.npy"))
        list(stitched_frames([(0, 3, str(tmp_path / "short.npy"))], 3))


@pytest.mark.parametrize("fps,audio_seconds,total_frames", [
    (25, 2.0, 50),   # frames from the audio: durations agree
    (24, 1.3, 48),   # audio shorter than the video: padded with silence
    (30, 3.0, 45),   # audio longer than the video: trimmed
])
def test_encoded_clip_matches_fps_and_duration(tmp_path, fps, audio_seconds, total_frames):
    overlap = 4
    half = total_frames // 2
    segments = constant_segments(tmp_path, [(0, half + overlap), (half, total_frames)], [40, 200], size=(64, 64))
    output = tmp_path / "out" / "clip.mp4"
    result = assemble_clip(segments, total_frames, fps, speech_like(audio_seconds), str(output), scratch_dir=tmp_path)
    qc_report = result.pop("qc")
    assert result == dict(frames=total_frames, seconds=total_frames / fps, bytes=output.stat().st_size)
    # Two flat colours joined: the cross-fade is the only change in the clip, and QC says so.
    assert qc_report["checks"]["seams"]["seam_max"] > 3 and qc_report["checks"]["black"]["black_frames"] == 0
    assert qc_report["checks"]["duration"]["duration_gap_frames"] == pytest.approx(
        abs(total_frames / fps - audio_seconds) * fps, abs=1e-6)
    probe = probe_video(str(output))
    assert probe["vcodec"] == "h264" and probe["acodec"] == "aac"
    assert probe["fps"] == pytest.approx(fps) and probe["frames"] == total_frames
    assert (probe["width"], probe["height"]) == (64, 64)
    assert abs(probe["duration"] - total_frames / fps) < 1 / fps
    if total_frames == round(audio_seconds * fps):
        assert abs(probe["duration"] - audio_seconds) < 1 / fps
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith("assemble-")) == []  # scratch removed


def test_probe_fallback_without_ffprobe(tmp_path, monkeypatch):
    segments = constant_segments(tmp_path, [(0, 25)], [90], size=(64, 64))
    assemble_clip(segments, 25, 25, speech_like(1.0), str(tmp_path / "c.mp4"))
    with_ffprobe = probe_video(str(tmp_path / "c.mp4"))
    monkeypatch.setattr(assemble, "ffprobe_exe", lambda: None)
    without = probe_video(str(tmp_path / "c.mp4"))
    assert without.keys() == with_ffprobe.keys()
    for key in ("vcodec", "acodec", "fps", "frames", "width", "height"):
        assert without[key] == with_ffprobe[key], key
    assert without["duration"] == pytest.approx(with_ffprobe["duration"], abs=0.02)


def test_bad_audio_fails_clearly_and_writes_nothing(tmp_path):
    segments = constant_segments(tmp_path, [(0, 10)], [0], size=(64, 64))
    with pytest.raises(InputError, match="not an allowed audio format"):
        assemble_clip(segments, 10, 25, b"not audio at all", str(tmp_path / "bad.mp4"))
    assert not (tmp_path / "bad.mp4").exists()


def test_audio_playlist_is_refused_not_followed(tmp_path):
    """The stored audio copy reaches ffmpeg with its demuxer named from its bytes: an HLS playlist is refused,
    never read as a list of other files to mux."""
    elsewhere = tmp_path / "elsewhere.mp3"
    elsewhere.write_bytes(encoded_audio(wav_bytes(1.0), "libmp3lame", "mp3"))
    segments = constant_segments(tmp_path, [(0, 10)], [0], size=(64, 64))
    with pytest.raises(InputError, match="not an allowed audio format .*: it is an HLS playlist"):
        assemble_clip(segments, 10, 25, hls_playlist(elsewhere, 1.0), str(tmp_path / "out.mp4"))
    assert not (tmp_path / "out.mp4").exists()


def test_segments_are_read_lazily_and_memory_stays_bounded(tmp_path, monkeypatch):
    """A 480-frame clip (23.6 MB of frames) streams through in chunks: the stitcher reads a segment only
    when its frames are due, and the assembler's Python peak stays a small fraction of the video."""
    spans = [(max(0, 44 * k), 44 * k + 48) for k in range(10)] + [(440, 480)]
    spans = [(s, min(e, 480)) for s, e in spans]
    segments = constant_segments(tmp_path, spans, [k * 20 for k in range(len(spans))], size=(128, 128))
    video_bytes = 480 * 128 * 128 * 3

    reads = []
    real_iter = assemble.iter_segment

    def recording_iter(uri, chunk_frames=8):
        for chunk in real_iter(uri, chunk_frames):
            reads.append(uri)
            yield chunk

    monkeypatch.setattr(assemble, "iter_segment", recording_iter)
    frames = stitched_frames(segments, 480)
    next(frames)
    assert set(reads) == {segments[0][2]} and len(reads) == 1  # one chunk of the first segment, nothing else

    audio = speech_like(19.2)
    # A short clip first: once-per-process imports (mediapipe, PIL's plugins) are not the long clip's memory.
    warm_up = constant_segments(tmp_path, [(0, 8)], [0], size=(128, 128))
    assemble_clip(warm_up, 8, 25, speech_like(0.4), str(tmp_path / "warm.mp4"), scratch_dir=tmp_path)
    tracemalloc.start()
    result = assemble_clip(segments, 480, 25, audio, str(tmp_path / "long.mp4"), scratch_dir=tmp_path)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert result["frames"] == 480
    # ~2.9 MB measured idle; the ffmpeg pipe's feeding thread holds a little more when the machine is loaded
    assert peak < video_bytes / 6, f"peak {peak / 1e6:.1f} MB for a {video_bytes / 1e6:.1f} MB video"


def test_output_to_s3(s3_bucket, tmp_path):
    segments = constant_segments(tmp_path, [(0, 12)], [128], size=(64, 64))
    uri = f"{s3_bucket}/out/clip.mp4"
    result = assemble_clip(segments, 12, 24, speech_like(0.5), uri)
    probe = probe_video(uri)
    assert probe["frames"] == 12 and probe["vcodec"] == "h264" and result["bytes"] > 0


def test_a_segment_written_chunk_by_chunk_is_stored_only_when_complete(tmp_path):
    from pipeline.segment_store import segment_output

    frames = np.random.default_rng(1).integers(0, 256, (9, 16, 24, 3), dtype=np.uint8)
    uri = str(tmp_path / "s.npy")
    with segment_output(uri, 9, 16, 24) as segment:
        for begin in range(0, 9, 4):
            segment.write(frames[begin : begin + 4])
    assert np.array_equal(np.load(uri), frames)
    assert np.array_equal(np.concatenate(list(iter_segment(uri))), frames)
    short = str(tmp_path / "short.npy")
    with pytest.raises(ValueError, match="5 of the segment's 9 frames"):
        with segment_output(short, 9, 16, 24) as segment:
            segment.write(frames[:5])
    with pytest.raises(ValueError, match="do not fit"):
        with segment_output(short, 9, 16, 24) as segment:
            segment.write(frames[:, :8])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s.npy"]
