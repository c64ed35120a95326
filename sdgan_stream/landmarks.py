"""Dense (68-point) face landmarks with dlib's shape predictor, on derotated face crops.

The model is ``shape_predictor_68_face_landmarks.dat`` from the ``face-recognition-models`` package,
loaded by file path (the package's ``__init__`` needs ``pkg_resources``, so it is never imported).
The points follow the iBUG 300-W order (0-16 jaw, 17-21 / 22-26 image-left / image-right brow,
27-35 nose, 36-41 / 42-47 image-left / image-right eye, 48-59 outer lips, 60-67 inner lips).

Why a crop: dlib's predictor was trained on upright faces inside dlib HOG-detector boxes. Each face
is first aligned upright with its 5 detector landmarks (similarity transform, so in-plane rotation up
to ~45 degrees is undone), the predictor runs inside a fixed rectangle that was calibrated against
dlib's own detector on those aligned crops, and the points are mapped back to image coordinates.

Faces the predictor cannot serve come back as ``None`` with a stable reason string (see
:data:`FALLBACK_REASONS`); the caller covers them instead (privacy is fail-closed).
"""

from __future__ import annotations

import importlib.util
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from .align import (
    DEFAULT_MARGIN,
    TEMPLATE_UNIT,
    alignment_matrix,
    crop_to_image_points,
    unit_to_crop,
    warp_to_crop,
)
from .errors import WeightsError
from .types import Face

log = logging.getLogger(__name__)

__all__ = [
    "FALLBACK_REASONS",
    "LandmarkDetector",
    "LandmarkFit",
    "MIN_FACE_PX",
    "box_to_landmarks5",
    "MAX_YAW_DEG",
    "dlib_model_path",
    "estimate_yaw_deg",
    "landmarks5_from_68",
    "yaw_ratio",
]

# Stable reasons a face gets a cover instead of a generated face.
FALLBACK_REASONS: tuple[str, ...] = ("too_small", "out_of_frame", "profile", "landmarks_failed")
MIN_FACE_PX = 24.0  # faces narrower than this get a cover: too few pixels for landmarks or a generator

# Where dlib's HOG detector puts its box on an aligned crop, in template unit coordinates
# (x1, y1, x2, y2): mean over astronaut + grace_hopper at 3 scales x 7 rotations (-45..45 deg),
# 42 crops, std ~0.05 unit (the detector's box is quantized by its scale pyramid).
_DLIB_RECT_UNIT = np.array([0.115, 0.283, 0.868, 1.038])
# CenterFace box relative to its eye centre, in units of the eye distance (x1, y1, x2, y2), measured
# on the same photos; used only to guess landmarks for faces that come with a box alone.
_BOX_FROM_EYES = np.array([-1.026, -0.985, 1.056, 1.643])
_FIT_SIZE = 224  # side of the aligned crop the predictor runs on (face ~140 px; larger = finer integer points)
_FIT_MARGIN = DEFAULT_MARGIN

# Plausibility limits, in units of the eye distance of the 68-point fit (frontal faces on the sample
# photos: 5-point disagreement 0.05-0.12, yaw ratio 0.45-0.55).
_MAX_5PT_DISAGREEMENT = 0.35  # mean distance between the fit's 5 points and the detector's
_IPD_RATIO = (0.6, 1.6)  # fit's eye distance / detector's: outside it, one of them is not on this face
# Turned heads are served up to MAX_YAW_DEG, estimated from how far the nose tip sits beside the eye
# midpoint (both by the detector's 5 points and by the 68-point fit; see estimate_yaw_deg). Beyond it,
# a profile: the far half of the face is hidden, the fit and the generator's frontal training fail.
# The estimate is rough (+-10 degrees): the sample photos' heads turned ~30-45 degrees estimate 15-46,
# skimage's cameraman (a near profile, the far eye hidden) 55 by the detector's points.
MAX_YAW_DEG = 50.0
_NOSE_DEPTH = 0.78  # nose tip in front of the eye centres, in half eye distances (~25 mm / 32 mm)
_PROFILE_YAW = 0.05  # nose tip within 5% of a jaw end (or beyond it): the fit is not a face we can serve


def dlib_model_path(name: str = "shape_predictor_68_face_landmarks.dat") -> Path:
    """Path of a model file inside the installed ``face_recognition_models`` package (not imported)."""
    spec = importlib.util.find_spec("face_recognition_models")
    if spec is None or not spec.submodule_search_locations:
        raise WeightsError("the 'face-recognition-models' package (dlib's landmark model) is not installed")
    path = Path(next(iter(spec.submodule_search_locations))) / "models" / name
    if not path.is_file():
        raise WeightsError(f"dlib model not found at {path}")
    return path


def landmarks5_from_68(points68: np.ndarray) -> np.ndarray:
    """The 5 detector-style points (eye centres, nose tip, mouth corners) from a 68-point set."""
    p = np.asarray(points68, np.float64)
    return np.stack([p[36:42].mean(0), p[42:48].mean(0), p[30], p[48], p[54]])


def box_to_landmarks5(box: np.ndarray) -> np.ndarray:
    """Guess the 5 landmarks of an upright frontal face from its detector box alone."""
    x1, y1, x2, y2 = (float(v) for v in box)
    spans = _BOX_FROM_EYES[2:] - _BOX_FROM_EYES[:2]
    ipd = 0.5 * ((x2 - x1) / spans[0] + (y2 - y1) / spans[1])
    eye_centre = np.array([x1 - _BOX_FROM_EYES[0] * ipd, y1 - _BOX_FROM_EYES[1] * ipd])
    unit_ipd = TEMPLATE_UNIT[1, 0] - TEMPLATE_UNIT[0, 0]
    unit_centre = TEMPLATE_UNIT[:2].mean(0)
    return (TEMPLATE_UNIT - unit_centre) * (ipd / unit_ipd) + eye_centre


def _face_frame(points68: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, float]:
    """Origin (eye midpoint), right axis, down axis and eye distance of a 68-point face."""
    left_eye, right_eye = points68[36:42].mean(0), points68[42:48].mean(0)
    axis = right_eye - left_eye
    ipd = float(np.hypot(*axis))
    right = axis / max(ipd, 1e-9)
    down = np.array([-right[1], right[0]])
    return (left_eye + right_eye) / 2, right, down, ipd


def estimate_yaw_deg(left_eye: np.ndarray, right_eye: np.ndarray, nose_tip: np.ndarray) -> float:
    """Head yaw in degrees from three points, positive when the nose points towards image-right.

    Turning by yaw moves the nose tip (which stands ``_NOSE_DEPTH`` half eye distances in front of the
    eyes) sideways by ``sin(yaw)`` and shrinks the eye distance by ``cos(yaw)``, so the nose's offset
    from the eye midpoint along the eye axis, in half eye distances, is ``_NOSE_DEPTH * tan(yaw)``.
    Returns +-90 for coincident eyes.
    """
    axis = np.asarray(right_eye, np.float64) - np.asarray(left_eye, np.float64)
    half = float(np.hypot(*axis)) / 2
    offset = float((np.asarray(nose_tip, np.float64) - (np.asarray(left_eye) + np.asarray(right_eye)) / 2) @ axis)
    if half < 1e-6:
        return 90.0 if offset >= 0 else -90.0
    return float(np.degrees(np.arctan2(offset / (2 * half) / half, _NOSE_DEPTH)))


def yaw_ratio(points68: np.ndarray) -> float:
    """Where the nose tip sits across the face, 0 = at the image-left jaw end, 1 = at the right; ~0.5 frontal."""
    p = np.asarray(points68, np.float64)
    _, right, _, _ = _face_frame(p)
    xs = p @ right
    left, right_end = xs[0:3].mean(), xs[14:17].mean()
    return float((xs[30] - left) / (right_end - left)) if right_end - left > 1e-6 else 0.0


@dataclass(frozen=True)
class LandmarkFit:
    """The 68 points of one face in image coordinates, or ``None`` with the reason it failed."""

    points: np.ndarray | None  # (68, 2) float32
    reason: str | None = None  # one of FALLBACK_REASONS when points is None

    @property
    def ok(self) -> bool:
        return self.points is not None


class LandmarkDetector:
    """dlib 68-point landmarks for all faces of a frame.

    ``detector(image, faces)`` returns one ``(68, 2)`` float32 array (image coordinates) or ``None`` per
    face; :meth:`fit` returns :class:`LandmarkFit` objects that also carry the fallback reason.
    ``refine`` runs the predictor a second time on a crop re-aligned with its own first result. Measured
    on the sample photos it only helps at the extremes (worst error at 45 degrees of roll 0.063 -> 0.037
    eye distances, means equal within 0.005), does not reduce jitter under detector noise, and doubles
    the cost, so it is off by default.

    >>> import numpy as np
    >>> detector = LandmarkDetector()
    >>> detector(np.zeros((64, 64, 3), np.uint8), [])
    []
    """

    def __init__(self, *, model_path: str | Path | None = None, refine: bool = False, check: bool = True) -> None:
        import dlib

        path = Path(model_path) if model_path is not None else dlib_model_path()
        if not path.is_file():
            raise WeightsError(f"dlib shape predictor not found at {path}")
        self._predictor = dlib.shape_predictor(str(path))
        self._rectangle = dlib.rectangle
        self.refine = refine
        self.check = check
        rect = unit_to_crop(_DLIB_RECT_UNIT.reshape(2, 2), _FIT_SIZE, margin=_FIT_MARGIN).ravel()
        self._rect = self._rectangle(*(int(round(v)) for v in rect))
        log.info("dlib 68-point landmarks from %s (refine=%s)", path.name, refine)

    def __call__(self, image: np.ndarray, faces: Sequence[Face]) -> list[np.ndarray | None]:
        return [fit.points for fit in self.fit(image, faces)]

    def fit(self, image: np.ndarray, faces: Sequence[Face]) -> list[LandmarkFit]:
        """Fit every face of one frame (dlib has no batch call; the faces share one prepared image)."""
        if image.ndim != 3 or image.shape[2] != 3:
            raise ValueError(f"expected an (H, W, 3) RGB image, got shape {image.shape}")
        if not faces:
            return []
        return [self._fit_one(image, face) for face in faces]

    def _fit_one(self, image: np.ndarray, face: Face) -> LandmarkFit:
        detector_points = None
        if face.landmarks is not None:
            candidate = np.asarray(face.landmarks, np.float64).reshape(-1, 2)
            if candidate.shape == (5, 2) and np.all(np.isfinite(candidate)):
                detector_points = candidate
        lm5 = detector_points if detector_points is not None else box_to_landmarks5(face.box)
        ipd5 = float(np.hypot(*(lm5[1] - lm5[0])))
        face_px = max(face.width, 2.08 * ipd5) if detector_points is not None else face.width
        if not np.isfinite(face_px) or face_px < MIN_FACE_PX:
            return LandmarkFit(None, "too_small")
        try:
            matrix = alignment_matrix(lm5, _FIT_SIZE, margin=_FIT_MARGIN)
        except ValueError:
            return LandmarkFit(None, "landmarks_failed")
        if _fraction_inside(matrix, image.shape) < 0.5:
            return LandmarkFit(None, "out_of_frame")
        if self.check and detector_points is not None and _profile_from_5(detector_points):
            return LandmarkFit(None, "profile")
        points = self._predict(image, matrix)
        if self.refine:
            try:
                matrix = alignment_matrix(landmarks5_from_68(points), _FIT_SIZE, margin=_FIT_MARGIN)
            except ValueError:
                return LandmarkFit(None, "landmarks_failed")
            points = self._predict(image, matrix)
        if not np.all(np.isfinite(points)):
            return LandmarkFit(None, "landmarks_failed")
        if self.check:
            reason = _check_fit(points, detector_points)
            if reason is not None:
                return LandmarkFit(None, reason)
        return LandmarkFit(points.astype(np.float32))

    def _predict(self, image: np.ndarray, matrix: np.ndarray) -> np.ndarray:
        crop = warp_to_crop(image, matrix, _FIT_SIZE)
        # dlib converts to grey inside anyway; handing it grey is ~40% faster (1.1 vs 1.85 ms)
        shape = self._predictor(cv2.cvtColor(crop, cv2.COLOR_RGB2GRAY), self._rect)
        crop_points = np.array([(p.x, p.y) for p in shape.parts()], np.float64)
        return crop_to_image_points(crop_points, matrix)


def _fraction_inside(matrix: np.ndarray, image_shape: tuple[int, ...]) -> float:
    """Share of the face (template unit box) that lies inside the image."""
    unit = (np.stack(np.meshgrid(np.linspace(0.05, 0.95, 10), np.linspace(0.05, 0.95, 10)), -1).reshape(-1, 2))
    crop_pts = unit_to_crop(unit, _FIT_SIZE, margin=_FIT_MARGIN)
    pts = crop_to_image_points(crop_pts, matrix)
    height, width = image_shape[:2]
    inside = (pts[:, 0] >= 0) & (pts[:, 0] < width) & (pts[:, 1] >= 0) & (pts[:, 1] < height)
    return float(inside.mean())


def _profile_from_5(points5: np.ndarray) -> bool:
    """Detector points of a head turned past :data:`MAX_YAW_DEG`."""
    return abs(estimate_yaw_deg(points5[0], points5[1], points5[2])) > MAX_YAW_DEG


def _check_fit(points: np.ndarray, detector_points: np.ndarray | None) -> str | None:
    """Reject fits that are not a plausible face turned at most MAX_YAW_DEG; returns a fallback reason or None."""
    origin, right, down, ipd = _face_frame(points)
    if ipd < 1e-3:
        return "landmarks_failed"
    local = np.stack([(points - origin) @ right, (points - origin) @ down], -1) / ipd
    brow_y = local[17:27, 1].mean()
    nose_y = local[30, 1]
    mouth_y = local[48:68, 1].mean()
    chin_y = local[8, 1]
    jaw_width = local[16, 0] - local[0, 0]
    # Order top to bottom, and proportions within generous human ranges (frontal ~ -0.35/0.7/1.15/1.9, 2.2).
    if not (brow_y < -0.05 < 0.25 < nose_y < mouth_y < chin_y) or not 1.3 < jaw_width < 3.5 or chin_y > 3.5:
        return "landmarks_failed"
    ratio = yaw_ratio(points)
    yaw = estimate_yaw_deg(points[36:42].mean(0), points[42:48].mean(0), points[30])
    if abs(yaw) > MAX_YAW_DEG or not _PROFILE_YAW <= ratio <= 1 - _PROFILE_YAW:
        return "profile"
    if detector_points is not None:
        # The detector's points are rough on small faces (CenterFace put the eyes of a 31 px face 30%
        # too close together), so only gross disagreement counts, measured in the larger eye distance.
        ipd5 = max(float(np.hypot(*(detector_points[1] - detector_points[0]))), 1e-6)
        disagreement = np.linalg.norm(landmarks5_from_68(points) - detector_points, axis=1).mean() / max(ipd, ipd5)
        if disagreement > _MAX_5PT_DISAGREEMENT or not _IPD_RATIO[0] < ipd / ipd5 < _IPD_RATIO[1]:
            return "landmarks_failed"
    return None

