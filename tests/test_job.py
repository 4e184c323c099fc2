"""The batch job end to end with the real tiny model: local Ray with 2 logical GPUs (two render
actors on this CPU machine), inputs and outputs on a real S3 API server on loopback, a mixed
manifest, resume after a SIGKILL of the driver, and reruns that render nothing / one clip."""
from __future__ import annotations

import io
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import FPS, check_video, image_bytes, wav_bytes, write_manifest

from echomimic2.pose import default_pose_sequence
from pipeline import storage
from pipeline.commands import (
    EXIT_JOB_FAILED,
    EXIT_OK,
    EXIT_PROBLEMS,
    EXIT_ROWS_FAILED,
    plan_command,
    run_command,
    status_command,
    validate_command,
)
from pipeline.ledger import Ledger
from pipeline.results import read_results

REPO = Path(__file__).resolve().parent.parent
# Small segments so that every clip has several (and they spread over both render actors).
JOB = dict(preset=None, gpus=2, segment_frames=16, overlap_frames=4)


@pytest.fixture(scope="module")
def ray_cluster():
    import ray

    ray.init(num_cpus=2, num_gpus=2, include_dashboard=False, object_store_memory=500_000_000,
             _temp_dir="/tmp/ray", logging_level="WARNING")
    yield
    ray.shutdown()


def write_inputs(root: str, clips: dict[str, float], pose_frames: dict[str, int] | None = None) -> str:
    """Inputs + manifest under root (any fsspec URL); returns the manifest URI.
    pose_frames: clips that get a pose folder of that many official per-frame .npy files."""
    rows = []
    for index, (clip_id, seconds) in enumerate(clips.items()):
        storage.write_atomic(storage.join(root, f"{clip_id}.png"), image_bytes(index))
        storage.write_atomic(storage.join(root, f"{clip_id}.wav"), wav_bytes(seconds, 180 + 40 * index))
        rows.append(dict(clip_id=clip_id, image=f"{clip_id}.png", audio=f"{clip_id}.wav", pose=None))
        if clip_id in (pose_frames or {}):
            for frame, pose in enumerate(default_pose_sequence(pose_frames[clip_id], FPS)):
                data = io.BytesIO()
                np.save(data, np.array(pose, dtype=object), allow_pickle=True)
                storage.write_atomic(storage.join(root, f"{clip_id}_pose", f"{frame}.npy"), data.getvalue())
            rows[-1]["pose"] = f"{clip_id}_pose"
    return write_manifest(root, rows)


def segment_keys(records: list[dict]) -> list[tuple]:
    return sorted((r["clip_id"], r["fingerprint"], r["start"], r["stop"]) for r in records)


def test_job_on_s3_renders_every_clip(ray_cluster, s3_bucket, tmp_path):
    clips = {"short": 1.5, "long": 4.2}
    manifest = write_inputs(s3_bucket + "/in", clips, pose_frames={"long": 7})  # poses shorter than the audio
    output = s3_bucket + "/out"
    assert run_command(manifest, output, **JOB) == EXIT_OK
    results = read_results(output).set_index("clip_id")
    assert list(results["status"]) == ["done", "done"]
    for clip_id, seconds in clips.items():
        assert results.loc[clip_id, "output"] == f"{output}/{clip_id}.mp4"
        assert results.loc[clip_id, "frames"] == round(seconds * FPS)
        check_video(results.loc[clip_id, "output"], seconds)
    ledger = Ledger(output)
    records = ledger.segment_records()
    assert len(records) == len(set(segment_keys(records)))  # each segment rendered once
    assert len({r["pid"] for r in records}) == 2  # the segments spread over both render actors
    assert not storage.exists(f"{output}/_segments/long/{results.loc['long', 'fingerprint']}/0-16.npy")  # freed


def test_mixed_manifest_fails_each_bad_row_alone(ray_cluster, tmp_path, capsys):
    root = str(tmp_path)
    storage.write_atomic(f"{root}/good.png", image_bytes(0))
    storage.write_atomic(f"{root}/good.wav", wav_bytes(1.5))
    storage.write_atomic(f"{root}/corrupt.wav", b"RIFF\x24\x00\x00\x00WAVEfmt " + os.urandom(200))
    storage.write_atomic(f"{root}/empty.wav", b"")
    rows = [
        dict(clip_id="good", image="good.png", audio="good.wav"),
        dict(clip_id="corrupt_wav", image="good.png", audio="corrupt.wav"),
        dict(clip_id="missing_image", image="nowhere.png", audio="good.wav"),
        dict(clip_id="empty_audio", image="good.png", audio="empty.wav"),
        dict(clip_id="GOOD", image="good.png", audio="good.wav"),
        dict(clip_id="../x", image="good.png", audio="good.wav"),
    ]
    manifest = write_manifest(root, rows)
    output = str(tmp_path / "out")
    assert run_command(manifest, output, **JOB) == EXIT_ROWS_FAILED
    results = read_results(output)
    assert list(results["row"]) == list(range(len(rows)))
    status = dict(zip(results["row"], results["status"]))
    errors = dict(zip(results["row"], results["error"]))
    assert status[0] == "done" and pd.isna(errors[0])
    check_video(results.loc[0, "output"], 1.5)
    assert all(status[row] == "failed" for row in range(1, 6))
    assert errors[1].startswith("row 1 (clip 'corrupt_wav'): audio: ")
    assert errors[2].startswith("row 2 (clip 'missing_image'): image: not found")
    assert errors[3] == "row 3 (clip 'empty_audio'): audio: file is empty"
    assert errors[4].startswith("row 4 (clip 'GOOD'): clip_id: duplicate of row 0")
    assert errors[5].startswith("row 5 (clip '../x'): clip_id: ")
    assert sorted(p.name for p in Path(output).glob("*.mp4")) == ["good.mp4"]

    capsys.readouterr()
    assert status_command(output) == 0
    report = capsys.readouterr().out
    assert "6 row(s): 1 done, 0 skipped, 5 failed" in report
    assert "row 3 (clip 'empty_audio'): audio: file is empty" in report


@pytest.mark.slow  # ~110 s; the default suite checks reruns in tests/test_rerun.py
def test_rerun_renders_nothing_and_an_edited_row_only_itself(ray_cluster, tmp_path):
    root = str(tmp_path)
    manifest = write_inputs(root, {"a": 1.5, "b": 2.0})
    output = str(tmp_path / "out")
    assert run_command(manifest, output, **JOB) == EXIT_OK
    ledger = Ledger(output)
    first = segment_keys(ledger.segment_records())
    first_mp4 = {clip: Path(output, f"{clip}.mp4").stat().st_mtime_ns for clip in "ab"}

    assert run_command(manifest, output, **JOB) == EXIT_OK
    assert list(read_results(output)["status"]) == ["skipped", "skipped"]
    assert segment_keys(ledger.segment_records()) == first  # nothing rendered
    assert {clip: Path(output, f"{clip}.mp4").stat().st_mtime_ns for clip in "ab"} == first_mp4

    storage.write_atomic(f"{root}/b.wav", wav_bytes(2.5, pitch=300))  # edit row b's audio
    assert run_command(manifest, output, **JOB) == EXIT_OK
    results = read_results(output).set_index("clip_id")
    assert list(results["status"]) == ["skipped", "done"]
    new = sorted(set(segment_keys(ledger.segment_records())) - set(first))
    assert new and {key[0] for key in new} == {"b"}  # only b rendered, under its new fingerprint
    assert Path(output, "a.mp4").stat().st_mtime_ns == first_mp4["a"]
    check_video(results.loc["b", "output"], 2.5)

    assert run_command(manifest, output, force=True, **JOB) == EXIT_OK
    assert list(read_results(output)["status"]) == ["done", "done"]


@pytest.mark.slow  # ~110 s; the default suite kills a render worker (test_render_faults) and SIGTERMs the driver (test_interrupt)
def test_driver_killed_midway_then_rerun_finishes_without_rendering_twice(ray_cluster, tmp_path):
    clips = {f"clip{i}": 2.5 for i in range(5)}
    root = str(tmp_path)
    manifest = write_inputs(root, clips)
    output = tmp_path / "out"
    command = [sys.executable, str(REPO / "cli.py"), "run", manifest, "--output", str(output), "--gpus", "2",
               "--cpus", "1", "--segment-frames", "16", "--overlap-frames", "4"]
    log = open(tmp_path / "driver.log", "wb")
    driver = subprocess.Popen(command, cwd=REPO, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    complete_seen: set[str] = set()
    try:
        deadline = time.monotonic() + 240
        while not complete_seen and time.monotonic() < deadline and driver.poll() is None:
            for video in output.glob("*.mp4"):  # a final name must only ever hold a complete video
                check_video(str(video), clips[video.stem])
                complete_seen.add(video.stem)
            time.sleep(0.05)
        assert complete_seen, f"no MP4 appeared; driver log:\n{(tmp_path / 'driver.log').read_text()}"
        os.kill(driver.pid, signal.SIGKILL)
        driver.wait()
    finally:
        _kill_session(driver.pid)
    ledger = Ledger(str(output))
    finished_at_kill = {r["clip_id"] for r in ledger.clip_records()}
    assert finished_at_kill < set(clips), "the kill came too late to test resuming"
    records_at_kill = segment_keys(ledger.segment_records())
    files_at_kill = {p for p in (output / "_segments").glob("*/*/*.npy")}
    for video in output.glob("*.mp4"):
        check_video(str(video), clips[video.stem])

    assert run_command(manifest, str(output), **JOB) == EXIT_OK
    results = read_results(str(output)).set_index("clip_id")
    assert all(results.loc[clip, "status"] == ("skipped" if clip in finished_at_kill else "done") for clip in clips)
    for clip_id, seconds in clips.items():
        check_video(str(output / f"{clip_id}.mp4"), seconds)
    records = segment_keys(ledger.segment_records())
    assert len(records) == len(set(records)), "a segment was rendered twice"
    # Exactly the segments without a committed file at the kill were rendered by the rerun.
    from pipeline.segments import plan_segments

    kept = {(p.parts[-3], p.parts[-2], *map(int, p.stem.split("-"))) for p in files_at_kill}
    expected_new = {(clip, results.loc[clip, "fingerprint"], start, stop)
                    for clip in set(clips) - finished_at_kill
                    for start, stop in plan_segments(results.loc[clip, "frames"], 16, 4)} - kept
    assert set(records) - set(records_at_kill) == expected_new


def _kill_session(session_id: int) -> None:
    """The killed driver's local Ray (raylet, GCS, workers) runs in the session the test started."""
    for _ in range(100):
        try:
            os.killpg(session_id, signal.SIGKILL)
        except ProcessLookupError:
            return
        time.sleep(0.1)


def test_plan_counts_frames_segments_and_gpu_time_without_rendering(tmp_path, capsys):
    manifest = write_inputs(str(tmp_path), {"a": 2.0, "b": 10.0})
    assert plan_command(manifest, segment_frames=16, overlap_frames=4) == 0
    report = capsys.readouterr().out
    assert "2 row(s), 144 frames, 12 segments" in report  # 24 + 120 frames at 12 fps: 2 + 10 segments
    assert "preset quality:" in report and "preset acc:" in report and "H200-hours" in report
    assert not list(tmp_path.glob("**/*.mp4"))


def test_a_job_that_cannot_run_exits_2(ray_cluster, tmp_path, capsys):
    manifest = write_inputs(str(tmp_path), {"a": 1.0})
    output = str(tmp_path / "out")
    assert run_command(str(tmp_path / "nowhere.parquet"), output, **JOB) == EXIT_JOB_FAILED
    assert "manifest not found" in capsys.readouterr().out
    no_audio = tmp_path / "no_audio.parquet"
    pd.DataFrame([dict(clip_id="a", image="a.png")]).to_parquet(no_audio)
    assert run_command(str(no_audio), output, **JOB) == EXIT_JOB_FAILED
    assert "column 'audio': required column is missing" in capsys.readouterr().out
    assert run_command(manifest, "/proc/not-writable", **JOB) == EXIT_JOB_FAILED
    assert "is not writable" in capsys.readouterr().out
    assert run_command(manifest, output, **{**JOB, "preset": "acc"}) == EXIT_JOB_FAILED
    assert "needs --weights" in capsys.readouterr().out
    assert run_command(manifest, output, weights=tmp_path / "no-weights", **{**JOB, "preset": "acc"}) == EXIT_JOB_FAILED
    assert "error: --weights" in (said := capsys.readouterr().out) and "no-weights: folder not found" in said
    assert not Path(output, "a.mp4").exists()


def test_validate_prints_one_line_per_problem(tmp_path, capsys):
    storage.write_atomic(f"{tmp_path}/a.png", image_bytes(0))
    storage.write_atomic(f"{tmp_path}/a.wav", wav_bytes(1.0))
    storage.write_atomic(f"{tmp_path}/empty.wav", b"")
    good = write_manifest(str(tmp_path), [dict(clip_id="a", image="a.png", audio="a.wav")])
    assert validate_command(good) == EXIT_OK
    bad = write_manifest(str(tmp_path), [dict(clip_id="a", image="a.png", audio="a.wav"),
                                         dict(clip_id="b", image="missing.png", audio="empty.wav")])
    capsys.readouterr()
    assert validate_command(bad) == EXIT_PROBLEMS
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("row 1 (clip 'b'): image: not found")
    assert lines[1] == "row 1 (clip 'b'): audio: file is empty"


def test_segments_that_overtake_their_clip_plan_still_complete_it(tmp_path):
    """Render actors work in parallel, so a segment's result may reach the driver before its clip's plan."""
    from rich.console import Console

    from pipeline.manifest import ClipSpec
    from pipeline.rows import ClipPlan, JobSettings, SegmentResult
    from pipeline.tracker import Tracker

    class RecordingTracker(Tracker):
        started: list = []

        def start_assembly(self, clip):
            self.started.append(clip.spec.clip_id)

    settings = JobSettings(output=str(tmp_path), preset="tiny", weights=None, model_identity="m+w",
                           segment_frames=16, overlap_frames=4)
    tracker = RecordingTracker(settings, [ClipSpec(row=0, clip_id="a", image="a.png", audio="a.wav")], [],
                               Console(file=io.StringIO()))

    tracker.on_segment(SegmentResult(0, "a", "fp", 12, 28, seconds=1.0))
    tracker.on_plan(ClipPlan(0, "a", "fp", frames=28, fps=12.0, seconds=2.3, segments=[(0, 16), (12, 28)],
                             pending=[(0, 16), (12, 28)], preprocess_seconds=0.1))
    assert tracker.started == []
    tracker.on_segment(SegmentResult(0, "a", "fp", 0, 16, seconds=1.0))
    assert tracker.started == ["a"]


def test_segment_progress_has_no_total_until_every_clip_is_planned(tmp_path, monkeypatch):
    """Issue 12 fault 8: the segments bar must not claim '7/7 ETA 0:00:00' while clips are still unplanned;
    a retried plan must not count its segments twice; a log (no terminal) gets plain progress lines."""
    from rich.console import Console

    from pipeline import tracker as tracker_module
    from pipeline.manifest import ClipSpec
    from pipeline.rows import ClipPlan, JobSettings
    from pipeline.tracker import Tracker

    monkeypatch.setattr(tracker_module, "LOG_PROGRESS_SECONDS", 0.0)
    settings = JobSettings(output=str(tmp_path), preset="tiny", weights=None, model_identity="m+w",
                           segment_frames=16, overlap_frames=4)
    log = io.StringIO()
    tracker = Tracker(settings, [ClipSpec(row=i, clip_id=c, image="x.png", audio="x.wav") for i, c in enumerate("ab")], [],
                      Console(file=log))
    tracker.start_assembly = lambda clip: None
    plan = ClipPlan(0, "a", "fp", frames=28, fps=12.0, seconds=2.3, segments=[(0, 16), (12, 28)], pending=[(0, 16), (12, 28)])
    tracker.on_plan(plan)
    tracker.on_plan(plan)  # a retried preprocess task posts it again
    segments = tracker.progress.tasks[tracker.segment_task]
    assert segments.total is None and "2 planned so far" in segments.description
    tracker.on_plan(ClipPlan(1, "b", "fq", frames=10, fps=12.0, seconds=0.9, segments=[(0, 10)], pending=[(0, 10)]))
    assert tracker.progress.tasks[tracker.segment_task].total == 3
    assert "progress: clips: 0 done, 0 failed of 2; segments 0 rendered of 3" in log.getvalue()


def test_a_restarted_board_loses_no_plan(tmp_path):
    """Issue 33 #6: a plan posted to the board just before its actor died is taken from the copy preprocessing
    stored beside the clip's segments, once the driver sees a new board (Ray restarts the actor empty)."""
    from rich.console import Console

    from pipeline.manifest import ClipSpec
    from pipeline.params import RenderParams
    from pipeline.rows import ClipPlan, JobSettings
    from pipeline.segment_store import store_clip_plan
    from pipeline.stages import JobBoard
    from pipeline.tracker import Tracker

    settings = JobSettings(output=str(tmp_path), preset="tiny", weights=None, model_identity="m+w",
                           segment_frames=16, overlap_frames=4)
    tracker = Tracker(settings, [ClipSpec(row=i, clip_id=c, image="x.png", audio="x.wav") for i, c in enumerate("ab")], [],
                      Console(file=io.StringIO()))
    board = JobBoard()
    tracker.take_plans(board)
    plan = ClipPlan(0, "a", "fp", frames=28, fps=12.0, seconds=2.3, segments=[(0, 16), (12, 28)],
                    pending=[(0, 16), (12, 28)],
                    params=RenderParams.resolve("tiny", seed=3, fps=12.0, segment_frames=16, overlap_frames=4),
                    poses_info={"framing": "half"})
    store_clip_plan(Ledger(str(tmp_path)), plan)
    board.post_plan(plan)  # then the actor dies before the driver takes it
    tracker.take_plans(JobBoard())
    assert tracker.clips["a"].plan == plan and tracker.clips["a"].waiting == {(0, 16), (12, 28)}
    assert tracker.clips["b"].plan is None  # still being preprocessed: it posts to the new board


def test_each_result_reaches_the_driver_as_soon_as_it_is_rendered(ray_cluster):  # ~15 s
    """Issue 38: a finished segment must not wait for the next one (Ray Data's `iter_rows` prefetch held each
    row back until the following one arrived, so with one render worker the first MP4 came at the end)."""
    import ray

    from pipeline.manifest import ClipSpec
    from pipeline.ray_data import END, RowPuller, configure_ray_data, item_of, on_ray_data, row_of
    from pipeline.stages import Resources, Stage

    class SlowStage(Stage):  # one worker, one row at a time, as a render worker on one GPU
        name = "slow"
        resources = Resources(num_cpus=0)

        def __call__(self, spec: ClipSpec) -> ClipSpec:
            time.sleep(6.0)
            return ClipSpec(spec.row, spec.clip_id, spec.image, f"{time.time()}")  # when it was done

    configure_ray_data()
    specs = [ClipSpec(row, f"c{row}", "a.png", "a.wav") for row in range(2)]
    dataset = ray.data.from_items([row_of(spec) for spec in specs], override_num_blocks=2)
    puller = RowPuller(on_ray_data(dataset, SlowStage(), ClipSpec, workers=(1, 1)))
    arrivals = []
    while (row := puller.next_row(timeout=60)) is not END:
        arrivals.append((float(item_of(ClipSpec, row).audio), time.time()))
    (first_done, first_received), (second_done, _) = arrivals
    assert first_received - first_done < 3.0 and first_received < second_done, arrivals


def test_clips_are_admitted_to_rendering_within_the_scratch_budget(tmp_path):
    """Issue 33 #12, the driver's side without Ray: a clip waits on the board until the clips in flight
    leave room for its segments; a finished clip (assembled or failed) releases its share; a clip larger
    than the whole budget goes alone; a retried preprocess task of an admitted clip is let through again."""
    from rich.console import Console

    from pipeline.admission import clip_scratch_bytes
    from pipeline.manifest import ClipSpec
    from pipeline.qc import QC_COLUMNS
    from pipeline.rows import ClipPlan, JobSettings, SegmentResult
    from pipeline.stages import JobBoard
    from pipeline.tracker import Tracker

    mb = 1 << 20
    settings = JobSettings(output=str(tmp_path), preset="tiny", weights=None, model_identity="m+w",
                           segment_frames=16, overlap_frames=4, scratch_budget=5 * mb)
    tracker = Tracker(settings, [ClipSpec(row=i, clip_id=c, image="x.png", audio="x.wav") for i, c in enumerate("abcde")],
                      [], Console(file=io.StringIO()))
    tracker.start_assembly = lambda clip: None
    board = JobBoard(admission=True)

    def ask(clip_id: str, nbytes: int = 3 * mb) -> bool | None:
        admitted = board.ask_admission(clip_id, nbytes)
        tracker.admit_clips(board)
        return admitted if admitted is not False else board.ask_admission(clip_id, nbytes)

    assert ask("a")
    assert not ask("b") and not ask("c", 1 * mb)  # b does not fit beside a; c fits but does not overtake b
    tracker.on_plan(ClipPlan(0, "a", "fa", frames=10, fps=12.0, segments=[(0, 10)], pending=[(0, 10)]))
    tracker.on_segment(SegmentResult(0, "a", "fa", 0, 10, seconds=1.0))
    assert not ask("b")  # a's segments are in, but not yet assembled (freed)
    tracker.on_assembled(tracker.clips["a"], dict(output="a.mp4", frames=10, assemble_seconds=0.1,
                                                  **dict.fromkeys(QC_COLUMNS)))
    assert ask("b") and ask("c", 1 * mb)
    assert ask("b") and ask("c", 1 * mb)  # a retried preprocess task of an admitted clip goes on
    tracker.on_plan(ClipPlan(1, "b", "fb", error="row 1 (clip 'b'): preprocessing: pose: broken"))
    tracker.on_plan(ClipPlan(2, "c", "fc", error="row 2 (clip 'c'): preprocessing: pose: broken"))
    assert ask("d", 9 * mb)  # larger than the whole budget: admitted once nothing else is in flight
    tracker.on_plan(ClipPlan(4, "e", "fe", error="row 4 (clip 'e'): not preprocessed: the job stopped preprocessing"))
    assert ask("e") is None  # a clip that ended before it was admitted is never rendered
    assert clip_scratch_bytes([16, 16], 256, 256) == 32 * 256 * 256 * 3


def test_preprocessing_workers_that_keep_dying_fail_the_unplanned_clips_only(tmp_path):
    """The preprocess pool's workers are restarted by Ray without limit (a finite max_restarts makes Ray log an
    error for each of them): the driver's count bounds them. After PREPROCESS_DEATHS_IN_A_ROW deaths with no
    plan in between, the clips not yet planned fail naming their rows; a planned clip goes on."""
    from rich.console import Console

    from pipeline.manifest import ClipSpec
    from pipeline.rows import ClipPlan, JobSettings
    from pipeline.stages import JobBoard
    from pipeline.tracker import PREPROCESS_DEATHS_IN_A_ROW, Tracker

    settings = JobSettings(output=str(tmp_path), preset="tiny", weights=None, model_identity="m+w",
                           segment_frames=16, overlap_frames=4)
    tracker = Tracker(settings, [ClipSpec(row=i, clip_id=c, image="x.png", audio="x.wav") for i, c in enumerate("abc")],
                      [], Console(file=io.StringIO()))
    tracker.start_assembly = lambda clip: None
    deaths = [1]
    tracker.count_preprocess_restarts = lambda: deaths[0]
    tracker.preprocess_restarts()
    tracker.on_plan(ClipPlan(0, "a", "fa", frames=10, fps=12.0, segments=[(0, 10)], pending=[(0, 10)]))
    deaths[0] += PREPROCESS_DEATHS_IN_A_ROW - 1
    tracker.on_preprocess_deaths(tracker.preprocess_restarts() - tracker.preprocess_restarts_at_last_plan)
    assert all(clip.result is None for clip in tracker.clips.values())  # one short of the bound
    deaths[0] += 1
    tracker.on_preprocess_deaths(tracker.preprocess_restarts() - tracker.preprocess_restarts_at_last_plan)
    assert tracker.clips["a"].result is None
    for row, clip_id in ((1, "b"), (2, "c")):
        assert tracker.clips[clip_id].result["error"] == (
            f"row {row} (clip {clip_id!r}): not preprocessed: preprocessing workers died {PREPROCESS_DEATHS_IN_A_ROW} "
            "times in a row without planning a clip, the job stopped preprocessing (see the Ray logs)")
    board = JobBoard(admission=True)
    assert board.ask_admission("b", 1) is False
    tracker.admit_clips(board)
    assert board.ask_admission("b", 1) is None  # a late plan of a failed clip never renders
