"""Multi-GPU scaling of the real batch job (issue 6): the same manifest on 1, 2, 4, 8 GPUs of one host.

    python cluster/scaling_bench.py                               # GPUs: acc preset, full-size random weights
    python cluster/scaling_bench.py --gpus 1,2 --clips 4 --clip-seconds 3 --long-seconds 20 --size 128
                                                                  # no GPU: tiny preset, logical GPUs (smoke run)

It writes a manifest of `--clips` short clips plus one long clip (`--long-seconds`, default 120 s;
the long clip is row 0, so its segments spread over every GPU from the start), with speech cut from
the demo's espeak-ng recordings and the demo's figure as the reference image. Then, for each GPU
count, it runs the real job (`cli.py run`, a subprocess with its own local Ray) into a fresh
`<output-root>/gpus-<N>` (local or any fsspec URL, e.g. s3://) and reports per GPU count:

- clips per hour over the whole job (Ray start-up and model loading included) and over the render
  window (first segment's render start → last MP4 committed, from the ledger);
- mean GPU utilisation over the render window (`nvidia-smi` sampled every second, the job's GPUs only);
- the long clip's wall time: its first segment's render start → its MP4 committed (ledger records);
- scaling efficiency = throughput_N / (N · throughput_1) (render window; the job-wall one in --json)
  and the long clip's speed-up over 1 GPU.

`--baseline FILE` takes the 1-GPU figures from an earlier `--json` run of the same settings (a sweep
split over several sessions, or over machines with the same card).

On GPUs, run N sees the first N GPUs only (CUDA_VISIBLE_DEVICES), the render actors build the
full-size networks with random weights (`cli.py run --random-weights`, `EchoMimicV2.random`): the
speed of the official weights without them. The render actors torch.compile on first use (≈ 2 min
each, inside the render window): for sweeps too short to amortise it, run with ECHOMIMIC2_COMPILE=0
(the job inherits the environment). Without GPUs, `--gpus N` gives Ray N logical GPUs and the
render actors share the CPU: the harness runs end to end, but its figures say nothing about GPUs.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import soundfile as sf

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from cli import eager_by_default  # noqa: E402 - how `cli.py run` reads ECHOMIMIC2_COMPILE
from pipeline import storage  # noqa: E402

ASSETS = REPO / "manifests" / "assets"
SPEECH_FILES = ("hello.wav", "welcome.wav")  # espeak-ng sentences made by manifests/make_demo.py
IMAGE_FILE = "figure.png"
SAMPLE_RATE = 16_000
PAUSE_SECONDS = 0.4  # silence between sentences, as between spoken phrases
LONG_CLIP_ID = "long-000"
DEFAULT_GPU_COUNTS = (1, 2, 4, 8)
UTILISATION_QUERY = ["nvidia-smi", "--query-gpu=utilization.gpu", "--format=csv,noheader,nounits"]


# --------------------------------------------------------------------------------------------------
# Inputs


def speech(seconds: float, offset_seconds: float = 0.0) -> np.ndarray:
    """`seconds` of 16 kHz mono speech: the demo's sentences, separated by pauses, repeated as needed.
    `offset_seconds` starts elsewhere in the loop, so clips of the same length differ in content."""
    pause = np.zeros(int(PAUSE_SECONDS * SAMPLE_RATE), dtype=np.float32)
    parts = []
    for name in SPEECH_FILES:
        wave, rate = sf.read(ASSETS / name, dtype="float32", always_2d=True)
        if rate != SAMPLE_RATE:
            raise ValueError(f"{name}: expected {SAMPLE_RATE} Hz (manifests/make_demo.py writes it so), got {rate}")
        parts += [wave.mean(axis=1), pause]
    loop = np.concatenate(parts)
    start, length = int(offset_seconds * SAMPLE_RATE) % len(loop), int(round(seconds * SAMPLE_RATE))
    return np.resize(np.roll(loop, -start), length)  # np.resize repeats the loop to the length


def build_manifest(directory: Path, clips: int, clip_seconds: float, long_seconds: float,
                   size: int | None = None) -> Path:
    """The long clip (row 0) and `clips` short ones, with their WAVs, under `directory`."""
    directory.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(ASSETS / IMAGE_FILE, directory / IMAGE_FILE)
    lengths = {LONG_CLIP_ID: long_seconds} | {f"short-{index:03d}": clip_seconds for index in range(clips)}
    rows = []
    for index, (clip_id, seconds) in enumerate(lengths.items()):
        sf.write(directory / f"{clip_id}.wav", speech(seconds, offset_seconds=0.7 * index), SAMPLE_RATE, subtype="PCM_16")
        rows.append(dict(clip_id=clip_id, image=IMAGE_FILE, audio=f"{clip_id}.wav", width=size, height=size))
    manifest = directory / "manifest.parquet"
    pd.DataFrame(rows).astype({"width": "Int64", "height": "Int64"}).to_parquet(manifest, index=False)
    return manifest


# --------------------------------------------------------------------------------------------------
# GPU utilisation


class UtilisationSampler:
    """`nvidia-smi` once a second in a thread: (time, mean utilisation % of the given GPUs) samples."""

    def __init__(self, gpu_ids: list[str], interval: float = 1.0):
        self.command = UTILISATION_QUERY + [f"--id={','.join(gpu_ids)}"]
        self.interval = interval
        self.samples: list[tuple[float, float]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            now = time.time()
            try:
                output = subprocess.run(self.command, capture_output=True, text=True, timeout=10, check=True).stdout
                values = [float(line) for line in output.split()]
            except (subprocess.SubprocessError, ValueError, OSError):
                values = []  # a missed sample (nvidia-smi busy or "[N/A]") is skipped, not counted as 0
            if values:
                self.samples.append((now, sum(values) / len(values)))
            self._stop.wait(self.interval)

    def __enter__(self) -> UtilisationSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()


# --------------------------------------------------------------------------------------------------
# Metrics (pure: from the results table, the ledger records and the samples)


@dataclass
class RunMetrics:
    gpus: int
    exit_code: int
    clips_done: int
    clips_failed: int
    frames: int
    segments: int
    wall_s: float  # the whole `cli.py run`: Ray start-up, model loading, rendering, last assembly
    window_s: float | None  # first segment's render start → last MP4 committed
    long_clip_s: float | None  # the long clip's first segment render start → its MP4 committed
    long_clip_assemble_s: float | None  # of which stitching + encoding (one CPU task: does not shrink with N)
    gpu_util_percent: float | None  # mean over the render window; None without nvidia-smi
    clips_per_hour: float = 0.0
    clips_per_hour_window: float | None = None
    efficiency: float | None = None  # window throughput / (N x 1-GPU window throughput)
    efficiency_wall: float | None = None  # the same with whole-job throughput
    long_clip_speedup: float | None = None
    notes: list[str] = field(default_factory=list)

    def as_dict(self, settings: dict) -> dict:
        return dict(vars(self), **settings)


def run_metrics(gpus: int, exit_code: int, started: float, wall_s: float, results: pd.DataFrame | None,
                clip_records: list[dict], segment_records: list[dict], samples: list[tuple[float, float]] | None,
                long_clip_id: str = LONG_CLIP_ID) -> RunMetrics:
    """One run's figures. Records older than `started` (an output root reused) are ignored.

    A segment record is written after its frames are stored; its render started `seconds` earlier
    (the store's write time is counted as render time, which only lengthens the windows)."""
    segment_records = [r for r in segment_records if r["time"] >= started]
    clip_records = [r for r in clip_records if r["time"] >= started]
    done = 0 if results is None else int((results["status"] == "done").sum())
    failed = 0 if results is None else int((results["status"] == "failed").sum())
    frames = 0 if results is None else int(results.loc[results["status"] == "done", "frames"].sum())
    first_start = min((r["time"] - r["seconds"] for r in segment_records), default=None)
    last_commit = max((r["time"] for r in clip_records), default=None)
    window = None if first_start is None or last_commit is None else last_commit - first_start

    long_segments = [r["time"] - r["seconds"] for r in segment_records if r["clip_id"] == long_clip_id]
    long_commit = [r["time"] for r in clip_records if r["clip_id"] == long_clip_id]
    long_clip = max(long_commit) - min(long_segments) if long_segments and long_commit else None
    long_rows = None if results is None else results.loc[results["clip_id"] == long_clip_id, "assemble_seconds"].dropna()
    long_assemble = float(long_rows.iloc[0]) if long_rows is not None and len(long_rows) else None

    utilisation = None
    if samples:
        inside = [value for when, value in samples if window is not None and first_start <= when <= last_commit]
        utilisation = statistics.fmean(inside or [value for _, value in samples])
    return RunMetrics(
        gpus=gpus, exit_code=exit_code, clips_done=done, clips_failed=failed, frames=frames,
        segments=len(segment_records), wall_s=wall_s, window_s=window, long_clip_s=long_clip,
        long_clip_assemble_s=long_assemble,
        gpu_util_percent=utilisation, clips_per_hour=done / wall_s * 3600 if wall_s > 0 else 0.0,
        clips_per_hour_window=done / window * 3600 if window else None)


def measure_output(output: str, gpus: int, exit_code: int, started: float, wall_s: float,
                   samples: list[tuple[float, float]] | None) -> RunMetrics:
    """`run_metrics` of the job that wrote `output`: its results.parquet (if it got that far) and ledger."""
    from pipeline.ledger import Ledger
    from pipeline.results import read_results

    try:
        results = read_results(output)
    except FileNotFoundError:
        results = None
    ledger = Ledger(output)
    return run_metrics(gpus, exit_code, started, wall_s, results, ledger.clip_records(), ledger.segment_records(), samples)


def add_scaling(runs: list[RunMetrics]) -> list[RunMetrics]:
    """Efficiency and long-clip speed-up of every run against the 1-GPU run (if there is one)."""
    base = next((run for run in runs if run.gpus == 1), None)
    for run in runs:
        if base is None:
            break
        if run.clips_per_hour_window and base.clips_per_hour_window:
            run.efficiency = run.clips_per_hour_window / (run.gpus * base.clips_per_hour_window)
        if run.clips_per_hour and base.clips_per_hour:
            run.efficiency_wall = run.clips_per_hour / (run.gpus * base.clips_per_hour)
        if run.long_clip_s and base.long_clip_s:
            run.long_clip_speedup = base.long_clip_s / run.long_clip_s
    return runs


def format_table(runs: list[RunMetrics]) -> str:
    def number(value, digits=1, suffix=""):
        return "n/a" if value is None else f"{value:.{digits}f}{suffix}"

    header = (f"{'GPUs':>4} {'done':>5} {'failed':>6} {'wall s':>8} {'window s':>9} {'clips/h':>8} {'clips/h win':>11} "
              f"{'GPU util':>8} {'long clip s':>11} {'(assembly)':>10} {'efficiency':>10} {'long speed-up':>13}")
    lines = [header]
    for run in runs:
        lines.append(
            f"{run.gpus:>4} {run.clips_done:>5} {run.clips_failed:>6} {run.wall_s:>8.1f} {number(run.window_s):>9} "
            f"{run.clips_per_hour:>8.1f} {number(run.clips_per_hour_window):>11} "
            f"{number(run.gpu_util_percent, 0, '%'):>8} {number(run.long_clip_s):>11} {number(run.long_clip_assemble_s):>10} "
            f"{number(run.efficiency, 2):>10} {number(run.long_clip_speedup, 2, 'x'):>13}")
    return "\n".join(lines)


# --------------------------------------------------------------------------------------------------
# Runs


def visible_gpu_ids() -> list[str]:
    """The GPUs this process may use, as nvidia-smi / CUDA_VISIBLE_DEVICES name them."""
    import torch

    count = torch.cuda.device_count()
    listed = [part for part in os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",") if part.strip()]
    return (listed or [str(index) for index in range(count)])[:count]


def run_job(manifest: Path, output: str, gpus: int, preset: str, random_weights: bool, gpu_ids: list[str],
            log_path: Path, segment_frames: int | None) -> RunMetrics:
    """One `cli.py run` of the manifest into `output` with `gpus` render actors, and its figures."""
    command = [sys.executable, str(REPO / "cli.py"), "run", str(manifest), "--output", output, "--gpus", str(gpus),
               "--preset", preset, "--force"]
    if random_weights:
        command.append("--random-weights")
    if segment_frames:
        command += ["--segment-frames", str(segment_frames)]
    environment = dict(os.environ)
    if gpu_ids:  # the job's local Ray sees exactly the first N GPUs
        environment["CUDA_VISIBLE_DEVICES"] = ",".join(gpu_ids[:gpus])
    environment.pop("RAY_ADDRESS", None)  # always a fresh local Ray on this host
    sampler = UtilisationSampler(gpu_ids[:gpus]) if gpu_ids else None
    started = time.time()
    with open(log_path, "w") as log, sampler or nullcontext():
        exit_code = subprocess.run(command, cwd=REPO, env=environment, stdout=log, stderr=subprocess.STDOUT).returncode
    metrics = measure_output(output, gpus, exit_code, started, time.time() - started, sampler and sampler.samples)
    if exit_code != 0:
        metrics.notes.append(f"cli.py run exited {exit_code}: see {log_path}")
    return metrics


SETTINGS_THAT_MUST_MATCH = ("preset", "size", "clips", "clip_seconds", "long_seconds", "segment_frames", "compiled")


def read_baseline(path: Path, settings: dict) -> RunMetrics:
    """The 1-GPU run of an earlier `--json` output; its settings must be this run's."""
    for line in path.read_text().splitlines():
        record = json.loads(line) if line.strip() else {}
        if record.get("gpus") != 1:
            continue
        different = {key: (record.get(key), settings[key]) for key in SETTINGS_THAT_MUST_MATCH
                     if record.get(key) != settings[key]}
        if different:
            raise ValueError(f"{path}: its 1-GPU run used other settings (theirs, ours): {different}")
        metrics = RunMetrics(**{name: record[name] for name in RunMetrics.__dataclass_fields__})
        metrics.notes.append(f"from {path} ({record.get('device')}, {record.get('date')})")
        return metrics
    raise ValueError(f"{path}: no line with \"gpus\": 1")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--gpus", default=",".join(map(str, DEFAULT_GPU_COUNTS)),
                        help="GPU counts to run, comma-separated (default 1,2,4,8; capped by the GPUs present)")
    parser.add_argument("--clips", type=int, default=32, help="short clips besides the long one (default 32)")
    parser.add_argument("--clip-seconds", type=float, default=10.0, help="audio length of each short clip (default 10)")
    parser.add_argument("--long-seconds", type=float, default=120.0, help="audio length of the long clip (default 120)")
    parser.add_argument("--preset", default=None, help="acc | quality (GPU, random full-size weights) | tiny "
                        "(default: acc on GPUs, tiny without)")
    parser.add_argument("--size", type=int, default=None, help="square output side (default: the preset's)")
    parser.add_argument("--segment-frames", type=int, default=None, help="frames per segment (default: the job's)")
    parser.add_argument("--output-root", default=None, help="root of the runs' outputs, local or fsspec URL "
                        "(default: a new temp folder); each run writes <root>/gpus-<N>")
    parser.add_argument("--work-dir", type=Path, default=None, help="manifest, inputs and logs (default: a new temp folder)")
    parser.add_argument("--json", action="store_true", help="one JSON line per GPU count instead of the table")
    parser.add_argument("--baseline", type=Path, default=None, help="--json output of an earlier run with the same "
                        "settings: its 1-GPU line is the reference when this run has no 1-GPU count")
    args = parser.parse_args(argv)

    gpu_ids = visible_gpu_ids()
    requested = sorted({int(part) for part in args.gpus.split(",") if part.strip()})
    if not requested or requested[0] < 1:
        parser.error(f"--gpus: expected positive counts, got {args.gpus!r}")
    if args.clips < 0 or args.clip_seconds <= 0 or args.long_seconds <= 0:
        parser.error("--clips must be ≥ 0, --clip-seconds and --long-seconds > 0")
    counts = [n for n in requested if n <= len(gpu_ids)] if gpu_ids else requested
    skipped = [n for n in requested if n not in counts]
    preset = args.preset or ("acc" if gpu_ids else "tiny")
    if preset not in ("acc", "quality", "tiny"):
        parser.error(f"--preset: expected acc, quality or tiny, got {preset!r}")
    if preset != "tiny" and not gpu_ids:
        parser.error(f"--preset {preset} builds the full-size networks: it needs GPUs (use --preset tiny here)")
    if not counts:
        parser.error(f"no GPU count in {requested} fits the {len(gpu_ids)} GPU(s) present")
    settings = dict(preset=preset, size=args.size, clips=args.clips, clip_seconds=args.clip_seconds,
                    long_seconds=args.long_seconds, segment_frames=args.segment_frames,
                    compiled=bool(gpu_ids) and not eager_by_default())
    baseline = None
    if args.baseline and 1 not in counts:
        try:
            baseline = read_baseline(args.baseline, settings)
        except (OSError, ValueError, KeyError, TypeError) as error:
            parser.error(f"--baseline: {error}")

    work_dir = args.work_dir or Path(tempfile.mkdtemp(prefix="scaling-bench-"))
    output_root = args.output_root or str(work_dir / "outputs")
    manifest = build_manifest(work_dir / "inputs", args.clips, args.clip_seconds, args.long_seconds, args.size)
    if gpu_ids:
        device = subprocess.run(["nvidia-smi", "--query-gpu=name", "--format=csv,noheader", f"--id={gpu_ids[0]}"],
                                capture_output=True, text=True).stdout.strip() or "GPU"
        what = (f"{device}, preset {preset}" + (", full-size networks with random weights" if preset != "tiny" else "")
                + (", torch.compile on" if settings["compiled"] else ", eager (no torch.compile)"))
    else:
        what = (f"NO GPU: {os.cpu_count()} CPU core(s) with N logical GPUs, preset tiny: a smoke run of the "
                "harness, NOT a GPU scaling figure")
    log = (lambda line: print(line, file=sys.stderr)) if args.json else print
    settings.update(device=what, date=time.strftime("%Y-%m-%d %H:%M %Z"))
    log(f"scaling bench {settings['date']}: {what}; size {args.size or 'preset default'}; "
        f"1 clip of {args.long_seconds:g} s + {args.clips} of {args.clip_seconds:g} s; manifest {manifest}; "
        f"outputs under {storage.redact(output_root)}")
    if skipped:
        log(f"skipped GPU counts {skipped}: only {len(gpu_ids)} GPU(s) present")

    runs = [baseline] if baseline else []
    for gpus in counts:
        output = storage.join(output_root, f"gpus-{gpus}")
        log(f"running {gpus} GPU(s) → {storage.redact(output)} (log {work_dir / f'gpus-{gpus}.log'})")
        runs.append(run_job(manifest, output, gpus, preset, preset != "tiny", gpu_ids, work_dir / f"gpus-{gpus}.log",
                            args.segment_frames))
    add_scaling(runs)
    if args.json:
        for run in runs:
            print(json.dumps(run.as_dict(settings)))
    else:
        print(format_table(runs))
    for run in runs:
        for note in run.notes:
            log(f"NOTE ({run.gpus} GPU(s)): {note}")
    return 0 if all(run.exit_code == 0 for run in runs) else 1


if __name__ == "__main__":
    raise SystemExit(main())
