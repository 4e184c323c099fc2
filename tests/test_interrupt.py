"""Results that remember (issue 12, fault 7): a rerun that skips finished clips keeps their timings, a subset
manifest does not drop the other clips, and an interrupted run (SIGTERM) writes its results and exits 143
with no stack dump, its committed clips kept."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
from conftest import image_bytes, wav_bytes, write_manifest

from pipeline.ledger import Ledger
from pipeline.results import RESULT_COLUMNS, read_results, write_results

REPO = Path(__file__).resolve().parent.parent


def result(clip_id: str, row: int, status: str, **values) -> dict:
    return dict(dict.fromkeys(RESULT_COLUMNS), clip_id=clip_id, row=row, status=status, fingerprint=f"fp-{clip_id}",
                **values)


def test_results_keep_earlier_clips_and_the_timings_of_skipped_ones(tmp_path):
    ledger = Ledger(str(tmp_path))
    write_results(ledger, [result("a", 0, "done", render_seconds=12.5, assemble_seconds=1.5),
                           result("b", 1, "done", render_seconds=7.0)])
    write_results(ledger, [result("a", 0, "skipped", render_seconds=0.0)])  # a subset manifest, a no-op rerun
    table = read_results(str(tmp_path)).set_index("clip_id")
    assert list(table.index) == ["a", "b"]
    assert table.loc["a", "status"] == "skipped" and table.loc["a", "render_seconds"] == 12.5
    assert table.loc["a", "assemble_seconds"] == 1.5 and table.loc["b", "render_seconds"] == 7.0
    write_results(ledger, [dict(result("a", 0, "skipped", render_seconds=0.0), fingerprint="edited")])
    assert read_results(str(tmp_path)).set_index("clip_id").loc["a", "render_seconds"] == 0.0  # another render


def test_sigterm_writes_results_and_exits_143(tmp_path):
    rows = []
    for index, clip_id in enumerate(("first", "second", "third")):
        (tmp_path / f"{clip_id}.png").write_bytes(image_bytes(index))
        (tmp_path / f"{clip_id}.wav").write_bytes(wav_bytes(2.0 + index, 200))
        rows.append(dict(clip_id=clip_id, image=f"{clip_id}.png", audio=f"{clip_id}.wav", pose=None))
    manifest, output = write_manifest(str(tmp_path), rows), tmp_path / "out"
    job = subprocess.Popen([sys.executable, str(REPO / "cli.py"), "run", manifest, "--output", str(output), "--gpus", "1",
                            "--cpus", "1", "--segment-frames", "16", "--overlap-frames", "4"],
                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=dict(os.environ, COLUMNS="200"))
    lines = []
    for line in job.stdout:  # wait for the first committed clip, then stop the job
        lines.append(line)
        if line.startswith("done"):
            break
    started = time.monotonic()
    job.send_signal(signal.SIGTERM)
    rest, _ = job.communicate(timeout=120)
    printed = "".join(lines) + rest
    assert job.returncode == 143, printed[-3000:]
    assert time.monotonic() - started < 60
    assert "Traceback" not in printed and "interrupted" in printed
    table = read_results(str(output)).set_index("clip_id")
    assert set(table.index) == {"first", "second", "third"}
    done = table[table["status"] == "done"]
    assert len(done) >= 1 and all((output / f"{clip_id}.mp4").is_file() for clip_id in done.index)
    stopped = table[table["status"] == "failed"]
    assert all("interrupted" in error for error in stopped["error"]), stopped["error"].to_dict()
    assert isinstance(table, pd.DataFrame)


def test_sigterm_while_ray_starts_writes_results_and_exits_143(tmp_path):
    """Issue 33 #8: SIGTERM while `ray.init` runs (Ray's own handler would exit 15 with nothing written)."""
    import psutil

    (tmp_path / "a.png").write_bytes(image_bytes(0))
    (tmp_path / "a.wav").write_bytes(wav_bytes(1.0))
    manifest, output = write_manifest(str(tmp_path), [dict(clip_id="a", image="a.png", audio="a.wav")]), tmp_path / "out"
    job = subprocess.Popen([sys.executable, str(REPO / "cli.py"), "run", manifest, "--output", str(output), "--gpus", "1"],
                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    driver = psutil.Process(job.pid)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:  # Ray's first process under the driver: ray.init is running
        if any("gcs_server" in _cmdline(child) for child in driver.children(recursive=True)):
            break
        time.sleep(0.05)
    else:
        raise AssertionError("Ray never started")
    job.send_signal(signal.SIGTERM)
    printed, _ = job.communicate(timeout=120)
    assert job.returncode == 143, printed[-3000:]
    assert "Traceback" not in printed and "interrupted" in printed
    [row] = read_results(str(output)).to_dict("records")
    assert row["status"] == "failed" and "interrupted (signal 15)" in row["error"]


def _cmdline(process) -> str:
    import psutil

    try:
        return " ".join(process.cmdline())
    except psutil.Error:  # gone meanwhile
        return ""


def test_a_killed_driver_leaves_no_ray_process_behind(tmp_path):  # ~30 s
    """Issue 33 (Also): a SIGKILLed driver's local Ray ends with it. Ray ties its own processes to the driver, but
    the raylet's two agents waited up to 60 s (reporting the raylet's death to a GCS that died too)."""
    import psutil

    (tmp_path / "a.png").write_bytes(image_bytes(0))
    (tmp_path / "a.wav").write_bytes(wav_bytes(2.0))
    manifest = write_manifest(str(tmp_path), [dict(clip_id="a", image="a.png", audio="a.wav")])
    job = subprocess.Popen([sys.executable, str(REPO / "cli.py"), "run", manifest, "--output", str(tmp_path / "out"),
                            "--gpus", "1"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                           start_new_session=True)
    for line in job.stdout:  # Ray is up
        if line.startswith("job:"):
            break
    ray_processes = psutil.Process(job.pid).children(recursive=True)
    [raylet] = [p for p in ray_processes if p.name() == "raylet"]
    agents = [p for p in raylet.children() if "agent" in " ".join([p.name(), *p.cmdline()]).lower()]
    assert len(agents) == 2, [p.cmdline()[:3] for p in raylet.children()]
    job.kill()
    job.wait()
    _, alive = psutil.wait_procs(ray_processes, timeout=15)
    assert not alive, [p.cmdline()[:3] for p in alive]
