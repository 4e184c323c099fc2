"""A render worker's start, timed as the job runs it: `RenderStage.setup()` (compile cache, model) and its
first segment, then a second one, with full-size random weights. Run it twice with the same --compile-cache
and a fresh inductor folder each time (another node): the first run is a cold start, the second a warm one.

    python scripts/warm_start.py --compile-cache /tmp/cc --output /tmp/ws   # prints one JSON line
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run as a script from anywhere


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--compile-cache", required=True)
    parser.add_argument("--output", required=True)
    parser.add_argument("--preset", default="acc")
    parser.add_argument("--frames", type=int, default=48)
    parser.add_argument("--size", type=int, default=768)
    args = parser.parse_args()

    import torch
    from torch._dynamo.utils import counters

    from pipeline.render import model_identity
    from pipeline.rows import JobSettings, SegmentWork
    from pipeline.stages import JobBoard, RenderStage

    settings = JobSettings(output=args.output, preset=args.preset, weights=None, random_weights=True,
                           model_identity=model_identity(args.preset, None, True), segment_frames=288,
                           overlap_frames=6, compile_cache=args.compile_cache)
    rng = np.random.default_rng(0)
    n, size = args.frames, args.size

    def work(start: int) -> SegmentWork:
        return SegmentWork(0, "warm-start", "f" * 16, start, start + n, seed=0, steps=None, guidance=None,
                           reference=rng.integers(0, 256, (size, size, 3), dtype=np.uint8),
                           audio=rng.standard_normal((n, 50, 384), dtype=np.float32),
                           poses=rng.integers(0, 256, (n, size, size, 3), dtype=np.uint8))

    stage = RenderStage(settings, JobBoard())
    started = time.perf_counter()
    stage.on_worker_start(restarted=False, node_id=None)
    stage.setup()
    setup = time.perf_counter() - started
    first = stage(work(0))
    first_done = time.perf_counter() - started
    second = stage(work(1000))
    print(json.dumps(dict(
        preset=args.preset, frames=n, size=size, device=torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu",
        compile_cache=stage.compile_cache.uri if stage.compile_cache else None,
        cache_loaded=bool(stage.compile_cache and stage.compile_cache.loaded),
        setup_s=round(setup, 2), first_segment_render_s=round(first.seconds, 2),
        worker_start_to_first_segment_s=round(first_done, 2), second_segment_render_s=round(second.seconds, 2),
        errors=[r.error for r in (first, second) if r.error], inductor=dict(counters["inductor"]),
        peak_gib=round(torch.cuda.max_memory_allocated() / 2**30, 2) if torch.cuda.is_available() else None)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
