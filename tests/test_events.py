"""The event stream (parts on a real S3 server: never an append), its replay, `status --watch` following a
stream as it is written, and --notify against an HTTP server on loopback that fails first."""
from __future__ import annotations

import http.server
import json
import socket
import threading
import time

from conftest import S3_SECRET
from rich.console import Console

from pipeline import storage
from pipeline.events import EVENTS_FOLDER, EventReader, EventWriter, job_ids, job_summary, notify, read_events, replay
from pipeline.watch import watch_command


def result(row: int, clip_id: str, status: str, error: str | None = None) -> dict:
    return dict(row=row, clip_id=clip_id, status=status, output=None, frames=12 if status == "done" else None,
                error=error, render_seconds=float("nan"))


def test_parts_on_s3_are_new_objects_read_once(s3_bucket):
    writer = EventWriter(s3_bucket, flush_seconds=3600)
    writer.emit("job_started", rows=2, preset="tiny", model="m")
    writer.emit("clip_planned", row=0, clip_id="a", frames=12, segments=1, pending=1)
    assert writer.flush()
    reader = EventReader(s3_bucket, writer.job_id)
    assert [e["kind"] for e in reader.read_new()] == ["job_started", "clip_planned"]
    writer.emit("clip_done", result=result(0, "a", "done"))
    writer.emit("clip_failed", result=result(1, "b", "failed", "row 1 (clip 'b'): audio: not found"))
    writer.emit("clip_done", result=result(0, "a", "done"))  # a later event of a clip replaces the earlier one
    writer.flush()
    assert [e["kind"] for e in reader.read_new()] == ["clip_done", "clip_failed", "clip_done"]
    assert reader.read_new() == []
    parts = storage.list_files(storage.join(s3_bucket, EVENTS_FOLDER, writer.job_id), max_entries=10)
    assert [p.rsplit("/", 1)[-1] for p in parts] == ["00000000.jsonl", "00000001.jsonl"]
    assert job_ids(s3_bucket) == [writer.job_id]
    events = read_events(s3_bucket)
    rows = replay(events)
    assert [(r["clip_id"], r["status"]) for r in rows] == [("a", "done"), ("b", "failed")]
    assert rows[0]["render_seconds"] is None  # NaN is not JSON: a missing number
    assert all(e["job"] == writer.job_id and e["time"] > 0 for e in events)


def test_events_a_store_refuses_are_kept_and_written_later(tmp_path):
    blocker = tmp_path / "root"
    blocker.write_text("a file where the output folder should be")
    writer = EventWriter(str(blocker), flush_seconds=3600)
    writer.emit("job_started", rows=1, preset="tiny", model="m")
    assert not writer.flush() and len(writer.pending) == 1
    blocker.unlink()
    assert writer.flush() and writer.pending == []
    assert [e["kind"] for e in read_events(str(blocker))] == ["job_started"]


def test_watch_follows_a_job_until_it_ends(tmp_path):
    root = str(tmp_path)
    writer = EventWriter(root, flush_seconds=0)

    def job() -> None:
        writer.emit("job_started", rows=3, preset="tiny", model="m")
        for row, clip_id in enumerate("abc"):
            time.sleep(0.3)
            writer.emit("clip_planned", row=row, clip_id=clip_id, frames=12, segments=1, pending=1)
        time.sleep(0.3)
        writer.emit("clip_done", result=result(0, "a", "done"))
        writer.emit("clip_failed", result=result(1, "b", "failed", "row 1 (clip 'b'): render worker died"))
        time.sleep(0.3)
        writer.emit("clip_done", result=result(2, "c", "done"))
        writer.emit("job_ended", interrupted=None, done=2, skipped=0, failed=1, seconds=1.5)

    thread = threading.Thread(target=job)
    console = Console(record=True, width=200, force_terminal=False)
    thread.start()
    started = time.monotonic()
    assert watch_command(root, interval=0.1, timeout=60, console=console) == 0
    assert time.monotonic() - started < 30
    thread.join()
    text = console.export_text()
    assert "in flight of 3 row(s)" in text  # seen while running
    assert f"job {writer.job_id} (ended): 2 done, 1 failed, 0 skipped, 0 in flight of 3 row(s)" in text
    assert "failed row 1 (clip 'b'): render worker died" in text


def test_watch_gives_up_without_a_job(tmp_path):
    console = Console(record=True, force_terminal=False)
    assert watch_command(str(tmp_path), interval=0.1, timeout=0.3, console=console) == 2
    assert "no job's events" in console.export_text()


class Receiver(http.server.BaseHTTPRequestHandler):
    bodies: list = []
    fail_first = 1

    def do_POST(self):  # noqa: N802 - http.server's name
        body = self.rfile.read(int(self.headers["Content-Length"]))
        Receiver.bodies.append(body)
        self.send_response(500 if len(Receiver.bodies) <= Receiver.fail_first else 204)
        self.end_headers()

    def log_message(self, *args):
        pass


def test_notify_retries_and_sends_no_secret(s3_endpoint):
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Receiver)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        results = [result(0, "a", "done"), result(1, "b", "failed", f"row 1 (clip 'b'): denied ({S3_SECRET})")]
        summary = job_summary("job-1", "s3://bucket/out", results, 12.3)
        notify(f"http://127.0.0.1:{server.server_port}/hook", summary, backoff=0.05).join(10)
    finally:
        server.shutdown()
    assert len(Receiver.bodies) == 2  # a 500, then delivered
    body = Receiver.bodies[-1].decode()
    sent = json.loads(body)
    assert (sent["done"], sent["failed"], sent["rows"], sent["job"]) == (1, 1, 2, "job-1")
    assert S3_SECRET not in body and "row 1 (clip 'b'): denied" in sent["failures"][0]


def test_notify_to_nowhere_is_bounded():
    with socket.socket() as probe:  # a port nothing listens on once closed
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    started = time.monotonic()
    thread = notify(f"http://127.0.0.1:{port}/unreachable", {"job": "x"}, attempts=3, timeout=1, backoff=0.05)
    thread.join(10)
    assert not thread.is_alive() and time.monotonic() - started < 10


def test_tracker_events_replay_to_its_results(tmp_path):
    """The driver's tracker (no Ray: its hooks called as the job's loop calls them): a refused row, a failed plan,
    a skipped clip and a rendered one; the events replayed equal the results it writes."""
    import io

    from pipeline.manifest import ClipSpec, Problem
    from pipeline.qc import qc_columns
    from pipeline.rows import ClipPlan, JobSettings, SegmentResult
    from pipeline.tracker import Tracker

    settings = JobSettings(output=str(tmp_path), preset="tiny", weights=None, model_identity="m+w", segment_frames=16,
                           overlap_frames=4)
    specs = [ClipSpec(row=i, clip_id=c, image="x.png", audio="x.wav") for i, c in enumerate("abc")]
    tracker = Tracker(settings, specs, [Problem(3, "d", "audio", "not found")], Console(file=io.StringIO()),
                      notify=None)
    tracker.start_assembly = lambda clip: None
    tracker.on_plan(ClipPlan(0, "a", error="row 0 (clip 'a'): image: not a PNG or JPEG"))
    tracker.on_plan(ClipPlan(1, "b", "fb", finished=dict(frames=12, seconds=1.0, qc=None)))
    tracker.on_plan(ClipPlan(2, "c", "fc", frames=28, fps=12.0, seconds=2.3, segments=[(0, 16), (12, 28)],
                             pending=[(0, 16), (12, 28)], preprocess_seconds=0.5))
    for start, stop in [(0, 16), (12, 28)]:
        tracker.on_segment(SegmentResult(2, "c", "fc", start, stop, seconds=1.5))
    qc = dict(flagged=False, score=0.2, reasons=[], checks={})
    tracker.on_assembled(tracker.clips["c"], dict(output=str(tmp_path / "c.mp4"), frames=28, assemble_seconds=0.7,
                                                  **qc_columns(qc)))
    results = tracker.results()
    tracker.observer.ended(results)

    events = read_events(str(tmp_path))
    kinds = [e["kind"] for e in events]
    assert kinds[0] == "job_started" and kinds[-1] == "job_ended"
    assert kinds.count("clip_failed") == 2 and kinds.count("clip_skipped") == 1 and kinds.count("clip_done") == 1
    assert kinds.index("clip_planned") < kinds.index("clip_started") < kinds.index("clip_done")
    assert replay(events) == [json.loads(json.dumps(r)) for r in results]
    assert events[-1]["done"] == 1 and events[-1]["failed"] == 2 and events[-1]["skipped"] == 1
