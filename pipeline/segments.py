"""Cut a clip of N frames into overlapping segments, the independent units of GPU work.

Every segment has the same length L <= segment_frames, and neighbours share at least
`overlap_frames` frames (the assembler cross-fades them). Balancing the lengths avoids a
last segment of a handful of frames, which would waste a model call and give the sampler
too little context.

Segment length is a trade-off. Each segment is denoised on its own window grid, so frames near its
ends get more context windows than a whole-clip render gives them, and the shared frames are denoised
and decoded twice: ≤ 48-frame segments cost 1.22–1.28x one whole-clip render in UNet work. At 288
frames (12 s at 24 fps) the schedule costs at most 1.043x the whole clip for any length from 5 s to
10 min (tests/test_segments.py counts the UNet window-frames). GPU memory does not grow with segment
length (the sampler's accumulator is a few windows long), so the costs of long segments are elsewhere:
a crash loses at most one segment per GPU in flight (≤ 12 s of video), and one clip spreads over N GPUs
only once it is at least about N × 12 s long (shorter clips run on one GPU each, others' clips fill the rest).
"""
from __future__ import annotations

import math

DEFAULT_SEGMENT_FRAMES = 288  # 12 s at 24 fps: ≤ 1.05x the GPU work of a whole-clip render (docstring)
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
