"""GPU smoke run: every user-facing command that touches CUDA, once, in one call on one NVIDIA GPU (sized for 9 minutes on an H100).

The one command on the GPU machine (from the repository root; `.whl/all` from `bash scripts/pack_offline_gpu.sh`
carried with the tree):

    source .whl/all/setup.sh && python scripts/gpu_smoke.py --out $OUT

Each line prints as it finishes: `ok|FAIL|skip <seconds> <name>`, then its detail indented (a FAIL: its log's
tail; every log is in OUT/logs). Exit 1 if any line failed. The lines, on full-size random networks written
in the official checkpoint layout (`echomimic2/official_layout.py`) unless named tiny:

  weights          write the random official-layout folder (both variants, fp16) that the others load
  lane 1 (one line after the other):
  run acc cold     `cli.py run --weights W --preset acc --gpus 1`, compiled, 2 rows (2 s posed, 1 s plain),
                   writing the compile cache; MP4s probed, results all done, the worker's cache a miss
  run acc warm     the same job again with that cache: the worker's cache a hit
  bench            `cli.py bench --preset acc --frames 48` (compiled, loading the job's compile cache)
  bench schedule   `cli.py bench --preset acc --schedule 5` (the same cache)
  lane 2 (beside lane 1 on the same GPU: the two lanes together fit the call's time; so no line's timing
  here is a benchmark):
  pytest -m gpu    tests/test_gpu.py on the same weights folder
  doctor           `cli.py doctor --weights W --output DIR`
  clip             `EchoMimicV2Pipeline.from_official(W, "acc")` on 1 s of audio (2 steps) -> MP4 (probed)
  preview          the preview's render function (`pipeline.preview.render_clip`, no gradio needed), acc at 256²
  preview app      the Gradio app built around it (`build_app`, not served); skip where gradio is not installed
  run tiny         `cli.py run` with the built-in tiny model (1 row)

Every Python process the lines start runs under coverage.py when it is importable (a `sitecustomize` on
PYTHONPATH starts it), so at the end `scripts/cuda_coverage.py` names which CUDA-only lines ran
(OUT/coverage.json, OUT/cuda_coverage.txt). Ray's workers save as they go (Ray ends them without their exit
handlers), but what Ray runs on its own native threads (a render actor's batches) is not traced: the CUDA-only
lines a render reaches run in the benches', the clip API's, doctor's and pytest's own processes too. Lines that would start past `--budget` seconds are skipped
and say so; a line past its time limit is stopped and fails.

    python scripts/gpu_smoke.py --cpu-dry-run --out /tmp/smoke   # no GPU: the lines that run on the CPU (tiny
                                                                  # model), the line machinery and the coverage
"""
from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import threading
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
SCRIPT = Path(__file__).resolve()
SKIP_EXIT = 3  # a line's process exits with this when it cannot run here (it prints `SKIP: reason` first)
DETAIL_PREFIX = "DETAIL: "  # a line's process prints its one-line summary after this
LOG_TAIL = 3000  # characters of a failed line's log printed under it
OUTPUT_TAIL_LINES = 16  # lines of a command's output printed under it when it succeeds (a bench's report)

GPU_BUDGET, CPU_BUDGET = 500, 1800  # seconds; the device call's limit is 600, the CPU runs the tiny lines slowly
CPU_SLOWER = 3  # the CPU dry run's time limits: the GPU's times this
ACC_CLIPS = {"posed": 2.0, "plain": 1.0}  # a few seconds: the compile, not the rendering, is what takes time
TINY_CLIPS = {"plain": 1.0}


# --------------------------------------------------------------------------------------------------
# Lines and how they run


@dataclass
class Line:
    name: str
    argv: list[str]
    timeout: float
    env: dict[str, str] = field(default_factory=dict)
    needs_cuda: bool = False  # skipped (with the reason) on a machine without CUDA
    judge: Callable[[str], tuple[str, str]] | None = None  # (status, detail) of a run that exited 0, from its log
    status: str = "skip"
    seconds: float = 0.0
    detail: str = ""


@dataclass
class Smoke:
    out: Path
    budget: float  # seconds after which no line starts
    env: dict[str, str]
    cuda: bool
    overrun: float = 40  # seconds a line that started within the budget may run past it
    started: float = field(default_factory=time.monotonic)
    lines: list[Line] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def elapsed(self) -> float:
        return time.monotonic() - self.started

    def report(self, line: Line) -> None:
        with self.lock:
            self.lines.append(line)
            print(f"{line.status} {line.seconds:.1f} {line.name}", flush=True)
            for text in line.detail.splitlines():
                print(f"    {text}", flush=True)

    def run(self, line: Line) -> Line:
        """Run one line in its own process group (a time limit stops it and what it started)."""
        if line.needs_cuda and not self.cuda:
            line.detail = "needs CUDA (none on this machine)"
            self.report(line)
            return line
        if self.elapsed() >= self.budget:
            line.detail = f"time budget: {self.budget:.0f} s spent before it could start"
            self.report(line)
            return line
        limit = min(line.timeout, self.budget + self.overrun - self.elapsed())
        log_path = self.out / "logs" / f"{line.name.replace(' ', '-')}.log"
        started = time.monotonic()
        with open(log_path, "w") as log:
            log.write("$ " + " ".join(line.argv) + "\n")
            log.flush()
            process = subprocess.Popen(line.argv, cwd=REPO, env={**self.env, **line.env}, stdout=log, stderr=subprocess.STDOUT,
                                       start_new_session=True)
            try:
                code = process.wait(timeout=limit)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()
                code = None
        line.seconds = time.monotonic() - started
        text = log_path.read_text(errors="replace")
        details = [row[len(DETAIL_PREFIX):] for row in text.splitlines() if row.startswith(DETAIL_PREFIX)]
        skips = [row[len("SKIP: "):] for row in text.splitlines() if row.startswith("SKIP: ")]
        if code == 0:
            tail = [row for row in text.splitlines()[1:] if row.strip()][-OUTPUT_TAIL_LINES:]
            line.status, line.detail = "ok", "\n".join(details or tail)
            if line.judge is not None:
                line.status, line.detail = line.judge(text)
        elif code == SKIP_EXIT and skips:
            line.status, line.detail = "skip", skips[-1]
        else:
            line.status = "FAIL"
            why = f"stopped at its time limit ({limit:.0f} s)" if code is None else f"exit code {code}"
            line.detail = f"{why}; log {log_path}:\n" + text[-LOG_TAIL:]
        self.report(line)
        return line

    def run_lane(self, lines: list[Line]) -> None:
        for line in lines:
            self.run(line)


def coverage_environment(work: Path) -> tuple[dict[str, str], Path | None]:
    """Environment that starts coverage.py in every Python process (Ray's workers too), and its config file;
    (empty, None) when coverage.py is not installed."""
    try:
        import coverage  # noqa: F401
    except ImportError:
        return {}, None
    folder = work / "coverage"
    site = folder / "site"
    site.mkdir(parents=True, exist_ok=True)
    for old in folder.glob(".coverage*"):
        old.unlink()
    rcfile = folder / "coveragerc"
    rcfile.write_text("[run]\nparallel = true\nsigterm = true\n"
                      f"data_file = {folder / '.coverage'}\n"
                      f"source =\n    {REPO / 'echomimic2'}\n    {REPO / 'pipeline'}\n")
    (site / "sitecustomize.py").write_text(SITECUSTOMIZE)
    pythonpath = os.pathsep.join([str(site), *filter(None, [os.environ.get("PYTHONPATH")])])
    return {"COVERAGE_PROCESS_START": str(rcfile), "PYTHONPATH": pythonpath}, rcfile


SITECUSTOMIZE = '''"""Starts coverage.py in every Python process of the smoke run (gpu_smoke.py writes this file)."""
import importlib.machinery
import importlib.util
import os
import sys

def _save_every(cov, seconds):
    import time

    while True:
        time.sleep(seconds)
        try:
            cov.save()
        except Exception:  # the next save, or the exit's, may still work
            pass


if os.environ.get("COVERAGE_PROCESS_START"):
    try:
        import coverage

        _cov = coverage.process_startup()
        # Ray ends its workers (the render actors) without running their exit handlers: they save as they go.
        if _cov is not None and os.path.basename(sys.argv[0] if sys.argv else "") == "default_worker.py":
            import threading

            threading.Thread(target=_save_every, args=(_cov, 5), daemon=True).start()
    except Exception as error:  # a process without coverage still runs its line
        print(f"coverage not started: {error}", file=sys.stderr)

# This file shadows the interpreter's own sitecustomize, if it has one: run that one too.
_here = os.path.dirname(os.path.abspath(__file__))
_spec = importlib.machinery.PathFinder.find_spec(
    "sitecustomize", [p for p in sys.path if os.path.abspath(p or os.curdir) != _here])
if _spec is not None and _spec.loader is not None:
    _module = importlib.util.module_from_spec(_spec)
    _spec.loader.exec_module(_module)
'''


def coverage_summary(smoke: Smoke, rcfile: Path | None) -> None:
    """Combine the processes' data, write OUT/coverage.json and print cuda_coverage.py's verdict per line."""
    if rcfile is None:
        print("coverage: skip (coverage.py is not installed: the CUDA-only lines cannot be checked)", flush=True)
        return
    env = {k: v for k, v in smoke.env.items() if k != "COVERAGE_PROCESS_START"}  # these steps themselves unmeasured
    report = smoke.out / "coverage.json"
    for argv in (["combine", "--quiet"], ["json", "-o", str(report)]):
        done = subprocess.run([sys.executable, "-m", "coverage", *argv, f"--rcfile={rcfile}"], cwd=REPO, env=env,
                              capture_output=True, text=True)
        if done.returncode != 0:
            print(f"coverage {argv[0]} failed: {(done.stdout + done.stderr)[-1000:]}", flush=True)
            return
    done = subprocess.run([sys.executable, str(REPO / "scripts" / "cuda_coverage.py"), "--coverage", str(report)],
                          cwd=REPO, env=env, capture_output=True, text=True)
    (smoke.out / "cuda_coverage.txt").write_text(done.stdout + done.stderr)
    print(done.stdout + done.stderr, end="", flush=True)


# --------------------------------------------------------------------------------------------------
# The lines that are Python calls rather than commands: run as `gpu_smoke.py --line NAME` (a process each)


def line_weights(args) -> str:
    import torch

    from echomimic2.official_layout import write_random_official_weights

    started = time.perf_counter()
    write_random_official_weights(args.weights, device="cuda", file_dtype=torch.float16)
    size = sum(f.stat().st_size for f in args.weights.rglob("*") if f.is_file())
    return f"{size / 2**30:.2f} GiB written in {time.perf_counter() - started:.1f} s"


def _clip_inputs(folder: Path, seconds: float) -> tuple[Path, Path]:
    sys.path.insert(0, str(REPO / "scripts"))
    from gpu_e2e import reference_png, wav_bytes

    folder.mkdir(parents=True, exist_ok=True)
    audio = folder / "clip.wav"
    audio.write_bytes(wav_bytes(seconds))
    return reference_png(folder / "clip.png"), audio


def _probe(path: Path, seconds: float) -> str:
    from pipeline.assemble import probe_video

    probe = probe_video(str(path))
    if (probe["vcodec"], probe["acodec"]) != ("h264", "aac") or abs(probe["duration"] - seconds) > 1 / 24 + 1e-3:
        raise RuntimeError(f"{path.name}: not the expected {seconds} s of h264 + aac: {probe}")
    return f"{path.name}: h264 + aac, {probe['width']}x{probe['height']}, {probe['duration']} s"


def line_clip(args) -> str:
    from pipeline import EchoMimicV2Pipeline

    image, audio = _clip_inputs(args.work / "clip", 1.0)
    if args.cpu:
        pipe = EchoMimicV2Pipeline.tiny()
    else:
        pipe = EchoMimicV2Pipeline.from_official(args.weights, preset="acc", device="cuda")
    started = time.perf_counter()
    out = pipe(image, audio, fps=24.0, seed=0, steps=2, progress=False)
    rendered = time.perf_counter() - started
    target = args.work / "clip" / "clip.mp4"
    out.save(target)
    return f"{len(out.frames)} frames in {rendered:.1f} s (2 steps); {_probe(target, 1.0)}"


def line_preview(args) -> str:
    from pipeline.preview import Pipelines, render_clip

    image, audio = _clip_inputs(args.work / "preview", 1.0)
    pipelines = Pipelines(None if args.cpu else str(args.weights))
    preset = "tiny" if args.cpu else "acc"
    video, saved = render_clip(pipelines, preset, str(image), str(audio), None, fps=24.0, steps=2, guidance=None, seed=0,
                               size=256, out_dir=str(args.work / "preview"))
    return f"{preset}: {saved.get('frames')} frames; {_probe(Path(video), 1.0)}"


def line_preview_app(args) -> str:
    try:
        import gradio  # noqa: F401
    except ImportError as error:
        print(f"SKIP: gradio is not installed here ({error}); the render function is the line above", flush=True)
        raise SystemExit(SKIP_EXIT) from None
    from pipeline.preview import Pipelines, build_app

    app = build_app(Pipelines(None if args.cpu else str(args.weights)))
    return f"built {type(app).__name__} (not served)"


def _job(args, preset: str, clips: dict[str, float], weights: Path | None, cache: Path | None, expect_cache: str | None) -> str:
    sys.path.insert(0, str(REPO / "scripts"))
    from gpu_e2e import step_job

    result: dict = {}
    try:
        step_job(weights, args.work / f"run-{preset}", preset, clips, compile_networks=not args.cpu, result=result,
                 compile_cache=None if cache is None else str(cache), gpus=None if args.cpu else 1, timeout=args.timeout)
    finally:
        print(json.dumps(result, default=str), flush=True)
    caches = [segment.get("compile_cache") for segment in result.get("first_segments", [])]
    if expect_cache is not None and caches != [expect_cache]:
        raise RuntimeError(f"the render worker's compile cache was {caches}, expected [{expect_cache!r}]")
    later = result.get("later_render_s_per_120")
    return (f"{result['frames']} frames in {len(clips)} rows, job wall {result['wall_s']} s, render {result['render_s']} s, "
            f"compile cache {caches}, first segments {result.get('first_segments')}"
            + ("" if later is None else f", later segments {later} s per 120 frames")
            + f", GPU peak {result['peak_gpu_gib_nvidia_smi']} GiB (nvidia-smi)")


def line_run_acc_cold(args) -> str:
    return _job(args, "acc", ACC_CLIPS, args.weights, args.work / "compile-cache", "miss")


def line_run_acc_warm(args) -> str:
    return _job(args, "acc", ACC_CLIPS, args.weights, args.work / "compile-cache", "hit")


def line_run_tiny(args) -> str:
    return _job(args, "tiny", TINY_CLIPS, None, None, None)


LINE_FUNCTIONS: dict[str, Callable] = {
    "weights": line_weights, "clip": line_clip, "preview": line_preview, "preview-app": line_preview_app,
    "run-acc-cold": line_run_acc_cold, "run-acc-warm": line_run_acc_warm, "run-tiny": line_run_tiny,
}


def run_line_function(args) -> int:
    try:
        detail = LINE_FUNCTIONS[args.line](args)
    except SystemExit:
        raise
    except BaseException:  # noqa: BLE001 - the parent reads the traceback from the log
        traceback.print_exc()
        return 1
    print(DETAIL_PREFIX + detail, flush=True)
    return 0


# --------------------------------------------------------------------------------------------------
# The plan


def plan(args, cuda: bool) -> tuple[list[Line], list[Line], list[Line]]:
    """(first, lane 1, lane 2): `first` runs alone, then the two lanes side by side."""
    python = sys.executable
    cli = [python, str(REPO / "cli.py")]
    work, weights, cache = args.work, args.weights, args.work / "compile-cache"

    scale = 1 if cuda else CPU_SLOWER

    def own(name: str, timeout: float, needs_cuda: bool = False) -> Line:
        timeout *= scale
        argv = [python, str(SCRIPT), "--line", name, "--work", str(work), "--weights", str(weights),
                "--timeout", str(timeout)] + (["--cpu-dry-run"] if not cuda else [])
        return Line(name.replace("-", " "), argv, timeout + 30, needs_cuda=needs_cuda)

    have_weights = (weights / "audio_processor" / "tiny.pt").is_file()  # as gpu_e2e.py's weights step checks
    first = [] if have_weights else [own("weights", 180, needs_cuda=True)]
    lane1 = [
        own("run-acc-cold", 330, needs_cuda=True),
        own("run-acc-warm", 200, needs_cuda=True),
        Line("bench", [*cli, "bench", "--preset", "acc", "--frames", "48", "--size", "768", "--compile-cache", str(cache)], 240 * scale),
        Line("bench schedule", [*cli, "bench", "--preset", "acc", "--schedule", "5", "--compile-cache", str(cache)], 240 * scale),
    ]
    lane2 = [
        Line("pytest -m gpu", [python, "-m", "pytest", "-m", "gpu", "tests/test_gpu.py", "-q"], 330 * scale,
             env={"ECHOMIMIC2_TEST_WEIGHTS": str(weights)} if cuda else {}, judge=judge_pytest),
        Line("doctor", [*cli, "doctor", *(["--weights", str(weights)] if cuda else []), "--output", str(work / "doctor-out")], 150 * scale),
        own("clip", 180),
        own("preview", 150),
        own("preview-app", 60),
        own("run-tiny", 150),  # its own local Ray beside lane 1's, as concurrent jobs on one machine have
    ]
    return first, lane1, lane2


def judge_pytest(log: str) -> tuple[str, str]:
    """pytest's summary line; `skip` when every test was skipped (no CUDA): nothing ran."""
    last = ([row.strip() for row in log.splitlines() if row.strip()] or [""])[-1]
    return ("skip" if "skipped" in last and "passed" not in last else "ok"), last


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, help="Folder for the logs, smoke.json, coverage.json, cuda_coverage.txt.")
    parser.add_argument("--work", type=Path, default=Path("/tmp/gpu-smoke"), help="Weights (6.6 GB), inputs, outputs.")
    parser.add_argument("--weights", type=Path, help="An official-layout folder to use (default: WORK/weights, written).")
    parser.add_argument("--budget", type=float,
                        help="Seconds after which no line starts (one that started may run 40 s longer); "
                             "default 500, 1800 for --cpu-dry-run.")
    parser.add_argument("--cpu-dry-run", dest="cpu", action="store_true",
                        help="No GPU: run what runs on the CPU (the tiny model), to check the lines and the coverage.")
    parser.add_argument("--line", choices=sorted(LINE_FUNCTIONS), help=argparse.SUPPRESS)
    parser.add_argument("--timeout", type=float, default=600, help=argparse.SUPPRESS)
    args = parser.parse_args()
    args.weights = args.weights or args.work / "weights"
    args.budget = args.budget or (CPU_BUDGET if args.cpu else GPU_BUDGET)
    sys.path.insert(0, str(REPO))
    if args.line:
        return run_line_function(args)
    if args.out is None:
        parser.error("--out is required")

    cuda = not args.cpu and _cuda_available()
    if not cuda and not args.cpu:
        print("gpu_smoke: no CUDA device here (--cpu-dry-run runs what runs on the CPU)")
        return 2
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "logs").mkdir(exist_ok=True)
    args.work.mkdir(parents=True, exist_ok=True)
    coverage_env, rcfile = coverage_environment(args.work)
    env = {**os.environ, **coverage_env, "PYTHONUNBUFFERED": "1", "HF_HUB_OFFLINE": "1"}
    smoke = Smoke(args.out, args.budget, env, cuda)
    print(f"gpu_smoke: {_describe_machine(cuda)}, commit {_commit()}, {time.strftime('%Y-%m-%d %H:%M')}; "
          f"coverage {'on' if rcfile else 'off (coverage.py not installed)'}", flush=True)
    first, lane1, lane2 = plan(args, cuda)
    smoke.run_lane(first)
    if first and first[0].status == "FAIL":
        print("gpu_smoke: no weights folder, the lines that load it cannot run", flush=True)
    lanes = [threading.Thread(target=smoke.run_lane, args=(lane,)) for lane in (lane1, lane2)]
    for lane in lanes:
        lane.start()
    for lane in lanes:
        lane.join()
    coverage_summary(smoke, rcfile)
    failed = [line.name for line in smoke.lines if line.status == "FAIL"]
    summary = dict(machine=_describe_machine(cuda), commit=_commit(), date=time.strftime("%Y-%m-%d %H:%M"),
                   wall_s=round(smoke.elapsed(), 1),
                   lines=[dict(name=line.name, status=line.status, seconds=round(line.seconds, 1), detail=line.detail)
                          for line in smoke.lines])
    (args.out / "smoke.json").write_text(json.dumps(summary, indent=1))
    print("\n".join(f"{line.status} {line.seconds:.1f} {line.name}" for line in smoke.lines))
    print(f"gpu_smoke: {len(smoke.lines)} lines in {smoke.elapsed():.0f} s, {len(failed)} failed"
          + (f": {', '.join(failed)}" if failed else ""), flush=True)
    return 1 if failed else 0


def _cuda_available() -> bool:
    done = subprocess.run([sys.executable, "-c", "import torch; print(torch.cuda.is_available())"],
                          capture_output=True, text=True)
    return done.stdout.strip() == "True"


def _describe_machine(cuda: bool) -> str:
    if not cuda:
        return "CPU dry run (no CUDA)"
    done = subprocess.run(["nvidia-smi", "--query-gpu=name,memory.total,driver_version", "--format=csv,noheader"],
                          capture_output=True, text=True)
    return done.stdout.strip().splitlines()[0] if done.returncode == 0 and done.stdout.strip() else "CUDA (nvidia-smi unavailable)"


def _commit() -> str:
    done = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"], capture_output=True, text=True)
    return done.stdout.strip() or "unknown"


if __name__ == "__main__":
    raise SystemExit(main())
