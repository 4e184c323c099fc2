"""`cli.py doctor` on this CPU machine: each check's line, and a non-zero exit only on a failure."""
from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

from pipeline.doctor import FAIL, OK, WARN, check_ffmpeg, check_output, check_weights, doctor_command

REPO = Path(__file__).resolve().parent.parent


def test_cpu_machine_passes_with_warnings_and_a_tiny_render(tmp_path):
    done = subprocess.run([sys.executable, str(REPO / "cli.py"), "doctor", "--output", str(tmp_path / "out")],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "[warn] accelerator: no CUDA device" in done.stdout  # says so, does not fail
    assert "[  ok] ffmpeg" in done.stdout and "[  ok] output" in done.stdout
    assert re.search(r"\[  ok\] render: tiny-demo-[0-9a-f]{16} on cpu", done.stdout)
    assert list((tmp_path / "out" / "_ledger").iterdir()) == []  # the probe is deleted
    # warnings are counted as warnings, not as passed checks
    assert done.stdout.strip().splitlines()[-1] == "doctor: 3 passed, 2 warning(s) (accelerator, weights), 0 failed"


def test_failures_name_the_problem_and_what_to_do(tmp_path, capsys):
    (tmp_path / "weights").mkdir()
    weights = check_weights(tmp_path / "weights", "acc")
    assert weights.status == FAIL and "reference_unet.pth" in weights.detail and "weights check" in weights.fix
    output = check_output("/proc/no-such-root")
    assert output.status == FAIL and "credentials" in output.fix
    assert check_ffmpeg().status == OK
    assert check_weights(None, "tiny").status == WARN
    assert doctor_command(weights=tmp_path / "weights", output=str(tmp_path / "out")) == 1
    printed = capsys.readouterr().out
    assert "1 failed (weights)" in printed and "] render:" not in printed  # no render with weights known to be bad


def test_without_any_ffmpeg_the_pipeline_imports_and_the_doctor_says_so(tmp_path):
    """A machine with neither ffmpeg on PATH nor imageio-ffmpeg's binary (the offline GPU machine's case): the
    pipeline still imports (the schedule bench encodes nothing), and the ffmpeg check fails with what to do."""
    fake = tmp_path / "site" / "imageio_ffmpeg"
    fake.mkdir(parents=True)
    (fake / "__init__.py").write_text("def get_ffmpeg_exe():\n    raise RuntimeError('No ffmpeg exe could be found.')\n")
    script = ("from pipeline.doctor import check_ffmpeg; import pipeline.assemble, pipeline.driving_video; "
              "check = check_ffmpeg(); print(check.status, '|', check.detail, '|', check.fix)")
    env = {"PATH": str(tmp_path / "empty"), "PYTHONPATH": f"{tmp_path / 'site'}:{REPO}", "HOME": str(tmp_path)}
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120, env=env, cwd=REPO)
    assert done.returncode == 0, done.stderr[-2000:]
    status, detail, fix = (part.strip() for part in done.stdout.strip().splitlines()[-1].split("|"))
    assert status == FAIL and detail.startswith("ffmpeg:") and "install ffmpeg" in fix


def test_a_missing_weights_folder_is_named_with_every_file(tmp_path):
    check = check_weights(tmp_path / "nope", "both")
    assert check.status == FAIL and f"{tmp_path / 'nope'}: folder not found" in check.detail
    for name in ("reference_unet.pth", "denoising_unet.pth", "motion_module.pth", "denoising_unet_acc.pth",
                 "motion_module_acc.pth", "pose_encoder.pth", "sd-vae-ft-mse/config.json",
                 "sd-vae-ft-mse/diffusion_pytorch_model.safetensors", "audio_processor/tiny.pt"):
        assert f"{name}: not found" in check.detail
