"""The 11-class semantic map rasterized from 68 landmarks."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from sdgan_stream.align import apply_matrix
from sdgan_stream.faceprep import prepare_faces
from sdgan_stream.semantic import (
    ALWAYS_VISIBLE,
    CLASS_NAMES,
    class_id,
    classes_present,
    colorize,
    face_region,
    mean_face_landmarks,
    mouth_opening,
    one_hot,
    rasterize_semantic_map,
)
from sdgan_stream.types import Face

ASTRONAUT = (  # CenterFace box and 5 points on skimage's astronaut (see test_landmarks.py)
    [181.5, 58.2, 269.9, 177.8],
    [[203.2, 101.7], [247.0, 104.5], [223.3, 125.1], [203.4, 142.3], [241.3, 144.4]],
)
GRACE = (
    [174.8, 131.5, 357.0, 336.3],
    [[221.4, 200.0], [304.3, 192.2], [265.9, 237.4], [235.9, 279.7], [304.0, 273.1]],
)


def test_class_names_follow_the_paper():
    assert CLASS_NAMES == (
        "background", "skin", "l_brow", "r_brow", "l_eye", "r_eye", "nose", "u_lip", "mouth", "l_lip", "hair",
    )  # fmt: skip


@pytest.fixture(scope="module")
def photos() -> dict[str, np.ndarray]:
    skimage_data = pytest.importorskip("skimage.data")
    cbook = pytest.importorskip("matplotlib.cbook")
    grace = cv2.imread(str(cbook.get_sample_data("grace_hopper.jpg", asfileobj=False)))
    return {"astronaut": skimage_data.astronaut(), "grace": cv2.cvtColor(grace, cv2.COLOR_BGR2RGB)}


@pytest.fixture(scope="module")
def landmarker():
    from sdgan_stream.landmarks import LandmarkDetector

    return LandmarkDetector()


@pytest.mark.parametrize("size", [128, 256])
@pytest.mark.parametrize("name", ["astronaut", "grace"])
def test_real_frontal_face_has_the_eight_visible_classes(photos, landmarker, name, size):
    box, points = ASTRONAUT if name == "astronaut" else GRACE
    face = Face(box=np.float32(box), score=0.9, landmarks=np.float32(points))
    (prepared,) = prepare_faces(photos[name], [face], landmarker=landmarker, size=size)
    labels = prepared.labels
    assert labels.shape == (size, size) and labels.dtype == np.uint8
    present = classes_present(labels)
    assert set(ALWAYS_VISIBLE) <= set(present)
    assert "hair" not in present  # never claimed from landmarks
    # Grace's lips are closed; the astronaut smiles with her teeth showing.
    assert ("mouth" in present) == (name == "astronaut")
    # each feature sits where its landmarks are
    lm = prepared.landmarks68_crop
    for name_, ids in (("l_eye", range(36, 42)), ("r_eye", range(42, 48)), ("nose", [30, 33])):
        x, y = np.round(lm[list(ids)].mean(0)).astype(int)
        assert labels[y, x] == class_id(name_), name_
    # the face takes roughly the central two thirds of the crop
    ys, xs = np.nonzero(labels)
    assert 0.4 * size < xs.max() - xs.min() < 0.75 * size
    assert 0.5 * size < ys.max() - ys.min() < 0.8 * size


def _open_mouth(landmarks: np.ndarray, gap: float) -> np.ndarray:
    """Synthetic warp: lower inner/outer lip and chin move down by ``gap`` px (a jaw drop)."""
    out = landmarks.copy()
    lower = [55, 56, 57, 58, 59, 65, 66, 67] + list(range(4, 13))
    weights = np.ones(len(lower))
    weights[-9:] = [0.3, 0.6, 0.8, 0.95, 1.0, 0.95, 0.8, 0.6, 0.3]  # the jaw moves less towards the ears
    out[lower, 1] += gap * weights
    return out


def test_mouth_appears_when_lips_part_and_follows_the_opening():
    size = 256
    closed = mean_face_landmarks(size)
    assert mouth_opening(closed) == 0.0
    labels = rasterize_semantic_map(closed, size)
    assert "mouth" not in classes_present(labels)
    assert set(ALWAYS_VISIBLE) <= set(classes_present(labels))

    areas, heights = [], []
    for gap in (4.0, 8.0, 14.0, 20.0):
        opened = _open_mouth(closed, gap)
        labels = rasterize_semantic_map(opened, size)
        mouth = labels == class_id("mouth")
        assert mouth.any(), gap
        ys, xs = np.nonzero(mouth)
        areas.append(int(mouth.sum()))
        centre = mouth[:, int(round(opened[62, 0]))]
        heights.append(int(centre.sum()))  # mouth pixels on the middle column
        # the inner mouth sits between the inner lip contours and the mouth corners
        assert xs.min() >= opened[60, 0] - 1 and xs.max() <= opened[64, 0] + 1
        assert ys.min() >= opened[60:68, 1].min() - 1 and ys.max() <= opened[60:68, 1].max() + 1
        # and the lower lip moved with the jaw
        l_lip_y = np.nonzero(labels == class_id("l_lip"))[0]
        assert l_lip_y.max() == pytest.approx(opened[57, 1], abs=1.5)
        assert abs(heights[-1] - gap) <= 1.5, (heights[-1], gap)
    assert areas == sorted(areas) and areas[0] < areas[-1] / 3


def test_map_follows_in_plane_rotation():
    size = 256
    base = mean_face_landmarks(size)
    labels = rasterize_semantic_map(base, size)
    m = cv2.getRotationMatrix2D((size / 2, size / 2), 30, 1.0)
    rotated = rasterize_semantic_map(apply_matrix(base, m), size)
    expected = cv2.warpAffine(labels, m, (size, size), flags=cv2.INTER_NEAREST)
    for name in ("skin", "nose", "l_brow", "u_lip"):
        a, b = rotated == class_id(name), expected == class_id(name)
        iou = (a & b).sum() / (a | b).sum()
        assert iou > 0.7, (name, iou)


def test_face_region_reaches_over_the_forehead():
    size = 256
    lm = mean_face_landmarks(size)
    region = face_region(lm, size)
    brow_top = lm[17:27, 1].min()
    nose_drop = lm[30, 1] - lm[17:27, 1].mean()
    top = np.nonzero(region.any(axis=1))[0].min()
    assert brow_top - top > 0.5 * nose_drop  # forehead covered, not just the features
    assert region[int(lm[8, 1]) - 2, int(lm[8, 0])]  # down to the chin
    assert not region[int(lm[8, 1]) + 4, int(lm[8, 0])]


def _turned(points: np.ndarray, yaw_deg: float) -> np.ndarray:
    """Mean-face points turned about a vertical axis (a cylinder through the jaw ends), nose standing out."""
    p = points.copy()
    centre = (p[0, 0] + p[16, 0]) / 2
    radius = (p[16, 0] - p[0, 0]) / 2
    u = np.clip((p[:, 0] - centre) / radius, -1, 1)
    depth = np.sqrt(1 - u**2) * radius
    depth[27:36] += np.linspace(0.1, 0.45, 9) * radius  # the nose in front of the face
    t = np.radians(yaw_deg)
    p[:, 0] = centre + (p[:, 0] - centre) * np.cos(t) + depth * np.sin(t)
    return p


@pytest.mark.parametrize("yaw", [-50.0, 50.0])
def test_face_region_of_a_turned_head_holds_every_point_and_a_level_forehead(yaw):
    size = 256
    frontal = mean_face_landmarks(size)
    turned = _turned(frontal, yaw)
    region = face_region(turned, size)
    xy = np.round(turned).astype(int)
    assert region[xy[:, 1], xy[:, 0]].all()  # the nose tip beyond the far cheek included
    # the forehead's apex turns with the nose bridge: the far side is as high as the near side
    cols = region.any(axis=0).nonzero()[0]
    left, right = cols.min(), cols.max()
    quarter = (right - left) // 4
    tops = [np.nonzero(region[:, c])[0].min() for c in (left + quarter, right - quarter)]
    assert abs(tops[0] - tops[1]) < 0.12 * (right - left)


def test_one_hot_colorize_and_classes_present():
    labels = np.array([[0, 1], [8, 10]], np.uint8)
    encoded = one_hot(labels)
    assert encoded.shape == (11, 2, 2) and encoded.dtype == np.float32
    assert np.all(encoded.sum(0) == 1) and encoded[8, 1, 0] == 1
    assert one_hot(np.stack([labels, labels])).shape == (2, 11, 2, 2)
    assert colorize(labels).shape == (2, 2, 3)
    assert classes_present(labels) == ["background", "skin", "mouth", "hair"]
    with pytest.raises(ValueError):
        one_hot(np.array([[11]]))


def test_rasterize_rejects_bad_input():
    with pytest.raises(ValueError):
        rasterize_semantic_map(np.zeros((5, 2)), 128)
    with pytest.raises(ValueError):
        rasterize_semantic_map(np.full((68, 2), np.nan), 128)
    with pytest.raises(ValueError):
        rasterize_semantic_map(np.zeros((68, 2)), 128)  # eyes coincide


def test_closed_eyes_keep_their_class():
    size = 128
    lm = mean_face_landmarks(size)
    lm[[37, 38, 43, 44], 1] = lm[[41, 40, 47, 46], 1]  # lids shut
    present = classes_present(rasterize_semantic_map(lm, size))
    assert "l_eye" in present and "r_eye" in present
