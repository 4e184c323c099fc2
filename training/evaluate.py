"""What a tiny model's frames show, measured on talking figures it never saw (seeds from 1000; training uses
0 … clips−1) over the demo's own speech: the figures `tests/test_demo_model.py` holds the shipped model to, and
what `train_tiny` prints at the end of a run (so a run on a GPU says whether the mouth has been learned yet).

    python -m training.evaluate                      # the shipped demo model (EchoMimicV2.tiny())
    python -m training.evaluate --weights OUT/tiny_demo.safetensors
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch

from training import talking_figures as tf

REPO = Path(__file__).resolve().parent.parent
SPEECH = REPO / "manifests" / "assets" / "welcome.wav"  # espeak-ng speech, 3.0 s, one 0.25 s pause
HELD_OUT = (1000, 1001, 1002)


def read_speech(path: Path = SPEECH) -> np.ndarray:
    """The 16-bit mono 16 kHz file as float32 (stdlib `wave`: the GPU machine's trainer has no soundfile)."""
    import wave

    with wave.open(str(path)) as file:
        if (file.getnchannels(), file.getsampwidth(), file.getframerate()) != (1, 2, tf.SAMPLE_RATE):
            raise ValueError(f"{path}: expected 16-bit mono {tf.SAMPLE_RATE} Hz")
        return np.frombuffer(file.readframes(file.getnframes()), dtype="<i2").astype(np.float32) / 32768


def at_size(size: int, images: np.ndarray) -> np.ndarray:
    """Frames (n, 256, 256, 3) or one image at `size` (2×2 box filters, as the trainer's small steps)."""
    batch = torch.from_numpy(np.array(images if images.ndim == 4 else images[None]))
    while batch.shape[1] > size:
        batch = tf.halve(batch)
    return batch.numpy() if images.ndim == 4 else batch.numpy()[0]


def render(model, whisper, wave: np.ndarray, reference: np.ndarray, poses: list[dict], size: int, seed: int = 0) -> np.ndarray:
    """int (n, size, size, 3) frames of `model` (an EchoMimicV2 of the tiny preset) for one clip, n = len(poses)."""
    from echomimic2.audio import frame_windows
    from echomimic2.pose import render_pose

    tokens = frame_windows(whisper(wave), tf.FPS, 0, len(poses))
    pose_images = np.stack([render_pose(pose, size, size) for pose in poses])
    return model.render(at_size(size, reference), tokens, pose_images, seed=seed, first_frame=0).astype(int)


def likeness(videos: dict[int, np.ndarray], references: dict[int, np.ndarray]) -> dict[int, tuple[float, float]]:
    """Per figure: mean absolute difference (levels) of its video to its own reference and to the other's."""
    (a, b) = videos
    size = videos[a].shape[1]
    return {seed: (float(np.abs(videos[seed] - at_size(size, references[seed])).mean()),
                   float(np.abs(videos[seed] - at_size(size, references[other])).mean()))
            for seed, other in ((a, b), (b, a))}


REST_FRAMES = 5  # a silent frame rests from this many frames after (and before) speech: the audio window
# (frame_windows: -80 … +100 ms) and the drawn data's own closing both stay inside it


def resting_frames(openings: np.ndarray) -> np.ndarray:
    """Silent frames at least REST_FRAMES from any speech frame (where the audio says nothing but silence)."""
    speech = np.flatnonzero(openings >= tf.MOUTH_CLOSED)
    frames = np.arange(len(openings))
    nearest = np.abs(frames[:, None] - speech[None, :]).min(axis=1) if len(speech) else np.full(len(frames), len(frames))
    return nearest >= REST_FRAMES


def mouth_motion(video: np.ndarray, still: np.ndarray, figure: tf.Figure, openings: np.ndarray) -> dict[str, float]:
    """The mouth's motion that the audio causes: per frame, how far the mouth box of `video` (rendered over the
    speech) is from that of `still` (the same figure, poses and seed over silent audio). `r`: its correlation with
    the drawn openings; `rest_ratio`: its mean in resting frames (`resting_frames`) over its mean in speech frames
    (1: the audio moves the mouth as much in silence as in speech); `pause_ratio`: the same for silent frames near
    speech (short pauses, where the audio window still holds speech). The difference to a silent-audio render
    isolates the audio: the mouth box also changes with the hands and the frame's noise, and measured against a
    resting mouth that change alone gave the demo model r = 0.58 over the speech, 0.57 over silent audio. Any frame
    size: the mouth box scales from the drawing's 256²."""
    scale = video.shape[1] / tf.SIZE
    left, top, right, bottom = (int(figure.mouth_box[0] * scale), int(figure.mouth_box[1] * scale),
                                int(np.ceil(figure.mouth_box[2] * scale)), int(np.ceil(figure.mouth_box[3] * scale)))
    distance = np.abs(video[:, top:bottom, left:right].astype(float) - still[:, top:bottom, left:right]).mean(axis=(1, 2, 3))
    speech, resting = openings >= tf.MOUTH_CLOSED, resting_frames(openings)
    pause = ~speech & ~resting
    return {"r": round(float(np.corrcoef(distance, openings)[0, 1]), 3),
            "rest_ratio": round(float(distance[resting].mean() / distance[speech].mean()), 3) if resting.any() else None,
            "pause_ratio": round(float(distance[pause].mean() / distance[speech].mean()), 3) if pause.any() else None}


def speech_then_silence(wave: np.ndarray, seconds: float = 1.0) -> np.ndarray:
    """`wave` followed by `seconds` of digital silence (the demo's speech has only a 0.25 s pause)."""
    return np.concatenate([wave, np.zeros(int(seconds * tf.SAMPLE_RATE), dtype=wave.dtype)])


def through_vae(model, frames: np.ndarray) -> np.ndarray:
    """uint8 frames (n, size, size, 3) after the model's VAE alone: the sampler's reference encoding of each frame,
    then its decoding of the latents (the pixels a render with perfect UNets would give)."""
    from echomimic2.sampler import decode_latents, encode_reference

    vae = model.networks.vae
    latents = torch.cat([encode_reference(vae, frame, vae.device, vae.dtype) for frame in frames])  # (n, 4, h, w)
    return decode_latents(vae, latents.permute(1, 0, 2, 3)[None], vae.dtype, batch=24)


def mouth_report(model, whisper, wave: np.ndarray, seed: int, size: int = tf.SIZE, ceiling: bool = True) -> dict:
    """`mouth_motion` of figure `seed` at `size`² over `wave` and 1 s of silence after it, and (`ceiling`) what
    perfect UNets would give: the drawn frames against the same frames with the mouth shut, through the VAE alone."""
    wave = speech_then_silence(wave)
    clip = tf.make_clip(seed, wave, video_frames(wave))
    figure = tf.random_figure(seed)
    video = render(model, whisper, wave, clip.reference, clip.poses, size)
    still = render(model, whisper, np.zeros_like(wave), clip.reference, clip.poses, size)
    result = mouth_motion(video, still, figure, clip.mouth)
    if ceiling:
        shut = np.stack([tf.draw_frame(figure, tf.hand_pixels(pose), 0.0) for pose in clip.poses])
        result["vae_ceiling"] = mouth_motion(through_vae(model, at_size(size, clip.frames)),
                                             through_vae(model, at_size(size, shut)), figure, clip.mouth)
    return result


def video_frames(wave: np.ndarray) -> int:
    return int(len(wave) / tf.SAMPLE_RATE * tf.FPS)


def hands_following(model, whisper, wave: np.ndarray, frames: int = 24) -> dict[str, float]:
    """Figure HELD_OUT[2] rendered twice at 256², hands low (the built-in loop) and the same poses 0.14 of the frame
    higher: per pose set, the fraction of frames whose hand region is closer to the drawing of its own poses."""
    from echomimic2.pose import default_pose_sequence

    figure = tf.random_figure(HELD_OUT[2])
    low = default_pose_sequence(frames, tf.FPS)
    raised = [dict(pose, hands=np.asarray(pose["hands"]) - np.array([0.0, 0.14])) for pose in low]
    reference = tf.draw_frame(figure, tf.rest_hands(figure), 0.0)
    truths, videos = {}, {}
    for name, canonical in (("low", low), ("raised", raised)):
        poses = [tf.pose_on_figure(figure, pose) for pose in canonical]
        truths[name] = np.stack([tf.draw_frame(figure, tf.hand_pixels(pose), 0.0) for pose in poses]).astype(int)
        videos[name] = render(model, whisper, wave, reference, poses, tf.SIZE)
    differs = np.abs(truths["low"] - truths["raised"]).sum(axis=3) > 60  # where the two drawings differ
    closer = {}
    for name, other in (("low", "raised"), ("raised", "low")):
        own = np.array([np.abs(videos[name][i] - truths[name][i])[differs[i]].mean() for i in range(frames)])
        wrong = np.array([np.abs(videos[name][i] - truths[other][i])[differs[i]].mean() for i in range(frames)])
        closer[name] = float((own < wrong).mean())
    return closer


def report(model, whisper, frames: int = 72) -> dict:
    """All of the above for one model: likeness at 128², mouth at 256² (figures HELD_OUT[:2]), hands."""
    wave = read_speech()
    clips = {seed: tf.make_clip(seed, wave, frames) for seed in HELD_OUT[:2]}
    small = {seed: render(model, whisper, wave, clip.reference, clip.poses, 128) for seed, clip in clips.items()}
    result = {"likeness_own_other": {seed: [round(v, 2) for v in pair]
                                     for seed, pair in likeness(small, {s: c.reference for s, c in clips.items()}).items()}}
    result["mouth"] = {seed: mouth_report(model, whisper, wave, seed) for seed in HELD_OUT[:2]}
    result["hands_closer_to_own_poses"] = hands_following(model, whisper, wave)
    return result


def main(argv: list[str] | None = None) -> None:
    from echomimic2 import EchoMimicV2
    from echomimic2.audio import WhisperFeatures
    from echomimic2.checkpoints import load_prefixed_networks

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--weights", help="a train_tiny output (default: the shipped demo weights)")
    args = parser.parse_args(argv)
    model = EchoMimicV2.tiny()
    if args.weights:
        load_prefixed_networks(model.networks, args.weights)
    print(json.dumps(report(model, WhisperFeatures.tiny(seed=0)), indent=1))


if __name__ == "__main__":
    main()
