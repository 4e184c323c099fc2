"""Framing a real portrait (skimage's astronaut) to square and non-square outputs, and mapping pose
sequences onto the reference person with one similarity transform."""
from __future__ import annotations

import math

import cv2
import numpy as np
import pytest

from echomimic2.pose import OFFICIAL_DRAW_PARAMS, render_pose
from echomimic2.pose_align import (
    PLACEMENT_SLACK,
    align_poses,
    anchor_points,
    fit_similarity,
    frame_reference,
    map_poses_through_crop,
    transform_pose,
)
from echomimic2.pose_detect import FACE68_FROM_MESH, LOST, FrameLandmarks, official_pose
from echomimic2.triage import HEAD_ROOM, SHOULDER_LINE
from tests.synthetic_person import astronaut

SIZES = [(256, 256), (256, 384), (384, 256)]


@pytest.fixture(scope="module")
def framed():
    """The astronaut framed at each size: {(w, h): (image, box, detection)}."""
    image = astronaut()
    return {size: frame_reference(image, *size) for size in SIZES}


def _similarity(scale: float, degrees: float, shift) -> np.ndarray:
    c, s = math.cos(math.radians(degrees)) * scale, math.sin(math.radians(degrees)) * scale
    return np.array([[c, -s, shift[0]], [s, c, shift[1]]])


def _apply(matrix: np.ndarray, points: np.ndarray) -> np.ndarray:
    return points @ matrix[:, :2].T + matrix[:, 2]


# ---- the similarity fit --------------------------------------------------------------------------


def test_fit_similarity_recovers_scale_rotation_and_shift():
    points = np.random.default_rng(0).uniform(0, 100, (8, 2))
    truth = _similarity(1.7, 12.0, (5.0, -40.0))
    matrix, scale, angle = fit_similarity(points, _apply(truth, points), rotation=True)
    np.testing.assert_allclose(matrix, truth, atol=1e-9)
    assert scale == pytest.approx(1.7) and angle == pytest.approx(12.0)
    matrix, scale, angle = fit_similarity(points, _apply(_similarity(0.5, 0.0, (3, 4)), points), rotation=False)
    assert scale == pytest.approx(0.5) and angle == 0.0 and matrix[0, 1] == 0.0
    with pytest.raises(ValueError, match="coincide"):
        fit_similarity(np.ones((3, 2)), np.zeros((3, 2)), rotation=False)


# ---- framing ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("size", SIZES)
def test_astronaut_is_framed_like_half_body_training_data(framed, size):
    width, height = size
    image, box, detection = framed[size]
    assert image.shape == (height, width, 3) and image.dtype == np.uint8
    assert detection.method == "person" and detection.person_found
    anchors = detection.anchors
    side = min(width, height)  # the square's side in output pixels (portrait: extended below; landscape: sideways)
    brow = detection.landmarks.face[list(FACE68_FROM_MESH[17:27]), 1].min()
    shoulders_y = (anchors["left_shoulder"][1] + anchors["right_shoulder"][1]) / 2
    # brows' top at 14 % and shoulders at 47 % of the square (official demo poses: 12-15 %, 42-50 %),
    # give or take the 6 % the box may move to avoid padding
    # her square fits the photo: no output aspect shrinks her (the rest of a non-square box is filled)
    assert detection.zoom == 1.0
    assert brow / side == pytest.approx(HEAD_ROOM, abs=PLACEMENT_SLACK + 0.01)
    expected_shoulders = brow / side + (SHOULDER_LINE - HEAD_ROOM) / detection.zoom
    assert shoulders_y / side == pytest.approx(expected_shoulders, abs=0.04)
    neck_x = (anchors["left_shoulder"][0] + anchors["right_shoulder"][0]) / 2
    assert abs(neck_x - width / 2) <= (PLACEMENT_SLACK + 0.01) * side  # centred on the neck
    for name in ("left_shoulder", "right_shoulder", "nose", "chin"):
        x, y = anchors[name]
        assert 0 < x < width and 0 < y < height
    # the output really is that crop: the colour around the nose matches the source's there
    scale = width / (box[2] - box[0])
    x, y = anchors["nose_tip"]
    sx, sy = box[0] + x / scale, box[1] + y / scale
    radius = 8
    patch = image[int(y) - radius:int(y) + radius, int(x) - radius:int(x) + radius].reshape(-1, 3).mean(0)
    r = radius / scale
    source = astronaut()[int(sy - r):int(sy + r), int(sx - r):int(sx + r)].reshape(-1, 3).mean(0)
    assert np.abs(patch - source).max() < 8


def test_a_wide_photo_is_framed_around_the_person_not_centre_cropped():
    # 451x300 landscape with the person left of centre: a centre crop would cut her shoulder
    source = astronaut()
    wide = np.full((300, 451, 3), 200, np.uint8)
    wide[:, :300] = cv2.resize(source, (300, 300), interpolation=cv2.INTER_AREA)
    image, box, detection = frame_reference(wide, 256, 256)
    assert detection.method == "person"
    assert box[0] < (451 - 300) / 2  # the box moved left of the centre crop's (75.5, ...)
    for name in ("left_shoulder", "right_shoulder"):
        x, y = detection.anchors[name]
        assert 0.1 * 256 < x < 0.9 * 256 and 0.3 * 256 < y < 0.65 * 256


# ---- alignment -----------------------------------------------------------------------------------


def _sequence_from(landmarks: FrameLandmarks, drawn: np.ndarray, frames: int = 6) -> list[dict]:
    """Poses 'drawn for another framing': the reference's true landmarks moved by `drawn` (output px
    -> a 768 px pose box), a hand swinging beside the left wrist, normalised to that box."""
    poses = []
    for i in range(frames):
        moved = landmarks.scaled(drawn, 768, 768)
        hand = np.stack([np.linspace(0, 40, 21), np.linspace(0, -60, 21)], axis=1)
        wrist = moved.body[15, :2] + (10 * i, -5 * i)
        moved.hands = {"left": (wrist + hand, 0.9)}
        poses.append(official_pose(moved, (0, 0, 768, 768), i))
    return poses


@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize("degrees", [0.0, 8.0])
def test_a_sequence_drawn_for_another_framing_is_mapped_back_onto_the_reference(framed, size, degrees):
    width, height = size
    _, _, detection = framed[size]
    drawn = _similarity(1.9, degrees, (60.0, -45.0))  # another scale, position (and tilt)
    poses = _sequence_from(detection.landmarks, drawn)
    aligned, info = align_poses(poses, detection, width, height)
    assert info["pose_align_applied"] == "similarity"
    assert set(info["pose_align_anchors"]) >= {"left_shoulder", "right_shoulder", "nose", "chin"}
    assert info["pose_align_rotation_deg"] == pytest.approx(-degrees, abs=0.5)  # used only when tilted
    assert info["pose_align_rms_px"] < 0.5
    # every anchor of every frame lands on the reference's (the transform undoes `drawn`): pixels
    for pose in aligned:
        assert pose["draw_pose_params"] == list(OFFICIAL_DRAW_PARAMS)
        for name, point in anchor_points(pose).items():
            error = np.linalg.norm(point * (width, height) - np.array(detection.anchors[name]))
            assert error < 0.5, (name, error)
    # the hand moves with it: its wrist is where the reference's left wrist is, plus the swing
    first_hand = aligned[0]["hands"][0, 0] * (width, height)
    assert np.linalg.norm(first_hand - detection.landmarks.body[15, :2]) < 0.5
    assert (aligned[0]["hands"][1] == LOST).all()  # the lost hand stays lost


def test_real_extraction_aligned_onto_the_reference_within_stated_pixels(framed):
    """The synthetic driving video's poses (MediaPipe on moved frames) mapped onto the framed astronaut
    at 256x384: measured 1.5-6.4 px for face-mesh points, 2.1-15 px for the body's nose, neck and
    shoulders in frames 3-4."""
    import tempfile

    from pipeline.driving_video import poses_from_video, write_video
    from tests.synthetic_person import SIZE, driving_frames

    with tempfile.TemporaryDirectory() as folder:
        path = f"{folder}/drive.mp4"
        write_video(iter(driving_frames(8)), path, 12, SIZE, SIZE)
        poses, _ = poses_from_video(path, 12)
    width, height = 256, 384
    _, _, detection = framed[(width, height)]
    aligned, info = align_poses(poses, detection, width, height)
    assert info["pose_align_applied"] == "similarity"
    assert 0.8 < info["pose_align_scale"] < 1.1 and info["pose_align_rms_px"] < 8
    # One transform for the whole sequence, fitted to its median anchors: the middle frames (where the
    # moving picture is at its median) land on the reference; the ends are off by the motion itself.
    for pose in aligned[3:5]:
        for name, point in anchor_points(pose).items():
            error = np.linalg.norm(point * (width, height) - np.array(detection.anchors[name]))
            assert error < (16 if name in ("left_shoulder", "right_shoulder", "neck", "nose") else 8), (name, error)


def test_auto_falls_back_to_none_without_a_person_and_none_covers_the_output():
    texture = np.full((300, 451, 3), 90, np.uint8)
    _, _, detection = frame_reference(texture, 256, 384)
    poses = [{"hands": np.full((2, 21, 2), 0.5), "hands_score": np.ones((2, 21)),
              "draw_pose_params": list(OFFICIAL_DRAW_PARAMS)}]
    poses[0]["hands"][1] = LOST
    aligned, info = align_poses(poses, detection, 256, 384)
    assert info["pose_align"] == "auto" and info["pose_align_applied"] == "none"
    assert info["pose_align_reason"] == "no person found in the reference"
    # none: the square pose box covers 256x384 (scale 384/768), centred: x 0.5 stays the centre
    np.testing.assert_allclose(aligned[0]["hands"][0], 0.5)
    assert (aligned[0]["hands"][1] == LOST).all()
    _, info = align_poses(poses, None, 256, 256, mode="none")
    assert info["pose_align_applied"] == "none" and info["pose_align_reason"] == "pose_align is none"
    with pytest.raises(ValueError, match="pose_align must be one of"):
        align_poses(poses, None, 256, 256, mode="sideways")


def test_none_mode_on_a_non_square_output_keeps_hand_shapes():
    pose = {"hands": np.full((2, 21, 2), LOST), "hands_score": np.ones((2, 21)), "draw_pose_params": list(OFFICIAL_DRAW_PARAMS)}
    pose["hands"][0, :2] = [(0.25, 0.5), (0.75, 0.5)]  # a horizontal bone across half the box
    pose["hands"][0, 2] = (0.5, 0.25)  # and a point a quarter box above the centre
    (aligned,), _ = align_poses([pose], None, 256, 384, mode="none")
    pixels = aligned["hands"][0, :3] * (256, 384)
    # scale 384/768 px per box px in both directions: 192 px wide bone, 96 px above the centre
    np.testing.assert_allclose(pixels, [(32, 192), (224, 192), (128, 96)], atol=1e-9)
    image = render_pose(aligned, 256, 384)
    assert image.shape == (384, 256, 3) and image[96, 128, 0] > 200 and image[192, 32, 0] > 200


def test_poses_given_on_the_original_reference_follow_the_same_crop(framed):
    image = astronaut()
    width, height = 384, 256
    _, box, detection = framed[(width, height)]
    nose = detection.landmarks.body[0, :2]  # output pixels
    # the same point as a pose on the original 512x512 image (x / 512, y / 512)
    original = np.array([(box[0] + nose[0] * (box[2] - box[0]) / width) / 512,
                         (box[1] + nose[1] * (box[3] - box[1]) / height) / 512])
    pose = {"hands": np.full((2, 21, 2), LOST), "hands_score": np.ones((2, 21)), "draw_pose_params": list(OFFICIAL_DRAW_PARAMS)}
    pose["hands"][0, 0] = original
    (moved,) = map_poses_through_crop([pose], box, image.shape[1], image.shape[0], width, height)
    np.testing.assert_allclose(moved["hands"][0, 0] * (width, height), nose, atol=1e-6)
    assert (moved["hands"][1] == LOST).all()


def test_transform_pose_leaves_lost_points_lost():
    pose = {"hands": np.full((2, 21, 2), LOST), "hands_score": np.zeros((2, 21)), "draw_pose_params": list(OFFICIAL_DRAW_PARAMS)}
    pose["hands"][0, 5] = (0.1, 0.2)
    moved = transform_pose(pose, np.array([[2.0, 0, 10], [0, 2.0, 20]]), 100, 100)
    assert (moved["hands"][1] == LOST).all() and (np.delete(moved["hands"][0], 5, axis=0) == LOST).all()
    np.testing.assert_allclose(moved["hands"][0, 5], ((0.2 + 10) / 100, (0.4 + 20) / 100))
