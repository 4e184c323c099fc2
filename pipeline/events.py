"""The job's event stream: one JSON object per event, for tools that follow a run from the output root.

    <root>/_events/<job id>/<part:08d>.jsonl     one JSON object per line, each part a new object (atomic write)

The driver writes it (it sees every clip's fate): parts are never appended to, so any object store takes
them; a new part every FLUSH_SECONDS while events come, and one at the job's end. The job id starts with
the UTC start time, so the last folder is the latest job. A reader lists the parts and reads the ones it
has not read yet (`EventReader`); `replay` rebuilds the job's results table from its events.

Events (`kind`, `time` (Unix seconds), `job`, and per kind):
    job_started      rows, preset, model
    clip_planned     row, clip_id, frames, segments, pending (segments still to render)
    clip_started     row, clip_id: the first of its segments came back from a render worker
    segment_failed   row, clip_id, start, stop, attempts, error (a segment that will not be retried)
    worker_died      stage, deaths (render worker deaths so far in the job)
    clip_done / clip_failed / clip_skipped   result: the clip's results row (`error` says why it failed;
                     a skip's reason is `skipped_reason`)
    job_ended        counts by status, interrupted (a signal number or null), seconds
Writing never fails the job: a part that cannot be written is kept and tried again with the next one
(bounded: the oldest events beyond MAX_PENDING are dropped and the next part says how many).
"""
from __future__ import annotations

import json
import logging
import math
import threading
import time
import uuid

from pipeline import storage

log = logging.getLogger(__name__)

EVENTS_FOLDER = "_events"
FLUSH_SECONDS = 2.0
MAX_PENDING = 100_000
TERMINAL = {"clip_done": "done", "clip_failed": "failed", "clip_skipped": "skipped"}
SKIP_REASON = "finished earlier with the same inputs, settings and model (fingerprint unchanged)"


def new_job_id() -> str:
    return time.strftime("%Y%m%dT%H%M%SZ", time.gmtime()) + "-" + uuid.uuid4().hex[:8]


def _json_safe(value):
    """Results rows hold numpy scalars and NaN for missing numbers: plain JSON values (NaN becomes null)."""
    if hasattr(value, "item") and not isinstance(value, (list, dict, str)):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {key: _json_safe(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(item) for item in value]
    return value


class EventWriter:
    def __init__(self, root: str, job_id: str | None = None, flush_seconds: float = FLUSH_SECONDS):
        self.job_id = job_id or new_job_id()
        self.folder = storage.join(root, EVENTS_FOLDER, self.job_id)
        self.flush_seconds = flush_seconds
        self.pending: list[dict] = []
        self.part = 0
        self.dropped = 0
        self.last_flush = time.monotonic()
        self.warned = False

    def emit(self, kind: str, **fields) -> None:
        self.pending.append(dict(kind=kind, time=time.time(), job=self.job_id, **_json_safe(fields)))
        if len(self.pending) > MAX_PENDING:
            self.dropped += len(self.pending) - MAX_PENDING
            del self.pending[:len(self.pending) - MAX_PENDING]
        self.flush_if_due()

    def flush_if_due(self) -> None:
        if self.pending and time.monotonic() - self.last_flush >= self.flush_seconds:
            self.flush()

    def flush(self) -> bool:
        """Write the pending events as the next part; False (and they stay pending) if storage refused."""
        self.last_flush = time.monotonic()
        if not self.pending:
            return True
        events = self.pending
        if self.dropped:
            events = [dict(kind="events_dropped", time=time.time(), job=self.job_id, count=self.dropped), *events]
        body = "".join(json.dumps(event, sort_keys=True) + "\n" for event in events).encode()
        try:
            storage.write_atomic(storage.join(self.folder, f"{self.part:08d}.jsonl"), body)
        except Exception as exc:  # noqa: BLE001 - the job goes on; the events are tried again with the next part
            if not self.warned:
                log.warning("events not written to %s (kept, tried again): %s", storage.redact(self.folder),
                            storage.describe_error(exc))
                self.warned = True
            return False
        self.part += 1
        self.pending, self.dropped = [], 0
        return True


def job_ids(root: str) -> list[str]:
    """The jobs with an event stream under root, oldest first."""
    fs, path = storage.url_to_fs(storage.join(root, EVENTS_FOLDER))
    try:
        entries = storage.with_retries(fs.ls, path, detail=False)
    except FileNotFoundError:
        return []
    return sorted(entry.rstrip("/").rsplit("/", 1)[-1] for entry in entries)


class EventReader:
    """Follows one job's parts: each `read_new()` returns the events of the parts written since the last call."""

    def __init__(self, root: str, job_id: str):
        self.folder = storage.join(root, EVENTS_FOLDER, job_id)
        self.seen: set[str] = set()

    def read_new(self) -> list[dict]:
        fs, path = storage.url_to_fs(self.folder)
        try:
            fs.invalidate_cache(path)
            names = sorted(storage.with_retries(fs.ls, path, detail=False))
        except FileNotFoundError:
            return []
        events = []
        for name in names:
            part = name.rstrip("/").rsplit("/", 1)[-1]
            if not part.endswith(".jsonl") or part in self.seen:
                continue
            body = storage.read_bytes(storage.join(self.folder, part), max_bytes=1 << 30)
            events += [json.loads(line) for line in body.decode().splitlines() if line.strip()]
            self.seen.add(part)
        return events


def read_events(root: str, job_id: str | None = None) -> list[dict]:
    """Every event of one job (default: the latest), in the order written."""
    if job_id is None:
        jobs = job_ids(root)
        if not jobs:
            return []
        job_id = jobs[-1]
    return EventReader(root, job_id).read_new()


def replay(events: list[dict]) -> list[dict]:
    """The results rows the events describe, one per clip (its last terminal event), ordered by row."""
    final: dict[str, dict] = {}
    for event in events:
        if event["kind"] in TERMINAL:
            final[event["result"]["clip_id"]] = event["result"]
    return sorted(final.values(), key=lambda result: result["row"])


# -- --notify URL: the job's summary POSTed at its end ------------------------------------------------------
NOTIFY_ATTEMPTS = 3
NOTIFY_TIMEOUT_SECONDS = 5.0  # per request
NOTIFY_WAIT_SECONDS = 15.0  # the longest the driver waits for it after the job (the job itself never waits)


def job_summary(job_id: str, output: str, results: list[dict], seconds: float, interrupted: int | None = None) -> dict:
    """What --notify sends: counts and the failures' reasons, the output root with any credentials removed;
    nothing from the environment."""
    counts = {status: sum(r["status"] == status for r in results) for status in ("done", "skipped", "failed")}
    failures = [storage.redact(str(r.get("error"))) for r in results if r["status"] == "failed"]
    return dict(job=job_id, output=storage.redact(output), rows=len(results), seconds=round(seconds, 1),
                interrupted=interrupted, failures=failures[:20], more_failures=max(0, len(failures) - 20), **counts)


def notify(url: str, summary: dict, *, attempts: int = NOTIFY_ATTEMPTS, timeout: float = NOTIFY_TIMEOUT_SECONDS,
           backoff: float = 1.0) -> threading.Thread:
    """POST `summary` as JSON to `url` from a daemon thread (retried on errors and 5xx); the caller may join it
    for a bounded time. The URL itself is never logged (it may hold a token)."""
    import urllib.error
    import urllib.request

    body = json.dumps(summary).encode()

    def post() -> None:
        for attempt in range(1, attempts + 1):
            request = urllib.request.Request(url, data=body, method="POST",
                                             headers={"Content-Type": "application/json"})
            try:
                with urllib.request.urlopen(request, timeout=timeout) as response:
                    if response.status < 300:
                        return
                    problem = f"HTTP {response.status}"
            except urllib.error.HTTPError as exc:
                problem = f"HTTP {exc.code}"
                if exc.code < 500 and exc.code != 429:
                    break  # a refusal: trying again changes nothing
            except Exception as exc:  # noqa: BLE001 - unreachable, timed out: retried
                problem = type(exc).__name__
            if attempt < attempts:
                time.sleep(backoff * 2 ** (attempt - 1))
        log.warning("--notify: the job's summary was not delivered (%s)", problem)

    thread = threading.Thread(target=post, daemon=True, name="job-notify")
    thread.start()
    return thread


# -- the driver's side: one object the job's tracker calls, feeding the event stream and the driver's metrics --
class JobObserver:
    """The tracker's hooks: events written under the output root, driver-side metrics, the --notify POST."""

    def __init__(self, output: str, preset: str, rows: int, model: str = "", notify_url: str | None = None):
        from pipeline import metrics

        self.metrics, self.output, self.preset, self.rows = metrics, output, preset, rows
        self.notify_url = notify_url
        self.writer = EventWriter(output)
        self.started = time.time()
        self.worked = self.finished = 0
        self.started_clips: set[str] = set()
        self.deaths = 0
        self.writer.emit("job_started", rows=rows, preset=preset, model=model)

    @property
    def job_id(self) -> str:
        return self.writer.job_id

    def planned(self, plan) -> None:
        if not (plan.failed or plan.skipped):
            self.writer.emit("clip_planned", row=plan.row, clip_id=plan.clip_id, frames=plan.frames,
                             segments=len(plan.segments), pending=len(plan.pending))

    def segment(self, result) -> None:
        if result.error is not None:
            self.writer.emit("segment_failed", row=result.row, clip_id=result.clip_id, start=result.start,
                             stop=result.stop, attempts=result.attempts, error=result.error)
        elif result.clip_id not in self.started_clips:
            self.started_clips.add(result.clip_id)
            self.writer.emit("clip_started", row=result.row, clip_id=result.clip_id)

    def clip_finished(self, result: dict) -> None:
        status = result["status"]
        fields = dict(result=result)
        if status == "skipped":
            fields["skipped_reason"] = SKIP_REASON
        self.writer.emit(f"clip_{status}", **fields)
        self.metrics.clip_finished(result, self.preset)
        self.finished += 1
        self.worked += status != "skipped"

    def render_deaths(self, deaths: int) -> None:
        if deaths > self.deaths:
            for _ in range(deaths - self.deaths):
                self.writer.emit("worker_died", stage="render", deaths=deaths)
            self.deaths = deaths

    def eta_seconds(self) -> float | None:
        """Rows left at the rate clips were rendered or failed so far (skips cost nothing)."""
        if not self.worked:
            return None
        return (self.rows - self.finished) * (time.time() - self.started) / self.worked

    def tick(self, segments_waiting: int, clips_assembling: int) -> None:
        """Every pass of the driver's loop: gauges, and the events of the last seconds as a part when due."""
        self.metrics.queues(segments_waiting, clips_assembling)
        self.metrics.job_progress(self.rows, self.eta_seconds())
        self.writer.flush_if_due()

    def ended(self, results: list[dict], interrupted: int | None = None) -> None:
        """The results are written: the last events, then the summary POSTed (waited for a bounded time)."""
        counts = {status: sum(r["status"] == status for r in results) for status in ("done", "skipped", "failed")}
        seconds = time.time() - self.started
        self.metrics.job_progress(self.rows, 0.0)
        self.writer.emit("job_ended", interrupted=interrupted, seconds=round(seconds, 3), **counts)
        self.writer.flush()
        if self.notify_url:
            notify(self.notify_url, job_summary(self.job_id, self.output, results, seconds, interrupted)).join(
                NOTIFY_WAIT_SECONDS)
