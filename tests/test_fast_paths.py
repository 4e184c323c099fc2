"""Fast paths of the GPU work (issue 5) give the same numbers as the plain path, on the CPU."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from echomimic2.bench import random_networks, spec_flops
from echomimic2.config import tiny_unet_config, tiny_vae_config
from echomimic2.pose_encoder import PoseEncoder
from echomimic2.sampler import _batched, encode_window_poses, host_pose_images, segment_windows


@pytest.mark.parametrize("items, size", [(14, 4), (13, 4), (14, 2), (5, 7), (1, 3)])
def test_window_batches_are_even_and_cover_every_window(items, size):
    batches = _batched(list(range(items)), size)
    assert [i for batch in batches for i in batch] == list(range(items))
    lengths = [len(batch) for batch in batches]
    assert max(lengths) <= size and max(lengths) - min(lengths) <= 1


def test_per_window_pose_features_equal_whole_segment_encoding():
    torch.manual_seed(0)
    encoder = PoseEncoder(3, (8, 8, 16, 16), 32).eval()
    torch.nn.init.normal_(encoder.conv_out.weight)  # upstream starts it at zero, which would hide any mix-up
    images = np.random.default_rng(0).integers(0, 256, (30, 64, 64, 3), dtype=np.uint8)
    with torch.no_grad():
        whole = encoder(torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255.0)  # (n, C0, h, w)
    host = host_pose_images(images, torch.device("cpu"))
    for step in range(3):
        windows = segment_windows(30, step)
        for group in _batched(windows, 2):
            features = encode_window_poses(encoder, host, group, torch.float32)
            expected = torch.stack([whole[window] for window in group]).permute(0, 2, 1, 3, 4)
            torch.testing.assert_close(features, expected, rtol=1e-5, atol=1e-5)
    # A non-consecutive group (the official wrap-around schedule) takes the gather path.
    group = [[28, 29, 0, 1], [5, 6, 7, 8]]
    features = encode_window_poses(encoder, host, group, torch.float32)
    torch.testing.assert_close(features, torch.stack([whole[w] for w in group]).permute(0, 2, 1, 3, 4), rtol=1e-5, atol=1e-5)


def test_bench_networks_initialise_every_parameter_on_the_target_device():
    networks = random_networks(tiny_unet_config(), tiny_vae_config(), torch.device("cpu"), torch.float32, seed=1)
    again = random_networks(tiny_unet_config(), tiny_vae_config(), torch.device("cpu"), torch.float32, seed=1)
    for module, twin in zip(networks, again):
        for (name, tensor), (_, twin_tensor) in zip(module.state_dict().items(), twin.state_dict().items()):
            assert torch.isfinite(tensor).all(), name
            assert torch.equal(tensor, twin_tensor), f"{name} does not depend on the seed only"
    pe = dict(networks.denoising_unet.named_buffers())
    assert all(torch.isfinite(t).all() and t.abs().max() <= 1 for t in pe.values())


def test_spec_flops_follow_the_official_counts():
    flops = spec_flops(768, 120, 6, 1.0)
    windows = sum(len(segment_windows(120, s)) for s in range(6))
    assert flops["denoise"] == pytest.approx(windows * 4.210e13, rel=3e-3)  # spec §12.2, 768² no-CFG window
    assert flops["decode"] == pytest.approx(120 * 5.754e12)
    assert spec_flops(768, 120, 30, 2.5)["denoise"] / (sum(len(segment_windows(120, s)) for s in range(30))) == pytest.approx(9.303e13, rel=3e-3)


@pytest.mark.slow
def test_bench_runs_on_the_cpu_and_says_so(capsys):
    from echomimic2.bench import bench_command

    assert bench_command("acc", 12, 768, json_out=False) == 0
    out = capsys.readouterr().out
    assert "no GPU" in out and "per denoising step" in out
