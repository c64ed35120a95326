"""The map hold: a tracked face keeps the semantic map it was last generated from while its landmarks stay
within ``map_hold`` of it, because the generated identity moves with every pixel of the map."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from sdgan_stream.anonymize import CoverRenderer
from sdgan_stream.faceprep import PreparedFace
from sdgan_stream.models.generator import GeneratorConfig
from sdgan_stream.render import DEFAULT_CONTEXT_TOLERANCE, DEFAULT_MAP_HOLD, SdganRenderer, context_shift
from sdgan_stream.types import Face

S = 128
HOLD_PX = DEFAULT_MAP_HOLD * S


class _NoBackend:
    device = "cpu"


def _renderer(**kwargs) -> SdganRenderer:
    return SdganRenderer(backend=_NoBackend(), config=GeneratorConfig(), landmarker=None, fallback=CoverRenderer(),  # type: ignore[arg-type]
                         frame_path="host", **kwargs)


def _points() -> np.ndarray:
    return np.random.default_rng(0).uniform(20, 108, (68, 2)).astype(np.float32)


def _prepared(points: np.ndarray, *, label: int, track: int | None = 1, crop: np.ndarray | None = None) -> PreparedFace:
    """A face whose map is filled with ``label``: which frame's map a held face carries is visible."""
    face = Face(box=np.array([0, 0, S, S], np.float32), score=0.9, track_id=track, identity_seed=3)
    crop = np.zeros((S, S, 3), np.uint8) if crop is None else crop
    return PreparedFace(face=face, matrix=np.eye(2, 3), crop=crop,
                        labels=np.full((S, S), label, np.uint8), region_mask=np.full((S, S), label / 10, np.float32),
                        landmarks68_crop=points, landmarks68=points.copy())


def _frames(renderer: SdganRenderer, faces: list[PreparedFace]) -> list[PreparedFace]:
    """Each face as the renderer hands it on, one frame per face (the bookkeeping render() does)."""
    out = []
    for face in faces:
        held: dict[int, PreparedFace] = {}
        out.append(renderer._held_inputs(face, held))
        renderer._held = held
    return out


def test_a_face_that_moved_less_than_the_hold_keeps_its_map_and_its_own_face() -> None:
    points = _points()
    first, second = _frames(_renderer(), [_prepared(points, label=1), _prepared(points + 0.6 * HOLD_PX, label=2)])
    assert first.labels[0, 0] == 1 and second.labels[0, 0] == 1  # the first frame's map, region and points
    assert second.region_mask[0, 0] == pytest.approx(0.1) and np.array_equal(second.landmarks68_crop, points)
    np.testing.assert_array_equal(second.landmarks68, points + 0.6 * HOLD_PX)  # placement stays this frame's


def test_a_held_region_never_shrinks_under_a_guessed_boxs_region() -> None:
    # the region's box part follows the box: a coasting track's widened guess joins the held region
    points = _points()
    guess = dataclasses.replace(_prepared(points, label=3), face=Face(box=np.array([0, 0, S, S], np.float32), score=0.9,
                                                                      track_id=1, identity_seed=3, source="predicted"))
    grown, = _frames(_renderer(), [_prepared(points, label=1), guess])[1:]
    assert grown.labels[0, 0] == 1 and grown.region_mask[0, 0] == pytest.approx(0.3)
    shrunk, = _frames(_renderer(), [_prepared(points, label=3), dataclasses.replace(guess, region_mask=np.full((S, S), 0.1, np.float32))])[1:]
    assert shrunk.labels[0, 0] == 3 and shrunk.region_mask[0, 0] == pytest.approx(0.3)  # the held one, reused
    detected, = _frames(_renderer(), [_prepared(points, label=1), _prepared(points, label=3)])[1:]
    assert detected.region_mask[0, 0] == pytest.approx(0.1)  # a detected box's jitter: the held region as it was


def test_a_point_that_moved_past_the_hold_brings_the_new_map() -> None:
    points = _points()
    mouth = points.copy()
    mouth[62] += (0, 3 * HOLD_PX)  # the mouth opens: one point moves, the rest stay
    frames = _frames(_renderer(), [_prepared(points, label=1), _prepared(mouth, label=2)])
    assert frames[1].labels[0, 0] == 2 and np.array_equal(frames[1].landmarks68_crop, mouth)


def test_a_slow_drift_is_followed_once_it_adds_up_to_the_hold() -> None:
    """Held against the map's own frame, not the last one: small steps cannot drift away unbounded."""
    points = _points()
    step = 0.4 * HOLD_PX
    frames = _frames(_renderer(), [_prepared(points + k * step, label=k + 1) for k in range(4)])
    assert [f.labels[0, 0] for f in frames] == [1, 1, 1, 4]  # 0.4 and 0.8 of the hold held; 1.2: frame 4's own map


def test_untracked_faces_a_zero_hold_and_a_new_track_take_their_own_map() -> None:
    points = _points()
    untracked = _frames(_renderer(), [_prepared(points, label=1, track=None), _prepared(points, label=2, track=None)])
    assert untracked[1].labels[0, 0] == 2
    off = _frames(_renderer(map_hold=0.0), [_prepared(points, label=1), _prepared(points, label=2)])
    assert off[1].labels[0, 0] == 2
    other_track = _frames(_renderer(), [_prepared(points, label=1, track=1), _prepared(points, label=2, track=2)])
    assert other_track[1].labels[0, 0] == 2


def test_a_track_missing_for_a_frame_and_a_new_stream_start_afresh() -> None:
    points = _points()
    renderer = _renderer()
    _frames(renderer, [_prepared(points, label=1)])
    renderer._held = {}  # what render() leaves after a frame without track 1
    assert _frames(renderer, [_prepared(points, label=2)])[0].labels[0, 0] == 2
    assert renderer.for_new_stream()._held == {}


def test_a_negative_hold_is_refused() -> None:
    with pytest.raises(ValueError, match="map hold"):
        _renderer(map_hold=-0.1)


def test_codec_noise_around_the_face_keeps_the_context_and_a_real_change_comes_through() -> None:
    points = _points()
    rng = np.random.default_rng(2)
    first = rng.integers(40, 200, (S, S, 3)).astype(np.uint8)
    noisy = np.clip(first.astype(int) + rng.integers(-3, 4, first.shape), 0, 255).astype(np.uint8)
    moved = noisy.copy()
    moved[:32, :32] = 255  # a hand comes into the corner
    frames = _frames(_renderer(), [_prepared(points, label=1, crop=c) for c in (first, noisy, moved)])
    assert frames[0].context is None  # a new track: its own crop
    np.testing.assert_array_equal(frames[1].context, first)
    np.testing.assert_array_equal(frames[2].context[:24, :24], moved[:24, :24])  # the change, whole
    np.testing.assert_array_equal(frames[2].context[64:, 64:], first[64:, 64:])  # elsewhere still the first frame
    assert frames[2].crop is moved  # the crop itself (pasted around the face, judged by the guard) is this frame's
    off = _frames(_renderer(change_gate=0.0), [_prepared(points, label=1, crop=c) for c in (first, noisy)])
    assert off[1].context is None


def test_the_generator_input_is_the_held_context() -> None:
    from sdgan_stream.faceprep import masked_input

    points = _points()
    crop, context = np.full((S, S, 3), 200, np.uint8), np.full((S, S, 3), 50, np.uint8)
    face = dataclasses.replace(_prepared(points, label=1, crop=crop), context=context, region_mask=np.zeros((S, S), np.float32))
    assert masked_input(face)[0, 0, 0] == 50


class _CountingBackend:
    """The real generator, counting the faces it generates and keeping the maps it is given."""

    def __init__(self, backend) -> None:
        self.backend, self.device, self.faces, self.maps = backend, backend.device, 0, []

    def generate(self, masked, semantic, identity):
        self.faces += len(masked)
        self.maps.append(semantic.copy())
        return self.backend.generate(masked, semantic, identity)


@pytest.fixture(scope="module")
def real_renderer() -> SdganRenderer:
    from sdgan_stream.config import AnonymizeOptions

    return SdganRenderer.from_options(AnonymizeOptions(backend="eager", device="cpu"))


def _counting(real: SdganRenderer, **kwargs) -> tuple[SdganRenderer, _CountingBackend]:
    spy = _CountingBackend(real.backend)
    return SdganRenderer(backend=spy, config=real.config, landmarker=real.landmarker, fallback=CoverRenderer(),
                         frame_path="host", **kwargs), spy


@pytest.mark.parametrize("hold", [DEFAULT_MAP_HOLD, 0.0])
def test_a_still_face_with_jittering_landmarks_gets_one_map(real_renderer: SdganRenderer, hold: float) -> None:
    """End to end on a photo: the detector's five points jitter by a pixel on the second frame; with the hold the
    generator gets the first frame's map again, without it the map changes."""
    from .test_sdgan_pipeline import _face_on_canvas

    renderer, spy = _counting(real_renderer, map_hold=hold, context_tolerance=0.0)  # the map, not the output hold
    image, box, landmarks = _face_on_canvas()
    jitter = np.array([[0.8, -0.6], [-0.7, 0.5], [0.6, 0.7], [-0.5, -0.8], [0.7, 0.6]], np.float32)
    for points in (landmarks, landmarks + jitter):
        outcomes = renderer.render(image.copy(), [Face(box=box, score=0.9, landmarks=points, track_id=1, identity_seed=4)])
        assert [o.method for o in outcomes] == ["sdgan"]
    # (the crop itself moved by the jitter, so the context changed at sharp edges: generated both times)
    first, second = spy.maps
    assert np.array_equal(first, second) == (hold > 0)


@pytest.mark.parametrize("hold", [DEFAULT_MAP_HOLD, 0.0])
def test_a_held_map_skips_the_maps_half_of_the_onnxruntime_generator(hold: float) -> None:
    """The jittering face above through onnxruntime: the held map's modulations come from the backend's
    cache on the second frame; without the hold the map changed, so they are computed again."""
    from sdgan_stream.config import AnonymizeOptions

    from .test_sdgan_pipeline import _face_on_canvas

    renderer = SdganRenderer.from_options(AnonymizeOptions(backend="onnxruntime", device="cpu", identity_guard=False))
    renderer.map_hold, renderer.context_tolerance = hold, 0.0  # the map's cache, not the output hold
    assert renderer.backend.caches_maps
    image, box, landmarks = _face_on_canvas()
    jitter = np.array([[0.8, -0.6], [-0.7, 0.5], [0.6, 0.7], [-0.5, -0.8], [0.7, 0.6]], np.float32)
    for points in (landmarks, landmarks + jitter):
        renderer.render(image.copy(), [Face(box=box, score=0.9, landmarks=points, track_id=1, identity_seed=4)])
    assert (renderer.reused_faces, renderer.backend.map_cache_hits) == (0, 1 if hold > 0 else 0)


def test_a_face_whose_inputs_did_not_change_is_reused_exactly_and_a_change_is_generated(real_renderer: SdganRenderer) -> None:
    from .test_sdgan_pipeline import _face_on_canvas

    renderer, spy = _counting(real_renderer)
    image, box, landmarks = _face_on_canvas()
    outputs = []

    def frame(picture: np.ndarray, seed: int = 4, track: int | None = 1) -> None:
        canvas = picture.copy()
        renderer.render(canvas, [Face(box=box, score=0.9, landmarks=landmarks, track_id=track, identity_seed=seed)])
        outputs.append(canvas)

    frame(image)
    frame(image)
    assert (spy.faces, renderer.reused_faces) == (1, 1)
    np.testing.assert_array_equal(outputs[0], outputs[1])  # the same face, bit for bit
    frame(image, seed=5)  # a new identity for the track: generated
    assert spy.faces == 2
    x1, y1, x2, y2 = box.astype(int)
    changed = image.copy()
    changed[y1:y2, x1:x2] = 255 - changed[y1:y2, x1:x2]  # the whole face changed
    frame(changed, seed=5)
    assert spy.faces == 3
    frame(image, track=None)
    frame(image, track=None)  # untracked faces have no yesterday
    assert spy.faces == 5


class _CountingCover(CoverRenderer):
    """A cover that says it served every face again, to check the job's bookkeeping of reuse."""

    reused_faces = 0

    def render(self, image, faces, prepared=None):
        self.reused_faces += len(faces)
        return super().render(image, faces, prepared)


def test_each_job_reports_its_own_reused_faces_when_a_renderer_serves_several(face_clip, tmp_path) -> None:
    from sdgan_stream import anonymize_video

    renderer = _CountingCover()
    reports = [anonymize_video(face_clip.path, tmp_path / f"out{i}.mp4", renderer=renderer, method="blur") for i in range(2)]
    served = [sum(n for key, n in r.stats.items() if key.startswith("faces_")) for r in reports]
    assert served[0] > 0
    assert [r.stats["generator_reused_faces"] for r in reports] == served  # per job, not cumulative


# -- the output hold: a held map, region and identity keep their generated face while the context keeps its colour --

class _NumberingBackend:
    """Each face it generates is filled with the number of faces generated so far: which call made a row shows."""

    device = "cpu"

    def __init__(self) -> None:
        self.faces = 0

    def generate(self, masked, semantic, identity):
        rows = []
        for _ in range(len(masked)):
            self.faces += 1
            rows.append(np.full((3, S, S), self.faces, np.float32))
        return np.stack(rows)


def _ring_face(context: np.ndarray, *, label: int = 1, track: int | None = 1, seed: int = 3) -> PreparedFace:
    """A face whose replaced region is the centre square, so the band around it is context."""
    points = _points()
    region = np.zeros((S, S), np.float32)
    region[32:96, 32:96] = 1.0
    face = Face(box=np.array([0, 0, S, S], np.float32), score=0.9, track_id=track, identity_seed=seed)
    return PreparedFace(face=face, matrix=np.eye(2, 3), crop=context, labels=np.full((S, S), label, np.uint8),
                        region_mask=region, landmarks68_crop=points, landmarks68=points.copy())


def _served(renderer: SdganRenderer, faces: list[PreparedFace]) -> list[float]:
    """Per frame (one face each), the number of the generator call that made the face served."""
    out = []
    for face in faces:
        renderer._generated_now = {}
        out.append(float(renderer._generate([face])[0, 0, 0, 0]))
        renderer._generated = dict(renderer._generated_now)
    return out


def _textured(shift: int = 0, brightness: int = 0) -> np.ndarray:
    """A striped context (stripes moved by ``shift`` px) plus ``brightness`` levels."""
    stripes = np.where((np.arange(S)[None, :] + shift) % 8 < 4, 60, 180)
    return np.clip(np.repeat(np.broadcast_to(stripes, (S, S))[..., None], 3, -1) + brightness, 0, 255).astype(np.uint8)


def test_the_context_shift_follows_the_colour_around_the_region_not_its_texture() -> None:
    region = _ring_face(_textured()).region_mask > 0
    assert context_shift(_textured(), _textured(shift=4), region) < 1.0  # the stripes moved by half a period
    assert context_shift(_textured(), _textured(brightness=10), region) == pytest.approx(10.0, abs=0.01)
    darker_far_away = _textured()
    darker_far_away[:8] = 0  # outside the band around the region: not the face's surroundings
    assert context_shift(_textured(), darker_far_away, region) == 0.0


def test_a_held_face_keeps_its_generated_face_over_a_moving_background_and_light_brings_a_new_one() -> None:
    renderer = SdganRenderer(backend=_NumberingBackend(), config=GeneratorConfig(), landmarker=None,  # type: ignore[arg-type]
                             fallback=CoverRenderer(), frame_path="host")
    assert renderer.context_tolerance == DEFAULT_CONTEXT_TOLERANCE > 0
    brighter = DEFAULT_CONTEXT_TOLERANCE + 3
    frames = [_textured(), _textured(shift=2), _textured(shift=4), _textured(shift=4, brightness=int(brighter))]
    assert _served(renderer, [_ring_face(c) for c in frames]) == [1, 1, 1, 2]
    # Small changes are measured against the context the face was made from, so they cannot add up unseen.
    step = int(0.75 * DEFAULT_CONTEXT_TOLERANCE)  # each step within the tolerance, two of them past it
    creeping = [_textured(brightness=k * step) for k in range(3)]
    assert _served(renderer, [_ring_face(c) for c in creeping]) == [3, 3, 4]


def test_the_output_hold_needs_the_same_map_region_identity_and_track() -> None:
    def served(second: PreparedFace, **kwargs) -> list[float]:
        renderer = SdganRenderer(backend=_NumberingBackend(), config=GeneratorConfig(), landmarker=None,  # type: ignore[arg-type]
                                 fallback=CoverRenderer(), frame_path="host", **kwargs)
        return _served(renderer, [_ring_face(_textured()), second])

    moved = _textured(shift=2)
    assert served(_ring_face(moved)) == [1, 1]
    assert served(_ring_face(moved, label=2)) == [1, 2]  # a new map
    assert served(_ring_face(moved, seed=4)) == [1, 2]  # a new identity
    assert served(_ring_face(moved, track=None)) == [1, 2]  # untracked: no yesterday
    assert served(_ring_face(moved), context_tolerance=0.0) == [1, 2]  # off: only equal inputs are reused
    grown = _ring_face(moved)
    grown.region_mask[30:32, 32:96] = 1.0  # the region grew: the old output's copy of the context there could be face
    assert served(grown) == [1, 2]


def test_a_negative_context_tolerance_is_refused() -> None:
    with pytest.raises(ValueError, match="context tolerance"):
        _renderer(context_tolerance=-1.0)


class _CountingGuard:
    def __init__(self) -> None:
        self.forgotten = 0

    def forget_tracks(self) -> None:
        self.forgotten += 1


def test_a_reconnect_drops_every_per_track_state_so_a_new_person_inherits_nothing() -> None:
    """Track ids start again after an input reconnect: a new person given track 1 must not be served the
    old track 1's held map, smoothing or verified identity."""
    from fractions import Fraction

    from sdgan_stream.anonymize import FrameAnonymizer
    from sdgan_stream.live import LiveProcessor
    from sdgan_stream.types import Detections, VideoFrame

    renderer = _renderer()
    renderer.guard = _CountingGuard()  # type: ignore[assignment]
    points = _points()
    _frames(renderer, [_prepared(points, label=1)])  # track 1's inputs are held
    renderer._regions, renderer._previous = {1: np.ones((S, S), np.float32)}, {(1, 3): (None, None)}
    assert renderer._held and renderer._regions and renderer._previous

    class Nobody:
        def detect(self, image):
            return Detections(np.zeros((0, 4), np.float32), np.zeros(0, np.float32), np.zeros((0, 5, 2), np.float32))

    class Sessions:  # frames 0-1 from the first connection, 2-3 from the second
        def session_of(self, index: int) -> int:
            return index // 2

    class Keep:
        forgotten = 0

        def forget_tracks(self) -> None:
            Keep.forgotten += 1

        def split(self, image, faces):
            return list(faces), []

    anonymizer = FrameAnonymizer(detector=Nobody(), renderer=renderer, exempt=Keep())  # type: ignore[arg-type]
    processor = LiveProcessor(anonymizer, Sessions())  # type: ignore[arg-type]
    flags = []
    for index in range(4):
        frame = VideoFrame(np.zeros((64, 64, 3), np.uint8), index, index, Fraction(1, 25))
        for item in processor.analyse_frame(frame):
            flags.append(item.new_stream)
            held_before = bool(renderer._held)
            anonymizer.render(item)
            if index < 2:
                assert held_before and renderer._held, "the first connection keeps its state"
    assert flags == [False, False, True, False]  # only the first frame of the new connection
    assert not renderer._held and not renderer._regions and not renderer._previous
    assert renderer.guard.forgotten == 1 and Keep.forgotten == 1  # type: ignore[attr-defined]
