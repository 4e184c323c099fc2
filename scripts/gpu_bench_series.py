"""The issue-5 bench figures in one GPU process, so torch.compile is paid once: acc at 120 frames, acc
at a long segment (peak memory must not grow), then the quality preset if the time budget allows
(all 30 steps, or else a few steps timed and the 30-step figure extrapolated, said so in the line).

    python scripts/gpu_bench_series.py --out DIR [--budget 540] [--long-frames 1200] [--no-compile]

Each result is appended to DIR/bench_series.jsonl as soon as it exists (a run cut short keeps what
it finished). Without a GPU it runs the CPU smoke bench (tiny networks), to check the script itself.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from echomimic2.bench import format_report, gpu_networks, run_bench  # noqa: E402

QUALITY_STEPS, SHORT_QUALITY_STEPS = 30, 4
CFG_STEP_FACTOR = 1.9  # a CFG step runs twice the rows: 4.75 / 2.57 s eager (BENCHMARKS.md)
SAFETY = 1.15


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--budget", type=float, default=540.0, help="seconds this process may take in all")
    parser.add_argument("--long-frames", type=int, default=1200)
    parser.add_argument("--size", type=int, default=768)
    parser.add_argument("--no-compile", action="store_true")
    args = parser.parse_args()
    started = time.perf_counter()
    args.out.mkdir(parents=True, exist_ok=True)
    lines = args.out / "bench_series.jsonl"

    def remaining() -> float:
        return args.budget - (time.perf_counter() - started)

    def emit(name: str, **record) -> None:
        record = {"run": name, "elapsed_s": round(time.perf_counter() - started, 1), **record}
        with lines.open("a") as handle:
            handle.write(json.dumps(record) + "\n")
        print(json.dumps(record), flush=True)

    compile_networks = not args.no_compile
    on_gpu = torch.cuda.is_available()
    emit("environment", torch=torch.__version__, device=torch.cuda.get_device_name() if on_gpu else "cpu",
         compile=compile_networks, budget_s=args.budget)
    networks = gpu_networks(compile_networks) if on_gpu else None

    def bench(name: str, preset: str, frames: int, steps: int | None = None):
        call_started = time.perf_counter()
        result = run_bench(preset, frames, args.size, compile_networks=compile_networks, networks=networks, steps=steps)
        overhead = time.perf_counter() - call_started - result.wall_seconds  # warm-up (compilation), input set-up
        print(format_report(result), flush=True)
        emit(name, overhead_s=round(overhead, 1), **result.as_dict())
        return result, overhead

    acc, acc_overhead = bench("acc_120", "acc", 120)
    acc_step = sum(acc.step_seconds) / max(len(acc.step_seconds), 1)

    long_needed = SAFETY * (acc.wall_seconds * args.long_frames / acc.frames + 30)
    if remaining() > long_needed:
        bench(f"acc_{args.long_frames}", "acc", args.long_frames)
    else:
        emit(f"acc_{args.long_frames}", skipped=f"needs ~{long_needed:.0f} s, {remaining():.0f} s left")

    # A new preset means new shapes (CFG doubles the rows): compilation again, about as long as the first.
    cfg_step = CFG_STEP_FACTOR * acc_step
    non_step = acc.wall_seconds - sum(acc.step_seconds)
    full_needed = SAFETY * (acc_overhead + (QUALITY_STEPS + 2) * cfg_step + non_step)
    short_needed = SAFETY * (acc_overhead + (SHORT_QUALITY_STEPS + 2) * cfg_step + non_step)
    if remaining() > full_needed:
        bench("quality_120", "quality", 120)
    elif remaining() > short_needed:
        quality, _ = bench(f"quality_120_{SHORT_QUALITY_STEPS}_steps", "quality", 120, steps=SHORT_QUALITY_STEPS)
        mean_step = sum(quality.step_seconds) / len(quality.step_seconds)
        estimate = quality.wall_seconds - sum(quality.step_seconds) + QUALITY_STEPS * mean_step
        emit("quality_120_estimate", estimated_s_per_120_frames=round(estimate * 120 / quality.frames, 2),
             basis=f"measured wall of {SHORT_QUALITY_STEPS} steps with the step time replaced by {QUALITY_STEPS} x the measured mean step {mean_step:.3f} s")
    else:
        emit("quality_120", skipped=f"needs ~{short_needed:.0f} s, {remaining():.0f} s left")
    emit("done", remaining_s=round(remaining(), 1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
