"""`cli.py bench --schedule`: GPU seconds per 120 output frames of clips rendered the way the job renders
them, beside one render of the whole clip (the official code's schedule), and their ratio.

The job cuts a clip into overlapping segments (`segments.plan_segments`); a render worker renders each on
its own window grid with noise fixed by (seed, global frame) and writes its frames to storage
(`stages.RenderStage`). Here every planned segment goes through the same two calls
(`steps.render_frames` writing each decoded batch into `segment_store.segment_output`, in a temporary folder,
while the GPU decodes the next), one after the other on
one GPU: the GPU time a clip costs the job, without Ray's scheduling around it. The whole-clip render is
`render_frames` over all frames at once. The inputs are random (the speed does not depend on them).
"""
from __future__ import annotations

import json
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass

import numpy as np

from echomimic2.bench import BenchArgumentError, check_bench_arguments
from pipeline.segment_store import segment_output
from pipeline.segments import DEFAULT_OVERLAP_FRAMES, DEFAULT_SEGMENT_FRAMES, plan_segments
from pipeline.steps import render_frames

FPS = 24
REPORT_FRAMES = 120
WARMUP_FRAMES = 24  # two window layouts of every batch shape: compilation and autotuning stay untimed


@dataclass
class ScheduleFigures:
    frames: int
    segments: int
    whole_clip_seconds: float
    job_schedule_seconds: float
    write_seconds: float  # of job_schedule_seconds: committing the segments after their last frame
    whole_clip_peak_gib: float | None
    job_schedule_peak_gib: float | None

    @property
    def ratio(self) -> float:
        return self.job_schedule_seconds / self.whole_clip_seconds

    def per_120(self, seconds: float) -> float:
        return seconds * REPORT_FRAMES / self.frames


def load_compile_cache(preset: str, compile_cache: str | None, compile_networks: bool = True, fp8: bool = False) -> None:
    """Before a bench compiles on the GPU: load the kernels (and traces) that `cli.py run --compile-cache` workers
    saved for `preset`, so the bench starts warm as a job's worker would. Nothing to do on the CPU."""
    import torch

    if compile_networks and compile_cache and torch.cuda.is_available():
        from pipeline.render import CompileCache

        CompileCache(compile_cache, preset, fp8).load()


def _model(preset: str, compile_networks: bool, compile_cache: str | None):
    import torch

    from echomimic2 import EchoMimicV2

    if not torch.cuda.is_available():
        return EchoMimicV2.tiny(), "cpu, the tiny demo networks (a smoke run: says nothing about GPU speed)"
    load_compile_cache(preset, compile_cache, compile_networks)
    model = EchoMimicV2.random(preset, seed=0, device="cuda", dtype=torch.float16, compile=compile_networks)
    return model, f"{torch.cuda.get_device_name()}, full-size random networks, fp16, compiled={compile_networks}"


def run_schedule_bench(preset: str, clip_seconds: list[float], size: int, steps: int | None = None,
                       compile_networks: bool = True, compile_cache: str | None = None,
                       segment_frames: int = DEFAULT_SEGMENT_FRAMES, overlap_frames: int = DEFAULT_OVERLAP_FRAMES,
                       on_clip: Callable[[ScheduleFigures], None] | None = None) -> tuple[str, list[ScheduleFigures]]:
    """The figures of each clip length; `on_clip` gets each as soon as it is measured (a run cut short by a
    time limit still leaves the clips it finished)."""
    import torch

    model, described = _model(preset, compile_networks, compile_cache)
    cuda = torch.cuda.is_available()
    if not cuda:
        size = 64
    steps = model.preset.steps if steps is None else steps
    guidance = model.preset.guidance
    longest = max(round(seconds * FPS) for seconds in clip_seconds)
    rng = np.random.default_rng(0)
    reference = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
    audio = rng.standard_normal((longest, 50, 384), dtype=np.float32)
    poses = rng.integers(0, 256, (longest, size, size, 3), dtype=np.uint8)

    def render(start: int, stop: int, on_frames=None) -> np.ndarray:
        return render_frames(model, reference, audio[start:stop], poses[start:stop], seed=0, first_frame=start,
                             steps=steps, guidance=guidance, on_frames=on_frames)

    def timed(work) -> tuple[float, float | None]:
        if cuda:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        started = time.perf_counter()
        work()
        if cuda:
            torch.cuda.synchronize()
        return time.perf_counter() - started, torch.cuda.max_memory_allocated() / 2**30 if cuda else None

    render(0, min(WARMUP_FRAMES, longest))
    figures = []
    with tempfile.TemporaryDirectory(prefix="schedule-bench-") as folder:
        for seconds in clip_seconds:
            frames = round(seconds * FPS)
            segments = plan_segments(frames, segment_frames, overlap_frames)
            whole, whole_peak = timed(lambda frames=frames: render(0, frames))
            writes = []

            def job_schedule(segments=segments, writes=writes) -> None:
                for start, stop in segments:  # as the render worker does: each decoded batch written meanwhile
                    with segment_output(f"{folder}/{start}-{stop}.npy", stop - start, size, size) as segment:
                        render(start, stop, segment.write)
                        began = time.perf_counter()
                    writes.append(time.perf_counter() - began)  # the commit after the last frame

            scheduled, scheduled_peak = timed(job_schedule)
            figures.append(ScheduleFigures(frames, len(segments), whole, scheduled, sum(writes), whole_peak, scheduled_peak))
            if on_clip is not None:
                on_clip(figures[-1])
    header = (f"schedule bench: preset {preset} ({steps} steps, guidance {guidance}), {size}², {described}; "
              f"segments of ≤ {segment_frames} frames sharing {overlap_frames}")
    official = model.preset.official
    if cuda and official is not None and size == official.size and steps == model.preset.steps:
        header += "\n" + official.describe()
    return header, figures


TABLE_HEADER = (f"{'frames':>7}{'segments':>9}{'whole clip s/120':>18}{'job schedule s/120':>20}{'ratio':>7}"
                f"{'commits s':>10}{'peak GiB whole/job':>20}")


def format_clip(f: ScheduleFigures) -> str:
    peaks = "n/a" if f.whole_clip_peak_gib is None else f"{f.whole_clip_peak_gib:.2f}/{f.job_schedule_peak_gib:.2f}"
    return (f"{f.frames:>7}{f.segments:>9}{f.per_120(f.whole_clip_seconds):>18.2f}"
            f"{f.per_120(f.job_schedule_seconds):>20.2f}{f.ratio:>7.3f}{f.write_seconds:>10.2f}{peaks:>20}")


def parse_clip_seconds(text: str) -> list[float]:
    """`--schedule`'s clip lengths ("5,20,120") in seconds; BenchArgumentError unless all are positive numbers."""
    try:
        seconds = [float(value) for value in text.split(",") if value.strip()]
    except ValueError:
        seconds = []
    if not seconds or min(seconds) <= 0 or not all(np.isfinite(seconds)):
        raise BenchArgumentError(f"--schedule takes clip lengths in seconds, e.g. 5,20,120, got {text!r}")
    return seconds


def schedule_command(preset: str, clip_seconds: str, size: int, steps: int | None, json_out: bool,
                     compile_cache: str | None, compile_networks: bool = True) -> int:
    try:  # the user's arguments: a message and exit 2; anything raised later is the program's (a traceback)
        seconds = parse_clip_seconds(clip_seconds)
        check_bench_arguments(preset, size, steps=steps)
    except BenchArgumentError as error:
        print(f"bench: {error}")
        return 2

    def print_clip(figure: ScheduleFigures) -> None:  # each line as soon as measured, one JSON line per clip
        line = json.dumps(dict(asdict(figure), ratio=round(figure.ratio, 4))) if json_out else format_clip(figure)
        print(line, flush=True)

    if not json_out:
        print(TABLE_HEADER, flush=True)
    header, _ = run_schedule_bench(preset, seconds, size, steps, compile_networks, compile_cache, on_clip=print_clip)
    print(json.dumps(dict(header=header)) if json_out else header, flush=True)
    return 0
