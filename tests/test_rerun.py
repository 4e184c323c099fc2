"""Reruns decided on the driver (pipeline/rerun.py): a finished manifest whose inputs, parameters and MP4s
show the recorded stamps is skipped without Ray and without reading an input; anything that differs goes
the whole way, where content hashes decide. Real jobs with the tiny model on local files."""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pandas as pd
import pytest
from conftest import image_bytes, wav_bytes, write_manifest

from pipeline.commands import EXIT_OK, run_command
from pipeline.ledger import Ledger
from pipeline.results import read_results

JOB = dict(preset=None, gpus=1)
SKIPPED_WITHOUT_RAY = "finished earlier with unchanged inputs: skipped"
RAY_STARTED = "render actor(s)"  # the `job:` line, printed only once Ray runs


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """A manifest of two short clips, rendered once (Ray started and stopped by run_command itself)."""
    root = tmp_path_factory.mktemp("rerun")
    for index, clip_id in enumerate("ab"):
        (root / f"{clip_id}.png").write_bytes(image_bytes(index))
        (root / f"{clip_id}.wav").write_bytes(wav_bytes(0.5, 200 + 50 * index))
    manifest = write_manifest(str(root), [dict(clip_id=c, image=f"{c}.png", audio=f"{c}.wav", steps=1) for c in "ab"])
    output = str(root / "out")
    assert run_command(manifest, output, **JOB) == EXIT_OK
    return root, manifest, output


def rerun(capsys, manifest: str, output: str, **options) -> str:
    capsys.readouterr()
    assert run_command(manifest, output, **JOB, **options) == EXIT_OK
    return capsys.readouterr().out


def test_finished_rerun_is_skipped_without_ray_or_reading_inputs(finished, capsys):
    root, manifest, output = finished
    first = read_results(output).set_index("clip_id")
    stamps = json.loads(Path(output, "_ledger", "input_stamps.json").read_text())["clips"]
    assert set(stamps) == {"a", "b"} and stamps["a"]["fingerprint"] == first.loc["a", "fingerprint"]

    os.chmod(root / "a.wav", 0)  # unreadable: the rerun must decide from its stamp, not its content
    try:
        printed = rerun(capsys, manifest, output)
    finally:
        os.chmod(root / "a.wav", 0o644)
    assert f"2 of 2 clip(s) {SKIPPED_WITHOUT_RAY}" in printed and RAY_STARTED not in printed
    again = read_results(output).set_index("clip_id")
    assert list(again["status"]) == ["skipped", "skipped"]
    # A skip keeps what the rendering run measured and checked.
    for column in ("fingerprint", "frames", "render_seconds", "qc_flagged", "qc_score"):
        assert list(again[column]) == list(first[column]), column


def test_a_touched_input_goes_the_whole_way_and_is_still_skipped_by_its_content(finished, capsys):
    root, manifest, output = finished
    os.utime(root / "b.png")  # same bytes, new mtime
    printed = rerun(capsys, manifest, output)
    assert f"1 of 2 clip(s) {SKIPPED_WITHOUT_RAY}" in printed and RAY_STARTED in printed
    assert list(read_results(output)["status"]) == ["skipped", "skipped"]  # the content hash proved b unchanged
    assert f"2 of 2 clip(s) {SKIPPED_WITHOUT_RAY}" in rerun(capsys, manifest, output)  # b's new stamp was recorded


def test_changed_parameters_deleted_outputs_and_force_are_not_skipped(finished, capsys):
    root, manifest, output = finished
    frame = pd.read_parquet(manifest)
    frame.loc[frame["clip_id"] == "a", "seed"] = 7
    edited = str(root / "edited.parquet")
    frame.to_parquet(edited, index=False)
    printed = rerun(capsys, edited, output)
    assert f"1 of 2 clip(s) {SKIPPED_WITHOUT_RAY}" in printed
    said = " ".join(printed.split())  # rich wraps long lines
    assert "1 finished clip(s) will be rendered again: parameters changed (seed 0 → 7): a" in said
    results = read_results(output).set_index("clip_id")
    assert (results.loc["a", "status"], results.loc["b", "status"]) == ("done", "skipped")

    Path(output, "b.mp4").unlink()
    printed = rerun(capsys, edited, output)
    assert f"1 of 2 clip(s) {SKIPPED_WITHOUT_RAY}" in printed
    assert read_results(output).set_index("clip_id").loc["b", "status"] == "done"  # re-assembled

    printed = rerun(capsys, edited, output, force=True)
    assert SKIPPED_WITHOUT_RAY not in printed and list(read_results(output)["status"]) == ["done", "done"]


def test_the_fp8_mode_renders_finished_clips_again_and_says_why(finished, capsys, tmp_path):
    """`--fp8` changes the frames, so the model identity and every fingerprint: a finished root is rendered again
    once, with the reason, and the fp8 renders then stand on the next fp8 rerun (a copy keeps `finished` as it is)."""
    root, _, _ = finished
    shutil.copytree(root, tmp_path / "copy")
    manifest, output = str(tmp_path / "copy" / "manifest.parquet"), str(tmp_path / "copy" / "out")
    before = read_results(output).set_index("clip_id")["fingerprint"]
    said = " ".join(rerun(capsys, manifest, output, fp8=True).split())
    assert "2 finished clip(s) will be rendered again: the model changed" in said and "+fp8-linears+" in said
    after = read_results(output).set_index("clip_id")
    assert list(after["status"]) == ["done", "done"]
    assert all(after.loc[clip, "fingerprint"] != before[clip] for clip in "ab")
    assert f"2 of 2 clip(s) {SKIPPED_WITHOUT_RAY}" in rerun(capsys, manifest, output, fp8=True)


def test_a_corrupt_stamps_file_only_costs_the_shortcut(finished, capsys):
    _, manifest, output = finished
    stamps = Path(output, "_ledger", "input_stamps.json")
    stamps.write_text("{not json")
    printed = rerun(capsys, manifest, output)
    assert SKIPPED_WITHOUT_RAY not in printed and RAY_STARTED in printed
    assert json.loads(stamps.read_text())["version"] == 1  # rewritten by the run
    assert Ledger(output).clip_record("a") is not None


def test_rerun_on_s3_is_skipped_from_etags(s3_bucket, capsys):
    """Inputs and outputs on a real S3 API: the stamps are the store's ETags."""
    from pipeline import storage

    root = s3_bucket + "/in"
    storage.write_atomic(f"{root}/c.png", image_bytes(3))
    storage.write_atomic(f"{root}/c.wav", wav_bytes(0.5, 260))
    manifest = write_manifest(root, [dict(clip_id="c", image="c.png", audio="c.wav", steps=1)])
    output = s3_bucket + "/out"
    assert run_command(manifest, output, **JOB) == EXIT_OK
    stamps = json.loads(storage.read_bytes(f"{output}/_ledger/input_stamps.json", max_bytes=1 << 20))["clips"]
    assert stamps["c"]["output"][1]  # the MP4's ETag
    printed = rerun(capsys, manifest, output)
    assert f"1 of 1 clip(s) {SKIPPED_WITHOUT_RAY}" in printed and RAY_STARTED not in printed
    assert list(read_results(output)["status"]) == ["skipped"]
