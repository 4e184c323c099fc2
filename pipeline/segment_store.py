"""A clip's working files on storage, beside each other under ``_segments/<clip_id>/<fingerprint>/`` and
freed together once its MP4 is committed (`Ledger.delete_segments`):

- one ``.npy`` of uint8 frames ``(n, H, W, 3)`` per rendered segment, written atomically and read back a few
  frames at a time, so the assembler's memory does not grow with the clip;
- ``audio``: the row's audio file exactly as preprocessing read (and fingerprinted) it, which the assembler
  muxes, so the input is read once per clip and a file edited mid-job cannot reach an MP4 of the old one;
- ``_segments/<clip_id>/plan.json``: the clip's plan as preprocessing posted it to the job's board, read by the
  driver only when the board actor was lost before the driver took the plan.
"""
from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np

from pipeline import storage
from pipeline.ledger import Ledger

CLIP_AUDIO_NAME = "audio"  # cannot meet a segment's "<start>-<stop>.npy"
CLIP_PLAN_NAME = "plan.json"
MAX_PLAN_BYTES = 16 << 20


def _check_frames(shape, dtype, where: str) -> None:
    if dtype != np.uint8 or len(shape) != 4 or shape[3] != 3:
        raise ValueError(f"{where}: segment frames must be uint8 (n, H, W, 3), got {dtype} {tuple(shape)}")


def write_segment(frames: np.ndarray, uri: str) -> None:
    """Store the frames under ``uri`` (never visible half-written)."""
    _check_frames(frames.shape, frames.dtype, uri)
    with segment_output(uri, *frames.shape[:3]) as segment:
        segment.write(frames)


class SegmentOutput:
    """Takes a segment's frames in order, a chunk at a time, into an open `storage.atomic_output` file."""

    def __init__(self, out, uri: str, frames: int, height: int, width: int):
        self.out, self.uri, self.frames, self.frame_shape = out, uri, frames, (height, width, 3)
        self.written = 0
        np.lib.format.write_array_header_1_0(out, {"descr": np.lib.format.dtype_to_descr(np.dtype(np.uint8)),
                                                   "fortran_order": False, "shape": (frames, height, width, 3)})

    def write(self, chunk: np.ndarray) -> None:
        _check_frames(chunk.shape, chunk.dtype, self.uri)
        if tuple(chunk.shape[1:]) != self.frame_shape or self.written + len(chunk) > self.frames:
            raise ValueError(f"{self.uri}: {len(chunk)} frames of {tuple(chunk.shape[1:])} do not fit a segment of "
                             f"{self.frames} frames of {self.frame_shape} with {self.written} written")
        self.out.write(np.ascontiguousarray(chunk).data)
        self.written += len(chunk)


@contextmanager
def segment_output(uri: str, frames: int, height: int, width: int) -> Iterator[SegmentOutput]:
    """Write a segment as its frames arrive (`SegmentOutput.write`), e.g. each decoded batch while the GPU
    decodes the next; stored under ``uri`` when the block ends with all ``frames`` written, never otherwise."""
    with storage.atomic_output(uri) as out:
        segment = SegmentOutput(out, uri, frames, height, width)
        yield segment
        if segment.written != frames:
            raise ValueError(f"{uri}: {segment.written} of the segment's {frames} frames were written")


def _read_exactly(f, n: int, uri: str) -> bytes:
    data = f.read(n)
    while len(data) < n:
        more = f.read(n - len(data))
        if not more:
            raise ValueError(f"{uri}: segment file is truncated")
        data += more
    return data


def iter_segment(uri: str, chunk_frames: int = 8) -> Iterator[np.ndarray]:
    """The segment's frames in order, as arrays of at most ``chunk_frames`` frames."""
    with storage.open_input(uri) as f:
        version = np.lib.format.read_magic(f)
        read_header = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
        shape, fortran_order, dtype = read_header(f)
        _check_frames(shape, dtype, uri)
        if fortran_order:
            raise ValueError(f"{uri}: segment file is in Fortran order")
        n, height, width, _ = shape
        frame_bytes = height * width * 3
        for start in range(0, n, chunk_frames):
            count = min(chunk_frames, n - start)
            data = _read_exactly(f, count * frame_bytes, uri)
            yield np.frombuffer(data, dtype=np.uint8).reshape(count, height, width, 3)


def clip_audio_uri(ledger: Ledger, clip_id: str, fingerprint: str) -> str:
    """Where a clip's audio copy lives: in its segments' folder (the ledger's layout), so it is freed with them."""
    return storage.join(ledger.clip_work_folder(clip_id, fingerprint), CLIP_AUDIO_NAME)


def store_clip_audio(data: bytes, uri: str, *, overwrite: bool = False) -> None:
    """Keep the audio for the assembler (once per fingerprint: the same fingerprint means the same bytes)."""
    if overwrite or not storage.exists(uri):
        storage.write_atomic(uri, data)


def read_clip_audio(uri: str, *, max_bytes: int, sha: str) -> bytes:
    """The stored audio, checked against the content hash its clip was fingerprinted with."""
    from pipeline.fingerprint import content_hash

    data = storage.read_bytes(uri, max_bytes=max_bytes)
    if content_hash(data) != sha:
        raise ValueError(f"{storage.redact(uri)}: the stored audio is not the audio this clip was planned with; rerun")
    return data


def clip_plan_uri(ledger: Ledger, clip_id: str) -> str:
    return storage.join(ledger.root, "_segments", clip_id, CLIP_PLAN_NAME)


def store_clip_plan(ledger: Ledger, plan) -> None:
    """Keep a copy of the clip's plan (a `rows.ClipPlan`) beside its segments, freed with them."""
    import json

    from pipeline.rows import to_batch

    row = {name: column[0].item() if hasattr(column[0], "item") else column[0] for name, column in to_batch(plan).items()}
    storage.write_atomic(clip_plan_uri(ledger, plan.clip_id), json.dumps(row).encode())


def read_clip_plan(ledger: Ledger, clip_id: str):
    """The stored plan of `clip_id` (a `rows.ClipPlan`), or None if preprocessing has not stored one."""
    import json

    from pipeline.rows import ClipPlan, from_batch

    uri = clip_plan_uri(ledger, clip_id)
    try:
        row = json.loads(storage.read_bytes(uri, max_bytes=MAX_PLAN_BYTES))
    except FileNotFoundError:
        return None
    return from_batch(ClipPlan, {name: [value] for name, value in row.items()})
