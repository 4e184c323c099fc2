"""Reference triage and framing by verdict, on cases built from skimage's astronaut (a real half-body
photo MediaPipe detects offline): a crop at the collar, two copies side by side, a texture, a tiny copy,
a small copy on a large canvas, a copy cut through the face. Detection runs once per case (module
fixture); every verdict, framing and warning is asserted on those detections."""
from __future__ import annotations

import io
import json

import cv2
import numpy as np
import pytest

from echomimic2.clip_poses import reference_and_poses
from echomimic2.pose_align import PLACEMENT_SLACK, frame_reference
from echomimic2.triage import (
    HEAD_ROOM,
    SHOULDER_LINE,
    VERDICTS,
    WARNING_KINDS,
    PeopleDetection,
    PeopleDetector,
    ReferenceTriage,
    detect_people,
    face_box,
    triage_reference,
)
from tests.synthetic_person import astronaut


def _texture() -> np.ndarray:
    rng = np.random.default_rng(1)
    return cv2.resize(rng.integers(0, 255, (30, 45, 3), dtype=np.uint8), (451, 300), interpolation=cv2.INTER_CUBIC)


def _small_on_canvas() -> np.ndarray:
    canvas = np.full((700, 700, 3), 200, np.uint8)
    canvas[200:500, 200:500] = cv2.resize(astronaut(), (300, 300), interpolation=cv2.INTER_AREA)
    return canvas


CASES = {
    "half_body": lambda: astronaut(),
    "head_only": lambda: astronaut()[:230],  # cut at the collar, just below the chin
    "several_people": lambda: np.concatenate([astronaut(), astronaut()], axis=1),
    "no_person": _texture,
    "image_too_small": lambda: cv2.resize(astronaut(), (96, 96), interpolation=cv2.INTER_AREA),
    "too_small": _small_on_canvas,  # at a 768 output; at 256 the same person is half_body
    "cut_off": lambda: np.ascontiguousarray(astronaut()[:, 200:]),  # cut through the face
}
OUTPUT = {"too_small": (768, 768)}


@pytest.fixture(scope="module")
def cases():
    """{name: (image, detection)}: each case detected once."""
    with PeopleDetector() as detector:
        return {name: (image, detect_people(image, detector=detector)) for name, image in
                ((name, make()) for name, make in CASES.items())}


@pytest.mark.parametrize("name", list(CASES))
def test_each_case_gets_its_verdict_with_a_warning_and_the_numbers(cases, name):
    image, detection = cases[name]
    triage = triage_reference(image, *OUTPUT.get(name, (256, 256)), detection=detection)
    assert triage.verdict == name and triage.ok == (name == "half_body")
    kinds = [warning.kind for warning in triage.warnings]
    assert kinds == ([] if name == "half_body" else [name])  # one problem each, nothing else found
    assert all(warning.message for warning in triage.warnings) and set(kinds) <= set(WARNING_KINDS)
    facts = triage.facts
    assert facts["image_size"] == [image.shape[1], image.shape[0]]
    if name != "no_person":
        for key in ("face_box", "shoulder_span", "hands_visible", "person_share", "person_box"):
            assert key in facts, key
        assert 0 < facts["person_share"] <= 1
    data = json.loads(json.dumps(triage.to_json()))  # JSON-ready, and back
    assert ReferenceTriage.from_json(data) == triage


def test_the_numbers_behind_the_verdicts(cases):
    facts = {name: triage_reference(None, *OUTPUT.get(name, (256, 256)), detection=cases[name][1]).facts for name in CASES}
    assert facts["half_body"]["image_bottom_in_box"] > 0.95 and facts["head_only"]["image_bottom_in_box"] < 0.6
    assert facts["several_people"]["people"] == 2 and len(facts["several_people"]["faces"]) == 2
    assert facts["no_person"]["people"] == 0 and not facts["no_person"]["person_found"]
    assert facts["image_too_small"]["image_upscale"] > 2 and facts["too_small"]["person_upscale"] > 2
    assert facts["too_small"]["image_upscale"] < 2
    assert facts["cut_off"]["face_box"][0] < 0  # the face runs past the left edge
    # the half-body astronaut's shoulders are ~190 px apart in her 512 px photo
    assert 150 < facts["half_body"]["shoulder_span"] < 230 and facts["half_body"]["shoulders"] == "detected"


def test_a_remembered_detection_triages_again_for_another_size_without_detecting(cases):
    image, detection = cases["too_small"]
    remembered = PeopleDetection.from_json(json.dumps(detection.to_json()))
    assert triage_reference(None, 256, 256, detection=remembered).verdict == "half_body"
    assert triage_reference(None, 768, 768, detection=remembered).verdict == "too_small"
    stale = dict(detection.to_json(), version=0)
    with pytest.raises(ValueError, match="version"):
        PeopleDetection.from_json(stale)


def test_several_people_the_largest_most_central_or_the_one_asked_for(cases):
    image, detection = cases["several_people"]
    nose_x = detection.landmarks.body[0, 0]
    chosen = detection.faces[detection.person]
    assert chosen[0] <= nose_x <= chosen[2]  # the landmarks are that face's person
    with PeopleDetector() as detector:
        for index in (0, 1):
            asked = detect_people(image, person=index, detector=detector)
            face = asked.faces[index]
            assert asked.person == index and face[0] <= asked.landmarks.body[0, 0] <= face[2]
            triage = triage_reference(None, 256, 256, detection=asked)
            assert triage.verdict == "half_body" and triage.facts["person_chosen_by"] == "manifest"
        assert detection.faces[0][2] < 512 < detection.faces[1][0]  # 0 is the leftmost
        with pytest.raises(ValueError, match="person 2 asked for, but 2 face"):
            detect_people(image, person=2, detector=detector)


# ---- framing by verdict ---------------------------------------------------------------------------


def _framed(cases, name, size):
    image, detection = cases[name]
    return frame_reference(image, *size, triage=triage_reference(image, *size, detection=detection))


def _face_in_output(framing) -> tuple[float, ...]:
    return face_box(framing.landmarks)


def test_a_head_only_reference_keeps_the_training_face_size_and_place(cases):
    """The collar crop's face lands where the full photo's does: no shrink, the area below filled."""
    _, _, full = _framed(cases, "half_body", (256, 256))
    framed, box, collar = _framed(cases, "head_only", (256, 256))
    assert collar.zoom == 1.0 and full.zoom == 1.0 and collar.fill == "reflect_blur"
    assert collar.padding()["bottom"] > 0.3 and collar.as_dict()["framing_padding_pct"]["bottom"] > 30
    assert np.allclose(_face_in_output(collar), _face_in_output(full), atol=0.02 * 256)  # measured: within 1 px
    brow = collar.landmarks.face[:, 1].min() / 256
    assert brow == pytest.approx(HEAD_ROOM, abs=PLACEMENT_SLACK + 0.03)
    # MediaPipe guesses shoulders too high where the image ends: the face places them, and alignment uses the face
    assert "left_shoulder" not in collar.anchors and {"chin", "nose_tip", "left_eye_outer"} <= set(collar.anchors)
    geometry = collar.triage.geometry
    assert not geometry.shoulders_seen
    assert (geometry.shoulder_y - box[1]) / (box[3] - box[1]) == pytest.approx(SHOULDER_LINE, abs=0.01)
    assert geometry.shoulder_y == pytest.approx(full.triage.geometry.shoulder_y, abs=0.04 * 512)
    _assert_fill_is_not_flat(framed, collar)


def _assert_fill_is_not_flat(framed: np.ndarray, framing) -> None:
    """Outside the source the output is neither one flat colour nor sharp (a blurred reflection)."""
    ys, xs = np.mgrid[:framed.shape[0], :framed.shape[1]]
    outside = ~framing.inside_source(np.stack([xs + 0.5, ys + 0.5], axis=-1))
    assert outside.sum() > 100
    fill = framed[outside].astype(float)
    assert fill.std(axis=0).max() > 3  # not flat
    gradient = np.abs(np.diff(framed.astype(float), axis=1)).mean(axis=2)
    assert gradient[outside[:, 1:]].mean() < 0.5 * gradient[~outside[:, 1:]].mean()  # softer than the photo


@pytest.mark.parametrize("size", [(256, 384), (384, 256)])
def test_non_square_outputs_place_the_person_as_the_square_and_fill_without_bands(cases, size):
    width, height = size
    _, _, square = _framed(cases, "half_body", (256, 256))
    framed, _, framing = _framed(cases, "half_body", size)
    assert framing.zoom == square.zoom == 1.0  # the person is not shrunk for the aspect
    shift = ((width - 256) / 2, 0)  # landscape: the square centred; portrait: the square on top
    expected = np.array(_face_in_output(square)) + np.array(shift * 2)
    assert np.allclose(_face_in_output(framing), expected, atol=PLACEMENT_SLACK * 256 + 2)
    for name in ("left_shoulder", "right_shoulder"):
        x, y = np.array(framing.anchors[name]) - shift
        assert np.allclose((x, y), square.anchors[name], atol=PLACEMENT_SLACK * 256 + 2)
    assert framing.fill == "reflect_blur"
    _assert_fill_is_not_flat(framed, framing)
    # every source pixel the box covers is used: the fill starts only where the photo ends
    inside = framing.inside_source(np.array([[width / 2, height / 2]]))
    assert inside.all()


def test_no_person_fits_the_whole_image_and_fills_the_rest(cases):
    image, _ = cases["no_person"]
    framed, box, framing = _framed(cases, "no_person", (256, 256))
    assert framing.method == "pad" and not framing.person_found and framing.padded
    assert box[0] == pytest.approx(0) and box[2] == pytest.approx(451)  # every column kept
    band = round(300 * 256 / 451)
    top = (256 - band) // 2
    expected = cv2.resize(image, (256, band), interpolation=cv2.INTER_AREA)
    assert np.abs(framed[top + 2:top + band - 2].astype(float) - expected[2:-2]).mean() < 12
    _assert_fill_is_not_flat(framed, framing)


# ---- what a clip's summary says ---------------------------------------------------------------------


def _speech(seconds: float = 2.0) -> np.ndarray:
    t = np.arange(int(16_000 * seconds)) / 16_000
    return (0.2 * np.sin(2 * np.pi * 150 * t) * (0.5 - 0.5 * np.cos(2 * np.pi * 4 * t))).astype(np.float32)


def test_the_summary_says_verdict_warnings_framing_alignment_and_pose_length(cases):
    image, detection = cases["head_only"]
    framed, poses, summary = reference_and_poses(image, 256, 256, 24, 40, audio=_speech(), detection=detection)
    json.dumps(summary)
    assert summary["verdict"] == "head_only" and summary["triage"]["image_bottom_in_box"] < 0.6
    kinds = [w["kind"] for w in summary["warnings"]]
    assert kinds[0] == "head_only" and "hands_over_fill" in kinds  # the hands move over the filled collar area
    assert summary["framing_fill"] == "reflect_blur" and summary["framing_padding_pct"]["bottom"] > 30
    assert summary["framing_zoom"] == 1.0 and len(summary["crop_box"]) == 4
    for key in ("pose_align_scale", "pose_align_rotation_deg", "pose_align_rms_px"):
        assert key in summary
    assert summary["pose_length"] == {"given": 40, "frames": 40, "action": "generated"}
    assert summary["hands"]["in_frame"] == 1.0 and summary["hands"]["over_fill"] > 0.5
    # aligned by the face as the full photo is: the same scale (within 5 %) and a small error
    _, _, full = reference_and_poses(astronaut(), 256, 256, 24, 40, audio=_speech(), detection=cases["half_body"][1])
    assert summary["pose_align_scale"] == pytest.approx(full["pose_align_scale"], rel=0.05)
    assert summary["pose_align_rms_px"] < 5
    # a given sequence: extended by ping-pong, or cut
    _, extended, summary = reference_and_poses(image, 256, 256, 24, 50, poses=poses[:7], detection=detection)
    assert len(extended) == 50 and summary["pose_length"] == {"given": 7, "frames": 50, "action": "extended by ping-pong"}
    _, cut, summary = reference_and_poses(image, 256, 256, 24, 20, poses=poses, detection=detection)
    assert len(cut) == 20 and summary["pose_length"] == {"given": 40, "frames": 20, "action": "cut"}


def test_hands_out_of_frame_is_a_warning(cases):
    """Poses given without alignment whose hands hang below the frame."""
    image, detection = cases["half_body"]
    _, poses, _ = reference_and_poses(image, 256, 256, 24, 10, audio=_speech(0.5), detection=detection)
    low = []
    for pose in poses:
        hands = np.array(pose["hands"]) + (0, 0.5)  # half a frame down
        low.append(dict(pose, hands=hands))
    _, _, summary = reference_and_poses(image, 256, 256, 24, 10, poses=low, pose_align="none", detection=detection)
    assert "hands_out_of_frame" in [w["kind"] for w in summary["warnings"]] and summary["hands"]["in_frame"] < 0.75
    assert summary["verdict"] == "half_body"  # a pose warning, not a verdict


def test_the_vocabulary():
    assert VERDICTS[-1] == "half_body" and "hands_out_of_frame" in WARNING_KINDS and "half_body" not in WARNING_KINDS


# ---- the job, validate, plan and status use the one triage ---------------------------------------------


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    """PNG references (half body, collar crop, texture) and a short WAV in one folder."""
    from conftest import wav_bytes
    from PIL import Image

    folder = tmp_path_factory.mktemp("triage_inputs")
    for name, image in (("face", astronaut()), ("collar", astronaut()[:230]), ("texture", _texture())):
        Image.fromarray(np.ascontiguousarray(image)).save(folder / f"{name}.png")
    (folder / "a.wav").write_bytes(wav_bytes(0.5))
    return folder


def _no_detection(*args, **kwargs):
    raise AssertionError("detected again: the detection should have been remembered")


def test_the_job_judges_once_and_skips_fails_or_warns_by_policy(inputs, tmp_path, monkeypatch, capsys):
    from dataclasses import replace

    from rich.console import Console

    import echomimic2.triage
    from pipeline.commands import status_command
    from pipeline.job import Tracker, write_results
    from pipeline.ledger import Ledger
    from pipeline.manifest import ClipSpec
    from pipeline.render import model_identity
    from pipeline.rows import JobSettings
    from pipeline.stages import JobBoard, PreprocessStage

    output = tmp_path / "out"
    spec = ClipSpec(row=0, clip_id="collar", image=str(inputs / "collar.png"), audio=str(inputs / "a.wav"), fps=12.0,
                    width=256, height=256)

    board = JobBoard()
    stage = PreprocessStage(JobSettings(output=str(output), preset="tiny", weights=None, segment_frames=8,
                                        overlap_frames=2, model_identity=model_identity("tiny", None)), board)
    stage.setup()  # one worker (its whisper encoder loaded once) under each policy in turn

    def plan_with(policy: str):
        stage.settings = replace(stage.settings, unsuitable=policy)
        works = list(stage(spec))
        [plan] = board.take_plans()
        return plan, works

    skipped, works = plan_with("skip")
    assert works == [] and not skipped.failed and skipped.pending == []
    assert skipped.skip_reason.startswith("row 0 (clip 'collar'): image: unsuitable reference (head_only): head-and-shoulders")
    assert skipped.poses_info["verdict"] == "head_only"
    assert len(list((output / "_cache" / "detections").glob("*-auto-v*.json"))) == 1  # remembered by the image's hash
    monkeypatch.setattr(echomimic2.triage, "detect_people", _no_detection)  # from now on: remembered only
    failed, works = plan_with("fail")
    assert works == [] and failed.error.startswith("row 0 (clip 'collar'): image: unsuitable reference (head_only)")
    warned, works = plan_with("warn")
    assert works and warned.poses_info["verdict"] == "head_only" and warned.poses_info["framing_zoom"] == 1.0
    assert warned.poses_info["pose_length"]["action"] == "generated"

    # the skipped row is a result with its reason; status counts rows per warning kind
    settings = JobSettings(output=str(output), preset="tiny", weights=None, model_identity="m+w", segment_frames=8,
                           overlap_frames=2)
    tracker = Tracker(settings, [spec], [], Console(file=io.StringIO()))
    tracker.on_plan(skipped)
    [row] = tracker.results()
    assert row["status"] == "skipped" and row["error"] == skipped.skip_reason and row["verdict"] == "head_only"
    assert [w["kind"] for w in json.loads(row["warnings"])] == ["head_only"]
    (output / "_ledger").mkdir(exist_ok=True)  # what a job's start leaves
    write_results(Ledger(str(output)), [row])
    capsys.readouterr()
    assert status_command(str(output)) == 0
    report = capsys.readouterr().out
    assert "warnings (rows): head_only 1" in report and "skipped row 0 (clip 'collar'): image: unsuitable" in report


def test_validate_warns_per_row_and_field_and_fails_only_when_strict(inputs, tmp_path, monkeypatch, capsys):
    from conftest import write_manifest

    import echomimic2.triage
    from pipeline.commands import EXIT_OK, EXIT_PROBLEMS, plan_command, validate_command

    manifest = write_manifest(str(inputs), [dict(clip_id="face", image="face.png", audio="a.wav"),
                                            dict(clip_id="collar", image="collar.png", audio="a.wav"),
                                            dict(clip_id="texture", image="texture.png", audio="a.wav", width=256, height=256)])
    output = str(tmp_path / "out")
    assert validate_command(manifest, preset="tiny", output=output) == EXIT_OK
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("row 1 (clip 'collar'): image: warning: head_only: head-and-shoulders only")
    assert lines[1].startswith("row 2 (clip 'texture'): image: warning: no_person: no face and shoulders found")
    assert lines[-1] == ("3 row(s) OK, 0 with problems (0 problem(s)), 2 with reference warnings (2 warning(s); "
                         "--strict fails on them)")
    monkeypatch.setattr(echomimic2.triage, "detect_people", _no_detection)  # validate --output remembered them
    assert validate_command(manifest, preset="tiny", output=output, strict=True) == EXIT_PROBLEMS
    capsys.readouterr()
    assert plan_command(manifest, output=output) == 0
    table = capsys.readouterr().out
    assert "head_only" in table and "no_person" in table and "half_body" in table
    monkeypatch.undo()
    asked = write_manifest(str(inputs), [dict(clip_id="face", image="face.png", audio="a.wav", person=3)])
    assert validate_command(asked, preset="tiny") == EXIT_PROBLEMS
    assert capsys.readouterr().out.splitlines()[0] == "row 0 (clip 'face'): person: person 3 asked for, but 1 face(s) found (0 is the leftmost)"


def test_the_manifest_person_column():
    import pandas as pd

    from pipeline.manifest import parse_manifest

    frame = pd.DataFrame([dict(clip_id="a", image="a.png", audio="a.wav", person=1),
                          dict(clip_id="b", image="b.png", audio="b.wav", person=-1),
                          dict(clip_id="c", image="c.png", audio="c.wav", person=None)])
    specs, problems = parse_manifest(frame, base_uri="/data")
    assert [(spec.clip_id, spec.person) for spec in specs] == [("a", 1), ("c", None)]
    assert [str(p) for p in problems] == ["row 1 (clip 'b'): person: must be in 0..63, got -1"]


def test_the_job_and_the_api_frame_a_reference_without_a_person_alike(cases):
    """One rule: the job's step (pipeline.steps, which once centre-cropped) fits the whole image, as the engine does."""
    from pipeline.params import RenderParams
    from pipeline.steps import reference_and_poses as job_step

    image, detection = cases["no_person"]
    params = RenderParams.resolve("tiny", fps=12.0, segment_frames=8, overlap_frames=2)
    framed, _, summary = job_step(image, params, 10, poses=None, waveform=None, detection=detection)
    assert summary["framing"] == "pad" and summary["crop_box"][0] == 0 and summary["crop_box"][2] == 451
    engine, _, _ = reference_and_poses(image, 256, 256, 12.0, 10, detection=detection)
    np.testing.assert_array_equal(framed, engine)
