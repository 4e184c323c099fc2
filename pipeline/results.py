"""The job's results table (`<output>/results.parquet`): one row per manifest row, written on every exit path
of a job, keeping the rows of clips an earlier run listed and this one did not."""
from __future__ import annotations

import io
import json

import pandas as pd

from pipeline import storage
from pipeline.ledger import Ledger
from pipeline.manifest import Problem
from pipeline.qc import QC_COLUMNS

POSES_COLUMNS = ("framing", "pose_source", "pose_align", "poses_info")  # poses_info: the whole summary, JSON
RESULT_COLUMNS = ("row", "clip_id", "status", "output", "frames", "seconds", "fingerprint", "error",
                  "preprocess_seconds", "render_seconds", "assemble_seconds", *QC_COLUMNS, *POSES_COLUMNS)
TIMING_COLUMNS = ("preprocess_seconds", "render_seconds", "assemble_seconds")


def refused_rows(problems: list[Problem]) -> list[dict]:
    """Rows refused by the schema checks: one failed result per row, all its problems in `error`."""
    by_row: dict[int, list[Problem]] = {}
    for problem in problems:
        by_row.setdefault(problem.row, []).append(problem)
    return [dict(row=row, clip_id=found[0].clip_id, status="failed", error="; ".join(str(p) for p in found))
            for row, found in sorted(by_row.items())]


def poses_columns(info: dict | None) -> dict:
    """Results columns of a clip's framing / pose summary (steps.reference_and_poses)."""
    if not info:
        return dict.fromkeys(POSES_COLUMNS)
    return dict(framing=info.get("framing"), pose_source=info.get("pose_source"),
                pose_align=info.get("pose_align_applied", info.get("pose_align")),
                poses_info=json.dumps(info, default=str))


def write_results(ledger: Ledger, results: list[dict]) -> None:
    """results.parquet: this run's rows, then every clip an earlier run listed and this one did not (a subset
    manifest, another manifest into the same root). A clip skipped now as already finished keeps the timings
    of the run that rendered it, not zeros."""
    try:
        earlier = {row["clip_id"]: row for row in read_results(ledger.root).to_dict("records")}
    except Exception:  # noqa: BLE001 - none yet, or unreadable: replaced, never a reason to lose this run's
        earlier = {}
    rows = []
    for row in results:
        before = earlier.pop(row["clip_id"], None)
        if (row["status"] == "skipped" and before is not None and before.get("fingerprint") == row.get("fingerprint")
                and before.get("status") in ("done", "skipped")):
            row = dict(row, **{name: before.get(name) for name in TIMING_COLUMNS})
        rows.append(row)
    rows += [{name: row.get(name) for name in RESULT_COLUMNS} for row in earlier.values()]
    frame = pd.DataFrame(rows, columns=list(RESULT_COLUMNS))
    buffer = io.BytesIO()
    frame.to_parquet(buffer, index=False)
    storage.write_atomic(ledger.results_uri(), buffer.getvalue())


def read_results(root: str) -> pd.DataFrame:
    return pd.read_parquet(io.BytesIO(storage.read_bytes(Ledger(root).results_uri(), max_bytes=1 << 30)))
