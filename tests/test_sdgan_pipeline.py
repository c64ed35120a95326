"""The default method end to end: generated faces from the packaged starter weights, fail-closed."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from sdgan_stream import anonymize_video
from sdgan_stream.anonymize import CoverRenderer, FrameAnonymizer
from sdgan_stream.config import AnonymizeOptions
from sdgan_stream.render import SdganRenderer
from sdgan_stream.samples import SyntheticClip, face_photos
from sdgan_stream.types import Detections, Face, VideoFrame

from .conftest import audio_packets, read_frames
from .test_file_anonymizer import _assert_faces_covered


@pytest.fixture(scope="module")
def renderer() -> SdganRenderer:
    return SdganRenderer.from_options(AnonymizeOptions(backend="eager", device="cpu"))


def test_default_method_is_sdgan_and_replaces_every_face(face_clip: SyntheticClip, tmp_path: Path) -> None:
    assert AnonymizeOptions().method == "sdgan"
    out = tmp_path / "sdgan.mp4"
    report = anonymize_video(face_clip.path, out, seed=3, detect_size=(640, 640))
    original, pts_in, _ = read_frames(face_clip.path)
    result, pts_out, _ = read_frames(out)
    assert pts_out == pts_in and audio_packets(out) == audio_packets(face_clip.path)
    assert report.stats.get("faces_sdgan", 0) >= face_clip.frame_count  # generated, not covered
    _assert_faces_covered(original, result, face_clip)


def _face_on_canvas() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    photo = face_photos()[0]
    from sdgan_stream.detect import CenterFaceDetector

    detections = CenterFaceDetector(threshold=0.4, detect_size=None).detect(photo.image)
    return photo.image.copy(), detections.boxes[0], detections.landmarks[0]


def test_same_seed_same_face_and_different_seed_different_face(renderer: SdganRenderer) -> None:
    image, box, landmarks = _face_on_canvas()
    outputs = []
    for seed in (5, 5, 6):
        canvas = image.copy()
        outcomes = renderer.render(canvas, [Face(box=box, score=0.9, landmarks=landmarks, identity_seed=seed)])
        assert [o.method for o in outcomes] == ["sdgan"]
        outputs.append(canvas)
    assert np.array_equal(outputs[0], outputs[1])
    x1, y1, x2, y2 = box.astype(int)
    assert np.abs(outputs[0][y1:y2, x1:x2].astype(int) - outputs[2][y1:y2, x1:x2].astype(int)).mean() > 2.0


def test_faces_the_generator_cannot_serve_are_covered(renderer: SdganRenderer) -> None:
    image = np.full((200, 300, 3), 128, np.uint8)
    image[50:60, 100:108] = 255  # a "face" 8 px wide: far too small to generate
    tiny = Face(box=np.array([100, 50, 108, 60], np.float32), score=0.9)
    outcomes = renderer.render(image, [tiny])
    assert outcomes[0].method == "solid" and outcomes[0].reason == "too_small"
    assert (image[52:58, 102:106] == 0).all()


class _ExplodingBackend:
    name, device, precision = "exploding", "cpu", "fp32"

    def generate(self, masked, semantic, identity):
        raise RuntimeError("out of memory")


class _FixedDetector:
    def __init__(self, box, landmarks):
        self.box, self.landmarks = box, landmarks

    def detect(self, image):
        return Detections(boxes=self.box[None], scores=np.array([0.9], np.float32), landmarks=self.landmarks[None])


def test_a_generator_error_never_lets_the_face_through(renderer: SdganRenderer) -> None:
    image, box, landmarks = _face_on_canvas()
    broken = SdganRenderer(backend=_ExplodingBackend(), config=renderer.config, landmarker=renderer.landmarker, fallback=CoverRenderer())
    anonymizer = FrameAnonymizer(detector=_FixedDetector(box, landmarks), renderer=broken)
    out = anonymizer.push(VideoFrame(image=image.copy(), index=0, pts=0, time_base=None))[0]
    x1, y1, x2, y2 = box.astype(int)
    assert (out.image[y1 + 10 : y2 - 10, x1 + 10 : x2 - 10] == 0).all()
    assert anonymizer.stats["fallback_renderer_error"] == 1
