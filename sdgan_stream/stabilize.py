"""Steady landmarks for a tracked face: the 68 points filtered over time, per track.

dlib's predictor starts from the detector's 5 points, which move by a pixel or two from frame to frame
even on a still face; the whole fit follows them. Every generated face is built from those points (the
alignment that cuts the crop and pastes it back, the semantic map, the replaced region), so that
jitter makes the generated face slide and change over the real one: on the held-out clip the
anonymized faces changed 7x more between frames than the real ones (``evaluate``'s flicker).

The filter predicts each point by moving its last filtered position with the head's motion, then
follows the rest of the new fit only as far as the difference looks like motion, not jitter: a
residual ``r`` (per point) moves the point by ``g * r`` with ``g = max(floor, r^2 / (r^2 + tau^2))`` and
``tau = jitter`` inter-ocular distances. Small residuals (jitter) are damped, large ones (a turn, an
opening mouth) pass almost whole.

The head's motion is measured on the pixels when the frames are given
(:meth:`LandmarkStabilizer.begin_frame`): the last filtered brow, eye, nose and mouth points are
followed into the new frame by pyramidal Lucas-Kanade (checked forwards and backwards), and a
similarity fitted to them (RANSAC) moves all 68.
Without the frames, or when too few points follow or the result strays from the fit, it falls back
to the similarity that best maps the last filtered points onto the new fit. That fallback passes the
whole fit's shift, rotation and scale jitter on, and dlib's errors are largely of that kind (its fit
starts from the detector's box): on issue 13's held-out clip, measuring the motion on the pixels cut
the generated faces' change against the true motion from 1.52 to 1.06 grey levels (the real faces:
0.14; ``benchmarks/bench_flicker.py``). Whatever the history, a filtered point is never farther than
``tau / 2`` from the current fit (``max_offset``), so the face the generator replaces stays where the
landmarks see it (privacy: the replaced region is dilated by far more than that).

>>> import numpy as np
>>> stabilizer = LandmarkStabilizer()
>>> points = np.random.default_rng(0).uniform(0, 100, (68, 2)).astype(np.float32)
>>> first = stabilizer.filter(7, points)  # a new track: taken as it is
>>> bool(np.array_equal(first, points))
True
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence

import cv2
import numpy as np

from .landmarks import LandmarkFit
from .types import Face

__all__ = ["DEFAULT_FLOOR", "DEFAULT_JITTER", "LandmarkStabilizer", "StabilizedLandmarker", "inter_ocular"]

DEFAULT_JITTER = 0.05  # inter-ocular distances: residuals well under this are treated as jitter
DEFAULT_FLOOR = 0.15  # the least share of a residual followed (slow drifts are never frozen)
# Points the head's motion is measured on: brows, nose, eyes and mouth carry texture that moves with
# the head; the jaw line lies against a background that does not.
_TRACKED = slice(17, 68)
_MIN_TRACKED = 12  # fewer points followed (or agreeing on one similarity): the motion is not measured
_ROUND_TRIP_PX = 0.5  # a point followed forwards then backwards must come back this close
_RANSAC_PX = 1.0
# The measured motion is trusted while it moves the points within this many eye distances of the new
# fit (mean): a face that changed a lot (occlusion, a jump) is left to the fit.
MAX_DISAGREEMENT = 0.25


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


def follow_pixels(previous: np.ndarray, guess: np.ndarray, grey_before: np.ndarray, grey_now: np.ndarray) -> np.ndarray | None:
    """``previous`` (68, 2) moved by the head's motion measured on the pixels between two grey frames, or
    None when it cannot be measured. ``guess`` (68, 2), where the points probably are now, starts the search.

    The brow, eye, nose and mouth points are followed by pyramidal Lucas-Kanade in a window around the
    face, kept when the backward search returns them within ``_ROUND_TRIP_PX``; a similarity fitted to
    them by RANSAC moves all 68 points."""
    iod = max(inter_ocular(previous), 1.0)
    both = np.concatenate([previous, guess])
    reach = iod + 21  # search window (21 px) and some room around the face
    h, w = grey_now.shape[:2]
    x1, y1 = (max(0, int(v)) for v in both.min(0) - reach)
    x2, y2 = min(w, int(both[:, 0].max() + reach)), min(h, int(both[:, 1].max() + reach))
    if x2 - x1 < 32 or y2 - y1 < 32:
        return None
    offset = np.array([x1, y1], np.float32)
    before, now = grey_before[y1:y2, x1:x2], grey_now[y1:y2, x1:x2]
    start = (previous[_TRACKED] - offset).astype(np.float32).reshape(-1, 1, 2)
    search = dict(winSize=(21, 21), maxLevel=2, flags=cv2.OPTFLOW_USE_INITIAL_FLOW,
                  criteria=(cv2.TERM_CRITERIA_EPS | cv2.TERM_CRITERIA_COUNT, 20, 0.01))
    ahead, found, _ = cv2.calcOpticalFlowPyrLK(before, now, start, (guess[_TRACKED] - offset).astype(np.float32).reshape(-1, 1, 2), **search)
    back, returned, _ = cv2.calcOpticalFlowPyrLK(now, before, ahead, start.copy(), **search)
    good = (found[:, 0] == 1) & (returned[:, 0] == 1) & (np.linalg.norm((back - start)[:, 0], axis=1) < _ROUND_TRIP_PX)
    if int(good.sum()) < _MIN_TRACKED:
        return None
    matrix, inliers = cv2.estimateAffinePartial2D(start[good], ahead[good], method=cv2.RANSAC, ransacReprojThreshold=_RANSAC_PX)
    if matrix is None or inliers is None or int(inliers.sum()) < _MIN_TRACKED:
        return None
    linear = matrix[:, :2]
    shift = matrix[:, 2] + offset - linear @ offset  # the window's similarity in frame coordinates
    return previous @ linear.T + shift


class LandmarkStabilizer:
    """Per-key (track) temporal filter of 68-point fits; see the module docstring.

    Keeps only the keys filtered in the last frame (:meth:`end_frame`), so it cannot grow on long
    streams; a track that misses a frame (covered, or not fitted) starts afresh. Give it each frame
    (:meth:`begin_frame`) before filtering that frame's fits, and it measures the head's motion on the pixels.
    """

    def __init__(self, *, jitter: float = DEFAULT_JITTER, floor: float = DEFAULT_FLOOR) -> None:
        if jitter < 0 or not 0.0 < floor <= 1.0:
            raise ValueError(f"need jitter >= 0 and 0 < floor <= 1, got {jitter}, {floor}")
        self.jitter = jitter
        self.floor = floor
        self._state: dict[Hashable, np.ndarray] = {}  # key -> last filtered points
        self._seen: dict[Hashable, np.ndarray] = {}
        self._grey: np.ndarray | None = None  # the frame _state was filtered on (grey, a copy)
        self._grey_now: np.ndarray | None = None

    def max_offset(self, points68: np.ndarray) -> float:
        """The farthest (pixels) a filtered point can sit from the fit ``points68`` it was made from."""
        return self.jitter * inter_ocular(points68) / 2.0  # (1 - g) * r peaks at r = tau

    def begin_frame(self, image: np.ndarray) -> None:
        """The frame (RGB, or grey) whose fits come next: the head's motion is measured on it."""
        if self.jitter > 0:  # 0: the filter is off
            self._grey_now = cv2.cvtColor(image, cv2.COLOR_RGB2GRAY) if image.ndim == 3 else image.copy()

    def predict(self, key: Hashable, points68: np.ndarray) -> np.ndarray | None:
        """Where ``key``'s last filtered points are now: moved by the motion measured on the pixels, else by
        the similarity that maps them onto the new fit ``points68``; None for a key with no history."""
        state = self._state.get(key)
        if state is None:
            return None
        points = np.asarray(points68, np.float64)
        guess = follow_rigid(state, points)
        if self._grey is None or self._grey_now is None or self._grey.shape != self._grey_now.shape:
            return guess
        moved = follow_pixels(state, guess, self._grey, self._grey_now)
        if moved is None or np.linalg.norm(moved - points, axis=1).mean() > MAX_DISAGREEMENT * inter_ocular(points):
            return guess
        return moved

    def filter(self, key: Hashable, points68: np.ndarray) -> np.ndarray:
        """The filtered (68, 2) float32 points of ``key``'s current fit ``points68``."""
        points = np.asarray(points68, np.float64)
        predicted = self.predict(key, points) if self.jitter > 0 else None
        if predicted is None:
            out = points
        else:
            residual = points - predicted
            tau = self.jitter * inter_ocular(points)
            r2 = (residual * residual).sum(1, keepdims=True)
            gain = np.maximum(self.floor, r2 / np.maximum(r2 + tau * tau, 1e-12))
            out = predicted + gain * residual
        self._seen[key] = out
        return out.astype(np.float32)

    def end_frame(self) -> None:
        """Keep the state of the keys filtered in this frame only (and the frame they were filtered on)."""
        self._state, self._seen = self._seen, {}
        self._grey, self._grey_now = self._grey_now, None

    def reset(self) -> None:
        self._state, self._seen = {}, {}
        self._grey = self._grey_now = None


class StabilizedLandmarker:
    """A landmarker (``fit(image, faces)``) whose fits of tracked faces pass through a
    :class:`LandmarkStabilizer` keyed by track id; untracked faces and failed fits pass as they are."""

    def __init__(self, landmarker, stabilizer: LandmarkStabilizer) -> None:  # noqa: ANN001 (any Landmarker)
        self.landmarker = landmarker
        self.stabilizer = stabilizer

    def fit(self, image: np.ndarray, faces: Sequence[Face]) -> list[LandmarkFit]:
        fits = self.landmarker.fit(image, faces)
        self.stabilizer.begin_frame(image)
        out = []
        for face, fit in zip(faces, fits, strict=True):
            if fit.points is not None and face.track_id is not None:
                fit = LandmarkFit(self.stabilizer.filter(int(face.track_id), fit.points), fit.reason)
            out.append(fit)
        return out
