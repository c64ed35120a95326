"""prepare-data on CelebAMask-HQ's published layout (a tiny fake tree of real face photos), parallel and resumable."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest

from sdgan_stream.errors import InputError
from sdgan_stream.semantic import class_id, rasterize_semantic_map
from train.celebamask import CELEBA_TEST_FIRST, IMAGES, MAPPING, MASKS, project_classes
from train.prepare import HELDOUT, PLAN, prepare_dataset, sample_photos
from train.shards import load_faceset

PHOTO_PX = 384  # the data set's photos are 1024 px with 512 px masks; the same 2:1 ratio, smaller
SIZE = 64
# HQ id -> CelebA original: ids 2 and 3 fall in CelebA's test partition (held-out people).
ORIGINALS = {0: 1001, 1: 2002, 2: CELEBA_TEST_FIRST + 5, 3: CELEBA_TEST_FIRST + 6}
PEOPLE = {1001: "7", 2002: "7", CELEBA_TEST_FIRST + 5: "9", CELEBA_TEST_FIRST + 6: "11"}


def _square(image: np.ndarray) -> np.ndarray:
    side = min(image.shape[:2])
    return cv2.resize(image[:side, :side], (PHOTO_PX, PHOTO_PX), interpolation=cv2.INTER_AREA)


def _landmarks(images: list[np.ndarray]) -> list[np.ndarray]:
    from sdgan_stream.detect import CenterFaceDetector
    from sdgan_stream.landmarks import LandmarkDetector
    from sdgan_stream.types import Face

    detector, landmarker = CenterFaceDetector(), LandmarkDetector()
    out = []
    for image in images:
        dets = detector.detect(image)
        best = int(np.argmax(dets.boxes[:, 2] - dets.boxes[:, 0]))
        face = Face(box=dets.boxes[best], score=float(dets.scores[best]), landmarks=dets.landmarks[best])
        (points,) = landmarker(image, [face])
        assert points is not None
        out.append(np.asarray(points, np.float64))
    return out


def _write_masks(folder: Path, index: int, points: np.ndarray, *, swap_sides: bool) -> None:
    """Hand-label-like masks at half resolution: the face classes from the landmarks, plus hair, hat, ears,
    glasses, neck and cloth as plain shapes. ``swap_sides`` labels the eyes/brows the other way round,
    as some of the data set's annotators did."""
    half = PHOTO_PX // 2
    drawn = rasterize_semantic_map(points / 2, half)
    names = {"skin": "skin", "nose": "nose", "u_lip": "u_lip", "l_lip": "l_lip", "mouth": "mouth",
             "l_eye": "r_eye" if swap_sides else "l_eye", "r_eye": "l_eye" if swap_sides else "r_eye",
             "l_brow": "r_brow" if swap_sides else "l_brow", "r_brow": "l_brow" if swap_sides else "r_brow"}
    masks = {published: drawn == class_id(ours) for ours, published in names.items()}
    ys, xs = np.nonzero(drawn)
    top, bottom, left, right = ys.min(), ys.max(), xs.min(), xs.max()
    box = np.zeros((half, half), bool)

    def rect(y0: int, y1: int, x0: int, x1: int) -> np.ndarray:
        m = box.copy()
        m[max(y0, 0) : max(y1, 0), max(x0, 0) : max(x1, 0)] = True
        return m

    masks["hair"] = rect(top - 25, top + 4, left - 10, right + 10)
    masks["hat"] = rect(top - 40, top - 25, left, right)
    masks["l_ear"] = rect((top + bottom) // 2 - 8, (top + bottom) // 2 + 8, left - 10, left)
    masks["neck"] = rect(bottom, bottom + 20, left + 10, right - 10)
    masks["cloth"] = rect(bottom + 20, half, 0, half)
    eyes = points[36:48] / 2
    masks["eye_g"] = rect(int(eyes[:, 1].min()) - 4, int(eyes[:, 1].max()) + 4, int(eyes[:, 0].min()) - 6, int(eyes[:, 0].max()) + 6)
    sub = folder / str(index // 2000)
    sub.mkdir(parents=True, exist_ok=True)
    for name, mask in masks.items():
        if mask.any():
            cv2.imwrite(str(sub / f"{index:05d}_{name}.png"), np.repeat(mask[:, :, None] * 255, 3, axis=2).astype(np.uint8))


@pytest.fixture(scope="module")
def celebamask_tree(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """CelebAMask-HQ/ with 4 photos (the two package photos and their mirror images), masks, mapping file,
    and CelebA's identity file beside it."""
    root = tmp_path_factory.mktemp("data") / "CelebAMask-HQ"
    (root / IMAGES).mkdir(parents=True)
    photos = [_square(image) for _, image in sample_photos()]
    photos += [np.ascontiguousarray(p[:, ::-1]) for p in photos]
    for index, (photo, points) in enumerate(zip(photos, _landmarks(photos))):
        cv2.imwrite(str(root / IMAGES / f"{index}.jpg"), cv2.cvtColor(photo, cv2.COLOR_RGB2BGR))
        _write_masks(root / MASKS, index, points, swap_sides=index % 2 == 1)
    lines = ["idx orig_idx orig_file"] + [f"{i} {o - 1} {o:06d}.jpg" for i, o in ORIGINALS.items()]
    (root / MAPPING).write_text("\n".join(lines) + "\n")
    (root.parent / "identity_CelebA.txt").write_text("".join(f"{o:06d}.jpg {p}\n" for o, p in PEOPLE.items()))
    return root


def test_project_classes_side_eyes_by_the_landmarks():
    from sdgan_stream.semantic import mean_face_landmarks

    points = mean_face_landmarks(64)
    published = np.zeros((64, 64), np.uint8)
    from train.celebamask import MASK_CLASSES

    eye = MASK_CLASSES.index("l_eye") + 1
    published[20:24, 5:60] = eye  # one "l_eye" stroke across both eyes
    published[0:3] = MASK_CLASSES.index("cloth") + 1
    published[60:] = MASK_CLASSES.index("hat") + 1
    ours = project_classes(published, points)
    mid = (points[36:42, 0].mean() + points[42:48, 0].mean()) / 2
    assert np.all(ours[20:24, 5 : int(mid) - 1] == class_id("l_eye"))
    assert np.all(ours[20:24, int(mid) + 1 : 60] == class_id("r_eye"))
    assert np.all(ours[0:3] == class_id("background")) and np.all(ours[60:] == class_id("hair"))


@pytest.fixture(scope="module")
def prepared(celebamask_tree: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict, list]:
    """The tree prepared with CelebA identities and CelebA's test people held out; (folder, manifest, progress)."""
    out = tmp_path_factory.mktemp("prepared") / "out"
    seen: list[tuple[int, int]] = []
    manifest = prepare_dataset(
        out, images_dir=celebamask_tree, size=SIZE, shard_size=1, min_face=20, workers=1,
        identities=f"file:{celebamask_tree.parent / 'identity_CelebA.txt'}", holdout="celeba-test",
        progress=lambda done, total: seen.append((done, total)),
    )
    return out, manifest, seen


def test_prepare_celebamask_layout(prepared):
    out, manifest, seen = prepared
    assert manifest["layout"] == "celebamask-hq" and manifest["parsing"] is True
    assert seen[-1] == (4, 4)
    assert manifest["count"] == 2 and manifest["people"] == 1  # ids 0 and 1: one CelebA person
    assert manifest["heldout"]["count"] == 2 and manifest["heldout"]["people"] == 2
    train, held = load_faceset(out), load_faceset(out / HELDOUT)
    assert train.identities == ("7",) and set(held.identities) == {"9", "11"}
    for faces in (train, held):
        assert faces.parsing is not None and faces.parsing.shape == (2, SIZE, SIZE)
        for parsing, labels, points in zip(faces.parsing, faces.labels, faces.landmarks):
            # Whatever side the annotator called it, the image-left eye is l_eye, as in the landmark maps.
            for name, ids in (("l_eye", slice(36, 42)), ("r_eye", slice(42, 48))):
                ys, xs = np.nonzero(parsing == class_id(name))
                assert len(xs) and abs(xs.mean() - points[ids, 0].mean()) < 3, name
            present = set(np.unique(parsing))
            assert class_id("hair") in present and class_id("skin") in present
            face = (parsing != 0) & (parsing != class_id("hair"))
            drawn = (labels != 0) & (labels != class_id("hair"))
            assert (face & drawn).sum() / (face | drawn).sum() > 0.5
            # cloth and neck are context: nothing below the chin is face
            assert not face[int(points[8, 1]) + 4 :].any()


def test_prepare_resumes_and_refuses_other_settings(celebamask_tree, tmp_path):
    out = tmp_path / "out"
    common = dict(images_dir=celebamask_tree, size=SIZE, shard_size=1, min_face=20, limit=3, workers=2)
    first = prepare_dataset(out, **common)
    assert first["count"] == 3 and first["people"] == 3  # no identity file: one person per photo
    assert json.loads((out / PLAN).read_text())["settings"]["limit"] == 3
    kept = (out / "shard_00000.npz").stat().st_mtime_ns
    (out / "shard_00002.json").unlink()  # as if interrupted before the last chunk finished
    (out / "shard_00002.npz").unlink()
    seen = []
    again = prepare_dataset(out, **common, progress=lambda done, total: seen.append(done))
    assert again["count"] == 3 and (out / "shard_00002.npz").is_file()
    assert (out / "shard_00000.npz").stat().st_mtime_ns == kept  # finished chunks are not redone
    assert seen[0] >= 2 and seen[-1] == 3
    with pytest.raises(InputError, match="other settings"):
        prepare_dataset(out, **{**common, "size": 32})


def test_validation_measures_identity_landmarks_and_detection(prepared, tmp_path):
    import torch

    from train.validate import Validator

    validator = Validator(prepared[0] / HELDOUT, count=4, code_dim=16)
    assert len(validator) == 2
    originals = torch.from_numpy(validator.crops).permute(0, 3, 1, 2).float() / 127.5 - 1

    class Replay(torch.nn.Module):  # gives the original faces back: nothing is anonymized
        def forward(self, masked, semantic, code):
            return originals[: len(code)]

    class Grey(torch.nn.Module):  # a flat grey face
        def forward(self, masked, semantic, code):
            return torch.zeros_like(masked)

    leak = validator.run(Replay(), torch.device("cpu"), 5, tmp_path)
    assert leak["identity_distance"] < 1e-3 and leak["leak_rate"] == 1.0 and leak["landmark_error"] < 1e-3
    assert leak["detection_rate"] == leak["detection_rate_original"]
    grey = validator.run(Grey(), torch.device("cpu"), 6, tmp_path)
    assert grey["identity_distance"] > 0.3 and grey["landmark_error"] > leak["landmark_error"]
    assert (tmp_path / "val.csv").read_text().count("\n") == 3
    assert (tmp_path / "val_curve.png").is_file() and (tmp_path / "samples" / "val_step_0000006.png").is_file()


def test_train_cli_on_hand_labelled_maps_with_validation(prepared, tmp_path):
    from sdgan_stream.training_cli import main

    out, run = prepared[0], tmp_path / "run"
    args = ["train", "--data", str(out), "--out", str(run), "--steps", "2", "--batch", "2", "--mode", "identity",
            "--maps", "mixed", "--ngf", "4", "--spade-hidden", "8", "--identity-dim", "16", "--ndf", "4",
            "--encoder-width", "4", "--threads", "1", "--no-progress", "--sample-every", "0", "--log-every", "1",
            "--workers", "1", "--val-data", str(out / HELDOUT), "--val-every", "2", "--val-count", "2"]
    assert main(args) == 0
    rows = (run / "val.csv").read_text().splitlines()
    assert rows[0].startswith("step,faces,identity_distance") and rows[1].startswith("2,2,")
    assert json.loads((run / "config.json").read_text())["train"]["maps"] == "mixed"
    assert (run / "loss_curve.png").is_file() and "images_per_s" in (run / "log.csv").read_text().splitlines()[0]
