"""What one row's inputs may be at most: the one home of these numbers (the manifest checks, the media
readers, preprocessing and the one-clip API all read them from here)."""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Limits:
    max_audio_seconds: float = 600.0
    # The audio encoder's minimum, echomimic2.audio.MIN_SAMPLES at 16 kHz, without importing torch here
    # (tests/test_media.py holds them equal); one video frame at the row's fps is the other minimum.
    min_audio_seconds: float = 0.02
    max_image_pixels: int = 40_000_000
    min_image_side: int = 64
    max_pose_frames: int = 20_000
    max_audio_bytes: int = 200 * 1024 * 1024
    max_image_bytes: int = 50 * 1024 * 1024
    max_pose_file_bytes: int = 1024 * 1024
    max_pose_npz_bytes: int = 200 * 1024 * 1024
    max_video_bytes: int = 500 * 1024 * 1024  # a driving video (pose input)
    max_video_frame_pixels: int = 4096 * 2160  # of one driving-video frame, from its header
