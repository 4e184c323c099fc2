"""Is a reference image what the model was trained on (a half-body portrait of one person), and if not,
what is wrong with it: one verdict, the warnings behind it and the numbers they come from.

Detection (`detect_people`, MediaPipe, CPU) is separate from the verdict (`triage_reference`, numpy):
a caller that remembers a `PeopleDetection` (its `to_json`) triages again for another output size
without detecting again.

Verdicts, most severe first (a reference has one; every problem found is also a warning):

    image_too_small  the whole image must be enlarged more than MAX_UPSCALE times for the output size
    no_person        no face and shoulders found (a cat, a landscape, a texture)
    cut_off          the face or a shoulder runs past the image's edge
    head_only        a head-and-shoulders crop: the image ends above where the hands are drawn
    several_people   two or more faces of comparable size; the largest, most central one is used
                     (the manifest's `person` column picks another: 0 = leftmost face)
    too_small        the person is so small in the image that their box must be enlarged more than
                     MAX_UPSCALE times
    half_body        OK: framed like the training data
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field

import numpy as np

from echomimic2.pose_detect import FACE68_FROM_MESH, FrameLandmarks, MediaPipeMissing, PoseDetector, _import_solutions, native_log

VERDICTS = ("image_too_small", "no_person", "cut_off", "head_only", "several_people", "too_small", "half_body")
# Warnings a clip's summary may carry besides the verdicts above (added once poses are aligned).
POSE_WARNINGS = ("hands_out_of_frame", "hands_over_fill")
WARNING_KINDS = tuple(v for v in VERDICTS if v != "half_body") + POSE_WARNINGS

# The half-body training framing (official demo poses): brows' top at 14 %, shoulders at 47 % of a square.
HEAD_ROOM = 0.14
SHOULDER_LINE = 0.47
MAX_SHOULDER_SPAN = 0.55  # of the box width (official demos: ~0.41); wider people get a larger box
HANDS_LINE = 0.70  # generated and demo hands move between ~0.65 and 0.95 of the square: an image ending above is head-only
MAX_UPSCALE = 2.0  # output pixels per source pixel beyond which the reference is too soft
MIN_SHOULDER_VISIBILITY = 0.5
COMPARABLE_FACE = 0.5  # a second face at least half as wide as the largest counts as another person
FACE_SCORE = 0.5
EDGE_MARGIN = 0.01  # of the image side: a face closer than this to an edge is cut by it
# Without shoulders, a face alone places the person: shoulders lie ~1.8 brow-to-chin heights below the
# brows, ~2.1 face widths apart (astronaut and the official demo references).
SHOULDERS_BELOW_BROW = 1.8
SHOULDERS_PER_FACE_WIDTH = 2.1
SHOULDER_CLEARANCE = 0.5
DETECTION_SIDE = 1024  # references are detected at most this large (MediaPipe works at ~256 px inside)
DETECTION_VERSION = 1  # part of a remembered detection's key: bump when detection changes its output


class PersonNotFound(ValueError):
    """A `person` index beyond the faces found in the reference."""


@dataclass(frozen=True)
class TriageWarning:
    kind: str  # one of WARNING_KINDS
    message: str  # for people: what is wrong and what the factory did about it

    def to_json(self) -> dict:
        return {"kind": self.kind, "message": self.message}


@dataclass
class PeopleDetection:
    """What MediaPipe found in a reference, in its pixels: every face box (x0, y0, x1, y1, score), left to
    right, and the landmarks of the person used (`person`, an index into `faces`, or None when no face
    box was found and the landmarks came from the whole image)."""

    width: int
    height: int
    faces: list[tuple[float, float, float, float, float]] = field(default_factory=list)
    person: int | None = None
    requested: int | None = None  # the manifest's `person`, when it chose one
    landmarks: FrameLandmarks | None = None

    def to_json(self) -> dict:
        found = self.landmarks
        return {
            "version": DETECTION_VERSION, "width": self.width, "height": self.height,
            "faces": [[round(float(v), 2) for v in face] for face in self.faces],
            "person": self.person, "requested": self.requested,
            "landmarks": None if found is None else {
                "body": None if found.body is None else np.round(found.body, 3).tolist(),
                "face": None if found.face is None else np.round(found.face, 2).tolist(),
                "hands": {side: [np.round(points, 2).tolist(), round(float(score), 4)]
                          for side, (points, score) in found.hands.items()},
            },
        }

    @classmethod
    def from_json(cls, data: dict | str) -> PeopleDetection:
        data = json.loads(data) if isinstance(data, str) else data
        if data.get("version") != DETECTION_VERSION:
            raise ValueError(f"detection version {data.get('version')!r}, expected {DETECTION_VERSION}")
        marks = data["landmarks"]
        landmarks = None
        if marks is not None:
            landmarks = FrameLandmarks(
                data["width"], data["height"],
                None if marks["body"] is None else np.array(marks["body"], dtype=np.float64),
                {side: (np.array(points, dtype=np.float64), float(score)) for side, (points, score) in marks["hands"].items()},
                None if marks["face"] is None else np.array(marks["face"], dtype=np.float64))
        return cls(data["width"], data["height"], [tuple(face) for face in data["faces"]], data["person"],
                   data["requested"], landmarks)


class PeopleDetector:
    """MediaPipe face detection (every face, full-range model) and the pose detector for the chosen
    person, on still images. Use as a context manager; reuse one for many images."""

    def __init__(self):
        solutions = _import_solutions()
        with native_log():  # TFLite's chatter on creating the graph goes to the job's native log
            self._faces = solutions.face_detection.FaceDetection(model_selection=1, min_detection_confidence=FACE_SCORE)
        self._pose = PoseDetector(video=False)

    def __enter__(self) -> PeopleDetector:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    def close(self) -> None:
        self._faces.close()
        self._pose.close()

    def faces(self, image_rgb: np.ndarray) -> list[tuple[float, float, float, float, float]]:
        height, width = image_rgb.shape[:2]
        found = []
        with native_log():
            detections = self._faces.process(np.ascontiguousarray(image_rgb)).detections or []
        for detection in detections:
            box = detection.location_data.relative_bounding_box
            found.append((box.xmin * width, box.ymin * height, (box.xmin + box.width) * width,
                          (box.ymin + box.height) * height, float(detection.score[0])))
        return sorted(found, key=lambda face: face[0] + face[2])

    def landmarks(self, image_rgb: np.ndarray) -> FrameLandmarks:
        return self._pose.detect(image_rgb)


def default_person(faces, width: int) -> int | None:
    """The largest, most central face: width discounted by up to half for distance from the centre."""
    if not faces:
        return None
    def weight(face):
        centre = (face[0] + face[2]) / 2
        return (face[2] - face[0]) * (1 - 0.5 * abs(centre - width / 2) / (width / 2))
    return int(np.argmax([weight(face) for face in faces]))


def person_region(face, width: int, height: int) -> tuple[int, int, int, int]:
    """The part of the image that holds the person of one face: three face widths either side of it,
    from a face height above it to the bottom."""
    x0, y0, x1, y1 = face[:4]
    face_width, face_height, centre = x1 - x0, y1 - y0, (x0 + x1) / 2
    return (max(0, int(centre - 3 * face_width)), max(0, int(y0 - 1.5 * face_height)),
            min(width, int(np.ceil(centre + 3 * face_width))), height)


def detect_people(image_rgb: np.ndarray, person: int | None = None, detector: PeopleDetector | None = None,
                  ) -> PeopleDetection:
    """Faces and the chosen person's landmarks in a uint8 RGB reference (pixels of that image). With
    several faces the person is `person` (0 = leftmost face) or the largest, most central one, and the
    landmarks are detected in that person's part of the image only. Raises PersonNotFound for a `person`
    index beyond the faces found; MediaPipeMissing without mediapipe."""
    import cv2

    if image_rgb.ndim != 3 or image_rgb.shape[2] != 3 or image_rgb.dtype != np.uint8:
        raise ValueError(f"expected a uint8 (H, W, 3) RGB image, got {image_rgb.dtype} {image_rgb.shape}")
    if detector is None:
        with PeopleDetector() as own:
            return detect_people(image_rgb, person, own)
    height, width = image_rgb.shape[:2]
    scale = min(1.0, DETECTION_SIDE / max(width, height))
    small = image_rgb if scale == 1.0 else cv2.resize(
        image_rgb, (max(1, round(width * scale)), max(1, round(height * scale))), interpolation=cv2.INTER_AREA)
    faces = detector.faces(small)
    if person is not None and not 0 <= person < max(len(faces), 1):
        raise PersonNotFound(f"person {person} asked for, but {len(faces)} face(s) found (0 is the leftmost)")
    chosen = (person if person is not None else default_person(faces, small.shape[1])) if faces else None
    region = (0, 0, small.shape[1], small.shape[0])
    if len(faces) > 1:
        region = person_region(faces[chosen], small.shape[1], small.shape[0])
    x0, y0, x1, y1 = region
    found = detector.landmarks(np.ascontiguousarray(small[y0:y1, x0:x1]))
    to_image = np.array([[width / small.shape[1], 0, x0 * width / small.shape[1]],
                         [0, height / small.shape[0], y0 * height / small.shape[0]]])
    landmarks = found.scaled(to_image, width, height)
    if landmarks.body is None and landmarks.face is None:
        landmarks = None
    to_faces = np.array([width / small.shape[1], height / small.shape[0]] * 2)
    return PeopleDetection(width, height, [tuple(np.array(face[:4]) * to_faces) + (face[4],) for face in faces],
                           chosen, person, landmarks)


# ---- the verdict ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class PersonGeometry:
    """Where the person is, in the reference's pixels: what framing places and triage judges."""

    neck_x: float
    brow: float  # top of the brows
    shoulder_y: float
    shoulder_span: float
    shoulders_seen: bool  # False: estimated from the face
    side: float  # the training framing's square side around this person (before any shrink)

    @property
    def square(self) -> tuple[float, float, float, float]:
        """(x0, y0, x1, y1) of the training framing's square."""
        x0, y0 = self.neck_x - self.side / 2, self.brow - HEAD_ROOM * self.side
        return (x0, y0, x0 + self.side, y0 + self.side)


def face_box(found: FrameLandmarks) -> tuple[float, float, float, float] | None:
    if found.face is None:
        return None
    points = found.face[list(FACE68_FROM_MESH)]
    return (float(points[:, 0].min()), float(points[:, 1].min()), float(points[:, 0].max()), float(points[:, 1].max()))


def shoulders_visible(found: FrameLandmarks) -> bool:
    return found.body is not None and float(min(found.body[11, 2], found.body[12, 2])) >= MIN_SHOULDER_VISIBILITY


def person_found(found: FrameLandmarks | None) -> bool:
    """A face, or shoulders with eyes: what framing and alignment can place."""
    if found is None:
        return False
    if found.face is not None:
        return True
    return shoulders_visible(found) and float(found.body[[2, 5], 2].min()) >= MIN_SHOULDER_VISIBILITY


def brow_top(found: FrameLandmarks) -> float:
    if found.face is not None:
        return float(found.face[list(FACE68_FROM_MESH[17:27]), 1].min())
    # No face mesh: brows sit above the eyes by ~11 % of the eye-to-shoulder height (astronaut, demos).
    eyes = found.body[[2, 5], 1].mean()
    return float(eyes - 0.11 * (found.body[[11, 12], 1].mean() - eyes))


def person_geometry(found: FrameLandmarks) -> PersonGeometry:
    """The person's neck, brows and shoulders and the square the half-body training data would frame them
    in. Shoulders the image ends at (less than SHOULDER_CLEARANCE of the brow-to-shoulder height below
    them) are where MediaPipe guesses them, too high: there the face places them instead."""
    brow = brow_top(found)
    seen = shoulders_visible(found)
    if seen:
        shoulders = found.body[[11, 12], :2]
        neck_x, shoulder_y = float(shoulders[:, 0].mean()), float(shoulders[:, 1].mean())
        span = float(abs(shoulders[0, 0] - shoulders[1, 0]))
        seen = found.height - shoulder_y >= SHOULDER_CLEARANCE * (shoulder_y - brow)
    if not seen:
        x0, _, x1, chin = face_box(found) if found.face is not None else _face_from_body(found)
        neck_x = neck_x if shoulders_visible(found) else (x0 + x1) / 2
        shoulder_y = brow + SHOULDERS_BELOW_BROW * (chin - brow)
        span = SHOULDERS_PER_FACE_WIDTH * (x1 - x0)
    side = max((shoulder_y - brow) / (SHOULDER_LINE - HEAD_ROOM), span / MAX_SHOULDER_SPAN, 1.0)
    return PersonGeometry(neck_x, brow, shoulder_y, span, seen, side)


def _face_from_body(found: FrameLandmarks) -> tuple[float, float, float, float]:
    """A face box from the body's ears and eyes when Face Mesh found none (x0, y0, x1, chin)."""
    ears, eyes = found.body[[7, 8], :2], found.body[[2, 5], :2]
    x0, x1 = float(ears[:, 0].min()), float(ears[:, 0].max())
    eye_y = float(eyes[:, 1].mean())
    return x0, eye_y - 0.4 * (x1 - x0), x1, eye_y + 0.8 * (x1 - x0)


@dataclass(frozen=True)
class ReferenceTriage:
    """A reference's verdict (one of VERDICTS), every problem found as a warning, and the numbers behind
    them (`facts`, JSON-ready, in the reference's pixels). `detection` is what it was judged from."""

    verdict: str
    warnings: tuple[TriageWarning, ...]
    facts: dict
    detection: PeopleDetection | None = field(default=None, compare=False, repr=False)

    @property
    def ok(self) -> bool:
        return self.verdict == "half_body"

    @property
    def geometry(self) -> PersonGeometry | None:
        found = None if self.detection is None else self.detection.landmarks
        return person_geometry(found) if person_found(found) else None

    def summary(self) -> dict:
        """What a clip's results record of its triage (the `verdict` and `warnings` columns, and the facts)."""
        return {"verdict": self.verdict, "warnings": [w.to_json() for w in self.warnings], "triage": self.facts}

    def to_json(self) -> dict:
        return {"verdict": self.verdict, "ok": self.ok, "warnings": [w.to_json() for w in self.warnings],
                "facts": self.facts}

    @classmethod
    def from_json(cls, data: dict | str) -> ReferenceTriage:
        """The verdict, warnings and facts of `to_json` (without the detection)."""
        data = json.loads(data) if isinstance(data, str) else data
        return cls(data["verdict"], tuple(TriageWarning(w["kind"], w["message"]) for w in data["warnings"]),
                   data["facts"])


def _round(values) -> list[float]:
    return [round(float(v), 1) for v in values]


def triage_reference(image_rgb: np.ndarray | None, width: int, height: int, detection: PeopleDetection | None = None,
                     person: int | None = None) -> ReferenceTriage:
    """The verdict on a reference for a width x height output. `detection` (from `detect_people`, or
    remembered) saves detecting again; without it `image_rgb` is detected (then `person` chooses among
    several faces). Without mediapipe this raises MediaPipeMissing."""
    if detection is None:
        detection = detect_people(image_rgb, person)
    image_width, image_height = detection.width, detection.height
    found = detection.landmarks
    upscale = max(width / image_width, height / image_height)
    faces = detection.faces
    widest = max((face[2] - face[0] for face in faces), default=0.0)
    comparable = [face for face in faces if face[2] - face[0] >= COMPARABLE_FACE * widest]
    facts: dict = {
        "image_size": [image_width, image_height], "output_size": [width, height],
        "image_upscale": round(upscale, 3), "people": max(len(faces), int(person_found(found))),
        "faces": [_round(face[:4]) for face in faces], "person": detection.person,
        "person_chosen_by": "manifest" if detection.requested is not None else "largest, most central face",
        "person_found": person_found(found),
    }
    problems: dict[str, str] = {}
    if upscale > MAX_UPSCALE:
        problems["image_too_small"] = (
            f"the image is {image_width}x{image_height}, to be enlarged {upscale:.1f}x for a {width}x{height} output "
            f"(more than {MAX_UPSCALE:g}x looks soft): use a larger image or a smaller output")
    if not person_found(found):
        problems["no_person"] = ("no face and shoulders found: the whole image is fitted into the frame and the "
                                 "model will draw a person where it sees none")
        verdict = next(v for v in VERDICTS if v in problems)
        return ReferenceTriage(verdict, tuple(TriageWarning(k, m) for k, m in problems.items()), facts, detection)

    geometry = person_geometry(found)
    x0, y0, x1, y1 = geometry.square
    box = face_box(found)
    visible_hands = sorted(found.hands)
    person_area = max(0.0, min(x1, image_width) - max(x0, 0)) * max(0.0, min(y1, image_height) - max(y0, 0))
    image_bottom = (image_height - y0) / geometry.side  # where the image ends, in the square's height
    person_upscale = min(width, height) / geometry.side
    facts.update({
        "face_box": None if box is None else _round(box),
        "shoulders": "detected" if geometry.shoulders_seen else "placed by the face (the image ends at or above them)",
        "shoulder_span": round(geometry.shoulder_span, 1),
        "hands_visible": visible_hands,
        "person_box": _round(geometry.square),
        "person_share": round(person_area / (image_width * image_height), 3),
        "image_bottom_in_box": round(image_bottom, 3),
        "person_upscale": round(person_upscale, 3),
    })
    margin_x, margin_y = EDGE_MARGIN * image_width, EDGE_MARGIN * image_height
    cut = []
    if box is not None and (box[0] < -margin_x or box[2] > image_width + margin_x):
        cut.append("the face runs past the image's side")
    if box is not None and box[1] < -margin_y:
        cut.append("the face runs past the image's top")
    if geometry.shoulders_seen:
        shoulder_xs = found.body[[11, 12], 0]
        if shoulder_xs.min() < 0 or shoulder_xs.max() > image_width:
            cut.append("a shoulder lies outside the image")
    if cut:
        problems["cut_off"] = "; ".join(cut) + ": the missing part is filled in (blurred reflection), not seen"
    if image_bottom < HANDS_LINE or not geometry.shoulders_seen:
        why = ("the image ends at the shoulders" if not geometry.shoulders_seen
               else f"the image ends at {image_bottom:.0%} of the person's box, hands move below {HANDS_LINE:.0%}")
        problems["head_only"] = (f"head-and-shoulders only ({why}): framed at the training size with the area below "
                                 "filled (blurred reflection); hands are drawn over that fill")
    if len(comparable) > 1 and detection.requested is None:
        problems["several_people"] = (
            f"{len(comparable)} people: the largest, most central one is used (person {detection.person}, "
            f"0 = leftmost); set the manifest's `person` column to choose another")
    if person_upscale > MAX_UPSCALE and "image_too_small" not in problems:
        problems["too_small"] = (f"the person is small in the image: their box is {geometry.side:.0f} px, to be "
                                 f"enlarged {person_upscale:.1f}x (more than {MAX_UPSCALE:g}x looks soft)")
    verdict = next((v for v in VERDICTS if v in problems), "half_body")
    return ReferenceTriage(verdict, tuple(TriageWarning(k, m) for k, m in problems.items()), facts, detection)


def triage_or_unknown(image_rgb: np.ndarray | None, width: int, height: int, detection: PeopleDetection | None = None,
                      person: int | None = None) -> ReferenceTriage:
    """triage_reference, or without mediapipe (an optional dependency) a `no_person` verdict that says
    no detector ran: the reference is then framed as one without a person."""
    try:
        return triage_reference(image_rgb, width, height, detection, person)
    except MediaPipeMissing as missing:
        height_px, width_px = image_rgb.shape[:2]
        return ReferenceTriage("no_person", (TriageWarning("no_person", f"no person detector: {missing}"),),
                               {"image_size": [width_px, height_px], "output_size": [width, height], "person_found": False})
