import numpy as np
import pytest

from sdgan_stream.detect import CenterFaceDetector, nms
from sdgan_stream.errors import BackendUnavailableError
from sdgan_stream.samples import face_photos


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    w = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    h = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = w * h
    return inter / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter)


@pytest.fixture(scope="module")
def detector() -> CenterFaceDetector:
    return CenterFaceDetector(threshold=0.4, detect_size=(640, 640))


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


def test_missing_provider_is_an_error_naming_the_available_ones() -> None:
    with pytest.raises(BackendUnavailableError, match="CPUExecutionProvider"):
        CenterFaceDetector(provider="NoSuchExecutionProvider")


def test_nms_keeps_the_best_of_overlapping_boxes() -> None:
    boxes = np.array([[0, 0, 10, 10], [1, 1, 11, 11], [50, 50, 60, 60]], np.float32)
    keep = nms(boxes, np.array([0.5, 0.9, 0.7], np.float32), 0.3)
    assert keep.tolist() == [1, 2]
    assert nms(np.zeros((0, 4), np.float32), np.zeros(0, np.float32), 0.3).shape == (0,)
