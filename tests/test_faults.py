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
