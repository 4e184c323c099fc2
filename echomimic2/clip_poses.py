"""One call for a clip's reference and poses: frame the reference around its person, choose the pose
sequence (given, or gestures from the audio), map it onto the person, and say what was done.

This is the seam the batch job's preprocessing calls (after decoding the reference without cropping,
and turning a driving video into poses with pipeline.driving_video.poses_from_video).
"""
from __future__ import annotations

import numpy as np

from echomimic2.gestures import GESTURE_STYLES, audio_gesture_sequence
from echomimic2.pose import default_pose_sequence, extend_poses
from echomimic2.pose_align import ALIGN_MODES, align_poses, frame_reference

# Goes into a clip's fingerprint: bump when framing, alignment or gestures change their output, so
# finished clips are re-rendered rather than kept with the old placement.
POSES_VERSION = 1


def reference_and_poses(image_rgb: np.ndarray, width: int, height: int, fps: float, n_frames: int, *,
                        poses: list[dict] | None = None, audio: np.ndarray | None = None, seed: int = 0,
                        pose_align: str = "auto", gesture: str = "calm", framing_fallback: str = "pad",
                        ) -> tuple[np.ndarray, list[dict], dict]:
    """(framed uint8 (height, width, 3) reference, exactly n_frames poses normalised to the output,
    a JSON-ready summary for results).

    `poses`: the row's sequence (files or a driving video), any framing; extended by ping-pong after
    alignment. Without poses: gestures from `audio` (float32 16 kHz) in `gesture` style, or the
    built-in loop when no audio is given. `pose_align` "auto" | "none" (see align_poses)."""
    if pose_align not in ALIGN_MODES:
        raise ValueError(f"pose_align must be one of {ALIGN_MODES}, got {pose_align!r}")
    if gesture not in GESTURE_STYLES:
        raise ValueError(f"gesture must be one of {sorted(GESTURE_STYLES)}, got {gesture!r}")
    framed, crop_box, detection = frame_reference(image_rgb, width, height, fallback=framing_fallback)
    if poses is not None:
        source = "given"
        sequence = poses
    elif audio is not None:
        source = f"gestures:{gesture}"
        sequence = audio_gesture_sequence(audio, fps, n_frames, seed=seed, style=gesture)
    else:
        source = "default loop"
        sequence = default_pose_sequence(n_frames, fps)
    if not sequence:
        return framed, [], {"pose_source": source, "crop_box": [round(v, 1) for v in crop_box], **detection.as_dict()}
    aligned, alignment = align_poses(sequence, detection, width, height, mode=pose_align)
    summary = {
        "pose_source": source,
        "crop_box": [round(v, 1) for v in crop_box],
        "reference_size": [int(image_rgb.shape[1]), int(image_rgb.shape[0])],
        **detection.as_dict(),
        **alignment,
    }
    return framed, extend_poses(aligned, n_frames), summary
