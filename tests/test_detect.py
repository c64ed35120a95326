import importlib.util
import os
import threading
from pathlib import Path

import numpy as np
import pytest

from sdgan_stream.config import AnonymizeOptions
from sdgan_stream.api import detector_precision, detector_threads
from sdgan_stream.detect import INT8_MODEL_NAME, CenterFaceDetector, detector_session_options, nms, read_int8_model
from sdgan_stream.detect_passes import TURNED_MIN_SCORE, MultiPassDetector, merge_detections, plan_main_passes
from sdgan_stream.detect_scrfd import ScrfdDetector, resolve_scrfd_model
from sdgan_stream.errors import BackendUnavailableError, WeightsError
from sdgan_stream.samples import face_photos
from sdgan_stream.types import Detections


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    w = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    h = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = w * h
    return inter / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter)


@pytest.fixture(scope="module", params=["fp32", "int8"])
def detector(request: pytest.FixtureRequest) -> CenterFaceDetector:
    return CenterFaceDetector(threshold=0.4, detect_size=(640, 640), precision=request.param)


@pytest.mark.parametrize("index", [0, 1])
def test_finds_the_face_in_real_photos(detector: CenterFaceDetector, index: int) -> None:
    photo = face_photos()[index]
    detections = detector.detect(photo.image)
    assert len(detections) == 1
    assert _iou(detections.boxes[0], photo.face_box) > 0.6
    eyes = detections.landmarks[0, :2]
    box = detections.boxes[0]
    assert eyes[0, 0] < eyes[1, 0]  # image-left eye first
    assert (eyes[:, 1] < (box[1] + box[3]) / 2).all()  # eyes in the upper half of the face


def test_empty_image_gives_empty_arrays_of_the_right_shape(detector: CenterFaceDetector) -> None:
    detections = detector.detect(np.zeros((97, 131, 3), np.uint8))  # odd sizes on purpose
    assert len(detections) == 0
    assert detections.boxes.shape == (0, 4) and detections.landmarks.shape == (0, 5, 2)


def test_full_resolution_and_tiny_images_work() -> None:
    detector = CenterFaceDetector(threshold=0.4, detect_size=None)
    photo = face_photos()[0]
    assert len(detector.detect(photo.image)) == 1
    assert len(detector.detect(np.zeros((5, 7, 3), np.uint8))) == 0


def test_boxes_are_in_input_pixels_whatever_the_detect_size() -> None:
    photo = face_photos()[1]
    small = CenterFaceDetector(threshold=0.4, detect_size=(160, 160)).detect(photo.image)
    large = CenterFaceDetector(threshold=0.4, detect_size=(800, 800)).detect(photo.image)
    assert _iou(small.boxes[0], large.boxes[0]) > 0.7


@pytest.mark.parametrize("face_width", [24, 48, 160])
def test_the_int8_detector_finds_the_faces_fp32_finds_at_about_the_same_place_and_score(face_width: int) -> None:
    import cv2

    exact = CenterFaceDetector(threshold=0.2, detect_size=None)
    int8 = CenterFaceDetector(threshold=0.2, detect_size=None, precision="int8")
    canvas = np.full((360, 640, 3), 90, np.uint8)
    for k, photo in enumerate(face_photos()):  # both in-package faces, shrunk to face_width, side by side
        scale = face_width / float(photo.face_box[2] - photo.face_box[0])
        head = cv2.resize(photo.image, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA)[:300, :300]
        x, y = 40 + 300 * k, 20
        canvas[y : y + head.shape[0], x : x + head.shape[1]] = head[: 360 - y, : 640 - x]
    reference, quantized = exact.detect(canvas), int8.detect(canvas)
    assert len(reference) == 2 and len(quantized) == len(reference)
    for box, score in zip(reference.boxes, reference.scores):
        match = int(np.argmax([_iou(box, other) for other in quantized.boxes]))
        assert _iou(box, quantized.boxes[match]) > 0.75
        assert abs(float(quantized.scores[match]) - float(score)) < 0.15


@pytest.mark.parametrize("precision", ["fp32", "int8"])
def test_faces_in_a_frame_at_five_percent_light_are_found(precision: str) -> None:
    import cv2

    canvas = np.full((360, 640, 3), 120, np.uint8)
    for k, photo in enumerate(face_photos()):
        scale = 64 / float(photo.face_box[2] - photo.face_box[0])
        head = cv2.resize(photo.image, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA)[:200, :200]
        canvas[60 : 60 + head.shape[0], 80 + 300 * k : 80 + 300 * k + head.shape[1]] = head
    noise = np.random.default_rng(0).normal(0, 2, canvas.shape)
    dark = np.clip(canvas * 0.05 + noise, 0, 255).astype(np.uint8)
    found = CenterFaceDetector(threshold=0.2, detect_size=None, precision=precision).detect(dark)
    assert len(found) == 2


def test_only_dark_images_are_brightened_and_never_beyond_white() -> None:
    from sdgan_stream.detect import brighten_if_dark

    lit = np.full((32, 32, 3), 150, np.uint8)
    assert brighten_if_dark(lit) is lit
    dark = np.zeros((64, 64, 3), np.uint8)
    dark[:32] = 10
    dark[0, 0] = 255  # a lamp does not make a frame lit
    out = brighten_if_dark(dark)
    assert out.dtype == np.uint8 and out[8, 8, 0] == 160 and out[0, 0, 0] == 255 and out[40, 40, 0] == 0


def test_an_int8_model_that_does_not_match_its_record_is_refused(tmp_path: Path) -> None:
    import json

    weights = Path(importlib.util.find_spec("sdgan_stream").origin).parent / "weights"
    model, meta = tmp_path / INT8_MODEL_NAME, tmp_path / Path(INT8_MODEL_NAME).with_suffix(".json")
    data = (weights / INT8_MODEL_NAME).read_bytes()
    record = json.loads((weights / meta.name).read_text())
    model.write_bytes(data)
    meta.write_text(json.dumps(record))
    assert read_int8_model(tmp_path) == data
    model.write_bytes(data[:-1] + bytes([data[-1] ^ 1]))
    with pytest.raises(WeightsError, match="checksum"):
        read_int8_model(tmp_path)
    meta.write_text(json.dumps({**record, "source_sha256": "0" * 64}))
    with pytest.raises(WeightsError, match="another centerface.onnx"):
        read_int8_model(tmp_path)
    model.unlink()
    with pytest.raises(WeightsError, match="not installed"):
        read_int8_model(tmp_path)


def test_the_detector_runs_in_int8_on_the_cpu_unless_asked_otherwise() -> None:
    assert detector_precision(AnonymizeOptions()) == "int8"
    assert detector_precision(AnonymizeOptions(detector_precision="fp32")) == "fp32"
    with pytest.raises(ValueError, match="detector precision"):
        AnonymizeOptions(detector_precision="int4")
    with pytest.raises(ValueError, match="detector precision"):
        CenterFaceDetector(precision="fp16")


def test_detector_sessions_do_not_spin_and_take_the_thread_count_asked() -> None:
    options = detector_session_options(1)
    assert options.get_session_config_entry("session.intra_op.allow_spinning") == "0"
    assert options.intra_op_num_threads == 1
    assert detector_session_options().intra_op_num_threads == 0  # onnxruntime's default: one per core


def test_the_detector_leaves_half_the_cores_to_a_cpu_generator_in_the_parallel_pipeline(monkeypatch: pytest.MonkeyPatch) -> None:
    import sdgan_stream.backends.base as base

    monkeypatch.setattr(base, "physical_cores", lambda: 8)
    assert detector_threads(AnonymizeOptions(method="sdgan", device="cpu")) == 4
    assert detector_threads(AnonymizeOptions(method="sdgan", device="cpu", parallel=False)) == 0  # one stage at a time
    assert detector_threads(AnonymizeOptions(method="blur")) == 0  # covers: detection is the work, all cores
    monkeypatch.setattr(base, "physical_cores", lambda: 1)
    assert detector_threads(AnonymizeOptions(method="sdgan", device="cpu")) == 1


def test_a_detector_on_fewer_threads_than_cores_runs_a_frames_passes_side_by_side(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    import sdgan_stream.backends.base as base
    from sdgan_stream.api import build_detector, pass_threads

    monkeypatch.setattr(base, "physical_cores", lambda: 2)
    assert pass_threads(1) == 2 and pass_threads(2) == 1
    assert pass_threads(0) == 1  # each pass already takes every core
    assert build_detector(AnonymizeOptions(method="sdgan"), intra_op_threads=1).pass_threads == 2
    assert build_detector(AnonymizeOptions(method="blur")).pass_threads == 1
    scrfd = _scrfd_like_model(tmp_path / "det_fake.onnx")  # SCRFD: one pass at a time whatever the threads
    assert build_detector(AnonymizeOptions(method="sdgan", detector_model=str(scrfd)), intra_op_threads=1).pass_threads == 1


def test_missing_provider_is_an_error_naming_the_available_ones() -> None:
    with pytest.raises(BackendUnavailableError, match="CPUExecutionProvider"):
        CenterFaceDetector(provider="NoSuchExecutionProvider")


def test_nms_keeps_the_best_of_overlapping_boxes() -> None:
    boxes = np.array([[0, 0, 10, 10], [1, 1, 11, 11], [50, 50, 60, 60]], np.float32)
    keep = nms(boxes, np.array([0.5, 0.9, 0.7], np.float32), 0.3)
    assert keep.tolist() == [1, 2]
    assert nms(np.zeros((0, 4), np.float32), np.zeros(0, np.float32), 0.3).shape == (0,)


# -- passes: tiles, border pad, quarter turns (sdgan_stream.detect_passes) ------------------------


def _canvas_with(image: np.ndarray, size: tuple[int, int], at: tuple[int, int]) -> np.ndarray:
    canvas = np.full((size[1], size[0], 3), 110, np.uint8)
    x, y = at
    h, w = image.shape[:2]
    canvas[y : y + h, x : x + w] = image
    return canvas


def test_a_frame_within_the_tile_size_is_one_full_resolution_pass() -> None:
    [only] = plan_main_passes(1920, 1080, tile_size=(1920, 1088))
    assert only.region == (0, 0, 1920, 1080) and only.scale == 1.0 and only.rotation == 0


def test_a_larger_frame_is_tiled_at_full_resolution_plus_the_shrunk_whole_frame() -> None:
    passes = plan_main_passes(3840, 2160, tile_size=(1920, 1088))
    whole, tiles = passes[0], passes[1:]
    assert whole.region == (0, 0, 3840, 2160) and whole.scale == pytest.approx(0.5)
    assert all(t.scale == 1.0 for t in tiles) and len(tiles) == 4
    covered = np.zeros((2160, 3840), bool)
    for t in tiles:
        x1, y1, x2, y2 = t.region
        covered[y1:y2, x1:x2] = True
    assert covered.all()
    # neighbouring tiles overlap by more than a face too small for the shrunk pass (32 px there, 64 here)
    assert tiles[0].region[2] - tiles[1].region[0] >= 64 and tiles[0].region[3] - tiles[2].region[1] >= 64


def test_a_detect_size_shrinks_the_frame_before_any_tiling() -> None:
    [shrunk] = plan_main_passes(3840, 2160, detect_size=(1920, 1088), tile_size=(1920, 1088))
    assert shrunk.scale == pytest.approx(0.5) and shrunk.region == (0, 0, 3840, 2160)
    passes = plan_main_passes(3840, 2160, detect_size=(2560, 2560), tile_size=(1280, 1280))
    tiles = passes[1:]
    assert len(tiles) == 4 and all(t.scale == pytest.approx(2 / 3) for t in tiles)  # tiles at the detection scale
    assert passes[0].scale == pytest.approx(1 / 3)  # the whole frame in one tile
    [full] = plan_main_passes(3840, 2160, tile_size=None)
    assert full.scale == 1.0


def test_the_border_pad_is_a_share_of_the_shorter_side_in_the_view_pixels() -> None:
    [one] = plan_main_passes(1920, 1080, border=0.02)
    assert one.pad == round(0.02 * 1080)
    [shrunk] = plan_main_passes(1920, 1080, detect_size=(960, 960), border=0.02)
    assert shrunk.pad == round(0.02 * 1080 * 0.5)


def test_merged_detections_keep_the_union_of_overlapping_boxes() -> None:
    found = Detections(np.array([[0, 0, 10, 14], [0, 2, 14, 12], [50, 50, 60, 60]], np.float32),
                       np.array([0.5, 0.9, 0.7], np.float32), np.zeros((3, 5, 2), np.float32))
    merged = merge_detections(found)
    assert len(merged) == 2
    assert merged.boxes[0].tolist() == [0, 0, 14, 14] and merged.scores[0] == pytest.approx(0.9)


@pytest.mark.parametrize("turns", [1, 3])
def test_a_quarter_turned_face_gets_a_box_that_holds_it(turns: int) -> None:
    photo = face_photos()[1]
    turned = np.ascontiguousarray(np.rot90(photo.image, k=turns))
    frame = _canvas_with(turned, (800, 600), (150, 100))
    h, w = photo.image.shape[:2]
    x1, y1, x2, y2 = photo.face_box
    corners = np.array([[x1, y1], [x2, y1], [x1, y2], [x2, y2]], np.float64)
    for _ in range(turns):  # np.rot90 by one turn: (x, y) -> (y, w - x), with w the width before turning
        corners = np.stack([corners[:, 1], w - corners[:, 0]], 1)
        w, h = h, w
    truth = np.concatenate([corners.min(0), corners.max(0)]) + [150, 100, 150, 100]
    detector = MultiPassDetector(CenterFaceDetector(threshold=0.4, detect_size=None), rotation_every=1)
    found = [detector.detect(frame) for _ in range(3)]  # one turn per frame: 90, 180, 270
    matching = [d.boxes[i] for d in found for i in range(len(d)) if _iou(d.boxes[i], truth) > 0.3]
    assert matching, "the turned face was never found"
    best = max(matching, key=lambda b: _iou(b, truth))
    # the box from the right turn holds the turned face (a little detector slack allowed)
    slack = 0.1 * (truth[2] - truth[0])
    assert best[0] <= truth[0] + slack and best[1] <= truth[1] + slack
    assert best[2] >= truth[2] - slack and best[3] >= truth[3] - slack


def test_turned_passes_map_landmarks_back_onto_the_face() -> None:
    photo = face_photos()[0]
    frame = _canvas_with(np.ascontiguousarray(np.rot90(photo.image, k=2)), (640, 480), (100, 80))
    detector = MultiPassDetector(CenterFaceDetector(threshold=0.4, detect_size=None), rotations=(180,), rotation_every=1)
    found = detector.detect(frame)
    assert len(found) >= 1
    box = found.boxes[np.argmax(found.scores)]
    points = found.landmarks[np.argmax(found.scores)]
    assert ((points >= box[:2] - 2) & (points <= box[2:] + 2)).all()
    # upside down: the mouth corners lie above the eyes in the frame
    assert points[3:, 1].mean() < points[:2, 1].mean()


class _CountingNetwork:
    """CenterFace, counting the pixels of every view it is handed (the cost of the passes)."""

    def __init__(self) -> None:
        self.network = CenterFaceDetector(threshold=0.4, detect_size=None)
        self.threshold = self.network.threshold
        self.pixels: list[int] = []

    def detect(self, image: np.ndarray) -> Detections:
        self.pixels.append(image.shape[0] * image.shape[1])
        return self.network.detect(image)


def test_a_turned_face_found_by_the_schedule_is_followed_on_every_frame_in_a_crop() -> None:
    photo = face_photos()[1]  # upside down, the upright view scores it 0.27: under the threshold (0.4)
    upside_down = np.ascontiguousarray(np.rot90(photo.image, k=2))
    network = _CountingNetwork()
    detector = MultiPassDetector(network, rotations=(180,), rotation_every=50)  # only frame 0 is scheduled
    frames = [_canvas_with(upside_down, (960, 540), (100 + 6 * i, 60)) for i in range(6)]  # moving
    found = [detector.detect(frame) for frame in frames]
    assert all(len(d) >= 1 for d in found), [len(d) for d in found]
    # after the scheduled frame: the full upright pass plus one follow pass on a crop, smaller than the frame
    full = 960 * 540
    assert network.pixels[:2] == [full, full]
    later = network.pixels[2:]
    assert len(later) == 2 * 5 and all(p < full for p in later[1::2])
    # the followed box moves with the face
    assert found[-1].boxes[np.argmax(found[-1].scores)][0] > found[0].boxes[np.argmax(found[0].scores)][0] + 20


def test_many_followed_faces_at_one_turn_share_one_full_pass() -> None:
    from sdgan_stream.detect_passes import _Followed

    network = _CountingNetwork()
    detector = MultiPassDetector(network, rotations=(90, 180), rotation_every=1000)
    detector.detect(np.zeros((360, 640, 3), np.uint8))  # plans the frame size
    detector._followed = [_Followed(np.array([x, 100, x + 60, 160], np.float64), 180) for x in range(0, 600, 60)]
    detector._followed.append(_Followed(np.array([10, 10, 40, 40], np.float64), 90))
    passes = detector.follow_passes(640, 360)
    assert [(p.region, p.rotation) for p in passes if p.rotation == 180] == [((0, 0, 640, 360), 180)]
    assert [p.rotation for p in passes].count(90) == 1 and passes[-1].region != (0, 0, 640, 360)
    # a turn the schedule runs on this frame needs no follow pass
    assert all(p.rotation != 180 for p in detector.follow_passes(640, 360, [passes[0]]))


def test_an_upright_face_seen_in_a_turned_view_is_not_followed() -> None:
    """A turned view can make a false face of a real upright one (mouth and chin upside down): the upright
    pass sees that face on every frame, so a turned find overlapping it starts no follow pass."""
    photo = face_photos()[1]
    frame = _canvas_with(photo.image, (900, 700), (100, 50))
    network = _CountingNetwork()
    detector = MultiPassDetector(network, rotation_every=1)
    for _ in range(6):  # every turn twice
        assert len(detector.detect(frame)) >= 1
    assert detector.follow_passes(900, 700) == []
    assert len(network.pixels) == 2 * 6  # main + the scheduled turn on each frame, no follow crops


@pytest.mark.parametrize("box", [[700, 100, 760, 160], [-90, -90, -10, -10], [600, 340, 700, 420]])
def test_a_followed_box_outside_the_frame_still_gets_a_view_inside_it(box: list[float]) -> None:
    from sdgan_stream.detect_passes import _Followed

    x1, y1, x2, y2 = _Followed(np.array(box, np.float64), 90).region(640, 360)
    assert 0 <= x1 < x2 <= 640 and 0 <= y1 < y2 <= 360
    detector = MultiPassDetector(_CountingNetwork(), rotations=(90,), rotation_every=1000)
    detector.detect(np.zeros((360, 640, 3), np.uint8))
    detector._followed = [_Followed(np.array(box, np.float64), 90)]
    detector.detect(np.zeros((360, 640, 3), np.uint8))  # the follow pass runs on a non-empty view


def test_a_followed_face_is_dropped_after_it_is_missed_a_few_frames() -> None:
    from sdgan_stream.detect_passes import FOLLOW_MISSES

    photo = face_photos()[0]
    with_face = _canvas_with(np.ascontiguousarray(np.rot90(photo.image, k=2)), (640, 480), (100, 40))
    empty = np.full((480, 640, 3), 90, np.uint8)
    network = _CountingNetwork()
    detector = MultiPassDetector(network, rotations=(180,), rotation_every=1000)
    detector.detect(with_face)
    for _ in range(FOLLOW_MISSES + 1):
        detector.detect(empty)
    before = len(network.pixels)
    detector.detect(empty)
    assert len(network.pixels) - before == 1  # the main pass only: the follow pass has stopped
    detector.reset()
    assert detector.follow_passes(640, 480) == []


def test_the_border_pad_finds_a_face_cut_at_its_middle_by_the_bottom_edge() -> None:
    photo = face_photos()[1]
    x1, y1, x2, y2 = photo.face_box.astype(int)
    cut = photo.image[: (y1 + y2) // 2]  # everything below the middle of the face is outside the frame
    frame = _canvas_with(cut, (900, 600), (300, 600 - cut.shape[0]))
    truth_top = 600 - cut.shape[0] + y1
    detector = MultiPassDetector(CenterFaceDetector(threshold=0.3, detect_size=None), border=0.05, rotation_every=0)
    found = detector.detect(frame)
    assert len(found) >= 1
    box = found.boxes[np.argmax(found.scores)]
    assert box[1] <= truth_top + 0.1 * (y2 - y1)  # the box reaches up to the brows ...
    assert box[3] >= 600 - 2  # ... and down to the border (the face goes on below it)


class _ThreadRecordingNetwork:
    """CenterFace, noting which thread ran each view and how many views ran at the same time."""

    def __init__(self) -> None:
        self.network = CenterFaceDetector(threshold=0.4, detect_size=None)
        self.threshold = self.network.threshold
        self.threads: set[str] = set()
        self.running = self.most_at_once = 0
        self._lock = threading.Lock()

    def detect(self, image: np.ndarray):
        with self._lock:
            self.threads.add(threading.current_thread().name)
            self.running += 1
            self.most_at_once = max(self.most_at_once, self.running)
        try:
            return self.network.detect(image)
        finally:
            with self._lock:
                self.running -= 1


def test_passes_on_several_threads_find_what_one_thread_finds() -> None:
    photos = face_photos()
    frame = _canvas_with(photos[0].image, (1400, 900), (60, 40))  # tiled at (640, 480): 5 passes a frame
    turned = np.ascontiguousarray(np.rot90(photos[1].image, k=2))
    frame[420:420 + turned.shape[0], 800:800 + turned.shape[1]] = turned
    results = {}
    for threads in (1, 2):
        network = _ThreadRecordingNetwork()
        detector = MultiPassDetector(network, tile_size=(640, 480), rotations=(90, 180, 270), rotation_every=1, pass_threads=threads)
        results[threads] = [detector.detect(frame) for _ in range(4)]  # turns 90, 180 (finds the face), 270, then its follow pass
        if threads == 1:
            assert network.threads == {threading.current_thread().name} and network.most_at_once == 1
        else:
            assert all(name.startswith("sdgan-pass") for name in network.threads)
        assert not [t for t in threading.enumerate() if t.name.startswith("sdgan-pass")]  # none outlives its frame
    assert any(len(found) >= 2 for found in results[1])  # the upright face and the upside-down one
    for one, two in zip(results[1], results[2], strict=True):
        assert np.array_equal(one.boxes, two.boxes) and np.array_equal(one.scores, two.scores)
        assert np.array_equal(one.landmarks, two.landmarks)


def test_passes_reject_nonsense() -> None:
    network = CenterFaceDetector(threshold=0.4, detect_size=None)
    with pytest.raises(ValueError, match="pass_threads"):
        MultiPassDetector(network, pass_threads=0)
    with pytest.raises(ValueError):
        MultiPassDetector(network, rotations=(45,))
    with pytest.raises(ValueError):
        MultiPassDetector(network, border=0.9)
    with pytest.raises(ValueError):
        MultiPassDetector(network, tile_size=(16, 16))


# -- SCRFD (optional detector; sdgan_stream.detect_scrfd) -----------------------------------------
def _scrfd_like_model(path: Path, *, batched: bool = False) -> Path:
    """An ONNX graph with SCRFD's interface (3 strides x 2 anchors, scores/boxes/keypoints) whose
    outputs are simple functions of the image: score = mean red level of the cell (-1..1) x a gain
    per stride (0.6, 0.9, 0.7), box distances 1 stride on every side, keypoints at the anchor centre."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    nodes, inits = [], []

    def const(name: str, value: np.ndarray) -> None:
        inits.append(numpy_helper.from_array(np.asarray(value), name))

    const("starts", np.array([0], np.int64)); const("ends", np.array([1], np.int64)); const("axes", np.array([1], np.int64))
    const("zero", np.array(0.0, np.float32)); const("one", np.array(1.0, np.float32))
    const("shape", np.array([1, -1, 1] if batched else [-1, 1], np.int64))
    scores, boxes, points = [], [], []
    for stride, gain in zip((8, 16, 32), (0.6, 0.9, 0.7)):
        const(f"gain{stride}", np.array(gain, np.float32))
        nodes += [
            helper.make_node("AveragePool", ["input.1"], [f"pool{stride}"], kernel_shape=[stride, stride], strides=[stride, stride]),
            helper.make_node("Slice", [f"pool{stride}", "starts", "ends", "axes"], [f"red{stride}"]),
            helper.make_node("Mul", [f"red{stride}", f"gain{stride}"], [f"cell{stride}"]),
            helper.make_node("Concat", [f"cell{stride}", f"cell{stride}"], [f"anchors{stride}"], axis=1),
            helper.make_node("Transpose", [f"anchors{stride}"], [f"hwa{stride}"], perm=[0, 2, 3, 1]),
            helper.make_node("Reshape", [f"hwa{stride}", "shape"], [f"score_{stride}"]),
            helper.make_node("Mul", [f"score_{stride}", "zero"], [f"zeros{stride}"]),
            helper.make_node("Add", [f"zeros{stride}", "one"], [f"ones{stride}"]),
            helper.make_node("Concat", [f"ones{stride}"] * 4, [f"bbox_{stride}"], axis=-1),
            helper.make_node("Concat", [f"zeros{stride}"] * 10, [f"kps_{stride}"], axis=-1),
        ]
        scores.append(f"score_{stride}"); boxes.append(f"bbox_{stride}"); points.append(f"kps_{stride}")

    def output(name: str, width: int) -> object:
        return helper.make_tensor_value_info(name, TensorProto.FLOAT, ([1] if batched else []) + [f"n_{name}", width])

    graph = helper.make_graph(
        nodes, "scrfd_like", [helper.make_tensor_value_info("input.1", TensorProto.FLOAT, [1, 3, "H", "W"])],
        [output(n, 1) for n in scores] + [output(n, 4) for n in boxes] + [output(n, 10) for n in points], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.save(model, str(path))
    return path


def _white_square_image() -> np.ndarray:
    image = np.zeros((96, 160, 3), np.uint8)
    image[32:48, 64:80] = 255  # one stride-16 cell: row 2, column 4
    return image


@pytest.mark.parametrize("batched", [False, True])
def test_scrfd_decoding_on_onnxruntime(tmp_path: Path, batched: bool) -> None:
    model = _scrfd_like_model(tmp_path / "det_fake.onnx", batched=batched)
    detector = ScrfdDetector(model, threshold=0.7, use_insightface=False)
    found = detector.detect(_white_square_image())
    # only the stride-16 level scores above 0.7; its anchor centre (64, 32), box 16 px on every side
    assert len(found) == 1
    assert found.boxes[0].tolist() == pytest.approx([48, 16, 80, 48])
    assert found.scores[0] == pytest.approx(0.9 * 127.5 / 128, abs=1e-3)
    assert np.allclose(found.landmarks[0], [[64, 32]] * 5)
    assert len(ScrfdDetector(model, threshold=0.95, use_insightface=False).detect(_white_square_image())) == 0


@pytest.mark.skipif(importlib.util.find_spec("insightface") is None, reason="insightface is not installed")
def test_scrfd_through_insightface_model_zoo_agrees(tmp_path: Path) -> None:
    model = _scrfd_like_model(tmp_path / "det_fake.onnx")
    ours = ScrfdDetector(model, threshold=0.7, use_insightface=False).detect(_white_square_image())
    zoo = ScrfdDetector(model, threshold=0.7, use_insightface=True).detect(_white_square_image())
    assert len(zoo) == len(ours) == 1
    assert np.allclose(zoo.boxes, ours.boxes, atol=1e-3) and np.allclose(zoo.scores, ours.scores, atol=1e-3)


def test_a_model_pack_folder_resolves_to_its_detector(tmp_path: Path) -> None:
    pack = tmp_path / "pack"
    pack.mkdir()
    (pack / "w600k_r50.onnx").write_bytes(b"recognizer")
    _scrfd_like_model(pack / "det_10g.onnx")
    assert resolve_scrfd_model(pack).name == "det_10g.onnx"
    with pytest.raises(WeightsError, match="not found"):
        resolve_scrfd_model(tmp_path / "missing.onnx")


def test_an_unreadable_detector_model_is_a_one_line_error(tmp_path: Path) -> None:
    from sdgan_stream.api import build_detector

    bad = tmp_path / "det.onnx"
    bad.write_bytes(b"not an onnx file")
    with pytest.raises(WeightsError) as info:
        build_detector(AnonymizeOptions(detector_model=str(bad)))
    assert "det.onnx" in str(info.value) and "\n" not in str(info.value)


def test_cli_stops_on_an_unreadable_detector_model_before_writing(tmp_path: Path, face_clip) -> None:
    import subprocess
    import sys

    bad = tmp_path / "det.onnx"
    bad.write_bytes(b"\x00" * 64)
    out = tmp_path / "out.mp4"
    done = subprocess.run([sys.executable, "-m", "sdgan_stream.cli", "anonymize", str(face_clip.path), "-o", str(out),
                           "--detector-model", str(bad), "--no-progress"], capture_output=True, text=True, timeout=300)
    assert done.returncode == 1
    assert done.stderr.strip().count("\n") == 0 and "det.onnx" in done.stderr
    assert not out.exists()


def _installed_scrfd_model() -> Path | None:
    named = os.environ.get("SDGAN_SCRFD_MODEL")
    if named:
        return Path(named)
    root = Path(os.environ.get("INSIGHTFACE_HOME", "~/.insightface")).expanduser() / "models"
    found = sorted(root.glob("*/det*.onnx")) if root.is_dir() else []
    return found[0] if found else None


@pytest.mark.skipif(_installed_scrfd_model() is None, reason="no SCRFD model here (set SDGAN_SCRFD_MODEL or install an insightface pack)")
@pytest.mark.parametrize("index", [0, 1])
def test_a_real_scrfd_model_finds_the_face_in_real_photos(index: int) -> None:
    photo = face_photos()[index]
    found = ScrfdDetector(_installed_scrfd_model(), threshold=0.5).detect(photo.image)
    assert len(found) == 1 and _iou(found.boxes[0], photo.face_box) > 0.5


class _FaceWhenTurnedOver:
    """A stand-in network: one face, at a fixed score, only in views turned upside down (it sees the
    frame's top-left marker pixel at the bottom right)."""

    def __init__(self, score: float) -> None:
        self.threshold, self.score = 0.1, score

    def detect(self, image: np.ndarray) -> Detections:
        if image[-1, -1, 0] != 255:
            return Detections.empty()
        h, w = image.shape[:2]
        box = np.array([[w / 2 - 10, h / 2 - 10, w / 2 + 10, h / 2 + 10]], np.float32)
        return Detections(box, np.array([self.score], np.float32), np.zeros((1, 5, 2), np.float32))


@pytest.mark.parametrize("margin, kept", [(-0.05, 0), (0.05, 1)])
def test_only_confident_detections_count_from_turned_views(margin: float, kept: int) -> None:
    frame = np.zeros((100, 200, 3), np.uint8)
    frame[0, 0] = 255
    detector = MultiPassDetector(_FaceWhenTurnedOver(TURNED_MIN_SCORE + margin), rotations=(180,), rotation_every=1)
    found = detector.detect(frame)
    assert len(found) == kept
    if kept:
        assert found.boxes[0].tolist() == pytest.approx([90, 40, 110, 60])  # mapped back from the turned view


def test_between_whole_frame_looks_a_face_is_found_in_a_crop_and_a_new_one_a_frame_late() -> None:
    """``whole_every=2`` (files): odd frames look only around the faces found upright on the frame before,
    so a face that appears on one is found on the next frame, which the look-back then covers back."""
    known, newcomer = face_photos()[0].image, face_photos()[1].image
    frames = []
    for i in range(5):
        frame = _canvas_with(known, (1280, 720), (60 + 6 * i, 60))  # moving
        if i >= 1:  # appears on frame 1, far from the first face
            h, w = newcomer.shape[:2]
            frame[720 - h - 20 : 700, 1280 - w - 20 : 1260] = newcomer
        frames.append(frame)
    network = _CountingNetwork()
    detector = MultiPassDetector(network, rotation_every=0, whole_every=2)
    found = [len(detector.detect(frame)) for frame in frames]
    assert found == [1, 1, 2, 2, 2]  # the newcomer a frame late; both followed on frame 3
    full = 1280 * 720
    assert network.pixels[0] == network.pixels[2] == full and network.pixels[1] < full / 2
    assert len(network.pixels) == 6 and max(network.pixels[3:5]) < full / 2 and network.pixels[5] == full  # frame 3: a crop per face
    every = MultiPassDetector(_CountingNetwork(), rotation_every=0)  # the default: the whole frame on every frame
    assert [len(every.detect(frame)) for frame in frames[:2]] == [1, 2]
    with pytest.raises(ValueError, match="whole_every"):
        MultiPassDetector(network, whole_every=0)


@pytest.mark.parametrize(("live", "lookback", "track", "method", "every", "expected"), [
    (False, 0.5, True, "blur", 2, 2), (True, 0.5, True, "blur", 2, 1), (False, 0.0, True, "blur", 2, 1),
    (False, 0.5, False, "blur", 2, 1), (False, 0.5, True, "sdgan", 3, 3), (False, 0.5, True, "blur", 1, 1),
    (True, 0.5, True, "blur", 3, 1)])
def test_only_jobs_whose_look_back_covers_a_late_find_search_the_whole_frame_less_often(live, lookback, track, method, every,
                                                                                         expected) -> None:
    """A file job searches the whole frame every N frames as asked; a live source, or a job without the look-back,
    always on every frame."""
    from fractions import Fraction

    from sdgan_stream.anonymize import CoverRenderer
    from sdgan_stream.api import build_anonymizer
    from sdgan_stream.types import VideoInfo

    options = AnonymizeOptions(lookback_seconds=lookback, track=track, method=method, whole_frame_every=every)
    info = VideoInfo(width=320, height=240, time_base=Fraction(1, 25), average_rate=Fraction(25))
    anonymizer = build_anonymizer(options, info, live=live, renderer=CoverRenderer())
    assert anonymizer.detector.whole_every == expected


def test_a_file_jobs_detector_handed_to_a_live_job_searches_every_frame() -> None:
    from fractions import Fraction

    from sdgan_stream.anonymize import CoverRenderer
    from sdgan_stream.api import build_anonymizer, build_detector
    from sdgan_stream.types import VideoInfo

    options = AnonymizeOptions(whole_frame_every=2)
    detector = build_detector(options)
    assert detector.whole_every == 2 and build_detector(options, live=True).whole_every == 1
    info = VideoInfo(width=320, height=240, time_base=Fraction(1, 25), average_rate=Fraction(25))
    build_anonymizer(options, info, live=True, detector=detector, renderer=CoverRenderer())
    assert detector.whole_every == 1  # no look-back to cover a late find


def test_a_detector_handed_to_a_new_stream_starts_its_schedule_again() -> None:
    """A cluster worker keeps its detector from video to video: each video starts with a whole-frame look and
    no faces followed from the last one."""
    from fractions import Fraction

    from sdgan_stream.anonymize import CoverRenderer
    from sdgan_stream.api import build_anonymizer, build_detector
    from sdgan_stream.types import VideoInfo

    detector = build_detector(AnonymizeOptions(whole_frame_every=2))
    detector.detect(np.zeros((240, 320, 3), np.uint8))
    detector._upright = np.array([[10.0, 10.0, 60.0, 60.0]])
    info = VideoInfo(width=320, height=240, time_base=Fraction(1, 25), average_rate=Fraction(25))
    build_anonymizer(AnonymizeOptions(), info, detector=detector, renderer=CoverRenderer())
    assert detector._frame == 0 and len(detector._upright) == 0


# -- the pyramid: the whole frame again, shrunk, for smeared faces ---------------------------------
def test_coarse_passes_look_at_the_whole_frame_at_fractions_of_the_detection_scale() -> None:
    from sdgan_stream.detect_passes import plan_coarse_passes

    half, quarter = plan_coarse_passes(1920, 1080, (0.25, 0.5), border=0.02)  # coarsest last, whatever the order given
    assert (half.scale, quarter.scale) == (0.5, 0.25) and half.region == quarter.region == (0, 0, 1920, 1080)
    assert half.coarse and quarter.coarse and half.rotation == 0
    assert half.pad == round(0.02 * 1080 * 0.5)  # the border pad in the view's pixels, as the main pass's
    # fractions of the detection scale: a frame shrunk into 960x960 is looked at again at 1/4 and 1/8
    assert [p.scale for p in plan_coarse_passes(1920, 1080, (0.5, 0.25), detect_size=(960, 960))] == [0.25, 0.125]
    # a tiled frame's main passes already look at the whole frame at 1/2: only 1/4 is added
    assert [p.scale for p in plan_coarse_passes(7680, 4320, (0.5, 0.25), tile_size=(3840, 2160))] == [0.25]
    # a view under 32 px a side is not run
    assert [p.scale for p in plan_coarse_passes(160, 100, (0.5, 0.25))] == [0.5]
    assert plan_coarse_passes(1920, 1080, ()) == []


@pytest.mark.parametrize("precision", ["fp32", "int8"])
def test_the_pyramid_finds_a_motion_blurred_face_that_full_resolution_misses(precision: str) -> None:
    """A horizontal motion blur of 0.4 face widths (a head turning fast at a slow shutter): CenterFace finds
    nothing at full resolution, and the face in the view shrunk to a quarter."""
    import cv2

    photo = face_photos()[1]
    length = int(0.4 * (photo.face_box[2] - photo.face_box[0]))
    kernel = np.zeros((length, length), np.float32)
    kernel[length // 2] = 1.0 / length
    smeared = cv2.filter2D(photo.image, -1, kernel, borderType=cv2.BORDER_REPLICATE)

    def detector(pyramid: tuple[float, ...]) -> MultiPassDetector:
        return MultiPassDetector(CenterFaceDetector(threshold=0.1, detect_size=None, precision=precision), pyramid=pyramid,
                                 rotation_every=0)

    alone = detector(()).detect(smeared)
    assert not (alone.scores >= 0.2).any(), alone.scores
    found = detector((0.5, 0.25)).detect(smeared)
    best = int(np.argmax(found.scores))
    assert found.scores[best] >= 0.25 and _iou(found.boxes[best], photo.face_box) > 0.7


class _ScaleNetwork:
    """A face at frame box (80, 80, 160, 160) that views at full size see at ``fine_score`` and coarse views
    (at most half size) at 0.6, and a second face at (400, 200, 600, 400) that only coarse views see, at
    ``coarse_score`` and ``coarse_width`` px wide in an 800 px wide frame."""

    def __init__(self, fine_score: float, coarse_score: float = 0.5, coarse_width: float = 200) -> None:
        self.threshold, self.fine_score = 0.1, fine_score
        self.coarse_score, self.coarse_width = coarse_score, coarse_width
        self.sizes: list[tuple[int, int]] = []

    def detect(self, image: np.ndarray) -> Detections:
        h, w = image.shape[:2]
        self.sizes.append((w, h))
        s = w / 800  # frames are 800 px wide, no border pad
        if s > 0.75:
            return Detections(np.array([[80, 80, 160, 160]], np.float32), np.array([self.fine_score], np.float32),
                              np.full((1, 5, 2), 120, np.float32))
        boxes = np.array([[84 * s, 76 * s, 168 * s, 164 * s], [400 * s, 200 * s, (400 + self.coarse_width) * s, 400 * s]], np.float32)
        return Detections(boxes, np.array([0.6, self.coarse_score], np.float32), np.zeros((2, 5, 2), np.float32))


@pytest.mark.parametrize("fine_score", [0.15, 0.9])
def test_a_coarse_pass_adds_only_the_faces_the_finer_passes_missed(fine_score: float) -> None:
    network = _ScaleNetwork(fine_score)
    found = MultiPassDetector(network, pyramid=(0.5,), rotation_every=0).detect(np.zeros((600, 800, 3), np.uint8))
    assert network.sizes == [(800, 600), (400, 300)]
    order = np.argsort(found.boxes[:, 0])
    boxes, scores, points = found.boxes[order], found.scores[order], found.landmarks[order]
    assert boxes.tolist() == [[80, 80, 160, 160], [400, 200, 600, 400]]  # the fine box kept as it is; the other mapped back
    assert points[0].tolist() == np.full((5, 2), 120).tolist()  # and its points
    assert scores.tolist() == pytest.approx([max(fine_score, 0.6), 0.5])  # the better score of the two views


@pytest.mark.parametrize(("score", "width", "kept"), [(0.5, 200, True), (0.24, 200, False), (0.5, 46, False), (0.5, 48, True)])
def test_coarse_finds_count_only_when_confident_and_not_small_in_their_view(score: float, width: float, kept: bool) -> None:
    """On sharp faces the coarse views' false finds scored under 0.25 or were under 24 px in their view (hair
    at the frame's top edge at 1/4 size): each would have become a false track."""
    from sdgan_stream.detect_passes import COARSE_MIN_FACE, COARSE_MIN_SCORE

    assert (COARSE_MIN_SCORE, COARSE_MIN_FACE) == (0.25, 24)  # 46 px at 1/2 is 23 px in the view, 48 px is 24
    found = MultiPassDetector(_ScaleNetwork(0.9, score, width), pyramid=(0.5,), rotation_every=0).detect(np.zeros((600, 800, 3), np.uint8))
    assert len(found) == (2 if kept else 1)


def test_coarse_passes_are_upright_and_run_only_on_whole_frame_looks() -> None:
    detector = MultiPassDetector(_ScaleNetwork(0.9), pyramid=(0.5, 0.25), rotations=(180,), rotation_every=1, whole_every=2)
    first = detector.passes_for(800, 600, 0)
    assert sorted(p.scale for p in first if p.coarse) == [0.25, 0.5]
    assert all(p.rotation == 0 for p in first if p.coarse) and any(p.rotation for p in first)  # the turn: main passes only
    detector.detect(np.zeros((600, 800, 3), np.uint8))  # finds the face: frame 1 looks in a crop around it
    between = detector.passes_for(800, 600, 1)
    assert between and not any(p.coarse for p in between) and all(p.scale == 1.0 for p in between)
    with pytest.raises(ValueError, match="pyramid"):
        MultiPassDetector(_ScaleNetwork(0.9), pyramid=(1.0,))


def test_the_pyramid_leaves_a_sharp_face_as_the_full_pass_finds_it() -> None:
    """Where the full-resolution pass finds every face, the pyramid changes no box or point (the tracker,
    alignment and generated faces of such a video stay as they were)."""
    frame = _canvas_with(face_photos()[0].image, (640, 360), (200, 60))
    plain = MultiPassDetector(CenterFaceDetector(threshold=0.1, detect_size=None), rotation_every=0).detect(frame)
    pyramid = MultiPassDetector(CenterFaceDetector(threshold=0.1, detect_size=None), pyramid=(0.5, 0.25), rotation_every=0).detect(frame)
    assert len(plain) == len(pyramid) == 1
    assert pyramid.boxes.tolist() == plain.boxes.tolist() and pyramid.landmarks.tolist() == plain.landmarks.tolist()
    assert pyramid.scores[0] >= plain.scores[0]


def test_the_pyramid_option_parses_from_the_command_line_and_a_config_file(tmp_path: Path) -> None:
    from sdgan_stream.cli import build_parser
    from sdgan_stream.cli_options import options_from_args
    from sdgan_stream.config import load_options_file, parse_pyramid

    assert AnonymizeOptions().pyramid == (0.5, 0.25)
    assert parse_pyramid("none") == () and parse_pyramid("0.5") == (0.5,) and parse_pyramid("0.5,0.25") == (0.5, 0.25)
    for bad in ("1.5", "half", "0.5,-0.1"):
        with pytest.raises(ValueError, match="pyramid"):
            parse_pyramid(bad)
    args = build_parser().parse_args(["anonymize", "in.mp4", "--pyramid", "none"])
    assert options_from_args(args).pyramid == ()
    with pytest.raises(SystemExit):
        build_parser().parse_args(["anonymize", "in.mp4", "--pyramid", "2"])
    config = tmp_path / "options.toml"
    config.write_text("pyramid = [0.5]\n")
    assert load_options_file(config)["pyramid"] == (0.5,)
    with pytest.raises(ValueError, match="pyramid"):
        AnonymizeOptions(pyramid=(0.5, 1.0))


def test_the_pyramid_gives_a_close_up_face_a_box_that_spans_it() -> None:
    """A face 600 px wide on a 720p frame (a webcam close-up): at full size CenterFace finds it by a part,
    a box half its width; a shrunk view sees the whole face and the box grows to hold it."""
    import cv2

    photo = face_photos()[1]
    factor = 600 / (photo.face_box[2] - photo.face_box[0])
    image = cv2.resize(photo.image, None, fx=factor, fy=factor, interpolation=cv2.INTER_CUBIC)
    canvas = np.full((max(720, image.shape[0]), max(1280, image.shape[1]), 3), 110, np.uint8)
    left = (canvas.shape[1] - image.shape[1]) // 2
    canvas[: image.shape[0], left : left + image.shape[1]] = image
    frame = np.ascontiguousarray(canvas[:720, :1280])  # the chin runs off the bottom
    truth_x1, truth_x2 = photo.face_box[0] * factor + left, photo.face_box[2] * factor + left

    def widest(pyramid: tuple[float, ...]) -> float:
        found = MultiPassDetector(CenterFaceDetector(threshold=0.1, detect_size=None), pyramid=pyramid, rotation_every=0).detect(frame)
        inside = [b for b in found.boxes if truth_x1 - 50 <= (b[0] + b[2]) / 2 <= truth_x2 + 50 and b[1] > 200]  # the face, not hair
        return max((min(b[2], truth_x2) - max(b[0], truth_x1)) / (truth_x2 - truth_x1) for b in inside)

    assert widest(()) < 0.6
    assert widest((0.5, 0.25)) > 0.85


def test_a_coarse_find_lifts_only_the_finer_box_it_matches_best() -> None:
    """A face turned 120 degrees (recall benchmark, frame 1): the full-size view gave it a box at 0.40 and a
    weak second one at 0.16; both shrunk views found it at 0.76 and 0.24. The 0.40 box takes the 0.76; the
    second box stays weak (lifted, it became a second track whose widened prediction covered 30% of the frame)."""
    from sdgan_stream.detect_passes import fold_coarse

    def found(boxes: list[list[float]], scores: list[float]) -> Detections:
        return Detections(np.array(boxes, np.float32), np.array(scores, np.float32), np.zeros((len(boxes), 5, 2), np.float32))

    fine = found([[827, 675, 1077, 829], [905, 609, 1174, 791]], [0.40, 0.16])
    coarse = found([[823, 657, 1124, 810], [860, 622, 1125, 820]], [0.76, 0.24])
    folded = fold_coarse(fine, coarse)
    assert folded.boxes.tolist() == fine.boxes.tolist()  # nothing added: both coarse finds are this face
    assert folded.scores.tolist() == pytest.approx([0.76, 0.16])


def test_live_sources_look_through_the_pyramid_every_other_frame_and_keep_what_it_found_covered() -> None:
    """A live filter drops frames when it is slow: it runs the coarse views on every other frame. A face only
    they find (smeared) stays covered on the frame between, by its track."""
    import time
    from fractions import Fraction

    from sdgan_stream.anonymize import CoverRenderer
    from sdgan_stream.api import build_anonymizer, build_detector
    from sdgan_stream.types import VideoFrame, VideoInfo

    assert build_detector(AnonymizeOptions(), live=True).pyramid_every == 2
    assert build_detector(AnonymizeOptions()).pyramid_every == 1
    detector = MultiPassDetector(_ScaleNetwork(0.9), pyramid=(0.5,), pyramid_every=2, rotation_every=0)
    assert [any(p.coarse for p in detector.passes_for(800, 600, k)) for k in range(4)] == [True, False, True, False]
    with pytest.raises(ValueError, match="pyramid_every"):
        MultiPassDetector(_ScaleNetwork(0.9), pyramid=(0.5,), pyramid_every=0)

    info = VideoInfo(width=800, height=600, time_base=Fraction(1, 25), average_rate=Fraction(25))
    anonymizer = build_anonymizer(AnonymizeOptions(), info, live=True, detector=detector, renderer=CoverRenderer())
    for k in range(4):
        [item] = anonymizer.analyse_frame(VideoFrame(np.zeros((600, 800, 3), np.uint8), k, k, Fraction(1, 25), time.monotonic()))
        smeared = [f for f in item.faces if f.box[0] < 420 and f.box[2] > 580 and f.box[1] < 220 and f.box[3] > 380]
        assert smeared, f"frame {k}: the face only the coarse view finds is not covered"
