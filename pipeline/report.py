"""The review page of an output root: one static HTML file (no server) with a card per clip — a contact strip
of frames, duration, status, QC flags and score, the error if any, a link to the MP4 — filters, sorting by
QC score and client-side paging. The rows travel as one JSON blob inside the page and only the visible page
of cards is drawn, so 10,000 clips stay fast.

    <dest>/index.html
    <dest>/strips/<clip_id>.<fingerprint[:16]>.jpg   contact strips (JPEG, 96 px high)

``dest`` is ``<root>/_report`` unless given. Contact strips come from the assembler (``strip_uri``) when the
job passes it one; a clip without one gets it from its MP4 here (a few frames decoded once, then cached under
``<root>/_report/strips/``). Everything is read and written through pipeline.storage: local and object-store
roots alike.
"""
from __future__ import annotations

import html
import json
import math
import os
import subprocess
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from pipeline import qc, storage
from pipeline.ledger import REPORT_FOLDER, STRIPS_FOLDER, strip_name
from pipeline.media import FFMPEG

STRIP_WORKERS = 4  # ffmpeg processes making missing strips (each decodes one clip)
MAX_STRIP_MP4_BYTES = 2 << 30


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


def clip_rows(results: pd.DataFrame, records: dict | None = None) -> list[dict]:
    """One dict per results row with what a card shows, in results order."""
    rows = []
    for raw in results.to_dict("records"):
        row = {k: _clean(v) for k, v in raw.items()}
        flagged, score, reasons = _qc_of(row, records or {})
        finished = row.get("status") in ("done", "skipped")
        rows.append(dict(
            clip_id=row.get("clip_id") or f"row {row.get('row')}", row=row.get("row"), status=row.get("status"),
            flagged=flagged and finished, score=score, reasons=reasons, error=row.get("error"),
            frames=row.get("frames"), seconds=row.get("seconds"), output=row.get("output"),
            fingerprint=row.get("fingerprint"),
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
            [FFMPEG, "-hide_banner", "-nostdin", "-loglevel", "error", "-i", str(storage.local_path(source)),
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


def write_report(root: str, to: str | None = None, *, link_seconds: int = 7 * 24 * 3600,
                 strip_workers: int = STRIP_WORKERS, title: str | None = None) -> ReportSummary:
    """Write the review page of ``root`` (its results.parquet and MP4s) to ``to`` (default ``<root>/_report``)."""
    from pipeline.ledger import Ledger
    from pipeline.results import read_results

    started = time.perf_counter()
    results = read_results(root)
    records = {} if "qc_flagged" in results.columns else {r["clip_id"]: r for r in Ledger(root).clip_records()}
    dest = (to or storage.join(root, REPORT_FOLDER)).rstrip("/")
    if storage.is_local(dest):
        dest = str(storage.local_path(dest).resolve())
    rows = clip_rows(results, records)
    made, missing = _make_strips(root, rows, storage.join(dest, STRIPS_FOLDER), workers=strip_workers)
    for row in rows:
        row["link"] = _mp4_link(row.pop("output"), dest, link_seconds)
        row.pop("fingerprint")
    page = render_page(rows, title=title or f"Review: {storage.redact(root)}")
    page_uri = storage.join(dest, "index.html")
    storage.write_atomic(page_uri, page.encode())
    return ReportSummary(page=page_uri, clips=len(rows), strips_made=made, strips_missing=missing,
                         seconds=time.perf_counter() - started)


def report_command(output: str, to: str | None = None) -> int:
    """`cli.py report`: 0, or 2 when the output root has no readable results."""
    from rich.console import Console

    console = Console(highlight=False, soft_wrap=True)
    try:
        summary = write_report(output, to)
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


def render_page(rows: list[dict], *, title: str) -> str:
    thresholds = [[name, value] for name, value in qc.thresholds_table()]
    return (PAGE.replace("__TITLE__", html.escape(title))
            .replace("__DATA__", _json_for_script(rows))
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
  .filters button { border:1px solid #475066; background:#2a3142; color:#fff; padding:4px 10px; border-radius:14px; cursor:pointer; }
  .filters button.active { background:#fff; color:#1d2330; }
  header select, header input { padding:4px 6px; border-radius:4px; border:1px solid #475066; }
  .pager { margin-left:auto; display:flex; gap:6px; align-items:center; }
  .pager button { padding:3px 9px; cursor:pointer; }
  main { display:grid; grid-template-columns:repeat(auto-fill, minmax(380px, 1fr)); gap:12px; padding:14px 16px; }
  .card { background:var(--card); border-radius:8px; box-shadow:0 1px 3px rgba(0,0,0,.12); overflow:hidden; border-top:4px solid var(--ok); }
  .card.flagged { border-top-color:var(--warn); } .card.failed { border-top-color:var(--bad); }
  .strip { display:block; width:100%; height:auto; min-height:40px; background:#d0d4dc; }
  .nostrip { display:flex; align-items:center; justify-content:center; height:64px; background:#eceef2; color:var(--muted); }
  .body { padding:8px 10px 10px; }
  .title { display:flex; gap:8px; align-items:baseline; }
  .title b { font-size:15px; word-break:break-all; }
  .badge { font-size:11px; padding:1px 7px; border-radius:9px; color:#fff; background:var(--ok); text-transform:uppercase; }
  .badge.failed { background:var(--bad); } .badge.flagged { background:var(--warn); } .badge.skipped { background:#4a5568; }
  .meta { color:var(--muted); font-size:12px; margin:2px 0 4px; }
  .reasons { margin:4px 0 0; padding-left:18px; color:var(--warn); }
  .error { margin-top:4px; color:var(--bad); font-family:ui-monospace, monospace; font-size:12px; white-space:pre-wrap; word-break:break-word; }
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
    <option value="clip">clip id</option><option value="seconds">longest first</option><option value="row">manifest row</option>
  </select></label>
  <input id="search" type="search" placeholder="clip id contains…">
  <div class="pager"><button id="prev">‹ prev</button><span id="pageinfo"></span><button id="next">next ›</button>
    <select id="pagesize"><option>24</option><option selected>48</option><option>96</option></select></div>
</header>
<main id="cards"></main>
<footer id="footer"></footer>
<script id="clips" type="application/json">__DATA__</script>
<script id="thresholds" type="application/json">__THRESHOLDS__</script>
<script>
"use strict";
const CLIPS = JSON.parse(document.getElementById("clips").textContent);
const THRESHOLDS = JSON.parse(document.getElementById("thresholds").textContent);
const FILTERS = {
  all: ["all", c => true],
  failed: ["failed", c => c.status === "failed"],
  flagged: ["flagged", c => c.flagged],
  done: ["done", c => c.status === "done" || c.status === "skipped"],
};
const SORTS = {
  score: (a, b) => rank(b) - rank(a) || a.clip_id.localeCompare(b.clip_id),
  score_asc: (a, b) => rank(a) - rank(b) || a.clip_id.localeCompare(b.clip_id),
  clip: (a, b) => a.clip_id.localeCompare(b.clip_id),
  seconds: (a, b) => (b.seconds || 0) - (a.seconds || 0),
  row: (a, b) => (a.row ?? 1e12) - (b.row ?? 1e12),
};
// Failed clips rank above every QC score: they are the first thing to look at.
function rank(c) { return c.status === "failed" ? Infinity : (c.score ?? -1); }
const state = Object.assign({filter: "all", sort: "score", page: 0, size: 48, search: ""}, readHash());
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

function recompute() {
  const keep = FILTERS[state.filter][1]; const needle = state.search.toLowerCase();
  view = CLIPS.filter(c => keep(c) && (!needle || c.clip_id.toLowerCase().includes(needle)));
  view.sort(SORTS[state.sort]);
}
function card(c) {
  const kind = c.status === "failed" ? "failed" : (c.flagged ? "flagged" : "ok");
  const badge = c.status === "failed" ? "failed" : (c.flagged ? "flagged" : c.status);
  const strip = c.strip ? `<img class="strip" loading="lazy" alt="frames of ${esc(c.clip_id)}" src="${esc(c.strip)}">`
                        : `<div class="nostrip">${c.status === "failed" ? "no video" : "no strip"}</div>`;
  const link = c.link ? `<a href="${esc(c.link)}" target="_blank" rel="noopener">MP4</a>` : "";
  const reasons = c.reasons.length ? `<ul class="reasons">${c.reasons.map(r => `<li>${esc(r)}</li>`).join("")}</ul>` : "";
  const error = c.error ? `<div class="error">${esc(c.error)}</div>` : "";
  return `<article class="card ${kind}" data-clip="${esc(c.clip_id)}">${strip}<div class="body">
    <div class="title"><b>${esc(c.clip_id)}</b><span class="badge ${badge}">${esc(badge)}</span>${link}</div>
    <div class="meta">${fmt(c.seconds, 2)} s · ${c.frames ?? "–"} frames · QC score ${fmt(c.score, 2)}</div>${reasons}${error}</div></article>`;
}
function draw() {
  const pages = Math.max(1, Math.ceil(view.length / state.size));
  state.page = Math.min(state.page, pages - 1);
  const shown = view.slice(state.page * state.size, (state.page + 1) * state.size);
  document.getElementById("cards").innerHTML = shown.length ? shown.map(card).join("") : `<div class="empty">no clips</div>`;
  document.getElementById("pageinfo").textContent = `page ${state.page + 1} / ${pages} · ${view.length} clip(s)`;
  document.getElementById("prev").disabled = state.page === 0;
  document.getElementById("next").disabled = state.page >= pages - 1;
  for (const b of document.querySelectorAll("#filters button")) b.classList.toggle("active", b.dataset.filter === state.filter);
  history.replaceState(null, "", `#filter=${state.filter}&sort=${state.sort}&page=${state.page + 1}`);
}
function update(changes, keepPage) {
  Object.assign(state, changes); if (!keepPage) state.page = 0; recompute(); draw();
}
const filters = document.getElementById("filters");
for (const [key, [label, test]] of Object.entries(FILTERS)) {
  const b = document.createElement("button"); b.dataset.filter = key;
  b.textContent = `${label} (${CLIPS.filter(test).length})`; b.onclick = () => update({filter: key}); filters.appendChild(b);
}
document.getElementById("sort").value = state.sort;
document.getElementById("sort").onchange = e => update({sort: e.target.value});
document.getElementById("search").oninput = e => update({search: e.target.value});
document.getElementById("pagesize").onchange = e => update({size: parseInt(e.target.value, 10)});
document.getElementById("prev").onclick = () => update({page: state.page - 1}, true);
document.getElementById("next").onclick = () => update({page: state.page + 1}, true);
document.getElementById("footer").textContent = "QC thresholds (pipeline/qc.py): " +
  THRESHOLDS.map(([k, v]) => `${k}=${v}`).join(", ") + ". The lip-sync value is a proxy (mouth opening vs audio energy), not a sync model.";
recompute(); draw();
</script></body></html>
"""
