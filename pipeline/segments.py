"""Cut a clip of N frames into overlapping segments, the independent units of GPU work.

Every segment has the same length L <= segment_frames, and neighbours share at least
`overlap_frames` frames (the assembler cross-fades them). Balancing the lengths avoids a
last segment of a handful of frames, which would waste a model call and give the sampler
too little context.
"""
from __future__ import annotations

import math

DEFAULT_SEGMENT_FRAMES = 48
DEFAULT_OVERLAP_FRAMES = 6


def plan_segments(
    n_frames: int,
    segment_frames: int = DEFAULT_SEGMENT_FRAMES,
    overlap_frames: int = DEFAULT_OVERLAP_FRAMES,
) -> list[tuple[int, int]]:
    """[start, stop) ranges covering [0, n_frames), each overlapping the next by >= overlap_frames."""
    if segment_frames < 1:
        raise ValueError(f"segment_frames must be >= 1, got {segment_frames}")
    if not 0 <= overlap_frames < segment_frames:
        raise ValueError(
            f"overlap_frames must be in [0, segment_frames), got {overlap_frames} with segment_frames={segment_frames}"
        )
    if n_frames < 0:
        raise ValueError(f"n_frames must be >= 0, got {n_frames}")
    if n_frames == 0:
        return []
    if n_frames <= segment_frames:
        return [(0, n_frames)]
    count = math.ceil((n_frames - overlap_frames) / (segment_frames - overlap_frames))
    length = math.ceil((n_frames + (count - 1) * overlap_frames) / count)
    # Spread the starts evenly; with `length` rounded up, every step is <= length - overlap.
    starts = [round(i * (n_frames - length) / (count - 1)) for i in range(count)]
    return [(start, start + length) for start in starts]
