"""The steps that turn one clip's inputs into frames, shared by the one-clip pipeline (`pipeline.clip`) and
the job's stages (`pipeline.stages`): each is written once, here, and both call it.

    RenderParams.resolve ─► audio_features ─► reference_and_poses ─► plan_segments ─► segment_inputs ─► render_frames ─► stitch

No Ray, no storage: arrays and decoded inputs in, arrays out.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from pipeline.assemble import array_chunks, stitched_frames
from pipeline.media import SAMPLE_RATE
from pipeline.params import RenderParams
from pipeline.segments import plan_segments

__all__ = ["AudioFeatures", "RenderParams", "audio_features", "plan_segments", "reference_and_poses", "render_frames",
           "segment_inputs", "stitch"]


@dataclass
class AudioFeatures:
    features: np.ndarray  # float32 (N, 5, 384) whisper states at 50 rows/s
    frames: int  # video frames of the clip
    seconds: float  # the audio's duration


def audio_features(whisper, waveform: np.ndarray, fps: float) -> AudioFeatures:
    """Whisper states of a 16 kHz mono waveform and the clip's frame count: the video is as long as the
    audio (within a frame), never longer than the audio's features cover."""
    from echomimic2.audio import video_frame_count

    seconds = len(waveform) / SAMPLE_RATE
    features = whisper(waveform)
    frames = min(round(seconds * fps), video_frame_count(len(features), fps))
    if frames < 1:
        raise ValueError(f"audio is {seconds:.3f} s long: too short for one frame at {fps:g} fps")
    return AudioFeatures(features, frames, seconds)


def reference_and_poses(reference_rgb: np.ndarray, params: RenderParams, frames: int, *, poses: list[dict] | None,
                        waveform: np.ndarray | None, detection=None) -> tuple[np.ndarray, list[dict], dict]:
    """The reference judged (`echomimic2.triage`) and framed by its verdict at the output size, one pose per
    frame mapped onto its person (the given poses, or gestures from the audio in the row's style), and what
    was done (a JSON-ready summary for results: verdict, warnings, framing, alignment, pose length).
    `detection`: the reference's remembered `detect_people` for the row's `person` (None: detected here).
    Without a person (or without MediaPipe) the whole reference is fitted, the rest filled, and the poses
    are used as given; the summary says why."""
    from echomimic2.clip_poses import reference_and_poses as frame_and_align

    return frame_and_align(reference_rgb, params.width, params.height, params.fps, frames, poses=poses,
                           audio=waveform, seed=params.seed, pose_align=params.pose_align, gesture=params.gesture,
                           detection=detection, person=params.person)


def segment_inputs(features: np.ndarray, poses: list[dict], fps: float, start: int, stop: int,
                   width: int, height: int) -> tuple[np.ndarray, np.ndarray]:
    """Frames [start, stop)'s audio tokens (n, 50, 384) and rendered pose images uint8 (n, H, W, 3)."""
    from echomimic2.audio import frame_windows
    from echomimic2.pose import render_pose

    pose_images = np.stack([render_pose(pose, width, height) for pose in poses[start:stop]])
    return frame_windows(features, fps, start, stop), pose_images


def render_frames(model, reference: np.ndarray, audio: np.ndarray, pose_images: np.ndarray, *, seed: int,
                  first_frame: int, steps: int, guidance: float, on_frames=None, on_progress=None) -> np.ndarray:
    """One segment's frames, uint8 (n, H, W, 3); its noise depends on (seed, global frame) only. `on_frames`
    receives them in order as they are decoded, `on_progress` a `RenderProgress` per UNet call and decoded
    batch (`EchoMimicV2.render`)."""
    return model.render(reference, audio, pose_images, seed=seed, first_frame=first_frame, steps=steps,
                        guidance=guidance, on_frames=on_frames, on_progress=on_progress)


def stitch(segments: list[tuple[int, int, np.ndarray]], frames: int) -> np.ndarray:
    """Rendered segments (start, stop, frames) → the clip's frames, shared frames cross-faded exactly as the
    job's assembler does it (`assemble.stitched_frames`)."""
    return np.concatenate(list(stitched_frames(segments, frames, read_segment=array_chunks)))
