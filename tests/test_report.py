"""The review page: written from results.parquet and real assembled MP4s (local and S3 roots), then opened in a
real headless Chromium (DevTools protocol): no console errors, one card per clip with its strip, reference,
framed-with-poses picture, verdict, warnings and facts, filters (status and warning kind), sorting, paging on
10,000 rows, a click that plays the clip in place, MP4 links presigned for --link-expiry."""
import json
import re
import time
from pathlib import Path

import pandas as pd
import pytest

from pipeline import report, storage
from scripts.chromium import CHROMIUM, Chromium
from scripts.review_fixture import KINDS, build_large_output_root, build_output_root

needs_chromium = pytest.mark.skipif(CHROMIUM is None, reason="needs Debian's chromium (apt-get install -y chromium)")


@pytest.fixture(scope="module")
def output_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("renders")
    build_output_root(str(root))
    return root


def page_data(page: Path) -> list[dict]:
    return report.page_cards(page.read_text())


def test_page_has_a_row_per_clip_with_strips_and_links(output_root):
    summary = report.write_report(str(output_root))
    page = output_root / "_report" / "index.html"
    assert summary.page == str(page) and summary.clips == len(KINDS)
    assert summary.strips_made == 2 and summary.strips_missing == 0  # clips 1 and 3 had no strip from the assembler
    rows = {r["clip_id"]: r for r in page_data(page)}
    assert [r["status"] for r in rows.values()].count("failed") == 1
    assert {c for c, r in rows.items() if r["flagged"]} == {"clip-001-black", "clip-002-seam", "clip-003-frozen"}
    assert any(reason.startswith("black:") for reason in rows["clip-001-black"]["reasons"])
    assert rows["clip-005-failed"]["error"].startswith("row 5 (clip 'clip-005-failed'): audio:")
    for clip_id, row in rows.items():
        if row["status"] == "failed":
            assert row["strip"] is None and row["link"] is None and row["ref"] is None and row["overlay"] is None
            continue
        assert row["link"] == f"../{clip_id}.mp4" and (page.parent / row["link"]).is_file()
        for picture in ("strip", "ref", "overlay"):
            assert (page.parent / row[picture]).stat().st_size > 1000, picture
        assert row["facts"]["pose_source"] == "gestures:calm" and "crop_box" in row["facts"]
        assert "reference_anchors.nose" not in row["facts"]  # raw tables stay in results, off the card
    assert rows["clip-000-clean"]["verdict"] == "half_body" and rows["clip-000-clean"]["warnings"] == []
    assert rows["clip-002-seam"]["verdict"] == "head_only" and rows["clip-003-frozen"]["verdict"] == "no_person"
    assert [w["kind"] for w in rows["clip-003-frozen"]["warnings"]][0] == "no_person"
    again = report.write_report(str(output_root))
    assert again.strips_made == 0  # strips made from MP4s are cached under the root


def test_qc_from_the_ledger_when_results_have_no_qc_columns(output_root, tmp_path):
    """A results.parquet written before the job stored QC columns: the clip records' QC is used."""
    from pipeline.ledger import Ledger
    from pipeline.results import RESULT_COLUMNS, read_results

    root = tmp_path / "older"
    root.mkdir()
    results = read_results(str(output_root))
    ledger = Ledger(str(root))
    for row in results.to_dict("records"):
        if row["status"] == "done":
            ledger.record_clip(row["clip_id"], row["fingerprint"], qc=json.loads(row["qc"]))
    results[list(RESULT_COLUMNS)].to_parquet(root / "results.parquet")
    rows = {r["clip_id"]: r for r in page_data(Path(report.write_report(str(root)).page))}
    assert {c for c, r in rows.items() if r["flagged"]} == {"clip-001-black", "clip-002-seam", "clip-003-frozen"}
    assert rows["clip-000-clean"]["score"] == results.set_index("clip_id").loc["clip-000-clean", "qc_score"]


def test_text_from_results_cannot_break_out_of_the_page(tmp_path):
    results = pd.DataFrame([dict(row=0, clip_id="x", status="failed", error="</script><script>alert(1)</script> & <b>")])
    page = report.render_page(report.clip_rows(results), title="<t>")
    assert "</script><script>alert(1)" not in page and "<title>&lt;t&gt;</title>" in page
    data = json.loads(re.search(r'id="clips" type="application/json">(.*?)</script>', page, re.S).group(1))
    assert data[0]["error"] == "</script><script>alert(1)</script> & <b>"


def test_flagged_lines_for_status(output_root):
    from pipeline.results import read_results

    lines = report.flagged_lines(read_results(str(output_root)))
    assert len(lines) == 3 and lines[0].startswith("clip-001-black: score ")
    assert all(": score " in line for line in lines)


def test_report_of_an_s3_root_inside_it_and_into_a_local_folder(s3_bucket, tmp_path):
    root = f"{s3_bucket}/renders"
    build_output_root(root, kinds=("clean", "black", "failed"))
    summary = report.write_report(root)
    assert summary.page == f"{root}/_report/index.html" and summary.strips_made == 1
    rows = report.page_cards(storage.read_bytes(summary.page, max_bytes=1 << 20).decode())
    assert rows[0]["link"] == "../clip-000-clean.mp4"  # the page sits beside the clips on the same store
    assert storage.exists(f"{root}/_report/{rows[1]['strip']}")

    local = report.write_report(root, str(tmp_path / "review"))
    assert local.strips_made == 0  # taken from the root's strips, not decoded again
    rows = page_data(tmp_path / "review" / "index.html")
    for picture in ("strip", "ref", "overlay"):  # copied beside the page
        assert (tmp_path / "review" / rows[1][picture]).stat().st_size > 1000, picture
    assert rows[0]["link"].startswith("http") and "clip-000-clean.mp4" in rows[0]["link"]  # a signed URL
    assert link_lifetime(rows[0]["link"]) == pytest.approx(86400, abs=60)  # a day by default
    short = report.write_report(root, str(tmp_path / "short"), link_seconds=report.parse_duration("30m"))
    assert link_lifetime(page_data(Path(short.page))[0]["link"]) == pytest.approx(1800, abs=60)


def link_lifetime(url: str) -> float:
    """Seconds a presigned URL stays valid from now (SigV2's Expires=<epoch> or SigV4's X-Amz-Expires=<s>)."""
    from urllib.parse import parse_qs, urlparse

    query = parse_qs(urlparse(url).query)
    if "X-Amz-Expires" in query:
        return float(query["X-Amz-Expires"][0])
    return float(query["Expires"][0]) - time.time()


def test_link_expiry_durations():
    assert [report.parse_duration(t) for t in ("3600", "90s", "30m", "24h", "7d")] == [3600, 90, 1800, 86400, 604800]
    for bad in ("soon", "0", "8d", "-1h"):
        with pytest.raises(ValueError):
            report.parse_duration(bad)


def test_cli_report_exit_codes(output_root, tmp_path):
    from typer.testing import CliRunner

    from cli import app

    result = CliRunner().invoke(app, ["report", str(output_root), "--to", str(tmp_path / "r")])
    assert result.exit_code == 0 and "review page:" in result.output and (tmp_path / "r" / "index.html").is_file()
    result = CliRunner().invoke(app, ["report", str(tmp_path / "nothing")])
    assert result.exit_code == 2 and "no results.parquet" in result.output
    result = CliRunner().invoke(app, ["report", str(output_root), "--link-expiry", "forever"])
    assert result.exit_code == 2 and "--link-expiry" in result.output


CARD_IDS = "Array.from(document.querySelectorAll('.card')).map(c => c.dataset.clip)"


@needs_chromium
def test_page_in_a_real_browser(output_root, tmp_path):
    report.write_report(str(output_root))
    with Chromium(width=1280, height=900) as browser:
        browser.open((output_root / "_report" / "index.html").as_uri())
        assert browser.evaluate("document.querySelectorAll('.card').length") == len(KINDS)
        loaded = "Array.from(document.images).every(i => i.complete && i.naturalWidth > 0) && document.images.length"
        assert browser.wait_until(loaded) == 3 * (len(KINDS) - 1)  # every finished clip's strip, reference, overlay
        ids = browser.evaluate(CARD_IDS)
        assert ids[0] == "clip-005-failed"  # worst first: failures, then the highest QC score
        assert set(ids[1:4]) == {"clip-001-black", "clip-002-seam", "clip-003-frozen"}
        scores = browser.evaluate("view.slice(1).map(c => c.score)")
        assert scores == sorted(scores, reverse=True) and scores[2] >= 1 > scores[3]
        expected = {"failed": 1, "flagged": 3, "done": 5, "all": 6, "warned": 2, "warn:no_person": 1, "warn:head_only": 1}
        for name, count in expected.items():
            browser.evaluate(f"document.querySelector('#filters button[data-filter=\"{name}\"]').click()")
            assert browser.evaluate("document.querySelectorAll('.card').length") == count, name
            assert browser.evaluate("location.hash").startswith(f"#filter={name.replace(':', '%3A')}")
        browser.evaluate("document.querySelector('#filters button[data-filter=flagged]').click()")
        assert all(c.endswith(("black", "seam", "frozen")) for c in browser.evaluate(CARD_IDS))
        link = browser.evaluate("document.querySelector('.card a').href")
        assert link.startswith("file://") and Path(link[len("file://"):]).is_file()
        browser.evaluate("const s = document.getElementById('search'); s.value = 'seam'; s.dispatchEvent(new Event('input'))")
        assert browser.evaluate(CARD_IDS) == ["clip-002-seam"]
        shot = browser.screenshot(tmp_path / "report.png")
        assert shot.stat().st_size > 10_000
        assert browser.console_errors == []


@needs_chromium
def test_a_click_plays_the_clip_and_warning_kinds_filter(output_root):
    report.write_report(str(output_root))
    with Chromium(width=1280, height=900) as browser:
        browser.open((output_root / "_report" / "index.html").as_uri())
        browser.evaluate("document.querySelector('#filters button[data-filter=\"warn:no_person\"]').click()")
        assert browser.evaluate(CARD_IDS) == ["clip-003-frozen"]
        assert browser.evaluate("location.hash").startswith("#filter=warn%3Ano_person")
        card = "document.querySelector('.card[data-clip=\"clip-003-frozen\"]')"
        assert "no person" in browser.evaluate(f"{card}.querySelector('.verdict').textContent")
        assert "no_person" in browser.evaluate(f"{card}.querySelector('.warnings').textContent")
        assert browser.evaluate(f"{card}.querySelector('video')") is None
        browser.evaluate(f"{card}.querySelector('.media').click()")
        playing = (f"(() => {{ const v = {card}.querySelector('video');"
                   " return v && !v.paused && v.currentTime > 0 ? v.currentTime : 0; })()")
        assert browser.wait_until(playing, timeout=20) > 0  # the MP4 itself, decoded and playing in the page
        assert browser.evaluate(f"{card}.querySelector('video').src").endswith("/clip-003-frozen.mp4")
        browser.evaluate(f"{card}.querySelector('details.facts').open = true")
        assert "framing" in browser.evaluate(f"{card}.querySelector('details.facts').innerText")
        assert browser.console_errors == []


@needs_chromium
def test_ten_thousand_clips_page_quickly(tmp_path):
    root = tmp_path / "big"
    build_large_output_root(str(root), 10_000)
    started = time.perf_counter()
    summary = report.write_report(str(root))
    written = time.perf_counter() - started
    assert summary.clips == 10_000 and summary.strips_missing == 0 and summary.strips_made == 0
    assert written < 60, f"report took {written:.1f} s"
    with Chromium(width=1280, height=900) as browser:
        started = time.perf_counter()
        browser.open(Path(summary.page).as_uri(), wait_for="document.querySelectorAll('.card').length")
        opened = time.perf_counter() - started
        assert browser.evaluate("document.querySelectorAll('.card').length") == 48  # one page drawn, not 10,000
        pages = browser.evaluate("document.getElementById('pageinfo').textContent")
        assert pages == "page 1 / 209 · 10000 clip(s)"
        first = browser.evaluate(CARD_IDS)
        step = browser.evaluate("(() => { const t = performance.now(); document.getElementById('next').click();"
                                " return performance.now() - t; })()")
        assert browser.evaluate("document.getElementById('pageinfo').textContent").startswith("page 2 / 209")
        assert set(browser.evaluate(CARD_IDS)).isdisjoint(first)
        refilter = browser.evaluate("(() => { const t = performance.now();"
                                    " document.querySelector('#filters button[data-filter=failed]').click();"
                                    " return performance.now() - t; })()")
        failed = browser.evaluate("document.getElementById('pageinfo').textContent")
        assert re.fullmatch(r"page 1 / \d+ · \d+ clip\(s\)", failed) and 300 < int(failed.split("· ")[1].split()[0]) < 700
        assert browser.console_errors == []
    print(f"10,000 clips: report {written:.1f} s, page open {opened:.2f} s, next page {step:.0f} ms, filter {refilter:.0f} ms")
    assert step < 250 and refilter < 500


@needs_chromium
def test_rows_skipped_as_unsuitable_have_their_own_filter(tmp_path):
    """`run --unsuitable skip` leaves `skipped` rows with a reason: not counted as done, filtered apart."""
    summary = dict(verdict="no_person", warnings=[dict(kind="no_person", message="no face and shoulders found")],
                   framing="whole_image")
    results = pd.DataFrame([
        dict(row=0, clip_id="rendered", status="done", output=None, frames=24, seconds=1.0),
        dict(row=1, clip_id="earlier", status="skipped", output=None, frames=24, seconds=1.0),
        dict(row=2, clip_id="cat", status="skipped", error="row 2 (clip 'cat'): image: unsuitable reference (no_person)",
             verdict="no_person", warnings=json.dumps(summary["warnings"]), poses_info=json.dumps(summary)),
    ])
    (tmp_path / "index.html").write_text(report.render_page(report.clip_rows(results), title="unsuitable"))
    with Chromium(width=1280, height=900) as browser:
        browser.open((tmp_path / "index.html").as_uri())
        labels = browser.evaluate("Array.from(document.querySelectorAll('#filters button')).map(b => b.textContent)")
        assert "done (2)" in labels and "skipped as unsuitable (1)" in labels and "no person (1)" in labels
        browser.evaluate("document.querySelector('#filters button[data-filter=unsuitable]').click()")
        assert browser.evaluate(CARD_IDS) == ["cat"]
        assert browser.evaluate("document.querySelector('.card .nostrip').textContent") == "not rendered"
        assert browser.console_errors == []
