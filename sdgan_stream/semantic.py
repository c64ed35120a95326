"""The facial semantic map: 11 classes (CelebAMask-HQ names, after the SDGAN paper) rasterized from
dlib's 68 landmarks, one-hot for the generator.

No face-parsing network is available offline, so every class is drawn from landmark geometry:

* ``skin``: the whole face region (jawline hull extended over the forehead) minus the features. dlib has
  no forehead points, so the forehead is an elliptic arc over the brows reaching
  ``FOREHEAD_EXTENT`` x the brow-to-nose-tip distance above the brows, along the face's own up axis.
  Identity lives in the outline, jaw and forehead too, so all of it belongs to the replaced region.
* ``l_brow`` / ``r_brow``: the brow contour thickened downward, tapering at the outer end.
* ``l_eye`` / ``r_eye``: the eye contour, at least one pixel tall so a blink keeps the class.
* ``nose``: bridge from between the eyes to the nostril wings.
* ``u_lip`` / ``l_lip``: between the outer and inner lip contours.
* ``mouth``: the inner mouth, drawn only when the lips part (empty when closed).
* ``hair``: never drawn. The landmarks say nothing honest about hair; what lies above the forehead arc is
  left as ``background`` (the original context the generator inpaints against). The class keeps its
  channel so maps stay compatible with the paper's 11-class layout.

``l_`` / ``r_`` are image-left / image-right, the convention of :mod:`sdgan_stream.types` (dlib points
17-21 and 36-41 are the image-left brow and eye).

>>> import numpy as np
>>> from sdgan_stream.semantic import mean_face_landmarks, rasterize_semantic_map, classes_present
>>> labels = rasterize_semantic_map(mean_face_landmarks(128), 128)
>>> classes_present(labels)
['background', 'skin', 'l_brow', 'r_brow', 'l_eye', 'r_eye', 'nose', 'u_lip', 'l_lip']
"""

from __future__ import annotations

import cv2
import numpy as np

from .align import DEFAULT_MARGIN, similarity_transform, template_points

__all__ = [
    "ALWAYS_VISIBLE",
    "CLASS_NAMES",
    "FOREHEAD_EXTENT",
    "PALETTE",
    "class_id",
    "classes_present",
    "colorize",
    "face_outline",
    "face_region",
    "mean_face_landmarks",
    "mouth_opening",
    "one_hot",
    "rasterize_semantic_map",
]

CLASS_NAMES: tuple[str, ...] = (
    "background",
    "skin",
    "l_brow",
    "r_brow",
    "l_eye",
    "r_eye",
    "nose",
    "u_lip",
    "mouth",
    "l_lip",
    "hair",
)
# Present on every frontal face the rasterizer draws (mouth needs parted lips, hair is never drawn).
ALWAYS_VISIBLE: tuple[str, ...] = ("skin", "l_brow", "r_brow", "l_eye", "r_eye", "nose", "u_lip", "l_lip")

# The CelebAMask-HQ visualisation colours (its g_mask/g_color scripts), per class name, RGB.
PALETTE = np.array(
    [
        [0, 0, 0],  # background
        [204, 0, 0],  # skin
        [0, 255, 255],  # l_brow
        [255, 204, 204],  # r_brow
        [51, 51, 255],  # l_eye
        [204, 0, 204],  # r_eye
        [76, 153, 0],  # nose
        [255, 255, 0],  # u_lip
        [102, 204, 0],  # mouth
        [0, 0, 153],  # l_lip
        [0, 0, 204],  # hair
    ],
    np.uint8,
)

FOREHEAD_EXTENT = 0.75  # forehead top above the brows, in brow-to-nose-tip distances (~hairline at 1.0)
_SHIFT = 4  # fixed-point bits for sub-pixel polygon filling
_MOUTH_OPEN = 0.04  # mean inner-lip gap, in eye distances, below which the mouth counts as closed
# Brow thickness from the outer to the inner end (points 17..21 / 26..22), in eye distances.
_BROW_THICKNESS = np.array([0.07, 0.11, 0.13, 0.14, 0.13])


def class_id(name: str) -> int:
    """Index of a class name in :data:`CLASS_NAMES`."""
    return CLASS_NAMES.index(name)


def _frame(points: np.ndarray) -> tuple[np.ndarray, np.ndarray, float]:
    """Right axis, down axis (unit vectors) and eye distance of a 68-point face."""
    axis = points[42:48].mean(0) - points[36:42].mean(0)
    ipd = float(np.hypot(*axis))
    if ipd < 1e-6:
        raise ValueError("degenerate landmarks: the two eyes coincide")
    right = axis / ipd
    return right, np.array([-right[1], right[0]]), ipd


def face_outline(landmarks68: np.ndarray, *, forehead: float = FOREHEAD_EXTENT) -> np.ndarray:
    """Closed polygon (N, 2) of the whole face: jawline, then an arc over the forehead.

    The arc runs from the image-right jaw end (point 16) over the top to the image-left end (point 0);
    its apex lies ``forehead`` x (brow-to-nose-tip distance) above the highest brow point, measured
    along the face's up axis, so it follows head roll. Across the face the apex sits above the top of
    the nose bridge (point 27), not halfway between the jaw ends: on a turned head the forehead's
    middle turns with the nose, and the far side of the arc stays as high as the near side.
    """
    p = np.asarray(landmarks68, np.float64)
    right, down, _ = _frame(p)
    brows = p[17:27]
    brow_top = float((brows @ down).min())
    nose_drop = float(p[30] @ down - (brows @ down).mean())
    apex_v = brow_top - forehead * max(nose_drop, 0.0)
    u0, v0 = float(p[0] @ right), float(p[0] @ down)
    u16, v16 = float(p[16] @ right), float(p[16] @ down)
    theta = np.linspace(0.0, np.pi, 25)[1:-1]  # 16 -> top -> 0, endpoints are the jaw points themselves
    apex_u = float(np.clip(p[27] @ right, min(u0, u16), max(u0, u16)))
    base_v = v16 + (v0 - v16) * theta / np.pi
    height = np.maximum(base_v - apex_v, 0.0)
    # two quarter ellipses meeting at the apex: 16 -> apex, then apex -> 0
    arc_u = apex_u + np.where(theta < np.pi / 2, u16 - apex_u, apex_u - u0) * np.cos(theta)
    arc_v = base_v - height * np.sin(theta)
    arc = np.outer(arc_u, right) + np.outer(arc_v, down)
    return np.concatenate([p[0:17], arc])


def face_region(landmarks68: np.ndarray, size: int, *, forehead: float = FOREHEAD_EXTENT) -> np.ndarray:
    """Boolean (size, size) mask of the face region: convex hull of the outline and all 68 points (on a
    turned head the nose tip or a brow end can stand outside the jaw line; frontal, they lie inside)."""
    p = np.asarray(landmarks68, np.float64)
    hull = cv2.convexHull(np.concatenate([face_outline(p, forehead=forehead), p]).astype(np.float32))
    mask = np.zeros((size, size), np.uint8)
    _fill(mask, hull.reshape(-1, 2), 1)
    return mask.astype(bool)


def mouth_opening(landmarks68: np.ndarray) -> float:
    """Mean gap between the inner upper and lower lip, in eye distances (0 when closed)."""
    p = np.asarray(landmarks68, np.float64)
    _, down, ipd = _frame(p)
    gaps = (p[[67, 66, 65]] - p[[61, 62, 63]]) @ down
    return float(np.clip(gaps, 0, None).mean() / ipd)


def _fill(canvas: np.ndarray, polygon: np.ndarray, value: int) -> None:
    pts = np.round(np.asarray(polygon, np.float64) * (1 << _SHIFT)).astype(np.int32).reshape(-1, 1, 2)
    cv2.fillPoly(canvas, [pts], int(value), lineType=cv2.LINE_8, shift=_SHIFT)


def _outline(canvas: np.ndarray, polygon: np.ndarray, value: int) -> None:
    # A 1-px closed outline on top of the fill, so thin shapes (a blinking eye) never vanish.
    pts = np.round(np.asarray(polygon, np.float64) * (1 << _SHIFT)).astype(np.int32).reshape(-1, 1, 2)
    cv2.polylines(canvas, [pts], True, int(value), thickness=1, lineType=cv2.LINE_8, shift=_SHIFT)


def rasterize_semantic_map(landmarks68: np.ndarray, size: int) -> np.ndarray:
    """(size, size) uint8 class ids from 68 landmarks given in crop pixel coordinates.

    Pixel centres are at integer coordinates (OpenCV's convention, same as :mod:`sdgan_stream.align`).
    """
    p = np.asarray(landmarks68, np.float64)
    if p.shape != (68, 2) or not np.all(np.isfinite(p)):
        raise ValueError(f"expected finite (68, 2) landmarks, got {p.shape}")
    if size < 8:
        raise ValueError(f"map size must be at least 8 px, got {size}")
    right, down, ipd = _frame(p)
    labels = np.zeros((size, size), np.uint8)
    labels[face_region(p, size)] = class_id("skin")

    # Nose: bridge from between the eyes, widening to the nostril wings.
    bridge = [p[i] + side * w * ipd * right for i, w in ((27, 0.09), (28, 0.12), (29, 0.16)) for side in (-1, 1)]
    wings = [p[31] - 0.10 * ipd * right, p[35] + 0.10 * ipd * right, p[33] + 0.03 * ipd * down]
    nose = np.concatenate([np.asarray(bridge), p[27:36], np.asarray(wings)])
    _fill(labels, cv2.convexHull(nose.astype(np.float32)).reshape(-1, 2), class_id("nose"))

    # Brows: the annotated contour, thickened downward (a sliver above, for the contour's own width).
    for ids, name in ((np.arange(17, 22), "l_brow"), (np.arange(26, 21, -1), "r_brow")):
        top = p[ids] - 0.03 * ipd * down
        bottom = p[ids] + (_BROW_THICKNESS * ipd)[:, None] * down
        polygon = np.concatenate([top, bottom[::-1]])
        _fill(labels, polygon, class_id(name))
        _outline(labels, polygon, class_id(name))

    for ids, name in ((range(36, 42), "l_eye"), (range(42, 48), "r_eye")):
        _fill(labels, p[list(ids)], class_id(name))
        _outline(labels, p[list(ids)], class_id(name))

    upper = p[[48, 49, 50, 51, 52, 53, 54, 64, 63, 62, 61, 60]]
    lower = p[[54, 55, 56, 57, 58, 59, 48, 60, 67, 66, 65, 64]]
    _fill(labels, upper, class_id("u_lip"))
    _outline(labels, upper, class_id("u_lip"))
    _fill(labels, lower, class_id("l_lip"))
    _outline(labels, lower, class_id("l_lip"))
    if mouth_opening(p) >= _MOUTH_OPEN:
        _fill(labels, p[60:68], class_id("mouth"))
    return labels


def one_hot(labels: np.ndarray, num_classes: int = len(CLASS_NAMES)) -> np.ndarray:
    """(C, H, W) float32 one-hot encoding of an (H, W) label map (or (N, C, H, W) for (N, H, W))."""
    labels = np.asarray(labels)
    if labels.size and int(labels.max()) >= num_classes:
        raise ValueError(f"label {int(labels.max())} out of range for {num_classes} classes")
    eye = np.eye(num_classes, dtype=np.float32)
    encoded = eye[labels.astype(np.intp)]  # (..., H, W, C)
    return np.moveaxis(encoded, -1, -3).copy()


def colorize(labels: np.ndarray) -> np.ndarray:
    """RGB uint8 picture of a label map, for people."""
    return PALETTE[np.asarray(labels, np.intp)]


def classes_present(labels: np.ndarray) -> list[str]:
    """Names of the classes that occur in the map, in :data:`CLASS_NAMES` order."""
    ids = np.unique(np.asarray(labels))
    return [CLASS_NAMES[i] for i in ids if i < len(CLASS_NAMES)]


# A neutral frontal face: dlib's fit on astronaut + grace_hopper, mirrored and averaged, inner lips
# closed; in eye distances around the eye midpoint (x right, y down). For doc tests, synthetic tests, tools.
_MEAN_FACE_UNIT = (
    (-1.052, 0.074), (-1.030, 0.355), (-0.978, 0.607), (-0.926, 0.874),
    (-0.852, 1.126), (-0.711, 1.363), (-0.504, 1.540), (-0.274, 1.674),
    (0.000, 1.711), (0.274, 1.674), (0.504, 1.540), (0.711, 1.363),
    (0.852, 1.126), (0.926, 0.874), (0.978, 0.607), (1.030, 0.355),
    (1.052, 0.074), (-0.904, -0.126), (-0.793, -0.289), (-0.615, -0.348),
    (-0.422, -0.333), (-0.245, -0.267), (0.245, -0.267), (0.422, -0.333),
    (0.615, -0.348), (0.793, -0.289), (0.904, -0.126), (0.000, -0.022),
    (0.000, 0.170), (0.000, 0.348), (0.000, 0.556), (-0.237, 0.652),
    (-0.126, 0.689), (0.000, 0.719), (0.126, 0.689), (0.237, 0.652),
    (-0.681, 0.015), (-0.563, -0.074), (-0.430, -0.074), (-0.304, 0.022),
    (-0.444, 0.052), (-0.578, 0.059), (0.304, 0.022), (0.430, -0.074),
    (0.563, -0.074), (0.681, 0.015), (0.578, 0.059), (0.444, 0.052),
    (-0.474, 0.948), (-0.304, 0.904), (-0.126, 0.897), (0.000, 0.911),
    (0.126, 0.897), (0.304, 0.904), (0.474, 0.948), (0.318, 1.104),
    (0.133, 1.178), (0.000, 1.207), (-0.133, 1.178), (-0.318, 1.104),
    (-0.407, 0.956), (-0.130, 1.020), (0.000, 1.035), (0.130, 1.020),
    (0.407, 0.956), (0.130, 1.020), (0.000, 1.035), (-0.130, 1.020),
)


def mean_face_landmarks(size: int, *, margin: float | None = None) -> np.ndarray:
    """68 landmarks of an average frontal face placed on the alignment template of a ``size`` crop."""
    unit = np.asarray(_MEAN_FACE_UNIT, np.float64)
    src5 = np.stack([unit[36:42].mean(0), unit[42:48].mean(0), unit[30], unit[48], unit[54]])
    dst5 = template_points(size, margin=DEFAULT_MARGIN if margin is None else margin)
    matrix = similarity_transform(src5, dst5)
    return unit @ matrix[:, :2].T + matrix[:, 2]
