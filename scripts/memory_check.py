"""Peak memory of the batch job for a short clip and for one 10x longer (issue 3: a long clip must
not need more memory; segments bound every stage).

Runs the real job (tiny model, local Ray with 2 logical GPUs) once per clip, each in a fresh
output root, sampling the memory of the driver and every Ray worker it started (by role) every
0.1 s. Private memory = RSS minus shared pages: a worker's RSS also counts the pages of Ray's
shared object store it has touched, which Ray bounds separately (object_store_memory). Prints
one table; exits 1 if a role's private peak for the long clip exceeds the short clip's by more
than --tolerance (default 25%).

    .venv/bin/python scripts/memory_check.py [--seconds 3] [--factor 10] [--size 256]
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import pandas as pd
import psutil
import soundfile
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

ROLES = ("driver", "PreprocessWorkers", "RenderWorkers", "assemble_task")  # Ray process titles (job.on_ray_data)


def role_of(process: psutil.Process) -> str | None:
    if process.pid == psutil.Process().pid:
        return "driver"
    try:
        title = " ".join(process.cmdline())
    except psutil.Error:
        return None
    return next((role for role in ROLES[1:] if role in title), None)


class PeakSampler(threading.Thread):
    """Peak RSS per role over the driver's process tree (its local Ray and all workers)."""

    def __init__(self):
        super().__init__(daemon=True)
        self.peaks = {role: 0 for role in ROLES}  # private bytes
        self.rss_peaks = {role: 0 for role in ROLES}
        self.stop = threading.Event()

    def run(self):
        me = psutil.Process()
        while not self.stop.is_set():
            for process in [me, *me.children(recursive=True)]:
                role = role_of(process)
                if role:
                    try:
                        memory = process.memory_info()
                        self.peaks[role] = max(self.peaks[role], memory.rss - memory.shared)
                        self.rss_peaks[role] = max(self.rss_peaks[role], memory.rss)
                    except psutil.Error:
                        pass
            time.sleep(0.1)


def make_inputs(folder: Path, seconds: float, size: int) -> str:
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (size + 40, size, 3), dtype=np.uint8)).save(folder / "face.png")
    t = np.arange(int(seconds * 16_000)) / 16_000
    soundfile.write(folder / "voice.wav", (0.3 * np.sin(2 * np.pi * 220 * t)).astype(np.float32), 16_000)
    manifest = folder / "manifest.parquet"
    pd.DataFrame([dict(clip_id="clip", image="face.png", audio="voice.wav", fps=24.0, width=size, height=size)]).to_parquet(manifest)
    return str(manifest)


def measure(seconds: float, size: int) -> tuple[dict[str, int], dict[str, int]]:
    from pipeline.commands import run_command

    with tempfile.TemporaryDirectory() as folder:
        manifest = make_inputs(Path(folder), seconds, size)
        sampler = PeakSampler()
        sampler.start()
        try:
            code = run_command(manifest, str(Path(folder) / "out"), gpus=2)
        finally:
            sampler.stop.set()
            sampler.join()
        if code != 0:
            raise SystemExit(f"the job failed (exit {code})")
        return sampler.peaks, sampler.rss_peaks


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--factor", type=float, default=10.0)
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--tolerance", type=float, default=0.25)
    args = parser.parse_args()
    (short, short_rss), (long, long_rss) = measure(args.seconds, args.size), measure(args.seconds * args.factor, args.size)
    print(f"\npeak memory (MiB), {args.size}x{args.size} tiny model, 24 fps: private (RSS incl. object-store pages)")
    print(f"{'role':<18}{args.seconds:>14.0f} s{args.seconds * args.factor:>14.0f} s   private ratio")
    worst = 0.0
    for role in ROLES:
        ratio = long[role] / short[role] if short[role] else float("nan")
        worst = max(worst, ratio) if short[role] else worst
        print(f"{role:<18}{short[role] / 2**20:>7.0f} ({short_rss[role] / 2**20:>5.0f}){long[role] / 2**20:>8.0f} "
              f"({long_rss[role] / 2**20:>5.0f})   {ratio:.2f}")
    return 0 if worst <= 1 + args.tolerance else 1


if __name__ == "__main__":
    raise SystemExit(main())
