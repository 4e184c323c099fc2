"""The review page of an output root, and the page machinery it shares with the proof sheet
(`pipeline.proof`): one static HTML file (no server) with a card per clip, the rows as one JSON blob inside
the page, filters (status, QC, each warning kind), sorting and client-side paging that draws only the visible
cards, so 10,000 clips stay fast.

A review card: a contact strip of frames (a click plays the MP4 in place, HTML5 video), the reference and the
framed reference with its poses drawn over it, the verdict of the reference's triage and its warnings,
duration, status, QC flags and score, the error if any, the facts of the results row (framing, alignment,
pose length and source) and a link to the MP4.

    <dest>/index.html
    <dest>/strips/<clip_id>.<fingerprint[:16]>.jpg     contact strips (JPEG, 96 px high)
    <dest>/refs/<clip_id>.<fingerprint[:16]>.jpg       the reference (written by preprocessing, proof.write_clip_images)
    <dest>/overlays/<clip_id>.<fingerprint[:16]>.jpg   the framed reference with the poses over it (likewise)

``dest`` is ``<root>/_report`` unless given. Contact strips come from the assembler (``strip_uri``) when the
job passes it one; a clip without one gets it from its MP4 here (a few frames decoded once, then cached under
``<root>/_report/strips/``). Everything is read and written through pipeline.storage: local and object-store
roots alike. MP4 links to another store are presigned for ``link_seconds`` (`cli.py report --link-expiry`).
"""
from __future__ import annotations

import html
import json
import math
import os
import re
import subprocess
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from pipeline import qc, storage
from pipeline.ledger import OVERLAYS_FOLDER, REFS_FOLDER, REPORT_FOLDER, STRIPS_FOLDER, image_name, strip_name
from pipeline.media import ffmpeg_exe

STRIP_WORKERS = 4  # ffmpeg processes making missing strips (each decodes one clip)
MAX_STRIP_MP4_BYTES = 2 << 30
DEFAULT_LINK_SECONDS = 24 * 3600  # presigned MP4 links: a day
MAX_LINK_SECONDS = 7 * 24 * 3600  # what S3 accepts for a SigV4 presigned URL
# The facts of a clip's summary (`steps.reference_and_poses`) a card lists: issue 34's "what was done".
CARD_FACTS = ("framing", "framing_fill", "framing_zoom", "framing_padding_pct", "crop_box", "pose_source", "pose_length",
              "pose_align_applied", "pose_align_scale", "pose_align_rotation_deg", "pose_align_rms_px", "hands",
              "triage.people", "triage.face_box", "triage.shoulder_span", "triage.hands_visible", "triage.person_share",
              "triage.image_upscale", "triage.person_upscale")


@dataclass
class ReportSummary:
    page: str  # URI of index.html
    clips: int
    strips_made: int  # strips decoded from MP4s this time (not made by the assembler, not cached)
    strips_missing: int  # finished clips whose MP4 could not give a strip
    seconds: float


# ---------------------------------------------------------------------------------------------------
# Rows


def _clean(value):
    """JSON-able scalar: NaN/NA → None, numpy scalars → Python."""
    if value is None or value is pd.NA:
        return None
    if hasattr(value, "item"):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def _qc_of(row: dict, records: dict) -> tuple[bool, float | None, list[str]]:
    if row.get("qc_flagged") is not None or row.get("qc_score") is not None:
        reasons = [r for r in (row.get("qc_reasons") or "").split("; ") if r]
        return bool(row.get("qc_flagged")), row.get("qc_score"), reasons
    report = (records.get(row.get("clip_id")) or {}).get("qc")  # results written before QC columns existed
    if report:
        return bool(report["flagged"]), report["score"], list(report["reasons"])
    return False, None, []


def _json_value(value):
    """A results cell that may hold JSON text: the parsed value, else the value itself."""
    if isinstance(value, str) and value[:1] in "[{":
        try:
            return json.loads(value)
        except ValueError:
            return value
    return value


def _summary_of(row: dict) -> dict:
    """The clip's framing / pose summary (`steps.reference_and_poses`) from the results' columns: the JSON
    objects merged, plain values under their column's name."""
    summary: dict = {}
    for name in ("poses_info", "framing", "pose_source", "pose_align"):
        value = _json_value(row.get(name))
        if isinstance(value, dict):
            summary.update((k, v) for k, v in value.items() if k not in summary)
        elif value is not None and name not in summary:
            summary[name] = value
    return summary


def warnings_of(row: dict, summary: dict | None = None) -> list[dict]:
    """The clip's warnings as [{kind, message}]: the results' `warnings` column (JSON), else the summary's."""
    found = _json_value(row.get("warnings"))
    if not isinstance(found, list):
        found = (summary if summary is not None else _summary_of(row)).get("warnings")
    if not isinstance(found, list):
        return []
    return [dict(kind=str(w.get("kind")), message=str(w.get("message", ""))) for w in found if isinstance(w, dict)]


def card_facts(summary: dict) -> dict:
    """What a card lists of a clip's summary (`CARD_FACTS`, in that order, those present): the numbers behind
    the verdict and what framing, alignment and pose length did. Everything else stays in results.parquet, so
    that 10,000 cards stay a small page."""
    triage = summary.get("triage") if isinstance(summary.get("triage"), dict) else {}
    facts = {}
    for key in CARD_FACTS:
        value = triage.get(key[len("triage."):]) if key.startswith("triage.") else summary.get(key)
        if value is not None:
            facts[key] = value
    return facts


def clip_rows(results: pd.DataFrame, records: dict | None = None) -> list[dict]:
    """One dict per results row with what a card shows, in results order."""
    rows = []
    for raw in results.to_dict("records"):
        row = {k: _clean(v) for k, v in raw.items()}
        flagged, score, reasons = _qc_of(row, records or {})
        finished = row.get("status") in ("done", "skipped")
        summary = _summary_of(row)
        rows.append(dict(
            clip_id=row.get("clip_id") or f"row {row.get('row')}", row=row.get("row"), status=row.get("status"),
            flagged=flagged and finished, score=score, reasons=reasons, error=row.get("error"),
            frames=row.get("frames"), seconds=row.get("seconds"), output=row.get("output"),
            fingerprint=row.get("fingerprint"), verdict=row.get("verdict") or summary.get("verdict"),
            warnings=warnings_of(row, summary), facts=card_facts(summary),
            render_seconds=row.get("render_seconds"), assemble_seconds=row.get("assemble_seconds")))
    return rows


def flagged_lines(results: pd.DataFrame) -> list[str]:
    """One line per finished clip that QC flagged, worst first: for `cli.py status`."""
    rows = [r for r in clip_rows(results) if r["flagged"]]
    rows.sort(key=lambda r: -(r["score"] or 0))
    return [f"{r['clip_id']}: score {r['score']:.2f}: {'; '.join(r['reasons'])}" for r in rows]


# ---------------------------------------------------------------------------------------------------
# Contact strips


def _listed_names(folder_uri: str) -> set[str]:
    """File names in a folder (one listing, not one request per clip); empty if it does not exist."""
    fs, path = storage.url_to_fs(folder_uri)
    try:
        return {p.rstrip("/").rsplit("/", 1)[-1] for p in storage.with_retries(fs.ls, path, detail=False)}
    except FileNotFoundError:
        return set()


def strip_from_mp4(mp4_uri: str, frames: int | None) -> bytes:
    """A contact strip (qc.STRIP_FRAMES frames side by side, qc.STRIP_HEIGHT px high) decoded from an MP4."""
    every = max(1, (int(frames) if frames else 1) // qc.STRIP_FRAMES)
    with tempfile.TemporaryDirectory(prefix="strip-") as scratch:
        source = mp4_uri
        if not storage.is_local(mp4_uri):
            source = os.path.join(scratch, "clip.mp4")
            Path(source).write_bytes(storage.read_bytes(mp4_uri, max_bytes=MAX_STRIP_MP4_BYTES))
        target = os.path.join(scratch, "strip.jpg")
        subprocess.run(
            [ffmpeg_exe(), "-hide_banner", "-nostdin", "-loglevel", "error", "-i", str(storage.local_path(source)),
             "-vf", f"select='not(mod(n\\,{every}))',scale=-2:{qc.STRIP_HEIGHT},tile={qc.STRIP_FRAMES}x1",
             "-frames:v", "1", "-q:v", "4", "-y", target],
            check=True, capture_output=True, timeout=300)
        return Path(target).read_bytes()


def _make_strips(root: str, rows: list[dict], dest_strips: str, *, workers: int) -> tuple[int, int]:
    """Every finished clip gets ``dest_strips/<strip_name>``: the assembler's (or a cached) strip from
    ``<root>/_report/strips``, else one decoded from its MP4 (and cached there). Returns (made, missing)."""
    cache = storage.join(root, REPORT_FOLDER, STRIPS_FOLDER)
    cached = _listed_names(cache)
    at_dest = cached if dest_strips == cache else _listed_names(dest_strips)
    wanted = [r for r in rows if r["status"] in ("done", "skipped") and r["output"]]

    def one(row: dict) -> str:
        name = strip_name(row["clip_id"], row["fingerprint"])
        if name in at_dest:
            return "ok"
        if name in cached:
            storage.write_atomic(storage.join(dest_strips, name),
                                 storage.read_bytes(storage.join(cache, name), max_bytes=64 << 20))
            return "ok"
        try:
            data = strip_from_mp4(row["output"], row["frames"])
        except Exception:  # noqa: BLE001 - a clip without a strip still gets its card
            return "missing"
        storage.write_atomic(storage.join(dest_strips, name), data)
        if dest_strips != cache:
            try:
                storage.write_atomic(storage.join(cache, name), data)
            except Exception:  # noqa: BLE001 - a read-only output root: the report still works
                pass
        return "made"

    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        outcomes = list(pool.map(one, wanted))
    present = {strip_name(r["clip_id"], r["fingerprint"]) for r, o in zip(wanted, outcomes) if o != "missing"}
    for row in rows:
        name = strip_name(row["clip_id"], row["fingerprint"])
        row["strip"] = f"{STRIPS_FOLDER}/{name}" if name in present else None
    return outcomes.count("made"), outcomes.count("missing")


def _link_pictures(root: str, rows: list[dict], dest: str, *, workers: int) -> None:
    """Each clip's reference and overlay pictures (written by preprocessing under ``<root>/_report``), copied
    to ``dest`` when the page is written elsewhere; ``row["ref"]`` / ``row["overlay"]``, None where missing."""

    for folder, key in ((REFS_FOLDER, "ref"), (OVERLAYS_FOLDER, "overlay")):
        cache, target = storage.join(root, REPORT_FOLDER, folder), storage.join(dest, folder)
        cached = _listed_names(cache)
        at_dest = cached if target == cache else _listed_names(target)
        copies = []
        for row in rows:
            name = image_name(row["clip_id"], row["fingerprint"]) if row["fingerprint"] else None
            row[key] = f"{folder}/{name}" if name in cached else None
            if row[key] and name not in at_dest:
                copies.append(name)

        def copy(name: str, cache=cache, target=target) -> None:
            storage.write_atomic(storage.join(target, name), storage.read_bytes(storage.join(cache, name), max_bytes=64 << 20))

        with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
            list(pool.map(copy, copies))


# ---------------------------------------------------------------------------------------------------
# Links


def _mp4_link(output: str | None, dest: str, link_seconds: int) -> str | None:
    """What a browser opening ``dest/index.html`` can follow: a relative path where both are local or on
    the same store (a report inside the output root), a signed https URL for an object store, else the URI."""
    if not output:
        return None
    if storage.is_local(output) and storage.is_local(dest):
        return os.path.relpath(storage.local_path(output), storage.local_path(dest))
    if storage.scheme_of(output) == storage.scheme_of(dest):
        out_bucket, _, out_path = output.split("://", 1)[1].partition("/")
        dest_bucket, _, dest_path = dest.split("://", 1)[1].partition("/")
        if out_bucket == dest_bucket:
            return os.path.relpath("/" + out_path, "/" + dest_path.rstrip("/"))
    fs, path = storage.url_to_fs(output)
    try:
        return fs.sign(path, expiration=link_seconds)
    except Exception:  # noqa: BLE001 - stores that cannot sign: the plain URI
        return output


# ---------------------------------------------------------------------------------------------------
# The page


def resolved_dest(to: str) -> str:
    """A page's folder as links are computed from it: local folders absolute."""
    dest = to.rstrip("/")
    return str(storage.local_path(dest).resolve()) if storage.is_local(dest) else dest


def parse_duration(text: str) -> int:
    """Seconds of '3600', '90s', '30m', '24h' or '7d' (``--link-expiry``); ValueError otherwise."""
    units = {"s": 1, "m": 60, "h": 3600, "d": 86400}
    value = str(text).strip().lower()
    unit = units.get(value[-1:], None)
    number = value[:-1] if unit else value
    try:
        seconds = round(float(number) * (unit or 1))
    except ValueError:
        raise ValueError(f"not a duration: {text!r} (e.g. 3600, 30m, 24h, 7d)") from None
    if not 1 <= seconds <= MAX_LINK_SECONDS:
        raise ValueError(f"link expiry must be between 1 s and 7 days (a presigned S3 URL's limit), got {text!r}")
    return seconds


def write_report(root: str, to: str | None = None, *, link_seconds: int = DEFAULT_LINK_SECONDS,
                 strip_workers: int = STRIP_WORKERS, title: str | None = None) -> ReportSummary:
    """Write the review page of ``root`` (its results.parquet and MP4s) to ``to`` (default ``<root>/_report``)."""
    from pipeline.ledger import Ledger
    from pipeline.results import read_results

    started = time.perf_counter()
    results = read_results(root)
    records = {} if "qc_flagged" in results.columns else {r["clip_id"]: r for r in Ledger(root).clip_records()}
    dest = resolved_dest(to or storage.join(root, REPORT_FOLDER))
    rows = clip_rows(results, records)
    made, missing = _make_strips(root, rows, storage.join(dest, STRIPS_FOLDER), workers=strip_workers)
    _link_pictures(root, rows, dest, workers=strip_workers)
    for row in rows:
        row["link"] = _mp4_link(row.pop("output"), dest, link_seconds)
        row.pop("fingerprint")
    page = render_page(rows, title=title or f"Review: {storage.redact(root)}")
    page_uri = storage.join(dest, "index.html")
    storage.write_atomic(page_uri, page.encode())
    return ReportSummary(page=page_uri, clips=len(rows), strips_made=made, strips_missing=missing,
                         seconds=time.perf_counter() - started)


def report_command(output: str, to: str | None = None, link_expiry: str | None = None) -> int:
    """`cli.py report`: 0, or 2 when the output root has no readable results or the expiry is not a duration."""
    from rich.console import Console

    console = Console(highlight=False, soft_wrap=True)
    try:
        link_seconds = DEFAULT_LINK_SECONDS if link_expiry is None else parse_duration(link_expiry)
    except ValueError as exc:
        console.print(f"error: --link-expiry: {exc}", markup=False)
        return 2
    try:
        summary = write_report(output, to, link_seconds=link_seconds)
    except FileNotFoundError:
        console.print(f"{storage.redact(output)}: no results.parquet (no job has finished here yet)", markup=False)
        return 2
    except Exception as exc:  # noqa: BLE001 - one line, secrets masked
        console.print(f"error: {storage.redact(output)}: {storage.describe_error(exc)}", markup=False)
        return 2
    console.print(f"review page: {storage.redact(summary.page)} ({summary.clips} clip(s), {summary.strips_made} strip(s) "
                  f"made from MP4s, {summary.strips_missing} without a strip; {summary.seconds:.1f} s)", markup=False)
    return 0


def _json_for_script(value) -> str:
    """JSON that cannot end the <script> element it sits in (a clip id or error containing '</script>')."""
    return json.dumps(value, separators=(",", ":")).replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")


PAGE_KINDS = {
    # status filters (key and label; the page's STATUS_TESTS hold their tests), first sort, what a card is called
    "review": dict(filters=[["all", "all"], ["failed", "failed"], ["flagged", "flagged"], ["done", "done"],
                            ["unsuitable", "skipped as unsuitable"]],
                   sort="score", noun="clip"),
    "proof": dict(filters=[["all", "all"], ["failed", "refused"], ["ready", "ready"]], sort="warnings", noun="row"),
}


def page_cards(page_html: str) -> list[dict]:
    """The cards a written page holds, facts as dicts again (what its script reads; for tests and tools)."""
    def blob(element_id: str):
        found = re.search(f'<script id="{element_id}" type="application/json">(.*?)</script>', page_html, re.S)
        return json.loads(found.group(1))

    keys = blob("factkeys")
    return [dict(card, facts={k: v for k, v in zip(keys, card["facts"]) if v is not None}) for card in blob("clips")]


PAGE_LEFT_OUT = ("render_seconds", "assemble_seconds", "facts")  # what a card does not show travels no further


def render_page(rows: list[dict], *, title: str, kind: str = "review") -> str:
    """The page of ``rows`` (cards as `clip_rows` or `proof.proof_row` make them); ``kind`` "review" or
    "proof" picks the status filters and the first sort order."""
    thresholds = [[name, value] for name, value in qc.thresholds_table()] if kind == "review" else []
    # Facts travel as one key table and a list of values per card (None where absent): the keys once, not
    # once per card, keep a 10,000-clip page small.
    fact_keys = list(dict.fromkeys(key for row in rows for key in (row.get("facts") or {})))
    cards = [dict({k: v for k, v in row.items() if k not in PAGE_LEFT_OUT},
                  facts=[(row.get("facts") or {}).get(key) for key in fact_keys]) for row in rows]
    return (PAGE.replace("__TITLE__", html.escape(title))
            .replace("__DATA__", _json_for_script(cards))
            .replace("__FACT_KEYS__", _json_for_script(fact_keys))
            .replace("__KIND__", _json_for_script(dict(PAGE_KINDS[kind], kind=kind)))
            .replace("__THRESHOLDS__", _json_for_script(thresholds)))


PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1">
<title>__TITLE__</title>
<style>
  :root { --bg:#f5f6f8; --card:#fff; --ink:#1d2330; --muted:#667085; --bad:#c0392b; --warn:#b7791f; --ok:#2f855a; }
  * { box-sizing: border-box; }
  body { margin:0; font:14px/1.4 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; background:var(--bg); color:var(--ink); }
  header { position:sticky; top:0; z-index:2; background:#1d2330; color:#fff; padding:10px 16px; display:flex; flex-wrap:wrap; gap:10px; align-items:center; }
  header h1 { font-size:16px; margin:0 12px 0 0; font-weight:600; }
  .filters button { border:1px solid #475066; background:#2a3142; color:#fff; padding:4px 10px; border-radius:14px; cursor:pointer; margin:1px 0; }
  .filters button.active { background:#fff; color:#1d2330; }
  .filters button.warnkind { border-color:#b7791f; }
  .filters .sep { color:#98a2b3; margin:0 4px 0 8px; font-size:12px; }
  header select, header input { padding:4px 6px; border-radius:4px; border:1px solid #475066; }
  .pager { margin-left:auto; display:flex; gap:6px; align-items:center; }
  .pager button { padding:3px 9px; cursor:pointer; }
  main { display:grid; grid-template-columns:repeat(auto-fill, minmax(400px, 1fr)); gap:12px; padding:14px 16px; }
  .card { background:var(--card); border-radius:8px; box-shadow:0 1px 3px rgba(0,0,0,.12); overflow:hidden; border-top:4px solid var(--ok); }
  .card.flagged, .card.warned { border-top-color:var(--warn); } .card.failed { border-top-color:var(--bad); }
  .media { position:relative; cursor:pointer; background:#d0d4dc; }
  .media .play { position:absolute; right:8px; bottom:8px; background:rgba(0,0,0,.6); color:#fff; border-radius:12px; padding:1px 9px; font-size:12px; }
  .media video { display:block; width:100%; max-height:360px; background:#000; }
  .strip { display:block; width:100%; height:auto; min-height:40px; }
  .nostrip { display:flex; align-items:center; justify-content:center; height:64px; background:#eceef2; color:var(--muted); cursor:default; }
  .pictures { display:flex; gap:4px; padding:4px 4px 0; align-items:flex-start; }
  .pictures img { display:block; height:auto; min-width:0; border-radius:3px; background:#eceef2; }
  .pictures img.ref { flex:0 0 auto; max-width:26%; }
  .pictures img.overlay { flex:1 1 auto; max-width:74%; }
  .proof .pictures img.ref { max-height:160px; }
  .body { padding:8px 10px 10px; }
  .title { display:flex; gap:8px; align-items:baseline; flex-wrap:wrap; }
  .title b { font-size:15px; word-break:break-all; }
  .badge { font-size:11px; padding:1px 7px; border-radius:9px; color:#fff; background:var(--ok); text-transform:uppercase; }
  .badge.failed { background:var(--bad); } .badge.flagged { background:var(--warn); } .badge.skipped { background:#4a5568; }
  .verdict { font-size:11px; padding:1px 7px; border-radius:9px; border:1px solid var(--ok); color:var(--ok); }
  .verdict.bad { border-color:var(--warn); color:var(--warn); }
  .meta { color:var(--muted); font-size:12px; margin:2px 0 4px; }
  .reasons, .warnings { margin:4px 0 0; padding-left:18px; color:var(--warn); }
  .warnings code { font-size:11px; background:#fdf3e1; padding:0 4px; border-radius:3px; }
  .error { margin-top:4px; color:var(--bad); font-family:ui-monospace, monospace; font-size:12px; white-space:pre-wrap; word-break:break-word; }
  details.facts { margin-top:4px; font-size:12px; color:var(--muted); }
  details.facts table { border-collapse:collapse; } details.facts td { padding:0 8px 0 0; vertical-align:top; word-break:break-word; }
  .title a { margin-left:auto; }
  .empty { padding:40px; color:var(--muted); }
  footer { color:var(--muted); padding:0 16px 20px; font-size:12px; }
</style></head>
<body>
<header>
  <h1>__TITLE__</h1>
  <div class="filters" id="filters"></div>
  <label>sort <select id="sort">
    <option value="score">worst QC first</option><option value="score_asc">best QC first</option>
    <option value="warnings">most warnings first</option>
    <option value="clip">clip id</option><option value="seconds">longest first</option><option value="row">manifest row</option>
  </select></label>
  <input id="search" type="search" placeholder="clip id contains…">
  <div class="pager"><button id="prev">‹ prev</button><span id="pageinfo"></span><button id="next">next ›</button>
    <select id="pagesize"><option>24</option><option selected>48</option><option>96</option></select></div>
</header>
<main id="cards"></main>
<footer id="footer"></footer>
<script id="clips" type="application/json">__DATA__</script>
<script id="kind" type="application/json">__KIND__</script>
<script id="factkeys" type="application/json">__FACT_KEYS__</script>
<script id="thresholds" type="application/json">__THRESHOLDS__</script>
<script>
"use strict";
const CLIPS = JSON.parse(document.getElementById("clips").textContent);
const KIND = JSON.parse(document.getElementById("kind").textContent);
const THRESHOLDS = JSON.parse(document.getElementById("thresholds").textContent);
const FACT_KEYS = JSON.parse(document.getElementById("factkeys").textContent);
for (const c of CLIPS) { c.warnings = c.warnings || []; c.reasons = c.reasons || []; c.kinds = new Set(c.warnings.map(w => w.kind)); }
// Status filters of this kind of page, then one per warning kind found in the rows.
const STATUS_TESTS = {
  all: c => true, failed: c => c.status === "failed", flagged: c => c.flagged,
  // "skipped" is a clip finished by an earlier run, or (with an error) one `run --unsuitable skip` did not render.
  done: c => c.status === "done" || (c.status === "skipped" && !c.error), ready: c => c.status === "ready",
  unsuitable: c => c.status === "skipped" && !!c.error,
};
const FILTERS = {};
for (const [key, label] of KIND.filters) FILTERS[key] = [label, STATUS_TESTS[key], false];
const WARNING_KINDS = [...new Set(CLIPS.flatMap(c => c.warnings.map(w => w.kind)))].sort();
if (WARNING_KINDS.length) FILTERS.warned = ["any warning", c => c.warnings.length > 0, true];
for (const kind of WARNING_KINDS) FILTERS[`warn:${kind}`] = [kind.replace(/_/g, " "), c => c.kinds.has(kind), true];
const SORTS = {
  score: (a, b) => rank(b) - rank(a) || a.clip_id.localeCompare(b.clip_id),
  score_asc: (a, b) => rank(a) - rank(b) || a.clip_id.localeCompare(b.clip_id),
  warnings: (a, b) => concern(b) - concern(a) || (a.row ?? 1e12) - (b.row ?? 1e12),
  clip: (a, b) => a.clip_id.localeCompare(b.clip_id),
  seconds: (a, b) => (b.seconds || 0) - (a.seconds || 0),
  row: (a, b) => (a.row ?? 1e12) - (b.row ?? 1e12),
};
// Failed clips rank above every QC score and every warning: they are the first thing to look at.
function rank(c) { return c.status === "failed" ? Infinity : (c.score ?? -1); }
function concern(c) { return c.status === "failed" ? Infinity : c.warnings.length + (c.flagged ? 0.5 : 0); }
const state = Object.assign({filter: "all", sort: KIND.sort, page: 0, size: 48, search: ""}, readHash());
let view = [];

function readHash() {
  const out = {}; const p = new URLSearchParams(location.hash.slice(1));
  if (FILTERS[p.get("filter")]) out.filter = p.get("filter");
  if (SORTS[p.get("sort")]) out.sort = p.get("sort");
  if (p.get("page")) out.page = Math.max(0, parseInt(p.get("page"), 10) - 1 || 0);
  return out;
}
function esc(s) { return String(s ?? "").replace(/[&<>"']/g, ch => ({"&":"&amp;","<":"&lt;",">":"&gt;",'"':"&quot;","'":"&#39;"}[ch])); }
function fmt(x, digits) { return x === null || x === undefined ? "–" : Number(x).toFixed(digits); }
function fact(v) { return typeof v === "object" && v !== null ? JSON.stringify(v) : String(v); }

function recompute() {
  const keep = FILTERS[state.filter][1]; const needle = state.search.toLowerCase();
  view = CLIPS.filter(c => keep(c) && (!needle || c.clip_id.toLowerCase().includes(needle)));
  view.sort(SORTS[state.sort]);
}
function media(c) {
  if (KIND.kind === "proof") return "";
  if (!c.strip) return `<div class="media nostrip">${c.status === "failed" ? "no video" : (c.link ? "no strip" : "not rendered")}</div>`;
  const play = c.link ? `<span class="play">▶ play</span>` : "";
  return `<div class="media" data-video="${esc(c.link || "")}"><img class="strip" loading="lazy" alt="frames of ${esc(c.clip_id)}" src="${esc(c.strip)}">${play}</div>`;
}
function pictures(c) {
  const ref = c.ref ? `<img class="ref" loading="lazy" alt="reference of ${esc(c.clip_id)}" title="reference as given" src="${esc(c.ref)}">` : "";
  const overlay = c.overlay ? `<img class="overlay" loading="lazy" alt="framed reference and poses of ${esc(c.clip_id)}" title="framed reference, poses drawn over it" src="${esc(c.overlay)}">` : "";
  return ref || overlay ? `<div class="pictures">${ref}${overlay}</div>` : "";
}
function card(c) {
  const failed = c.status === "failed";
  const kind = failed ? "failed" : (c.flagged ? "flagged" : (c.warnings.length ? "warned" : "ok"));
  const badge = failed ? (KIND.kind === "proof" ? "refused" : "failed") : (c.flagged ? "flagged" : c.status);
  const link = c.link ? `<a href="${esc(c.link)}" target="_blank" rel="noopener">MP4</a>` : "";
  const verdict = c.verdict ? `<span class="verdict ${c.verdict === "half_body" ? "" : "bad"}" title="reference triage">${esc(c.verdict.replace(/_/g, " "))}</span>` : "";
  const warnings = c.warnings.length ? `<ul class="warnings">${c.warnings.map(w => `<li><code>${esc(w.kind)}</code> ${esc(w.message)}</li>`).join("")}</ul>` : "";
  const reasons = c.reasons.length ? `<ul class="reasons">${c.reasons.map(r => `<li>${esc(r)}</li>`).join("")}</ul>` : "";
  const error = c.error ? `<div class="error">${esc(c.error)}</div>` : "";
  const known = FACT_KEYS.map((k, i) => [k, (c.facts || [])[i]]).filter(([k, v]) => v !== null && v !== undefined);
  const facts = known.length ? `<details class="facts"><summary>what was done (${known.length} facts)</summary><table>${
    known.map(([k, v]) => `<tr><td>${esc(k)}</td><td>${esc(fact(v))}</td></tr>`).join("")}</table></details>` : "";
  const score = KIND.kind === "review" ? ` · QC score ${fmt(c.score, 2)}` : "";
  return `<article class="card ${kind} ${KIND.kind}" data-clip="${esc(c.clip_id)}">${media(c)}${pictures(c)}<div class="body">
    <div class="title"><b>${esc(c.clip_id)}</b><span class="badge ${badge}">${esc(badge)}</span>${verdict}${link}</div>
    <div class="meta">row ${c.row ?? "–"} · ${fmt(c.seconds, 2)} s · ${c.frames ?? "–"} frames${score}</div>${warnings}${reasons}${error}${facts}</div></article>`;
}
function playIn(slot) {
  // A click swaps the strip for the MP4 itself (a relative path or a presigned URL): no download needed.
  if (!slot.dataset.video) return;
  const video = document.createElement("video");
  video.src = slot.dataset.video; video.controls = true; video.autoplay = true; video.playsInline = true;
  slot.replaceWith(video);
  video.play().catch(() => {});
}
function draw() {
  const pages = Math.max(1, Math.ceil(view.length / state.size));
  state.page = Math.min(state.page, pages - 1);
  const shown = view.slice(state.page * state.size, (state.page + 1) * state.size);
  document.getElementById("cards").innerHTML = shown.length ? shown.map(card).join("") : `<div class="empty">no ${KIND.noun}s</div>`;
  document.getElementById("pageinfo").textContent = `page ${state.page + 1} / ${pages} · ${view.length} ${KIND.noun === "clip" ? "clip(s)" : "row(s)"}`;
  document.getElementById("prev").disabled = state.page === 0;
  document.getElementById("next").disabled = state.page >= pages - 1;
  for (const b of document.querySelectorAll("#filters button")) b.classList.toggle("active", b.dataset.filter === state.filter);
  history.replaceState(null, "", `#filter=${encodeURIComponent(state.filter)}&sort=${state.sort}&page=${state.page + 1}`);
}
function update(changes, keepPage) {
  Object.assign(state, changes); if (!keepPage) state.page = 0; recompute(); draw();
}
const filters = document.getElementById("filters");
let separated = false;
for (const [key, [label, test, isWarning]] of Object.entries(FILTERS)) {
  const count = CLIPS.filter(test).length;
  if (key === "unsuitable" && !count) continue;  // only runs with --unsuitable skip have such rows
  if (isWarning && !separated) { const s = document.createElement("span"); s.className = "sep"; s.textContent = "warnings:"; filters.appendChild(s); separated = true; }
  const b = document.createElement("button"); b.dataset.filter = key; if (isWarning) b.className = "warnkind";
  b.textContent = `${label} (${count})`; b.onclick = () => update({filter: key}); filters.appendChild(b);
}
document.getElementById("cards").addEventListener("click", e => {
  const slot = e.target.closest(".media[data-video]"); if (slot) playIn(slot);
});
document.getElementById("sort").value = state.sort;
document.getElementById("sort").onchange = e => update({sort: e.target.value});
document.getElementById("search").oninput = e => update({search: e.target.value});
document.getElementById("pagesize").onchange = e => update({size: parseInt(e.target.value, 10)});
document.getElementById("prev").onclick = () => update({page: state.page - 1}, true);
document.getElementById("next").onclick = () => update({page: state.page + 1}, true);
if (KIND.kind === "proof") {
  for (const v of ["score", "score_asc"]) document.querySelector(`#sort option[value=${v}]`).remove();
  document.getElementById("footer").textContent = "Each row as the job will frame and pose it: the reference as given, then the framed " +
    "reference with the poses the model gets drawn over it at the start, middle, end and largest gesture. Nothing was rendered.";
} else {
  document.getElementById("footer").textContent = "QC thresholds (pipeline/qc.py): " +
    THRESHOLDS.map(([k, v]) => `${k}=${v}`).join(", ") + ". The lip-sync value is a proxy (mouth opening vs audio energy), not a sync model. Click a strip to play its clip.";
}
recompute(); draw();
</script></body></html>
"""
