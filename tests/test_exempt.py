"""--keep-faces: people on the keep list stay visible, everyone else and everything uncertain is anonymized."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from sdgan_stream import anonymize_video
from sdgan_stream.detect import CenterFaceDetector
from sdgan_stream.errors import InputError
from sdgan_stream.exempt import ExemptFaces
from sdgan_stream.identity_guard import DlibRecognizer
from sdgan_stream.landmarks import LandmarkDetector
from sdgan_stream.samples import SyntheticClip, face_photos, make_face_clip

from .conftest import read_frames


@pytest.fixture(scope="module")
def two_people(tmp_path_factory: pytest.TempPathFactory) -> SyntheticClip:
    """The astronaut and Grace Hopper, 100 px faces, 20 frames."""
    return make_face_clip(tmp_path_factory.mktemp("keep") / "two.mp4", width=640, height=360, frames=20, faces=2,
                          face_width=100, audio=False, seed=4)


def _keep_folder(tmp_path: Path, index: int) -> Path:
    folder = tmp_path / "keep"
    folder.mkdir()
    photo = face_photos()[index]
    cv2.imwrite(str(folder / f"{photo.name}.png"), photo.image[..., ::-1])
    return folder


def _changed(original: np.ndarray, result: np.ndarray, box: np.ndarray) -> float:
    x1, y1, x2, y2 = box.astype(int)
    return float(np.abs(original[y1:y2, x1:x2].astype(int) - result[y1:y2, x1:x2]).mean())


def test_a_kept_person_stays_visible_and_the_other_is_anonymized(two_people: SyntheticClip, tmp_path: Path) -> None:
    out = tmp_path / "out.mp4"
    report = anonymize_video(two_people.path, out, method="blur", keep_faces=str(_keep_folder(tmp_path, 0)))
    original, _, _ = read_frames(two_people.path)
    result, _, _ = read_frames(out)
    # face 0 is the astronaut (the kept person), confirmed after 3 matching checks in a row: the
    # first frames are anonymized, the later ones left as they were
    late = range(10, len(original))
    assert all(_changed(original[i], result[i], two_people.face_boxes[i][0]) < 4 for i in late)
    assert all(_changed(original[i], result[i], two_people.face_boxes[i][1]) > 8 for i in range(len(original)))
    assert all(_changed(original[i], result[i], two_people.face_boxes[i][0]) > 8 for i in range(2))
    assert report.stats["faces_exempt"] >= len(late)


def test_an_uncertain_match_is_anonymized(two_people: SyntheticClip, tmp_path: Path) -> None:
    recognizer = DlibRecognizer()
    detector = CenterFaceDetector(threshold=0.4, detect_size=None)
    strict = ExemptFaces.from_folder(_keep_folder(tmp_path, 0), recognizer, detector=detector, landmarker=LandmarkDetector(),
                                     threshold=0.05)  # nobody is ever this close to a photo
    from sdgan_stream.api import build_anonymizer
    from sdgan_stream.config import AnonymizeOptions
    from sdgan_stream.io.source import VideoFileSource

    with VideoFileSource(two_people.path) as source:
        anonymizer = build_anonymizer(AnonymizeOptions(method="blur"), source.info)
        anonymizer.exempt = strict
        frames = [f for frame in source.frames() for f in anonymizer.push(frame)] + anonymizer.flush()
    assert anonymizer.stats["faces_exempt"] == 0
    assert anonymizer.stats["faces_blur"] >= 2 * two_people.frame_count  # both faces, every frame
    assert len(frames) == two_people.frame_count


class _BrokenRecognizer:
    name, same_person_distance, default_min_distance = "broken", 0.6, 0.7

    def embed(self, image, landmarks68):
        raise RuntimeError("recognizer crashed")

    def distances(self, a, b):
        return np.zeros((len(a), len(b)))


def test_a_recognizer_failure_exempts_nobody() -> None:
    from sdgan_stream.types import Face

    exempt = ExemptFaces(_BrokenRecognizer(), {"someone": np.zeros(3, np.float32)}, landmarker=lambda image, faces: [None])
    face = Face(box=np.array([10, 10, 60, 60], np.float32), score=0.9, track_id=1)
    anonymize, keep = exempt.split(np.zeros((100, 100, 3), np.uint8), [face])
    assert keep == [] and anonymize == [face]


def test_only_detected_faces_of_a_tracked_person_can_be_exempt() -> None:
    from sdgan_stream.types import Face

    class Always:
        name, same_person_distance, default_min_distance = "always", 0.6, 0.7

        def embed(self, image, landmarks68):
            return np.zeros((1, 3), np.float32)

        def distances(self, a, b):
            return np.zeros((len(a), len(b)))

    points = np.zeros((68, 2), np.float32)
    exempt = ExemptFaces(Always(), {"me": np.zeros(3, np.float32)}, landmarker=lambda image, faces: [points], confirmations=1)
    image = np.zeros((100, 100, 3), np.uint8)
    box = np.array([10, 10, 60, 60], np.float32)
    for face in (Face(box=box, score=0.9), Face(box=box, score=0.9, track_id=1, source="predicted"),
                 Face(box=box, score=0.9, track_id=1, source="lookback")):
        assert exempt.split(image, [face])[1] == []
    assert len(exempt.split(image, [Face(box=box, score=0.9, track_id=1)])[1]) == 1


class _WhereYouStand:
    """A toy recognizer: the person is told by where the face stands (left of x=200: the kept person)."""

    name, same_person_distance, default_min_distance = "where", 0.6, 0.7

    def __init__(self) -> None:
        self.calls = 0

    def embed(self, image, landmarks68):
        self.calls += 1
        return np.array([[0.0 if float(landmarks68[0][:, 0].mean()) < 200 else 1.0]], np.float32)

    def distances(self, a, b):
        return np.abs(np.asarray(b)[None, :, 0] - np.asarray(a)[:, None, 0])


def _centre_points(image, faces):
    return [np.tile((f.box[:2] + f.box[2:]) / 2, (68, 1)).astype(np.float32) for f in faces]


def test_a_stranger_who_takes_over_a_kept_persons_track_is_anonymized_at_once() -> None:
    from sdgan_stream.track import FaceTracker
    from sdgan_stream.types import Detections

    recognizer = _WhereYouStand()
    exempt = ExemptFaces(recognizer, {"kept": np.zeros((1, 1), np.float32)}, landmarker=_centre_points)
    tracker = FaceTracker(fps=25, seed=0)
    image = np.zeros((360, 640, 3), np.uint8)
    kept_late = []
    for frame in range(16):
        x = 100.0 if frame < 6 else 160.0  # from frame 6 a stranger stands 60 px right: the tracker hands them the track
        faces = tracker.update(Detections(np.array([[x, 100, x + 100, 200]], np.float32), np.array([0.9], np.float32),
                                          np.full((1, 5, 2), np.nan, np.float32)))
        kept = exempt.split(image, faces)[1]
        if frame >= 6:
            assert faces[0].track_id == 1 and not kept, f"frame {frame}: the stranger is left visible"
        kept_late.append(bool(kept))
    assert kept_late[3:6] == [True, True, True]  # the kept person was confirmed before (the case under test)


def test_a_kept_face_is_checked_every_frame_while_someone_is_near_and_rarely_when_alone() -> None:
    from sdgan_stream.types import Face

    recognizer = _WhereYouStand()
    exempt = ExemptFaces(recognizer, {"kept": np.zeros((1, 1), np.float32)}, landmarker=_centre_points, confirmations=1)
    image = np.zeros((360, 640, 3), np.uint8)
    kept = Face(box=np.array([50, 100, 150, 200], np.float32), score=0.9, track_id=1)
    for _ in range(10):
        assert exempt.split(image, [kept])[1] == [kept]
    alone = recognizer.calls
    assert alone == 1  # confirmed once, then re-checked only every recheck_every frames
    neighbour = Face(box=np.array([170, 100, 270, 200], np.float32), score=0.9, track_id=2)  # 20 px away
    for _ in range(5):
        exempt.split(image, [kept, neighbour])
    assert recognizer.calls - alone >= 5 + 1  # the kept face every frame, the neighbour once


def test_a_keep_folder_without_faces_is_an_error_before_any_frame(two_people: SyntheticClip, tmp_path: Path) -> None:
    folder = tmp_path / "keep"
    folder.mkdir()
    cv2.imwrite(str(folder / "wall.png"), np.full((200, 200, 3), 90, np.uint8))
    out = tmp_path / "out.mp4"
    with pytest.raises(InputError, match="no face found"):
        anonymize_video(two_people.path, out, method="blur", keep_faces=str(folder))
    assert not out.exists()
