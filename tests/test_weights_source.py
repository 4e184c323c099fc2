"""--weights from a URI: a real S3 server on loopback (moto) and an offline Hugging Face cache in
huggingface_hub's own layout, copied once per node into a cache keyed by ETags, the model identity unchanged."""
from __future__ import annotations

import hashlib
import subprocess
import sys
import time
from pathlib import Path

import fsspec
import pytest

from pipeline.render import model_identity
from pipeline.weights_source import CACHE_ENV, WeightsSourceError, local_weights

REPO = Path(__file__).resolve().parent.parent
# The files model_identity reads for the acc variant (official names), with small stand-in bytes.
FILES = ("reference_unet.pth", "denoising_unet_acc.pth", "motion_module_acc.pth", "pose_encoder.pth",
         "sd-vae-ft-mse/config.json", "sd-vae-ft-mse/diffusion_pytorch_model.safetensors", "audio_processor/tiny.pt")


def write_folder(root: Path, salt: str = "", repeat: int = 1000) -> Path:
    for index, name in enumerate(FILES):
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(f"{name}:{index}:{salt}".encode() * repeat)
    return root


def upload(folder: Path, uri: str) -> None:
    fs = fsspec.filesystem("s3")
    for name in FILES:
        fs.pipe_file(f"{uri.removeprefix('s3://').rstrip('/')}/{name}", (folder / name).read_bytes())


def test_s3_weights_copied_once_keyed_by_etag(s3_bucket, tmp_path):
    source = write_folder(tmp_path / "source")
    uri = f"{s3_bucket}/EchoMimicV2/"
    upload(source, uri)
    cache = tmp_path / "cache"

    copy = local_weights(uri, cache=cache)
    assert copy.parent == cache
    for name in FILES:
        assert (copy / name).read_bytes() == (source / name).read_bytes()
    # the same bytes: the fingerprints' model identity is the source folder's
    assert model_identity("acc", str(copy)) == model_identity("acc", str(source))
    # a second use reads the listing only: the very same files
    inode = (copy / FILES[0]).stat().st_ino
    assert local_weights(uri, cache=cache) == copy and (copy / FILES[0]).stat().st_ino == inode

    # changed bytes upstream: a new ETag, a new copy beside the old one, another identity
    write_folder(source, salt="v2")
    upload(source, uri)
    newer = local_weights(uri, cache=cache)
    assert newer != copy and (newer / FILES[1]).read_bytes() == (source / FILES[1]).read_bytes()
    assert model_identity("acc", str(newer)) == model_identity("acc", str(source)) != model_identity("acc", str(copy))
    assert not list(cache.glob("*.partial-*"))


def test_concurrent_workers_download_once(s3_bucket, tmp_path):
    """Four processes of one node ask at once: one downloads under the lock, the others wait and use its copy
    (two downloads would collide when renamed into place, failing a process)."""
    uri = f"{s3_bucket}/w"
    upload(write_folder(tmp_path / "source", repeat=100_000), uri)  # ~3 MB a file: the downloads overlap
    cache = tmp_path / "cache"
    start_at = time.time() + 4  # all four imported by then: they ask together
    code = ("import time; from pathlib import Path; from pipeline.weights_source import local_weights; "
            f"time.sleep(max(0, {start_at} - time.time())); print(local_weights({uri!r}, cache=Path({str(cache)!r})))")
    workers = [subprocess.Popen([sys.executable, "-c", code], cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                text=True) for _ in range(4)]
    outputs = [worker.communicate(timeout=120) for worker in workers]
    assert all(worker.returncode == 0 for worker in workers), [err[-2000:] for _, err in outputs]
    folders = {out.strip() for out, _ in outputs}
    assert len(folders) == 1
    assert [p.name for p in cache.iterdir() if p.is_dir()] == [Path(folders.pop()).name]


def test_weights_that_fail_the_check_are_refused(s3_bucket, tmp_path):
    uri = f"{s3_bucket}/broken"
    upload(write_folder(tmp_path / "source"), uri)
    with pytest.raises(WeightsSourceError, match="weights check failed: .*reference_unet.pth"):
        local_weights(uri, "acc", cache=tmp_path / "cache")


def test_missing_uri_is_a_clear_error(s3_bucket, tmp_path):
    with pytest.raises(WeightsSourceError, match="no files there"):
        local_weights(f"{s3_bucket}/nothing-here", cache=tmp_path / "cache")


def test_hugging_face_repo_from_an_offline_cache(tmp_path, monkeypatch):
    """huggingface_hub's real cache layout: blobs by hash, snapshots/<commit>/ linking to them, refs/main."""
    source = write_folder(tmp_path / "source")
    repo = tmp_path / "hub" / "models--BadToBest--EchoMimicV2"
    commit = hashlib.sha1(b"a commit").hexdigest()
    for name in FILES:
        data = (source / name).read_bytes()
        blob = repo / "blobs" / hashlib.sha256(data).hexdigest()
        blob.parent.mkdir(parents=True, exist_ok=True)
        blob.write_bytes(data)
        link = repo / "snapshots" / commit / name
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(Path("../" * (len(Path(name).parts) + 1)) / "blobs" / blob.name)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))

    folder = local_weights("hf://BadToBest/EchoMimicV2")
    assert folder == repo / "snapshots" / commit
    assert model_identity("acc", str(folder)) == model_identity("acc", str(source))
    assert local_weights(f"hf://BadToBest/EchoMimicV2@{commit}") == folder
    with pytest.raises(WeightsSourceError, match="pre-filled Hugging Face cache"):
        local_weights("hf://BadToBest/NotCached")


def test_weights_check_reads_a_uri(s3_bucket, tmp_path, monkeypatch):
    """`cli.py weights check s3://…`: the node's copy is checked (stand-in bytes: every file refused, by name)."""
    from typer.testing import CliRunner

    from cli import app

    uri = f"{s3_bucket}/check"
    upload(write_folder(tmp_path / "source"), uri)
    monkeypatch.setenv(CACHE_ENV, str(tmp_path / "cache"))
    done = CliRunner().invoke(app, ["weights", "check", uri, "--variant", "acc"])
    assert done.exit_code == 1, done.output
    assert "reference_unet.pth" in done.output and "0 of" in done.output
    assert [p.name for p in (tmp_path / "cache").iterdir() if p.is_dir()]  # the copy it checked
