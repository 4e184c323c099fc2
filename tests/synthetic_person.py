"""Deterministic driving frames: skimage's astronaut photo (a real half-body portrait) with a drawn
open hand beside her, moved along a known path of affine maps."""
from __future__ import annotations

import cv2
import numpy as np

SKIN = (224, 172, 140)
SIZE = 384  # frames are SIZE x SIZE


def astronaut() -> np.ndarray:
    from skimage import data

    return data.astronaut()


def draw_open_hand(canvas: np.ndarray, centre, scale: float) -> None:
    """A flat-shaded raised right-facing open hand (palm, forearm, five fingers) that MediaPipe's palm
    detector finds once blurred; `centre` is the middle of the palm's base."""
    origin = np.asarray(centre, dtype=np.float64)

    def at(x, y):
        return tuple(int(v) for v in (origin + np.array([x, y]) * scale).round())

    cv2.fillConvexPoly(canvas, np.array([at(-28, 160), at(28, 160), at(34, 40), at(-34, 40)]), SKIN, cv2.LINE_AA)
    cv2.fillConvexPoly(canvas, np.array([at(-40, 40), at(40, 40), at(48, -20), at(44, -60), at(-44, -60), at(-48, -10)]),
                       SKIN, cv2.LINE_AA)
    fingers = [((-44, -20), (-80, -70), 21), ((-33, -58), (-38, -135), 24), ((-11, -60), (-11, -150), 24),
               ((11, -60), (12, -140), 24), ((33, -55), (38, -115), 20)]
    for start, end, width in fingers:
        cv2.line(canvas, at(*start), at(*end), SKIN, max(1, int(width * scale)), cv2.LINE_AA)
        for t in (0.35, 0.65):  # knuckle creases
            x, y = np.array(start) + (np.array(end) - np.array(start)) * t
            cv2.line(canvas, at(x - width / 3, y), at(x + width / 3, y), (196, 140, 110), 1, cv2.LINE_AA)
        cv2.circle(canvas, at(*end), max(1, int(width * scale * 0.35)), (236, 196, 176), -1, cv2.LINE_AA)


def path_matrix(i: int, n: int) -> np.ndarray:
    """Frame i's affine map of the source picture: scale 0.85 -> 1.0 about the centre, drift right/up."""
    t = i / max(n - 1, 1)
    scale = 0.85 + 0.15 * t
    centre = SIZE / 2
    return np.array([[scale, 0.0, 30 * t + (1 - scale) * centre], [0.0, scale, -20 * t + (1 - scale) * centre]])


def source_picture(with_hand: bool = True) -> np.ndarray:
    """The astronaut at SIZE x SIZE with (optionally) a hand raised at the image's right (her left)."""
    picture = cv2.resize(astronaut(), (SIZE, SIZE), interpolation=cv2.INTER_AREA)
    if with_hand:
        draw_open_hand(picture, (0.82 * SIZE, 0.45 * SIZE), 0.8)
    return cv2.GaussianBlur(picture, (0, 0), 1.2)  # the palm detector wants soft edges, not flat polygons


def driving_frames(n: int, with_hand: bool = True) -> list[np.ndarray]:
    picture = source_picture(with_hand)
    return [cv2.warpAffine(picture, path_matrix(i, n), (SIZE, SIZE), flags=cv2.INTER_LINEAR,
                           borderMode=cv2.BORDER_CONSTANT, borderValue=(128, 128, 128)) for i in range(n)]
