"""Regenerate the demo manifest and its assets, all made by this project:
a drawn half-body figure (PIL), two short sentences of speech (espeak-ng, 16 kHz mono), and a pose folder
of official-format per-frame .npy dicts (the project's own gesture loop).

    python manifests/make_demo.py        # needs espeak-ng on PATH (apt-get install espeak-ng)
"""
from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import librosa
import numpy as np
import pandas as pd
import soundfile as sf
from PIL import Image, ImageDraw

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from echomimic2.pose import default_pose_sequence  # noqa: E402

ASSETS = HERE / "assets"
SIDE = 512
SPEECH = {
    "hello.wav": "Hello! This is a short demo of the batch factory.",
    "welcome.wav": "Welcome. Every row becomes one video.",
}
MAX_SPEECH_SECONDS = 4.0
POSE_FRAMES = 12


def draw_figure() -> Image.Image:
    """A front-facing half-body figure: head, hair, simple face, neck, shoulders, torso and arms."""
    image = Image.new("RGB", (SIDE, SIDE), (206, 222, 232))
    draw = ImageDraw.Draw(image)
    skin, shirt, shirt_dark, hair = (238, 196, 160), (52, 98, 160), (40, 76, 128), (70, 45, 30)
    # torso and shoulders, reaching the bottom edge like a half-body portrait
    draw.rounded_rectangle((116, 300, 396, 560), radius=70, fill=shirt)
    # arms hanging at the sides, forearms turning inwards, hands in front of the waist
    draw.polygon([(120, 330), (92, 470), (112, 512), (150, 512), (160, 360)], fill=shirt_dark)
    draw.polygon([(392, 330), (420, 470), (400, 512), (362, 512), (352, 360)], fill=shirt_dark)
    draw.ellipse((176, 452, 226, 500), fill=skin)
    draw.ellipse((286, 452, 336, 500), fill=skin)
    # neck with a collar
    draw.rectangle((226, 250, 286, 310), fill=skin)
    draw.polygon([(216, 300), (256, 340), (296, 300)], fill=(235, 235, 240))
    # head, ears, hair
    draw.ellipse((196, 160, 212, 200), fill=skin)
    draw.ellipse((300, 160, 316, 200), fill=skin)
    draw.ellipse((200, 96, 312, 268), fill=skin)
    draw.chord((194, 84, 318, 200), start=180, end=360, fill=hair)
    draw.polygon([(196, 142), (206, 190), (214, 142)], fill=hair)
    draw.polygon([(316, 142), (306, 190), (298, 142)], fill=hair)
    # face: brows, eyes, nose, mouth
    draw.line((222, 168, 246, 164), fill=hair, width=4)
    draw.line((266, 164, 290, 168), fill=hair, width=4)
    for cx in (234, 278):
        draw.ellipse((cx - 11, 178, cx + 11, 194), fill=(255, 255, 255))
        draw.ellipse((cx - 5, 180, cx + 5, 192), fill=(50, 40, 35))
    draw.line((256, 194, 250, 222, 260, 224), fill=(200, 150, 120), width=3)
    draw.arc((232, 222, 280, 250), start=20, end=160, fill=(170, 60, 60), width=4)
    return image


def synthesise(text: str, target: Path) -> None:
    """espeak-ng speech, resampled to 16 kHz mono 16-bit (small files), at most MAX_SPEECH_SECONDS."""
    espeak = shutil.which("espeak-ng")
    if espeak is None:
        raise SystemExit("espeak-ng is not on PATH: apt-get install espeak-ng")
    with tempfile.TemporaryDirectory() as tmp:
        raw = Path(tmp) / "raw.wav"
        subprocess.run([espeak, "-v", "en-us", "-s", "150", "-w", str(raw), text], check=True)
        wave, _ = librosa.load(raw, sr=16000, mono=True)
    wave, _ = librosa.effects.trim(wave, top_db=40)
    wave = wave[: int(MAX_SPEECH_SECONDS * 16000)]
    sf.write(target, wave, 16000, subtype="PCM_16")


def write_pose_folder(folder: Path) -> None:
    """Official per-frame format: ``<i>.npy`` holding a pickled dict (what np.save writes for a dict)."""
    folder.mkdir(parents=True, exist_ok=True)
    for i, pose in enumerate(default_pose_sequence(POSE_FRAMES, fps=24)):
        np.save(folder / f"{i}.npy", {**pose, "num": i}, allow_pickle=True)


def main() -> None:
    if ASSETS.exists():
        shutil.rmtree(ASSETS)
    ASSETS.mkdir()
    draw_figure().save(ASSETS / "figure.png", optimize=True)
    for name, text in SPEECH.items():
        synthesise(text, ASSETS / name)
    write_pose_folder(ASSETS / "pose_gesture")
    manifest = pd.DataFrame([
        dict(clip_id="demo-hello", image="assets/figure.png", audio="assets/hello.wav", pose=None, seed=0),
        dict(clip_id="demo-welcome", image="assets/figure.png", audio="assets/welcome.wav",
             pose="assets/pose_gesture", seed=1),
    ])
    manifest.to_parquet(HERE / "demo.parquet", index=False)
    total = sum(p.stat().st_size for p in ASSETS.rglob("*") if p.is_file())
    print(f"wrote {HERE / 'demo.parquet'} and {ASSETS} ({total / 1024:.0f} KiB)")


if __name__ == "__main__":
    main()
