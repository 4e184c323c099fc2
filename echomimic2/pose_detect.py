"""Landmarks of a person in RGB frames (MediaPipe 0.10.21's bundled legacy solutions, offline) and
their conversion into the official per-frame pose dict (spec §8.1).

MediaPipe runs three models per frame: Pose (33 body points, model_complexity=1), Hands (21 points
per hand, the same topology as the official OpenPose hand: wrist, then thumb, index, middle, ring,
little finger from the knuckle outwards) and Face Mesh (468 points, reduced to the 68-point layout the
official `faces` use). Coordinates here are pixels of the frame until `official_pose` normalises them
to a pose box.

Official hand order: `hands[0]` is the person's LEFT hand, `hands[1]` the RIGHT (DWPose's COCO-WholeBody
order; the demo files' hands[0] wrist is their body point 7, LWrist). A hand MediaPipe does not find
is written as a lost point of the official files: (-1, -1) with score 0, which the drawing skips
(both pixel coordinates must be >= 1). There is no confidence threshold: scores only dim colours.
"""
from __future__ import annotations

import contextlib
import os
import sys
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import numpy as np

from echomimic2.pose import OFFICIAL_DRAW_PARAMS

LOST = -1.0  # coordinate of a key point that was not found (official body files use -1 too)
VISIBLE = 0.3  # the official body `subset` marks points scored above 0.3; the rest are -1

# OpenPose-18 body (official `bodies`) from MediaPipe Pose's 33 points; None = the neck, the mean of the
# shoulders. OpenPose's "right" is the person's right, as MediaPipe's.
OPENPOSE_FROM_MEDIAPIPE = (0, None, 12, 14, 16, 11, 13, 15, 24, 26, 28, 23, 25, 27, 5, 2, 8, 7)
MP_LEFT_WRIST, MP_RIGHT_WRIST = 15, 16

# The 68-point face (dlib/300-W order, image-left to image-right for a frontal face: jaw 0-16,
# brows 17-26, nose 27-35, eyes 36-47, lips 48-67) picked from Face Mesh's 468 points.
FACE68_FROM_MESH = (
    127, 234, 93, 132, 58, 172, 150, 176, 152, 400, 379, 397, 288, 361, 323, 454, 356,  # jaw
    70, 63, 105, 66, 107, 336, 296, 334, 293, 300,  # brows
    168, 197, 5, 4, 98, 97, 2, 326, 327,  # nose bridge, nostrils
    33, 160, 158, 133, 153, 144, 362, 385, 387, 263, 373, 380,  # eyes
    61, 39, 37, 0, 267, 269, 291, 405, 314, 17, 84, 181,  # outer lips
    78, 82, 13, 312, 308, 317, 14, 87,  # inner lips
)


@dataclass
class FrameLandmarks:
    """What was found in one frame, in that frame's pixels. Absent parts are None."""

    width: int
    height: int
    body: np.ndarray | None = None  # (33, 3): x, y, visibility
    hands: dict[str, tuple[np.ndarray, float]] = field(default_factory=dict)  # "left"/"right" (the person's) -> (21, 2), score
    face: np.ndarray | None = None  # (468, 2)

    def scaled(self, matrix: np.ndarray, width: int, height: int) -> FrameLandmarks:
        """The same landmarks under a 2x3 affine map into a frame of width x height (visibility kept)."""
        def apply(points: np.ndarray) -> np.ndarray:
            return points[:, :2] @ matrix[:, :2].T + matrix[:, 2]

        body = None
        if self.body is not None:
            body = np.concatenate([apply(self.body), self.body[:, 2:]], axis=1)
        return FrameLandmarks(
            width, height, body,
            {side: (apply(points), score) for side, (points, score) in self.hands.items()},
            None if self.face is None else apply(self.face),
        )


class MediaPipeMissing(RuntimeError):
    """mediapipe (an optional dependency, installed --no-deps) is not importable."""


# A file for MediaPipe's native log lines (TFLite and absl write them to the process's stderr, at WARNING, on
# every graph: "Feedback manager requires a model with a single signature", "Created TensorFlow Lite XNNPACK
# delegate"): the batch job names one under its output root; unset, they stay on stderr.
NATIVE_LOG_ENV = "ECHOMIMIC2_NATIVE_LOG"
_native_lock = threading.Lock()
_native_users = [0, -1]  # [calls inside `native_log`, the saved stderr descriptor]


@contextlib.contextmanager
def native_log():
    """While inside, file descriptor 2 (what C++ libraries write to) goes to the file named by NATIVE_LOG_ENV.
    Nested and concurrent uses share one redirection."""
    path = os.environ.get(NATIVE_LOG_ENV)
    if not path:
        yield
        return
    with _native_lock:
        if _native_users[0] == 0:
            sys.stderr.flush()
            os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
            target = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
            _native_users[1] = os.dup(2)
            os.dup2(target, 2)
            os.close(target)
        _native_users[0] += 1
    try:
        yield
    finally:
        with _native_lock:
            _native_users[0] -= 1
            if _native_users[0] == 0:
                sys.stderr.flush()
                os.dup2(_native_users[1], 2)
                os.close(_native_users[1])


def import_mediapipe():
    """`mediapipe`, importable beside protobuf 6 (Ray needs >= 6.33.5; mediapipe 0.10.21 was built against 4.x).
    Its pybind11 protobuf bridge looks up `MessageFactory.GetPrototype` on import, which protobuf 5 removed (the
    lookup fails with "AttributeError: 'MessageFactory' object has no attribute 'GetPrototype'" and the bridge
    cannot convert Python messages); `GetMessageClass` is the same function under its new name."""
    from google.protobuf import message_factory

    if not hasattr(message_factory.MessageFactory, "GetPrototype"):
        message_factory.MessageFactory.GetPrototype = lambda _factory, descriptor: message_factory.GetMessageClass(descriptor)
    try:
        with native_log():
            import mediapipe
    except ImportError as error:
        raise MediaPipeMissing(
            "pose extraction needs mediapipe==0.10.21 (pip install --no-deps mediapipe==0.10.21, see README)"
        ) from error
    return mediapipe


def _import_solutions():
    return import_mediapipe().solutions


class PoseDetector:
    """MediaPipe Pose + Hands + Face Mesh on RGB frames; `video=True` tracks between frames (faster,
    steadier), `video=False` treats each image on its own. Use as a context manager (frees the graphs)."""

    def __init__(self, video: bool = True, max_hands: int = 2):
        solutions = _import_solutions()
        static = not video
        with native_log():
            self._pose = solutions.pose.Pose(static_image_mode=static, model_complexity=1)
            self._hands = solutions.hands.Hands(static_image_mode=static, max_num_hands=max_hands, model_complexity=1)
            self._face = solutions.face_mesh.FaceMesh(static_image_mode=static, max_num_faces=1, refine_landmarks=False)

    def __enter__(self) -> PoseDetector:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    def close(self) -> None:
        for graph in (self._pose, self._hands, self._face):
            graph.close()

    def detect(self, frame_rgb: np.ndarray) -> FrameLandmarks:
        if frame_rgb.ndim != 3 or frame_rgb.shape[2] != 3 or frame_rgb.dtype != np.uint8:
            raise ValueError(f"expected a uint8 (H, W, 3) RGB frame, got {frame_rgb.dtype} {frame_rgb.shape}")
        frame_rgb = np.ascontiguousarray(frame_rgb)
        height, width = frame_rgb.shape[:2]
        size = np.array([width, height], dtype=np.float64)
        found = FrameLandmarks(width, height)

        with native_log():  # a graph's first frame logs too ("Using NORM_RECT without IMAGE_DIMENSIONS")
            pose = self._pose.process(frame_rgb).pose_landmarks
            face = self._face.process(frame_rgb).multi_face_landmarks
            hands = self._hands.process(frame_rgb)
        if pose is not None:
            found.body = np.array([(p.x * width, p.y * height, p.visibility) for p in pose.landmark])

        if face:
            found.face = np.array([(p.x, p.y) for p in face[0].landmark]) * size

        if hands.multi_hand_landmarks:
            detected = [
                (np.array([(p.x, p.y) for p in landmarks.landmark]) * size, handedness.classification[0])
                for landmarks, handedness in zip(hands.multi_hand_landmarks, hands.multi_handedness)
            ]
            found.hands = _assign_hands(_distinct_hands(detected), found.body)
        return found


def _box_overlap(a: np.ndarray, b: np.ndarray) -> float:
    """Intersection over union of two point sets' bounding boxes."""
    low, high = np.maximum(a.min(0), b.min(0)), np.minimum(a.max(0), b.max(0))
    inter = float(np.prod(np.clip(high - low, 0, None)))
    union = float(np.prod(np.ptp(a, 0)) + np.prod(np.ptp(b, 0))) - inter
    return inter / union if union > 0 else 0.0


DUPLICATE_OVERLAP = 0.5


def _distinct_hands(detected):
    """Drop a second detection of the same hand (boxes overlapping by half or more): keep the surer."""
    kept = []
    for hand in sorted(detected, key=lambda item: -item[1].score):
        if all(_box_overlap(hand[0], other[0]) < DUPLICATE_OVERLAP for other in kept):
            kept.append(hand)
    return kept


def _assign_hands(detected, body: np.ndarray | None) -> dict[str, tuple[np.ndarray, float]]:
    """Which detected hand is the person's left and right.

    With a body, each hand goes to the nearer body wrist (the pairing of smaller total distance).
    Without one, MediaPipe's handedness label decides; it assumes a mirrored (selfie) image, so on
    an ordinary camera image its "Left" is the person's right hand.
    """
    if body is not None and len(detected) >= 1:
        wrists = {"left": body[MP_LEFT_WRIST, :2], "right": body[MP_RIGHT_WRIST, :2]}
        best: dict[str, tuple[np.ndarray, float]] = {}
        best_cost = np.inf
        options = [("left", "right"), ("right", "left")] if len(detected) >= 2 else [("left",), ("right",)]
        for sides in options:
            cost = sum(np.linalg.norm(hand[0] - wrists[side]) for (hand, _), side in zip(detected, sides))
            if cost < best_cost:
                best_cost = cost
                best = {side: (hand, float(label.score)) for (hand, label), side in zip(detected, sides)}
        return best
    assigned: dict[str, tuple[np.ndarray, float]] = {}
    for hand, label in detected:
        side = "right" if label.label == "Left" else "left"
        if side not in assigned or label.score > assigned[side][1]:
            assigned[side] = (hand, float(label.score))
    return assigned


# ---- the official dict ---------------------------------------------------------------------------


def _normalised(points: np.ndarray, box: tuple[float, float, float, float]) -> np.ndarray:
    x0, y0, box_width, box_height = box
    return (points - np.array([x0, y0])) / np.array([box_width, box_height])


def official_pose(found: FrameLandmarks, box: tuple[float, float, float, float], index: int = 0) -> dict:
    """The official per-frame dict with coordinates normalised to `box` = (x0, y0, width, height) in
    the frame's pixels; lost points are (-1, -1) with score 0. Scores: body visibility, hand presence
    (MediaPipe has no per-joint hand score), 1 for a found face."""
    candidate = np.full((18, 2), LOST)
    score = np.zeros((1, 18))
    if found.body is not None:
        body = found.body
        for openpose_index, mp_index in enumerate(OPENPOSE_FROM_MEDIAPIPE):
            if mp_index is None:  # the neck: DWPose also scores it 1 only when both shoulders are seen
                point = body[[11, 12], :2].mean(axis=0)
                visibility = float(min(body[11, 2], body[12, 2]) > VISIBLE)
            else:
                point, visibility = body[mp_index, :2], float(body[mp_index, 2])
            candidate[openpose_index] = _normalised(point, box)
            score[0, openpose_index] = visibility
    subset = np.where(score > VISIBLE, np.arange(18, dtype=np.float64), -1.0)

    hands = np.full((2, 21, 2), LOST)
    hands_score = np.zeros((2, 21))
    for row, side in enumerate(("left", "right")):
        if side in found.hands:
            points, presence = found.hands[side]
            hands[row] = _normalised(points, box)
            hands_score[row] = presence

    faces = np.full((1, 68, 2), LOST)
    faces_score = np.zeros((1, 68))
    if found.face is not None:
        faces[0] = _normalised(found.face[list(FACE68_FROM_MESH)], box)
        faces_score[0] = 1.0

    return {
        "bodies": {"candidate": candidate, "subset": subset, "score": score},
        "hands": hands,
        "hands_score": hands_score,
        "faces": faces,
        "faces_score": faces_score,
        "num": index,
        "draw_pose_params": list(OFFICIAL_DRAW_PARAMS),
    }


# ---- the official framing of a driving sequence --------------------------------------------------

# EMTD_dataset/preprocess.py (and demo.ipynb) frame a clip by the extent of face and upper body over
# all frames, grown by 25 %: 65 % of that margin above, 5 % below; a square centred on the neck.
SEQUENCE_MARGIN = 0.25
SEQUENCE_MARGIN_ABOVE = 0.65
SEQUENCE_MARGIN_BELOW = 0.05


def framing_extent(found: FrameLandmarks) -> tuple[float, float, float] | None:
    """(face top, lowest seen point of nose/shoulders/elbows/right wrist, neck x) in pixels: what the
    official preprocessing frames a clip by; None without a face and body."""
    if found.face is None or found.body is None:
        return None
    upper_body = found.body[[0, 11, 12, 13, 14, 16]]  # OpenPose 0-6: nose, (neck,) shoulders, elbows, RWrist
    seen = upper_body[upper_body[:, 2] > VISIBLE]
    if len(seen) == 0:
        return None
    return float(found.face[list(FACE68_FROM_MESH), 1].min()), float(seen[:, 1].max()), float(found.body[[11, 12], 0].mean())


def sequence_box(extents: list[tuple[float, float, float] | None], width: int, height: int,
                 ) -> tuple[tuple[float, float, float, float], str]:
    """The square pose box (x0, y0, side, side) in the frames' pixels, as the official preprocessing
    chooses it from the frames' `framing_extent`s, and how it was found. Without any face and body,
    the centred square of the frame's short side."""
    found = [extent for extent in extents if extent is not None]
    if not found:
        side = min(width, height)
        return ((width - side) / 2, (height - side) / 2, side, side), "centre square (no face and body found)"
    top, bottom = min(e[0] for e in found), max(e[1] for e in found)
    margin = (bottom - top) * SEQUENCE_MARGIN
    top = max(top - margin * SEQUENCE_MARGIN_ABOVE, 0.0)
    bottom = min(bottom + margin * SEQUENCE_MARGIN_BELOW, float(height))
    side = max(bottom - top, 1.0)
    centre = float(np.mean([e[2] for e in found]))
    return (centre - side / 2, top, side, side), f"face and upper body in {len(found)} of {len(extents)} frames"


def _into_box(pose: dict, box: tuple[float, float, float, float]) -> dict:
    """A pose in pixels (box (0, 0, 1, 1)) normalised to `box`; lost points stay (-1, -1)."""
    def move(points: np.ndarray) -> np.ndarray:
        lost = (points[..., 0] == LOST) & (points[..., 1] == LOST)
        moved = _normalised(points, box)
        moved[lost] = LOST
        return moved

    return {**pose, "bodies": {**pose["bodies"], "candidate": move(pose["bodies"]["candidate"])},
            "hands": move(pose["hands"]), "faces": move(pose["faces"])}


def poses_from_frames(frames: Iterable[np.ndarray], progress: Callable[[int], None] | None = None,
                      ) -> tuple[list[dict], dict]:
    """Official pose dicts of a driving sequence of RGB frames, normalised to the sequence's official
    square box; and a summary (box, frames with hands, ...). Frames stream through: per frame only its
    dict (~3 kB) is kept until the box is known. `progress(i)` is called after each frame."""
    in_pixels: list[dict] = []
    extents: list[tuple[float, float, float] | None] = []
    counts = {"frames_with_hands": 0, "frames_with_body": 0, "frames_with_face": 0}
    size = None
    with PoseDetector(video=True) as detector:
        for index, frame in enumerate(frames):
            found = detector.detect(frame)
            size = (found.width, found.height)
            in_pixels.append(official_pose(found, (0, 0, 1, 1), index))
            extents.append(framing_extent(found))
            counts["frames_with_hands"] += bool(found.hands)
            counts["frames_with_body"] += found.body is not None
            counts["frames_with_face"] += found.face is not None
            if progress is not None:
                progress(index + 1)
    if not in_pixels:
        raise ValueError("the driving video has no frames")
    box, box_source = sequence_box(extents, *size)
    poses = [_into_box(pose, box) for pose in in_pixels]
    summary = {
        "frames": len(poses), **counts,
        "pose_box": [round(float(v), 2) for v in box],
        "pose_box_from": box_source,
        "frame_size": list(size),
    }
    return poses, summary
