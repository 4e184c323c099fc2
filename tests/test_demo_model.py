"""The tiny preset's training code (issue 15): the synthetic talking-figure data set and the trainer's
match with inference. CPU, a few seconds.

The checks on a *trained* tiny model (frames like the reference, mouth with the audio, hands with the poses,
no seams, same seed same video) wait for weights from a full training run: the first run (2026-12-02,
training/runs/) was too short to give recognisable frames, so the tiny preset still builds random networks.
"""
import os

import numpy as np
import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from echomimic2.config import VAE_SCALING_FACTOR, tiny_unet_config, tiny_vae_config  # noqa: E402
from echomimic2.networks import build_networks  # noqa: E402
from echomimic2.pose import default_pose_sequence  # noqa: E402
from echomimic2.scheduler import official_scheduler  # noqa: E402
from training import talking_figures as tf  # noqa: E402
from training.train_tiny import halve, noised_and_velocity, normalise_vae_latents, reference_kv_with_grad  # noqa: E402

FRAMES = 24


def _speech_then_silence() -> np.ndarray:
    """1 s of a loud vowel-like buzz (amplitude-modulated at 4 Hz, as syllables are), then 1 s of silence."""
    t = np.arange(tf.SAMPLE_RATE) / tf.SAMPLE_RATE
    buzz = 0.6 * np.sin(2 * np.pi * 140 * t) * (0.55 + 0.45 * np.sin(2 * np.pi * 4 * t))
    return np.concatenate([buzz, np.zeros(tf.SAMPLE_RATE)]).astype(np.float32)


@pytest.fixture(scope="module")
def clip():
    return tf.make_clip(3, _speech_then_silence(), 2 * FRAMES)


def test_clips_are_deterministic_and_figures_vary(clip):
    again = tf.make_clip(3, _speech_then_silence(), 2 * FRAMES)
    assert np.array_equal(clip.frames, again.frames) and np.array_equal(clip.pose_images, again.pose_images)
    other = tf.make_clip(4, _speech_then_silence(), 2 * FRAMES)
    # another seed: another figure (colours, shapes), not a few pixels apart
    assert np.abs(clip.reference.astype(int) - other.reference.astype(int)).mean() > 20
    assert clip.frames.shape == (2 * FRAMES, tf.SIZE, tf.SIZE, 3) and clip.frames.dtype == np.uint8


def test_mouth_opens_with_the_speech_and_stays_shut_in_silence(clip):
    speech, silence = clip.mouth[:FRAMES], clip.mouth[FRAMES + 5 :]
    assert speech.mean() > 0.5 and np.all(silence < tf.MOUTH_CLOSED)  # shut within 5 frames (~0.2 s)
    left, top, right, bottom = tf.random_figure(3).mouth_box
    # the drawn mouth: how far the mouth box is from the closed-mouth frame, per frame
    closed = tf.draw_frame(tf.random_figure(3), tf.hand_pixels(clip.poses[-1]), 0.0)[top:bottom, left:right].astype(int)
    change = np.abs(clip.frames[:, top:bottom, left:right].astype(int) - closed).mean(axis=(1, 2, 3))
    assert np.corrcoef(change, clip.mouth)[0, 1] > 0.9
    assert change[FRAMES + 5 :].max() < 1.0  # silence: the mouth box is the closed mouth


def test_hands_are_drawn_where_the_poses_put_them():
    figure = tf.random_figure(5)
    poses = [tf.pose_on_figure(figure, pose) for pose in default_pose_sequence(48, tf.FPS)[::12]]
    skin = np.array(figure.skin)
    for pose in poses:
        hands = tf.hand_pixels(pose)
        frame = tf.draw_frame(figure, hands, 0.0).astype(int)
        for hand in hands:  # skin-coloured pixels around the palm's centre, none far below the fingers
            centre = hand[list(tf.PALM)].mean(axis=0).round().astype(int)
            x0, y0 = np.clip(centre - 10, 0, tf.SIZE - 1)
            x1, y1 = np.clip(centre + 10, 0, tf.SIZE - 1)
            patch = frame[y0 : y1 + 1, x0 : x1 + 1]
            assert (np.abs(patch - skin).sum(axis=2) < 30).mean() > 0.3


def test_pose_mapping_is_the_figures_own_transform():
    figure = tf.Figure(scale=1.1, shift=(5.0, -3.0))
    canonical = default_pose_sequence(1, tf.FPS)[0]
    mapped = tf.pose_on_figure(figure, canonical)["hands"] * tf.SIZE
    base = (tf.CANONICAL_SCALE * np.asarray(canonical["hands"]) + np.array(tf.CANONICAL_SHIFT)) * tf.SIZE
    expected = np.array(tf.PIVOT) + 1.1 * (base - np.array(tf.PIVOT)) + np.array([5.0, -3.0])
    assert np.allclose(mapped, expected)


def test_mouth_openings_follow_loudness():
    wave = _speech_then_silence()
    quiet = 0.05 * wave
    loud, soft = tf.mouth_openings(wave, tf.FPS, 48), tf.mouth_openings(quiet, tf.FPS, 48)
    assert loud[:24].mean() > soft[:24].mean() + 0.2
    assert np.all(loud[29:] < tf.MOUTH_CLOSED)


def test_training_targets_are_the_schedulers():
    scheduler = official_scheduler()
    generator = torch.Generator().manual_seed(0)
    x0 = torch.randn((3, 4, 2, 8, 8), generator=generator)
    noise = torch.randn((3, 4, 2, 8, 8), generator=generator)
    t = torch.tensor([999, 332, 17])
    x_t, v = noised_and_velocity(scheduler.alphas_cumprod, x0, noise, t)
    for i in range(3):
        assert torch.allclose(x_t[i], scheduler.add_noise(x0[i : i + 1], noise[i : i + 1], t[i : i + 1])[0], atol=1e-6)
        assert torch.allclose(v[i], scheduler.get_velocity(x0[i : i + 1], noise[i : i + 1], t[i : i + 1])[0], atol=1e-6)
    assert scheduler.config.prediction_type == "v_prediction" and scheduler.config.rescale_betas_zero_snr


@pytest.fixture(scope="module")
def networks():
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        return build_networks(tiny_unet_config(), tiny_vae_config())


def test_reference_attention_in_training_is_the_samplers(networks):
    """Per-row reference banks (training: one reference per clip) give what the sampler's shared bank gives."""
    latent = torch.randn((1, 4, 8, 8), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        banks = networks.reference_unet(latent)
        shared = networks.denoising_unet.reference_kv(banks)
        per_row = reference_kv_with_grad(networks.denoising_unet, banks, frames=3)
        sample = torch.randn((1, 4, 3, 8, 8), generator=torch.Generator().manual_seed(2))
        audio = torch.randn((1, 3, 50, 384), generator=torch.Generator().manual_seed(3))
        a = networks.denoising_unet(sample, 500, audio, None, shared)
        b = networks.denoising_unet(sample, 500, audio, None, per_row)
    assert set(shared) == set(per_row) and all(per_row[k][0].shape[0] == 3 for k in per_row)
    assert torch.allclose(a, b, atol=1e-5)


def test_vae_latent_normalisation_keeps_decoding_and_gives_unit_spread(networks):
    import copy

    vae = copy.deepcopy(networks.vae).eval()
    frames = torch.from_numpy(np.stack([tf.draw_frame(tf.random_figure(s), None, 0.5) for s in range(3)]))
    pixels = halve(halve(frames)).permute(0, 3, 1, 2).float() / 127.5 - 1  # 64×64: fast
    with torch.no_grad():
        before = vae.decode(vae.encode(pixels).latent_dist.mean).sample
        normalise_vae_latents(vae, pixels)
        mean = vae.encode(pixels).latent_dist.mean
        after = vae.decode(mean).sample
    assert torch.allclose(before, after, atol=1e-4)
    assert abs((mean * VAE_SCALING_FACTOR).std().item() - 1.0) < 1e-3
