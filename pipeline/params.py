"""A clip's render parameters: everything that changes its pixels, as one frozen, typed `RenderParams` built
once per row, with its defaults and its limits in one place.

    manifest row (ClipSpec) ─┐
    one-clip call (clip.py) ─┴► RenderParams.resolve ─► validate ─► the steps, SegmentWork, the fingerprint

`FIELD_CHECKS` are the limits of the fields a row may set: `validate` (the manifest's checks), the job and the
one-clip API all check against them; the engine (`echomimic2.model`) keeps its own argument checks for direct
callers. The job fingerprints `fingerprint_fields()`: its keys and values are those of the releases before this
type existed, so finished outputs stay finished.
"""
from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from echomimic2.gestures import GESTURE_STYLES as GESTURE_STYLE_TABLE
from echomimic2.pose_align import ALIGN_MODES

DEFAULT_SEED = 0
DEFAULT_FPS = 24.0  # the official model's frame rate
DEFAULT_POSE_ALIGN = "auto"  # map the poses onto the reference's person ("none": as given)
DEFAULT_GESTURE = "calm"  # without poses: hand gestures from the audio in this style ("none": hands at rest)
SIZE_MULTIPLE = 64  # the model's latent sides are multiples of 8 (echomimic2.model)
MAX_SIDE = 2048
MAX_STEPS = 200
MAX_FPS = 60.0
MAX_PERSON = 63  # `person` indexes the faces found in the reference, left to right
POSE_ALIGN_MODES = ALIGN_MODES  # their home is the engine's; named here for the checks
GESTURE_STYLES = tuple(GESTURE_STYLE_TABLE)


def as_int(value, low: int, high: int | None, multiple: int = 1) -> int:
    """An integer in [low, high] (integral floats accepted: Parquet turns int columns with nulls into
    floats); ValueError with the reason otherwise."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise ValueError(f"must be an integer, got {type(value).__name__} {value!r}")
    if not float(value).is_integer():
        raise ValueError(f"must be an integer, got {value!r}")
    number = int(value)
    if number < low or (high is not None and number > high):
        raise ValueError(f"must be in {low}..{high if high is not None else 'inf'}, got {number}")
    if number % multiple:
        raise ValueError(f"must be a multiple of {multiple}, got {number}")
    return number


def as_float(value, low: float, high: float | None) -> float:
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise ValueError(f"must be a number, got {type(value).__name__} {value!r}")
    number = float(value)
    if not math.isfinite(number):
        raise ValueError(f"must be a finite number, got {number}")
    if number < low or (high is not None and number > high):
        allowed = f"in {low:g}..{high:g}" if high is not None else f"≥ {low:g}"
        raise ValueError(f"must be {allowed}, got {number:g}")
    return number


def as_choice(value, choices: tuple[str, ...]) -> str:
    if not isinstance(value, str) or value not in choices:
        raise ValueError(f"must be one of {', '.join(choices)}, got {value!r}")
    return value


# The fields a manifest row or a one-clip call may set, each with its one check: the value in its type, or
# ValueError with the reason.
FIELD_CHECKS: dict[str, Callable[[object], object]] = {
    "seed": lambda v: as_int(v, 0, 2**63 - 1),
    "steps": lambda v: as_int(v, 1, MAX_STEPS),
    "guidance": lambda v: as_float(v, 0.0, None),
    "fps": lambda v: as_float(v, 1.0, MAX_FPS),
    "width": lambda v: as_int(v, SIZE_MULTIPLE, MAX_SIDE, SIZE_MULTIPLE),
    "height": lambda v: as_int(v, SIZE_MULTIPLE, MAX_SIDE, SIZE_MULTIPLE),
    "pose_align": lambda v: as_choice(v, POSE_ALIGN_MODES),
    "gesture": lambda v: as_choice(v, GESTURE_STYLES),
    "person": lambda v: as_int(v, 0, MAX_PERSON),
}


@dataclass(frozen=True)
class RenderParams:
    """One clip's render parameters, every default filled in (`resolve`)."""

    preset: str
    seed: int
    steps: int
    guidance: float
    fps: float
    width: int
    height: int
    segment_frames: int
    overlap_frames: int
    pose_align: str
    gesture: str
    person: int | None  # which person of several in the reference (0 = leftmost face); None: largest, most central
    poses_version: int  # echomimic2.clip_poses.POSES_VERSION: clips re-render when framing or gestures change

    @classmethod
    def resolve(cls, preset_name: str, *, segment_frames: int, overlap_frames: int, seed: int | None = None,
                steps: int | None = None, guidance: float | None = None, fps: float | None = None,
                width: int | None = None, height: int | None = None, pose_align: str | None = None,
                gesture: str | None = None, person: int | None = None) -> RenderParams:
        """The parameters with the preset's and the project's defaults filled in (None: the default), checked
        (`validate`). ValueError naming the field."""
        from echomimic2.clip_poses import POSES_VERSION
        from echomimic2.presets import PRESETS

        preset = PRESETS[preset_name]
        return cls(
            preset=preset.name,
            seed=DEFAULT_SEED if seed is None else seed,
            steps=preset.steps if steps is None else steps,
            guidance=preset.guidance if guidance is None else guidance,
            fps=DEFAULT_FPS if fps is None else fps,
            width=preset.width if width is None else width,
            height=preset.height if height is None else height,
            segment_frames=segment_frames,
            overlap_frames=overlap_frames,
            pose_align=DEFAULT_POSE_ALIGN if pose_align is None else pose_align,
            gesture=DEFAULT_GESTURE if gesture is None else gesture,
            person=person,
            poses_version=POSES_VERSION,
        ).validate()

    @classmethod
    def for_row(cls, spec, preset_name: str, *, segment_frames: int, overlap_frames: int) -> RenderParams:
        """A manifest row's (`manifest.ClipSpec`) parameters under a preset and the job's segment plan."""
        return cls.resolve(preset_name, seed=spec.seed, steps=spec.steps, guidance=spec.guidance, fps=spec.fps,
                           width=spec.width, height=spec.height, pose_align=spec.pose_align, gesture=spec.gesture,
                           person=spec.person, segment_frames=segment_frames, overlap_frames=overlap_frames)

    def validate(self) -> RenderParams:
        """These parameters checked against `FIELD_CHECKS` and the segment plan, each value in its type
        (an integral float seed becomes an int); ValueError ``"<field>: <reason>"`` for the first bad one."""
        from pipeline.segments import plan_segments

        checked = {}
        for name, check in FIELD_CHECKS.items():
            value = getattr(self, name)
            if value is None and name == "person":
                continue
            try:
                checked[name] = check(value)
            except ValueError as exc:
                raise ValueError(f"{name}: {exc}") from None
        plan_segments(self.segment_frames + 1, self.segment_frames, self.overlap_frames)  # ValueError on a bad pair
        return dataclasses.replace(self, **checked)

    def fingerprint_fields(self) -> dict:
        """What the clip's fingerprint (`fingerprint.clip_fingerprint`) and the rerun stamps hash."""
        return dataclasses.asdict(self)
