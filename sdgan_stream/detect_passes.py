"""More than one look at each frame, so that fewer faces are missed: tiles, a border pad, a pyramid, rotations.

One network pass over a frame shrunk to fit a budget misses small faces, faces cut by the frame border
and faces turned in the image plane. :class:`MultiPassDetector` wraps any detector that finds upright
faces in the pixels it is given (:class:`FaceDetector`) and runs it as several *passes*, each a view of
the frame (a region, a scale, a reflected border pad, a quarter turn) whose detections are mapped back
to frame pixels and merged:

- **main passes, every frame**: the frame at the detection scale (full resolution, or shrunk into
  ``detect_size``) in one call when it fits ``tile_size``; a larger one in overlapping tiles of that
  size at the detection scale, plus the whole frame shrunk into one tile (for faces larger than the
  tile overlap, which a tile seam may cut).
- **a border pad**: every main pass sees its frame edges mirrored outwards by ``border`` of the frame's
  shorter side, so a face cut by the border still has its centre, and a face-like context, inside the
  network's view (CenterFace finds a face by its centre).
- **coarse passes, every ``pyramid_every`` frames (the pyramid)**: the whole frame, upright, again at
  ``pyramid`` fractions of the detection scale (1/2 and 1/4 by default; every frame for files, every
  other frame for live sources). At one scale CenterFace misses faces that motion blur or
  defocus has smeared and faces too large for its view (a close-up), and finds many of them shrunk
  (``benchmarks/bench_recall.py``, README "Which faces are found"). A shrunk view costs the square of its
  scale: 1/2 and 1/4 add about a third to a full pass. A coarse pass adds only faces the finer passes
  missed, at least :data:`COARSE_MIN_FACE` px wide in its view and scoring :data:`COARSE_MIN_SCORE`; where
  both found a face, the finer box and points are kept (:func:`fold_coarse`).
- **scheduled passes, to discover turned faces**: every ``rotation_every`` frames, the main passes
  turned by 90, 180 or 270 degrees, in turn. A full turned pass costs as much as the main one, so it is
  spaced out; for files the look-back (0.5 s) covers a turned face in the frames before it was found,
  which is why the default spacing visits every angle within 12 frames.
- **follow passes, every frame**: a face found in a turned view is looked for again on every following
  frame, in that view, inside a crop around its last box (a few face widths: cheap), until it has been
  missed ``FOLLOW_MISSES`` frames in a row. So a turned face stays detected on every frame while only
  the discovery of new ones waits for the schedule.
- **the whole frame every ``whole_every`` frames** (1: every frame, the default): between two whole-frame
  looks, the upright passes are crops around the faces the last frame's upright passes found, like a
  turned face's follow pass. A crop keeps only the face it follows (a box overlapping that face's last
  one by ``AROUND_MIN_IOU``): cut out of its surroundings, a crop's edges give the network small false
  faces, and a new face waits for the next whole look anyway. Files may use 2 (``--whole-frame-every``, off by
  default: recall first), the look-back covering the frame a new face came late by; live sources, which have no
  look-back, always use 1 (``api.whole_frame_every``).

Detections of one face from several passes are merged into one with the union of their boxes (a box
from an upright pass on a turned face has the wrong shape; the union contains the face either way).

>>> import numpy as np
>>> from sdgan_stream.detect import CenterFaceDetector
>>> detector = MultiPassDetector(CenterFaceDetector(threshold=0.3, detect_size=None), tile_size=(640, 640))
>>> len(detector.detect(np.zeros((360, 640, 3), np.uint8)))
0
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Protocol

import cv2
import numpy as np

from .config import check_pyramid
from .detect import nms
from .track import box_iou, box_overlaps
from .types import Detections

log = logging.getLogger(__name__)

_SHRUNK_MIN_FACE = 32  # px: faces at least this wide are found in a shrunk view (20 px and up were, measured)
# Turned views found false faces at 0.1-0.26 around real ones (upside-down mouth and chin) on the test
# suite's 640x360 clip, while faces turned 90/180/270 degrees scored 0.73-0.93 in the view that makes them
# upright (rotation scenes of benchmarks/bench_recall.py); faces turned 45 degrees score lower in every view.
TURNED_MIN_SCORE = 0.3
FOLLOW_MISSES = 3  # frames in a row a followed turned face may go unseen before its follow pass stops
FOLLOW_CONTEXT = 2.0  # a follow pass looks at a square this many face sizes wide around the last box
# When the crops of one turn add up to more than this share of the frame, one full pass at that turn is
# cheaper than the crops (and sees everything they would).
FOLLOW_FULL_SHARE = 0.5
# Between whole-frame looks, a crop's detection is its face when its box overlaps the face's last box by this
# (IoU): a face moving half its width in a frame still does. On the 720p benchmark clip the crops' edges
# gave 10-25 px false faces scoring 0.10-0.23 on about half the frames; none overlapped a face.
AROUND_MIN_IOU = 0.2

_COARSE_MIN_SIDE = 32  # px: a coarse view whose shorter side would be smaller than this is not run
# px, in the view: a coarse pass keeps only faces at least this wide (48 px in the frame at 1/2, 96 at 1/4).
# Smaller ones are the finer passes' to find; at 1/4, the 12-21 px finds on the held-out clip were hair and
# background at the frame's top edge (one every 2-3 frames, scoring 0.21-0.39), each a false track.
COARSE_MIN_FACE = 24
# A coarse find counts (added, or lifting a finer one's score) from this score up. On sharp faces (the held-out
# clip) and the recall scenes, the coarse views' false finds scored under 0.25 (40 of them, 4 at 0.2-0.25,
# each a false track at the display threshold); 6 of the 7 true faces they alone found scored 0.25 or more.
COARSE_MIN_SCORE = 0.25
# A coarse and a finer detection are one face when they overlap this much (IoU, as merge_detections), or when
# half the smaller lies in the larger and the larger is at most SAME_FACE_AREA times its area (fold_coarse).
SAME_FACE_IOU = 0.3
SAME_FACE_AREA = 4.0
COARSE_GROW_AREA = 1.5  # a coarse box this many times larger than the finer one of its face saw more of it

__all__ = ["AROUND_MIN_IOU", "TURNED_MIN_SCORE", "DetectorPass", "FaceDetector", "MultiPassDetector", "merge_detections",
           "plan_coarse_passes", "plan_main_passes", "view_of"]


class FaceDetector(Protocol):
    """Finds upright faces in an RGB image at the image's own scale; coordinates in its pixels."""

    threshold: float

    def detect(self, image: np.ndarray) -> Detections: ...


@dataclass(frozen=True)
class DetectorPass:
    """One view of the frame: ``region`` (x1, y1, x2, y2) of the frame, shrunk or grown by ``scale``,
    padded by ``pad`` px of mirrored border (in the view's pixels) on the sides that are frame edges,
    then turned ``rotation`` degrees counter-clockwise (0, 90, 180, 270). A ``coarse`` pass is one of the
    pyramid's: what it finds counts only where no finer pass found that face."""

    region: tuple[int, int, int, int]
    scale: float = 1.0
    pad: int = 0
    rotation: int = 0
    coarse: bool = False

    def with_rotation(self, rotation: int) -> DetectorPass:
        return DetectorPass(self.region, self.scale, self.pad, rotation, self.coarse)


@dataclass
class _Followed:
    """A face found in a turned view, looked for again in that view on the next frames."""

    box: np.ndarray  # (4,) frame pixels, its last box
    rotation: int
    misses: int = 0

    def region(self, width: int, height: int) -> tuple[int, int, int, int]:
        """A square around the last box (clipped to the frame) that holds the face after some motion."""
        cx, cy = (self.box[:2] + self.box[2:]) / 2
        half = max(float(np.max(self.box[2:] - self.box[:2])) * FOLLOW_CONTEXT, 64.0) / 2
        # A face cut by the border may have its box (even its centre) outside: keep at least a pixel inside.
        x1 = min(max(0, math.floor(cx - half)), width - 1)
        y1 = min(max(0, math.floor(cy - half)), height - 1)
        x2 = max(min(width, math.ceil(cx + half)), x1 + 1)
        y2 = max(min(height, math.ceil(cy + half)), y1 + 1)
        return x1, y1, x2, y2


def _fit_scale(width: int, height: int, budget: tuple[int, int] | None) -> float:
    if budget is None:
        return 1.0
    return min(budget[0] / width, budget[1] / height, 1.0)


def _splits(length: int, tile: int, overlap: int) -> list[tuple[int, int]]:
    """As many spans as ``tile`` fits into ``length`` (rounded up), each grown by ``overlap``, spread evenly."""
    count = math.ceil(length / tile)
    if count <= 1:
        return [(0, length)]
    span = min(length, math.ceil(length / count) + overlap)
    step = (length - span) / (count - 1)
    return [(round(i * step), round(i * step) + span) for i in range(count)]


def plan_main_passes(
    width: int,
    height: int,
    *,
    detect_size: tuple[int, int] | None = None,
    tile_size: tuple[int, int] | None = None,
    border: float = 0.0,
) -> list[DetectorPass]:
    """The passes run on every frame of this size (see the module docstring).

    >>> [p.region for p in plan_main_passes(3840, 2160, tile_size=(1920, 1088))]
    [(0, 0, 3840, 2160), (0, 0, 1984, 1144), (1856, 0, 3840, 1144), (0, 1016, 1984, 2160), (1856, 1016, 3840, 2160)]
    """
    pad = round(border * min(width, height))
    scale = _fit_scale(width, height, detect_size)  # the scale faces are detected at
    whole = (0, 0, width, height)
    if tile_size is None or (width * scale <= tile_size[0] and height * scale <= tile_size[1]):
        return [DetectorPass(whole, scale, round(pad * scale))]
    shrink = _fit_scale(width, height, tile_size)  # the whole frame in one call, for faces cut by tile seams
    tile_w, tile_h = tile_size[0] / scale, tile_size[1] / scale  # a tile, in frame pixels
    # Neighbouring tiles overlap by more than any face too small for the shrunk whole-frame pass to
    # find (~32 px there, so 32 / shrink here): such a face lies whole in some tile.
    overlap = min(math.ceil(_SHRUNK_MIN_FACE / shrink), int(min(tile_w, tile_h)) // 2)
    passes = [DetectorPass(whole, shrink, round(pad * shrink))]
    for y1, y2 in _splits(height, int(tile_h), overlap):
        for x1, x2 in _splits(width, int(tile_w), overlap):
            passes.append(DetectorPass((x1, y1, x2, y2), scale, round(pad * scale)))
    return passes


def plan_coarse_passes(
    width: int,
    height: int,
    pyramid: Sequence[float],
    *,
    detect_size: tuple[int, int] | None = None,
    tile_size: tuple[int, int] | None = None,
    border: float = 0.0,
) -> list[DetectorPass]:
    """The pyramid's passes for frames of this size: the whole frame at each fraction of ``pyramid`` of the
    detection scale, coarsest last, leaving out a scale the main passes already look at the whole frame
    with (a tiled frame's shrunk pass) or above, and views under 32 px a side.

    >>> [p.scale for p in plan_coarse_passes(1920, 1080, (0.5, 0.25))]
    [0.5, 0.25]
    >>> [p.scale for p in plan_coarse_passes(7680, 4320, (0.5, 0.25), tile_size=(3840, 2160))]  # 0.5: the tiles' shrunk pass
    [0.25]
    """
    main = plan_main_passes(width, height, detect_size=detect_size, tile_size=tile_size, border=border)
    whole = (0, 0, width, height)
    coarsest_taken = min(p.scale for p in main if p.region == whole)
    base = _fit_scale(width, height, detect_size)
    pad = round(border * min(width, height))
    passes = []
    for fraction in sorted(set(pyramid), reverse=True):
        scale = base * fraction
        if scale >= coarsest_taken * 0.99 or min(width, height) * scale < _COARSE_MIN_SIDE:
            continue
        passes.append(DetectorPass(whole, scale, round(pad * scale), coarse=True))
    return passes


def fold_coarse(fine: Detections, coarse: Detections) -> Detections:
    """The finer passes' detections plus the faces only a coarse pass found.

    The coarse scales' detections are first reduced to one per face (the best-scoring). Then each is:

    - **the same face as a finer detection** (they overlap by IoU :data:`SAME_FACE_IOU`, or half the
      smaller lies in the larger and the larger is at most :data:`SAME_FACE_AREA` times its area: a turned
      face's boxes differ in shape): the finer detection it overlaps most keeps its box and points (the more
      precise) and takes the better of the two scores (a smeared face may score higher shrunk). Only that
      one: a weak second box of the face lifted into a shown one would become a second track, whose first
      prediction, unsure of its motion, is widened over much of the frame when it misses (a face turned 120
      degrees on the recall benchmark: 30% of the frame covered). Where the coarse box is more than
      :data:`COARSE_GROW_AREA` times larger, the face was too large for the full-size view, which found it by a
      part (600 px faces on a 720p frame: boxes half their width): the box grows to the union.
    - **anything else**: a face only the coarse view found (smeared, large); it is added. That may be a
      coarse box around several faces seen as one (motion-blurred faces packed 1.9 face widths apart): an
      over-cover. Telling such a group from the parts a full-size view finds of one close-up face (two to
      four boxes, side by side or overlapping) was tried and failed on close-ups: privacy first, it stays.

    >>> def boxes(*b):
    ...     return Detections(np.array(b, np.float32), np.linspace(0.6, 0.3, len(b)).astype(np.float32), np.zeros((len(b), 5, 2), np.float32))
    >>> fine = Detections(np.array([[0, 0, 20, 20]], np.float32), np.array([0.15], np.float32), np.zeros((1, 5, 2), np.float32))
    >>> folded = fold_coarse(fine, boxes([2, 0, 22, 22], [50, 50, 70, 70]))  # the same face, and a face only the coarse view saw
    >>> folded.boxes.tolist(), [round(float(s), 2) for s in folded.scores]
    ([[0.0, 0.0, 20.0, 20.0], [50.0, 50.0, 70.0, 70.0]], [0.6, 0.3])
    >>> fold_coarse(fine, boxes([-4, -4, 30, 24])).boxes.tolist()  # more of the face: the box grows
    [[-4.0, -4.0, 30.0, 24.0]]
    """
    if len(coarse) > 1:
        coarse = coarse.select(nms(coarse.boxes, coarse.scores, SAME_FACE_IOU))
    if not len(coarse) or not len(fine):
        return _concat([fine, coarse])
    f, c = fine.boxes.astype(np.float64), coarse.boxes.astype(np.float64)
    inter, area_f, area_c = box_overlaps(f, c)  # (fine, coarse)
    iou = inter / np.maximum(area_f[:, None] + area_c[None, :] - inter, 1e-9)
    smaller = np.minimum(area_f[:, None], area_c[None, :])
    larger = np.maximum(area_f[:, None], area_c[None, :])
    same = (iou >= SAME_FACE_IOU) | ((inter >= 0.5 * smaller) & (larger <= SAME_FACE_AREA * smaller))
    matched = same.any(axis=0)
    scores, grown = fine.scores.copy(), fine.boxes.copy()
    for j in np.flatnonzero(matched):
        i = int(np.argmax(np.where(same[:, j], iou[:, j], -1.0)))
        scores[i] = max(scores[i], coarse.scores[j])
        if area_c[j] > COARSE_GROW_AREA * area_f[i]:
            grown[i, :2] = np.minimum(grown[i, :2], coarse.boxes[j, :2])
            grown[i, 2:] = np.maximum(grown[i, 2:], coarse.boxes[j, 2:])
    return _concat([Detections(grown, scores, fine.landmarks), coarse.select(~matched)])


def view_of(image: np.ndarray, spec: DetectorPass) -> tuple[np.ndarray, np.ndarray]:
    """The pixels the network sees for ``spec`` and the 2x3 affine from frame to view coordinates."""
    x1, y1, x2, y2 = spec.region
    height, width = image.shape[:2]
    crop = image[y1:y2, x1:x2]
    if spec.scale != 1.0:
        size = (max(1, round((x2 - x1) * spec.scale)), max(1, round((y2 - y1) * spec.scale)))
        crop = cv2.resize(crop, size, interpolation=cv2.INTER_AREA if spec.scale < 1 else cv2.INTER_LINEAR)
    sx = crop.shape[1] / (x2 - x1)
    sy = crop.shape[0] / (y2 - y1)
    # Pad only the sides that are frame edges: inside the frame a tile's neighbour is real picture.
    top = spec.pad if y1 == 0 else 0
    bottom = spec.pad if y2 == height else 0
    left = spec.pad if x1 == 0 else 0
    right = spec.pad if x2 == width else 0
    if spec.pad and min(crop.shape[:2]) > 1:
        # Mirrored (not black) border: a face cut at its middle is completed into a face-like pattern.
        crop = cv2.copyMakeBorder(crop, top, bottom, left, right, cv2.BORDER_REFLECT_101)
    matrix = np.array([[sx, 0, left - x1 * sx], [0, sy, top - y1 * sy]], np.float64)
    turns = (spec.rotation // 90) % 4
    if turns:
        h, w = crop.shape[:2]
        crop = np.rot90(crop, k=turns)  # counter-clockwise
        turn = {1: [[0, 1, 0], [-1, 0, w]], 2: [[-1, 0, w], [0, -1, h]], 3: [[0, -1, h], [1, 0, 0]]}[turns]
        matrix = np.asarray(turn, np.float64) @ np.vstack([matrix, [0, 0, 1]])
    return np.ascontiguousarray(crop), matrix


def _map_back(found: Detections, matrix: np.ndarray) -> Detections:
    """Detections in view coordinates -> frame coordinates (boxes stay axis-aligned: quarter turns only)."""
    if not len(found):
        return found
    inverse = cv2.invertAffineTransform(matrix)
    x1, y1, x2, y2 = found.boxes.T
    corners = np.stack([np.stack([x1, y1], 1), np.stack([x2, y2], 1)], 1).astype(np.float64)  # (N, 2, 2)
    mapped = corners @ inverse[:, :2].T + inverse[:, 2]
    boxes = np.concatenate([mapped.min(1), mapped.max(1)], 1)
    points = found.landmarks.astype(np.float64) @ inverse[:, :2].T + inverse[:, 2]
    return Detections(boxes.astype(np.float32), found.scores, points.astype(np.float32))


def _concat(parts: Sequence[Detections]) -> Detections:
    parts = [p for p in parts if len(p)]
    if not parts:
        return Detections.empty()
    return Detections(np.concatenate([p.boxes for p in parts]), np.concatenate([p.scores for p in parts]),
                      np.concatenate([p.landmarks for p in parts]))


def merge_detections(found: Detections, *, iou_threshold: float = 0.3) -> Detections:
    """One detection per face from several passes: the best-scoring one, its box grown to the union
    of every box that overlaps it by ``iou_threshold`` (from another view, a box may have the other shape).

    >>> d = Detections(np.array([[0, 0, 10, 14], [0, 2, 14, 12]], np.float32), np.array([0.9, 0.5], np.float32),
    ...                np.zeros((2, 5, 2), np.float32))
    >>> merge_detections(d).boxes.tolist()
    [[0.0, 0.0, 14.0, 14.0]]
    """
    if len(found) < 2:
        return found
    order = np.argsort(-found.scores, kind="stable")
    boxes = found.boxes[order].astype(np.float64)
    iou = box_iou(boxes, boxes)
    taken = np.zeros(len(boxes), bool)
    keep, merged = [], []
    for i in range(len(boxes)):
        if taken[i]:
            continue
        group = np.flatnonzero(~taken & (iou[i] >= iou_threshold))  # holds i itself (IoU 1)
        taken[group] = True
        members = boxes[group]
        merged.append(np.concatenate([members[:, :2].min(0), members[:, 2:].max(0)]))
        keep.append(order[i])
    keep_idx = np.asarray(keep, np.intp)
    return Detections(np.asarray(merged, np.float32), found.scores[keep_idx], found.landmarks[keep_idx])


class MultiPassDetector:
    """Runs ``detector`` over the passes of each frame and merges what they find (module docstring).

    Args:
        detector: finds upright faces at the scale of the image it is handed (e.g. a
            ``CenterFaceDetector(detect_size=None)``).
        detect_size: (width, height) the frame is shrunk into before detection (speed; small faces are
            lost); ``None`` = full resolution.
        tile_size: largest (width, height) of one network call; a larger frame (at the detection scale)
            is detected in overlapping tiles plus once shrunk into one tile; ``None`` = never tiled.
        border: mirrored pad on the frame edges, as a fraction of the frame's shorter side.
        pyramid: fractions (each in (0, 1)) of the detection scale at which the whole frame is also looked at
            upright, on whole-frame looks; ``()`` = none (the job options' default is 1/2 and 1/4).
        pyramid_every: frames between two looks through the pyramid (1: every whole-frame look). Live
            sources use 2 (``api.build_detector``): a face only a coarse view finds is tracked over the frame
            between, and the filter keeps more of its frame rate.
        rotations: quarter turns (90, 180, 270) tried on a schedule, one per ``rotation_every`` frames.
        rotation_every: frames between two scheduled turns (discovery; a face found turned is then
            followed on every frame in a crop, see the module docstring); 0 = no turns.
        turned_min_score: least score of a detection from a turned view (see :data:`TURNED_MIN_SCORE`).
        whole_every: frames between two looks at the whole frame upright; between them, crops around the
            faces found upright on the frame before (module docstring). 1 = every frame.
        around_min_score: least score of a face followed in a crop between whole looks. The tracker's
            display threshold: weaker finds (which only keep tracks alive) wait for the next whole look,
            as a small view made one of them a confident false face on the benchmark clip.
        pass_threads: how many of one frame's passes run at once (``detector.detect`` must be safe to call
            from several threads, as an onnxruntime session is). A frame with a scheduled turn costs two
            whole passes where the others cost one; with a single-threaded network (``--method sdgan`` on
            the CPU gives the detector one core) the turn's pass then runs beside the upright one on a core
            the job left idle. The merge is the same whatever the threads (passes keep their order).
    """

    def __init__(
        self,
        detector: FaceDetector,
        *,
        detect_size: tuple[int, int] | None = None,
        tile_size: tuple[int, int] | None = None,
        border: float = 0.0,
        pyramid: Sequence[float] = (),
        pyramid_every: int = 1,
        rotations: Sequence[int] = (90, 180, 270),
        rotation_every: int = 1,
        turned_min_score: float = TURNED_MIN_SCORE,
        whole_every: int = 1,
        around_min_score: float = 0.0,
        pass_threads: int = 1,
    ) -> None:
        if any(r % 90 or not 0 < r < 360 for r in rotations):
            raise ValueError(f"rotations must be among 90, 180, 270, got {tuple(rotations)}")
        if border < 0 or border > 0.5:
            raise ValueError(f"border must be in [0, 0.5], got {border}")
        if rotation_every < 0:
            raise ValueError(f"rotation_every must be >= 0, got {rotation_every}")
        check_pyramid(tuple(pyramid))
        if pyramid_every < 1:
            raise ValueError(f"pyramid_every must be >= 1, got {pyramid_every}")
        if whole_every < 1:
            raise ValueError(f"whole_every must be >= 1, got {whole_every}")
        if pass_threads < 1:
            raise ValueError(f"pass_threads must be >= 1, got {pass_threads}")
        for name, size in (("detect size", detect_size), ("tile size", tile_size)):
            if size is not None and min(size) < 32:
                raise ValueError(f"{name} must be at least 32x32, got {size[0]}x{size[1]}")
        self.detector = detector
        self.detect_size = detect_size
        self.tile_size = tile_size
        self.border = border
        self.pyramid = tuple(pyramid)
        self.pyramid_every = pyramid_every
        self.rotations = tuple(rotations)
        self.rotation_every = rotation_every if self.rotations else 0
        self.turned_min_score = turned_min_score
        self.whole_every = whole_every
        self.around_min_score = around_min_score
        self.pass_threads = pass_threads
        self._frame = 0
        self._plans: dict[tuple[int, int], list[DetectorPass]] = {}
        self._coarse: dict[tuple[int, int], list[DetectorPass]] = {}
        self._followed: list[_Followed] = []
        self._upright: np.ndarray = np.zeros((0, 4))  # boxes the last frame's upright passes found
        self._around: dict[DetectorPass, list[np.ndarray]] = {}  # this frame's crops -> the boxes they follow
        scale = "at full resolution" if detect_size is None else f"shrunk into {detect_size[0]}x{detect_size[1]}"
        tiles = "never tiled" if tile_size is None else f"tiled above {tile_size[0]}x{tile_size[1]}"
        turns = (f"a quarter turn every {self.rotation_every} frame(s), turned faces followed" if self.rotation_every
                 else "no turns")
        whole = "the whole frame every frame" if whole_every == 1 else f"the whole frame every {whole_every} frames, crops around faces between"
        coarse = (f"also at {', '.join(f'{f:g}' for f in self.pyramid)} of that scale every {pyramid_every} frame(s)" if self.pyramid
                  else "no pyramid")
        log.info("detector passes: frames %s (%s), %s, border pad %g, %s, %s", scale, coarse, tiles, border, turns, whole)

    @property
    def threshold(self) -> float:
        return self.detector.threshold

    def reset(self) -> None:
        """Start the rotation schedule again and forget followed faces (a new stream)."""
        self._frame = 0
        self._followed = []
        self._upright = np.zeros((0, 4))

    def passes_for(self, width: int, height: int, frame: int) -> list[DetectorPass]:
        """Every pass run on frame number ``frame`` of this size."""
        plan = self._plans.get((width, height))
        if plan is None:
            plan = plan_main_passes(width, height, detect_size=self.detect_size, tile_size=self.tile_size, border=self.border)
            self._plans[(width, height)] = plan
            self._coarse[(width, height)] = plan_coarse_passes(width, height, self.pyramid, detect_size=self.detect_size,
                                                               tile_size=self.tile_size, border=self.border)
        whole = plan + (self._coarse[(width, height)] if frame % self.pyramid_every == 0 else [])
        passes = whole if frame % self.whole_every == 0 else self._around_upright_faces(width, height, whole)
        if self.rotation_every and frame % self.rotation_every == 0:
            rotation = self.rotations[(frame // self.rotation_every) % len(self.rotations)]
            passes += [p.with_rotation(rotation) for p in plan]
        return passes

    def _around_upright_faces(self, width: int, height: int, whole: list[DetectorPass]) -> list[DetectorPass]:
        """Upright passes between two whole-frame looks: a crop around each face found upright last frame
        (:data:`FOLLOW_CONTEXT` face sizes wide), or the ``whole`` look when the crops would cover more of the
        frame than :data:`FOLLOW_FULL_SHARE`; nothing when no face was found."""
        main = self._plans[(width, height)][-1]  # a pass at the detection scale gives scale and pad
        around: dict[DetectorPass, list[np.ndarray]] = {}
        for box in self._upright:
            spec = DetectorPass(_Followed(box, 0).region(width, height), main.scale, main.pad)
            around.setdefault(spec, []).append(box)
        if sum((x2 - x1) * (y2 - y1) for x1, y1, x2, y2 in (spec.region for spec in around)) > FOLLOW_FULL_SHARE * width * height:
            return whole  # the whole frame: every face, no crop filter
        self._around = around
        return list(around)

    def follow_passes(self, width: int, height: int, scheduled: Sequence[DetectorPass] = ()) -> list[DetectorPass]:
        """The follow passes of the next frame (module docstring): per turn, a crop around each face
        followed at that turn, or that turn's full passes when the crops would cover more of the frame
        than :data:`FOLLOW_FULL_SHARE`; nothing for a turn the ``scheduled`` passes already run."""
        plan = self._plans[(width, height)]
        main = plan[-1]  # a full-resolution pass of the plan gives scale and pad
        regions: dict[int, list[tuple[int, int, int, int]]] = {}
        for followed in self._followed:
            regions.setdefault(followed.rotation, []).append(followed.region(width, height))
        running = {p.rotation for p in scheduled}
        out: list[DetectorPass] = []
        for rotation, crops in regions.items():
            if rotation in running:
                continue
            if sum((x2 - x1) * (y2 - y1) for x1, y1, x2, y2 in crops) > FOLLOW_FULL_SHARE * width * height:
                out += [p.with_rotation(rotation) for p in plan]
            else:
                out += [DetectorPass(crop, main.scale, main.pad, rotation) for crop in dict.fromkeys(crops)]
        return out

    def detect(self, image: np.ndarray) -> Detections:
        if image.ndim != 3 or image.shape[2] != 3:
            raise ValueError(f"expected an (H, W, 3) RGB image, got shape {image.shape}")
        height, width = image.shape[:2]
        self._around = {}  # set by passes_for on a frame between whole looks
        passes = self.passes_for(width, height, self._frame)
        follows = self.follow_passes(width, height, [p for p in passes if p.rotation])
        self._frame += 1
        specs = passes + follows
        views = [view_of(image, spec) for spec in specs]
        seen_by: dict[DetectorPass, Detections] = {}
        for spec, (_, matrix), seen in zip(specs, views, self._run([view for view, _ in views]), strict=True):
            if spec.rotation and len(seen):
                # A turned view offers the network new false faces (an upside-down mouth and nose), while a
                # face that really is turned looks upright there and scores like one: keep confident ones.
                seen = seen.select(seen.scores >= max(self.turned_min_score, self.threshold))
            if spec.coarse and len(seen):
                seen = seen.select((seen.boxes[:, 2] - seen.boxes[:, 0] >= COARSE_MIN_FACE) & (seen.scores >= COARSE_MIN_SCORE))
            seen = _map_back(seen, matrix)
            followed = self._around.get(spec)
            if followed is not None and len(seen):  # a crop between whole looks: only the face it follows
                seen = seen.select(box_iou(seen.boxes.astype(np.float64), np.asarray(followed)).max(1) >= AROUND_MIN_IOU)
            seen_by[spec] = seen
        self._update_followed(seen_by)
        # Upright finds (the pyramid's only where no finer pass found the face), then the turned views'.
        upright = fold_coarse(_concat([seen for spec, seen in seen_by.items() if not spec.rotation and not spec.coarse]),
                              _concat([seen for spec, seen in seen_by.items() if spec.coarse]))
        if self.whole_every > 1:
            kept = merge_detections(upright)
            self._upright = kept.boxes[kept.scores >= self.around_min_score].astype(np.float64)
        merged = merge_detections(_concat([upright] + [seen for spec, seen in seen_by.items() if spec.rotation]))
        return _inside(merged, width, height)

    def _run(self, views: list[np.ndarray]) -> list[Detections]:
        """The network's detections on each view, in order; up to ``pass_threads`` views at once."""
        if self.pass_threads < 2 or len(views) < 2:
            return [self.detector.detect(view) for view in views]
        # A pool per frame that needs one (a scheduled turn, tiles): starting threads costs microseconds
        # against a network pass, and nothing outlives the call.
        with ThreadPoolExecutor(min(self.pass_threads, len(views)), thread_name_prefix="sdgan-pass") as pool:
            return list(pool.map(self.detector.detect, views))

    def _update_followed(self, seen_by: dict[DetectorPass, Detections]) -> None:
        """Renew each followed face seen again near its last box in its turn's passes, drop long-missed
        ones, and follow every other face a turned pass found. A turned find that overlaps an upright
        detection is not followed: the upright passes see that face on every frame anyway, and false
        faces that turned views make of real upright ones (a mouth and chin upside down) lie there."""
        if not self._followed and not any(spec.rotation for spec in seen_by):
            return  # most frames: nothing turned was looked at or is being followed
        upright = _concat([seen for spec, seen in seen_by.items() if not spec.rotation])
        turned: dict[int, list[Detections]] = {}
        for spec, seen in seen_by.items():
            if spec.rotation and len(seen):
                keep = ~_overlaps(seen.boxes, upright.boxes)
                if keep.any():
                    turned.setdefault(spec.rotation, []).append(seen.select(keep))
        found = {rotation: _concat(parts) for rotation, parts in turned.items()}
        kept: list[_Followed] = []
        for followed in self._followed:
            near = found.get(followed.rotation)
            overlap = box_iou(followed.box[None], near.boxes)[0] if near is not None else np.zeros(0)
            if overlap.size and overlap.max() > 0:
                best = int(np.argmax(overlap))
                followed.box, followed.misses = near.boxes[best].astype(np.float64), 0  # type: ignore[union-attr]
            else:
                followed.misses += 1
            if followed.misses <= FOLLOW_MISSES:
                kept.append(followed)
        for rotation, seen in found.items():
            for box in seen.boxes.astype(np.float64):
                same_turn = [f.box for f in kept if f.rotation == rotation]
                if same_turn and box_iou(box[None], np.asarray(same_turn)).max() >= 0.3:
                    continue  # already followed
                kept.append(_Followed(box, rotation))
        self._followed = kept


def _overlaps(boxes: np.ndarray, others: np.ndarray, share: float = 0.3) -> np.ndarray:
    """Per box of ``boxes``: whether some box of ``others`` covers at least ``share`` of the smaller of the two."""
    if not len(boxes) or not len(others):
        return np.zeros(len(boxes), bool)
    inter, area_a, area_b = box_overlaps(boxes, others)
    smaller = np.minimum(area_a[:, None], area_b[None, :])
    return (inter >= share * np.maximum(smaller, 1e-9)).any(axis=1)


def _inside(found: Detections, width: int, height: int) -> Detections:
    """Drop detections wholly outside the frame (a mirrored face in the pad with no real part in view)."""
    if not len(found):
        return found
    b = found.boxes
    visible = (b[:, 2] > 0) & (b[:, 0] < width) & (b[:, 3] > 0) & (b[:, 1] < height)
    return found if visible.all() else found.select(visible)
