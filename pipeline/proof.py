"""The proof sheet: what the job will do to each row's reference and poses, seen before any GPU time.

`cli.py proof MANIFEST --to DIR` runs the job's own first steps on every row — its inputs read and checked as
preprocessing reads them (`preprocess.read_clip_inputs`, `media.decode_reference` / `decode_audio`, the pose
sources), the reference framed and the poses chosen and aligned (`steps.reference_and_poses`) and the
reference triaged — and writes one static page with the review page's machinery (`pipeline.report`): per row
the reference, the framed reference with the poses drawn over it at a few frames (start, middle, end and the
frame of the largest gesture), the verdict and its warnings, or the error that refuses the row. CPU only, no
model: the frame count comes from the audio's duration (as `plan` counts it), not from whisper features.

    <dest>/index.html
    <dest>/refs/<name>.jpg        the reference as given (REF_HEIGHT px high)
    <dest>/overlays/<name>.jpg    the framed reference with the poses over it, one panel per chosen frame

The review page shows the same two pictures per clip: preprocessing writes them once under
``<output>/_report/`` (`write_clip_images`), named like the contact strips (clip id and fingerprint).
"""
from __future__ import annotations

import multiprocessing
import os
import time
import warnings
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass

import numpy as np

from pipeline import storage
from pipeline.ledger import OVERLAYS_FOLDER, REFS_FOLDER, REPORT_FOLDER, image_name

REF_HEIGHT = 160  # px of the reference thumbnail
PANEL_HEIGHT = 160  # px of each overlay panel
JPEG_QUALITY = 82
POSE_DIM = 0.55  # the framed reference is darkened under the drawn poses so they stand out


@dataclass
class ProofSummary:
    page: str  # URI of index.html
    rows: int
    refused: int  # rows whose inputs the job would refuse
    warned: int  # rows with at least one warning
    seconds: float
    row_seconds: list[float]  # each proofed row's own work (reading, framing, posing, triage, pictures)...
    first_row_seconds: list[float]  # ...but each worker's first row, which also loads the detector and its imports


# ---------------------------------------------------------------------------------------------------
# Pictures


def gesture_frames(poses: list[dict]) -> list[tuple[str, int]]:
    """(label, frame) of the frames a proof shows: start, middle, end, and the frame whose hands are farthest
    from where they rest (their median over the clip); when that is one of the three, its label says so."""
    n = len(poses)
    if n == 0:
        return []
    chosen = [("start", 0), ("middle", n // 2), ("end", n - 1)]
    hands = np.stack([np.asarray(p["hands"], dtype=np.float64).reshape(2, 21, 2) for p in poses])
    scores = np.stack([np.asarray(p["hands_score"], dtype=np.float64).reshape(2, 21) for p in poses])
    seen = (scores > 0) & (hands >= 0).all(axis=-1)
    if seen.any():
        centres = np.where(seen[..., None], hands, np.nan)
        with np.errstate(all="ignore"), warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # a hand never seen: all-NaN slices
            per_frame = np.nanmean(centres, axis=2)  # (n, 2 hands, 2): each hand's centre
            rest = np.nanmedian(per_frame, axis=0)
            distance = np.nansum(np.linalg.norm(per_frame - rest, axis=-1), axis=1)
        distance = np.nan_to_num(distance, nan=0.0)
        largest = int(np.argmax(distance))
        if distance[largest] > 0:
            same = [k for k, (_, i) in enumerate(chosen) if i == largest]
            if same:  # the largest gesture is one of the three: say so on that panel
                chosen[same[0]] = (chosen[same[0]][0] + ", largest gesture", largest)
            else:
                chosen.append(("largest gesture", largest))
    unique: dict[int, str] = {}
    for label, i in chosen:
        unique.setdefault(i, label)  # a clip of one or two frames
    return [(label, i) for i, label in unique.items()]


def _jpeg(image_rgb: np.ndarray) -> bytes:
    import cv2

    ok, data = cv2.imencode(".jpg", np.ascontiguousarray(image_rgb[..., ::-1]), [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY])
    if not ok:
        raise ValueError("JPEG encoding failed")
    return data.tobytes()


def _to_height(image_rgb: np.ndarray, height: int) -> np.ndarray:
    import cv2

    h, w = image_rgb.shape[:2]
    width = max(1, round(w * height / h))
    return cv2.resize(image_rgb, (width, height), interpolation=cv2.INTER_AREA if h > height else cv2.INTER_LINEAR)


def overlay_panels(framed: np.ndarray, poses: list[dict]) -> tuple[np.ndarray, list[tuple[str, int]]]:
    """The framed reference with the drawn poses (the model's hand conditioning) over it at the gesture
    frames, side by side, each PANEL_HEIGHT px high with its label and frame number; and the frames shown."""
    import cv2

    from echomimic2.pose import render_pose

    height, width = framed.shape[:2]
    frames = gesture_frames(poses)
    panels = []
    for label, index in frames or [("no poses", -1)]:
        panel = framed.copy()
        if index >= 0:
            drawn = render_pose(poses[index], width, height)
            thicken = max(1, round(2 * height / PANEL_HEIGHT) - 1)  # bones stay visible once shrunk to the panel
            drawn = cv2.dilate(drawn, np.ones((thicken, thicken), np.uint8)) if thicken > 1 else drawn
            mask = drawn.any(axis=2)
            panel = (panel * POSE_DIM).astype(np.uint8)
            panel[mask] = drawn[mask]
        panel = _to_height(panel, PANEL_HEIGHT)
        text = label if index < 0 else f"{label} #{index}"
        for colour, thickness in (((0, 0, 0), 3), ((255, 255, 255), 1)):  # a label readable on any background
            cv2.putText(panel, text, (5, 14), cv2.FONT_HERSHEY_SIMPLEX, 0.42, colour, thickness, cv2.LINE_AA)
        panels.append(panel)
    gap = np.full((PANEL_HEIGHT, 3, 3), 255, dtype=np.uint8)
    joined = [part for panel in panels for part in (panel, gap)][:-1]
    return np.concatenate(joined, axis=1), frames


def clip_images(reference_rgb: np.ndarray, framed: np.ndarray, poses: list[dict]) -> tuple[bytes, bytes, list]:
    """(reference thumbnail JPEG, overlay strip JPEG, the frames shown as (label, index))."""
    strip, frames = overlay_panels(framed, poses)
    return _jpeg(_to_height(reference_rgb, REF_HEIGHT)), _jpeg(strip), frames


def write_clip_images(output: str, clip_id: str, fingerprint: str, reference_rgb: np.ndarray, framed: np.ndarray,
                      poses: list[dict]) -> bool:
    """Preprocessing's hook: the review page's two pictures of a clip under ``<output>/_report/`` (refs/,
    overlays/). Made here, where the reference, its framing and the poses are already in memory, so the
    report never reads or detects anything again. A failure costs the pictures only, never the clip."""
    try:
        reference, overlay, _ = clip_images(reference_rgb, framed, poses)
        name = image_name(clip_id, fingerprint)
        storage.write_atomic(storage.join(output, REPORT_FOLDER, REFS_FOLDER, name), reference)
        storage.write_atomic(storage.join(output, REPORT_FOLDER, OVERLAYS_FOLDER, name), overlay)
        return True
    except Exception:  # noqa: BLE001 - pictures for the review page must never fail a clip
        return False


# ---------------------------------------------------------------------------------------------------
# One row


def frames_of(waveform: np.ndarray, fps: float) -> int:
    """The clip's frames from its decoded audio, as `plan` counts them (the render's count from whisper
    features may be a frame shorter: it makes no difference to the frames a proof shows)."""
    from pipeline.media import SAMPLE_RATE

    frames = round(len(waveform) / SAMPLE_RATE * fps)
    if frames < 1:
        raise ValueError(f"audio is {len(waveform) / SAMPLE_RATE:.3f} s long: too short for one frame at {fps:g} fps")
    return frames


_DETECTOR: list = []  # this process's people detector, made on first use (the job's workers keep one each)


def _people_detector():
    from pipeline.reference_triage import people_detector

    if not _DETECTOR:
        _DETECTOR.append(people_detector())
    return _DETECTOR[0]


def proof_row(spec, settings, dest: str) -> dict:
    """One manifest row's card: its pictures written under ``dest``, verdict, warnings, facts, or its error.
    The reference is judged as the job judges it (`reference_triage.judge_reference`: detected once, and
    remembered under ``settings.output`` when there is one, so the run does not detect it again)."""
    from pipeline.media import decode_audio, decode_reference
    from pipeline.preprocess import RowRefused, read_clip_inputs, refusing, render_params
    from pipeline.reference_triage import judge_reference
    from pipeline.report import card_facts, warnings_of
    from pipeline.steps import reference_and_poses

    started = time.perf_counter()
    card = dict(clip_id=spec.clip_id, row=spec.row, status="ready", error=None, frames=None, seconds=None,
                verdict=None, warnings=[], facts={}, ref=None, overlay=None)
    try:
        inputs = read_clip_inputs(spec, settings)
        params = render_params(spec, settings)
        with refusing(spec, "image", spec.image):
            whole = decode_reference(inputs.image, settings.limits, _name(spec.image))
        name = image_name(spec.clip_id)
        storage.write_atomic(storage.join(dest, REFS_FOLDER, name), _jpeg(_to_height(whole, REF_HEIGHT)))
        card["ref"] = f"{REFS_FOLDER}/{name}"
        with refusing(spec, "image" if spec.person is None else "person", spec.image):
            detection, _, _ = judge_reference(spec, settings, params, inputs.image, whole, _people_detector())
        with refusing(spec, "audio", spec.audio):
            waveform = decode_audio(inputs.audio, settings.limits, _name(spec.audio))
            frames = frames_of(waveform, params.fps)
        card.update(frames=frames, seconds=round(frames / params.fps, 3))
        with refusing(spec, "pose", spec.pose):
            given, source_info = (None, {}) if inputs.pose is None else inputs.pose.sequence(params.fps, frames,
                                                                                             settings.limits)
            framed, poses, poses_info = reference_and_poses(whole, params, frames, poses=given, waveform=waveform,
                                                            detection=detection)
            poses_info = dict(poses_info, **source_info)
            strip, shown = overlay_panels(framed, poses)
        storage.write_atomic(storage.join(dest, OVERLAYS_FOLDER, name), _jpeg(strip))
        card["overlay"] = f"{OVERLAYS_FOLDER}/{name}"
        card.update(verdict=poses_info.get("verdict"), warnings=warnings_of({}, poses_info),
                    facts=dict(card_facts(poses_info), size=f"{params.width}x{params.height}",
                               frames_shown=", ".join(f"{label} #{i}" for label, i in shown)))
    except RowRefused as refused:
        card.update(status="failed", error=str(refused))
    card["work_seconds"] = round(time.perf_counter() - started, 3)
    return card


def _name(uri: str) -> str:
    return uri.rstrip("/").rsplit("/", 1)[-1]


def _proof_rows(args) -> list[dict]:
    specs, settings, dest = args
    cards = [proof_row(spec, settings, dest) for spec in specs]
    for i, card in enumerate(cards):
        card["first_in_worker"] = i == 0
    return cards


# ---------------------------------------------------------------------------------------------------
# The sheet


def load_rows(manifest: str, *, preset: str, allow_http: bool, input_root: str | None, output: str | None = None):
    """(rows to proof, a failed card per row the schema refuses, the job's settings for ``preset``).
    A manifest that cannot be read at all raises `storage.InputError`."""
    from pipeline.manifest import parse_manifest, process_local_problems, read_manifest

    try:
        frame = read_manifest(storage.check_uri(manifest, allow_http=allow_http))
    except FileNotFoundError:
        raise storage.InputError(f"manifest not found: {storage.redact(manifest)}") from None
    specs, problems = parse_manifest(frame)
    whole = [p for p in problems if p.row is None]
    if whole:
        raise storage.InputError("; ".join(str(p) for p in whole))
    problems += process_local_problems(specs)
    by_row: dict[int, list] = {}
    for problem in problems:
        by_row.setdefault(problem.row, []).append(problem)
    refused = [dict(clip_id=found[0].clip_id or f"row {row}", row=row, status="failed",
                    error="; ".join(str(p) for p in found), frames=None, seconds=None, verdict=None, warnings=[],
                    facts={}, ref=None, overlay=None) for row, found in sorted(by_row.items())]
    return [s for s in specs if s.row not in by_row], refused, proof_settings(preset, allow_http=allow_http,
                                                                              input_root=input_root, output=output)


def proof_settings(preset: str, *, allow_http: bool = False, input_root: str | None = None, output: str | None = None):
    """The job's settings as far as reading, judging, framing and posing a row need them (no model). ``output``:
    the run's output root, where detections are remembered for the run (None: nothing remembered)."""
    from pipeline.rows import JobSettings
    from pipeline.segments import DEFAULT_OVERLAP_FRAMES, DEFAULT_SEGMENT_FRAMES

    return JobSettings(output=output, preset=preset, weights=None, model_identity="", segment_frames=DEFAULT_SEGMENT_FRAMES,
                       overlap_frames=DEFAULT_OVERLAP_FRAMES, allow_http=allow_http,
                       input_root=None if input_root is None else str(input_root))


def write_proof(manifest: str, to: str, *, preset: str, allow_http: bool = False, input_root: str | None = None,
                workers: int | None = None, title: str | None = None, output: str | None = None) -> ProofSummary:
    """Check, judge, frame and pose every row of ``manifest`` as the job would with ``preset``, and write the
    proof sheet to ``to``. Rows the schema refuses get a card with the reason; ``workers`` processes share the
    rows (default: one per CPU; each loads the person detector once). ``output``: the run's output root, where
    the detections are remembered for the run."""
    from pipeline.report import render_page, resolved_dest

    started = time.perf_counter()
    specs, refused_cards, settings = load_rows(manifest, preset=preset, allow_http=allow_http, input_root=input_root,
                                               output=output)
    dest = resolved_dest(to)
    workers = max(1, min(workers or os.cpu_count() or 1, len(specs) or 1))
    chunks = [specs[i::workers] for i in range(workers)]
    if workers == 1:
        cards = _proof_rows((specs, settings, dest))
    else:
        # spawn, not fork: the parent may hold MediaPipe's or torch's threads, which a fork would copy mid-flight
        with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn")) as pool:
            cards = [card for chunk in pool.map(_proof_rows, [(c, settings, dest) for c in chunks]) for card in chunk]
    timed = [(card.pop("first_in_worker"), card.pop("work_seconds")) for card in cards]
    cards = sorted(cards + refused_cards, key=lambda c: c["row"] if c["row"] is not None else -1)
    page = render_page(cards, title=title or f"Proof: {storage.redact(manifest)} ({preset})", kind="proof")
    page_uri = storage.join(dest, "index.html")
    storage.write_atomic(page_uri, page.encode())
    return ProofSummary(page=page_uri, rows=len(cards), refused=sum(c["status"] == "failed" for c in cards),
                        warned=sum(bool(c["warnings"]) for c in cards), seconds=time.perf_counter() - started,
                        row_seconds=[t for first, t in timed if not first],
                        first_row_seconds=[t for first, t in timed if first])


def proof_command(manifest: str, to: str, preset: str, allow_http: bool = False, input_root: str | None = None,
                  workers: int | None = None, output: str | None = None) -> int:
    """`cli.py proof`: 0 when every row is ready without warnings, 1 when some row is refused or warned
    about, 2 when the manifest cannot be read."""
    from rich.console import Console

    console = Console(highlight=False, soft_wrap=True)
    try:
        summary = write_proof(manifest, to, preset=preset, allow_http=allow_http, input_root=input_root, workers=workers,
                              output=output)
    except Exception as exc:  # noqa: BLE001 - one line, secrets masked
        console.print(f"error: {storage.redact(manifest)}: {storage.describe_error(exc)}", markup=False)
        return 2
    console.print(f"proof sheet: {storage.redact(summary.page)} ({summary.rows} row(s): {summary.refused} refused, "
                  f"{summary.warned} with warnings; {summary.seconds:.1f} s)", markup=False)
    return 1 if summary.refused or summary.warned else 0

