"""Named render settings, in one table: steps, guidance, default output size, which weights they need and
what they cost. Everything that lists presets or a per-preset fact reads `PRESETS` (the CLI's choices, the
model loader, `pipeline.params.RenderParams.resolve`, `cli.py plan`, the bench); adding a preset is one entry.
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class JobRenderCost:
    """A preset's render time measured through the job (`cli.py run`, render actor seconds), and the run
    it was measured on, so `cli.py plan` can turn the spec's FLOP counts of that very run (the ones
    `cli.py bench` reports) into a throughput and scale it to any manifest."""

    seconds_per_120_frames: float  # render seconds per 120 output frames, at `size`²
    clip_frames: tuple[int, ...]  # the measured job's clips (frames at 24 fps)
    segment_frames: int  # the job's --segment-frames
    overlap_frames: int
    size: int = 768
    device: str = "NVIDIA H200"
    compiled: bool = False  # False: ECHOMIMIC2_COMPILE=0 (eager); the job compiles on a GPU by default
    source: str = 'BENCHMARKS.md, "The job on a GPU (issue 16)", 2026-12-01'


@dataclass(frozen=True)
class OfficialRenderCost:
    """The official code's render time for a preset on one card, with its own harness (issue 10's table), and
    this project's goal for the same preset through the job's schedule (exact math)."""

    seconds_per_120_frames: float
    peak_gib: float
    target_seconds_per_120_frames: float
    target_peak_gib: float = 8.0
    size: int = 768
    device: str = "NVIDIA H200"
    source: str = "issue 10, 2026-12-01: the official repository's scripts on the same card"

    def describe(self) -> str:
        """The line both benches print beside their own figures."""
        return (f"official code on an {self.device}: {self.seconds_per_120_frames} s per 120 frames at {self.size}², peak "
                f"{self.peak_gib} GiB; goal through the job's schedule ≤ {self.target_seconds_per_120_frames} s, ≤ {self.target_peak_gib} GiB")


@dataclass(frozen=True)
class Preset:
    name: str
    steps: int
    guidance: float  # ≤ 1 turns classifier-free guidance off (one UNet branch)
    width: int
    height: int
    variant: str  # "quality" | "acc": which official files; "tiny": the built-in demo networks
    cost: JobRenderCost | None = None  # None: not measured
    official: OfficialRenderCost | None = None  # the official code's figure beside ours (full-size presets)

    @property
    def full_size(self) -> bool:
        """Runs the official architecture (official weights, or full-size random ones for benchmarks)."""
        return self.variant != "tiny"


PRESETS: dict[str, Preset] = {
    preset.name: preset
    for preset in (
        # Each cost is the job run BENCHMARKS.md describes (its clips and segment plan in the fields).
        Preset("quality", steps=30, guidance=2.5, width=768, height=768, variant="quality",
               cost=JobRenderCost(171.2, clip_frames=(60, 24, 24), segment_frames=48, overlap_frames=6),
               official=OfficialRenderCost(175.0, peak_gib=13.2, target_seconds_per_120_frames=80.0)),
        Preset("acc", steps=6, guidance=1.0, width=768, height=768, variant="acc",
               cost=JobRenderCost(24.04, clip_frames=(312, 48, 48), segment_frames=288, overlap_frames=6),
               official=OfficialRenderCost(22.3, peak_gib=13.2, target_seconds_per_120_frames=12.0)),
        # The demo model on the CPU: the estimate a user without weights (and without a GPU) can use.
        Preset("tiny", steps=3, guidance=1.0, width=256, height=256, variant="tiny",
               cost=JobRenderCost(68.5, clip_frames=(84, 72), segment_frames=288, overlap_frames=6, size=256,
                                  device="2-core CPU", source="`make demo` from a fresh clone, 2026-12-07 (other work running)")),
    )
}
DEFAULT_WITH_WEIGHTS = "acc"  # `cli.py run --weights DIR` without --preset
DEFAULT_WITHOUT_WEIGHTS = "tiny"  # `cli.py run` without weights: the built-in demo model


def default_preset(with_weights: bool) -> str:
    return DEFAULT_WITH_WEIGHTS if with_weights else DEFAULT_WITHOUT_WEIGHTS


def full_size_preset(name: str) -> Preset:
    """The preset `name`, which must run the official architecture; ValueError naming the choices."""
    choices = [preset.name for preset in PRESETS.values() if preset.full_size]
    if name not in choices:
        raise ValueError(f"preset must be one of {', '.join(map(repr, choices))}, got {name!r}")
    return PRESETS[name]

