"""Gestures from the audio: hands move with the speech, rest in silence, deterministic per seed."""
from __future__ import annotations

import numpy as np
import pytest

from echomimic2.gestures import REST, audio_gesture_sequence, speech_features
from echomimic2.pose import render_pose, validate_pose

SR = 16_000
FPS = 24


def _speech(seconds: float, rng: np.random.Generator, f0: float) -> np.ndarray:
    """Voiced, syllable-like sound: a harmonic tone at f0 (slight vibrato), 4 syllables a second,
    loudness rising and falling over 2 s phrases."""
    t = np.arange(int(seconds * SR)) / SR
    syllables = (0.5 - 0.5 * np.cos(2 * np.pi * 4 * t)) ** 2
    phase = 2 * np.pi * np.cumsum(f0 * (1 + 0.05 * np.sin(2 * np.pi * 0.7 * t))) / SR
    tone = sum(np.sin(k * phase) / k for k in range(1, 8))
    phrase = 0.3 + 0.7 * (0.5 + 0.5 * np.sin(2 * np.pi * 0.5 * t + rng.uniform(0, 6)))
    return 0.2 * tone * syllables * phrase + 0.002 * rng.standard_normal(len(t))


@pytest.fixture(scope="module")
def audio() -> np.ndarray:
    """3 s speech (140 Hz), 2 s near-silence, 3 s speech (180 Hz)."""
    rng = np.random.default_rng(0)
    silence = 0.002 * rng.standard_normal(2 * SR)
    return np.concatenate([_speech(3, rng, 140), silence, _speech(3, rng, 180)]).astype(np.float32)


def _wrists(poses: list[dict]) -> np.ndarray:
    return np.array([pose["hands"][:, 0] for pose in poses])  # (frames, hand, xy)


def _speed(poses: list[dict]) -> np.ndarray:
    """Both wrists' speed per frame, in pose-box units per second."""
    return np.linalg.norm(np.diff(_wrists(poses), axis=0), axis=-1).sum(axis=-1) * FPS


@pytest.mark.parametrize("style", ["calm", "lively"])
def test_hand_speed_follows_the_loudness_and_hands_rest_in_silence(audio, style):
    frames = len(audio) * FPS // SR
    poses = audio_gesture_sequence(audio, FPS, frames, seed=3, style=style)
    assert len(poses) == frames
    speed = _speed(poses)
    loudness = speech_features(audio, FPS, frames)["loudness"][1:]
    correlation = np.corrcoef(speed, loudness)[0, 1]
    assert correlation > 0.5, correlation  # measured 0.61 (calm) and 0.63 (lively)
    # the last 0.8 s of the silence (3-5 s): still, and back at the rest pose
    quiet = slice(int(4.2 * FPS), 5 * FPS)
    assert speed[quiet].max() < 0.05 < speed[: 3 * FPS].mean()
    np.testing.assert_allclose(_wrists(poses)[5 * FPS - 1], REST, atol=0.01)
    for pose in poses[::10]:
        validate_pose(pose, "gesture")
        assert (0.05 < pose["hands"]).all() and (pose["hands"] < 0.98).all()  # drawn, inside the box


def test_same_seed_same_poses_other_seed_other_poses_lively_moves_more(audio):
    frames = 96
    first = audio_gesture_sequence(audio, FPS, frames, seed=7)
    again = audio_gesture_sequence(audio, FPS, frames, seed=7)
    other = audio_gesture_sequence(audio, FPS, frames, seed=8)
    assert all(np.array_equal(a["hands"], b["hands"]) for a, b in zip(first, again))
    assert not np.allclose(_wrists(first), _wrists(other))
    lively = audio_gesture_sequence(audio, FPS, frames, seed=7, style="lively")
    assert _speed(lively).mean() > 1.5 * _speed(first).mean()
    still = audio_gesture_sequence(audio, FPS, frames, seed=7, style="none")
    assert np.abs(_speed(still)).max() == 0 and np.allclose(_wrists(still), REST)
    with pytest.raises(ValueError, match="gesture style"):
        audio_gesture_sequence(audio, FPS, frames, style="wild")


def test_speech_features_see_voicing_and_pitch(audio):
    features = speech_features(audio, FPS, len(audio) * FPS // SR)
    first, quiet, second = slice(0, 3 * FPS), slice(3 * FPS + 6, 5 * FPS - 6), slice(5 * FPS, 8 * FPS)
    assert features["voiced"][first].mean() > 0.6 and not features["voiced"][quiet].any()
    assert features["onset"][quiet].max() == 0 and features["onset"][first].max() > 0.5
    # 180 Hz is 4.35 semitones above 140 Hz
    difference = features["pitch"][second][features["voiced"][second]].mean() - features["pitch"][first][features["voiced"][first]].mean()
    assert difference == pytest.approx(4.35, abs=1.0)


def test_gestures_align_onto_the_reference_person():
    from echomimic2.pose_align import align_poses, frame_reference
    from tests.synthetic_person import astronaut

    rng = np.random.default_rng(1)
    poses = audio_gesture_sequence(_speech(1, rng, 150).astype(np.float32), FPS, 24, seed=0)
    _, _, detection = frame_reference(astronaut(), 256, 384)
    aligned, info = align_poses(poses, detection, 256, 384)
    assert info["pose_align_applied"] == "similarity" and 0.7 < info["pose_align_scale"] < 1.4
    wrist = aligned[0]["hands"][:, 0] * (256, 384)
    shoulders_y = (detection.anchors["left_shoulder"][1] + detection.anchors["right_shoulder"][1]) / 2
    assert (wrist[:, 1] > shoulders_y).all()  # hands below the shoulders, on the person
    assert render_pose(aligned[0], 256, 384)[..., 0].max() > 200
