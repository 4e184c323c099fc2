"""Pose conditioning (spec §8): reading pose files safely, drawing them as the official code does,
and a built-in gesture loop for clips that come without poses.

Official per-frame files are pickled dicts saved with `np.save`; loading them with
`allow_pickle=True` would run whatever a crafted file asks for. Here they go through an unpickler
that can build only dicts, lists, tuples, numbers, strings and numpy arrays. Sequences can also be
kept in a pickle-free `.npz` (one per clip).

A pose dict needs three keys to be drawn: `hands` (2, 21, 2) x/y normalised to the pose box,
`hands_score` (2, 21) and `draw_pose_params` [imh, imw, rb, re, cb, ce]. Other official keys
(`bodies`, `faces`, `num`, ...) are kept as read but never drawn.
"""
from __future__ import annotations

import colorsys
import io
import math
import pickle
import re
import zipfile
from pathlib import Path
from typing import BinaryIO

import cv2
import numpy as np

HAND_EDGES = (
    (0, 1), (1, 2), (2, 3), (3, 4),  # thumb
    (0, 5), (5, 6), (6, 7), (7, 8),  # index
    (0, 9), (9, 10), (10, 11), (11, 12),  # middle
    (0, 13), (13, 14), (14, 15), (15, 16),  # ring
    (0, 17), (17, 18), (18, 19), (19, 20),  # little
)
DRAW_REFERENCE_SIDE = 800  # `ref_w` of draw_pose_select_v2: the short side of the drawing canvas
OFFICIAL_DRAW_PARAMS = (768, 768, 0, 768, 0, 768)  # every official demo file: full 768x768 box
MIN_PIXEL = 0.01  # the official eps: an integer pixel coordinate must exceed it, i.e. be >= 1
JOINT_RADIUS = 4
BONE_THICKNESS = 2

MAX_POSE_FILE_BYTES = 1 << 20  # official frame files are ~4 kB
MAX_POSE_NPZ_BYTES = 256 << 20  # uncompressed; ~1 kB per frame
MAX_COORDINATE = 100.0  # normalised; keeps pixel coordinates far inside int32
MAX_BOX_SIDE = 8192
MAX_ASPECT = 8  # bounds the drawing canvas (its short side is always 800 px)


class PoseFormatError(ValueError):
    """A pose file or dict that cannot be used; the message names the file and the field."""


# ---- reading official .npy files without running pickled code -----------------------------------


# numpy's multiarray.scalar (module numpy.core or numpy._core depending on the version): builds a
# numpy scalar from a dtype and its raw bytes.
_NUMPY_SCALAR = np.float64(0).__reduce__()[0]
_PYTHON_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*")


class _RefusedCall:
    """Stands in for numpy.ndarray: only `_reconstruct` may use it, calling it directly is refused."""

    __slots__ = ("source",)  # nothing a pickled BUILD could set beyond the file name

    def __init__(self, source: str):
        self.source = source

    def __call__(self, *args, **kwargs):
        raise PoseFormatError(f"{self.source}: refused pickled call of numpy.ndarray (not how np.save writes arrays)")


class _PoseUnpickler(pickle.Unpickler):
    """Admits exactly the globals `np.save` writes for a dict of arrays (numpy 1.x and 2.x names)."""

    def __init__(self, file: BinaryIO, source: str):
        super().__init__(file)
        self.source = source
        self.ndarray_token = _RefusedCall(source)
        self.allowed = {
            ("numpy.core.multiarray", "_reconstruct"): self._reconstruct,
            ("numpy._core.multiarray", "_reconstruct"): self._reconstruct,
            ("numpy.core.multiarray", "scalar"): _NUMPY_SCALAR,
            ("numpy._core.multiarray", "scalar"): _NUMPY_SCALAR,
            ("numpy", "ndarray"): self.ndarray_token,
            ("numpy", "dtype"): np.dtype,
        }

    def _reconstruct(self, subtype, shape, dtype_code):
        # np.save always writes `_reconstruct(ndarray, (0,), b'b')` and fills the array in BUILD,
        # where numpy checks the data length against the shape: memory stays bounded by the file.
        if subtype is not self.ndarray_token or tuple(shape) != (0,):
            raise PoseFormatError(f"{self.source}: refused array construction (not how np.save writes arrays)")
        return np.ndarray((0,), dtype=np.dtype(dtype_code))

    def find_class(self, module: str, name: str):
        try:
            return self.allowed[(module, name)]
        except KeyError:
            # The name helps whoever wrote the file; anything that is not a short dotted name stays unquoted.
            named = f"{module}.{name}"
            shown = named if _PYTHON_NAME.fullmatch(named) and len(named) <= 100 else "(not a Python name)"
            raise PoseFormatError(
                f"{self.source}: refused pickled global {shown} "
                "(pose files may hold only dicts, lists, numbers, strings and numpy arrays)"
            ) from None

    def persistent_load(self, pid):
        raise PoseFormatError(f"{self.source}: refused pickled persistent id")


def _bytes_within(data: bytes | str | Path, limit: int, name: str) -> bytes:
    """The file's bytes, refusing (before reading, for a path) anything over `limit`."""
    size = Path(data).stat().st_size if isinstance(data, (str, Path)) else len(data)
    if size > limit:
        raise PoseFormatError(f"{name}: file is {size} bytes, more than the {limit} allowed")
    return Path(data).read_bytes() if isinstance(data, (str, Path)) else data


def read_pose_npy(data: bytes | str | Path, name: str) -> dict:
    """Read one official per-frame pose `.npy` (a pickled dict) without executing anything.

    `data` is the file's bytes or a local path; `name` is used in every error message.
    """
    stream = io.BytesIO(_bytes_within(data, MAX_POSE_FILE_BYTES, name))
    try:
        version = np.lib.format.read_magic(stream)
        if version == (1, 0):
            shape, _fortran, dtype = np.lib.format.read_array_header_1_0(stream)
        elif version == (2, 0):
            shape, _fortran, dtype = np.lib.format.read_array_header_2_0(stream)
        else:
            raise PoseFormatError(f"{name}: unsupported .npy format version {version}")
    except PoseFormatError:
        raise
    except Exception as error:
        raise PoseFormatError(f"{name}: not a .npy file ({type(error).__name__} reading its header)") from None
    if dtype != np.dtype(object) or shape != ():
        raise PoseFormatError(f"{name}: expected a pickled dict (object array of shape ()), found {dtype.str} {shape}")
    try:
        array = _PoseUnpickler(stream, name).load()
    except PoseFormatError:
        raise
    except Exception as error:
        raise PoseFormatError(f"{name}: corrupt pose pickle ({type(error).__name__})") from None
    if not isinstance(array, np.ndarray) or array.dtype != object or array.shape != ():
        raise PoseFormatError(f"{name}: pickle does not hold a 0-d object array")
    return validate_pose(array.item(), name)


# ---- validation ---------------------------------------------------------------------------------


def _float_array(value, shape: tuple[int, ...], field: str, name: str, bound: float) -> np.ndarray:
    try:
        array = np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError):
        raise PoseFormatError(f"{name}: {field} must be numeric, got {type(value).__name__}") from None
    if array.shape != shape:
        raise PoseFormatError(f"{name}: {field} must have shape {shape}, found {array.shape}")
    if not np.isfinite(array).all() or np.abs(array).max(initial=0) > bound:
        raise PoseFormatError(f"{name}: {field} must be finite numbers within +-{bound:g}")
    return array


def _draw_params(value, name: str) -> list[int]:
    if not isinstance(value, (list, tuple, np.ndarray)) or len(value) != 6:
        raise PoseFormatError(f"{name}: draw_pose_params must be 6 integers [imh, imw, rb, re, cb, ce], "
                              f"got {type(value).__name__}{f' of {len(value)}' if hasattr(value, '__len__') else ''}")
    if not all(isinstance(v, (int, np.integer)) and not isinstance(v, bool) for v in value):
        raise PoseFormatError(f"{name}: draw_pose_params must be integers, got {', '.join(type(v).__name__ for v in value)}")
    imh, imw, rb, re, cb, ce = (int(v) for v in value)
    side = max(re, ce)
    if not (imh >= 1 and imw >= 1 and rb >= 0 and cb >= 0 and re - rb == imh and ce - cb == imw):
        raise PoseFormatError(f"{name}: draw_pose_params {[imh, imw, rb, re, cb, ce]}: the box rb:re, cb:ce must be imh x imw at non-negative offsets")
    if side > MAX_BOX_SIDE or max(imh, imw) > MAX_ASPECT * min(imh, imw):
        raise PoseFormatError(f"{name}: draw_pose_params {[imh, imw, rb, re, cb, ce]} too large or too elongated")
    return [imh, imw, rb, re, cb, ce]


def validate_pose(pose, name: str) -> dict:
    """Check the fields the drawing uses; return the dict with them as float64 arrays / int list."""
    if not isinstance(pose, dict):
        raise PoseFormatError(f"{name}: a pose must be a dict, got {type(pose).__name__}")
    for key in ("hands", "hands_score", "draw_pose_params"):
        if key not in pose:
            raise PoseFormatError(f"{name}: missing key {key!r}")
    checked = dict(pose)
    checked["hands"] = _float_array(pose["hands"], (2, 21, 2), "hands", name, MAX_COORDINATE)
    checked["hands_score"] = _float_array(pose["hands_score"], (2, 21), "hands_score", name, MAX_COORDINATE)
    checked["draw_pose_params"] = _draw_params(pose["draw_pose_params"], name)
    return checked


# ---- pickle-free sequence format ----------------------------------------------------------------

_NPZ_FIELDS = ("hands", "hands_score", "draw_pose_params")
# Optional, all four or none: the body and face the official dicts carry (not drawn, but pose alignment
# anchors on them). Written when every pose has them.
_NPZ_ANCHOR_FIELDS = ("body", "body_score", "face", "face_score")
BODY_VISIBLE = 0.3  # the official `subset` lists body points scored above this


def _anchor_arrays(pose: dict) -> tuple[np.ndarray, ...] | None:
    bodies, faces, faces_score = pose.get("bodies"), pose.get("faces"), pose.get("faces_score")
    if not isinstance(bodies, dict) or faces is None or faces_score is None:
        return None
    try:
        arrays = (np.asarray(bodies["candidate"], dtype=np.float64).reshape(18, 2),
                  np.asarray(bodies["score"], dtype=np.float64).reshape(18),
                  np.asarray(faces, dtype=np.float64).reshape(68, 2),
                  np.asarray(faces_score, dtype=np.float64).reshape(68))
    except (KeyError, TypeError, ValueError):
        return None  # another layout (several people, ...): saved without anchors
    return arrays if all(np.isfinite(a).all() and np.abs(a).max(initial=0) <= MAX_COORDINATE for a in arrays) else None


def save_pose_npz(poses: list[dict], path_or_file: str | Path | BinaryIO) -> None:
    """Write a pose sequence as one compressed .npz of arrays stacked over frames (no pickles)."""
    if not poses:
        raise PoseFormatError("cannot save an empty pose sequence")
    checked = [validate_pose(pose, f"pose {i}") for i, pose in enumerate(poses)]
    arrays = {
        "hands": np.stack([p["hands"] for p in checked]),
        "hands_score": np.stack([p["hands_score"] for p in checked]),
        "draw_pose_params": np.array([p["draw_pose_params"] for p in checked], dtype=np.int64),
    }
    anchors = [_anchor_arrays(p) for p in checked]
    if all(a is not None for a in anchors):
        for field, column in zip(_NPZ_ANCHOR_FIELDS, zip(*anchors)):
            arrays[field] = np.stack(column)
    if isinstance(path_or_file, (str, Path)):
        with open(path_or_file, "wb") as file:  # np.savez would append ".npz" to other names
            np.savez_compressed(file, **arrays)
    else:
        np.savez_compressed(path_or_file, **arrays)


def load_pose_npz(data: bytes | str | Path | BinaryIO, name: str = "poses.npz") -> list[dict]:
    """Read a sequence written by `save_pose_npz` (allow_pickle=False; sizes checked before reading);
    with its body and face arrays, the dicts get official `bodies`, `faces`, `faces_score` back."""
    stream = data if hasattr(data, "read") else io.BytesIO(_bytes_within(data, MAX_POSE_NPZ_BYTES, name))
    try:
        with zipfile.ZipFile(stream) as archive:
            members = {info.filename: info.file_size for info in archive.infolist()}
        required = {f"{field}.npy" for field in _NPZ_FIELDS}
        with_anchors = required | {f"{field}.npy" for field in _NPZ_ANCHOR_FIELDS}
        if set(members) not in (required, with_anchors):
            raise PoseFormatError(f"{name}: expected exactly the arrays {list(_NPZ_FIELDS)} (optionally with all of "
                                  f"{list(_NPZ_ANCHOR_FIELDS)}), found another set of {len(members)} member(s)")
        if sum(members.values()) > MAX_POSE_NPZ_BYTES:  # declared sizes bound what zipfile will inflate
            raise PoseFormatError(f"{name}: arrays unpack to more than {MAX_POSE_NPZ_BYTES} bytes")
        stream.seek(0)
        with np.load(stream, allow_pickle=False) as npz:
            arrays = {field: npz[field] for field in npz.files if field in _NPZ_FIELDS + _NPZ_ANCHOR_FIELDS}
    except PoseFormatError:
        raise
    except Exception as error:
        raise PoseFormatError(f"{name}: not a pose .npz ({type(error).__name__})") from None
    n = len(arrays["hands"])
    expected = {"hands": (n, 2, 21, 2), "hands_score": (n, 2, 21), "draw_pose_params": (n, 6)}
    for field, shape in expected.items():
        if arrays[field].shape != shape:
            raise PoseFormatError(f"{name}: {field} must have shape {shape}, found {arrays[field].shape}")
    if n == 0:
        raise PoseFormatError(f"{name}: holds no frames")
    if not np.issubdtype(arrays["draw_pose_params"].dtype, np.integer):
        raise PoseFormatError(f"{name}: draw_pose_params must be integers, found {arrays['draw_pose_params'].dtype}")
    has_anchors = "body" in arrays
    if has_anchors:
        shapes = {"body": (n, 18, 2), "body_score": (n, 18), "face": (n, 68, 2), "face_score": (n, 68)}
        for field, shape in shapes.items():
            arrays[field] = _float_array(arrays[field], shape, field, name, MAX_COORDINATE)
    poses = []
    for i in range(n):
        pose = {"hands": arrays["hands"][i], "hands_score": arrays["hands_score"][i],
                "draw_pose_params": arrays["draw_pose_params"][i].tolist(), "num": i}
        if has_anchors:
            score = arrays["body_score"][i][None, :]
            pose["bodies"] = {"candidate": arrays["body"][i], "score": score,
                              "subset": np.where(score > BODY_VISIBLE, np.arange(18.0), -1.0)}
            pose["faces"] = arrays["face"][i][None]
            pose["faces_score"] = arrays["face_score"][i][None]
        poses.append(validate_pose(pose, f"{name} frame {i}"))
    return poses


# ---- drawing (draw_pose_select_v2 + the paste of infer.py) --------------------------------------


def _draw_hands(canvas_bgr: np.ndarray, hands: np.ndarray, scores: np.ndarray) -> None:
    """Bones then joints, hand by hand, into a canvas the official code treats as BGR."""
    height, width = canvas_bgr.shape[:2]
    for peaks, peak_scores in zip(hands, scores):
        pixels = [(int(x * width), int(y * height)) for x, y in peaks]  # truncation, as int()
        for edge_index, (a, b) in enumerate(HAND_EDGES):
            (x1, y1), (x2, y2) = pixels[a], pixels[b]
            if min(x1, y1, x2, y2) > MIN_PIXEL:
                strength = int(peak_scores[a] * peak_scores[b] * 255)
                rgb = colorsys.hsv_to_rgb(edge_index / len(HAND_EDGES), 1.0, 1.0)
                # The RGB triple lands in B, G, R order: reversed in the final RGB image (spec §8.2).
                colour = tuple(channel * strength for channel in rgb)
                cv2.line(canvas_bgr, (x1, y1), (x2, y2), colour, thickness=BONE_THICKNESS, lineType=cv2.LINE_8)
        for (x, y), score in zip(pixels, peak_scores):
            if x > MIN_PIXEL and y > MIN_PIXEL:
                cv2.circle(canvas_bgr, (x, y), JOINT_RADIUS, (0, 0, int(score * 255)), thickness=-1)


def render_pose(pose: dict, width: int, height: int) -> np.ndarray:
    """The conditioning image of one pose: uint8 (height, width, 3) RGB, hands only (spec §8.2-8.3).

    The hands are drawn on a canvas whose short side is 800 px, resized (bilinear) into the box
    rows rb:re, cols cb:ce of a black image. The box is given on a square of side max(re, ce)
    (768 for official data); for another output size it is scaled to width x height, so at
    768x768 with official params this is exactly the official image. For a square output the
    canvas has the official imh x imw shape; for a non-square one (where the official code's (W, H)
    canvas is wrong) it has the box's shape in the output, so joints stay round and bones 2 px thick.
    """
    if not (isinstance(width, int) and isinstance(height, int) and 1 <= width <= MAX_BOX_SIDE and 1 <= height <= MAX_BOX_SIDE):
        raise ValueError(f"pose image size must be positive integers up to {MAX_BOX_SIDE}, got {width}x{height}")
    pose = validate_pose(pose, "pose")
    imh, imw, rb, re, cb, ce = pose["draw_pose_params"]
    side = max(re, ce)
    top, bottom = round(rb * height / side), round(re * height / side)
    left, right = round(cb * width / side), round(ce * width / side)
    canvas_height, canvas_width = (imh, imw) if width == height else (max(bottom - top, 1), max(right - left, 1))
    scale = DRAW_REFERENCE_SIDE / min(canvas_height, canvas_width)
    canvas = np.zeros((int(canvas_height * scale), int(canvas_width * scale), 3), dtype=np.uint8)
    _draw_hands(canvas, pose["hands"], pose["hands_score"])
    image = np.zeros((height, width, 3), dtype=np.uint8)
    if bottom > top and right > left:
        drawn = cv2.resize(canvas, (right - left, bottom - top), interpolation=cv2.INTER_LINEAR)
        image[top:bottom, left:right] = cv2.cvtColor(drawn, cv2.COLOR_BGR2RGB)
    return image


# ---- built-in gesture loop ----------------------------------------------------------------------

# A relaxed right-pointing hand, wrist at the origin: (along the hand, across it), in units of the
# pose box. Thumb on the negative side; fingers 4 points each from the knuckle outwards.
_HAND_TEMPLATE = np.array([
    (0.000, 0.000),
    (0.025, -0.025), (0.045, -0.045), (0.062, -0.058), (0.078, -0.066),
    (0.075, -0.022), (0.105, -0.026), (0.125, -0.028), (0.142, -0.029),
    (0.078, -0.004), (0.112, -0.004), (0.134, -0.004), (0.152, -0.004),
    (0.074, 0.013), (0.104, 0.016), (0.124, 0.018), (0.140, 0.019),
    (0.067, 0.028), (0.090, 0.033), (0.105, 0.036), (0.118, 0.038),
]) * 1.25  # wrist to middle fingertip ~0.19 of the box, as in the official half-body demos
_KNUCKLES = np.array([1, 5, 9, 13, 17])
GESTURE_LOOP_SECONDS = 12.0  # every motion period below divides it


def hand_points(wrist: np.ndarray, angle: float, curl: float, mirrored: bool) -> np.ndarray:
    """Place the template: fingers shortened by `curl` (flexion seen from the front), rotated, moved."""
    points = _HAND_TEMPLATE.copy()
    for knuckle in _KNUCKLES:
        finger = slice(knuckle, knuckle + 4)
        points[finger] = points[knuckle] + (points[finger] - points[knuckle]) * (1.0 - 0.45 * curl)
    cos, sin = math.cos(angle), math.sin(angle)
    along, across = points[:, 0], points[:, 1]
    offset = np.stack([along * cos - across * sin, along * sin + across * cos], axis=1)
    if mirrored:
        offset[:, 0] = -offset[:, 0]
    return wrist + offset


def default_pose_sequence(n_frames: int, fps: float) -> list[dict]:
    """The project's own gesture loop: two hands in front of the lower torso, moving slowly.

    Deterministic in (frame, fps); loops every 12 s; each hand sways, tilts and opens/closes on
    its own slow periods (3-12 s), with coordinates well inside [0, 1] of a half-body framing.
    """
    if not (isinstance(fps, (int, float)) and math.isfinite(fps) and fps > 0):
        raise ValueError(f"fps must be a positive number, got {fps!r}")
    if n_frames < 0:
        raise ValueError(f"n_frames must be >= 0, got {n_frames}")
    poses = []
    for i in range(n_frames):
        phase = 2 * math.pi * (i / fps) / GESTURE_LOOP_SECONDS  # one turn per loop
        hands = []
        for hand, (x0, shift) in enumerate(((0.27, 0.0), (0.73, 1.7))):
            wrist = np.array([
                x0 + 0.025 * math.sin(3 * phase + shift),  # 4 s sideways sway
                0.855 + 0.035 * math.sin(2 * phase + 0.5 + shift),  # 6 s rise and fall
            ])
            angle = math.radians(-20.0 + 10.0 * math.sin(4 * phase + 1.0 + shift))  # 3 s tilt
            curl = 0.5 + 0.4 * math.sin(phase + shift)  # 12 s open/close
            hands.append(hand_points(wrist, angle, curl, mirrored=hand == 1))
        poses.append({
            "hands": np.array(hands),
            "hands_score": np.ones((2, 21)),
            "draw_pose_params": list(OFFICIAL_DRAW_PARAMS),
            "num": i,
        })
    return poses


def extend_poses(poses: list[dict], n_frames: int) -> list[dict]:
    """Exactly n_frames poses: the sequence cut, or played forwards and backwards (0..k-1, k-2..1, 0..)."""
    if not poses:
        raise ValueError("cannot extend an empty pose sequence")
    if n_frames < 0:
        raise ValueError(f"n_frames must be >= 0, got {n_frames}")
    count = len(poses)
    if count == 1:
        return [poses[0]] * n_frames
    period = 2 * count - 2
    return [poses[i % period if i % period < count else period - i % period] for i in range(n_frames)]
