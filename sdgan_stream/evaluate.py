"""How well an anonymized video hides identity and keeps the face useful, measured on any pair of videos.

``evaluate_videos(original, anonymized)`` compares the two frame by frame (every ``stride``-th frame)
at every face position of the ORIGINAL video, with models the product does not use (dlib's, see
:mod:`sdgan_stream.recognizer`), so the same numbers can be had for sdgan-stream, deface or anything
else that keeps the frame size and frame count.

Face positions come from the original: dlib's HOG detector on the whole frame (``detector="auto"``
falls back to CenterFace on frames where HOG finds nothing; ``"cnn"`` uses dlib's MMOD CNN), or
ground-truth boxes the caller passes (``face_boxes``). Positions are grouped into people by IoU
(:func:`assign_tracks`). At each position:

- **identity distance**: Euclidean distance of dlib 128-D embeddings, original vs anonymized. The
  original's chip is cut with its own 68 landmarks; the anonymized one with the landmarks found on the
  anonymized face when the detector finds a face there, else with the original's landmarks (so a
  covered face is still measured, at the same place).
- **leak**: distance < 0.6 (dlib's same-person threshold) OR the face pixels are nearly unchanged
  (mean absolute grey difference inside the face box < ``UNCHANGED_MAD`` levels, i.e. re-encoding noise).
- **detected**: dlib's detector (HOG, or CNN) finds a face at the position on the anonymized frame
  (:meth:`FaceRecognizer.detect_near`). The rate counts only positions where the same check finds the
  face on the original, so it measures what the anonymizer took away, not the detector's own misses.
- **landmark error**: the 68 landmarks the predictor places on the anonymized face (in the detected box,
  or in the original's box when none is found) vs the original's 68, mean point distance over the
  original's inter-ocular distance (outer eye corners). Expression and pose kept = small error.
- **identity spread** (per person): mean distance of the anonymized embeddings of one track to their
  mean; the same on the original is given for reference (one real person: ~0.1).
- **flicker**: mean absolute grey difference inside the face box between frame t and frame t+1 warped
  back onto t with the ORIGINAL's optical flow (motion compensated), anonymized and original;
  ``flicker_ratio`` = anonymized / original (about 1 or less = no added flicker).

The result is a JSON-ready dict; :func:`write_report` adds a Markdown report with example crops.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import cv2
import numpy as np

from .errors import InputError
from .io.source import VideoFileSource, to_display
from .recognizer import SAME_PERSON_DISTANCE, FaceRecognizer, FoundFace, landmark_error

log = logging.getLogger(__name__)

__all__ = [
    "FaceDetectorKind",
    "FaceMeasure",
    "TARGETS",
    "UNCHANGED_MAD",
    "add_evaluate_parser",
    "assign_tracks",
    "default_stride",
    "evaluate_videos",
    "find_faces",
    "render_markdown",
    "write_json",
    "write_report",
]

FaceDetectorKind = Literal["auto", "hog", "cnn", "centerface"]

UNCHANGED_MAD = 4.0  # grey levels; x264 re-encoding at crf 18-25 changes a face by ~2 on average
TARGET_FRAMES = 75  # default stride evaluates about this many frames
_CROP_PX = 112
_REPORT_CROPS = 8

# The project's targets (issues 3-6): (summary key, comparison, threshold, what it means).
TARGETS: tuple[tuple[str, str, float, str], ...] = (
    ("leak_rate", "==", 0.0, "no face recognisable as the original (distance < 0.6) or left unchanged"),
    ("identity_distance_mean", ">=", 0.75, "mean distance original vs anonymized (different people: 0.63-0.9)"),
    ("detection_rate", ">=", 0.90, "a face detector still finds a face (blur: 0%)"),
    ("landmark_error_median", "<=", 0.10, "expression and pose kept: 68-point error / inter-ocular distance"),
    ("identity_spread_max", "<=", 0.20, "one person keeps one fake identity across frames (real faces ~0.1)"),
)


@dataclass
class FaceMeasure:
    """Everything measured at one face position of the original video."""

    frame: int
    box: list[float]  # xyxy in display orientation, from the original
    found_by: str  # which detector gave the position: hog, cnn, centerface, given
    track: int = -1
    original_detected: bool = False
    anonymized_detected: bool = False
    distance: float = float("nan")
    pixel_change: float = float("nan")  # mean absolute grey difference inside the box
    leak: bool = False
    leak_reason: str | None = None  # "distance" or "unchanged"
    landmark_error: float = float("nan")
    flicker: float | None = None  # anonymized, frame t -> t+1 inside the box
    flicker_original: float | None = None
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


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    w = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    h = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = w * h
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return float(inter / union) if union > 0 else 0.0


def assign_tracks(measures: Sequence[FaceMeasure], *, iou_threshold: float = 0.2, max_gap: int = 5) -> None:
    """Group positions into people, in place: greedy IoU matching to the last box of each live track.

    ``max_gap`` is how many evaluated frames a track may go unseen and still be continued.
    """
    tracks: list[tuple[int, np.ndarray, int]] = []  # (track id, last box, step last seen)
    by_frame: dict[int, list[FaceMeasure]] = {}
    for m in measures:
        by_frame.setdefault(m.frame, []).append(m)
    next_id = 0
    for step, frame in enumerate(sorted(by_frame)):
        tracks = [t for t in tracks if step - t[2] <= max_gap]
        faces = by_frame[frame]
        pairs = sorted(
            ((_iou(np.asarray(f.box), t[1]), i, j) for i, f in enumerate(faces) for j, t in enumerate(tracks)),
            reverse=True,
        )
        used_faces, used_tracks = set(), set()
        for iou, i, j in pairs:
            if iou < iou_threshold:
                break
            if i in used_faces or j in used_tracks:
                continue
            used_faces.add(i)
            used_tracks.add(j)
            faces[i].track = tracks[j][0]
            tracks[j] = (tracks[j][0], np.asarray(faces[i].box), step)
        for i, f in enumerate(faces):
            if i not in used_faces:
                f.track = next_id
                tracks.append((next_id, np.asarray(f.box), step))
                next_id += 1


class _CenterFace:
    """Lazy CenterFace, only built when dlib finds no face (``auto``) or when asked for."""

    def __init__(self) -> None:
        self._detector = None

    def __call__(self, image: np.ndarray) -> list[FoundFace]:
        if self._detector is None:
            from .detect import CenterFaceDetector

            self._detector = CenterFaceDetector(threshold=0.5, detect_size=None)
        dets = self._detector.detect(image)
        return [FoundFace(dets.boxes[i], float(dets.scores[i]), "centerface") for i in range(len(dets))]


def find_faces(
    image: np.ndarray,
    recognizer: FaceRecognizer,
    *,
    detector: FaceDetectorKind = "auto",
    centerface: Callable[[np.ndarray], list[FoundFace]] | None = None,
) -> list[FoundFace]:
    """Face positions on one ORIGINAL frame (display orientation).

    ``hog``/``cnn``: the recognizer's dlib detector (its kind must match); ``centerface``: CenterFace;
    ``auto``: the dlib detector, and CenterFace on frames where it finds nothing.
    """
    centerface = centerface or _CenterFace()
    if detector == "centerface":
        return centerface(image)
    found = recognizer.detect(image)
    if not found and detector == "auto":
        found = centerface(image)
    return found


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


def _measure_face(
    recognizer: FaceRecognizer,
    original: np.ndarray,
    anonymized: np.ndarray,
    found: FoundFace,
    frame: int,
    *,
    grey_original: np.ndarray,
    grey_anonymized: np.ndarray,
    keep_crops: bool,
) -> FaceMeasure:
    box = found.box
    m = FaceMeasure(frame=frame, box=[float(v) for v in box], found_by=found.detector)
    # The original's own detection in the same local check gives the predictor a box of its own
    # convention (ground-truth or CenterFace boxes are larger than dlib's) and the rate's denominator.
    local_original = recognizer.detect_near(original, box)
    m.original_detected = local_original is not None
    shape_box = local_original.box if local_original is not None else box
    points_original = recognizer.shape(original, shape_box)
    m.embedding_original = recognizer.embed(original, points_original)

    local_anonymized = recognizer.detect_near(anonymized, box)
    m.anonymized_detected = local_anonymized is not None
    if local_anonymized is not None:
        points_anonymized = recognizer.shape(anonymized, local_anonymized.box)
        m.embedding = recognizer.embed(anonymized, points_anonymized)
    else:
        points_anonymized = recognizer.shape(anonymized, shape_box)
        m.embedding = recognizer.embed(anonymized, points_original)
    m.distance = float(np.linalg.norm(m.embedding - m.embedding_original))
    m.landmark_error = landmark_error(points_anonymized, points_original)
    m.pixel_change = _mean_abs_diff(grey_original, grey_anonymized, box)
    if m.distance < SAME_PERSON_DISTANCE:
        m.leak, m.leak_reason = True, "distance"
    elif m.pixel_change < UNCHANGED_MAD:
        m.leak, m.leak_reason = True, "unchanged"
    if keep_crops:
        m.crops = (_crop(original, box), _crop(anonymized, box))
    return m


def _spread(embeddings: list[np.ndarray]) -> float:
    e = np.stack(embeddings)
    return float(np.linalg.norm(e - e.mean(0), axis=1).mean())


def _summarize(measures: list[FaceMeasure]) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    n = len(measures)
    distances = np.array([m.distance for m in measures], np.float64)
    lm = np.array([m.landmark_error for m in measures], np.float64)
    seen = [m for m in measures if m.original_detected]
    flick = [(m.flicker, m.flicker_original) for m in measures if m.flicker is not None and np.isfinite(m.flicker)]
    tracks: dict[int, list[FaceMeasure]] = {}
    for m in measures:
        tracks.setdefault(m.track, []).append(m)
    per_track = []
    for tid, ms in sorted(tracks.items()):
        entry: dict[str, Any] = {
            "track": tid,
            "faces": len(ms),
            "frames": [ms[0].frame, ms[-1].frame],
            "identity_distance_mean": float(np.mean([m.distance for m in ms])),
            "leaks": sum(m.leak for m in ms),
            "detected": sum(m.anonymized_detected for m in ms),
            "landmark_error_median": float(np.nanmedian([m.landmark_error for m in ms])) if ms else None,
            "identity_spread": _spread([m.embedding for m in ms]) if len(ms) > 1 else None,
            "identity_spread_original": _spread([m.embedding_original for m in ms]) if len(ms) > 1 else None,
        }
        per_track.append(entry)
    spreads = [t["identity_spread"] for t in per_track if t["identity_spread"] is not None]
    spreads_original = [t["identity_spread_original"] for t in per_track if t["identity_spread_original"] is not None]
    leaks = [m for m in measures if m.leak]
    summary: dict[str, Any] = {
        "faces": n,
        "tracks": len(tracks),
        "leaks": len(leaks),
        "leak_rate": len(leaks) / n if n else None,
        "leaks_by_distance": sum(m.leak_reason == "distance" for m in measures),
        "leaks_unchanged": sum(m.leak_reason == "unchanged" for m in measures),
        "identity_distance_mean": float(distances.mean()) if n else None,
        "identity_distance_median": float(np.median(distances)) if n else None,
        "identity_distance_min": float(distances.min()) if n else None,
        "detection_rate": (sum(m.anonymized_detected for m in seen) / len(seen)) if seen else None,
        "detection_positions": len(seen),
        "landmark_error_median": float(np.nanmedian(lm)) if n and np.isfinite(lm).any() else None,
        "landmark_error_mean": float(np.nanmean(lm)) if n and np.isfinite(lm).any() else None,
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
    detector: FaceDetectorKind = "auto",
    face_boxes: Sequence[np.ndarray] | None = None,
    max_frames: int | None = None,
    recognizer: FaceRecognizer | None = None,
    keep_crops: bool = False,
    on_frame: Callable[[int], None] | None = None,
) -> dict[str, Any]:
    """Measure ``anonymized`` against ``original``; returns a JSON-ready dict (see the module docstring).

    ``face_boxes[i]`` ((F, 4) xyxy, display orientation) replaces face finding on frame ``i`` (tests,
    synthetic clips with ground truth). ``stride`` defaults to :func:`default_stride`. ``keep_crops``
    keeps small original/anonymized crops per face (``result["_measures"]``) for :func:`write_report`.
    """
    if detector not in ("auto", "hog", "cnn", "centerface"):
        raise ValueError(f"unknown detector {detector!r}; choose auto, hog, cnn or centerface")
    recognizer = recognizer or FaceRecognizer(detector="cnn" if detector == "cnn" else "hog")
    centerface = _CenterFace()
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
            if fo.index % stride:
                continue
            evaluated += 1
            if face_boxes is not None:
                boxes = face_boxes[fo.index] if fo.index < len(face_boxes) else np.zeros((0, 4), np.float32)
                found = [FoundFace(np.asarray(b, np.float32), 1.0, "given") for b in boxes]
            else:
                found = find_faces(image_o, recognizer, detector=detector, centerface=centerface)
            grey_o, grey_a = _grey(image_o), _grey(image_a)
            for f in found:
                m = _measure_face(
                    recognizer, image_o, image_a, f, fo.index,
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
    assign_tracks(measures)
    summary, per_track = _summarize(measures)
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
            "face_positions_from": detector if face_boxes is None else "given",
            "positions_by_detector": found_by,
            "local_detector": f"dlib {recognizer.detector_kind}",
            "same_person_distance": SAME_PERSON_DISTANCE,
            "unchanged_mad": UNCHANGED_MAD,
            "length_mismatch_frames": length_mismatch,
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
    """The worst faces (lowest distance) first, then faces spread evenly over the video."""
    with_crops = [m for m in measures if m.crops is not None]
    if len(with_crops) <= count:
        return with_crops
    worst = sorted(with_crops, key=lambda m: m.distance)[: count // 2]
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
        label = f"f{m.frame} t{m.track} d={m.distance:.2f}{' LEAK' if m.leak else ''}{'' if m.anonymized_detected else ' nodet'}"
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


def render_markdown(result: dict[str, Any], *, crops_image: str | None = None) -> str:
    s, settings = result["summary"], result["settings"]
    lines = [
        "# Anonymization evaluation",
        "",
        f"- original: `{result['original']}`",
        f"- anonymized: `{result['anonymized']}`",
        f"- {settings['frames_evaluated']} of {settings['frames_decoded']} frames evaluated (every {settings['stride']}), "
        f"{s['faces']} face positions in {s['tracks']} tracks; positions from {settings['face_positions_from']} "
        f"({', '.join(f'{k}: {v}' for k, v in settings['positions_by_detector'].items()) or 'none'}); "
        f"detection check: {settings['local_detector']}",
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
        f"| leaks by distance / unchanged pixels | {s['leaks_by_distance']} / {s['leaks_unchanged']} |",
        f"| identity distance median / min | {_fmt(s['identity_distance_median'])} / {_fmt(s['identity_distance_min'])} |",
        f"| positions where the original is detected | {s['detection_positions']} |",
        f"| landmark error mean | {_fmt(s['landmark_error_mean'])} |",
        f"| identity spread mean (original: {_fmt(s['identity_spread_original_mean'])}) | {_fmt(s['identity_spread_mean'])} |",
        f"| flicker anonymized / original (ratio) | {_fmt(s['flicker'], 2)} / {_fmt(s['flicker_original'], 2)} ({_fmt(s['flicker_ratio'], 2)}) |",
        "",
        "Per person (track):",
        "",
        "| track | faces | frames | distance mean | leaks | detected | landmark error | spread (original) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for t in result["tracks"]:
        lines.append(
            f"| {t['track']} | {t['faces']} | {t['frames'][0]}-{t['frames'][1]} | {_fmt(t['identity_distance_mean'])} | "
            f"{t['leaks']} | {t['detected']} | {_fmt(t['landmark_error_median'])} | "
            f"{_fmt(t['identity_spread'])} ({_fmt(t['identity_spread_original'])}) |"
        )
    if crops_image:
        lines += ["", "Examples (original | anonymized; d = identity distance, nodet = no face detected):", "", f"![examples]({crops_image})"]
    lines += [
        "",
        "Definitions: dlib 128-D recognizer (face-recognition-models); leak = distance < 0.6 or mean grey change in the "
        f"face box < {UNCHANGED_MAD:g}; detection rate over positions where dlib detects the original; landmark error = "
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
            "Compare an anonymized video with its original at every face position of the original, with dlib's "
            "recognizer, landmarks and detector (models the product does not use): identity distance, leak rate, "
            "detection rate, landmark error, identity spread per person, flicker. Works on any pair of videos of the "
            "same size and frame count (deface output included)."
        ),
    )
    parser.add_argument("original", type=Path, help="the original video")
    parser.add_argument("anonymized", type=Path, help="the anonymized video")
    parser.add_argument("--json", type=Path, default=None, help="write the full result as JSON here")
    parser.add_argument("--report", type=Path, default=None, metavar="DIR", help="write report.md, evaluation.json and examples.png here")
    parser.add_argument("--stride", type=int, default=None, help="evaluate every Nth frame (default: about 75 frames in all)")
    parser.add_argument("--max-frames", type=int, default=None, help="evaluate only the first N frames")
    parser.add_argument(
        "--detector", choices=("auto", "hog", "cnn", "centerface"), default="auto",
        help="face positions on the original: dlib HOG (auto: CenterFace on frames where HOG finds none), dlib CNN, CenterFace",
    )
    parser.add_argument("--check", action="store_true", help="exit with status 3 when a target is missed")
    parser.set_defaults(handler=_run_evaluate)


def _run_evaluate(args: Any) -> int:
    import sys

    if args.stride is not None and args.stride < 1:
        print("error: --stride must be at least 1", file=sys.stderr)
        return 2
    result = evaluate_videos(
        args.original, args.anonymized, stride=args.stride, detector=args.detector,
        max_frames=args.max_frames, keep_crops=args.report is not None,
    )
    if args.json is not None:
        write_json(result, args.json)
    if args.report is not None:
        report = write_report(result, args.report)
        print(f"report: {report}", file=sys.stderr)
    s = result["summary"]
    print(
        f"{s['faces']} faces, {s['tracks']} tracks: leak rate {_fmt(s['leak_rate'])}, identity distance "
        f"{_fmt(s['identity_distance_mean'])}, detection rate {_fmt(s['detection_rate'])}, landmark error "
        f"{_fmt(s['landmark_error_median'])}, identity spread {_fmt(s['identity_spread_max'])}, flicker ratio "
        f"{_fmt(s['flicker_ratio'], 2)}"
    )
    failed = [k for k, t in result["targets"].items() if t["pass"] is False]
    if failed:
        print(f"targets missed: {', '.join(failed)}", file=sys.stderr)
    if s["faces"] == 0:
        print("warning: no face found on the original: nothing was measured", file=sys.stderr)
    return 3 if args.check and failed else 0
