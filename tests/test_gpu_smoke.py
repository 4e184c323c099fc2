"""scripts/gpu_smoke.py's machinery on the CPU: each line's status, seconds and detail, its time limit, the budget,
and the plan it runs on a GPU (the GPU run itself is recorded in BENCHMARKS.md)."""
from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))

import gpu_smoke  # noqa: E402
from gpu_smoke import Line, Smoke, judge_pytest  # noqa: E402


@pytest.fixture
def smoke(tmp_path) -> Smoke:
    (tmp_path / "logs").mkdir()
    return Smoke(tmp_path, budget=60, env=dict(os.environ), cuda=False)


def python(code: str) -> list[str]:
    return [sys.executable, "-c", code]


def test_each_line_reports_ok_fail_or_skip_with_its_seconds(smoke, capsys):
    ok = smoke.run(Line("fine", python("print('noise'); print('DETAIL: 3 frames')"), timeout=30))
    failed = smoke.run(Line("broken", python("import sys; print('the reason'); sys.exit(4)"), timeout=30))
    skipped = smoke.run(Line("no gradio", python(f"print('SKIP: gradio is not installed'); raise SystemExit({gpu_smoke.SKIP_EXIT})"),
                             timeout=30))
    cuda_only = smoke.run(Line("run acc", python("print(1)"), timeout=30, needs_cuda=True))
    assert (ok.status, ok.detail) == ("ok", "3 frames")
    assert failed.status == "FAIL" and failed.detail.startswith("exit code 4") and "the reason" in failed.detail
    assert (skipped.status, skipped.detail) == ("skip", "gradio is not installed")
    assert (cuda_only.status, cuda_only.detail) == ("skip", "needs CUDA (none on this machine)")
    printed = capsys.readouterr().out.splitlines()
    assert printed[0].startswith("ok ") and printed[0].endswith(" fine") and float(printed[0].split()[1]) >= 0
    assert [row.split()[0] for row in printed if not row.startswith("    ")] == ["ok", "FAIL", "skip", "skip"]
    assert (smoke.out / "logs" / "broken.log").read_text().splitlines()[0].startswith("$ ")


def test_a_line_past_its_time_limit_is_stopped_with_what_it_started(smoke, tmp_path):
    marker = tmp_path / "child-alive"
    child = tmp_path / "child.py"
    child.write_text(f"import pathlib, time\ntime.sleep(3)\npathlib.Path({str(marker)!r}).touch()\n")
    # The line starts a child of its own that would outlive it: the whole process group goes.
    code = f"import subprocess, sys, time; subprocess.Popen([sys.executable, {str(child)!r}]); time.sleep(60)"
    started = time.monotonic()
    line = smoke.run(Line("slow", python(code), timeout=1))
    assert line.status == "FAIL" and "time limit" in line.detail
    assert time.monotonic() - started < 10
    time.sleep(3.5)
    assert not marker.exists()


def test_lines_after_the_budget_are_skipped_and_a_running_one_gets_a_little_more(smoke):
    smoke.budget, smoke.overrun = 1, 1
    running = smoke.run(Line("long", python("import time; time.sleep(30)"), timeout=30))
    late = smoke.run(Line("late", python("print(1)"), timeout=30))
    assert running.status == "FAIL" and "time limit (2 s)" in running.detail and running.seconds < 10
    assert late.status == "skip" and "time budget" in late.detail


def test_pytest_with_every_test_skipped_is_a_skip():
    assert judge_pytest("...\n12 skipped in 7.57s\n") == ("skip", "12 skipped in 7.57s")
    assert judge_pytest("...\n5 passed, 1 skipped in 160.2s\n") == ("ok", "5 passed, 1 skipped in 160.2s")


def test_the_gpu_plan_runs_every_user_facing_cuda_command(tmp_path):
    args = type("Args", (), dict(work=tmp_path, weights=tmp_path / "weights"))()
    first, lane1, lane2 = gpu_smoke.plan(args, cuda=True)
    names = [line.name for line in first + lane1 + lane2]
    assert names == ["weights", "run acc cold", "run acc warm", "bench", "bench schedule",
                     "pytest -m gpu", "doctor", "clip", "preview", "preview app", "run tiny"]
    commands = {line.name: " ".join(line.argv) for line in first + lane1 + lane2}
    cache = str(tmp_path / "compile-cache")
    assert f"cli.py bench --preset acc --frames 48 --size 768 --compile-cache {cache}" in commands["bench"]
    assert f"cli.py bench --preset acc --schedule 5 --compile-cache {cache}" in commands["bench schedule"]
    assert f"doctor --weights {tmp_path / 'weights'}" in commands["doctor"]
    assert "-m pytest -m gpu tests/test_gpu.py" in commands["pytest -m gpu"]
    assert next(line for line in lane2 if line.name == "pytest -m gpu").env == {"ECHOMIMIC2_TEST_WEIGHTS": str(tmp_path / "weights")}
    # The warm run and the benches find the compile cache the cold run wrote: one lane, in that order.
    assert [line.name for line in lane1] == ["run acc cold", "run acc warm", "bench", "bench schedule"]


def test_the_smoke_run_without_coverage_says_the_cuda_lines_cannot_be_checked(smoke, capsys):
    gpu_smoke.coverage_summary(smoke, None)
    assert "coverage: skip" in capsys.readouterr().out
