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
from dataclasses import dataclass, field
from typing import Protocol, cast

import cv2
import numpy as np

from .covers import CoverMethod, apply_cover
from .detect import CenterFaceDetector
from .io.source import to_display, to_stored
from .types import Detections, Face, VideoFrame

log = logging.getLogger(__name__)

__all__ = ["AnalysedFrame", "CoverRenderer", "FaceOutcome", "FaceRenderer", "FrameAnonymizer", "PreparingRenderer", "cover_whole_frame"]

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


class PreparingRenderer(FaceRenderer, Protocol):
    """A renderer whose per-face preparation (landmarks, crops, maps) depends only on the frame, its faces
    and (per-track smoothing) the frames before, so it can run in the analysis stage, once per frame in
    frame order (on the analysis thread of a parallel run, beside the rendering of the frame before).
    ``prepares_in_analysis`` says whether it wants that."""

    prepares_in_analysis: bool

    def prepare(self, image: np.ndarray, faces: Sequence[Face]) -> object: ...

    def render(self, image: np.ndarray, faces: Sequence[Face], prepared: object | None = None) -> list[FaceOutcome]: ...


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
    def update(self, detections: Detections, *, seconds: float | None = None) -> list[Face]: ...

    def reset(self) -> None: ...


class ExemptList(Protocol):
    """Splits faces into (to anonymize, left visible); see :mod:`sdgan_stream.exempt`."""

    def split(self, image: np.ndarray, faces: Sequence[Face]) -> tuple[list[Face], list[Face]]: ...


class LookbackBuffer(Protocol):
    def push(self, item: object, faces: list[Face]) -> list[tuple[object, list[Face]]]: ...

    def flush(self) -> list[tuple[object, list[Face]]]: ...


@dataclass
class AnalysedFrame:
    """A frame between analysis and rendering: its display-orientation image, the faces to anonymize
    on it, and whether its analysis failed (then it is covered whole)."""

    frame: VideoFrame
    image: np.ndarray
    analysis_failed: bool
    faces: list[Face] = field(default_factory=list)
    prepared: object | None = None  # the renderer's own preparation of ``faces``, made during analysis
    new_stream: bool = False  # the first frame after a reset: rendering drops its per-track state first


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
        exempt: ExemptList | None = None,
    ) -> None:
        self.detector = detector
        self.exempt = exempt
        self.renderer = renderer
        self.tracker = tracker
        self.lookback = lookback
        self.display_threshold = display_threshold
        self.rotation = rotation
        self._fallback = CoverRenderer(method=fallback_cover)
        self._consecutive_failures = 0
        self._new_stream = False
        self.stats: Counter[str] = Counter()

    # -- analysis -------------------------------------------------------------------------------
    def analyse(self, image: np.ndarray, seconds: float | None = None) -> list[Face]:
        """Faces to anonymize on one display-orientation image shown at ``seconds`` on the stream's clock
        (the tracker steps by the time that passed: a live filter sees only some of the frames)."""
        detections = self.detector.detect(image)
        unplaced = int((~np.isfinite(np.asarray(detections.boxes, np.float64)).all(1)).sum()) if len(detections) else 0
        if unplaced:  # a face the detector found but cannot place: only covering the whole frame hides it
            raise ValueError(f"the detector returned {unplaced} face(s) with a non-finite box")
        if self.tracker is not None:
            return self.tracker.update(detections, seconds=seconds)
        keep = detections.select(detections.scores >= self.display_threshold)
        return [
            Face(box=keep.boxes[i], score=float(keep.scores[i]), landmarks=keep.landmarks[i], source="untracked")
            for i in range(len(keep))
        ]

    def analyse_frame(self, frame: VideoFrame) -> list[AnalysedFrame]:
        """Analysis stage of one decoded frame: the frames now ready to render, in order (the look-back
        buffer holds frames back until it knows their faces). Never touches the renderer's state, so it
        can run on another thread than :meth:`render` (the parallel pipeline)."""
        image = to_display(frame.image, self.rotation)
        try:
            faces = self.analyse(image, frame.seconds)
            failed = False
            self._consecutive_failures = 0
        except Exception:  # any analysis failure: this frame is covered whole (fail closed)
            log.exception("face analysis failed on frame %d: covering the whole frame", frame.index)
            faces, failed = [], True
            self._consecutive_failures += 1
            if self._consecutive_failures >= MAX_CONSECUTIVE_ANALYSIS_FAILURES:
                raise RuntimeError(f"face analysis failed on {self._consecutive_failures} frames in a row; giving up")
        analysed = AnalysedFrame(frame, image, failed, new_stream=self._new_stream)
        self._new_stream = False
        if self.lookback is None:
            analysed.faces = faces
            return self._prepared([analysed])
        return self._prepared([_with_faces(item, item_faces) for item, item_faces in self.lookback.push(analysed, faces)])

    def analyse_flush(self) -> list[AnalysedFrame]:
        """The frames the look-back buffer still holds, with their faces (end of the input)."""
        if self.lookback is None:
            return []
        return self._prepared([_with_faces(item, faces) for item, faces in self.lookback.flush()])

    def _prepared(self, ready: list[AnalysedFrame]) -> list[AnalysedFrame]:
        """Frames whose faces are final, with the renderer's preparation when it wants it made here. A
        failed preparation is left to the renderer, which prepares again (and covers what it cannot)."""
        if not getattr(self.renderer, "prepares_in_analysis", False):
            return ready
        renderer = cast(PreparingRenderer, self.renderer)
        for item in ready:
            if item.faces and not item.analysis_failed:
                try:
                    item.prepared = renderer.prepare(item.image, item.faces)
                except Exception:
                    log.exception("face preparation failed on frame %d: the renderer prepares again", item.frame.index)
        return ready

    def push(self, frame: VideoFrame) -> list[VideoFrame]:
        return [self.render(item) for item in self.analyse_frame(frame)]

    def flush(self) -> list[VideoFrame]:
        return [self.render(item) for item in self.analyse_flush()]

    def reset(self) -> None:
        """Forget all tracking state (a new stream, or a reconnect). Track ids start again, so everything keyed
        by them goes too: the detector's followed faces here, and (on the rendering side, with the next frame,
        which may run on another thread) the renderer's per-track state, the identity guard's decisions among
        it, and the keep list's confirmations: a new person given an old track id must inherit none of them."""
        if self.tracker is not None:
            self.tracker.reset()
        reset_detector = getattr(self.detector, "reset", None)
        if reset_detector is not None:
            reset_detector()
        self._new_stream = True

    # -- rendering ------------------------------------------------------------------------------
    def render(self, analysed: AnalysedFrame) -> VideoFrame:
        """Rendering stage: draws the anonymized faces (or the whole-frame cover) and turns the frame
        back to its stored orientation. All of :attr:`stats` is counted here (one thread)."""
        image = analysed.image  # owned by this frame: drawn on in place
        faces = analysed.faces
        if analysed.new_stream:
            for owner in (self.renderer, self.exempt):
                forget = getattr(owner, "forget_tracks", None)
                if forget is not None:
                    forget()
        if analysed.analysis_failed:
            cover_whole_frame(image)
            self.stats["frames_covered_whole"] += 1
        elif faces:
            if self.exempt is not None:
                faces, kept = self.exempt.split(image, faces)
                self.stats["faces_exempt"] += len(kept)
            for outcome in self._render_faces(image, faces, analysed.prepared):
                self.stats[f"faces_{outcome.method}"] += 1
                if outcome.reason:
                    self.stats[f"fallback_{outcome.reason}"] += 1
        self.stats["frames"] += 1
        frame = analysed.frame
        frame.image = to_stored(image, self.rotation)
        return frame

    def _render_faces(self, image: np.ndarray, faces: list[Face], prepared: object | None = None) -> list[FaceOutcome]:
        try:
            if prepared is None:
                outcomes = self.renderer.render(image, faces)
            else:
                outcomes = cast(PreparingRenderer, self.renderer).render(image, faces, prepared)
        except Exception:  # the renderer broke: every face of the frame gets the fallback cover
            log.exception("renderer %s failed: covering %d face(s) with %s", self.renderer.name, len(faces), self._fallback.name)
            return [FaceOutcome(o.face, o.method, "renderer_error") for o in self._fallback.render(image, faces)]
        served = {id(o.face) for o in outcomes}
        missing = [face for face in faces if id(face) not in served]
        if missing:  # a renderer must answer for every face; any it skipped is covered here
            log.error("renderer %s skipped %d face(s): covering them", self.renderer.name, len(missing))
            outcomes += [FaceOutcome(o.face, o.method, "renderer_skipped") for o in self._fallback.render(image, missing)]
        return outcomes


def _with_faces(item: object, faces: list[Face]) -> AnalysedFrame:
    """The look-back buffer's (frame, faces) pair as one analysed frame (faces may have grown there)."""
    assert isinstance(item, AnalysedFrame)
    item.faces = faces
    return item
