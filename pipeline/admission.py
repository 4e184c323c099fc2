"""Admission of clips to rendering within a scratch budget (no Ray here; the driver runs it, `tracker.py`).

A clip's segments stay in storage until its MP4 is committed. Without a bound, every preprocessed clip starts
writing segments at once, and on a small volume they fill it before any clip is assembled: all fail. So a
clip is admitted to rendering only while the segments of the clips admitted and not yet finished, plus its
own, fit the budget; a finished clip (done, failed, lost) releases its share. Requests are admitted in the
order they came (a large clip is not overtaken forever by small ones), and a clip larger than the whole
budget is admitted alone, once nothing else is in flight (it then fails on its own if storage is short).
"""
from __future__ import annotations

import re
import shutil

from pipeline import storage

# The share of a local output root's free space (at the job's start) that its clips' segments may use by
# default: the rest is for the MP4s, the ledger and whatever else writes to that volume meanwhile.
DEFAULT_FREE_SPACE_SHARE = 0.8
_UNITS = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}


def clip_scratch_bytes(frames_per_segment: list[int], width: int, height: int) -> int:
    """What a clip's segments take in storage (`segment_store`: uint8 frames, the overlaps stored twice)."""
    return sum(frames_per_segment) * width * height * 3


def parse_size(text: str) -> int | None:
    """``500M``, ``2G``, ``1.5g``, ``123456`` (bytes) → bytes; ``none`` or ``unlimited`` → None.
    ValueError naming the expected form."""
    cleaned = text.strip().lower()
    if cleaned in ("none", "unlimited"):
        return None
    match = re.fullmatch(r"(\d+(?:\.\d+)?)\s*([kmgt]?)i?b?", cleaned)
    if not match or float(match[1]) <= 0:
        raise ValueError(f"--scratch-budget must be a size like 500M or 20G (or none), got {text!r}")
    return int(float(match[1]) * _UNITS[match[2]])


def default_scratch_budget(output: str) -> int | None:
    """A local output root: DEFAULT_FREE_SPACE_SHARE of its volume's free space now; an object store: None
    (no bound: its space is not the job's limit)."""
    if not storage.is_local(output):
        return None
    folder = storage.local_path(output)
    while not folder.exists() and folder != folder.parent:  # the root may not exist yet
        folder = folder.parent
    return int(shutil.disk_usage(folder).free * DEFAULT_FREE_SPACE_SHARE)


class ScratchBudget:
    """The driver's ledger of admitted clips: `request` a clip's bytes, `admit` what fits, `release` a
    finished clip's share. `budget` None: every request is admitted at once."""

    def __init__(self, budget: int | None):
        self.budget = budget
        self.admitted: dict[str, int] = {}  # clip_id -> bytes, until the clip is finished
        self.waiting: dict[str, int] = {}  # in the order the requests came

    @property
    def in_use(self) -> int:
        return sum(self.admitted.values())

    def request(self, clip_id: str, nbytes: int) -> None:
        if clip_id not in self.admitted:
            self.waiting.setdefault(clip_id, nbytes)

    def admit(self) -> list[str]:
        """The waiting clips admitted now, in order; stops at the first that does not fit (unless none is in flight)."""
        admitted = []
        for clip_id, nbytes in list(self.waiting.items()):
            if self.budget is not None and self.admitted and self.in_use + nbytes > self.budget:
                break
            del self.waiting[clip_id]
            self.admitted[clip_id] = nbytes
            admitted.append(clip_id)
        return admitted

    def release(self, clip_id: str) -> None:
        self.admitted.pop(clip_id, None)
        self.waiting.pop(clip_id, None)
