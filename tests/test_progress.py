"""Progress while a segment renders: the engine reports every UNet call and decoded batch, and the frames do
not depend on whether anyone listens."""
import numpy as np
import pytest

from echomimic2 import EchoMimicV2
from echomimic2.pose import default_pose_sequence, render_pose

SIZE, FRAMES, STEPS = 64, 15, 3


@pytest.fixture(scope="module")
def inputs():
    rng = np.random.default_rng(0)
    reference = rng.integers(0, 256, (SIZE, SIZE, 3), dtype=np.uint8)
    audio = rng.standard_normal((FRAMES, 50, 384)).astype(np.float32)
    poses = np.stack([render_pose(pose, SIZE, SIZE) for pose in default_pose_sequence(FRAMES, 24.0)])
    return reference, audio, poses


def test_render_reports_every_call_and_batch_and_keeps_its_frames(inputs):
    model = EchoMimicV2.tiny()
    reference, audio, poses = inputs
    silent = model.render(reference, audio, poses, seed=3, first_frame=5, steps=STEPS, windows_per_batch=1)
    reports = []
    frames = model.render(reference, audio, poses, seed=3, first_frame=5, steps=STEPS, windows_per_batch=1,
                          on_progress=reports.append)
    np.testing.assert_array_equal(frames, silent)

    calls = reports[-1].calls
    denoising = [r for r in reports if r.frames_decoded == 0]
    decoding = [r for r in reports if r.frames_decoded > 0]
    assert [r.calls_done for r in denoising] == list(range(1, calls + 1))  # one report per UNet call
    assert calls > STEPS  # one window per call: the bar moves within a step, not only between steps
    assert [r.steps_done for r in denoising] == sorted(r.steps_done for r in denoising)
    assert denoising[-1].steps_done == STEPS and denoising[0].steps_done == 0
    assert [r.frames_decoded for r in decoding] == [min(FRAMES, 8 * i) for i in range(1, len(decoding) + 1)]
    fractions = [r.fraction for r in reports]
    assert fractions == sorted(fractions) and fractions[-1] == pytest.approx(1.0)
    assert 0 < denoising[-1].fraction < 1  # the decode is part of the work


def test_the_driver_shows_progress_inside_segments_from_the_board(tmp_path, monkeypatch):
    """Render workers' reports reach the driver's bar and its plain lines through the board; a finished
    segment's report that comes after its result row does not count twice."""
    import io

    from rich.console import Console

    from pipeline import tracker as tracker_module
    from pipeline.manifest import ClipSpec
    from pipeline.rows import ClipPlan, JobSettings, SegmentResult
    from pipeline.stages import JobBoard
    from pipeline.tracker import Tracker

    monkeypatch.setattr(tracker_module, "LOG_PROGRESS_SECONDS", 0.0)
    settings = JobSettings(output=str(tmp_path), preset="tiny", weights=None, model_identity="m+w",
                           segment_frames=16, overlap_frames=4)
    log = io.StringIO()
    tracker = Tracker(settings, [ClipSpec(row=0, clip_id="a", image="x.png", audio="x.wav")], [], Console(file=log, soft_wrap=True))
    tracker.start_assembly = lambda clip: None
    tracker.on_plan(ClipPlan(0, "a", "fp", frames=28, fps=12.0, seconds=2.3, segments=[(0, 16), (12, 28)],
                             pending=[(0, 16), (12, 28)]))
    board = JobBoard()
    first, second = ("a", "fp", 0, 16), ("a", "fp", 12, 28)
    board.begin("row 0 (clip 'a') frames 0-16", first)
    board.begin("row 0 (clip 'a') frames 12-28", second)
    board.post_progress(first, 0.25, "step 1/3")
    tracker.take_progress(board)
    tracker._refresh()
    bar = tracker.progress.tasks[tracker.segment_task]
    assert bar.completed == 0.25 and "1 rendering: step 1/3" in bar.description
    assert "segments 0.25 rendered of 2 (1 rendering: step 1/3); ETA -:--:--" in log.getvalue()

    board.post_progress(first, 0.75, "decoding")
    board.end(first)  # the worker is done; its result row reaches the driver later
    tracker.take_progress(board)
    tracker._refresh()
    assert tracker.progress.tasks[tracker.segment_task].completed == 1.0
    assert "rendering" not in tracker.progress.tasks[tracker.segment_task].description  # done, its row on its way
    tracker.on_segment(SegmentResult(0, *first, seconds=1.0, attempts=1))
    board.post_progress(second, 0.5, "step 2/3")
    tracker.take_progress(board)
    tracker._refresh()
    assert tracker.progress.tasks[tracker.segment_task].completed == 1.5
    last = log.getvalue().strip().splitlines()[-1]
    assert "segments 1.5 rendered of 2" in last and "ETA 00:00:" in last  # measured since the first report

    board.end(second, "boom")  # a failed attempt's progress is lost, not kept
    tracker.take_progress(board)
    assert tracker.in_flight == {}


def test_eta_comes_from_the_measured_rate_after_the_first_report():
    from pipeline.tracker import SegmentRate

    rate = SegmentRate()
    assert rate.remaining(0.0, 4, now=0.0) is None  # nothing rendered yet (models loading)
    assert rate.remaining(0.1, 4, now=100.0) is None  # the first report: no rate yet
    assert rate.remaining(0.6, 4, now=110.0) == pytest.approx(3.4 / 0.05)


def test_a_render_worker_reports_at_most_every_second_and_always_the_last_step():
    from echomimic2.sampler import RenderProgress
    from pipeline.stages import JobBoard, ProgressReporter

    board = JobBoard()
    report = ProgressReporter(board, ("a", "fp", 0, 16))
    state = dict(calls=3, steps=3, steps_done=0, frames_decoded=0, frames=16, decode_share=0.2)
    report(RenderProgress(calls_done=1, **state))
    report(RenderProgress(calls_done=2, **state))  # within the second: not sent
    assert board.take_progress() == {("a", "fp", 0, 16): (pytest.approx(0.8 / 3, abs=1e-4), "step 0/3")}
    report(RenderProgress(calls_done=3, **{**state, "steps_done": 3}))  # denoising done: always sent
    assert board.take_progress() == {("a", "fp", 0, 16): (0.8, "step 3/3")}
