"""Classical face covers: solid, pixelate, blur, each over an ellipse with a safety margin.

These are the fallback of every other method: a face the generator cannot serve gets a ``solid`` cover.
Covers never fail on odd geometry (faces cut by the border, zero-area boxes): they clip and return.
"""

from __future__ import annotations

from typing import Literal

import cv2
import numpy as np

__all__ = ["COVER_METHODS", "CoverMethod", "apply_cover", "cover_mask", "cover_region"]

CoverMethod = Literal["solid", "pixelate", "blur"]
COVER_METHODS: tuple[str, ...] = ("solid", "pixelate", "blur")

_MIN_COVER_SIDE = 4.0  # px: even a degenerate box gets a visible cover


def _ellipse_axes(box: np.ndarray, margin: float) -> tuple[float, float, float, float]:
    """Centre and half-axes of the cover ellipse.

    The ellipse is inscribed in the box grown by ``margin`` of its size on each side, and never smaller
    than the ellipse through the box's corners (a factor sqrt(2)), so the whole box is always covered.
    """
    x1, y1, x2, y2 = (float(v) for v in box)
    grow = max(1.0 + 2.0 * margin, np.sqrt(2.0))
    half_w = max(x2 - x1, _MIN_COVER_SIDE) / 2 * grow
    half_h = max(y2 - y1, _MIN_COVER_SIDE) / 2 * grow
    return (x1 + x2) / 2, (y1 + y2) / 2, half_w, half_h


def cover_region(box: np.ndarray, *, margin: float, image_shape: tuple[int, ...]) -> tuple[int, int, int, int] | None:
    """Integer pixel region (x1, y1, x2, y2) of the cover ellipse, clipped to the image; None if empty."""
    if not np.all(np.isfinite(box)):
        return None
    cx, cy, half_w, half_h = _ellipse_axes(box, margin)
    height, width = image_shape[:2]
    left, top = max(int(np.floor(cx - half_w)), 0), max(int(np.floor(cy - half_h)), 0)
    right, bottom = min(int(np.ceil(cx + half_w)), width), min(int(np.ceil(cy + half_h)), height)
    if right <= left or bottom <= top:
        return None
    return left, top, right, bottom


def cover_mask(box: np.ndarray, region: tuple[int, int, int, int], *, margin: float) -> np.ndarray:
    """Boolean mask over ``region`` of the cover ellipse of ``box``."""
    left, top, right, bottom = region
    cx, cy, half_w, half_h = _ellipse_axes(box, margin)
    yy, xx = np.ogrid[top:bottom, left:right]
    return ((xx + 0.5 - cx) / half_w) ** 2 + ((yy + 0.5 - cy) / half_h) ** 2 <= 1.0


def apply_cover(image: np.ndarray, box: np.ndarray, *, method: CoverMethod = "solid", margin: float = 0.25) -> None:
    """Cover the face in ``box`` on ``image`` in place (see :func:`cover_mask` for the shape)."""
    if method not in COVER_METHODS:
        raise ValueError(f"unknown cover method {method!r}; choose from {', '.join(COVER_METHODS)}")
    region = cover_region(box, margin=margin, image_shape=image.shape)
    if region is None:
        return
    left, top, right, bottom = region
    patch = image[top:bottom, left:right]
    mask = cover_mask(box, region, margin=margin)
    if method == "solid":
        patch[mask] = 0
        return
    replacement = _pixelate(patch, box) if method == "pixelate" else _blur(patch, box)
    patch[mask] = replacement[mask]


def _pixelate(patch: np.ndarray, box: np.ndarray) -> np.ndarray:
    # About 8 blocks across the face: coarse enough that no feature survives.
    face_side = max(float(box[2] - box[0]), float(box[3] - box[1]), 8.0)
    block = max(int(face_side / 8), 2)
    h, w = patch.shape[:2]
    small = cv2.resize(patch, (max(w // block, 1), max(h // block, 1)), interpolation=cv2.INTER_AREA)
    return cv2.resize(small, (w, h), interpolation=cv2.INTER_NEAREST)


def _blur(patch: np.ndarray, box: np.ndarray) -> np.ndarray:
    # Sigma of a sixth of the face size: weaker blurs let recognizers (and people) identify faces.
    # Blurring a 4x smaller copy and scaling back is equivalent at this strength and ~10x cheaper.
    face_side = max(float(box[2] - box[0]), float(box[3] - box[1]), 8.0)
    h, w = patch.shape[:2]
    factor = 4 if min(h, w) >= 32 else 1
    small = cv2.resize(patch, (max(w // factor, 1), max(h // factor, 1)), interpolation=cv2.INTER_AREA)
    sigma = face_side / 6 / factor
    small = cv2.GaussianBlur(small, (0, 0), sigmaX=sigma, sigmaY=sigma, borderType=cv2.BORDER_REPLICATE)
    return cv2.resize(small, (w, h), interpolation=cv2.INTER_LINEAR)
