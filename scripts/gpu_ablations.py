"""Measure each speed-up of BENCHMARKS.md on its own (GPU only): one denoising step of a 120-frame
768² segment under each setting, the VAE decode, the pose encoder, a profile by op class, CUDA graphs,
the fp8 fast mode, and the fast paths' deviation from fp32 in uint8 levels.

    python scripts/gpu_ablations.py [--out DIR] [--parts step,cfg,decode,profile,compile,graphs,accuracy,fp8,layout,
        attention,compiled_profile,tuning]

`fp8` converts the fp16 networks in place (fp8 linears), so it runs last.

Prints a table; writes ablations.json (and profile tables) into DIR.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch
from torch.nn.attention import SDPBackend, sdpa_kernel

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from echomimic2.bench import random_networks  # noqa: E402
from echomimic2.config import official_unet_config, official_vae_config  # noqa: E402
from echomimic2.fast import use_float8_linears  # noqa: E402
from echomimic2.motion_module import TemporalAttention, short_sequence_attention  # noqa: E402
from echomimic2.sampler import decode_latents, denoising_calls, render_segment  # noqa: E402
from echomimic2.windows import segment_windows  # noqa: E402

SIZE, FRAMES = 768, 120
LATENT = SIZE // 8
RESULTS: dict[str, dict] = {}


def record(name: str, **values) -> None:
    RESULTS[name] = values
    print(f"{name:<58} " + "  ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in values.items()), flush=True)


def timed(fn, repeats: int = 2) -> float:
    """Median seconds of `repeats` calls after one warm-up call (CUDA events)."""
    fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(repeats):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end) / 1e3)
    return statistics.median(times)


def set_layout(networks, channels_last: bool) -> None:
    layout = torch.channels_last if channels_last else torch.contiguous_format
    for module in networks:
        module.to(memory_format=layout)


def step_inputs(dtype, windows: int, cfg: bool):
    generator = torch.Generator(device="cuda").manual_seed(0)
    rows = 2 * windows if cfg else windows
    sample = torch.randn((rows, 4, 12, LATENT, LATENT), device="cuda", generator=generator).to(dtype)
    audio = torch.randn((rows, 12, 50, 384), device="cuda", generator=generator).to(dtype)
    pose = torch.randn((rows, 320, 12, LATENT, LATENT), device="cuda", generator=generator).to(dtype)
    return sample, audio, pose


def one_step(networks, banks, dtype, per_batch: int, cfg: bool, official_kv: bool, uncond_all_ref: bool = False):
    """A closure running one denoising step's 14 windows of a 120-frame segment in batches of `per_batch`."""
    unet = networks.denoising_unet
    cached = unet.reference_kv(banks)
    groups = [len(call.windows) for call in denoising_calls([segment_windows(FRAMES, 1)], per_batch)[0]]
    inputs = {k: step_inputs(dtype, k, cfg) for k in set(groups)}

    def run():
        for k in groups:
            sample, audio, pose = inputs[k]
            uncond = k if cfg and not uncond_all_ref else 0
            if official_kv:  # the official reader: bank repeated per conditional row, projected every call
                rows = (2 * k if cfg else k) * 12 - uncond * 12
                reference_kv = unet.reference_kv({p: b.repeat(rows, 1, 1) for p, b in banks.items()})
            else:
                reference_kv = cached
            unet(sample, 500, audio, pose, reference_kv, uncond_batch=uncond)

    return run


def part_step(networks_by_dtype, args) -> None:
    for dtype_name, dtype in (("fp16", torch.float16), ("bf16", torch.bfloat16)):
        networks, banks = networks_by_dtype[dtype_name]
        set_layout(networks, False)
        torch.backends.cudnn.benchmark = False
        record(f"acc step, {dtype_name}, 1 window/call, official ref K/V", s=timed(one_step(networks, banks, dtype, 1, False, True)))
        record(f"acc step, {dtype_name}, 1 window/call, cached ref K/V", s=timed(one_step(networks, banks, dtype, 1, False, False)))
    networks, banks = networks_by_dtype["bf16"]
    dtype = torch.bfloat16
    for k in (2, 4, 7):
        record(f"acc step, bf16, {k} windows/call", s=timed(one_step(networks, banks, dtype, k, False, False)))
    torch.backends.cudnn.benchmark = True
    record("acc step, bf16, 4 windows/call, cudnn.benchmark", s=timed(one_step(networks, banks, dtype, 4, False, False)))
    set_layout(networks, True)
    for k in (1, 2, 4):
        torch.cuda.reset_peak_memory_stats()
        seconds = timed(one_step(networks, banks, dtype, k, False, False))
        record(f"acc step, bf16, {k} windows/call, channels_last+benchmark", s=seconds, peak_gib=torch.cuda.max_memory_allocated() / 2**30)
    for backend in (SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.CUDNN_ATTENTION):
        try:
            with sdpa_kernel([backend]):
                record(f"acc step, bf16, 4 windows/call, channels_last, SDPA {backend.name}", s=timed(one_step(networks, banks, dtype, 4, False, False)))
        except RuntimeError as error:
            record(f"acc step, SDPA {backend.name}", error=str(error).splitlines()[0][:100])


def part_cfg(networks_by_dtype, args) -> None:
    networks, banks = networks_by_dtype["bf16"]
    set_layout(networks, True)
    torch.backends.cudnn.benchmark = True
    dtype = torch.bfloat16
    record("quality step (CFG), 2 windows/call, uncond rows self-attention only", s=timed(one_step(networks, banks, dtype, 2, True, False)))
    record("quality step (CFG), 2 windows/call, reference attention on all rows", s=timed(one_step(networks, banks, dtype, 2, True, False, uncond_all_ref=True)))
    record("quality step (CFG), 2 windows/call, official ref K/V + all rows", s=timed(one_step(networks, banks, dtype, 2, True, True, uncond_all_ref=True)))


def part_decode(networks_by_dtype, args) -> None:
    networks, _ = networks_by_dtype["bf16"]
    latents = torch.randn((1, 4, 24, LATENT, LATENT), device="cuda")
    for label, dtype_name, layout, benchmark, batch in (
        ("fp16, frame by frame (official)", "fp16", False, False, 1),
        ("bf16, frame by frame", "bf16", False, False, 1),
        ("bf16, batch 4, channels_last+benchmark", "bf16", True, True, 4),
        ("bf16, batch 8, channels_last+benchmark", "bf16", True, True, 8),
        ("bf16, batch 8, NCHW+benchmark", "bf16", False, True, 8),
    ):
        nets, _ = networks_by_dtype[dtype_name]
        set_layout(nets, layout)
        torch.backends.cudnn.benchmark = benchmark
        dtype = torch.float16 if dtype_name == "fp16" else torch.bfloat16
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        seconds = timed(lambda nets=nets, dtype=dtype, batch=batch: decode_latents(nets.vae, latents, dtype, batch), repeats=1)
        record(f"VAE decode {label}", s_per_120=seconds * 5, transient_gib=(torch.cuda.max_memory_allocated() - base) / 2**30)
    set_layout(networks, True)
    torch.backends.cudnn.benchmark = True
    images = torch.randint(0, 256, (39, 3, SIZE, SIZE), device="cuda", dtype=torch.uint8)
    seconds = timed(lambda: networks.pose_encoder(images.float().div(255).to(torch.bfloat16)))
    record("pose encoder, 39 distinct frames (one 4-window batch)", s=seconds)


KERNEL_CLASSES = (
    ("attention", ("flash", "fmha", "attention", "cudnn_generated_fort_native_sdpa", "sdpa")),
    ("gemm", ("gemm", "sm90_xmma", "cutlass", "nvjet", "matmul")),
    ("conv", ("conv", "implicit", "winograd", "fprop", "dgrad")),
    ("norm", ("norm", "welford")),
    ("copy/layout", ("copy", "transpose", "cat", "index", "gather", "scatter")),
)


def part_profile(networks_by_dtype, args) -> None:
    networks, banks = networks_by_dtype["bf16"]
    set_layout(networks, True)
    torch.backends.cudnn.benchmark = True
    run = one_step(networks, banks, torch.bfloat16, 4, False, False)
    run()
    torch.cuda.synchronize()
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as profiler:
        run()
        torch.cuda.synchronize()
    classes: dict[str, float] = {}
    kernels: dict[str, float] = {}
    for event in profiler.key_averages():
        if event.device_type != torch.autograd.DeviceType.CUDA:
            continue
        total = event.device_time_total / 1e6
        name = event.key.lower()
        kind = next((label for label, keys in KERNEL_CLASSES if any(key in name for key in keys)), "elementwise/other")
        classes[kind] = classes.get(kind, 0.0) + total
        kernels[event.key] = total
    busy = sum(classes.values())
    for kind, seconds in sorted(classes.items(), key=lambda item: -item[1]):
        record(f"profile (acc step, 4 windows/call): {kind}", s=seconds, share=seconds / busy)
    top = sorted(kernels.items(), key=lambda item: -item[1])[:25]
    (args.out / "profile_top_kernels.txt").write_text("\n".join(f"{s:9.4f} s  {k}" for k, s in top))


def record_compiled_step(name: str, unet, run, mode: str) -> None:
    """Time `run` with the UNet's forward compiled (the first call's compilation apart), then restore it eager."""
    eager = unet.forward
    unet.forward = torch.compile(eager, mode=mode, dynamic=False)
    started = time.perf_counter()
    run()
    torch.cuda.synchronize()
    compile_seconds = time.perf_counter() - started
    torch.cuda.reset_peak_memory_stats()
    record(name, s=timed(run), compile_s=compile_seconds, peak_gib=torch.cuda.max_memory_allocated() / 2**30)
    unet.forward = eager


def part_compile(networks_by_dtype, args) -> None:
    networks, banks = networks_by_dtype["fp16"]
    set_layout(networks, False)
    torch.backends.cudnn.benchmark = True
    unet, decoder = networks.denoising_unet, networks.vae.decoder
    eager_decoder = decoder.forward
    for k in (1, 2):
        run = one_step(networks, banks, torch.float16, k, False, False)
        record(f"acc step, fp16, {k} windows/call, eager+benchmark", s=timed(run))
        record_compiled_step(f"acc step, fp16, {k} windows/call, torch.compile {args.compile_mode}", unet, run, args.compile_mode)
    latents = torch.randn((1, 4, 24, LATENT, LATENT), device="cuda")
    for batch in (1, 2):
        record(f"VAE decode fp16 batch {batch} eager+benchmark", s_per_120=5 * timed(lambda batch=batch: decode_latents(networks.vae, latents, torch.float16, batch), repeats=1))
        decoder.forward = torch.compile(eager_decoder, mode=args.compile_mode, dynamic=False)
        decode_latents(networks.vae, latents, torch.float16, batch)
        record(f"VAE decode fp16 batch {batch} torch.compile", s_per_120=5 * timed(lambda batch=batch: decode_latents(networks.vae, latents, torch.float16, batch), repeats=1))
        decoder.forward = eager_decoder


def first_call_seconds(fn) -> float:
    started = time.perf_counter()
    fn()
    torch.cuda.synchronize()
    return time.perf_counter() - started


def part_layout(networks_by_dtype, args) -> None:
    """channels_last under torch.compile, as the job compiles (eager it was slower): the VAE decoder at batch 2,
    and one acc step at 2 windows/call with the UNet compiled block by block (each block a graph, so a layout
    Inductor picks inside a block may be converted back at every block boundary)."""
    from echomimic2.fast import compile_regions

    networks, banks = networks_by_dtype["fp16"]
    torch.backends.cudnn.benchmark = True
    latents = torch.randn((1, 4, 24, LATENT, LATENT), device="cuda")
    decoder = networks.vae.decoder
    decoder.forward = torch.compile(decoder.forward, dynamic=False)
    compile_regions(networks.denoising_unet)
    run = one_step(networks, banks, torch.float16, 2, False, False)
    for channels_last in (False, True):
        set_layout(networks, channels_last)
        layout = "channels_last" if channels_last else "NCHW"
        def decode():
            decode_latents(networks.vae, latents, torch.float16, 2)
        compile_s = first_call_seconds(decode)
        record(f"VAE decode fp16 batch 2, compiled, {layout}", s_per_120=5 * timed(decode, repeats=2), compile_s=compile_s)
        compile_s = first_call_seconds(run)
        torch.cuda.reset_peak_memory_stats()
        record(f"acc step, fp16, 2 windows/call, compiled by blocks, {layout}", s=timed(run), compile_s=compile_s,
               peak_gib=torch.cuda.max_memory_allocated() / 2**30)
    set_layout(networks, False)


def part_accuracy(networks_by_dtype, args) -> None:
    """Same inputs and weights: fp32 plain path vs the bf16 fast path, 24 frames at 256², acc 6 steps."""
    size, frames = 256, 24
    generator = np.random.default_rng(1)
    reference = generator.integers(0, 256, (size, size, 3), dtype=np.uint8)
    audio = generator.standard_normal((frames, 50, 384), dtype=np.float32)
    poses = generator.integers(0, 256, (frames, size, size, 3), dtype=np.uint8)
    def build(dtype):
        return random_networks(official_unet_config(), official_vae_config(), torch.device("cuda"), dtype, seed=3)

    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    torch.backends.cudnn.benchmark = False
    fp32 = build(torch.float32)
    plain = render_segment(fp32, reference, audio, poses, 0, 0, 6, 1.0, windows_per_batch=1, decode_batch=1)
    del fp32
    for name, dtype, fp8 in (("bf16", torch.bfloat16, False), ("fp16", torch.float16, False),
                             ("fp16 + fp8 linears (fast mode)", torch.float16, True)):
        if name.split()[0] + ("+fp8" if fp8 else "") not in args.accuracy_paths.split(","):
            continue
        fast = build(dtype)  # the same weights (same seed and order), rounded once to `dtype`
        if fp8:
            use_float8_linears(fast.denoising_unet)
        set_layout(fast, True)
        torch.backends.cudnn.benchmark = True
        frames_fast = render_segment(fast, reference, audio, poses, 0, 0, 6, 1.0, windows_per_batch=2, decode_batch=8)
        diff = np.abs(plain.astype(np.int16) - frames_fast.astype(np.int16))
        record(f"accuracy {name} fast path vs fp32 plain (256², 24 frames, acc)", max_abs_levels=int(diff.max()), mean_abs_levels=float(diff.mean()), p99_levels=float(np.percentile(diff, 99)))
        del fast


def part_graphs(networks_by_dtype, args) -> None:
    """CUDA graphs on the eager UNet: each window-batch shape captured once and replayed (no launch gaps)."""
    networks, banks = networks_by_dtype["fp16"]
    set_layout(networks, False)
    torch.backends.cudnn.benchmark = True
    unet = networks.denoising_unet
    cached = unet.reference_kv(banks)
    timestep = torch.tensor(500.0, device="cuda")  # a device tensor: a host scalar would be copied inside the capture

    def capture(sample, audio, pose) -> torch.cuda.CUDAGraph:
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(2):
                unet(sample, timestep, audio, pose, cached, 0)
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            unet(sample, timestep, audio, pose, cached, 0)
        return graph

    for k in (1, 2):
        groups = [len(call.windows) for call in denoising_calls([segment_windows(FRAMES, 1)], k)[0]]
        inputs = {n: step_inputs(torch.float16, n, False) for n in set(groups)}
        def eager(groups=groups, inputs=inputs):
            for n in groups:
                sample, audio, pose = inputs[n]
                unet(sample, timestep, audio, pose, cached, 0)
        record(f"acc step, fp16, {k} windows/call, eager", s=timed(eager))
        base = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        graphs = {n: capture(*inputs[n]) for n in sorted(set(groups))}
        def replay(groups=groups, graphs=graphs):
            for n in groups:
                graphs[n].replay()
        record(f"acc step, fp16, {k} windows/call, eager + CUDA graphs", s=timed(replay),
               graph_pools_gib=(torch.cuda.max_memory_allocated() - base) / 2**30)
        del graphs, replay
        torch.cuda.empty_cache()


def part_fp8(networks_by_dtype, args) -> None:
    """The fast mode: the denoising UNet's linears as fp8 matmuls, eager and compiled, beside fp16 (2 windows/call)."""
    networks, banks = networks_by_dtype["fp16"]
    set_layout(networks, False)
    torch.backends.cudnn.benchmark = True
    unet = networks.denoising_unet
    for label in ("fp16", "fp8 linears"):
        if label != "fp16":
            record("fp8 linears replaced", count=use_float8_linears(unet))
        run = one_step(networks, banks, torch.float16, 2, False, False)
        record(f"acc step, {label}, 2 windows/call, eager", s=timed(run))
        if args.compile:
            record_compiled_step(f"acc step, {label}, 2 windows/call, torch.compile", unet, run, "default")
            torch._dynamo.reset()


# One UNet call at 2 windows per call (24 frame rows, acc): each attention shape, how often the call runs it.
ATTENTION_SHAPES = (
    # (label, batch, heads, queries, keys, head dim, calls per UNet call)
    ("spatial+reference 96²", 24, 8, 9216, 18432, 40, 5),
    ("spatial+reference 48²", 24, 8, 2304, 4608, 80, 5),
    ("spatial+reference 24²", 24, 8, 576, 1152, 160, 5),
    ("spatial+reference 12²", 24, 8, 144, 288, 160, 1),
    ("audio cross 96²", 24, 8, 9216, 50, 40, 5),
    ("temporal 96²", 18432, 8, 12, 12, 40, 10),
    ("temporal 48²", 4608, 8, 12, 12, 80, 10),
    ("temporal 24²", 1152, 8, 12, 12, 160, 10),
    ("temporal 12²", 288, 8, 12, 12, 160, 12),
)


def upcast_matmul_attention(query, key, value):
    """The motion modules' attention before 2026-12-04, second session: operands upcast to fp32, then the GEMM."""
    scores = torch.matmul(query.float(), key.float().transpose(-1, -2)) * query.shape[-1] ** -0.5
    return torch.matmul(scores.softmax(dim=-1).to(value.dtype), value)


def broadcast_sum_attention(query, key, value):
    """A candidate for inductor: both products as broadcast multiply + sum in fp32, so that a 12-frame sequence
    is a few fused reductions instead of GEMMs of 12 x 12 (eager, it would build a (..., 12, 12, d) tensor)."""
    scores = (query.float().unsqueeze(-2) * key.float().unsqueeze(-3)).sum(-1) * query.shape[-1] ** -0.5
    weights = scores.softmax(dim=-1).to(value.dtype).float()
    return (weights.unsqueeze(-1) * value.float().unsqueeze(-3)).sum(-2).to(value.dtype)


# Kernels tried on the motion modules' short sequences only (name -> function, compiled on its own or not).
TEMPORAL_CANDIDATES = {
    "matmuls, operands upcast to fp32": (upcast_matmul_attention, False),
    "matmuls compiled": (short_sequence_attention, True),
    "broadcast sums compiled": (broadcast_sum_attention, True),
}


def timed_attention(backend, q, k, v) -> float:
    """Seconds of one attention of q, k, v under an SDPA backend, "default" (PyTorch's choice), "matmuls" or one
    of TEMPORAL_CANDIDATES (checked against SDPA first)."""
    def matmuls():
        return short_sequence_attention(q, k, v)

    def sdpa():
        return torch.nn.functional.scaled_dot_product_attention(q, k, v)

    if backend in TEMPORAL_CANDIDATES:
        kernel, compiled = TEMPORAL_CANDIDATES[backend]
        kernel = torch.compile(kernel, dynamic=False) if compiled else kernel
        deviation = (kernel(q, k, v).float() - sdpa().float()).abs().max().item()
        if deviation > 2e-3:
            raise RuntimeError(f"{backend} deviates from SDPA by {deviation:.2e}")
        return timed(lambda: kernel(q, k, v), repeats=5)
    if backend == "matmuls":
        return timed(matmuls, repeats=5)
    if backend == "default":
        return timed(sdpa, repeats=5)
    with sdpa_kernel([backend]):
        return timed(sdpa, repeats=5)


def part_attention(networks_by_dtype, args) -> None:
    """Each attention shape of a UNet call on its own, under every SDPA backend and as plain matmuls + softmax
    (fp32 softmax): which kernel is fastest per shape, and what attention costs per call in total."""
    totals: dict[str, float] = {}
    for label, batch, heads, queries, keys, dim, count in ATTENTION_SHAPES:
        q = torch.randn((batch, heads, queries, dim), device="cuda", dtype=torch.float16)
        k = torch.randn((batch, heads, keys, dim), device="cuda", dtype=torch.float16)
        v = torch.randn_like(k)
        candidates = tuple(TEMPORAL_CANDIDATES) if label.startswith("temporal") else ()
        for backend in ("default", SDPBackend.CUDNN_ATTENTION, SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, "matmuls",
                        *candidates):
            name = backend if isinstance(backend, str) else backend.name
            if backend == "matmuls" and batch * heads * queries * keys * 4 > 8 * 2**30:
                continue
            try:
                seconds = timed_attention(backend, q, k, v)
            except (RuntimeError, TypeError) as error:  # a backend or candidate this build cannot run costs only its row
                record(f"attention {label} {name}", error=str(error).splitlines()[0][:80])
                continue
            flops = 4 * batch * heads * queries * keys * dim
            record(f"attention {label} {name}", ms=seconds * 1e3, per_call_ms=seconds * 1e3 * count, tflops=flops / seconds / 1e12)
            if backend == "default":
                totals[label] = seconds * count
    record("attention per UNet call (2 windows), default backend", s=sum(totals.values()), acc_step_s=7 * sum(totals.values()))


def kernel_table(run, out: Path, name: str) -> None:
    """Profile one `run` (after a warm-up): GPU busy time by kernel class, against its wall time; top kernels."""
    run()
    torch.cuda.synchronize()
    wall = timed(run, repeats=2)
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as profiler:
        run()
        torch.cuda.synchronize()
    classes: dict[str, float] = {}
    kernels: dict[str, tuple[float, int]] = {}
    for event in profiler.key_averages():
        if event.device_type != torch.autograd.DeviceType.CUDA:
            continue
        total, key = event.device_time_total / 1e6, event.key.lower()
        kind = ("triton (fused)" if key.startswith("triton") else
                next((label for label, keys in KERNEL_CLASSES if any(k in key for k in keys)), "elementwise/other"))
        classes[kind] = classes.get(kind, 0.0) + total
        kernels[event.key] = (total, event.count)
    busy = sum(classes.values())
    record(f"{name}: wall vs GPU busy", wall_s=wall, busy_s=busy, idle_share=1 - busy / wall)
    for kind, seconds in sorted(classes.items(), key=lambda item: -item[1]):
        record(f"{name}: {kind}", s=seconds, share=seconds / busy)
    top = sorted(kernels.items(), key=lambda item: -item[1][0])[:40]
    (out / f"{name.replace(' ', '_')}_kernels.txt").write_text(
        "\n".join(f"{s:9.4f} s  {c:6d}x  {k[:160]}" for k, (s, c) in top))
    print("\n".join(f"  {s:8.4f} s {c:5d}x {k[:120]}" for k, (s, c) in top[:25]), flush=True)


def part_compiled_profile(networks_by_dtype, args) -> None:
    """The job's compiled path (blocks + decoder, `prepare_for_gpu`): one acc step at 2 windows/call and the
    decode of 24 frames at batch 2, profiled by kernel."""
    from echomimic2.fast import prepare_for_gpu

    networks, banks = networks_by_dtype["fp16"]
    set_layout(networks, False)
    prepare_for_gpu(networks, compile_networks=True)
    run = one_step(networks, banks, torch.float16, 2, False, False)
    record("compiled acc step: first call (compile)", s=first_call_seconds(run))
    kernel_table(run, args.out, "compiled acc step")
    latents = torch.randn((1, 4, 24, LATENT, LATENT), device="cuda")
    def decode():
        decode_latents(networks.vae, latents, torch.float16, 2)
    record("compiled decode: first call (compile)", s=first_call_seconds(decode))
    kernel_table(decode, args.out, "compiled decode 24 frames")


def part_tuning(networks_by_dtype, args) -> None:
    """The compiled acc step as the job runs it, one change of the motion modules' attention at a time (SDPA was
    measured against the matmuls in the first session of 2026-12-04): operands upcast to fp32 vs fp32 scores
    from fp16 operands (`short_sequence_attention` on CUDA); then the kernel table of the last."""
    from echomimic2.fast import compile_regions

    networks, banks = networks_by_dtype["fp16"]
    set_layout(networks, False)
    torch.backends.cudnn.benchmark = True
    for label, kernel in (("matmuls, operands upcast to fp32", upcast_matmul_attention),
                          ("matmuls, fp32 scores from fp16 operands", short_sequence_attention)):
        TemporalAttention.weighted_values = staticmethod(kernel)
        torch._dynamo.reset()
        compile_regions(networks.denoising_unet)
        run = one_step(networks, banks, torch.float16, 2, False, False)
        try:
            compile_s = first_call_seconds(run)
        except Exception as error:  # noqa: BLE001 - a candidate the compiler cannot take costs only its row
            record(f"acc step, motion-module attention as {label}", error=f"{type(error).__name__}: {str(error)[:200]}")
            continue
        torch.cuda.reset_peak_memory_stats()
        record(f"acc step, compiled by blocks, motion-module attention as {label}", s=timed(run), compile_s=compile_s,
               peak_gib=torch.cuda.max_memory_allocated() / 2**30)
    TemporalAttention.weighted_values = staticmethod(short_sequence_attention)
    kernel_table(run, args.out, "compiled acc step matmul temporal")


def part_decoder_tuning(networks_by_dtype, args) -> None:
    """The compiled VAE decoder at batch 2, 4, 8, and with inductor's coordinate-descent tuning of its Triton
    kernels (measured 2026-12-04: -14 %, but the tuning is not in the saved compile artifacts)."""
    networks, _ = networks_by_dtype["fp16"]
    decoder = networks.vae.decoder
    eager_decoder = decoder.forward
    latents = torch.randn((1, 4, 24, LATENT, LATENT), device="cuda")
    for tuning in (False, True):
        torch._dynamo.reset()
        torch._inductor.config.coordinate_descent_tuning = tuning
        decoder.forward = torch.compile(eager_decoder, dynamic=False)
        for batch in ((2, 4, 8) if not tuning else (2, 4)):
            def decode(batch=batch):
                decode_latents(networks.vae, latents, torch.float16, batch)
            compile_s = first_call_seconds(decode)
            torch.cuda.reset_peak_memory_stats()
            base = torch.cuda.memory_allocated()
            record(f"VAE decode compiled, batch {batch}, coordinate descent tuning {tuning}", s_per_120=5 * timed(decode),
                   compile_s=compile_s, transient_gib=(torch.cuda.max_memory_allocated() - base) / 2**30)
    torch._inductor.config.coordinate_descent_tuning = False
    decoder.forward = eager_decoder


PARTS = {"step": part_step, "cfg": part_cfg, "decode": part_decode, "profile": part_profile, "compile": part_compile, "accuracy": part_accuracy,
         "graphs": part_graphs, "fp8": part_fp8, "layout": part_layout,
         "attention": part_attention, "compiled_profile": part_compiled_profile, "tuning": part_tuning,
         "decoder_tuning": part_decoder_tuning}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", type=Path, default=Path("."))
    parser.add_argument("--parts", default="step,cfg,decode,profile,accuracy")
    parser.add_argument("--compile-mode", default="default")
    parser.add_argument("--accuracy-paths", default="bf16,fp16,fp16+fp8", help="accuracy part: which fast paths to compare")
    parser.add_argument("--compile", action="store_true", help="fp8 part: also time the compiled steps (~2 min each).")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    parts = args.parts.split(",")
    networks_by_dtype = {}
    if set(parts) - {"accuracy"}:
        for name, dtype in (("bf16", torch.bfloat16), ("fp16", torch.float16)):
            if name == "bf16" and not {"step", "cfg", "decode", "profile"} & set(parts):
                continue
            if name == "fp16" and not {"step", "decode", "compile", "graphs", "fp8", "layout", "attention", "compiled_profile", "tuning"} & set(parts):
                continue
            networks = random_networks(official_unet_config(), official_vae_config(), torch.device("cuda"), dtype)
            banks = networks.reference_unet(torch.randn((1, 4, LATENT, LATENT), device="cuda", dtype=dtype))
            networks_by_dtype[name] = (networks, banks)
    print(f"device {torch.cuda.get_device_name()}, torch {torch.__version__}, weights {torch.cuda.memory_allocated() / 2**30:.2f} GiB", flush=True)
    for part in parts:
        started = time.perf_counter()
        try:
            PARTS[part](networks_by_dtype, args)
        except Exception as error:  # one broken part must not cost the rest of the device call
            record(f"{part} FAILED", error=f"{type(error).__name__}: {str(error)[:300]}")
        print(f"[{part} took {time.perf_counter() - started:.1f} s]", flush=True)
        (args.out / "ablations.json").write_text(json.dumps(RESULTS, indent=1))


if __name__ == "__main__":
    main()
