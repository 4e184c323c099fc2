"""The batch job: one streaming Ray Data pipeline from manifest rows to MP4s.

    manifest rows ─► Preprocessor (CPU actors) ─► SegmentRenderer (GPU actors) ─► driver ─► assemble (Ray tasks)
                     clip plan + one work row     frames → _segments/ (atomic)     tracks      cross-fade, encode,
                     per missing segment          + ledger record                   segments    atomic MP4, ledger

The driver only sees small rows. When every segment of a clip is in storage it starts the
clip's assembly as a Ray task (1 CPU), so the first MP4 lands while later clips still render.
Rows, segments and assemblies that fail become `failed` results; the job goes on.
"""
from __future__ import annotations

import io
import json
import time
from dataclasses import dataclass, field

import pandas as pd
import ray
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from pipeline import storage
from pipeline.fingerprint import content_hash
from pipeline.ledger import Ledger
from pipeline.manifest import ClipSpec, Problem, parse_manifest, read_manifest
from pipeline.preprocess import JobSettings, Preprocessor, spec_json
from pipeline.render import SegmentRenderer

RESULT_COLUMNS = ("row", "clip_id", "status", "output", "frames", "seconds", "fingerprint", "error",
                  "preprocess_seconds", "render_seconds", "assemble_seconds")
ACTOR_RESTARTS = 2  # a render/preprocess actor that dies is replaced this often; Ray's default is forever
ASSEMBLY_RETRIES = 1  # re-run an assembly whose worker died (system failures only)


class JobError(Exception):
    """The job itself cannot run (unreadable manifest, unreachable output, bad weights)."""


@dataclass
class ClipState:
    spec: ClipSpec
    fingerprint: str = ""
    info: dict = field(default_factory=dict)  # the clip row's plan
    waiting: set = field(default_factory=set)  # segments still to come back from the render stage
    rendered: set = field(default_factory=set)  # segments back from the render stage (may precede the plan)
    render_seconds: float = 0.0
    result: dict | None = None  # final results row
    assembling: bool = False


@dataclass
class JobReport:
    results: list[dict]


@ray.remote(num_cpus=1, max_retries=ASSEMBLY_RETRIES)
def assemble_task(settings: JobSettings, clip_id: str, fingerprint: str, info: dict) -> dict:
    """Stitch, encode and commit one clip; then its record; then free its segment files."""
    from pipeline.assemble import assemble_clip

    started = time.perf_counter()
    ledger = Ledger(settings.output)
    audio = storage.read_bytes(storage.check_uri(info["audio"], allow_http=settings.allow_http,
                                                 input_root=settings.input_root),
                               max_bytes=settings.limits.max_audio_bytes)
    if content_hash(audio) != info["audio_sha"]:
        raise RuntimeError("audio: the file changed while the job ran; rerun to render the new audio")
    segments = [(start, stop, ledger.segment_uri(clip_id, fingerprint, start, stop)) for start, stop in info["segments"]]
    output = ledger.output_uri(clip_id)
    encoded = assemble_clip(segments, info["frames"], info["fps"], audio, output)
    ledger.record_clip(clip_id, fingerprint, bytes=encoded["bytes"], frames=encoded["frames"],
                       seconds=encoded["seconds"], output=output)
    ledger.delete_segments(clip_id)
    return dict(output=output, frames=encoded["frames"], assemble_seconds=time.perf_counter() - started)


def load_specs(manifest: str, settings: JobSettings) -> tuple[list[ClipSpec], list[Problem]]:
    try:
        df = read_manifest(storage.check_uri(manifest, allow_http=settings.allow_http))
    except FileNotFoundError:
        raise JobError(f"manifest not found: {storage.redact(manifest)}") from None
    except Exception as exc:
        raise JobError(f"manifest {storage.redact(manifest)}: {storage.describe_error(exc)}") from None
    specs, problems = parse_manifest(df)
    whole_manifest = [p for p in problems if p.row is None]
    if whole_manifest:
        raise JobError("; ".join(str(p) for p in whole_manifest))
    return specs, problems


def run_job(manifest: str, specs: list[ClipSpec], problems: list[Problem], settings: JobSettings, *, render_actors: int,
            render_gpus_per_actor: float, preprocess_actors: int, console: Console | None = None) -> JobReport:
    """Run the whole job (the manifest's rows as `load_specs` gave them) on the connected Ray cluster.
    Raises JobError if it cannot start."""
    console = console or Console()
    ledger = Ledger(settings.output)
    try:
        ledger.record_job("start", manifest=storage.redact(manifest), preset=settings.preset,
                          model=settings.model_identity, force=settings.force)
    except Exception as exc:
        raise JobError(f"output {storage.redact(settings.output)} is not writable: {storage.describe_error(exc)}") from None
    tracker = Tracker(settings, specs, problems, console)
    if specs:
        _configure_ray_data()
        dataset = (
            ray.data.from_items([{"spec": spec_json(spec)} for spec in specs], override_num_blocks=len(specs))
            .map_batches(Preprocessor, fn_constructor_kwargs=dict(settings=settings), batch_size=1,
                         compute=ray.data.ActorPoolStrategy(min_size=1, max_size=max(1, min(preprocess_actors, len(specs)))),
                         # Ray 2.60 has no named parameter for these two (its deprecation warning is expected).
                         num_cpus=1, max_restarts=ACTOR_RESTARTS, max_task_retries=ACTOR_RESTARTS)
            .map_batches(SegmentRenderer, fn_constructor_kwargs=dict(settings=settings), batch_size=1,
                         compute=ray.data.ActorPoolStrategy(size=render_actors),
                         num_gpus=render_gpus_per_actor, num_cpus=0,
                         max_restarts=ACTOR_RESTARTS, max_task_retries=ACTOR_RESTARTS)
        )
        try:
            with tracker.progress:
                for row in dataset.iter_rows():
                    tracker.on_row(row)
                    tracker.collect_assemblies(wait=False)
                tracker.finish_streaming()
                while tracker.collect_assemblies(wait=True):
                    pass
        except Exception as exc:  # e.g. actors that cannot start (bad weights): finished clips stay in the ledger
            raise JobError(f"the pipeline stopped: {storage.describe_error(exc)}") from exc
    results = tracker.results()
    write_results(ledger, results)
    ledger.record_job("end", done=sum(r["status"] == "done" for r in results),
                      skipped=sum(r["status"] == "skipped" for r in results),
                      failed=sum(r["status"] == "failed" for r in results))
    return JobReport(results)


def _configure_ray_data() -> None:
    context = ray.data.DataContext.get_current()
    # Each work row is its own block: segments of one clip spread over every render actor, and a
    # finished segment reaches the driver at once instead of waiting for a block to fill up.
    context.target_max_block_size = 1
    # A block lost for good (actor died ACTOR_RESTARTS times) fails only its clip, found missing below.
    context.max_errored_blocks = -1
    context.enable_progress_bars = False  # the job draws its own progress


class Tracker:
    """The driver's view of every clip: segments awaited, assemblies in flight, final rows, progress."""

    def __init__(self, settings: JobSettings, specs: list[ClipSpec], problems: list[Problem], console: Console):
        self.settings, self.console = settings, console
        self.ledger = Ledger(settings.output)
        self.clips = {spec.clip_id: ClipState(spec) for spec in specs}
        self.refused = _refused_rows(problems)
        self.assemblies: dict = {}  # ObjectRef -> clip_id
        self.progress = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                                 TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn(), console=console)
        total_rows = len(specs) + len(self.refused)
        self.clip_task = self.progress.add_task(self._clip_description(), total=total_rows,
                                                completed=len(self.refused))
        self.segment_task = self.progress.add_task("segments", total=0)
        for refused in self.refused:
            console.print(f"[red]failed[/red] {escape(refused['error'])}")

    # -- rows from the pipeline ------------------------------------------------------------
    def on_row(self, row: dict) -> None:
        kind, clip_id, info = row["kind"], row["clip_id"], json.loads(row["info"])
        clip = self.clips[clip_id]
        if clip.result is not None:
            return  # already failed: late segments of that clip are ignored
        if kind == "failed":
            self._finish(clip, "failed", error=info["error"])
        elif kind == "skipped":
            record = info["record"]
            clip.fingerprint = row["fingerprint"]
            self._finish(clip, "skipped", output=self.ledger.output_uri(clip_id), frames=record.get("frames"),
                         seconds=record.get("seconds"))
        elif kind == "clip":
            clip.fingerprint, clip.info = row["fingerprint"], info
            clip.waiting = {tuple(s) for s in info["pending"]} - clip.rendered
            self.progress.update(self.segment_task, total=self.progress.tasks[self.segment_task].total + len(info["pending"]))
            self._maybe_assemble(clip)
        elif kind == "rendered":
            clip.rendered.add((row["start"], row["stop"]))
            clip.waiting.discard((row["start"], row["stop"]))
            clip.render_seconds += info["seconds"]
            self.progress.advance(self.segment_task)
            self._maybe_assemble(clip)
        elif kind == "segment_failed":
            self.progress.advance(self.segment_task)
            self._finish(clip, "failed", error=info["error"])
        self._refresh()

    def _maybe_assemble(self, clip: ClipState) -> None:
        # Segment rows may overtake their clip row (different blocks): wait for the plan, then for all of them.
        if not clip.info or clip.waiting or clip.assembling:
            return
        clip.assembling = True
        self.start_assembly(clip)

    def start_assembly(self, clip: ClipState) -> None:
        ref = assemble_task.remote(self.settings, clip.spec.clip_id, clip.fingerprint, clip.info)
        self.assemblies[ref] = clip.spec.clip_id

    def collect_assemblies(self, *, wait: bool) -> bool:
        """Record finished assemblies; True while some are still running."""
        if not self.assemblies:
            return False
        ready, _ = ray.wait(list(self.assemblies), num_returns=1 if wait else len(self.assemblies),
                            timeout=None if wait else 0)
        for ref in ready:
            clip = self.clips[self.assemblies.pop(ref)]
            try:
                assembled = ray.get(ref)
            except Exception as exc:  # noqa: BLE001 - one clip's assembly failing fails that clip only
                cause = getattr(exc, "cause", None) or exc
                self._finish(clip, "failed", error=f"{row_label(clip.spec)}: assembly: {storage.describe_error(cause)}")
            else:
                self._finish(clip, "done", output=assembled["output"], frames=assembled["frames"],
                             seconds=clip.info["seconds"], assemble_seconds=assembled["assemble_seconds"])
        self._refresh()
        return bool(self.assemblies)

    def finish_streaming(self) -> None:
        """The pipeline is drained: a clip still waiting lost a row to a worker that died for good."""
        for clip in self.clips.values():
            if clip.result is not None or clip.assembling:
                continue
            if not clip.info:
                reason = "preprocessing worker died repeatedly (see the Ray logs)"
            else:
                lost = ", ".join(f"{a}-{b}" for a, b in sorted(clip.waiting))
                reason = f"render worker died repeatedly on segment(s) {lost} (see the Ray logs)"
            self._finish(clip, "failed", error=f"{row_label(clip.spec)}: {reason}")

    # -- results and progress --------------------------------------------------------------
    def _finish(self, clip: ClipState, status: str, **values) -> None:
        clip.result = dict(row=clip.spec.row, clip_id=clip.spec.clip_id, status=status, fingerprint=clip.fingerprint,
                           preprocess_seconds=clip.info.get("preprocess_seconds"), render_seconds=clip.render_seconds,
                           **values)
        self.progress.advance(self.clip_task)
        if status == "failed":
            self.console.print(f"[red]failed[/red] {escape(values['error'])}")
        elif status == "done":
            done = f"{clip.spec.clip_id}: {values['frames']} frames → {values['output']}"
            self.console.print(f"[green]done[/green] {escape(done)}")

    def _clip_description(self) -> str:
        results = [c.result for c in self.clips.values() if c.result]
        done = sum(r["status"] in ("done", "skipped") for r in results)
        failed = sum(r["status"] == "failed" for r in results) + len(self.refused)
        return f"clips: {done} done, {failed} failed"

    def _refresh(self) -> None:
        self.progress.update(self.clip_task, description=self._clip_description())

    def results(self) -> list[dict]:
        rows = self.refused + [c.result for c in self.clips.values() if c.result is not None]
        return sorted(({name: row.get(name) for name in RESULT_COLUMNS} for row in rows), key=lambda r: r["row"])


def row_label(spec: ClipSpec) -> str:
    return f"row {spec.row} (clip {spec.clip_id!r})"


def _refused_rows(problems: list[Problem]) -> list[dict]:
    """Rows refused by the schema checks: one failed result per row, all its problems in `error`."""
    by_row: dict[int, list[Problem]] = {}
    for problem in problems:
        by_row.setdefault(problem.row, []).append(problem)
    return [dict(row=row, clip_id=found[0].clip_id, status="failed", error="; ".join(str(p) for p in found))
            for row, found in sorted(by_row.items())]


def write_results(ledger: Ledger, results: list[dict]) -> None:
    frame = pd.DataFrame(results, columns=list(RESULT_COLUMNS))
    buffer = io.BytesIO()
    frame.to_parquet(buffer, index=False)
    storage.write_atomic(ledger.results_uri(), buffer.getvalue())


def read_results(root: str) -> pd.DataFrame:
    return pd.read_parquet(io.BytesIO(storage.read_bytes(Ledger(root).results_uri(), max_bytes=1 << 30)))
