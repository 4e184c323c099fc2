"""The batch job: the three stages of `pipeline.stages`, the first two on one streaming Ray Data pipeline
(`pipeline.ray_data`), the third started by the driver (`pipeline.tracker`) as Ray tasks.

    manifest rows ─► PreprocessStage (CPU actors) ─► RenderStage (GPU actors) ─► driver ─► AssembleStage (Ray tasks)
    ClipSpec         SegmentWork per missing segment   SegmentResult                tracks    cross-fade, encode,
                     ClipPlan ──► board ──────────────────────────────────────────► clips    atomic MP4, ledger

Only segment rows stream through Ray Data; a clip's plan, refusal or skip reaches the driver through the
board actor (`stages.JobBoard`, restarted by Ray if it dies), never through a GPU actor. When every segment of
a clip is in storage the driver starts its assembly, so the first MP4 lands while later clips still render.
Rows, segments and assemblies that fail become `failed` results; the job goes on. Results are written on
every way out: finished, rows failed, interrupted, or the pipeline itself stopped.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass

import ray
from rich.console import Console
from rich.markup import escape

from pipeline import storage
from pipeline.ledger import Ledger
from pipeline.manifest import ClipSpec, Problem, parse_manifest, read_manifest
from pipeline.ray_data import RemoteObject, configure_ray_data, on_ray_data, row_of, worker_restarts
from pipeline.rerun import RerunStamps
from pipeline.results import write_results
from pipeline.rows import ClipPlan, JobSettings, SegmentWork
from pipeline.stages import RENDER_DEATHS_IN_A_ROW, SEGMENT_ATTEMPTS, AssembleStage, JobBoard, PreprocessStage, RenderStage
from pipeline.tracker import STOP, JobInterrupted, Tracker, raise_if_stopped

ACTOR_RESTARTS = 2  # a preprocess actor that dies is replaced this often; Ray's default is forever
# Render actors are always replaced (-1): the driver bounds how often they may die (tracker.py). A death also
# costs a retry to every other segment queued on that actor, hence more task retries than attempts per segment.
RENDER_TASK_RETRIES = RENDER_DEATHS_IN_A_ROW + SEGMENT_ATTEMPTS
ASSEMBLY_RETRIES = 1  # re-run an assembly whose worker died (system failures only)

__all__ = ["JobError", "JobInterrupted", "JobReport", "JobSettings", "load_specs", "pipeline_left_open", "record_start",
           "run_job"]

_left_open = [False]


class JobError(Exception):
    """The job itself cannot run (unreadable manifest, unreachable output, bad weights)."""


@dataclass
class JobReport:
    results: list[dict]
    job_id: str = ""  # its event stream: <output>/_events/<job_id>/


def pipeline_left_open() -> bool:
    """True after a job whose row-pulling thread may still be inside Ray Data: Ray must not be shut down under
    it, the process ends at once instead (commands.end_process_if_interrupted)."""
    return _left_open[0]


@ray.remote(num_cpus=AssembleStage.resources.num_cpus, max_retries=ASSEMBLY_RETRIES)
def assemble_task(stage: AssembleStage, plan: ClipPlan) -> dict:
    return stage(plan)


def load_specs(manifest: str, *, allow_http: bool = False) -> tuple[list[ClipSpec], list[Problem]]:
    """The manifest's rows and its per-row problems; JobError for a manifest that cannot be used at all."""
    try:
        df = read_manifest(storage.check_uri(manifest, allow_http=allow_http))
    except FileNotFoundError:
        raise JobError(f"manifest not found: {storage.redact(manifest)}") from None
    except Exception as exc:
        raise JobError(f"manifest {storage.redact(manifest)}: {storage.describe_error(exc)}") from None
    specs, problems = parse_manifest(df)
    whole_manifest = [p for p in problems if p.row is None]
    if whole_manifest:
        raise JobError("; ".join(str(p) for p in whole_manifest))
    return specs, problems


def record_start(manifest: str, settings: JobSettings) -> None:
    """The job's first write (before Ray starts): it proves the output root is reachable and writable."""
    try:
        Ledger(settings.output).record_job("start", manifest=storage.redact(manifest), preset=settings.preset,
                                           model=settings.model_identity, force=settings.force)
    except Exception as exc:
        raise JobError(f"output {storage.redact(settings.output)} is not writable: {storage.describe_error(exc)}") from None


def run_job(manifest: str, specs: list[ClipSpec], problems: list[Problem], settings: JobSettings, *, render_actors: int,
            render_gpus_per_actor: float, preprocess_actors: int, console: Console | None = None,
            finished: list[ClipPlan] = (), stamps: RerunStamps | None = None, notify: str | None = None) -> JobReport:
    """Run the whole job (the manifest's rows as `load_specs` gave them) on the connected Ray cluster; rows
    with a plan in `finished` (proven unchanged by `stamps`, `pipeline.rerun`) are skipped without Ray, which
    is needed only when some row is left. Raises JobInterrupted (results written) or JobError. `notify`: a URL the
    job's summary is POSTed to at its end (`events.JobObserver`)."""
    console = console or Console()
    _left_open[0] = False
    ledger = Ledger(settings.output)
    skipped = {plan.clip_id for plan in finished}
    to_run = [spec for spec in specs if spec.clip_id not in skipped]
    tracker = Tracker(settings, specs, problems, console, notify=notify)
    for plan in finished:
        tracker.on_plan(plan)
    try:
        raise_if_stopped()  # a signal while Ray started
        if to_run:
            # The board survives its actor's death: Ray restarts it and retries the calls made meanwhile.
            board = RemoteObject(ray.remote(num_cpus=0, max_restarts=-1, max_task_retries=-1)(JobBoard).remote(),
                                 one_way=("post_progress",))
            # The three stages, top to bottom: the first two stream on Ray Data, the driver starts the third
            # for each clip whose segments are all in storage.
            preprocess = PreprocessStage(settings, board)
            render = RenderStage(settings, board, gpus_per_worker=render_gpus_per_actor)
            assemble = AssembleStage(settings)
            configure_ray_data()
            dataset = ray.data.from_items([row_of(spec) for spec in to_run], override_num_blocks=len(to_run))
            dataset = on_ray_data(dataset, preprocess, ClipSpec, workers=(1, max(1, min(preprocess_actors, len(to_run)))),
                                  max_restarts=ACTOR_RESTARTS, max_task_retries=ACTOR_RESTARTS)
            dataset = on_ray_data(dataset, render, SegmentWork, workers=(render_actors, render_actors),
                                  max_restarts=-1, max_task_retries=RENDER_TASK_RETRIES)
            tracker.assemble = lambda plan: assemble_task.remote(assemble, plan)
            tracker.count_render_restarts = lambda: worker_restarts(render)
            with tracker.progress:
                tracker.follow(dataset, board)
    except (KeyboardInterrupt, JobInterrupted) as stop:  # committed clips stay; the others say why they stopped
        signal_number = getattr(stop, "signal_number", 2)
        STOP.clear()
        # Ray Data's executor thread logs a traceback of its own when Ray shuts down under it: expected here.
        logging.getLogger("ray.data").setLevel(logging.CRITICAL)
        tracker.interrupt(f"the job was interrupted (signal {signal_number}) before this clip was finished; "
                          "rerun the same command to finish it")
        _write_outcome(tracker, ledger, stamps, skipped, console, interrupted=signal_number)
        raise JobInterrupted(signal_number) from None
    except Exception as exc:  # e.g. actors that cannot start (bad weights): finished clips stay in the ledger
        _left_open[0] = True  # the row-pulling thread may be inside Ray Data
        cause = f"the pipeline stopped: {storage.describe_error(exc)}"
        tracker.interrupt(cause)
        _write_outcome(tracker, ledger, stamps, skipped, console, stopped=cause)
        raise JobError(cause) from exc
    _left_open[0] = tracker.pipeline_open
    results = _write_outcome(tracker, ledger, stamps, skipped, console)
    return JobReport(results, tracker.observer.job_id)


def _write_outcome(tracker: Tracker, ledger: Ledger, stamps: RerunStamps | None, skipped: set[str], console: Console,
                   **end) -> list[dict]:
    """results.parquet, the rerun stamps and the ledger's end record, on every way out of a job."""
    results = tracker.results()
    write_results(ledger, results)
    _record_stamps(stamps, results, skipped, console)
    ledger.record_job("end", done=sum(r["status"] == "done" for r in results),
                      skipped=sum(r["status"] == "skipped" for r in results),
                      failed=sum(r["status"] == "failed" for r in results), **end)
    tracker.observer.ended(results, interrupted=end.get("interrupted"))
    return results


def _record_stamps(stamps: RerunStamps | None, results: list[dict], skipped: set[str], console: Console) -> None:
    """After the results: a failure here costs the next rerun its shortcut, nothing else."""
    if stamps is None:
        return
    try:
        stamps.record([r["clip_id"] for r in results if r["status"] in ("done", "skipped") and r["clip_id"] not in skipped])
    except Exception as exc:  # noqa: BLE001
        console.print(f"[yellow]note[/yellow]: input stamps not saved ({escape(storage.describe_error(exc))}); "
                      "the next rerun reads every input again")
