"""CUDA tests (marker `gpu`; skipped without a CUDA device). Run them on a GPU machine whenever GPU
code changes:

    pytest -m gpu tests/test_gpu.py           # ~3 min on an H200 (writes 7 GB of random weights once)
    ECHOMIMIC2_TEST_WEIGHTS=/tmp/e2e/weights pytest -m gpu tests/test_gpu.py   # reuse a folder

The weights are full-size random networks in the official layout (echomimic2.official_layout), so
every test goes through `from_official` exactly as a user's job does.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]

SIZE, FRAMES = 256, 12  # one context window; small enough for seconds per render


@pytest.fixture(scope="session")
def official_weights(tmp_path_factory) -> Path:
    given = os.environ.get("ECHOMIMIC2_TEST_WEIGHTS")
    if given:
        return Path(given)
    from echomimic2.official_layout import write_random_official_weights

    return write_random_official_weights(tmp_path_factory.mktemp("weights") / "EchoMimicV2", device="cuda")


@pytest.fixture(scope="module")
def segment_inputs():
    from echomimic2.pose import default_pose_sequence, render_pose

    rng = np.random.default_rng(0)
    reference = rng.integers(0, 256, (SIZE, SIZE, 3), dtype=np.uint8)
    audio = rng.standard_normal((FRAMES, 50, 384)).astype(np.float32)
    poses = np.stack([render_pose(p, SIZE, SIZE) for p in default_pose_sequence(FRAMES, 24.0)])
    return reference, audio, poses


@pytest.mark.parametrize("variant", ["acc", "quality"])
def test_from_official_loads_and_renders_on_cuda(official_weights, segment_inputs, variant):
    from echomimic2 import EchoMimicV2
    from echomimic2.identity import official_identity

    model = EchoMimicV2.from_official(official_weights, variant, device="cuda", dtype=torch.float16)
    assert (model.device.type, model.dtype) == ("cuda", torch.float16)
    assert all(p.device.type == "cuda" for network in model.networks for p in network.parameters())
    assert model.identity == official_identity(official_weights, variant)
    assert torch.backends.cudnn.benchmark is True  # the CUDA settings branch ran (eager: cuDNN autotuning)
    frames = model.render(*segment_inputs, seed=0, first_frame=0, steps=2)
    assert frames.shape == (FRAMES, SIZE, SIZE, 3) and frames.dtype == np.uint8
    assert frames.std() > 0  # not a constant image (NaNs would decode to one value)


def test_fp16_frames_match_fp32_within_the_documented_tolerance(official_weights, segment_inputs):
    """BENCHMARKS.md ("Accuracy of the fast path"): fp16 vs fp32 at full size differs by at most 2 levels but for
    isolated values at 3 (cuDNN's algorithm choice varies by machine: SDPA and matmul attention alike gave 1-2
    of these 2.4 million values at 3 levels on an H200, 2026-12-04)."""
    from echomimic2 import EchoMimicV2

    frames = {}
    for dtype in (torch.float32, torch.float16):
        model = EchoMimicV2.from_official(official_weights, "acc", device="cuda", dtype=dtype)
        frames[dtype] = model.render(*segment_inputs, seed=3, first_frame=0, steps=2).astype(int)
        del model
        torch.cuda.empty_cache()
    diff = np.abs(frames[torch.float16] - frames[torch.float32])
    assert diff.max() <= 3 and (diff > 2).mean() <= 1e-5 and diff.mean() <= 0.2, (diff.max(), (diff > 2).sum(), diff.mean())


def test_compiled_networks_match_eager(segment_inputs):
    """torch.compile (the render actors' default on CUDA) keeps the math: the tiny networks, compiled
    by the same function `from_official(compile=True)` uses, against the same networks eager."""
    from echomimic2 import EchoMimicV2
    from echomimic2.fast import compiled_regions
    from echomimic2.model import _gpu_settings

    eager = EchoMimicV2.tiny(device="cuda", dtype=torch.float16)
    reference = eager.render(*segment_inputs, seed=1, first_frame=0, steps=2).astype(int)
    compiled = EchoMimicV2.tiny(device="cuda", dtype=torch.float16)
    compiled.networks = _gpu_settings(compiled.networks, compile=True)
    assert compiled_regions(compiled.networks.denoising_unet) > 0  # its blocks run compiled
    diff = np.abs(compiled.render(*segment_inputs, seed=1, first_frame=0, steps=2).astype(int) - reference)
    assert diff.max() <= 3 and (diff > 2).mean() <= 1e-5 and diff.mean() <= 0.2, (diff.max(), (diff > 2).sum(), diff.mean())


def test_compiled_networks_do_not_compile_again_for_other_segment_lengths(segment_inputs):
    """The job's plan gives segments of any length (312 frames → 2 × 159): after a worker's first segment,
    another length must not trace or compile anything again (a recompile mid-job costs seconds per network)."""
    from torch._dynamo.utils import counters

    from echomimic2 import EchoMimicV2
    from echomimic2.model import _gpu_settings

    model = EchoMimicV2.tiny(device="cuda", dtype=torch.float16)
    model.networks = _gpu_settings(model.networks, compile=True)
    reference, audio, poses = segment_inputs
    model.render(reference, np.concatenate([audio] * 2), np.concatenate([poses] * 2), seed=0, first_frame=0, steps=2)
    graphs = counters["stats"]["unique_graphs"]
    for frames in (2 * FRAMES - 1, 3 * FRAMES + 5):
        tiled = np.arange(frames) % FRAMES
        model.render(reference, audio[tiled], poses[tiled], seed=0, first_frame=0, steps=2)
        assert counters["stats"]["unique_graphs"] == graphs, f"{frames} frames compiled new graphs"


def test_the_denoising_loop_never_waits_for_the_gpu(segment_inputs, monkeypatch):
    """The host must run ahead of the GPU through the whole DDIM loop (a compiled UNet call costs ~0.1 s of
    host time, and a render actor shares its CPU with the job's other stages): with CUDA's sync debug mode
    set to "error", any copy or read that makes the host wait inside `denoise` raises. Several windows per
    step and CFG, so the accumulator, the finished-frame chunks and both branches are exercised."""
    from echomimic2 import EchoMimicV2, sampler

    model = EchoMimicV2.tiny(device="cuda", dtype=torch.float16)
    model.render(*segment_inputs, seed=0, first_frame=0, steps=1)  # cuDNN autotuning and allocations first
    real_denoise = sampler.denoise

    def denoise_without_syncs(*args, **kwargs):
        torch.cuda.set_sync_debug_mode("error")
        try:
            return real_denoise(*args, **kwargs)
        finally:
            torch.cuda.set_sync_debug_mode("default")

    monkeypatch.setattr(sampler, "denoise", denoise_without_syncs)
    reference, audio, poses = segment_inputs
    long_audio, long_poses = np.concatenate([audio] * 3), np.concatenate([poses] * 3)  # three windows a step
    frames = model.render(reference, long_audio, long_poses, seed=0, first_frame=0, steps=2, guidance=2.5)
    assert frames.shape == (3 * FRAMES, SIZE, SIZE, 3)


def test_fp8_fast_mode_runs_on_cuda_near_the_fp16_frames(official_weights, segment_inputs):
    """The opt-in fast mode (fp8 linears through torch._scaled_mm on the GPU's fp8 tensor cores) loads through
    `from_official` and stays near the default's frames. The deviation is printed for BENCHMARKS.md; the bound
    only catches a broken kernel (garbage or NaN), the measured figures are the ablation script's."""
    from echomimic2 import EchoMimicV2

    if torch.cuda.get_device_capability() < (8, 9):
        pytest.skip("fp8 matmuls need an Ada/Hopper GPU or newer")
    frames = {}
    for fp8 in (False, True):
        model = EchoMimicV2.from_official(official_weights, "acc", device="cuda", dtype=torch.float16, fp8=fp8)
        frames[fp8] = model.render(*segment_inputs, seed=3, first_frame=0, steps=2).astype(int)
        del model
        torch.cuda.empty_cache()
    diff = np.abs(frames[True] - frames[False])
    print(f"fp8 fast mode vs fp16: max {diff.max()} levels, mean {diff.mean():.3f}")
    assert diff.max() > 0 and diff.mean() <= 8, (diff.max(), diff.mean())


def test_render_stage_sets_up_on_cuda_and_renders_a_segment(official_weights, segment_inputs, tmp_path):
    """The job's render stage as a Ray worker runs it (setup, then one call), without Ray: the model loads
    on CUDA through the production path and the segment lands in storage with its ledger record."""
    from pipeline.ledger import Ledger
    from pipeline.params import RenderParams
    from pipeline.render import model_identity
    from pipeline.rows import JobSettings, SegmentWork
    from pipeline.segment_store import iter_segment
    from pipeline.stages import JobBoard, RenderStage

    reference, audio, poses = segment_inputs
    settings = JobSettings(output=str(tmp_path / "out"), preset="acc", weights=str(official_weights),
                           model_identity=model_identity("acc", str(official_weights)), segment_frames=288, overlap_frames=6,
                           compile=False)  # the compiled path is test_compiled_networks_match_eager's
    stage = RenderStage(settings, JobBoard())
    stage.on_worker_start(restarted=False, node_id=None)
    stage.setup()
    assert stage.model.device.type == "cuda"
    work = SegmentWork(0, "clip", "fp", 0, FRAMES, RenderParams.resolve("acc", steps=1, segment_frames=FRAMES, overlap_frames=0),
                       reference=reference, audio=audio, poses=poses)
    result = stage(work)
    assert result.error is None and result.attempts == 1, result
    ledger = Ledger(settings.output)
    frames = np.concatenate(list(iter_segment(ledger.segment_uri("clip", "fp", 0, FRAMES))))
    assert frames.shape == (FRAMES, SIZE, SIZE, 3)
    assert [r["start"] for r in ledger.segment_records("clip")] == [0]


def test_decoded_frames_reach_the_caller_in_order_while_the_gpu_decodes():
    """The CUDA path of `decode_latents(on_frames=...)`: chunks found by their events, in order, equal to the frames."""
    from echomimic2 import EchoMimicV2
    from echomimic2.sampler import decode_latents

    vae = EchoMimicV2.tiny(device="cuda").networks.vae
    latents = torch.randn((1, 4, 9, 16, 16), device="cuda", generator=torch.Generator(device="cuda").manual_seed(0))
    chunks = []
    frames = decode_latents(vae, latents, torch.float32, 2, on_frames=lambda c: chunks.append(c.copy()))
    assert [len(c) for c in chunks] == [2, 2, 2, 2, 1]
    assert np.array_equal(np.concatenate(chunks), frames)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_motion_modules_attention_takes_fp32_scores_from_half_operands_on_cuda(dtype):
    """The CUDA branch of `short_sequence_attention` (bmm with an fp32 output) equals attention in fp64, eager
    and compiled, within the rounding of its half-precision output."""
    from echomimic2.motion_module import short_sequence_attention

    generator = torch.Generator(device="cuda").manual_seed(0)
    query, key, value = (torch.randn((64, 8, 12, 40), generator=generator, device="cuda").to(dtype) for _ in range(3))
    expected = torch.nn.functional.scaled_dot_product_attention(query.double(), key.double(), value.double())
    tolerance = 4 * torch.finfo(dtype).eps
    for kernel in (short_sequence_attention, torch.compile(short_sequence_attention, dynamic=False)):
        got = kernel(query, key, value)
        assert got.dtype == dtype and got.shape == expected.shape
        assert (got.double() - expected).abs().max() < tolerance


def test_motion_modules_attention_trains_on_cuda_in_bf16():
    """Training (bf16 autocast on CUDA) needs a backward, which the fp32-output bmm has not: it takes the upcast."""
    from echomimic2.motion_module import short_sequence_attention

    query, key, value = (torch.randn((4, 8, 12, 40), device="cuda", dtype=torch.bfloat16, requires_grad=True) for _ in range(3))
    short_sequence_attention(query, key, value).float().square().sum().backward()
    assert all(t.grad is not None and torch.isfinite(t.grad).all() for t in (query, key, value))


@pytest.mark.parametrize("head_dim, queries, keys", [(40, 2304, 4608), (80, 2304, 4608)])
def test_fa4_route_equals_attention_in_fp64_eager_and_compiled(head_dim, queries, keys):
    """Where flash-attn-4 is installed (requirements-fa4.txt): the FA4 route (head dim 40 zero-padded to 48, 80 as it
    is) against attention in fp64, eager and inside a compiled function (the custom op stays one call)."""
    from echomimic2.attention import fa4_available, fa4_or_sdpa, fa4_width

    if not fa4_available():
        pytest.skip("flash-attn-4 is not installed here (or ECHOMIMIC2_FA4=0, or not a Hopper/Blackwell GPU)")
    assert fa4_width(head_dim, keys, torch.float16) is not None
    generator = torch.Generator(device="cuda").manual_seed(0)
    query, key, value = (torch.randn((4, length, 8, head_dim), generator=generator, device="cuda", dtype=torch.float16)
                         .transpose(1, 2) for length in (queries, keys, keys))  # the layout Attention.attend passes
    expected = torch.nn.functional.scaled_dot_product_attention(query.double(), key.double(), value.double())
    for route in (fa4_or_sdpa, torch.compile(fa4_or_sdpa, dynamic=False, fullgraph=True)):
        got = route(query, key, value)
        assert got.dtype == torch.float16 and got.shape == expected.shape
        assert (got.double() - expected).abs().max() < 2e-3
