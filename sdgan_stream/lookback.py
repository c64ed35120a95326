"""Look-back buffer: cover a face in the frames *before* its first detection (files only).

A face is often detected a few frames late: it enters blurred, turns towards the camera, or comes
out from behind something. Frames before that first detection would show it uncovered. For files
(where a little latency costs nothing) the pipeline holds the last ``max_frames`` frames back; when
a track appears for the first time at frame ``t``, the frames still held before ``t`` get a
``Face(source='lookback')`` at the track's box extrapolated back in time.

Boxes are computed when a frame leaves the buffer, not when the track appears, so they use every
detection of the track seen so far: with two or more, the back-extrapolation follows the track's
fitted velocity. The box is widened with the distance in time (and the velocity's uncertainty) and
is never narrower than the first detected box. Live sources use ``max_frames=0`` (pass-through).
"""

from __future__ import annotations

import logging
from collections import deque
from dataclasses import dataclass, field
from typing import Generic, TypeVar

import numpy as np

from .types import Face

log = logging.getLogger(__name__)

__all__ = ["LookbackBuffer"]

T = TypeVar("T")


@dataclass
class _Held(Generic[T]):
    """A frame waiting in the buffer."""

    index: int
    item: T
    faces: list[Face]
    track_ids: set[int]


@dataclass
class _Birth:
    """A track first seen at frame ``frame``, with its detections since (for the velocity fit)."""

    track_id: int
    frame: int
    identity_seed: int
    score: float
    landmarks_rel: np.ndarray | None  # first landmarks relative to the first box (centre, size)
    frames: list[int] = field(default_factory=list)
    boxes: list[np.ndarray] = field(default_factory=list)


class LookbackBuffer(Generic[T]):
    """Holds frames back so that faces first detected later are covered in them too.

    Args:
        max_frames: frames held back (about 0.5 s of the stream); 0 = pass-through (live sources).
        widen_per_frame: a look-back box grows by this fraction of its size per frame before the
            first detection ...
        widen_without_velocity: ... or by this much while only one detection of the track is known
            (the oldest held frame leaves the buffer when the track appears: its velocity is unknown).
        velocity_frames: at most this many of the track's first detections are used to fit its
            velocity.

    >>> buf = LookbackBuffer(max_frames=2)
    >>> face = Face(box=np.array([10, 10, 30, 30], np.float32), score=0.9, track_id=1)
    >>> buf.push("frame0", []), buf.push("frame1", [])
    ([], [])
    >>> [(item, [f.source for f in faces]) for item, faces in buf.push("frame2", [face])]
    [('frame0', ['lookback'])]
    >>> [(item, [f.source for f in faces]) for item, faces in buf.flush()]
    [('frame1', ['lookback']), ('frame2', ['detected'])]
    """

    def __init__(
        self, *, max_frames: int, widen_per_frame: float = 0.05, widen_without_velocity: float = 0.15,
        velocity_frames: int = 5,
    ) -> None:
        if max_frames < 0:
            raise ValueError(f"max_frames must be >= 0, got {max_frames}")
        if velocity_frames < 1:
            raise ValueError(f"velocity_frames must be >= 1, got {velocity_frames}")
        self.max_frames = int(max_frames)
        self.widen_per_frame = float(widen_per_frame)
        self.widen_without_velocity = float(widen_without_velocity)
        self.velocity_frames = int(velocity_frames)
        self._held: deque[_Held[T]] = deque()
        self._births: dict[int, _Birth] = {}  # only tracks born after a frame still held
        self._previous_ids: set[int] = set()
        self._count = 0

    def __len__(self) -> int:
        """Frames held now."""
        return len(self._held)

    def push(self, item: T, faces: list[Face]) -> list[tuple[T, list[Face]]]:
        """Add one frame with its faces; returns the frames leaving the buffer, oldest first."""
        if self.max_frames == 0:
            return [(item, faces)]
        index = self._count
        self._count += 1
        ids = {f.track_id for f in faces if f.track_id is not None}
        self._observe(index, faces)
        self._previous_ids = ids
        self._held.append(_Held(index, item, list(faces), ids))
        out = []
        while len(self._held) > self.max_frames:
            out.append(self._release())
        return out

    def flush(self) -> list[tuple[T, list[Face]]]:
        """End of stream: every frame still held, oldest first; the buffer is empty afterwards."""
        out = [self._release() for _ in range(len(self._held))]
        self._births.clear()
        self._previous_ids = set()
        return out

    # -- internals ---------------------------------------------------------------------------------
    def _observe(self, index: int, faces: list[Face]) -> None:
        """Register tracks appearing now and record detections of the recent ones."""
        for face in faces:
            tid = face.track_id
            if tid is None:
                continue
            # A live track is in every frame's faces, so "not in the previous frame" means new.
            if tid not in self._previous_ids and tid not in self._births and self._held:
                self._births[tid] = _Birth(
                    track_id=tid, frame=index, identity_seed=face.identity_seed, score=face.score,
                    landmarks_rel=_relative_landmarks(face),
                )
            birth = self._births.get(tid)
            if birth is not None and face.source != "lookback" and len(birth.frames) < self.velocity_frames:
                if not birth.frames or face.source == "detected":  # widened predictions would skew the fit
                    birth.frames.append(index)
                    birth.boxes.append(np.asarray(face.box, np.float64))

    def _release(self) -> tuple[T, list[Face]]:
        """The oldest frame leaves, with look-back faces of the tracks born after it."""
        held = self._held.popleft()
        for birth in self._births.values():
            if birth.frame > held.index and birth.track_id not in held.track_ids:
                held.faces.append(self._lookback_face(birth, held.index))
        oldest = self._held[0].index if self._held else self._count
        for tid in [tid for tid, b in self._births.items() if b.frame <= oldest]:
            del self._births[tid]  # no frame before its birth is left
        return held.item, held.faces

    def _lookback_face(self, birth: _Birth, index: int) -> Face:
        """The track's box back-extrapolated to frame ``index``."""
        steps = birth.frame - index
        frames = np.asarray(birth.frames, np.float64) - birth.frame
        boxes = np.stack(birth.boxes)
        centres = (boxes[:, :2] + boxes[:, 2:]) / 2
        sizes = np.maximum(boxes[:, 2:] - boxes[:, :2], 0.0)
        if len(frames) >= 2:  # least-squares line through centres and sizes: value at 0, slope per frame
            design = np.stack([np.ones_like(frames), frames], axis=1)
            (c0, cv), *_ = np.linalg.lstsq(design, centres, rcond=None)
            (s0, sv), *_ = np.linalg.lstsq(design, sizes, rcond=None)
            widen = self.widen_per_frame
        else:
            c0, cv, s0, sv = centres[0], np.zeros(2), sizes[0], np.zeros(2)
            widen = max(self.widen_per_frame, self.widen_without_velocity)
        centre = c0 - cv * steps
        size = np.maximum(s0 - sv * steps, sizes[0])  # never narrower than the first box
        half = size / 2 * (1 + widen * steps) + 0.25 * np.abs(cv) * steps
        box = np.concatenate([centre - half, centre + half]).astype(np.float32)
        landmarks = None
        if birth.landmarks_rel is not None:
            landmarks = (centre + birth.landmarks_rel * np.maximum(size, 1.0)).astype(np.float32)
        return Face(box=box, score=birth.score, landmarks=landmarks, track_id=birth.track_id,
                    identity_seed=birth.identity_seed, source="lookback", extra={"frames_before_detection": steps})


def _relative_landmarks(face: Face) -> np.ndarray | None:
    if face.landmarks is None:
        return None
    box = np.asarray(face.box, np.float64)
    centre = (box[:2] + box[2:]) / 2
    size = np.maximum(box[2:] - box[:2], 1.0)
    return (np.asarray(face.landmarks, np.float64) - centre) / size
