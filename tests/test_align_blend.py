"""Alignment round trips, paste-back, masked input and the inspect tool."""

from __future__ import annotations

import dataclasses
import json

import cv2
import numpy as np
import pytest

from sdgan_stream.align import (
    alignment_matrix,
    apply_matrix,
    crop_to_image_points,
    matrix_rotation_deg,
    matrix_scale,
    template_points,
    warp_to_crop,
    warp_to_image,
)
from sdgan_stream.blend import (
    blend_crop,
    boundary_score,
    feather_alpha,
    match_color,
    paste_back,
    shading_basis,
    skin_fitter,
)
from sdgan_stream.faceprep import FaceFallback, PreparedFace, masked_input, prepare_face_from_landmarks, prepare_faces
from sdgan_stream.semantic import ALWAYS_VISIBLE, class_id, mean_face_landmarks
from sdgan_stream.types import Face

ASTRONAUT = (  # CenterFace box and 5 points on skimage's astronaut (see test_landmarks.py)
    [181.5, 58.2, 269.9, 177.8],
    [[203.2, 101.7], [247.0, 104.5], [223.3, 125.1], [203.4, 142.3], [241.3, 144.4]],
)


@pytest.fixture(scope="module")
def astronaut() -> np.ndarray:
    return pytest.importorskip("skimage.data").astronaut()


@pytest.fixture(scope="module")
def landmarker():
    from sdgan_stream.landmarks import LandmarkDetector

    return LandmarkDetector()


def _prepare(image, landmarker, size=128) -> PreparedFace:
    box, points = ASTRONAUT
    (prepared,) = prepare_faces(
        image, [Face(box=np.float32(box), score=0.9, landmarks=np.float32(points))], landmarker=landmarker, size=size
    )
    assert isinstance(prepared, PreparedFace)
    return prepared


# ---------------------------------------------------------------- alignment


@pytest.mark.parametrize("angle", [0.0, 30.0, -45.0])
@pytest.mark.parametrize("scale", [0.3, 1.0, 2.5])
def test_alignment_recovers_similarity(angle, scale):
    size = 128
    template = template_points(size)
    m = cv2.getRotationMatrix2D((64.0, 64.0), angle, scale)
    m[:, 2] += (300.0, 200.0)
    face_points = apply_matrix(template, m)  # a face put into an image by a known similarity
    matrix = alignment_matrix(face_points, size)
    assert np.allclose(apply_matrix(face_points, matrix), template, atol=1e-6)
    assert matrix_scale(matrix) == pytest.approx(1 / scale)
    # the face was turned counter-clockwise by `angle` (OpenCV's sense); the crop turns it back clockwise
    assert matrix_rotation_deg(matrix) == pytest.approx(angle, abs=1e-6)
    points = np.random.default_rng(0).uniform(0, 600, (50, 2))
    assert np.abs(crop_to_image_points(apply_matrix(points, matrix), matrix) - points).max() < 1e-6


def _blob_image(height: int, width: int, centres: np.ndarray, sigma: float) -> np.ndarray:
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float64)
    image = np.zeros((height, width), np.float64)
    for cx, cy in centres:
        image += np.exp(-((xx - cx) ** 2 + (yy - cy) ** 2) / (2 * sigma**2))
    return np.repeat((image * 250).astype(np.uint8)[..., None], 3, axis=2)


def _centroid(image: np.ndarray, around: np.ndarray, radius: float) -> np.ndarray:
    grey = image[..., 0].astype(np.float64)
    yy, xx = np.mgrid[0 : grey.shape[0], 0 : grey.shape[1]]
    w = grey * (((xx - around[0]) ** 2 + (yy - around[1]) ** 2) < radius**2)
    return np.array([(w * xx).sum(), (w * yy).sum()]) / w.sum()


@pytest.mark.parametrize(("face_scale", "angle"), [(1.0, 0.0), (0.6, 35.0), (3.0, -40.0)])
def test_image_round_trip_under_one_pixel(face_scale, angle):
    """Warp to the crop and back: blobs land within 1 px of where they were (incl. the downscale path)."""
    size = 128
    template = template_points(size)
    m = cv2.getRotationMatrix2D((64.0, 64.0), angle, face_scale)
    m[:, 2] += (220.0, 180.0)
    lm5 = apply_matrix(template, m)
    matrix = alignment_matrix(lm5, size)
    sigma = 2.5 * face_scale
    image = _blob_image(560, 640, lm5, sigma)
    crop = warp_to_crop(image, matrix, size)
    for point_image, point_crop in zip(lm5, template):
        assert np.linalg.norm(_centroid(crop, point_crop, 6) - point_crop) < 0.5
    warped = warp_to_image(crop, matrix, image.shape)
    assert warped is not None
    patch, (x1, y1, x2, y2) = warped
    back = np.zeros_like(image)
    back[y1:y2, x1:x2] = patch
    for point in lm5:
        assert np.linalg.norm(_centroid(back, point, 4 * sigma) - _centroid(image, point, 4 * sigma)) < 1.0


def test_crop_outside_the_image_is_padded():
    image = np.full((100, 100, 3), 77, np.uint8)
    template = template_points(128)
    lm5 = template * 0.5 + [80.0, -20.0]  # face half outside the top-right corner
    crop = warp_to_crop(image, alignment_matrix(lm5, 128), 128)
    assert crop.shape == (128, 128, 3) and np.all(crop == 77)  # replicated border, no black hole
    assert warp_to_image(crop, alignment_matrix(template + 5000, 128), image.shape) is None


# ---------------------------------------------------------------- prepare + paste back


def test_prepared_face_fields(astronaut, landmarker):
    prepared = _prepare(astronaut, landmarker)
    assert prepared.crop.shape == (128, 128, 3) and prepared.crop.dtype == np.uint8
    assert prepared.labels.shape == (128, 128)
    assert prepared.region_mask.dtype == np.float32 and prepared.region_mask.max() == 1.0
    assert prepared.landmarks68_crop.shape == (68, 2) and prepared.matrix.shape == (2, 3)
    face = prepared.labels > 0
    assert np.all(prepared.region_mask[face] == 1.0)  # the whole face (skin, forehead, jaw) is replaced
    assert prepared.region_mask.sum() > face.sum()  # dilated past the outline
    assert 0.2 < prepared.region_mask.mean() < 0.5  # and the rest of the crop is context
    masked = masked_input(prepared)
    assert np.all(masked[prepared.region_mask > 0] == 0)
    assert np.array_equal(masked[prepared.region_mask == 0], prepared.crop[prepared.region_mask == 0])


@pytest.mark.parametrize("size", [128, 256])
def test_pasting_the_unmodified_crop_leaves_the_frame_unchanged(astronaut, landmarker, size):
    prepared = _prepare(astronaut, landmarker, size)
    image = astronaut.copy()
    paste_back(image, prepared.crop.copy(), prepared)
    diff = np.abs(image.astype(np.int16) - astronaut.astype(np.int16))
    # What a plain warp there and back costs (resampling), with no blending or colour change at all.
    warped = warp_to_image(prepared.crop, prepared.matrix, astronaut.shape, interpolation=cv2.INTER_CUBIC)
    patch, (x1, y1, x2, y2) = warped
    resample = np.abs(patch.astype(np.int16) - astronaut[y1:y2, x1:x2].astype(np.int16))
    changed = diff[y1:y2, x1:x2]
    assert changed.mean() <= resample.mean() + 0.1  # no colour shift, no seam: only resampling
    outside = np.ones(astronaut.shape[:2], bool)
    outside[y1:y2, x1:x2] = False
    assert not diff[outside].any()
    assert diff.mean() < 0.5


def test_paste_back_on_a_smooth_frame_is_exact_within_tolerance():
    yy, xx = np.mgrid[0:300, 0:400].astype(np.float32)
    image = np.stack([80 + 0.3 * xx, 60 + 0.4 * yy, 120 + 0.1 * (xx + yy)], -1).astype(np.uint8)
    box, points = ASTRONAUT
    face = Face(box=np.float32(box), score=0.9, landmarks=np.float32(points))
    # landmarks of a mean face placed on the astronaut's 5 points
    lm68 = crop_to_image_points(mean_face_landmarks(128), alignment_matrix(np.float64(points), 128))
    prepared = prepare_face_from_landmarks(image, face, lm68, size=128)
    out = image.copy()
    paste_back(out, prepared.crop.copy(), prepared)
    assert np.abs(out.astype(int) - image.astype(int)).max() <= 2


def test_region_never_keeps_original_pixels(astronaut, landmarker):
    prepared = _prepare(astronaut, landmarker)
    generated = np.full_like(prepared.crop, (40, 160, 90))
    image = astronaut.copy()
    paste_back(image, generated, prepared, method="none")
    # every image pixel whose crop position is well inside the region now shows the generated colour
    inner = cv2.erode(prepared.region_mask.astype(np.uint8), np.ones((3, 3), np.uint8))
    ys, xs = np.nonzero(inner)
    pts = np.round(crop_to_image_points(np.stack([xs, ys], 1).astype(np.float64), prepared.matrix)).astype(int)
    values = image[pts[:, 1], pts[:, 0]].astype(int)
    assert np.abs(values - (40, 160, 90)).max() <= 1


def test_colour_matching_removes_a_cast(astronaut, landmarker):
    prepared = _prepare(astronaut, landmarker)
    cast = np.clip(prepared.crop.astype(np.int16) * [0.8, 0.9, 1.2] + [0, 0, 25], 0, 255).astype(np.uint8)
    skin = prepared.labels == class_id("skin")
    matched = match_color(cast, prepared.crop, skin)
    before = np.abs(cast[skin].astype(int) - prepared.crop[skin]).mean()
    after = np.abs(matched[skin].astype(int) - prepared.crop[skin]).mean()
    assert after < before / 3
    box = np.int32(ASTRONAUT[0])
    inner = (slice(box[1] + 20, box[3] - 20), slice(box[0] + 20, box[2] - 20))
    errors = {}
    for method in ("none", "lab", "seamless"):
        image = astronaut.copy()
        paste_back(image, cast, prepared, method=method)
        errors[method] = np.abs(image[inner].astype(int) - astronaut[inner]).mean()
    assert errors["lab"] < errors["none"] / 2 and errors["seamless"] < errors["none"] / 2


def _with_skin_light(crop: np.ndarray, gain_left: float, gain_right: float, offset: float) -> np.ndarray:
    """The crop under another light: a horizontal gain ramp and an offset (a darker / paler person)."""
    ramp = np.linspace(gain_left, gain_right, crop.shape[1], dtype=np.float32)[None, :, None]
    return np.clip(crop.astype(np.float32) * ramp + offset, 0, 255).astype(np.uint8)


@pytest.mark.parametrize(("gains", "offset"), [((0.45, 0.45), 0.0), ((1.0, 1.0), 60.0), ((0.4, 1.2), 0.0)],
                         ids=["dark", "pale", "side_light"])
def test_seamless_skin_follows_the_frame(astronaut, landmarker, gains, offset):
    """A generated face lit or toned unlike the frame comes out in the frame's skin colour and light."""
    prepared = _prepare(astronaut, landmarker)
    generated = _with_skin_light(prepared.crop, *gains, offset)
    skin = prepared.labels == class_id("skin")
    lab = lambda im: cv2.cvtColor(im.astype(np.float32) / 255.0, cv2.COLOR_RGB2Lab)  # noqa: E731
    reference = lab(prepared.crop)
    for method, limit in (("none", None), ("seamless", 3.0)):
        out = blend_crop(generated, prepared, method=method)
        delta = lab(out) - reference
        if limit is None:
            assert np.linalg.norm(delta[skin].mean(0)) > 8.0  # the test's light is far from the frame's
        else:
            assert np.linalg.norm(delta[skin].mean(0)) < limit
            half = skin.shape[1] // 2  # and both halves of the face, so a side light is undone too
            assert abs(delta[:, :half][skin[:, :half]][:, 0].mean() - delta[:, half:][skin[:, half:]][:, 0].mean()) < limit


def _stepped(prepared: PreparedFace, shift: float) -> np.ndarray:
    """A 'generated' crop as the renderer composes it: inside the region the original mirrored (another
    face's detail) and shifted in brightness, outside the original; pasted as it is, a colour step runs
    all along the region's edge."""
    face = np.clip(prepared.crop[:, ::-1].astype(np.int16) + int(shift), 0, 255).astype(np.uint8)
    return np.where(prepared.region_mask[..., None] > 0.5, face, prepared.crop)


def test_boundary_score_is_one_for_an_untouched_frame_and_high_for_a_seam(astronaut, landmarker):
    prepared = _prepare(astronaut, landmarker)
    assert boundary_score(astronaut, astronaut, prepared) == pytest.approx(1.0)
    round_trip = astronaut.copy()
    paste_back(round_trip, prepared.crop.copy(), prepared, method="none")
    assert 0.8 < boundary_score(round_trip, astronaut, prepared) < 1.05  # resampling only
    seamed = astronaut.copy()
    paste_back(seamed, _stepped(prepared, 40), prepared, method="none")
    assert boundary_score(seamed, astronaut, prepared) > 1.4


@pytest.mark.parametrize("shift", [-50, 50])
def test_seamless_paste_leaves_no_seam(astronaut, landmarker, shift):
    """A face darker or brighter than the frame is pasted with a boundary score at the level of an
    untouched frame; pasted as it is, it is a visible seam."""
    prepared = _prepare(astronaut, landmarker)
    generated = _stepped(prepared, shift)
    scores = {}
    for method in ("none", "seamless"):
        image = astronaut.copy()
        paste_back(image, generated, prepared, method=method)
        scores[method] = boundary_score(image, astronaut, prepared)
    assert scores["none"] > 1.4
    assert 0.5 < scores["seamless"] < 1.2


def test_seamless_blend_reads_no_pixel_of_the_original_face(astronaut, landmarker):
    """Inside the region, cloning depends on the original only outside it; the skin colour steps carry
    21 numbers of it (a quadratic Lab field and a detail spread per channel), nothing finer: another
    "face" with the same field and spread but its own detail gives the same result."""
    prepared = _prepare(astronaut, landmarker)
    region = prepared.region_mask > 0.5
    skin = prepared.labels == class_id("skin")
    generated = prepared.crop[:, ::-1].copy()
    rng = np.random.default_rng(1)
    noise_rgb = prepared.crop.copy()
    noise_rgb[region] = rng.integers(0, 256, (int(region.sum()), 3), dtype=np.uint8)
    assert np.array_equal(blend_crop(generated, prepared, method="poisson"),
                          blend_crop(generated, dataclasses.replace(prepared, crop=noise_rgb), method="poisson"))

    lab = cv2.cvtColor(prepared.crop.astype(np.float32) / 255.0, cv2.COLOR_RGB2Lab)
    field = skin_fitter(skin)(lab)
    spread = (lab - field)[skin].std(0)
    basis = shading_basis(prepared.size)[skin.ravel()]
    detail = cv2.GaussianBlur(rng.normal(0.0, 1.0, lab.shape).astype(np.float32), (0, 0), 1.0)
    on_skin = detail[skin]
    on_skin -= basis @ np.linalg.lstsq(basis, on_skin, rcond=None)[0]  # no field of its own
    detail[skin] = on_skin / on_skin.std(0) * spread  # the original's spread
    other = lab.copy()
    other[region] = (field + detail)[region]
    other_rgb = prepared.crop.copy()
    other_rgb[region] = np.clip(cv2.cvtColor(other, cv2.COLOR_Lab2RGB)[region] * 255 + 0.5, 0, 255).astype(np.uint8)
    assert np.abs(other_rgb[skin].astype(int) - prepared.crop[skin]).mean() > 5  # a different face...
    same = np.abs(blend_crop(generated, dataclasses.replace(prepared, crop=other_rgb)).astype(int)
                  - blend_crop(generated, prepared).astype(int))
    # ...the same result, within what 8-bit rounding and gamut clipping of the other face leave (a face of
    # other statistics moves the result by ~37 levels on average)
    assert same[region].mean() < 1.5 and np.percentile(same[region], 99) <= 6


@pytest.mark.parametrize("scale", [0.85, 1.12])
def test_seamless_paste_of_a_smaller_or_larger_face(astronaut, landmarker, scale):
    """The map scaled about the face (the region the union of both, as the renderer's reshape does)."""
    from sdgan_stream.faceprep import region_mask_from_labels
    from sdgan_stream.semantic import rasterize_semantic_map

    prepared = _prepare(astronaut, landmarker)
    points = prepared.landmarks68_crop.astype(np.float64)
    centre = points[27:36].mean(0)
    points = centre + (points - centre) * scale
    labels = rasterize_semantic_map(points, prepared.size)
    region = np.maximum(prepared.region_mask, region_mask_from_labels(labels, points))
    reshaped = dataclasses.replace(prepared, labels=labels, region_mask=region)
    generated = _stepped(reshaped, 30)
    image = astronaut.copy()
    paste_back(image, generated, reshaped)
    assert boundary_score(image, astronaut, reshaped) < 1.2


def test_feather_alpha_ramps_outward():
    mask = np.zeros((64, 64), np.float32)
    mask[16:48, 16:48] = 1
    alpha = feather_alpha(mask, 6.0)
    assert np.all(alpha[mask > 0] == 1.0)
    row = alpha[32, 48:64]
    assert np.all(np.diff(row) <= 1e-6) and row[0] == 1.0 and row[-1] == 0.0
    assert 0 < alpha[32, 51] < 1


def test_paste_back_at_the_border_and_wrong_sizes(astronaut, landmarker):
    cut = np.ascontiguousarray(astronaut[:150])
    box, points = ASTRONAUT
    (prepared,) = prepare_faces(
        cut, [Face(box=np.float32(box), score=0.9, landmarks=np.float32(points))], landmarker=landmarker, size=128
    )
    assert isinstance(prepared, PreparedFace)
    image = cut.copy()
    paste_back(image, cv2.resize(np.full_like(prepared.crop, 200), (64, 64)), prepared)  # resized to fit
    assert image.shape == cut.shape and (image != cut).any()
    with pytest.raises(ValueError):
        paste_back(image, np.zeros((128, 128), np.uint8), prepared)


def test_fallbacks_come_back_in_order(astronaut, landmarker):
    box, points = ASTRONAUT
    faces = [
        Face(box=np.float32(box), score=0.9, landmarks=np.float32(points)),
        Face(box=np.float32([10, 10, 20, 20]), score=0.9),
    ]
    results = prepare_faces(astronaut, faces, landmarker=landmarker)
    assert isinstance(results[0], PreparedFace)
    assert isinstance(results[1], FaceFallback) and results[1].reason == "too_small"
    # a plain callable landmarker works too
    results = prepare_faces(astronaut, faces, landmarker=landmarker.__call__)
    assert isinstance(results[0], PreparedFace) and results[1].reason == "landmarks_failed"


# ---------------------------------------------------------------- inspect


def _collage() -> np.ndarray:
    """Several real faces: two photos, an in-plane rotated copy, a profile, a tiny one, one cut by the border."""
    skimage_data = pytest.importorskip("skimage.data")
    cbook = pytest.importorskip("matplotlib.cbook")
    astro = skimage_data.astronaut()
    grace = cv2.cvtColor(cv2.imread(str(cbook.get_sample_data("grace_hopper.jpg", asfileobj=False))), cv2.COLOR_BGR2RGB)
    camera = np.repeat(skimage_data.camera()[..., None], 3, axis=2)
    canvas = np.full((1024, 1536, 3), 128, np.uint8)
    canvas[0:512, 0:512] = astro
    canvas[0:600, 512:1024] = grace
    canvas[0:512, 1024:1536] = camera
    m = cv2.getRotationMatrix2D((225.0, 118.0), 35, 1.0)
    m[:, 2] += (200 - 225, 200 - 118)
    canvas[600:1000, 40:440] = cv2.warpAffine(astro, m, (400, 400), borderMode=cv2.BORDER_REFLECT101)
    canvas[700:751, 600:660] = cv2.resize(grace, (60, 51), interpolation=cv2.INTER_AREA)
    canvas[1024 - 150 : 1024, 1100:1400] = astro[20:170, 80:380]
    return canvas


def test_inspect_writes_maps_and_lists_classes(tmp_path, landmarker):
    detect = pytest.importorskip("sdgan_stream.detect")
    from sdgan_stream.inspect_faces import inspect_image, write_image

    image_path = tmp_path / "collage.png"
    write_image(image_path, _collage())
    out = tmp_path / "inspect"
    detector = detect.CenterFaceDetector(threshold=0.5, detect_size=None)

    def fake_generator(prepared):  # stands in for the SDGAN generator: the crop, flipped
        return [p.crop[:, ::-1] for p in prepared]

    records = inspect_image(image_path, out, detector=detector, landmarker=landmarker, generator=fake_generator)
    saved = json.loads((out / "faces.json").read_text())
    assert saved["faces"] == records
    served = [r for r in records if r["fallback"] is None]
    reasons = sorted(r["fallback"] for r in records if r["fallback"] is not None)
    assert len(served) == 4  # astronaut, grace, rotated astronaut, astronaut cut by the border
    assert reasons == ["profile", "too_small"]  # the cameraman, the tiny grace
    for record in served:
        assert set(ALWAYS_VISIBLE) <= set(record["classes"])
        assert len(record["landmarks68"]) == 68 and len(record["box"]) == 4
        for name in ("crop", "semantic", "mask", "composite", "generated"):
            assert (out / record["dir"] / f"{name}.png").is_file()
    assert (out / "overview.png").is_file() and (out / "anonymized.png").is_file()


def test_face_that_does_not_fit_the_crop_is_covered():
    image = np.full((256, 256, 3), 100, np.uint8)
    landmarks = mean_face_landmarks(128) + 64.0
    stretched = landmarks.copy()
    stretched[4:13, 1] += 70.0  # a chin far below anything a face does: the map would leave the crop
    face = Face(box=np.float32([80, 80, 180, 200]), score=0.9)
    ok, bad = (prepare_faces(image, [face], landmarker=lambda img, faces: [lm])[0] for lm in (landmarks, stretched))
    assert isinstance(ok, PreparedFace)
    assert isinstance(bad, FaceFallback) and bad.reason == "landmarks_failed"


# ---------------------------------------------------------------- turned heads


def _photo(name: str) -> np.ndarray:
    if name == "astronaut":
        return pytest.importorskip("skimage.data").astronaut()
    cbook = pytest.importorskip("matplotlib.cbook")
    return cv2.cvtColor(cv2.imread(str(cbook.get_sample_data("grace_hopper.jpg", asfileobj=False))), cv2.COLOR_BGR2RGB)


@pytest.fixture(scope="module")
def centerface():
    return pytest.importorskip("sdgan_stream.detect").CenterFaceDetector(threshold=0.5, detect_size=None)


@pytest.mark.parametrize("name", ["astronaut", "grace_hopper"])
@pytest.mark.parametrize("yaw", [-45, -30, -15, 15, 30, 45])
def test_turned_face_is_never_left_partly_visible(name, yaw, landmarker, centerface):
    """A frontal photo turned by a yaw-like warp: the face (its frontal outline, jaw and forehead, carried
    through the same warp) lies wholly inside the replaced region, or inside the cover if it falls back;
    up to 45 degrees it is served with a generated face."""
    from sdgan_stream.covers import cover_mask, cover_region
    from sdgan_stream.samples import turn_head
    from sdgan_stream.semantic import face_outline

    photo = _photo(name)
    found = centerface.detect(photo)
    frontal = Face(box=found.boxes[0], score=0.9, landmarks=found.landmarks[0])
    (fit,) = landmarker.fit(photo, [frontal])
    turned = turn_head(photo, frontal.box, yaw)
    outline, _ = turned.points(face_outline(fit.points))  # hidden points land on the silhouette
    truth = np.zeros(photo.shape[:2], np.uint8)
    cv2.fillPoly(truth, [np.round(outline).astype(np.int32)], 1)

    found = centerface.detect(turned.image)
    best = int(np.argmax(found.scores))
    face = Face(box=found.boxes[best], score=float(found.scores[best]), landmarks=found.landmarks[best])
    (prepared,) = prepare_faces(turned.image, [face], landmarker=landmarker)
    assert isinstance(prepared, PreparedFace), prepared
    warped = warp_to_image(prepared.region_mask, prepared.matrix, photo.shape)
    assert warped is not None
    patch, (x1, y1, x2, y2) = warped
    replaced = np.zeros(photo.shape[:2], bool)
    replaced[y1:y2, x1:x2] = patch > 0.5  # paste_back's alpha is 1 there
    assert not (truth.astype(bool) & ~replaced).any()
    # and had it fallen back, the cover would hide the same face
    region = cover_region(face.box, margin=0.25, image_shape=photo.shape)
    covered = np.zeros(photo.shape[:2], bool)
    covered[region[1]:region[3], region[0]:region[2]] = cover_mask(face.box, region, margin=0.25)
    assert not (truth.astype(bool) & ~covered).any()
