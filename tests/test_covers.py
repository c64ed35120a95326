import numpy as np
import pytest

from sdgan_stream.covers import COVER_METHODS, apply_cover, cover_mask, cover_region


def _noise(h: int = 120, w: int = 160) -> np.ndarray:
    return np.random.default_rng(0).integers(0, 256, (h, w, 3), dtype=np.uint8)


@pytest.mark.parametrize("method", COVER_METHODS)
def test_cover_changes_every_pixel_of_the_box(method: str) -> None:
    image = _noise()
    original = image.copy()
    box = np.array([40, 30, 90, 95], np.float32)
    apply_cover(image, box, method=method)
    inside = (image[30:95, 40:90] != original[30:95, 40:90]).any(axis=2)
    assert inside.mean() > 0.97  # noise: pixelate/blur change (almost) every pixel
    far = (image[:, 140:] != original[:, 140:]).any(axis=2)
    assert not far.any()


def test_ellipse_contains_the_whole_box_even_with_no_margin() -> None:
    box = np.array([20, 20, 60, 80], np.float32)
    region = cover_region(box, margin=0.0, image_shape=(200, 200, 3))
    mask = cover_mask(box, region, margin=0.0)
    left, top = region[0], region[1]
    assert mask[20 - top : 80 - top, 20 - left : 60 - left].all()


@pytest.mark.parametrize(
    "box",
    [[-50, -50, 5, 5], [150, 110, 400, 400], [10, 10, 10, 10], [30, 30, 20, 20], [np.nan, 0, 5, 5], [1e9, 1e9, 2e9, 2e9]],
)
def test_degenerate_boxes_never_raise(box: list[float]) -> None:
    image = _noise()
    apply_cover(image, np.array(box, np.float32), method="solid")


def test_zero_area_box_still_gets_a_visible_cover() -> None:
    image = np.full((50, 50, 3), 200, np.uint8)
    apply_cover(image, np.array([25, 25, 25, 25], np.float32), method="solid")
    assert (image[25, 25] == 0).all()


def test_unknown_method_is_an_error() -> None:
    with pytest.raises(ValueError, match="unknown cover method"):
        apply_cover(_noise(), np.array([1, 1, 9, 9], np.float32), method="swirl")  # type: ignore[arg-type]


@pytest.mark.parametrize("method", ["blur", "pixelate"])
def test_blur_and_pixelate_fade_out_beyond_the_cover(method: str) -> None:
    """Every pixel of the cover ellipse is replaced; past it the cover fades into the frame instead of
    ending in a hard oval edge, and far from it nothing changes."""
    from sdgan_stream.covers import COVER_FEATHER

    image = _noise(200, 200)
    original = image.copy()
    box = np.array([70, 60, 130, 140], np.float32)
    apply_cover(image, box, method=method, margin=0.25)
    region = cover_region(box, margin=0.25, image_shape=image.shape)
    inside = cover_mask(box, region, margin=0.25)
    patch, before = image[region[1]:region[3], region[0]:region[2]], original[region[1]:region[3], region[0]:region[2]]
    assert (patch != before).any(axis=2)[inside].mean() > 0.97
    # a ring just outside the ellipse: partly blended (neither untouched nor fully replaced)
    grown = cover_region(box, margin=0.25, image_shape=image.shape, grow=COVER_FEATHER * 80)
    changed = (image != original).any(axis=2)
    ring = np.zeros(image.shape[:2], bool)
    ring[grown[1]:grown[3], grown[0]:grown[2]] = True
    ring[region[1]:region[3], region[0]:region[2]][inside] = False
    assert 0.3 < changed[ring].mean()
    assert not changed[: max(grown[1] - 1, 0)].any() and not changed[:, grown[2] + 1 :].any()


def test_solid_stays_a_hard_oval() -> None:
    image = np.full((100, 100, 3), 200, np.uint8)
    box = np.array([30, 30, 70, 70], np.float32)
    apply_cover(image, box, method="solid", margin=0.0)
    region = cover_region(box, margin=0.0, image_shape=image.shape)
    inside = cover_mask(box, region, margin=0.0)
    patch = image[region[1]:region[3], region[0]:region[2]]
    assert (patch[inside] == 0).all() and (patch[~inside] == 200).all()
    assert (image[:region[1]] == 200).all()


def test_the_default_fallback_is_the_blur_cover() -> None:
    from sdgan_stream.config import AnonymizeOptions

    assert AnonymizeOptions().fallback == "blur"
