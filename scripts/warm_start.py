"""A render worker's start and segments, timed as the job runs them: `RenderStage.setup()` (compile cache,
model), then one segment per `--frames` length, with full-size random weights. Run it twice with the same
--compile-cache and a fresh inductor folder each time (another node): the first run is a cold start, the
second a warm one.

    python scripts/warm_start.py --compile-cache /tmp/cc --output /tmp/ws                  # prints one JSON line
    python scripts/warm_start.py --compile-cache /tmp/cc --output /tmp/ws --frames 48,288,30 --per-call

`--per-call` renders each length a second time with every network call timed on its own (the GPU is
synchronised before and after each call, so the figures split a segment into its parts; the first pass's
segment times are the undisturbed ones): per network and input shape, the calls, the CPU seconds spent
launching them and the seconds until the GPU finished them; what is left of the segment is the sampler's
own work between the calls (pose uploads, the overlap average, the DDIM step, host copies).
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from collections import defaultdict
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run as a script from anywhere


def timed_calls(networks, stats: dict) -> None:
    """Wrap the forwards the sampler calls so that each call records (launch s, finished s) by shape."""
    import torch

    def wrap(owner, attribute: str, name: str) -> None:
        inner = getattr(owner, attribute)

        def call(*args, **kwargs):
            shape = next((tuple(a.shape) for a in args if isinstance(a, torch.Tensor)), ())
            torch.cuda.synchronize()
            started = time.perf_counter()
            out = inner(*args, **kwargs)
            launched = time.perf_counter()
            torch.cuda.synchronize()
            entry = stats[f"{name} {shape}"]
            entry[0] += 1
            entry[1] += launched - started
            entry[2] += time.perf_counter() - started
            return out

        setattr(owner, attribute, call)

    wrap(networks.denoising_unet, "forward", "denoising_unet")
    wrap(networks.vae, "decode", "vae.decode")
    wrap(networks.vae, "encode", "vae.encode")
    wrap(networks.pose_encoder, "forward", "pose_encoder")
    wrap(networks.reference_unet, "forward", "reference_unet")


def frames_digest(stage, result) -> str | None:
    """sha256 (16 hex digits) of a segment's stored frames: the same inputs give the same digest in a cold and a
    warm run where the kernels (and cuDNN's algorithm choice) are the same."""
    import hashlib

    from pipeline.segment_store import iter_segment

    if result.error:
        return None
    digest = hashlib.sha256()
    for chunk in iter_segment(stage.ledger.segment_uri(result.clip_id, result.fingerprint, result.start, result.stop)):
        digest.update(chunk.tobytes())
    return digest.hexdigest()[:16]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--compile-cache", required=True)
    parser.add_argument("--output", required=True)
    parser.add_argument("--preset", default="acc")
    parser.add_argument("--frames", default="48,48", help="segment lengths, rendered in this order")
    parser.add_argument("--size", type=int, default=768)
    parser.add_argument("--saved-traces", action="store_true", help="Dynamo's traces in the cache too (run --saved-traces)")
    parser.add_argument("--profile-setup", type=Path, help="write a cProfile table of the worker's setup here")
    parser.add_argument("--per-call", action="store_true", help="then each length again, every network call timed")
    args = parser.parse_args()

    import torch
    from torch._dynamo.utils import compile_times, counters

    from pipeline.params import RenderParams
    from pipeline.render import model_identity
    from pipeline.rows import JobSettings, SegmentWork
    from pipeline.stages import JobBoard, RenderStage

    settings = JobSettings(output=args.output, preset=args.preset, weights=None, random_weights=True,
                           model_identity=model_identity(args.preset, None, True), segment_frames=288,
                           overlap_frames=6, compile_cache=args.compile_cache, saved_traces=args.saved_traces)
    rng = np.random.default_rng(0)
    size, lengths = args.size, [int(n) for n in args.frames.split(",")]
    next_start = [0]

    params = RenderParams.resolve(args.preset, width=size, height=size, segment_frames=288, overlap_frames=6)

    def work(n: int) -> SegmentWork:
        start, next_start[0] = next_start[0], next_start[0] + 10_000  # a new ledger key each time
        return SegmentWork(0, "warm-start", "f" * 16, start, start + n, params,
                           reference=rng.integers(0, 256, (size, size, 3), dtype=np.uint8),
                           audio=rng.standard_normal((n, 50, 384), dtype=np.float32),
                           poses=rng.integers(0, 256, (n, size, size, 3), dtype=np.uint8))

    stage = RenderStage(settings, JobBoard())
    started = time.perf_counter()
    stage.on_worker_start(restarted=False, node_id=None)
    if args.profile_setup:
        import cProfile
        import io
        import pstats

        with cProfile.Profile() as profile:
            stage.setup()
        table = io.StringIO()
        pstats.Stats(profile, stream=table).sort_stats("cumulative").print_stats(40)
        args.profile_setup.write_text(table.getvalue())
    else:
        stage.setup()
    setup = time.perf_counter() - started
    segments, errors, first_done, compile_report = [], [], None, None
    for n in lengths:
        result = stage(work(n))
        if first_done is None:
            first_done = time.perf_counter() - started
            compile_report = compile_times(repr="str")
        errors += [result.error] if result.error else []
        segments.append(dict(frames=n, render_s=round(result.seconds, 2), per_120_s=round(result.seconds * 120 / n, 2),
                             dynamo_graphs=counters["stats"]["unique_graphs"],  # grows when a length compiles again
                             frames_sha256=frames_digest(stage, result)))  # cold vs warm: the same frames?
    per_call = []
    if args.per_call and torch.cuda.is_available():
        calls: dict = defaultdict(lambda: [0, 0.0, 0.0])
        timed_calls(stage.model.networks, calls)
        for n in lengths:
            calls.clear()
            result = stage(work(n))
            in_networks = sum(entry[2] for entry in calls.values())
            per_call.append(dict(frames=n, render_s=round(result.seconds, 2),
                                 between_calls_s=round(result.seconds - in_networks, 2),
                                 calls={key: dict(count=c, launch_s=round(launch, 3), finished_s=round(done, 3))
                                        for key, (c, launch, done) in sorted(calls.items())}))
    print(compile_report, file=sys.stderr)
    print(json.dumps(dict(
        preset=args.preset, size=size, device=torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu",
        compile_cache=stage.compile_cache.uri if stage.compile_cache else None,
        cache_loaded=bool(stage.compile_cache and stage.compile_cache.loaded),
        setup_s=round(setup, 2), compile_cache_load_s=round(stage.compile_cache.load_seconds if stage.compile_cache else 0.0, 2), worker_start_to_first_segment_s=round(first_done, 2), segments=segments,
        per_call=per_call, errors=errors, inductor=dict(counters["inductor"]),
        saved_traces=bool(getattr(torch._dynamo.config, "caching_precompile", False)),
        dynamo_cache=dict(counters["dynamo_cache"]), cudnn_benchmark=torch.backends.cudnn.benchmark,
        peak_gib=round(torch.cuda.max_memory_allocated() / 2**30, 2) if torch.cuda.is_available() else None)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
