"""EchoMimic V2 inference engine: official-checkpoint networks, audio and pose inputs, segment sampler."""
from .presets import PRESETS, Preset

__all__ = ["EchoMimicV2", "PRESETS", "Preset"]


def __getattr__(name: str):
    # The model pulls in diffusers (seconds to import); CPU workers that only need
    # echomimic2.audio / echomimic2.pose should not pay for it.
    if name == "EchoMimicV2":
        from .model import EchoMimicV2

        return EchoMimicV2
    raise AttributeError(name)
