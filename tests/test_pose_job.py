"""Real photos and driving videos through the batch job (tiny preset, local Ray, logical GPU): a driving
video in the `pose` column, a reference of another aspect framed (not centre-cropped) to the output
size, gestures from the audio when no pose is given, and what was done in results.parquet."""
from __future__ import annotations

import json

import numpy as np
import pandas as pd
from conftest import FPS, wav_bytes
from PIL import Image

from pipeline.commands import EXIT_OK, run_command
from pipeline.driving_video import write_video
from pipeline.results import read_results
from tests.synthetic_person import SIZE, driving_frames


def test_driving_video_wide_photo_and_gestures_through_the_job(tmp_path):
    from skimage.data import astronaut

    write_video(iter(driving_frames(16)), tmp_path / "drive.mp4", 12, SIZE, SIZE)
    Image.fromarray(astronaut()).resize((451, 300)).save(tmp_path / "wide.png")  # 3:2, person on the left
    Image.fromarray(astronaut()).save(tmp_path / "portrait.png")
    for clip_id in ("video", "wide", "plain"):
        (tmp_path / f"{clip_id}.wav").write_bytes(wav_bytes(1.2, 200))
    rows = [dict(clip_id="video", image="portrait.png", audio="video.wav", pose="drive.mp4", width=128, height=128),
            dict(clip_id="wide", image="wide.png", audio="wide.wav", pose=None, width=128, height=192),
            dict(clip_id="plain", image="portrait.png", audio="plain.wav", pose=None, width=128, height=128,
                 gesture="lively")]
    frame = pd.DataFrame(rows)
    frame["fps"] = FPS
    frame.to_parquet(tmp_path / "manifest.parquet", index=False)
    output = tmp_path / "out"
    assert run_command(str(tmp_path / "manifest.parquet"), str(output), gpus=1) == EXIT_OK
    results = read_results(str(output)).set_index("clip_id")
    assert (results["status"] == "done").all(), results["error"].to_dict()
    assert results.loc["video", "pose_source"] == "driving video"
    assert json.loads(results.loc["video", "poses_info"])["driving_video"]["frames_with_hands"] > 0
    assert results.loc["wide", "framing"] == "person"  # framed around the astronaut, not a centre crop
    assert results.loc["plain", "pose_source"] == "gestures:lively"
    assert set(results["pose_align"]) <= {"similarity", "none"}
    from pipeline.assemble import probe_video

    wide = probe_video(str(output / "wide.mp4"))
    assert (wide["width"], wide["height"]) == (128, 192)
    assert np.isfinite(results["qc_score"]).all()


def test_validate_reports_a_bad_driving_video_per_row(tmp_path):
    from pipeline.manifest import validate_manifest

    Image.new("RGB", (64, 64), "white").save(tmp_path / "face.png")
    (tmp_path / "a.wav").write_bytes(wav_bytes(1.0))
    (tmp_path / "notes.mp4").write_text("not a video")
    pd.DataFrame([dict(clip_id="bad", image="face.png", audio="a.wav", pose="notes.mp4")]).to_parquet(
        tmp_path / "manifest.parquet", index=False)
    specs, problems = validate_manifest(str(tmp_path / "manifest.parquet"))
    assert not specs and [(p.row, p.field) for p in problems] == [(0, "pose")], problems
    assert "notes.mp4" in str(problems[0])
