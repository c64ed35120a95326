"""Everything the generator needs for each face of a frame: aligned crop, semantic map, region mask.

``prepare_faces`` is the one call the renderer and the training data preparation share: landmarks for
all faces of the frame, a similarity alignment to the template from the landmarks' 5 points, the crop,
the 11-class map and the region the generator replaces. Faces that cannot be served come back as
:class:`FaceFallback` with a stable reason (``too_small``, ``out_of_frame``, ``profile``,
``landmarks_failed``): the caller covers them (privacy is fail-closed).

The replaced region is the whole face (jawline hull plus the forehead arc of
:func:`sdgan_stream.semantic.face_outline`), dilated by ``REGION_DILATION`` eye distances: swapping only
the inner features leaves outline, jaw and forehead, which carry identity. Two safety additions join it
(privacy fails closed): a margin that grows with the head's estimated yaw (a turned head's fit is less
sure of the far side and the forehead, :func:`turned_head_region`), and the ellipse inscribed in the
detector's box (:func:`box_ellipse_mask`), so a face is replaced at least where detector and landmarks
each say it is. The map the generator paints is not changed by them.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

import cv2
import numpy as np

from .align import DEFAULT_MARGIN, alignment_matrix, apply_matrix, matrix_rotation_deg, matrix_scale, warp_to_crop
from .landmarks import LandmarkFit, estimate_yaw_deg, landmarks5_from_68
from .semantic import FOREHEAD_EXTENT, class_id, face_region, rasterize_semantic_map
from .types import Face

log = logging.getLogger(__name__)

__all__ = [
    "FaceFallback",
    "Landmarker",
    "PreparedFace",
    "REGION_DILATION",
    "box_ellipse_mask",
    "masked_input",
    "prepare_face_from_landmarks",
    "prepare_faces",
    "region_mask_from_labels",
    "replaced_region",
    "turned_head_region",
]

REGION_DILATION = 0.12  # eye distances the face region is grown by, so no original face edge survives
# A turned head's fit is less sure at the far side and the forehead: the replaced region grows with
# |sin(yaw)|, the forehead by up to this many brow-to-nose distances, the margin up to twice as wide.
TURNED_FOREHEAD = 0.8
_EDGE_KEEP_OUT = 0.05  # share of the crop side along its edges that the safety additions leave alone


class Landmarker(Protocol):
    """What :func:`prepare_faces` needs: :class:`sdgan_stream.landmarks.LandmarkDetector` fits it.

    A plain callable ``(image, faces) -> list[points | None]`` works too (failures become
    ``landmarks_failed``).
    """

    def fit(self, image: np.ndarray, faces: Sequence[Face]) -> list[LandmarkFit]: ...


@dataclass(frozen=True)
class PreparedFace:
    """One face ready for the generator. All crop-space arrays are ``size`` x ``size``."""

    face: Face
    matrix: np.ndarray  # (2, 3) float64, image -> crop
    crop: np.ndarray | None  # (S, S, 3) uint8 aligned crop of the original (None: not cut, see prepare_faces)
    labels: np.ndarray  # (S, S) uint8 class ids (sdgan_stream.semantic.CLASS_NAMES)
    region_mask: np.ndarray  # (S, S) float32 in [0, 1]: 1 where the generator replaces the face
    landmarks68_crop: np.ndarray  # (68, 2) float32 in crop pixels
    landmarks68: np.ndarray  # (68, 2) float32 in image pixels
    # The generator's context input (S, S, 3) uint8 when it is not ``crop`` (a tracked face's steadied copy of
    # it, see SdganRenderer._held_inputs); None: ``crop``.
    context: np.ndarray | None = None

    @property
    def size(self) -> int:
        return int(self.labels.shape[0])


@dataclass(frozen=True)
class FaceFallback:
    """A face that gets a cover instead of a generated face, and why."""

    face: Face
    reason: str


def region_mask_from_labels(labels: np.ndarray, landmarks68_crop: np.ndarray) -> np.ndarray:
    """Float32 mask of the face classes (everything but background and hair), dilated a little."""
    face = (labels != class_id("background")) & (labels != class_id("hair"))
    ipd = float(np.hypot(*(landmarks68_crop[42:48].mean(0) - landmarks68_crop[36:42].mean(0))))
    radius = max(1, int(round(REGION_DILATION * ipd)))
    kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * radius + 1, 2 * radius + 1))
    return cv2.dilate(face.astype(np.uint8), kernel).astype(np.float32)


def replaced_region(labels: np.ndarray, crop_points: np.ndarray, *, yaw_deg: float | None, box_mask: np.ndarray) -> np.ndarray:
    """(S, S) float32: the region the generator replaces, in crop space: the map's face
    (:func:`region_mask_from_labels`) joined with the safety additions, :func:`turned_head_region` and
    ``box_mask`` (the detector box's ellipse, :func:`box_ellipse_mask`). The one definition for the renderer
    and for training (``train.dataset``), so the generator learns to paint exactly what it is asked to."""
    size = labels.shape[0]
    safety = np.maximum(turned_head_region(crop_points, size, yaw_deg=yaw_deg), box_mask)
    # The safety additions stop short of the crop's edge (room for the paste's outward ramp): a tracker's
    # predicted box is widened for uncertainty and may reach past the crop; the map itself may not.
    keep_out = max(1, int(round(_EDGE_KEEP_OUT * size)))
    safety[:keep_out], safety[-keep_out:], safety[:, :keep_out], safety[:, -keep_out:] = 0, 0, 0, 0
    return np.maximum(region_mask_from_labels(labels, crop_points), safety)


def turned_head_region(crop_points: np.ndarray, size: int, *, yaw_deg: float | None = None) -> np.ndarray:
    """(size, size) uint8 safety region for a face that may be turned: the face region with the forehead
    raised by ``TURNED_FOREHEAD * |sin(yaw)|``, dilated by ``REGION_DILATION * (1 + |sin(yaw)|)`` face
    scales. The face scale is the larger of the eye distance and the eye-to-mouth distance, which
    (unlike the eye distance) does not shrink as the head turns. ``yaw_deg`` defaults to the points' own
    estimate. Near-frontal: about the map's region."""
    p = np.asarray(crop_points, np.float64)
    left_eye, right_eye = p[36:42].mean(0), p[42:48].mean(0)
    if yaw_deg is None:
        yaw_deg = estimate_yaw_deg(left_eye, right_eye, p[30])
    turn = abs(np.sin(np.radians(yaw_deg)))
    hull = face_region(p, size, forehead=FOREHEAD_EXTENT + TURNED_FOREHEAD * turn).astype(np.uint8)
    scale = max(float(np.hypot(*(right_eye - left_eye))), float(np.hypot(*(p[48:68].mean(0) - (left_eye + right_eye) / 2))))
    radius = max(1, int(round(REGION_DILATION * scale * (1.0 + turn))))
    kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * radius + 1, 2 * radius + 1))
    return cv2.dilate(hull, kernel)


def _largest_yaw(points68: np.ndarray, face: Face) -> float:
    """The larger yaw estimate of the 68-point fit and the detector's 5 points (when the face has them):
    each underestimates some turns, and a wider margin is the safe side."""
    estimates = [estimate_yaw_deg(points68[36:42].mean(0), points68[42:48].mean(0), points68[30])]
    if face.landmarks is not None and np.all(np.isfinite(face.landmarks)):
        five = np.asarray(face.landmarks, np.float64).reshape(-1, 2)
        if five.shape == (5, 2):
            estimates.append(estimate_yaw_deg(five[0], five[1], five[2]))
    return max(estimates, key=abs)


def box_ellipse_mask(box: np.ndarray, matrix: np.ndarray, size: int) -> np.ndarray:
    """(size, size) uint8 mask of the ellipse inscribed in the detector's ``box`` (image coordinates),
    drawn in the crop that ``matrix`` (image -> crop, a similarity) cuts."""
    x1, y1, x2, y2 = (float(v) for v in box)
    mask = np.zeros((size, size), np.uint8)
    if not np.all(np.isfinite([x1, y1, x2, y2])) or x2 <= x1 or y2 <= y1:
        return mask
    centre = apply_matrix(np.array([[(x1 + x2) / 2, (y1 + y2) / 2]]), matrix)[0]
    scale, angle = matrix_scale(matrix), matrix_rotation_deg(matrix)
    shift = 4  # sub-pixel drawing
    axes = (int(round((x2 - x1) / 2 * scale * (1 << shift))), int(round((y2 - y1) / 2 * scale * (1 << shift))))
    cv2.ellipse(mask, tuple(int(round(c * (1 << shift))) for c in centre), axes, angle, 0, 360, 1, -1, cv2.LINE_8, shift)
    return mask


def prepare_face_from_landmarks(
    image: np.ndarray, face: Face, landmarks68: np.ndarray, *, size: int = 128, margin: float = DEFAULT_MARGIN,
    with_crop: bool = True,
) -> PreparedFace:
    """Crop, map and region of one face whose 68 image landmarks are known.

    The region is the map's face (dilated) joined with :func:`turned_head_region` and the ellipse
    inscribed in the detector's box: where the landmarks and the detector disagree (a turned head's
    far cheek or forehead), both are replaced.
    """
    points = np.asarray(landmarks68, np.float64)
    matrix = alignment_matrix(landmarks5_from_68(points), size, margin=margin)
    crop = warp_to_crop(image, matrix, size) if with_crop else None
    crop_points = apply_matrix(points, matrix)
    labels = rasterize_semantic_map(crop_points, size)
    region = replaced_region(labels, crop_points, yaw_deg=_largest_yaw(points, face),
                             box_mask=box_ellipse_mask(face.box, matrix, size))
    return PreparedFace(
        face=face,
        matrix=matrix,
        crop=crop,
        labels=labels,
        region_mask=region,
        landmarks68_crop=crop_points.astype(np.float32),
        landmarks68=points.astype(np.float32),
    )


def prepare_faces(
    image: np.ndarray,
    faces: Sequence[Face],
    *,
    landmarker: Landmarker | Callable[[np.ndarray, Sequence[Face]], list[np.ndarray | None]],
    size: int = 128,
    margin: float = DEFAULT_MARGIN,
    with_crops: bool = True,
) -> list[PreparedFace | FaceFallback]:
    """Prepare every face of one frame; one entry per face, in order.

    ``with_crops=False`` skips cutting the aligned crops on the host, for a caller that cuts them from
    the frame on the GPU (:class:`~sdgan_stream.backends.gpu_warp.DeviceFrameRenderer`)."""
    if size < 16:
        raise ValueError(f"crop size must be at least 16 px, got {size}")
    if hasattr(landmarker, "fit"):
        fits = landmarker.fit(image, faces)
    else:  # a plain callable returning points or None per face
        fits = [LandmarkFit(p, None if p is not None else "landmarks_failed") for p in landmarker(image, faces)]
    out: list[PreparedFace | FaceFallback] = []
    for face, fit in zip(faces, fits, strict=True):
        if fit.points is None:
            out.append(FaceFallback(face, fit.reason or "landmarks_failed"))
            continue
        try:
            prepared = prepare_face_from_landmarks(image, face, fit.points, size=size, margin=margin, with_crop=with_crops)
        except ValueError as error:  # degenerate geometry: cover it, never pass it through
            log.debug("face preparation failed: %s", error)
            out.append(FaceFallback(face, "landmarks_failed"))
            continue
        if _touches_border(prepared.labels):
            # The face would not fit in the crop, so part of it could never be replaced: implausible fit.
            out.append(FaceFallback(face, "landmarks_failed"))
            continue
        out.append(prepared)
    return out


def _touches_border(labels: np.ndarray) -> bool:
    face = labels != 0
    return bool(face[0].any() or face[-1].any() or face[:, 0].any() or face[:, -1].any())


def masked_input(prepared: PreparedFace, *, fill: int = 0) -> np.ndarray:
    """The context (the crop unless a steadied one is given) with the replaced region blanked to ``fill``: the
    generator's context input, (S, S, 3) uint8."""
    out = (prepared.crop if prepared.context is None else prepared.context).copy()
    out[prepared.region_mask > 0] = fill
    return out
