import pytest

from pipeline.segments import plan_segments


@pytest.mark.parametrize("n", [1, 5, 47, 48, 49, 50, 90, 91, 100, 240, 1000, 14_400])
@pytest.mark.parametrize("segment_frames,overlap_frames", [(48, 6), (12, 3), (16, 0), (24, 11)])
def test_segments_cover_every_frame_with_the_overlap(n, segment_frames, overlap_frames):
    segments = plan_segments(n, segment_frames, overlap_frames)
    assert segments[0][0] == 0 and segments[-1][1] == n
    lengths = {stop - start for start, stop in segments}
    assert len(lengths) == 1 and max(lengths) <= segment_frames  # balanced, never longer than asked
    for (start_a, stop_a), (start_b, stop_b) in zip(segments, segments[1:]):
        assert start_a < start_b <= stop_a < stop_b
        assert overlap_frames <= stop_a - start_b <= overlap_frames + 1
    # no more segments than needed
    if n > segment_frames:
        assert len(segments) * (segment_frames - overlap_frames) < n - overlap_frames + (segment_frames - overlap_frames)


def test_short_clip_is_one_segment_and_empty_clip_none():
    assert plan_segments(30) == [(0, 30)]
    assert plan_segments(0) == []
    assert plan_segments(50, 48, 6) == [(0, 28), (22, 50)]


@pytest.mark.parametrize("args", [(10, 0, 0), (10, 8, 8), (10, 8, -1), (-1, 8, 2)])
def test_bad_plan_arguments_are_refused(args):
    with pytest.raises(ValueError):
        plan_segments(*args)
