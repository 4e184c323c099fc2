"""One clip in Python: image + audio (+ poses) → frames, with no Ray and no manifest.

    pipe = EchoMimicV2Pipeline.tiny()                    # or .from_official(weights_dir, preset="acc")
    out = pipe("person.png", "speech.wav")                      # EchoMimicV2Output
    out.save("clip.mp4")                                        # H.264 + AAC, the job's encoder

`__call__` runs the same steps (`pipeline.steps`) as the job's stages, in the same order, so for the same
inputs, parameters and seed its frames are the frames the Ray job encodes.
"""
from __future__ import annotations

import io
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from echomimic2.presets import DEFAULT_WITH_WEIGHTS
from pipeline.manifest import Limits
from pipeline.media import SAMPLE_RATE, decode_audio, decode_reference
from pipeline.params import DEFAULT_FPS, DEFAULT_GESTURE, DEFAULT_POSE_ALIGN, DEFAULT_SEED, RenderParams
from pipeline.pose_sources import PoseInput, read_pose_input
from pipeline.segments import DEFAULT_OVERLAP_FRAMES, DEFAULT_SEGMENT_FRAMES
from pipeline.steps import (
    AudioFeatures,
    audio_features,
    plan_segments,
    reference_and_poses,
    render_frames,
    segment_inputs,
    stitch,
)

__all__ = ["EchoMimicV2Output", "EchoMimicV2Pipeline", "SegmentStep"]


@dataclass
class SegmentStep:
    """What `callback` gets after each rendered segment."""

    i: int  # 0-based index of the segment
    total: int  # segments in the clip
    start: int  # global frame range [start, stop)
    stop: int
    frames: np.ndarray  # the segment's rendered frames, uint8 (stop - start, H, W, 3), before the cross-fade


@dataclass
class EchoMimicV2Output:
    frames: np.ndarray  # uint8 (n, H, W, 3)
    fps: float
    audio: np.ndarray  # float32 mono at `sample_rate`
    sample_rate: int = SAMPLE_RATE
    segments: list[tuple[int, int]] = field(default_factory=list)  # the frame ranges rendered
    audio_file: bytes = field(default=b"", repr=False)  # what `save` muxes: the given file, or a WAV of the waveform
    poses_info: dict = field(default_factory=dict)  # verdict, warnings, framing, pose source, alignment (as the job's results)

    @property
    def verdict(self) -> str | None:
        """The reference's triage verdict (echomimic2.triage): "half_body" when it suits the model."""
        return self.poses_info.get("verdict")

    @property
    def warnings(self) -> list[dict]:
        """[{kind, message}]: what about the reference or the poses may look wrong, as the job's results say."""
        return self.poses_info.get("warnings", [])

    def save(self, path: str | Path) -> dict:
        """Write an H.264 yuv420p + AAC MP4 (any fsspec URL), atomically, with the job's encoder; the
        audio is trimmed or padded to the video's duration. Returns dict(frames, seconds, bytes, qc): the
        same QC report the job stores (its seam check looks at the segment joins)."""
        from pipeline.assemble import array_chunks, assemble_clip, segment_joins

        return assemble_clip([(0, len(self.frames), self.frames)], len(self.frames), self.fps, self.audio_file,
                             str(path), read_segment=array_chunks, joins=segment_joins(self.segments),
                             reference_face=self.poses_info.get("reference_face_box"))


@dataclass
class DecodedClip:
    """Inputs as `check_inputs` left them: decoded, and the parameters resolved against the preset."""

    reference: np.ndarray  # uint8 RGB: the whole image, then (step 3) framed to (height, width, 3)
    waveform: np.ndarray  # float32 16 kHz mono
    audio_file: bytes
    poses: list[dict] | None  # given as dicts, or parsed from pose files; None: from a driving video or gestures
    params: RenderParams
    pose_input: PoseInput | None = None  # a pose file, folder or driving video as its source read it
    detection: object = None  # the reference's echomimic2.triage.PeopleDetection (None: no mediapipe)
    triage: object = None  # its echomimic2.triage.ReferenceTriage at the output size


class EchoMimicV2Pipeline:
    """The model, the audio encoder and a preset's defaults; call it on one clip."""

    def __init__(self, model, whisper, *, limits: Limits = Limits(), segment_frames: int = DEFAULT_SEGMENT_FRAMES,
                 overlap_frames: int = DEFAULT_OVERLAP_FRAMES):
        self.model, self.whisper, self.limits = model, whisper, limits
        self.preset = model.preset
        self.segment_frames, self.overlap_frames = segment_frames, overlap_frames

    # -- construction -------------------------------------------------------------------------
    @classmethod
    def tiny(cls, device: str = "cpu", **options) -> EchoMimicV2Pipeline:
        """The job's tiny preset: the demo model trained on drawn talking figures (not people) and the random
        whisper-tiny encoder it was trained with (`EchoMimicV2.tiny`)."""
        from echomimic2 import EchoMimicV2
        from echomimic2.audio import WhisperFeatures

        return cls(EchoMimicV2.tiny(device=device), WhisperFeatures.tiny(seed=0), **options)

    @classmethod
    def from_official(cls, weights_dir: str | Path, preset: str = DEFAULT_WITH_WEIGHTS, device: str = "cuda", dtype=None,
                      compile: bool = False, **options) -> EchoMimicV2Pipeline:
        """The official checkpoints of `preset` (a full-size one of `echomimic2.PRESETS`) from `weights_dir` (layout in README);
        dtype defaults to float16. The audio encoder runs on the CPU in float32, as in the job."""
        import torch

        from echomimic2 import EchoMimicV2
        from echomimic2.audio import WhisperFeatures
        from echomimic2.presets import full_size_preset

        model = EchoMimicV2.from_official(weights_dir, variant=full_size_preset(preset).variant, device=device,
                                          dtype=torch.float16 if dtype is None else dtype, compile=compile)
        whisper = WhisperFeatures.from_official(Path(weights_dir) / "audio_processor" / "tiny.pt")
        return cls(model, whisper, **options)

    @classmethod
    def random(cls, preset: str = DEFAULT_WITH_WEIGHTS, device: str = "cuda", dtype=None, compile: bool = False, seed: int = 0,
               **options) -> EchoMimicV2Pipeline:
        """Full-size networks with random weights (benchmarks and GPU checks: frames are noise); the job's
        `--random-weights` uses the same networks for seed 0."""
        import torch

        from echomimic2 import EchoMimicV2
        from echomimic2.audio import WhisperFeatures

        model = EchoMimicV2.random(preset, seed=seed, device=device, dtype=torch.float16 if dtype is None else dtype,
                                   compile=compile)
        return cls(model, WhisperFeatures.tiny(seed=seed), **options)

    # -- one clip -----------------------------------------------------------------------------
    def __call__(self, image, audio, poses=None, *, width: int | None = None, height: int | None = None,
                 fps: float = DEFAULT_FPS, steps: int | None = None, guidance: float | None = None, seed: int = DEFAULT_SEED,
                 segment_frames: int | None = None, overlap_frames: int | None = None, pose_align: str = DEFAULT_POSE_ALIGN,
                 gesture: str = DEFAULT_GESTURE, person: int | None = None, unsuitable: str = "warn",
                 callback: Callable[[SegmentStep], None] | None = None, progress: bool = True) -> EchoMimicV2Output:
        """Render one clip.

        image: a path, the file's bytes, a uint8 (H, W, 3) RGB array or a PIL image (framed to width×height
        as the job frames it). audio: a path, the file's bytes, or a float32 16 kHz mono waveform.
        poses: None (hand gestures from the audio, `gesture` = calm | lively | none), a list of official pose
        dicts, a folder of official per-frame `.npy` files, a `.npz` sequence, or a driving video (mp4, mov,
        webm, mkv); a shorter sequence is extended, never the video cut. The reference is framed around its
        person and the poses mapped onto it (`pose_align` = auto | none), as the job does. The reference is
        judged first (`echomimic2.triage`; `person` picks among several people, 0 = leftmost face): one that is
        not a half-body portrait warns (`unsuitable="warn"`, a UserWarning; the output's `verdict` and
        `warnings` say why) or raises ValueError before any rendering (`unsuitable="fail"`).
        width/height/steps/guidance default to the preset's; segment_frames/overlap_frames to the job's.
        callback(SegmentStep) runs after each segment; progress shows a bar on stderr.
        """
        # 1. check inputs: decode the image and the audio once, resolve the parameters
        clip = self.check_inputs(image, audio, poses, width=width, height=height, fps=fps, steps=steps,
                                 guidance=guidance, seed=seed, segment_frames=segment_frames,
                                 overlap_frames=overlap_frames, pose_align=pose_align, gesture=gesture,
                                 person=person, unsuitable=unsuitable)
        params = clip.params
        # 2. audio features: whisper states, and the video's frame count (the audio's length)
        features = audio_features(self.whisper, clip.waveform, params.fps)
        # 3. poses: one per frame (from the driving video if one was given), the reference framed around its
        #    person and the poses mapped onto it
        given, source_info = clip.poses, {}
        if clip.pose_input is not None:
            given, source_info = clip.pose_input.sequence(params.fps, features.frames, self.limits)
        clip.reference, frame_poses, poses_info = reference_and_poses(clip.reference, params, features.frames,
                                                                      poses=given, waveform=clip.waveform,
                                                                      detection=clip.detection)
        poses_info = dict(poses_info, **source_info)
        # 4. plan segments: overlapping frame ranges, each rendered on its own
        segments = plan_segments(features.frames, params.segment_frames, params.overlap_frames)
        # 5. render segments
        rendered = self.render_segments(clip, features, frame_poses, segments, callback=callback, progress=progress)
        # 6. stitch: cross-fade the frames neighbouring segments share
        frames = stitch(rendered, features.frames)
        return EchoMimicV2Output(frames=frames, fps=params.fps, audio=clip.waveform, segments=segments,
                                 audio_file=clip.audio_file, poses_info=poses_info)

    def check_inputs(self, image, audio, poses=None, *, width=None, height=None, fps=None, steps=None,
                     guidance=None, seed=None, segment_frames=None, overlap_frames=None, pose_align=None,
                     gesture=None, person=None, unsuitable="warn") -> DecodedClip:
        """Every argument checked (ValueError naming it) against the limits the manifest has
        (`params.FIELD_CHECKS`), then the image decoded and judged and the audio
        decoded exactly as the job's preprocessing does."""
        if unsuitable not in ("warn", "fail"):
            raise ValueError(f"unsuitable: expected warn or fail, got {unsuitable!r}")
        params = RenderParams.resolve(self.preset.name, seed=seed, steps=steps, guidance=guidance, fps=fps, width=width,
                                      height=height, pose_align=pose_align, gesture=gesture, person=person,
                                      segment_frames=self.segment_frames if segment_frames is None else segment_frames,
                                      overlap_frames=self.overlap_frames if overlap_frames is None else overlap_frames)
        image_data, image_name = _image_file(image, self.limits)
        reference = decode_reference(image_data, self.limits, image_name)  # framed in step 3, with the poses
        detection, triage = _judge(image_data, reference, params, unsuitable)
        waveform, audio_file = _audio(audio, self.limits)
        pose_input = read_pose_input(str(poses), self.limits) if isinstance(poses, (str, Path)) else None
        given = pose_input.poses if pose_input is not None else _given_poses(poses)
        return DecodedClip(reference, waveform, audio_file, given, params, pose_input, detection, triage)

    def render_segments(self, clip: DecodedClip, features: AudioFeatures, poses: list[dict],
                        segments: list[tuple[int, int]], *, callback=None, progress: bool = True):
        """Each segment's frames [(start, stop, frames)], rendered with the job's noise: global frame i's
        noise depends on (seed, i) only."""
        from rich.console import Console
        from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

        params, rendered = clip.params, []
        # The bar moves with every UNet call and decoded batch (`RenderProgress`), in segments; its ETA comes from
        # the measured rate once the first call is done.
        bar = Progress(TextColumn("segment {task.fields[segment]}/{task.fields[segments]}, step {task.fields[step]}"),
                       BarColumn(), TextColumn("{task.percentage:>3.0f}%"), TimeElapsedColumn(), TextColumn("ETA"),
                       TimeRemainingColumn(), console=Console(stderr=True), disable=not progress)
        with bar:
            task = bar.add_task("segments", total=len(segments), segment=1, segments=len(segments),
                                step=f"0/{params.steps}")
            for i, (start, stop) in enumerate(segments):
                tokens, pose_images = segment_inputs(features.features, poses, params.fps, start, stop,
                                                     params.width, params.height)

                def on_progress(state, i=i):
                    step = f"{state.steps_done}/{state.steps}" if state.frames_decoded == 0 else "decoding"
                    bar.update(task, completed=i + state.fraction, segment=i + 1, step=step)

                frames = render_frames(self.model, clip.reference, tokens, pose_images, seed=params.seed,
                                       first_frame=start, steps=params.steps, guidance=params.guidance,
                                       on_progress=on_progress)
                rendered.append((start, stop, frames))
                bar.update(task, completed=i + 1)
                if callback is not None:
                    callback(SegmentStep(i=i, total=len(segments), start=start, stop=stop, frames=frames))
        return rendered


def _judge(image_data: bytes, reference: np.ndarray, params: RenderParams, unsuitable: str):
    """(detection, triage) of the reference at the output size, as the job judges it; an unsuitable one
    warns or (unsuitable="fail") raises ValueError naming the verdict and why."""
    import warnings

    from echomimic2.triage import triage_or_unknown
    from pipeline.reference_triage import DetectionCache, remembered_detection, unsuitable_reason

    try:
        detection = remembered_detection(DetectionCache(None), image_data, reference, params.person)
    except ValueError as exc:  # a person beyond the faces found
        raise ValueError(f"person: {exc}") from None
    triage = triage_or_unknown(reference, params.width, params.height, detection)
    if not triage.ok:
        reason = "image: " + unsuitable_reason(triage.verdict, [w.to_json() for w in triage.warnings])
        if unsuitable == "fail":
            raise ValueError(reason)
        warnings.warn(reason, UserWarning, stacklevel=4)
    return detection, triage


def _read_file(path: str | Path, max_bytes: int, what: str) -> bytes:
    """A regular file, read no further than its limit (`storage.read_bytes`)."""
    from pipeline import storage

    try:
        return storage.read_bytes(str(path), max_bytes=max_bytes)
    except storage.InputError as exc:
        raise ValueError(f"{what}: {path}: {exc}") from None


def _image_file(image, limits: Limits) -> tuple[bytes, str]:
    """The image as file bytes for `decode_reference`; arrays and PIL images as lossless PNG."""
    from PIL import Image

    if isinstance(image, (str, Path)):
        return _read_file(image, limits.max_image_bytes, "image"), Path(image).name
    if isinstance(image, (bytes, bytearray)):
        return bytes(image), "image"
    if isinstance(image, np.ndarray):
        if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
            raise ValueError(f"image: expected a uint8 (H, W, 3) RGB array, got {image.dtype} {image.shape}")
        image = Image.fromarray(image, "RGB")
    if isinstance(image, Image.Image):
        buffer = io.BytesIO()
        image.save(buffer, format="PNG")
        return buffer.getvalue(), "image"
    raise ValueError(f"image: expected a path, bytes, a uint8 array or a PIL image, got {type(image).__name__}")


def _audio(audio, limits: Limits) -> tuple[np.ndarray, bytes]:
    """(float32 16 kHz mono waveform, the file to mux): a file is decoded as the job decodes it; a waveform
    is used as given and written as a WAV for muxing."""
    import soundfile as sf

    if isinstance(audio, (str, Path)):
        data, name = _read_file(audio, limits.max_audio_bytes, "audio"), Path(audio).name
        return decode_audio(data, limits, name), data
    if isinstance(audio, (bytes, bytearray)):
        return decode_audio(bytes(audio), limits, "audio"), bytes(audio)
    if isinstance(audio, np.ndarray):
        if audio.ndim != 1 or not np.issubdtype(audio.dtype, np.floating) or not np.isfinite(audio).all():
            raise ValueError(f"audio: expected finite float mono samples at {SAMPLE_RATE} Hz, got {audio.dtype} {audio.shape}")
        if len(audio) > limits.max_audio_seconds * SAMPLE_RATE:
            raise ValueError(f"audio: {len(audio) / SAMPLE_RATE:.1f} s, over the limit of {limits.max_audio_seconds:g} s")
        waveform = np.ascontiguousarray(audio, dtype=np.float32)
        buffer = io.BytesIO()
        sf.write(buffer, waveform, SAMPLE_RATE, format="WAV", subtype="FLOAT")
        return waveform, buffer.getvalue()
    raise ValueError(f"audio: expected a path, bytes or a float32 waveform array, got {type(audio).__name__}")


def _given_poses(poses) -> list[dict] | None:
    """None, or official pose dicts (checked); paths are read by their pose source."""
    from echomimic2.pose import validate_pose

    if poses is None:
        return None
    if isinstance(poses, (list, tuple)):
        if not poses:
            raise ValueError("poses: the list is empty")
        return [validate_pose(pose, f"poses[{i}]") for i, pose in enumerate(poses)]
    raise ValueError(f"poses: expected None, a list of pose dicts, a folder, a .npz or a driving video path, got "
                     f"{type(poses).__name__}")
