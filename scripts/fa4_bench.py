"""FlashAttention-4 on the GPU: the attention backend (`echomimic2.attention.fa4_or_sdpa`) against SDPA on issue 37's
three shapes (max error against fp32 math, median time), then one compiled acc denoising step with SDPA and with
the FA4 route (`cli.py bench`'s own timing, full-size random networks, 768²).

FA4 is not in the default install: `bash scripts/pack_offline_gpu.sh --fa4` (here) packs it in three parts. On the
GPU machine, after `scripts/gpu_smoke.py` (its call installed the other packages into /tmp/site and left a
compile cache), three more calls on the same warm machine, each carrying one part:

    bash .whl/fa4/part1/stage.sh                      # carry .whl/fa4/part1
    bash .whl/fa4/part2/stage.sh                      # carry .whl/fa4/part2
    bash .whl/fa4/part3/stage.sh && PYTHONPATH=/tmp/site python scripts/fa4_bench.py \\
        --compile-cache /tmp/gpu-smoke/compile-cache  # carry .whl/fa4/part3

The packages go to /tmp/fa4-site, added here with `site.addsitedir` so that nvidia-cutlass-dsl's `.pth` file
runs (without it `import cutlass` fails). `--parts kernels` alone takes ~1 minute; each step part compiles
the UNet (the compile cache makes the SDPA one warm; the FA4 one compiles its transformer blocks again).
"""
from __future__ import annotations

import argparse
import os
import site
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

# Issue 37's shapes: one UNet call's 24 frame rows (2 windows of 12 frames) x 8 heads at 768², fp16.
SHAPES = [("96², d 40", 9_216, 18_432, 40), ("48², d 80", 2_304, 4_608, 80), ("24², d 160", 576, 1_152, 160)]
ROWS, HEADS = 24, 8
REPEATS = 7


def cuda_seconds(fn, repeats: int = REPEATS) -> tuple[float, float]:
    """(first call, median of `repeats` later calls) in seconds, timed with CUDA events."""
    import torch

    def once() -> float:
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        torch.cuda.synchronize()
        return start.elapsed_time(end) / 1e3

    first = once()
    once()
    return first, statistics.median(once() for _ in range(repeats))


def bench_kernels() -> bool:
    import torch
    import torch.nn.functional as F
    from torch.nn.attention import SDPBackend, sdpa_kernel

    from echomimic2.attention import fa4_attention, fa4_or_sdpa, fa4_width, padded_attention

    ok = True
    print(f"{'shape':<12}{'route':<22}{'first s':>9}{'median ms':>11}{'max error vs fp32':>20}", flush=True)
    for name, queries, keys, head_dim in SHAPES:
        generator = torch.Generator(device="cuda").manual_seed(0)
        # (rows, heads, length, d) views of (rows, length, heads, d) memory: the layout `Attention.attend` passes.
        query, key, value = (torch.randn(ROWS, length, HEADS, head_dim, device="cuda", dtype=torch.float16,
                                         generator=generator).transpose(1, 2) for length in (queries, keys, keys))
        with sdpa_kernel(SDPBackend.MATH):  # fp32 math on one row, as the issue measured
            reference = F.scaled_dot_product_attention(query[:1].float(), key[:1].float(), value[:1].float())
        routes = {"SDPA (default)": lambda q=query, k=key, v=value: F.scaled_dot_product_attention(q, k, v),
                  f"FA4 at d {head_dim}": lambda q=query, k=key, v=value, d=head_dim: padded_attention(q, k, v, d, fa4_attention)}
        width = fa4_width(head_dim, keys, torch.float16)
        if width is not None and width != head_dim:
            routes[f"FA4 padded to {width}"] = lambda q=query, k=key, v=value, w=width: padded_attention(q, k, v, w, fa4_attention)
        routes["the backend"] = lambda q=query, k=key, v=value: fa4_or_sdpa(q, k, v)
        for route, run in routes.items():
            try:
                first, median = cuda_seconds(run)
                error = (run()[:1].float() - reference).abs().max().item()
            except Exception as exc:  # noqa: BLE001 - one failing route is reported, the others still run
                print(f"{name:<12}{route:<22} FAILED: {type(exc).__name__}: {exc}", flush=True)
                ok = False
                continue
            label = route if route != "the backend" else f"backend ({'FA4 ' + str(width) if width else 'SDPA'})"
            print(f"{name:<12}{label:<22}{first:>9.3f}{median * 1e3:>11.3f}{error:>20.2e}", flush=True)
            if error > 2e-3:
                print(f"    error {error:.2e} is far above fp16 rounding", flush=True)
                ok = False
        del query, key, value, reference
        torch.cuda.empty_cache()
    return ok


def bench_step(route: str, frames: int, steps: int) -> None:
    """One compiled acc step with SDPA everywhere (`route` "sdpa") or with the FA4 route ("fa4")."""
    import torch

    from echomimic2 import attention
    from echomimic2.bench import format_report, gpu_networks, run_bench

    os.environ[attention.FA4_ENV] = "1" if route == "fa4" else "0"
    attention.fa4_available.cache_clear()
    started = time.perf_counter()
    networks = gpu_networks(compile_networks=True)
    routed = sum(getattr(m, "weighted_values", None) is attention.fa4_or_sdpa for m in networks.denoising_unet.modules())
    if route == "fa4" and not routed:
        raise RuntimeError("the FA4 route was not installed (attention.fa4_available() is False)")
    result = run_bench("acc", frames, 768, networks=networks, steps=steps)
    print(f"== step, {route}: {routed} attention layers on the FA4 route; built, compiled and ran in "
          f"{time.perf_counter() - started:.0f} s", flush=True)
    print(format_report(result), flush=True)
    del networks
    torch._dynamo.reset()
    torch.cuda.empty_cache()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--fa4-site", default="/tmp/fa4-site", help="Where stage.sh installed the FA4 packages.")
    parser.add_argument("--parts", default="kernels,step-sdpa,step-fa4")
    parser.add_argument("--frames", type=int, default=48, help="Frames of the step parts' segment.")
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--compile-cache", help="A compile cache folder (gpu_smoke.py's run): the SDPA step starts warm.")
    args = parser.parse_args()
    if Path(args.fa4_site).is_dir():
        site.addsitedir(args.fa4_site)  # processes nvidia-cutlass-dsl's .pth (puts its dsl_packages on sys.path)
    import torch

    if not torch.cuda.is_available():
        print("fa4_bench: no CUDA device")
        return 2
    print(f"fa4_bench: {torch.cuda.get_device_name()}, torch {torch.__version__}, CUDA {torch.version.cuda}", flush=True)
    try:
        import cutlass  # noqa: F401
        import flash_attn.cute  # noqa: F401
    except Exception as exc:  # noqa: BLE001
        print(f"fa4_bench: FA4 does not import: {type(exc).__name__}: {exc}")
        return 1
    from importlib.metadata import version

    print("versions: " + ", ".join(f"{name} {version(name)}" for name in (
        "flash-attn-4", "nvidia-cutlass-dsl", "nvidia-cutlass-dsl-libs-cu13", "cuda-bindings", "quack-kernels")), flush=True)
    from echomimic2.attention import fa4_available

    print(f"attention.fa4_available(): {fa4_available()}", flush=True)
    parts = args.parts.split(",")
    ok = True
    if "kernels" in parts:
        ok = bench_kernels() and ok
    if args.compile_cache and any(part.startswith("step") for part in parts):
        from pipeline.render import CompileCache

        print(f"compile cache loaded: {CompileCache(args.compile_cache, 'acc').load()}", flush=True)
    for part in parts:
        if part.startswith("step-"):
            try:
                bench_step(part.removeprefix("step-"), args.frames, args.steps)
            except Exception as exc:  # noqa: BLE001 - the next part still runs
                import traceback

                traceback.print_exc()
                print(f"fa4_bench: {part} failed: {type(exc).__name__}: {exc}", flush=True)
                ok = False
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
