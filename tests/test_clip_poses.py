"""The preprocessing seam: framed reference + poses for the output, with what was done."""
from __future__ import annotations

import json

import numpy as np

from echomimic2.clip_poses import reference_and_poses
from echomimic2.pose import render_pose
from tests.synthetic_person import astronaut


def test_gestures_for_a_portrait_output_of_a_real_photo():
    t = np.arange(16_000 * 2) / 16_000
    audio = (0.2 * np.sin(2 * np.pi * 150 * t) * (0.5 - 0.5 * np.cos(2 * np.pi * 4 * t))).astype(np.float32)
    framed, poses, summary = reference_and_poses(astronaut(), 256, 384, 24, 60, audio=audio, seed=1)
    assert framed.shape == (384, 256, 3) and len(poses) == 60
    assert summary["pose_source"] == "gestures:calm" and summary["framing"] == "person"
    assert summary["pose_align_applied"] == "similarity" and len(summary["crop_box"]) == 4
    json.dumps(summary)  # goes into results as JSON
    assert render_pose(poses[30], 256, 384).shape == (384, 256, 3)


def test_no_person_and_no_audio_falls_back_and_says_so():
    flat = np.full((300, 451, 3), 120, np.uint8)
    framed, poses, summary = reference_and_poses(flat, 256, 256, 24, 30)
    assert framed.shape == (256, 256, 3) and len(poses) == 30
    assert summary["pose_source"] == "default loop" and summary["framing"] == "pad" and summary["padded"]
    assert summary["pose_align_applied"] == "none" and summary["pose_align_reason"] == "no person found in the reference"
    given = poses[:7]  # a given sequence shorter than the clip is extended (ping-pong)
    _, extended, summary = reference_and_poses(flat, 256, 256, 24, 20, poses=given, pose_align="none")
    assert len(extended) == 20 and summary["pose_source"] == "given" and summary["pose_align_reason"] == "pose_align is none"
