"""Regenerate README's screenshots in a real headless Chromium (Debian's `chromium`).

    .venv/bin/python scripts/screenshots.py [report] [preview]

report  → docs/report.png: the review page of an output root of real assembled clips (scripts/review_fixture.py)
preview → docs/preview.png: the Gradio preview after rendering one clip with the tiny preset
"""
from __future__ import annotations

import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from scripts.chromium import Chromium  # noqa: E402

DOCS = REPO / "docs"
REPORT_KINDS = ("clean", "black", "seam", "frozen", "clean", "failed", "clean", "seam", "clean")


def report_screenshot(target: Path = DOCS / "report.png") -> Path:
    from pipeline import report
    from scripts.review_fixture import build_output_root

    with tempfile.TemporaryDirectory(prefix="screenshot-") as scratch:
        root = Path(scratch) / "renders"
        build_output_root(str(root), kinds=REPORT_KINDS)
        summary = report.write_report(str(root), title="Review: s3://bucket/renders (demo clips)")
        with Chromium(width=1280, height=640) as browser:
            browser.open(Path(summary.page).as_uri())
            browser.wait_until("Array.from(document.images).every(i => i.complete) && document.images.length")
            shot = browser.screenshot(target)
            if browser.console_errors:
                raise SystemExit(f"console errors: {browser.console_errors}")
    return shot


def preview_screenshot(target: Path = DOCS / "preview.png") -> Path:
    """The app after rendering one tiny clip from the demo assets (needs the one-clip API, pipeline/clip.py)."""
    from pipeline.preview import Pipelines, build_app

    app = build_app(Pipelines(), manifest=str(Path(tempfile.mkdtemp()) / "manifest.parquet"))
    app.queue().launch(server_name="127.0.0.1", server_port=None, prevent_thread_lock=True, quiet=True)
    try:
        with Chromium(width=1280, height=860, timeout=600) as browser:
            browser.open(app.local_url, wait_for="document.querySelector('#render')")
            browser.set_files("#image input[type=file]", [REPO / "manifests" / "assets" / "figure.png"])
            browser.set_files("#audio input[type=file]", [REPO / "manifests" / "assets" / "hello.wav"])
            browser.wait_until("document.querySelector('#image img')")
            browser.evaluate("document.querySelector('#render').click()")
            browser.wait_until("document.querySelector('#result video') && document.querySelector('#result video').readyState >= 1")
            return browser.screenshot(target)
    finally:
        app.close()


if __name__ == "__main__":
    wanted = sys.argv[1:] or ["report", "preview"]
    for name in wanted:
        print(f"{name}: {dict(report=report_screenshot, preview=preview_screenshot)[name]()}")
