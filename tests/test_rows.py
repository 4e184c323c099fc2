"""The row codec between stages (pipeline/rows.py to_batch / from_batch): every field comes back equal, and
rendered pose images travel sparse."""
from __future__ import annotations

import numpy as np
import pytest

from echomimic2.pose import default_pose_sequence, render_pose
from pipeline import rows
from pipeline.params import RenderParams
from pipeline.rows import SegmentWork, from_batch, to_batch


def work(poses: np.ndarray) -> SegmentWork:
    rng = np.random.default_rng(0)
    n, size = poses.shape[0], poses.shape[1]
    return SegmentWork(3, "clip", "f" * 16, 10, 10 + n, RenderParams.resolve("tiny", seed=1, steps=2, segment_frames=288, overlap_frames=6),
                       reference=rng.integers(0, 256, (size, size, 3), dtype=np.uint8),
                       audio=rng.standard_normal((n, 50, 384), dtype=np.float32), poses=poses)


def travelled_bytes(item) -> int:
    return len(to_batch(item)["arrays"][0])


def test_pose_images_travel_sparse_and_come_back_bit_for_bit(monkeypatch):
    poses = np.stack([render_pose(pose, 256, 256) for pose in default_pose_sequence(12, 24.0)])
    item = work(poses)
    back = from_batch(SegmentWork, to_batch(item))
    for name in ("reference", "audio", "poses"):
        assert np.array_equal(getattr(back, name), getattr(item, name)), name
        assert getattr(back, name).dtype == getattr(item, name).dtype
    assert (back.row, back.clip_id, back.start, back.stop, back.params) == (3, "clip", 10, 22, item.params)
    sparse = travelled_bytes(item)
    monkeypatch.setattr(rows, "SPARSE_IMAGES_MAX_DENSITY", -1.0)  # every stack dense: the old codec
    dense = travelled_bytes(item)
    assert dense - sparse > 0.9 * poses.nbytes  # the poses shrank more than tenfold


@pytest.mark.parametrize("kind", ["noise", "empty", "black"])
def test_dense_empty_and_all_black_image_stacks_round_trip(kind):
    rng = np.random.default_rng(1)
    poses = {"noise": rng.integers(0, 256, (4, 64, 64, 3), dtype=np.uint8),  # too dense: stays as it is
             "empty": np.zeros((0, 64, 64, 3), np.uint8),
             "black": np.zeros((4, 64, 64, 3), np.uint8)}[kind]
    back = from_batch(SegmentWork, to_batch(work(poses)))
    assert back.poses.shape == poses.shape and np.array_equal(back.poses, poses)
