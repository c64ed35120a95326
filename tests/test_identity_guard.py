"""The identity guard: generated faces are kept only when a recognizer says they are someone else."""

from __future__ import annotations

import dataclasses
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from sdgan_stream.anonymize import CoverRenderer, FrameAnonymizer
from sdgan_stream.config import AnonymizeOptions
from sdgan_stream.errors import WeightsError
from sdgan_stream.identity_guard import (
    ArcFaceRecognizer,
    DlibRecognizer,
    GuardConfig,
    IdentityGuard,
    candidate_seed,
    load_recognizer,
)
from sdgan_stream.render import SdganRenderer
from sdgan_stream.samples import face_photos
from sdgan_stream.types import Detections, Face, VideoFrame


class FakeRecognizer:
    """Embeds a face by the mean colour of its chip centre; distances are Euclidean / 100.

    ``same=True`` makes every face the same person (distance 0): nothing can pass the guard.
    """

    name = "fake"
    same_person_distance = 0.3
    default_min_distance = 0.4

    def __init__(self, *, same: bool = False, fail: bool = False) -> None:
        self.same, self.fail, self.calls = same, fail, 0

    def embed(self, image: np.ndarray, landmarks68: np.ndarray) -> np.ndarray:
        self.calls += 1
        if self.fail:
            raise RuntimeError("recognizer crashed")
        out = []
        for points in np.asarray(landmarks68).reshape(-1, 68, 2):
            x1, y1 = points.min(0).astype(int)
            x2, y2 = points.max(0).astype(int)
            out.append(image[max(y1, 0) : y2, max(x1, 0) : x2].reshape(-1, 3).mean(0))
        return np.zeros((len(out), 3), np.float32) if self.same else np.asarray(out, np.float32)

    def distances(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        return np.linalg.norm(a[:, None] - b[None], axis=2) / 100.0


def _points(offset: float = 0.0) -> np.ndarray:
    grid = np.stack(np.meshgrid(np.linspace(30, 98, 17), np.linspace(40, 100, 4)), -1).reshape(-1, 2)[:68]
    return (grid + offset).astype(np.float32)


def _crop(value: int) -> np.ndarray:
    rng = np.random.default_rng(value)
    return np.clip(value + rng.normal(0, 20, (128, 128, 3)), 0, 255).astype(np.uint8)


# -- the guard's state machine, with a recognizer whose verdicts we control ----------------------------------
def test_the_farthest_candidate_is_kept_when_it_clears_the_margin() -> None:
    guard = IdentityGuard(FakeRecognizer(), GuardConfig(candidates=3, min_distance=0.5, pick="farthest"))
    guard.start_frame()
    guard.observe(1, _crop(100), _points(), 120.0)
    assert guard.decide(1, 120.0, _points()).action == "draw"
    seeds = guard.candidates(1, identity_seed=7)
    assert len(set(seeds)) == 3
    chosen = guard.choose(1, seeds, [_crop(110), _crop(200), _crop(130)], [_points()] * 3)
    assert chosen == seeds[1]  # 100 grey levels away: distance 1.0 >= 0.5
    assert guard.decide(1, 120.0, _points()).action == "keep"


def _faithful_draw(recognizer: FakeRecognizer, candidates: int) -> tuple[IdentityGuard, list[int]]:
    """A faithful guard with margin 0.5 whose track 1 (an original of grey level 100) is about to draw."""
    guard = IdentityGuard(recognizer, GuardConfig(candidates=candidates, min_distance=0.5, pick="faithful"))
    guard.start_frame()
    guard.observe(1, _crop(100), _points(), 120.0)
    guard.decide(1, 120.0, _points())
    seeds = guard.candidates(1, identity_seed=7)
    return guard, seeds


def test_the_faithful_pick_keeps_the_passing_candidate_with_the_best_landmarks() -> None:
    guard, seeds = _faithful_draw(FakeRecognizer(), 3)
    # candidate 0 keeps the landmarks best but is too close to the person; 2 is the best that passes
    chosen = guard.choose(1, seeds, [_crop(110), _crop(220), _crop(170)], [_points()] * 3, landmark_errors=[0.01, 0.3, 0.05])
    assert chosen == seeds[2]


def test_the_faithful_pick_prefers_candidates_a_second_detector_finds_and_falls_back_to_the_rest() -> None:
    guard, seeds = _faithful_draw(FakeRecognizer(), 3)
    crops, errors = [_crop(220), _crop(170), _crop(200)], [0.01, 0.05, 0.3]
    # all three pass; 0 keeps the landmarks best but no detector finds it in the frame: 1 is kept
    assert guard.choose(1, seeds, crops, [_points()] * 3, landmark_errors=errors, found=[False, True, True]) == seeds[1]
    # none found: the landmarks decide as before
    assert guard.choose(1, seeds, crops, [_points()] * 3, landmark_errors=errors, found=[False] * 3) == seeds[0]
    # the only one found is too close to the person: the margin still comes first
    crops[1] = _crop(110)
    assert guard.choose(1, seeds, crops, [_points()] * 3, landmark_errors=errors, found=[False, True, False]) == seeds[0]


def test_the_face_check_is_asked_only_as_far_as_the_pick_needs_and_picks_as_if_all_were_asked() -> None:
    crops, errors = [_crop(220), _crop(170), _crop(110), _crop(200)], [0.05, 0.01, 0.02, 0.3]
    for answers in ([True] * 4, [True, False, True, True], [False, False, True, True], [False] * 4, [True, True, True, False]):
        asked: list[int] = []
        guard, seeds = _faithful_draw(FakeRecognizer(), 4)
        lazy = guard.choose(1, seeds, crops, [_points()] * 4, landmark_errors=errors,
                            found=lambda i, a=answers: asked.append(i) or a[i])
        guard, seeds = _faithful_draw(FakeRecognizer(), 4)
        assert lazy == guard.choose(1, seeds, crops, [_points()] * 4, landmark_errors=errors, found=answers)
        assert len(asked) == len(set(asked))  # never twice about one candidate
        if answers == [True] * 4:
            assert asked == [1]  # the most faithful is found and passes: nothing else is asked
    # candidate 2 (too close to the person) is found; 1 is not: 0, the next found one, is kept after 3 questions
    asked = []
    guard, seeds = _faithful_draw(FakeRecognizer(), 4)
    assert guard.choose(1, seeds, crops, [_points()] * 4, landmark_errors=errors,
                        found=lambda i: asked.append(i) or i != 1) == seeds[0]
    assert asked == [1, 2, 0]


def test_a_face_check_that_fails_midway_leaves_the_pick_to_the_landmarks() -> None:
    crops, errors = [_crop(220), _crop(170), _crop(200)], [0.05, 0.01, 0.3]

    def check(i: int) -> bool:
        if i == 0:
            raise RuntimeError("detector crashed")
        return False

    guard, seeds = _faithful_draw(FakeRecognizer(), 3)
    assert guard.choose(1, seeds, crops, [_points()] * 3, landmark_errors=errors, found=check) == seeds[1]


def test_the_faithful_pick_embeds_candidates_only_until_one_passes() -> None:
    recognizer = FakeRecognizer()
    guard, seeds = _faithful_draw(recognizer, 4)
    before = recognizer.calls
    # by landmarks: 3 (too close), 1 (passes), then 0 and 2, which need no embedding; 0 and 1 tie on landmarks
    chosen = guard.choose(1, seeds, [_crop(180), _crop(170), _crop(240), _crop(105)], [_points()] * 4,
                          landmark_errors=[0.02, 0.02, 0.3, 0.01])
    assert chosen == seeds[0]  # of the two equally faithful passing ones, the farther
    assert recognizer.calls - before == 3
    distances = guard.candidate_distances_of(1)
    assert np.isnan(distances[2]) and not np.isnan(distances[0])


def test_a_track_with_no_passing_candidate_is_covered_then_retried() -> None:
    guard = IdentityGuard(FakeRecognizer(), GuardConfig(candidates=2, min_distance=0.5, retry_after=3))
    guard.start_frame()
    guard.observe(1, _crop(100), _points(), 120.0)
    assert guard.decide(1, 120.0, _points()).action == "draw"
    seeds = guard.candidates(1, identity_seed=7)
    assert guard.choose(1, seeds, [_crop(105), _crop(95)], [_points()] * 2) is None
    actions = []
    for _ in range(3):
        guard.start_frame()
        actions.append(guard.decide(1, 120.0, _points()).action)
    assert actions == ["cover", "cover", "draw"]
    assert guard.candidates(1, identity_seed=7) != seeds  # a retry draws new identities
    assert guard.counts["failed_draws"] == 1


def test_a_kept_identity_is_rechecked_and_redrawn_when_it_drifts_to_the_person() -> None:
    guard = IdentityGuard(FakeRecognizer(), GuardConfig(candidates=1, min_distance=0.5, recheck_every=5))
    guard.start_frame()
    guard.observe(1, _crop(100), _points(), 120.0)
    guard.decide(1, 120.0, _points())
    seed = guard.choose(1, guard.candidates(1, 3), [_crop(220)], [_points()])
    assert seed is not None
    actions = []
    for _ in range(5):
        guard.start_frame()
        actions.append(guard.decide(1, 120.0, _points()).action)
    assert actions == ["keep"] * 4 + ["verify"]
    assert guard.verify(1, _crop(220), _points())
    assert not guard.verify(1, _crop(101), _points())  # now looks like the person
    assert guard.decide(1, 120.0, _points()).action == "draw"


def test_a_large_change_of_size_or_a_clearly_better_view_triggers_a_check() -> None:
    guard = IdentityGuard(FakeRecognizer(), GuardConfig(candidates=1, min_distance=0.5, recheck_every=1000))
    guard.start_frame()
    guard.observe(1, _crop(100), _points(), 40.0)
    guard.decide(1, 40.0, _points())
    guard.choose(1, guard.candidates(1, 3), [_crop(220)], [_points()])
    guard.start_frame()
    assert guard.decide(1, 45.0, _points()).action == "keep"
    assert guard.decide(1, 90.0, _points()).action == "verify"  # more than 1.5x larger
    new_view = guard.observe(1, _crop(100), _points(), 150.0)  # a much larger, so better, view of the person
    assert new_view and guard.decide(1, 45.0, _points(), new_view=new_view).action == "verify"


def test_state_is_dropped_when_a_track_is_gone_and_seeds_are_deterministic() -> None:
    guard = IdentityGuard(FakeRecognizer(), GuardConfig(forget_after=3))
    guard.start_frame()
    guard.observe(1, _crop(100), _points(), 120.0)
    for _ in range(4):
        guard.start_frame()
    assert guard.tracks == 0
    assert candidate_seed(5, 0, 1) == candidate_seed(5, 0, 1) != candidate_seed(5, 0, 2)


# -- in the renderer: what the guard refuses is covered, never passed through ---------------------------------
@pytest.fixture(scope="module")
def plain_renderer() -> SdganRenderer:
    return SdganRenderer.from_options(AnonymizeOptions(backend="eager", device="cpu", identity_guard=False))


def _renderer_with(base: SdganRenderer, recognizer, **config) -> SdganRenderer:
    return SdganRenderer(backend=base.backend, config=base.config, landmarker=base.landmarker, fallback=CoverRenderer(),
                         guard=IdentityGuard(recognizer, GuardConfig(**config)))


def _photo_face() -> tuple[np.ndarray, Face]:
    from sdgan_stream.detect import CenterFaceDetector

    photo = face_photos()[0]
    found = CenterFaceDetector(threshold=0.4, detect_size=None).detect(photo.image)
    return photo.image.copy(), Face(box=found.boxes[0], score=0.9, landmarks=found.landmarks[0], track_id=1, identity_seed=5)


def test_new_faces_past_the_draw_budget_stay_covered_until_their_turn(plain_renderer: SdganRenderer) -> None:
    image, face = _photo_face()
    faces = [dataclasses.replace(face, track_id=t) for t in (1, 2, 3)]
    renderer = _renderer_with(plain_renderer, FakeRecognizer(), candidates=2, min_distance=0.05)
    renderer.draws_per_frame = 1
    draws, seen = [], []
    for _ in range(4):
        before = renderer.guard.counts["draws"]
        outcomes = renderer.render(image.copy(), faces)
        draws.append(renderer.guard.counts["draws"] - before)
        seen.append([o.reason or o.method for o in outcomes])
    assert draws == [1, 1, 1, 0]  # one draw a frame, never a face twice
    for frame, reasons in enumerate(seen):  # every face each frame: served, or covered while it waits
        assert sorted(reasons) == sorted(["sdgan"] * min(frame + 1, 3) + ["identity_pending"] * max(2 - frame, 0))
    unlimited = _renderer_with(plain_renderer, FakeRecognizer(), candidates=2, min_distance=0.05)
    assert [o.method for o in unlimited.render(image.copy(), faces)] == ["sdgan"] * 3


def test_the_draw_budget_serves_the_longest_waiting_face_first(plain_renderer: SdganRenderer) -> None:
    image, face = _photo_face()
    renderer = _renderer_with(plain_renderer, FakeRecognizer(), candidates=2, min_distance=0.05)
    renderer.draws_per_frame = 1
    first = [dataclasses.replace(face, track_id=t) for t in (5, 6)]
    renderer.render(image.copy(), first)  # 5 or 6 drawn, the other waits
    waiting = next(iter(renderer._waiting))
    newcomer = dataclasses.replace(face, track_id=1)
    outcomes = renderer.render(image.copy(), [newcomer, *first])  # the newcomer is first in the frame, yet waits
    served = {f.track_id for f, o in zip([newcomer, *first], outcomes) if o.method == "sdgan"}
    assert served == {5, 6} and waiting not in renderer._waiting and list(renderer._waiting) == [1]


def test_a_face_at_a_predicted_box_waits_for_a_detection_before_its_draw(plain_renderer: SdganRenderer) -> None:
    image, face = _photo_face()
    renderer = _renderer_with(plain_renderer, FakeRecognizer(), candidates=2, min_distance=0.05)
    guessed = dataclasses.replace(face, source="predicted")
    outcomes = renderer.render(image.copy(), [guessed])
    assert [o.reason for o in outcomes] == ["identity_pending"] and renderer.guard.counts["draws"] == 0
    assert [o.method for o in renderer.render(image.copy(), [face])] == ["sdgan"]  # detected: drawn
    assert renderer.guard.counts["draws"] == 1
    # a face that has its identity keeps it at a predicted box
    assert [o.method for o in renderer.render(image.copy(), [guessed])] == ["sdgan"]
    assert renderer.guard.counts["draws"] == 1


def test_the_draw_budget_is_one_for_live_sources_and_none_for_files() -> None:
    from sdgan_stream.api import guard_draws_per_frame

    assert guard_draws_per_frame(AnonymizeOptions()) == 0 and guard_draws_per_frame(AnonymizeOptions(), live=True) == 1
    assert guard_draws_per_frame(AnonymizeOptions(guard_draws_per_frame=3), live=True) == 3
    assert guard_draws_per_frame(AnonymizeOptions(guard_draws_per_frame=0), live=True) == 0
    with pytest.raises(ValueError, match="draws per frame"):
        AnonymizeOptions(guard_draws_per_frame=-1)


@pytest.mark.parametrize("recognizer", [FakeRecognizer(same=True), FakeRecognizer(fail=True)], ids=["no_candidate_passes", "recognizer_fails"])
def test_a_face_the_guard_cannot_verify_is_covered(plain_renderer: SdganRenderer, recognizer: FakeRecognizer) -> None:
    image, face = _photo_face()

    class Detector:
        def detect(self, _image):
            return Detections(boxes=face.box[None], scores=np.array([0.9], np.float32), landmarks=face.landmarks[None])

    renderer = _renderer_with(plain_renderer, recognizer, candidates=2)
    anonymizer = FrameAnonymizer(detector=Detector(), renderer=renderer)
    out = anonymizer.push(VideoFrame(image=image.copy(), index=0, pts=0, time_base=None))[0]
    x1, y1, x2, y2 = face.box.astype(int)
    assert (out.image[y1 + 8 : y2 - 8, x1 + 8 : x2 - 8] == 0).all()  # the solid cover, not the face
    assert anonymizer.stats["fallback_identity_guard"] == 1 and anonymizer.stats.get("faces_sdgan", 0) == 0


def test_a_verified_identity_is_generated_and_kept_across_frames(plain_renderer: SdganRenderer) -> None:
    image, face = _photo_face()
    recognizer = FakeRecognizer()
    renderer = _renderer_with(plain_renderer, recognizer, candidates=4, min_distance=0.05, recheck_every=100)
    first, second = image.copy(), image.copy()
    assert [o.method for o in renderer.render(first, [face])] == ["sdgan"]
    calls_after_first = recognizer.calls
    assert [o.method for o in renderer.render(second, [face])] == ["sdgan"]
    assert recognizer.calls == calls_after_first  # the kept identity costs no recognizer call until its re-check
    assert renderer.guard.counts["draws"] == 1
    x1, y1, x2, y2 = face.box.astype(int)
    assert np.abs(first[y1:y2, x1:x2].astype(int) - image[y1:y2, x1:x2]).mean() > 10  # replaced
    assert np.abs(first[y1:y2, x1:x2].astype(int) - second[y1:y2, x1:x2]).mean() < 2  # the same identity


def test_after_a_reconnect_a_track_draws_and_verifies_again(plain_renderer: SdganRenderer) -> None:
    # track ids start again after an input reconnect: the person now on track 1 may be someone else
    image, face = _photo_face()
    recognizer = FakeRecognizer()
    renderer = _renderer_with(plain_renderer, recognizer, candidates=4, min_distance=0.05, recheck_every=100)
    renderer.render(image.copy(), [face])
    renderer.render(image.copy(), [face])
    assert renderer.guard.counts["draws"] == 1  # kept, unchecked until the re-check
    renderer.forget_tracks()
    assert renderer.guard.tracks == 0
    renderer.render(image.copy(), [face])
    assert renderer.guard.counts["draws"] == 2  # drawn and verified against whoever is there now


class _CountingBackend:
    def __init__(self, backend) -> None:
        self.backend, self.device, self.faces = backend, backend.device, 0

    def generate(self, masked, semantic, identity):
        self.faces += len(masked)
        return self.backend.generate(masked, semantic, identity)


def test_the_face_the_guard_checked_is_the_face_pasted_and_is_not_generated_again(plain_renderer: SdganRenderer) -> None:
    """A draw generates its candidates and the final call reuses the chosen one; a re-check generates the face
    once for the check and the paste together."""
    image, face = _photo_face()
    spy = _CountingBackend(plain_renderer.backend)
    renderer = SdganRenderer(backend=spy, config=plain_renderer.config, landmarker=plain_renderer.landmarker,
                             fallback=CoverRenderer(), guard=IdentityGuard(FakeRecognizer(), GuardConfig(candidates=3, min_distance=0.05,
                                                                                                    recheck_every=1)))
    frames = []
    for _ in range(2):
        canvas = image.copy()
        assert [o.method for o in renderer.render(canvas, [face])] == ["sdgan"]
        frames.append(canvas)
    assert renderer.guard.counts["draws"] == 1 and renderer.guard.counts["verifications"] == 1
    assert spy.faces == 3  # the draw's three candidates; the pastes and the re-check reused the chosen one
    assert renderer.reused_faces == 3  # frame 1's paste, frame 2's re-check and paste
    np.testing.assert_array_equal(frames[0], frames[1])


def test_dlib_guard_keeps_a_face_farther_than_its_margin(plain_renderer: SdganRenderer) -> None:
    image, face = _photo_face()
    renderer = _renderer_with(plain_renderer, DlibRecognizer(), candidates=4, min_distance=0.62)
    canvas = image.copy()
    outcome = renderer.render(canvas, [face])[0]
    distance = renderer.guard.distance_of(1)
    if outcome.method == "sdgan":
        assert distance >= 0.62
        # the guard's verdict, checked again on the pasted frame (full resolution, the frame's own landmarks)
        from sdgan_stream.recognizer import FaceRecognizer

        judge = FaceRecognizer()
        before = judge.embed(image, judge.shape(image, face.box))
        after = judge.embed(canvas, judge.shape(canvas, face.box))
        assert np.linalg.norm(after - before) >= 0.6
    else:
        assert outcome.reason == "identity_guard" and distance < 0.62


def _keywords_of_choose(renderer: SdganRenderer, monkeypatch: pytest.MonkeyPatch) -> dict[str, object]:
    """The keyword arguments the renderer passes to its guard's ``choose`` (filled in as it is called)."""
    given: dict[str, object] = {}
    choose = renderer.guard.choose
    monkeypatch.setattr(renderer.guard, "choose", lambda *a, **k: given.update(k) or choose(*a, **k))
    return given


def test_the_draw_asks_the_recognizers_detector_about_each_candidate_pasted_in_the_frame(
        plain_renderer: SdganRenderer, monkeypatch: pytest.MonkeyPatch) -> None:
    image, face = _photo_face()
    recognizer = DlibRecognizer()
    seen: list[np.ndarray] = []
    asked = recognizer.finds_face
    monkeypatch.setattr(recognizer, "finds_face", lambda frame, box: seen.append(frame.copy()) or asked(frame, box))
    renderer = _renderer_with(plain_renderer, recognizer, candidates=3, min_distance=0.05)
    given = _keywords_of_choose(renderer, monkeypatch)
    renderer.render(image.copy(), [face])
    found = given["found"]
    assert callable(found) and 1 <= len(seen) <= sum(np.isfinite(e) for e in given["landmark_errors"])
    seen.clear()
    answers = [found(i) for i in range(3)]  # asked about every candidate, as a full ranking would
    assert all(isinstance(a, bool) for a in answers)
    x1, y1, x2, y2 = face.box.astype(int)
    # each question is about a frame with that candidate pasted (the faces differ), never the original
    assert len(seen) == sum(np.isfinite(e) for e in given["landmark_errors"])
    assert all(np.abs(f[y1:y2, x1:x2].astype(int) - image[y1:y2, x1:x2]).mean() > 5 for f in seen)
    assert any(np.abs(a[y1:y2, x1:x2].astype(int) - b[y1:y2, x1:x2]).mean() > 1 for a, b in zip(seen, seen[1:]))


def test_a_failing_face_check_leaves_the_pick_to_the_landmarks_and_covers_nothing(
        plain_renderer: SdganRenderer, monkeypatch: pytest.MonkeyPatch) -> None:
    image, face = _photo_face()
    recognizer = FakeRecognizer()
    recognizer.finds_face = lambda frame, box: (_ for _ in ()).throw(RuntimeError("detector crashed"))  # type: ignore[attr-defined]
    renderer = _renderer_with(plain_renderer, recognizer, candidates=2, min_distance=0.05)
    given = _keywords_of_choose(renderer, monkeypatch)
    assert [o.method for o in renderer.render(image.copy(), [face])] == ["sdgan"]
    assert callable(given["found"])
    with pytest.raises(RuntimeError, match="detector crashed"):
        given["found"](0)


def test_a_recognizer_without_a_detector_leaves_the_pick_to_the_landmarks(plain_renderer: SdganRenderer,
                                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    image, face = _photo_face()
    renderer = _renderer_with(plain_renderer, FakeRecognizer(), candidates=2, min_distance=0.05)
    given = _keywords_of_choose(renderer, monkeypatch)
    assert [o.method for o in renderer.render(image.copy(), [face])] == ["sdgan"]
    assert given["found"] is None and len(given["landmark_errors"]) == 2


# -- recognizers ------------------------------------------------------------------------------------------------
def _tiny_arcface(path: Path) -> Path:
    """An ONNX model shaped like insightface's ArcFace (1x3x112x112 -> 512): real plumbing, meaningless features."""
    torch = pytest.importorskip("torch")
    pytest.importorskip("onnx")

    class Tiny(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = torch.nn.Conv2d(3, 8, 8, stride=8)
            self.fc = torch.nn.Linear(8 * 14 * 14, 512)

        def forward(self, x):
            return self.fc(torch.flatten(torch.relu(self.conv(x)), 1))

    torch.manual_seed(0)
    torch.onnx.export(Tiny(), torch.zeros(1, 3, 112, 112), str(path), input_names=["data"], output_names=["fc1"],
                      dynamic_axes={"data": {0: "batch"}, "fc1": {0: "batch"}}, opset_version=17, dynamo=False)
    return path


def test_arcface_recognizer_loads_through_insightface_and_embeds(tmp_path: Path) -> None:
    pytest.importorskip("insightface")
    recognizer = ArcFaceRecognizer(_tiny_arcface(tmp_path / "w600k_r50.onnx"))
    image, face = _photo_face()
    from sdgan_stream.landmarks import LandmarkDetector

    points = LandmarkDetector()(image, [face])[0]
    embeddings = recognizer.embed(image, np.stack([points, points + 3.0]))
    assert embeddings.shape == (2, 512)
    assert np.allclose(np.linalg.norm(embeddings, axis=1), 1.0, atol=1e-4)
    assert recognizer.distances(embeddings, embeddings)[0, 0] == pytest.approx(0.0, abs=1e-5)


def test_a_missing_or_corrupt_recognizer_model_is_a_clear_error(tmp_path: Path) -> None:
    pytest.importorskip("insightface")
    with pytest.raises(WeightsError, match="not found"):
        load_recognizer("insightface", tmp_path / "nope.onnx")
    corrupt = tmp_path / "corrupt.onnx"
    corrupt.write_bytes(b"not an onnx file")
    with pytest.raises(WeightsError, match="cannot load"):
        load_recognizer("insightface", corrupt)


def test_cli_rejects_a_bad_recognizer_model_before_writing_anything(tmp_path: Path, face_clip) -> None:
    corrupt = tmp_path / "corrupt.onnx"
    corrupt.write_bytes(b"junk")
    out = tmp_path / "out.mp4"
    done = subprocess.run([sys.executable, "-m", "sdgan_stream.cli", "anonymize", str(face_clip.path), "-o", str(out),
                           "--method", "sdgan", "--recognizer-model", str(corrupt), "--no-progress"],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 1, done.stderr
    errors = [line for line in done.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and ("insightface" in errors[0] or "corrupt.onnx" in errors[0])
    assert not out.exists()
