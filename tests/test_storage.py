"""pipeline.storage: scheme allow-list, input root confinement, bounded reads and listings, atomic writes,
retries, redaction; round trips on a real S3 API server (moto, loopback)."""
import os
import threading
from pathlib import Path

import pytest
from conftest import S3_SECRET

from pipeline import storage
from pipeline.storage import InputError


def test_check_uri_scheme_allow_list(tmp_path):
    assert storage.check_uri(str(tmp_path / "a.wav")) == str((tmp_path / "a.wav").resolve())
    assert storage.check_uri(f"file://{tmp_path}/a.wav") == str(tmp_path / "a.wav")
    for uri in ("s3://b/k", "gs://b/k", "az://c/k", "memory://x/y"):
        assert storage.check_uri(uri) == uri
    for uri in ("ftp://host/x", "hdfs://n/x", "sftp://h/x", "zip://a::file://b"):
        with pytest.raises(InputError, match="scheme"):
            storage.check_uri(uri)
    with pytest.raises(InputError, match="allow-http"):
        storage.check_uri("https://example.com/a.wav")
    assert storage.check_uri("https://example.com/a.wav", allow_http=True) == "https://example.com/a.wav"
    with pytest.raises(InputError, match="NUL"):
        storage.check_uri("a\0b")
    with pytest.raises(InputError, match="empty"):
        storage.check_uri("  ")


def test_input_root_confines_local_paths_and_symlinks(tmp_path):
    root = tmp_path / "inputs"
    root.mkdir()
    (root / "ok.png").write_bytes(b"x")
    outside = tmp_path / "secret.txt"
    outside.write_text("private")
    (root / "link.png").symlink_to(outside)
    (root / "dirlink").symlink_to(tmp_path)

    assert storage.check_uri(str(root / "ok.png"), input_root=root) == str(root / "ok.png")
    for escaping in (root / "link.png", root / "dirlink" / "secret.txt", root / ".." / "secret.txt", outside):
        with pytest.raises(InputError, match="outside the input root"):
            storage.check_uri(str(escaping), input_root=root)
    assert storage.check_uri("s3://b/k", input_root=root) == "s3://b/k"  # the root confines local paths only


def test_read_bytes_refuses_over_size_before_reading(tmp_path, monkeypatch):
    big = tmp_path / "big.bin"
    big.write_bytes(b"\0" * 1000)
    assert storage.read_bytes(str(big), max_bytes=1000) == b"\0" * 1000
    fs, _ = storage.url_to_fs(str(big))
    monkeypatch.setattr(type(fs), "cat_file", lambda *a, **k: pytest.fail("read despite the size limit"))
    with pytest.raises(InputError, match="1000 bytes, over the limit of 999"):
        storage.read_bytes(str(big), max_bytes=999)


def test_list_files_is_bounded(tmp_path):
    for i in range(5):
        (tmp_path / f"{i}.npy").write_bytes(b"")
    (tmp_path / "sub").mkdir()
    assert [Path(p).name for p in storage.list_files(str(tmp_path), max_entries=6)] == [f"{i}.npy" for i in range(5)]
    with pytest.raises(InputError, match="more than 5 entries"):
        storage.list_files(str(tmp_path), max_entries=5)
    with pytest.raises(FileNotFoundError):
        storage.list_files(str(tmp_path / "missing"), max_entries=5)


def test_join_refuses_unsafe_parts():
    assert storage.join("s3://b/out/", "_segments", "clip") == "s3://b/out/_segments/clip"
    assert storage.join("/out", "a.mp4") == "/out/a.mp4"
    for part in ("..", "../x", "/abs", "a//b", ".", "x\0y", ""):
        with pytest.raises(ValueError):
            storage.join("/out", part)


def test_atomic_write_never_shows_a_partial_file(tmp_path):
    target = tmp_path / "out" / "clip.mp4"
    payload = os.urandom(1 << 20)
    seen_sizes = set()
    done = threading.Event()

    def watch():
        while not done.is_set():
            if target.exists():
                seen_sizes.add(target.stat().st_size)

    watcher = threading.Thread(target=watch)
    watcher.start()
    for _ in range(20):
        storage.write_atomic(str(target), payload)
    done.set()
    watcher.join()
    assert seen_sizes <= {len(payload)}
    assert target.read_bytes() == payload

    source = tmp_path / "encoded.mp4"
    source.write_bytes(b"from a local file")
    storage.write_atomic(str(target), source)
    assert target.read_bytes() == b"from a local file"
    assert sorted(p.name for p in target.parent.iterdir()) == ["clip.mp4"]  # no temporaries left behind


def test_atomic_write_failure_leaves_nothing(tmp_path):
    target = tmp_path / "clip.mp4"
    with pytest.raises(FileNotFoundError):
        storage.write_atomic(str(target), tmp_path / "does-not-exist.mp4")
    assert list(tmp_path.iterdir()) == []


def test_with_retries_retries_transient_errors_only(monkeypatch):
    monkeypatch.setattr(storage, "RETRY_BASE_DELAY_S", 0.0)
    calls = []

    def flaky():
        calls.append(1)
        if len(calls) < 3:
            raise ConnectionResetError("connection reset by peer")
        return "ok"

    assert storage.with_retries(flaky) == "ok" and len(calls) == 3

    calls.clear()

    def missing():
        calls.append(1)
        raise FileNotFoundError("nope")

    with pytest.raises(FileNotFoundError):
        storage.with_retries(missing)
    assert len(calls) == 1

    class SlowDown(Exception):
        response = {"Error": {"Code": "SlowDown"}, "ResponseMetadata": {"HTTPStatusCode": 503}}

    calls.clear()

    def throttled():
        calls.append(1)
        raise OSError("wrapped") from SlowDown()

    with pytest.raises(OSError):
        storage.with_retries(throttled, attempts=4)
    assert len(calls) == 4


def test_redact_masks_env_secrets_and_url_credentials(monkeypatch):
    monkeypatch.setenv("MY_SERVICE_TOKEN", "tok-123456")
    text = "failed: tok-123456 at https://user:hunter22@host/x?X-Amz-Signature=abcdef&k=1 AccountKey=zzz;"
    cleaned = storage.redact(text)
    for secret in ("tok-123456", "hunter22", "abcdef", "zzz"):
        assert secret not in cleaned
    assert "k=1" in cleaned and "host/x" in cleaned


def test_s3_round_trip(s3_bucket):
    root = f"{s3_bucket}/out"
    storage.write_atomic(storage.join(root, "a.bin"), b"alpha")
    storage.write_atomic(storage.join(root, "b.bin"), b"beta")
    assert storage.exists(f"{root}/a.bin") and not storage.exists(f"{root}/c.bin")
    assert storage.size(f"{root}/b.bin") == 4
    assert storage.read_bytes(f"{root}/a.bin", max_bytes=10) == b"alpha"
    with pytest.raises(InputError, match="over the limit"):
        storage.read_bytes(f"{root}/a.bin", max_bytes=4)
    with storage.open_input(f"{root}/b.bin") as f:
        assert f.read(2) == b"be"
    assert storage.list_files(root, max_entries=2) == [f"{root}/a.bin", f"{root}/b.bin"]
    with pytest.raises(InputError, match="more than 1 entries"):
        storage.list_files(root, max_entries=1)
    assert storage.list_files(root, max_entries=2) == [f"{root}/a.bin", f"{root}/b.bin"]  # no stale cache
    storage.delete(f"{root}/a.bin")
    assert not storage.exists(f"{root}/a.bin")
    with pytest.raises(FileNotFoundError):
        storage.read_bytes(f"{root}/a.bin", max_bytes=10)


def test_s3_errors_never_show_the_secret(s3_bucket):
    uri = f"{s3_bucket}/{S3_SECRET}/missing.wav"
    try:
        storage.read_bytes(uri, max_bytes=10)
    except FileNotFoundError as exc:
        message = storage.describe_error(exc)
    assert S3_SECRET not in message and "missing.wav" in message


def test_local_atomic_write_gets_the_usual_file_mode(tmp_path):
    mask = os.umask(0)
    os.umask(mask)
    target = tmp_path / "clip.mp4"
    storage.write_atomic(str(target), b"data")
    assert target.stat().st_mode & 0o777 == 0o666 & ~mask
