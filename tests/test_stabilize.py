"""Steady generated faces: landmarks filtered per track, and a replaced region that does not jitter."""

from __future__ import annotations

import numpy as np
import pytest

from sdgan_stream import render
from sdgan_stream.anonymize import CoverRenderer
from sdgan_stream.config import AnonymizeOptions
from sdgan_stream.render import SdganRenderer
from sdgan_stream.samples import face_photos
from sdgan_stream.stabilize import LandmarkStabilizer, follow_rigid
from sdgan_stream.types import Face


def _face_points() -> np.ndarray:
    """A plausible 68-point layout (eyes 40 px apart): a ring of jaw and inner points around (100, 100)."""
    rng = np.random.default_rng(3)
    points = rng.uniform(60, 140, (68, 2))
    points[36:42] = [80, 90] + rng.normal(0, 2, (6, 2))
    points[42:48] = [120, 90] + rng.normal(0, 2, (6, 2))
    return points


def _rigid(points: np.ndarray, angle_deg: float, scale: float, shift: tuple[float, float]) -> np.ndarray:
    a = np.radians(angle_deg)
    rotation = np.array([[np.cos(a), -np.sin(a)], [np.sin(a), np.cos(a)]])
    return scale * (points - 100) @ rotation.T + 100 + np.asarray(shift)


def test_follow_rigid_recovers_a_similarity_exactly() -> None:
    points = _face_points()
    moved = _rigid(points, 7.0, 1.1, (5.0, -3.0))
    assert np.allclose(follow_rigid(points, moved), moved, atol=1e-6)


@pytest.mark.parametrize("speed", [0.0, 6.0])
def test_jittered_fits_come_out_nearer_the_truth_still_or_moving(speed: float) -> None:
    """A head moving 6 px a frame (and turning a little) is followed without lag; the jitter is damped."""
    rng = np.random.default_rng(0)
    truth0 = _face_points()
    stabilizer = LandmarkStabilizer()
    raw_error, filtered_error = [], []
    for t in range(30):
        truth = _rigid(truth0, 0.3 * t if speed else 0.0, 1.0, (speed * t, 0.5 * speed * t))
        # dlib's jitter: mostly each point on its own (the whole-fit shift is followed as motion)
        fit = truth + rng.normal(0, 0.1, 2) + rng.normal(0, 0.4, truth.shape)
        out = stabilizer.filter(1, fit)
        stabilizer.end_frame()
        assert np.linalg.norm(out - fit, axis=1).max() <= stabilizer.max_offset(fit) + 1e-4  # never far from the fit
        if t >= 3:
            raw_error.append(np.linalg.norm(fit - truth, axis=1).mean())
            filtered_error.append(np.linalg.norm(out - truth, axis=1).mean())
    assert np.mean(filtered_error) < 0.75 * np.mean(raw_error)


def test_a_real_change_of_shape_passes_and_ended_tracks_are_forgotten() -> None:
    points = _face_points()
    stabilizer = LandmarkStabilizer()
    assert np.array_equal(stabilizer.filter(1, points), points.astype(np.float32))  # a new track: as fitted
    stabilizer.end_frame()
    opened = points.copy()
    opened[60:68, 1] += 8.0  # the mouth opens by a fifth of the eye distance
    out = stabilizer.filter(1, opened)
    assert np.abs(out[60:68, 1] - opened[60:68, 1]).max() < 1.0  # followed at once, within an eighth
    stabilizer.end_frame()
    stabilizer.end_frame()  # track 1 was not seen in this frame
    assert np.array_equal(stabilizer.filter(1, points), points.astype(np.float32))


@pytest.fixture(scope="module")
def renderer() -> SdganRenderer:
    return SdganRenderer.from_options(AnonymizeOptions(backend="eager", device="cpu"))


def _still_face_with_jittering_detections(frames: int = 6):
    from sdgan_stream.detect import CenterFaceDetector

    image = face_photos()[0].image
    detections = CenterFaceDetector(threshold=0.4, detect_size=None).detect(image)
    box, five = detections.boxes[0], detections.landmarks[0]
    rng = np.random.default_rng(1)
    for _ in range(frames):  # the detector's box and points move by a pixel or two on a still face
        shift = rng.uniform(-2.0, 2.0, 2).astype(np.float32)
        yield image, Face(box=box + np.tile(shift, 2) + rng.uniform(-2, 2, 4).astype(np.float32), score=0.9,
                          landmarks=five + shift + rng.uniform(-1, 1, five.shape).astype(np.float32),
                          track_id=1, identity_seed=4)


def _frame_to_frame_change(renderer: SdganRenderer, *, steady: bool, monkeypatch: pytest.MonkeyPatch) -> float:
    monkeypatch.setattr(render, "REGION_MEMORY", render.REGION_MEMORY if steady else 0.0)
    tested = SdganRenderer(backend=renderer.backend, config=renderer.config, landmarker=renderer.landmarker,
                           fallback=CoverRenderer(), frame_path="host",
                           landmark_jitter=renderer.stabilizer.jitter if steady else 0.0)
    outputs, box = [], None
    for image, face in _still_face_with_jittering_detections():
        canvas = image.copy()
        assert [o.method for o in tested.render(canvas, [face])] == ["sdgan"]
        outputs.append(canvas.astype(np.float32))
        box = face.box
    x1, y1, x2, y2 = box.astype(int)
    return float(np.mean([np.abs(b - a)[y1:y2, x1:x2].mean() for a, b in zip(outputs, outputs[1:])]))


def test_a_still_face_stays_still_under_detector_jitter(renderer: SdganRenderer, monkeypatch: pytest.MonkeyPatch) -> None:
    """Before the landmark filter and the region memory, jitter of the detector alone made the generated
    face on a still photo change between frames (the flicker evaluate measures)."""
    unsteady = _frame_to_frame_change(renderer, steady=False, monkeypatch=monkeypatch)
    steady = _frame_to_frame_change(renderer, steady=True, monkeypatch=monkeypatch)
    assert steady < 0.6 * unsteady, (steady, unsteady)


def test_the_region_memory_only_ever_adds_to_the_replaced_region(renderer: SdganRenderer) -> None:
    tested = renderer.for_new_stream()
    for image, face in _still_face_with_jittering_detections(4):
        raw = {}
        original_steady = tested._steady_region

        def spy(prepared, regions, original_steady=original_steady):
            raw["mask"] = prepared.region_mask > 0.5
            out = original_steady(prepared, regions)
            raw["steady"] = out.region_mask > 0.5
            return out

        tested._steady_region = spy
        tested.render(image.copy(), [face])
        assert (raw["steady"] >= raw["mask"]).all()
    assert set(tested._regions) == {1}


def _textured(size: int = 240, seed: int = 5) -> np.ndarray:
    """A grey-level texture (blurred noise) with detail everywhere, as RGB uint8."""
    import cv2

    noise = np.random.default_rng(seed).uniform(0, 255, (size, size)).astype(np.float32)
    grey = cv2.GaussianBlur(noise, (0, 0), 2.0)
    grey = (grey - grey.min()) / (grey.max() - grey.min()) * 255
    return np.repeat(grey[..., None], 3, -1).astype(np.uint8)


@pytest.mark.parametrize("pixels", [False, True])
def test_the_head_motion_measured_on_the_pixels_removes_the_fits_shared_jitter(pixels: bool) -> None:
    """dlib's fit starts from the detector's box, so its error is largely one shift of all points: the
    fit-only prediction passes that on whole; followed on the pixels, the filtered points stay on the
    moving head within a fraction of it (and never farther than max_offset from the fit)."""
    import cv2

    rng = np.random.default_rng(2)
    texture, truth0 = _textured(), _face_points()
    stabilizer = LandmarkStabilizer()
    raw_error, filtered_error = [], []
    for t in range(20):
        shift = np.array([1.3 * t, 0.6 * t])  # sub-pixel motion of the whole head
        frame = cv2.warpAffine(texture, np.float32([[1, 0, shift[0]], [0, 1, shift[1]]]), texture.shape[1::-1],
                               flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT)
        truth = truth0 + shift
        fit = truth + rng.normal(0, 0.6, 2) + rng.normal(0, 0.3, truth.shape)
        if pixels:
            stabilizer.begin_frame(frame)
        out = stabilizer.filter(1, fit)
        stabilizer.end_frame()
        assert np.linalg.norm(out - fit, axis=1).max() <= stabilizer.max_offset(fit) + 1e-4
        if t >= 3:
            raw_error.append(np.linalg.norm(fit - truth, axis=1).mean())
            filtered_error.append(np.linalg.norm(out - truth, axis=1).mean())
    ratio = np.mean(filtered_error) / np.mean(raw_error)
    if pixels:
        assert ratio < 0.6, ratio  # measured 0.45
    else:  # the fit-only prediction: what the pixels improve on
        assert ratio > 0.8, ratio  # measured 0.92


def test_pixel_motion_that_disagrees_with_the_fit_is_not_trusted() -> None:
    """A frame whose content jumped (a cut, a different face at the track's place) leaves the prediction
    to the fit: the filtered points land within max_offset of it whatever the pixels said."""
    texture, points = _textured(), _face_points()
    stabilizer = LandmarkStabilizer()
    stabilizer.begin_frame(texture)
    stabilizer.filter(1, points)
    stabilizer.end_frame()
    other = _textured(seed=9)
    moved = points + [6.0, -4.0]
    stabilizer.begin_frame(other)
    out = stabilizer.filter(1, moved)
    assert np.linalg.norm(out - moved, axis=1).max() <= stabilizer.max_offset(moved) + 1e-4
