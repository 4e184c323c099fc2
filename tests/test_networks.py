"""Networks: official key names/shapes on the meta device; tiny networks run end to end on CPU."""
import json
from pathlib import Path

import pytest
import torch
from diffusers import AutoencoderKL

from echomimic2.attention import Attention
from echomimic2.blocks import TransformerBlock
from echomimic2.config import official_unet_config, official_vae_config, tiny_unet_config
from echomimic2.denoising_unet import DenoisingUNet3D
from echomimic2.motion_module import MotionModule, sinusoidal_position_table
from echomimic2.pose_encoder import PoseEncoder
from echomimic2.reference_unet import ReferenceUNet2D

# Copies of spec/checkpoint_keys: every key, shape and dtype of the official checkpoints.
KEYS_DIR = Path(__file__).resolve().parent / "data" / "checkpoint_keys"


def spec_shapes(name: str) -> dict[str, list[int]]:
    return {k: v["shape"] for k, v in json.loads((KEYS_DIR / f"{name}.json").read_text()).items()}


def shapes(module: torch.nn.Module) -> dict[str, list[int]]:
    return {k: list(v.shape) for k, v in module.state_dict().items()}


def assert_same_keys(actual: dict, expected: dict) -> None:
    assert sorted(set(expected) - set(actual)) == [], "missing keys"
    assert sorted(set(actual) - set(expected)) == [], "unexpected keys"
    assert {k: v for k, v in actual.items() if expected[k] != v} == {}, "shape mismatches"


def official_pose_encoder() -> PoseEncoder:
    cfg = official_unet_config()
    return PoseEncoder(cfg.pose_conditioning_channels, cfg.pose_encoder_block_channels, cfg.block_out_channels[0])


@pytest.mark.parametrize(
    "name, build",
    [
        ("reference_unet", lambda: ReferenceUNet2D(official_unet_config())),
        ("denoising_unet", lambda: DenoisingUNet3D(official_unet_config())),
        ("pose_encoder", official_pose_encoder),
        ("vae_sd_vae_ft_mse", lambda: AutoencoderKL(**official_vae_config())),
    ],
)
def test_official_networks_have_the_checkpoint_keys_and_shapes(name, build):
    with torch.device("meta"):
        module = build()
    assert_same_keys(shapes(module), spec_shapes(name))


def test_motion_module_keys_are_the_motion_module_file():
    with torch.device("meta"):
        unet = DenoisingUNet3D(official_unet_config())
    motion = {k: v for k, v in shapes(unet).items() if ".motion_modules." in k}
    assert_same_keys(motion, spec_shapes("motion_module"))


def test_position_table_is_sin_even_cos_odd():
    table = sinusoidal_position_table(32, 8)[0]
    position = 5  # channels 2 and 3 share the frequency 1e4^(-2/8)
    frequency = 10000.0 ** (-2 / 8)
    assert table[position, 2].item() == pytest.approx(torch.sin(torch.tensor(position * frequency)).item(), abs=1e-6)
    assert table[position, 3].item() == pytest.approx(torch.cos(torch.tensor(position * frequency)).item(), abs=1e-6)
    assert table[0, 0::2].abs().max() == 0 and torch.all(table[0, 1::2] == 1)


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    cfg = tiny_unet_config()
    reference = ReferenceUNet2D(cfg).eval()
    denoiser = DenoisingUNet3D(cfg).eval()
    pose_encoder = PoseEncoder(cfg.pose_conditioning_channels, cfg.pose_encoder_block_channels, cfg.block_out_channels[0])
    torch.nn.init.normal_(pose_encoder.conv_out.weight, std=0.05)  # upstream starts it at zero; make it matter
    return cfg, reference, denoiser, pose_encoder


def inputs(cfg, batch, frames=4, size=16, seed=1):
    g = torch.Generator().manual_seed(seed)
    sample = torch.randn(batch, 4, frames, size, size, generator=g)
    audio = torch.randn(batch, frames, 50, cfg.cross_attention_dim, generator=g)
    pose = torch.randn(batch, cfg.block_out_channels[0], frames, size, size, generator=g)
    return sample, audio, pose


@torch.no_grad()
def test_tiny_networks_forward_shapes(tiny):
    cfg, reference, denoiser, pose_encoder = tiny
    banks = reference(torch.randn(1, 4, 32, 32))
    assert set(banks) == set(denoiser.transformer_blocks())
    assert len(banks) == 16
    assert banks["down_blocks.0.attentions.0.transformer_blocks.0"].shape == (1, 32 * 32, cfg.block_out_channels[0])
    assert banks["mid_block.attentions.0.transformer_blocks.0"].shape == (1, 4 * 4, cfg.block_out_channels[-1])
    assert banks["up_blocks.3.attentions.2.transformer_blocks.0"].shape == (1, 32 * 32, cfg.block_out_channels[0])

    features = pose_encoder(torch.rand(3, 3, 256, 256))
    assert features.shape == (3, cfg.block_out_channels[0], 32, 32)
    assert torch.all(PoseEncoder().conv_out.weight == 0)

    sample, audio, pose = inputs(cfg, batch=2, frames=3, size=32)
    v = denoiser(sample, torch.tensor(999), audio, pose, denoiser.reference_kv(banks), uncond_batch=1)
    assert v.shape == sample.shape and torch.isfinite(v).all()


@torch.no_grad()
def test_unconditional_rows_ignore_the_reference(tiny):
    cfg, reference, denoiser, _ = tiny
    kv = denoiser.reference_kv(reference(torch.randn(1, 4, 16, 16)))
    sample, audio, pose = inputs(cfg, batch=1)
    pair = [t.expand(2, *t.shape[1:]) for t in (sample, audio, pose)]
    v = denoiser(*pair[:1], 500, *pair[1:], kv, uncond_batch=1)
    without_reference = denoiser(sample, 500, audio, pose, None)
    with_reference = denoiser(sample, 500, audio, pose, kv)
    torch.testing.assert_close(v[:1], without_reference, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(v[1:], with_reference, rtol=1e-4, atol=1e-5)
    assert (v[0] - v[1]).abs().max() > 1e-3


@torch.no_grad()
def test_cached_reference_kv_equals_projecting_the_concatenation(tiny, monkeypatch):
    cfg, reference, denoiser, _ = tiny
    banks = reference(torch.randn(1, 4, 16, 16))
    sample, audio, pose = inputs(cfg, batch=2)
    cached = denoiser(sample, 250, audio, pose, denoiser.reference_kv(banks), uncond_batch=1)

    def naive_self_attention(block: TransformerBlock, normed, ctx):
        # Upstream's reader: K/V from [own tokens ; bank] for conditional rows, own tokens otherwise.
        bank = banks[block.path]
        uncond, cond = normed[: ctx.uncond_rows], normed[ctx.uncond_rows :]
        context = torch.cat([cond, bank.expand(len(cond), -1, -1)], dim=1)
        return torch.cat([Attention.forward(block.attn1, uncond), Attention.forward(block.attn1, cond, context)])

    monkeypatch.setattr(TransformerBlock, "_self_attention", naive_self_attention)
    naive = denoiser(sample, 250, audio, pose, {path: None for path in banks}, uncond_batch=1)
    torch.testing.assert_close(cached, naive, rtol=1e-4, atol=1e-5)


@torch.no_grad()
def test_batching_context_windows_equals_separate_calls(tiny):
    cfg, reference, denoiser, _ = tiny
    kv = denoiser.reference_kv(reference(torch.randn(1, 4, 16, 16)))
    window_a = inputs(cfg, batch=2, seed=2)
    window_b = inputs(cfg, batch=2, seed=3)
    separate = [denoiser(s, 700, a, p, kv, uncond_batch=1) for s, a, p in (window_a, window_b)]
    # One call: [uncond a, uncond b, cond a, cond b].
    batched_inputs = [torch.cat([ta[:1], tb[:1], ta[1:], tb[1:]]) for ta, tb in zip(window_a, window_b)]
    sample, audio, pose = batched_inputs
    batched = denoiser(sample, torch.tensor([700] * 4), audio, pose, kv, uncond_batch=2)
    expected = torch.cat([separate[0][:1], separate[1][:1], separate[0][1:], separate[1][1:]])
    torch.testing.assert_close(batched, expected, rtol=1e-4, atol=1e-5)


@torch.no_grad()
def test_frames_interact_only_through_motion_modules(tiny):
    cfg, _, denoiser, _ = tiny
    sample, audio, pose = inputs(cfg, batch=1)
    changed = sample.clone()
    changed[:, :, 0] += 1.0
    base = denoiser(sample, 100, audio, pose, None)
    assert (denoiser(changed, 100, audio, pose, None)[:, :, 3] - base[:, :, 3]).abs().max() > 1e-4

    # With the motion modules bypassed, every frame is computed on its own (per-frame GroupNorm).
    handles = [m.register_forward_hook(lambda module, args, out: args[0]) for m in denoiser.modules() if isinstance(m, MotionModule)]
    try:
        frame_3_alone = denoiser(sample[:, :, 3:4], 100, audio[:, 3:4], pose[:, :, 3:4], None)
        torch.testing.assert_close(denoiser(changed, 100, audio, pose, None)[:, :, 3:4], frame_3_alone, rtol=1e-4, atol=1e-5)
    finally:
        for handle in handles:
            handle.remove()


def test_bad_shapes_are_refused(tiny):
    cfg, _, denoiser, _ = tiny
    sample, audio, pose = inputs(cfg, batch=1, size=12)
    with pytest.raises(ValueError, match="multiple of 8"):
        denoiser(sample, 1, audio, pose, None)
    sample, audio, pose = inputs(cfg, batch=1, frames=33, size=8)
    with pytest.raises(ValueError, match="33 frames"):
        denoiser(sample, 1, audio, pose, None)
