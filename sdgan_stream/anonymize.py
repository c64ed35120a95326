"""The per-frame stage chain: detect -> track -> look-back -> render, fail-closed.

Faces are analysed in display orientation (a phone video stored sideways is turned upright first, or
the detector would miss its faces) and rendered there; the frame is turned back before it is encoded.

Privacy is fail-closed at three levels:
- a renderer that cannot serve one face covers that face itself (``FaceOutcome.reason`` says why);
- a renderer that raises gets every face of the frame covered with a solid cover;
- a frame whose analysis (detection/tracking) raises is covered whole, never written as it came.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

import cv2
import numpy as np

from .covers import CoverMethod, apply_cover
from .detect import CenterFaceDetector
from .io.source import to_display, to_stored
from .types import Detections, Face, VideoFrame

log = logging.getLogger(__name__)

__all__ = ["CoverRenderer", "FaceOutcome", "FaceRenderer", "FrameAnonymizer", "cover_whole_frame"]

# Consecutive frames whose analysis failed before the job gives up (each of them is covered whole).
MAX_CONSECUTIVE_ANALYSIS_FAILURES = 25


@dataclass(frozen=True)
class FaceOutcome:
    """How one face left the pipeline: ``method`` is what was drawn, ``reason`` why it fell back."""

    face: Face
    method: str
    reason: str | None = None


class FaceRenderer(Protocol):
    """Draws anonymized faces into an image in place and says what it did for each face."""

    name: str

    def render(self, image: np.ndarray, faces: Sequence[Face]) -> list[FaceOutcome]: ...


class CoverRenderer:
    """Classical covers (solid, pixelate, blur) over an ellipse around each face."""

    def __init__(self, *, method: CoverMethod = "solid", margin: float = 0.25) -> None:
        self.name = method
        self.method = method
        self.margin = margin

    def render(self, image: np.ndarray, faces: Sequence[Face]) -> list[FaceOutcome]:
        for face in faces:
            apply_cover(image, face.box, method=self.method, margin=self.margin)
        return [FaceOutcome(face, self.method) for face in faces]


# Blocks across the longer side of a frame covered whole. No face in the frame is larger than the frame,
# so none gets more than this many blocks across: mosaics of ~16 or more blocks across a face have been
# re-identified in published attacks; 8 leaves a face a few flat tiles.
WHOLE_FRAME_BLOCKS = 8


def cover_whole_frame(image: np.ndarray) -> None:
    """Last resort when a frame cannot be analysed: pixelate everything, in place, in square blocks of
    ``max(h, w) / WHOLE_FRAME_BLOCKS`` px (each the mean of its pixels), so even a face that fills the
    frame is at most :data:`WHOLE_FRAME_BLOCKS` blocks across."""
    h, w = image.shape[:2]
    block = -(-max(h, w) // WHOLE_FRAME_BLOCKS)
    rows, cols = -(-h // block), -(-w // block)
    small = cv2.resize(image, (cols, rows), interpolation=cv2.INTER_AREA)
    image[...] = np.repeat(np.repeat(small, block, axis=0), block, axis=1)[:h, :w]


class Tracker(Protocol):
    def update(self, detections: Detections) -> list[Face]: ...

    def reset(self) -> None: ...


class LookbackBuffer(Protocol):
    def push(self, item: object, faces: list[Face]) -> list[tuple[object, list[Face]]]: ...

    def flush(self) -> list[tuple[object, list[Face]]]: ...


@dataclass
class _Pending:
    """A frame between analysis and rendering: display-orientation image plus analysis failure flag."""

    frame: VideoFrame
    image: np.ndarray
    analysis_failed: bool


class FrameAnonymizer:
    """Turns decoded frames into anonymized frames; ``push`` may hold frames back (look-back buffer).

    >>> # anonymizer = FrameAnonymizer(detector=CenterFaceDetector(), renderer=CoverRenderer())
    >>> # for frame in frames: out.extend(anonymizer.push(frame))
    >>> # out.extend(anonymizer.flush())
    """

    def __init__(
        self,
        *,
        detector: CenterFaceDetector,
        renderer: FaceRenderer,
        tracker: Tracker | None = None,
        lookback: LookbackBuffer | None = None,
        display_threshold: float = 0.5,
        rotation: int = 0,
        fallback_cover: CoverMethod = "solid",
    ) -> None:
        self.detector = detector
        self.renderer = renderer
        self.tracker = tracker
        self.lookback = lookback
        self.display_threshold = display_threshold
        self.rotation = rotation
        self._fallback = CoverRenderer(method=fallback_cover)
        self._consecutive_failures = 0
        self.stats: Counter[str] = Counter()

    # -- analysis -------------------------------------------------------------------------------
    def analyse(self, image: np.ndarray) -> list[Face]:
        """Faces to anonymize on one display-orientation image."""
        detections = self.detector.detect(image)
        if self.tracker is not None:
            return self.tracker.update(detections)
        keep = detections.select(detections.scores >= self.display_threshold)
        return [
            Face(box=keep.boxes[i], score=float(keep.scores[i]), landmarks=keep.landmarks[i], source="untracked")
            for i in range(len(keep))
        ]

    def push(self, frame: VideoFrame) -> list[VideoFrame]:
        image = to_display(frame.image, self.rotation)
        try:
            faces = self.analyse(image)
            failed = False
            self._consecutive_failures = 0
        except Exception:  # any analysis failure: this frame is covered whole (fail closed)
            log.exception("face analysis failed on frame %d: covering the whole frame", frame.index)
            faces, failed = [], True
            self.stats["frames_covered_whole"] += 1
            self._consecutive_failures += 1
            if self._consecutive_failures >= MAX_CONSECUTIVE_ANALYSIS_FAILURES:
                raise RuntimeError(f"face analysis failed on {self._consecutive_failures} frames in a row; giving up")
        pending = _Pending(frame, image, failed)
        if self.lookback is None:
            return [self._render(pending, faces)]
        return [self._render(item, item_faces) for item, item_faces in self.lookback.push(pending, faces)]

    def flush(self) -> list[VideoFrame]:
        if self.lookback is None:
            return []
        return [self._render(item, faces) for item, faces in self.lookback.flush()]

    def reset(self) -> None:
        """Forget all tracking state (a new stream, or a reconnect)."""
        if self.tracker is not None:
            self.tracker.reset()

    # -- rendering ------------------------------------------------------------------------------
    def _render(self, pending: _Pending, faces: list[Face]) -> VideoFrame:
        image = pending.image  # owned by this frame: drawn on in place
        if pending.analysis_failed:
            cover_whole_frame(image)
        elif faces:
            for outcome in self._render_faces(image, faces):
                self.stats[f"faces_{outcome.method}"] += 1
                if outcome.reason:
                    self.stats[f"fallback_{outcome.reason}"] += 1
        self.stats["frames"] += 1
        frame = pending.frame
        frame.image = to_stored(image, self.rotation)
        return frame

    def _render_faces(self, image: np.ndarray, faces: list[Face]) -> list[FaceOutcome]:
        try:
            outcomes = self.renderer.render(image, faces)
        except Exception:  # the renderer broke: every face of the frame gets the fallback cover
            log.exception("renderer %s failed: covering %d face(s) with %s", self.renderer.name, len(faces), self._fallback.name)
            return [FaceOutcome(o.face, o.method, "renderer_error") for o in self._fallback.render(image, faces)]
        served = {id(o.face) for o in outcomes}
        missing = [face for face in faces if id(face) not in served]
        if missing:  # a renderer must answer for every face; any it skipped is covered here
            log.error("renderer %s skipped %d face(s): covering them", self.renderer.name, len(missing))
            outcomes += [FaceOutcome(o.face, o.method, "renderer_skipped") for o in self._fallback.render(image, missing)]
        return outcomes
