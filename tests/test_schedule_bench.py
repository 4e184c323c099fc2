"""`cli.py bench --schedule` on the CPU (tiny networks): it renders the planned segments one by one and the
whole clip once, and reports both; the GPU figures are in BENCHMARKS.md."""
from __future__ import annotations

from pipeline.schedule_bench import format_clip, run_schedule_bench
from pipeline.segments import plan_segments


def test_the_schedule_bench_renders_every_planned_segment_and_the_whole_clip():
    seen = []
    header, figures = run_schedule_bench("acc", [0.5, 1.0], size=64, steps=1, segment_frames=10, overlap_frames=2,
                                         on_clip=seen.append)
    assert seen == figures and "tiny" in header
    assert [f.frames for f in figures] == [12, 24]
    assert [f.segments for f in figures] == [len(plan_segments(n, 10, 2)) for n in (12, 24)] == [2, 3]
    for figure in figures:
        assert figure.whole_clip_seconds > 0 and figure.job_schedule_seconds > figure.write_seconds > 0
        assert f"{figure.ratio:.3f}" in format_clip(figure)
