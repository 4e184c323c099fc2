"""`cli.py run --weights` on a folder in the official checkpoint layout (full-size random networks),
on this CPU machine with one logical GPU: the path a user with the real weights runs, end to end.
Small frames (64²) and one denoising step keep the full-size networks affordable on a CPU (slow)."""
from __future__ import annotations

import io
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import image_bytes, wav_bytes

from echomimic2.pose import default_pose_sequence

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parent.parent
FPS, SIZE = 12.0, 64
CLIPS = {"long": 2.5, "posed": 1.0, "plain": 1.0}  # long: 30 frames = 3 segments of 12 sharing 3


@pytest.fixture(scope="module")
def acc_weights(tmp_path_factory) -> Path:
    from echomimic2.official_layout import write_random_official_weights

    return write_random_official_weights(tmp_path_factory.mktemp("weights") / "EchoMimicV2", variants=("acc",))


def write_inputs(folder: Path) -> Path:
    rows = []
    for index, (clip_id, seconds) in enumerate(CLIPS.items()):
        (folder / f"{clip_id}.png").write_bytes(image_bytes(index))
        (folder / f"{clip_id}.wav").write_bytes(wav_bytes(seconds, 180 + 40 * index))
        rows.append(dict(clip_id=clip_id, image=f"{clip_id}.png", audio=f"{clip_id}.wav", pose=None, steps=1,
                         fps=FPS, width=SIZE, height=SIZE))
    pose_dir = folder / "posed_pose"
    pose_dir.mkdir()
    for frame, pose in enumerate(default_pose_sequence(round(CLIPS["posed"] * FPS), FPS)):
        data = io.BytesIO()
        np.save(data, np.array(pose, dtype=object), allow_pickle=True)
        (pose_dir / f"{frame}.npy").write_bytes(data.getvalue())
    rows[1]["pose"] = "posed_pose"
    pd.DataFrame(rows).to_parquet(folder / "manifest.parquet", index=False)
    return folder / "manifest.parquet"


def test_run_with_official_layout_weights(acc_weights, tmp_path):
    from pipeline.assemble import probe_video

    manifest, output = write_inputs(tmp_path), tmp_path / "out"
    done = subprocess.run([sys.executable, str(REPO / "cli.py"), "run", str(manifest), "--output", str(output),
                           "--weights", str(acc_weights), "--gpus", "1", "--segment-frames", "12", "--overlap-frames", "3"],
                          cwd=REPO, capture_output=True, text=True, timeout=1800)
    assert done.returncode == 0, (done.stdout + done.stderr)[-4000:]
    assert "preset acc, model official-acc-" in done.stdout
    results = pd.read_parquet(output / "results.parquet").set_index("clip_id")
    assert (results["status"] == "done").all(), results["error"].to_dict()
    for clip_id, seconds in CLIPS.items():
        probe = probe_video(str(output / f"{clip_id}.mp4"))
        assert (probe["vcodec"], probe["acodec"], probe["width"]) == ("h264", "aac", SIZE)
        assert probe["frames"] == round(seconds * FPS)
