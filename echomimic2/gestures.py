"""Hand gestures from speech, for clips that come without poses.

Per video frame the audio gives three signals (numpy only, 16 kHz mono): loudness (RMS, in dB above
the clip's noise floor), onsets (positive spectral flux: syllable and word starts) and pitch
(autocorrelation, in semitones around the speaker's median). They drive two hands:

* activity: loudness smoothed with a fast attack (80 ms) and slow release (400 ms); 0 in silence;
* each hand's wrist follows a target on a damped spring (1.6 Hz, damping 0.85), so motion is
  continuous: the target rises and moves inwards with activity (higher pitch: a little higher), wanders
  on slow seeded curves scaled by activity, and every onset kicks the wrist (a beat gesture) in a
  seeded direction, scaled by the onset's strength;
* in silence the targets are the rest pose (hands low in front of the lower torso) and the spring
  settles there: hands at rest.

Styles: "calm" (small, the second hand half as active), "lively" (large, both hands), "none" (hands
held at rest). Deterministic in (audio, fps, n_frames, seed, style). Poses come in the official
layout of a 768 pose box framed like the half-body training data, with a canonical body and face
(shoulders, neck, nose, eyes, chin) so `pose_align.align_poses` maps them onto the reference person.
"""
from __future__ import annotations

import math

import numpy as np

from echomimic2.pose import OFFICIAL_DRAW_PARAMS, hand_points

SAMPLE_RATE = 16_000
GESTURE_STYLES = {
    # lift (box units at full activity), wander, beat kick, activity of the second hand
    "calm": {"lift": 0.07, "wander": 0.025, "beat": 0.25, "second_hand": 0.5},
    "lively": {"lift": 0.13, "wander": 0.05, "beat": 0.5, "second_hand": 1.0},
    "none": {"lift": 0.0, "wander": 0.0, "beat": 0.0, "second_hand": 0.0},
}
REST = ((0.70, 0.88), (0.30, 0.88))  # wrists of hands[0] (the person's left: image right) and hands[1]
SPRING_HZ = 1.6
SPRING_DAMPING = 0.85
ATTACK_SECONDS, RELEASE_SECONDS = 0.08, 0.4
SPEECH_DB = 12.0  # loudness above the noise floor at which activity reaches 1
SILENCE_DB = 3.0  # below this above the floor: silence

# The canonical person the poses are drawn for (official demo poses' typical layout, 768 box).
CANONICAL_BODY = {0: (0.50, 0.23), 1: (0.50, 0.48), 2: (0.30, 0.49), 5: (0.70, 0.49)}
CANONICAL_FACE = {8: (0.50, 0.34), 30: (0.50, 0.25), 36: (0.43, 0.20), 45: (0.57, 0.20)}


def _frames(audio: np.ndarray, hop: float, n_frames: int, length: int) -> np.ndarray:
    """(n_frames, length) windows centred on each video frame's middle (zero-padded at the ends)."""
    centres = ((np.arange(n_frames) + 0.5) * hop).astype(np.int64)
    padded = np.pad(audio, (length, length))
    index = centres[:, None] + np.arange(-length // 2, length // 2)[None, :] + length
    return padded[np.clip(index, 0, len(padded) - 1)]


def speech_features(audio: np.ndarray, fps: float, n_frames: int) -> dict[str, np.ndarray]:
    """Per video frame: loudness (dB above the noise floor), onset strength (0-1), pitch (semitones
    from the voiced median, 0 when unvoiced) and voiced (bool)."""
    audio = np.asarray(audio, dtype=np.float32).reshape(-1)
    hop = SAMPLE_RATE / fps
    window = _frames(audio, hop, n_frames, 1024) * np.hanning(1024)
    rms = np.sqrt(np.mean(window ** 2, axis=1) + 1e-12)
    decibels = 20 * np.log10(rms + 1e-6)
    floor = np.percentile(decibels, 10) if n_frames else 0.0
    loudness = np.clip(decibels - max(floor, -80.0), 0, None)
    # onsets: positive change of the log spectrum from the previous frame
    spectrum = np.log1p(50 * np.abs(np.fft.rfft(window, axis=1)))
    flux = np.maximum(np.diff(spectrum, axis=0, prepend=spectrum[:1]), 0).sum(axis=1)
    flux = flux * (loudness > SILENCE_DB)
    scale = np.percentile(flux[flux > 0], 95) if np.any(flux > 0) else 1.0
    onset = np.clip(flux / scale, 0, 1)
    # pitch: the autocorrelation peak between 70 and 400 Hz of a voiced frame
    spectrum_full = np.fft.rfft(window, n=2048, axis=1)
    autocorrelation = np.fft.irfft(np.abs(spectrum_full) ** 2, axis=1)[:, :1024]
    low, high = SAMPLE_RATE // 400, SAMPLE_RATE // 70
    lag = low + np.argmax(autocorrelation[:, low:high], axis=1)
    strength = autocorrelation[np.arange(n_frames), lag] / (autocorrelation[:, 0] + 1e-12)
    voiced = (strength > 0.45) & (loudness > SILENCE_DB)
    semitones = 12 * np.log2(SAMPLE_RATE / lag)
    pitch = np.zeros(n_frames)
    if voiced.any():
        pitch[voiced] = np.clip(semitones[voiced] - np.median(semitones[voiced]), -6, 6)
    return {"loudness": loudness, "onset": onset, "pitch": pitch, "voiced": voiced}


def _activity(loudness: np.ndarray, fps: float) -> np.ndarray:
    level = np.clip((loudness - SILENCE_DB) / (SPEECH_DB - SILENCE_DB), 0, 1)
    attack, release = (1 - math.exp(-1 / (fps * seconds)) for seconds in (ATTACK_SECONDS, RELEASE_SECONDS))
    smoothed, value = np.zeros_like(level), 0.0
    for i, target in enumerate(level):
        value += (attack if target > value else release) * (target - value)
        smoothed[i] = value
    return smoothed


def _pose(wrists: list[np.ndarray], angles: list[float], curls: list[float], index: int) -> dict:
    hands = np.array([hand_points(wrists[h], angles[h], curls[h], mirrored=h == 0) for h in range(2)])
    candidate = np.full((18, 2), -1.0)
    score = np.zeros((1, 18))
    for joint, point in CANONICAL_BODY.items():
        candidate[joint], score[0, joint] = point, 1.0
    faces = np.full((1, 68, 2), -1.0)
    faces_score = np.zeros((1, 68))
    for joint, point in CANONICAL_FACE.items():
        faces[0, joint], faces_score[0, joint] = point, 1.0
    return {
        "bodies": {"candidate": candidate, "subset": np.where(score > 0.3, np.arange(18.0), -1.0), "score": score},
        "hands": hands, "hands_score": np.ones((2, 21)), "faces": faces, "faces_score": faces_score,
        "num": index, "draw_pose_params": list(OFFICIAL_DRAW_PARAMS),
    }


def audio_gesture_sequence(audio: np.ndarray, fps: float, n_frames: int, seed: int = 0,
                           style: str = "calm") -> list[dict]:
    """n_frames official pose dicts whose hands move with the speech in `audio` (float32 16 kHz)."""
    if style not in GESTURE_STYLES:
        raise ValueError(f"gesture style must be one of {sorted(GESTURE_STYLES)}, got {style!r}")
    if not (math.isfinite(fps) and fps > 0) or n_frames < 0:
        raise ValueError(f"need fps > 0 and n_frames >= 0, got {fps!r}, {n_frames!r}")
    if n_frames == 0:
        return []
    params = GESTURE_STYLES[style]
    features = speech_features(audio, fps, n_frames)
    activity = _activity(features["loudness"], fps)
    rng = np.random.default_rng(seed)
    # slow wandering curves: three sinusoids per hand and axis, 0.15-0.6 Hz, seeded phases
    frequencies = rng.uniform(0.15, 0.6, (2, 2, 3))
    phases = rng.uniform(0, 2 * math.pi, (2, 2, 3))
    kick_directions = rng.normal(size=(n_frames, 2, 2)) * (0.5, 1.0)  # beats mostly up and down
    omega = 2 * math.pi * SPRING_HZ
    dt = 1 / fps
    position = np.array(REST, dtype=np.float64)
    velocity = np.zeros((2, 2))
    poses = []
    for i in range(n_frames):
        t = i / fps
        wrists, angles, curls = [], [], []
        for hand in range(2):
            share = activity[i] * (1.0 if hand == 0 else params["second_hand"])
            inward = -1.0 if hand == 0 else 1.0
            wander = np.sin(2 * math.pi * frequencies[hand] * t + phases[hand]).sum(axis=1) / 3
            target = np.array(REST[hand]) + share * np.array([
                inward * 0.35 * params["lift"] + params["wander"] * wander[0],
                -params["lift"] * (1 + 0.06 * features["pitch"][i]) + params["wander"] * wander[1],
            ])
            kick = params["beat"] * features["onset"][i] * share * kick_directions[i, hand]
            # semi-implicit Euler on a damped spring; kicks are velocity impulses (box units per second)
            acceleration = omega ** 2 * (target - position[hand]) - 2 * SPRING_DAMPING * omega * velocity[hand]
            velocity[hand] = velocity[hand] + acceleration * dt + kick
            position[hand] = position[hand] + velocity[hand] * dt
            wrists.append(position[hand].copy())
            angles.append(math.radians(-20.0 + 25.0 * share))  # hands turn up as they rise
            curls.append(0.75 - 0.45 * share)  # and open
        poses.append(_pose(wrists, angles, curls, i))
    return poses
