"""One person, one fake identity across the segment cuts of a cluster run (``--method sdgan``).

Segments render in parallel, and a track's identity is chosen by the identity guard while rendering,
so a segment cannot wait for its neighbour's choice. Identities are therefore settled in two phases
per segmented video (:mod:`sdgan_stream.cluster` runs them):

1. :func:`analyse_segment` (no generator): decode the segment with its overlap, run the detector,
   tracker and look-back exactly as the render will, and keep a :class:`SegmentAnalysis`: every
   frame's detections, every tracked face's box by pts, and per track the recognizer's embeddings of
   its ORIGINAL face on its best detected views (the guard's ``view_quality``, at most 3).
2. :func:`group_tracks` (the driver, deterministic): links (segment, track) pairs with a union-find.
   An overlap link joins tracks of segments k and k+1 whose boxes agree (IoU >= 0.5) on at least 3
   and on most of the frames both segments decode and both show, when each has exactly one such
   partner. A re-entry link joins a track to the one group whose views match ALL of its own, by the
   identity ledger's strict rule (keep-faces strictness, >= 2 views on both sides). No link joins two groups that
   are on screen in the same frame, and two matching groups are doubt: no link. Each group of two or
   more tracks gets one identity base (the tracker seed of its smallest (segment, track)).
3. The render replays the stored detections (:class:`ReplayDetector`, so the tracker makes the very
   same tracks and ids, and detection is not paid twice) and hands each grouped track its group's
   base (:meth:`~sdgan_stream.identity_guard.IdentityGuard.propose`). The guard then draws that base's
   candidates and keeps the FIRST that passes this segment's own check (not the most faithful, which
   depends on the segment's frames): segments of one person that pass the same candidate show one
   face across the cut. A candidate that fails here is simply not kept: the track takes the next one,
   or is covered, exactly as any draw (fail-closed; the worst case is a new face at a cut).

Cover methods skip all of this (identities mean nothing to them), as do runs with ``--keep-faces``
(its photo detections would go through the replayed detector) or without the guard or the tracker.
"""

from __future__ import annotations

import logging
import os
import zlib
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from .types import Detections

if TYPE_CHECKING:
    from .config import AnonymizeOptions
    from .io.segments import Segment

log = logging.getLogger(__name__)

__all__ = ["RecordingDetector", "ReplayDetector", "SegmentAnalysis", "analyse_segment", "group_tracks",
           "image_fingerprint", "needs_identity_phase"]

MIN_OVERLAP_FRAMES = 3  # frames of agreeing boxes an overlap link needs at least
OVERLAP_IOU = 0.5


def needs_identity_phase(options: AnonymizeOptions) -> bool:
    """Whether a segmented video of this run is analysed first to carry identities across its cuts."""
    return options.method == "sdgan" and options.identity_guard and options.track and not options.keep_faces


# -- detections: recorded in phase 1, replayed in phase 3 -----------------------------------------------------
def image_fingerprint(image: np.ndarray) -> int:
    """A cheap check that a replayed frame is the analysed one (decoding is bit-exact run to run)."""
    return zlib.crc32(np.ascontiguousarray(image[::8, ::8]).tobytes()) ^ (image.shape[0] << 16 | image.shape[1])


class RecordingDetector:
    """Passes ``detector``'s answers through and keeps them in order (None where it raised), with each
    image's fingerprint."""

    def __init__(self, detector: Any) -> None:
        self.detector = detector
        self.frames: list[Detections | None] = []
        self.fingerprints: list[int] = []

    def detect(self, image: np.ndarray) -> Detections:
        self.fingerprints.append(image_fingerprint(image))
        try:
            detections = self.detector.detect(image)
        except Exception:
            self.frames.append(None)
            raise
        self.frames.append(detections)
        return detections


class ReplayDetector:
    """Answers each call with the next recorded detections. Raises where the recording raised, on an
    image other than the recorded one, and on any call past the recording: the frame is then covered
    whole (fail-closed), never given another frame's faces."""

    def __init__(self, frames: Sequence[Detections | None], fingerprints: Sequence[int]) -> None:
        if len(frames) != len(fingerprints):
            raise ValueError("one fingerprint per recorded frame")
        self.frames = list(frames)
        self.fingerprints = list(fingerprints)
        self.calls = 0

    def detect(self, image: np.ndarray) -> Detections:
        index, self.calls = self.calls, self.calls + 1
        if index >= len(self.frames):
            raise RuntimeError(f"replayed detections: frame {index} was not analysed ({len(self.frames)} were)")
        if image_fingerprint(image) != self.fingerprints[index]:
            raise RuntimeError(f"replayed detections: frame {index} is not the analysed image")
        detections = self.frames[index]
        if detections is None:
            raise RuntimeError(f"replayed detections: detection failed on frame {index} in the analysis")
        return detections


# -- phase 1 ----------------------------------------------------------------------------------------------------
@dataclass
class SegmentAnalysis:
    """What phase 1 learned about one segment (see the module docstring)."""

    segment: int
    pts: np.ndarray  # (n,) int64: every decoded frame, in order
    detections: list[Detections | None]  # per detector call (one per decoded frame); None: it raised there
    fingerprints: np.ndarray  # (n,) int64: :func:`image_fingerprint` of each detector call's image
    faces: np.ndarray  # (m, 6) float64 rows: track id, pts, x1, y1, x2, y2 (every tracked face shown)
    written: np.ndarray  # (m,) bool: the row's frame is one this segment writes
    bases: dict[int, int]  # track id -> its tracker identity seed
    views: dict[int, np.ndarray] = field(default_factory=dict)  # track id -> (k, d) original embeddings

    def save(self, path: Path) -> None:
        """Written under a temporary name and renamed: a file under ``path`` is always complete."""
        counts = np.array([-1 if d is None else len(d) for d in self.detections], np.int64)
        found = [d for d in self.detections if d is not None and len(d)] or [Detections.empty()]
        tracks = sorted(self.views)
        embeddings = np.concatenate([self.views[t] for t in tracks]) if tracks else np.zeros((0, 0), np.float32)
        temp = path.with_name(f".{path.stem}.partial.npz")
        np.savez(temp, segment=self.segment, pts=self.pts, fingerprints=self.fingerprints, counts=counts,
                 boxes=np.concatenate([d.boxes for d in found]), scores=np.concatenate([d.scores for d in found]),
                 landmarks=np.concatenate([d.landmarks for d in found]), faces=self.faces, written=self.written,
                 bases=np.array(sorted(self.bases.items()), np.int64).reshape(-1, 2),
                 view_tracks=np.array([t for t in tracks for _ in self.views[t]], np.int64), view_embeddings=embeddings)
        os.replace(temp, path)

    @classmethod
    def load(cls, path: Path) -> SegmentAnalysis:
        with np.load(path) as data:
            detections: list[Detections | None] = []
            start = 0
            for n in data["counts"].tolist():
                if n < 0:
                    detections.append(None)
                    continue
                cut = slice(start, start + n)
                detections.append(Detections(data["boxes"][cut], data["scores"][cut], data["landmarks"][cut]))
                start += n
            view_tracks, embeddings = data["view_tracks"], data["view_embeddings"]
            views = {int(t): embeddings[view_tracks == t] for t in np.unique(view_tracks)}
            return cls(segment=int(data["segment"]), pts=data["pts"], detections=detections,
                       fingerprints=data["fingerprints"], faces=data["faces"],
                       written=data["written"].astype(bool), bases={int(t): int(s) for t, s in data["bases"]}, views=views)


def analyse_segment(src: Path, segment: Segment, options: AnonymizeOptions, *, detector: Any, renderer: Any) -> SegmentAnalysis:
    """Phase 1 for one segment: detection, tracking and look-back as :func:`~sdgan_stream.api.anonymize_video`
    runs them with ``options`` (its seed is the segment's tracker seed), plus the original views of each
    track, embedded with the guard's recognizer of the sdgan ``renderer`` (whose landmarks it uses too)."""
    from .anonymize import CoverRenderer
    from .api import build_anonymizer
    from .identity_guard import view_quality
    from .io.source import VideoFileSource

    recognizer = renderer.guard.recognizer
    recording = RecordingDetector(detector)
    pts: list[int] = []
    rows: list[tuple[float, ...]] = []
    written: list[bool] = []
    bases: dict[int, int] = {}
    best: dict[int, list[tuple[float, np.ndarray]]] = {}  # track -> (quality, embedding), best first
    with VideoFileSource(src) as source:
        # Never renders: the cover renderer only fills the stage chain's slot.
        anonymizer = build_anonymizer(options, source.info, detector=recording, renderer=CoverRenderer())

        def collect(ready: Iterable[Any]) -> None:
            for item in ready:
                tracked = [f for f in item.faces if f.track_id is not None]
                for face in tracked:
                    rows.append((face.track_id, item.frame.pts, *(float(v) for v in face.box)))
                    written.append(segment.writes(item.frame.pts))
                    bases.setdefault(int(face.track_id), int(face.identity_seed))
                detected = [f for f in tracked if f.source == "detected"]
                if not detected or item.analysis_failed:
                    continue
                for prepared in renderer.prepare(item.image, detected):
                    crop = getattr(prepared, "crop", None)
                    if crop is None:  # a fallback (too small, no landmarks): not a view
                        continue
                    kept = best.setdefault(int(prepared.face.track_id), [])
                    quality = view_quality(crop, prepared.landmarks68_crop, prepared.face.width)
                    if kept and quality <= 1.25 * kept[0][0] and len(kept) >= 2:
                        continue  # the guard's rule (a clearly better view), and two views at least for matching
                    embedding = recognizer.embed(crop, prepared.landmarks68_crop[None])[0]
                    kept[:] = sorted([*kept, (quality, embedding)], key=lambda v: -v[0])[:3]

        for frame in segment.read(source):
            pts.append(int(frame.pts))
            collect(anonymizer.analyse_frame(frame))
        collect(anonymizer.analyse_flush())
    return SegmentAnalysis(
        segment=segment.index, pts=np.array(pts, np.int64), detections=recording.frames,
        fingerprints=np.array(recording.fingerprints, np.int64),
        faces=np.array(rows, np.float64).reshape(-1, 6), written=np.array(written, bool), bases=bases,
        views={track: np.stack([e for _, e in kept]).astype(np.float32) for track, kept in best.items()},
    )


# -- phase 2 ----------------------------------------------------------------------------------------------------
def _iou(a: np.ndarray, b: np.ndarray) -> float:
    w = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    h = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = w * h
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def _boxes_by_track(analysis: SegmentAnalysis, shared: set[int]) -> dict[int, dict[int, np.ndarray]]:
    out: dict[int, dict[int, np.ndarray]] = {}
    for row in analysis.faces:
        if int(row[1]) in shared:
            out.setdefault(int(row[0]), {})[int(row[1])] = row[2:6]
    return out


def _overlap_links(a: SegmentAnalysis, b: SegmentAnalysis) -> list[tuple[int, int]]:
    """(track of a, track of b) pairs that are one person by their boxes on the frames both decode."""
    shared = set(a.pts.tolist()) & set(b.pts.tolist())
    left, right = _boxes_by_track(a, shared), _boxes_by_track(b, shared)
    agree: dict[int, list[int]] = {}
    agreed_by: dict[int, list[int]] = {}
    for ta in sorted(left):
        for tb in sorted(right):
            both = sorted(left[ta].keys() & right[tb].keys())
            good = sum(_iou(left[ta][p], right[tb][p]) >= OVERLAP_IOU for p in both)
            if good >= MIN_OVERLAP_FRAMES and 2 * good > len(both):
                agree.setdefault(ta, []).append(tb)
                agreed_by.setdefault(tb, []).append(ta)
    return [(ta, tbs[0]) for ta, tbs in sorted(agree.items()) if len(tbs) == 1 and len(agreed_by[tbs[0]]) == 1]


class _Groups:
    """Union-find over (segment, track) nodes; the root is the smallest node, so results do not depend on order."""

    def __init__(self, nodes: Iterable[tuple[int, int]]) -> None:
        self.parent = {node: node for node in nodes}

    def find(self, node: tuple[int, int]) -> tuple[int, int]:
        while self.parent[node] != node:
            self.parent[node] = self.parent[self.parent[node]]
            node = self.parent[node]
        return node

    def union(self, a: tuple[int, int], b: tuple[int, int]) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra != rb:
            self.parent[max(ra, rb)] = min(ra, rb)

    def members(self) -> dict[tuple[int, int], list[tuple[int, int]]]:
        out: dict[tuple[int, int], list[tuple[int, int]]] = {}
        for node in sorted(self.parent):
            out.setdefault(self.find(node), []).append(node)
        return out


def group_tracks(
    analyses: Sequence[SegmentAnalysis],
    *,
    threshold: float,
    distances: Callable[[np.ndarray, np.ndarray], np.ndarray],
    min_views: int = 2,
) -> dict[int, dict[int, int]]:
    """Phase 2: segment -> {track id -> identity base} for the tracks that share a person with another
    track (see the module docstring); ``threshold``/``distances``: the identity ledger's strict rule."""
    analyses = sorted(analyses, key=lambda a: a.segment)
    nodes = sorted((a.segment, t) for a in analyses for t in a.bases)
    groups = _Groups(nodes)
    # On screen: by pts within a segment (its overlap frames too), by written pts across segments.
    shown: dict[tuple[int, int], set[int]] = {}
    written: dict[tuple[int, int], set[int]] = {}
    for a in analyses:
        for row, own in zip(a.faces, a.written):
            shown.setdefault((a.segment, int(row[0])), set()).add(int(row[1]))
            if own:
                written.setdefault((a.segment, int(row[0])), set()).add(int(row[1]))

    def together(x: list[tuple[int, int]], y: list[tuple[int, int]]) -> bool:
        return any((shown if p[0] == q[0] else written).get(p, set()) & (shown if p[0] == q[0] else written).get(q, set())
                   for p in x for q in y)

    def join(a: tuple[int, int], b: tuple[int, int]) -> None:
        members = groups.members()
        if groups.find(a) != groups.find(b) and not together(members[groups.find(a)], members[groups.find(b)]):
            groups.union(a, b)

    for a, b in zip(analyses, analyses[1:]):
        if b.segment == a.segment + 1:
            for ta, tb in _overlap_links(a, b):
                join((a.segment, ta), (b.segment, tb))
    # Re-entry: a track whose views all match exactly one other group, strictly; both with enough views.
    views = {(a.segment, t): v for a in analyses for t, v in a.views.items() if len(v) >= min_views}
    overlap_groups = groups.members()
    root_of = {node: root for root, members in overlap_groups.items() for node in members}
    links = []
    for node in sorted(views):
        matching = {root_of[other] for other in sorted(views) if root_of[other] != root_of[node]
                    and bool((distances(views[node], views[other]).min(axis=1) < threshold).all())}
        matching = {r for r in matching if not together(overlap_groups[root_of[node]], overlap_groups[r])}
        if len(matching) == 1:
            links.append((node, matching.pop()))
        elif matching:
            log.info("segment identities: track %s matches %d people: new identity", node, len(matching))
    for node, root in links:
        join(node, root)
    proposals: dict[int, dict[int, int]] = {a.segment: {} for a in analyses}
    base_of = {(a.segment, t): s for a in analyses for t, s in a.bases.items()}
    for root, members in groups.members().items():
        if len(members) > 1:
            for segment, track in members:
                proposals[segment][track] = base_of[root]
    return proposals
