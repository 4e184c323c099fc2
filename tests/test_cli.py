"""The command line's first impressions: help without type tags, refusals that answer before torch or Ray is
imported and say what is wrong, and no library chatter on stderr. (How fast: scripts/cli_bench.py.)"""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

REPO = Path(__file__).resolve().parent.parent
HEAVY = ("torch", "ray", "diffusers", "transformers")
COMMANDS = [[], ["run"], ["validate"], ["status"], ["report"], ["preview"], ["plan"], ["bench"], ["doctor"],
            ["weights"], ["weights", "check"], ["poses"], ["poses", "extract"]]


def cli_in_fresh_process(*arguments: str) -> tuple[int, str, list[str]]:
    """(exit code, output, heavy modules imported) of `cli.py ARGUMENTS` in a new interpreter."""
    script = ("import sys; sys.argv = ['cli.py', *sys.argv[1:]]; import cli\n"
              "try:\n    cli.app()\nexcept SystemExit as stop:\n    code = stop.code\n"
              f"print('IMPORTED', [m for m in {HEAVY!r} if m in sys.modules]); sys.exit(code)")
    done = subprocess.run([sys.executable, "-c", script, *arguments], capture_output=True, text=True, cwd=REPO,
                          timeout=120)
    output, _, imported = done.stdout.rpartition("IMPORTED ")
    return done.returncode, output + done.stderr, eval(imported)  # noqa: S307 - our own list literal


def test_import_cli_loads_no_model_library():
    done = subprocess.run([sys.executable, "-c", f"import sys, cli; print([m for m in {HEAVY!r} if m in sys.modules])"],
                          capture_output=True, text=True, cwd=REPO, timeout=60)
    assert done.stdout.strip() == "[]", done.stdout + done.stderr


@pytest.mark.parametrize("words", COMMANDS, ids=lambda words: " ".join(words) or "cli")
def test_help_shows_no_python_type_tags(words):
    import cli

    result = CliRunner().invoke(cli.app, [*words, "--help"], terminal_width=200)
    assert result.exit_code == 0, result.output
    for tag in ("<str>", "<bool>", "<int>", "<float>", "<path>"):
        assert tag not in result.output, (words, result.output)


def test_plan_options_have_help():
    import cli

    output = CliRunner().invoke(cli.app, ["plan", "--help"], terminal_width=200).output
    assert "--segment-frames" in output and "Frames per segment" in output and "Frames shared" in output


def test_refusals_answer_before_any_model_library_and_say_what_is_wrong(tmp_path):
    a_file = tmp_path / "a-file"
    a_file.write_text("x")
    demo = str(REPO / "manifests" / "demo.parquet")
    code, output, imported = cli_in_fresh_process("run", demo, "--output", str(a_file))
    assert code == 2 and f"--output {a_file}: is a file" in output and imported == []
    assert "note: no --weights" not in output  # the model's note only once nothing refuses the job
    code, output, imported = cli_in_fresh_process("run", demo, "--output", str(tmp_path / "out"), "--weights",
                                                  str(tmp_path / "nope"))
    assert code == 2 and "--weights" in output and "nope: folder not found" in output and imported == []
    code, output, imported = cli_in_fresh_process("weights", "check", str(tmp_path / "nope"))
    assert code == 1 and output.startswith(f"{tmp_path / 'nope'}: folder not found") and imported == []


def test_mediapipe_imports_beside_protobuf_6_and_its_native_lines_go_to_the_log_file(tmp_path):
    """The demo's preprocessing and QC run MediaPipe; its import must not print protobuf's AttributeError, and
    its TFLite/absl lines go to the file the job names (pipeline.logs), not to the console."""
    pytest.importorskip("mediapipe")
    log = tmp_path / "_logs" / "native.log"
    script = ("import numpy as np\nfrom echomimic2.pose_detect import PoseDetector\n"
              "with PoseDetector(video=False) as detector:\n    detector.detect(np.zeros((64, 64, 3), np.uint8))\n"
              "print('detected')")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=REPO, timeout=120,
                          env={"ECHOMIMIC2_NATIVE_LOG": str(log), "PATH": "/usr/bin:/bin", "HOME": str(tmp_path)})
    assert done.returncode == 0 and done.stdout.strip() == "detected", done.stderr[-2000:]
    assert done.stderr == ""  # no GetPrototype AttributeError, no TFLite or absl line
    assert "Feedback manager" in log.read_text() or "TensorFlow Lite" in log.read_text()
