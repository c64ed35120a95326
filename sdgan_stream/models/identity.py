"""Target identity codes and the siamese identity encoder.

Identity codes are points on the unit sphere in ``dim`` dimensions. A track's seed picks one
deterministically (:func:`identity_code`); training draws codes the same way (one per identity of a
real data set, or a fresh one per synthetic identikit face whose appearance is derived from it), so
every code inference can produce lies in the distribution the generator was trained on.

The identity encoder is the siamese network of SDGAN's contrastive identity loss: it embeds a face
(the face region of an aligned crop) so that two images of one identity land close together and two
identities at least a margin apart. It is trained jointly with the generator and used only in
training; the independent judge of anonymity (dlib's recognizer) is never used in training.
"""

from __future__ import annotations

import functools
import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["IdentityEncoder", "identity_code", "identity_codes"]


def _rng(seed: int) -> np.random.Generator:
    seed = int(seed) % (1 << 64)  # negative and huge seeds are fine: map onto 64 bits
    return np.random.default_rng([seed & 0xFFFFFFFF, seed >> 32, 0x5D6A4E])


def identity_code(seed: int, dim: int) -> np.ndarray:
    """Deterministic target identity code for ``seed``: a float32 unit vector of length ``dim``.

    >>> a = identity_code(7, 64); b = identity_code(7, 64)
    >>> bool((a == b).all()), a.dtype.name, round(float(np.linalg.norm(a)), 5)
    (True, 'float32', 1.0)
    """
    return _cached_code(int(seed), dim).copy()


@functools.lru_cache(maxsize=4096)
def _cached_code(seed: int, dim: int) -> np.ndarray:
    """:func:`identity_code`, drawn once per (seed, dim): a track asks for its code on every frame.
    Read-only, so no caller can change what the next one gets."""
    if dim <= 0:
        raise ValueError(f"identity code dimension must be positive, got {dim}")
    v = _rng(seed).standard_normal(dim)
    code = (v / np.linalg.norm(v)).astype(np.float32)
    code.flags.writeable = False
    return code


def identity_codes(seeds: list[int] | np.ndarray, dim: int) -> np.ndarray:
    """Codes for several seeds, (N, dim) float32."""
    return np.stack([_cached_code(int(s), dim) for s in seeds]) if len(seeds) else np.zeros((0, dim), np.float32)


def _group_norm(channels: int) -> nn.GroupNorm:
    return nn.GroupNorm(math.gcd(8, channels), channels)


class IdentityEncoder(nn.Module):
    """Siamese face embedder: (B, 3, S, S) in [-1, 1] (+ optional (B, 1, S, S) face mask) -> (B, D) unit vectors.

    The input is resized to ``input_size`` and, when a mask is given, everything outside the face
    region is set to 0 so that the embedding describes the face, not the shared surroundings.
    """

    def __init__(self, *, input_size: int = 64, width: int = 32, embed_dim: int = 128) -> None:
        super().__init__()
        self.input_size = input_size
        w = width  # GroupNorm, not BatchNorm: the same network embeds real and generated batches (no mode switch)
        self.features = nn.Sequential(
            nn.Conv2d(3, w, 3, padding=1), nn.LeakyReLU(0.2),
            nn.Conv2d(w, 2 * w, 3, stride=2, padding=1), _group_norm(2 * w), nn.LeakyReLU(0.2),
            nn.Conv2d(2 * w, 4 * w, 3, stride=2, padding=1), _group_norm(4 * w), nn.LeakyReLU(0.2),
            nn.Conv2d(4 * w, 4 * w, 3, stride=2, padding=1), _group_norm(4 * w), nn.LeakyReLU(0.2),
            nn.Conv2d(4 * w, 8 * w, 3, stride=2, padding=1), nn.LeakyReLU(0.2),
        )
        self.embed = nn.Linear(8 * w * 2, embed_dim)

    def forward(self, image: Tensor, mask: Tensor | None = None) -> Tensor:
        if mask is not None:
            image = image * mask
        x = F.interpolate(image, size=(self.input_size, self.input_size), mode="bilinear", align_corners=False,
                          antialias=True)
        h = self.features(x)
        # Mean and max pooling: the mean keeps tone, the max keeps local feature evidence.
        pooled = torch.cat([h.mean(dim=(2, 3)), h.amax(dim=(2, 3))], dim=1)
        return F.normalize(self.embed(pooled), dim=1)


# Identity-dependent face shape: (name, landmark ids, direction, size in eye distances). A code moves
# each group along its direction by up to ``size`` x strength; the renderer can draw the map from the
# reshaped points so the new face differs in shape too, not only in appearance (the recognizer reads
# geometry: a swap of every inner feature on the original's geometry still scored ~0.65 apart).
_SHAPE_DIMS = 10


def reshape_landmarks(landmarks68: np.ndarray, code: np.ndarray, *, strength: float = 1.0) -> np.ndarray:
    """68 landmarks moved by an identity-specific, deterministic shape change (crop or image coords).

    Uses the last ``10`` code dimensions (the first ones drive appearance). ``strength`` 1 moves points
    by ~0.04-0.05 inter-ocular distances on average (the eyes' corners stay within a few percent), so
    expression and pose are kept.
    """
    p = np.asarray(landmarks68, np.float64).copy()
    code = np.asarray(code, np.float64).ravel()
    if p.shape != (68, 2) or code.size < _SHAPE_DIMS:
        raise ValueError(f"need (68, 2) landmarks and a code of >= {_SHAPE_DIMS} dims, got {p.shape}, {code.size}")
    u = np.tanh(code[-_SHAPE_DIMS:] * np.sqrt(code.size)) * strength  # each in (-strength, strength)
    axis = p[42:48].mean(0) - p[36:42].mean(0)
    ipd = float(np.hypot(*axis))
    if ipd < 1e-6 or strength == 0:
        return p
    right = axis / ipd
    down = np.array([-right[1], right[0]])
    centre = p[27:36].mean(0)

    def scale_about(ids: np.ndarray, origin: np.ndarray, sx: float, sy: float) -> None:
        rel = p[ids] - origin
        p[ids] = origin + np.outer(rel @ right, right) * (1 + sx) + np.outer(rel @ down, down) * (1 + sy)

    jaw = np.arange(0, 17)
    scale_about(jaw, centre, 0.08 * u[0], 0.0)  # jaw width
    chin = np.exp(-((jaw - 8) ** 2) / 10.0)
    p[jaw] += np.outer(chin * 0.10 * u[1] * ipd, down)  # chin length
    for ids in (np.arange(36, 42), np.arange(42, 48)):
        eye_c = p[ids].mean(0)
        scale_about(ids, eye_c, 0.10 * u[2], 0.18 * u[2])  # eye size
    for ids, side in ((np.r_[17:22, 36:42], -1.0), (np.r_[22:27, 42:48], 1.0)):
        p[ids] += side * 0.05 * u[3] * ipd * right  # eye spacing (with the brows)
    p[17:27] += -0.08 * u[4] * ipd * down  # brow height
    nose_top = p[27].copy()
    p[28:36] = nose_top + (p[28:36] - nose_top) * (1 + 0.08 * u[5])  # nose length
    scale_about(np.arange(31, 36), p[33].copy(), 0.15 * u[6], 0.0)  # nose width
    mouth = np.arange(48, 68)
    scale_about(mouth, p[mouth].mean(0), 0.10 * u[7], 0.08 * u[8])  # mouth width / lip height
    p[mouth] += 0.06 * u[9] * ipd * down  # mouth position
    return p
