"""Privacy evaluation: dlib recognizer, per-face metrics, tracks, report and the ``evaluate`` command."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import pytest

from sdgan_stream import anonymize_video
from sdgan_stream.errors import InputError
from sdgan_stream.evaluate import (
    FaceMeasure,
    add_evaluate_parser,
    assign_tracks,
    default_stride,
    evaluate_videos,
    write_report,
)
from sdgan_stream.recognizer import FaceRecognizer, interocular_distance, landmark_error
from sdgan_stream.samples import SyntheticClip, face_photos, make_face_clip


@pytest.fixture(scope="module")
def recognizer() -> FaceRecognizer:
    return FaceRecognizer()


@pytest.fixture(scope="module")
def small_clip(tmp_path_factory: pytest.TempPathFactory) -> SyntheticClip:
    """Two faces large enough for dlib's HOG detector, 8 frames."""
    return make_face_clip(tmp_path_factory.mktemp("eval") / "faces.mp4", width=480, height=240, frames=8, faces=2, face_width=72, audio=False)


@pytest.fixture(scope="module")
def blurred(small_clip: SyntheticClip) -> Path:
    out = small_clip.path.with_name("blurred.mp4")
    anonymize_video(small_clip.path, out, method="blur", track=False, detect_size=(480, 480))
    return out


def _run_cli(argv: list[str]) -> int:
    parser = argparse.ArgumentParser()
    add_evaluate_parser(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return args.handler(args)


def test_recognizer_tells_people_apart(recognizer: FaceRecognizer) -> None:
    embeddings = []
    for photo in face_photos():
        found = recognizer.detect(photo.image)
        assert len(found) == 1 and found[0].detector == "hog"
        points = recognizer.shape(photo.image, found[0].box)
        assert points.shape == (68, 2)
        embeddings.append(recognizer.embed(photo.image, points))
    # Same photo with light noise: same person; the two photos: different people.
    photo = face_photos()[0]
    noisy = np.clip(photo.image.astype(int) + np.random.default_rng(0).integers(-8, 9, photo.image.shape), 0, 255).astype(np.uint8)
    box = recognizer.detect(photo.image)[0].box
    same = np.linalg.norm(recognizer.embed(noisy, recognizer.shape(noisy, box)) - embeddings[0])
    assert embeddings[0].shape == (128,)
    assert same < 0.3
    assert np.linalg.norm(embeddings[0] - embeddings[1]) > 0.6


def test_detect_near_finds_the_face_at_any_box_convention(recognizer: FaceRecognizer) -> None:
    photo = face_photos()[1]
    found = recognizer.detect_near(photo.image, photo.face_box)  # a CenterFace-style box
    assert found is not None
    cx, cy = (found.box[0] + found.box[2]) / 2, (found.box[1] + found.box[3]) / 2
    x1, y1, x2, y2 = photo.face_box
    assert x1 < cx < x2 and y1 < cy < y2
    assert recognizer.detect_near(np.zeros_like(photo.image), photo.face_box) is None


def test_landmark_error_is_relative_to_the_eye_distance() -> None:
    points = np.random.default_rng(1).uniform(0, 100, (68, 2)).astype(np.float32)
    points[36], points[45] = (10, 50), (60, 50)
    assert interocular_distance(points) == pytest.approx(50)
    assert landmark_error(points + np.array([5, 0], np.float32), points) == pytest.approx(0.1)


def test_default_stride_evaluates_about_75_frames() -> None:
    assert default_stride(None) == 1
    assert default_stride(40) == 1
    assert default_stride(750) == 10
    assert 50 <= 1000 / default_stride(1000) <= 100


def test_tracks_group_positions_by_overlap() -> None:
    measures = []
    for frame in range(6):
        measures.append(FaceMeasure(frame=frame, box=[10 + frame, 10, 60 + frame, 60], found_by="given"))
        if frame != 3:  # the second person is missed once and must keep its track
            measures.append(FaceMeasure(frame=frame, box=[200, 20 + frame, 250, 70 + frame], found_by="given"))
    assign_tracks(measures)
    left = {m.track for m in measures if m.box[0] < 100}
    right = {m.track for m in measures if m.box[0] > 100}
    assert len(left) == 1 and len(right) == 1 and left != right


def test_an_untouched_video_leaks_every_face(small_clip: SyntheticClip, recognizer: FaceRecognizer) -> None:
    result = evaluate_videos(small_clip.path, small_clip.path, stride=2, recognizer=recognizer)
    s = result["summary"]
    assert s["faces"] == 8 and s["tracks"] == 2  # 4 evaluated frames x 2 faces
    assert s["leak_rate"] == 1.0
    assert s["identity_distance_mean"] < 0.05
    assert s["detection_rate"] == 1.0
    assert s["landmark_error_median"] < 0.02
    assert s["flicker_ratio"] == pytest.approx(1.0)
    assert result["targets"]["leak_rate"]["pass"] is False
    assert result["settings"]["positions_by_detector"] == {"hog": 8}


def test_blur_hides_identity_but_loses_the_face(small_clip: SyntheticClip, blurred: Path, recognizer: FaceRecognizer) -> None:
    result = evaluate_videos(small_clip.path, blurred, stride=2, recognizer=recognizer)
    s = result["summary"]
    assert s["leak_rate"] == 0.0
    assert s["identity_distance_mean"] > 0.7
    assert s["detection_rate"] == 0.0  # what the generator must do better than a cover
    assert s["landmark_error_median"] > 0.1
    assert result["targets"]["detection_rate"]["pass"] is False
    json.dumps(result)  # JSON-ready: no numpy values, no NaN


def test_known_boxes_replace_face_finding(small_clip: SyntheticClip, blurred: Path, recognizer: FaceRecognizer) -> None:
    result = evaluate_videos(small_clip.path, blurred, stride=4, face_boxes=small_clip.face_boxes, recognizer=recognizer)
    assert result["settings"]["face_positions_from"] == "given"
    assert [f["frame"] for f in result["faces"]] == [0, 0, 4, 4]
    assert all(f["found_by"] == "given" for f in result["faces"])
    assert result["summary"]["leak_rate"] == 0.0 and result["summary"]["detection_positions"] == 4


def test_a_video_of_another_size_is_refused(small_clip: SyntheticClip, tmp_path: Path) -> None:
    other = make_face_clip(tmp_path / "other.mp4", width=320, height=240, frames=3, faces=1, audio=False)
    with pytest.raises(InputError, match="differ in size"):
        evaluate_videos(small_clip.path, other.path)


def test_cli_writes_json_and_report(small_clip: SyntheticClip, blurred: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    out_json, report_dir = tmp_path / "eval.json", tmp_path / "report"
    code = _run_cli(["evaluate", str(small_clip.path), str(blurred), "--stride", "4", "--json", str(out_json), "--report", str(report_dir)])
    assert code == 0
    data = json.loads(out_json.read_text())
    assert data["summary"]["faces"] == 4 and len(data["faces"]) == 4 and data["tracks"]
    assert (report_dir / "examples.png").stat().st_size > 1000
    report = (report_dir / "report.md").read_text()
    assert "leak_rate" in report and "examples.png" in report
    assert "leak rate 0.000" in capsys.readouterr().out
    # --check: blur misses the detection target
    assert _run_cli(["evaluate", str(small_clip.path), str(blurred), "--stride", "4", "--check"]) == 3


def test_report_without_crops(small_clip: SyntheticClip, recognizer: FaceRecognizer, tmp_path: Path) -> None:
    result = evaluate_videos(small_clip.path, small_clip.path, stride=8, recognizer=recognizer)
    report = write_report(result, tmp_path / "r")
    assert report.is_file() and not (tmp_path / "r" / "examples.png").exists()
