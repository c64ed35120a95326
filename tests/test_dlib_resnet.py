"""dlib's face recognition network read from its file and run in onnxruntime: the same descriptor as dlib's."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from sdgan_stream.dlib_resnet import CHIP_SIZE, DlibResNet, build_onnx, read_dlib_layers
from sdgan_stream.errors import WeightsError
from sdgan_stream.landmarks import dlib_model_path
from sdgan_stream.recognizer import FaceRecognizer
from sdgan_stream.samples import face_photos

MODEL = "dlib_face_recognition_resnet_model_v1.dat"


@pytest.fixture(scope="module")
def recognizer() -> FaceRecognizer:
    return FaceRecognizer()


def test_descriptors_equal_dlibs_own(recognizer: FaceRecognizer) -> None:
    import dlib

    dlibs_own = dlib.face_recognition_model_v1(str(dlib_model_path(MODEL)))
    rng = np.random.default_rng(0)
    checked = 0
    for photo in face_photos():
        points = recognizer.shape(photo.image, photo.face_box)
        for shift in (0, 3):  # a second cut of the same face: another chip, same agreement
            moved = points + rng.uniform(-shift, shift, points.shape).astype(np.float32)
            ours = recognizer.embed(photo.image, moved)
            theirs = np.asarray(dlibs_own.compute_face_descriptor(photo.image, recognizer._detection(moved.astype(np.float64))), np.float32)
            assert ours.shape == (128,) and ours.dtype == np.float32
            assert np.abs(ours - theirs).max() < 1e-4, np.abs(ours - theirs).max()
            checked += 1
    assert checked == 2 * len(face_photos())


def test_batched_embeddings_equal_single_ones(recognizer: FaceRecognizer) -> None:
    photo = face_photos()[0]
    points = recognizer.shape(photo.image, photo.face_box)
    both = np.stack([points, points + 2.0])
    batch = recognizer.embed_many(photo.image, both)
    assert batch.shape == (2, 128)
    for row, p in zip(batch, both):
        assert np.abs(row - recognizer.embed(photo.image, p)).max() < 1e-5
    assert recognizer.embed_many(photo.image, np.zeros((0, 68, 2))).shape == (0, 128)


def test_layers_read_in_order_and_checked() -> None:
    layers = read_dlib_layers(dlib_model_path(MODEL))
    kinds = [layer.kind for layer in layers]
    assert kinds[:5] == ["input", "con", "affine", "relu", "max_pool"] and kinds[-2:] == ["avg_pool", "fc"]
    first = layers[1]
    assert first.weights.shape == (32, 3, 7, 7) and first.stride == (2, 2) and first.padding == (0, 0)
    assert layers[-1].weights.shape == (256, 128)
    with pytest.raises(WeightsError, match="anet_type"):
        build_onnx(layers[:-1])  # a network of another shape is refused, not run


def test_wrong_files_and_chips_refused(tmp_path: Path) -> None:
    other = tmp_path / "other.dat"
    other.write_bytes(b"\x01\x05hello" + bytes(100))
    with pytest.raises(WeightsError):
        DlibResNet(other)
    with pytest.raises(WeightsError):
        DlibResNet(tmp_path / "missing.dat")
    network = DlibResNet(dlib_model_path(MODEL))
    with pytest.raises(ValueError, match="chips"):
        network.descriptors(np.zeros((1, CHIP_SIZE - 1, CHIP_SIZE, 3), np.uint8))
