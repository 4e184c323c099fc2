"""EchoMimic V2 inference engine: official-checkpoint networks, audio and pose inputs, segment sampler."""
from .model import EchoMimicV2
from .presets import PRESETS, Preset

__all__ = ["EchoMimicV2", "PRESETS", "Preset"]
