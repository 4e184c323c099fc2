"""Named render settings: steps, guidance, default output size and which weights they need."""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Preset:
    name: str
    steps: int
    guidance: float  # ≤ 1 turns classifier-free guidance off (one UNet branch)
    width: int
    height: int
    variant: str  # "quality" | "acc": which official files; "tiny": random built-in networks

    @property
    def full_size(self) -> bool:
        """Runs the official architecture (official weights, or full-size random ones for benchmarks)."""
        return self.variant != "tiny"


PRESETS: dict[str, Preset] = {
    preset.name: preset
    for preset in (
        Preset("quality", steps=30, guidance=2.5, width=768, height=768, variant="quality"),
        Preset("acc", steps=6, guidance=1.0, width=768, height=768, variant="acc"),
        Preset("tiny", steps=3, guidance=1.0, width=256, height=256, variant="tiny"),
    )
}


def full_size_preset(name: str) -> Preset:
    """The preset `name`, which must run the official architecture; ValueError naming the choices."""
    choices = [preset.name for preset in PRESETS.values() if preset.full_size]
    if name not in choices:
        raise ValueError(f"preset must be one of {', '.join(map(repr, choices))}, got {name!r}")
    return PRESETS[name]
