"""Classical face covers: solid, pixelate, blur, each over an ellipse with a safety margin.

These are the fallback of every other method: a face the generator cannot serve (a profile, a face the
landmarks cannot fit) gets a cover, by default ``blur``: the least conspicuous safe one. Inside the
ellipse every pixel is replaced (blur and pixelate are strong enough that no feature survives); blur
and pixelate then fade into the frame over ``COVER_FEATHER`` of the face's size *outside* the ellipse,
so the cover has no hard oval edge and still hides all of the face. ``solid`` stays a hard black oval.
Covers never fail on odd geometry (faces cut by the border, zero-area boxes): they clip and return.
"""

from __future__ import annotations

from typing import Literal

import cv2
import numpy as np

__all__ = ["COVER_FEATHER", "COVER_METHODS", "FOREHEAD_COVER", "CoverMethod", "apply_cover", "cover_mask", "cover_region"]

CoverMethod = Literal["solid", "pixelate", "blur"]
COVER_METHODS: tuple[str, ...] = ("solid", "pixelate", "blur")

_MIN_COVER_SIDE = 4.0  # px: even a degenerate box gets a visible cover
COVER_FEATHER = 0.15  # blur/pixelate fade out over this share of the face's size beyond the ellipse
# The forehead above a detector's box (brows to chin), as a share of the box height: about the forehead
# the replaced region of a generated face reaches (semantic.FOREHEAD_EXTENT brow-to-nose distances).
FOREHEAD_COVER = 0.25


def _ellipse_axes(box: np.ndarray, margin: float) -> tuple[float, float, float, float]:
    """Centre and half-axes of the cover ellipse.

    A detector's face box reaches from about the brows to the chin, so the box is first extended
    upward by ``FOREHEAD_COVER`` of its height (the forehead). The ellipse is inscribed in that box grown
    by ``margin`` of its size on each side, and never smaller than the ellipse through its corners (a
    factor sqrt(2)), so the whole box and forehead are always covered.
    """
    x1, y1, x2, y2 = (float(v) for v in box)
    y1 -= FOREHEAD_COVER * max(y2 - y1, 0.0)
    grow = max(1.0 + 2.0 * margin, np.sqrt(2.0))
    half_w = max(x2 - x1, _MIN_COVER_SIDE) / 2 * grow
    half_h = max(y2 - y1, _MIN_COVER_SIDE) / 2 * grow
    return (x1 + x2) / 2, (y1 + y2) / 2, half_w, half_h


def _face_side(box: np.ndarray) -> float:
    return max(float(box[2] - box[0]), float(box[3] - box[1]), 8.0)


def cover_region(
    box: np.ndarray, *, margin: float, image_shape: tuple[int, ...], grow: float = 0.0
) -> tuple[int, int, int, int] | None:
    """Integer pixel region (x1, y1, x2, y2) of the cover ellipse (its half-axes grown by ``grow`` px),
    clipped to the image; None if empty."""
    if not np.all(np.isfinite(box)):
        return None
    cx, cy, half_w, half_h = _ellipse_axes(box, margin)
    height, width = image_shape[:2]
    left, top = max(int(np.floor(cx - half_w - grow)), 0), max(int(np.floor(cy - half_h - grow)), 0)
    right, bottom = min(int(np.ceil(cx + half_w + grow)), width), min(int(np.ceil(cy + half_h + grow)), height)
    if right <= left or bottom <= top:
        return None
    return left, top, right, bottom


def _ellipse_radius(box: np.ndarray, region: tuple[int, int, int, int], margin: float) -> tuple[np.ndarray, float]:
    """Normalized radius (1 on the cover ellipse) of each pixel centre of ``region``, and the ellipse's
    smaller half-axis in px."""
    left, top, right, bottom = region
    cx, cy, half_w, half_h = _ellipse_axes(box, margin)
    yy, xx = np.ogrid[top:bottom, left:right]
    return np.sqrt(((xx + 0.5 - cx) / half_w) ** 2 + ((yy + 0.5 - cy) / half_h) ** 2), min(half_w, half_h)


def cover_mask(box: np.ndarray, region: tuple[int, int, int, int], *, margin: float) -> np.ndarray:
    """Boolean mask over ``region`` of the cover ellipse of ``box``: every pixel here is replaced."""
    return _ellipse_radius(box, region, margin)[0] <= 1.0


def apply_cover(image: np.ndarray, box: np.ndarray, *, method: CoverMethod = "solid", margin: float = 0.25) -> None:
    """Cover the face in ``box`` on ``image`` in place: every pixel of :func:`cover_mask` replaced; blur
    and pixelate fade out over ``COVER_FEATHER`` x the face's size beyond it."""
    if method not in COVER_METHODS:
        raise ValueError(f"unknown cover method {method!r}; choose from {', '.join(COVER_METHODS)}")
    feather = 0.0 if method == "solid" else COVER_FEATHER * _face_side(box)
    region = cover_region(box, margin=margin, image_shape=image.shape, grow=feather)
    if region is None:
        return
    left, top, right, bottom = region
    patch = image[top:bottom, left:right]
    radius, half_axis = _ellipse_radius(box, region, margin)
    if method == "solid":
        patch[radius <= 1.0] = 0
        return
    replacement = _pixelate(patch, box) if method == "pixelate" else _blur(patch, box)
    # 1 on the ellipse, a smoothstep down to 0 about `feather` px outside it (radius in half-axis units)
    t = np.clip((radius - 1.0) * half_axis / max(feather, 1e-6), 0.0, 1.0)
    weight = np.where(radius <= 1.0, 1.0, 1.0 - t * t * (3.0 - 2.0 * t)).astype(np.float32)
    patch[...] = cv2.blendLinear(replacement, np.ascontiguousarray(patch), weight, 1.0 - weight)


def _pixelate(patch: np.ndarray, box: np.ndarray) -> np.ndarray:
    # About 8 blocks across the face: coarse enough that no feature survives.
    face_side = _face_side(box)
    block = max(int(face_side / 8), 2)
    h, w = patch.shape[:2]
    small = cv2.resize(patch, (max(w // block, 1), max(h // block, 1)), interpolation=cv2.INTER_AREA)
    return cv2.resize(small, (w, h), interpolation=cv2.INTER_NEAREST)


def _blur(patch: np.ndarray, box: np.ndarray) -> np.ndarray:
    # Sigma of a sixth of the face size: weaker blurs let recognizers (and people) identify faces.
    # Blurring a 4x smaller copy and scaling back is equivalent at this strength and ~10x cheaper.
    face_side = _face_side(box)
    h, w = patch.shape[:2]
    factor = 4 if min(h, w) >= 32 else 1
    small = cv2.resize(patch, (max(w // factor, 1), max(h // factor, 1)), interpolation=cv2.INTER_AREA)
    sigma = face_side / 6 / factor
    small = cv2.GaussianBlur(small, (0, 0), sigmaX=sigma, sigmaY=sigma, borderType=cv2.BORDER_REPLICATE)
    return cv2.resize(small, (w, h), interpolation=cv2.INTER_LINEAR)
