"""Paste a generated face back into the frame without a visible seam.

The default, ``method="seamless"``, works in crop space, then warps the result back once:

1. **Gradient-domain cloning** (Pérez et al. 2003, solved like OpenCV's ``seamlessClone``): inside the
   replaced region the result keeps the generated face's gradients, a thin band along the region's
   edge (``CLONE_BAND``) has none, outside the region the original's gradients hold, and the
   original is fixed on the region's bounding box. There is no colour step at the region's edge and
   no ring of shifted context around it; what the generator painted at the edge melts into the
   surroundings. (OpenCV's own function is not used: it guides that band with the original's
   gradients, which would carry the original face's edge into the replaced region.)
2. **Colour, restricted to skin**: before cloning, the generated skin's detail (around its smooth
   field, a quadratic in x and y per Lab channel) is scaled to the original skin's spread, so a face
   in dim, pale or side light shows its texture as weakly as the frame does. Cloning pulls the face's
   colour towards its surroundings (a face framed by blonde hair comes out too bright), so after it the
   field fitted to the original face's skin replaces the one fitted to the result's skin, faded in
   over ``SKIN_RAMP`` around the generated face's own outline: skin tone, lighting level and a side
   light's gradient follow the frame while the region's edge stays as cloning left it. 21 numbers
   travel from the original face (18 field coefficients, 3 spreads), no pixel.

Alpha is 1 over the replaced region (``PreparedFace.region_mask``) and ramps to 0 outward over
``feather`` of the crop size. No pixel of the original face inside the region is read: the cloning
uses the original's gradients only between pixels that both lie outside the region.

The alternatives measured against it stay selectable (``benchmarks/bench_blend.py``): ``"lab"`` (the
generated region with its skin moved to the original skin's Lab mean and spread), ``"poisson"``
(cloning alone) and ``"none"``. :func:`boundary_score` is the measure: gradient energy on a thin
band around the paste edge, output against input.

>>> import numpy as np
>>> from sdgan_stream.blend import feather_alpha
>>> mask = np.zeros((32, 32), np.float32); mask[8:24, 8:24] = 1
>>> alpha = feather_alpha(mask, 4.0)
>>> float(alpha[16, 16]), float(alpha[0, 0])
(1.0, 0.0)
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from functools import lru_cache
from typing import Literal

import cv2
import numpy as np

from .align import matrix_scale, warp_to_crop, warp_to_image
from .faceprep import PreparedFace
from .semantic import class_id

log = logging.getLogger(__name__)

__all__ = [
    "BLEND_METHODS",
    "BlendMethod",
    "CLONE_BAND",
    "DEFAULT_FEATHER",
    "SKIN_RAMP",
    "blend_crop",
    "boundary_score",
    "clone_core",
    "clone_rect",
    "dst_matrix",
    "face_alpha",
    "feather_alpha",
    "match_color",
    "poisson_clone",
    "shading_basis",
    "skin_detail_gain",
    "skin_fitter",
]

BlendMethod = Literal["seamless", "lab", "poisson", "none"]
BLEND_METHODS: tuple[str, ...] = ("seamless", "lab", "poisson", "none")
DEFAULT_FEATHER = 0.035  # outward ramp width as a share of the crop side (4.5 px at 128)
# Band along the region's edge with no guidance, share of the crop side. Measured (bench_blend, sample
# photos): 1 px at 128 keeps the boundary score nearest an untouched frame's and dlib finds the most
# faces; 3 px (OpenCV's width) smears the edge (score 0.43 against 0.78).
CLONE_BAND = 1.0 / 128
SKIN_RAMP = 6.0 / 128  # half-width of the skin colour's fade around the generated face's outline
BOUNDARY_BAND = 3.0 / 128  # half-width of the band boundary_score measures
_MIN_SKIN_PIXELS = 32
_SPREAD_LIMITS = (0.5, 2.0)  # never amplify or flatten contrast more than this


def feather_alpha(region_mask: np.ndarray, feather_px: float) -> np.ndarray:
    """Float32 alpha: 1 on the region (and 1 px around it), smoothly down to 0 ``feather_px`` outside."""
    inside = (np.asarray(region_mask) > 0.5).astype(np.uint8)
    if not inside.any():
        return np.zeros(inside.shape, np.float32)
    distance = cv2.distanceTransform(1 - inside, cv2.DIST_L2, 5)
    t = np.clip((distance - 1.0) / max(feather_px, 1e-6), 0.0, 1.0)
    return (1.0 - t * t * (3.0 - 2.0 * t)).astype(np.float32)  # smoothstep: no kink at either end


def _signed_distance(mask: np.ndarray) -> np.ndarray:
    """Distance to the mask's edge in pixels, positive inside, negative outside (edge at +-0.5)."""
    inside = (np.asarray(mask) > 0.5).astype(np.uint8)
    if not inside.any():
        return np.full(inside.shape, -1e6, np.float32)
    if inside.all():
        return np.full(inside.shape, 1e6, np.float32)
    din = cv2.distanceTransform(inside, cv2.DIST_L2, 5)
    dout = cv2.distanceTransform(1 - inside, cv2.DIST_L2, 5)
    return np.where(inside > 0, din - 0.5, 0.5 - dout).astype(np.float32)


def face_alpha(labels: np.ndarray, ramp_px: float) -> np.ndarray:
    """Float32 weight of the generated face: 1 inside the map's face classes (everything but background
    and hair), a smoothstep over ``ramp_px`` either side of their outline."""
    face = (labels != class_id("background")) & (labels != class_id("hair"))
    t = np.clip((_signed_distance(face) + ramp_px) / (2.0 * max(ramp_px, 1e-6)), 0.0, 1.0)
    return (t * t * (3.0 - 2.0 * t)).astype(np.float32)


# -- gradient-domain cloning ----------------------------------------------------------------------------
@lru_cache(maxsize=64)
def dst_matrix(n: int) -> np.ndarray:
    """(n, n) float64 orthonormal DST-I matrix (symmetric, its own inverse)."""
    k = np.arange(1, n + 1, dtype=np.float64)
    matrix = np.sqrt(2.0 / (n + 1)) * np.sin(np.pi * np.outer(k, k) / (n + 1))
    matrix.setflags(write=False)
    return matrix


def clone_rect(region: np.ndarray) -> tuple[int, int, int, int] | None:
    """(x1, y1, x2, y2) of the cloning domain: the region's bounding box grown by 1 px (the solution's
    fixed border lies outside the region), clipped to the crop; None when the region is empty or the
    domain has no interior."""
    ys, xs = np.nonzero(np.asarray(region) > 0.5)
    if xs.size == 0:
        return None
    height, width = region.shape[:2]
    x1, y1 = max(int(xs.min()) - 1, 0), max(int(ys.min()) - 1, 0)
    x2, y2 = min(int(xs.max()) + 2, width), min(int(ys.max()) + 2, height)
    return (x1, y1, x2, y2) if x2 - x1 >= 3 and y2 - y1 >= 3 else None


def clone_core(region: np.ndarray, size: int) -> np.ndarray:
    """Bool mask: ``region`` less the ``CLONE_BAND`` along its edge (in px of a ``size`` crop), where
    cloning follows the generated face's gradients."""
    band_px = max(1, int(round(CLONE_BAND * size)))
    return cv2.erode((np.asarray(region) > 0.5).astype(np.uint8), np.ones((3, 3), np.uint8), iterations=band_px) > 0


def _guidance_laplacian(source: np.ndarray, target: np.ndarray, region: np.ndarray, core: np.ndarray) -> np.ndarray:
    """Divergence of the guidance field: ``source``'s forward gradients inside ``core``, ``target``'s
    between two pixels outside ``region``, zero elsewhere."""
    outside = ~(np.asarray(region) > 0.5)
    lap = np.zeros(source.shape, np.float64)
    for axis in (0, 1):
        gs, gt = np.zeros_like(lap), np.zeros_like(lap)
        both_out = np.zeros(outside.shape, bool)
        ahead = (slice(1, None), slice(None)) if axis == 0 else (slice(None), slice(1, None))
        here = (slice(None, -1), slice(None)) if axis == 0 else (slice(None), slice(None, -1))
        gs[here] = source[ahead] - source[here]
        gt[here] = target[ahead] - target[here]
        both_out[here] = outside[here] & outside[ahead]
        g = np.where(core[..., None], gs, 0.0) + np.where(both_out[..., None], gt, 0.0)
        lap[ahead] += g[ahead] - g[here]  # backward difference of the forward gradient (row/column 0 is border)
    return lap


def poisson_clone(source: np.ndarray, target: np.ndarray, region: np.ndarray, core: np.ndarray) -> np.ndarray:
    """Gradient-domain cloning of ``source`` into ``target`` over ``region`` ((h, w, 3), (h, w, 3), (h, w)),
    guided by ``source`` inside ``core`` (:func:`clone_core`).

    Solves the Poisson equation with the guidance of :func:`_guidance_laplacian` and ``target`` fixed on
    the arrays' border (pass the window :func:`clone_rect` cuts); a DST-I diagonalizes the 5-point
    Laplacian there. Returns float64 (h, w, 3).
    """
    out = target.astype(np.float64)
    lap = _guidance_laplacian(source.astype(np.float64), out, region, core)[1:-1, 1:-1]
    # the fixed border's share of each interior pixel's 5-point Laplacian moves to the right-hand side
    lap[:, 0] -= out[1:-1, 0]
    lap[:, -1] -= out[1:-1, -1]
    lap[0, :] -= out[0, 1:-1]
    lap[-1, :] -= out[-1, 1:-1]
    h, w = lap.shape[:2]
    sy, sx = dst_matrix(h), dst_matrix(w)
    eig = (2.0 * np.cos(np.pi * np.arange(1, h + 1) / (h + 1)) - 2.0)[:, None] + (
        2.0 * np.cos(np.pi * np.arange(1, w + 1) / (w + 1)) - 2.0)[None, :]
    channels = np.moveaxis(lap, -1, 0)  # (3, h, w): batched matrix products, one per channel
    solution = sy @ ((sy @ channels @ sx) / eig) @ sx
    out[1:-1, 1:-1] = np.moveaxis(solution, 0, -1)
    return out


# -- skin colour -----------------------------------------------------------------------------------------
@lru_cache(maxsize=8)
def shading_basis(size: int) -> np.ndarray:
    """(size * size, 6) float32 quadratic polynomial basis over the crop, coordinates in [-1, 1]."""
    v = (np.arange(size, dtype=np.float32) + 0.5) / size * 2.0 - 1.0
    y, x = np.meshgrid(v, v, indexing="ij")
    basis = np.stack([np.ones_like(x), x, y, x * x, x * y, y * y], -1).reshape(-1, 6)
    basis.setflags(write=False)
    return basis


def _lab(image: np.ndarray) -> np.ndarray:
    """RGB (0..255, any dtype) -> float32 CIE Lab, OpenCV's float convention (L 0..100)."""
    return cv2.cvtColor(np.clip(image, 0, 255).astype(np.float32) / 255.0, cv2.COLOR_RGB2Lab)


def skin_fitter(skin: np.ndarray, basis: np.ndarray | None = None) -> Callable[[np.ndarray], np.ndarray] | None:
    """A function that fits the smooth colour field of a Lab image's skin: a quadratic polynomial in x, y
    per channel, least squares over ``skin``, returned over the whole image as (h, w, 3) float32.
    ``basis`` (h * w, 6) holds the polynomial at each pixel: by default :func:`shading_basis` of a
    square crop; a window of a crop passes its rows of the crop's basis. None when ``skin`` has fewer
    than 32 pixels. The fit's projector is computed once per mask."""
    select = np.asarray(skin, bool).ravel()
    if int(select.sum()) < _MIN_SKIN_PIXELS:
        return None
    basis = shading_basis(skin.shape[0]) if basis is None else basis
    a = basis[select].astype(np.float64)
    projector = np.linalg.solve(a.T @ a, a.T).astype(np.float32)  # (6, N): the normal equations' solution

    def field(lab: np.ndarray) -> np.ndarray:
        return (basis @ (projector @ lab.reshape(-1, 3)[select])).reshape(lab.shape)

    return field


def skin_detail_gain(lab: np.ndarray, field: np.ndarray, reference_lab: np.ndarray, reference_field: np.ndarray,
                     skin: np.ndarray) -> np.ndarray:
    """(3,) per-channel gain that gives ``lab``'s skin detail (what lies around its field) the spread of
    the reference's, within 0.5-2x: a face lit darker, paler or from one side shows its texture weaker."""
    select = np.asarray(skin, bool)
    spread = (reference_lab - reference_field)[select].std(0) / np.maximum((lab - field)[select].std(0), 1e-3)
    return np.clip(spread, *_SPREAD_LIMITS).astype(np.float32)


def match_color(generated: np.ndarray, reference: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Shift ``generated`` so its Lab mean and spread over ``mask`` equal ``reference``'s over ``mask``.

    Returns a new uint8 image; unchanged when the mask has too few pixels to measure. Uses OpenCV's
    8-bit Lab (table driven, ~5x faster than float); its quantization costs under one level.
    """
    select = np.asarray(mask, bool)
    if int(select.sum()) < _MIN_SKIN_PIXELS:
        return generated.copy()
    # statistics from the masked pixels only (an (N, 1, 3) "image" converts just those)
    g = cv2.cvtColor(np.ascontiguousarray(generated[select][:, None]), cv2.COLOR_RGB2Lab)[:, 0].astype(np.float32)
    r = cv2.cvtColor(np.ascontiguousarray(reference[select][:, None]), cv2.COLOR_RGB2Lab)[:, 0].astype(np.float32)
    g_mean, g_std = g.mean(0), g.std(0)
    r_mean, r_std = r.mean(0), r.std(0)
    gain = np.clip(r_std / np.maximum(g_std, 1e-3), *_SPREAD_LIMITS)
    if np.allclose(g_mean, r_mean, atol=1e-3) and np.allclose(gain, 1.0, atol=1e-3):
        return generated.copy()  # already matched (e.g. the original pasted back): no round trip
    lab = cv2.cvtColor(generated, cv2.COLOR_RGB2Lab).astype(np.float32)
    lab = (lab - g_mean) * gain + r_mean
    return cv2.cvtColor(np.clip(lab + 0.5, 0, 255).astype(np.uint8), cv2.COLOR_Lab2RGB)


# -- the crop to paste -----------------------------------------------------------------------------------
def _clone_window(generated: np.ndarray, prepared: PreparedFace, window: tuple[slice, slice], *, colour: bool) -> np.ndarray:
    """``blend_crop``'s cloning (and, with ``colour``, skin colour steps) on one window of the crop: uint8."""
    size = prepared.size
    crop = prepared.crop[window]
    region = prepared.region_mask[window] > 0.5
    source = np.where(region[..., None], generated, crop).astype(np.float32)
    skin = prepared.labels[window] == class_id("skin")
    fit = skin_fitter(skin, shading_basis(size).reshape(size, size, 6)[window].reshape(-1, 6)) if colour else None
    if fit is not None:
        # the generated detail at the original skin's contrast (cloning keeps gradients as they are)
        reference_lab = _lab(crop)
        reference_field = fit(reference_lab)
        lab = _lab(source)
        field = fit(lab)
        gain = skin_detail_gain(lab, field, reference_lab, reference_field, skin)
        lab = np.where(region[..., None], field + (lab - field) * gain, lab)
        source = cv2.cvtColor(lab, cv2.COLOR_Lab2RGB) * 255.0
    cloned = poisson_clone(source, crop, region, clone_core(prepared.region_mask, size)[window])
    if fit is not None:
        # cloning pulls the face's colour towards its surroundings: give the skin back its own field
        lab = _lab(cloned)
        weight = face_alpha(prepared.labels, SKIN_RAMP * size)[window] * region
        lab += (reference_field - fit(lab)) * weight[..., None]
        cloned = cv2.cvtColor(lab, cv2.COLOR_Lab2RGB) * 255.0
    return np.clip(cloned + 0.5, 0, 255).astype(np.uint8)


def blend_crop(generated: np.ndarray, prepared: PreparedFace, *, method: BlendMethod = "seamless") -> np.ndarray:
    """The (S, S, 3) uint8 crop that :func:`paste_back` warps into the frame (see the module docstring).

    ``generated`` holds the generated face over the region. Outside the region the result is the
    original crop, except where cloning's solution (``seamless``, ``poisson``) settles within the
    region's bounding box, or for ``none`` (pasted as it is).
    """
    crop = prepared.crop
    region = prepared.region_mask > 0.5
    if method in ("seamless", "poisson"):
        out = crop.copy()
        rect = clone_rect(region)
        if rect is not None:  # all the work happens inside the region's bounding box
            x1, y1, x2, y2 = rect
            window = (slice(y1, y2), slice(x1, x2))
            out[window] = _clone_window(generated[window], prepared, window, colour=method == "seamless")
        return out
    if method == "lab":
        matched = match_color(generated, crop, prepared.labels == class_id("skin"))
        return np.where(region[..., None], matched, crop)  # the context keeps its colour
    if method == "none":
        return generated
    raise ValueError(f"unknown blend method {method!r}; choose from {', '.join(BLEND_METHODS)}")


def paste_back(
    image: np.ndarray,
    generated_crop: np.ndarray,
    prepared: PreparedFace,
    *,
    method: BlendMethod = "seamless",
    feather: float = DEFAULT_FEATHER,
    adjust: Callable[[np.ndarray], np.ndarray] | None = None,
    replaced: np.ndarray | None = None,
) -> None:
    """Blend ``generated_crop`` (aligned like ``prepared.crop``) into ``image`` in place. ``adjust`` receives
    the blended (S, S, 3) uint8 crop (:func:`blend_crop`) before it is warped back and returns the one to paste.

    ``replaced`` ((H, W) bool, updated in place): the pixels other faces' regions replaced in this frame so
    far. Outside its own region a paste writes the crop's context, cut from the frame before any face was
    drawn: the original pixels. Over another face's replaced region that would bring that face back, so
    there this paste keeps its hands off; its own region is then added to ``replaced``."""
    size = prepared.size
    if generated_crop.shape[:2] != (size, size):
        generated_crop = cv2.resize(generated_crop, (size, size), interpolation=cv2.INTER_AREA)
    if generated_crop.dtype != np.uint8 or generated_crop.shape[2:] != (3,):
        raise ValueError(f"generated crop must be (S, S, 3) uint8, got {generated_crop.shape} {generated_crop.dtype}")
    alpha = feather_alpha(prepared.region_mask, feather * size)
    ys, xs = np.nonzero(alpha > 0)
    if xs.size == 0:
        return
    colour = blend_crop(generated_crop, prepared, method=method)
    if adjust is not None:
        colour = adjust(colour)
    # Only the part of the crop the alpha touches needs warping and blending (~half of it).
    rect = (int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1)
    # Upscaling back into a large face: cubic keeps the generated detail; downscaling: linear is enough.
    interpolation = cv2.INTER_CUBIC if matrix_scale(prepared.matrix) < 1.0 else cv2.INTER_LINEAR
    warped = warp_to_image(colour, prepared.matrix, image.shape, interpolation=interpolation, crop_rect=rect)
    warped_alpha = warp_to_image(alpha, prepared.matrix, image.shape, crop_rect=rect)
    if warped is None or warped_alpha is None:
        return
    patch, (x1, y1, x2, y2) = warped
    weight = np.clip(warped_alpha[0], 0.0, 1.0)
    if replaced is not None:
        own = warp_to_image(prepared.region_mask.astype(np.float32), prepared.matrix, image.shape, crop_rect=rect)
        own_region = own[0] >= 0.5 if own is not None else np.zeros(weight.shape, bool)
        others = replaced[y1:y2, x1:x2]
        weight = np.where(others & ~own_region, 0.0, weight).astype(weight.dtype)
        others |= own_region
    roi = image[y1:y2, x1:x2]
    # blendLinear: (patch * w + roi * (1 - w)) in C++, rounded; weight 0 leaves a pixel exactly as it was
    roi[...] = cv2.blendLinear(patch, np.ascontiguousarray(roi), weight, 1.0 - weight)


# -- the measure -----------------------------------------------------------------------------------------
def _gradient_energy(crop: np.ndarray) -> np.ndarray:
    """Per-pixel squared gradient magnitude of a uint8 RGB crop, summed over the Lab channels."""
    lab = _lab(crop)
    gx = cv2.Sobel(lab, cv2.CV_32F, 1, 0, ksize=3, borderType=cv2.BORDER_REPLICATE)
    gy = cv2.Sobel(lab, cv2.CV_32F, 0, 1, ksize=3, borderType=cv2.BORDER_REPLICATE)
    return (gx * gx + gy * gy).sum(-1)


def boundary_score(output: np.ndarray, original: np.ndarray, prepared: PreparedFace, *, band: float = BOUNDARY_BAND) -> float:
    """How much edge the paste added at the region's edge: gradient energy in a thin band around it in
    ``output``, over the same in ``original`` (1.0 for an untouched frame).

    Both frames are cut into the face's aligned crop first, so the score compares like with like
    whatever the face's size in the frame (a 400 px face is judged at the generator's resolution,
    where a resampled but unchanged face scores ~0.9, not at the frame's, where it would score ~0.6).
    The band is ``band`` x crop side either side of the region's edge (3 px at 128). Energy is the
    squared Sobel gradient summed over CIE Lab channels, so rings, halos, double edges and colour
    steps all count. Above 1: the paste drew edges the frame did not have; below 1: the band is
    smoother than the original there. NaN when the band holds no pixel.
    """
    size = prepared.size
    ring = np.abs(_signed_distance(prepared.region_mask)) <= band * size
    if not ring.any():
        return float("nan")
    out_energy = _gradient_energy(warp_to_crop(output, prepared.matrix, size))[ring].mean()
    in_energy = _gradient_energy(warp_to_crop(original, prepared.matrix, size))[ring].mean()
    return float(out_energy / max(in_energy, 1e-9))
