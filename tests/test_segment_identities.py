"""One person keeps one fake identity across the segment cuts of a cluster run: analysis (stored
detections, overlap boxes, original views), deterministic grouping, replayed detections and the
guard's proposed identities (fail-closed: a candidate this segment's check refuses is never kept)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from sdgan_stream.anonymize import CoverRenderer
from sdgan_stream.api import anonymize_video, build_detector
from sdgan_stream.cluster import AnonymizeWorker, WorkUnit, segment_seed
from sdgan_stream.config import AnonymizeOptions
from sdgan_stream.identity_guard import GuardConfig, IdentityGuard
from sdgan_stream.identity_ledger import IdentityLedger
from sdgan_stream.io.segments import plan_segments, read_index
from sdgan_stream.render import SdganRenderer
from sdgan_stream.samples import make_face_clip
from sdgan_stream.segment_identities import (ReplayDetector, SegmentAnalysis, analyse_segment, group_tracks,
                                             image_fingerprint, needs_identity_phase)
from sdgan_stream.types import Detections

from .test_cluster import _with_gop, ray_instance  # noqa: F401 (a fixture)
from .test_identity_guard import FakeRecognizer, _crop, _points


def _detections(*boxes: tuple[float, ...]) -> Detections:
    n = len(boxes)
    return Detections(np.array(boxes, np.float32).reshape(n, 4), np.full(n, 0.9, np.float32), np.zeros((n, 5, 2), np.float32))


def _analysis(segment: int, pts: range, rows: list[tuple[int, int, tuple[float, ...]]], writes: range,
              views: dict[int, list[float]] | None = None) -> SegmentAnalysis:
    """A segment decoding ``pts`` and writing ``writes``, with tracked faces ``(track, pts, box)``."""
    faces = np.array([(t, p, *box) for t, p, box in rows], np.float64).reshape(-1, 6)
    return SegmentAnalysis(
        segment=segment, pts=np.array(pts), detections=[Detections.empty() for _ in pts],
        fingerprints=np.zeros(len(pts), np.int64), faces=faces,
        written=np.array([p in writes for _, p, _ in rows], bool), bases={t: 1000 * segment + t for t, _, _ in rows},
        views={t: np.array([[v, 0.0] for v in values], np.float32) for t, values in (views or {}).items()},
    )


def _euclidean(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.linalg.norm(a[:, None] - b[None], axis=2)


def _group(*analyses: SegmentAnalysis) -> dict[int, dict[int, int]]:
    return group_tracks(analyses, threshold=0.42, distances=_euclidean)


A, B = (10.0, 10.0, 60.0, 60.0), (200.0, 10.0, 250.0, 60.0)


# -- stored and replayed detections ----------------------------------------------------------------------------
def test_an_analysis_round_trips_and_replays_in_order(tmp_path: Path) -> None:
    analysis = _analysis(0, range(3), [(1, 0, A), (1, 1, A)], range(2), views={1: [0.1, 0.2]})
    images = [np.full((16, 16, 3), v, np.uint8) for v in (1, 2, 3)]
    analysis.detections = [_detections(A), None, _detections(A, B)]
    analysis.fingerprints = np.array([image_fingerprint(i) for i in images], np.int64)
    analysis.save(tmp_path / "a.npz")
    loaded = SegmentAnalysis.load(tmp_path / "a.npz")
    assert [None if d is None else len(d) for d in loaded.detections] == [1, None, 2]
    np.testing.assert_array_equal(loaded.detections[2].boxes, analysis.detections[2].boxes)
    np.testing.assert_array_equal(loaded.faces, analysis.faces)
    assert loaded.bases == {1: 1} and loaded.written.tolist() == [True, True]
    np.testing.assert_array_equal(loaded.views[1], analysis.views[1])
    replay = ReplayDetector(loaded.detections, loaded.fingerprints)
    assert len(replay.detect(images[0])) == 1
    with pytest.raises(RuntimeError):  # detection failed there: the frame is covered whole, as it was
        replay.detect(images[1])
    assert len(replay.detect(images[2])) == 2
    with pytest.raises(RuntimeError):  # past the recording: never an unanalysed frame with no faces
        replay.detect(images[2])
    with pytest.raises(RuntimeError):  # another image than the analysed one: never its faces
        ReplayDetector(loaded.detections, loaded.fingerprints).detect(images[2])


def test_only_identity_runs_pay_for_the_analysis() -> None:
    assert needs_identity_phase(AnonymizeOptions(method="sdgan"))
    for options in (AnonymizeOptions(method="blur"), AnonymizeOptions(method="pixelate"), AnonymizeOptions(method="solid"),
                    AnonymizeOptions(method="sdgan", identity_guard=False), AnonymizeOptions(method="sdgan", track=False)):
        assert not needs_identity_phase(options)


# -- grouping -------------------------------------------------------------------------------------------------
def test_a_person_crossing_a_cut_is_one_group_and_a_stranger_is_not() -> None:
    # Segment 0 writes 0-9 and decodes to 14; segment 1 writes 10-19 and decodes from 5.
    first = _analysis(0, range(15), [(1, p, A) for p in range(15)] + [(2, p, B) for p in range(3)], range(10))
    second = _analysis(1, range(5, 20), [(4, p, A) for p in range(6, 20)] + [(5, p, B) for p in range(12, 20)], range(10, 20))
    proposals = _group(first, second)
    assert proposals == {0: {1: 1}, 1: {4: 1}}  # the base of the smallest (segment, track); 2 and 5 never overlap
    assert _group(second, first) == proposals  # the order of the inputs does not matter


def test_boxes_that_agree_with_two_tracks_are_doubt() -> None:
    first = _analysis(0, range(15), [(1, p, A) for p in range(15)], range(10))
    second = _analysis(1, range(5, 20), [(4, p, A) for p in range(5, 12)] + [(6, p, A) for p in range(12, 20)], range(10, 20))
    assert _group(first, second) == {0: {}, 1: {}}


def test_a_returning_person_joins_strictly_and_never_someone_on_screen() -> None:
    first = _analysis(0, range(15), [(1, p, A) for p in range(4)], range(10), views={1: [0.0, 0.1]})
    second = _analysis(1, range(5, 20), [(7, p, B) for p in range(16, 20)] + [(8, p, A) for p in range(16, 20)], range(10, 20),
                       views={7: [0.2, 0.25], 8: [0.3, 0.9]})
    assert _group(first, second) == {0: {1: 1}, 1: {7: 1}}  # 7 matches on both views; 8 has a view outside
    one_view = _analysis(1, range(5, 20), [(7, p, B) for p in range(16, 20)], range(10, 20), views={7: [0.2]})
    assert _group(first, one_view) == {0: {}, 1: {}}  # one view is not enough
    # Two people that both look like the returning one: doubt, new identity.
    twins = _analysis(0, range(15), [(1, p, A) for p in range(4)] + [(2, p, B) for p in range(4)], range(10),
                      views={1: [0.0, 0.1], 2: [0.3, 0.35]})
    assert _group(twins, second)[1] == {}
    # On screen together with the person it matches: never the same identity.
    together = _analysis(0, range(15), [(1, p, A) for p in range(4)] + [(3, p, B) for p in range(4)], range(10),
                         views={1: [0.0, 0.1], 3: [0.05, 0.12]})
    assert _group(together) == {0: {}}


# -- the guard's proposed identity ----------------------------------------------------------------------------
def _guard() -> IdentityGuard:
    recognizer = FakeRecognizer()
    return IdentityGuard(recognizer, GuardConfig(candidates=3, min_distance=0.5), ledger=IdentityLedger.for_recognizer(recognizer))


def test_segments_of_one_person_keep_the_first_candidate_that_passes_in_each() -> None:
    chosen = []
    for person, track in ((100, 1), (104, 9)):  # the same person in two segments, under other track ids
        guard = _guard()
        guard.propose({track: 555})
        guard.start_frame()
        guard.observe(track, _crop(person), _points(), 120.0)
        assert guard.decide(track, 120.0, _points()).action == "draw"
        seeds = guard.candidates(track, identity_seed=track)
        # Candidate 0 is too close to the person, 1 and 2 pass (2 is farther: a normal draw would keep it).
        chosen.append(guard.choose(track, seeds, [_crop(person), _crop(220), _crop(250)], [_points()] * 3))
    assert chosen[0] == chosen[1] is not None
    assert chosen[0] == _guard().candidates(1, identity_seed=555)[1]
    refused = _guard()
    refused.propose({1: 555})
    refused.start_frame()
    refused.observe(1, _crop(100), _points(), 120.0)
    refused.decide(1, 120.0, _points())
    assert refused.choose(1, refused.candidates(1, 555), [_crop(100)] * 3, [_points()] * 3) is None  # covered


# -- a split clip, end to end without Ray ----------------------------------------------------------------------
@pytest.fixture(scope="module")
def plain_renderer() -> SdganRenderer:
    return SdganRenderer.from_options(AnonymizeOptions(backend="eager", device="cpu", identity_guard=False))


def test_one_person_keeps_one_identity_across_a_cut(plain_renderer: SdganRenderer, tmp_path: Path) -> None:
    clip = make_face_clip(tmp_path / "raw.mp4", width=240, height=180, frames=40, fps=10, faces=1, face_width=70, seed=5)
    clip = _with_gop(clip, tmp_path / "clip.mp4", 10)
    segments = plan_segments(read_index(clip.path), segment_seconds=2.0, overlap_frames=8)
    assert len(segments) == 2
    options = AnonymizeOptions(method="sdgan", detect_size=(320, 320), seed=7)
    detector = build_detector(options)
    recognizer = FakeRecognizer()
    renderer = SdganRenderer(backend=plain_renderer.backend, config=plain_renderer.config, landmarker=plain_renderer.landmarker,
                             fallback=CoverRenderer(), guard=IdentityGuard(recognizer, GuardConfig(candidates=2, min_distance=0.05),
                                                                          ledger=IdentityLedger.for_recognizer(recognizer)))
    paths = tuple(tmp_path / f"analysis-{s.index}.npz" for s in segments)
    for segment, path in zip(segments, paths):
        analyse_segment(clip.path, segment, options.with_overrides(seed=segment_seed(7, segment.index)),
                        detector=detector, renderer=renderer.for_new_stream()).save(path)
    seeds = []
    for segment in segments:
        unit = WorkUnit(f"0/{segment.index}", 0, clip.path, tmp_path / f"part-{segment.index}.mp4", segment,
                        segment_seed(7, segment.index), segment.frame_count, analyses=paths)
        stream = renderer.for_new_stream()
        replay = AnonymizeWorker._replay_with_identities(unit, stream)
        report = anonymize_video(clip.path, unit.out, options=options.with_overrides(seed=unit.seed), detector=replay,
                                 renderer=stream, segment=segment)
        assert replay.calls == len(replay.frames) and report.stats.get("faces_sdgan", 0) > 0
        assert report.stats.get("frames_covered_whole", 0) == 0
        proposed = stream.guard._proposals
        assert len(proposed) == 1, proposed  # the one person, found in both segments
        seeds.append(stream.guard.seed_of(next(iter(proposed))))
    assert seeds[0] is not None and seeds[0] == seeds[1]


# -- on Ray: the two phases in the runner ------------------------------------------------------------------------
def test_a_split_sdgan_video_on_ray_is_analysed_then_rendered_with_shared_identities(ray_instance, tmp_path: Path) -> None:
    from sdgan_stream.cluster import ClusterConfig, VideoJob, run_cluster

    from .conftest import read_frames
    from .test_file_anonymizer import _assert_faces_covered

    clip = make_face_clip(tmp_path / "raw.mp4", width=240, height=180, frames=40, fps=10, faces=1, face_width=70, seed=5)
    clip = _with_gop(clip, tmp_path / "clip.mp4", 10)
    options = AnonymizeOptions(method="sdgan", backend="eager", device="cpu", detect_size=(320, 320), seed=7, guard_candidates=2)
    job = VideoJob(clip.path, tmp_path / "out.mp4")
    report = run_cluster([job], options, ClusterConfig(segment_seconds=2.0))
    video = report.videos[0]
    assert (video.status, video.parts) == ("done", 2), report.table()
    frames, pts, _ = read_frames(job.dst)
    assert len(frames) == clip.frame_count and pts == read_frames(clip.path)[1]
    _assert_faces_covered(read_frames(clip.path)[0], frames, clip)
    # Each segment kept its person's proposed identity (or covered the face: then this count would be short).
    assert video.stats.get("guard_kept_proposed_identities", 0) >= 2, video.stats
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # parts and analyses gone


def test_only_sdgan_plans_analyses_first_and_a_rerun_reuses_them(tmp_path: Path) -> None:
    from sdgan_stream.cluster import VideoJob, plan_video

    clip = make_face_clip(tmp_path / "raw.mp4", width=160, height=120, frames=60, fps=10, faces=1, seed=5)
    clip = _with_gop(clip, tmp_path / "clip.mp4", 10)
    job = VideoJob(clip.path, tmp_path / "out.mp4")
    covers = plan_video(0, job, AnonymizeOptions(method="pixelate", seed=7), 2.0)
    assert covers.deferred == () and {u.kind for u in covers.units} == {"render"} and len(covers.units) >= 2
    assert all(u.analyses == () for u in covers.units)
    sdgan = AnonymizeOptions(method="sdgan", seed=7)
    plan = plan_video(0, job, sdgan, 2.0)
    assert [u.kind for u in plan.units] == ["analyse"] * len(plan.parts)
    assert [u.seed for u in plan.units] == [u.seed for u in plan.deferred]  # same tracker in both phases
    assert all(u.analyses == tuple(a.out for a in plan.units) for u in plan.deferred)
    plan.units[0].out.touch()  # an analysis finished by an earlier run is not redone
    assert [u.key for u in plan_video(0, job, sdgan, 2.0).units] == [u.key for u in plan.units[1:]]
