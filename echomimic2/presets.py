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


PRESETS: dict[str, Preset] = {
    preset.name: preset
    for preset in (
        Preset("quality", steps=30, guidance=2.5, width=768, height=768, variant="quality"),
        Preset("acc", steps=6, guidance=1.0, width=768, height=768, variant="acc"),
        Preset("tiny", steps=3, guidance=1.0, width=256, height=256, variant="tiny"),
    )
}
