"""`cli.py status OUTPUT --watch`: a live view of a job from any machine that can read its output root.

It follows the latest job's event stream (`pipeline.events`): done / failed / skipped / in flight, the rate of
finished clips, the ETA at that rate and the last failures; it ends when the job's `job_ended` event comes
(exit 0), or after `--timeout` seconds without one (exit 2). On a terminal the view redraws in place; in a log
one line per change.
"""
from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass, field

from rich.console import Console, Group
from rich.live import Live
from rich.markup import escape
from rich.text import Text

from pipeline import storage
from pipeline.events import TERMINAL, EventReader, job_ids

LAST_FAILURES = 5


@dataclass
class JobView:
    job_id: str
    rows: int = 0
    preset: str = ""
    started: float | None = None
    ended: dict | None = None
    counts: dict = field(default_factory=lambda: dict(done=0, failed=0, skipped=0))
    planned: set = field(default_factory=set)
    finished: set = field(default_factory=set)
    worker_deaths: int = 0
    failures: deque = field(default_factory=lambda: deque(maxlen=LAST_FAILURES))
    last_event: float | None = None

    def apply(self, event: dict) -> None:
        kind = event["kind"]
        self.last_event = event["time"]
        if kind == "job_started":
            self.started, self.rows, self.preset = event["time"], event["rows"], event.get("preset", "")
        elif kind in ("clip_planned", "clip_started"):
            self.planned.add(event["clip_id"])
        elif kind in TERMINAL:
            result = event["result"]
            if result["clip_id"] not in self.finished:
                self.finished.add(result["clip_id"])
                self.counts[TERMINAL[kind]] += 1
            if kind == "clip_failed":
                self.failures.append(result.get("error") or "")
        elif kind == "worker_died":
            self.worker_deaths = event.get("deaths", self.worker_deaths + 1)
        elif kind == "job_ended":
            self.ended = event

    @property
    def in_flight(self) -> int:
        return len(self.planned - self.finished)

    def rate_per_minute(self, now: float) -> float | None:
        """Clips rendered or failed per minute since the job started (skips cost nothing, so they don't count)."""
        worked = self.counts["done"] + self.counts["failed"]
        if self.started is None or not worked:
            return None
        return worked / max((self.ended["time"] if self.ended else now) - self.started, 1e-3) * 60

    def eta_seconds(self, now: float) -> float | None:
        rate = self.rate_per_minute(now)
        left = self.rows - sum(self.counts.values())
        return None if rate is None else left / rate * 60

    def summary(self, now: float) -> str:
        rate, eta = self.rate_per_minute(now), self.eta_seconds(now)
        state = "ended" if self.ended else "running"
        return (f"job {self.job_id} ({state}): {self.counts['done']} done, {self.counts['failed']} failed, "
                f"{self.counts['skipped']} skipped, {self.in_flight} in flight of {self.rows} row(s); "
                f"rate {'-' if rate is None else f'{rate:.1f}/min'}, "
                f"ETA {'-' if eta is None or self.ended else _duration(eta)}"
                + (f"; render worker deaths {self.worker_deaths}" if self.worker_deaths else ""))

    def view(self, now: float) -> Group:
        lines = [Text(self.summary(now))]
        lines += [Text.from_markup(f"[red]failed[/red] {escape(storage.redact(error))}") for error in self.failures]
        return Group(*lines)


def _duration(seconds: float) -> str:
    seconds = int(seconds)
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


def watch_command(output: str, *, interval: float = 2.0, timeout: float | None = None,
                  console: Console | None = None) -> int:
    console = console or Console(highlight=False, soft_wrap=True)
    deadline = None if timeout is None else time.monotonic() + timeout
    jobs = job_ids(output)
    while not jobs:  # a job about to start: its driver writes the first part within seconds
        if deadline is not None and time.monotonic() > deadline:
            console.print(f"[red]error[/red]: no job's events under {escape(storage.redact(output))}")
            return 2
        time.sleep(interval)
        jobs = job_ids(output)
    view, reader = JobView(jobs[-1]), EventReader(output, jobs[-1])
    shown = None
    with Live(view.view(time.time()), console=console, auto_refresh=False, transient=False) if console.is_terminal \
            else _NoLive() as live:
        while True:
            for event in reader.read_new():
                view.apply(event)
            now = time.time()
            if console.is_terminal:
                live.update(view.view(now), refresh=True)
            else:
                line = view.summary(now) if view.ended else view.summary(now).rsplit("; rate", 1)[0]
                if line != shown:  # a log gets a line when the counts change, not one per poll
                    console.print(escape(line))
                    shown = line
            if view.ended:
                break
            if deadline is not None and time.monotonic() > deadline:
                console.print(f"[red]error[/red]: job {view.job_id} has not ended after {timeout:g} s")
                return 2
            time.sleep(interval)
    if not console.is_terminal:
        for error in view.failures:
            console.print(f"[red]failed[/red] {escape(storage.redact(error))}")
    return 0


class _NoLive:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False
