"""Time `cli.py report` on 10,000 result rows (the issue's bar: ≤ 60 s on the 2-core CI machine), and
`cli.py proof` per manifest row (issue 34's bar: ≤ 2 s per row, the detector's warm-up excluded).

    .venv/bin/python scripts/report_bench.py [--rows 10000] [--keep DIR]
    .venv/bin/python scripts/report_bench.py --proof-rows 1000 [--workers 2]

Report: builds a local output root of real assembled MP4s hard-linked under N clip ids (with their contact
strips and pictures, as the job writes them), then writes the review page twice: cold (strips listed and the
page written) and again into a separate folder (every strip and picture copied).

Proof: a manifest of N rows over real references (skimage's astronaut, a crop of her at the collar, a grey
image, two people side by side; gestures from a 4 s speech-like audio), proofed with the tiny preset's
256x256 and the acc preset's 768x768; prints each row's own time (median, 90th percentile, the first row of
each worker apart: it loads the detector), the wall time, and how fast the page opens and pages in Chromium."""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from pipeline import report  # noqa: E402
from scripts.review_fixture import build_large_output_root, reference_image, speech  # noqa: E402


def proof_manifest(folder: Path, rows: int) -> Path:
    import cv2
    import numpy as np
    import pandas as pd

    names = []
    for name in ("half_body", "collar", "no_person"):
        cv2.imwrite(str(folder / f"{name}.png"), reference_image(name)[..., ::-1])
        names.append(f"{name}.png")
    cv2.imwrite(str(folder / "two.png"), np.concatenate([reference_image("half_body")] * 2, axis=1)[..., ::-1])
    names.append("two.png")
    (folder / "speech.wav").write_bytes(speech(4.0))
    manifest = folder / "manifest.parquet"
    pd.DataFrame([dict(clip_id=f"row-{i:05d}", image=names[i % len(names)], audio="speech.wav")
                  for i in range(rows)]).to_parquet(manifest)
    return manifest


def proof_bench(rows: int, workers: int | None, scratch: Path) -> None:
    import numpy as np

    from pipeline import proof

    manifest = proof_manifest(scratch, rows)
    for preset in ("tiny", "acc"):
        summary = proof.write_proof(str(manifest), str(scratch / f"proof-{preset}"), preset=preset, workers=workers)
        steady = np.array(summary.row_seconds or summary.first_row_seconds)
        print(f"proof {preset}: {summary.rows} rows in {summary.seconds:.1f} s wall "
              f"({len(summary.first_row_seconds)} worker(s)); per row median {np.median(steady):.2f} s, "
              f"p90 {np.percentile(steady, 90):.2f} s, max {steady.max():.2f} s; first row per worker (detector "
              f"warm-up) {max(summary.first_row_seconds):.2f} s -> {summary.page}")
    print(page_timings(summary.page))


def page_timings(page: str) -> str:
    """Open a written page in headless Chromium: its open time, and how long the next page of cards takes."""
    from scripts.chromium import CHROMIUM, Chromium

    if CHROMIUM is None:
        return "page: no chromium to open it"
    with Chromium(width=1280, height=900) as browser:
        started = time.perf_counter()
        browser.open(Path(page).as_uri(), wait_for="document.querySelectorAll('.card').length")
        opened = time.perf_counter() - started
        step = browser.evaluate("(() => { const t = performance.now(); document.getElementById('next').click();"
                                " return performance.now() - t; })()")
        info = browser.evaluate("document.getElementById('pageinfo').textContent")
    return f"page: opens in {opened:.2f} s, next page in {step:.0f} ms ({info})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=10_000)
    parser.add_argument("--keep", type=Path, help="build the output root here and keep it")
    parser.add_argument("--proof-rows", type=int, help="time `cli.py proof` on this many manifest rows instead")
    parser.add_argument("--workers", type=int, help="proof worker processes (default: one per CPU)")
    args = parser.parse_args()
    if args.proof_rows:
        with tempfile.TemporaryDirectory(prefix="proof-bench-") as scratch:
            proof_bench(args.proof_rows, args.workers, Path(scratch))
        return
    with tempfile.TemporaryDirectory(prefix="report-bench-") as scratch:
        root = args.keep or Path(scratch) / "renders"
        started = time.perf_counter()
        build_large_output_root(str(root), args.rows)
        print(f"built {args.rows} result rows in {time.perf_counter() - started:.1f} s")
        for label, to in (("into the output root", None), ("into another folder", str(Path(scratch) / "copy"))):
            summary = report.write_report(str(root), to)
            print(f"report {label}: {summary.clips} clips in {summary.seconds:.2f} s -> {summary.page}")


if __name__ == "__main__":
    main()
