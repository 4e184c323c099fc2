"""GPU end-to-end check: the paths a user runs, on an NVIDIA GPU, in one command.

    python scripts/gpu_e2e.py --work /tmp/e2e            # everything (~10 min on an H200)
    python scripts/gpu_e2e.py --work /tmp/e2e --only engine,job --job-presets acc

Steps (each prints a line and lands in <work>/e2e.json):
  weights  full-size random networks written in the official checkpoint layout (both variants)
  engine   `EchoMimicV2.from_official` for acc and quality, eager and compiled: one segment each
  clip     the one-clip Python API on CUDA -> an MP4 with audio (probed)
  job      `cli.py run --gpus 1 --weights <that folder>` on a 3-row manifest (a clip of several
           segments, one with given poses, one without), Ray on this machine: one MP4 per row
           (probed: streams, durations), results.parquet all `done`, peak GPU memory (nvidia-smi),
           render seconds per 120 frames through the job
Exit code 1 if any step failed. The frames are noise (random weights); what is checked is that the
product path runs and what it costs.
"""
from __future__ import annotations

import argparse
import io
import json
import os
import subprocess
import sys
import threading
import time
import traceback
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import numpy as np  # noqa: E402

STEPS = ("weights", "engine", "clip", "job")


class GpuMemoryPoller:
    """Peak `memory.used` of GPU 0 as nvidia-smi reports it (covers other processes: Ray's actors)."""

    def __init__(self, interval: float = 0.5):
        self.interval, self.peak_mib, self._stop = interval, 0, threading.Event()
        self._thread = threading.Thread(target=self._poll, daemon=True)

    def _poll(self) -> None:
        while not self._stop.is_set():
            try:
                out = subprocess.run(["nvidia-smi", "--query-gpu=memory.used", "--format=csv,noheader,nounits", "-i", "0"],
                                     capture_output=True, text=True, timeout=10).stdout
                self.peak_mib = max(self.peak_mib, int(out.strip().splitlines()[0]))
            except (OSError, ValueError, IndexError, subprocess.TimeoutExpired):
                pass
            self._stop.wait(self.interval)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()


def wav_bytes(seconds: float, pitch: float = 200.0) -> bytes:
    import soundfile as sf

    t = np.arange(int(seconds * 16_000)) / 16_000
    voice = 0.3 * np.sin(2 * np.pi * pitch * t) * (0.5 + 0.5 * np.sin(2 * np.pi * 3 * t))
    buffer = io.BytesIO()
    sf.write(buffer, voice.astype(np.float32), 16_000, format="WAV", subtype="PCM_16")
    return buffer.getvalue()


def reference_png(path: Path, seed: int = 0) -> Path:
    from PIL import Image, ImageDraw

    image = Image.new("RGB", (600, 800), (200 + seed * 20, 210, 230))
    draw = ImageDraw.Draw(image)
    draw.ellipse((220, 120, 380, 320), fill=(230, 190, 160))
    draw.rectangle((120, 360, 480, 800), fill=(40, 60 + 40 * seed, 120))
    image.save(path)
    return path


def step_weights(work: Path, result: dict) -> Path:
    import torch

    from echomimic2.official_layout import write_random_official_weights

    root = work / "weights"
    if (root / "audio_processor" / "tiny.pt").is_file():
        result["note"] = "reused"
        return root
    started = time.perf_counter()
    write_random_official_weights(root, device="cuda", file_dtype=torch.float16)
    result["seconds"] = round(time.perf_counter() - started, 1)
    result["gib_on_disk"] = round(sum(f.stat().st_size for f in root.rglob("*") if f.is_file()) / 2**30, 2)
    return root


def step_engine(weights: Path, frames: int, size: int, result: dict) -> None:
    import torch

    from echomimic2 import EchoMimicV2
    from echomimic2.pose import default_pose_sequence, render_pose

    rng = np.random.default_rng(0)
    reference = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
    audio = rng.standard_normal((frames, 50, 384)).astype(np.float32)
    poses = np.stack([render_pose(p, size, size) for p in default_pose_sequence(frames, 24.0)])
    for compiled in (False, True):  # both eager runs first: compilation is the long part
        for variant in ("acc", "quality"):
            label = f"{variant} {'compiled' if compiled else 'eager'}"
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()
            started = time.perf_counter()
            model = EchoMimicV2.from_official(weights, variant, device="cuda", dtype=torch.float16, compile=compiled)
            loaded = time.perf_counter() - started
            timings = []
            for _ in range(2 if compiled else 1):  # compiled: the first render compiles, the second is the speed
                started = time.perf_counter()
                out = model.render(reference, audio, poses, seed=0, first_frame=0)
                torch.cuda.synchronize()
                timings.append(time.perf_counter() - started)
            assert out.shape == (frames, size, size, 3) and out.dtype == np.uint8, out.shape
            result[label] = dict(load_s=round(loaded, 1), first_render_s=round(timings[0], 1),
                                 s_per_120=round(timings[-1] * 120 / frames, 2),
                                 peak_gib=round(torch.cuda.max_memory_allocated() / 2**30, 2),
                                 identity=model.identity)
            print(f"  engine {label}: {result[label]}", flush=True)
            del model
            torch._dynamo.reset()


def step_clip(weights: Path, work: Path, result: dict) -> None:
    import torch

    from pipeline import EchoMimicV2Pipeline
    from pipeline.assemble import probe_video

    pipe = EchoMimicV2Pipeline.from_official(weights, preset="acc", device="cuda", dtype=torch.float16)
    audio = work / "clip.wav"
    audio.write_bytes(wav_bytes(2.0))
    started = time.perf_counter()
    out = pipe(reference_png(work / "clip.png"), audio, fps=24.0, seed=0, progress=False)
    seconds = time.perf_counter() - started
    target = work / "clip.mp4"
    out.save(target)
    probe = probe_video(str(target))
    assert (probe["vcodec"], probe["acodec"]) == ("h264", "aac"), probe
    assert abs(probe["duration"] - 2.0) <= 1 / 24 + 1e-3, probe
    result.update(frames=int(len(out.frames)), seconds=round(seconds, 1), probe=probe)


def write_job_inputs(folder: Path, clips: dict[str, float], fps: float) -> Path:
    """A manifest of `clips` (id -> seconds); the clip named 'posed' gets a folder of official pose files."""
    import pandas as pd

    from echomimic2.pose import default_pose_sequence

    folder.mkdir(parents=True, exist_ok=True)
    rows = []
    for index, (clip_id, seconds) in enumerate(clips.items()):
        reference_png(folder / f"{clip_id}.png", index)
        (folder / f"{clip_id}.wav").write_bytes(wav_bytes(seconds, 180 + 40 * index))
        row = dict(clip_id=clip_id, image=f"{clip_id}.png", audio=f"{clip_id}.wav", pose=None, fps=fps)
        if clip_id == "posed":
            pose_dir = folder / "posed_pose"
            pose_dir.mkdir(exist_ok=True)
            for frame, pose in enumerate(default_pose_sequence(int(seconds * fps), fps)):
                np.save(pose_dir / f"{frame}.npy", np.array(pose, dtype=object), allow_pickle=True)
            row["pose"] = "posed_pose"
        rows.append(row)
    manifest = folder / "manifest.parquet"
    pd.DataFrame(rows).to_parquet(manifest, index=False)
    return manifest


def step_job(weights: Path | None, work: Path, preset: str, clips: dict[str, float], compile_networks: bool, result: dict,
             segment_frames: int | None = None, compile_cache: str | None = None, gpus: int | None = 1,
             timeout: float = 1800) -> None:
    """`cli.py run` of `clips`, checked. Without `weights` a full-size preset builds random networks
    (--random-weights) and the tiny preset loads its built-in weights; `gpus` None lets the job take what Ray finds."""
    import pandas as pd

    from pipeline.assemble import probe_video

    fps = 24.0
    manifest = write_job_inputs(work / f"job-{preset}-in", clips, fps)
    output = work / f"job-{preset}-out"
    env = dict(os.environ, ECHOMIMIC2_COMPILE="1" if compile_networks else "0")
    model = ["--weights", str(weights)] if weights else [] if preset == "tiny" else ["--random-weights"]
    command = [sys.executable, str(REPO / "cli.py"), "run", str(manifest), "--output", str(output), *model,
               "--preset", preset, *(["--gpus", str(gpus)] if gpus is not None else []), "--force"]
    if segment_frames:
        command += ["--segment-frames", str(segment_frames)]
    if compile_cache:
        command += ["--compile-cache", compile_cache]
    started, since = time.perf_counter(), time.time()
    with GpuMemoryPoller() as memory:
        done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=timeout)
    wall = time.perf_counter() - started
    (work / f"job-{preset}.log").write_text(done.stdout + done.stderr)
    result.update(exit_code=done.returncode, wall_s=round(wall, 1), peak_gpu_gib_nvidia_smi=round(memory.peak_mib / 1024, 2),
                  compiled=compile_networks, command=" ".join(command[1:]))
    if done.returncode != 0:
        raise RuntimeError(f"cli.py run exited {done.returncode}:\n{(done.stdout + done.stderr)[-4000:]}")
    results = pd.read_parquet(output / "results.parquet")
    assert list(results["status"]) == ["done"] * len(clips), results[["clip_id", "status", "error"]].to_string()
    frames = int(results["frames"].sum())
    render = float(results["render_seconds"].sum())
    result.update(frames=frames, render_s=round(render, 1), render_s_per_120=round(render * 120 / frames, 2),
                  wall_s_per_120=round(wall * 120 / frames, 2),
                  # Per clip: the first clip an actor renders carries its compilation (or warm start), the others not.
                  clips={row.clip_id: dict(frames=int(row.frames), render_s=round(float(row.render_seconds), 2))
                         for row in results.itertuples()})
    # Without each worker's first segment (it carries the compilation or warm start, whichever clip it is):
    # the rate a long job settles at.
    from pipeline.ledger import Ledger

    records = [record for record in Ledger(str(output)).segment_records()  # this run's (--force keeps older records)
               if record["time"] >= since]
    later = [record for record in records if "worker_start_seconds" not in record]
    # Each worker's first segment: worker start -> that segment finished (cold or warm start), split.
    result["first_segments"] = [
        dict(clip=record["clip_id"], frames=record["stop"] - record["start"], worker_start_s=record["worker_start_seconds"],
             setup_s=record.get("setup_seconds"), render_s=round(record["seconds"], 2), compile_cache=record.get("compile_cache"),
             compile_cache_load_s=record.get("compile_cache_load_seconds"))
        for record in records if "worker_start_seconds" in record]
    later_frames = sum(record["stop"] - record["start"] for record in later)
    if later_frames:
        result.update(later_segments=len(later), later_render_s_per_120=round(
            sum(record["seconds"] for record in later) * 120 / later_frames, 2))
    probes = {}
    for row in results.itertuples():
        probe = probe_video(row.output)
        assert (probe["vcodec"], probe["acodec"]) == ("h264", "aac"), probe
        assert abs(probe["duration"] - clips[row.clip_id]) <= 1 / fps + 1e-3, (row.clip_id, probe)
        probes[row.clip_id] = dict(duration=probe["duration"], frames=probe["frames"], size=f"{probe['width']}x{probe['height']}")
    result["videos"] = probes


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", type=Path, required=True, help="Folder for weights, inputs and outputs.")
    parser.add_argument("--only", default=",".join(STEPS), help=f"Comma-separated steps of {STEPS}.")
    parser.add_argument("--frames", type=int, default=24, help="Frames of the engine's one segment.")
    parser.add_argument("--size", type=int, default=768)
    parser.add_argument("--job-presets", default="acc,quality")
    parser.add_argument("--job-compile", action="store_true", help="Let the job's render actors compile (the default of run).")
    parser.add_argument("--job-random-weights", action="store_true",
                        help="The job builds random networks itself (no weights step; the speed is the same).")
    parser.add_argument("--job-compile-cache", help="The job's compile cache folder (default: under its output).")
    args = parser.parse_args()
    import torch

    if not torch.cuda.is_available():
        print("gpu_e2e: no CUDA device (this check is for NVIDIA GPUs; `cli.py doctor` works anywhere)")
        return 2
    steps = args.only.split(",")
    args.work.mkdir(parents=True, exist_ok=True)
    summary: dict = dict(device=torch.cuda.get_device_name(0), torch=torch.__version__, date=time.strftime("%Y-%m-%d"))
    try:
        commit = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    except OSError:
        commit = ""
    summary["commit"] = commit
    # The long clip has several segments: acc 13 s = 2 of the default 288 frames; quality (6x the GPU time per
    # frame) renders shorter clips cut into 48-frame segments.
    job_clips = {"acc": ({"long": 13.0, "posed": 2.0, "plain": 2.0}, None),
                 "quality": ({"long": 2.5, "posed": 1.0, "plain": 1.0}, 48)}
    weights = args.work / "weights"
    plan = [("weights", lambda r: step_weights(args.work, r)),
            ("engine", lambda r: step_engine(weights, args.frames, args.size, r)),
            ("clip", lambda r: step_clip(weights, args.work, r))]
    job_weights = None if args.job_random_weights else weights
    plan += [(f"job-{preset}", lambda r, p=preset: step_job(job_weights, args.work, p, job_clips[p][0], args.job_compile, r,
                                                            segment_frames=job_clips[p][1], compile_cache=args.job_compile_cache))
             for preset in args.job_presets.split(",")]
    failed = []
    for name, run in plan:
        if name.split("-")[0] not in steps:
            continue
        result: dict = {}
        started = time.perf_counter()
        print(f"[{name}] ...", flush=True)
        try:
            run(result)
            result["status"] = "ok"
        except Exception as exc:  # noqa: BLE001 - every step reports, the next one still runs
            result.update(status="FAILED", error=f"{type(exc).__name__}: {exc}", traceback=traceback.format_exc()[-3000:])
            failed.append(name)
        result["step_s"] = round(time.perf_counter() - started, 1)
        summary[name] = result
        print(f"[{name}] {result['status']} in {result['step_s']} s: "
              + json.dumps({k: v for k, v in result.items() if k not in ('traceback', 'status')}), flush=True)
        (args.work / "e2e.json").write_text(json.dumps(summary, indent=1))
    print(f"gpu_e2e: {len(failed)} step(s) failed" + (f": {', '.join(failed)}" if failed else ""))
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
