"""Fingerprints: what makes a clip's output what it is.

A clip's fingerprint hashes the CONTENTS of its inputs (not their names or dates), every
parameter that changes the pixels, and the model's identity. Equal fingerprint = identical
output, so a rerun may reuse a finished MP4 or segment; any change re-renders that clip only.
"""
from __future__ import annotations

import hashlib
import json
from typing import Any

# Bump when the pipeline renders different frames for the same inputs and parameters
# (segment cross-fade, pose extension, framing), so old ledgers stop matching.
PIPELINE_VERSION = "1"


def content_hash(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def clip_fingerprint(
    *,
    image_sha: str,
    audio_sha: str,
    pose_shas: list[tuple[str, str]],
    params: dict[str, Any],
    model_identity: str,
) -> str:
    """16 hex digits (64 bits): short enough for paths, far from any collision at batch scale.

    pose_shas: (file name, content hash) in frame order; the names matter because they fix the order.
    params: resolved render parameters (seed, steps, guidance, fps, width, height, preset, segment plan).
    """
    document = {
        "pipeline": PIPELINE_VERSION,
        "image": image_sha,
        "audio": audio_sha,
        "pose": [list(item) for item in pose_shas],
        "params": params,
        "model": model_identity,
    }
    canonical = json.dumps(document, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()[:16]
