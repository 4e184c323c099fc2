"""One call for a clip's reference and poses: judge the reference (echomimic2.triage), frame it by its
verdict, choose the pose sequence (given, or gestures from the audio), map it onto the person, fit it
to the clip's length, and say what was done.

This is the seam the batch job's preprocessing calls (after decoding the reference without cropping,
and turning a driving video into poses with pipeline.driving_video.poses_from_video).
"""
from __future__ import annotations

import numpy as np

from echomimic2.gestures import GESTURE_STYLES, audio_gesture_sequence
from echomimic2.pose import default_pose_sequence, extend_poses
from echomimic2.pose_align import ALIGN_MODES, ReferenceDetection, align_poses, frame_reference
from echomimic2.pose_detect import LOST
from echomimic2.triage import PeopleDetection, TriageWarning, triage_or_unknown

# Goes into a clip's fingerprint: bump when framing, alignment or gestures change their output, so
# finished clips are re-rendered rather than kept with the old placement.
POSES_VERSION = 2

HANDS_IN_FRAME = 0.75  # below this share of the hands' points inside the frame: hands_out_of_frame
HANDS_OVER_FILL = 0.5  # above this share of the in-frame hand points over filled area: hands_over_fill


def reference_and_poses(image_rgb: np.ndarray, width: int, height: int, fps: float, n_frames: int, *,
                        poses: list[dict] | None = None, audio: np.ndarray | None = None, seed: int = 0,
                        pose_align: str = "auto", gesture: str = "calm", detection: PeopleDetection | None = None,
                        person: int | None = None) -> tuple[np.ndarray, list[dict], dict]:
    """(framed uint8 (height, width, 3) reference, exactly n_frames poses normalised to the output,
    a JSON-ready summary for results: verdict, warnings, framing, alignment, pose length).

    `detection`: the reference's remembered `detect_people` (None: detected here; `person` picks
    among several people). `poses`: the row's sequence (files or a driving video), any framing;
    extended by ping-pong or cut after alignment. Without poses: gestures from `audio` (float32
    16 kHz) in `gesture` style, or the built-in loop when no audio is given. `pose_align` "auto" |
    "none" (see align_poses)."""
    if pose_align not in ALIGN_MODES:
        raise ValueError(f"pose_align must be one of {ALIGN_MODES}, got {pose_align!r}")
    if gesture not in GESTURE_STYLES:
        raise ValueError(f"gesture must be one of {sorted(GESTURE_STYLES)}, got {gesture!r}")
    triage = triage_or_unknown(image_rgb, width, height, detection, person)
    framed, crop_box, framing = frame_reference(image_rgb, width, height, triage=triage)
    if poses is not None:
        source = "given"
        sequence = poses
    elif audio is not None:
        source = f"gestures:{gesture}"
        sequence = audio_gesture_sequence(audio, fps, n_frames, seed=seed, style=gesture)
    else:
        source = "default loop"
        sequence = default_pose_sequence(n_frames, fps)
    summary = {
        "pose_source": source,
        **triage.summary(),
        "crop_box": [round(v, 1) for v in crop_box],
        "reference_size": [int(image_rgb.shape[1]), int(image_rgb.shape[0])],
        **framing.as_dict(),
    }
    if not sequence:
        return framed, [], summary
    aligned, alignment = align_poses(sequence, framing, width, height, mode=pose_align)
    summary.update(alignment)
    summary["pose_length"] = pose_length(len(sequence), n_frames, source)
    hands, warnings = hands_in_frame(aligned, framing)
    summary["hands"] = hands
    summary["warnings"] += [warning.to_json() for warning in warnings]
    return framed, extend_poses(aligned, n_frames), summary


def pose_length(given: int, frames: int, source: str) -> dict:
    """What was done to a sequence's length to fit the clip: as given, extended (ping-pong) or cut."""
    if given == frames:
        action = "as given" if source == "given" else "generated"
    elif given < frames:
        action = "extended by ping-pong"
    else:
        action = "cut"
    return {"given": given, "frames": frames, "action": action}


def hands_in_frame(poses: list[dict], framing: ReferenceDetection) -> tuple[dict, list[TriageWarning]]:
    """Where the aligned poses' hands fall in the output: the share of their points inside the frame, and
    of those the share over filled area (where the framed reference has no source pixels); a warning
    for each share past its limit."""
    points = np.concatenate([np.asarray(pose["hands"], dtype=np.float64).reshape(-1, 2) for pose in poses])
    points = points[~((points[:, 0] == LOST) & (points[:, 1] == LOST))] * (framing.width, framing.height)
    if not len(points):
        return {"points": 0}, []
    inside = ((points >= 0) & (points <= (framing.width, framing.height))).all(axis=1)
    over_fill = float((~framing.inside_source(points[inside])).mean()) if inside.any() else 0.0
    facts = {"points": int(len(points)), "in_frame": round(float(inside.mean()), 3), "over_fill": round(over_fill, 3)}
    warnings = []
    if inside.mean() < HANDS_IN_FRAME:
        warnings.append(TriageWarning("hands_out_of_frame", f"{1 - inside.mean():.0%} of the hands' points fall outside "
                                      "the frame: those hands are not drawn and will not move"))
    if over_fill > HANDS_OVER_FILL:
        warnings.append(TriageWarning("hands_over_fill", f"{over_fill:.0%} of the hands' points lie over filled area "
                                      "(no body in the reference there): the model invents the arms"))
    return facts, warnings
