"""The default method end to end: generated faces from the packaged starter weights, fail-closed."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from sdgan_stream import anonymize_video
from sdgan_stream.anonymize import CoverRenderer, FrameAnonymizer
from sdgan_stream.config import AnonymizeOptions
from sdgan_stream.recognizer import SAME_PERSON_DISTANCE, FaceRecognizer
from sdgan_stream.render import SdganRenderer, use_device_frames
from sdgan_stream.samples import SyntheticClip, face_photos
from sdgan_stream.types import Detections, Face, VideoFrame

from .conftest import audio_packets, read_frames


@pytest.fixture(scope="module")
def renderer() -> SdganRenderer:
    return SdganRenderer.from_options(AnonymizeOptions(backend="eager", device="cpu"))


def _sdgan_clip(face_clip: SyntheticClip, tmp_path: Path):
    out = tmp_path / "sdgan.mp4"
    # generation is under test, not recall: the single-pass detector at 0.4 (no weak extra detections to cover)
    report = anonymize_video(face_clip.path, out, method="sdgan", seed=3, detect_size=(640, 640), threshold=0.4,
                             low_threshold=0.15, rotation_every=0, border=0.0)
    return out, report


def test_sdgan_replaces_every_face_and_keeps_timing_and_audio(face_clip: SyntheticClip, tmp_path: Path) -> None:
    out, report = _sdgan_clip(face_clip, tmp_path)
    original, pts_in, _ = read_frames(face_clip.path)
    result, pts_out, _ = read_frames(out)
    assert pts_out == pts_in and audio_packets(out) == audio_packets(face_clip.path)
    assert report.stats.get("faces_sdgan", 0) >= face_clip.frame_count  # generated, not covered
    assert not any(k.startswith("fallback_") for k in report.stats)


def test_sdgan_hides_identity_from_an_independent_recognizer(face_clip: SyntheticClip, tmp_path: Path) -> None:
    # On this small clip the starter weights pass (lowest distance 0.69 with seed 3; 0.60-0.64 with seeds
    # 4-6). On larger faces they do not always: see the README, "The state of the generator".
    out, report = _sdgan_clip(face_clip, tmp_path)
    original, _, _ = read_frames(face_clip.path)
    result, _, _ = read_frames(out)
    # The judge is dlib's recognizer, a model the generator never trains with: at every true face
    # position the anonymized face must be another person (distance >= 0.6, dlib's own threshold).
    recognizer = FaceRecognizer()
    for index in range(0, len(original), 5):
        for box in face_clip.face_boxes[index]:
            reference = recognizer.embed(original[index], recognizer.shape(original[index], box))
            found = recognizer.detect_near(result[index], box)
            points = recognizer.shape(result[index], found.box if found is not None else box)
            distance = float(np.linalg.norm(recognizer.embed(result[index], points) - reference))
            assert distance >= SAME_PERSON_DISTANCE, f"frame {index}: the original identity is still recognizable ({distance:.2f})"


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
    assert outcomes[0].method == "blur" and outcomes[0].reason == "too_small"  # the default fallback cover
    assert (image[50:60, 100:108] != 255).all()  # every pixel of the white "face" changed...
    assert image[48, 98:110].min() > 128  # ...and spread into its surroundings: blurred, not passed through


class _ExplodingBackend:
    name, device, precision = "exploding", "cpu", "fp32"

    def generate(self, masked, semantic, identity):
        raise RuntimeError("out of memory")

    def generate_tensors(self, masked, semantic, identity):
        raise RuntimeError("CUDA out of memory")


class _FixedDetector:
    def __init__(self, box, landmarks):
        self.box, self.landmarks = box, landmarks

    def detect(self, image):
        return Detections(boxes=self.box[None], scores=np.array([0.9], np.float32), landmarks=self.landmarks[None])


@pytest.mark.parametrize("frame_path", ["host", "device"])
def test_a_generator_error_never_lets_the_face_through(renderer: SdganRenderer, frame_path: str) -> None:
    image, box, landmarks = _face_on_canvas()
    broken = SdganRenderer(backend=_ExplodingBackend(), config=renderer.config, landmarker=renderer.landmarker,
                           fallback=CoverRenderer(), frame_path=frame_path)
    assert (broken._device_frames is not None) == (frame_path == "device")
    anonymizer = FrameAnonymizer(detector=_FixedDetector(box, landmarks), renderer=broken)
    out = anonymizer.push(VideoFrame(image=image.copy(), index=0, pts=0, time_base=None))[0]
    x1, y1, x2, y2 = box.astype(int)
    assert (out.image[y1 + 10 : y2 - 10, x1 + 10 : x2 - 10] == 0).all()
    assert anonymizer.stats["fallback_renderer_error"] == 1


@pytest.mark.parametrize("frame_path", ["host", "device"])
def test_temporal_smoothing_steadies_a_tracked_face_and_forgets_ended_tracks(renderer: SdganRenderer, frame_path: str) -> None:
    image, box, landmarks = _face_on_canvas()
    jitter = np.array([[1.5, -1.0]] * 5, np.float32)

    def second_frame_change(smoothing: float) -> float:
        steady = SdganRenderer(backend=renderer.backend, config=renderer.config, landmarker=renderer.landmarker,
                               fallback=CoverRenderer(), temporal_smoothing=smoothing, frame_path=frame_path)
        assert (steady._device_frames is not None) == (frame_path == "device")
        first, second = image.copy(), image.copy()
        steady.render(first, [Face(box=box, score=0.9, landmarks=landmarks, track_id=1, identity_seed=4)])
        steady.render(second, [Face(box=box + 1.0, score=0.9, landmarks=landmarks + jitter, track_id=1, identity_seed=4)])
        assert {track for track, _ in steady._previous} == {1}
        steady.render(image.copy(), [Face(box=box, score=0.9, landmarks=landmarks, track_id=2, identity_seed=4)])
        assert {track for track, _ in steady._previous} == {2}  # track 1 ended: its crop is gone
        x1, y1, x2, y2 = box.astype(int)
        return float(np.abs(first[y1:y2, x1:x2].astype(int) - second[y1:y2, x1:x2].astype(int)).mean())

    assert second_frame_change(0.5) < second_frame_change(0.0)


def test_the_device_frame_path_renders_what_the_host_path_does(renderer: SdganRenderer) -> None:
    # The GPU path (one upload, torch warps, one download) run on CPU tensors: same faces, same places,
    # over two frames of one track (temporal smoothing on both paths).
    image, box, landmarks = _face_on_canvas()
    frames = [[Face(box=box + shift, score=0.9, landmarks=landmarks + shift, identity_seed=9, track_id=3)] for shift in (0.0, 1.5)]
    results = {}
    for frame_path in ("host", "device"):
        path_renderer = SdganRenderer(backend=renderer.backend, config=renderer.config, landmarker=renderer.landmarker,
                                      fallback=CoverRenderer(), frame_path=frame_path, batch_size=1)
        assert (path_renderer._device_frames is not None) == (frame_path == "device")
        canvases = []
        for faces in frames:
            canvas = image.copy()
            assert [o.method for o in path_renderer.render(canvas, faces)] == ["sdgan"]
            canvases.append(canvas)
        results[frame_path] = (canvases, path_renderer.last_generated[0][1])
    (host, host_crop), (device, device_crop) = results["host"], results["device"]
    x1, y1, x2, y2 = box.astype(int)
    for host_frame, device_frame in zip(host, device):
        changed = np.abs(host_frame[y1:y2, x1:x2].astype(int) - image[y1:y2, x1:x2]).mean()
        difference = np.abs(device_frame[y1:y2, x1:x2].astype(int) - host_frame[y1:y2, x1:x2])
        assert changed > 10 and difference.mean() < 0.1 * changed  # the face changed, and the same way on both paths
    assert device_crop.shape == host_crop.shape and np.abs(device_crop.astype(int) - host_crop).mean() < 3


class _BackendOn:
    def __init__(self, device: str) -> None:
        self.device = device


def test_the_device_frame_path_is_chosen_on_cuda_only_unless_asked() -> None:
    assert use_device_frames(_BackendOn("cuda"), "auto") and not use_device_frames(_BackendOn("cpu"), "auto")
    assert use_device_frames(_BackendOn("cpu"), "device") and not use_device_frames(_BackendOn("cuda"), "host")
    with pytest.raises(ValueError, match="frame path"):
        use_device_frames(_BackendOn("cpu"), "gpu")
