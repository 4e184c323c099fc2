"""Output roots for the review page's tests, screenshots and benchmark: real MP4s made by the assembler (with
their QC reports) and a results.parquet with the job's columns plus the QC columns, each clip's reference
triage (verdict, warnings) and what framing and posing did, with the reference and framed-with-poses pictures
preprocessing writes (made by the job's own steps from real references: skimage's astronaut, a crop of her at
the collar, a plain grey image with no person).

    build_output_root(root)             a few clips: clean, a black segment, a seam, a frozen run, a failure
    build_large_output_root(root, n)    n result rows over those clips' MP4s (hard links), strips and pictures
"""
from __future__ import annotations

import io
import os
import tempfile
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import soundfile as sf

from pipeline import proof, qc, report, storage
from pipeline.assemble import assemble_clip
from pipeline.ledger import OVERLAYS_FOLDER, REFS_FOLDER, REPORT_FOLDER, STRIPS_FOLDER, image_name, strip_name, strip_uri
from pipeline.results import RESULT_COLUMNS, poses_columns
from pipeline.segment_store import write_segment

FPS = 12.0
SIZE = (96, 160)  # height, width


def scene(seed: int, frames: int, size=SIZE) -> np.ndarray:
    """A textured backdrop with a bobbing head-and-shoulders figure and a little noise."""
    rng = np.random.default_rng(seed)
    height, width = size
    tint = rng.integers(90, 200, 3)
    backdrop = cv2.resize(np.clip(tint + rng.integers(-25, 25, (4, 6, 3)), 0, 255).astype(np.uint8), (width, height),
                          interpolation=cv2.INTER_CUBIC)
    skin = tuple(int(c) for c in rng.integers(150, 240, 3))
    shirt = tuple(int(c) for c in rng.integers(20, 200, 3))
    video = []
    for i in range(frames):
        frame = backdrop.copy()
        x, y = width // 2 + round(5 * np.sin(i / 4)), height // 2 - 10 + round(2 * np.sin(i / 3))
        cv2.ellipse(frame, (x, height), (width // 4, height // 3), 0, 180, 360, shirt, -1)
        cv2.ellipse(frame, (x, y), (height // 7, height // 5), 0, 0, 360, skin, -1)
        cv2.ellipse(frame, (x, y + height // 10), (height // 22, 1 + round(2 * abs(np.sin(i / 2)))), 0, 0, 360, (90, 30, 40), -1)
        video.append(np.clip(frame + rng.normal(0, 2, frame.shape), 0, 255).astype(np.uint8))
    return np.stack(video)


def speech(seconds: float, sr: int = 16000) -> bytes:
    t = np.arange(int(seconds * sr)) / sr
    voice = 0.3 * np.clip(np.sin(2 * np.pi * 2 * t), 0, None) * np.sin(2 * np.pi * 220 * t)
    buffer = io.BytesIO()
    sf.write(buffer, voice.astype(np.float32), sr, format="WAV")
    return buffer.getvalue()


KINDS = ("clean", "black", "seam", "frozen", "clean", "failed")
# The reference each kind of clip was made from: what its pictures, verdict and warnings show.
REFERENCE_OF = {"clean": "half_body", "black": "half_body", "seam": "collar", "frozen": "no_person"}


def reference_image(name: str) -> np.ndarray:
    from skimage import data

    astronaut = data.astronaut()
    if name == "half_body":
        return astronaut
    if name == "collar":
        return np.ascontiguousarray(astronaut[:260, 100:400])  # a portrait cut at the collar
    return np.full((300, 300, 3), 128, np.uint8)


_REFERENCES: dict = {}


def reference_outcome(name: str, seconds: float) -> dict:
    """The job's framing, poses, triage and pictures of one reference (computed once per process)."""
    key = (name, seconds)
    if key not in _REFERENCES:
        from pipeline.params import RenderParams
        from pipeline.steps import reference_and_poses

        whole = reference_image(name)
        params = RenderParams.resolve("tiny", seed=0, fps=FPS, segment_frames=48, overlap_frames=4)
        waveform = sf.read(io.BytesIO(speech(seconds)), dtype="float32")[0]
        framed, poses, info = reference_and_poses(whole, params, round(seconds * FPS), poses=None, waveform=waveform)
        ref, overlay, _ = proof.clip_images(whole, framed, poses)
        _REFERENCES[key] = dict(columns=poses_columns(info), ref=ref, overlay=overlay)
    return _REFERENCES[key]


def _sources(kind: str, seed: int, frames: int) -> tuple[list[tuple[int, int]], list[np.ndarray]]:
    """Segment spans (overlap 4) and the video each segment is cut from, for one kind of clip."""
    half = frames // 2
    spans = [(0, half + 4), (half, frames)]
    video = scene(seed, frames)
    if kind == "black":
        return [(0, half // 2 + 4), (half // 2, half + 4), (half, frames)], [video, np.zeros_like(video), video]
    if kind == "seam":
        return spans, [video, scene(seed + 100, frames)]
    if kind == "frozen":
        video[2:2 + int(FPS)] = video[2]  # one second of one frame, ending before the join
    return spans, [video, video]


def build_output_root(root: str, kinds=KINDS, *, seconds: float = 3.0, strips_by_assembler: bool = True) -> pd.DataFrame:
    """Render one clip per kind into ``root`` (any storage URI) and write its results.parquet. Every other clip
    gets its contact strip from the assembler; the rest are left for the report to make from the MP4."""
    frames = round(seconds * FPS)
    rows = []
    with tempfile.TemporaryDirectory(prefix="fixture-") as scratch:
        for i, kind in enumerate(kinds):
            clip_id = f"clip-{i:03d}-{kind}"
            fingerprint = f"{i:016x}{'ab' * 24}"
            row = dict(row=i, clip_id=clip_id, fingerprint=fingerprint, preprocess_seconds=0.4, render_seconds=3.0 + i)
            if kind == "failed":
                rows.append(dict(row, status="failed", error=f"row {i} (clip '{clip_id}'): audio: not a decodable audio "
                                                              "file (Invalid data found when processing input)"))
                continue
            spans, sources = _sources(kind, i, frames)
            segments = []
            for start, stop in spans:
                uri = os.path.join(scratch, f"{clip_id}-{start}-{stop}.npy")
                write_segment(np.ascontiguousarray(sources[len(segments)][start:stop]), uri)
                segments.append((start, stop, uri))
            output = storage.join(root, f"{clip_id}.mp4")
            strip = strip_uri(root, clip_id, fingerprint) if strips_by_assembler and i % 2 == 0 else None
            encoded = assemble_clip(segments, frames, FPS, speech(seconds), output, strip_uri=strip)
            outcome = reference_outcome(REFERENCE_OF[kind], seconds)
            name = image_name(clip_id, fingerprint)  # as preprocessing writes them (proof.write_clip_images)
            storage.write_atomic(storage.join(root, REPORT_FOLDER, REFS_FOLDER, name), outcome["ref"])
            storage.write_atomic(storage.join(root, REPORT_FOLDER, OVERLAYS_FOLDER, name), outcome["overlay"])
            rows.append(dict(row, status="done", output=output, frames=encoded["frames"], seconds=encoded["seconds"],
                             assemble_seconds=0.8, **qc.qc_columns(encoded["qc"]), **outcome["columns"]))
    results = pd.DataFrame(rows, columns=list(RESULT_COLUMNS))
    _write_results(root, results)
    return results


def _write_results(root: str, results: pd.DataFrame) -> None:
    buffer = io.BytesIO()
    results.to_parquet(buffer, index=False)
    storage.write_atomic(storage.join(root, "results.parquet"), buffer.getvalue())


def build_large_output_root(root: str, n: int = 10_000, *, seed: int = 0) -> pd.DataFrame:
    """``n`` result rows in a local ``root``: the few real clips of build_output_root, each hard-linked under
    many clip ids (with their strips, as the assembler would have written them), ~5 % failed, QC scores
    spread so that sorting and the flagged filter have work to do."""
    base = build_output_root(root, strips_by_assembler=False)
    report.write_report(root)  # makes the base clips' strips (the assembler's job in a real run)
    done = base[base["status"] == "done"].to_dict("records")
    failed = base[base["status"] == "failed"].to_dict("records")[0]
    strips = Path(root) / REPORT_FOLDER / STRIPS_FOLDER
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n):
        clip_id = f"batch-{i:05d}"
        fingerprint = f"{i:016x}{'cd' * 24}"
        if rng.random() < 0.05:
            rows.append(dict(failed, row=i, clip_id=clip_id, fingerprint=fingerprint, error=f"row {i}: {failed['error']}"))
            continue
        source = done[i % len(done)]
        output = str(Path(root) / f"{clip_id}.mp4")
        os.link(source["output"], output)
        os.link(strips / strip_name(source["clip_id"], source["fingerprint"]),
                strips / strip_name(clip_id, fingerprint))
        for folder in (REFS_FOLDER, OVERLAYS_FOLDER):
            pictures = Path(root) / REPORT_FOLDER / folder
            os.link(pictures / image_name(source["clip_id"], source["fingerprint"]),
                    pictures / image_name(clip_id, fingerprint))
        score = float(rng.gamma(1.2, 0.3)) if not source["qc_flagged"] else source["qc_score"]
        rows.append(dict(source, row=i, clip_id=clip_id, fingerprint=fingerprint, output=output, qc_score=score))
    results = pd.DataFrame(rows, columns=list(RESULT_COLUMNS))
    _write_results(root, results)
    return results
