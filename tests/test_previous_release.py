"""Finished outputs stay finished across the release that made render parameters a typed `RenderParams`: the
fingerprints the previous release (main at 31e1789) computed (tests/data/previous_release/fingerprints.json, written by its own
code for a few rows, presets and segment plans) come out equal, and a rerun against the output root that release
wrote for the demo manifest (tests/data/previous_release/output: its ledger records, rerun stamps and MP4s)
skips both clips."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pandas as pd
import pytest

from pipeline.fingerprint import clip_fingerprint, content_hash
from pipeline.manifest import parse_manifest, read_manifest
from pipeline.preprocess import read_clip_inputs, render_params
from pipeline.rows import JobSettings

REPO = Path(__file__).resolve().parent.parent
PREVIOUS = REPO / "tests" / "data" / "previous_release"
ASSETS = REPO / "manifests" / "assets"


def fixture() -> dict:
    return json.loads((PREVIOUS / "fingerprints.json").read_text())


@pytest.mark.parametrize("setting", fixture()["settings"], ids=lambda setting: setting["key"])
def test_fingerprints_are_the_previous_releases(setting):
    document = fixture()
    specs, problems = parse_manifest(pd.DataFrame(document["rows"]), base_uri=str(ASSETS))
    assert not problems and len(specs) == len(document["rows"])
    settings = JobSettings(output="unused", preset=setting["preset"], weights=None,
                           model_identity=setting["model_identity"], segment_frames=setting["segment_frames"],
                           overlap_frames=setting["overlap_frames"])
    for spec in specs:
        expected = document["fingerprints"][f"{setting['key']}/{spec.clip_id}"]
        params = render_params(spec, settings).fingerprint_fields()
        # the same keys, values and JSON types (1.0 is not 1 in the hashed document)
        assert json.dumps(params, sort_keys=True) == json.dumps(expected["params"], sort_keys=True), spec.clip_id
        inputs = read_clip_inputs(spec, settings)
        fingerprint = clip_fingerprint(image_sha=content_hash(inputs.image), audio_sha=content_hash(inputs.audio),
                                       pose_shas=inputs.pose_hashes, params=params, model_identity=settings.model_identity)
        assert fingerprint == expected["fingerprint"], spec.clip_id


def test_a_rerun_skips_the_clips_the_previous_release_finished(tmp_path):
    from pipeline.ledger import Ledger
    from pipeline.render import model_identity
    from pipeline.rerun import RerunStamps, read_stamps
    from pipeline.segments import DEFAULT_OVERLAP_FRAMES, DEFAULT_SEGMENT_FRAMES
    from pipeline.stages import JobBoard, PreprocessStage

    output = tmp_path / "out"
    shutil.copytree(PREVIOUS / "output", output)
    settings = JobSettings(output=str(output), preset="tiny", weights=None, model_identity=model_identity("tiny", None),
                           segment_frames=DEFAULT_SEGMENT_FRAMES, overlap_frames=DEFAULT_OVERLAP_FRAMES)
    specs, problems = parse_manifest(read_manifest(str(REPO / "manifests" / "demo.parquet")))
    assert not problems and [spec.clip_id for spec in specs] == ["demo-hello", "demo-welcome"]
    stage = PreprocessStage(settings, JobBoard())
    stage.ledger = Ledger(settings.output)  # what setup() makes; a finished clip needs no model
    for spec in specs:
        plan, *_ = stage.plan(spec)
        assert plan.skipped and plan.finished["fingerprint"] == plan.fingerprint, spec.clip_id
    # The rerun stamps hold the previous release's parameters: equal to today's, no clip is rendered again.
    stamps = RerunStamps(settings, specs)
    assert stamps.finished(specs) == [] or all(plan.skipped for plan in stamps.finished(specs))
    assert stamps.rendered_again == {}
    recorded = read_stamps(Ledger(settings.output))
    assert {clip_id: entry["params"] for clip_id, entry in recorded.items()} == stamps.params
