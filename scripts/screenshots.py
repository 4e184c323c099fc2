"""Regenerate README's screenshots in a real headless Chromium (Debian's `chromium`).

    .venv/bin/python scripts/screenshots.py [report] [proof] [preview]

report  → docs/report.png: the review page of an output root of real assembled clips (scripts/review_fixture.py)
proof   → docs/proof.png: the proof sheet of a manifest of real references (half-body, cut at the collar, no
          person, two people, a landscape output), before any rendering
preview → docs/preview.png: the Gradio preview after rendering one clip with the tiny preset (its proof of the
          inputs shown before rendering above the video)
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


def proof_screenshot(target: Path = DOCS / "proof.png") -> Path:
    import cv2
    import numpy as np
    import pandas as pd

    from pipeline import proof
    from scripts.review_fixture import reference_image, speech

    with tempfile.TemporaryDirectory(prefix="screenshot-") as scratch:
        folder = Path(scratch)
        images = {"half": reference_image("half_body"), "collar": reference_image("collar"),
                  "grey": reference_image("no_person"),
                  "two": np.concatenate([reference_image("half_body")] * 2, axis=1)}
        for name, image in images.items():
            cv2.imwrite(str(folder / f"{name}.png"), image[..., ::-1])
        (folder / "speech.wav").write_bytes(speech(4.0))
        rows = [dict(clip_id="intro-portrait", image="half.png"), dict(clip_id="collar-crop", image="collar.png"),
                dict(clip_id="no-person", image="grey.png"), dict(clip_id="two-people", image="two.png"),
                dict(clip_id="landscape", image="half.png", width=1152, height=768),
                dict(clip_id="missing-photo", image="gone.png")]
        manifest = pd.DataFrame([dict(row, audio="speech.wav") for row in rows])
        for name in ("width", "height"):
            manifest[name] = manifest[name].astype("Int64")
        manifest.to_parquet(folder / "manifest.parquet")
        summary = proof.write_proof(str(folder / "manifest.parquet"), str(folder / "proof"), preset="acc", workers=1,
                                    title="Proof: s3://bucket/jobs/manifest.parquet (acc)")
        with Chromium(width=1280, height=900) as browser:
            browser.open(Path(summary.page).as_uri() + "#sort=row")
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
            browser.wait_until("(() => { const i = document.querySelector('#proof img'); return i && i.complete; })()")
            browser.evaluate("document.querySelector('#render').click()")
            browser.wait_until("document.querySelector('#result video') && document.querySelector('#result video').readyState >= 1")
            return browser.screenshot(target)
    finally:
        app.close()


if __name__ == "__main__":
    wanted = sys.argv[1:] or ["report", "proof", "preview"]
    for name in wanted:
        print(f"{name}: {dict(report=report_screenshot, proof=proof_screenshot, preview=preview_screenshot)[name]()}")
