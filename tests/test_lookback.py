"""LookbackBuffer: faces first detected late are covered in the frames held before."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sdgan_stream.lookback import LookbackBuffer
from sdgan_stream.track import FaceTracker
from sdgan_stream.types import Detections, Face


def square(cx: float, cy: float, size: float) -> np.ndarray:
    return np.array([cx - size / 2, cy - size / 2, cx + size / 2, cy + size / 2], np.float32)


def face(box: np.ndarray, track_id: int | None = 1, source: str = "detected") -> Face:
    box = np.asarray(box, np.float32)
    landmarks = box[:2] + np.array([[0.3, 0.4], [0.7, 0.4], [0.5, 0.6], [0.35, 0.8], [0.65, 0.8]]) * (box[2:] - box[:2])
    return Face(box=box, score=0.9, landmarks=landmarks.astype(np.float32), track_id=track_id,
                identity_seed=1000 + (track_id or 0), source=source)  # type: ignore[arg-type]


def contained(inner: np.ndarray, outer: np.ndarray) -> float:
    """Fraction of ``inner`` inside ``outer``."""
    ix = max(0.0, min(inner[2], outer[2]) - max(inner[0], outer[0]))
    iy = max(0.0, min(inner[3], outer[3]) - max(inner[1], outer[1]))
    return ix * iy / float((inner[2] - inner[0]) * (inner[3] - inner[1]))


def run(buffer: LookbackBuffer, frames: list[list[Face]]) -> list[tuple[int, list[Face]]]:
    out = []
    for index, faces in enumerate(frames):
        out += buffer.push(index, faces)
    return out + buffer.flush()


def test_zero_frames_is_pass_through() -> None:
    buffer = LookbackBuffer(max_frames=0)
    faces = [face(square(50, 50, 20))]
    [(item, got)] = buffer.push("frame", faces)
    assert item == "frame" and got is faces
    assert buffer.flush() == [] and len(buffer) == 0


def test_face_detected_late_is_covered_before() -> None:
    """A still face first detected at frame 6: frames 1..5 (still held) get a look-back face."""
    buffer = LookbackBuffer(max_frames=5)
    box = square(100, 100, 40)
    frames = [[] for _ in range(6)] + [[face(box)] for _ in range(4)]
    out = run(buffer, frames)
    assert [item for item, _ in out] == list(range(10))
    for index, faces in out:
        if index == 0:
            assert faces == []  # left the buffer before the face was seen
        elif index < 6:
            [lb] = faces
            assert lb.source == "lookback" and lb.track_id == 1 and lb.identity_seed == 1001
            assert contained(box, lb.box) == 1.0
            assert lb.extra["frames_before_detection"] == 6 - index
            assert lb.landmarks is not None and lb.landmarks.shape == (5, 2)
        else:
            assert [f.source for f in faces] == ["detected"]
    widths = [out[i][1][0].width for i in range(1, 6)]
    assert widths == sorted(widths, reverse=True)  # wider further back in time


def test_moving_face_is_followed_back_along_its_velocity() -> None:
    """A face walking in from the left, detected from frame 8 on: earlier frames use its velocity.

    Frame 2 leaves the buffer when frame 8 arrives, before any velocity is known: it only gets the
    first box, widened. Frames 3..7 leave after two or more detections.
    """
    buffer = LookbackBuffer(max_frames=6)
    truth = [square(40 + 9 * t, 200, 50) for t in range(16)]
    frames = [[] if t < 8 else [face(truth[t])] for t in range(16)]
    out = dict(run(buffer, frames))
    assert contained(truth[8], out[2][0].box) == 1.0
    for t in range(3, 8):
        [lb] = out[t]
        assert contained(truth[t], lb.box) >= 0.95, (t, lb.box, truth[t])
        assert lb.width >= 50 and lb.height >= 50  # never narrower than the first box


def test_no_lookback_face_where_the_track_already_is() -> None:
    """A track that was already on an earlier frame (e.g. after a frame whose analysis failed) is not doubled."""
    buffer = LookbackBuffer(max_frames=4)
    box = square(60, 60, 30)
    frames = [[face(box)], [face(box)], [], [face(box)], [face(box)]]
    out = dict(run(buffer, frames))
    assert [len(out[t]) for t in range(5)] == [1, 1, 1, 1, 1]
    assert out[2][0].source == "lookback"
    assert all(f.source == "detected" for t in (0, 1, 3, 4) for f in out[t])


def test_faces_without_track_are_left_alone() -> None:
    buffer = LookbackBuffer(max_frames=3)
    frames = [[], [], [face(square(50, 50, 20), track_id=None, source="untracked")]]
    out = run(buffer, frames)
    assert [len(faces) for _, faces in out] == [0, 0, 1]


def test_births_are_forgotten() -> None:
    """The per-track memory is bounded on long streams."""
    buffer = LookbackBuffer(max_frames=5)
    for t in range(500):
        buffer.push(t, [face(square(50, 50, 20), track_id=t // 3)])  # a new track every 3 frames
        assert len(buffer._births) <= 5
    assert len(buffer.flush()) == 5


def test_validation() -> None:
    with pytest.raises(ValueError):
        LookbackBuffer(max_frames=-1)


@settings(max_examples=100, deadline=None)
@given(
    max_frames=st.integers(0, 8),
    tracks=st.lists(st.tuples(st.integers(0, 20), st.integers(1, 12)), max_size=4),  # (birth frame, lifetime)
    length=st.integers(0, 25),
)
def test_every_frame_leaves_once_in_order(max_frames, tracks, length) -> None:
    buffer = LookbackBuffer(max_frames=max_frames)
    frames = [
        [face(square(30 + 40 * k, 50, 20), track_id=k + 1)
         for k, (birth, life) in enumerate(tracks) if birth <= t < birth + life]
        for t in range(length)
    ]
    out = []
    for t, faces in enumerate(frames):
        released = buffer.push(t, faces)
        assert len(buffer) <= max_frames
        out += released
    out += buffer.flush()
    assert [item for item, _ in out] == list(range(length))
    for t, faces in out:
        ids = [f.track_id for f in faces]
        assert len(ids) == len(set(ids))  # one face per track per frame
        assert all(np.isfinite(f.box).all() for f in faces)
        for k, (birth, life) in enumerate(tracks):
            if 0 < birth - t <= max_frames and birth < length:  # held when the track appeared
                assert k + 1 in ids, (t, k, birth)


@settings(max_examples=60, deadline=None)
@given(
    vx=st.floats(-15, 15),
    vy=st.floats(-15, 15),
    size=st.floats(16, 150),
    first=st.integers(3, 12),
    max_frames=st.integers(2, 12),
)
def test_constant_velocity_face_is_covered_back_in_time(vx, vy, size, first, max_frames) -> None:
    """Frames released once the track has >= 2 detections cover the true box of a constant-velocity face."""
    buffer = LookbackBuffer(max_frames=max_frames)
    truth = [square(300 + vx * t, 300 + vy * t, size) for t in range(first + max_frames + 2)]
    frames = [[] if t < first else [face(truth[t])] for t in range(len(truth))]
    out = dict(run(buffer, frames))
    for t in range(max(0, first - max_frames + 1), first):  # held, and released after >= 2 detections
        [lb] = out[t]
        assert contained(truth[t], lb.box) >= 0.99
    for t in range(max(0, first - max_frames), first):
        [lb] = out[t]
        assert lb.width >= size - 1e-3 and lb.height >= size - 1e-3


def test_with_the_tracker_a_late_detection_covers_earlier_frames() -> None:
    """End to end: the detector finds a moving face only from frame 10; frames 0..9 still get covered."""
    tracker = FaceTracker(fps=25, seed=0)
    buffer = LookbackBuffer(max_frames=round(0.5 * 25))
    truth = [square(100 + 6 * t, 200, 60) for t in range(30)]
    out = []
    for t, box in enumerate(truth):
        det = Detections.empty()
        if t >= 10:
            det = Detections(box[None], np.array([0.9], np.float32), np.zeros((1, 5, 2), np.float32))
        out += buffer.push(t, tracker.update(det))
    out = dict(out + buffer.flush())
    for t in range(30):
        assert max((contained(truth[t], f.box) for f in out[t]), default=0.0) >= 0.95, t
    assert {f.source for t in range(10) for f in out[t]} == {"lookback"}


def test_inside_the_frame_anonymizer() -> None:
    """Wired as the pipeline wires it: a white 'face' found only from frame 5 is covered from frame 1 on."""
    from fractions import Fraction

    from sdgan_stream.anonymize import CoverRenderer, FrameAnonymizer
    from sdgan_stream.types import VideoFrame

    class LateDetector:
        def __init__(self) -> None:
            self.calls = 0

        def detect(self, image: np.ndarray) -> Detections:
            self.calls += 1
            if self.calls <= 5:
                return Detections.empty()
            ys, xs = np.nonzero(image[..., 0] == 255)
            box = np.array([[xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]], np.float32)
            return Detections(box, np.array([0.9], np.float32), np.zeros((1, 5, 2), np.float32))

    anonymizer = FrameAnonymizer(detector=LateDetector(), renderer=CoverRenderer(method="solid"),  # type: ignore[arg-type]
                                 tracker=FaceTracker(fps=25, seed=0), lookback=LookbackBuffer(max_frames=4))
    out = []
    for t in range(12):
        image = np.full((120, 160, 3), 80, np.uint8)
        image[40:70, 20 + 3 * t:50 + 3 * t] = 255
        out += anonymizer.push(VideoFrame(image=image, index=t, pts=t, time_base=Fraction(1, 25)))
    out += anonymizer.flush()
    assert [frame.index for frame in out] == list(range(12))
    visible = [int((frame.image[..., 0] == 255).sum()) for frame in out]
    assert visible[0] == 900 and visible[1:] == [0] * 11  # frame 0 left before the face was found


def test_a_face_that_appears_between_two_whole_frame_looks_is_covered_from_its_first_frame() -> None:
    """With ``whole_frame_every=2`` files search the whole frame every other frame: a face that appears on a frame
    between two whole looks is found on the next one, and the look-back covers the frame it came late by."""
    from fractions import Fraction

    from sdgan_stream.anonymize import CoverRenderer, FrameAnonymizer
    from sdgan_stream.detect import CenterFaceDetector
    from sdgan_stream.detect_passes import MultiPassDetector
    from sdgan_stream.samples import face_photos
    from sdgan_stream.types import VideoFrame

    photo = face_photos()[0].image
    h, w = photo.shape[:2]
    detector = MultiPassDetector(CenterFaceDetector(threshold=0.1, detect_size=None), rotation_every=0, whole_every=2,
                                 around_min_score=0.2)
    anonymizer = FrameAnonymizer(detector=detector, renderer=CoverRenderer(method="solid", margin=0.0),  # type: ignore[arg-type]
                                 tracker=FaceTracker(fps=25, seed=0), lookback=LookbackBuffer(max_frames=4))
    frames, out = [], []
    for t in range(8):
        image = np.full((480, 640, 3), 110, np.uint8)
        if t >= 1:  # appears on frame 1, between the whole looks of frames 0 and 2
            image[100 : 100 + h, 200 + 4 * t : 200 + 4 * t + w] = photo
        frames.append(image.copy())
        out += anonymizer.push(VideoFrame(image=image, index=t, pts=t, time_base=Fraction(1, 25)))
    out += anonymizer.flush()
    assert [frame.index for frame in out] == list(range(8))
    for t in range(1, 8):
        face = (slice(100 + h // 3, 100 + 2 * h // 3), slice(200 + 4 * t + w // 3, 200 + 4 * t + 2 * w // 3))
        assert (out[t].image[face] == 0).mean() > 0.9, t  # the middle of the face is under the cover
