"""Fitting poses and the reference image to each other: framing the reference around its person,
and one similarity transform that moves a pose sequence onto that person.

Coordinates. A pose dict's points are normalised to its pose box (`draw_pose_params`); `pose_space`
turns them into the box's own square pixels (isotropic, side max(re, ce)), where a similarity is
meaningful. Every pose returned here is normalised to the output frame (x / width, y / height) with
the official full box [768, 768, 0, 768, 0, 768], which `render_pose(pose, width, height)` draws at
exactly those pixels for any output size. Lost points (-1, -1) stay lost.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import cv2
import numpy as np

from echomimic2.pose import OFFICIAL_DRAW_PARAMS, validate_pose
from echomimic2.pose_detect import LOST, VISIBLE, FrameLandmarks, official_pose
from echomimic2.triage import HEAD_ROOM, PersonGeometry, ReferenceTriage, triage_or_unknown

ALIGN_MODES = ("auto", "none")

# Anchors: (name, "body" index into OpenPose-18 | "face" index into the 68 points).
ANCHORS = (
    ("nose", "body", 0), ("neck", "body", 1), ("right_shoulder", "body", 2), ("left_shoulder", "body", 5),
    ("right_eye_outer", "face", 36), ("left_eye_outer", "face", 45), ("nose_tip", "face", 30), ("chin", "face", 8),
)
SHOULDER_ANCHORS = ("neck", "right_shoulder", "left_shoulder")
ROTATION_GAIN = 0.8  # rotation is used only if it cuts the anchors' RMS error by 20 % or more
MIN_ROTATION_DEGREES = 2.0


# ---- points of a pose dict -----------------------------------------------------------------------


def _is_lost(points: np.ndarray) -> np.ndarray:
    return (points[..., 0] == LOST) & (points[..., 1] == LOST)


def anchor_points(pose: dict) -> dict[str, np.ndarray]:
    """The anchors found in one pose, in its normalised coordinates (body points scored > 0.3,
    face points of a found face)."""
    found = {}
    bodies = pose.get("bodies")
    if isinstance(bodies, dict) and "candidate" in bodies and "score" in bodies:
        candidate = np.asarray(bodies["candidate"], dtype=np.float64).reshape(-1, 2)
        score = np.asarray(bodies["score"], dtype=np.float64).reshape(-1)
        for name, part, index in ANCHORS:
            if part == "body" and index < len(candidate) and score[index] > VISIBLE and not _is_lost(candidate[index]):
                found[name] = candidate[index]
    if "faces" in pose and "faces_score" in pose:
        faces = np.asarray(pose["faces"], dtype=np.float64).reshape(-1, 68, 2)
        faces_score = np.asarray(pose["faces_score"], dtype=np.float64).reshape(-1, 68)
        if len(faces):
            for name, part, index in ANCHORS:
                if part == "face" and faces_score[0, index] > VISIBLE and not _is_lost(faces[0, index]):
                    found[name] = faces[0, index]
    return found


def pose_space(params) -> tuple[np.ndarray, float]:
    """(2x3 affine from normalised coordinates to the pose box's square pixels, that square's side)."""
    imh, imw, rb, _re, cb, _ce = params
    side = float(max(params[3], params[5]))
    return np.array([[imw, 0.0, cb], [0.0, imh, rb]]), side


def transform_pose(pose: dict, matrix: np.ndarray, width: int, height: int) -> dict:
    """The pose with every found point mapped by `matrix` (normalised -> output pixels), then
    normalised to the output frame; draw params become the official full box."""
    def move(points) -> np.ndarray:
        points = np.array(points, dtype=np.float64)
        lost = _is_lost(points)
        moved = (points @ matrix[:, :2].T + matrix[:, 2]) / np.array([width, height])
        moved[lost] = LOST
        return moved

    moved = dict(pose)
    moved["hands"] = move(pose["hands"])
    if isinstance(pose.get("bodies"), dict) and "candidate" in pose["bodies"]:
        moved["bodies"] = {**pose["bodies"], "candidate": move(pose["bodies"]["candidate"])}
    if "faces" in pose:
        moved["faces"] = move(pose["faces"])
    moved["draw_pose_params"] = list(OFFICIAL_DRAW_PARAMS)
    return moved


def _compose(outer: np.ndarray, inner: np.ndarray) -> np.ndarray:
    """outer ∘ inner for 2x3 affine maps."""
    return np.hstack([outer[:, :2] @ inner[:, :2], (outer[:, :2] @ inner[:, 2] + outer[:, 2])[:, None]])


def cover_matrix(side: float, width: int, height: int) -> np.ndarray:
    """A square of `side` scaled to cover width x height, centred (the `none` placement: square
    output unchanged, another aspect centre-cropped)."""
    scale = max(width, height) / side
    return np.array([[scale, 0.0, (width - side * scale) / 2], [0.0, scale, (height - side * scale) / 2]])


# ---- similarity ----------------------------------------------------------------------------------


def fit_similarity(source: np.ndarray, target: np.ndarray, rotation: bool) -> tuple[np.ndarray, float, float]:
    """Least-squares target ≈ s·R·source + t. Returns (2x3 matrix, scale, rotation in degrees)."""
    source_mean, target_mean = source.mean(axis=0), target.mean(axis=0)
    src = (source - source_mean) @ np.array([1, 1j])  # points as complex numbers
    dst = (target - target_mean) @ np.array([1, 1j])
    spread = float(np.sum(np.abs(src) ** 2))
    if spread <= 1e-12:
        raise ValueError("anchors coincide: no scale can be estimated")
    if rotation:
        factor = np.sum(np.conj(src) * dst) / spread  # s·e^{iθ}
    else:
        factor = complex(np.sum((np.conj(src) * dst).real) / spread)
    linear = np.array([[factor.real, -factor.imag], [factor.imag, factor.real]])
    translation = target_mean - linear @ source_mean
    return np.hstack([linear, translation[:, None]]), abs(factor), math.degrees(math.atan2(factor.imag, factor.real))


def _rms(matrix: np.ndarray, source: np.ndarray, target: np.ndarray) -> float:
    return float(np.sqrt(np.mean(np.sum((source @ matrix[:, :2].T + matrix[:, 2] - target) ** 2, axis=1))))


def sequence_anchors(poses: list[dict]) -> dict[str, np.ndarray]:
    """Each anchor's median position over the frames where it was found (normalised coordinates);
    the median keeps gestures and a few bad detections from moving it."""
    collected: dict[str, list[np.ndarray]] = {}
    for pose in poses:
        for name, point in anchor_points(pose).items():
            collected.setdefault(name, []).append(point)
    minimum = max(1, len(poses) // 4)  # an anchor seen in under a quarter of the frames is unreliable
    return {name: np.median(points, axis=0) for name, points in collected.items() if len(points) >= minimum}


# ---- the reference person ------------------------------------------------------------------------

PLACEMENT_SLACK = 0.06  # the box may move by 6 % of the square to stay inside the image (brows: 8-20 %)
MIN_ZOOM = 0.75  # a half-body square larger than the image may shrink to 75 % before the rest is filled
FILL_BLUR = 0.06  # the fill's blur (sigma, in output sides): colours continue past the edge, shapes do not


@dataclass
class ReferenceDetection:
    """How the reference was framed; `landmarks` are in the framed output's pixels (None: no person)."""

    method: str  # "person" | "pad" (no person: the whole image fitted, the rest filled)
    reason: str
    width: int
    height: int
    landmarks: FrameLandmarks | None = None
    anchors: dict[str, list[float]] = field(default_factory=dict)  # output pixels, for the result
    padded: bool = False
    zoom: float = 1.0  # < 1: the box was shrunk to fit the image, the person is 1/zoom larger than in training
    source_scale: float = 1.0  # output pixels per source pixel (> 1: the reference was enlarged, softer)
    crop_box: tuple[float, float, float, float] = (0.0, 0.0, 1.0, 1.0)  # in the source's pixels, may reach outside
    image_size: tuple[int, int] = (1, 1)  # the source's (width, height)
    fill: str = "none"  # "none" | "reflect_blur": how output pixels outside the source were made
    triage: ReferenceTriage | None = None

    @property
    def person_found(self) -> bool:
        return self.landmarks is not None

    def padding(self) -> dict[str, float]:
        """Per side, the share of the output (%) that lies outside the source image."""
        x0, y0, x1, y1 = self.crop_box
        image_width, image_height = self.image_size
        box_width, box_height = x1 - x0, y1 - y0
        return {"left": max(0.0, -x0) / box_width, "top": max(0.0, -y0) / box_height,
                "right": max(0.0, x1 - image_width) / box_width, "bottom": max(0.0, y1 - image_height) / box_height}

    def inside_source(self, points: np.ndarray) -> np.ndarray:
        """Which output-pixel points show the source image (not the fill)."""
        x0, y0, x1, y1 = self.crop_box
        source = np.asarray(points, dtype=np.float64) * ((x1 - x0) / self.width, (y1 - y0) / self.height) + (x0, y0)
        return ((source >= 0) & (source <= self.image_size)).all(axis=-1)

    def as_dict(self) -> dict:
        """JSON-ready summary for results."""
        return {"framing": self.method, "framing_reason": self.reason, "person_found": self.person_found,
                "padded": self.padded, "framing_zoom": self.zoom, "framing_scale": self.source_scale,
                "framing_fill": self.fill,
                "framing_padding_pct": {side: round(100 * share, 1) for side, share in self.padding().items()},
                "reference_anchors": self.anchors, "reference_face_box": self.face_box()}

    def face_box(self) -> list[float] | None:
        """The framed reference's face (all Face Mesh points) as fractions of the output (x0, y0, x1, y1), what
        the QC's face check compares the render with; [] when detection found no face, None when unknown."""
        if self.landmarks is not None and self.landmarks.face is not None:
            face = self.landmarks.face / (self.width, self.height)
            return [round(float(v), 4) for v in (*face.min(axis=0), *face.max(axis=0))]
        detection = None if self.triage is None else self.triage.detection
        if detection is None or detection.faces:
            return None
        return []


def _place(ideal: float, length: float, limit: float, slack: float) -> float:
    """Start of an interval of `length` at most `slack` from `ideal`, covering as much of [0, limit]
    as that allows (inside it when it fits): the person's placement first, then no fill."""
    start = min(max(ideal, 0.0), limit - length) if length <= limit else min(max(ideal, limit - length), 0.0)
    return min(max(start, ideal - slack), ideal + slack)


def person_box(person: PersonGeometry, image_width: int, image_height: int, width: int, height: int,
               keep_size: bool = False) -> tuple[tuple[float, float, float, float], float]:
    """((x0, y0, x1, y1) in the image's pixels, of aspect width:height; zoom), framing the person as
    the half-body training data: brows' top at 14 %, shoulders at 47 % of a square, neck centred; a
    portrait output extends the square downwards, a landscape one sideways, the person's square the
    same as for a square output. A square larger than the image is first shrunk (zoom < 1: the person
    larger than in training, down to MIN_ZOOM; never with `keep_size`), then the rest is filled.
    `keep_size` (head-only references) also keeps the brows exactly at HEAD_ROOM."""
    side = person.side
    zoom = 1.0 if keep_size else max(MIN_ZOOM, min(1.0, image_width / side, image_height / side))
    side *= zoom
    aspect = width / height
    box_width, box_height = (side, side / aspect) if aspect < 1 else (side * aspect, side)
    x0 = _place(person.neck_x - box_width / 2, box_width, image_width, PLACEMENT_SLACK * side)
    # A head-only person keeps the training height exactly: moving up to cover the image's top would
    # only trade a little fill above the head for a face lower than the model expects.
    y0 = _place(person.brow - HEAD_ROOM * side, box_height, image_height, 0.0 if keep_size else PLACEMENT_SLACK * side)
    return (x0, y0, x0 + box_width, y0 + box_height), zoom


def whole_image_box(image_width: int, image_height: int, width: int, height: int) -> tuple[float, ...]:
    """No person: the whole image fitted into the output's aspect, centred (nothing cut off)."""
    aspect = width / height
    if image_width / image_height > aspect:
        box_width, box_height = image_width, image_width / aspect
    else:
        box_width, box_height = image_height * aspect, image_height
    x0, y0 = (image_width - box_width) / 2, (image_height - box_height) / 2
    return (x0, y0, x0 + box_width, y0 + box_height)


def crop_matrix(crop_box, width: int, height: int) -> np.ndarray:
    """2x3 affine from the source image's pixels to the framed output's pixels."""
    x0, y0, x1, y1 = crop_box
    scale = width / (x1 - x0)  # the box has the output's aspect: one scale for both axes
    return np.array([[scale, 0.0, -x0 * scale], [0.0, height / (y1 - y0), -y0 * height / (y1 - y0)]])


def crop_image(image_rgb: np.ndarray, crop_box, width: int, height: int) -> tuple[np.ndarray, str]:
    """(the box resampled to width x height, the fill method). Where the box has source pixels they are
    used; outside the image the source is mirrored and blurred strongly ("reflect_blur"): no flat band,
    no sharp second head or streaks, the colours of the nearest edge continued."""
    matrix = crop_matrix(crop_box, width, height)
    source = image_rgb
    scale = matrix[0, 0]
    if scale < 0.5:  # shrink with area averaging first: the warp's interpolation would alias
        source = cv2.resize(image_rgb, (max(1, round(image_rgb.shape[1] * scale * 2)),
                                        max(1, round(image_rgb.shape[0] * scale * 2))), interpolation=cv2.INTER_AREA)
        pre = np.array([[source.shape[1] / image_rgb.shape[1], 0, 0], [0, source.shape[0] / image_rgb.shape[0], 0]])
        matrix = _compose(matrix, np.linalg.inv(np.vstack([pre, [0, 0, 1]]))[:2])
    framed = cv2.warpAffine(source, matrix, (width, height), flags=cv2.INTER_CUBIC, borderMode=cv2.BORDER_REFLECT_101)
    inside = cv2.warpAffine(np.full(source.shape[:2], 255, np.uint8), matrix, (width, height), flags=cv2.INTER_NEAREST,
                            borderMode=cv2.BORDER_CONSTANT, borderValue=0) > 0
    if inside.all():
        return framed, "none"
    blurred = cv2.GaussianBlur(framed, (0, 0), FILL_BLUR * max(width, height), borderType=cv2.BORDER_REFLECT_101)
    return np.where(inside[..., None], framed, blurred), "reflect_blur"


def frame_reference(image_rgb: np.ndarray, width: int, height: int, triage: ReferenceTriage | None = None,
                    person: int | None = None) -> tuple[np.ndarray, tuple[float, ...], ReferenceDetection]:
    """Frame a reference of any size and aspect to width x height around its person, by its verdict.

    Returns (uint8 (height, width, 3) image, crop box (x0, y0, x1, y1) in the source's pixels,
    possibly reaching outside it where filled, and what was done). `triage` (echomimic2.triage) is
    the reference's verdict for this output size; without it the reference is triaged here (`person`
    choosing among several people). A half-body person is framed as the training data; a head-only
    one at the same face size and place (no shrinking: the area below is filled); without a person
    the whole image is fitted and the rest filled, nothing cut off."""
    if image_rgb.ndim != 3 or image_rgb.shape[2] != 3 or image_rgb.dtype != np.uint8:
        raise ValueError(f"expected a uint8 (H, W, 3) RGB image, got {image_rgb.dtype} {image_rgb.shape}")
    image_height, image_width = image_rgb.shape[:2]
    if triage is None:
        triage = triage_or_unknown(image_rgb, width, height, person=person)
    person_geometry = triage.geometry
    common = dict(image_size=(image_width, image_height), triage=triage)
    if person_geometry is None:
        box = whole_image_box(image_width, image_height, width, height)
        framed, fill = crop_image(image_rgb, box, width, height)
        why = triage.warnings[0].message if triage.warnings else "no face and shoulders found in the reference"
        detection = ReferenceDetection("pad", f"{why.split(':')[0]}: whole image fitted, the rest filled", width, height,
                                       padded=_outside(box, image_width, image_height),
                                       source_scale=round(width / (box[2] - box[0]), 4), crop_box=box, fill=fill, **common)
        return framed, tuple(float(v) for v in box), detection
    head_only = triage.verdict == "head_only"
    box, zoom = person_box(person_geometry, image_width, image_height, width, height, keep_size=head_only)
    framed, fill = crop_image(image_rgb, box, width, height)
    in_output = triage.detection.landmarks.scaled(crop_matrix(box, width, height), width, height)
    anchors = anchor_points(official_pose(in_output, (0, 0, 1, 1)))  # box of 1 px: output pixels
    if not person_geometry.shoulders_seen:  # guessed where the image ends: the face alone places the poses
        anchors = {name: point for name, point in anchors.items() if name not in SHOULDER_ANCHORS}
    reason = ("head and shoulders only: framed at the training face size, the area below filled" if head_only
              else "framed around the detected face and shoulders")
    detection = ReferenceDetection("person", reason, width, height, in_output,
                                   {name: [round(float(v), 1) for v in point] for name, point in anchors.items()},
                                   padded=_outside(box, image_width, image_height), zoom=round(zoom, 3),
                                   source_scale=round(width / (box[2] - box[0]), 4), crop_box=box, fill=fill, **common)
    return framed, tuple(float(v) for v in box), detection


def _outside(box, image_width: int, image_height: int) -> bool:
    x0, y0, x1, y1 = box
    return x0 < -0.5 or y0 < -0.5 or x1 > image_width + 0.5 or y1 > image_height + 0.5


def map_poses_through_crop(poses: list[dict], crop_box, image_width: int, image_height: int,
                           width: int, height: int) -> list[dict]:
    """Poses normalised to the original reference image (x / image width, y / image height) moved into
    the framed output, with the same transform as the image."""
    to_pixels = np.array([[image_width, 0.0, 0.0], [0.0, image_height, 0.0]])
    matrix = _compose(crop_matrix(crop_box, width, height), to_pixels)
    return [transform_pose(validate_pose(pose, f"pose {i}"), matrix, width, height) for i, pose in enumerate(poses)]


# ---- alignment -----------------------------------------------------------------------------------


def align_poses(poses: list[dict], reference: ReferenceDetection | None, width: int, height: int,
                mode: str = "auto") -> tuple[list[dict], dict]:
    """Map a pose sequence onto the reference person with one similarity transform.

    `mode` "auto": scale + translation (rotation only if it clearly fits better) from the anchors the
    sequence and the reference share (shoulders, neck, nose, face); without a person in the reference
    or too few shared anchors it falls back to "none" and says why. "none": the pose box scaled to
    cover the output, centred. Returns (poses normalised to the output, what was done)."""
    if mode not in ALIGN_MODES:
        raise ValueError(f"pose_align must be one of {ALIGN_MODES}, got {mode!r}")
    if not poses:
        raise ValueError("no poses to align")
    params = validate_pose(poses[0], "pose 0")["draw_pose_params"]
    if any(list(validate_pose(p, f"pose {i}")["draw_pose_params"]) != params for i, p in enumerate(poses)):
        raise ValueError("poses of one sequence must share draw_pose_params")
    to_space, side = pose_space(params)
    info: dict = {"pose_align": mode}
    matrix = None
    if mode == "auto":
        if reference is None or not reference.person_found:
            info["pose_align_applied"] = "none"
            info["pose_align_reason"] = "no person found in the reference"
        else:
            source = {name: to_space[:, :2] @ point + to_space[:, 2] for name, point in sequence_anchors(poses).items()}
            target = {name: np.asarray(point) for name, point in reference.anchors.items()}
            shared = [name for name, _part, _index in ANCHORS if name in source and name in target]
            has_scale = {"left_shoulder", "right_shoulder"} <= set(shared) or len(shared) >= 3
            if not has_scale:
                info["pose_align_applied"] = "none"
                info["pose_align_reason"] = f"too few anchors shared with the reference ({shared or 'none'})"
            else:
                src = np.array([source[name] for name in shared])
                dst = np.array([target[name] for name in shared])
                fitted, scale, angle = fit_similarity(src, dst, rotation=False)
                error = _rms(fitted, src, dst)
                rotated, rotated_scale, rotated_angle = fit_similarity(src, dst, rotation=True)
                rotated_error = _rms(rotated, src, dst)
                use_rotation = rotated_error < ROTATION_GAIN * error and abs(rotated_angle) >= MIN_ROTATION_DEGREES
                if use_rotation:
                    fitted, scale, angle, error = rotated, rotated_scale, rotated_angle, rotated_error
                matrix = fitted
                info.update({
                    "pose_align_applied": "similarity",
                    "pose_align_reason": f"{len(shared)} anchors shared with the reference",
                    "pose_align_anchors": shared,
                    # relative to the pose box drawn over the output's short side (the person's square): 1 = as drawn
                    "pose_align_scale": round(float(scale * side / min(width, height)), 4),
                    "pose_align_rotation_deg": round(float(angle), 2) if use_rotation else 0.0,
                    "pose_align_matrix": [[round(float(v), 4) for v in row] for row in fitted],  # pose box px -> output px
                    "pose_align_rms_px": round(float(error), 2),
                })
    else:
        info["pose_align_applied"] = "none"
        info["pose_align_reason"] = "pose_align is none"
    if matrix is None:
        matrix = cover_matrix(side, width, height)
        info.setdefault("pose_align_matrix", [[round(float(v), 4) for v in row] for row in matrix])
    total = _compose(matrix, to_space)
    return [transform_pose(pose, total, width, height) for pose in poses], info
