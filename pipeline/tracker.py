"""The driver's view of a job: every clip's plan, the segments it awaits, its assembly and its final results
row, and the progress shown. `Tracker.follow` is the driver's loop; every clip, segment and worker event of the
driver passes through one `Tracker.on_*` method (the place to hook progress displays or metrics).

It also holds the job's bound on render worker deaths: Ray restarts a render worker that dies, and the driver
counts those restarts from Ray's actor table (`ray_data.worker_restarts`), so a worker that dies while it
starts counts as one that dies mid-segment. After RENDER_DEATHS_IN_A_ROW deaths with no segment finished in
between, the job stops rendering: every clip not yet done fails naming its row, and `run` exits 3.
"""
from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from pipeline import storage
from pipeline.events import JobObserver
from pipeline.ledger import Ledger
from pipeline.manifest import ClipSpec, Problem
from pipeline.qc import QC_COLUMNS, qc_columns
from pipeline.ray_data import END, RowPuller, item_of
from pipeline.results import RESULT_COLUMNS, poses_columns, refused_rows
from pipeline.rows import ClipPlan, JobSettings, SegmentResult, row_label
from pipeline.segment_store import read_clip_plan
from pipeline.stages import RENDER_DEATHS_IN_A_ROW

POLL_SECONDS = 0.5
WATCH_WORKERS_SECONDS = 2.0  # how often the driver reads the render workers' restart count
LOG_PROGRESS_SECONDS = 10.0  # a plain progress line at most this often when the output is not a terminal (if it moved)
QUIET_PROGRESS_SECONDS = 60.0  # and at least this often while nothing moves
STOP = threading.Event()  # set by a signal handler (commands.stop_on_signals): the job stops and writes results
_stop_signal = [0]


def request_stop(signal_number: int) -> None:
    """Ask the running job to stop (safe in a signal handler: it only sets a flag)."""
    _stop_signal[0] = signal_number
    STOP.set()


def raise_if_stopped() -> None:
    if STOP.is_set():
        raise JobInterrupted(_stop_signal[0])


class JobInterrupted(Exception):
    """SIGINT or SIGTERM reached the driver: the job stops, committed work stays, results are written."""

    def __init__(self, signal_number: int):
        super().__init__(f"interrupted by signal {signal_number}")
        self.signal_number = signal_number


@dataclass
class ClipState:
    spec: ClipSpec
    plan: ClipPlan | None = None
    waiting: set = field(default_factory=set)  # segments still to come back from the render stage
    rendered: set = field(default_factory=set)  # segments back from the render stage (may precede the plan)
    render_seconds: float = 0.0
    result: dict | None = None  # final results row
    assembling: bool = False


class Tracker:
    """The driver's view of every clip: segments awaited, assemblies in flight, final rows, progress.
    `assemble(plan)` starts a clip's assembly and returns its Ray ObjectRef (run_job gives it);
    `render_restarts()` is how often render workers have died so far."""

    def __init__(self, settings: JobSettings, specs: list[ClipSpec], problems: list[Problem], console: Console,
                 assemble: Callable | None = None, render_restarts: Callable[[], int] = lambda: 0,
                 notify: str | None = None):
        self.settings, self.console = settings, console
        self.ledger = Ledger(settings.output)
        self.assemble, self.count_render_restarts = assemble, render_restarts
        self.render_restarts_seen = 0
        self.clips = {spec.clip_id: ClipState(spec) for spec in specs}
        self.refused = refused_rows(problems)
        self.assemblies: dict = {}  # ObjectRef -> clip_id
        self.restarts_at_last_segment = 0  # render worker restarts when the last segment finished
        self.board_incarnation = None
        self.pipeline_open = False  # the row-pulling thread is still inside Ray Data: Ray must not be shut down
        # The segments bar moves inside a segment too: the render workers report each denoising step (and
        # decoded batch) to the board (`stages.ProgressReporter`); its ETA is `SegmentRate`'s.
        self.progress = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                                 TimeElapsedColumn(), TextColumn("{task.fields[eta]}"), console=console)
        total_rows = len(specs) + len(self.refused)
        self.clip_task = self.progress.add_task(self._clip_description(), total=total_rows,
                                                completed=len(self.refused), eta="")
        # The segment total is known only once every clip is planned: until then the bar has no total
        # (an ETA from the segments planned so far would say "0:00:00" with most clips still to plan).
        self.planned_segments: dict[str, int] = {}
        self.segments_done = 0
        self.segment_task = self.progress.add_task("segments", total=None, eta="")
        self.in_flight: dict[tuple, tuple[float, str]] = {}  # segment -> (fraction rendered, step), from the board
        self.segments_seen: set[tuple] = set()  # segments whose result row came: later reports are stale
        self.rate = SegmentRate()
        self.last_log = time.monotonic()  # non-terminal output (a log file) gets a plain progress line instead
        self.last_line = ""
        # the event stream and the driver's metrics (pipeline/events.py, pipeline/metrics.py)
        self.observer = JobObserver(settings.output, settings.preset, total_rows, settings.model_identity, notify)
        for refused in self.refused:
            console.print(f"[red]failed[/red] {escape(refused['error'])}")
            self.observer.clip_finished(_result_row(refused))

    def follow(self, dataset, board) -> None:
        """Consume the pipeline's segment results and the board's plans until every clip has its result.
        The rows are pulled by a helper thread, so this loop looks at `STOP` (SIGINT / SIGTERM) and the
        render workers' deaths at least every POLL_SECONDS even while a segment renders for minutes."""
        puller = RowPuller(dataset)
        self.restarts_at_last_segment = self.render_restarts()
        watched = time.monotonic()
        stopped = None
        while stopped is None:
            raise_if_stopped()
            row = puller.next_row(timeout=POLL_SECONDS)
            if row is END:
                break
            self.take_plans(board)
            self.take_progress(board)
            if row is not None:
                self.on_segment(item_of(SegmentResult, row))
            if row is not None or time.monotonic() - watched >= WATCH_WORKERS_SECONDS:
                watched = time.monotonic()
                restarts = self.render_restarts()
                self.observer.render_deaths(restarts)
                stopped = self.on_render_deaths(restarts - self.restarts_at_last_segment)
            self.collect_assemblies(wait=False)
            self._refresh()
        if stopped:
            # The puller closes the pipeline, which stops its workers, once it gets a row; workers that keep
            # dying may never send one.
            self.pipeline_open = not puller.stop(wait=5.0)
        self.take_plans(board)
        self.finish_streaming(stopped)
        while self.collect_assemblies(wait=True, timeout=POLL_SECONDS):
            raise_if_stopped()

    def render_restarts(self) -> int:
        """Render worker restarts so far; the last count read when Ray's control store does not answer."""
        try:
            self.render_restarts_seen = self.count_render_restarts()
        except Exception:  # noqa: BLE001 - a slow or restarting control store: count again on the next poll
            pass
        return self.render_restarts_seen

    def take_plans(self, board) -> None:
        for plan in board.take_plans():
            self.on_plan(plan)
        incarnation = board.incarnation()  # after taking: plans posted to a board lost meanwhile are found below
        if self.board_incarnation not in (None, incarnation):
            self.on_board_restarted()
        self.board_incarnation = incarnation

    def take_progress(self, board) -> None:
        try:
            reports = board.take_progress()
        except Exception:  # noqa: BLE001 - progress is for show: a board that does not answer is asked again
            return
        for key, report in reports.items():
            if key in self.segments_seen:
                continue
            if report is None:
                self.in_flight.pop(key, None)
            else:
                self.in_flight[key] = report

    # -- events ------------------------------------------------------------------------------
    def on_board_restarted(self) -> None:
        """The board actor died and Ray restarted it empty: plans it held for the driver are gone, so every
        clip still without a plan takes the copy preprocessing stored beside its segments, if any (the others
        are still being preprocessed and post theirs to the new board)."""
        for clip in self.clips.values():
            if clip.plan is None and clip.result is None:
                plan = read_clip_plan(self.ledger, clip.spec.clip_id)
                if plan is not None:
                    self.on_plan(plan)

    def on_render_deaths(self, in_a_row: int) -> str | None:
        """Why the job stops rendering, once render workers died RENDER_DEATHS_IN_A_ROW times in a row."""
        if in_a_row < RENDER_DEATHS_IN_A_ROW:
            return None
        return (f"not rendered: render workers died {in_a_row} times in a row without finishing a segment, "
                "the job stopped rendering")

    def on_plan(self, plan: ClipPlan) -> None:
        clip = self.clips[plan.clip_id]
        if clip.result is not None:
            return  # already failed: a late plan of that clip is ignored
        self.observer.planned(plan)
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
        key = (result.clip_id, result.fingerprint, result.start, result.stop)
        self.segments_seen.add(key)
        self.in_flight.pop(key, None)
        if result.error is None:
            self.restarts_at_last_segment = self.render_restarts()
        if clip.result is not None:
            return  # already failed: late segments of that clip are ignored
        self.observer.segment(result)
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
        self.assemblies[self.assemble(clip.plan)] = clip.spec.clip_id

    def collect_assemblies(self, *, wait: bool, timeout: float | None = None) -> bool:
        """Record finished assemblies (wait: for at least one, at most `timeout` s); True while some still run."""
        import ray

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
                self.on_assembled(clip, assembled)
        self._refresh()
        return bool(self.assemblies)

    def on_assembled(self, clip: ClipState, assembled: dict) -> None:
        self._finish(clip, "done", output=assembled["output"], frames=assembled["frames"], seconds=clip.plan.seconds,
                     assemble_seconds=assembled["assemble_seconds"], **{name: assembled[name] for name in QC_COLUMNS})

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

    def interrupt(self, reason: str) -> None:
        """Every clip without a result fails with `reason` (its finished segments stay for the rerun)."""
        for clip in self.clips.values():
            if clip.result is None:
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
        self.observer.clip_finished(_result_row(clip.result))
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
        self.observer.tick(sum(len(c.waiting) for c in self.clips.values() if c.result is None), len(self.assemblies))
        self.progress.update(self.clip_task, description=self._clip_description())
        planned = sum(self.planned_segments.values())
        all_planned = all(c.plan is not None or c.result is not None for c in self.clips.values())
        rendered = self.segments_done + sum(fraction for fraction, _ in self.in_flight.values())
        rendering = [step for _, step in self.in_flight.values() if step != "done"]  # done: its result row is on its way
        doing = f" ({len(rendering)} rendering: {', '.join(sorted(set(rendering)))})" if rendering else ""
        remaining = self.rate.remaining(rendered, planned) if all_planned else None
        eta = "ETA " + (time.strftime("%H:%M:%S", time.gmtime(remaining)) if remaining is not None else "-:--:--")
        self.progress.update(self.segment_task, total=planned if all_planned else None, completed=rendered, eta=eta,
                             description=("segments" if all_planned else f"segments ({planned} planned so far)") + doing)
        line = (f"progress: {self._clip_description()} of {len(self.clips) + len(self.refused)}; segments "
                f"{round(rendered, 2):g} rendered of {planned}{'' if all_planned else '+'}{doing}")
        since = time.monotonic() - self.last_log
        if not self.console.is_terminal and (since >= LOG_PROGRESS_SECONDS and line != self.last_line
                                             or since >= QUIET_PROGRESS_SECONDS):
            self.last_log, self.last_line = time.monotonic(), line
            self.console.print(f"{line}; {eta}")

    def results(self) -> list[dict]:
        rows = self.refused + [c.result for c in self.clips.values() if c.result is not None]
        return sorted((_result_row(row) for row in rows), key=lambda r: r["row"])


def _result_row(row: dict) -> dict:
    return {name: row.get(name) for name in RESULT_COLUMNS}


class SegmentRate:
    """The job's rendering rate in segments per second, measured from the first progress a render worker
    reported (so model loading is not in it); `remaining` is the ETA in seconds, None until it was measured."""

    def __init__(self):
        self.first: tuple[float, float] | None = None  # (time, segments rendered) at the first report

    def remaining(self, rendered: float, total: int, now: float | None = None) -> float | None:
        now = time.monotonic() if now is None else now
        if rendered <= 0:
            return None
        if self.first is None:
            self.first = (now, rendered)
            return None
        seconds, done = now - self.first[0], rendered - self.first[1]
        if seconds <= 0 or done <= 0:
            return None
        return max(0.0, total - rendered) / (done / seconds)
