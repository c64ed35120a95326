"""Face crops cut from and pasted back into a frame with torch ops, for every face of a frame at once.

The same geometry as :mod:`sdgan_stream.align` / :mod:`sdgan_stream.blend` (OpenCV 2x3 matrices mapping
image -> crop pixels, pixel centres at integer coordinates), written with ``affine_grid`` +
``grid_sample`` so a renderer on CUDA keeps the frame on the GPU: upload the frame once (pinned),
warp all crops in one call, run the generator on the batch, paste all results back, download once.
Nothing here is CUDA-specific; the tests run it on CPU tensors against ``cv2.warpAffine``.

Tensors are float (any dtype grid_sample takes), channels first: a frame is (C, H, W) with values in
whatever range the caller uses (0..255 or 0..1; the Lab helpers expect 0..1).

>>> import torch
>>> frame = torch.arange(48.0).reshape(1, 6, 8)
>>> identity = torch.tensor([[[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]]])
>>> bool(torch.allclose(warp_crops(frame, identity, 4)[0, 0], frame[0, :4, :4]))
True
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.nn.functional as F

if TYPE_CHECKING:
    from ..faceprep import PreparedFace

__all__ = [
    "DeviceFrameRenderer",
    "SeamlessPlan",
    "crop_bounds",
    "feather_alpha",
    "lab_to_rgb",
    "paste_crops",
    "poisson_clone",
    "rgb_to_lab",
    "seamless_blend",
    "seamless_plan",
    "skin_detail_gain",
    "skin_field",
    "warp_crops",
]


def _as_matrices(matrices: torch.Tensor | np.ndarray | Sequence, device: torch.device) -> torch.Tensor:
    m = torch.as_tensor(np.asarray(matrices, np.float64) if not isinstance(matrices, torch.Tensor) else matrices)
    m = m.to(device=device, dtype=torch.float64)
    if m.dim() == 2:
        m = m[None]
    if m.shape[1:] != (2, 3):
        raise ValueError(f"matrices must be (B, 2, 3), got {tuple(m.shape)}")
    return m


def _homogeneous(m: torch.Tensor) -> torch.Tensor:
    bottom = torch.tensor([0.0, 0.0, 1.0], dtype=m.dtype, device=m.device).expand(m.shape[0], 1, 3)
    return torch.cat([m, bottom], dim=1)


def _pixel_to_normalized(width: int, height: int, like: torch.Tensor) -> torch.Tensor:
    """3x3 map from pixel coordinates (centres at integers) to grid_sample's [-1, 1] (align_corners=False)."""
    return torch.tensor(
        [[2.0 / width, 0.0, 1.0 / width - 1.0], [0.0, 2.0 / height, 1.0 / height - 1.0], [0.0, 0.0, 1.0]],
        dtype=like.dtype, device=like.device,
    )


def _normalized_to_pixel(width: int, height: int, like: torch.Tensor) -> torch.Tensor:
    return torch.linalg.inv(_pixel_to_normalized(width, height, like))


def _scales(m: torch.Tensor) -> torch.Tensor:
    """Uniform scale (crop pixels per image pixel) of each matrix."""
    return torch.sqrt(torch.abs(torch.linalg.det(m[:, :, :2])))


def warp_crops(
    frame: torch.Tensor,
    matrices: torch.Tensor | np.ndarray,
    size: int,
    *,
    mode: str = "bilinear",
    padding_mode: str = "border",
    antialias: bool = True,
) -> torch.Tensor:
    """Cut ``size`` x ``size`` crops out of ``frame`` for each 2x3 image->crop matrix: (B, C, size, size).

    ``frame`` is (C, H, W) (shared by every crop) or (B, C, H, W). ``padding_mode='border'`` repeats the
    edge like ``cv2.BORDER_REPLICATE``. With ``antialias``, a crop that shrinks the face by more than
    1.5x is sampled on a k-times finer grid and box-averaged (k up to 4), the batched counterpart of
    the area pre-reduction in :func:`sdgan_stream.align.warp_to_crop`.
    """
    if frame.dim() == 3:
        frame = frame[None]
    if not frame.is_floating_point():
        frame = frame.float()  # uint8 frames: grid_sample needs floats
    m = _as_matrices(matrices, frame.device)
    batch, (height, width) = m.shape[0], frame.shape[-2:]
    if frame.shape[0] == 1 and batch > 1:
        frame = frame.expand(batch, *frame.shape[1:])
    factor = 1
    if antialias:
        smallest = float(_scales(m).min()) if batch else 1.0
        if smallest < 0.67:
            factor = int(min(4, math.ceil(1.0 / (1.5 * smallest))))
    out_size = size * factor
    # Output pixel (u, v) of the (factor-times finer) crop samples image point M^-1 (u', v'), where
    # u' = (u + 0.5) / factor - 0.5 is its position in crop pixels.
    sub = torch.tensor([[1.0 / factor, 0.0, 0.5 / factor - 0.5], [0.0, 1.0 / factor, 0.5 / factor - 0.5], [0.0, 0.0, 1.0]],
                       dtype=m.dtype, device=m.device)
    inverse = torch.linalg.inv(_homogeneous(m))
    theta = _pixel_to_normalized(width, height, m) @ inverse @ sub @ _normalized_to_pixel(out_size, out_size, m)
    grid = F.affine_grid(theta[:, :2].to(frame.dtype), [batch, frame.shape[1], out_size, out_size], align_corners=False)
    crops = F.grid_sample(frame, grid, mode=mode, padding_mode=padding_mode, align_corners=False)
    if factor > 1:
        crops = F.avg_pool2d(crops, factor)
    return crops


def crop_bounds(matrices: np.ndarray, size: int, image_shape: tuple[int, int], *, pad: int = 1) -> np.ndarray:
    """Integer image regions (B, 4) x1, y1, x2, y2 covered by each crop (clipped; empty when x2 <= x1).

    Computed on the host from the host-side matrices: the renderer knows them before any GPU work.
    """
    m = np.asarray(matrices, np.float64).reshape(-1, 2, 3)
    corners = np.array([[0, 0, 1], [size, 0, 1], [0, size, 1], [size, size, 1]], np.float64)
    height, width = image_shape
    boxes = np.zeros((len(m), 4), np.int64)
    for i, matrix in enumerate(m):
        inv = np.linalg.inv(np.vstack([matrix, [0, 0, 1]]))[:2]
        pts = corners @ inv.T
        x1, y1 = np.floor(pts.min(0)).astype(int) - pad
        x2, y2 = np.ceil(pts.max(0)).astype(int) + pad
        boxes[i] = (max(x1, 0), max(y1, 0), min(x2, width), min(y2, height))
    return boxes


def paste_crops(
    frame: torch.Tensor,
    crops: torch.Tensor,
    alphas: torch.Tensor,
    matrices: torch.Tensor | np.ndarray,
    *,
    mode: str | None = None,
    clamp: tuple[float, float] | None = (0.0, 255.0),
    regions: torch.Tensor | None = None,
) -> torch.Tensor:
    """Blend each crop into ``frame`` (C, H, W) in place through the inverse of its matrix; returns ``frame``.

    ``alphas`` (B, 1, S, S) in 0..1 is the crop-space opacity (e.g. :func:`feather_alpha` of the
    replaced region). All faces are resampled in one ``grid_sample`` over a common region size; the
    blends are then applied face by face (in order, so later faces win where faces overlap), with
    no host synchronisation. ``mode`` defaults to bicubic when any crop is enlarged on the way back
    (as :func:`sdgan_stream.blend.paste_back` does with INTER_CUBIC), else bilinear.

    ``regions`` (B, 1, S, S), each face's replaced region: outside its own region a crop holds its
    context, cut before any face was pasted (the original pixels), so no face's alpha may reach into a
    region an earlier face replaced (it would bring that face back); as ``blend.paste_back(replaced=...)``.
    """
    if crops.shape[0] == 0:
        return frame
    host_m = matrices.detach().cpu().numpy() if isinstance(matrices, torch.Tensor) else np.asarray(matrices, np.float64)
    host_m = host_m.reshape(-1, 2, 3)
    size = crops.shape[-1]
    height, width = frame.shape[-2:]
    boxes = crop_bounds(host_m, size, (height, width))
    keep = [i for i, (x1, y1, x2, y2) in enumerate(boxes) if x2 > x1 and y2 > y1]
    if not keep:
        return frame
    region_w = int(max(boxes[i, 2] - boxes[i, 0] for i in keep))
    region_h = int(max(boxes[i, 3] - boxes[i, 1] for i in keep))
    m = _as_matrices(host_m[keep], frame.device)
    if mode is None:
        mode = "bicubic" if bool((_scales(m) < 1.0).any()) else "bilinear"
    offsets = torch.as_tensor(boxes[keep, :2], dtype=m.dtype, device=m.device)
    shift = torch.zeros(len(keep), 3, 3, dtype=m.dtype, device=m.device)
    shift[:, 0, 0] = shift[:, 1, 1] = shift[:, 2, 2] = 1.0
    shift[:, :2, 2] = offsets
    # Region pixel (x, y) is image pixel (x + x1, y + y1), which the matrix sends to crop pixel M (x + x1, y + y1).
    theta = _pixel_to_normalized(size, size, m) @ _homogeneous(m) @ shift @ _normalized_to_pixel(region_w, region_h, m)
    channels = [crops[keep], alphas[keep].to(crops.dtype)]
    if regions is not None:
        channels.append(regions[keep].to(crops.dtype))
    source = torch.cat(channels, dim=1)
    replaced = torch.zeros((1, height, width), dtype=torch.bool, device=frame.device) if regions is not None else None
    colours = crops.shape[1]
    grid = F.affine_grid(theta[:, :2].to(source.dtype), [len(keep), source.shape[1], region_h, region_w], align_corners=False)
    # Zeros outside the crop: the warped alpha is 0 there, so the frame keeps its pixels.
    warped = F.grid_sample(source, grid, mode=mode, padding_mode="zeros", align_corners=False)
    for j, i in enumerate(keep):
        x1, y1, x2, y2 = (int(v) for v in boxes[i])
        patch = warped[j, :colours, : y2 - y1, : x2 - x1]
        if clamp is not None:
            patch = patch.clamp(*clamp)
        alpha = warped[j, colours : colours + 1, : y2 - y1, : x2 - x1].clamp(0.0, 1.0)
        if replaced is not None:
            own = warped[j, colours + 1 :, : y2 - y1, : x2 - x1] >= 0.5
            others = replaced[:, y1:y2, x1:x2]
            alpha = torch.where(others & ~own, torch.zeros_like(alpha), alpha)
            others |= own
        roi = frame[:, y1:y2, x1:x2]
        roi.copy_(roi * (1 - alpha) + patch.to(frame.dtype) * alpha)
    return frame


def feather_alpha(region_mask: torch.Tensor, feather_px: float) -> torch.Tensor:
    """(B, 1, S, S) alpha: 1 on the region and 1 px around it, smoothstep down to 0 ``feather_px`` further out.

    The torch twin of :func:`sdgan_stream.blend.feather_alpha` (which uses ``cv2.distanceTransform``):
    the Euclidean distance to the region is found exactly within the feather radius by one conv with a
    ring kernel per distinct distance, so all faces are done in one call.
    """
    inside = (region_mask > 0.5).to(torch.float32)
    if inside.dim() == 3:
        inside = inside[:, None]
    radius = int(math.ceil(max(feather_px, 1e-6) + 1.0)) + 1
    offsets = torch.arange(-radius, radius + 1, dtype=torch.float32, device=inside.device)
    dist = torch.sqrt(offsets[:, None] ** 2 + offsets[None, :] ** 2)
    levels = torch.unique(dist[dist <= radius])
    levels = levels[levels > 0]
    rings = (dist[None] == levels[:, None, None]).to(torch.float32)[:, None]  # (K, 1, k, k)
    hits = F.conv2d(inside, rings, padding=radius) > 0.5  # (B, K, S, S): an inside pixel at that distance
    far = torch.tensor(float("inf"), device=inside.device)
    distance = torch.where(hits, levels[None, :, None, None], far).amin(dim=1, keepdim=True)
    distance = torch.where(inside > 0.5, torch.zeros_like(distance), distance)
    t = ((distance - 1.0) / max(feather_px, 1e-6)).clamp(0.0, 1.0)
    return 1.0 - t * t * (3.0 - 2.0 * t)


# -- colour -------------------------------------------------------------------------------------------
_RGB_TO_XYZ = torch.tensor([[0.412453, 0.357580, 0.180423], [0.212671, 0.715160, 0.072169], [0.019334, 0.119193, 0.950227]])
_WHITE = torch.tensor([0.950456, 1.0, 1.088754])


def rgb_to_lab(rgb: torch.Tensor) -> torch.Tensor:
    """sRGB in 0..1, (..., 3, H, W) -> CIE Lab with OpenCV's float convention (L 0..100)."""
    linear = torch.where(rgb > 0.04045, ((rgb.clamp(min=0) + 0.055) / 1.055) ** 2.4, rgb / 12.92)
    xyz = torch.einsum("ij,...jhw->...ihw", _RGB_TO_XYZ.to(rgb), linear) / _WHITE.to(rgb)[:, None, None]
    f = torch.where(xyz > 0.008856, xyz.clamp(min=1e-12) ** (1.0 / 3.0), 7.787 * xyz + 16.0 / 116.0)
    y = xyz[..., 1:2, :, :]
    lightness = torch.where(y > 0.008856, 116.0 * f[..., 1:2, :, :] - 16.0, 903.3 * y)
    a = 500.0 * (f[..., 0:1, :, :] - f[..., 1:2, :, :])
    b = 200.0 * (f[..., 1:2, :, :] - f[..., 2:3, :, :])
    return torch.cat([lightness, a, b], dim=-3)


def lab_to_rgb(lab: torch.Tensor) -> torch.Tensor:
    """Inverse of :func:`rgb_to_lab` (values may leave 0..1 for out-of-gamut colours; clamp after)."""
    lightness, a, b = lab[..., 0:1, :, :], lab[..., 1:2, :, :], lab[..., 2:3, :, :]
    fy = (lightness + 16.0) / 116.0
    fx, fz = fy + a / 500.0, fy - b / 200.0

    def inverse_f(t: torch.Tensor) -> torch.Tensor:
        return torch.where(t > 0.206893, t**3, (t - 16.0 / 116.0) / 7.787)

    xyz = torch.cat([inverse_f(fx), inverse_f(fy), inverse_f(fz)], dim=-3) * _WHITE.to(lab)[:, None, None]
    linear = torch.einsum("ij,...jhw->...ihw", torch.linalg.inv(_RGB_TO_XYZ).to(lab), xyz)
    return torch.where(linear > 0.0031308, 1.055 * linear.clamp(min=1e-12) ** (1.0 / 2.4) - 0.055, 12.92 * linear)


# -- seamless blend (the torch twin of sdgan_stream.blend.blend_crop, method "seamless") ---------------------
@dataclass(frozen=True)
class SeamlessPlan:
    """Host-made arrays of :func:`seamless_blend` for a batch of faces (from their maps and regions,
    which live on the host): made once per frame, uploaded once."""

    region: np.ndarray  # (B, S, S) bool: the replaced region
    core: np.ndarray  # (B, S, S) bool: the region less blend.CLONE_BAND (guided by the generated face)
    skin: np.ndarray  # (B, S, S) bool: the map's skin class
    skin_weight: np.ndarray  # (B, S, S) float32: where the skin colour shift applies (blend.face_alpha x region)
    rects: list[tuple[int, int, int, int] | None]  # cloning domain per face (blend.clone_rect)


def seamless_plan(faces: Sequence[PreparedFace]) -> SeamlessPlan:
    from ..blend import SKIN_RAMP, clone_core, clone_rect, face_alpha
    from ..semantic import class_id

    regions = np.stack([f.region_mask > 0.5 for f in faces])
    size = regions.shape[-1]
    return SeamlessPlan(
        region=regions,
        core=np.stack([clone_core(r, size) for r in regions]),
        skin=np.stack([f.labels == class_id("skin") for f in faces]),
        skin_weight=np.stack([face_alpha(f.labels, SKIN_RAMP * size) * r for f, r in zip(faces, regions)]),
        rects=[clone_rect(r) for r in regions],
    )


_DST_CACHE: dict[tuple[int, str, torch.dtype], torch.Tensor] = {}


def _dst(n: int, like: torch.Tensor) -> torch.Tensor:
    key = (n, str(like.device), like.dtype)
    matrix = _DST_CACHE.get(key)
    if matrix is None:
        from ..blend import dst_matrix

        matrix = torch.tensor(dst_matrix(n), dtype=like.dtype, device=like.device)  # a copy: the cached array is read-only
        if len(_DST_CACHE) > 64:
            _DST_CACHE.clear()
        _DST_CACHE[key] = matrix
    return matrix


def poisson_clone(source: torch.Tensor, target: torch.Tensor, region: torch.Tensor, core: torch.Tensor) -> torch.Tensor:
    """One window's gradient-domain cloning, as :func:`sdgan_stream.blend.poisson_clone`: ``source``'s
    gradients inside ``core``, ``target``'s between two pixels outside ``region``, none elsewhere;
    ``target`` fixed on the window's border. (3, h, w) tensors and (h, w) masks in, (3, h, w) out."""
    out = target.clone()
    outside = ~region
    lap = torch.zeros_like(source)
    for axis in (1, 2):  # rows, then columns of the (3, h, w) window
        n = source.shape[axis]
        ahead, here = [slice(None)] * 3, [slice(None)] * 3
        ahead[axis], here[axis] = slice(1, n), slice(0, n - 1)
        g = torch.zeros_like(source)
        both_out = outside[tuple(ahead[1:])] & outside[tuple(here[1:])]
        g[tuple(here)] = torch.where(core[tuple(here[1:])], source[tuple(ahead)] - source[tuple(here)], 0.0) + torch.where(
            both_out, target[tuple(ahead)] - target[tuple(here)], 0.0)
        lap[tuple(ahead)] += g[tuple(ahead)] - g[tuple(here)]
    lap = lap[:, 1:-1, 1:-1].clone()
    lap[:, :, 0] -= target[:, 1:-1, 0]
    lap[:, :, -1] -= target[:, 1:-1, -1]
    lap[:, 0, :] -= target[:, 0, 1:-1]
    lap[:, -1, :] -= target[:, -1, 1:-1]
    h, w = lap.shape[-2:]
    sy, sx = _dst(h, lap), _dst(w, lap)
    ky = torch.arange(1, h + 1, dtype=lap.dtype, device=lap.device)
    kx = torch.arange(1, w + 1, dtype=lap.dtype, device=lap.device)
    eig = (2.0 * torch.cos(torch.pi * ky / (h + 1)) - 2.0)[:, None] + (2.0 * torch.cos(torch.pi * kx / (w + 1)) - 2.0)[None, :]
    out[:, 1:-1, 1:-1] = sy @ ((sy @ lap @ sx) / eig) @ sx
    return out


def skin_field(lab: torch.Tensor, skin: torch.Tensor, *, min_pixels: int = 32) -> tuple[torch.Tensor, torch.Tensor]:
    """Per face, the quadratic Lab field fitted over ``skin`` (as :func:`sdgan_stream.blend.skin_fitter`,
    by weighted normal equations): (B, 3, S, S) fields and (B,) whether the face had enough skin
    (fields of faces that had not are zero)."""
    from ..blend import shading_basis

    batch, _, size, _ = lab.shape
    basis = torch.tensor(shading_basis(size), dtype=torch.float64, device=lab.device)  # (S*S, 6), a copy
    weight = skin.reshape(batch, -1).to(torch.float64)
    values = lab.reshape(batch, 3, -1).to(torch.float64)
    normal = torch.einsum("pk,bp,pl->bkl", basis, weight, basis)
    rhs = torch.einsum("pk,bp,bcp->bkc", basis, weight, values)
    enough = weight.sum(1) >= min_pixels
    normal = torch.where(enough[:, None, None], normal, torch.eye(6, dtype=normal.dtype, device=normal.device))
    coeffs = torch.linalg.solve(normal, rhs)  # (B, 6, 3)
    field = torch.einsum("pk,bkc->bcp", basis, coeffs).reshape(batch, 3, size, size)
    return (field * enough[:, None, None, None]).to(lab.dtype), enough


def skin_detail_gain(lab: torch.Tensor, field: torch.Tensor, reference_lab: torch.Tensor, reference_field: torch.Tensor,
                     skin: torch.Tensor) -> torch.Tensor:
    """(B, 3, 1, 1) per-channel spread ratio of the skin's detail, reference over image, within 0.5-2x
    (as :func:`sdgan_stream.blend.skin_detail_gain`)."""
    weight = skin[:, None].to(lab.dtype)
    count = weight.sum(dim=(2, 3), keepdim=True).clamp(min=1)

    def spread(x: torch.Tensor) -> torch.Tensor:
        mean = (x * weight).sum(dim=(2, 3), keepdim=True) / count
        return ((((x - mean) ** 2) * weight).sum(dim=(2, 3), keepdim=True) / count).sqrt()

    return (spread(reference_lab - reference_field) / spread(lab - field).clamp(min=1e-3)).clamp(0.5, 2.0)


def seamless_blend(composite: torch.Tensor, crops: torch.Tensor, plan: SeamlessPlan) -> torch.Tensor:
    """The crops to paste, (B, 3, S, S) in 0..255: the generated detail at the original skin's spread,
    cloning of ``composite`` (the generated face inside the region) into ``crops`` (the original), then
    the skin's colour field, as ``blend.blend_crop``."""
    device = composite.device
    region = torch.from_numpy(plan.region).to(device)
    core = torch.from_numpy(plan.core).to(device)
    skin = torch.from_numpy(plan.skin).to(device)
    reference_lab = rgb_to_lab(crops / 255.0)
    reference_field, enough = skin_field(reference_lab, skin)
    lab = rgb_to_lab((composite / 255.0).clamp(0.0, 1.0))
    field, _ = skin_field(lab, skin)
    gain = skin_detail_gain(lab, field, reference_lab, reference_field, skin)
    scaled = torch.where(region[:, None] & enough[:, None, None, None], field + (lab - field) * gain, lab)
    source = lab_to_rgb(scaled).clamp(0.0, 1.0) * 255.0  # cv2's float Lab -> RGB clips the same way
    cloned = crops.clone()
    for i, rect in enumerate(plan.rects):  # each face's cloning on its own region's bounding box
        if rect is not None:
            x1, y1, x2, y2 = rect
            w = (slice(y1, y2), slice(x1, x2))
            cloned[i, :, w[0], w[1]] = poisson_clone(source[i, :, w[0], w[1]], crops[i, :, w[0], w[1]], region[i][w], core[i][w])
    lab = rgb_to_lab((cloned / 255.0).clamp(0.0, 1.0))
    field, _ = skin_field(lab, skin)
    weight = torch.from_numpy(plan.skin_weight).to(device=device, dtype=lab.dtype)[:, None] * enough[:, None, None, None]
    return lab_to_rgb(lab + (reference_field - field) * weight).clamp(0.0, 1.0) * 255.0


# -- the whole per-frame GPU path ------------------------------------------------------------------------
class DeviceFrameRenderer:
    """All faces of one frame on the backend's device: one upload, one generator call, one download.

    Replaces, for every :class:`~sdgan_stream.faceprep.PreparedFace` (landmarks, maps and region masks
    stay on the host, where they are made), the CPU chain ``warp_to_crop`` -> ``backend.generate`` ->
    ``blend.paste_back`` (seamless blend + feathered alpha + inverse warp) with its torch twin:

    frame (pinned) -> device -> crops (grid_sample, antialiased) -> masked input / one-hot map ->
    ``backend.generate_tensors`` -> generated face inside the region, crop outside -> gradient-domain
    cloning and the skin colour shift (:func:`seamless_blend`) -> feathered alpha -> inverse warp and
    blend -> host.

    Crops are rounded to whole grey levels before scaling to [-1, 1]: the generator finds its hole as
    exact zeros, and a float crop value of exactly 127.5 would otherwise read as hole.

    >>> # renderer = DeviceFrameRenderer(backend=backend, label_nc=11)
    >>> # renderer.render(image, prepared_faces, identity_codes)   # image (H, W, 3) uint8, changed in place
    """

    def __init__(self, *, backend: Any, label_nc: int, feather: float = 0.035, blend: bool = True) -> None:
        self.backend = backend
        self.device = torch.device(getattr(backend, "torch_device", backend.device))
        self.label_nc = label_nc
        self.feather = feather
        self.blend = blend  # False: the composite is pasted as it is (blend method "none")
        self._pinned = self.device.type == "cuda"
        self._host: dict[tuple[int, ...], torch.Tensor] = {}

    def _host_buffer(self, shape: tuple[int, ...]) -> torch.Tensor:
        buf = self._host.get(shape)
        if buf is None:
            buf = torch.empty(shape, dtype=torch.uint8, pin_memory=self._pinned)
            self._host = {shape: buf}  # one frame size at a time: a stream does not change resolution
        return buf

    def render(
        self,
        image: np.ndarray,
        faces: Sequence[PreparedFace],
        identity: np.ndarray,
        *,
        adjust: Callable[[torch.Tensor], torch.Tensor] | None = None,
    ) -> np.ndarray:
        """Generate and paste every face of ``faces`` into ``image`` (H, W, 3) uint8, in place; returns the
        generated, composited crops (B, S, S, 3) uint8 (what the CPU renderer keeps for ``inspect``).

        ``adjust`` receives the raw generator output (B, 3, S, S) in [-1, 1] on the device and returns
        the tensor to composite (e.g. the renderer's per-track temporal smoothing, kept on the device).
        """
        if not faces:
            return np.zeros((0, 0, 0, 3), np.uint8)
        size = faces[0].size
        host = self._host_buffer(tuple(image.shape))
        host.numpy()[...] = image
        frame = host.to(self.device, non_blocking=True).permute(2, 0, 1).float()
        matrices = np.stack([f.matrix for f in faces])
        labels = torch.from_numpy(np.stack([f.labels for f in faces]).astype(np.uint8)).to(self.device, non_blocking=True).long()
        region = torch.from_numpy(np.stack([f.region_mask for f in faces])[:, None]).to(self.device, non_blocking=True) > 0.5
        identity_t = torch.from_numpy(np.ascontiguousarray(identity, np.float32)).to(self.device, non_blocking=True)

        crops = warp_crops(frame, matrices, size).round().clamp(0, 255)
        masked = (crops / 127.5 - 1.0) * (~region)
        semantic = F.one_hot(labels, self.label_nc).permute(0, 3, 1, 2).float()
        generated = self.backend.generate_tensors(masked, semantic, identity_t)
        if adjust is not None:
            generated = adjust(generated)
        generated = ((generated + 1.0) * 127.5).clamp(0, 255).round()
        composite = torch.where(region, generated, crops)
        colour = seamless_blend(composite, crops, seamless_plan(faces)).round() if self.blend else composite
        alpha = feather_alpha(region.float(), self.feather * size)
        paste_crops(frame, colour, alpha, matrices, regions=region.float() if len(faces) > 1 else None)  # see paste_crops
        host.copy_(frame.round().clamp(0, 255).to(torch.uint8).permute(1, 2, 0), non_blocking=True)
        crops_out = composite.to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()  # synchronizes the stream
        if self.device.type == "cuda":
            torch.cuda.current_stream(self.device).synchronize()
        image[...] = host.numpy()
        return crops_out
