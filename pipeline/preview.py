"""`cli.py preview`: try one clip in the browser before a big run (Gradio 6).

An image, an audio file and optionally poses (a driving video, one `.npz`, or the official per-frame `.npy` files), a preset and
the main parameters → as soon as the inputs are given, the proof sheet's view of them (`pipeline.proof`: the framed
reference with the poses drawn over it, the reference's verdict and warnings), before anything renders; then the one-clip
pipeline (`pipeline.EchoMimicV2Pipeline`, the same steps as the batch job) renders it with a progress bar per segment;
the page shows the video and its QC flags, and "Add to manifest" appends the row (inputs copied beside the manifest, so
the row stays valid after the preview closes). Steps, guidance and size start at the chosen preset's values.

Tiny preset without weights (the demo model trained on drawn figures: blurry, lip sync on drawings only), the official presets with `--weights`.
"""
from __future__ import annotations

import io
import math
import re
import shutil
import tempfile
import threading
import uuid
from collections.abc import Callable
from pathlib import Path

import pandas as pd

from pipeline import storage

# What a manifest row holds for a preview clip: the schema's columns (manifests/SCHEMA.md).
ROW_COLUMNS = ("clip_id", "image", "audio", "pose", "seed", "steps", "guidance", "fps", "width", "height")
_SAFE_SUFFIX = re.compile(r"^\.[A-Za-z0-9]{1,8}$")


# ---------------------------------------------------------------------------------------------------
# The manifest button


def _input_files(pose_files: list[str] | None) -> str | None:
    """The pose argument for uploaded files: one `.npz` or one driving video as it is, `.npy` frames as a
    folder of them."""
    from pipeline.driving_video import is_video_name

    if not pose_files:
        return None
    paths = [Path(p) for p in pose_files]
    if len(paths) == 1 and (paths[0].suffix.lower() == ".npz" or is_video_name(paths[0].name)):
        return str(paths[0])
    if not all(p.suffix.lower() == ".npy" for p in paths):
        raise ValueError("poses: upload one .npz file, one driving video or the per-frame .npy files (0.npy, 1.npy, …)")
    folder = Path(tempfile.mkdtemp(prefix="preview-poses-"))
    for path in paths:
        shutil.copyfile(path, folder / path.name)  # Gradio keeps an upload's own name (``…/<hash>/0.npy``)
    return str(folder)


def append_to_manifest(manifest: str, row: dict, *, assets: str = "assets") -> dict:
    """Append ``row`` (``ROW_COLUMNS``; ``image``/``audio``/``pose`` as local paths) to the Parquet manifest
    ``manifest`` (created if missing; any storage URI). Its input files are copied to
    ``<manifest folder>/<assets>/<clip_id>/`` and referenced relative to the manifest, so the row stays valid
    after the preview's temporary files are gone. The whole manifest is checked as `validate` checks its
    schema; a row it would refuse (bad or duplicate clip_id, a value out of range) raises ValueError and
    nothing is written. Returns the row as written."""
    from pipeline.manifest import manifest_dir, parse_manifest, read_manifest

    clip_id = str(row.get("clip_id") or "").strip()
    existing = read_manifest(manifest) if storage.exists(manifest) else pd.DataFrame(columns=list(ROW_COLUMNS))
    unknown = set(existing.columns) - set(ROW_COLUMNS)
    if unknown:
        raise ValueError(f"{manifest}: unknown column(s) {sorted(unknown)}")
    written = {name: row.get(name) for name in ROW_COLUMNS}
    written["clip_id"] = clip_id
    base = manifest_dir(manifest)
    for name in ("image", "audio"):
        written[name] = f"{assets}/{clip_id}/{name}{_suffix(row[name])}"
    if row.get("pose"):
        pose = Path(row["pose"])
        written["pose"] = f"{assets}/{clip_id}/pose" + (pose.suffix.lower() if pose.is_file() else "")  # .npz or a video
    candidate = pd.concat([existing, pd.DataFrame([written], columns=list(ROW_COLUMNS))], ignore_index=True)
    candidate = _typed(candidate)
    _, problems = parse_manifest(candidate, base_uri=base)
    mine = [p for p in problems if p.row in (None, len(candidate) - 1)]
    if mine:
        raise ValueError("; ".join(str(p) for p in mine))
    # Inputs first, then the manifest: a crash in between leaves unused files, never a row without its inputs.
    for name in ("image", "audio"):
        storage.write_atomic(storage.join(base, *written[name].split("/")), Path(row[name]))
    if row.get("pose"):
        pose = Path(row["pose"])
        if pose.is_file():
            storage.write_atomic(storage.join(base, *written["pose"].split("/")), pose)
        else:
            for frame in sorted(pose.glob("*.npy")):
                storage.write_atomic(storage.join(base, *written["pose"].split("/"), frame.name), frame)
    buffer = io.BytesIO()
    candidate.to_parquet(buffer, index=False)
    storage.write_atomic(manifest, buffer.getvalue())
    return written


def _suffix(path: str) -> str:
    suffix = Path(str(path)).suffix.lower()
    return suffix if _SAFE_SUFFIX.match(suffix) else ""


def _typed(frame: pd.DataFrame) -> pd.DataFrame:
    """Nullable integer / float columns, as the schema's types want them in Parquet."""
    frame = frame.copy()
    for name in ("seed", "steps", "width", "height"):
        frame[name] = pd.array([None if _missing(v) else int(v) for v in frame[name]], dtype="Int64")
    for name in ("guidance", "fps"):
        frame[name] = pd.array([None if _missing(v) else float(v) for v in frame[name]], dtype="Float64")
    for name in ("clip_id", "image", "audio", "pose"):
        frame[name] = frame[name].astype("object").where(frame[name].notna(), None)
    return frame


def _missing(value) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value)) or value is pd.NA


# ---------------------------------------------------------------------------------------------------
# Rendering


class Pipelines:
    """One loaded one-clip pipeline per preset, built on first use (the official ones load the weights once)."""

    def __init__(self, weights: str | None = None, device: str | None = None):
        self.weights, self.device = weights, device
        self._loaded: dict[str, object] = {}
        self._lock = threading.Lock()

    @property
    def presets(self) -> list[str]:
        from echomimic2.presets import PRESETS

        return [name for name, preset in PRESETS.items() if preset.full_size == bool(self.weights)]

    def get(self, preset: str):
        from echomimic2.presets import PRESETS
        from pipeline import EchoMimicV2Pipeline

        with self._lock:
            if preset not in self._loaded:
                if not PRESETS[preset].full_size:
                    self._loaded[preset] = EchoMimicV2Pipeline.tiny()
                else:
                    import torch

                    device = self.device or ("cuda" if torch.cuda.is_available() else "cpu")
                    self._loaded[preset] = EchoMimicV2Pipeline.from_official(self.weights, preset=preset, device=device)
            return self._loaded[preset]


def render_clip(pipelines: Pipelines, preset: str, image: str, audio: str, pose: str | None, *, fps: float,
                steps: int | None, guidance: float | None, seed: int, size: int | None, out_dir: str,
                on_segment: Callable[[int, int], None] | None = None) -> tuple[str, dict]:
    """Render and save one clip; returns (MP4 path, what `save` returned: frames, seconds, bytes, qc)."""
    pipe = pipelines.get(preset)

    def callback(info) -> None:
        if on_segment:
            on_segment(info.i + 1, info.total)

    out = pipe(image, audio, pose, width=size, height=size, fps=fps, steps=steps, guidance=guidance, seed=seed,
               callback=callback, progress=False)
    path = str(Path(out_dir) / f"preview-{seed}-{uuid.uuid4().hex[:8]}.mp4")
    saved = out.save(path)
    return path, dict(saved or {})


def proof_of_inputs(image: str, audio: str, pose: str | None, *, preset: str, size: int | None, fps: float,
                    seed: int, dest: str) -> tuple[str | None, str]:
    """The proof sheet's card for the preview's inputs, before rendering: (the overlay picture's path, or None
    when the inputs are refused; a few lines of Markdown with the verdict, warnings, facts or the error)."""
    from pipeline.manifest import ClipSpec
    from pipeline.proof import proof_row, proof_settings

    spec = ClipSpec(row=0, clip_id="preview", image=str(image), audio=str(audio), pose=pose, fps=float(fps),
                    width=size, height=size, seed=seed)
    card = proof_row(spec, proof_settings(preset), dest)
    return (str(Path(dest) / card["overlay"]) if card["overlay"] else None), proof_markdown(card)


# (fact, part of it, label): what the preview says under its proof picture.
PROOF_FACTS = (("framing", None, "framing"), ("framing_fill", None, "fill"), ("pose_source", None, "poses"),
               ("pose_length", "action", "pose length"), ("pose_align_applied", None, "alignment"),
               ("pose_align_rms_px", None, "alignment error (px)"), ("hands", "in_frame", "hands in frame"),
               ("size", None, "size"), ("frames_shown", None, "frames shown"))


def proof_markdown(card: dict) -> str:
    """A proof card as Markdown: the verdict and warnings first, then what framing and posing did."""
    if card["status"] == "failed":
        return f"**refused**: {card['error']}"
    verdict = (card["verdict"] or "unknown").replace("_", " ")
    lines = [f"**verdict: {verdict}**" + (" (OK)" if card["verdict"] == "half_body" else "")]
    lines += [f"- ⚠ `{w['kind']}`: {w['message']}" for w in card["warnings"]]
    shown = []
    for key, part, label in PROOF_FACTS:
        value = card["facts"].get(key)
        value = value.get(part) if part and isinstance(value, dict) else value
        if value is not None:
            shown.append(f"{label}: {value}")
    return "\n".join(lines) + "\n\n" + " · ".join(shown)  # a paragraph of its own, not the last warning's


def qc_markdown(saved: dict) -> str:
    """The clip's QC report as a few lines (the assembler's report, when `save` returns one)."""
    report = saved.get("qc")
    head = f"**{saved.get('frames', '?')} frames, {saved.get('seconds', 0):.2f} s**"
    if not report:
        return head
    if report["flagged"]:
        return head + f" · QC score {report['score']:.2f}, **flagged**:\n" + "\n".join(f"- {r}" for r in report["reasons"])
    return head + f" · QC score {report['score']:.2f}: no flags"


# ---------------------------------------------------------------------------------------------------
# The app


SIZES = (128, 256, 512, 768)


def preset_values(name: str) -> dict:
    """What the preview's Steps, Guidance and Size fields show for a preset: its own values."""
    from echomimic2.presets import PRESETS

    preset = PRESETS[name]
    return dict(steps=preset.steps, guidance=preset.guidance, size=preset.width,
                sizes=sorted({*SIZES, preset.width}))


def _unless_default(value, default):
    """None for the preset's own value (a manifest row then follows the preset), else the value."""
    return None if value is None or value == default else value


def build_app(pipelines: Pipelines, *, manifest: str | None = None):
    import gradio as gr

    out_dir = tempfile.mkdtemp(prefix="preview-out-")
    presets = pipelines.presets
    first = preset_values(presets[0])
    last: dict = {}  # the inputs of the last rendered clip, for the manifest button

    def on_preset(name):
        values = preset_values(name)
        return (gr.update(value=values["steps"]), gr.update(value=values["guidance"]),
                gr.update(choices=values["sizes"], value=values["size"]))

    def check(image, audio, poses, preset, size, fps, seed):
        """The framed reference with the poses over it, verdict and warnings: before the render button."""
        if not image or not audio:
            return None, "Give a reference image and an audio file to see how they will be framed and posed."
        try:
            pose = _input_files(poses)
        except ValueError as exc:
            return None, f"**refused**: {exc}"
        return proof_of_inputs(image, audio, pose, preset=preset, size=int(size) if size else None, fps=float(fps),
                               seed=int(seed or 0), dest=tempfile.mkdtemp(prefix="proof-", dir=out_dir))

    def run(image, audio, poses, preset, size, fps, steps, guidance, seed, progress=gr.Progress()):
        if not image or not audio:
            raise gr.Error("Give a reference image and an audio file.")
        try:
            pose = _input_files(poses)
        except ValueError as exc:
            raise gr.Error(str(exc)) from None
        defaults = preset_values(preset)
        steps = _unless_default(int(steps) if steps else None, defaults["steps"])
        guidance = _unless_default(float(guidance) if guidance is not None else None, defaults["guidance"])
        size = _unless_default(int(size) if size else None, defaults["size"])
        progress(0, desc="preparing")

        def on_segment(done: int, total: int) -> None:
            progress((done, total), desc=f"segment {done} of {total}", unit="segments")

        try:
            video, saved = render_clip(pipelines, preset, image, audio, pose, fps=float(fps), steps=steps,
                                       guidance=guidance, seed=int(seed), size=size, out_dir=out_dir, on_segment=on_segment)
        except ValueError as exc:  # the pipeline's input checks name the argument
            raise gr.Error(str(exc)) from None
        last.clear()
        last.update(image=image, audio=audio, pose=pose, seed=int(seed), steps=steps, guidance=guidance, fps=float(fps),
                    width=size, height=size)
        return video, qc_markdown(saved)

    def add(clip_id, manifest_path):
        if not last:
            raise gr.Error("Render a clip first.")
        if not manifest_path:
            raise gr.Error("Name a manifest file (.parquet).")
        try:
            written = append_to_manifest(manifest_path, dict(last, clip_id=clip_id))
        except ValueError as exc:
            raise gr.Error(str(exc)) from None
        rows = len(pd.read_parquet(io.BytesIO(storage.read_bytes(manifest_path, max_bytes=1 << 28))))
        return f"added **{written['clip_id']}** to `{manifest_path}` ({rows} row(s))"

    with gr.Blocks(title="EchoMimic V2 preview") as app:
        gr.Markdown("## EchoMimic V2 — one-clip preview\nThe same steps as the batch job."
                    + ("" if pipelines.weights else " **Tiny preset: a demo model trained on drawn figures, not people: blurry; its mouth follows the speech, its hands the poses.**"))
        with gr.Row():
            with gr.Column():
                image = gr.Image(type="filepath", label="Reference image", elem_id="image", height=300)
                audio = gr.Audio(type="filepath", label="Speech audio", elem_id="audio")
                poses = gr.File(file_count="multiple", file_types=[".npz", ".npy", ".mp4", ".mov", ".webm", ".mkv"],
                                type="filepath", label="Poses (optional): a driving video, one .npz or the per-frame "
                                ".npy files", elem_id="poses")
                with gr.Row():
                    preset = gr.Dropdown(presets, value=presets[0], label="Preset", elem_id="preset")
                    size = gr.Dropdown(first["sizes"], value=first["size"], label="Size (square, px)", elem_id="size")
                with gr.Row():
                    fps = gr.Slider(1, 60, value=24, step=1, label="fps", elem_id="fps")
                    steps = gr.Number(value=first["steps"], precision=0, minimum=1, label="Steps", elem_id="steps")
                    guidance = gr.Number(value=first["guidance"], minimum=0, label="Guidance", elem_id="guidance")
                    seed = gr.Number(value=0, precision=0, label="Seed", elem_id="seed")
                render = gr.Button("Render", variant="primary", elem_id="render")
            with gr.Column():
                proof_image = gr.Image(label="Before rendering: the framed reference, the poses drawn over it "
                                       "(start, middle, end, largest gesture)", elem_id="proof", interactive=False,
                                       height=170, type="filepath")
                proof_text = gr.Markdown(elem_id="verdict")
                video = gr.Video(label="Result", elem_id="result", autoplay=False, height=360)
                qc_text = gr.Markdown(elem_id="qc")
                with gr.Row():
                    clip_id = gr.Textbox(label="clip_id", value="preview-001", elem_id="clip_id")
                    manifest_path = gr.Textbox(label="Manifest (.parquet)", value=manifest or "manifest.parquet",
                                               elem_id="manifest")
                add_button = gr.Button("Add to manifest", elem_id="add")
                added = gr.Markdown(elem_id="added")
        preset.change(on_preset, preset, [steps, guidance, size])
        checked = [image, audio, poses, preset, size, fps, seed]
        for changed in (image, audio, poses, preset, size):
            changed.change(check, checked, [proof_image, proof_text])
        fps.release(check, checked, [proof_image, proof_text])
        render.click(run, [image, audio, poses, preset, size, fps, steps, guidance, seed], [video, qc_text])
        add_button.click(add, [clip_id, manifest_path], added)
    return app


def preview_command(weights: str | None = None, manifest: str | None = None, host: str = "127.0.0.1",
                    port: int = 7860, share: bool = False) -> int:
    try:
        import gradio  # noqa: F401
    except ImportError:
        print("the preview needs gradio: .venv/bin/pip install -r requirements-test.txt && "
              ".venv/bin/pip install --no-deps -r requirements-test-nodeps.txt")
        return 2
    app = build_app(Pipelines(weights), manifest=manifest)
    app.queue().launch(server_name=host, server_port=port, share=share)
    return 0
