"""The batch job: the stages of `pipeline.stages` on one streaming Ray Data pipeline.

    manifest rows ─► PreprocessStage (CPU actors) ─► RenderStage (GPU actors) ─► driver ─► AssembleStage (Ray tasks)
    ClipSpec         SegmentWork per missing segment   SegmentResult                tracks    cross-fade, encode,
                     ClipPlan ──► board ──────────────────────────────────────────► clips    atomic MP4, ledger

Only segment rows stream through Ray Data; a clip's plan, refusal or skip reaches the driver through the
board actor (`stages.JobBoard`), never through a GPU actor. When every segment of a clip is in storage the
driver starts its assembly as a Ray task, so the first MP4 lands while later clips still render.
Rows, segments and assemblies that fail become `failed` results; the job goes on.

Render workers that die are replaced (Ray restarts them); the board counts each segment's attempts across
deaths, so a segment fails its clip after SEGMENT_ATTEMPTS tries, and after RENDER_DEATHS_IN_A_ROW deaths
with no segment finished in between the job stops rendering: every clip not yet done fails naming its row,
results are written and `run` exits 3. Bound: at most RENDER_DEATHS_IN_A_ROW worker restarts (each a model
load plus the segment it died in) after the last finished segment, then the assemblies in flight.
"""
from __future__ import annotations

import io
import json
import logging
import queue
import threading
import time
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field

import pandas as pd
import ray
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from pipeline import storage
from pipeline.ledger import Ledger
from pipeline.manifest import ClipSpec, Problem, parse_manifest, read_manifest
from pipeline.qc import QC_COLUMNS, qc_columns
from pipeline.rerun import RerunStamps
from pipeline.rows import ClipPlan, JobSettings, SegmentResult, SegmentWork, from_batch, row_label, to_batch
from pipeline.stages import (
    RENDER_DEATHS_IN_A_ROW,
    SEGMENT_ATTEMPTS,
    AssembleStage,
    JobBoard,
    PreprocessStage,
    RenderStage,
    Stage,
)

# verdict: the reference's triage (echomimic2.triage); warnings: JSON [{kind, message}]; poses_info: the whole
# summary, JSON (framing, fill, padding, alignment, pose length, hands: README's "What the factory does to your inputs")
POSES_COLUMNS = ("framing", "pose_source", "pose_align", "verdict", "warnings", "poses_info")
RESULT_COLUMNS = ("row", "clip_id", "status", "output", "frames", "seconds", "fingerprint", "error",
                  "preprocess_seconds", "render_seconds", "assemble_seconds", *QC_COLUMNS, *POSES_COLUMNS)
ACTOR_RESTARTS = 2  # a preprocess actor that dies is replaced this often; Ray's default is forever
# Render actors are always replaced (-1): the board bounds how often they may die. A death also costs a
# retry to every other segment queued on that actor, hence more task retries than attempts per segment.
RENDER_TASK_RETRIES = RENDER_DEATHS_IN_A_ROW + SEGMENT_ATTEMPTS
ASSEMBLY_RETRIES = 1  # re-run an assembly whose worker died (system failures only)

__all__ = ["JobError", "JobReport", "JobSettings", "Tracker", "load_specs", "read_results", "record_start", "row_label",
           "run_job", "write_results"]


POLL_SECONDS = 0.5
LOG_PROGRESS_SECONDS = 30.0  # a plain progress line this often when the output is not a terminal
STOP = threading.Event()  # set by a signal handler (commands.stop_on_signals): the job stops and writes results
_stop_signal = [0]
_END = object()


def request_stop(signal_number: int) -> None:
    """Ask the running job to stop (safe in a signal handler: it only sets a flag)."""
    _stop_signal[0] = signal_number
    STOP.set()


def _raise_if_stopped() -> None:
    if STOP.is_set():
        raise JobInterrupted(_stop_signal[0])


def _pull_rows(dataset, feed: queue.Queue, quit_pulling: threading.Event) -> None:
    rows = iter(dataset.iter_rows())  # a generator: closing it stops the pipeline
    try:
        for row in rows:
            feed.put(row)
            if quit_pulling.is_set():
                break
        feed.put(_END)
    except BaseException as exc:  # noqa: BLE001 - handed to the driver's loop, which raises it
        feed.put(exc)
    finally:
        rows.close()


class JobInterrupted(Exception):
    """SIGINT or SIGTERM reached the driver: the job stops, committed work stays, results are written."""

    def __init__(self, signal_number: int):
        super().__init__(f"interrupted by signal {signal_number}")
        self.signal_number = signal_number


class JobError(Exception):
    """The job itself cannot run (unreadable manifest, unreachable output, bad weights)."""


@dataclass
class ClipState:
    spec: ClipSpec
    plan: ClipPlan | None = None
    waiting: set = field(default_factory=set)  # segments still to come back from the render stage
    rendered: set = field(default_factory=set)  # segments back from the render stage (may precede the plan)
    render_seconds: float = 0.0
    result: dict | None = None  # final results row
    assembling: bool = False


@dataclass
class JobReport:
    results: list[dict]


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
            finished: list[ClipPlan] = (), stamps: RerunStamps | None = None) -> JobReport:
    """Run the whole job (the manifest's rows as `load_specs` gave them) on the connected Ray cluster; rows
    with a plan in `finished` (proven unchanged by `stamps`, `pipeline.rerun`) are skipped without Ray, which
    is needed only when some row is left. Raises JobError if it cannot start."""
    console = console or Console()
    ledger = Ledger(settings.output)
    tracker = Tracker(settings, specs, problems, console)
    for plan in finished:
        tracker.on_plan(plan)
    skipped = {plan.clip_id for plan in finished}
    to_run = [spec for spec in specs if spec.clip_id not in skipped]
    if to_run:
        _configure_ray_data()
        board = RemoteObject(ray.remote(num_cpus=0)(JobBoard).remote())
        dataset = ray.data.from_items([_row(spec) for spec in to_run], override_num_blocks=len(to_run))
        dataset = on_ray_data(dataset, PreprocessStage(settings, board), ClipSpec,
                              workers=(1, max(1, min(preprocess_actors, len(to_run)))),
                              max_restarts=ACTOR_RESTARTS, max_task_retries=ACTOR_RESTARTS)
        dataset = on_ray_data(dataset, RenderStage(settings, board, gpus_per_worker=render_gpus_per_actor), SegmentWork,
                              workers=(render_actors, render_actors),
                              max_restarts=-1, max_task_retries=RENDER_TASK_RETRIES)
        tracker.assembler = AssembleStage(settings)
        try:
            with tracker.progress:
                tracker.follow(dataset, board)
        except (KeyboardInterrupt, JobInterrupted) as stop:  # committed clips stay; the others say why they stopped
            signal_number = getattr(stop, "signal_number", 2)
            STOP.clear()
            # Ray Data's executor thread logs a traceback of its own when Ray shuts down under it: expected here.
            logging.getLogger("ray.data").setLevel(logging.CRITICAL)
            tracker.interrupt(f"the job was interrupted (signal {signal_number}) before this clip was finished; "
                              "rerun the same command to finish it")
            results = tracker.results()
            write_results(ledger, results)
            _record_stamps(stamps, results, skipped, console)
            ledger.record_job("end", interrupted=signal_number, done=sum(r["status"] == "done" for r in results))
            raise JobInterrupted(signal_number) from None
        except Exception as exc:  # e.g. actors that cannot start (bad weights): finished clips stay in the ledger
            raise JobError(f"the pipeline stopped: {storage.describe_error(exc)}") from exc
    results = tracker.results()
    write_results(ledger, results)
    _record_stamps(stamps, results, skipped, console)
    ledger.record_job("end", done=sum(r["status"] == "done" for r in results),
                      skipped=sum(r["status"] == "skipped" for r in results),
                      failed=sum(r["status"] == "failed" for r in results))
    return JobReport(results)


def _record_stamps(stamps: RerunStamps | None, results: list[dict], skipped: set[str], console: Console) -> None:
    """After the results: a failure here costs the next rerun its shortcut, nothing else."""
    if stamps is None:
        return
    try:
        stamps.record([r["clip_id"] for r in results if r["status"] in ("done", "skipped") and r["clip_id"] not in skipped])
    except Exception as exc:  # noqa: BLE001
        console.print(f"[yellow]note[/yellow]: input stamps not saved ({escape(storage.describe_error(exc))}); "
                      "the next rerun reads every input again")


def on_ray_data(dataset, stage: Stage, row_type, *, workers: tuple[int, int], **ray_args):
    """`stage` as a pool of Ray Data actors over `dataset` (rows of `row_type`), with its resources."""
    runner = type(f"{stage.name.title()}Workers", (StageRunner,), {})  # the name Ray shows for the pool
    return dataset.map_batches(
        runner, fn_constructor_kwargs=dict(stage=stage, row_type=row_type), batch_size=stage.batch_size,
        compute=ray.data.ActorPoolStrategy(min_size=workers[0], max_size=workers[1]),
        # Ray 2.60 has no named parameter for max_restarts / max_task_retries (its deprecation warning is expected).
        **stage.resources.ray_args(), **ray_args)


class StageRunner:
    """A stage inside a Ray Data actor: rows in and out as batches of one (`rows.to_batch`)."""

    def __init__(self, stage: Stage, row_type):
        context = ray.get_runtime_context()
        with warnings.catch_warnings():  # Ray 2.60 warns about its own internal call in this property
            warnings.simplefilter("ignore")
            restarted = context.was_current_actor_reconstructed
        stage.on_worker_start(restarted=restarted, node_id=context.get_node_id())
        stage.setup()
        self.stage, self.row_type = stage, row_type

    def __call__(self, batch: dict) -> Iterator[dict]:
        out = self.stage(from_batch(self.row_type, batch))
        for item in out if isinstance(out, Iterator) else [out]:
            yield to_batch(item)


class RemoteObject:
    """An actor that stages call like a local object: ``board.post_plan(plan)`` waits for the actor's answer."""

    def __init__(self, handle):
        self.handle = handle

    def __getattr__(self, name: str):
        if name.startswith("_"):  # pickling probes dunders before `handle` exists
            raise AttributeError(name)
        method = getattr(self.handle, name)
        return lambda *args, **kwargs: ray.get(method.remote(*args, **kwargs))


def _row(item) -> dict:
    return {name: column[0].item() if hasattr(column[0], "item") else column[0] for name, column in to_batch(item).items()}


def _from_row(row_type, row: dict):
    return from_batch(row_type, {name: [value] for name, value in row.items()})


def _configure_ray_data() -> None:
    context = ray.data.DataContext.get_current()
    # Each work row is its own block: segments of one clip spread over every render actor, and a
    # finished segment reaches the driver at once instead of waiting for a block to fill up.
    context.target_max_block_size = 1
    # A block lost for good (a task out of retries) fails only its clip, found missing below.
    context.max_errored_blocks = -1
    context.enable_progress_bars = False  # the job draws its own progress


class Tracker:
    """The driver's view of every clip: segments awaited, assemblies in flight, final rows, progress."""

    def __init__(self, settings: JobSettings, specs: list[ClipSpec], problems: list[Problem], console: Console):
        self.settings, self.console = settings, console
        self.ledger = Ledger(settings.output)
        self.assembler = AssembleStage(settings)
        self.clips = {spec.clip_id: ClipState(spec) for spec in specs}
        self.refused = _refused_rows(problems)
        self.assemblies: dict = {}  # ObjectRef -> clip_id
        self.progress = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                                 TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn(), console=console)
        total_rows = len(specs) + len(self.refused)
        self.clip_task = self.progress.add_task(self._clip_description(), total=total_rows,
                                                completed=len(self.refused))
        # The segment total is known only once every clip is planned: until then the bar has no total
        # (an ETA from the segments planned so far would say "0:00:00" with most clips still to plan).
        self.planned_segments: dict[str, int] = {}
        self.segments_done = 0
        self.segment_task = self.progress.add_task("segments", total=None)
        self.last_log = time.monotonic()  # non-terminal output (a log file) gets a plain progress line instead
        for refused in self.refused:
            console.print(f"[red]failed[/red] {escape(refused['error'])}")

    def follow(self, dataset, board) -> None:
        """Consume the pipeline's segment results and the board's plans until every clip has its result.
        The rows are pulled by a helper thread, so this loop looks at `STOP` (SIGINT / SIGTERM) at least
        every POLL_SECONDS even while a segment renders for minutes."""
        feed: queue.Queue = queue.Queue(maxsize=64)
        quit_pulling = threading.Event()
        puller = threading.Thread(target=_pull_rows, args=(dataset, feed, quit_pulling), daemon=True,
                                  name="job-results")
        puller.start()
        stopped = None
        while True:
            _raise_if_stopped()
            try:
                item = feed.get(timeout=POLL_SECONDS)
            except queue.Empty:
                self.take_plans(board)
                self.collect_assemblies(wait=False)
                self._refresh()
                continue
            if item is _END:
                break
            if isinstance(item, BaseException):
                raise item
            self.take_plans(board)
            result = _from_row(SegmentResult, item)
            self.on_segment(result)
            self.collect_assemblies(wait=False)
            if result.give_up:
                stopped = f"not rendered: render workers died {RENDER_DEATHS_IN_A_ROW} times in a row, the job stopped rendering"
                quit_pulling.set()  # the puller closes the pipeline, which stops its workers
                break
        self.take_plans(board)
        self.finish_streaming(stopped)
        while self.collect_assemblies(wait=True, timeout=POLL_SECONDS):
            _raise_if_stopped()

    def take_plans(self, board) -> None:
        for plan in board.take_plans():
            self.on_plan(plan)

    # -- rows from the pipeline ------------------------------------------------------------
    def on_plan(self, plan: ClipPlan) -> None:
        clip = self.clips[plan.clip_id]
        if clip.result is not None:
            return  # already failed: a late plan of that clip is ignored
        if plan.failed:
            clip.plan = clip.plan or plan
            self._finish(clip, "failed", error=plan.error)
        elif plan.skip_reason is not None:  # --unsuitable skip: a result with its reason
            clip.plan = plan
            self._finish(clip, "skipped", error=plan.skip_reason)
        elif plan.skipped:
            clip.plan = plan
            self._finish(clip, "skipped", output=self.ledger.output_uri(plan.clip_id), frames=plan.finished.get("frames"),
                         seconds=plan.finished.get("seconds"), **qc_columns(plan.finished.get("qc")))
        else:  # a preprocess task that was retried posts its plan again: the same plan
            clip.plan = plan
            clip.waiting = set(plan.pending) - clip.rendered
            self.planned_segments[plan.clip_id] = len(plan.pending)  # a retried plan replaces, not adds
            self._maybe_assemble(clip)
        self._refresh()

    def on_segment(self, result: SegmentResult) -> None:
        clip = self.clips[result.clip_id]
        self.segments_done += 1
        self.progress.advance(self.segment_task)
        if clip.result is not None:
            return  # already failed: late segments of that clip are ignored
        if result.error is not None:
            self._finish(clip, "failed", error=result.error)
        else:
            clip.rendered.add((result.start, result.stop))
            clip.waiting.discard((result.start, result.stop))
            clip.render_seconds += result.seconds
            self._maybe_assemble(clip)
        self._refresh()

    def _maybe_assemble(self, clip: ClipState) -> None:
        # Segment results may overtake their clip's plan: wait for the plan, then for all of them.
        if clip.plan is None or clip.waiting or clip.assembling:
            return
        clip.assembling = True
        self.start_assembly(clip)

    def start_assembly(self, clip: ClipState) -> None:
        ref = assemble_task.remote(self.assembler, clip.plan)
        self.assemblies[ref] = clip.spec.clip_id

    def collect_assemblies(self, *, wait: bool, timeout: float | None = None) -> bool:
        """Record finished assemblies (wait: for at least one, at most `timeout` s); True while some still run."""
        if not self.assemblies:
            return False
        ready, _ = ray.wait(list(self.assemblies), num_returns=1 if wait else len(self.assemblies),
                            timeout=timeout if wait else 0)
        for ref in ready:
            clip = self.clips[self.assemblies.pop(ref)]
            try:
                assembled = ray.get(ref)
            except Exception as exc:  # noqa: BLE001 - one clip's assembly failing fails that clip only
                cause = getattr(exc, "cause", None) or exc
                self._finish(clip, "failed", error=f"{row_label(clip.spec)}: assembly: {storage.describe_error(cause)}")
            else:
                self._finish(clip, "done", output=assembled["output"], frames=assembled["frames"],
                             seconds=clip.plan.seconds, assemble_seconds=assembled["assemble_seconds"],
                             **{name: assembled[name] for name in QC_COLUMNS})
        self._refresh()
        return bool(self.assemblies)

    def finish_streaming(self, stopped: str | None = None) -> None:
        """The pipeline is drained (or was stopped: `stopped` says why): a clip still waiting lost a row to a
        worker that died for good."""
        for clip in self.clips.values():
            if clip.result is not None or clip.assembling:
                continue
            if stopped:
                reason = stopped
            elif clip.plan is None:
                reason = "preprocessing worker died repeatedly (see the Ray logs)"
            else:
                lost = ", ".join(f"{a}-{b}" for a, b in sorted(clip.waiting))
                reason = f"render worker died repeatedly on segment(s) {lost} (see the Ray logs)"
            self._finish(clip, "failed", error=f"{row_label(clip.spec)}: {reason}")

    # -- results and progress --------------------------------------------------------------
    def _finish(self, clip: ClipState, status: str, **values) -> None:
        plan = clip.plan
        poses_info = (plan.finished.get("poses") if plan.skipped else plan.poses_info) if plan else None
        clip.result = dict(row=clip.spec.row, clip_id=clip.spec.clip_id, status=status, **poses_columns(poses_info),
                           fingerprint=plan.fingerprint if plan else "",
                           preprocess_seconds=plan.preprocess_seconds if plan and not (plan.failed or plan.skipped) else None,
                           render_seconds=clip.render_seconds, **values)
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
        planned = sum(self.planned_segments.values())
        all_planned = all(c.plan is not None or c.result is not None for c in self.clips.values())
        self.progress.update(self.segment_task, total=planned if all_planned else None,
                             description="segments" if all_planned else f"segments ({planned} planned so far)")
        if not self.console.is_terminal and time.monotonic() - self.last_log >= LOG_PROGRESS_SECONDS:
            self.last_log = time.monotonic()
            self.console.print(f"progress: {self._clip_description()} of {len(self.clips) + len(self.refused)}; "
                               f"segments {self.segments_done} rendered of {planned}{'' if all_planned else '+'}")

    def interrupt(self, reason: str) -> None:
        """Every clip without a result fails with `reason` (its finished segments stay for the rerun)."""
        for clip in self.clips.values():
            if clip.result is None:
                self._finish(clip, "failed", error=f"{row_label(clip.spec)}: {reason}")

    def results(self) -> list[dict]:
        rows = self.refused + [c.result for c in self.clips.values() if c.result is not None]
        return sorted(({name: row.get(name) for name in RESULT_COLUMNS} for row in rows), key=lambda r: r["row"])


def _refused_rows(problems: list[Problem]) -> list[dict]:
    """Rows refused by the schema checks: one failed result per row, all its problems in `error`."""
    by_row: dict[int, list[Problem]] = {}
    for problem in problems:
        by_row.setdefault(problem.row, []).append(problem)
    return [dict(row=row, clip_id=found[0].clip_id, status="failed", error="; ".join(str(p) for p in found))
            for row, found in sorted(by_row.items())]


def poses_columns(info: dict | None) -> dict:
    """Results columns of a clip's framing / pose summary (steps.reference_and_poses)."""
    if not info:
        return dict.fromkeys(POSES_COLUMNS)
    return dict(framing=info.get("framing"), pose_source=info.get("pose_source"),
                pose_align=info.get("pose_align_applied", info.get("pose_align")), verdict=info.get("verdict"),
                warnings=None if "warnings" not in info else json.dumps(info["warnings"]),
                poses_info=json.dumps(info, default=str))


TIMING_COLUMNS = ("preprocess_seconds", "render_seconds", "assemble_seconds")


def write_results(ledger: Ledger, results: list[dict]) -> None:
    """results.parquet: this run's rows, then every clip an earlier run listed and this one did not (a subset
    manifest, another manifest into the same root). A clip skipped now as already finished keeps the timings
    of the run that rendered it, not zeros."""
    try:
        earlier = {row["clip_id"]: row for row in read_results(ledger.root).to_dict("records")}
    except Exception:  # noqa: BLE001 - none yet, or unreadable: replaced, never a reason to lose this run's
        earlier = {}
    rows = []
    for row in results:
        before = earlier.pop(row["clip_id"], None)
        if (row["status"] == "skipped" and before is not None and before.get("fingerprint") == row.get("fingerprint")
                and before.get("status") in ("done", "skipped")):
            row = dict(row, **{name: before.get(name) for name in TIMING_COLUMNS})
        rows.append(row)
    rows += [{name: row.get(name) for name in RESULT_COLUMNS} for row in earlier.values()]
    frame = pd.DataFrame(rows, columns=list(RESULT_COLUMNS))
    buffer = io.BytesIO()
    frame.to_parquet(buffer, index=False)
    storage.write_atomic(ledger.results_uri(), buffer.getvalue())


def read_results(root: str) -> pd.DataFrame:
    return pd.read_parquet(io.BytesIO(storage.read_bytes(Ledger(root).results_uri(), max_bytes=1 << 30)))
