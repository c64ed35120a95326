"""Faces drawn on one frame must not undo each other: a generated face's paste writes its crop's context (the
original pixels, cut before any face was drawn) in a feathered ring around its region, so it must neither wipe
out a neighbour's cover nor bring back a neighbour's original face over that neighbour's generated one."""

from __future__ import annotations

import dataclasses

import cv2
import numpy as np
import pytest
import torch

from sdgan_stream.align import warp_to_image
from sdgan_stream.blend import DEFAULT_FEATHER, feather_alpha, paste_back
from sdgan_stream.config import AnonymizeOptions
from sdgan_stream.covers import cover_mask, cover_region
from sdgan_stream.detect import CenterFaceDetector
from sdgan_stream.faceprep import PreparedFace, prepare_faces
from sdgan_stream.landmarks import LandmarkDetector
from sdgan_stream.render import SdganRenderer
from sdgan_stream.samples import face_photos
from sdgan_stream.types import Face


def _in_image(crop_mask: np.ndarray, prepared: PreparedFace, shape: tuple[int, ...]) -> np.ndarray:
    """(H, W) float32: a crop-space mask warped into the image."""
    out = np.zeros(shape[:2], np.float32)
    patch, (x1, y1, x2, y2) = warp_to_image(crop_mask.astype(np.float32), prepared.matrix, shape)
    out[y1:y2, x1:x2] = patch
    return out


def _ring(prepared: PreparedFace, shape: tuple[int, ...]) -> np.ndarray:
    """(H, W) float32: the paste's alpha outside the face's own region (where it writes the crop's context)."""
    alpha = _in_image(feather_alpha(prepared.region_mask, DEFAULT_FEATHER * prepared.size), prepared, shape)
    return np.where(_in_image(prepared.region_mask, prepared, shape) < 0.5, alpha, 0.0)


@pytest.mark.parametrize("frame_path", ["host", "device"])
def test_a_neighbours_cover_survives_a_generated_faces_paste_ring(frame_path: str) -> None:
    photo = face_photos()[0]
    image = photo.image.copy()
    found = CenterFaceDetector(threshold=0.4, detect_size=None).detect(image)
    big = Face(box=found.boxes[0], score=0.9, landmarks=found.landmarks[0], identity_seed=5)
    renderer = SdganRenderer.from_options(AnonymizeOptions(backend="eager", device="cpu", identity_guard=False,
                                                           fallback="solid", frame_path=frame_path))
    ring = _ring(renderer.prepare(image, [big], steady=False)[0], image.shape)
    ys, xs = np.nonzero(ring > 0.9)
    k = int(np.argmax(xs))  # the strongest ring pixel on the face's right
    cx, cy = int(xs[k]), int(ys[k])
    small_box = np.array([cx - 6, cy - 8, cx + 10, cy + 8], np.float32)  # 16 px: too small to generate
    x1, y1, x2, y2 = small_box.astype(int)
    x, y, w, h = (int(v) for v in (big.box[0], big.box[1], big.box[2] - big.box[0], big.box[3] - big.box[1]))
    image[y1:y2, x1:x2] = cv2.resize(image[y:y + h, x:x + w], (x2 - x1, y2 - y1), interpolation=cv2.INTER_AREA)
    small = Face(box=small_box, score=0.9, identity_seed=7)

    outcomes = renderer.render(image, [big, small])

    assert [(o.method, o.reason) for o in outcomes] == [("solid", "too_small"), ("sdgan", None)]
    region = cover_region(small_box, margin=renderer.fallback.margin, image_shape=image.shape)
    left, top, right, bottom = region
    mask = cover_mask(small_box, region, margin=renderer.fallback.margin)
    assert (image[top:bottom, left:right][mask] == 0).all(), "the paste ring wrote over the small face's cover"


def _inside(mask: np.ndarray) -> np.ndarray:
    """The mask without its 2 px edge (where a warp mixes a crop's region with its context)."""
    return cv2.erode(mask.astype(np.uint8), np.ones((5, 5), np.uint8)) > 0


def _two_faces() -> tuple[np.ndarray, PreparedFace, PreparedFace]:
    """A real face (a) and a copy of its preparation moved right by 70% of its box (b), so that b's paste ring
    reaches into a's region; b's crop context is the original image, as in a frame where both are cut first."""
    photo = face_photos()[0]
    image = photo.image.copy()
    (a,) = prepare_faces(image, [Face(box=photo.face_box, score=0.9)], landmarker=LandmarkDetector(), size=128)
    shift = 0.7 * float(photo.face_box[2] - photo.face_box[0])
    moved = a.matrix.copy()
    moved[:, 2] -= moved[:, :2] @ np.array([shift, 0.0])  # image point p + (shift, 0) -> a's crop point of p
    crop = cv2.warpAffine(image, moved, (a.size, a.size), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
    b = dataclasses.replace(a, matrix=moved, crop=crop)
    return image, a, b


def test_a_paste_ring_never_brings_back_an_earlier_faces_original_pixels() -> None:
    image, a, b = _two_faces()
    region_a = _in_image(a.region_mask, a, image.shape) >= 0.5
    region_b = _in_image(b.region_mask, b, image.shape) >= 0.5
    zone = region_a & ~region_b & (_ring(b, image.shape) > 0.5)
    assert zone.sum() > 200  # the case under test: b's ring lies over a's region

    green = np.zeros((a.size, a.size, 3), np.uint8)
    green[..., 1] = 255
    # b as blend_crop leaves it: generated (blue) over its region, its context (the original) outside
    blue = np.where(b.region_mask[..., None] > 0.5, np.uint8([0, 0, 255]), b.crop).astype(np.uint8)
    unguarded, guarded = image.copy(), image.copy()
    replaced = np.zeros(image.shape[:2], bool)
    for out, mask in ((unguarded, None), (guarded, replaced)):
        paste_back(out, green, a, method="none", replaced=mask)
        paste_back(out, blue, b, method="none", replaced=mask)
    assert (unguarded[zone] != (0, 255, 0)).any(1).all(), "the case under test: unguarded, b's ring writes there"
    assert (guarded[zone] == (0, 255, 0)).all(), "b's ring wrote over a's generated region"
    # (cubic resampling rounds the flat colour by a level or two)
    assert (np.abs(guarded[_inside(region_b)].astype(int) - (0, 0, 255)) <= 3).all(), "b's own region must still be replaced whole"
    assert replaced[region_a].all() and replaced[region_b].all()


def test_the_device_paste_keeps_its_ring_off_an_earlier_faces_region() -> None:
    from sdgan_stream.backends.gpu_warp import feather_alpha as torch_feather, paste_crops

    image, a, b = _two_faces()
    region_a = _in_image(a.region_mask, a, image.shape) >= 0.5
    region_b = _in_image(b.region_mask, b, image.shape) >= 0.5
    zone = region_a & ~region_b & (_ring(b, image.shape) > 0.5)
    green = np.zeros((a.size, a.size, 3), np.float32)
    green[..., 1] = 255
    crop_b = np.where(b.region_mask[..., None] > 0.5, np.float32([0, 0, 255]), b.crop.astype(np.float32))
    crops = torch.from_numpy(np.stack([green, crop_b])).permute(0, 3, 1, 2)
    regions = torch.from_numpy(np.stack([a.region_mask, b.region_mask]))[:, None].float()
    alphas = torch_feather((regions > 0.5).float(), DEFAULT_FEATHER * a.size)
    frame = torch.from_numpy(image).permute(2, 0, 1).float().clone()
    out = paste_crops(frame, crops, alphas, np.stack([a.matrix, b.matrix]), mode="bilinear", regions=regions)
    out = out.round().permute(1, 2, 0).numpy()
    assert zone.sum() > 200
    assert (out[zone] == (0, 255, 0)).all(), "b's ring wrote over a's generated region"
    assert (out[_inside(region_b)] == (0, 0, 255)).all(), "b's own region must still be replaced whole"
