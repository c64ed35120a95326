"""Losses of SDGAN training: LSGAN (patch + quality branch), feature matching, masked L1, contrastive
identity, and an optional VGG19 perceptual loss when the user supplies VGG19 weights.

No ImageNet weights can be downloaded here, so the perceptual term defaults to discriminator feature
matching (pix2pixHD); ``VGG19Features`` loads a local file (torchvision layout ``features.N.weight``,
safetensors or a plain state dict read with ``weights_only=True``).
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from sdgan_stream.errors import WeightsError

__all__ = [
    "VGG19Features",
    "contrastive_loss",
    "feature_matching_per_sample",
    "identity_loss",
    "lsgan_loss",
    "masked_l1",
    "masked_l1_per_sample",
    "perceptual_per_sample",
    "weighted_mean",
]


def lsgan_loss(outputs: list[list[Tensor]] | Tensor, real: bool) -> Tensor:
    """Least-squares GAN loss over every scale's score map (the last feature of each critic)."""
    target = 1.0 if real else 0.0
    if isinstance(outputs, Tensor):
        return F.mse_loss(outputs, torch.full_like(outputs, target))
    losses = [F.mse_loss(scale[-1], torch.full_like(scale[-1], target)) for scale in outputs]
    return torch.stack(losses).mean()


def weighted_mean(per_sample: Tensor, weight: Tensor | None = None, denominator: Tensor | float | None = None) -> Tensor:
    """Mean over samples, or ``sum(per_sample * weight) / denominator`` (default ``sum(weight)``, at least 1).

    A distributed or accumulated step passes the *global* batch's denominator (divided by the number of
    pieces), so that the pieces' gradients average to the gradient of the whole batch's weighted mean.
    """
    if weight is None:
        return per_sample.mean()
    if denominator is None:
        denominator = weight.sum().clamp_min(1)
    return (per_sample * weight).sum() / denominator


def feature_matching_per_sample(fake: list[list[Tensor]], real: list[list[Tensor]]) -> Tensor:
    """L1 between discriminator features of fake and real (all layers but the score), per sample (B,)."""
    layers = [
        (f - r.detach()).abs().mean(dim=(1, 2, 3))
        for fake_scale, real_scale in zip(fake, real)
        for f, r in zip(fake_scale[:-1], real_scale[:-1])
    ]
    return torch.stack(layers).mean(dim=0)


def masked_l1_per_sample(a: Tensor, b: Tensor, mask: Tensor) -> Tensor:
    """Mean absolute error inside ``mask`` (B, 1, H, W), per sample (B,)."""
    return ((a - b).abs() * mask).sum(dim=(1, 2, 3)) / (mask.sum(dim=(1, 2, 3)) * a.shape[1]).clamp_min(1)


def masked_l1(a: Tensor, b: Tensor, mask: Tensor, weight: Tensor | None = None) -> Tensor:
    """Mean absolute error inside ``mask`` (B, 1, H, W), averaged over samples (optionally weighted)."""
    return weighted_mean(masked_l1_per_sample(a, b, mask), weight)


def contrastive_loss(a: Tensor, b: Tensor, same: Tensor, margin: float) -> Tensor:
    """Hadsell et al.: same pairs pulled together (d^2), different pairs pushed beyond ``margin``."""
    d = (a - b).norm(dim=1)
    return (same * d.pow(2) + (1 - same) * F.relu(margin - d).pow(2)).mean()


def identity_loss(fake: Tensor, toward: Tensor, away: Tensor, away_weight: Tensor, margin: float) -> Tensor:
    """The generator's identity term: close to the target identity, at least ``margin`` from the source."""
    d_toward = (fake - toward.detach()).norm(dim=1)
    d_away = (fake - away.detach()).norm(dim=1)
    return (d_toward.pow(2) + away_weight * F.relu(margin - d_away).pow(2)).mean()


_VGG19_CFG = (64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M", 512, 512, 512, 512)
_VGG_TAPS = (1, 6, 11, 20)  # relu1_1, relu2_1, relu3_1, relu4_1 in torchvision's vgg19().features indices


class VGG19Features(nn.Module):
    """VGG19 up to relu4_1 from a local weights file (no download). Frozen, eval mode."""

    def __init__(self, weights_path: str | Path) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        in_c = 3
        for v in _VGG19_CFG:
            if v == "M":
                layers.append(nn.MaxPool2d(2, 2))
            else:
                layers += [nn.Conv2d(in_c, int(v), 3, padding=1), nn.ReLU(inplace=False)]
                in_c = int(v)
        self.features = nn.Sequential(*layers[: _VGG_TAPS[-1] + 1])
        state = _read_state(Path(weights_path))
        wanted = {k: v for k, v in state.items() if k.startswith("features.")}
        own = self.state_dict()
        missing = [k for k in own if k not in wanted]
        if missing:
            raise WeightsError(f"{weights_path} is not a torchvision VGG19 state dict (missing {missing[:3]})")
        self.load_state_dict({k: wanted[k] for k in own})
        self.register_buffer("mean", torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1), persistent=False)
        self.eval().requires_grad_(False)

    def forward(self, image: Tensor) -> list[Tensor]:
        x = ((image + 1) * 0.5 - self.mean) / self.std
        taps = []
        for i, layer in enumerate(self.features):
            x = layer(x)
            if i in _VGG_TAPS:
                taps.append(x)
        return taps


def _read_state(path: Path) -> dict[str, Tensor]:
    if not path.is_file():
        raise WeightsError(f"VGG19 weights not found: {path}")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            return load_file(str(path))
        state = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any reader failure is a bad weights file for the user
        raise WeightsError(f"cannot read VGG19 weights {path}: {exc}") from exc
    if not isinstance(state, dict):
        raise WeightsError(f"{path} does not hold a state dict")
    return state


def perceptual_per_sample(vgg: VGG19Features, fake: Tensor, real: Tensor) -> Tensor:
    """L1 between VGG19 features (pix2pixHD weights 1/32 ... 1/4 over relu1_1 ... relu4_1), per sample (B,)."""
    layer_weights = (1 / 32, 1 / 16, 1 / 8, 1 / 4)
    with torch.no_grad():
        real_feats = vgg(real)
    layers = [w * (f - r).abs().mean(dim=(1, 2, 3)) for w, f, r in zip(layer_weights, vgg(fake), real_feats)]
    return torch.stack(layers).sum(dim=0)

