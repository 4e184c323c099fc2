"""`cli.py bench`: time the segment renderer with full-size, randomly initialised networks.

The networks are built on the `meta` device and materialised straight on the GPU (no CPU
initialisation), then `render_segment` runs exactly as `EchoMimicV2.render` runs it. Stage times
come from CUDA events recorded around each network call, so the timed run is not slowed by
synchronisation. Achieved TFLOP/s use the official FLOP counts of spec §12 ("spec-equivalent": the
work the official code does for the same frames, including what our fast paths skip).

Without a GPU the same code runs the tiny networks at a small size on the CPU: a smoke test only,
its figures say nothing about GPU speed.
"""
from __future__ import annotations

import json
import math
import time
from collections.abc import Callable
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field

import numpy as np
import torch

from .audio import N_MELS, SLICE_MEL_FRAMES, WhisperFeatures
from .config import official_unet_config, official_vae_config, tiny_unet_config, tiny_vae_config
from .fast import prepare_for_gpu, use_float8_linears
from .flops import spec_flops
from .networks import OfficialNetworks, random_networks
from .presets import PRESETS, Preset, full_size_preset
from .sampler import render_segment

FPS = 24
REPORT_FRAMES = 120  # figures are given per 120 frames (5 s of video), as in issue 5
CPU_SIZE, CPU_MAX_FRAMES = 64, 12
WARMUP_STEPS = 2  # 2 steps see every window-batch shape (the window grid alternates between two layouts)
WARMUP_MAX_FRAMES = 120  # longer segments reuse the same batch shapes


# --------------------------------------------------------------------------------------------------
# Stage timing


class _StageClock:
    """Intervals recorded with CUDA events (no synchronisation while running) or host time on the CPU."""

    def __init__(self, device: torch.device):
        self.cuda = device.type == "cuda"
        self.intervals: list[tuple[str | torch.Tensor, object, object]] = []

    def mark(self):
        if self.cuda:
            event = torch.cuda.Event(enable_timing=True)
            event.record()
            return event
        return time.perf_counter()

    def seconds(self) -> dict[str, float]:
        if self.cuda:
            torch.cuda.synchronize()
        totals: dict[str, float] = {}
        for label, start, end in self.intervals:
            elapsed = start.elapsed_time(end) / 1e3 if self.cuda else end - start
            for stage, share in _stage_shares(label):
                totals[stage] = totals.get(stage, 0.0) + elapsed * share
        return totals

    @contextmanager
    def instrument(self, owner, method: str, label):
        """Time every call of `owner.method`; `label(args, kwargs)` names the stage of a call (a str, or a
        timestep tensor for a denoising step)."""
        original = getattr(owner, method)
        patched_before = method in vars(owner)

        def timed(*args, **kwargs):
            start = self.mark()
            result = original(*args, **kwargs)
            self.intervals.append((label(args, kwargs), start, self.mark()))
            return result

        setattr(owner, method, timed)
        try:
            yield
        finally:
            if patched_before:
                setattr(owner, method, original)
            else:
                delattr(owner, method)


def _denoise_step_label(args, kwargs) -> torch.Tensor:
    """The call's timesteps (a device tensor, one value per batch row), named by `seconds()` once the run is over."""
    return args[1] if len(args) > 1 else kwargs["timestep"]


def _stage_shares(label: str | torch.Tensor) -> list[tuple[str, float]]:
    """The stages an interval's time goes to, with their shares. A denoising call is filled across step
    boundaries (`sampler.denoising_calls`), so its rows may belong to several steps: each step named in its
    timesteps gets the share of the rows it has (every row of a call costs the same)."""
    if isinstance(label, str):
        return [(label, 1.0)]
    rows = [int(value) for value in torch.as_tensor(label).flatten().tolist()]  # read after the run: no sync while timing
    counts = dict.fromkeys(rows, 0)  # the steps in the order the call holds them (oldest step first)
    for value in rows:
        counts[value] += 1
    return [(f"step t={value}", count / len(rows)) for value, count in counts.items()]


@dataclass
class BenchResult:
    preset: str
    frames: int
    size: int
    steps: int
    guidance: float
    device: str
    dtype: str
    networks: str
    wall_seconds: float
    stages: dict[str, float]
    step_seconds: list[float]
    peak_gib: float | None
    flops: dict[str, float]
    notes: list[str] = field(default_factory=list)

    @property
    def seconds_per_120(self) -> float:
        return self.wall_seconds * REPORT_FRAMES / self.frames

    @property
    def realtime_factor(self) -> float:
        return self.frames / FPS / self.wall_seconds

    def tflops(self) -> dict[str, float]:
        if not self.flops:  # the CPU smoke run uses the tiny networks: the spec's counts do not apply
            return {}
        pairs = {"total": (sum(self.flops.values()), self.wall_seconds)}
        pairs.update({stage: (self.flops[stage], self.stages.get(stage, 0.0)) for stage in self.flops})
        return {name: flops / seconds / 1e12 for name, (flops, seconds) in pairs.items() if seconds > 0}

    def as_dict(self) -> dict:
        return {
            "preset": self.preset, "frames": self.frames, "size": self.size, "steps": self.steps,
            "guidance": self.guidance, "device": self.device, "dtype": self.dtype, "networks": self.networks,
            "wall_s": round(self.wall_seconds, 3), "s_per_120_frames": round(self.seconds_per_120, 3),
            "realtime_factor": round(self.realtime_factor, 3),
            "stages_s": {k: round(v, 4) for k, v in self.stages.items()},
            "mean_step_s": round(sum(self.step_seconds) / len(self.step_seconds), 4) if self.step_seconds else None,
            "spec_pflops": {k: round(v / 1e15, 4) for k, v in self.flops.items()},
            "spec_equivalent_tflops_per_s": {k: round(v, 1) for k, v in self.tflops().items()},
            "peak_gib": None if self.peak_gib is None else round(self.peak_gib, 3),
            "notes": self.notes,
        }


# --------------------------------------------------------------------------------------------------
# The benchmark


class BenchArgumentError(ValueError):
    """An argument of the user's that the bench cannot run with: `cli.py bench` says so and exits 2. Any other
    exception is the program's and keeps its traceback."""


def check_bench_arguments(preset_name: str, size: int, frames: int | None = None, steps: int | None = None) -> Preset:
    """The full-size preset `preset_name`, once the size (and frames, steps when given) are valid."""
    try:
        preset = full_size_preset(preset_name)
    except ValueError as error:
        raise BenchArgumentError(str(error)) from None
    if size < 64 or size % 64:
        raise BenchArgumentError(f"size must be a positive multiple of 64, got {size}")
    if frames is not None and frames < 1:
        raise BenchArgumentError(f"frames must be at least 1, got {frames}")
    if steps is not None and steps < 1:
        raise BenchArgumentError(f"steps must be at least 1, got {steps}")
    return preset


def gpu_networks(compile_networks: bool = True, fp8: bool = False) -> OfficialNetworks:
    """The bench's full-size random networks on the GPU in fp16, with the GPU settings (optionally compiled, optionally
    the fp8 fast mode). Several `run_bench` calls can share them, so compilation is paid once per process."""
    networks = random_networks(official_unet_config(), official_vae_config(), torch.device("cuda"), torch.float16)
    if fp8:
        use_float8_linears(networks.denoising_unet)
    return prepare_for_gpu(networks, compile_networks)


def run_bench(preset_name: str, frames: int, size: int, compile_networks: bool = True, windows_per_batch: int | None = None,
              decode_batch: int | None = None, networks: OfficialNetworks | None = None, steps: int | None = None,
              fp8: bool = False) -> BenchResult:
    """Batch sizes default to the renderer's per-device defaults (on a GPU those keep peak memory ≤ 8 GiB at
    768², BENCHMARKS.md); compilation only on a GPU. `networks` from `gpu_networks(compile_networks)` are
    reused (pass the same compile_networks and fp8); `steps` overrides the preset's (a shorter run, to time steps);
    `fp8` times the opt-in fast mode."""
    preset = check_bench_arguments(preset_name, size, frames)
    steps = preset.steps if steps is None else steps
    notes: list[str] = []
    if fp8:
        notes.append("fast mode: fp8 matmuls in the denoising UNet (numerics differ from the fp16 default)")
    if steps != preset.steps:
        notes.append(f"{steps} steps instead of the preset's {preset.steps}")
    if torch.cuda.is_available():
        device, dtype, networks_kind = torch.device("cuda"), torch.float16, "official sizes, random weights"
        networks = gpu_networks(compile_networks, fp8) if networks is None else networks
        if compile_networks:
            notes.append("torch.compile on (compilation happens in the untimed warm-up)")
    else:
        device, dtype, networks_kind = torch.device("cpu"), torch.float32, "tiny, random weights"
        if size != CPU_SIZE or frames > CPU_MAX_FRAMES:
            notes.append(f"no GPU: ran the tiny networks on the CPU at {CPU_SIZE}² for {min(frames, CPU_MAX_FRAMES)} frames instead of {size}² x {frames}")
        else:
            notes.append("no GPU: ran the tiny networks on the CPU")
        size, frames = CPU_SIZE, min(frames, CPU_MAX_FRAMES)
        networks = random_networks(tiny_unet_config(), tiny_vae_config(), device, dtype)
        if fp8:
            use_float8_linears(networks.denoising_unet)
    whisper = WhisperFeatures.tiny(seed=0, device=device, dtype=dtype)

    generator = np.random.default_rng(0)
    reference = generator.integers(0, 256, (size, size, 3), dtype=np.uint8)
    audio = generator.standard_normal((frames, 50, 384), dtype=np.float32)
    poses = generator.integers(0, 256, (frames, size, size, 3), dtype=np.uint8)
    mel = torch.from_numpy(generator.standard_normal((math.ceil(frames / FPS / 30), N_MELS, SLICE_MEL_FRAMES), dtype=np.float32))

    def render(n: int, steps: int) -> np.ndarray:
        return render_segment(
            networks, reference, audio[:n], poses[:n], seed=0, first_frame=0, steps=steps, guidance=preset.guidance,
            windows_per_batch=windows_per_batch, decode_batch=decode_batch,
        )

    def synchronize() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize()

    # Warm-up: kernel selection (cudnn.benchmark), compilation and allocator growth stay out of the timing.
    whisper._encode(mel.to(device, dtype))
    render(min(frames, WARMUP_MAX_FRAMES), min(WARMUP_STEPS, steps))
    synchronize()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()

    clock = _StageClock(device)
    with ExitStack() as stack:
        stack.enter_context(clock.instrument(whisper, "_encode", lambda a, k: "audio"))
        stack.enter_context(clock.instrument(networks.vae, "encode", lambda a, k: "reference"))
        stack.enter_context(clock.instrument(networks.reference_unet, "forward", lambda a, k: "reference"))
        stack.enter_context(clock.instrument(networks.denoising_unet, "reference_kv", lambda a, k: "reference"))
        stack.enter_context(clock.instrument(networks.pose_encoder, "forward", lambda a, k: "pose"))
        stack.enter_context(clock.instrument(networks.denoising_unet, "forward", _denoise_step_label))
        stack.enter_context(clock.instrument(networks.vae, "decode", lambda a, k: "decode"))
        synchronize()
        started = time.perf_counter()
        whisper._encode(mel.to(device, dtype))
        video = render(frames, steps)
        synchronize()
        wall = time.perf_counter() - started
    if video.shape != (frames, size, size, 3):
        raise RuntimeError(f"renderer returned {video.shape}, expected {(frames, size, size, 3)}")

    stages = clock.seconds()
    step_seconds = [seconds for label, seconds in stages.items() if label.startswith("step ")]
    stages = {label: seconds for label, seconds in stages.items() if not label.startswith("step ")}
    # Pose encoding runs inside the window loop; the denoiser's own time excludes it.
    stages["denoise"] = sum(step_seconds)
    stages["other"] = wall - sum(stages.values())
    return BenchResult(
        preset=preset_name, frames=frames, size=size, steps=steps, guidance=preset.guidance,
        device=torch.cuda.get_device_name() if device.type == "cuda" else "cpu", dtype=str(dtype).removeprefix("torch."),
        networks=networks_kind, wall_seconds=wall, stages=stages, step_seconds=step_seconds,
        peak_gib=torch.cuda.max_memory_allocated() / 2**30 if device.type == "cuda" else None,
        flops=spec_flops(size, frames, steps, preset.guidance) if device.type == "cuda" else {}, notes=notes,
    )


def format_report(result: BenchResult) -> str:
    tflops = result.tflops()
    lines = [
        f"EchoMimic V2 bench: preset {result.preset} ({result.steps} steps, guidance {result.guidance}), "
        f"{result.frames} frames at {result.size}², {result.device}, {result.dtype}, {result.networks}",
        *(f"NOTE: {note}" for note in result.notes),
        f"wall {result.wall_seconds:.2f} s = {result.seconds_per_120:.2f} s per {REPORT_FRAMES} frames; "
        f"real-time factor {result.realtime_factor:.3f} (video seconds at {FPS} fps / wall seconds)",
        f"{'stage':<10}{'seconds':>10}{'share':>8}{'spec PFLOP':>12}{'TFLOP/s':>10}",
    ]
    for stage in ("audio", "pose", "reference", "denoise", "decode", "other"):
        seconds = result.stages.get(stage, 0.0)
        flops = result.flops.get(stage)
        lines.append(
            f"{stage:<10}{seconds:>10.3f}{seconds / result.wall_seconds:>8.1%}"
            f"{'' if flops is None else f'{flops / 1e15:.3f}':>12}{'' if stage not in tflops else f'{tflops[stage]:.0f}':>10}"
        )
    if result.step_seconds:
        lines.append(f"per denoising step: mean {sum(result.step_seconds) / len(result.step_seconds):.3f} s ("
                     + ", ".join(f"{s:.3f}" for s in result.step_seconds) + ")")
    if result.flops:
        lines.append(f"spec-equivalent throughput: {tflops['total']:.0f} TFLOP/s over {sum(result.flops.values()) / 1e15:.3f} PFLOP")
    lines.append("peak GPU memory: " + ("n/a (CPU)" if result.peak_gib is None else f"{result.peak_gib:.2f} GiB allocated"))
    official = PRESETS[result.preset].official
    if result.device != "cpu" and official is not None and result.size == official.size:
        lines.append(official.describe())
    return "\n".join(lines)


def bench_command(preset: str = "acc", frames: int = REPORT_FRAMES, size: int = 768, json_out: bool = False,
                  fp8: bool = False, compile_networks: bool = True, before_compile: Callable[[], None] | None = None) -> int:
    """`before_compile` runs once the arguments are valid, before the networks are built (`cli.py` loads the
    render workers' compile cache there: this package knows nothing of storage)."""
    try:
        check_bench_arguments(preset, size, frames)
    except BenchArgumentError as error:
        print(f"bench: {error}")
        return 2
    # Anything raised from here on is a fault of the program: its traceback shows.
    if before_compile is not None:
        before_compile()
    result = run_bench(preset, frames, size, compile_networks=compile_networks, fp8=fp8)
    print(json.dumps(result.as_dict()) if json_out else format_report(result))
    return 0
