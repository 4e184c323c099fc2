"""Issue 7 end to end: a manifest full of hostile rows goes through the real commands (`cli.py run` and
`cli.py validate` as subprocesses) against the loopback S3 server, with the storage secret in the
environment. One job run is shared by every assertion about it.

Covered by the unit tests, not repeated here:
- `weights check` on a folder whose pose_encoder.pth pickle would create a marker:
  tests/test_checkpoints.py::test_pickle_that_runs_code_is_refused_and_never_runs (the CLI as a subprocess).
- Over-limit inputs are refused before any decoder runs (decoders patched to fail the test):
  tests/test_media.py::test_image_refusals, tests/test_manifest.py::test_pose_folder_refused_by_count_without_reading;
  the hours-long sparse WAV by header: tests/test_manifest.py::test_wav_declaring_hours_is_refused_by_header.
  Here the job's per-row reasons show the same header checks refused them (not a decoder, nor a byte limit).
"""
from __future__ import annotations

import io
import os
import struct
import subprocess
import sys
import uuid
from dataclasses import dataclass
from pathlib import Path

import fsspec
import numpy as np
import pytest
from conftest import FPS, S3_SECRET, check_video, image_bytes, png_declaring, wav_bytes, write_manifest

from echomimic2.pose import default_pose_sequence
from pipeline import storage
from pipeline.commands import EXIT_PROBLEMS, EXIT_ROWS_FAILED
from pipeline.results import read_results

REPO = Path(__file__).resolve().parent.parent
RAY_TEMP_DIR = Path("/tmp/ray")  # where `cli.py run` starts its local Ray (pipeline/commands.py)
GOOD_SECONDS = 1.5
LONG_WAV_SECONDS = 7200  # declared by the header of a sparse file: 8 kHz, 8-bit mono, 57.6 MB


class MarkerPayload:
    """Pickles to a call that creates ``path``: any reader that executes the pickle leaves the marker."""

    def __init__(self, path: Path):
        self.path = str(path)

    def __reduce__(self):
        return (open, (self.path, "w"))


def npy_bytes(value) -> bytes:
    """The official per-frame pose format: a pickled object array saved with np.save."""
    buffer = io.BytesIO()
    np.save(buffer, np.array(value, dtype=object), allow_pickle=True)
    return buffer.getvalue()


def write_sparse_wav(path: Path, seconds: int, sample_rate: int = 8000) -> None:
    """A PCM WAV whose header and size both say ``seconds`` long; the samples are a hole (no disk used)."""
    n = sample_rate * seconds
    header = (b"RIFF" + struct.pack("<I", 36 + n) + b"WAVE" + b"fmt "
              + struct.pack("<IHHIIHH", 16, 1, 1, sample_rate, sample_rate, 1, 8) + b"data" + struct.pack("<I", n))
    with open(path, "wb") as f:
        f.write(header)
        f.truncate(len(header) + n)


def tree(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*")}


def bucket_keys(bucket: str) -> set[str]:
    fs = fsspec.filesystem("s3")
    fs.invalidate_cache()
    return set(fs.find(bucket.removeprefix("s3://")))


def session_dir_of(pid: int) -> Path:
    """Ray names the session a driver starts after the driver's pid: session_<date>_<pid>."""
    (found,) = RAY_TEMP_DIR.glob(f"session_*_{pid}")
    return found


@dataclass
class HostileJob:
    rows: list[dict]
    bucket: str
    output: str
    local: Path  # local inputs; input_root is local / "root"
    marker: Path
    manifest: str
    run: Finished
    bucket_before: set[str]
    bucket_after: set[str]
    local_before: set[str]
    local_after: set[str]
    ray_session: Path


@dataclass
class Finished:
    pid: int
    returncode: int
    stdout: str
    stderr: str


def cli(*args: str, cwd: Path, env: dict | None = None, timeout: float = 300) -> Finished:
    """``cli.py ARGS`` in a fresh process (its own Ray, its own logs); the pid names its Ray session."""
    with subprocess.Popen([sys.executable, str(REPO / "cli.py"), *args], cwd=cwd, env=env, stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, text=True, errors="replace") as process:
        stdout, stderr = process.communicate(timeout=timeout)
    return Finished(process.pid, process.returncode, stdout, stderr)


@pytest.fixture(scope="module")
def hostile_job(s3_endpoint, tmp_path_factory) -> HostileJob:
    """`cli.py run` once on an S3 manifest of one good row and many hostile ones, some inputs local
    under --input-root; the bucket and the local tree are listed before and after."""
    fs = fsspec.filesystem("s3")
    bucket_name = f"untrusted-{uuid.uuid4().hex[:12]}"
    fs.mkdir(bucket_name)
    bucket = f"s3://{bucket_name}"
    local = tmp_path_factory.mktemp("untrusted")
    root, outside, workdir, tmpdir = (local / name for name in ("root", "outside", "cwd", "tmp"))
    for folder in (root, outside, workdir, tmpdir):
        folder.mkdir()
    marker = local / "pickle-executed"

    inputs = f"{bucket}/in"
    storage.write_atomic(f"{inputs}/good.png", image_bytes(0))
    storage.write_atomic(f"{inputs}/good.wav", wav_bytes(GOOD_SECONDS))
    storage.write_atomic(f"{inputs}/bomb.png", png_declaring(100_000, 100_000))
    (pose,) = default_pose_sequence(1, FPS)
    storage.write_atomic(f"{inputs}/hostile_pose/0.npy", npy_bytes(pose))
    storage.write_atomic(f"{inputs}/hostile_pose/1.npy", npy_bytes({**pose, "hands": MarkerPayload(marker)}))
    write_sparse_wav(root / "long.wav", LONG_WAV_SECONDS)
    (outside / "face.png").write_bytes(image_bytes(1))
    (root / "face.png").symlink_to(outside / "face.png")  # inside the root by name, outside by target
    (root / "link").symlink_to(outside / "face.png")  # `link::x` is no file, but fsspec would open `link`

    good = dict(image="good.png", audio="good.wav")
    rows = [
        dict(clip_id="good", **good),
        dict(clip_id="hostile_pose", **good, pose="hostile_pose"),
        dict(clip_id="bomb", image="bomb.png", audio="good.wav"),
        dict(clip_id="long_audio", image="good.png", audio=str(root / "long.wav")),
        dict(clip_id="../x", **good),
        dict(clip_id="/abs", **good),
        dict(clip_id="a/b", **good),
        dict(clip_id="x\0y", **good),
        dict(clip_id="c" * 300, **good),
        dict(clip_id="[/red]", **good),  # console markup: the job's log must print it, not parse it
        dict(clip_id="escape", image=str(root / "face.png"), audio="good.wav"),
        # The secret in a row (a URL password, a key name) must be masked in every message about it.
        dict(clip_id="secret_in_url", image="good.png", audio=f"s3://user:{S3_SECRET}@{bucket_name}/in/good.wav"),
        dict(clip_id="secret_in_key", image=f"{S3_SECRET}.png", audio="good.wav"),
        dict(clip_id="chained_escape", image=f"{root}/link::x", audio="good.wav"),
        dict(clip_id="process_local", image="good.png", audio="memory://in/good.wav"),
        dict(clip_id="dot_segments", image=f"{inputs}/../in/good.png", audio="good.wav"),
    ]
    manifest = write_manifest(inputs, rows)
    output = f"{bucket}/out"

    bucket_before, local_before = bucket_keys(bucket), tree(local)
    assert not Path("/abs").exists()
    env = {**os.environ, "TMPDIR": str(tmpdir)}
    run = cli("run", manifest, "--output", output, "--gpus", "2", "--cpus", "1", "--segment-frames", "16",
              "--overlap-frames", "4", "--input-root", str(root), cwd=workdir, env=env)
    yield HostileJob(rows=rows, bucket=bucket, output=output, local=local, marker=marker, manifest=manifest, run=run,
                     bucket_before=bucket_before, bucket_after=bucket_keys(bucket), local_before=local_before,
                     local_after=tree(local), ray_session=session_dir_of(run.pid))
    fs.rm(bucket_name, recursive=True)


# Row -> (field, the problem) for every row that must fail; each error is "row N (clip ID): FIELD: PROBLEM".
EXPECTED_FAILURES = {
    1: ("pose", "1.npy: refused pickled global io.open"),
    # From the header checks (check_clip_inputs), before any decoder: a decoder's message starts with the file name.
    2: ("image", "image is over the limit of 40000000 pixels (decompression bomb guard)"),
    3: ("audio", f"audio is {LONG_WAV_SECONDS:.1f} s long, over the limit of 600 s"),
    4: ("clip_id", "may contain only A-Z a-z 0-9 . _ - (found '/')"),
    5: ("clip_id", "may contain only A-Z a-z 0-9 . _ - (found '/')"),
    6: ("clip_id", "may contain only A-Z a-z 0-9 . _ - (found '/')"),
    7: ("clip_id", "may contain only A-Z a-z 0-9 . _ - (found '\\x00')"),
    8: ("clip_id", "must be 1..128 characters, got 300"),
    9: ("clip_id", "may contain only A-Z a-z 0-9 . _ - (found '/', '[', ']')"),
    10: ("image", "outside the input root"),
    11: ("audio", "credentials in a URL are refused"),  # before any request, the URL shown as s3://***@…
    12: ("image", "not found: s3://"),
    13: ("image", "'::' (fsspec's URL chaining"),
    14: ("audio", "memory:// exists only inside one process"),
    15: ("image", "'.' and '..' segments are refused in s3:// URLs"),
}


def test_the_pose_payload_really_runs_when_unpickled(tmp_path):
    """Proof that the marker test can fail: the official reader (np.load with pickles) executes it."""
    marker = tmp_path / "executed"
    np.load(io.BytesIO(npy_bytes({"hands": MarkerPayload(marker)})), allow_pickle=True)
    assert marker.exists()


def test_run_renders_the_good_row_and_exits_3(hostile_job):
    assert hostile_job.run.returncode == EXIT_ROWS_FAILED, hostile_job.run.stdout + hostile_job.run.stderr
    results = read_results(hostile_job.output)
    assert list(results["row"]) == list(range(len(hostile_job.rows)))
    good = results.iloc[0]
    assert (good["clip_id"], good["status"], good["output"]) == ("good", "done", f"{hostile_job.output}/good.mp4")
    check_video(good["output"], GOOD_SECONDS)


def test_every_hostile_row_fails_naming_row_field_and_problem(hostile_job):
    results = read_results(hostile_job.output)
    assert set(results.loc[results["status"] == "failed", "row"]) == set(EXPECTED_FAILURES)
    for row, (field, problem) in EXPECTED_FAILURES.items():
        error = results.loc[row, "error"]
        assert error.startswith(f"row {row} (clip {hostile_job.rows[row]['clip_id']!r}): {field}: "), error
        assert problem in error, error
        assert "\n" not in error
        assert f"failed {error}" in hostile_job.run.stdout  # the job's log says the same, markup and all
    assert not hostile_job.marker.exists()


def test_nothing_is_written_outside_the_output_root(hostile_job):
    output_prefix = hostile_job.output.removeprefix("s3://") + "/"
    new_objects = hostile_job.bucket_after - hostile_job.bucket_before
    assert new_objects and all(key.startswith(output_prefix) for key in new_objects), sorted(new_objects)
    assert hostile_job.bucket_after >= hostile_job.bucket_before  # no input was touched
    # Locally only scratch space changed, and nothing was left in it (the job's cwd is part of the tree).
    new_local = hostile_job.local_after ^ hostile_job.local_before
    assert all(path.startswith("tmp/") and (hostile_job.local / path).is_dir() for path in new_local), new_local
    assert not Path("/abs").exists()


def test_the_secret_appears_in_no_log_result_or_ledger(hostile_job):
    secret = S3_SECRET.encode()
    assert S3_SECRET not in hostile_job.run.stdout + hostile_job.run.stderr
    assert "***" in hostile_job.run.stdout  # the rows that carry it were reported, masked
    fs = fsspec.filesystem("s3")
    output_objects = fs.find(hostile_job.output.removeprefix("s3://"))
    assert any(key.endswith("/results.parquet") for key in output_objects)
    assert any("/_ledger/" in key for key in output_objects)
    leaks = [key for key in output_objects if secret in fs.cat_file(key)]
    assert not leaks, leaks
    ray_files = [p for p in hostile_job.ray_session.rglob("*") if p.is_file() and not p.is_symlink()]
    assert any(p.parent.name == "logs" for p in ray_files)
    leaks = [str(p) for p in ray_files if secret in p.read_bytes()]
    assert not leaks, leaks


def test_status_lists_the_failures_of_the_hostile_run(hostile_job):
    status = cli("status", hostile_job.output, cwd=hostile_job.local)
    assert status.returncode == 0, status.stdout + status.stderr
    assert f"{len(hostile_job.rows)} row(s): 1 done, 0 skipped, {len(EXPECTED_FAILURES)} failed" in status.stdout
    assert "row 9 (clip '[/red]'): clip_id: " in status.stdout
    assert S3_SECRET not in status.stdout + status.stderr


def test_validate_prints_one_line_per_problem_and_exits_1(hostile_job):
    validate = cli("validate", hostile_job.manifest, "--input-root", str(hostile_job.local / "root"),
                   cwd=hostile_job.local)
    assert validate.returncode == EXIT_PROBLEMS, validate.stdout + validate.stderr
    *problems, summary = validate.stdout.splitlines()
    assert len(problems) == len(EXPECTED_FAILURES), problems
    for line, (row, (field, problem)) in zip(problems, EXPECTED_FAILURES.items()):
        assert line.startswith(f"row {row} (clip {hostile_job.rows[row]['clip_id']!r}): {field}: ") and problem in line, line
    assert summary == f"1 row(s) OK, {len(EXPECTED_FAILURES)} with problems ({len(EXPECTED_FAILURES)} problem(s))"
    assert S3_SECRET not in validate.stdout + validate.stderr
    assert not hostile_job.marker.exists()


def test_input_root_refuses_a_symlink_out_of_a_local_manifest_folder(tmp_path):
    """A local manifest with relative paths: a link in the input folder may not point out of --input-root."""
    root = tmp_path / "inputs"
    root.mkdir()
    (tmp_path / "private.png").write_bytes(image_bytes(2))
    (root / "face.png").write_bytes(image_bytes(0))
    (root / "voice.wav").write_bytes(wav_bytes(0.5))
    (root / "link.png").symlink_to(tmp_path / "private.png")
    manifest = write_manifest(str(root), [dict(clip_id="inside", image="face.png", audio="voice.wav"),
                                          dict(clip_id="link", image="link.png", audio="voice.wav")])
    validate = cli("validate", manifest, "--input-root", str(root), cwd=tmp_path)
    assert validate.returncode == EXIT_PROBLEMS
    assert validate.stdout.splitlines() == [
        f"row 1 (clip 'link'): image: {root / 'link.png'} resolves to {tmp_path / 'private.png'}, "
        f"outside the input root {root}",
        "1 row(s) OK, 1 with problems (1 problem(s))"]
    assert cli("validate", manifest, cwd=tmp_path).returncode == 0  # without a root, links are followed
