"""Time `cli.py report` on 10,000 result rows (the issue's bar: ≤ 60 s on the 2-core CI machine).

    .venv/bin/python scripts/report_bench.py [--rows 10000] [--keep DIR]

Builds a local output root of real assembled MP4s hard-linked under N clip ids (with their contact strips,
as the assembler writes them), then writes the review page twice: cold (strips listed and the page written)
and again into a separate folder (every strip copied)."""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from pipeline import report  # noqa: E402
from scripts.review_fixture import build_large_output_root  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=10_000)
    parser.add_argument("--keep", type=Path, help="build the output root here and keep it")
    args = parser.parse_args()
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
