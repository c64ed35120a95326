"""The map hold: a tracked face keeps the semantic map it was last generated from while its landmarks stay
within ``map_hold`` of it, because the generated identity moves with every pixel of the map."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from sdgan_stream.anonymize import CoverRenderer
from sdgan_stream.faceprep import PreparedFace
from sdgan_stream.models.generator import GeneratorConfig
from sdgan_stream.render import DEFAULT_MAP_HOLD, SdganRenderer
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


def _prepared(points: np.ndarray, *, label: int, track: int | None = 1) -> PreparedFace:
    """A face whose map is filled with ``label``: which frame's map a held face carries is visible."""
    face = Face(box=np.array([0, 0, S, S], np.float32), score=0.9, track_id=track, identity_seed=3)
    return PreparedFace(face=face, matrix=np.eye(2, 3), crop=np.zeros((S, S, 3), np.uint8),
                        labels=np.full((S, S), label, np.uint8), region_mask=np.full((S, S), label / 10, np.float32),
                        landmarks68_crop=points, landmarks68=points.copy())


def _frames(renderer: SdganRenderer, faces: list[PreparedFace]) -> list[PreparedFace]:
    """Each face as the renderer hands it on, one frame per face (the bookkeeping render() does)."""
    out = []
    for face in faces:
        held: dict[int, PreparedFace] = {}
        out.append(renderer._held_map(face, held))
        renderer._held_maps = held
    return out


def test_a_face_that_moved_less_than_the_hold_keeps_its_map_and_its_own_face() -> None:
    points = _points()
    first, second = _frames(_renderer(), [_prepared(points, label=1), _prepared(points + 0.6 * HOLD_PX, label=2)])
    assert first.labels[0, 0] == 1 and second.labels[0, 0] == 1  # the first frame's map, region and points
    assert second.region_mask[0, 0] == pytest.approx(0.1) and np.array_equal(second.landmarks68_crop, points)
    np.testing.assert_array_equal(second.landmarks68, points + 0.6 * HOLD_PX)  # placement stays this frame's


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
    renderer._held_maps = {}  # what render() leaves after a frame without track 1
    assert _frames(renderer, [_prepared(points, label=2)])[0].labels[0, 0] == 2
    assert renderer.for_new_stream()._held_maps == {}


def test_a_negative_hold_is_refused() -> None:
    with pytest.raises(ValueError, match="map hold"):
        _renderer(map_hold=-0.1)


class _SpyBackend:
    """The real generator, recording the semantic maps it is given."""

    def __init__(self, backend) -> None:
        self.backend, self.device, self.maps = backend, backend.device, []

    def generate(self, masked, semantic, identity):
        self.maps.append(semantic.copy())
        return self.backend.generate(masked, semantic, identity)


@pytest.mark.parametrize("hold", [DEFAULT_MAP_HOLD, 0.0])
def test_a_still_face_with_jittering_landmarks_gets_one_map(hold: float) -> None:
    """End to end on a photo: the detector's five points jitter by a pixel on the second frame; with the hold the
    generator gets the first frame's map again, without it the map changes with the jitter."""
    from sdgan_stream.config import AnonymizeOptions

    from .test_sdgan_pipeline import _face_on_canvas

    base = SdganRenderer.from_options(AnonymizeOptions(backend="eager", device="cpu"))
    spy = _SpyBackend(base.backend)
    renderer = SdganRenderer(backend=spy, config=base.config, landmarker=base.landmarker, fallback=CoverRenderer(),
                             frame_path="host", map_hold=hold)
    image, box, landmarks = _face_on_canvas()
    jitter = np.array([[0.8, -0.6], [-0.7, 0.5], [0.6, 0.7], [-0.5, -0.8], [0.7, 0.6]], np.float32)
    for points in (landmarks, landmarks + jitter):
        outcomes = renderer.render(image.copy(), [Face(box=box, score=0.9, landmarks=points, track_id=1, identity_seed=4)])
        assert [o.method for o in outcomes] == ["sdgan"]
    first, second = spy.maps
    assert np.array_equal(first, second) == (hold > 0)
