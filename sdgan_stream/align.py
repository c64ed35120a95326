"""Face alignment: a similarity transform from 5 landmarks to a canonical template, and its inverse.

The template is the familiar ArcFace 5-point layout expressed on a unit "face box" (roughly
mid-forehead to chin); ``margin`` grows that box on every side, so with the default margin the face
occupies the central ~2/3 of the crop and the rest is context (hair, background, neck) that the
generator can inpaint against. Matrices are OpenCV 2x3 affines mapping image -> crop pixels.

>>> import numpy as np
>>> pts = template_points(128) * 2 + 10          # a face twice the template size, shifted
>>> m = alignment_matrix(pts, 128)
>>> bool(np.allclose(apply_matrix(pts, m), template_points(128), atol=1e-4))
True
"""

from __future__ import annotations

import cv2
import numpy as np

__all__ = [
    "DEFAULT_MARGIN",
    "TEMPLATE_UNIT",
    "alignment_matrix",
    "apply_matrix",
    "crop_to_image_points",
    "invert_matrix",
    "matrix_rotation_deg",
    "matrix_scale",
    "similarity_transform",
    "template_points",
    "unit_to_crop",
    "warp_to_crop",
    "warp_to_image",
]

# ArcFace's 112x112 template / 112, image-left eye first (the order of ``types.Face.landmarks``).
TEMPLATE_UNIT = np.array(
    [
        [0.34191, 0.46157],  # image-left eye
        [0.65653, 0.45983],  # image-right eye
        [0.50023, 0.64050],  # nose tip
        [0.37097, 0.82469],  # image-left mouth corner
        [0.63152, 0.82325],  # image-right mouth corner
    ],
    np.float64,
)
# Unit box grown by 0.3 on each side: the face (forehead to chin, ~1.0 unit tall after the template's
# upward shift below) fills ~62% of the crop side; whole head with some hair and background fits.
DEFAULT_MARGIN = 0.3
# Shift the template up a little so that the face region (forehead arc to chin) sits in the middle of
# the crop with room below the chin for the blend's feather; measured on the sample photos' fits.
_TEMPLATE_SHIFT_Y = -0.06


def unit_to_crop(points: np.ndarray, size: int, *, margin: float = DEFAULT_MARGIN) -> np.ndarray:
    """Map points from template unit coordinates (the space of :data:`TEMPLATE_UNIT`) to crop pixels."""
    unit = np.asarray(points, np.float64) + np.array([0.0, _TEMPLATE_SHIFT_Y])
    return (unit + margin) / (1.0 + 2.0 * margin) * size


def template_points(size: int, *, margin: float = DEFAULT_MARGIN) -> np.ndarray:
    """The 5 canonical landmark positions in a ``size`` x ``size`` crop, (5, 2) float64."""
    return unit_to_crop(TEMPLATE_UNIT, size, margin=margin)


def similarity_transform(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """Least-squares similarity (rotation, uniform scale, translation) mapping ``src`` onto ``dst``.

    Umeyama's closed form; deterministic (no RANSAC), so the crop does not jump between frames.
    Returns a 2x3 float64 matrix.
    """
    src = np.asarray(src, np.float64).reshape(-1, 2)
    dst = np.asarray(dst, np.float64).reshape(-1, 2)
    if src.shape != dst.shape or len(src) < 2:
        raise ValueError(f"need two matching point sets of >= 2 points, got {src.shape} and {dst.shape}")
    src_mean, dst_mean = src.mean(0), dst.mean(0)
    src_c, dst_c = src - src_mean, dst - dst_mean
    src_var = (src_c**2).sum() / len(src)
    if src_var <= 1e-12:
        raise ValueError("degenerate source points (all identical)")
    cov = dst_c.T @ src_c / len(src)
    u, s, vt = np.linalg.svd(cov)
    d = np.ones(2)
    if np.linalg.det(u) * np.linalg.det(vt) < 0:  # no reflections
        d[1] = -1.0
    rot = u @ np.diag(d) @ vt
    scale = (s * d).sum() / src_var
    matrix = np.empty((2, 3), np.float64)
    matrix[:, :2] = scale * rot
    matrix[:, 2] = dst_mean - scale * rot @ src_mean
    return matrix


def alignment_matrix(landmarks5: np.ndarray, size: int, *, margin: float = DEFAULT_MARGIN) -> np.ndarray:
    """2x3 affine (image -> crop) that puts the 5 landmarks onto the template of a ``size`` crop."""
    landmarks5 = np.asarray(landmarks5, np.float64)
    if landmarks5.shape != (5, 2) or not np.all(np.isfinite(landmarks5)):
        raise ValueError(f"expected finite (5, 2) landmarks, got {landmarks5.shape}")
    return similarity_transform(landmarks5, template_points(size, margin=margin))


def apply_matrix(points: np.ndarray, matrix: np.ndarray) -> np.ndarray:
    """Apply a 2x3 affine to (N, 2) points."""
    points = np.asarray(points, np.float64).reshape(-1, 2)
    return points @ np.asarray(matrix, np.float64)[:, :2].T + np.asarray(matrix, np.float64)[:, 2]


def invert_matrix(matrix: np.ndarray) -> np.ndarray:
    """Inverse of a 2x3 affine."""
    return cv2.invertAffineTransform(np.asarray(matrix, np.float64))


def crop_to_image_points(points: np.ndarray, matrix: np.ndarray) -> np.ndarray:
    """Map (N, 2) crop coordinates back to image coordinates (``matrix`` is image -> crop)."""
    return apply_matrix(points, invert_matrix(matrix))


def matrix_scale(matrix: np.ndarray) -> float:
    """Uniform scale of a similarity matrix (crop pixels per image pixel)."""
    m = np.asarray(matrix, np.float64)
    return float(np.sqrt(abs(np.linalg.det(m[:, :2]))))


def matrix_rotation_deg(matrix: np.ndarray) -> float:
    """Rotation of a similarity matrix in degrees, positive = clockwise on screen (y axis down).

    For an alignment matrix this is how far the face was turned counter-clockwise in the image.
    """
    m = np.asarray(matrix, np.float64)
    return float(np.degrees(np.arctan2(m[1, 0], m[0, 0])))


def _quad_bounds(
    matrix: np.ndarray, size: int, pad: int, rect: tuple[int, int, int, int] | None = None
) -> tuple[int, int, int, int]:
    """Image-space integer bounds (x1, y1, x2, y2) of the preimage of the crop square (or of ``rect``
    = (x1, y1, x2, y2) inside it), grown by ``pad``."""
    cx1, cy1, cx2, cy2 = rect if rect is not None else (0, 0, size, size)
    corners = np.array([[cx1, cy1], [cx2, cy1], [cx1, cy2], [cx2, cy2]], np.float64)
    pts = crop_to_image_points(corners, matrix)
    x1, y1 = np.floor(pts.min(0)).astype(int) - pad
    x2, y2 = np.ceil(pts.max(0)).astype(int) + pad
    return int(x1), int(y1), int(x2), int(y2)


def warp_to_crop(
    image: np.ndarray,
    matrix: np.ndarray,
    size: int,
    *,
    border: int = cv2.BORDER_REPLICATE,
    interpolation: int = cv2.INTER_LINEAR,
) -> np.ndarray:
    """Cut the aligned ``size`` x ``size`` crop out of ``image``.

    Parts of the crop outside the image are filled by ``border`` (replicate by default: faces cut by the
    frame edge still get a plausible crop). When the crop shrinks the face by more than ~1.5x the
    region is first reduced with area averaging, because warpAffine alone would alias.
    """
    matrix = np.asarray(matrix, np.float64)
    height, width = image.shape[:2]
    # Work on the part of the image the crop can sample (plus 2 px for interpolation): cheap, and a
    # non-contiguous frame (e.g. a rotated view) only needs that part copied. Each axis is clamped to
    # at least one row/column at the nearest edge, which keeps replicate/constant border semantics.
    x1, y1, x2, y2 = _quad_bounds(matrix, size, pad=2)
    x1 = min(max(x1, 0), width - 1)
    y1 = min(max(y1, 0), height - 1)
    x2 = max(min(x2, width), x1 + 1)
    y2 = max(min(y2, height), y1 + 1)
    roi = np.ascontiguousarray(image[y1:y2, x1:x2])
    shifted = matrix.copy()
    shifted[:, 2] += matrix[:, :2] @ np.array([x1, y1], np.float64)  # crop = M (roi + offset)
    scale = matrix_scale(matrix)
    if scale < 0.67 and interpolation != cv2.INTER_NEAREST and min(x2 - x1, y2 - y1) >= 4:
        factor = scale * 1.25  # keep a little above the final resolution for the linear warp
        new_w, new_h = max(1, round((x2 - x1) * factor)), max(1, round((y2 - y1) * factor))
        small = cv2.resize(roi, (new_w, new_h), interpolation=cv2.INTER_AREA)
        fx, fy = new_w / (x2 - x1), new_h / (y2 - y1)
        # small = S roi, with cv2.resize's pixel-centre convention; compose so the crop samples it
        pre = np.array([[fx, 0.0, 0.5 * fx - 0.5], [0.0, fy, 0.5 * fy - 0.5], [0.0, 0.0, 1.0]])
        shifted = (np.vstack([shifted, [0.0, 0.0, 1.0]]) @ np.linalg.inv(pre))[:2]
        roi = small
    return cv2.warpAffine(roi, shifted, (size, size), flags=interpolation, borderMode=border)


def warp_to_image(
    crop: np.ndarray,
    matrix: np.ndarray,
    image_shape: tuple[int, ...],
    *,
    interpolation: int = cv2.INTER_LINEAR,
    crop_rect: tuple[int, int, int, int] | None = None,
) -> tuple[np.ndarray, tuple[int, int, int, int]] | None:
    """Inverse-warp a crop into the image's frame, only over the region it covers.

    Returns ``(patch, (x1, y1, x2, y2))`` where ``patch`` is the crop resampled onto that image region,
    or ``None`` when the crop lies wholly outside the image. Pixels of the region the crop does not
    reach are 0 (warp a mask alongside to know which). ``crop_rect`` (x1, y1, x2, y2 in crop pixels)
    limits the work to the image region that this part of the crop maps to.
    """
    height, width = image_shape[:2]
    size = crop.shape[0]
    x1, y1, x2, y2 = _quad_bounds(matrix, size, pad=1, rect=crop_rect)
    x1, y1 = max(x1, 0), max(y1, 0)
    x2, y2 = min(x2, width), min(y2, height)
    if x2 <= x1 or y2 <= y1:
        return None
    # crop -> image map, shifted so that the region's top-left is (0, 0)
    inv = invert_matrix(matrix)
    inv[:, 2] -= (x1, y1)
    patch = cv2.warpAffine(
        crop, inv, (x2 - x1, y2 - y1), flags=interpolation, borderMode=cv2.BORDER_CONSTANT, borderValue=0
    )
    return patch, (x1, y1, x2, y2)
