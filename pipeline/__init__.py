"""The batch system, and the one-clip API on top of the same steps:

    from pipeline import EchoMimicV2Pipeline
    out = EchoMimicV2Pipeline.tiny()("person.png", "speech.wav")

Names are imported on first use, so `import pipeline` loads neither torch nor Ray.
"""

__all__ = ["EchoMimicV2Output", "EchoMimicV2Pipeline"]


def __getattr__(name: str):
    if name in __all__:
        from pipeline import clip

        return getattr(clip, name)
    raise AttributeError(f"module 'pipeline' has no attribute {name!r}")
