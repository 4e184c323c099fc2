"""Poses from a driving video: the bounded decoder, MediaPipe landmarks -> official dicts, and the
`poses extract` command, on a synthetic video made by moving a real photo along a known path."""
from __future__ import annotations

import numpy as np
import pytest

from echomimic2.pose import load_pose_npz, read_pose_npy, render_pose
from echomimic2.pose_align import anchor_points, fit_similarity
from echomimic2.pose_detect import FACE68_FROM_MESH, LOST, PoseDetector, official_pose
from pipeline.driving_video import (
    DrivingVideoError,
    VideoLimits,
    check_driving_video,
    decode_frames,
    poses_from_video,
    probe_video,
    write_video,
)
from tests.synthetic_person import SIZE, driving_frames, path_matrix

FRAMES = 16
FPS = 12


@pytest.fixture(scope="module")
def driving_video(tmp_path_factory) -> str:
    path = tmp_path_factory.mktemp("driving") / "drive.mp4"
    write_video(iter(driving_frames(FRAMES)), path, FPS, SIZE, SIZE)
    return str(path)


@pytest.fixture(scope="module")
def extracted(driving_video):
    return poses_from_video(driving_video, FPS)


def _pixels(point: np.ndarray, summary: dict) -> np.ndarray:
    """A pose's normalised point back in the video's pixels (the pose box of the summary)."""
    x0, y0, side, _ = summary["pose_box"]
    return np.array([x0, y0]) + point * side


def _follow(points: np.ndarray, frame: int, start: int) -> np.ndarray:
    """Where the known path moves pixels of frame `start` to in frame `frame`."""
    a, b = (np.vstack([path_matrix(i, FRAMES), [0, 0, 1]]) for i in (start, frame))
    moved = (b @ np.linalg.inv(a))[:2]
    return points @ moved[:, :2].T + moved[:, 2]


def clip_target(folder) -> str:
    path = folder / "segment.mp4"
    write_video(iter([np.zeros((64, 64, 3), np.uint8)] * 4), path, 12, 64, 64)
    return str(path)


# ---- decoding ------------------------------------------------------------------------------------


def test_decoder_resamples_to_the_clip_fps_and_bounds_frames(tmp_path):
    # frame i of the source is uniformly grey level 10 * i: which frames come back shows the resampling
    source = [np.full((64, 96, 3), 10 * i, np.uint8) for i in range(12)]
    path = tmp_path / "levels.mp4"
    write_video(iter(source), path, 12, 96, 64)
    info = probe_video(path)
    assert (info.width, info.height, info.codec) == (96, 64, "h264") and info.seconds == pytest.approx(1.0, abs=0.05)
    half = [int(round(frame.mean())) for frame in decode_frames(path, 6)]
    assert len(half) == 6 and all(abs(level - 20 * i) <= 3 for i, level in enumerate(half))
    assert len(list(decode_frames(path, 24))) == 24  # upsampled: each frame twice
    assert len(list(decode_frames(path, 12, max_frames=5))) == 5
    small = next(decode_frames(path, 12, limits=VideoLimits(max_side=48)))
    assert small.shape == (32, 48, 3)


def test_non_videos_and_videos_over_the_limits_are_refused_from_the_header(tmp_path):
    text = tmp_path / "notes.mp4"
    text.write_text("not a video at all")
    with pytest.raises(DrivingVideoError, match="not a readable video"):
        probe_video(text)
    import cv2

    still = tmp_path / "still.png"
    cv2.imwrite(str(still), np.zeros((32, 32, 3), np.uint8))
    with pytest.raises(DrivingVideoError, match="not a readable video"):
        probe_video(still)
    audio_only = tmp_path / "speech.mp4"  # a real mp4 container without a video stream
    import subprocess

    from pipeline.media import ffmpeg_exe

    subprocess.run([ffmpeg_exe(), "-nostdin", "-loglevel", "error", "-f", "lavfi", "-i", "sine=frequency=440:duration=1",
                    "-c:a", "aac", str(audio_only)], check=True)
    with pytest.raises(DrivingVideoError, match=r"no video stream"):
        probe_video(audio_only)
    playlist = tmp_path / "playlist.m3u8"  # ffmpeg alone would open the local file it lists
    playlist.write_text(f"#EXTM3U\n#EXT-X-TARGETDURATION:1\n#EXTINF:1,\nfile://{clip_target(tmp_path)}\n#EXT-X-ENDLIST\n")
    with pytest.raises(DrivingVideoError, match="not a readable video"):
        probe_video(playlist)
    clip = tmp_path / "clip.mp4"
    write_video(iter([np.zeros((64, 64, 3), np.uint8)] * 24), clip, 12, 64, 64)  # 2 s
    with pytest.raises(DrivingVideoError, match="over the limit of 1 s"):
        probe_video(clip, VideoLimits(max_seconds=1))
    with pytest.raises(DrivingVideoError, match="over 1000 pixels"):
        probe_video(clip, VideoLimits(max_pixels=1000))
    with pytest.raises(DrivingVideoError, match="bytes, over the limit"):
        probe_video(clip, VideoLimits(max_bytes=100))
    with pytest.raises(DrivingVideoError, match="not a readable video"):
        poses_from_video(text.read_bytes(), 12, name="notes.mp4")


# ---- landmarks -> official dicts ------------------------------------------------------------------


def test_face68_picks_follow_the_official_layout():
    from tests.synthetic_person import astronaut

    with PoseDetector(video=False) as detector:
        found = detector.detect(astronaut())
    face = official_pose(found, (0, 0, 1, 1))["faces"][0]  # pixels
    assert len(set(FACE68_FROM_MESH)) == 68
    assert face[8, 1] == face[:17, 1].max()  # chin: lowest jaw point
    assert face[0, 0] < face[8, 0] < face[16, 0]  # jaw runs image-left -> right
    assert face[17:27, 1].max() < face[36:48, 1].min()  # brows above the eyes
    assert face[36:42, 0].max() < face[42:48, 0].min()  # the person's right eye on the image's left
    assert face[36:48, 1].mean() < face[30, 1] < face[48:68, 1].mean()  # eyes, nose tip, mouth downwards
    # pairs mirrored about the face's midline: equal height within a few pixels (frontal portrait)
    for left, right in ((0, 16), (36, 45), (39, 42), (48, 54), (31, 35)):
        assert abs(face[left, 1] - face[right, 1]) < 6


def test_driving_video_gives_official_dicts_that_follow_the_motion(extracted):
    poses, summary = extracted
    assert len(poses) == FRAMES and summary["frames"] == FRAMES
    for index, pose in enumerate(poses):
        assert pose["num"] == index and pose["draw_pose_params"] == [768, 768, 0, 768, 0, 768]
        assert pose["hands"].shape == (2, 21, 2) and pose["hands_score"].shape == (2, 21)
        assert pose["bodies"]["candidate"].shape == (18, 2) and pose["bodies"]["subset"].shape == (1, 18)
        assert pose["faces"].shape == (1, 68, 2) and pose["faces_score"].shape == (1, 68)
    # Face anchors follow the known path: frame i's points vs frame 0's moved by the path.
    errors = []
    first = {name: _pixels(point, summary) for name, point in anchor_points(poses[0]).items()}
    for index, pose in enumerate(poses[1:], start=1):
        for name, point in anchor_points(pose).items():
            if name in ("right_eye_outer", "left_eye_outer", "nose_tip", "chin") and name in first:
                errors.append(np.linalg.norm(_pixels(point, summary) - _follow(first[name], index, 0)))
    assert len(errors) >= 4 * (FRAMES - 1) - 2
    assert np.median(errors) < 2.0 and np.max(errors) < 4.0, (np.median(errors), np.max(errors))
    # Shoulders are MediaPipe's guess under a bulky suit cut off at the chest: tens of pixels of drift
    # as the framing changes, so only a loose bound (a quarter of the shoulder span, ~45 px).
    shoulder_errors = []
    for index, pose in enumerate(poses[1:], start=1):
        points = anchor_points(pose)
        for name in ("left_shoulder", "right_shoulder"):
            if name in points and name in first:
                shoulder_errors.append(np.linalg.norm(_pixels(points[name], summary) - _follow(first[name], index, 0)))
    assert shoulder_errors and np.max(shoulder_errors) < 45, shoulder_errors


def test_the_drawn_hand_is_the_persons_left_and_moves_with_the_picture(extracted):
    poses, summary = extracted
    left_found = [i for i, pose in enumerate(poses) if pose["hands_score"][0].min() > 0]
    assert len(left_found) >= FRAMES * 3 // 4 and summary["frames_with_hands"] >= len(left_found)
    # hands[0] is the person's left (image right, as in official files); the hand is drawn there
    assert all(poses[i]["hands"][0, :, 0].mean() > 0.5 for i in left_found)
    # the right hand is not in the picture: written lost, (-1, -1) with score 0, nothing drawn for it
    lost = [i for i, pose in enumerate(poses) if (pose["hands"][1] == LOST).all()]
    assert len(lost) >= FRAMES * 3 // 4 and all(poses[i]["hands_score"][1].max() == 0 for i in lost)
    # the hand's centre follows the path (from a middle frame: the tracker settles in the first ones)
    start = left_found[len(left_found) // 2]
    centre = _pixels(poses[start]["hands"][0].mean(axis=0), summary)
    errors = [np.linalg.norm(_pixels(poses[i]["hands"][0].mean(axis=0), summary) - _follow(centre, i, start))
              for i in left_found]
    assert np.median(errors) < 6.0, errors
    image = render_pose(poses[start], 256, 256)
    assert image[..., 0].max() > 200 and image[:, :128].max() == 0  # joints drawn, only on the image's right


def test_a_video_without_hands_fails_with_that_reason(tmp_path, driving_video):
    path = tmp_path / "no_hands.mp4"
    write_video(iter(driving_frames(4, with_hand=False)), path, FPS, SIZE, SIZE)
    with pytest.raises(DrivingVideoError, match="no detectable hands in any of its 4 frames"):
        poses_from_video(path.read_bytes(), FPS, name="no_hands.mp4")
    # validate's cheaper check: a few frames sampled over the video
    with pytest.raises(DrivingVideoError, match=r"no_hands.mp4: no detectable hands in 3 frames sampled"):
        check_driving_video(path, name="no_hands.mp4", samples=3)
    assert check_driving_video(driving_video, samples=4).width == SIZE


def test_poses_extract_command_writes_npy_folder_npz_and_preview(driving_video, tmp_path, extracted):
    poses, _ = extracted
    out = tmp_path / "poses"
    from typer.testing import CliRunner

    from cli import app

    runner = CliRunner()
    command = ["poses", "extract", driving_video, str(out), "--fps", str(FPS), "--max-frames", "6",
               "--preview", "--preview-size", "128"]
    out.mkdir()
    (out / "6.npy").write_bytes(b"from an earlier, longer run")  # would be read as frame 6
    result = runner.invoke(app, command)
    assert result.exit_code == 0, result.output
    assert "hands found in" in result.output and "removed 1 stale frame files" in result.output
    files = sorted(out.glob("*.npy"), key=lambda p: int(p.stem))
    assert [p.stem for p in files] == [str(i) for i in range(6)]
    first = read_pose_npy(files[0], "0.npy")  # the restricted reader accepts what we write
    assert set(first) >= {"bodies", "hands", "hands_score", "faces", "faces_score", "num", "draw_pose_params"}
    # Same frames, same detector; only the pose box differs (it spans the frames extracted): one scale
    # and shift maps this run's face onto the module's, and then its hands too.
    np.testing.assert_array_equal(first["hands_score"], poses[0]["hands_score"])
    box_change, _, _ = fit_similarity(first["faces"][0], poses[0]["faces"][0], rotation=False)
    found = first["hands_score"] > 0
    moved = first["hands"] @ box_change[:, :2].T + box_change[:, 2]
    np.testing.assert_allclose(moved[found], poses[0]["hands"][found], atol=1e-3)
    preview = tmp_path / "poses_preview.mp4"
    info = probe_video(preview)
    assert (info.width, info.height) == (128, 128) and len(list(decode_frames(preview, FPS))) == 6

    npz = tmp_path / "poses.npz"
    result = runner.invoke(app, command[:3] + [str(npz), "--max-frames", "3"])
    assert result.exit_code == 0, result.output
    from_npz = load_pose_npz(npz)
    assert len(from_npz) == 3 and {"nose", "left_shoulder", "chin"} <= set(anchor_points(from_npz[0]))  # alignable

    bad = tmp_path / "bad.mp4"
    bad.write_bytes(b"\x00" * 100)
    result = runner.invoke(app, command[:2] + [str(bad), str(tmp_path / "x.npz")])
    assert result.exit_code == 1 and "not a readable video" in result.output
