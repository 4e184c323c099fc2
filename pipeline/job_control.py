"""What a job needs before Ray starts, without importing Ray or torch (a refused `run` answers at once): the
manifest's rows (`load_specs`), the job's first write (`record_start`), why a job cannot run (`JobError`), and
the stop flag that SIGINT / SIGTERM set (`request_stop`; the driver's loop raises `JobInterrupted`)."""
from __future__ import annotations

import threading

from pipeline import storage
from pipeline.ledger import Ledger
from pipeline.manifest import ClipSpec, Problem, parse_manifest, read_manifest
from pipeline.rows import JobSettings

# Set by a signal handler (commands.stop_on_signals); the driver's loop reads it: the job stops, writes results.
STOP = threading.Event()
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


class JobError(Exception):
    """The job itself cannot run (unreadable manifest, unreachable output, bad weights)."""


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
