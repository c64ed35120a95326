"""Everything the generator needs for each face of a frame: aligned crop, semantic map, region mask.

``prepare_faces`` is the one call the renderer and the training data preparation share: landmarks for
all faces of the frame, a similarity alignment to the template from the landmarks' 5 points, the crop,
the 11-class map and the region the generator replaces. Faces that cannot be served come back as
:class:`FaceFallback` with a stable reason (``too_small``, ``out_of_frame``, ``profile``,
``landmarks_failed``): the caller covers them (privacy is fail-closed).

The replaced region is the whole face (jawline hull plus the forehead arc of
:func:`sdgan_stream.semantic.face_outline`), dilated by ``REGION_DILATION`` eye distances: swapping only
the inner features leaves outline, jaw and forehead, which carry identity.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

import cv2
import numpy as np

from .align import DEFAULT_MARGIN, alignment_matrix, apply_matrix, warp_to_crop
from .landmarks import LandmarkFit, landmarks5_from_68
from .semantic import class_id, rasterize_semantic_map
from .types import Face

log = logging.getLogger(__name__)

__all__ = [
    "FaceFallback",
    "Landmarker",
    "PreparedFace",
    "REGION_DILATION",
    "masked_input",
    "prepare_face_from_landmarks",
    "prepare_faces",
    "region_mask_from_labels",
]

REGION_DILATION = 0.12  # eye distances the face region is grown by, so no original face edge survives


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


def prepare_face_from_landmarks(
    image: np.ndarray, face: Face, landmarks68: np.ndarray, *, size: int = 128, margin: float = DEFAULT_MARGIN,
    with_crop: bool = True,
) -> PreparedFace:
    """Crop, map and region of one face whose 68 image landmarks are known."""
    points = np.asarray(landmarks68, np.float64)
    matrix = alignment_matrix(landmarks5_from_68(points), size, margin=margin)
    crop = warp_to_crop(image, matrix, size) if with_crop else None
    crop_points = apply_matrix(points, matrix)
    labels = rasterize_semantic_map(crop_points, size)
    return PreparedFace(
        face=face,
        matrix=matrix,
        crop=crop,
        labels=labels,
        region_mask=region_mask_from_labels(labels, crop_points),
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
    """The crop with the replaced region blanked to ``fill``: the generator's context input, (S, S, 3) uint8."""
    out = prepared.crop.copy()
    out[prepared.region_mask > 0] = fill
    return out
