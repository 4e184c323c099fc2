"""Reference triage for the job, `validate` and `plan` (`echomimic2.triage` judges; this remembers and
applies the policy): each reference is detected once, and the detection is remembered under the output
root keyed by the image's content hash, so a rerun, or `run` after `validate --output`, does not detect
again.

    <output>/_cache/detections/<sha256 of the image bytes>-<person>-v<version>.json
"""
from __future__ import annotations

import json

import numpy as np

from pipeline import storage
from pipeline.fingerprint import content_hash

DETECTIONS_FOLDER = "_cache/detections"
UNSUITABLE_POLICIES = ("warn", "skip", "fail")  # what `run --unsuitable` does with a reference that is not half_body


class DetectionCache:
    """Remembered `PeopleDetection`s under an output root (None: nothing remembered). A missing, unreadable
    or stale entry is detected again; a failed write only costs a later detection."""

    def __init__(self, root: str | None):
        self.root = root

    def uri(self, image_sha: str, person: int | None) -> str:
        from echomimic2.triage import DETECTION_VERSION

        return storage.join(self.root, DETECTIONS_FOLDER, f"{image_sha}-{'auto' if person is None else person}"
                                                          f"-v{DETECTION_VERSION}.json")

    def get(self, image_sha: str, person: int | None):
        from echomimic2.triage import PeopleDetection

        if self.root is None:
            return None
        uri = self.uri(image_sha, person)
        try:
            return PeopleDetection.from_json(storage.read_bytes(uri, max_bytes=1 << 22).decode()) if storage.exists(uri) else None
        except Exception:  # noqa: BLE001 - not remembered (or unreadable, or stale): detect again
            return None

    def put(self, image_sha: str, person: int | None, detection) -> None:
        if self.root is None:
            return
        try:
            storage.write_atomic(self.uri(image_sha, person), json.dumps(detection.to_json()).encode())
        except Exception:  # noqa: BLE001 - remembering is an optimisation: the row goes on
            pass


def remembered_detection(cache: DetectionCache, image_bytes: bytes, image_rgb: np.ndarray, person: int | None,
                         detector=None):
    """The reference's `PeopleDetection`: remembered, or detected now and remembered; None without
    mediapipe (triage then says so). InputError when `person` asks for a face that is not there."""
    from echomimic2.pose_detect import MediaPipeMissing
    from echomimic2.triage import PersonNotFound, detect_people

    image_sha = content_hash(image_bytes)
    found = cache.get(image_sha, person)
    if found is not None:
        return found
    try:
        found = detect_people(image_rgb, person, detector)
    except MediaPipeMissing:
        return None
    except PersonNotFound as missing:  # the row's `person` is wrong: said as the row's problem, plainly
        raise storage.InputError(str(missing)) from None
    cache.put(image_sha, person, found)
    return found


def unsuitable_reason(verdict: str, warnings: list[dict]) -> str:
    """How a result and `validate` name an unsuitable reference: the verdict, then every warning's message."""
    return f"unsuitable reference ({verdict}): " + "; ".join(w["message"] for w in warnings)


def people_detector():
    """A reusable detector, or None without mediapipe (each reference is then judged as unknown)."""
    from echomimic2.pose_detect import MediaPipeMissing
    from echomimic2.triage import PeopleDetector

    try:
        return PeopleDetector()
    except MediaPipeMissing:
        return None


def unsuitable_problem(spec, triage, policy: str):
    """The row's Problem (field `image`) when its reference is not half-body and the policy is not `warn`."""
    from pipeline.manifest import Problem

    if policy not in UNSUITABLE_POLICIES:
        raise ValueError(f"unsuitable policy must be one of {', '.join(UNSUITABLE_POLICIES)}, got {policy!r}")
    if triage.ok or policy == "warn":
        return None
    return Problem(spec.row, spec.clip_id, "image", unsuitable_reason(triage.verdict, [w.to_json() for w in triage.warnings]))


def judge_reference(spec, settings, params, image_bytes: bytes, image_rgb: np.ndarray, detector=None):
    """(detection, triage, Problem or None) of a row's reference at its output size (its `params.RenderParams`),
    under the job's --unsuitable policy; the detection remembered under the job's output root."""
    from echomimic2.triage import triage_or_unknown

    detection = remembered_detection(DetectionCache(settings.output), image_bytes, image_rgb, spec.person, detector)
    triage = triage_or_unknown(image_rgb, params.width, params.height, detection)
    return detection, triage, unsuitable_problem(spec, triage, settings.unsuitable)


def triage_spec(spec, width: int, height: int, cache: DetectionCache, detector, limits, allow_http: bool = False,
                input_root=None):
    """A manifest row's reference read (bounded), decoded as the job decodes it and triaged for a width x
    height output. Raises InputError / ValueError naming the problem (e.g. a `person` beyond the faces)."""
    from echomimic2.triage import triage_or_unknown
    from pipeline.media import decode_reference

    data = storage.read_bytes(storage.check_uri(spec.image, allow_http=allow_http, input_root=input_root), max_bytes=limits.max_image_bytes)
    image = decode_reference(data, limits, spec.image.rstrip("/").rsplit("/", 1)[-1])
    return triage_or_unknown(image, width, height, remembered_detection(cache, data, image, spec.person, detector))


def warning_counts(warnings_column) -> dict[str, int]:
    """Rows per warning kind in a results `warnings` column (JSON lists; null where a row has none recorded)."""
    counts: dict[str, int] = {}
    for cell in warnings_column:
        if not isinstance(cell, str):
            continue
        for kind in sorted({w["kind"] for w in json.loads(cell)}):
            counts[kind] = counts.get(kind, 0) + 1
    return dict(sorted(counts.items(), key=lambda item: (-item[1], item[0])))
