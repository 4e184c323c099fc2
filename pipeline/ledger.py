"""The output root's layout and its ledger: what is finished, keyed by fingerprint.

    <root>/<clip_id>.mp4                                            the clip (atomic write)
    <root>/_segments/<clip_id>/<fp>/<start>-<stop>.npy              rendered segment frames (atomic write)
    <root>/_segments/<clip_id>/<fp>/audio                           the audio bytes preprocessing fingerprinted (muxed)
    <root>/_ledger/segments/<clip_id>/<fp>/<start>-<stop>.<uuid>.json  one record per segment render (append-only)
    <root>/_ledger/clips/<clip_id>.json                             the record of the MP4 now at <clip_id>.mp4
    <root>/_ledger/jobs/<utc time>-<uuid>.json                      one record per job start and end
    <root>/results.parquet                                          one row per manifest row of the last run

Order of writes makes a crash safe: segment file, then its record; MP4, then the clip record,
then the clip's segment files are deleted. A clip counts as done only when its record names the
current fingerprint AND the MP4 it describes is there with the recorded size, so a crash between
the MP4 and its record just re-assembles that clip from its segments.
"""
from __future__ import annotations

import json
import time
import uuid
from typing import Any

from pipeline import storage

REPORT_FOLDER = "_report"  # the review page (cli.py report) and its contact strips
STRIPS_FOLDER = "strips"
REFS_FOLDER = "refs"  # each clip's reference picture (written by preprocessing, shown by the review page)
OVERLAYS_FOLDER = "overlays"  # each clip's framed reference with its poses drawn over it


def strip_name(clip_id: str, fingerprint: str | None) -> str:
    """A strip per clip *version*: a re-rendered clip never shows the old render's frames."""
    return f"{clip_id}.{(fingerprint or 'none')[:16]}.jpg"


def image_name(clip_id: str, fingerprint: str | None = None) -> str:
    """A clip's picture name: like its contact strip's when a fingerprint is known, so a changed row gets new
    pictures; the clip id alone on a proof sheet."""
    return f"{clip_id}.{fingerprint[:16]}.jpg" if fingerprint else f"{clip_id}.jpg"


def strip_uri(root: str, clip_id: str, fingerprint: str | None) -> str:
    """Where the assembler writes a clip's contact strip (``assemble_clip(..., strip_uri=...)``)."""
    return storage.join(root, REPORT_FOLDER, STRIPS_FOLDER, strip_name(clip_id, fingerprint))


class Ledger:
    def __init__(self, root: str):
        self.root = root.rstrip("/")

    # -- paths ---------------------------------------------------------------------------
    def output_uri(self, clip_id: str) -> str:
        return storage.join(self.root, f"{clip_id}.mp4")

    def clip_work_folder(self, clip_id: str, fingerprint: str) -> str:
        """A clip version's rendered segments and audio copy: deleted together once its MP4 is committed."""
        return storage.join(self.root, "_segments", clip_id, fingerprint)

    def segment_uri(self, clip_id: str, fingerprint: str, start: int, stop: int) -> str:
        return storage.join(self.clip_work_folder(clip_id, fingerprint), f"{start}-{stop}.npy")

    def results_uri(self) -> str:
        return storage.join(self.root, "results.parquet")

    def _clip_record_uri(self, clip_id: str) -> str:
        return storage.join(self.root, "_ledger", "clips", f"{clip_id}.json")

    # -- records -------------------------------------------------------------------------
    def record_segment(self, clip_id: str, fingerprint: str, start: int, stop: int, **details: Any) -> None:
        """Called after the segment file is committed: one new file per render, never overwritten."""
        record = dict(clip_id=clip_id, fingerprint=fingerprint, start=start, stop=stop, time=time.time(), **details)
        name = f"{start}-{stop}.{uuid.uuid4().hex}.json"
        _write_json(storage.join(self.root, "_ledger", "segments", clip_id, fingerprint, name), record)

    def segment_records(self, clip_id: str | None = None) -> list[dict]:
        """Every segment render recorded under this root (of one clip, if given)."""
        parts = ["_ledger", "segments"] + ([clip_id] if clip_id else [])
        return [_read_json(uri) for uri in _find(storage.join(self.root, *parts), suffix=".json")]

    def record_clip(self, clip_id: str, fingerprint: str, **details: Any) -> None:
        """Called after <clip_id>.mp4 is committed (details include its size in bytes)."""
        record = dict(clip_id=clip_id, fingerprint=fingerprint, time=time.time(), **details)
        _write_json(self._clip_record_uri(clip_id), record)

    def clip_record(self, clip_id: str) -> dict | None:
        uri = self._clip_record_uri(clip_id)
        return _read_json(uri) if storage.exists(uri) else None

    def clip_records(self) -> list[dict]:
        return [_read_json(uri) for uri in _find(storage.join(self.root, "_ledger", "clips"), suffix=".json")]

    def finished_clip(self, clip_id: str, fingerprint: str) -> dict | None:
        """The clip's record if its MP4 is finished for exactly this fingerprint, else None."""
        record = self.clip_record(clip_id)
        if record is None or record["fingerprint"] != fingerprint:
            return None
        output = self.output_uri(clip_id)
        if not storage.exists(output) or storage.size(output) != record.get("bytes"):
            return None
        return record

    def record_job(self, event: str, **details: Any) -> None:
        """Also the job's first write: it proves the output root is reachable and writable."""
        stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
        name = f"{stamp}-{event}-{uuid.uuid4().hex[:8]}.json"
        _write_json(storage.join(self.root, "_ledger", "jobs", name), dict(event=event, time=time.time(), **details))

    def delete_segments(self, clip_id: str) -> None:
        """Frees the raw frames of a committed clip, also those left under older fingerprints by an edit
        after a crash; the ledger records stay."""
        storage.delete(storage.join(self.root, "_segments", clip_id))


def _write_json(uri: str, record: dict) -> None:
    storage.write_atomic(uri, json.dumps(record, sort_keys=True).encode())


def _read_json(uri: str) -> dict:
    return json.loads(storage.with_retries(_cat, uri))


def _cat(uri: str) -> bytes:
    fs, path = storage.url_to_fs(uri)
    return fs.cat_file(path)


def _find(uri: str, *, suffix: str) -> list[str]:
    """Files under uri (recursive), as URIs of the same scheme; [] if the folder does not exist."""
    fs, path = storage.url_to_fs(uri)
    try:
        found = storage.with_retries(fs.find, path)
    except FileNotFoundError:
        return []
    prefix_length = len(path.rstrip("/"))
    return sorted(uri.rstrip("/") + p[prefix_length:] for p in found if p.endswith(suffix))
