"""A synthetic talking-figure data set for the tiny preset: drawn half-body figures that speak.

Every clip is one figure (shapes and colours drawn from a seeded generator) over one speech track:

* the **figure** is a flat-shaded half-body drawing on the demo figure's layout (`manifests/make_demo.py`,
  framed as the job frames it at 256×256: head at the top middle, shoulders at about 55 % height) moved,
  scaled and varied per figure: head size, torso width, hair style, collar, the pad band the framing adds
  below a portrait, and every colour;
* its **mouth** opens with the audio's loudness (`mouth_openings`: 40 ms RMS at each frame's time);
* its **hands** (and forearms) are drawn where the frame's pose puts them. Poses are the project's own: gestures
  from the audio (`echomimic2.gestures`, calm or lively, seeded) or the built-in loop (`echomimic2.pose`),
  in the official layout, mapped onto the figure as `pose_align` maps them onto a detected person
  (canonical body → the figure's shoulders and head); the network's pose input is the official drawing
  of that pose (`render_pose`).
* **speech** is espeak-ng (voices, variants, speeds, pitches and sentences below) with silence between and
  around the utterances, 16 kHz mono; tracks are made on a machine with espeak-ng (`write_tracks`) and read
  anywhere (`read_tracks`, numpy only).

Deterministic: a clip depends on (its seed, its track) only. Frames are drawn at 512×512 and box-filtered
to 256×256 (soft edges, as a resized portrait has).
"""
from __future__ import annotations

import math
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw

from echomimic2.gestures import audio_gesture_sequence
from echomimic2.pose import OFFICIAL_DRAW_PARAMS, default_pose_sequence, render_pose

SIZE = 256
FPS = 24.0
SAMPLE_RATE = 16_000
SUPERSAMPLE = 2
# Canonical pose coordinates (768 box, normalised) → this layout, normalised: the similarity that
# pose_align found for the demo figure framed at 256×256 (scale 1.05, shift -0.02, +0.04).
CANONICAL_SCALE, CANONICAL_SHIFT = 1.05, (-0.0208, 0.0399)
PIVOT = (128.0, 140.0)  # figures are scaled about this point (between the shoulders)
FINGERS = ((1, 2, 3, 4), (5, 6, 7, 8), (9, 10, 11, 12), (13, 14, 15, 16), (17, 18, 19, 20))
PALM = (0, 1, 5, 9, 13, 17)
MOUTH_CLOSED = 0.08  # openings below this are drawn as the closed mouth

TEXTS = (
    "Hello! This is a short demo of the batch factory.",
    "Welcome. Every row becomes one video.",
    "The quick brown fox jumps over the lazy dog.",
    "Please remember to bring your umbrella tomorrow.",
    "We measured the speed on a single card.",
    "Good morning, and thank you for coming today.",
    "Numbers one, two, three, four and five.",
    "She sells sea shells by the sea shore.",
    "How much wood would a woodchuck chuck?",
    "The weather will be sunny with a light breeze.",
    "Turn left at the second traffic light.",
    "I think that is a very good question.",
    "Our train leaves at half past nine.",
    "Could you say that again, a little slower?",
    "Every picture tells a story of its own.",
    "Let us begin with a simple example.",
    "The meeting has been moved to Thursday.",
    "Yes. No. Maybe. Absolutely not.",
    "Water boils at one hundred degrees.",
    "This sentence is spoken by a robot voice.",
    "Rendering many clips at once is faster.",
    "A rainbow has seven colours in it.",
    "My favourite fruit is a ripe banana.",
    "Look at the hands while I am talking.",
    "Open the window, it is warm in here.",
    "The library closes early on Sundays.",
    "Bright stars shine above the quiet hills.",
    "Keep calm and carry on speaking.",
    "Stop! Wait a moment. Now go ahead.",
    "Mathematics is the language of nature.",
    "Our cat sleeps all day on the sofa.",
    "Can you hear me clearly at the back?",
)
VOICES = ("en-us", "en-gb", "en-gb-scotland", "en-gb-x-rp", "en-029", "en-gb-x-gbclan")
VARIANTS = ("", "+m1", "+m3", "+m7", "+f1", "+f2", "+f4", "+klatt")


# --------------------------------------------------------------------------------------------------
# Speech tracks (espeak-ng, made once on a machine that has it)


def _espeak(text: str, voice: str, speed: int, pitch: int) -> np.ndarray:
    espeak = shutil.which("espeak-ng")
    if espeak is None:
        raise SystemExit("espeak-ng is not on PATH: apt-get install espeak-ng")
    import librosa  # the machine that makes tracks has the project's requirements

    with tempfile.TemporaryDirectory() as tmp:
        raw = Path(tmp) / "raw.wav"
        subprocess.run([espeak, "-v", voice, "-s", str(speed), "-p", str(pitch), "-w", str(raw), text], check=True)
        wave, _ = librosa.load(raw, sr=SAMPLE_RATE, mono=True)
    wave, _ = librosa.effects.trim(wave, top_db=40)
    return wave.astype(np.float32)


def speech_track(seed: int) -> np.ndarray:
    """One track: silence, one or two utterances with silence between, silence; float32 16 kHz, ≤ ~10 s."""
    rng = np.random.default_rng([seed, 7])
    pieces = [np.zeros(int(rng.uniform(0.2, 1.0) * SAMPLE_RATE), np.float32)]
    for k in range(int(rng.integers(1, 3))):
        if k:
            pieces.append(np.zeros(int(rng.uniform(0.4, 1.4) * SAMPLE_RATE), np.float32))
        voice = VOICES[rng.integers(len(VOICES))] + VARIANTS[rng.integers(len(VARIANTS))]
        wave = _espeak(TEXTS[rng.integers(len(TEXTS))], voice, int(rng.integers(120, 200)), int(rng.integers(25, 75)))
        pieces.append(wave[: int(4.5 * SAMPLE_RATE)] / (np.abs(wave).max() + 1e-6) * rng.uniform(0.45, 0.95))
    pieces.append(np.zeros(int(rng.uniform(0.3, 1.0) * SAMPLE_RATE), np.float32))
    track = np.concatenate(pieces)
    track += rng.normal(0, 2e-4, len(track)).astype(np.float32)  # a recording's noise floor
    return track.astype(np.float32)


def write_tracks(path: str | Path, count: int, seed: int = 0) -> None:
    """`count` tracks as int16 in one .npz (with whisper's mel filterbank, so readers need no librosa)."""
    import librosa

    tracks = [speech_track(seed * 100_003 + i) for i in range(count)]
    arrays = {f"track{i:04d}": np.round(np.clip(t, -1, 1) * 32767).astype(np.int16) for i, t in enumerate(tracks)}
    arrays["mel_filters"] = librosa.filters.mel(sr=SAMPLE_RATE, n_fft=400, n_mels=80)
    np.savez_compressed(path, **arrays)


def read_tracks(path: str | Path) -> tuple[list[np.ndarray], np.ndarray]:
    """(float32 16 kHz tracks, mel filterbank (80, 201)) from `write_tracks`' file."""
    with np.load(path) as data:
        names = sorted(name for name in data.files if name.startswith("track"))
        return [data[name].astype(np.float32) / 32767 for name in names], data["mel_filters"]


def halve(images: torch.Tensor, batch: int = 1024) -> torch.Tensor:
    """uint8 frames (N, H, W, 3) → (N, H/2, W/2, 3), a 2×2 box filter (as PIL's BOX resize), rounded: the data
    set at half the tiny preset's size (the trainer's small steps, the evaluation's 128²)."""
    out = [F.avg_pool2d(images[i : i + batch].permute(0, 3, 1, 2).float(), 2).round().to(torch.uint8).permute(0, 2, 3, 1)
           for i in range(0, len(images), batch)]
    return torch.cat(out)


def mouth_openings(wave: np.ndarray, fps: float, n_frames: int) -> np.ndarray:
    """How open the mouth is at each video frame, 0 (closed) … 1: the 40 ms RMS around the frame's time,
    −42 dBFS → 0 and −18 dBFS → 1, with a fast opening and a slightly slower closing."""
    wave = np.asarray(wave, dtype=np.float32).reshape(-1)
    half = int(0.02 * SAMPLE_RATE)
    centres = (np.arange(n_frames) / fps * SAMPLE_RATE).astype(np.int64)
    padded = np.pad(wave, (half, half))
    windows = padded[np.clip(centres[:, None] + np.arange(2 * half)[None, :], 0, len(padded) - 1)]
    decibels = 20 * np.log10(np.sqrt(np.mean(windows.astype(np.float64) ** 2, axis=1)) + 1e-8)
    target = np.clip((decibels + 42.0) / 24.0, 0.0, 1.0)
    opening, value = np.zeros(n_frames), 0.0
    for i, t in enumerate(target):
        value += (0.8 if t > value else 0.5) * (t - value)
        opening[i] = value
    return opening


# --------------------------------------------------------------------------------------------------
# Figures


@dataclass(frozen=True)
class Figure:
    scale: float = 1.0
    shift: tuple[float, float] = (0.0, 0.0)
    head: tuple[float, float] = (1.0, 1.0)  # width, height factors
    torso: float = 1.0  # width factor
    hair_style: int = 0  # 0 short, 1 long, 2 none, 3 tall
    collar: bool = True
    pad_band: int = 225  # rows from here down are background (the framing's padding); 256: none
    background: tuple[int, int, int] = (206, 222, 232)
    background_bottom: tuple[int, int, int] = (206, 222, 232)
    skin: tuple[int, int, int] = (238, 196, 160)
    shirt: tuple[int, int, int] = (52, 98, 160)
    hair: tuple[int, int, int] = (70, 45, 30)
    eyes: tuple[int, int, int] = (50, 40, 35)
    lips: tuple[int, int, int] = (170, 60, 60)

    def at(self, x: float, y: float) -> tuple[float, float]:
        """A point of the base layout (the demo figure framed at 256) → this figure's 256-pixel frame."""
        return (PIVOT[0] + self.scale * (x - PIVOT[0]) + self.shift[0], PIVOT[1] + self.scale * (y - PIVOT[1]) + self.shift[1])

    def on_head(self, x: float, y: float) -> tuple[float, float]:
        """A face point of the base layout, with the head's own proportions (about its centre 128, 60)."""
        return self.at(128 + (x - 128) * self.head[0], 60 + (y - 60) * self.head[1])

    @property
    def mouth_box(self) -> tuple[int, int, int, int]:
        """(left, top, right, bottom) pixels around the mouth, open or closed."""
        (x0, y0), (x1, y1) = self.on_head(112, 78), self.on_head(144, 102)
        return int(x0), int(y0), int(math.ceil(x1)), int(math.ceil(y1))


def demo_figure() -> Figure:
    """The manifest's figure (`manifests/assets/figure.png` framed at 256): the middle of the distribution."""
    return Figure()


def _colour(rng: np.random.Generator, hue: tuple[float, float], sat: tuple[float, float], val: tuple[float, float]) -> tuple[int, int, int]:
    import colorsys

    r, g, b = colorsys.hsv_to_rgb(rng.uniform(*hue) % 1.0, rng.uniform(*sat), rng.uniform(*val))
    return int(r * 255), int(g * 255), int(b * 255)


def random_figure(seed: int) -> Figure:
    rng = np.random.default_rng([seed, 11])
    skins = ((238, 196, 160), (224, 172, 140), (198, 140, 100), (150, 100, 70), (110, 72, 50), (250, 214, 190))
    skin = np.array(skins[rng.integers(len(skins))]) + rng.integers(-12, 13, 3)
    background = _colour(rng, (0, 1), (0.05, 0.45), (0.35, 0.95))
    gradient = rng.random() < 0.3
    return Figure(
        scale=float(rng.uniform(0.88, 1.12)),
        shift=(float(rng.uniform(-12, 12)), float(rng.uniform(-8, 8))),
        head=(float(rng.uniform(0.85, 1.15)), float(rng.uniform(0.9, 1.1))),
        torso=float(rng.uniform(0.85, 1.2)),
        hair_style=int(rng.integers(4)),
        collar=bool(rng.random() < 0.6),
        pad_band=int(rng.integers(218, 234)) if rng.random() < 0.4 else SIZE,
        background=background,
        background_bottom=_colour(rng, (0, 1), (0.05, 0.45), (0.35, 0.95)) if gradient else background,
        skin=tuple(int(v) for v in np.clip(skin, 0, 255)),
        shirt=_colour(rng, (0, 1), (0.3, 0.9), (0.3, 0.9)),
        hair=_colour(rng, (0.02, 0.12), (0.2, 0.8), (0.05, 0.6)) if rng.random() < 0.85 else _colour(rng, (0, 1), (0.5, 1), (0.5, 1)),
        eyes=_colour(rng, (0, 1), (0.2, 0.8), (0.1, 0.4)),
        lips=_colour(rng, (0.95, 1.02), (0.4, 0.8), (0.45, 0.8)),
    )


def _darker(colour, factor: float = 0.78) -> tuple[int, int, int]:
    return tuple(int(c * factor) for c in colour)


def draw_frame(figure: Figure, hands: np.ndarray | None, mouth: float) -> np.ndarray:
    """uint8 (256, 256, 3): the figure with its mouth `mouth` open (0…1) and hands at `hands`
    ((2, 21, 2) pixel coordinates in the 256 frame, e.g. `hand_pixels(pose)`), or resting without."""
    k = SUPERSAMPLE
    image = Image.new("RGB", (SIZE * k, SIZE * k), figure.background)
    draw = ImageDraw.Draw(image)
    if figure.background_bottom != figure.background:
        top, bottom = np.array(figure.background), np.array(figure.background_bottom)
        for row in range(0, SIZE * k, 4):
            draw.rectangle((0, row, SIZE * k, row + 4), fill=tuple(int(v) for v in top + (bottom - top) * row / (SIZE * k)))

    def p(x, y):  # base layout → supersampled pixels
        fx, fy = figure.at(x, y)
        return fx * k, fy * k

    def h(x, y):
        fx, fy = figure.on_head(x, y)
        return fx * k, fy * k

    def box(a, b):
        return (*a, *b)

    skin, shirt, sleeve, hair = figure.skin, figure.shirt, _darker(figure.shirt), figure.hair
    half_torso = 70 * figure.torso
    # long hair behind the head and shoulders
    if figure.hair_style == 1:
        draw.rounded_rectangle(box(h(94, 20), h(162, 118)), radius=int(24 * k * figure.scale), fill=hair)
    # torso, shoulders and static upper arms
    draw.rounded_rectangle(box(p(128 - half_torso, 119), p(128 + half_torso, 300)), radius=int(35 * k * figure.scale), fill=shirt)
    # neck and collar
    draw.rectangle(box(p(113, 90), p(143, 124)), fill=skin)
    if figure.collar:
        draw.polygon([p(108, 119), p(128, 139), p(148, 119)], fill=(235, 235, 240))
    # ears, head, hair
    draw.ellipse(box(h(98, 49), h(106, 69)), fill=skin)
    draw.ellipse(box(h(150, 49), h(158, 69)), fill=skin)
    draw.ellipse(box(h(100, 17), h(156, 103)), fill=skin)
    if figure.hair_style in (0, 1):
        draw.chord(box(h(97, 11), h(159, 69)), start=180, end=360, fill=hair)
        draw.polygon([h(98, 40), h(103, 64), h(107, 40)], fill=hair)
        draw.polygon([h(158, 40), h(153, 64), h(149, 40)], fill=hair)
    elif figure.hair_style == 3:
        draw.ellipse(box(h(99, -2), h(157, 44)), fill=hair)
    # face: brows, eyes, nose, mouth
    width = max(1, int(2 * k * figure.scale))
    draw.line((*h(111, 53), *h(123, 51)), fill=_darker(hair, 0.9), width=width)
    draw.line((*h(133, 51), *h(145, 53)), fill=_darker(hair, 0.9), width=width)
    for cx in (117, 139):
        draw.ellipse(box(h(cx - 5.5, 59), h(cx + 5.5, 67)), fill=(255, 255, 255))
        draw.ellipse(box(h(cx - 2.5, 60), h(cx + 2.5, 66)), fill=figure.eyes)
    draw.line((*h(128, 67), *h(125, 80), *h(130, 81)), fill=_darker(skin, 0.8), width=max(1, int(1.5 * k * figure.scale)))
    opening = float(np.clip(mouth, 0.0, 1.0))
    if opening < MOUTH_CLOSED:
        draw.arc(box(h(116, 80), h(140, 94)), start=20, end=160, fill=figure.lips, width=width)
    else:
        draw.ellipse(box(h(118, 86 - 1.5 - 3 * opening), h(138, 88 + 1.5 + 6 * opening)), fill=figure.lips)
        draw.ellipse(box(h(120.5, 86.5 - 2 * opening), h(135.5, 87.5 + 5 * opening)), fill=(70, 22, 30))
    # the framing's pad band: background below it (hands and forearms are drawn over it)
    if figure.pad_band < SIZE:
        draw.rectangle((0, figure.pad_band * k, SIZE * k, SIZE * k), fill=figure.background_bottom)
    # arms and hands
    shoulders = {0: p(128 - half_torso + 8, 136), 1: p(128 + half_torso - 8, 136)}  # image left, image right
    if hands is None:
        hands = np.stack([rest_hands(figure)[0], rest_hands(figure)[1]])
    for hand in np.asarray(hands, dtype=np.float64):
        points = hand * k
        wrist = points[0]
        side = 0 if wrist[0] < SIZE * k / 2 else 1
        shoulder = np.array(shoulders[side])
        outward = -1.0 if side == 0 else 1.0
        elbow = shoulder + 0.45 * (wrist - shoulder) + np.array([outward * 16 * k * figure.scale, 8 * k * figure.scale])
        draw.line((*shoulder, *elbow), fill=sleeve, width=int(22 * k * figure.scale), joint="curve")
        draw.ellipse(box(elbow - 10 * k * figure.scale, elbow + 10 * k * figure.scale), fill=sleeve)
        draw.line((*elbow, *wrist), fill=sleeve, width=int(17 * k * figure.scale))
        palm = cv2.convexHull(points[list(PALM)].astype(np.float32)).reshape(-1, 2)
        draw.polygon([tuple(v) for v in palm], fill=skin)
        for finger in FINGERS:
            chain = [tuple(points[0] * 0.2 + points[finger[0]] * 0.8)] + [tuple(points[j]) for j in finger]
            draw.line([c for point in chain for c in point], fill=skin, width=max(2, int(4.5 * k * figure.scale)), joint="curve")
        draw.line((*points[1], *points[2], *points[3], *points[4]), fill=_darker(skin, 0.88), width=max(1, int(1.0 * k)))
    return np.asarray(image.resize((SIZE, SIZE), Image.BOX))


# --------------------------------------------------------------------------------------------------
# Poses on a figure


def pose_on_figure(figure: Figure, pose: dict) -> dict:
    """A canonical pose (768 box, the layout gestures and the loop use) mapped onto `figure`, normalised
    to the 256 frame: what pose_align does for a detected person, here with the figure's known anchors."""
    hands = np.asarray(pose["hands"], dtype=np.float64)
    pixels = (CANONICAL_SCALE * hands + np.array(CANONICAL_SHIFT)) * SIZE
    mapped = np.stack([np.array(figure.at(x, y)) for x, y in pixels.reshape(-1, 2)]).reshape(hands.shape) / SIZE
    return {"hands": mapped, "hands_score": np.ones((2, 21)), "draw_pose_params": list(OFFICIAL_DRAW_PARAMS),
            "num": pose.get("num", 0)}


def hand_pixels(pose: dict) -> np.ndarray:
    """(2, 21, 2) pixel coordinates in the 256 frame of a pose normalised to it."""
    return np.asarray(pose["hands"], dtype=np.float64) * SIZE


def rest_hands(figure: Figure) -> np.ndarray:
    """Hands resting low in front of the body (the built-in loop's first frame) on `figure`, pixels."""
    return hand_pixels(pose_on_figure(figure, default_pose_sequence(1, FPS)[0]))


def clip_poses(wave: np.ndarray, n_frames: int, seed: int, figure: Figure) -> list[dict]:
    """A clip's poses on `figure`: calm or lively gestures from its audio (seeded), or the built-in loop
    from a seeded point of its 12 s cycle."""
    rng = np.random.default_rng([seed, 13])
    kind = rng.choice(["calm", "lively", "loop"], p=[0.35, 0.45, 0.2])
    if kind == "loop":
        offset = int(rng.integers(0, int(12 * FPS)))
        canonical = default_pose_sequence(offset + n_frames, FPS)[offset:]
    else:
        canonical = audio_gesture_sequence(wave, FPS, n_frames, seed=int(rng.integers(1 << 30)), style=str(kind))
    return [pose_on_figure(figure, pose) for pose in canonical]


@dataclass
class Clip:
    frames: np.ndarray  # uint8 (n, 256, 256, 3)
    pose_images: np.ndarray  # uint8 (n, 256, 256, 3): the official drawing of each pose
    reference: np.ndarray  # uint8 (256, 256, 3): the same figure, mouth mostly closed, hands somewhere
    mouth: np.ndarray  # (n,) openings
    poses: list[dict]


def make_clip(seed: int, wave: np.ndarray, n_frames: int, figure: Figure | None = None) -> Clip:
    """Clip `seed` over `wave` (float32 16 kHz), `n_frames` frames at FPS; the figure is `random_figure(seed)`
    unless given."""
    figure = random_figure(seed) if figure is None else figure
    rng = np.random.default_rng([seed, 17])
    poses = clip_poses(wave, n_frames, seed, figure)
    mouth = mouth_openings(wave, FPS, n_frames)
    frames = np.stack([draw_frame(figure, hand_pixels(pose), m) for pose, m in zip(poses, mouth)])
    pose_images = np.stack([render_pose(pose, SIZE, SIZE) for pose in poses])
    reference_hands = rest_hands(figure) if rng.random() < 0.5 else hand_pixels(poses[int(rng.integers(n_frames))])
    reference = draw_frame(figure, reference_hands, 0.0 if rng.random() < 0.7 else float(rng.uniform(0, 1)))
    return Clip(frames, pose_images, reference, mouth, poses)


def main() -> None:  # python -m training.talking_figures OUT.npz [COUNT]: the speech tracks
    import sys

    out = Path(sys.argv[1]) if len(sys.argv) > 1 else Path(".tmp/talking/tracks.npz")
    count = int(sys.argv[2]) if len(sys.argv) > 2 else 80
    out.parent.mkdir(parents=True, exist_ok=True)
    write_tracks(out, count)
    print(f"wrote {out} ({out.stat().st_size / 1e6:.1f} MB, {count} tracks)")


if __name__ == "__main__":
    main()
