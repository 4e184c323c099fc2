"""Rendered segments on storage: one ``.npy`` of uint8 frames ``(n, H, W, 3)`` per segment, written
atomically and read back a few frames at a time, so the assembler's memory does not grow with the clip."""
from __future__ import annotations

import io
from collections.abc import Iterator

import numpy as np

from pipeline import storage


def _check_frames(shape, dtype, where: str) -> None:
    if dtype != np.uint8 or len(shape) != 4 or shape[3] != 3:
        raise ValueError(f"{where}: segment frames must be uint8 (n, H, W, 3), got {dtype} {tuple(shape)}")


def write_segment(frames: np.ndarray, uri: str) -> None:
    """Store the frames under ``uri`` (never visible half-written)."""
    _check_frames(frames.shape, frames.dtype, uri)
    buffer = io.BytesIO()
    np.save(buffer, np.ascontiguousarray(frames), allow_pickle=False)
    storage.write_atomic(uri, buffer.getvalue())


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
