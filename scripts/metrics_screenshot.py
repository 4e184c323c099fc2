"""docs/metrics.png: the Grafana dashboard's queries (cluster/grafana-dashboard.json) drawn by Prometheus' own
graph page in a real headless Chromium, after the demo job (and a row with a missing audio file) ran on a local
Ray whose metrics agent Prometheus scraped. Grafana itself is not installed here; its panels run these queries.

    .venv/bin/python scripts/metrics_screenshot.py        # needs Debian's prometheus and chromium
"""
from __future__ import annotations

import json
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.parse
import urllib.request
from pathlib import Path

import pandas as pd
import yaml

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

# The panels shown (by title) and the time range drawn.
PANELS = ("Clips by status", "Segments rendered and retried per minute", "Render busy ratio per worker",
          "Queues: segments waiting for a GPU, clips waiting for assembly")


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def start_prometheus(folder: Path, target_port: int, *, scrape_interval: str = "1s") -> tuple[subprocess.Popen, int]:
    """A Prometheus (Debian's binary) on a free loopback port scraping 127.0.0.1:target_port; (process, web port)."""
    web_port = free_port()
    config = folder / "prometheus.yml"
    config.write_text(yaml.safe_dump({"global": {"scrape_interval": scrape_interval}, "scrape_configs": [
        {"job_name": "ray", "static_configs": [{"targets": [f"127.0.0.1:{target_port}"]}]}]}))
    server = subprocess.Popen([shutil.which("prometheus"), f"--config.file={config}", f"--storage.tsdb.path={folder / 'tsdb'}",
                               f"--web.listen-address=127.0.0.1:{web_port}"],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return server, web_port


def query(port: int, expr: str) -> list[dict]:
    url = f"http://127.0.0.1:{port}/api/v1/query?" + urllib.parse.urlencode({"query": expr})
    with urllib.request.urlopen(url, timeout=10) as response:
        answer = json.load(response)
    if answer["status"] != "success":
        raise RuntimeError(answer)
    return answer["data"]["result"]


def demo_manifest_with_a_broken_row(folder: Path) -> Path:
    """The demo manifest's rows (their assets by absolute path), small frames, and a row whose audio is missing."""
    demo = pd.read_parquet(REPO / "manifests" / "demo.parquet")
    for column in ("image", "audio", "pose"):
        demo[column] = [None if not isinstance(v, str) else str(REPO / "manifests" / v) for v in demo[column]]
    broken = dict(demo.iloc[0], clip_id="demo-missing-audio", audio=str(folder / "missing.wav"), pose=None)
    frame = pd.concat([demo, pd.DataFrame([broken])], ignore_index=True)
    frame["fps"], frame["width"], frame["height"] = 12.0, 128, 128
    frame.to_parquet(folder / "manifest.parquet", index=False)
    return folder / "manifest.parquet"


def main(target: Path = REPO / "docs" / "metrics.png") -> Path:
    import ray

    from pipeline.commands import run_command
    from scripts.chromium import Chromium

    dashboard = json.loads((REPO / "cluster" / "grafana-dashboard.json").read_text())
    targets = [t["expr"] for title in PANELS for panel in dashboard["panels"] if panel["title"] == title
               for t in panel["targets"]]
    with tempfile.TemporaryDirectory(prefix="metrics-") as scratch:
        scratch = Path(scratch)
        export_port = free_port()
        server, web_port = start_prometheus(scratch, export_port)
        ray.init(num_cpus=2, num_gpus=1, include_dashboard=False, _metrics_export_port=export_port,
                 object_store_memory=500_000_000, _temp_dir="/tmp/ray", logging_level="WARNING")
        try:
            run_command(str(demo_manifest_with_a_broken_row(scratch)), str(scratch / "out"), preset="tiny", gpus=1,
                        segment_frames=16, overlap_frames=4)
            while not query(web_port, "ray_echomimic2_clips_total"):
                time.sleep(1)
            time.sleep(15)  # the last values exported and scraped
            targets = [expr for expr in targets if query(web_port, expr)]  # e.g. no retries: nothing to draw
            params = {}
            for index, expr in enumerate(targets):
                params.update({f"g{index}.expr": expr, f"g{index}.tab": "0", f"g{index}.range_input": "3m",
                               f"g{index}.stacked": "0", f"g{index}.show_exemplars": "0"})
            with Chromium(width=1400, height=720 * len(targets)) as browser:
                browser.open(f"http://127.0.0.1:{web_port}/graph?" + urllib.parse.urlencode(params))
                # Prometheus' (classic) graph page draws each query as two SVGs: the chart and its y axis
                browser.wait_until(f"document.querySelectorAll('.graph_area svg').length >= {2 * len(targets)}", timeout=60)
                time.sleep(3)
                return browser.screenshot(target, full_page=True)
        finally:
            ray.shutdown()
            server.terminate()
            server.wait(timeout=30)


if __name__ == "__main__":
    print(main())
