"""Pose files (restricted unpickling, pickle-free npz), the official hands-only drawing, default poses."""
from __future__ import annotations

import io
import os

import numpy as np
import pytest

from echomimic2.pose import (
    PoseFormatError,
    default_pose_sequence,
    extend_poses,
    load_pose_npz,
    read_pose_npy,
    render_pose,
    save_pose_npz,
)

UNSCALED = [800, 800, 0, 800, 0, 800]  # drawing canvas = output canvas: no resampling, exact pixels


def _pose(points: dict[tuple[int, int], tuple[float, float]], scores: dict[tuple[int, int], float] | None = None,
          params=UNSCALED) -> dict:
    """Every key point at (0, 0) (never drawn) except `points[(hand, joint)]`; scores default to 1."""
    hands = np.zeros((2, 21, 2))
    hands_score = np.ones((2, 21))
    for key, xy in points.items():
        hands[key] = xy
    for key, score in (scores or {}).items():
        hands_score[key] = score
    return {"hands": hands, "hands_score": hands_score, "draw_pose_params": list(params)}


# ---- drawing -------------------------------------------------------------------------------------


def test_joint_is_a_red_disc_of_radius_4_with_score_intensity():
    image = render_pose(_pose({(0, 8): (0.5, 0.5)}, {(0, 8): 0.6}), 800, 800)
    assert image.dtype == np.uint8 and image.shape == (800, 800, 3)
    assert image[400, 400].tolist() == [int(0.6 * 255), 0, 0]
    assert image[400, 404].tolist() == [153, 0, 0] and image[400, 405].tolist() == [0, 0, 0]
    assert image[395:406, 395:406, 0].astype(bool).sum() == 49  # cv2's filled radius-4 disc
    assert image[..., 1:].max() == 0


@pytest.mark.parametrize(
    ("joint", "expected_rgb"),
    [
        (1, (0, 0, 204)),  # edge 0: hue 0 = red, written into B: blue in RGB
        (5, (0, 204, 163)),  # edge 4: hue 0.2 -> (0.8, 1, 0) reversed -> (0, 1, 0.8) x 204
        (9, (82, 204, 0)),  # edge 8: hue 0.4 -> (0, 1, 0.4) reversed -> (0.4, 1, 0) x 204
    ],
)
def test_bone_colour_is_reversed_hsv_times_score_product(joint, expected_rgb):
    pose = _pose({(1, 0): (0.25, 0.5), (1, joint): (0.75, 0.5)}, {(1, 0): 1.0, (1, joint): 0.8})
    image = render_pose(pose, 800, 800)
    assert image[400, 400].tolist() == list(expected_rgb)  # midpoint of the bone, k = int(0.8 * 255)
    assert image[401, 400].tolist() == list(expected_rgb)  # 2 px thick
    assert image[397, 400].tolist() == [0, 0, 0] and image[403, 400].tolist() == [0, 0, 0]
    assert image[400, 200].tolist() == [255, 0, 0]  # the wrist joint on top of the line, score 1


def test_edges_with_an_endpoint_under_one_pixel_are_not_drawn():
    # x = 0.001 -> pixel 0: neither the bone 0-1 nor joint 0 is drawn; joint 1 is.
    image = render_pose(_pose({(0, 0): (0.001, 0.5), (0, 1): (0.75, 0.5)}), 800, 800)
    assert image[390:411, :590].max() == 0
    assert image[400, 600].tolist() == [255, 0, 0]
    # x = 0.00125 -> pixel 1: drawn.
    image = render_pose(_pose({(0, 0): (0.00125, 0.5), (0, 1): (0.75, 0.5)}), 800, 800)
    assert image[400, 300].tolist() == [0, 0, 255]


def test_low_scores_dim_and_high_scores_saturate():
    pose = _pose({(0, 0): (0.25, 0.5), (0, 1): (0.75, 0.5), (1, 4): (0.5, 0.2)}, {(0, 0): 0.5, (0, 1): 0.5, (1, 4): 1.5})
    image = render_pose(pose, 800, 800)
    assert image[400, 400].tolist() == [0, 0, 63]  # int(0.25 * 255)
    assert image[400, 200].tolist() == [127, 0, 0]
    assert image[160, 400].tolist() == [255, 0, 0]  # int(1.5 * 255) saturates


def test_official_768_path_keeps_colours_at_disc_centres():
    image = render_pose(_pose({(0, 8): (0.5, 0.5)}, {(0, 8): 0.6}, params=[768, 768, 0, 768, 0, 768]), 768, 768)
    assert image[384, 384].tolist() == [153, 0, 0]  # 800 px drawing resized to 768, disc interior unchanged
    assert image[..., 0].astype(bool).sum() < 60 and image[..., 1:].max() == 0


def test_paste_box_places_and_scales_the_drawing():
    # Portrait box: a 400 x 800 drawing pasted at cols 200:600 of an 800 x 800 square.
    pose = _pose({(0, 8): (0.5, 0.5), (0, 12): (0.99, 0.99)}, params=[800, 400, 0, 800, 200, 600])
    image = render_pose(pose, 800, 800)
    assert image[400, 400].tolist() == [255, 0, 0]
    columns = np.nonzero(image.any(axis=(0, 2)))[0]
    assert columns.min() >= 200 and columns.max() < 600 and columns.max() > 590
    # Another output size: the box scales with it.
    small = render_pose(pose, 400, 200)
    assert small.shape == (200, 400, 3)
    columns = np.nonzero(small.any(axis=(0, 2)))[0]
    assert columns.min() >= 100 and columns.max() < 300


def test_render_refuses_bad_sizes_and_boxes():
    with pytest.raises(ValueError, match="size"):
        render_pose(_pose({}), 0, 64)
    with pytest.raises(PoseFormatError, match="draw_pose_params"):
        render_pose(_pose({}, params=[800, 800, 0, 700, 0, 800]), 64, 64)
    with pytest.raises(PoseFormatError, match="elongated"):
        render_pose(_pose({}, params=[10, 8000, 0, 10, 0, 8000]), 64, 64)


# ---- official .npy files --------------------------------------------------------------------------


def _official_dict() -> dict:
    rng = np.random.default_rng(0)
    return {
        "bodies": {"candidate": rng.random((18, 2)), "subset": np.arange(18.0)[None], "score": rng.random((1, 18))},
        "hands": rng.random((2, 21, 2)),
        "hands_score": rng.random((2, 21)) * 1.1,
        "faces": rng.random((1, 68, 2)),
        "faces_score": rng.random((1, 68)),
        "num": 12,
        "draw_pose_params": [768, 768, 0, 768, 0, 768],
    }


def test_reads_a_genuine_np_save_dict(tmp_path):
    original = _official_dict()
    original["extra_scalar"] = np.float64(0.25)  # numpy scalars pickle through multiarray.scalar
    path = tmp_path / "12.npy"
    np.save(path, original, allow_pickle=True)
    for source in (path, str(path), path.read_bytes()):
        pose = read_pose_npy(source, name="12.npy")
        assert pose["num"] == 12 and pose["draw_pose_params"] == [768, 768, 0, 768, 0, 768]
        assert pose["extra_scalar"] == 0.25
        np.testing.assert_array_equal(pose["hands"], original["hands"])
        np.testing.assert_array_equal(pose["bodies"]["candidate"], original["bodies"]["candidate"])


class _Reduces:
    def __init__(self, func, *args):
        self.call = (func, args)

    def __reduce__(self):
        return self.call


@pytest.mark.parametrize("make", [
    lambda marker: _Reduces(os.system, f"touch {marker}"),
    lambda marker: _Reduces(eval, f"open({str(marker)!r}, 'w')"),
    lambda marker: _Reduces(exec, f"open({str(marker)!r}, 'w')"),
    lambda marker: _Reduces(__import__, "subprocess"),
])
def test_pickles_that_would_run_code_are_refused(tmp_path, make):
    marker = tmp_path / "marker"
    path = tmp_path / "7.npy"
    np.save(path, np.array({"hands": make(marker)}, dtype=object), allow_pickle=True)
    with pytest.raises(PoseFormatError, match=r"7\.npy: refused pickled global (posix|builtins)\.") as error:
        read_pose_npy(path, name="7.npy")
    assert "system" in str(error.value) or "eval" in str(error.value) or "exec" in str(error.value) or "__import__" in str(error.value)
    assert not marker.exists()


def _npy_with_pickle(payload: bytes) -> bytes:
    stream = io.BytesIO()
    np.lib.format.write_array_header_1_0(stream, {"descr": "|O", "fortran_order": False, "shape": ()})
    return stream.getvalue() + payload


def test_direct_array_allocation_and_odd_payloads_are_refused():
    # numpy.ndarray((10**12,)) called straight from the pickle: np.save never writes this.
    allocate = b"\x80\x02cnumpy\nndarray\n\x8a\x05\x00\x10\xa5\xd4\xe8\x85\x85R."
    with pytest.raises(PoseFormatError, match="big.npy: refused"):
        read_pose_npy(_npy_with_pickle(allocate), name="big.npy")
    with pytest.raises(PoseFormatError, match="corrupt"):
        read_pose_npy(_npy_with_pickle(b"\x80\x02(("), name="cut.npy")
    with pytest.raises(PoseFormatError, match="not a .npy"):
        read_pose_npy(b"GIF89a" + bytes(100), name="x.npy")
    stream = io.BytesIO()
    np.save(stream, np.zeros((2, 21, 2)))
    with pytest.raises(PoseFormatError, match="expected a pickled dict"):
        read_pose_npy(stream.getvalue(), name="plain.npy")
    with pytest.raises(PoseFormatError, match="huge.npy: file is 2097152 bytes, more than"):
        read_pose_npy(bytes(2 << 20), name="huge.npy")
    stream = io.BytesIO()
    np.save(stream, np.array("hello", dtype=object), allow_pickle=True)
    with pytest.raises(PoseFormatError, match="must be a dict"):
        read_pose_npy(stream.getvalue(), name="str.npy")


@pytest.mark.parametrize(("change", "message"), [
    (lambda d: d.pop("hands_score"), "missing key 'hands_score'"),
    (lambda d: d.__setitem__("hands", np.zeros((1, 21, 2))), r"hands must have shape \(2, 21, 2\)"),
    (lambda d: d["hands"].__setitem__((0, 0, 0), np.nan), "hands must be finite"),
    (lambda d: d.__setitem__("draw_pose_params", [768.0, 768, 0, 768, 0, 768]), "draw_pose_params must be integers"),
    (lambda d: d.__setitem__("draw_pose_params", [768, 768]), "draw_pose_params must be 6 integers"),
])
def test_structure_errors_name_file_and_field(tmp_path, change, message):
    pose = _official_dict()
    change(pose)
    path = tmp_path / "3.npy"
    np.save(path, pose, allow_pickle=True)
    with pytest.raises(PoseFormatError, match=f"3.npy: {message}"):
        read_pose_npy(path, name="3.npy")


# ---- npz sequences ---------------------------------------------------------------------------------


def test_npz_round_trip_without_pickles(tmp_path):
    poses = default_pose_sequence(10, 24)
    path = tmp_path / "clip.poses"  # any name: not forced to end in .npz
    save_pose_npz(poses, path)
    buffer = io.BytesIO()
    save_pose_npz(poses, buffer)
    for source in (path, buffer.getvalue(), io.BytesIO(buffer.getvalue())):
        loaded = load_pose_npz(source, name="clip.poses")
        assert len(loaded) == 10
        for a, b in zip(poses, loaded):
            np.testing.assert_array_equal(a["hands"], b["hands"])
            np.testing.assert_array_equal(a["hands_score"], b["hands_score"])
            assert a["draw_pose_params"] == b["draw_pose_params"]
    with np.load(path, allow_pickle=False) as npz:
        assert sorted(npz.files) == ["draw_pose_params", "hands", "hands_score"]


def test_npz_with_wrong_content_is_refused(tmp_path):
    hands = np.zeros((3, 2, 21, 2))
    cases = {
        "extra": dict(hands=hands, hands_score=np.ones((3, 2, 21)), draw_pose_params=np.tile([768, 768, 0, 768, 0, 768], (3, 1)), evil=np.zeros(1)),
        "shape": dict(hands=hands, hands_score=np.ones((3, 2, 20)), draw_pose_params=np.tile([768, 768, 0, 768, 0, 768], (3, 1))),
        "float_params": dict(hands=hands, hands_score=np.ones((3, 2, 21)), draw_pose_params=np.tile([768.0, 768, 0, 768, 0, 768], (3, 1))),
    }
    messages = {"extra": "expected exactly", "shape": "hands_score must have shape", "float_params": "draw_pose_params must be integers"}
    for case, arrays in cases.items():
        buffer = io.BytesIO()
        np.savez(buffer, **arrays)
        with pytest.raises(PoseFormatError, match=f"{case}.npz: {messages[case]}"):
            load_pose_npz(buffer.getvalue(), name=f"{case}.npz")
    buffer = io.BytesIO()
    np.savez(buffer, hands=np.array([{"a": 1}], dtype=object), hands_score=np.ones(1), draw_pose_params=np.ones(1))
    with pytest.raises(PoseFormatError, match="pickled.npz"):
        load_pose_npz(buffer.getvalue(), name="pickled.npz")


# ---- default gesture loop and extension ------------------------------------------------------------


def test_default_sequence_is_plausible_smooth_and_deterministic():
    poses = default_pose_sequence(12 * 25 + 1, 25)
    hands = np.array([p["hands"] for p in poses])
    assert hands.shape == (301, 2, 21, 2)
    assert 0.05 < hands.min() and hands.max() < 0.95
    assert hands[..., 1].min() > 0.6  # lower torso of a half-body framing
    assert (hands[:, 0, :, 0].mean() < 0.5) and (hands[:, 1, :, 0].mean() > 0.5)  # one hand each side
    steps = np.abs(np.diff(hands, axis=0)).max()
    assert 0.0005 < steps < 0.01  # moving, slowly
    np.testing.assert_allclose(hands[300], hands[0], atol=1e-12)  # 12 s loop
    again = default_pose_sequence(5, 25)
    assert all(np.array_equal(a["hands"], b["hands"]) for a, b in zip(again, poses))
    at_50fps = default_pose_sequence(9, 50)
    np.testing.assert_allclose(at_50fps[8]["hands"], poses[4]["hands"], atol=1e-12)  # depends on time, not index
    assert all(p["draw_pose_params"] == [768, 768, 0, 768, 0, 768] for p in poses)
    assert render_pose(poses[0], 256, 256).any()


def test_extend_poses_ping_pong():
    poses = [{"num": i} for i in range(3)]
    assert [p["num"] for p in extend_poses(poses, 9)] == [0, 1, 2, 1, 0, 1, 2, 1, 0]
    assert [p["num"] for p in extend_poses(poses, 2)] == [0, 1]
    assert [p["num"] for p in extend_poses(poses[:1], 3)] == [0, 0, 0]
    with pytest.raises(ValueError, match="empty"):
        extend_poses([], 3)


def test_non_square_output_draws_round_joints_where_the_coordinates_say():
    # official params (a square box) on a 512x768 output: x by width, y by height, joints still discs
    image = render_pose(_pose({(0, 8): (0.5, 0.25)}, params=[768, 768, 0, 768, 0, 768]), 512, 768)
    assert image.shape == (768, 512, 3)
    rows, cols = np.nonzero(image[..., 0])
    assert rows.mean() == pytest.approx(192, abs=1) and cols.mean() == pytest.approx(256, abs=1)
    assert np.ptp(rows) == np.ptp(cols) == 6  # round (a square canvas stretched 1.5x gave 8 x 6)


def test_npz_keeps_the_body_and_face_alignment_needs(tmp_path):
    poses = default_pose_sequence(4, 24)
    rng = np.random.default_rng(0)
    for pose in poses:
        score = rng.uniform(0, 1, (1, 18))
        pose["bodies"] = {"candidate": rng.uniform(0, 1, (18, 2)), "score": score,
                          "subset": np.where(score > 0.3, np.arange(18.0), -1.0)}
        pose["faces"], pose["faces_score"] = rng.uniform(0, 1, (1, 68, 2)), np.ones((1, 68))
    path = tmp_path / "anchored.npz"
    save_pose_npz(poses, path)
    with np.load(path, allow_pickle=False) as npz:
        assert sorted(npz.files) == ["body", "body_score", "draw_pose_params", "face", "face_score", "hands", "hands_score"]
    loaded = load_pose_npz(path)
    for a, b in zip(poses, loaded):
        for key in ("candidate", "score", "subset"):
            np.testing.assert_array_equal(a["bodies"][key], b["bodies"][key])
        np.testing.assert_array_equal(a["faces"], b["faces"])
        np.testing.assert_array_equal(a["faces_score"], b["faces_score"])
    # all four anchor arrays or none
    buffer = io.BytesIO()
    with np.load(path, allow_pickle=False) as npz:
        np.savez(buffer, **{k: npz[k] for k in npz.files if k != "face_score"})
    with pytest.raises(PoseFormatError, match="expected exactly the arrays"):
        load_pose_npz(buffer.getvalue(), name="partial.npz")
