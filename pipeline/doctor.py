"""`cli.py doctor`: can this machine run the job? One line per check, with what to do when it fails.

Checks: the accelerator (CUDA and its free memory; a CPU-only machine is said plainly, not failed),
ffmpeg (the binary and the H.264/AAC encoders the assembler uses), the weights folder's layout (the
same per-file check as `weights check`), that the output root's storage accepts a write with the
credentials in the environment, and one short render through the model the job would load.
"""
from __future__ import annotations

import subprocess
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

OK, WARN, FAIL = "ok", "warn", "FAIL"
RENDER_FRAMES = 12  # one context window
RENDER_SIZE = 128  # small enough for a CPU; on a GPU still the real networks' code path


@dataclass
class Check:
    name: str
    status: str  # OK | WARN | FAIL
    detail: str
    fix: str = ""  # what to do, shown when the status is not OK

    def line(self) -> str:
        text = f"[{self.status:>4}] {self.name}: {self.detail}"
        return text + (f"\n       → {self.fix}" if self.fix and self.status != OK else "")


def check_accelerator() -> Check:
    import torch

    if not torch.cuda.is_available():
        built = torch.version.cuda
        detail = "no CUDA device: render actors run on the CPU (fine for the tiny preset, far too slow for 768² official renders)"
        fix = ("install a CUDA build of torch and an NVIDIA driver to render the official presets" if built is None
               else f"torch is built for CUDA {built} but sees no device: check the driver (nvidia-smi) and CUDA_VISIBLE_DEVICES")
        return Check("accelerator", WARN, detail, fix)
    names, low = [], []
    for index in range(torch.cuda.device_count()):
        free, total = torch.cuda.mem_get_info(index)
        names.append(f"cuda:{index} {torch.cuda.get_device_name(index)} ({free / 2**30:.1f} of {total / 2**30:.1f} GiB free)")
        if free < 9 * 2**30:
            low.append(names[-1])
    detail = f"torch {torch.__version__}, CUDA {torch.version.cuda}: " + "; ".join(names)
    if low:
        return Check("accelerator", FAIL, detail, "a 768² render needs ~8 GiB free per GPU: stop other processes on "
                     + ", ".join(name.split(" ")[0] for name in low))
    return Check("accelerator", OK, detail)


def check_ffmpeg() -> Check:
    from pipeline.media import ffmpeg_exe

    try:
        version = subprocess.run([ffmpeg_exe(), "-hide_banner", "-version"], capture_output=True, text=True, timeout=30)
        encoders = subprocess.run([ffmpeg_exe(), "-hide_banner", "-encoders"], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return Check("ffmpeg", FAIL, f"{ffmpeg_exe()}: {exc}", "install ffmpeg (apt-get install ffmpeg) or `pip install imageio-ffmpeg`")
    first_line = (version.stdout.splitlines() or ["?"])[0]
    missing = [name for name in ("libx264", "aac") if f" {name} " not in encoders.stdout]
    if version.returncode or missing:
        return Check("ffmpeg", FAIL, f"{ffmpeg_exe()}: {first_line}; missing encoders: {', '.join(missing) or '?'}",
                     "use an ffmpeg build with libx264 and aac (imageio-ffmpeg's binary has both)")
    return Check("ffmpeg", OK, f"{ffmpeg_exe()}: {first_line} (libx264, aac)")


def check_weights(weights: Path | None, variant: str) -> Check:
    """The folder's files for `variant` (quality, acc or both), as `weights check` reads them; every file with a
    problem is named."""
    if weights is None:
        return Check("weights", WARN, "no --weights: only the tiny demo preset can run (drawn figures, not people)",
                     "download the official weights (README, 'Official weights') and pass --weights DIR")
    import contextlib
    import io

    from echomimic2.weights_check import weights_check_command

    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        code = weights_check_command(Path(weights), variant)
    lines = printed.getvalue().strip().splitlines()
    if code:
        # a file's first line names it; its key lists (indented) stay with `weights check`
        problems = [line.replace(f"{weights}/", "").replace(": FAILED - file not found", ": not found") for line in lines[:-1]
                    if not line.startswith(" ") and not line.endswith(": OK") and ": OK -" not in line]
        return Check("weights", FAIL, f"{weights} ({variant}): {lines[-1]}: " + " | ".join(problems),
                     f"run `cli.py weights check {weights} --variant {variant}` for every file's report")
    return Check("weights", OK, f"{weights} ({variant}): {lines[-1] if lines else 'OK'}")


def check_output(output: str | None) -> Check:
    if output is None:
        return Check("output", WARN, "no --output given: storage and credentials not checked",
                     "pass --output s3://bucket/prefix (or a local folder) to check it")
    from pipeline import storage

    probe = storage.join(output, "_ledger", f"doctor-{uuid.uuid4().hex[:8]}.probe")
    try:
        storage.check_uri(output)
        storage.write_atomic(probe, b"doctor\n")
        read = storage.read_bytes(probe, max_bytes=64)
        storage.delete(probe)
    except Exception as exc:  # noqa: BLE001 - every storage failure is this check's finding
        return Check("output", FAIL, f"{storage.redact(output)}: {storage.describe_error(exc)}",
                     "check the URL and the credentials in the environment (AWS_*, AWS_ENDPOINT_URL, "
                     "GOOGLE_APPLICATION_CREDENTIALS) or fsspec's configuration")
    if read != b"doctor\n":
        return Check("output", FAIL, f"{storage.redact(output)}: a written probe read back differently", "check the storage")
    return Check("output", OK, f"{storage.redact(output)}: write, read and delete work")


def check_render(weights: Path | None, preset: str) -> Check:
    import numpy as np
    import torch

    from echomimic2 import PRESETS, EchoMimicV2
    from echomimic2.pose import default_pose_sequence, render_pose

    device = "cuda" if torch.cuda.is_available() else "cpu"
    started = time.perf_counter()
    try:
        if weights is None:
            model = EchoMimicV2.tiny()
        else:
            model = EchoMimicV2.from_official(weights, PRESETS[preset].variant, device=device,
                                              dtype=torch.float16 if device == "cuda" else torch.float32)
        loaded = time.perf_counter() - started
        rng = np.random.default_rng(0)
        reference = rng.integers(0, 256, (RENDER_SIZE, RENDER_SIZE, 3), dtype=np.uint8)
        audio = rng.standard_normal((RENDER_FRAMES, 50, 384)).astype(np.float32)
        poses = np.stack([render_pose(pose, RENDER_SIZE, RENDER_SIZE) for pose in default_pose_sequence(RENDER_FRAMES, 24.0)])
        started = time.perf_counter()
        frames = model.render(reference, audio, poses, seed=0, first_frame=0, steps=1)
        rendered = time.perf_counter() - started
    except Exception as exc:  # noqa: BLE001 - the check reports whatever stops a render
        return Check("render", FAIL, f"{type(exc).__name__}: {exc}",
                     "see the weights and accelerator lines above; report the error with `cli.py doctor` output")
    if frames.shape != (RENDER_FRAMES, RENDER_SIZE, RENDER_SIZE, 3):
        return Check("render", FAIL, f"unexpected frames of shape {frames.shape}", "report this as a bug")
    return Check("render", OK, f"{model.identity} on {device}: {RENDER_FRAMES} frames at {RENDER_SIZE}², 1 step, "
                 f"loaded in {loaded:.1f} s, rendered in {rendered:.1f} s")


def run_checks(weights: Path | None, output: str | None, preset: str | None, render: bool = True) -> list[Check]:
    from echomimic2.presets import PRESETS, default_preset

    # Without --preset the whole folder is checked (both variants' files), and the default preset renders.
    variant = PRESETS[preset].variant if preset else "both"
    preset = preset or default_preset(with_weights=weights is not None)
    checks: list[Callable[[], Check]] = [check_accelerator, check_ffmpeg, lambda: check_weights(weights, variant),
                                         lambda: check_output(output)]
    results = [check() for check in checks]
    weights_failed = any(c.name == "weights" and c.status == FAIL for c in results)
    if render and not weights_failed:
        results.append(check_render(weights, preset))
    return results


def doctor_command(weights: Path | None = None, output: str | None = None, preset: str | None = None,
                   render: bool = True) -> int:
    """Print every check; exit 1 if any failed (warnings do not fail)."""
    results = run_checks(weights, output, preset, render)
    for check in results:
        print(check.line(), flush=True)
    counts = {status: [check.name for check in results if check.status == status] for status in (OK, WARN, FAIL)}
    print(f"doctor: {len(counts[OK])} passed, {len(counts[WARN])} warning(s) ({', '.join(counts[WARN]) or 'none'}), "
          f"{len(counts[FAIL])} failed" + (f" ({', '.join(counts[FAIL])})" if counts[FAIL] else ""))
    return 1 if counts[FAIL] else 0
