"""Application metrics: their definitions against the Grafana dashboard (a renamed metric fails here), and the
demo job with an injected failure on a local Ray whose metrics agent a real Prometheus (Debian's package)
scrapes on loopback: the counters Prometheus holds equal the results table, the dashboard's queries evaluate,
the event stream replayed gives the same table, and `status --watch` followed the job to its end."""
from __future__ import annotations

import http.server
import json
import math
import re
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import yaml

from pipeline import metrics
from scripts.metrics_screenshot import demo_manifest_with_a_broken_row, free_port, query, start_prometheus

REPO = Path(__file__).resolve().parent.parent
DASHBOARD = REPO / "cluster" / "grafana-dashboard.json"
PROMETHEUS = shutil.which("prometheus")
SERIES = re.compile(r"\bray_echomimic2_[a-z0-9_]+")


def dashboard_queries() -> list[str]:
    dashboard = json.loads(DASHBOARD.read_text())
    return [target["expr"] for panel in dashboard["panels"] for target in panel["targets"]]


def test_metric_names_prefix_units_and_labels():
    for metric in metrics.METRICS.values():
        assert metric.ray_name.startswith("echomimic2_") and re.fullmatch(r"[a-z0-9_]+", metric.name)
        assert "clip_id" not in metric.labels and "row" not in metric.labels  # low cardinality
        assert metric.kind in ("counter", "gauge", "histogram")
        if metric.kind == "histogram":
            assert metric.buckets == tuple(sorted(metric.buckets)) and "seconds" in metric.name
    assert set(metrics.CLIP_STATUSES) == {"done", "failed", "skipped", "flagged", "warned"}


def test_dashboard_queries_only_registered_metrics_and_shows_each():
    """Both ways: a query naming a metric the code does not register, or a metric no panel shows, fails."""
    used = {name for query in dashboard_queries() for name in SERIES.findall(query)}
    assert used, "the dashboard queries no ray_echomimic2_* metric"
    assert used <= metrics.exported_names(), f"not registered by pipeline/metrics.py: {sorted(used - metrics.exported_names())}"
    for metric in metrics.METRICS.values():
        assert any(name.startswith(metric.exported_name) for name in used), f"no panel shows {metric.exported_name}"


def test_kuberay_monitors_scrape_the_metrics_port():
    monitors = list(yaml.safe_load_all((REPO / "cluster" / "prometheus" / "kuberay-monitors.yaml").read_text()))
    assert {m["kind"] for m in monitors} == {"ServiceMonitor", "PodMonitor"}
    rayjob = (REPO / "cluster" / "rayjob.yaml").read_text()
    assert "{containerPort: 8080, name: metrics}" in rayjob
    for monitor in monitors:
        endpoints = monitor["spec"].get("endpoints") or monitor["spec"]["podMetricsEndpoints"]
        assert [e["port"] for e in endpoints] == ["metrics"]


@pytest.mark.skipif(not shutil.which("promtool"), reason="no promtool (Debian's prometheus package: make system-tools)")
def test_local_prometheus_config_is_valid():
    checked = subprocess.run(["promtool", "check", "config", str(REPO / "cluster" / "prometheus" / "prometheus.yml")],
                             capture_output=True, text=True, timeout=60)
    assert checked.returncode == 0, checked.stdout + checked.stderr


# -- the job, scraped ---------------------------------------------------------------------------------------------
@pytest.fixture
def prometheus_and_ray(tmp_path):
    if PROMETHEUS is None:
        pytest.skip("no prometheus binary: install Debian's prometheus package (make system-tools)")
    import ray

    export_port = free_port()
    server, web_port = start_prometheus(tmp_path, export_port)
    ray.init(num_cpus=2, num_gpus=1, include_dashboard=False, object_store_memory=500_000_000,
             _metrics_export_port=export_port, _temp_dir="/tmp/ray", logging_level="WARNING")
    try:
        yield web_port
    finally:
        ray.shutdown()
        server.terminate()
        server.wait(timeout=30)


def same(a, b) -> bool:
    missing = lambda v: v is None or (isinstance(v, float) and math.isnan(v))  # noqa: E731
    if missing(a) or missing(b):
        return missing(a) and missing(b)
    if isinstance(a, float) or isinstance(b, float):
        return math.isclose(float(a), float(b), rel_tol=1e-9)
    return a == b


@pytest.mark.slow  # 85-130 s on the busy 2-core machine (Ray ~20 s, the job 60-100 s); quick: the definitions, dashboard, events tests
def test_demo_job_scraped_by_prometheus(prometheus_and_ray, tmp_path):
    from pipeline.commands import EXIT_ROWS_FAILED, run_command
    from pipeline.events import read_events, replay
    from pipeline.ledger import Ledger
    from pipeline.results import read_results

    web_port = prometheus_and_ray
    manifest, output = demo_manifest_with_a_broken_row(tmp_path), str(tmp_path / "out")
    watcher = subprocess.Popen([sys.executable, str(REPO / "cli.py"), "status", output, "--watch", "--interval", "0.5",
                                "--timeout", "600"], cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    posted: list[bytes] = []

    class Receiver(http.server.BaseHTTPRequestHandler):
        def do_POST(self):  # noqa: N802 - http.server's name
            posted.append(self.rfile.read(int(self.headers["Content-Length"])))
            self.send_response(204)
            self.end_headers()

        def log_message(self, *args):
            pass

    receiver = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Receiver)
    threading.Thread(target=receiver.serve_forever, daemon=True).start()
    try:
        assert run_command(str(manifest), output, preset="tiny", gpus=1, segment_frames=16, overlap_frames=4,
                           notify=f"http://127.0.0.1:{receiver.server_port}/job") == EXIT_ROWS_FAILED
    finally:
        receiver.shutdown()
    results = read_results(output)
    counts = results["status"].value_counts().to_dict()
    assert counts == {"done": 2, "failed": 1}
    [summary] = [json.loads(body) for body in posted]  # --notify: the summary, once
    assert (summary["done"], summary["failed"], summary["rows"]) == (2, 1, 3) and "demo-missing-audio" in summary["failures"][0]

    # status --watch ended with the job, its last view the results' counts and the failure
    watched, _ = watcher.communicate(timeout=120)
    assert watcher.returncode == 0, watched[-3000:]
    assert "(ended): 2 done, 1 failed, 0 skipped, 0 in flight of 3 row(s)" in watched
    assert "demo-missing-audio" in watched

    # the event stream replayed: the results table
    replayed = replay(read_events(output))
    table = results.sort_values("row").to_dict("records")
    assert [r["clip_id"] for r in replayed] == [r["clip_id"] for r in table]
    for event_row, table_row in zip(replayed, table):
        different = [c for c in table_row if not same(event_row.get(c), table_row[c])]
        assert not different, {c: (event_row.get(c), table_row[c]) for c in different}

    # Prometheus: the clip counters equal the table, the segment counter the ledger's segment renders
    segments = len(Ledger(output).segment_records())
    deadline, seen = time.monotonic() + 90, None
    while time.monotonic() < deadline:
        by_status = {r["metric"]["status"]: float(r["value"][1])
                     for r in query(web_port, "sum by (status) (ray_echomimic2_clips_total)")}
        rendered = query(web_port, "sum(ray_echomimic2_segments_rendered_total)")
        seen = (by_status, rendered and float(rendered[0]["value"][1]))
        if seen == ({"done": 2.0, "failed": 1.0}, float(segments)):
            break
        time.sleep(1)
    assert seen == ({"done": 2.0, "failed": 1.0}, float(segments))
    # every query of the dashboard evaluates; the job's own series are there
    for expr in dashboard_queries():
        query(web_port, expr)
    for name in ("ray_echomimic2_render_seconds_per_120_frames_count", "ray_echomimic2_worker_starts_total",
                 "ray_echomimic2_bytes_written_total", "ray_echomimic2_render_busy_ratio",
                 "ray_echomimic2_stage_seconds_count", "ray_echomimic2_job_clips"):
        assert query(web_port, name), f"{name} not scraped"
    mp4_bytes = sum(Path(p).stat().st_size for p in results["output"].dropna())
    assert float(query(web_port, 'sum(ray_echomimic2_bytes_written_total{kind="mp4"})')[0]["value"][1]) == mp4_bytes
