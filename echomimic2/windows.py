"""The sampler's context-window schedules (rules in `echomimic2.sampler`'s docstring): which frames each UNet
call denoises at each step. Plain Python, no torch: the job's planner and the FLOP counts use them too."""
from __future__ import annotations

CONTEXT_FRAMES = 12
CONTEXT_OVERLAP = 3
CONTEXT_STRIDE = CONTEXT_FRAMES - CONTEXT_OVERLAP
WINDOW_SHIFT_PER_STEP = 3


def segment_windows(frames: int, step: int) -> list[list[int]]:
    """Windows of one step inside a segment, without wrap-around (rule in the module docstring)."""
    if frames <= CONTEXT_FRAMES:
        return [list(range(frames))]
    offset = (WINDOW_SHIFT_PER_STEP * step) % CONTEXT_STRIDE
    last_start = frames - CONTEXT_FRAMES
    starts: list[int] = []
    for candidate in range(offset - CONTEXT_STRIDE, frames, CONTEXT_STRIDE):
        start = min(max(candidate, 0), last_start)
        if not starts or starts[-1] != start:
            starts.append(start)
    return [list(range(start, start + CONTEXT_FRAMES)) for start in starts]


def window_frames_per_step(frames: int, steps: int) -> float:
    """UNet window-frames per denoising step that a segment of `frames` costs (12 per window; a
    segment of ≤ 12 frames is one window of its own length): what segment plans are compared by."""
    return sum(len(segment_windows(frames, step)) * min(frames, CONTEXT_FRAMES) for step in range(steps)) / steps


def official_windows(frames: int, step: int) -> list[list[int]]:
    """The official closed-loop "uniform" windows of one step, with wrap-around (spec §10.2.5–6)."""
    if frames <= CONTEXT_FRAMES:
        base = [list(range(frames))]
    else:
        base = [[(start + k) % frames for k in range(CONTEXT_FRAMES)] for start in range(0, frames, CONTEXT_STRIDE)]
    shift = WINDOW_SHIFT_PER_STEP * step
    return [[(index + shift) % frames for index in window] for window in base]
