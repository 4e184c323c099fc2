"""Issue 12, the faults that the commands must refuse up front (no Ray started, no GPU time) or report
with the right exit code: plan on a manifest missing a column, status on a root that is not there, run
with an output root or option path the workers could not use."""
from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
from conftest import image_bytes, wav_bytes, write_manifest

from pipeline import storage
from pipeline.commands import EXIT_JOB_FAILED, EXIT_OK, EXIT_PROBLEMS, plan_command, run_command, status_command, validate_command
from pipeline.ledger import Ledger
from pipeline.manifest import ClipSpec, process_local_problems


@pytest.fixture
def manifest(tmp_path) -> str:
    storage.write_atomic(f"{tmp_path}/a.png", image_bytes(0))
    storage.write_atomic(f"{tmp_path}/a.wav", wav_bytes(1.0))
    return write_manifest(str(tmp_path), [dict(clip_id="a", image="a.png", audio="a.wav")])


def test_plan_exits_2_naming_a_missing_column(tmp_path, capsys):
    no_audio = tmp_path / "no_audio.parquet"
    pd.DataFrame([dict(clip_id="a", image="a.png")]).to_parquet(no_audio)
    assert plan_command(str(no_audio)) == EXIT_JOB_FAILED
    assert "error: manifest: column 'audio': required column is missing" in capsys.readouterr().out


def test_plan_still_plans_a_good_manifest(manifest, capsys):
    assert plan_command(manifest) == EXIT_OK
    assert "total: 1 row(s)" in capsys.readouterr().out


def test_status_exits_2_on_a_root_that_does_not_exist_or_holds_no_job(tmp_path, capsys):
    assert status_command(str(tmp_path / "typo")) == EXIT_JOB_FAILED
    assert f"error: output root {tmp_path / 'typo'} does not exist" in capsys.readouterr().out
    assert status_command(str(tmp_path)) == EXIT_JOB_FAILED
    assert "is not the output root of a job (no _ledger/ in it)" in capsys.readouterr().out
    assert status_command(f"{tmp_path}/link::x") == EXIT_JOB_FAILED
    assert "'::'" in capsys.readouterr().out


def test_status_of_a_started_job_exits_0(tmp_path, capsys):
    from pipeline.ledger import Ledger

    Ledger(str(tmp_path)).record_job("start")
    assert status_command(str(tmp_path)) == EXIT_OK
    assert "0 finished clip(s) in the ledger" in capsys.readouterr().out


@pytest.mark.parametrize(("output", "reason"), [
    ("memory://renders", "exists only inside one process"),  # issue 12 #6: every row failed at assembly
    ("simplecache::s3://bucket/renders", "'::'"),
    ("s3://KEY:SECRET-VALUE@bucket/renders", "credentials in a URL are refused"),
    ("s3://bucket/a/../renders", "'..' segments are refused"),
    ("https://example.com/renders", "cannot be an output root"),
])
def test_run_refuses_an_output_root_before_ray_starts(manifest, output, reason, capsys):
    import ray

    assert run_command(manifest, output) == EXIT_JOB_FAILED
    text = capsys.readouterr().out
    assert "error: --output: " in text and reason in text and "SECRET-VALUE" not in text
    assert not ray.is_initialized()


def test_run_refuses_chained_option_paths(manifest, tmp_path, capsys):
    import ray

    assert run_command(manifest, str(tmp_path / "out"), weights=tmp_path / "w::x", preset="acc") == EXIT_JOB_FAILED
    assert "error: --weights: " in capsys.readouterr().out
    assert run_command(manifest, str(tmp_path / "out"), input_root=tmp_path / "in::x") == EXIT_JOB_FAILED
    assert "error: --input-root: " in capsys.readouterr().out
    assert validate_command(manifest, input_root=tmp_path / "in::x") == EXIT_PROBLEMS
    assert not ray.is_initialized()


def test_process_local_inputs_are_row_problems_for_a_job():
    specs = [ClipSpec(0, "ok", "/i.png", "s3://b/a.wav"), ClipSpec(1, "mem", "/i.png", "memory://x/a.wav"),
             ClipSpec(2, "pose", "/i.png", "/a.wav", pose="memory://x/p.npz")]
    assert [str(p) for p in process_local_problems(specs)] == [
        "row 1 (clip 'mem'): audio: memory://x/a.wav: memory:// exists only inside one process, and the job "
        "reads and writes in Ray worker processes; use a local path or an object store (s3://, gs://, az://)",
        "row 2 (clip 'pose'): pose: memory://x/p.npz: memory:// exists only inside one process, and the job "
        "reads and writes in Ray worker processes; use a local path or an object store (s3://, gs://, az://)"]


def _short_ray_tmpdir(monkeypatch) -> Path:
    """A Ray folder of this test's own (RAY_TMPDIR), short enough for Ray's socket paths."""
    import tempfile

    folder = Path(tempfile.mkdtemp(prefix="rt", dir="/tmp"))
    monkeypatch.setenv("RAY_TMPDIR", str(folder))
    return folder


def test_a_local_run_starts_its_own_ray_despite_a_stale_cluster_file(monkeypatch):
    """Issue 33 #9: an earlier `ray start --head` leaves <ray temp>/ray_current_cluster; a run without --address
    must not try to join it (Ray then refuses num_cpus / num_gpus)."""
    import ray

    from pipeline.commands import _start_ray

    ray_dir = _short_ray_tmpdir(monkeypatch) / "ray"
    ray_dir.mkdir()
    (ray_dir / "ray_current_cluster").write_text("127.0.0.1:6399")  # nothing listens there
    try:
        assert _start_ray(None, 1)
        assert ray.cluster_resources().get("GPU") == 1
    finally:
        ray.shutdown()


def test_a_ray_start_that_times_out_is_tried_once_more(monkeypatch, capsys):
    """Issue 33 #11: on a loaded machine Ray's start can time out; the second try starts it."""
    import ray

    from pipeline import commands

    _short_ray_tmpdir(monkeypatch)
    starts = []
    real_init = commands._init_ray

    def init_that_times_out_first(address, gpus):
        starts.append(address)
        if len(starts) == 1:  # Ray's own words for it (ray/_private/node.py)
            raise Exception("The current node timed out during startup. This could happen because some of the "
                            "raylet failed to startup or the GCS has become overloaded.")
        real_init(address, gpus)

    monkeypatch.setattr(commands, "_init_ray", init_that_times_out_first)
    try:
        assert commands._start_ray(None, 1)
        assert ray.is_initialized() and len(starts) == 2
        assert "Ray start timed out" in capsys.readouterr().out
    finally:
        ray.shutdown()
    from pipeline.job import JobError

    starts.clear()

    def init_that_fails(address, gpus):
        starts.append(address)
        raise ValueError("bad option")

    monkeypatch.setattr(commands, "_init_ray", init_that_fails)
    with pytest.raises(JobError, match="cannot start or reach Ray: ValueError: bad option"):
        commands._start_ray(None, 1)
    assert len(starts) == 1  # not a timeout: no second try


@pytest.fixture
def small_volume(tmp_path):
    """A real filesystem of `size` bytes (a tmpfs: needs root and mount, as in CI's container)."""
    import subprocess

    mounted = []

    def mount(size: str) -> Path:
        folder = tmp_path / f"volume{len(mounted)}"
        folder.mkdir()
        done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(folder)], capture_output=True)
        if done.returncode:
            pytest.skip(f"cannot mount a tmpfs here: {done.stderr.decode(errors='replace').strip()}")
        mounted.append(folder)
        return folder

    yield mount
    for folder in mounted:
        subprocess.run(["umount", "-l", str(folder)], check=False)


def test_out_of_space_in_preprocessing_fails_the_row_with_its_cause(tmp_path, small_volume):
    """Issue 33 #7: ENOSPC while preprocessing stores the clip's audio copy is the row's failure, named, not
    'preprocessing worker died repeatedly' with Ray tracebacks; results are still written (they fit)."""
    import subprocess
    import sys

    from pipeline.commands import EXIT_ROWS_FAILED
    from pipeline.results import read_results

    storage.write_atomic(f"{tmp_path}/a.png", image_bytes(0))
    storage.write_atomic(f"{tmp_path}/a.wav", wav_bytes(4.0))  # 128 kB: more than the volume holds
    manifest = write_manifest(str(tmp_path), [dict(clip_id="a", image="a.png", audio="a.wav")])
    output = small_volume("64k")
    repo = Path(__file__).resolve().parent.parent
    done = subprocess.run([sys.executable, str(repo / "cli.py"), "run", manifest, "--output", str(output), "--gpus", "1"],
                          cwd=repo, capture_output=True, text=True, timeout=300)
    log = done.stdout + done.stderr
    assert done.returncode == EXIT_ROWS_FAILED, log
    [row] = read_results(str(output)).to_dict("records")
    assert row["error"].startswith("row 0 (clip 'a'): preprocessing: OSError: [Errno 28] No space left on device"), row
    assert "worker died" not in log and "Traceback" not in log, log



def _run_on_small_volume(tmp_path, output: Path, clips: int, *options: str):
    import subprocess
    import sys

    from pipeline.results import read_results

    rows = []
    for index in range(clips):
        storage.write_atomic(f"{tmp_path}/c{index}.png", image_bytes(index))
        storage.write_atomic(f"{tmp_path}/c{index}.wav", wav_bytes(2.0, pitch=200.0 + 40 * index))  # 24 frames at 12 fps
        rows.append(dict(clip_id=f"c{index}", image=f"c{index}.png", audio=f"c{index}.wav"))
    manifest = write_manifest(str(tmp_path), rows)
    repo = Path(__file__).resolve().parent.parent
    # One 24-frame segment per clip at 128² (the demo model): 1.2 MB of frames until its MP4 is committed. Two render workers
    # render two clips at once, so without admission both write their frames into the volume together.
    done = subprocess.run([sys.executable, str(repo / "cli.py"), "run", manifest, "--output", str(output), "--gpus", "2",
                           *options], cwd=repo, capture_output=True, text=True, timeout=400)
    return done, read_results(str(output)).to_dict("records")


def test_a_volume_that_holds_one_clip_s_segments_finishes_every_clip(tmp_path, small_volume):  # ~45 s
    """Issue 33 #12: on a volume where two clips' segments do not fit at once (each alone does), clips are
    admitted to rendering one at a time (the default budget: 80% of the free space) and every clip is done;
    without admission two clips render at once, their frames fill the volume, and they fail with ENOSPC."""
    output = small_volume("2m")
    done, results = _run_on_small_volume(tmp_path, output, 2)
    assert done.returncode == EXIT_OK, done.stdout + done.stderr
    assert [row["status"] for row in results] == ["done"] * 2, results
    assert not list((output / "_segments").rglob("*.npy"))  # every clip's segments freed
    # The second clip started rendering only once the first was committed (its segments freed); without
    # admission both render at once, whether or not a retry later finds room.
    ledger = Ledger(str(output))
    started = {r["clip_id"]: r["time"] - r["seconds"] for r in ledger.segment_records()}
    committed = {r["clip_id"]: r["time"] for r in ledger.clip_records()}
    first, second = sorted(started, key=started.get)
    assert started[second] >= committed[first], (started, committed)
