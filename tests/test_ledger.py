import numpy as np
import pytest

from pipeline import storage
from pipeline.fingerprint import clip_fingerprint, content_hash
from pipeline.ledger import Ledger


def _fingerprint(**changes):
    fields = dict(image_sha=content_hash(b"image"), audio_sha=content_hash(b"audio"), pose_shas=[("0.npy", "ab")],
                  params=dict(seed=0, steps=3, fps=24.0), model_identity="tiny-seed0-v1")
    fields.update(changes)
    return clip_fingerprint(**fields)


def test_fingerprint_follows_contents_params_and_model():
    base = _fingerprint()
    assert base == _fingerprint() and len(base) == 16
    assert base != _fingerprint(audio_sha=content_hash(b"other audio"))
    assert base != _fingerprint(pose_shas=[("0.npy", "ac")])
    assert base != _fingerprint(params=dict(seed=1, steps=3, fps=24.0))
    assert base != _fingerprint(model_identity="official-acc-0123")


@pytest.fixture(params=["local", "s3"])
def root(request, tmp_path):
    if request.param == "local":
        return str(tmp_path / "out")
    return request.getfixturevalue("s3_bucket") + "/out"


def test_clip_counts_as_done_only_with_its_mp4_of_the_recorded_size(root):
    ledger = Ledger(root)
    assert ledger.finished_clip("a", "fp1") is None
    storage.write_atomic(ledger.output_uri("a"), b"0123456789")
    assert ledger.finished_clip("a", "fp1") is None  # an MP4 without its record (crash before the record)
    ledger.record_clip("a", "fp1", bytes=10, frames=5)
    assert ledger.finished_clip("a", "fp1")["frames"] == 5
    assert ledger.finished_clip("a", "fp2") is None  # edited row
    storage.write_atomic(ledger.output_uri("a"), b"012")
    assert ledger.finished_clip("a", "fp1") is None  # the MP4 is not the one recorded
    storage.delete(ledger.output_uri("a"))
    assert ledger.finished_clip("a", "fp1") is None
    assert [r["clip_id"] for r in ledger.clip_records()] == ["a"]


def test_segment_records_append_and_segment_files_are_freed(root):
    ledger = Ledger(root)
    assert ledger.segment_records() == []
    for start, stop in [(0, 28), (22, 50)]:
        storage.write_atomic(ledger.segment_uri("a", "fp1", start, stop), np.zeros(3, np.uint8).tobytes())
        ledger.record_segment("a", "fp1", start, stop, seconds=1.5)
    ledger.record_segment("a", "fp1", 0, 28, seconds=1.0)  # a re-render is a new record, never an overwrite
    ledger.record_segment("b", "fp9", 0, 10, seconds=1.0)
    assert sorted((r["start"], r["seconds"]) for r in ledger.segment_records("a")) == [(0, 1.0), (0, 1.5), (22, 1.5)]
    assert len(ledger.segment_records()) == 4
    stale = ledger.segment_uri("a", "fp0", 0, 28)  # left by an edit of the row after a crash
    storage.write_atomic(stale, b"old")
    ledger.delete_segments("a")
    assert not storage.exists(ledger.segment_uri("a", "fp1", 0, 28)) and not storage.exists(stale)
    assert not storage.exists(storage.join(root, "_segments", "a"))
    assert len(ledger.segment_records("a")) == 3  # the records stay


def test_job_records_prove_the_root_is_writable(root):
    Ledger(root).record_job("start", manifest="m.parquet")
    with pytest.raises(OSError):
        Ledger("/proc/no-such-root").record_job("start")
