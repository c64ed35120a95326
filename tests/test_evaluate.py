"""Privacy evaluation: dlib recognizer, per-face metrics, tracks, report and the ``evaluate`` command."""

from __future__ import annotations

import argparse
import json
from dataclasses import dataclass
from pathlib import Path

import av
import cv2
import numpy as np
import pytest

from sdgan_stream import anonymize_video
from sdgan_stream.cli_options import EXIT_ERROR, run_handler
from sdgan_stream.errors import InputError, WeightsError
from sdgan_stream.evaluate import (
    FacePositions,
    add_evaluate_parser,
    default_stride,
    evaluate_videos,
    load_judge,
    write_report,
)
from sdgan_stream.recognizer import FaceRecognizer, interocular_distance, landmark_error
from sdgan_stream.samples import SyntheticClip, _placed_head, face_photos, make_face_clip, render_scene


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
    return run_handler(args)


# -- a scene of faces that dlib's HOG detector misses ----------------------------------------------
@dataclass
class Scene:
    original: Path
    blurred: Path
    frames: list[np.ndarray]
    boxes: list[np.ndarray]  # per frame (5, 4) true face boxes, one row per person (may reach outside)
    people: tuple[str, ...]  # what each person is


def _rotated(head: tuple[np.ndarray, np.ndarray, np.ndarray], degrees: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A placed head turned in the image plane about its face centre (the HOG detector wants upright faces)."""
    patch, alpha, box = head
    h, w = patch.shape[:2]
    m = cv2.getRotationMatrix2D((float(box[0] + box[2]) / 2, float(box[1] + box[3]) / 2), degrees, 1.0)
    patch = cv2.warpAffine(patch, m, (w, h), borderMode=cv2.BORDER_REFLECT)
    alpha = cv2.warpAffine(alpha, m, (w, h))
    corners = np.array([[box[0], box[1]], [box[2], box[1]], [box[0], box[3]], [box[2], box[3]]]) @ m[:, :2].T + m[:, 2]
    return patch, alpha, np.array([*corners.min(0), *corners.max(0)], np.float32)


def _write_clip(path: Path, frames: list[np.ndarray]) -> Path:
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=25)
        stream.width, stream.height, stream.pix_fmt = frames[0].shape[1], frames[0].shape[0], "yuv420p"
        stream.options = {"preset": "ultrafast", "crf": "18"}
        for image in frames:
            container.mux(stream.encode(av.VideoFrame.from_ndarray(image, format="rgb24")))
        container.mux(stream.encode(None))
    return path


@pytest.fixture(scope="module")
def scene(tmp_path_factory: pytest.TempPathFactory) -> Scene:
    """640x360, 4 frames, 5 people: a frontal face, a tilted one, one 40% cut by the right border, a 20 px one,
    one 55% cut by the left border; and a copy with every face blurred (true boxes, grown)."""
    folder = tmp_path_factory.mktemp("scene")
    astronaut, hopper = face_photos()
    width, height = 640, 360
    heads = [
        _placed_head(astronaut, 80),
        _rotated(_placed_head(hopper, 80), 50),
        _placed_head(hopper, 64),
        _placed_head(hopper, 20),
        _placed_head(hopper, 90),
    ]
    cut_right, cut_left = heads[2][2], heads[4][2]
    rng = np.random.default_rng(0)
    background = cv2.GaussianBlur(np.clip(rng.normal(128, 20, (height, width, 3)), 0, 255).astype(np.uint8), (0, 0), 3)
    frames, boxes, blurred = [], [], []
    for t in range(4):
        positions = [
            (60 + 3 * t, 60),
            (240 + 2 * t, 40),
            (width - cut_right[0] - 0.6 * (cut_right[2] - cut_right[0]), 200),
            (420, 40 + t),
            (-(cut_left[0] + 0.55 * (cut_left[2] - cut_left[0])), 200),
        ]
        image, faces = render_scene(background, heads, positions)
        covered = image.copy()
        for x1, y1, x2, y2 in faces:
            grow = 0.4 * (x2 - x1)
            ys = slice(max(int(y1 - grow), 0), min(int(y2 + grow), height))
            xs = slice(max(int(x1 - grow), 0), min(int(x2 + grow), width))
            covered[ys, xs] = cv2.GaussianBlur(covered[ys, xs], (0, 0), max(float(x2 - x1) / 4, 2.0))
        frames.append(image)
        boxes.append(faces)
        blurred.append(covered)
    return Scene(
        _write_clip(folder / "scene.mp4", frames), _write_clip(folder / "scene_blurred.mp4", blurred), frames, boxes,
        ("frontal", "tilted", "cut_40", "small", "cut_55"),
    )


def _person(scene: Scene, face: dict) -> int:
    """Which person of the scene a measured position is: the true box holding its centre."""
    x1, y1, x2, y2 = face["box"]
    cx, cy = (x1 + x2) / 2, (y1 + y2) / 2
    truth = scene.boxes[face["frame"]]
    inside = np.flatnonzero((truth[:, 0] <= cx) & (cx <= truth[:, 2]) & (truth[:, 1] <= cy) & (cy <= truth[:, 3]))
    assert len(inside) == 1, face
    return int(inside[0])


class MeanColourJudge:
    """A fake recognizer: the mean colour inside the landmarks' bounding box. Blur keeps most of a face's
    mean colour (the blurred scene's faces move 0.08-0.12 on this scale), so a lenient threshold calls
    every blurred face the same person, where dlib calls none."""

    name = "mean-colour"

    def __init__(self, same_person_distance: float) -> None:
        self.same_person_distance = same_person_distance
        self.calls: list[tuple[int, ...]] = []

    def embed(self, image: np.ndarray, landmarks68: np.ndarray) -> np.ndarray:
        self.calls.append(landmarks68.shape)
        out = []
        for points in landmarks68:
            (x1, y1), (x2, y2) = np.floor(points.min(0)).astype(int), np.ceil(points.max(0)).astype(int)
            region = image[max(y1, 0) : max(y2, 1), max(x1, 0) : max(x2, 1)]
            out.append(region.reshape(-1, 3).mean(0) / 255.0)
        return np.asarray(out, np.float32)

    def distances(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        return np.linalg.norm(a[:, None] - b[None], axis=2)


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


def test_the_pipeline_tracker_names_the_people() -> None:
    positions = FacePositions(fps=25)
    left, right = set(), set()
    for frame in range(6):
        boxes = [[10 + frame, 10, 60 + frame, 60]]
        if frame != 3:  # the second person is missed once and must keep its track
            boxes.append([200, 20 + frame, 250, 70 + frame])
        found = positions(given_boxes=np.array(boxes, np.float32))
        assert len(found) == len(boxes) and all(p.found_by == "given" and p.landmarks5 is None for p in found)
        left |= {p.track for p in found if p.box[0] < 100}
        right |= {p.track for p in found if p.box[0] > 100}
    assert len(left) == 1 and len(right) == 1 and left != right and -1 not in left | right


def test_an_untouched_video_leaks_every_face(small_clip: SyntheticClip, recognizer: FaceRecognizer) -> None:
    result = evaluate_videos(small_clip.path, small_clip.path, stride=2, recognizer=recognizer)
    s = result["summary"]
    assert s["faces"] == 8 and s["tracks"] == 2  # 4 evaluated frames x 2 faces
    assert s["judged"] == 8 and s["unjudged"] == 0 and s["unjudged_by_reason"] == {}
    assert s["leak_rate"] == 1.0 and s["leaks_by_distance"] == 8
    assert s["identity_distance_mean"] < 0.05
    assert s["detection_rate"] == 1.0
    assert s["landmark_error_median"] < 0.02
    assert s["flicker_ratio"] == pytest.approx(1.0)
    assert result["targets"]["leak_rate"]["pass"] is False
    assert result["settings"]["positions_by_detector"] == {"centerface": 8}
    assert result["settings"]["recognizer"] == "dlib" and result["settings"]["same_person_distance"] == 0.6


def test_blur_hides_identity_but_loses_the_face(small_clip: SyntheticClip, blurred: Path, recognizer: FaceRecognizer) -> None:
    result = evaluate_videos(small_clip.path, blurred, stride=2, recognizer=recognizer)
    s = result["summary"]
    assert s["leak_rate"] == 0.0
    assert s["identity_distance_mean"] > 0.7
    assert s["detection_rate"] == 0.0  # what the generator must do better than a cover
    assert s["landmark_error_median"] > 0.08  # 0.0999 with the feathered blur cover (0.12 with the hard-edged one)
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


# -- every face position, judged or not --------------------------------------------------------
def test_faces_that_hog_misses_are_counted(scene: Scene, recognizer: FaceRecognizer) -> None:
    # The premise: on the original, dlib's HOG detector finds the frontal face only.
    for image, truth in zip(scene.frames, scene.boxes):
        hog_centres = [((f.box[0] + f.box[2]) / 2, (f.box[1] + f.box[3]) / 2) for f in recognizer.detect(image)]
        found = {i for i, (x1, y1, x2, y2) in enumerate(truth) for cx, cy in hog_centres if x1 <= cx <= x2 and y1 <= cy <= y2}
        assert found == {0}

    result = evaluate_videos(scene.original, scene.blurred, stride=1, recognizer=recognizer)
    faces, s = result["faces"], result["summary"]
    by_person: dict[int, list[dict]] = {}
    for face in faces:
        by_person.setdefault(_person(scene, face), []).append(face)
    assert sorted(by_person) == [0, 1, 2, 3, 4] and all(len(v) == 4 for v in by_person.values())
    assert all(len({f["track"] for f in v}) == 1 for v in by_person.values()) and s["tracks"] == 5
    for person in (0, 1, 2):  # frontal, tilted, 40% cut: judged, and blur hides them
        assert all(f["judged"] and f["distance"] > 0.7 and not f["leak"] for f in by_person[person]), scene.people[person]
    assert {f["unjudged_reason"] for f in by_person[3]} == {"too_small"}
    assert {f["unjudged_reason"] for f in by_person[4]} == {"cut_by_border"}
    assert s["faces"] == 20 and s["judged"] == 12 and s["unjudged"] == 8
    assert s["unjudged_by_reason"] == {"too_small": 4, "cut_by_border": 4}
    assert s["leak_rate"] == 0.0 and s["verdicts"] == 12
    assert s["leak_rate_worst_case"] == pytest.approx(8 / 20)  # the unjudged, had they leaked


def test_an_untouched_scene_leaks_everywhere(scene: Scene, recognizer: FaceRecognizer) -> None:
    s = evaluate_videos(scene.original, scene.original, stride=2, recognizer=recognizer)["summary"]
    assert s["faces"] == 10 and s["unjudged"] == 4
    assert s["leaks_by_distance"] == 6  # the judge recognises every judged face
    assert s["leaks_unchanged"] == 4 and s["leaks_unchanged_unjudged"] == 4  # the rest is plainly unchanged
    assert s["leak_rate"] == 1.0 and s["leak_rate_worst_case"] == 1.0 and s["pairwise_leak_rate"] == 1.0


def test_the_judge_decides_the_leaks(scene: Scene, recognizer: FaceRecognizer) -> None:
    # dlib hides every blurred face (test above). A judge fooled by blur sees the same person in each; the
    # same judge with a strict threshold sees none: the verdict is the judge's, on its own scale.
    lenient, strict = MeanColourJudge(0.2), MeanColourJudge(0.05)
    fooled = evaluate_videos(scene.original, scene.blurred, recognizer=recognizer, judge=lenient)
    s = fooled["summary"]
    assert fooled["settings"]["recognizer"] == "mean-colour" and fooled["settings"]["same_person_distance"] == 0.2
    assert lenient.calls and set(lenient.calls) == {(1, 68, 2)}
    assert s["judged"] == 12 and s["leaks_by_distance"] == 12 and s["leak_rate"] == 1.0
    assert s["unjudged_by_reason"] == {"too_small": 4, "cut_by_border": 4}  # not the judge's to decide
    distances = [f["distance"] for f in fooled["faces"] if f["judged"]]
    assert max(distances) < 0.2 and min(distances) > 0.05
    s = evaluate_videos(scene.original, scene.blurred, recognizer=recognizer, judge=strict)["summary"]
    assert s["judged"] == 12 and s["leaks"] == 0 and s["leak_rate"] == 0.0


def test_a_gallery_identifies_the_original_person(scene: Scene, recognizer: FaceRecognizer, tmp_path: Path) -> None:
    astronaut, hopper = face_photos()
    folder = tmp_path / "gallery"
    (folder / "grace").mkdir(parents=True)
    cv2.imwrite(str(folder / "astronaut.png"), cv2.cvtColor(astronaut.image, cv2.COLOR_RGB2BGR))
    cv2.imwrite(str(folder / "grace" / "portrait.png"), cv2.cvtColor(hopper.image, cv2.COLOR_RGB2BGR))
    cv2.imwrite(str(folder / "grace" / "mirrored.jpg"), cv2.cvtColor(hopper.image[:, ::-1], cv2.COLOR_RGB2BGR))
    cv2.imwrite(str(folder / "wall.png"), np.full((200, 200, 3), 128, np.uint8))

    untouched = evaluate_videos(scene.original, scene.original, stride=2, recognizer=recognizer, gallery=folder)
    gallery = untouched["settings"]["gallery"]
    assert gallery["identities"] == 2 and gallery["photos"] == 3 and gallery["photos_skipped"] == {"wall.png": "no face"}
    names = {(_person(scene, f), f["gallery_original"]) for f in untouched["faces"] if f["judged"]}
    assert names == {(0, "astronaut"), (1, "grace"), (2, "grace")}
    s = untouched["summary"]
    assert s["identification_positions"] == 6 and s["identification_leaks"] == 6 and s["identification_leak_rate"] == 1.0

    blurred = evaluate_videos(scene.original, scene.blurred, stride=2, recognizer=recognizer, gallery=folder)["summary"]
    assert blurred["identification_positions"] == 6 and blurred["identification_leaks"] == 0
    assert blurred["identification_leak_rate"] == 0.0 and blurred["leak_rate"] == 0.0


def test_cli_reports_unjudged_positions(scene: Scene, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    code = _run_cli(["evaluate", str(scene.original), str(scene.blurred), "--stride", "2", "--report", str(tmp_path / "r")])
    assert code == 0
    assert "10 faces, 5 tracks, 4 not judged (too_small 2, cut_by_border 2)" in capsys.readouterr().out
    report = (tmp_path / "r" / "report.md").read_text()
    assert "6 positions judged, 4 not judged (too_small 2, cut_by_border 2)" in report
    assert json.loads((tmp_path / "r" / "evaluation.json").read_text())["summary"]["unjudged_by_reason"] == {"too_small": 2, "cut_by_border": 2}


def test_a_missing_recognizer_model_is_one_error_before_any_frame(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(WeightsError, match="recognizer"):
        load_judge("insightface", tmp_path / "missing.onnx")
    # The videos do not even exist: the judge is loaded, and refused, first.
    code = _run_cli(["evaluate", str(tmp_path / "a.mp4"), str(tmp_path / "b.mp4"), "--recognizer-model", str(tmp_path / "missing.onnx")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == EXIT_ERROR and len(err) == 1 and err[0].startswith("error:") and "recognizer" in err[0]


def test_insightface_judge_when_a_model_is_installed(small_clip: SyntheticClip, recognizer: FaceRecognizer) -> None:
    pytest.importorskip("sdgan_stream.identity_guard")
    pytest.importorskip("insightface")
    pack = Path("~/.insightface/models/buffalo_l").expanduser()
    if not pack.is_dir():
        pytest.skip("no insightface model pack installed (none can be fetched here)")
    judge = load_judge("insightface")
    result = evaluate_videos(small_clip.path, small_clip.path, stride=4, recognizer=recognizer, judge=judge)
    assert result["settings"]["recognizer"] == "insightface"
    assert result["summary"]["judged"] == 4 and result["summary"]["leaks_by_distance"] == 4


def test_the_tracker_follows_the_frames_between_evaluated_ones() -> None:
    def boxes(frame: int) -> np.ndarray:  # a small face crossing the frame: 12 px a frame, 24 px wide
        return np.array([[10 + 12 * frame, 50, 34 + 12 * frame, 80]], np.float32)

    following, strided = FacePositions(fps=25), FacePositions(fps=25)
    tracks_following, tracks_strided = set(), set()
    for frame in range(20):
        if frame % 5:
            following.follow(given_boxes=boxes(frame))
            continue
        tracks_following |= {p.track for p in following(given_boxes=boxes(frame))}
        tracks_strided |= {p.track for p in strided(given_boxes=boxes(frame))}
    assert len(tracks_following) == 1
    assert len(tracks_strided) == 4  # seen every 5th frame only, each sighting looks like a new person
