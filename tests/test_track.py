"""FaceTracker: coverage through missed detections, identities, association edge cases."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sdgan_stream.track import (
    FaceTracker,
    KalmanBoxBank,
    OneEuroFilter,
    associate,
    box_iou,
    boxes_to_measurements,
)
from sdgan_stream.types import Detections, Face

TEMPLATE = np.array([[0.32, 0.42], [0.68, 0.42], [0.5, 0.6], [0.36, 0.78], [0.64, 0.78]])


# -- helpers ---------------------------------------------------------------------------------------
def landmarks_in(box: np.ndarray) -> np.ndarray:
    box = np.asarray(box, np.float64)
    return box[:2] + TEMPLATE * (box[2:] - box[:2])


def dets(boxes, scores=None, landmarks=None) -> Detections:
    boxes = np.asarray(boxes, np.float32).reshape(-1, 4)
    n = len(boxes)
    scores = np.full(n, 0.9, np.float32) if scores is None else np.asarray(scores, np.float32).reshape(n)
    if landmarks is None:
        landmarks = np.stack([landmarks_in(b) for b in boxes]) if n else np.zeros((0, 5, 2))
    return Detections(boxes, scores, np.asarray(landmarks, np.float32).reshape(n, 5, 2))


def square(cx: float, cy: float, size: float) -> np.ndarray:
    return np.array([cx - size / 2, cy - size / 2, cx + size / 2, cy + size / 2])


def covered_fraction(true_box: np.ndarray, faces: list[Face]) -> float:
    """Largest fraction of the true face box that one output face box contains."""
    if not faces:
        return 0.0
    boxes = np.stack([f.box for f in faces]).astype(np.float64)
    ix = np.clip(np.minimum(boxes[:, 2], true_box[2]) - np.maximum(boxes[:, 0], true_box[0]), 0, None)
    iy = np.clip(np.minimum(boxes[:, 3], true_box[3]) - np.maximum(boxes[:, 1], true_box[1]), 0, None)
    area = (true_box[2] - true_box[0]) * (true_box[3] - true_box[1])
    return float((ix * iy).max() / area)


def face_with_box(faces: list[Face], box: np.ndarray) -> Face:
    hits = [f for f in faces if np.array_equal(f.box, np.asarray(box, np.float32))]
    assert hits, f"detection {box} missing from the output"
    return hits[0]


# -- Kalman bank -----------------------------------------------------------------------------------
def test_kalman_bank_matches_filterpy() -> None:
    """The vectorised filters follow filterpy's KalmanFilter exactly (same F, H, Q, R, Joseph update)."""
    from filterpy.kalman import KalmanFilter

    rng = np.random.default_rng(0)
    bank = KalmanBoxBank()
    z0 = boxes_to_measurements(np.array([[100.0, 80, 160, 150], [300, 200, 330, 236]]))
    bank.add(z0)
    filters = []
    for row in range(2):
        kf = KalmanFilter(dim_x=8, dim_z=4)
        kf.F, kf.H = KalmanBoxBank.F.copy(), KalmanBoxBank.H.copy()
        kf.x = np.r_[z0[row], np.zeros(4)].reshape(8, 1)
        kf.P = KalmanBoxBank.initial_covariance(z0[row, 2:3])[0]
        filters.append(kf)
    truth = z0.copy()
    for step in range(30):
        truth[:, :2] += [[3.0, -1.0], [-5.0, 2.0]]
        for row, kf in enumerate(filters):
            kf.Q = KalmanBoxBank.process_noise(kf.x[2:3, 0])[0]
            kf.predict()
        bank.predict()
        seen = [row for row in range(2) if (step + row) % 4 != 3]  # some missed updates
        z = truth[seen] + rng.normal(0, 0.5, (len(seen), 4)) * [1, 1, 1, 0.01]
        for k, row in enumerate(seen):
            kf = filters[row]
            kf.R = KalmanBoxBank.measurement_noise(kf.x[2:3, 0])[0]
            kf.update(z[k].reshape(4, 1))
        bank.update(np.array(seen), z)
        for row, kf in enumerate(filters):
            np.testing.assert_allclose(bank.x[row], kf.x[:, 0], rtol=1e-9, atol=1e-9)
            np.testing.assert_allclose(bank.P[row], kf.P, rtol=1e-9, atol=1e-9)


def test_kalman_scale_never_collapses() -> None:
    bank = KalmanBoxBank()
    bank.add(boxes_to_measurements(np.array([[0.0, 0, 40, 40]])))
    bank.x[0, 6] = -30.0  # shrinking fast
    for _ in range(20):
        bank.predict()
    assert np.isfinite(bank.x).all() and bank.x[0, 2] >= 1.0
    assert (bank.boxes()[:, 2:] > bank.boxes()[:, :2]).all()


# -- coverage through missed detections ------------------------------------------------------------
@pytest.mark.parametrize("k", [1, 2, 5, 12])
def test_dropped_detections_still_covered(k: int) -> None:
    tracker = FaceTracker(fps=25, seed=1)  # max_age 12
    ids = set()
    for t in range(40):
        true = square(100 + 4 * t, 200 - 1.5 * t, 60)
        shown = not (15 <= t < 15 + k)
        faces = tracker.update(dets([true]) if shown else Detections.empty())
        assert covered_fraction(true, faces) >= 0.95, (t, faces)
        assert len(faces) == 1
        assert faces[0].source == ("detected" if shown else "predicted")
        ids.add(faces[0].track_id)
    assert ids == {1}


def test_track_ends_after_max_age() -> None:
    tracker = FaceTracker(fps=10, max_age=3, seed=0)
    tracker.update(dets([square(50, 50, 30)]))
    counts = [len(tracker.update(Detections.empty())) for _ in range(5)]
    assert counts == [1, 1, 1, 0, 0]
    assert tracker.active_track_count == 0 and tracker.identity_seeds == {}


@settings(max_examples=60, deadline=None)
@given(
    size=st.floats(16, 200),
    vx=st.floats(-0.25, 0.25),
    vy=st.floats(-0.25, 0.25),
    growth=st.floats(-0.01, 0.01),
    start=st.integers(3, 12),
    k=st.integers(1, 12),
    noise=st.floats(0, 0.02),
    seed=st.integers(0, 2**16),
)
def test_coverage_property(size, vx, vy, growth, start, k, noise, seed) -> None:
    """A moving face whose detections drop for k <= max_age frames is covered on every frame.

    The face is first seen for at least 3 frames: two noisy boxes of a small fast face do not give its
    velocity well enough for 12 frames of extrapolation (the widening is capped, see ``max_widen``).
    """
    rng = np.random.default_rng(seed)
    tracker = FaceTracker(fps=25, seed=0)
    cx, cy, s = 500.0, 400.0, size
    for t in range(start + k + 3):
        true = square(cx, cy, s)
        if start <= t < start + k:
            faces = tracker.update(Detections.empty())
            assert covered_fraction(true, faces) >= 0.9, (t, true, faces)
        else:
            seen = true + rng.normal(0, noise * s, 4)
            faces = tracker.update(dets([seen]))
            face_with_box(faces, seen)
        assert [f.track_id for f in faces] == [1]
        cx, cy, s = cx + vx * size, cy + vy * size, s * (1 + growth)


def test_weak_detections_keep_a_track_but_never_start_one() -> None:
    tracker = FaceTracker(fps=25, max_age=2, high_threshold=0.5, low_threshold=0.1, seed=0)
    assert tracker.update(dets([square(50, 50, 40)], [0.3])) == []  # weak, no track: not shown
    assert tracker.active_track_count == 0
    tracker.update(dets([square(100, 100, 40)], [0.9]))
    for t in range(1, 10):  # blurred: weak scores for longer than max_age
        faces = tracker.update(dets([square(100 + 3 * t, 100, 40)], [0.2]))
        assert [(f.track_id, f.source) for f in faces] == [(1, "detected")]
        assert covered_fraction(square(100 + 3 * t, 100, 40), faces) == 1.0
    assert tracker.update(dets([square(300, 300, 40)], [0.05])) != []  # below low: the track is only predicted
    assert tracker.update(Detections.empty())[0].source == "predicted"


def test_leak_rate_zero_with_occlusions_and_blur() -> None:
    """Three faces, detector misses up to max_age frames and blurred (weak, jittered) stretches: no leak.

    A face counts from its first confident detection on (before it, only the look-back buffer can help).
    """
    rng = np.random.default_rng(7)
    tracker = FaceTracker(fps=25, high_threshold=0.5, low_threshold=0.15, seed=0)
    starts = [(100.0, 100.0, 3.0, 1.0, 50.0), (500.0, 150.0, -4.0, 0.5, 70.0), (300.0, 400.0, 1.0, -2.0, 30.0)]
    leaks = frames = 0
    in_view = [False] * len(starts)
    for t in range(150):
        truths = [square(x + vx * t, y + vy * t, s) for x, y, vx, vy, s in starts]
        boxes, scores = [], []
        for i, true in enumerate(truths):
            phase = (t + 37 * i) % 50
            if 20 <= phase < 20 + 8 + i:  # occluded: 8-10 frames missed (max_age 12)
                continue
            blurred = 35 <= phase < 45
            jitter = rng.normal(0, 0.06 if blurred else 0.02, 4) * (true[2] - true[0])
            boxes.append(true + jitter)
            scores.append(rng.uniform(0.15, 0.45) if blurred else rng.uniform(0.6, 0.95))
            in_view[i] |= not blurred
        faces = tracker.update(dets(boxes, scores) if boxes else Detections.empty())
        for true, seen in zip(truths, in_view):
            if not seen:
                continue
            frames += 1
            leaks += covered_fraction(true, faces) < 0.85
    assert leaks == 0, f"leak rate {leaks / frames:.3f}"


# -- identities ------------------------------------------------------------------------------------
def test_two_faces_crossing_keep_their_ids() -> None:
    tracker = FaceTracker(fps=25, seed=0)
    history: dict[str, set[int]] = {"a": set(), "b": set()}
    for t in range(60):
        a = square(100 + 6 * t, 200, 60)
        b = square(460 - 6 * t, 218, 60)  # overlap heavily around t = 30
        hide = 28 <= t < 31  # and both are missed while crossing
        faces = tracker.update(Detections.empty() if hide else dets([a, b]))
        if hide:
            assert covered_fraction(a, faces) >= 0.9 and covered_fraction(b, faces) >= 0.9
            continue
        history["a"].add(face_with_box(faces, a).track_id)
        history["b"].add(face_with_box(faces, b).track_id)
    assert history == {"a": {1}, "b": {2}}


@pytest.mark.parametrize(("size", "speed"), [(40, 30), (12, 10), (80, 60)])
def test_fast_motion_keeps_one_track(size: float, speed: float) -> None:
    """Faces moving ~0.75-0.85 of their size per frame: IoU with the last box is too small, the gate matches."""
    tracker = FaceTracker(fps=25, seed=0)
    for t in range(30):
        true = square(50 + speed * t, 100 + 0.3 * speed * t, size)
        faces = tracker.update(dets([true]))
        assert [f.track_id for f in faces] == [1], t
    faces = tracker.update(Detections.empty())  # a miss at full speed: prediction follows
    assert covered_fraction(square(50 + speed * 30, 100 + 0.3 * speed * 30, size), faces) >= 0.95


def test_fifty_faces() -> None:
    rng = np.random.default_rng(3)
    n = 50
    tracker = FaceTracker(fps=25, seed=0)
    grid = np.stack(np.meshgrid(np.arange(10), np.arange(5)), -1).reshape(-1, 2) * [180.0, 200.0] + 100
    velocity = rng.uniform(-2, 2, (n, 2))
    sizes = rng.uniform(30, 90, n)
    ids: list[set[int]] = [set() for _ in range(n)]
    for t in range(80):
        centres = grid + velocity * t
        truths = [square(*c, s) for c, s in zip(centres, sizes)]
        seen = (rng.random(n) > 0.1) | (t == 0)  # 10% of detections missed after the first frame
        boxes = [truths[i] for i in range(n) if seen[i]]
        faces = tracker.update(dets(boxes))
        assert len(faces) == n
        for i in range(n):
            assert covered_fraction(truths[i], faces) >= 0.95
            if seen[i]:
                ids[i].add(face_with_box(faces, truths[i]).track_id)
    assert all(len(s) == 1 for s in ids) and len(set.union(*ids)) == n
    assert tracker.active_track_count == n and len(tracker.identity_seeds) == n


def test_identity_seed_stable_and_map_pruned() -> None:
    tracker = FaceTracker(fps=25, max_age=2, seed=5)
    seeds: dict[int, int] = {}
    for t in range(300):  # faces come and go: one new face every 10 frames, each lives 25 frames
        boxes = [square(40 + 60 * (j % 10), 40 + 60 * (j // 10 % 10), 40) for j in range(max(0, t // 10 - 2), t // 10 + 1)]
        for face in tracker.update(dets(boxes)):
            assert seeds.setdefault(face.track_id, face.identity_seed) == face.identity_seed
        assert len(tracker.identity_seeds) == tracker.active_track_count <= 4
    assert len(seeds) == 30 and len(set(seeds.values())) == 30


def test_reset_between_streams() -> None:
    def run(tracker: FaceTracker) -> list[tuple[int | None, int]]:
        out = []
        for t in range(5):
            faces = tracker.update(dets([square(50 + t, 50, 30), square(200, 90, 40)]))
            out += [(f.track_id, f.identity_seed) for f in faces]
        return out

    seeded = FaceTracker(seed=42)
    first = run(seeded)
    seeded.reset()
    assert seeded.active_track_count == 0 and seeded.identity_seeds == {}
    assert run(seeded) == first  # same seed: same ids, same identities
    assert run(FaceTracker(seed=42)) == first

    fresh = FaceTracker()
    a = run(fresh)
    fresh.reset()
    b = run(fresh)
    assert [i for i, _ in a] == [i for i, _ in b] == [1, 2] * 5  # ids restart at 1
    assert {s for _, s in a}.isdisjoint({s for _, s in b})  # but new fake identities for the new stream
    assert {s for _, s in run(FaceTracker())}.isdisjoint({s for _, s in a})


def test_constructor_validation() -> None:
    assert FaceTracker(fps=30).max_age == 15
    with pytest.raises(ValueError):
        FaceTracker(fps=0)
    with pytest.raises(ValueError):
        FaceTracker(low_threshold=0.6, high_threshold=0.5)


# -- landmarks -------------------------------------------------------------------------------------
def test_landmarks_smoothed_on_a_still_face() -> None:
    rng = np.random.default_rng(0)
    tracker = FaceTracker(fps=25, seed=0)
    box = square(200, 200, 100)
    raw_err, out_err = [], []
    for _ in range(100):
        raw = landmarks_in(box) + rng.normal(0, 1.5, (5, 2))
        face = tracker.update(dets([box], landmarks=[raw]))[0]
        raw_err.append(raw - landmarks_in(box))
        out_err.append(face.landmarks - landmarks_in(box))
    assert np.std(out_err[20:]) < 0.5 * np.std(raw_err[20:])


def test_landmarks_follow_a_moving_face_and_a_predicted_box() -> None:
    tracker = FaceTracker(fps=25, seed=0, landmark_max_lag=0.05)
    for t in range(30):
        box = square(100 + 8 * t, 200, 80)
        face = tracker.update(dets([box]))[0]
        assert np.abs(face.landmarks - landmarks_in(box)).max() <= 0.05 * 80 + 1e-3
    predicted = tracker.update(Detections.empty())[0]
    expected = landmarks_in(square(100 + 8 * 30, 200, 80))
    assert predicted.source == "predicted"
    assert np.abs(predicted.landmarks - expected).max() < 0.1 * 80


def test_one_euro_filter_passes_constant_and_bounds_lag() -> None:
    f = OneEuroFilter(min_cutoff=1.0, beta=0.0, max_lag=0.1)
    f.add(np.zeros((1, 2)))
    out = f(np.array([0]), np.array([[100.0, -100.0]]), np.array([0.04]), np.array([50.0]))
    assert np.allclose(out, [[95.0, -95.0]])  # clamped to max_lag * scale from the raw value
    for _ in range(200):
        out = f(np.array([0]), np.array([[100.0, -100.0]]), np.array([0.04]), np.array([50.0]))
    assert np.allclose(out, [[100.0, -100.0]])


# -- association edge cases ------------------------------------------------------------------------
box_strategy = st.tuples(
    st.floats(0, 200), st.floats(0, 200), st.floats(0, 60), st.floats(0, 60)
).map(lambda v: [v[0], v[1], v[0] + v[2], v[1] + v[3]])  # zero width/height allowed


@settings(max_examples=200, deadline=None)
@given(tracks=st.lists(box_strategy, max_size=8), det_boxes=st.lists(box_strategy, max_size=8), dup=st.integers(0, 3))
def test_associate_properties(tracks, det_boxes, dup) -> None:
    t = np.array(tracks, np.float64).reshape(-1, 4)
    d = np.array(det_boxes + det_boxes[:1] * dup, np.float64).reshape(-1, 4)  # duplicate boxes too
    matches, ut, ud = associate(t, d, iou_threshold=0.3, centre_gate=1.0)
    assert matches.shape[1] == 2
    assert len(set(matches[:, 0])) == len(matches) and len(set(matches[:, 1])) == len(matches)
    assert sorted([*matches[:, 0], *ut]) == list(range(len(t)))
    assert sorted([*matches[:, 1], *ud]) == list(range(len(d)))
    iou = box_iou(t, d) if len(t) and len(d) else np.zeros((len(t), len(d)))
    assert np.isfinite(iou).all() and (iou >= 0).all() and (iou <= 1 + 1e-9).all()
    # no admissible IoU pair is left unmatched on both sides
    if len(ut) and len(ud):
        assert (iou[np.ix_(ut, ud)] < 0.3).all()


def test_associate_identical_boxes_match_one_to_one() -> None:
    box = [[10.0, 10, 50, 50]]
    matches, ut, ud = associate(np.array(box * 3), np.array(box * 2))
    assert len(matches) == 2 and len(ut) == 1 and len(ud) == 0
    matches, ut, ud = associate(np.zeros((0, 4)), np.array(box))
    assert matches.shape == (0, 2) and ut.tolist() == [] and ud.tolist() == [0]


frame_strategy = st.lists(
    st.tuples(st.sampled_from(range(6)), st.floats(0, 1), st.sampled_from([0.0, 1.0, 1.5])),
    max_size=6,
)  # (box from a small pool -> duplicates and overlaps, score, shift)
POOL = [[10, 10, 50, 50], [12, 11, 52, 51], [100, 100, 100, 100], [100, 100, 130, 100], [0, 0, 0, 0], [30, 20, 90, 80]]


@settings(max_examples=100, deadline=None)
@given(frames=st.lists(frame_strategy, min_size=1, max_size=25), max_age=st.integers(0, 4))
def test_tracker_invariants(frames, max_age) -> None:
    """Empty frames, duplicate boxes, zero-area boxes: no crash, no NaN, no confident detection dropped."""
    tracker = FaceTracker(fps=25, max_age=max_age, high_threshold=0.5, low_threshold=0.1, seed=0)
    seeds: dict[int, int] = {}
    undetected: dict[int, int] = {}
    for t, frame in enumerate(frames):
        boxes = [np.array(POOL[i], np.float64) + shift * t for i, _, shift in frame]
        scores = [s for _, s, _ in frame]
        faces = tracker.update(dets(boxes, scores) if boxes else Detections.empty())
        for box, score in zip(boxes, scores):
            if np.float32(score) >= 0.5:
                face_with_box(faces, box)
        out = np.stack([f.box for f in faces]) if faces else np.zeros((0, 4))
        assert np.isfinite(out).all() and (out[:, 2:] >= out[:, :2]).all()
        ids = [f.track_id for f in faces if f.track_id is not None]
        assert len(ids) == len(set(ids))
        assert all(f.track_id is not None or "duplicate_of" in f.extra for f in faces)
        for f in faces:
            if f.track_id is not None:
                assert seeds.setdefault(f.track_id, f.identity_seed) == f.identity_seed
                undetected[f.track_id] = 0 if f.source == "detected" else undetected.get(f.track_id, 0) + 1
                assert undetected[f.track_id] <= max_age
                assert f.landmarks is not None and np.isfinite(f.landmarks).all()
        assert len(tracker.identity_seeds) == tracker.active_track_count


def test_non_finite_input_is_contained() -> None:
    """A NaN box is dropped (it cannot be covered), NaN landmarks fall back to a template, NaN scores count as 0."""
    tracker = FaceTracker(fps=25, seed=0)
    boxes = np.array([[np.nan, 0, 10, 10], [10, 10, 50, 50], [100, 100, 140, 140]], np.float32)
    landmarks = np.zeros((3, 5, 2), np.float32)
    landmarks[1] = np.nan
    det = Detections(boxes, np.array([0.9, 0.9, np.nan], np.float32), landmarks)
    faces = tracker.update(det)
    assert len(faces) == 1 and np.array_equal(faces[0].box, boxes[1])
    assert np.isfinite(faces[0].landmarks).all()
    assert all(np.isfinite(f.box).all() for f in tracker.update(Detections.empty()))


# -- sparse frames: the stream's clock -------------------------------------------------------------
def swaying(t: int) -> np.ndarray:
    """A 60 px face swinging on a sine path (period 2 s at 25 fps): up to ~1.6 face sizes in 15 frames."""
    return square(320 + 60 * np.sin(2 * np.pi * t / 50), 200 + 12 * np.cos(2 * np.pi * t / 50), 60)


@pytest.mark.parametrize("every", [10, 15, 20])
def test_sparse_frames_on_the_clock_keep_one_track(every: int) -> None:
    """A live filter seeing every k-th frame: with the frames' times the face stays one track and is
    covered on every frame; counted as consecutive frames, the same frames made it a new person."""
    on_clock, counted = FaceTracker(fps=25, seed=0), FaceTracker(fps=25, seed=0)
    ids_on_clock, ids_counted = set(), set()
    for t in range(0, 250, every):
        true = swaying(t)
        faces = on_clock.update(dets([true]), seconds=t / 25)
        assert covered_fraction(true, faces) >= 0.95 and len(faces) == 1, (t, faces)
        ids_on_clock |= {f.track_id for f in faces}
        ids_counted |= {f.track_id for f in counted.update(dets([true]))}
    assert ids_on_clock == {1}
    assert len(ids_counted) > 1  # the failure the clock removes (if this changes, the scene no longer tests it)


def test_dense_frames_on_the_clock_change_nothing() -> None:
    """Frames one frame apart: times given or not, the same faces (files keep their behaviour)."""
    rng = np.random.default_rng(5)
    plain, timed = FaceTracker(fps=25, seed=0), FaceTracker(fps=25, seed=0)
    for t in range(120):
        boxes = [swaying(t) + rng.normal(0, 1.5, 4), square(100 + 3 * t, 300, 40) + rng.normal(0, 1, 4)]
        keep = rng.random(2) > 0.2
        detections = dets(np.array(boxes)[keep])
        a, b = plain.update(detections), timed.update(detections, seconds=100.0 + t / 25 + rng.normal(0, 0.004))
        assert [(f.track_id, f.source) for f in a] == [(f.track_id, f.source) for f in b]
        np.testing.assert_allclose([f.box for f in a], [f.box for f in b], atol=1e-4)


def test_a_track_ages_on_the_clock_but_coasts_through_min_coasts_updates() -> None:
    tracker = FaceTracker(fps=25, seed=0)  # max_age 12 frames, min_coasts 2
    tracker.update(dets([square(100, 100, 50)]), seconds=0.0)
    # updates 0.6 s (15 frames) apart: each is past max_age, yet the face stays covered for two of them
    counts = [len(tracker.update(Detections.empty(), seconds=0.6 * (i + 1))) for i in range(4)]
    assert counts == [1, 1, 0, 0]
    faces = FaceTracker(fps=25, seed=0)
    faces.update(dets([square(100, 100, 50)]), seconds=0.0)
    first_miss = faces.update(Detections.empty(), seconds=0.6)
    assert first_miss[0].source == "predicted" and first_miss[0].extra["frames_since_detection"] == 15


def test_clock_gaps_and_jumps_are_bounded() -> None:
    """No time, a clock going back or a long stall: each update stands for 1 to fps frames."""
    tracker = FaceTracker(fps=25, seed=0)
    assert [tracker._advance_clock(t) for t in (None, 1.0, 1.04, 0.5, 0.5, 100.0, float("nan"), 101.0)] == \
        [1, 1, 1, 1, 1, 25, 1, 1]


def test_the_anonymizer_gives_the_tracker_each_frame_time() -> None:
    from fractions import Fraction

    from sdgan_stream.anonymize import CoverRenderer, FrameAnonymizer
    from sdgan_stream.types import VideoFrame

    class Blind:
        def detect(self, image: np.ndarray) -> Detections:
            return Detections.empty()

    class Recording(FaceTracker):
        seen: list[float | None] = []

        def update(self, detections: Detections, *, seconds: float | None = None) -> list[Face]:
            self.seen.append(seconds)
            return super().update(detections, seconds=seconds)

    tracker = Recording(fps=25, seed=0)
    anonymizer = FrameAnonymizer(detector=Blind(), renderer=CoverRenderer(method="solid"), tracker=tracker)  # type: ignore[arg-type]
    image = np.zeros((32, 32, 3), np.uint8)
    anonymizer.analyse_frame(VideoFrame(image=image, index=0, pts=30, time_base=Fraction(1, 50)))
    anonymizer.analyse_frame(VideoFrame(image=image, index=1, pts=None, time_base=None))
    assert tracker.seen == [0.6, None]
