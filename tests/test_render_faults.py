"""Render workers killed with SIGKILL mid-segment (the fault hook `stages.FAULT_KILL_ENV` makes a worker kill
its own process when it starts a given segment): a worker that dies is replaced; a segment whose workers
keep dying fails its clip naming the row; workers that die whatever they render end the job, exit 3, in
bounded time, with results written and no raw tracebacks."""
from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import check_video, image_bytes, wav_bytes, write_manifest

from pipeline.commands import EXIT_ROWS_FAILED
from pipeline.results import read_results
from pipeline.stages import FAULT_KILL_ENV, RENDER_DEATHS_IN_A_ROW

REPO = Path(__file__).resolve().parent.parent
JOB_LIMIT_S = 420  # generous for a loaded 2-core CI machine; the job itself stops after RENDER_DEATHS_IN_A_ROW restarts


def run_cli(tmp_path: Path, clips: dict[str, float], kill: str) -> tuple[int, str, float]:
    rows = []
    for index, (clip_id, seconds) in enumerate(clips.items()):
        (tmp_path / f"{clip_id}.png").write_bytes(image_bytes(index))
        (tmp_path / f"{clip_id}.wav").write_bytes(wav_bytes(seconds))
        rows.append(dict(clip_id=clip_id, image=f"{clip_id}.png", audio=f"{clip_id}.wav"))
    manifest = write_manifest(str(tmp_path), rows)
    command = [sys.executable, str(REPO / "cli.py"), "run", manifest, "--output", str(tmp_path / "out"), "--gpus", "1",
               "--cpus", "1", "--segment-frames", "8", "--overlap-frames", "2"]
    started = time.monotonic()
    # The driver starts its own Ray, whose workers inherit the fault hook.
    done = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=JOB_LIMIT_S,
                          env={**os.environ, FAULT_KILL_ENV: kill}, start_new_session=True)
    return done.returncode, done.stdout + done.stderr, time.monotonic() - started


def test_a_worker_killed_once_is_replaced_and_the_job_finishes(tmp_path):  # ~45 s: in the default suite
    from pipeline.ledger import Ledger

    code, log, _ = run_cli(tmp_path, {"a": 1.0, "b": 1.0}, kill="a:5@1")
    assert code == 0, log
    results = read_results(str(tmp_path / "out"))
    assert list(results["status"]) == ["done", "done"]
    for clip_id in ("a", "b"):
        check_video(str(tmp_path / "out" / f"{clip_id}.mp4"), 1.0)
    [record] = [r for r in Ledger(str(tmp_path / "out")).segment_records("a") if r["start"] == 5]
    assert record["attempt"] == 2  # rendered by the replacement worker, once
    assert "Traceback" not in log and "ActorDiedError" not in log, log


@pytest.mark.slow
def test_a_segment_whose_worker_keeps_dying_fails_its_clip_only(tmp_path):
    code, log, _ = run_cli(tmp_path, {"good": 1.0, "bad": 1.0}, kill="bad:0")
    assert code == EXIT_ROWS_FAILED, log
    results = read_results(str(tmp_path / "out")).set_index("clip_id")
    assert results.loc["good", "status"] == "done"
    check_video(str(tmp_path / "out" / "good.mp4"), 1.0)
    assert results.loc["bad", "status"] == "failed"
    assert results.loc["bad", "error"] == (
        "row 1 (clip 'bad'): segment 0-7 failed 3 times: attempt 1: the render worker died; "
        "attempt 2: the render worker died; attempt 3: the render worker died")
    assert "Traceback" not in log and "ActorDiedError" not in log, log


@pytest.mark.slow
def test_workers_that_die_on_every_segment_end_the_job_in_bounded_time(tmp_path):
    code, log, seconds = run_cli(tmp_path, {"a": 1.0, "b": 1.0, "c": 1.0}, kill="*")
    assert code == EXIT_ROWS_FAILED, log
    results = read_results(str(tmp_path / "out"))
    assert list(results["status"]) == ["failed"] * 3
    for row in results.to_dict("records"):
        assert row["error"].startswith(f"row {row['row']} (clip {row['clip_id']!r}): "), row["error"]
    assert any(f"render workers died {RENDER_DEATHS_IN_A_ROW} times in a row" in error for error in results["error"])
    assert "Traceback" not in log and "ActorDiedError" not in log, log
    print(f"job ended after {seconds:.0f} s")
