"""Small data types that every stage speaks.

Images are ``numpy.ndarray`` of shape (H, W, 3), dtype uint8, in RGB order, everywhere in the
package. Boxes are float32 ``[x1, y1, x2, y2]`` in pixel coordinates of the image they came from.
The five landmarks follow the RetinaFace/CenterFace order: left eye, right eye, nose tip, left mouth
corner, right mouth corner, where "left" is the image-left side (the person's right eye).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from fractions import Fraction
from typing import Literal

import numpy as np

__all__ = ["Detections", "Face", "FaceSource", "VideoInfo", "VideoFrame"]


@dataclass(frozen=True)
class VideoInfo:
    """What the sink needs to know about the source to write a faithful copy."""

    width: int  # stored (coded) width, before any rotation
    height: int
    time_base: Fraction | None
    average_rate: Fraction | None  # nominal frame rate; None when unknown (some live sources)
    rotation: int = 0  # display rotation in degrees, counter-clockwise, one of 0/90/180/270
    frame_count: int | None = None  # best estimate; None when unknown (live) or not stored
    codec_name: str = ""
    pix_fmt: str = ""
    is_live: bool = False

    @property
    def fps(self) -> float:
        """Nominal frames per second, 25 when the source does not say."""
        return float(self.average_rate) if self.average_rate else 25.0


@dataclass
class VideoFrame:
    """One decoded video frame travelling through the pipeline.

    ``image`` is in stored orientation (as decoded); stages that analyse faces rotate it to display
    orientation themselves (see :func:`sdgan_stream.anonymize.FrameAnonymizer`).
    """

    image: np.ndarray
    index: int  # 0-based decode order
    pts: int | None
    time_base: Fraction | None
    capture_time: float = 0.0  # time.monotonic() when decoded/captured; for latency statistics
    # Input of more than 8 bits: the decoded picture as (H, W, 3) uint16 RGB, stored orientation. Stages
    # draw on ``image``; the sink keeps these samples wherever ``image`` was left unchanged.
    deep: np.ndarray | None = field(default=None, repr=False)

    @property
    def seconds(self) -> float | None:
        if self.pts is None or self.time_base is None:
            return None
        return float(self.pts * self.time_base)


@dataclass(frozen=True)
class Detections:
    """Face detections on one image: N boxes, scores and 5-point landmarks.

    Empty detections are arrays of the right shape with N = 0, never ``None``.

    >>> d = Detections.empty()
    >>> len(d), d.boxes.shape, d.landmarks.shape
    (0, (0, 4), (0, 5, 2))
    """

    boxes: np.ndarray  # (N, 4) float32 xyxy
    scores: np.ndarray  # (N,) float32 in [0, 1]
    landmarks: np.ndarray  # (N, 5, 2) float32

    def __post_init__(self) -> None:
        n = len(self.boxes)
        if self.boxes.shape != (n, 4) or self.scores.shape != (n,) or self.landmarks.shape != (n, 5, 2):
            raise ValueError(
                f"inconsistent detection shapes: boxes {self.boxes.shape}, scores {self.scores.shape}, "
                f"landmarks {self.landmarks.shape}"
            )

    def __len__(self) -> int:
        return len(self.boxes)

    @classmethod
    def empty(cls) -> Detections:
        return cls(
            boxes=np.zeros((0, 4), np.float32),
            scores=np.zeros((0,), np.float32),
            landmarks=np.zeros((0, 5, 2), np.float32),
        )

    def select(self, mask_or_index: np.ndarray) -> Detections:
        """Subset by boolean mask or integer index array."""
        return Detections(
            boxes=self.boxes[mask_or_index],
            scores=self.scores[mask_or_index],
            landmarks=self.landmarks[mask_or_index],
        )


FaceSource = Literal["detected", "predicted", "lookback", "untracked"]


@dataclass(frozen=True)
class Face:
    """A face that must leave the pipeline anonymized, in display-orientation coordinates.

    ``source`` says why it is there: ``detected`` (a detection this frame), ``predicted`` (a live
    track whose detection was missed this frame; its box is already widened by the track's
    uncertainty), ``lookback`` (added to an earlier buffered frame when the track was born later),
    ``untracked`` (a detection with no tracker in the chain).
    """

    box: np.ndarray  # (4,) float32 xyxy
    score: float
    landmarks: np.ndarray | None = None  # (5, 2) float32, None when only a box is known
    track_id: int | None = None
    identity_seed: int = 0  # selects the generated identity; stable for one track
    source: FaceSource = "detected"
    extra: dict = field(default_factory=dict, compare=False)  # free room for stage annotations

    @property
    def width(self) -> float:
        return float(self.box[2] - self.box[0])

    @property
    def height(self) -> float:
        return float(self.box[3] - self.box[1])
