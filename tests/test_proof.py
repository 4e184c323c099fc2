"""The proof sheet (`cli.py proof`): a manifest of real references (skimage's astronaut, a crop of her at the
collar, a grey image with no person, two people side by side, a landscape output, given poses) and rows the job
would refuse, proofed by the job's own steps; then the page opened in a real headless Chromium."""
import shutil
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest

from pipeline import proof
from scripts.chromium import CHROMIUM, Chromium
from scripts.review_fixture import reference_image
from tests.conftest import write_wav

REPO = Path(__file__).resolve().parent.parent
needs_chromium = pytest.mark.skipif(CHROMIUM is None, reason="needs Debian's chromium (apt-get install -y chromium)")


def write_png(path: Path, image: np.ndarray) -> str:
    cv2.imwrite(str(path), np.ascontiguousarray(image[..., ::-1]))
    return path.name


@pytest.fixture(scope="module")
def manifest(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("proof-inputs")
    half = write_png(folder / "half.png", reference_image("half_body"))
    collar = write_png(folder / "collar.png", reference_image("collar"))
    blank = write_png(folder / "blank.png", reference_image("no_person"))
    both = write_png(folder / "two.png", np.concatenate([reference_image("half_body")] * 2, axis=1))
    write_wav(folder / "speech.wav", 2.0)
    (folder / "noise.wav").write_bytes(b"RIFF not really a wave file")
    shutil.copytree(REPO / "manifests" / "assets" / "pose_gesture", folder / "poses")
    rows = [
        dict(clip_id="half", image=half, audio="speech.wav"),
        dict(clip_id="collar", image=collar, audio="speech.wav"),
        dict(clip_id="blank", image=blank, audio="speech.wav"),
        dict(clip_id="two", image=both, audio="speech.wav"),
        dict(clip_id="posed", image=half, audio="speech.wav", pose="poses"),
        dict(clip_id="wide", image=half, audio="speech.wav", width=384, height=256),
        dict(clip_id="gone", image="missing.png", audio="speech.wav"),
        dict(clip_id="noise", image=half, audio="noise.wav"),
        dict(clip_id="../up", image=half, audio="speech.wav"),
    ]
    frame = pd.DataFrame(rows)
    frame["width"] = frame["width"].astype("Int64")
    frame["height"] = frame["height"].astype("Int64")
    frame.to_parquet(folder / "manifest.parquet")
    return folder / "manifest.parquet"


@pytest.fixture(scope="module")
def sheet(manifest, tmp_path_factory):
    dest = tmp_path_factory.mktemp("proof")
    summary = proof.write_proof(str(manifest), str(dest), preset="tiny", workers=1)
    return summary, {c["clip_id"]: c for c in page_data(Path(summary.page))}


def page_data(page: Path) -> list[dict]:
    from pipeline.report import page_cards

    return page_cards(page.read_text())


def test_a_card_per_row_with_pictures_verdict_and_facts(sheet):
    summary, cards = sheet
    assert summary.rows == 9 and summary.refused == 3 and len(cards) == 9
    assert [c["row"] for c in page_data(Path(summary.page))] == list(range(9))  # manifest order
    dest = Path(summary.page).parent
    for clip_id in ("half", "collar", "blank", "two", "posed", "wide"):
        card = cards[clip_id]
        assert card["status"] == "ready" and card["error"] is None, clip_id
        for picture in ("ref", "overlay"):
            assert cv2.imread(str(dest / card[picture])) is not None, (clip_id, picture)
        assert card["frames"] == 48 and card["facts"]["frames_shown"].startswith("start #0, middle #24, end #47")
    verdicts = {clip_id: card["verdict"] for clip_id, card in cards.items() if card["status"] == "ready"}
    assert verdicts == dict(half="half_body", collar="head_only", blank="no_person", two="several_people",
                            posed="half_body", wide="half_body")
    kinds = {clip_id: [w["kind"] for w in card["warnings"]] for clip_id, card in cards.items()}
    assert kinds["half"] == [] and kinds["blank"][0] == "no_person" and kinds["two"][0] == "several_people"
    assert kinds["collar"][0] == "head_only" and all(w["message"] for w in cards["collar"]["warnings"])
    facts = cards["half"]["facts"]
    assert facts["framing"] == "person" and facts["pose_source"] == "gestures:calm"
    assert facts["pose_length"]["action"] == "generated" and facts["triage.face_box"] and "crop_box" in facts
    assert cards["posed"]["facts"]["pose_source"] == "given"
    assert cards["half"]["facts"]["size"] == "256x256" and cards["wide"]["facts"]["size"] == "384x256"
    reference = cv2.imread(str(dest / cards["half"]["ref"]))
    assert reference.shape[0] == proof.REF_HEIGHT
    wide = cv2.imread(str(dest / cards["wide"]["overlay"]))
    square = cv2.imread(str(dest / cards["half"]["overlay"]))
    assert wide.shape[0] == square.shape[0] == proof.PANEL_HEIGHT and wide.shape[1] > 1.4 * square.shape[1]


def test_refused_rows_show_why(sheet):
    _, cards = sheet
    assert cards["gone"]["status"] == "failed" and cards["gone"]["error"].startswith("row 6 (clip 'gone'): image: not found")
    assert cards["noise"]["error"].startswith("row 7 (clip 'noise'): audio:")
    assert cards["../up"]["error"].startswith("row 8 (clip '../up'): clip_id:")
    assert "RIFF" not in cards["noise"]["error"]  # errors never quote file content


def test_overlay_draws_the_poses_over_the_framed_reference():
    from echomimic2.pose import default_pose_sequence

    framed = np.full((256, 256, 3), 200, np.uint8)
    poses = default_pose_sequence(30, 24.0)
    strip, shown = proof.overlay_panels(framed, poses)
    assert [label for label, _ in shown][:3] == ["start", "middle", "end"] or "largest gesture" in shown[0][0]
    assert strip.shape[0] == proof.PANEL_HEIGHT
    panel = strip[:, :proof.PANEL_HEIGHT]
    dimmed = np.all(panel[40:] == round(200 * proof.POSE_DIM), axis=-1) | np.all(np.abs(panel[40:].astype(int) - 110) <= 2, axis=-1)
    assert (~dimmed).sum() > 100  # drawn hand pixels over the darkened reference
    bare, _ = proof.overlay_panels(framed, [])
    assert bare.shape == (proof.PANEL_HEIGHT, proof.PANEL_HEIGHT, 3)


def test_the_largest_gesture_is_found():
    from echomimic2.pose import default_pose_sequence

    poses = [dict(p, hands=np.array(p["hands"], dtype=np.float64)) for p in default_pose_sequence(40, 24.0)]
    base = poses[0]
    poses = [dict(base, hands=base["hands"].copy()) for _ in range(40)]
    poses[13]["hands"] = np.clip(poses[13]["hands"] + 0.2, 0, 1)
    assert proof.gesture_frames(poses) == [("start", 0), ("middle", 20), ("end", 39), ("largest gesture", 13)]
    poses[20]["hands"], poses[13]["hands"] = poses[13]["hands"], base["hands"].copy()
    assert proof.gesture_frames(poses) == [("start", 0), ("middle, largest gesture", 20), ("end", 39)]
    assert proof.gesture_frames(poses[:1]) == [("start", 0)]


def test_cli_proof_exit_codes(manifest, tmp_path):
    from typer.testing import CliRunner

    from cli import app

    result = CliRunner().invoke(app, ["proof", str(manifest), "--to", str(tmp_path / "p"), "--preset", "tiny",
                                      "--workers", "1"])
    assert result.exit_code == 1, result.output  # refused rows and warnings
    assert "proof sheet:" in result.output and "9 row(s): 3 refused" in result.output
    assert (tmp_path / "p" / "index.html").is_file()
    result = CliRunner().invoke(app, ["proof", str(tmp_path / "none.parquet"), "--to", str(tmp_path / "q")])
    assert result.exit_code == 2 and "not found" in result.output


@needs_chromium
def test_proof_page_in_a_real_browser(sheet, tmp_path):
    summary, cards = sheet
    with Chromium(width=1280, height=900) as browser:
        browser.open(Path(summary.page).as_uri())
        ids = browser.evaluate("Array.from(document.querySelectorAll('.card')).map(c => c.dataset.clip)")
        assert sorted(ids) == sorted(cards)
        assert ids[:3] == ["gone", "noise", "../up"]  # refused rows first, then the most warnings
        loaded = "Array.from(document.images).every(i => i.complete && i.naturalWidth > 0) && document.images.length"
        refused_with_a_picture = sum(cards[c]["ref"] is not None for c in ("gone", "noise", "../up"))
        assert browser.wait_until(loaded) == 2 * 6 + refused_with_a_picture  # ref + overlay per ready row
        verdicts = browser.evaluate("Object.fromEntries(Array.from(document.querySelectorAll('.card')).map("
                                    "c => [c.dataset.clip, c.querySelector('.verdict')?.textContent ?? null]))")
        assert verdicts["half"] == "half body" and verdicts["blank"] == "no person" and verdicts["gone"] is None
        assert "image: not found" in browser.evaluate(
            "document.querySelector('.card[data-clip=gone] .error').textContent")
        browser.evaluate("document.querySelector('#filters button[data-filter=\"warn:no_person\"]').click()")
        shown = browser.evaluate("Array.from(document.querySelectorAll('.card')).map(c => c.dataset.clip)")
        assert "blank" in shown and "half" not in shown
        browser.evaluate("document.querySelector('#filters button[data-filter=failed]').click()")
        assert browser.evaluate("document.getElementById('pageinfo').textContent") == "page 1 / 1 · 3 row(s)"
        assert browser.evaluate("document.querySelectorAll('.card video, .card .media').length") == 0
        browser.screenshot(tmp_path / "proof.png")
        assert browser.console_errors == []


@needs_chromium
def test_a_thousand_rows_page_as_the_review_page_does(sheet, tmp_path):
    """The page machinery on 1,000 proof cards (pictures reused): one page of cards drawn, paging and filters."""
    from pipeline.ledger import OVERLAYS_FOLDER, REFS_FOLDER
    from pipeline.report import render_page

    summary, cards = sheet
    source = Path(summary.page).parent
    for folder in (REFS_FOLDER, OVERLAYS_FOLDER):
        shutil.copytree(source / folder, tmp_path / folder)
    many = [dict(cards[name], row=i, clip_id=f"row-{i:04d}")
            for i, name in enumerate(["half", "collar", "blank", "two", "posed", "wide", "gone", "noise"] * 125)]
    (tmp_path / "index.html").write_text(render_page(many, title="1,000 rows", kind="proof"))
    with Chromium(width=1280, height=900) as browser:
        browser.open((tmp_path / "index.html").as_uri(), wait_for="document.querySelectorAll('.card').length")
        assert browser.evaluate("document.querySelectorAll('.card').length") == 48
        assert browser.evaluate("document.getElementById('pageinfo').textContent") == "page 1 / 21 · 1000 row(s)"
        browser.evaluate("document.getElementById('next').click()")
        assert browser.evaluate("document.getElementById('pageinfo').textContent").startswith("page 2 / 21")
        browser.evaluate("document.querySelector('#filters button[data-filter=ready]').click()")
        assert browser.evaluate("document.getElementById('pageinfo').textContent") == "page 1 / 16 · 750 row(s)"
        assert browser.console_errors == []


def test_preprocessing_writes_the_review_pictures(tmp_path):
    """The job's preprocessing leaves each clip's reference and framed-with-poses pictures where the review
    page finds them (named by clip id and fingerprint), from what it already has in memory."""
    from pipeline.ledger import OVERLAYS_FOLDER, REFS_FOLDER, REPORT_FOLDER, image_name
    from pipeline.manifest import ClipSpec
    from pipeline.render import model_identity
    from pipeline.rows import JobSettings
    from pipeline.stages import JobBoard, PreprocessStage

    write_png(tmp_path / "half.png", reference_image("half_body"))
    write_wav(tmp_path / "speech.wav", 1.0)
    settings = JobSettings(output=str(tmp_path / "out"), preset="tiny", weights=None,
                           model_identity=model_identity("tiny", None), segment_frames=24, overlap_frames=4)
    board = JobBoard()
    stage = PreprocessStage(settings, board)
    stage.setup()
    list(stage(ClipSpec(row=0, clip_id="half", image=str(tmp_path / "half.png"), audio=str(tmp_path / "speech.wav"),
                        fps=12.0, width=128, height=128)))
    [plan] = board.take_plans()
    assert not plan.failed
    name = image_name("half", plan.fingerprint)
    reference = cv2.imread(str(tmp_path / "out" / REPORT_FOLDER / REFS_FOLDER / name))
    overlay = cv2.imread(str(tmp_path / "out" / REPORT_FOLDER / OVERLAYS_FOLDER / name))
    assert reference.shape == (proof.REF_HEIGHT, proof.REF_HEIGHT, 3)
    assert overlay.shape[0] == proof.PANEL_HEIGHT and overlay.shape[1] >= 3 * proof.PANEL_HEIGHT


def test_detections_are_remembered_for_the_run(manifest, tmp_path):
    """`proof --output ROOT` remembers each reference's detection where the run looks for it (one per image)."""
    from pipeline.reference_triage import DETECTIONS_FOLDER

    root = tmp_path / "renders"
    proof.write_proof(str(manifest), str(tmp_path / "p"), preset="tiny", workers=1, output=str(root))
    remembered = sorted(p.name for p in (root / DETECTIONS_FOLDER).iterdir())
    assert len(remembered) == 4  # half (four rows), collar, blank, two
    assert not (Path.cwd() / DETECTIONS_FOLDER).exists()  # without --output nothing is written beside the caller
