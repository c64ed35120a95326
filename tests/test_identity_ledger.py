"""One person keeps one fake identity: a new track of someone seen before re-uses their identity seed,
strictly and fail-closed (doubt -> a new identity)."""

from __future__ import annotations

import numpy as np
import pytest

from sdgan_stream.anonymize import CoverRenderer, FrameAnonymizer
from sdgan_stream.config import AnonymizeOptions
from sdgan_stream.identity_guard import GuardConfig, IdentityGuard
from sdgan_stream.identity_ledger import IdentityLedger
from sdgan_stream.render import SdganRenderer
from sdgan_stream.samples import face_photos
from sdgan_stream.track import FaceTracker
from sdgan_stream.types import Detections, VideoFrame

from .test_identity_guard import FakeRecognizer, _crop, _points


def _views(*values: float) -> np.ndarray:
    return np.array([[v, 0.0] for v in values], np.float32)


# -- the ledger alone ------------------------------------------------------------------------------------------
def test_a_strict_match_on_two_views_names_the_person() -> None:
    ledger = IdentityLedger(threshold=0.42)
    ledger.remember(seed=1, embeddings=_views(0.0, 0.1), frame=1)
    ledger.remember(seed=2, embeddings=_views(5.0), frame=1)
    assert ledger.match(_views(0.3), frame=10).kind == "pending"  # one view is not enough
    assert ledger.match(_views(0.3, 0.2), frame=10).seed == 1
    assert ledger.match(_views(0.3, 0.6), frame=10).kind == "none"  # one view outside the strict threshold
    assert ledger.match(_views(0.3, 0.2), frame=10, exclude={1}).kind == "none"  # that identity is on screen


def test_two_matching_people_are_doubt() -> None:
    ledger = IdentityLedger(threshold=0.42)
    ledger.remember(seed=1, embeddings=_views(0.0), frame=1)
    ledger.remember(seed=2, embeddings=_views(0.5), frame=1)
    assert ledger.match(_views(0.25, 0.26), frame=2).kind == "none"


def test_memory_is_bounded_by_count_and_age() -> None:
    ledger = IdentityLedger(threshold=0.42, capacity=3, max_age=100)
    for seed in range(5):
        ledger.remember(seed=seed, embeddings=_views(10.0 * seed), frame=seed)
    assert len(ledger) == 3  # the two least recently seen are gone
    assert ledger.match(_views(0.0, 0.0), frame=5).kind == "none"
    ledger.seen(2, frame=150)
    ledger.forget_old(160)  # 3 and 4 were last seen at frames 3 and 4
    assert len(ledger) == 1 and ledger.match(_views(20.0, 20.1), frame=160).seed == 2
    assert len(ledger.empty_copy()) == 0


# -- in the guard ------------------------------------------------------------------------------------------------
def _guard(**config) -> IdentityGuard:
    recognizer = FakeRecognizer()  # same person: mean colours within 0.7 x 0.3 x 100 = 21 grey levels
    return IdentityGuard(recognizer, GuardConfig(candidates=1, min_distance=0.5, **config),
                         ledger=IdentityLedger.for_recognizer(recognizer))


def _first_track(guard: IdentityGuard, key: int = 1, person: int = 100) -> int:
    guard.start_frame()
    guard.observe(key, _crop(person), _points(), 120.0)
    assert guard.decide(key, 120.0, _points()).action == "draw"
    seed = guard.choose(key, guard.candidates(key, identity_seed=key), [_crop(220)], [_points()])
    assert seed is not None
    return seed


def test_a_returning_person_gets_their_identity_back_after_a_second_view() -> None:
    guard = _guard()
    seed = _first_track(guard)
    for _ in range(20):  # track 1 leaves
        guard.start_frame()
    guard.start_frame()
    guard.observe(2, _crop(30), _points(), 120.0, detected=False)  # a look-back box on a blank wall: not a view
    assert guard.decide(2, 120.0, _points()).action == "cover"  # wait for a detected face
    guard.start_frame()
    guard.observe(2, _crop(100), _points(), 120.0)
    assert guard.decide(2, 120.0, _points()).action == "cover"  # one view: wait for another
    guard.start_frame()
    guard.observe(2, _crop(104), _points(), 118.0)  # a second, no better, view is embedded for the ledger
    decision = guard.decide(2, 118.0, _points())
    assert (decision.action, decision.seed) == ("verify", seed)  # checked against this track's own face
    assert guard.verify(2, _crop(220), _points())
    guard.start_frame()
    assert guard.decide(2, 118.0, _points()).seed == seed
    assert guard.counts["reused_identities"] == 1 and guard.counts["draws"] == 1


def test_someone_else_or_a_person_on_screen_draws_a_new_identity() -> None:
    guard = _guard()
    _first_track(guard)
    guard.start_frame()
    guard.decide(1, 120.0, _points())  # track 1 is still on screen
    for key, person in ((2, 100), (3, 170)):  # the same look while track 1 is live; a stranger
        guard.observe(key, _crop(person), _points(), 120.0)
        assert guard.decide(key, 120.0, _points()).action == "draw"
    assert guard.counts["reused_identities"] == 0


def test_a_reused_identity_that_fails_this_faces_check_is_redrawn() -> None:
    guard = _guard()
    seed = _first_track(guard)
    for _ in range(20):
        guard.start_frame()
    for value in (100, 102):
        guard.start_frame()
        guard.observe(2, _crop(value), _points(), 120.0)
        decision = guard.decide(2, 120.0, _points())
    assert decision.seed == seed
    assert not guard.verify(2, _crop(105), _points())  # generated with that seed, it looks like this person
    assert guard.decide(2, 120.0, _points()).action == "draw"


# -- in a file run: the tracker loses the person, a new track finds their identity again ------------------------
@pytest.fixture(scope="module")
def plain_renderer() -> SdganRenderer:
    return SdganRenderer.from_options(AnonymizeOptions(backend="eager", device="cpu", identity_guard=False))


def test_a_person_who_leaves_and_returns_keeps_one_fake_face(plain_renderer: SdganRenderer) -> None:
    from sdgan_stream.detect import CenterFaceDetector

    photo = face_photos()[0]
    found = CenterFaceDetector(threshold=0.4, detect_size=None).detect(photo.image)
    visible = [*range(0, 3), *range(30, 33)]  # gone for more than the tracker's max age (12 frames at 25 fps)

    class Detector:
        frame = -1

        def detect(self, _image):
            self.frame += 1
            return found.select(np.arange(1)) if self.frame in visible else Detections.empty()

    recognizer = FakeRecognizer()
    renderer = SdganRenderer(backend=plain_renderer.backend, config=plain_renderer.config, landmarker=plain_renderer.landmarker,
                             fallback=CoverRenderer(), guard=IdentityGuard(recognizer, GuardConfig(candidates=2, min_distance=0.05),
                                                                          ledger=IdentityLedger.for_recognizer(recognizer)))
    anonymizer = FrameAnonymizer(detector=Detector(), renderer=renderer, tracker=FaceTracker(fps=25, seed=3))
    tracks: dict[int, int] = {}  # track id -> identity seed it was generated with
    for index in range(34):
        anonymizer.push(VideoFrame(image=photo.image.copy(), index=index, pts=index, time_base=None))
        for prepared, _crop_ in renderer.last_generated:
            tracks.setdefault(prepared.face.track_id, prepared.face.identity_seed)
    assert len(tracks) == 2  # two tracks, one fake identity
    assert len(set(tracks.values())) == 1
    assert renderer.guard.counts["reused_identities"] == 1
    assert anonymizer.stats["fallback_identity_guard"] == 1  # the returning face's first frame, while the ledger waits
