"""The job's stages: each a small class that declares its name, resources and batch size, loads what it
needs once in `setup()` (not in `__init__`, so a stage is cheap to build on the driver and ship to its
workers), and maps typed rows (`pipeline.rows`) with `__call__`. Their work is the one-clip steps
(`pipeline.steps`); Ray is not needed to run one (`job.py` puts them on Ray Data).

    PreprocessStage   ClipSpec    ─► SegmentWork per segment to render   (CPU; its ClipPlan goes to the board)
    RenderStage       SegmentWork ─► SegmentResult                        (GPU; frames to storage, ledger record)
    AssembleStage     ClipPlan    ─► the committed MP4                    (CPU task once a clip's segments are in)

The board (`JobBoard`, one Ray actor in a job) is the driver's side channel: clip plans reach the driver
through it, never through a GPU actor, and it counts each segment's attempts across render worker deaths.
Preprocessing also stores each clip's plan beside its segments, so losing the board loses no plan.
"""
from __future__ import annotations

import os
import time
from collections.abc import Iterator
from dataclasses import dataclass

from pipeline import storage
from pipeline.admission import clip_scratch_bytes
from pipeline.fingerprint import clip_fingerprint, content_hash
from pipeline.ledger import Ledger, strip_uri
from pipeline.manifest import ClipSpec, Problem
from pipeline.media import decode_audio, decode_reference
from pipeline.preprocess import RowRefused, read_clip_inputs, refusing, render_params
from pipeline.proof import write_clip_images
from pipeline.reference_triage import judge_reference, people_detector
from pipeline.rows import ClipPlan, JobSettings, SegmentResult, SegmentWork, row_label
from pipeline.segment_store import clip_audio_uri, read_clip_audio, segment_output, store_clip_audio, store_clip_plan
from pipeline.steps import audio_features, plan_segments, reference_and_poses, render_frames, segment_inputs

SEGMENT_ATTEMPTS = 3  # tries per segment, whether the renderer raised or its worker died
# The job gives up rendering after this many render worker deaths with no segment finished in between
# (two segments that each kill their worker SEGMENT_ATTEMPTS times), whether they died starting or
# rendering (the driver counts Ray's restarts, tracker.py): a broken node or model must end the job in
# bounded time, not restart workers forever.
RENDER_DEATHS_IN_A_ROW = 2 * SEGMENT_ATTEMPTS
ADMISSION_POLL_SECONDS = 0.5  # a preprocessed clip waiting for scratch space asks the board this often
PROGRESS_SECONDS = 1.0  # a render worker tells the board how far it is into a segment at most this often


@dataclass(frozen=True)
class Resources:
    """What one worker of a stage reserves. On GPU stages num_cpus is 0: a 2-CPU node would otherwise
    deadlock (its CPUs held by GPU actors waiting for preprocessed rows)."""

    num_cpus: float = 1.0
    num_gpus: float = 0.0
    memory: int | None = None  # bytes; None: no reservation

    def ray_args(self) -> dict:
        args = dict(num_cpus=self.num_cpus, num_gpus=self.num_gpus)
        return args if self.memory is None else dict(args, memory=self.memory)


class Stage:
    """name, resources and batch_size are read by the job; `setup()` runs once per worker."""

    name: str = "stage"
    resources: Resources = Resources()
    batch_size: int = 1

    def setup(self) -> None:
        pass

    def on_worker_start(self, *, restarted: bool, node_id: str | None) -> None:
        """Called by the runner before `setup()`: whether this worker replaces one that died."""
        self.restarted, self.node_id = restarted, node_id


# ---------------------------------------------------------------------------------------------------
# The board: clip plans to the driver, segment attempts across worker deaths


@dataclass
class Attempt:
    number: int  # 1-based
    error: str | None = None  # set: do not render; the segment fails with this reason


class JobBoard:
    """Plain Python; `job.py` runs one as a Ray actor that every worker and the driver share, which Ray
    restarts if it dies. A restarted board starts empty: its `incarnation` tells the driver, which then takes
    the plans it had not yet received from their stored copies (`segment_store.store_clip_plan`); attempt
    counts start again, while the driver's bound on render worker deaths still holds."""

    def __init__(self, attempts_per_segment: int = SEGMENT_ATTEMPTS, admission: bool = False):
        import uuid

        # admission: a driver admits clips to rendering (tracker.admit_clips); without one (stages run by
        # themselves) every clip renders at once
        self.attempts_per_segment, self.admission = attempts_per_segment, admission
        self.id = uuid.uuid4().hex
        self.plans: list[ClipPlan] = []
        self.progress: dict[tuple, tuple[float, str] | None] = {}  # segment -> (fraction, step) since the driver looked
        self.outcomes: dict[tuple, list[str | None]] = {}  # segment -> per attempt: error, "ok", None (running/died)
        self.failed_clips: set[tuple[str, str]] = set()
        self.admission_asked: dict[str, int] = {}  # clip_id -> scratch bytes, since the driver looked
        self.admitted: set[str] = set()
        self.dropped: set[str] = set()  # clips that ended on the driver before they were admitted

    def incarnation(self) -> str:
        return self.id

    # -- clip plans ---------------------------------------------------------------------------
    def post_plan(self, plan: ClipPlan) -> None:
        self.plans.append(plan)

    def take_plans(self) -> list[ClipPlan]:
        plans, self.plans = self.plans, []
        return plans

    # -- admission to rendering (the driver decides: admission.ScratchBudget) -----------------
    def ask_admission(self, clip_id: str, nbytes: int) -> bool | None:
        """True: the clip may start rendering; False: not yet, ask again (a restarted board is asked anew);
        None: never, the clip has ended (failed) on the driver."""
        if clip_id in self.admitted or not self.admission:
            return True
        if clip_id in self.dropped:
            return None
        self.admission_asked[clip_id] = nbytes
        return False

    def take_admission_requests(self) -> dict[str, int]:
        asked, self.admission_asked = self.admission_asked, {}
        return asked

    def admit(self, clip_ids: list[str]) -> None:
        self.admitted.update(clip_ids)

    def drop(self, clip_ids: list[str]) -> None:
        self.dropped.update(clip_ids)

    # -- progress inside segments ------------------------------------------------------------
    def post_progress(self, key: tuple, fraction: float, step: str) -> None:
        """How far a render worker is into segment `key` (0..1) and which step; sent without waiting."""
        self.progress[key] = (fraction, step)

    def take_progress(self) -> dict[tuple, tuple[float, str] | None]:
        """The latest progress of each segment since the last call; None: the segment's attempt failed."""
        progress, self.progress = self.progress, {}
        return progress

    # -- render attempts ----------------------------------------------------------------------
    def begin(self, label: str, key: tuple) -> Attempt:
        """The next attempt at segment `key` (clip_id, fingerprint, start, stop). An earlier attempt that
        never ended died with its worker: one segment is only ever on one worker at a time."""
        outcomes = self.outcomes.setdefault(key, [])
        errors = [f"attempt {n}: " + (outcome or "the render worker died") for n, outcome in enumerate(outcomes, 1)]
        if key[:2] in self.failed_clips:
            return Attempt(len(outcomes) + 1, error=f"{label}: not rendered: another segment of the clip failed")
        if len(outcomes) >= self.attempts_per_segment:
            self.failed_clips.add(key[:2])
            return Attempt(len(outcomes), error=f"{label} failed {len(outcomes)} times: " + "; ".join(errors))
        outcomes.append(None)
        return Attempt(len(outcomes))

    def end(self, key: tuple, error: str | None = None) -> None:
        self.outcomes[key][-1] = error or "ok"
        # done: whole until the driver gets its result row; failed: its progress is lost
        self.progress[key] = (1.0, "done") if error is None else None


# ---------------------------------------------------------------------------------------------------
# Preprocess


class PreprocessStage(Stage):
    """One manifest row → its plan (to the board) and one work row per segment not yet rendered, each with
    only that segment's inputs. The whisper encoder is loaded once per worker."""

    name = "preprocess"
    resources = Resources(num_cpus=1)

    def __init__(self, settings: JobSettings, board):
        self.settings, self.board = settings, board

    def setup(self) -> None:
        from echomimic2.audio import WhisperFeatures
        from pipeline.weights_source import local_weights

        self.ledger = Ledger(self.settings.output)
        if self.settings.weights is None:
            self.whisper = WhisperFeatures.tiny(seed=0)
        else:
            self.whisper = WhisperFeatures.from_official(local_weights(self.settings.weights) / "audio_processor" / "tiny.pt")

    def __call__(self, spec: ClipSpec) -> Iterator[SegmentWork]:
        started = time.perf_counter()
        try:
            plan, reference, audio, poses = self.plan(spec)
            plan.preprocess_seconds = time.perf_counter() - started
            if not plan.skipped:
                store_clip_plan(self.ledger, plan)  # the board's copy may be lost with its actor
        except RowRefused as refused:
            self.board.post_plan(ClipPlan(spec.row, spec.clip_id, error=str(refused)))
            return
        except Exception as exc:  # noqa: BLE001 - storage refusing a write (out of space, an outage beyond its
            # retries) fails this row with its cause; raised, it would read as a worker that died
            error = f"{row_label(spec)}: preprocessing: {storage.describe_error(exc)}"
            self.board.post_plan(ClipPlan(spec.row, spec.clip_id, error=error))
            return
        self.board.post_plan(plan)  # before its segments: the driver knows a plan before any of its results
        if plan.skipped or plan.skip_reason:
            return
        # Its segments are written only once the clips in flight leave room for them (admission.py).
        scratch = clip_scratch_bytes([stop - start for start, stop in plan.segments], plan.width, plan.height)
        while (admitted := self.board.ask_admission(spec.clip_id, scratch)) is False:
            time.sleep(ADMISSION_POLL_SECONDS)
        if admitted is None:  # the clip ended meanwhile (e.g. the job stopped preprocessing): nothing to render
            return
        for start, stop in plan.pending:
            segment_started = time.perf_counter()
            try:
                tokens, pose_images = segment_inputs(audio.features, poses, plan.fps, start, stop, plan.width, plan.height)
            except Exception as exc:  # noqa: BLE001 - a pose that cannot be drawn fails its clip only
                error = str(Problem(spec.row, spec.clip_id, "pose", storage.describe_error(exc)))
                self.board.post_plan(ClipPlan(spec.row, spec.clip_id, plan.fingerprint, error=error))
                return
            yield SegmentWork(spec.row, spec.clip_id, plan.fingerprint, start, stop, plan.params, reference=reference,
                              audio=tokens, poses=pose_images, preprocess_seconds=time.perf_counter() - segment_started)

    def people_detector(self):
        """The worker's face and pose detector for references, made on first use (None without mediapipe)."""
        if not hasattr(self, "_people"):
            self._people = people_detector()
        return self._people

    def plan(self, spec: ClipSpec):
        """(ClipPlan, reference image, AudioFeatures, poses); the plan alone when the clip is finished.
        Raises RowRefused naming the row and field."""
        settings = self.settings
        # Each input is read once: sizes are bounded as it is read, headers checked by its decoder before any
        # pixel or sample is decoded, poses by their source (what `validate` checks, without a second read).
        inputs = read_clip_inputs(spec, settings)
        params = render_params(spec, settings)
        audio_sha = content_hash(inputs.audio)
        fingerprint = clip_fingerprint(image_sha=content_hash(inputs.image), audio_sha=audio_sha,
                                       pose_shas=inputs.pose_hashes, params=params.fingerprint_fields(),
                                       model_identity=settings.model_identity)
        record = None if settings.force else self.ledger.finished_clip(spec.clip_id, fingerprint)
        if record is not None:
            return ClipPlan(spec.row, spec.clip_id, fingerprint, finished=record), None, None, None
        width, height, fps = params.width, params.height, params.fps
        with refusing(spec, "image", spec.image):
            whole_reference = decode_reference(inputs.image, settings.limits, _name(spec.image))
        with refusing(spec, "image" if spec.person is None else "person", spec.image):  # detected once per image
            detection, triage, unsuitable = judge_reference(spec, settings, params, inputs.image, whole_reference,
                                                            self.people_detector())
        if unsuitable is not None and settings.unsuitable == "fail":
            raise RowRefused([unsuitable])
        if unsuitable is not None:  # skip: a result with its reason, before any audio is decoded
            return ClipPlan(spec.row, spec.clip_id, fingerprint, skip_reason=str(unsuitable),
                            poses_info=triage.summary()), None, None, None
        with refusing(spec, "audio", spec.audio):
            waveform = decode_audio(inputs.audio, settings.limits, _name(spec.audio))
            audio = audio_features(self.whisper, waveform, fps)
        with refusing(spec, "pose", spec.pose):
            given, source_info = (None, {}) if inputs.pose is None else inputs.pose.sequence(fps, audio.frames,
                                                                                             settings.limits)
            reference, poses, poses_info = reference_and_poses(whole_reference, params, audio.frames, poses=given,
                                                               waveform=waveform, detection=detection)
            poses_info = dict(poses_info, **source_info)
        write_clip_images(settings.output, spec.clip_id, fingerprint, whole_reference, reference, poses)  # review page
        del waveform
        segments = plan_segments(audio.frames, params.segment_frames, params.overlap_frames)
        pending = [(start, stop) for start, stop in segments
                   if settings.force or not storage.exists(self.ledger.segment_uri(spec.clip_id, fingerprint, start, stop))]
        audio_copy = clip_audio_uri(self.ledger, spec.clip_id, fingerprint)  # what the assembler muxes
        store_clip_audio(inputs.audio, audio_copy, overwrite=settings.force)
        plan = ClipPlan(spec.row, spec.clip_id, fingerprint, frames=audio.frames, fps=fps, seconds=audio.seconds,
                        width=width, height=height, audio=audio_copy, audio_sha=audio_sha, params=params,
                        segments=segments, pending=pending, poses_info=poses_info)
        return plan, reference, audio, poses


def _name(uri: str) -> str:
    return uri.rstrip("/").rsplit("/", 1)[-1]


# ---------------------------------------------------------------------------------------------------
# Render


class RenderStage(Stage):
    """One segment → its frames in storage (atomic) and a ledger record; a small result row travels on.
    A segment is tried SEGMENT_ATTEMPTS times in all, counting attempts whose worker died (the board keeps
    the count, since a dead worker cannot), then fails its clip with a reason that names the row."""

    name = "render"

    def __init__(self, settings: JobSettings, board, gpus_per_worker: float = 1.0):
        self.settings, self.board = settings, board
        self.resources = Resources(num_cpus=0, num_gpus=gpus_per_worker)
        self.restarted, self.node_id, self.model, self.compile_cache = False, None, None, None
        self.segments_rendered, self.setup_seconds = 0, 0.0

    def setup(self) -> None:
        self.setup_started = time.perf_counter()  # the worker's start (imports included), for its first segment's record
        import torch

        from pipeline.render import CompileCache, compile_cache_folder, compiles_networks, load_model

        self.ledger = Ledger(self.settings.output)
        device = "cuda" if torch.cuda.is_available() else "cpu"  # Ray sets CUDA_VISIBLE_DEVICES even with logical GPUs
        if device == "cpu" and self.settings.render_threads:
            torch.set_num_threads(self.settings.render_threads)
        compile_networks = compiles_networks(self.settings, device)  # decided here, once
        if compile_networks:
            self.compile_cache = CompileCache(compile_cache_folder(self.settings), self.settings.preset, self.settings.fp8,
                                              saved_traces=self.settings.saved_traces)
            self.compile_cache.load()
        self.model = load_model(self.settings, device, compile_networks)
        self.setup_seconds = time.perf_counter() - self.setup_started
        self.device, self.rendering_seconds = device, 0.0  # the busy ratio's parts (metrics.render_busy)
        if not self.settings.model_identity.startswith(self.model.identity + "+"):
            raise RuntimeError(f"weights changed since the job started: model is {self.model.identity}, "
                               f"the job's fingerprints use {self.settings.model_identity}")

    def __call__(self, work: SegmentWork) -> SegmentResult:
        key = (work.clip_id, work.fingerprint, work.start, work.stop)
        uri = self.ledger.segment_uri(*key)
        while True:
            attempt = self.board.begin(work.label, key)
            if attempt.error is not None:
                return SegmentResult(work.row, *key, attempts=attempt.number, error=attempt.error)
            started = time.perf_counter()
            try:
                # Each decoded batch is written while the GPU decodes the next, not the whole segment after it.
                with segment_output(uri, work.stop - work.start, *work.reference.shape[:2]) as segment:
                    render_frames(self.model, work.reference, work.audio, work.poses, seed=work.params.seed,
                                  first_frame=work.start, steps=work.params.steps, guidance=work.params.guidance,
                                  on_frames=segment.write, on_progress=ProgressReporter(self.board, key))
                    seconds = time.perf_counter() - started
                self.ledger.record_segment(*key, seconds=seconds, attempt=attempt.number, pid=os.getpid(),
                                           node_id=self.node_id, model=self.model.identity, **self._worker_start())
            except Exception as exc:  # noqa: BLE001 - any failure of this segment is retried, then reported
                self.board.end(key, storage.describe_error(exc))
                continue
            self.board.end(key)
            self.segments_rendered += 1
            self._record_metrics(work, seconds, attempt.number)
            if self.compile_cache is not None:
                self.compile_cache.save_if_new()  # kernels this worker generated, for the next worker to reuse
            return SegmentResult(work.row, *key, seconds=seconds, attempts=attempt.number)

    def _record_metrics(self, work: SegmentWork, seconds: float, attempts: int) -> None:
        from pipeline import metrics

        height, width = work.reference.shape[:2]
        metrics.segment_rendered(self.settings.preset, seconds, work.stop - work.start, attempts, self.device,
                                 nbytes=(work.stop - work.start) * height * width * 3)  # the uint8 frames stored
        self.rendering_seconds += seconds
        since_setup = time.perf_counter() - self.setup_started - self.setup_seconds
        metrics.render_busy(min(1.0, self.rendering_seconds / max(since_setup, 1e-6)), self.device)

    def _worker_start(self) -> dict:
        """On a worker's first segment: worker start → segment finished, of which the setup (compile cache and
        model loaded), and whether compiled kernels came from the cache (the warm-start figures of BENCHMARKS.md)."""
        if self.segments_rendered:
            return {}
        cache = self.compile_cache
        return dict(worker_start_seconds=round(time.perf_counter() - self.setup_started, 3),
                    setup_seconds=round(self.setup_seconds, 3),
                    compile_cache=None if cache is None else ("hit" if cache.loaded else "miss"),
                    compile_cache_load_seconds=None if cache is None else round(cache.load_seconds, 3))


class ProgressReporter:
    """The engine's `on_progress` on a render worker: each `RenderProgress` to the board, at most every
    PROGRESS_SECONDS (the last step of a segment's denoising and its end always go), without waiting for it."""

    def __init__(self, board, key: tuple):
        self.board, self.key, self.sent = board, key, 0.0

    def __call__(self, state) -> None:
        step = f"step {state.steps_done}/{state.steps}" if state.frames_decoded == 0 else "decoding"
        now = time.monotonic()
        if now - self.sent >= PROGRESS_SECONDS or state.calls_done == state.calls and state.frames_decoded == 0:
            self.sent = now
            self.board.post_progress(self.key, round(state.fraction, 4), step)


# ---------------------------------------------------------------------------------------------------
# Assemble


class AssembleStage(Stage):
    """A planned clip whose segments are all in storage → cross-faded, encoded, committed MP4 and its ledger
    record; then its segment files are freed. The audio muxed is the copy preprocessing stored beside the
    segments (`segment_store.clip_audio_uri`), not the row's input read a second time."""

    name = "assemble"
    resources = Resources(num_cpus=1)

    def __init__(self, settings: JobSettings):
        self.settings = settings

    def __call__(self, plan: ClipPlan) -> dict:
        from pipeline.assemble import assemble_clip
        from pipeline.qc import qc_columns

        started = time.perf_counter()
        settings, ledger = self.settings, Ledger(self.settings.output)
        audio = read_clip_audio(plan.audio, max_bytes=settings.limits.max_audio_bytes, sha=plan.audio_sha)
        segments = [(start, stop, ledger.segment_uri(plan.clip_id, plan.fingerprint, start, stop))
                    for start, stop in plan.segments]
        output = ledger.output_uri(plan.clip_id)
        encoded = assemble_clip(segments, plan.frames, plan.fps, audio, output,
                                strip_uri=strip_uri(settings.output, plan.clip_id, plan.fingerprint),
                                reference_face=plan.poses_info.get("reference_face_box"))
        ledger.record_clip(plan.clip_id, plan.fingerprint, bytes=encoded["bytes"], frames=encoded["frames"],
                           seconds=encoded["seconds"], output=output, qc=encoded["qc"], poses=plan.poses_info)
        ledger.delete_segments(plan.clip_id)
        from pipeline import metrics

        metrics.clip_written(encoded["bytes"])
        return dict(output=output, frames=encoded["frames"], assemble_seconds=time.perf_counter() - started,
                    **qc_columns(encoded["qc"]))


__all__ = ["AssembleStage", "Attempt", "JobBoard", "PreprocessStage", "RenderStage", "Resources", "Stage", "row_label"]
