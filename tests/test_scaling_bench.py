"""cluster/scaling_bench.py: its manifest, its figures from a run's results and ledger records, the
--random-weights option it relies on, and (slow) one real run with a logical GPU."""
from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import soundfile as sf

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "cluster"))

import scaling_bench  # noqa: E402
from scaling_bench import LONG_CLIP_ID, RunMetrics, add_scaling, build_manifest, run_metrics  # noqa: E402

STARTED = 1_000.0


def segment(clip_id: str, end: float, seconds: float) -> dict:
    return dict(clip_id=clip_id, time=end, seconds=seconds, start=0, stop=48, fingerprint="f")


def test_manifest_has_the_long_clip_first_and_valid_speech(tmp_path):
    from pipeline.manifest import validate_manifest

    manifest = build_manifest(tmp_path, clips=2, clip_seconds=1.5, long_seconds=4.0, size=64)
    specs, problems = validate_manifest(str(manifest))
    assert problems == []
    assert [spec.clip_id for spec in specs] == [LONG_CLIP_ID, "short-000", "short-001"]
    assert {(spec.width, spec.height) for spec in specs} == {(64, 64)}
    durations = [sf.info(tmp_path / f"{spec.clip_id}.wav").duration for spec in specs]
    assert durations == [4.0, 1.5, 1.5]
    short = [sf.read(tmp_path / f"short-00{index}.wav")[0] for index in range(2)]
    assert min(abs(wave).max() for wave in short) > 0.05, "speech, not silence"
    assert not (short[0] == short[1]).all(), "clips of the same length differ in content"


def test_figures_from_results_and_ledger_records():
    results = pd.DataFrame(dict(clip_id=[LONG_CLIP_ID, "short-000", "short-001"], status=["done", "done", "failed"],
                                frames=[2880, 240, None], assemble_seconds=[12.5, 1.0, None]))
    segments = [
        segment(LONG_CLIP_ID, end=1_020.0, seconds=10.0),  # the job's first render starts at 1010
        segment(LONG_CLIP_ID, end=1_050.0, seconds=10.0),
        segment("short-000", end=1_030.0, seconds=5.0),
        segment("short-000", end=500.0, seconds=5.0),  # an earlier run into the same root: ignored
    ]
    clips = [dict(clip_id=LONG_CLIP_ID, time=1_070.0), dict(clip_id="short-000", time=1_090.0),
             dict(clip_id="short-000", time=600.0)]
    samples = [(1_005.0, 0.0), (1_020.0, 80.0), (1_080.0, 100.0), (1_095.0, 0.0)]
    metrics = run_metrics(2, 3, STARTED, 100.0, results, clips, segments, samples)
    assert (metrics.clips_done, metrics.clips_failed, metrics.frames, metrics.segments) == (2, 1, 3120, 3)
    assert metrics.window_s == pytest.approx(80.0)  # 1010 → last MP4 at 1090
    assert metrics.long_clip_s == pytest.approx(60.0)  # 1010 → its MP4 at 1070
    assert metrics.long_clip_assemble_s == pytest.approx(12.5)
    assert metrics.gpu_util_percent == pytest.approx(90.0)  # samples inside the render window only
    assert metrics.clips_per_hour == pytest.approx(72.0)
    assert metrics.clips_per_hour_window == pytest.approx(90.0)

    nothing = run_metrics(1, 2, STARTED, 5.0, None, [], [], None)
    assert (nothing.clips_done, nothing.window_s, nothing.long_clip_s, nothing.gpu_util_percent) == (0, None, None, None)


def test_figures_from_an_output_root_written_by_the_job_s_own_writers(tmp_path):
    """The field names the bench reads are those the ledger and results.parquet writers write."""
    from pipeline.ledger import Ledger
    from pipeline.results import RESULT_COLUMNS, write_results

    started = time.time()
    ledger = Ledger(str(tmp_path))
    for clip_id, frames in ((LONG_CLIP_ID, 96), ("short-000", 24)):
        ledger.record_segment(clip_id, "fp", 0, frames, seconds=0.25, attempt=1, pid=1, node_id="n", model="m")
        ledger.record_clip(clip_id, "fp", bytes=1, frames=frames, seconds=frames / 24, output="x")
    rows = [dict(dict.fromkeys(RESULT_COLUMNS), row=row, clip_id=clip_id, status="done", frames=frames,
                 assemble_seconds=0.5) for row, (clip_id, frames) in enumerate(((LONG_CLIP_ID, 96), ("short-000", 24)))]
    write_results(ledger, rows)
    metrics = scaling_bench.measure_output(str(tmp_path), 1, 0, started - 1.0, 10.0, None)
    assert (metrics.clips_done, metrics.frames, metrics.segments, metrics.long_clip_assemble_s) == (2, 120, 2, 0.5)
    assert 0.25 <= metrics.long_clip_s <= metrics.window_s < 5.0
    assert scaling_bench.measure_output(str(tmp_path / "nothing"), 1, 2, started, 1.0, None).clips_done == 0


def test_scaling_efficiency_and_long_clip_speedup():
    def run(gpus, per_hour, window_per_hour, long_clip):
        return RunMetrics(gpus=gpus, exit_code=0, clips_done=10, clips_failed=0, frames=0, segments=0, wall_s=1.0,
                          window_s=1.0, long_clip_s=long_clip, long_clip_assemble_s=None, gpu_util_percent=None,
                          clips_per_hour=per_hour, clips_per_hour_window=window_per_hour)

    runs = add_scaling([run(1, 100.0, 120.0, 80.0), run(4, 300.0, 432.0, 25.0)])
    assert runs[0].efficiency == pytest.approx(1.0) and runs[0].long_clip_speedup == pytest.approx(1.0)
    assert runs[1].efficiency == pytest.approx(0.9)  # 432 / (4 x 120)
    assert runs[1].efficiency_wall == pytest.approx(0.75)
    assert runs[1].long_clip_speedup == pytest.approx(3.2)
    without_base = add_scaling([run(2, 100.0, 100.0, 10.0)])
    assert without_base[0].efficiency is None and without_base[0].long_clip_speedup is None


def test_random_weights_is_for_the_full_size_presets_only(tmp_path):
    from pipeline.commands import EXIT_JOB_FAILED, run_command
    from pipeline.render import model_identity

    manifest = str(REPO / "manifests" / "demo.parquet")
    assert run_command(manifest, str(tmp_path), preset="tiny", random_weights=True) == EXIT_JOB_FAILED
    assert run_command(manifest, str(tmp_path), weights=tmp_path, preset="acc", random_weights=True) == EXIT_JOB_FAILED
    assert not (tmp_path / "_ledger").exists()
    assert model_identity("acc", None, random_weights=True) != model_identity("quality", None, random_weights=True)
    assert model_identity("acc", None, random_weights=True).startswith("random-acc-seed0-")


@pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="on a GPU this would run the benchmark")
def test_full_size_presets_need_gpus_here():
    with pytest.raises(SystemExit):
        scaling_bench.main(["--preset", "acc", "--gpus", "1"])


@pytest.mark.slow
def test_one_logical_gpu_run_end_to_end(tmp_path, capsys):
    """The real job in a subprocess (20-40 s here, most of it Ray's start): the script's command line
    and the job fit together."""
    code = scaling_bench.main(["--gpus", "1", "--clips", "1", "--clip-seconds", "1", "--long-seconds", "3",
                               "--size", "64", "--work-dir", str(tmp_path), "--json"])
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert code == 0, (tmp_path / "gpus-1.log").read_text()[-3000:]
    assert len(lines) == 1 and lines[0]["gpus"] == 1
    run = lines[0]
    assert (run["clips_done"], run["clips_failed"], run["frames"]) == (2, 0, 72 + 24)
    assert 0 < run["long_clip_assemble_s"] < run["long_clip_s"] <= run["window_s"] < run["wall_s"]
    assert run["efficiency"] == pytest.approx(1.0) and run["gpu_util_percent"] is None
    assert (tmp_path / "outputs" / "gpus-1" / f"{LONG_CLIP_ID}.mp4").stat().st_size > 0


def test_baseline_from_an_earlier_json_run_must_have_the_same_settings(tmp_path):
    settings = dict(preset="acc", size=None, clips=8, clip_seconds=5.0, long_seconds=120.0, segment_frames=None,
                    compiled=False)
    one = RunMetrics(gpus=1, exit_code=0, clips_done=9, clips_failed=0, frames=3840, segments=90, wall_s=700.0,
                     window_s=600.0, long_clip_s=400.0, long_clip_assemble_s=20.0, gpu_util_percent=97.0)
    two = RunMetrics(**dict(vars(one), gpus=2))
    path = tmp_path / "sweep.jsonl"
    path.write_text("".join(json.dumps(run.as_dict(dict(settings, device="H100", date="d"))) + "\n" for run in (two, one)))
    baseline = scaling_bench.read_baseline(path, settings)
    assert (baseline.gpus, baseline.window_s, baseline.long_clip_s) == (1, 600.0, 400.0)
    with pytest.raises(ValueError, match="compiled"):
        scaling_bench.read_baseline(path, dict(settings, compiled=True))
    path.write_text(json.dumps(two.as_dict(dict(settings, device="H100", date="d"))) + "\n")
    with pytest.raises(ValueError, match="no line"):
        scaling_bench.read_baseline(path, settings)
