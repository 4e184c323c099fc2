"""Time the command line's answers that need no model: every command's --help and the refusals of bad
arguments (a missing manifest, a file as --output, a folder that does not exist, ...), each in a fresh process as
a user runs it. Prints a table (seconds: median of --repeat runs) and the slowest answer; the target is 1 s on an
idle 2-core machine (issue 38). No time is asserted: a loaded machine answers slower.

    .venv/bin/python scripts/cli_bench.py [--repeat 3]
"""
from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
HELP = [[], ["run"], ["validate"], ["status"], ["report"], ["preview"], ["plan"], ["bench"], ["doctor"],
        ["weights"], ["weights", "check"], ["poses"], ["poses", "extract"]]


def refusals(scratch: Path) -> list[tuple[str, list[str]]]:
    a_file = scratch / "a-file"
    a_file.write_text("not a folder\n")
    missing = str(scratch / "missing.parquet")
    demo = str(ROOT / "manifests" / "demo.parquet")
    return [
        ("run: manifest not found", ["run", missing, "--output", str(scratch / "out")]),
        ("run: --output is a file", ["run", demo, "--output", str(a_file)]),
        ("run: unknown preset", ["run", demo, "--output", str(scratch / "out"), "--preset", "nope"]),
        ("run: acc without --weights", ["run", demo, "--output", str(scratch / "out"), "--preset", "acc"]),
        ("run: --weights not found", ["run", demo, "--output", str(scratch / "out"), "--weights", "/nonexistent"]),
        ("validate: manifest not found", ["validate", missing]),
        ("plan: manifest not found", ["plan", missing]),
        ("status: no such output", ["status", "/nonexistent"]),
        ("report: no such output", ["report", "/nonexistent"]),
        ("weights check: no such folder", ["weights", "check", "/nonexistent"]),
        ("poses extract: no such video", ["poses", "extract", "/nonexistent.mp4", str(scratch / "poses.npz")]),
        ("bench: unknown preset", ["bench", "--preset", "nope"]),
    ]


HEAVY = ("torch", "diffusers", "transformers", "ray", "pandas")
# Runs cli.py's app as `python cli.py` does, then names the heavy libraries the answer imported: the part of the
# time that does not depend on how busy the machine is.
WRAPPER = ("import sys; sys.argv = ['cli.py', *sys.argv[1:]]; import cli\n"
           "try:\n    cli.app()\nexcept SystemExit as stop:\n    code = stop.code\n"
           f"print('HEAVY', ','.join(m for m in {HEAVY!r} if m in sys.modules) or '-'); sys.exit(code)")


def timed(arguments: list[str]) -> tuple[float, int, str, str]:
    """(seconds, exit code, last line printed, heavy libraries imported)."""
    started = time.perf_counter()
    done = subprocess.run([sys.executable, "-c", WRAPPER, *arguments], capture_output=True, text=True, cwd=ROOT)
    seconds = time.perf_counter() - started
    output, _, heavy = done.stdout.rpartition("HEAVY ")
    lines = (output + done.stderr).strip().splitlines()
    return seconds, done.returncode, lines[-1] if lines else "", heavy.strip()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeat", type=int, default=3, help="runs per command (the median is shown)")
    options = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        cases = [(" ".join(["cli.py", *words, "--help"]), [*words, "--help"]) for words in HELP]
        cases += refusals(Path(folder))
        rows = []
        for name, arguments in cases:
            runs = [timed(arguments) for _ in range(options.repeat)]
            seconds = statistics.median(run[0] for run in runs)
            code, last, heavy = runs[-1][1:]
            rows.append((name, seconds, code, last))
            print(f"{seconds:6.2f} s  exit {code:>2}  imports {heavy:<28} {name:<32} {last[:60]}", flush=True)
    slowest = max(rows, key=lambda row: row[1])
    print(f"slowest: {slowest[0]} {slowest[1]:.2f} s; {sum(row[1] > 1.0 for row in rows)} of {len(rows)} over 1 s")


if __name__ == "__main__":
    main()
