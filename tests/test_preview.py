"""The preview's manifest button (rows appended with their inputs copied beside the manifest, checked as
`validate` checks them) and the Gradio app in a real headless Chromium: its fields show the preset's values,
an upload shows the framed reference with the poses over it, verdict and warnings before anything renders;
it renders with the tiny preset, shows a playable video and adds the row."""
import socket
from pathlib import Path

import pandas as pd
import pytest
from PIL import Image

from pipeline import preview, storage
from pipeline.manifest import validate_manifest
from scripts.chromium import CHROMIUM, Chromium
from tests.conftest import image_bytes, write_wav

REPO = Path(__file__).resolve().parent.parent


def inputs(tmp_path, name="a"):
    image = tmp_path / f"{name}.png"
    image.write_bytes(image_bytes(3))
    return dict(image=str(image), audio=str(write_wav(tmp_path / f"{name}.wav", 1.0)))


def test_rows_are_appended_with_their_inputs_and_validate(tmp_path):
    manifest = tmp_path / "jobs" / "batch.parquet"
    upload = tmp_path / "upload"
    upload.mkdir()
    first = preview.append_to_manifest(str(manifest), dict(inputs(upload), clip_id="intro-01", seed=3, fps=25.0,
                                                          steps=None, guidance=None, width=256, height=256))
    assert first["image"] == "assets/intro-01/image.png" and first["audio"] == "assets/intro-01/audio.wav"
    pose_folder = REPO / "manifests" / "assets" / "pose_gesture"
    second = preview.append_to_manifest(str(manifest), dict(inputs(upload, "b"), clip_id="intro-02", seed=0, fps=24.0,
                                                           pose=str(pose_folder)))
    assert second["pose"] == "assets/intro-02/pose"
    assert sorted(p.name for p in (manifest.parent / "assets" / "intro-02" / "pose").iterdir()) == \
        sorted(p.name for p in pose_folder.glob("*.npy"))
    frame = pd.read_parquet(manifest)
    assert frame["clip_id"].tolist() == ["intro-01", "intro-02"]
    assert frame["seed"].tolist() == [3, 0] and str(frame["seed"].dtype) == "Int64"
    assert frame["width"].isna().tolist() == [False, True]
    for upload_file in upload.iterdir():
        upload_file.unlink()  # the preview's temporary uploads go away: the manifest must not need them
    specs, problems = validate_manifest(str(manifest))
    assert problems == [] and [s.clip_id for s in specs] == ["intro-01", "intro-02"]


@pytest.mark.parametrize("clip_id,message", [("Intro-01", "duplicate"), ("../up", "clip_id"), ("", "clip_id")])
def test_a_row_validate_would_refuse_is_not_written(tmp_path, clip_id, message):
    manifest = tmp_path / "m.parquet"
    preview.append_to_manifest(str(manifest), dict(inputs(tmp_path), clip_id="intro-01", fps=24.0))
    before = manifest.read_bytes()
    with pytest.raises(ValueError, match=message):
        preview.append_to_manifest(str(manifest), dict(inputs(tmp_path, "c"), clip_id=clip_id, fps=24.0))
    assert manifest.read_bytes() == before
    with pytest.raises(ValueError, match="fps"):
        preview.append_to_manifest(str(manifest), dict(inputs(tmp_path, "d"), clip_id="fast", fps=500.0))


def test_manifest_on_s3(s3_bucket, tmp_path):
    manifest = f"{s3_bucket}/jobs/m.parquet"
    preview.append_to_manifest(manifest, dict(inputs(tmp_path), clip_id="s3-clip", fps=24.0))
    assert storage.exists(f"{s3_bucket}/jobs/assets/s3-clip/image.png")
    specs, problems = validate_manifest(manifest)
    assert problems == [] and specs[0].audio == f"{s3_bucket}/jobs/assets/s3-clip/audio.wav"


def test_uploaded_pose_files(tmp_path):
    npz = tmp_path / "walk.npz"
    npz.write_bytes(b"")
    assert preview._input_files([str(npz)]) == str(npz)
    frames = [REPO / "manifests" / "assets" / "pose_gesture" / f"{i}.npy" for i in range(3)]
    folder = Path(preview._input_files([str(f) for f in frames]))
    assert sorted(p.name for p in folder.iterdir()) == ["0.npy", "1.npy", "2.npy"]
    with pytest.raises(ValueError, match="one .npz file, one driving video or the per-frame .npy files"):
        preview._input_files([str(npz), str(frames[0])])
    assert preview._input_files(None) is None
    video = tmp_path / "drive.mp4"
    video.write_bytes(b"")
    assert preview._input_files([str(video)]) == str(video)  # a driving video goes to the pipeline as it is


def test_proof_of_the_inputs_before_rendering(tmp_path):
    from scripts.review_fixture import reference_image

    image = tmp_path / "collar.png"
    Image.fromarray(reference_image("collar")).save(image)
    overlay, text = preview.proof_of_inputs(str(image), str(write_wav(tmp_path / "a.wav", 1.0)), None, preset="tiny",
                                            size=None, fps=24.0, seed=0, dest=str(tmp_path / "proof"))
    assert Image.open(overlay).height == 160
    assert text.startswith("**verdict: head only**") and "`head_only`" in text and "framing: person" in text
    overlay, text = preview.proof_of_inputs(str(tmp_path / "gone.png"), str(tmp_path / "a.wav"), None, preset="tiny",
                                            size=None, fps=24.0, seed=0, dest=str(tmp_path / "proof2"))
    assert overlay is None and text.startswith("**refused**: row 0 (clip 'preview'): image: not found")


def test_fields_start_at_the_presets_values():
    assert preview.preset_values("tiny") == dict(steps=3, guidance=1.0, size=256, sizes=[128, 256, 512, 768])
    assert preview.preset_values("quality")["steps"] == 30 and preview.preset_values("quality")["guidance"] == 2.5
    assert preview._unless_default(3, 3) is None and preview._unless_default(4, 3) == 4


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow  # the tiny model renders on the CPU: ~30 s idle, minutes on a busy 2-core machine
@pytest.mark.skipif(CHROMIUM is None, reason="needs Debian's chromium (apt-get install -y chromium)")
def test_preview_renders_a_tiny_clip_in_a_real_browser(tmp_path):
    pytest.importorskip("gradio")
    try:
        from pipeline.clip import EchoMimicV2Pipeline  # noqa: F401 - the one-clip API (structure branch)
    except ImportError:
        pytest.skip("pipeline.clip (the one-clip API) is not in this tree yet")
    manifest = tmp_path / "manifest.parquet"
    app = preview.build_app(preview.Pipelines(), manifest=str(manifest))
    app.queue().launch(server_name="127.0.0.1", server_port=free_port(), prevent_thread_lock=True, quiet=True)
    try:
        with Chromium(width=1280, height=900, timeout=120) as browser:
            browser.open(app.local_url, wait_for="document.querySelector('#render')")
            browser.set_files("#image input[type=file]", [REPO / "manifests" / "assets" / "figure.png"])
            browser.set_files("#audio input[type=file]", [write_wav(tmp_path / "short.wav", 0.6)])  # one segment
            browser.wait_until("document.querySelector('#image img')", timeout=30)
            browser.wait_until("document.querySelector('#audio audio, #audio wave, #audio canvas, #audio .waveform-container')",
                               timeout=30)
            browser.evaluate("document.querySelector('#render').click()")
            browser.wait_until("document.querySelector('.progress-text, .progress-level, .eta-bar') !== null"
                               " || document.querySelector('#result video') !== null", timeout=120)
            playable = ("(() => { const v = document.querySelector('#result video');"
                        " return v && v.readyState >= 1 && v.duration > 0 ? v.duration : 0; })()")
            duration = browser.wait_until(playable, timeout=600)
            assert duration == pytest.approx(0.6, abs=0.1)
            assert "frames" in browser.evaluate("document.querySelector('#qc').innerText")
            browser.screenshot(tmp_path / "preview.png")
            browser.evaluate("document.querySelector('#add').click()")
            browser.wait_until("document.querySelector('#added').innerText.includes('added')", timeout=60)
            errors = [e for e in browser.console_errors if "favicon" not in e]
            assert errors == []
    finally:
        app.close()
    frame = pd.read_parquet(manifest)
    assert frame["clip_id"].tolist() == ["preview-001"]
    assert validate_manifest(str(manifest))[1] == []


@pytest.mark.skipif(CHROMIUM is None, reason="needs Debian's chromium (apt-get install -y chromium)")
def test_preview_shows_the_proof_before_rendering_in_a_real_browser(tmp_path):
    """Issue 34: the framed reference with the poses over it, verdict and warnings on upload, before the render
    button; issue 38: Steps, Guidance and Size show the preset's values (not 0 and an empty list)."""
    pytest.importorskip("gradio")
    from scripts.review_fixture import reference_image

    image = tmp_path / "half.png"
    Image.fromarray(reference_image("half_body")).save(image)
    app = preview.build_app(preview.Pipelines(), manifest=str(tmp_path / "manifest.parquet"))
    app.queue().launch(server_name="127.0.0.1", server_port=free_port(), prevent_thread_lock=True, quiet=True)
    try:
        with Chromium(width=1280, height=900, timeout=120) as browser:
            browser.open(app.local_url, wait_for="document.querySelector('#render')")
            assert browser.evaluate("document.querySelector('#steps input').value") == "3"
            assert browser.evaluate("document.querySelector('#guidance input').value") == "1"
            assert browser.evaluate("document.querySelector('#size input').value") == "256"
            assert browser.evaluate("document.querySelector('#proof img')") is None
            browser.set_files("#image input[type=file]", [image])
            browser.set_files("#audio input[type=file]", [write_wav(tmp_path / "speech.wav", 1.0)])
            verdict = browser.wait_until("document.querySelector('#verdict').innerText.includes('verdict:')"
                                         " && document.querySelector('#verdict').innerText", timeout=90)
            assert "verdict: half body" in verdict and "gestures:calm" in verdict
            shown = browser.wait_until("(() => { const i = document.querySelector('#proof img');"
                                       " return i && i.complete && i.naturalWidth; })()", timeout=30)
            assert shown > 3 * 160  # three or four panels of the framed reference with the poses over it
            assert browser.evaluate("document.querySelector('#result video')") is None  # nothing rendered
            errors = [e for e in browser.console_errors if "favicon" not in e]
            assert errors == []
    finally:
        app.close()
