"""Multi-face tracking: SORT-style Kalman filters, ByteTrack-style two-stage association.

Why a tracker at all: detectors miss faces for a frame or two (motion blur, a hand in front, a turned
head), and a missed face would be written to the output un-anonymized. The tracker keeps every
person covered while in view and gives each person one fake identity for as long as it is tracked.

How it works, per frame (:meth:`FaceTracker.update`):

1. Every track's Kalman filter predicts the box (centre, scale, aspect ratio and their velocities).
2. Overlap first (Hungarian assignment on IoU): confident detections (``score >= high_threshold``)
   against all tracks, then, as ByteTrack does, weak detections (``low_threshold <= score <
   high_threshold``: a blurred or half-hidden face) against the tracks left, only to keep them alive.
3. Then centre distance, for what is left: small or fast faces whose IoU with the prediction is ~0.
   Distance comes after all overlap evidence, so that a confident detection of a neighbouring face
   cannot take the track of a face that is blurred this frame.
4. Unmatched confident detections start new tracks (covering never waits for confirmation); an
   unmatched weak detection is dropped.
5. A track that found no detection is reported at its predicted box, widened with the time since
   its last detection and with its Kalman uncertainty, for ``max_age`` frames; then it ends.

Time runs on the stream's clock when the frames' times are given (``update(..., seconds=t)``): a live
filter slower than its source sees only some frames (the newest one each time), and one update then
stands for all the frames in between. Prediction, age, widening and the landmark filter step by the
frames that passed (at the nominal ``fps``), not by one. Counting updates as frames made a face that
moved between two processed frames a new person: with every 15th frame of a 4-person clip, 20 tracks
and up to 18 covered boxes a frame (``benchmarks/bench_sparse_frames.py``). A track still coasts through
at least ``min_coasts`` updates, whatever the time, so one missed detection on a sparse stream leaves
the face covered.

Each track has an identity seed (selects the generated identity) derived from a per-tracker random
base and the track id; the ``track_id -> seed`` map is pruned when tracks end. Landmarks are smoothed
with a One Euro filter so that the aligned face crop does not jitter.

The Kalman filters are the SORT model (Bewley et al. 2016) with DeepSORT's scale-proportional noise;
they are stepped together as arrays (:class:`KalmanBoxBank`), which gives exactly what one
``filterpy.kalman.KalmanFilter`` per track gives (a test checks it) at a fraction of the cost: with
50 faces, 50 filterpy objects alone cost about as much as this whole tracker
(``benchmarks/bench_tracker.py``).
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass

import numpy as np
from scipy.optimize import linear_sum_assignment

from .types import Detections, Face

log = logging.getLogger(__name__)

__all__ = [
    "FaceTracker",
    "KalmanBoxBank",
    "OneEuroFilter",
    "associate",
    "box_iou",
    "box_overlaps",
    "match_by_centre",
    "match_by_iou",
    "boxes_to_measurements",
    "states_to_boxes",
]

MIN_SIZE = 1.0  # px: boxes are never thinner than this inside the filter (zero-area detections exist)
MIN_ASPECT, MAX_ASPECT = 0.1, 10.0  # width / height bounds of a predicted box

# Noise, as DeepSORT: standard deviations proportional to the face scale, so that the filter behaves
# the same for a 20 px face and a 400 px face.
STD_POSITION = 1.0 / 20.0  # per frame, of the scale: centre and scale (process and measurement)
STD_VELOCITY = 1.0 / 20.0  # per frame, of the scale: how fast a velocity may change (faces sway, cameras shake)
STD_ASPECT = 1e-2  # absolute, per frame
STD_ASPECT_MEASURED = 1e-1
STD_ASPECT_VELOCITY = 1e-3
INITIAL_STD_VELOCITY = 0.5  # of the scale: a new face may already be moving fast; learn it in ~2 frames
INITIAL_STD_SCALE_VELOCITY = 0.05  # of the scale: sizes change slowly; two noisy boxes must not set a trend
# Centre matching reaches past the gate by the track's uncertainty, but at most this many scales per
# update; an update standing for k frames (sparse frames) reaches sqrt(k) times as far, as a random walk.
MAX_SIGMA_GATE = 0.5

# Five-point landmark template inside a box (fractions of width/height), used when a detection
# comes without usable landmarks.
_LANDMARK_TEMPLATE = np.array([[0.32, 0.42], [0.68, 0.42], [0.50, 0.60], [0.36, 0.78], [0.64, 0.78]], np.float64)


# --------------------------------------------------------------------------------------------------
# Box geometry
# --------------------------------------------------------------------------------------------------
def box_overlaps(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Pairwise intersection areas (N, M) of boxes ``a`` (N, 4) and ``b`` (M, 4), xyxy, and their areas."""
    a = np.asarray(a, np.float64)
    b = np.asarray(b, np.float64)
    ix = np.minimum(a[:, None, 2], b[None, :, 2]) - np.maximum(a[:, None, 0], b[None, :, 0])
    iy = np.minimum(a[:, None, 3], b[None, :, 3]) - np.maximum(a[:, None, 1], b[None, :, 1])
    inter = np.clip(ix, 0, None) * np.clip(iy, 0, None)
    return inter, (a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1]), (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])


def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Pairwise IoU of boxes ``a`` (N, 4) and ``b`` (M, 4), xyxy; zero-area boxes give IoU 0.

    >>> box_iou(np.array([[0, 0, 2, 2]]), np.array([[1, 1, 3, 3], [5, 5, 5, 5]])).round(3).tolist()
    [[0.143, 0.0]]
    """
    inter, area_a, area_b = box_overlaps(a, b)
    union = area_a[:, None] + area_b[None, :] - inter
    return np.where(union > 0, inter / np.maximum(union, 1e-12), 0.0)


def boxes_to_measurements(boxes: np.ndarray) -> np.ndarray:
    """xyxy boxes (N, 4) -> Kalman measurements (N, 4): centre x, centre y, scale, aspect ratio.

    Scale is ``sqrt(w * h)`` (a length, so it moves about linearly as a face approaches) and the
    aspect ratio is ``w / h``; widths and heights are floored at :data:`MIN_SIZE`.
    """
    boxes = np.asarray(boxes, np.float64)
    w = np.maximum(boxes[:, 2] - boxes[:, 0], MIN_SIZE)
    h = np.maximum(boxes[:, 3] - boxes[:, 1], MIN_SIZE)
    cx = (boxes[:, 0] + boxes[:, 2]) / 2
    cy = (boxes[:, 1] + boxes[:, 3]) / 2
    return np.stack([cx, cy, np.sqrt(w * h), w / h], axis=1)


def states_to_boxes(states: np.ndarray) -> np.ndarray:
    """Kalman states or measurements (N, >=4) -> xyxy boxes (N, 4), float64."""
    cx, cy, s, r = states[:, 0], states[:, 1], states[:, 2], states[:, 3]
    root = np.sqrt(r)
    half_w, half_h = s * root / 2, s / root / 2
    return np.stack([cx - half_w, cy - half_h, cx + half_w, cy + half_h], axis=1)


def _scales(boxes: np.ndarray) -> np.ndarray:
    w = np.maximum(boxes[:, 2] - boxes[:, 0], MIN_SIZE)
    h = np.maximum(boxes[:, 3] - boxes[:, 1], MIN_SIZE)
    return np.sqrt(w * h)


# --------------------------------------------------------------------------------------------------
# Kalman filters, stepped together
# --------------------------------------------------------------------------------------------------
def _diag(stds: np.ndarray) -> np.ndarray:
    """(N, D) standard deviations -> (N, D, D) diagonal covariances."""
    n, d = stds.shape
    out = np.zeros((n, d, d))
    out[:, np.arange(d), np.arange(d)] = stds**2
    return out


class KalmanBoxBank:
    """Constant-velocity Kalman filters for N boxes, one row per track, stepped as arrays.

    State per row: ``[cx, cy, s, r, vcx, vcy, vs, vr]`` (see :func:`boxes_to_measurements`),
    velocities per frame. Each row follows the same equations as a ``filterpy.kalman.KalmanFilter``
    with ``F`` = :attr:`F`, ``H`` = :attr:`H`, ``Q`` = :meth:`process_noise` and ``R`` =
    :meth:`measurement_noise` (Joseph-form update, as filterpy).

    >>> bank = KalmanBoxBank()
    >>> bank.add(boxes_to_measurements(np.array([[0.0, 0, 10, 10]])))
    >>> bank.predict(); bank.boxes().round(1).tolist()
    [[0.0, 0.0, 10.0, 10.0]]
    """

    DIM_X = 8
    DIM_Z = 4
    F = np.eye(8) + np.eye(8, k=4)  # x' = x + v (one frame)
    H = np.eye(4, 8)

    def __init__(self) -> None:
        self.x = np.zeros((0, self.DIM_X))
        self.P = np.zeros((0, self.DIM_X, self.DIM_X))
        self.last_z = np.zeros((0, self.DIM_Z))  # last measurement per row, to recover from bad states

    def __len__(self) -> int:
        return len(self.x)

    # -- noise models ---------------------------------------------------------------------------
    @staticmethod
    def process_noise(scale: np.ndarray) -> np.ndarray:
        """Q for rows of the given scales (N,) -> (N, 8, 8)."""
        s = np.maximum(scale, MIN_SIZE)
        pos, vel = STD_POSITION * s, STD_VELOCITY * s
        ones = np.ones_like(s)
        return _diag(np.stack([pos, pos, pos, STD_ASPECT * ones, vel, vel, vel, STD_ASPECT_VELOCITY * ones], 1))

    @staticmethod
    def measurement_noise(scale: np.ndarray) -> np.ndarray:
        """R for rows of the given scales (N,) -> (N, 4, 4)."""
        s = np.maximum(scale, MIN_SIZE)
        pos = STD_POSITION * s
        return _diag(np.stack([pos, pos, pos, STD_ASPECT_MEASURED * np.ones_like(s)], 1))

    @staticmethod
    def initial_covariance(scale: np.ndarray) -> np.ndarray:
        """P of a new row (N,) -> (N, 8, 8): position known to the detector's noise, velocity wide open."""
        s = np.maximum(scale, MIN_SIZE)
        pos, vel, svel = 2 * STD_POSITION * s, INITIAL_STD_VELOCITY * s, INITIAL_STD_SCALE_VELOCITY * s
        ones = np.ones_like(s)
        return _diag(np.stack([pos, pos, pos, STD_ASPECT * ones, vel, vel, svel, STD_ASPECT_VELOCITY * ones], 1))

    # -- rows -------------------------------------------------------------------------------------
    def add(self, z: np.ndarray) -> None:
        """Append rows initialised at measurements ``z`` (N, 4), velocity zero."""
        z = np.asarray(z, np.float64).reshape(-1, self.DIM_Z)
        x = np.zeros((len(z), self.DIM_X))
        x[:, :4] = z
        self.x = np.concatenate([self.x, x])
        self.P = np.concatenate([self.P, self.initial_covariance(z[:, 2])])
        self.last_z = np.concatenate([self.last_z, z])

    def select(self, index: np.ndarray) -> None:
        """Keep only the rows given by a boolean mask or an index array, in that order."""
        self.x, self.P, self.last_z = self.x[index], self.P[index], self.last_z[index]

    # -- filter steps -----------------------------------------------------------------------------
    def predict(self, frames: int = 1) -> None:
        """``frames`` frames ahead for every row; scale and aspect are kept in a valid range.

        The uncertainty grows frame by frame, as if each frame had been seen without a detection, but
        the state moves with its velocity for the first frame only: over a longer gap (a live filter
        that saw every 15th frame) heads sway and turn back, and extrapolating the last velocity put the
        prediction farther from the face than where it was (``bench_sparse_frames.py``)."""
        for step in range(frames if len(self) else 0):
            q = self.process_noise(self.x[:, 2])
            if step == 0:
                self.x = self.x @ self.F.T
            self.P = self.F @ self.P @ self.F.T + q
            self._guard()

    def update(self, rows: np.ndarray, z: np.ndarray) -> None:
        """Correct rows ``rows`` with measurements ``z`` (len(rows), 4)."""
        rows = np.asarray(rows, np.intp)
        if not len(rows):
            return
        z = np.asarray(z, np.float64)
        x, P = self.x[rows], self.P[rows]
        r = self.measurement_noise(x[:, 2])
        S = P[:, :4, :4] + r  # H P H^T + R
        K = np.linalg.solve(S, P[:, :4, :]).transpose(0, 2, 1)  # P H^T S^-1 (P, S symmetric)
        x = x + np.einsum("nij,nj->ni", K, z - x[:, :4])
        I_KH = np.eye(self.DIM_X) - K @ self.H
        P = I_KH @ P @ I_KH.transpose(0, 2, 1) + K @ r @ K.transpose(0, 2, 1)
        self.x[rows], self.P[rows], self.last_z[rows] = x, P, z
        self._guard()

    def _guard(self) -> None:
        """Keep every state usable: scale >= MIN_SIZE and not shrinking there, aspect in range, finite."""
        x = self.x
        small = x[:, 2] < MIN_SIZE
        if small.any():
            x[small, 2] = MIN_SIZE
            x[small, 6] = np.maximum(x[small, 6], 0.0)
        bad_aspect = (x[:, 3] < MIN_ASPECT) | (x[:, 3] > MAX_ASPECT)
        if bad_aspect.any():
            x[bad_aspect, 3] = np.clip(x[bad_aspect, 3], MIN_ASPECT, MAX_ASPECT)
            x[bad_aspect, 7] = 0.0
        broken = ~(np.isfinite(x).all(1) & np.isfinite(self.P).all((1, 2)))
        if broken.any():  # should not happen; restart those rows at their last measurement
            log.warning("resetting %d Kalman state(s) that became non-finite", int(broken.sum()))
            x[broken] = 0.0
            x[broken, :4] = self.last_z[broken]
            self.P[broken] = self.initial_covariance(self.last_z[broken, 2])

    # -- read-out ---------------------------------------------------------------------------------
    def boxes(self) -> np.ndarray:
        """Current boxes (N, 4) xyxy float64."""
        return states_to_boxes(self.x)

    def edge_sigma(self) -> np.ndarray:
        """Standard deviation (N, 2) of a vertical and of a horizontal box edge, in pixels.

        Left/right edge = cx -+ w/2 with w = s*sqrt(r): var = var(cx) + r*var(s)/4 (aspect error
        neglected); likewise for top/bottom with h = s/sqrt(r).
        """
        r = self.x[:, 3]
        var_s = self.P[:, 2, 2]
        sx = np.sqrt(np.maximum(self.P[:, 0, 0] + r * var_s / 4, 0))
        sy = np.sqrt(np.maximum(self.P[:, 1, 1] + var_s / (4 * r), 0))
        return np.stack([sx, sy], axis=1)


# --------------------------------------------------------------------------------------------------
# Landmark smoothing
# --------------------------------------------------------------------------------------------------
class OneEuroFilter:
    """One Euro filter (Casiez et al. 2012) for N rows of values, stepped as arrays.

    Low cutoff (strong smoothing) while still, higher cutoff as speed grows, so jitter is removed
    without lag on motion. Speed is measured in face scales per second (``scale`` argument), so one
    setting fits small and large faces. ``max_lag`` bounds how far (in scales) the smoothed value may
    trail the raw value: a crop aligned on landmarks that lag a fast face would leave part of the real
    face uncovered.

    >>> f = OneEuroFilter(min_cutoff=1.0, beta=0.0, max_lag=1.0)
    >>> f.add(np.array([[0.0]])); out = f(np.array([0]), np.array([[1.0]]), np.array([0.04]), np.array([10.0]))
    >>> round(float(out[0, 0]), 3)  # one step at 25 fps moves ~20% of the way
    0.201
    """

    def __init__(
        self, *, min_cutoff: float = 1.0, beta: float = 4.0, d_cutoff: float = 1.0, max_lag: float = 0.05
    ) -> None:
        self.min_cutoff, self.beta, self.d_cutoff, self.max_lag = min_cutoff, beta, d_cutoff, max_lag
        self.value = np.zeros((0, 0))
        self.derivative = np.zeros((0, 0))

    def __len__(self) -> int:
        return len(self.value)

    @staticmethod
    def _alpha(cutoff: np.ndarray, dt: np.ndarray) -> np.ndarray:
        tau = 1.0 / (2 * math.pi * cutoff)
        return 1.0 / (1.0 + tau / dt)

    def add(self, values: np.ndarray) -> None:
        """Append rows starting at ``values`` (N, D), derivative zero."""
        values = np.asarray(values, np.float64)
        if not len(self.value):
            self.value = np.zeros((0, values.shape[1]))
            self.derivative = np.zeros((0, values.shape[1]))
        self.value = np.concatenate([self.value, values])
        self.derivative = np.concatenate([self.derivative, np.zeros_like(values)])

    def select(self, index: np.ndarray) -> None:
        self.value, self.derivative = self.value[index], self.derivative[index]

    def __call__(self, rows: np.ndarray, raw: np.ndarray, dt: np.ndarray, scale: np.ndarray) -> np.ndarray:
        """Filter new raw values (len(rows), D) seen ``dt`` seconds after each row's last value."""
        if not len(rows):
            return np.zeros((0, self.value.shape[1] if self.value.ndim == 2 else 0))
        raw = np.asarray(raw, np.float64)
        prev, dprev = self.value[rows], self.derivative[rows]
        dt = np.asarray(dt, np.float64)[:, None]
        scale = np.maximum(np.asarray(scale, np.float64), MIN_SIZE)[:, None]
        speed = (raw - prev) / dt
        d_hat = dprev + self._alpha(np.float64(self.d_cutoff), dt) * (speed - dprev)
        cutoff = self.min_cutoff + self.beta * np.abs(d_hat) / scale
        smooth = prev + self._alpha(cutoff, dt) * (raw - prev)
        limit = self.max_lag * scale
        smooth = raw + np.clip(smooth - raw, -limit, limit)
        self.value[rows], self.derivative[rows] = smooth, d_hat
        return smooth


# --------------------------------------------------------------------------------------------------
# Association
# --------------------------------------------------------------------------------------------------
def _solve(cost: np.ndarray, admissible: np.ndarray, limit: float) -> tuple[np.ndarray, np.ndarray]:
    """Minimum-cost matching among admissible pairs, each cheaper than ``limit``.

    Inadmissible pairs are priced at ``limit`` (not at infinity) and dropped afterwards: then the
    solver never trades one good match for two poor ones just to match more pairs (what lap's
    ``cost_limit`` does), which would move a lost face's track onto a neighbour.
    """
    priced = np.where(admissible, np.minimum(cost, limit), limit)
    rows, cols = linear_sum_assignment(priced)
    ok = priced[rows, cols] < limit
    return rows[ok], cols[ok]


def match_by_iou(
    track_boxes: np.ndarray, det_boxes: np.ndarray, *, iou_threshold: float = 0.3
) -> tuple[np.ndarray, np.ndarray]:
    """Hungarian matching on cost ``1 - IoU`` among pairs with IoU >= ``iou_threshold``: (rows, cols)."""
    if not len(track_boxes) or not len(det_boxes):
        return np.zeros(0, np.intp), np.zeros(0, np.intp)
    iou = box_iou(track_boxes, det_boxes)
    threshold = max(iou_threshold, 1e-9)  # zero-overlap pairs are never IoU matches
    return _solve(1.0 - iou, iou >= threshold, limit=1.0 - threshold + 1e-9)


def match_by_centre(
    track_boxes: np.ndarray,
    det_boxes: np.ndarray,
    *,
    track_sigma: np.ndarray | None = None,
    centre_gate: float = 0.6,
    max_size_ratio: float = 1.4,
    n_sigma: float = 2.0,
    max_sigma_gate: float = MAX_SIGMA_GATE,
) -> tuple[np.ndarray, np.ndarray]:
    """Hungarian matching on centre distance, for small or fast faces whose IoU with the prediction is ~0.

    A pair is admissible when the centres are within ``centre_gate`` scales (the larger of the two),
    plus ``n_sigma`` of the track's edge uncertainty ``track_sigma`` (N, 2) but at most
    ``max_sigma_gate`` scales (a long-lost track must not reach across to other faces), and the
    scales differ by at most ``max_size_ratio``. Cost: distance / gate radius. Returns (rows, cols).
    """
    if not len(track_boxes) or not len(det_boxes) or centre_gate <= 0:
        return np.zeros(0, np.intp), np.zeros(0, np.intp)
    t, d = np.asarray(track_boxes, np.float64), np.asarray(det_boxes, np.float64)
    st, sd = _scales(t), _scales(d)
    dx = (d[None, :, 0] + d[None, :, 2] - t[:, None, 0] - t[:, None, 2]) / 2
    dy = (d[None, :, 1] + d[None, :, 3] - t[:, None, 1] - t[:, None, 3]) / 2
    radius = centre_gate * np.maximum(st[:, None], sd[None, :])
    if track_sigma is not None:
        sigma = np.asarray(track_sigma, np.float64)
        radius = radius + np.minimum(n_sigma * np.hypot(sigma[:, 0], sigma[:, 1]), max_sigma_gate * st)[:, None]
    ratio = np.maximum(st[:, None], sd[None, :]) / np.minimum(st[:, None], sd[None, :])
    near = np.hypot(dx, dy) / radius
    return _solve(near, (near <= 1.0) & (ratio <= max_size_ratio), limit=1.0 + 1e-9)


def associate(
    track_boxes: np.ndarray,
    det_boxes: np.ndarray,
    *,
    track_sigma: np.ndarray | None = None,
    iou_threshold: float = 0.3,
    centre_gate: float = 0.6,
    **centre_options: float,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Match predicted track boxes to detection boxes: on IoU first, then the rest on centre distance.

    See :func:`match_by_iou` and :func:`match_by_centre` (``centre_options`` go to the latter).
    Returns ``(matches (K, 2) [track, det], unmatched_tracks, unmatched_dets)`` as intp arrays.

    >>> m, ut, ud = associate(np.array([[0, 0, 10, 10]]), np.array([[50, 50, 60, 60], [1, 1, 11, 11]]))
    >>> m.tolist(), ut.tolist(), ud.tolist()
    ([[0, 1]], [], [0])
    """
    n, m = len(track_boxes), len(det_boxes)
    rows, cols = match_by_iou(track_boxes, det_boxes, iou_threshold=iou_threshold)
    left_t = np.setdiff1d(np.arange(n), rows)
    left_d = np.setdiff1d(np.arange(m), cols)
    sigma = None if track_sigma is None else np.asarray(track_sigma)[left_t]
    r2, c2 = match_by_centre(np.asarray(track_boxes)[left_t], np.asarray(det_boxes)[left_d], track_sigma=sigma,
                             centre_gate=centre_gate, **centre_options)
    matches = np.stack([np.concatenate([rows, left_t[r2]]), np.concatenate([cols, left_d[c2]])], 1).astype(np.intp)
    return (matches.reshape(-1, 2), np.setdiff1d(left_t, left_t[r2]).astype(np.intp),
            np.setdiff1d(left_d, left_d[c2]).astype(np.intp))


# --------------------------------------------------------------------------------------------------
# The tracker
# --------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class _Clean:
    """Detections made safe to compute with: float64, finite, x1 <= x2, y1 <= y2."""

    boxes: np.ndarray
    scores: np.ndarray
    landmarks: np.ndarray  # (N, 5, 2); rows without usable landmarks get the box template


def _complement(index: np.ndarray, n: int) -> np.ndarray:
    """The integers in [0, n) not in ``index``, sorted."""
    mask = np.ones(n, bool)
    mask[index] = False
    return np.flatnonzero(mask)


def _clean(detections: Detections) -> _Clean:
    boxes = np.asarray(detections.boxes, np.float64)
    scores = np.nan_to_num(np.asarray(detections.scores, np.float64), nan=0.0)
    landmarks = np.asarray(detections.landmarks, np.float64)
    finite = np.isfinite(boxes).all(1)
    if not finite.all():  # a box that is not a place cannot be covered; the detector never gives one
        log.warning("ignoring %d detection(s) with non-finite boxes", int((~finite).sum()))
        boxes, scores, landmarks = boxes[finite], scores[finite], landmarks[finite]
    boxes = np.concatenate([np.minimum(boxes[:, :2], boxes[:, 2:]), np.maximum(boxes[:, :2], boxes[:, 2:])], 1)
    bad_lm = ~np.isfinite(landmarks).all((1, 2))
    if bad_lm.any():
        size = boxes[bad_lm, 2:] - boxes[bad_lm, :2]
        landmarks = landmarks.copy()
        landmarks[bad_lm] = boxes[bad_lm, None, :2] + _LANDMARK_TEMPLATE[None] * size[:, None]
    return _Clean(boxes, scores, landmarks)


class FaceTracker:
    """Tracks faces across frames and says which faces to cover on each frame.

    Args:
        fps: frame rate of the stream (time base of landmark smoothing; sets the default ``max_age``).
        max_age: frames a track stays covered at its predicted box without a detection;
            ``None`` = about half a second (``round(0.5 * fps)``).
        min_coasts: ... but at least this many updates (sparse frames: see the module docstring).
        high_threshold: detections at or above this score are shown (covered) and may start tracks.
        low_threshold: weaker detections down to this score only keep existing tracks alive.
        seed: fixes the identity seeds (tests, reproducible demos); ``None`` draws a fresh random
            base per tracker and per :meth:`reset`, so different streams get different fake faces.
        iou_threshold: least IoU between a predicted box and a detection for an IoU match.
        centre_gate: a non-overlapping detection may still match if its centre lies within this many
            face scales of the prediction (small, fast faces); 0 disables the gate.
        low_centre_gate: the same for weak detections (stricter: they are less reliable).
        widen_per_frame: a predicted box grows by this fraction of its size per missed frame ...
        n_sigma: ... plus this many standard deviations of its Kalman edge uncertainty on each side ...
        max_widen: ... up to this multiple of its size (uncertainty grows fast, a new track's above
            all: its velocity is barely known; past some size a cover only hides the scene).
        duplicate_iou: an unmatched confident detection overlapping an already claimed one this much
            does not start a second track (it is still output, with the identity of the first).
        landmark_min_cutoff, landmark_beta, landmark_max_lag: One Euro filter settings, see
            :class:`OneEuroFilter`.

    >>> tracker = FaceTracker(fps=25, seed=0)
    >>> det = Detections(np.array([[10, 10, 50, 60]], np.float32), np.array([0.9], np.float32),
    ...                  np.zeros((1, 5, 2), np.float32))
    >>> [(f.track_id, f.source) for f in tracker.update(det)]
    [(1, 'detected')]
    >>> [(f.track_id, f.source) for f in tracker.update(Detections.empty())]
    [(1, 'predicted')]
    """

    def __init__(
        self,
        *,
        fps: float = 25.0,
        max_age: int | None = None,
        min_coasts: int = 2,
        high_threshold: float = 0.5,
        low_threshold: float = 0.1,
        seed: int | None = None,
        iou_threshold: float = 0.3,
        centre_gate: float = 0.6,
        low_centre_gate: float = 0.3,
        widen_per_frame: float = 0.04,
        n_sigma: float = 2.0,
        max_widen: float = 3.0,
        duplicate_iou: float = 0.7,
        landmark_min_cutoff: float = 1.0,
        landmark_beta: float = 4.0,
        landmark_max_lag: float = 0.05,
    ) -> None:
        if not fps > 0:
            raise ValueError(f"fps must be positive, got {fps}")
        if not 0.0 <= low_threshold <= high_threshold <= 1.0:
            raise ValueError(f"need 0 <= low_threshold <= high_threshold <= 1, got {low_threshold}, {high_threshold}")
        if max_age is None:
            max_age = max(1, round(0.5 * fps))
        if max_age < 0:
            raise ValueError(f"max_age must be >= 0, got {max_age}")
        if min_coasts < 0:
            raise ValueError(f"min_coasts must be >= 0, got {min_coasts}")
        self.fps = float(fps)
        self.max_age = int(max_age)
        # Never more coasting updates than frames of age: on a stream seen whole, max_age alone decides.
        self.min_coasts = min(int(min_coasts), self.max_age)
        self.high_threshold = float(high_threshold)
        self.low_threshold = float(low_threshold)
        self.seed = seed
        self.iou_threshold = iou_threshold
        self.centre_gate = centre_gate
        self.low_centre_gate = low_centre_gate
        self.widen_per_frame = widen_per_frame
        self.n_sigma = n_sigma
        self.max_widen = max_widen
        self.duplicate_iou = duplicate_iou
        self._landmark_settings = dict(min_cutoff=landmark_min_cutoff, beta=landmark_beta, max_lag=landmark_max_lag)
        self.reset()

    # -- public API -------------------------------------------------------------------------------
    def reset(self) -> None:
        """Forget everything (a new stream): ids restart at 1, a new identity base unless seeded."""
        self._next_id = 1
        self._last_seconds: float | None = None
        self._entropy = np.random.SeedSequence(self.seed).entropy
        self._seeds: dict[int, int] = {}  # track_id -> identity seed, live tracks only
        self._kalman = KalmanBoxBank()
        self._landmarks = OneEuroFilter(**self._landmark_settings)
        # Per-track columns, one row per live track, aligned with the Kalman bank's rows.
        self._ids = np.zeros(0, np.int64)
        self._misses = np.zeros(0, np.int64)  # frames since the last detection
        self._coasts = np.zeros(0, np.int64)  # updates since the last detection
        self._score = np.zeros(0)  # score of the last detection
        self._last_wh = np.zeros((0, 2))  # size of the last detection box
        self._landmarks_rel = np.zeros((0, 5, 2))  # smoothed landmarks relative to the last box

    @property
    def active_track_count(self) -> int:
        """Live tracks (detected this frame or still covered at their prediction)."""
        return len(self._ids)

    @property
    def identity_seeds(self) -> dict[int, int]:
        """``track_id -> identity seed`` of the live tracks (a copy)."""
        return dict(self._seeds)

    def identity_seed(self, track_id: int) -> int:
        """The identity seed of a track id under this tracker's base (stable, 31-bit)."""
        state = np.random.SeedSequence(self._entropy, spawn_key=(int(track_id),)).generate_state(1)
        return int(state[0] & 0x7FFFFFFF)

    def _advance_clock(self, seconds: float | None) -> int:
        """Move the tracker's clock to ``seconds``; returns how many frames of the stream this update stands
        for: the time since the last update at ``fps``, at least 1 (no time, a first frame, a clock going
        back) and at most ``fps`` (a second: past that a constant-velocity prediction is worth little, and
        a track without a detection that long has outlived the default ``max_age``)."""
        last, self._last_seconds = self._last_seconds, seconds
        if seconds is None or last is None or not math.isfinite(seconds - last):
            return 1
        return int(min(max(round((seconds - last) * self.fps), 1), max(round(self.fps), 1)))

    def update(self, detections: Detections, *, seconds: float | None = None) -> list[Face]:
        """All faces to cover on this frame (see the module docstring for the steps); ``seconds``: the
        frame's time on the stream's clock (without it, each update is the next frame).

        Matched tracks come out as ``source='detected'`` at the detection box (a weak detection's box
        is joined with the prediction, padded by ``n_sigma`` of its uncertainty) with smoothed
        landmarks; tracks that missed their detection as ``'predicted'`` at a widened predicted box;
        unmatched confident detections start tracks.
        Every detection with ``score >= high_threshold`` is in the output.
        """
        det = _clean(detections)
        n_tracks = len(self._ids)
        frames = self._advance_clock(seconds)
        self._kalman.predict(frames)
        predicted = self._kalman.boxes()
        sigma = self._kalman.edge_sigma()

        high = np.flatnonzero(det.scores >= self.high_threshold)
        low = np.flatnonzero((det.scores >= self.low_threshold) & (det.scores < self.high_threshold))

        rows, dets, weak = self._associate(predicted, sigma, det.boxes, high, low, frames)
        out_boxes = det.boxes[dets].copy()
        if weak.any():  # a blurred/half-hidden face's box may be partial: join the prediction and its uncertainty
            pad = self.n_sigma * np.tile(sigma[rows[weak]], 2) * [-1, -1, 1, 1]
            pb = predicted[rows[weak]] + pad
            wb = out_boxes[weak]
            out_boxes[weak] = np.concatenate([np.minimum(pb[:, :2], wb[:, :2]), np.maximum(pb[:, 2:], wb[:, 2:])], 1)

        self._update_matched(rows, dets, det, frames)
        unmatched_rows = _complement(rows, n_tracks)
        self._misses[unmatched_rows] += frames
        self._coasts[unmatched_rows] += 1

        confident = ~weak
        unmatched_high = high[~np.isin(high, dets, assume_unique=True)] if len(dets) else high
        born, duplicates = self._birth(unmatched_high, det, claimed=det.boxes[dets[confident]],
                                       owners=rows[confident])
        shown = np.concatenate([rows, np.arange(n_tracks, n_tracks + len(born))])
        faces = self._faces(shown, np.concatenate([out_boxes, det.boxes[born]]),
                            np.concatenate([det.scores[dets], det.scores[born]]),
                            self._landmarks.value[shown].reshape(-1, 5, 2), "detected")
        alive = unmatched_rows[~self._ended(unmatched_rows)]
        boxes, landmarks = self._predicted_boxes(alive, predicted, sigma)
        faces |= self._faces(alive, boxes, self._score[alive], landmarks, "predicted")
        self._prune()
        return [faces[row] for row in sorted(faces)] + duplicates

    # -- steps ------------------------------------------------------------------------------------
    def _associate(
        self, predicted: np.ndarray, sigma: np.ndarray, boxes: np.ndarray, high: np.ndarray, low: np.ndarray,
        frames: int,
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Match tracks to detections (``frames`` after the last update); returns track rows, detection indices
        and a weak-match flag.

        All overlap evidence before any distance evidence: confident detections on IoU, then (as
        ByteTrack) weak ones on IoU with the tracks left, then centre-distance matching of what is left,
        confident first. Otherwise a lost or blurred face's track could be taken by a confident
        detection of a neighbouring face that merely lies within the distance gate.
        """
        free_tracks = np.arange(len(predicted))
        free = {False: high, True: low}
        rows, dets, weak = [], [], []
        passes = [(False, None), (True, None), (False, self.centre_gate), (True, self.low_centre_gate)]
        for is_weak, gate in passes:
            candidates = free[is_weak]
            if not len(free_tracks) or not len(candidates):
                continue
            if gate is None:
                r, c = match_by_iou(predicted[free_tracks], boxes[candidates], iou_threshold=self.iou_threshold)
            else:
                r, c = match_by_centre(predicted[free_tracks], boxes[candidates], track_sigma=sigma[free_tracks],
                                       centre_gate=gate, n_sigma=self.n_sigma,
                                       max_sigma_gate=MAX_SIGMA_GATE * math.sqrt(frames))
            rows.append(free_tracks[r])
            dets.append(candidates[c])
            weak.append(np.full(len(r), is_weak))
            free_tracks = np.delete(free_tracks, r)
            free[is_weak] = np.delete(candidates, c)
        if not rows:
            return np.zeros(0, np.intp), np.zeros(0, np.intp), np.zeros(0, bool)
        return np.concatenate(rows).astype(np.intp), np.concatenate(dets).astype(np.intp), np.concatenate(weak)

    def _update_matched(self, rows: np.ndarray, dets: np.ndarray, det: _Clean, frames: int) -> None:
        """Kalman and landmark filters of matched tracks take their detections (``frames`` after the last update)."""
        if not len(rows):
            return
        boxes = det.boxes[dets]
        self._kalman.update(rows, boxes_to_measurements(boxes))
        dt = (self._misses[rows] + frames) / self.fps
        raw = det.landmarks[dets].reshape(len(rows), 10)
        smooth = self._landmarks(rows, raw, dt, _scales(boxes)).reshape(-1, 5, 2)
        self._misses[rows] = 0
        self._coasts[rows] = 0
        self._score[rows] = det.scores[dets]
        wh = np.maximum(boxes[:, 2:] - boxes[:, :2], MIN_SIZE)
        self._last_wh[rows] = wh
        centre = (boxes[:, :2] + boxes[:, 2:]) / 2
        self._landmarks_rel[rows] = (smooth - centre[:, None]) / wh[:, None]

    def _birth(
        self, candidates: np.ndarray, det: _Clean, *, claimed: np.ndarray, owners: np.ndarray
    ) -> tuple[np.ndarray, list[Face]]:
        """Start tracks from unmatched confident detections, best score first.

        A candidate overlapping an already claimed box (a matched detection or a new track) by
        ``duplicate_iou`` starts no track: it is returned as a Face with the owner's identity.
        Returns the detection indices that started tracks (in row order) and those duplicate faces.
        """
        claimed_boxes, owner_rows = list(claimed), owners.tolist()
        born: list[int] = []
        duplicates: list[tuple[int, int]] = []
        for d in candidates[np.argsort(-det.scores[candidates], kind="stable")].tolist():
            if claimed_boxes:
                overlap = box_iou(det.boxes[d][None], np.asarray(claimed_boxes))[0]
                best = int(np.argmax(overlap))
                if overlap[best] >= self.duplicate_iou:
                    duplicates.append((d, owner_rows[best]))
                    continue
            claimed_boxes.append(det.boxes[d])
            owner_rows.append(len(self._ids) + len(born))
            born.append(d)
        born_idx = np.asarray(born, np.intp)
        if born:
            self._add_tracks(born_idx, det)
        return born_idx, [self._duplicate_face(d, owner, det) for d, owner in duplicates]

    def _add_tracks(self, idx: np.ndarray, det: _Clean) -> None:
        n = len(idx)
        ids = np.arange(self._next_id, self._next_id + n, dtype=np.int64)
        self._next_id += n
        for tid in ids.tolist():
            self._seeds[tid] = self.identity_seed(tid)
        boxes = det.boxes[idx]
        self._kalman.add(boxes_to_measurements(boxes))
        self._landmarks.add(det.landmarks[idx].reshape(n, 10))
        wh = np.maximum(boxes[:, 2:] - boxes[:, :2], MIN_SIZE)
        centre = (boxes[:, :2] + boxes[:, 2:]) / 2
        self._ids = np.concatenate([self._ids, ids])
        self._misses = np.concatenate([self._misses, np.zeros(n, np.int64)])
        self._coasts = np.concatenate([self._coasts, np.zeros(n, np.int64)])
        self._score = np.concatenate([self._score, det.scores[idx]])
        self._last_wh = np.concatenate([self._last_wh, wh])
        relative = (det.landmarks[idx] - centre[:, None]) / wh[:, None]
        self._landmarks_rel = np.concatenate([self._landmarks_rel, relative])

    def _predicted_boxes(
        self, rows: np.ndarray, predicted: np.ndarray, sigma: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        """Covering boxes and landmarks of tracks that missed their detection this frame.

        The predicted box, never smaller than the last detected one (a shrinking prediction must
        not uncover the face), widened by ``widen_per_frame`` per missed frame plus ``n_sigma`` edge
        standard deviations, at most ``max_widen`` times its size. Landmarks move with the box.
        """
        box = predicted[rows]
        centre = (box[:, :2] + box[:, 2:]) / 2
        wh = np.maximum(box[:, 2:] - box[:, :2], self._last_wh[rows])
        landmarks = centre[:, None] + self._landmarks_rel[rows] * wh[:, None]
        half = wh / 2 * (1 + self.widen_per_frame * self._misses[rows, None]) + self.n_sigma * sigma[rows]
        half = np.minimum(half, wh / 2 * max(self.max_widen, 1.0))
        return np.concatenate([centre - half, centre + half], axis=1), landmarks

    def _ended(self, rows: np.ndarray | slice) -> np.ndarray:
        """Whether these tracks are over: without a detection for more than ``max_age`` frames and more
        than ``min_coasts`` updates."""
        return (self._misses[rows] > self.max_age) & (self._coasts[rows] > self.min_coasts)

    def _prune(self) -> None:
        """End the tracks that are over (:meth:`_ended`)."""
        dead = self._ended(slice(None))
        if not dead.any():
            return
        for tid in self._ids[dead].tolist():
            self._seeds.pop(tid, None)
        keep = ~dead
        self._kalman.select(keep)
        self._landmarks.select(keep)
        self._ids, self._misses, self._score = self._ids[keep], self._misses[keep], self._score[keep]
        self._coasts = self._coasts[keep]
        self._last_wh, self._landmarks_rel = self._last_wh[keep], self._landmarks_rel[keep]

    # -- faces ------------------------------------------------------------------------------------
    def _faces(self, rows: np.ndarray, boxes: np.ndarray, scores: np.ndarray, landmarks: np.ndarray,
               source: str) -> dict[int, Face]:
        """Faces of the given track rows, keyed by row."""
        boxes = np.asarray(boxes, np.float32)
        landmarks = np.asarray(landmarks, np.float32)
        faces = {}
        for k, row in enumerate(rows.tolist()):
            tid = int(self._ids[row])
            extra = {"frames_since_detection": int(self._misses[row])} if source == "predicted" else {}
            faces[row] = Face(box=boxes[k], score=float(scores[k]), landmarks=landmarks[k], track_id=tid,
                              identity_seed=self._seeds[tid], source=source, extra=extra)  # type: ignore[arg-type]
        return faces

    def _duplicate_face(self, d: int, owner_row: int, det: _Clean) -> Face:
        """A confident detection that duplicates another one this frame: shown, with the owner's identity."""
        tid = int(self._ids[owner_row])
        return Face(box=det.boxes[d].astype(np.float32), score=float(det.scores[d]),
                    landmarks=det.landmarks[d].astype(np.float32), track_id=None, identity_seed=self._seeds[tid],
                    source="detected", extra={"duplicate_of": tid})
