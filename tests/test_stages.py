"""The job's stages without Ray: each stage's `__call__` on hand-made rows, the board's attempt counting,
and the row codec. The stages' frames must be the one-clip pipeline's frames (one implementation)."""
from __future__ import annotations

import numpy as np
import pytest
from conftest import image_bytes, wav_bytes

from pipeline.ledger import Ledger
from pipeline.manifest import ClipSpec
from pipeline.params import RenderParams
from pipeline.rows import ClipPlan, JobSettings, SegmentResult, SegmentWork, from_batch, to_batch
from pipeline.segment_store import clip_audio_uri, iter_segment, store_clip_audio, write_segment
from pipeline.stages import SEGMENT_ATTEMPTS, AssembleStage, JobBoard, PreprocessStage, RenderStage

ONE_STEP = RenderParams.resolve("tiny", seed=0, steps=1, guidance=1.0, segment_frames=288, overlap_frames=6)

SIZE, FPS = 64, 12.0


def settings_for(output, **overrides) -> JobSettings:
    from pipeline.render import model_identity

    values = dict(output=str(output), preset="tiny", weights=None, model_identity=model_identity("tiny", None),
                  segment_frames=8, overlap_frames=2)
    return JobSettings(**{**values, **overrides})


def ready_render_stage(settings: JobSettings) -> RenderStage:
    """A render stage as a fresh worker has it after `setup()` (the tiny model on the CPU)."""
    render = RenderStage(settings, JobBoard(), gpus_per_worker=0)
    render.on_worker_start(restarted=False, node_id=None)
    render.setup()
    return render


def clip_spec(tmp_path, seconds=1.0, **fields) -> ClipSpec:
    (tmp_path / "a.png").write_bytes(image_bytes(0))
    (tmp_path / "a.wav").write_bytes(wav_bytes(seconds))
    values = dict(row=4, clip_id="a", image=str(tmp_path / "a.png"), audio=str(tmp_path / "a.wav"), fps=FPS,
                  width=SIZE, height=SIZE)
    return ClipSpec(**{**values, **fields})


def check_video(uri: str, audio_seconds: float) -> None:
    """An H.264 + AAC MP4 of SIZE x SIZE at FPS, as long as the audio (within a frame)."""
    from pipeline.assemble import probe_video

    probe = probe_video(uri)
    assert (probe["vcodec"], probe["acodec"], probe["width"], probe["height"]) == ("h264", "aac", SIZE, SIZE)
    assert abs(probe["duration"] - audio_seconds) <= 1 / FPS + 1e-3 and probe["frames"] == round(audio_seconds * FPS)


def test_preprocess_posts_the_plan_and_yields_one_work_row_per_segment(tmp_path):
    board = JobBoard()
    stage = PreprocessStage(settings_for(tmp_path / "out"), board)
    stage.setup()
    works = list(stage(clip_spec(tmp_path)))
    [plan] = board.take_plans()
    assert not plan.failed and not plan.skipped
    assert plan.frames == 12 and plan.segments == [(0, 7), (5, 12)] and plan.pending == plan.segments
    assert [(w.start, w.stop) for w in works] == plan.segments
    assert all(w.row == 4 and w.fingerprint == plan.fingerprint for w in works)
    assert works[1].audio.shape == (7, 50, 384) and works[1].poses.shape == (7, SIZE, SIZE, 3)
    assert works[0].reference.shape == (SIZE, SIZE, 3) and works[0].reference.dtype == np.uint8


def test_preprocess_refusal_is_the_plans_error_and_yields_nothing(tmp_path):
    board = JobBoard()
    stage = PreprocessStage(settings_for(tmp_path / "out"), board)
    stage.setup()
    spec = clip_spec(tmp_path, image=str(tmp_path / "missing.png"))
    assert list(stage(spec)) == []
    [plan] = board.take_plans()
    assert plan.failed and plan.error.startswith("row 4 (clip 'a'): image: not found")


def test_stages_render_and_assemble_exactly_the_one_clip_frames(tmp_path):
    """Preprocess → render → assemble by hand; the segment files equal the one-clip pipeline's segments, and
    their stitch its frames."""
    from pipeline import EchoMimicV2Pipeline
    from pipeline.steps import stitch

    settings = settings_for(tmp_path / "out")
    board = JobBoard()
    preprocess = PreprocessStage(settings, board)
    preprocess.setup()
    spec = clip_spec(tmp_path)
    works = list(preprocess(spec))
    [plan] = board.take_plans()
    render = RenderStage(settings, board, gpus_per_worker=0)
    render.on_worker_start(restarted=False, node_id=None)
    render.setup()
    results = [render(work) for work in works]
    assert all(r.error is None and r.attempts == 1 for r in results)
    ledger = Ledger(settings.output)
    first, second = sorted(ledger.segment_records("a"), key=lambda record: record["start"])
    # The worker's first segment says how long its start took, and of that its setup (the warm-start figures).
    assert 0 < first["setup_seconds"] < first["worker_start_seconds"] and first["compile_cache"] is None  # CPU: eager
    assert "worker_start_seconds" not in second and "setup_seconds" not in second
    stored = [(a, b, np.concatenate(list(iter_segment(ledger.segment_uri("a", plan.fingerprint, a, b)))))
              for a, b in plan.segments]

    segments = []
    out = EchoMimicV2Pipeline.tiny()(spec.image, spec.audio, width=SIZE, height=SIZE, fps=FPS,
                                           segment_frames=8, overlap_frames=2, progress=False,
                                           callback=lambda step: segments.append((step.start, step.stop, step.frames)))
    assert out.segments == plan.segments and out.frames.shape == (12, SIZE, SIZE, 3)
    for (a, b, job_frames), (c, d, clip_frames) in zip(stored, segments):
        assert (a, b) == (c, d)
        np.testing.assert_array_equal(job_frames, clip_frames)
    np.testing.assert_array_equal(stitch(stored, plan.frames), out.frames)
    assert not np.array_equal(stored[0][2][-1], stored[1][2][stored[0][1] - stored[1][0] - 1])  # a real cross-fade

    (tmp_path / "a.wav").unlink()  # the input is read once, by preprocessing: the assembler muxes its copy
    assembled = AssembleStage(settings)(plan)
    assert assembled["frames"] == 12 and (tmp_path / "out" / "a.mp4").stat().st_size > 0
    check_video(str(tmp_path / "out" / "a.mp4"), 1.0)
    assert ledger.finished_clip("a", plan.fingerprint) is not None
    assert not (tmp_path / "out" / "_segments" / "a").exists()  # segments and the audio copy freed together


def test_preprocess_of_a_finished_clip_posts_it_skipped(tmp_path):
    settings = settings_for(tmp_path / "out")
    spec = clip_spec(tmp_path)
    board = JobBoard()
    stage = PreprocessStage(settings, board)
    stage.setup()
    [plan] = [board.take_plans(), list(stage(spec)), board.take_plans()][-1]
    Ledger(settings.output).record_clip("a", plan.fingerprint, bytes=3)
    (tmp_path / "out" / "a.mp4").write_bytes(b"mp4")
    assert list(stage(spec)) == []
    [again] = board.take_plans()
    assert again.skipped and again.fingerprint == plan.fingerprint and again.finished["bytes"] == 3


def test_preprocess_reads_a_pose_file_once_and_says_so(tmp_path, monkeypatch):
    from echomimic2.pose import default_pose_sequence, save_pose_npz
    from pipeline import storage

    save_pose_npz(default_pose_sequence(5, FPS), tmp_path / "p.npz")
    reads = []
    read_bytes = storage.read_bytes
    monkeypatch.setattr(storage, "read_bytes", lambda uri, **kw: reads.append(uri) or read_bytes(uri, **kw))
    board = JobBoard()
    stage = PreprocessStage(settings_for(tmp_path / "out"), board)
    stage.setup()
    works = list(stage(clip_spec(tmp_path, pose=str(tmp_path / "p.npz"))))
    [plan] = board.take_plans()
    assert len(works) == 2 and plan.poses_info["pose_source"] == "given"
    assert sorted(uri.rsplit("/", 1)[-1] for uri in reads) == ["a.png", "a.wav", "p.npz"]  # each input once


def test_preprocess_keeps_the_audio_for_the_assembler_also_on_a_resume(tmp_path):
    """A clip whose segments were rendered by a release that did not keep the audio copy (or whose copy is
    gone) gets it again from its next preprocessing: the assembler never needs the input."""
    from pipeline.fingerprint import content_hash

    settings = settings_for(tmp_path / "out")
    spec = clip_spec(tmp_path)
    board = JobBoard()
    stage = PreprocessStage(settings, board)
    stage.setup()
    list(stage(spec))
    [plan] = board.take_plans()
    ledger = Ledger(settings.output)
    assert plan.audio == clip_audio_uri(ledger, "a", plan.fingerprint)
    copy = tmp_path / "out" / "_segments" / "a" / plan.fingerprint / "audio"
    assert copy.read_bytes() == (tmp_path / "a.wav").read_bytes() and content_hash(copy.read_bytes()) == plan.audio_sha
    for start, stop in plan.segments:  # as if rendered, then the audio copy lost
        write_segment(np.zeros((stop - start, SIZE, SIZE, 3), np.uint8), ledger.segment_uri("a", plan.fingerprint, start, stop))
    copy.unlink()
    assert list(stage(spec)) == []  # nothing left to render
    [again] = board.take_plans()
    assert again.pending == [] and copy.read_bytes() == (tmp_path / "a.wav").read_bytes()


def test_render_stage_writes_a_hand_made_segment(tmp_path):
    settings = settings_for(tmp_path / "out")
    render = ready_render_stage(settings)
    work = SegmentWork(row=7, clip_id="x", fingerprint="f", start=10, stop=14, params=ONE_STEP,
                       reference=np.full((SIZE, SIZE, 3), 128, np.uint8), audio=np.zeros((4, 50, 384), np.float32),
                       poses=np.zeros((4, SIZE, SIZE, 3), np.uint8))
    result = render(work)
    assert (result.error, result.attempts, result.start, result.stop) == (None, 1, 10, 14)
    ledger = Ledger(settings.output)
    frames = np.concatenate(list(iter_segment(ledger.segment_uri("x", "f", 10, 14))))
    assert frames.shape == (4, SIZE, SIZE, 3) and frames.dtype == np.uint8
    [record] = ledger.segment_records("x")
    assert (record["start"], record["stop"], record["attempt"]) == (10, 14, 1)


def test_assemble_stage_on_a_hand_made_plan(tmp_path):
    """Two stored segments and the stored audio copy → one MP4 of the audio's length; nothing else is read."""
    from pipeline.fingerprint import content_hash

    settings = settings_for(tmp_path / "out")
    ledger = Ledger(settings.output)
    ramp = np.linspace(0, 255, 12).astype(np.uint8)
    frames = np.broadcast_to(ramp[:, None, None, None], (12, SIZE, SIZE, 3))
    for start, stop in [(0, 7), (5, 12)]:
        write_segment(frames[start:stop], ledger.segment_uri("c", "fp", start, stop))
    audio = wav_bytes(1.0)
    audio_uri = clip_audio_uri(ledger, "c", "fp")
    store_clip_audio(audio, audio_uri)
    plan = ClipPlan(1, "c", "fp", frames=12, fps=FPS, seconds=1.0, width=SIZE, height=SIZE, audio=audio_uri,
                    audio_sha=content_hash(audio), segments=[(0, 7), (5, 12)], pending=[])
    out = AssembleStage(settings)(plan)
    check_video(out["output"], 1.0)
    assert out["frames"] == 12 and "qc_score" in out  # its QC columns (the ramp starts black: it may flag)
    store_clip_audio(b"other", audio_uri, overwrite=True)
    write_segment(frames[:7], ledger.segment_uri("c", "fp", 0, 7))
    with pytest.raises(ValueError, match="not the audio this clip was planned with"):
        AssembleStage(settings)(plan)


def test_render_failure_names_the_row_and_segment(tmp_path):
    settings = settings_for(tmp_path / "out")
    render = ready_render_stage(settings)
    work = SegmentWork(row=7, clip_id="x", fingerprint="f", start=117, stop=121, params=ONE_STEP,
                       reference=np.zeros((SIZE, SIZE, 3), np.uint8), audio=np.zeros((4, 50, 384), np.float32),
                       poses=np.zeros((3, SIZE, SIZE, 3), np.uint8))  # one pose image short
    result = render(work)
    assert result.attempts == SEGMENT_ATTEMPTS
    assert result.error.startswith("row 7 (clip 'x'): segment 117-121 failed 3 times: attempt 1: ValueError: pose_images: ")


def test_board_counts_attempts_across_worker_deaths():
    board = JobBoard(attempts_per_segment=3)
    key = ("x", "f", 0, 8)
    for number in (1, 2, 3):  # each attempt's worker dies: begin without end
        assert board.begin("row 1 (clip 'x'): segment 0-8", key).number == number
    attempt = board.begin("row 1 (clip 'x'): segment 0-8", key)
    assert attempt.error == ("row 1 (clip 'x'): segment 0-8 failed 3 times: attempt 1: the render worker died; "
                             "attempt 2: the render worker died; attempt 3: the render worker died")
    other = board.begin("row 1 (clip 'x'): segment 6-14", ("x", "f", 6, 14))
    assert "another segment of the clip failed" in other.error  # the clip has failed: no more work on it


@pytest.mark.parametrize("item", [
    ClipSpec(row=3, clip_id="a", image="s3://b/a.png", audio="a.wav"),
    ClipSpec(row=3, clip_id="a", image="a.png", audio="a.wav", pose="p.npz", seed=5, guidance=2.5, width=128),
    SegmentResult(1, "a", "f", 0, 8, seconds=1.5, attempts=2),
    SegmentResult(1, "a", "f", 0, 8, error="row 1 (clip 'a'): segment 0-8 failed", give_up=True),
    ClipPlan(2, "b", "f", frames=24, segments=[(0, 16), (8, 24)], pending=[(8, 24)], params=ONE_STEP),
    ClipPlan(2, "b", error="row 2 (clip 'b'): image: not found"),
])
def test_rows_survive_the_batch_codec(item):
    assert from_batch(type(item), to_batch(item)) == item


def test_segment_work_arrays_travel_without_pickle():
    work = SegmentWork(0, "a", "f", 0, 2, ONE_STEP, reference=np.ones((64, 64, 3), np.uint8),
                       audio=np.full((2, 50, 384), 0.5, np.float32), poses=np.zeros((2, 64, 64, 3), np.uint8))
    back = from_batch(SegmentWork, to_batch(work))
    assert back.label == "row 0 (clip 'a'): segment 0-2"
    for name in ("reference", "audio", "poses"):
        np.testing.assert_array_equal(getattr(back, name), getattr(work, name))


def test_compiling_is_a_job_setting(tmp_path, monkeypatch):
    """Whether render workers compile is `JobSettings.compile` (`run --eager`), decided from the settings alone;
    the environment is read once, by cli.py, as --eager's default."""
    from cli import eager_by_default
    from pipeline.render import compiles_networks

    settings = settings_for(tmp_path)
    assert compiles_networks(settings, "cuda") and not compiles_networks(settings, "cpu")
    monkeypatch.setenv("ECHOMIMIC2_COMPILE", "0")
    assert compiles_networks(settings, "cuda")  # the workers do not read it
    assert not compiles_networks(settings_for(tmp_path, compile=False), "cuda")
    assert eager_by_default()
    monkeypatch.delenv("ECHOMIMIC2_COMPILE")
    assert not eager_by_default()
