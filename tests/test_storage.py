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
    # Issue 12 #3: botocore quotes the bucket part of s3://KEY:SECRET@bucket/... without the scheme.
    quoted = storage.redact('Invalid bucket name "AKIAKEY:hunter22@bucket": Bucket name must match')
    assert quoted == 'Invalid bucket name "***@bucket": Bucket name must match'
    assert storage.redact("row 1 (clip 'a'): audio: mailbox@host") == "row 1 (clip 'a'): audio: mailbox@host"


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


def test_chained_path_cannot_escape_the_input_root(tmp_path):
    """Issue 12 #1: `ROOT/link::x`, `link` a symlink out of the root. Checked as a whole, the component
    `link::x` does not exist (no symlink to resolve), while fsspec opens `ROOT/link`: refused up front."""
    import fsspec

    root = tmp_path / "root"
    root.mkdir()
    (tmp_path / "private.png").write_bytes(b"outside the root")
    (root / "link").symlink_to(tmp_path / "private.png")
    chained = f"{root}/link::x"
    with fsspec.open(chained, "rb") as f:  # the hole: fsspec follows the chain to the file outside
        assert f.read() == b"outside the root"
    with pytest.raises(InputError, match="'::'"):
        storage.check_uri(chained, input_root=root)
    with pytest.raises(InputError, match="'::'"):  # and nothing in storage opens it, checked or not
        storage.read_bytes(chained, max_bytes=100)


@pytest.mark.parametrize("uri", [
    "simplecache::s3://bucket/a.png", "blockcache::file:///etc/passwd", "filecache::memory://x/a.png",
    "zip://a.png::s3://bucket/archive.zip", "s3://bucket/a.png::x", "data:image/png;base64,AAAA",
    "inputs/zip://a.png", "/inputs/tar://a", "reference::/etc/passwd", "S3://bucket/a.png",
])
def test_chained_or_rewritten_urls_are_refused_everywhere(uri, tmp_path):
    for check in (storage.check_uri, storage.check_output_root, storage.url_to_fs):
        with pytest.raises(InputError):
            check(uri)


def test_credentials_in_urls_are_refused_without_showing_them():
    for uri in (f"s3://AKIAEXAMPLE:{S3_SECRET}@bucket/a.wav", f"s3://{S3_SECRET}@bucket/a.wav",
                f"https://user:{S3_SECRET}@example.com/a.wav", f"gs://{S3_SECRET}@bucket/a.wav"):
        for check in (lambda u: storage.check_uri(u, allow_http=True), storage.check_output_root):
            with pytest.raises(InputError, match="credentials in a URL are refused") as refused:
                check(uri)
            assert S3_SECRET not in str(refused.value) and "***@" in str(refused.value)
    assert storage.check_uri("s3://bucket/user@example.com.wav") == "s3://bucket/user@example.com.wav"  # in a key
    account_form = "az://container@account.dfs.core.windows.net/a.wav"  # adlfs: a container, not a user
    assert storage.check_uri(account_form) == account_form
    with pytest.raises(InputError, match="credentials in a URL are refused"):
        storage.check_uri(f"az://container:{S3_SECRET}@account.dfs.core.windows.net/a.wav")


def test_dot_segments_are_refused_in_object_store_urls():
    for uri in ("s3://bucket/a/../b.wav", "s3://bucket/./b.wav", "gs://bucket/a/..", "memory://x/../y"):
        with pytest.raises(InputError, match="'..' segments are refused"):
            storage.check_uri(uri)
    assert storage.check_uri("s3://bucket/a..b/c.wav") == "s3://bucket/a..b/c.wav"


def test_output_root_refuses_process_local_http_and_glob_roots(tmp_path):
    assert storage.check_output_root("s3://bucket/renders") == "s3://bucket/renders"
    assert storage.check_output_root(str(tmp_path)) == str(tmp_path)
    with pytest.raises(InputError, match="exists only inside one process"):
        storage.check_output_root("memory://renders")
    with pytest.raises(InputError, match="cannot be an output root"):
        storage.check_output_root("https://example.com/renders")
    with pytest.raises(InputError, match="refused in an output root"):
        storage.check_output_root("s3://bucket/renders*")
    with pytest.raises(ValueError, match="glob"):
        storage.delete(str(tmp_path / "*"))


def test_scheme_table_drives_the_quirks():
    assert storage.ALLOWED_SCHEMES == ("file", "s3", "gs", "az", "memory")
    assert storage.HTTP_SCHEMES == ("http", "https") and storage.PROCESS_LOCAL_SCHEMES == ("memory",)
    assert {name: quirks.listing for name, quirks in storage.SCHEMES.items() if quirks.listing != "full"} == {
        "file": "scandir", "s3": "paged"}
    assert "EndpointConnectionError" in storage.SCHEMES["s3"].transient  # botocore's name for "unreachable"


def test_probe_writable_names_the_output(s3_endpoint):
    with pytest.raises(InputError, match="output s3://no-such-bucket-here/out is not writable"):
        storage.probe_writable("s3://no-such-bucket-here/out")


def test_describe_error_hides_file_object_reprs():
    class Opener:
        pass

    message = storage.describe_error(OSError(f"cannot identify image file {Opener()!r}"))
    assert "object at 0x" not in message and message == "OSError: cannot identify image file <file>"


def test_probe_writable_leaves_nothing_behind(tmp_path, s3_bucket):
    storage.probe_writable(str(tmp_path / "new" / "out"))  # a root to be created is fine
    storage.probe_writable(f"{s3_bucket}/out")
    assert list(tmp_path.iterdir()) == [] and storage.list_files(s3_bucket, max_entries=10) == []
    (tmp_path / "file").write_bytes(b"")
    with pytest.raises(InputError, match="is not a writable folder"):
        storage.probe_writable(str(tmp_path / "file" / "out"))


def test_probe_writable_makes_a_real_write():
    """As root os.access approves any folder; /proc's refuse new files all the same. The probe writes one (and
    removes it: the test above), so a root that only the real write refuses is reported before the job starts Ray."""
    with pytest.raises(InputError, match=r"output /proc/no-such/out is not writable: /proc refuses a new file"):
        storage.probe_writable("/proc/no-such/out")


@pytest.mark.parametrize("where", ["local", "s3"])
def test_atomic_output_commits_only_a_block_that_ends_well(where, tmp_path, request):
    root = str(tmp_path) if where == "local" else f"{request.getfixturevalue('s3_bucket')}/out"
    uri = storage.join(root, "streamed.bin")
    with pytest.raises(RuntimeError, match="interrupted"):
        with storage.atomic_output(uri) as out:
            out.write(b"half")
            raise RuntimeError("interrupted")
    assert not storage.exists(uri)
    with storage.atomic_output(uri) as out:
        out.write(b"first ")
        assert not storage.exists(uri)  # nothing visible before the block ends
        out.write(b"second")
    assert storage.read_bytes(uri, max_bytes=100) == b"first second"
    if where == "local":
        assert sorted(p.name for p in tmp_path.iterdir()) == ["streamed.bin"]  # no temporary file left
