"""Steady landmarks for a tracked face: the 68 points filtered over time, per track.

dlib's predictor starts from the detector's 5 points, which move by a pixel or two from frame to frame
even on a still face; the whole fit follows them. Every generated face is built from those points (the
alignment that cuts the crop and pastes it back, the semantic map, the replaced region), so that
jitter makes the generated face slide and change over the real one: on the held-out clip the
anonymized faces changed 7x more between frames than the real ones (``evaluate``'s flicker).

The filter predicts each point by moving its last filtered position with the head's motion (the
similarity that best maps the last filtered points onto the new fit, all 68 at once: no lag on turns or
moves), then follows the rest of the new fit only as far as the difference looks like motion, not jitter: a residual ``r`` (per point) moves the point by
``g * r`` with ``g = max(floor, r^2 / (r^2 + tau^2))`` and ``tau = jitter`` inter-ocular distances. Small
residuals (jitter) are damped, large ones (a turn, an opening mouth) pass almost whole. Whatever the
history, a filtered point is never farther than ``tau / 2`` from the current fit
(``max_offset``), so the face the generator replaces stays where the landmarks see it (privacy: the
replaced region is dilated by far more than that).

>>> import numpy as np
>>> stabilizer = LandmarkStabilizer()
>>> points = np.random.default_rng(0).uniform(0, 100, (68, 2)).astype(np.float32)
>>> first = stabilizer.filter(7, points)  # a new track: taken as it is
>>> bool(np.array_equal(first, points))
True
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence

import numpy as np

from .landmarks import LandmarkFit
from .types import Face

__all__ = ["DEFAULT_FLOOR", "DEFAULT_JITTER", "LandmarkStabilizer", "StabilizedLandmarker", "inter_ocular"]

DEFAULT_JITTER = 0.05  # inter-ocular distances: residuals well under this are treated as jitter
DEFAULT_FLOOR = 0.15  # the least share of a residual followed (slow drifts are never frozen)


def inter_ocular(points68: np.ndarray) -> float:
    """Distance between the eye centres of a 68-point fit (pixels)."""
    return float(np.hypot(*(points68[42:48].mean(0) - points68[36:42].mean(0))))


def follow_rigid(previous: np.ndarray, points: np.ndarray) -> np.ndarray:
    """``previous`` moved by the similarity (rotation, scale, shift) that best maps it onto ``points``
    (least squares over all points, Umeyama 1991): the head's motion measured from 68 points at once."""
    mu_p, mu_q = previous.mean(0), points.mean(0)
    p, q = previous - mu_p, points - mu_q
    var = float((p * p).sum())
    if var < 1e-9:
        return points.copy()
    u, sigma, vt = np.linalg.svd(q.T @ p)
    d = np.sign(np.linalg.det(u @ vt)) or 1.0
    rotation = u @ np.diag([1.0, d]) @ vt
    scale = float(sigma[0] + d * sigma[1]) / var
    return (scale * p @ rotation.T) + mu_q


class LandmarkStabilizer:
    """Per-key (track) temporal filter of 68-point fits; see the module docstring.

    Keeps only the keys filtered in the last frame (:meth:`end_frame`), so it cannot grow on long
    streams; a track that misses a frame (covered, or not fitted) starts afresh.
    """

    def __init__(self, *, jitter: float = DEFAULT_JITTER, floor: float = DEFAULT_FLOOR) -> None:
        if jitter < 0 or not 0.0 < floor <= 1.0:
            raise ValueError(f"need jitter >= 0 and 0 < floor <= 1, got {jitter}, {floor}")
        self.jitter = jitter
        self.floor = floor
        self._state: dict[Hashable, np.ndarray] = {}  # key -> last filtered points
        self._seen: dict[Hashable, np.ndarray] = {}

    def max_offset(self, points68: np.ndarray) -> float:
        """The farthest (pixels) a filtered point can sit from the fit ``points68`` it was made from."""
        return self.jitter * inter_ocular(points68) / 2.0  # (1 - g) * r peaks at r = tau

    def filter(self, key: Hashable, points68: np.ndarray) -> np.ndarray:
        """The filtered (68, 2) float32 points of ``key``'s current fit ``points68``."""
        points = np.asarray(points68, np.float64)
        state = self._state.get(key)
        if state is None or self.jitter == 0:
            out = points
        else:
            predicted = follow_rigid(state, points)
            residual = points - predicted
            tau = self.jitter * inter_ocular(points)
            r2 = (residual * residual).sum(1, keepdims=True)
            gain = np.maximum(self.floor, r2 / np.maximum(r2 + tau * tau, 1e-12))
            out = predicted + gain * residual
        self._seen[key] = out
        return out.astype(np.float32)

    def end_frame(self) -> None:
        """Keep the state of the keys filtered in this frame only."""
        self._state, self._seen = self._seen, {}

    def reset(self) -> None:
        self._state, self._seen = {}, {}


class StabilizedLandmarker:
    """A landmarker (``fit(image, faces)``) whose fits of tracked faces pass through a
    :class:`LandmarkStabilizer` keyed by track id; untracked faces and failed fits pass as they are."""

    def __init__(self, landmarker, stabilizer: LandmarkStabilizer) -> None:  # noqa: ANN001 (any Landmarker)
        self.landmarker = landmarker
        self.stabilizer = stabilizer

    def fit(self, image: np.ndarray, faces: Sequence[Face]) -> list[LandmarkFit]:
        fits = self.landmarker.fit(image, faces)
        out = []
        for face, fit in zip(faces, fits, strict=True):
            if fit.points is not None and face.track_id is not None:
                fit = LandmarkFit(self.stabilizer.filter(int(face.track_id), fit.points), fit.reason)
            out.append(fit)
        return out
