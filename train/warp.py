"""Landmark-driven geometry: piecewise-affine warps on the 68 points, mirroring, and random deformations
that multiply expressions, poses and face shapes from a handful of photos.

All coordinates are crop pixels with pixel centres at integer positions (OpenCV's convention, the
same as :mod:`sdgan_stream.align`).
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np
from scipy.spatial import Delaunay

from sdgan_stream.align import similarity_transform

__all__ = [
    "MIRROR_68",
    "DeformConfig",
    "anchor_points",
    "face_warp_maps",
    "mirror_face",
    "mirror_labels",
    "piecewise_affine_maps",
    "random_deformation",
    "remap",
    "warp_image",
]

# iBUG 68-point index of each point's mirror image (left <-> right).
MIRROR_68 = np.array(
    list(range(16, -1, -1))  # jaw
    + list(range(26, 21, -1)) + list(range(21, 16, -1))  # brows
    + [27, 28, 29, 30] + [35, 34, 33, 32, 31]  # nose
    + [45, 44, 43, 42, 47, 46] + [39, 38, 37, 36, 41, 40]  # eyes
    + [54, 53, 52, 51, 50, 49, 48, 59, 58, 57, 56, 55]  # outer lips
    + [64, 63, 62, 61, 60, 67, 66, 65],  # inner lips
    np.intp,
)


def mirror_face(image: np.ndarray, landmarks: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Horizontally flipped image and its landmarks, re-indexed so point i is still point i's role."""
    size = image.shape[1]
    flipped = np.ascontiguousarray(image[:, ::-1])
    pts = np.asarray(landmarks, np.float64).copy()
    pts[:, 0] = size - 1 - pts[:, 0]
    return flipped, pts[MIRROR_68]


def anchor_points(size: int, landmarks: np.ndarray | None = None, *, per_side: int = 4) -> np.ndarray:
    """Fixed points on the crop border (and just outside) that pin the background during a warp."""
    edge = np.linspace(-1.0, size, per_side + 1)
    border = np.concatenate(
        [
            np.stack([edge, np.full_like(edge, -1.0)], 1),
            np.stack([np.full_like(edge, size), edge], 1),
            np.stack([edge[::-1], np.full_like(edge, size)], 1),
            np.stack([np.full_like(edge, -1.0), edge[::-1]], 1),
        ]
    )
    return np.unique(np.round(border, 4), axis=0)


def _head_ring(landmarks: np.ndarray, scale: float = 1.35) -> np.ndarray:
    """Points around the head (jaw and a forehead arc pushed outward) so hair and neck follow the face."""
    p = np.asarray(landmarks, np.float64)
    centre = p[[27, 28, 29, 30, 33]].mean(0)
    jaw = centre + (p[0:17] - centre) * scale
    brow = p[17:27]
    up = brow.mean(0) - p[8]
    top = brow + 0.55 * up[None, :]
    top = centre + (top - centre) * scale
    return np.concatenate([jaw, top[[0, 2, 4, 5, 7, 9]]])


def piecewise_affine_maps(src_points: np.ndarray, dst_points: np.ndarray, size: int) -> tuple[np.ndarray, np.ndarray]:
    """``cv2.remap`` maps that move ``src_points`` onto ``dst_points`` (triangulated on the destination).

    Triangles are rasterized into an index image and each pixel takes its triangle's affine map: a few
    milliseconds at 128 px, fast enough to run inside the training loop.
    """
    dst = np.asarray(dst_points, np.float64)
    src = np.asarray(src_points, np.float64)
    simplices = Delaunay(dst).simplices
    # Per-triangle affine (dst -> src): solve [x y 1] @ A = [x' y'] for the three vertices.
    ones = np.ones((len(simplices), 3, 1))
    dst_h = np.concatenate([dst[simplices], ones], 2)  # (T, 3, 3)
    det = np.linalg.det(dst_h)
    valid = np.abs(det) > 1e-9
    affines = np.zeros((len(simplices), 3, 2))
    affines[valid] = np.linalg.solve(dst_h[valid], src[simplices][valid])
    index = np.full((size, size), -1, np.int32)
    shift = 4
    for t in np.nonzero(valid)[0]:
        pts = np.round(dst[simplices[t]] * (1 << shift)).astype(np.int32).reshape(-1, 1, 2)
        cv2.fillConvexPoly(index, pts, int(t), lineType=cv2.LINE_8, shift=shift)
    ys, xs = np.mgrid[0:size, 0:size].astype(np.float64)
    flat = index.ravel()
    inside = flat >= 0
    a = affines[np.where(inside, flat, 0)]  # (N, 3, 2)
    xf, yf = xs.ravel(), ys.ravel()
    mx = np.where(inside, xf * a[:, 0, 0] + yf * a[:, 1, 0] + a[:, 2, 0], xf)
    my = np.where(inside, xf * a[:, 0, 1] + yf * a[:, 1, 1] + a[:, 2, 1], yf)
    return mx.reshape(size, size).astype(np.float32), my.reshape(size, size).astype(np.float32)


def face_warp_maps(src_landmarks: np.ndarray, dst_landmarks: np.ndarray, size: int) -> tuple[np.ndarray, np.ndarray]:
    """The ``cv2.remap`` maps of :func:`warp_image` (to warp several arrays of one crop alike)."""
    src = np.concatenate([src_landmarks, _head_ring(src_landmarks), anchor_points(size)])
    dst = np.concatenate([dst_landmarks, _head_ring(dst_landmarks), anchor_points(size)])
    return piecewise_affine_maps(src, dst, size)


def remap(image: np.ndarray, maps: tuple[np.ndarray, np.ndarray], interpolation: int = cv2.INTER_LINEAR) -> np.ndarray:
    return cv2.remap(image, maps[0], maps[1], interpolation, borderMode=cv2.BORDER_REFLECT101)


def warp_image(
    image: np.ndarray,
    src_landmarks: np.ndarray,
    dst_landmarks: np.ndarray,
    *,
    interpolation: int = cv2.INTER_LINEAR,
) -> np.ndarray:
    """Warp an aligned crop so its face moves from ``src_landmarks`` to ``dst_landmarks``.

    The surroundings follow through a ring of head points and the crop border stays pinned.
    """
    return remap(image, face_warp_maps(src_landmarks, dst_landmarks, image.shape[0]), interpolation)


def mirror_labels(labels: np.ndarray) -> np.ndarray:
    """A class map flipped horizontally, left/right classes swapped (``l_eye`` stays the image-left eye)."""
    from sdgan_stream.semantic import CLASS_NAMES, class_id

    lut = np.arange(len(CLASS_NAMES), dtype=np.uint8)
    for part in ("eye", "brow"):
        lut[class_id(f"l_{part}")], lut[class_id(f"r_{part}")] = class_id(f"r_{part}"), class_id(f"l_{part}")
    return np.ascontiguousarray(lut[labels[:, ::-1]])


@dataclass(frozen=True)
class DeformConfig:
    """Ranges of the random deformations, in eye distances (ipd) unless said otherwise."""

    shape_mix: tuple[float, float] = (-0.6, 1.2)  # blend towards / beyond another face's shape
    jaw_width: tuple[float, float] = (0.88, 1.12)  # factor
    chin_drop: tuple[float, float] = (-0.08, 0.12)
    mouth_open_prob: float = 0.35
    mouth_open: tuple[float, float] = (0.05, 0.3)
    smile: tuple[float, float] = (-0.06, 0.12)
    mouth_width: tuple[float, float] = (0.88, 1.12)  # factor
    eye_open: tuple[float, float] = (0.55, 1.45)  # factor on the lid opening
    brow_raise: tuple[float, float] = (-0.06, 0.12)
    nose_length: tuple[float, float] = (0.9, 1.12)  # factor
    yaw_shift: tuple[float, float] = (-0.12, 0.12)  # inner features slide sideways inside the outline
    rotation_deg: tuple[float, float] = (-6.0, 6.0)
    scale: tuple[float, float] = (0.95, 1.05)
    shift: tuple[float, float] = (-0.025, 0.025)  # fraction of the crop size


def _frame(p: np.ndarray) -> tuple[np.ndarray, np.ndarray, float]:
    axis = p[42:48].mean(0) - p[36:42].mean(0)
    ipd = float(np.hypot(*axis))
    right = axis / max(ipd, 1e-6)
    return right, np.array([-right[1], right[0]]), ipd


def random_deformation(
    landmarks: np.ndarray,
    rng: np.random.Generator,
    *,
    size: int,
    other_shapes: list[np.ndarray] | None = None,
    config: DeformConfig = DeformConfig(),
) -> np.ndarray:
    """A new plausible 68-point geometry derived from ``landmarks`` (new expression, pose, face shape)."""
    c = config
    p = np.asarray(landmarks, np.float64).copy()
    u = lambda r: float(rng.uniform(*r))  # noqa: E731 - short local sampler
    if other_shapes:
        other = np.asarray(other_shapes[int(rng.integers(len(other_shapes)))], np.float64)
        m = similarity_transform(other, p)
        other_aligned = other @ m[:, :2].T + m[:, 2]
        p = p + u(c.shape_mix) * (other_aligned - p)
    right, down, ipd = _frame(p)
    centre = p[27:36].mean(0)

    def move(ids: list[int] | np.ndarray, dx: float = 0.0, dy: float = 0.0) -> None:
        p[ids] += dx * ipd * right + dy * ipd * down

    # Face shape: jaw width and chin length.
    jaw = np.arange(0, 17)
    rel = (p[jaw] - centre) @ right
    p[jaw] += np.outer(rel * (u(c.jaw_width) - 1), right)
    chin_weight = np.exp(-((jaw - 8) ** 2) / 8.0)
    p[jaw] += np.outer(chin_weight * u(c.chin_drop) * ipd, down)
    # Mouth: width, smile, opening (jaw follows the lower lip).
    mouth = np.arange(48, 68)
    mc = p[mouth].mean(0)
    rel = (p[mouth] - mc) @ right
    p[mouth] += np.outer(rel * (u(c.mouth_width) - 1), right)
    smile = u(c.smile)
    move([48, 60], dx=-0.3 * smile, dy=-smile)
    move([54, 64], dx=0.3 * smile, dy=-smile)
    move([49, 53, 59, 55, 61, 63, 65, 67], dy=-0.4 * smile)
    if rng.random() < c.mouth_open_prob:
        gap = u(c.mouth_open)
        move([65, 66, 67], dy=gap)
        move([55, 56, 57, 58, 59], dy=gap)
        move([61, 62, 63], dy=-0.1 * gap)
        p[jaw] += np.outer(chin_weight * 0.8 * gap * ipd, down)
    # Eyes: lid opening around each eye's centre line.
    for lids_up, lids_down, ids in (([37, 38], [40, 41], range(36, 42)), ([43, 44], [46, 47], range(42, 48))):
        eye_c = p[list(ids)].mean(0)
        factor = u(c.eye_open)
        for i in lids_up + lids_down:
            off = (p[i] - eye_c) @ down
            p[i] += (factor - 1) * off * down
    # Brows, nose.
    raise_ = u(c.brow_raise)
    move(np.arange(17, 27), dy=-raise_)
    nose_top = p[27].copy()
    p[28:36] = nose_top + (p[28:36] - nose_top) * u(c.nose_length)
    # Pose-like: inner features slide sideways inside the outline (a small yaw).
    inner = np.arange(17, 68)
    move(inner, dx=u(c.yaw_shift))
    move([30, 33], dx=0.3 * u(c.yaw_shift))
    # Global similarity jitter (alignment noise of the 5-point detector).
    angle = np.radians(u(c.rotation_deg))
    scale = u(c.scale)
    rot = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]]) * scale
    pivot = np.array([size / 2, size / 2])
    shift = np.array([u(c.shift), u(c.shift)]) * size
    return (p - pivot) @ rot.T + pivot + shift
