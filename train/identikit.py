"""Identikit faces: new identities composited region by region from a few aligned photos.

With a dozen photos (or two), augmentation *is* the data set. A target identity is a
:class:`Recipe`: which photo gives the skin (and face texture), the brows and eyes, the nose, the
mouth, plus continuous appearance settings (skin tone, lip colour, brow darkness, smoothness, ...).
Every region is warped onto one target geometry with the piecewise-affine landmark warp, colour-matched
to the skin around it, feathered in, and recoloured. The recipe is a *deterministic function of the
identity code* (:func:`recipe_from_code`) over a given list of donor photos, so the generator learns
"code -> appearance" over the whole unit sphere of codes, which is exactly where
:func:`sdgan_stream.models.identity_code` draws them at inference. The trainer's donors are the photos
of everyone but the person being replaced (``train.dataset.IdentikitSampler``), so one code picks
different photos for different source people: appearance = f(code, who is replaced), never that person.

Coordinates are aligned-crop pixels; images are RGB uint8 (S, S, 3).
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np
from scipy.special import ndtr

from sdgan_stream.semantic import class_id, rasterize_semantic_map

from .warp import warp_image

__all__ = ["FaceSource", "RECIPE_RANGES", "Recipe", "compose_identikit", "recipe_dims", "recipe_from_code"]


@dataclass(frozen=True)
class FaceSource:
    """One aligned photo the identikit can borrow regions from."""

    name: str
    crop: np.ndarray  # (S, S, 3) uint8 RGB
    landmarks: np.ndarray  # (68, 2) float64 crop pixels
    identity: int = 0


# Continuous recipe settings: (low, high); a code coordinate maps through the normal CDF into the range.
RECIPE_RANGES: dict[str, tuple[float, float]] = {
    "tone_l": (0.62, 1.1),  # skin lightness factor
    "tone_a": (-5.0, 8.0),  # skin redness shift (CIELAB a*)
    "tone_b": (-8.0, 10.0),  # skin yellowness shift (CIELAB b*)
    "lip_a": (-4.0, 16.0),
    "lip_l": (0.78, 1.08),
    "brow_dark": (0.5, 1.1),  # brow lightness factor relative to the skin change
    "eye_dark": (0.8, 1.05),  # eye-area lightness (lids, lashes)
    "smooth": (0.0, 1.0),  # skin smoothing (younger, plainer)
    "detail": (0.0, 0.5),  # local contrast boost (older, rougher)
    "cheek_a": (0.0, 8.0),  # cheek redness
    "shade": (-0.25, 0.25),  # left/right lightness gradient across the face
}
_DISCRETE = ("skin", "eyes", "nose", "mouth")


@dataclass(frozen=True)
class Recipe:
    skin: int
    eyes: int
    nose: int
    mouth: int
    tone_l: float = 1.0
    tone_a: float = 0.0
    tone_b: float = 0.0
    lip_a: float = 0.0
    lip_l: float = 1.0
    brow_dark: float = 1.0
    eye_dark: float = 1.0
    smooth: float = 0.0
    detail: float = 0.0
    cheek_a: float = 0.0
    shade: float = 0.0


def recipe_from_code(code: np.ndarray, n_sources: int) -> Recipe:
    """The identikit recipe a unit-sphere identity code stands for (deterministic, uses its first ~15 dims).

    Coordinates of a uniform point on the sphere times sqrt(dim) are close to standard normal, so the
    normal CDF turns each into a near-uniform number in [0, 1).
    """
    code = np.asarray(code, np.float64).ravel()
    needed = len(_DISCRETE) + len(RECIPE_RANGES)
    if code.size < needed:
        raise ValueError(f"identity codes need at least {needed} dimensions for the identikit, got {code.size}")
    uniform = ndtr(code * np.sqrt(code.size))
    values: dict[str, float | int] = {}
    for i, name in enumerate(_DISCRETE):
        values[name] = min(int(uniform[i] * n_sources), n_sources - 1)
    for j, (name, (lo, hi)) in enumerate(RECIPE_RANGES.items()):
        values[name] = float(lo + (hi - lo) * uniform[len(_DISCRETE) + j])
    return Recipe(**values)  # type: ignore[arg-type]


def _feather(mask: np.ndarray, grow: float, blur: float) -> np.ndarray:
    """Dilate a boolean mask by ``grow`` px and blur it by ``blur`` px: a soft float32 mask in [0, 1]."""
    m = mask.astype(np.uint8)
    if grow >= 1:
        r = int(round(grow))
        m = cv2.dilate(m, cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * r + 1, 2 * r + 1)))
    m = m.astype(np.float32)
    if blur > 0.3:
        m = cv2.GaussianBlur(m, (0, 0), blur)
    return np.clip(m, 0, 1)


def _lab(image: np.ndarray) -> np.ndarray:
    return cv2.cvtColor(image.astype(np.float32) / 255.0, cv2.COLOR_RGB2LAB)


def _rgb(lab: np.ndarray) -> np.ndarray:
    return np.clip(cv2.cvtColor(lab.astype(np.float32), cv2.COLOR_LAB2RGB) * 255.0, 0, 255)


def _match_colour(part: np.ndarray, base: np.ndarray, band: np.ndarray) -> np.ndarray:
    """Shift ``part`` (float RGB) so its mean colour over ``band`` equals ``base``'s: seams disappear."""
    w = band[..., None]
    total = float(band.sum())
    if total < 1:
        return part
    shift = ((base - part) * w).sum((0, 1)) / total
    return part + shift


def _ipd(landmarks: np.ndarray) -> float:
    return float(np.hypot(*(landmarks[42:48].mean(0) - landmarks[36:42].mean(0))))


def compose_identikit(
    sources: list[FaceSource],
    recipe: Recipe,
    landmarks: np.ndarray,
    context: np.ndarray,
    *,
    labels: np.ndarray | None = None,
    warped: dict[int, np.ndarray] | None = None,
) -> np.ndarray:
    """The face of ``recipe`` drawn on geometry ``landmarks`` over ``context`` (both crop-space).

    ``context`` is the crop whose surroundings (hair, background, neck) are kept; ``warped`` may carry
    sources already warped onto ``landmarks`` (a cache shared between calls on the same geometry).
    Returns RGB uint8.
    """
    size = context.shape[0]
    labels = rasterize_semantic_map(landmarks, size) if labels is None else labels
    ipd = _ipd(landmarks)
    cache = {} if warped is None else warped

    def source_on_geometry(index: int) -> np.ndarray:
        if index not in cache:
            src = sources[index]
            cache[index] = warp_image(src.crop, src.landmarks, landmarks).astype(np.float32)
        return cache[index]

    is_ = lambda *names: np.isin(labels, [class_id(n) for n in names])  # noqa: E731
    face = source_on_geometry(recipe.skin).copy()
    features = (
        (recipe.eyes, is_("l_brow", "r_brow", "l_eye", "r_eye"), 0.22),
        (recipe.nose, is_("nose"), 0.10),
        (recipe.mouth, is_("u_lip", "l_lip", "mouth"), 0.14),
    )
    for index, region, grow in features:
        if index == recipe.skin or not region.any():
            continue
        soft = _feather(region, grow * ipd, 0.06 * ipd)
        band = _feather(region, (grow + 0.12) * ipd, 0) * (1 - _feather(region, 0.04 * ipd, 0))
        part = _match_colour(source_on_geometry(index), face, band)
        face = face * (1 - soft[..., None]) + part * soft[..., None]

    # Texture: smoothing (plain, young skin) or local contrast (rough, older skin).
    if recipe.smooth > 0.05:
        smooth = cv2.bilateralFilter(np.clip(face, 0, 255).astype(np.float32), 7, 25.0, 5.0)
        keep = is_("l_eye", "r_eye", "l_brow", "r_brow", "u_lip", "l_lip", "mouth")
        weight = recipe.smooth * (1 - _feather(keep, 0.05 * ipd, 0.05 * ipd))
        face = face * (1 - weight[..., None]) + smooth * weight[..., None]
    if recipe.detail > 0.05:
        blur = cv2.GaussianBlur(face, (0, 0), max(1.0, 0.08 * ipd))
        face = face + recipe.detail * (face - blur)

    # Colour: skin tone over the whole face, then lips, brows, eyes, cheeks, shading.
    lab = _lab(np.clip(face, 0, 255))
    face_area = _feather(is_("skin", "l_brow", "r_brow", "l_eye", "r_eye", "nose", "u_lip", "l_lip", "mouth"), 0, 0.04 * ipd)
    lab[..., 0] *= 1 + (recipe.tone_l - 1) * face_area
    lab[..., 1] += recipe.tone_a * face_area
    lab[..., 2] += recipe.tone_b * face_area
    lips = _feather(is_("u_lip", "l_lip"), 0, 0.03 * ipd)
    lab[..., 0] *= 1 + (recipe.lip_l - 1) * lips
    lab[..., 1] += recipe.lip_a * lips
    brows = _feather(is_("l_brow", "r_brow"), 0.02 * ipd, 0.04 * ipd)
    lab[..., 0] *= 1 + (recipe.brow_dark - 1) * brows
    eyes = _feather(is_("l_eye", "r_eye"), 0.08 * ipd, 0.06 * ipd)
    lab[..., 0] *= 1 + (recipe.eye_dark - 1) * eyes
    right, down = _axes(landmarks)
    ys, xs = np.mgrid[0:size, 0:size].astype(np.float32)
    centre = landmarks[27:36].mean(0)
    across = ((xs - centre[0]) * right[0] + (ys - centre[1]) * right[1]) / (1.2 * ipd)
    cheeks = np.zeros((size, size), np.float32)
    for side in (-1, 1):
        c = centre + side * 0.75 * ipd * right + 0.35 * ipd * down
        cheeks += np.exp(-((xs - c[0]) ** 2 + (ys - c[1]) ** 2) / (2 * (0.3 * ipd) ** 2))
    lab[..., 1] += recipe.cheek_a * cheeks * face_area
    lab[..., 0] *= 1 + recipe.shade * np.clip(across, -1, 1) * face_area
    lab[..., 0] = np.clip(lab[..., 0], 0, 100)
    face = _rgb(lab)

    # Into the context: the face proper with a soft edge; the surroundings stay the context's.
    alpha = _feather(face_area > 0.5, 0.02 * ipd, 0.05 * ipd)[..., None]
    out = context.astype(np.float32) * (1 - alpha) + face * alpha
    return np.clip(out + 0.5, 0, 255).astype(np.uint8)


def _axes(landmarks: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    axis = landmarks[42:48].mean(0) - landmarks[36:42].mean(0)
    right = axis / max(float(np.hypot(*axis)), 1e-6)
    return right, np.array([-right[1], right[0]])


def recipe_dims() -> int:
    """How many leading code dimensions a recipe uses."""
    return len(_DISCRETE) + len(RECIPE_RANGES)
