"""The job's application metrics, all defined here, recorded through Ray's own path (`ray.util.metrics`).

Every Ray process that records one (the driver, a render or preprocessing actor, an assembly task) hands it
to its node's metrics agent, which serves it in Prometheus format on the node's metrics export port
(`ray start --metrics-export-port`, `ray.init(_metrics_export_port=...)`) with Ray's `ray_` prefix and its own
labels (`WorkerId`, `NodeAddress`, `SessionName`); counters also get `_total`. So `echomimic2_clips` is
scraped as `ray_echomimic2_clips_total`: what `cluster/grafana-dashboard.json` queries (`exported_name`).

Names: one prefix (`echomimic2_`), units in the name. Labels: low cardinality only (status, preset, stage,
kind, device), never a clip id: one series per value, whatever the manifest's size.

Recording never fails the job: without a connected Ray (a rerun whose rows were all skipped before Ray
started) it does nothing, and a recorder that raises is logged once and then left alone.
"""
from __future__ import annotations

import functools
import logging
from dataclasses import dataclass

log = logging.getLogger(__name__)

PREFIX = "echomimic2_"
RAY_PREFIX = "ray_"  # what Ray's metrics agent puts before every application metric it exports

CLIP_STATUSES = ("done", "failed", "skipped", "flagged", "warned")
# Render time per 120 frames (the unit of the README's and BENCHMARKS' figures): tiny CPU renders take
# seconds, full-size presets on a GPU 10-200 s.
RENDER_BUCKETS = (1, 2, 5, 10, 15, 20, 30, 45, 60, 90, 120, 180, 300, 600)
STAGE_BUCKETS = (0.1, 0.25, 0.5, 1, 2, 5, 10, 20, 30, 60, 120, 300, 600, 1800)


@dataclass(frozen=True)
class Metric:
    name: str  # without PREFIX
    kind: str  # counter | gauge | histogram
    description: str
    labels: tuple[str, ...] = ()
    buckets: tuple[float, ...] = ()

    @property
    def ray_name(self) -> str:
        return PREFIX + self.name

    @property
    def exported_name(self) -> str:
        """The name Prometheus stores (a histogram adds _bucket/_sum/_count to it)."""
        return RAY_PREFIX + self.ray_name + ("_total" if self.kind == "counter" else "")


METRICS = {metric.name: metric for metric in (
    Metric("clips", "counter", "Clips finished by status (flagged and warned are done clips with QC flags / warnings; "
           "a rerun's unchanged clips count as skipped)", ("status", "preset")),
    Metric("segments_rendered", "counter", "Segments rendered and committed to storage", ("preset",)),
    Metric("segment_retries", "counter", "Segment attempts beyond the first (a render error or a worker death)",
           ("preset",)),
    Metric("render_seconds_per_120_frames", "histogram", "A segment's render time scaled to 120 frames",
           ("preset", "device"), RENDER_BUCKETS),
    Metric("stage_seconds", "histogram", "Seconds a row spent in a stage (preprocess, render: all its segments, "
           "assemble)", ("stage",), STAGE_BUCKETS),
    Metric("worker_starts", "counter", "Stage workers started (a replacement of a dead worker included)", ("stage",)),
    Metric("worker_deaths", "counter", "Stage workers that died and were replaced", ("stage",)),
    Metric("segments_waiting", "gauge", "Segments planned and not yet back from a render worker"),
    Metric("clips_waiting_for_assembly", "gauge", "Clips whose assembly task is queued or running"),
    Metric("bytes_written", "counter", "Bytes committed to the output root", ("kind",)),
    Metric("render_busy_ratio", "gauge", "Fraction of a render worker's time since its model loaded spent rendering "
           "(per worker: Ray's WorkerId label)", ("device",)),
    Metric("job_eta_seconds", "gauge", "Seconds left in the job at the rate of its clips finished so far"),
    Metric("job_clips", "gauge", "Rows of the running job's manifest"),
)}


@functools.cache
def _recorder(name: str):
    from ray.util import metrics as ray_metrics

    metric = METRICS[name]
    if metric.kind == "counter":
        return ray_metrics.Counter(metric.ray_name, description=metric.description, tag_keys=metric.labels)
    if metric.kind == "gauge":
        return ray_metrics.Gauge(metric.ray_name, description=metric.description, tag_keys=metric.labels)
    return ray_metrics.Histogram(metric.ray_name, description=metric.description, boundaries=list(metric.buckets),
                                 tag_keys=metric.labels)


_broken: set[str] = set()


def record(name: str, value: float = 1.0, **labels: str) -> None:
    """Add to a counter, set a gauge or observe a histogram value; a no-op without a connected Ray."""
    if name in _broken:
        return
    try:
        import ray

        if not ray.is_initialized():
            return
        metric, recorder = METRICS[name], _recorder(name)
        tags = {key: str(labels[key]) for key in metric.labels}
        if metric.kind == "counter":
            if value > 0:
                recorder.inc(value, tags=tags)
        elif metric.kind == "gauge":
            recorder.set(value, tags=tags)
        else:
            recorder.observe(value, tags=tags)
    except Exception as exc:  # noqa: BLE001 - monitoring must never cost a clip
        _broken.add(name)
        log.warning("metric %s%s not recorded from now on: %s", PREFIX, name, exc)


# -- what the job records (one function per event, so the call sites stay one line) --------------------------
def clip_finished(result: dict, preset: str) -> None:
    """A final results row: its status, and flagged / warned for a done clip with QC flags / warnings."""
    status = result["status"]
    record("clips", status=status, preset=preset)
    if status in ("done", "skipped"):
        if result.get("qc_flagged"):
            record("clips", status="flagged", preset=preset)
        if result.get("warnings"):
            record("clips", status="warned", preset=preset)
    for stage in ("preprocess", "render", "assemble"):
        seconds = result.get(f"{stage}_seconds")
        if status == "done" and seconds:
            record("stage_seconds", seconds, stage=stage)


def segment_rendered(preset: str, seconds: float, frames: int, attempts: int, device: str, nbytes: int) -> None:
    """On the render worker, after the segment is committed."""
    record("segments_rendered", preset=preset)
    record("segment_retries", attempts - 1, preset=preset)
    record("render_seconds_per_120_frames", seconds * 120 / max(frames, 1), preset=preset, device=device)
    record("bytes_written", nbytes, kind="segment")


def worker_started(stage: str, restarted: bool) -> None:
    record("worker_starts", stage=stage)
    if restarted:
        record("worker_deaths", stage=stage)


def queues(segments_waiting: int, clips_assembling: int) -> None:
    record("segments_waiting", segments_waiting)
    record("clips_waiting_for_assembly", clips_assembling)


def job_progress(clips: int, eta_seconds: float | None) -> None:
    record("job_clips", clips)
    record("job_eta_seconds", -1 if eta_seconds is None else eta_seconds)


def clip_written(nbytes: int) -> None:
    record("bytes_written", nbytes, kind="mp4")


def render_busy(ratio: float, device: str) -> None:
    record("render_busy_ratio", ratio, device=device)


def exported_names() -> set[str]:
    """Every series name Prometheus may hold for the metrics above (histograms' parts included)."""
    names = set()
    for metric in METRICS.values():
        base = metric.exported_name
        names |= {base + suffix for suffix in ("_bucket", "_sum", "_count")} if metric.kind == "histogram" else {base}
    return names
