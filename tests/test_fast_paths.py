"""Fast paths of the GPU work (issue 5) give the same numbers as the plain path, on the CPU.

Two fast paths are pinned at the network level in tests/test_networks.py and not repeated here:
reference K/V projected once vs the official reader (test_cached_reference_kv_equals_projecting_the_concatenation)
and unconditional rows without reference attention (test_unconditional_rows_ignore_the_reference);
several windows per UNet call is test_batching_context_windows_equals_separate_calls there and
test_windows_per_batch_does_not_change_the_math in tests/test_model.py.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch

from echomimic2 import EchoMimicV2
from echomimic2.config import tiny_unet_config, tiny_vae_config
from echomimic2.flops import spec_flops
from echomimic2.networks import random_networks
from echomimic2.pose_encoder import PoseEncoder
from echomimic2.sampler import (
    decode_latents,
    default_batches,
    denoise,
    denoising_calls,
    encode_window_poses,
    host_pose_images,
    segment_noise,
)
from echomimic2.scheduler import official_scheduler
from echomimic2.windows import CONTEXT_FRAMES, official_windows, segment_windows


def _chunks(windows, size):
    return [windows[begin : begin + size] for begin in range(0, len(windows), size)]


@pytest.mark.parametrize("schedule, frames, steps, per_call", [
    (segment_windows, 48, 6, 2), (segment_windows, 159, 6, 2), (segment_windows, 121, 30, 1),
    (segment_windows, 100, 6, 4), (segment_windows, 20, 6, 2), (official_windows, 50, 6, 2), (official_windows, 7, 3, 2),
])
def test_denoising_calls_keep_the_step_by_step_dependencies(schedule, frames, steps, per_call):
    step_windows = [schedule(frames, step) for step in range(steps)]
    calls, slot_count = denoising_calls(step_windows, per_call)
    # Every window of every step runs once, a step's windows in their order.
    for step, windows in enumerate(step_windows):
        assert [list(row.frames) for call in calls for row in call.windows if row.step == step] == windows
    assert all(1 <= len(call.windows) <= per_call for call in calls)
    steps_done = dict.fromkeys(range(frames), 0)
    unread = [{f: sum(f in window for window in windows) for f in range(frames)} for windows in step_windows]
    slot_owner: dict[int, tuple[int, int]] = {}
    for call in calls:
        for row in call.windows:  # a window reads latents that have taken every earlier step, and no later one
            assert all(steps_done[f] == row.step for f in row.frames), (row, steps_done)
            for f, slot in zip(row.frames, row.slots):  # a slot holds one frame's running average at a time
                assert slot_owner.setdefault(slot, (f, row.step)) == (f, row.step)
                unread[row.step][f] -= 1
        for update in call.updates:  # a frame is updated once per step, right after its last window of the step
            assert all(unread[update.step][f] == 0 and steps_done[f] == update.step for f in update.frames)
            for f, slot in zip(update.frames, update.slots):
                assert slot_owner.pop(slot) == (f, update.step)
                steps_done[f] += 1
        assert all(unread[row.step][f] > 0 for row in call.windows for f in row.frames if steps_done[f] == row.step)
    assert set(steps_done.values()) == {steps} and not slot_owner
    assert slot_count <= max(per_call * CONTEXT_FRAMES, frames if schedule is official_windows else 0)


def test_denoising_calls_are_full_across_step_boundaries():
    """Two windows per call on a GPU: every call is full for segments of 24 frames and more (a step with an odd
    number of windows shares its last call with the next step), so the compiled UNet meets one batch shape."""
    for frames in (24, 30, 48, 97, 159, 160, 288, 1000):
        for steps in (6, 30):
            calls, _ = denoising_calls([segment_windows(frames, step) for step in range(steps)], 2)
            assert {len(call.windows) for call in calls} == {2}, (frames, steps)
    # Step by step, a 48-frame segment would have 6-window and 5-window steps: half-empty calls.
    assert {len(segment_windows(48, step)) % 2 for step in range(6)} == {0, 1}


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
        for group in _chunks(windows, 2):
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


# --------------------------------------------------------------------------------------------------
# The bounded-memory DDIM update (calls filled across steps, a few accumulator slots, per-frame step) against
# the whole-segment update


def _whole_segment_denoise(unet, reference_kv, latents, audio, pose_encoder, poses, steps, guidance, reference_compatible, windows_per_batch):
    """The previous update, kept as the oracle: a full-length accumulator, one scheduler.step on the whole segment."""
    frames, branches = latents.shape[2], 2 if guidance > 1.0 else 1
    scheduler = official_scheduler()
    scheduler.set_timesteps(steps)
    schedule = official_windows if reference_compatible else segment_windows
    for step, timestep in enumerate(scheduler.timesteps):
        accumulated = torch.zeros((branches, *latents.shape[1:]))
        counter = torch.zeros((1, 1, frames, 1, 1))
        for group in _chunks(schedule(frames, step), windows_per_batch):
            index = torch.tensor(group)
            sample = latents[0][:, index].permute(1, 0, 2, 3, 4)
            window_audio = audio[index]
            pose = encode_window_poses(pose_encoder, poses, group, torch.float32)
            if branches == 2:
                sample = torch.cat([sample, sample])
                window_audio = torch.cat([torch.zeros_like(window_audio), window_audio])
                pose = torch.cat([torch.zeros_like(pose), pose])
            v = unet(sample, timestep, window_audio, pose, reference_kv, uncond_batch=len(group) if branches == 2 else 0)
            v = v.float().unflatten(0, (branches, len(group)))
            for slot, window in enumerate(group):
                accumulated[:, :, window] += v[:, slot]
                counter[:, :, window] += 1
        v = accumulated / counter
        if branches == 2:
            v_uncond, v_cond = v.chunk(2)
            v = v_uncond + guidance * (v_cond - v_uncond)
        latents = scheduler.step(v, timestep, latents).prev_sample
    return latents


@pytest.fixture(scope="module")
def tiny_model():
    return EchoMimicV2.tiny()


@torch.no_grad()
@pytest.mark.parametrize("guidance, reference_compatible, windows_per_batch", [(1.0, False, 2), (2.5, False, 3), (1.0, True, 2)])
def test_bounded_memory_update_equals_the_whole_segment_update(tiny_model, guidance, reference_compatible, windows_per_batch):
    networks = tiny_model.networks
    frames, latent = 31, 8
    rng = np.random.default_rng(1)
    poses = host_pose_images(rng.integers(0, 256, (frames, 8 * latent, 8 * latent, 3), dtype=np.uint8), torch.device("cpu"))
    audio = torch.from_numpy(rng.standard_normal((frames, 50, 384), dtype=np.float32))
    reference_kv = networks.denoising_unet.reference_kv(networks.reference_unet(torch.randn(1, 4, latent, latent)))
    start = segment_noise(2, 0, frames, latent, latent)
    # Each network row by row: then no kernel sees how the windows were batched (that is a tolerance question,
    # test_windows_per_batch_does_not_change_the_math), and the update order itself must match bit for bit.
    arguments = (_RowByRowUNet(networks.denoising_unet), reference_kv)
    rest = (audio, _RowByRow(networks.pose_encoder), poses, 3, guidance, reference_compatible, windows_per_batch)
    expected = _whole_segment_denoise(*arguments, start.clone(), *rest)
    got = denoise(*arguments, start.clone(), *rest)
    assert torch.equal(got, expected)  # same operations per element: bit for bit


class _RowByRow(torch.nn.Module):
    def __init__(self, inner):
        super().__init__()
        self.inner = inner

    def forward(self, x):
        return torch.cat([self.inner(row) for row in x.split(1)])


class _RowByRowUNet(_RowByRow):
    def forward(self, sample, timestep, audio, pose, reference_kv, uncond_batch=0):
        timestep = torch.as_tensor(timestep).reshape(-1).expand(len(sample))
        return torch.cat([self.inner(sample[i : i + 1], timestep[i], audio[i : i + 1], pose[i : i + 1], reference_kv,
                                     uncond_batch=int(i < uncond_batch)) for i in range(len(sample))])


@pytest.mark.parametrize("windows_per_batch", [1, 2, 4])
def test_overlap_accumulator_does_not_grow_with_segment_length(windows_per_batch):
    def slots(frames: int) -> int:
        return denoising_calls([segment_windows(frames, step) for step in range(6)], windows_per_batch)[1]

    assert slots(120) == slots(1200) == slots(12_000) <= windows_per_batch * CONTEXT_FRAMES


def test_compiling_is_refused_off_cuda(tmp_path):
    with pytest.raises(ValueError, match="compile.*CUDA"):
        EchoMimicV2.from_official(tmp_path, variant="acc", device="cpu", compile=True)
    with pytest.raises(ValueError, match="compile.*CUDA"):
        EchoMimicV2.random("acc", device="cpu", compile=True)


def test_batch_defaults_follow_the_device():
    assert default_batches(torch.device("cuda")) == (2, 2)  # measured best under 8 GiB at 768² (BENCHMARKS.md)
    assert default_batches(torch.device("cpu")) == (4, 8)
    # CFG doubles the rows of every window: fewer windows per call keep the same peak.
    assert default_batches(torch.device("cuda"), guided=True) == (1, 2)
    assert default_batches(torch.device("cpu"), guided=True) == (2, 8)


# --------------------------------------------------------------------------------------------------
# Batched VAE decode and half precision, rendered with the tiny networks (64², 14 frames)


@pytest.fixture(scope="module")
def tiny_inputs():
    rng = np.random.default_rng(0)
    size, frames = 64, 14
    return (rng.integers(0, 256, (size, size, 3), dtype=np.uint8), rng.standard_normal((frames, 50, 384)).astype(np.float32),
            rng.integers(0, 256, (frames, size, size, 3), dtype=np.uint8))


def test_batched_vae_decode_matches_frame_by_frame(tiny_model):
    latents = segment_noise(1, 0, 14, 8, 8)
    one = decode_latents(tiny_model.networks.vae, latents, torch.float32, 1).astype(int)
    for batch in (2, 8):
        diff = np.abs(decode_latents(tiny_model.networks.vae, latents, torch.float32, batch).astype(int) - one)
        # Other conv algorithms for other batch sizes: a rounding may flip a truncation (measured: max 1, 0.003% of values).
        assert diff.max() <= 1 and (diff > 0).mean() < 1e-3


def test_decoded_frames_reach_the_caller_in_order_batch_by_batch(tiny_model):
    latents = torch.randn((1, 4, 7, 8, 8), generator=torch.Generator().manual_seed(2))
    chunks = []
    frames = decode_latents(tiny_model.networks.vae, latents, torch.float32, 3, on_frames=lambda c: chunks.append(c.copy()))
    assert [len(c) for c in chunks] == [3, 3, 1]
    assert np.array_equal(np.concatenate(chunks), frames)


def test_every_vae_decode_call_gets_the_same_number_of_frames(tiny_model, monkeypatch):
    """A compiled decoder has static shapes: a shorter last batch (any segment length that is not a multiple
    of the batch) would compile it again mid-job. The padding frames are dropped, the real ones unchanged."""
    vae = tiny_model.networks.vae
    latents = segment_noise(1, 0, 11, 8, 8)
    expected = decode_latents(vae, latents, torch.float32, 1).astype(int)
    batches = []
    real_decode = vae.decode

    def recording_decode(z, *args, **kwargs):
        batches.append(z.shape[0])
        return real_decode(z, *args, **kwargs)

    monkeypatch.setattr(vae, "decode", recording_decode)
    frames = decode_latents(vae, latents, torch.float32, 4)
    assert batches == [4, 4, 4]
    assert frames.shape == expected.shape and np.abs(frames.astype(int) - expected).max() <= 1


@pytest.mark.parametrize("dtype, max_levels, mean_levels", [(torch.float16, 2, 0.2), (torch.bfloat16, 12, 1.5)])
def test_half_precision_frames_stay_within_the_stated_tolerance(tiny_model, tiny_inputs, dtype, max_levels, mean_levels):
    """The fast path's dtype against fp32, same weights and inputs. Measured on the CPU (tiny, 3 steps):
    fp16 max 1 level / mean 0.07, bf16 max 8 / mean 0.56; on an H100 at full size BENCHMARKS.md has 2 / 13."""
    reference = tiny_model.render(*tiny_inputs, seed=1, first_frame=0, steps=3).astype(int)
    half = EchoMimicV2.tiny(dtype=dtype).render(*tiny_inputs, seed=1, first_frame=0, steps=3).astype(int)
    diff = np.abs(half - reference)
    assert 0 < diff.max() <= max_levels and diff.mean() <= mean_levels


def _rowwise_e4m3(matrix: torch.Tensor) -> torch.Tensor:
    """The oracle's rounding: each row scaled so its largest magnitude is e4m3's 448, rounded, scaled back."""
    scale = matrix.abs().amax(dim=-1, keepdim=True) / 448
    return (matrix / scale).to(torch.float8_e4m3fn).float() * scale


@torch.no_grad()
def test_float8_linear_multiplies_the_rowwise_rounded_operands():
    from echomimic2.fast import Float8Linear

    torch.manual_seed(0)
    linear = torch.nn.Linear(64, 32)
    x = 3 * torch.randn(2, 7, 64)
    out = Float8Linear(linear)(x)
    expected = _rowwise_e4m3(x.reshape(-1, 64)) @ _rowwise_e4m3(linear.weight).t() + linear.bias
    torch.testing.assert_close(out.reshape(-1, 32), expected, rtol=1e-5, atol=1e-5)
    relative = (out - linear(x)).abs().max() / linear(x).abs().max()
    assert 1e-3 < relative < 0.1  # rounded to 3 mantissa bits: not the fp32 product, yet close to it


def test_float8_linears_replace_only_the_layers_the_kernels_fit():
    from echomimic2.fast import Float8Linear, use_float8_linears

    module = torch.nn.Sequential(torch.nn.Linear(64, 32), torch.nn.Linear(32, 8), torch.nn.Sequential(torch.nn.Linear(32, 16)))
    assert use_float8_linears(module) == 2
    assert isinstance(module[0], Float8Linear) and isinstance(module[2][0], Float8Linear)
    assert type(module[1]) is torch.nn.Linear  # 8 outputs: not a multiple of 16


def test_fp8_fast_mode_renders_near_the_default_and_fingerprints_apart(tiny_model, tiny_inputs):
    """The opt-in fast mode changes the numbers a little, and the job knows: its identity (so every clip's
    fingerprint) differs, and the render worker's check (identity + '+' prefix) holds. Measured on the CPU
    (tiny, 3 steps): max 18 levels, mean 1.7 from fp32; fp16 alone: max 1, mean 0.07."""
    from echomimic2.identity import FLOAT8_IDENTITY
    from pipeline.render import model_identity

    reference = tiny_model.render(*tiny_inputs, seed=1, first_frame=0, steps=3).astype(int)
    fast = EchoMimicV2.tiny(fp8=True)
    diff = np.abs(fast.render(*tiny_inputs, seed=1, first_frame=0, steps=3).astype(int) - reference)
    print(f"fp8 vs fp32: max {diff.max()} levels, mean {diff.mean():.3f}")
    assert 0 < diff.max() <= 40 and diff.mean() <= 3
    assert fast.identity == f"{tiny_model.identity}+{FLOAT8_IDENTITY}"
    job_identity = model_identity("tiny", None, fp8=True)
    assert job_identity.startswith(fast.identity + "+") and job_identity != model_identity("tiny", None)


def test_compiled_blocks_share_one_graph_per_class_and_shape():
    """fast.compile_regions compiles the UNet block by block so that blocks of one class and input shape share
    a graph (less to compile cold, less to trace warm): a per-block constant read inside a block (its path)
    would give each of the 59 blocks its own graph. Dynamo's own counters, an eager backend (no codegen)."""
    from torch._dynamo.utils import counters

    from echomimic2.fast import compile_regions

    torch._dynamo.reset()
    counters.clear()
    model = EchoMimicV2.tiny()
    rng = np.random.default_rng(0)
    reference = rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)
    audio = rng.standard_normal((CONTEXT_FRAMES, 50, 384)).astype(np.float32)
    poses = rng.integers(0, 256, (CONTEXT_FRAMES, 64, 64, 3), dtype=np.uint8)
    eager = model.render(reference, audio, poses, seed=0, first_frame=0, steps=1)
    assert compile_regions(model.networks.denoising_unet, backend="eager") == 59
    compiled = model.render(reference, audio, poses, seed=0, first_frame=0, steps=1)
    try:
        assert 0 < counters["stats"]["unique_graphs"] <= 20, counters["stats"]["unique_graphs"]  # 19 (class, shape) pairs
        assert not counters["graph_break"], dict(counters["graph_break"])
        np.testing.assert_array_equal(compiled, eager)
    finally:
        torch._dynamo.reset()


def test_the_unet_declares_the_blocks_that_are_compiled():
    """What is compiled is the model's declaration (`_repeated_blocks`, class names as diffusers reads them),
    not a list in fast.py: every declared block, nothing else; a model that declares none is refused."""
    from echomimic2.fast import compile_regions, compiled_regions, repeated_blocks

    unet = EchoMimicV2.tiny().networks.denoising_unet
    declared = set(type(unet)._repeated_blocks)
    assert declared == {"ResnetBlock2D", "SpatialTransformer", "MotionModule"}
    blocks = repeated_blocks(unet)
    assert {type(block).__name__ for block in blocks} == declared and len(blocks) == 59
    try:
        assert compile_regions(unet, backend="eager") == 59 == compiled_regions(unet)
        assert all(type(module).__name__ in declared for module in unet.modules() if "forward" in module.__dict__)
    finally:
        torch._dynamo.reset()
    with pytest.raises(ValueError, match="declares no _repeated_blocks"):
        compile_regions(torch.nn.Sequential(torch.nn.Linear(2, 2)))


def test_a_saved_trace_that_cannot_be_installed_means_tracing_again(monkeypatch, caplog):
    """torch 2.11 could not load back the VAE decoder's saved trace (a guard it cannot unpickle, raised inside
    `torch.compile`): such a failure costs a trace, never the worker. Here the install fails whenever saved
    traces are on; the function is compiled without them and computes the same numbers."""
    from echomimic2.fast import compile_function

    real_compile = torch.compile

    def compile_that_fails_to_install(fn, **kwargs):
        if torch._dynamo.config.caching_precompile:
            raise TypeError("DefaultsSource.__init__() takes from 3 to 4 positional arguments but 6 were given")
        return real_compile(fn, **kwargs)

    monkeypatch.setattr(torch, "compile", compile_that_fails_to_install)
    torch._dynamo.reset()
    try:
        with torch._dynamo.config.patch(caching_precompile=True):
            compiled = compile_function(torch.nn.functional.gelu, backend="eager")
        x = torch.randn(8)
        torch.testing.assert_close(compiled(x), torch.nn.functional.gelu(x), rtol=0, atol=0)
        assert "saved trace of" in caplog.text and "tracing again" in caplog.text
    finally:
        torch._dynamo.reset()


def test_a_segment_with_odd_window_counts_compiles_one_batch_shape():
    """48 frames have 5 windows at steps 0 and 3: step by step, two windows per call would leave a one-window
    call per such step and a second set of compiled blocks (~2x the graphs to compile cold, trace warm, and
    sometimes to meet first in the middle of a job). Filled across steps, every call holds two windows."""
    from torch._dynamo.utils import counters

    from echomimic2.fast import compile_regions

    torch._dynamo.reset()
    counters.clear()
    model = EchoMimicV2.tiny()
    rng = np.random.default_rng(0)
    frames = 48
    reference = rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)
    audio = rng.standard_normal((frames, 50, 384)).astype(np.float32)
    poses = rng.integers(0, 256, (frames, 64, 64, 3), dtype=np.uint8)
    compile_regions(model.networks.denoising_unet, backend="eager")
    try:
        model.render(reference, audio, poses, seed=0, first_frame=0, steps=4, windows_per_batch=2)
        assert 0 < counters["stats"]["unique_graphs"] <= 20, counters["stats"]["unique_graphs"]  # one batch shape
    finally:
        torch._dynamo.reset()


@pytest.mark.parametrize("dtype, tolerance", [(torch.float64, 1e-12), (torch.float32, 2e-6), (torch.bfloat16, 2e-2)])
def test_motion_modules_attention_as_matmuls_equals_sdpa(dtype, tolerance):
    """The motion modules attend with two matmuls (faster for 12-frame sequences); same softmax attention."""
    from echomimic2.motion_module import TemporalAttention, short_sequence_attention

    generator = torch.Generator().manual_seed(0)
    query, key, value = (torch.randn((6, 8, 12, 40), generator=generator, dtype=torch.float64).to(dtype) for _ in range(3))
    expected = torch.nn.functional.scaled_dot_product_attention(query.double(), key.double(), value.double())
    got = short_sequence_attention(query, key, value)
    assert got.dtype == dtype
    assert (got.double() - expected).abs().max() < tolerance
    assert TemporalAttention.weighted_values is short_sequence_attention


# --------------------------------------------------------------------------------------------------
# FlashAttention-4 for head dims 40 and 80: the padding and the routing, on the CPU (the kernel itself: fa4_bench.py)


def _sdpa_in_kernel_layout(query, key, value, softmax_scale):
    """SDPA standing in for the FA4 kernel: (N, L, heads, d) tensors and an explicit scale, as the op is called."""
    out = torch.nn.functional.scaled_dot_product_attention(
        query.transpose(1, 2), key.transpose(1, 2), value.transpose(1, 2), scale=softmax_scale)
    return out.transpose(1, 2)


@pytest.mark.parametrize("head_dim, width", [(40, 48), (80, 80), (40, 64)])
def test_zero_padded_head_dims_give_the_unpadded_attention(head_dim, width):
    from echomimic2.attention import padded_attention

    generator = torch.Generator().manual_seed(0)
    query, key, value = (torch.randn(2, 8, length, head_dim, generator=generator, dtype=torch.float64) for length in (96, 160, 160))
    seen = []

    def kernel(q, k, v, softmax_scale):
        seen.append((q.shape, k.shape, v.shape, softmax_scale))
        return _sdpa_in_kernel_layout(q, k, v, softmax_scale)

    expected = torch.nn.functional.scaled_dot_product_attention(query, key, value)
    out = padded_attention(query, key, value, width, kernel)
    assert seen == [((2, 96, 8, width), (2, 160, 8, width), (2, 160, 8, width), head_dim ** -0.5)]
    assert out.shape == expected.shape
    torch.testing.assert_close(out, expected, rtol=0, atol=1e-12)
    if width != head_dim:  # the padded width's own scale, 1/sqrt(width), would be another attention
        wrong = padded_attention(query, key, value, width, lambda q, k, v, _: _sdpa_in_kernel_layout(q, k, v, None))
        assert (wrong - expected).abs().max() > 1e-3


def test_fa4_takes_only_the_shapes_where_it_is_faster():
    from echomimic2.attention import fa4_width

    half = torch.float16
    assert fa4_width(40, 18_432, half) == 48  # 96²: own tokens + the reference's
    assert fa4_width(40, 9_216, torch.bfloat16) == 48  # unconditional rows: own tokens only
    assert fa4_width(80, 4_608, half) == 80  # 48²
    assert fa4_width(160, 1_152, half) is None  # 24²: cuDNN is faster
    assert fa4_width(40, 50, half) is None  # the audio cross-attention's few keys
    assert fa4_width(40, 18_432, torch.float32) is None  # FA4 runs half precision only


def test_fa4_route_falls_back_to_sdpa_off_cuda_and_keeps_the_motion_modules_own_attention():
    from echomimic2.attention import Attention, fa4_available, fa4_or_sdpa
    from echomimic2.fast import use_fa4_attention
    from echomimic2.motion_module import TemporalAttention, short_sequence_attention

    assert not fa4_available()  # no CUDA here: prepare_for_gpu leaves the attention alone
    query, key, value = (torch.randn(1, 8, 4096, 40, dtype=torch.float16) for _ in range(3))
    assert torch.equal(fa4_or_sdpa(query, key, value), torch.nn.functional.scaled_dot_product_attention(query, key, value))
    unet = random_networks(tiny_unet_config(), tiny_vae_config(), torch.device("cpu"), torch.float32).denoising_unet
    layers = [m for m in unet.modules() if isinstance(m, Attention)]
    temporal = [m for m in layers if isinstance(m, TemporalAttention)]
    assert temporal and len(temporal) < len(layers)
    assert use_fa4_attention(unet) == len(layers) - len(temporal)
    assert all(m.weighted_values is short_sequence_attention for m in temporal)
    assert all(m.weighted_values is fa4_or_sdpa for m in layers if m not in temporal)


def test_the_fa4_op_traces_as_one_opaque_call():
    """A custom op with a shape function: tracing (as torch.compile does) records one call with the right output
    shape and never runs the kernel (absent here)."""
    from torch.fx.experimental.proxy_tensor import make_fx

    from echomimic2.attention import fa4_attention, padded_attention

    def attention(query, key, value):
        return padded_attention(query, key, value, 48, fa4_attention)

    query, key, value = (torch.randn(2, 8, length, 40, dtype=torch.float16) for length in (96, 160, 160))
    graph = make_fx(attention, tracing_mode="fake")(query, key, value)
    calls = [node for node in graph.graph.nodes if node.target is torch.ops.echomimic2.fa4_attention.default]
    assert len(calls) == 1 and calls[0].args[3] == 40 ** -0.5
    assert tuple(calls[0].meta["val"].shape) == (2, 96, 8, 48)
    (output,) = graph.graph.output_node().args
    assert tuple(output.meta["val"].shape) == (2, 8, 96, 40)
