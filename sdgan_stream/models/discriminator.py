"""The hybrid discriminator: a multi-scale PatchGAN on (image, map) plus a no-reference quality branch.

The PatchGAN part follows pix2pixHD/SPADE: ``num_scales`` copies of a 70x70-style patch critic, each on
an image half the size of the previous, all seeing the image concatenated with the one-hot map so that
"realistic *for this layout*" is what they judge. Their intermediate features serve feature matching
(the perceptual loss when no VGG19 weights are available).

The quality branch is the "image quality" half of SDGAN's hybrid discriminator. It looks only at
mean-subtracted contrast-normalized (MSCN) coefficients, the natural-scene statistics BRISQUE is built
on: ``(I - mu) / (sigma + C)`` with Gaussian-weighted local mean/deviation, and the products of
neighbouring coefficients in four orientations. Natural images have characteristic MSCN
distributions; GAN artefacts (checkerboards, smears, flat patches) break them. A small learned head
pools those coefficient maps (and their squares) into a single realness score per image.

Used in training only; inference never builds a discriminator.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["DiscriminatorConfig", "HybridDiscriminator", "MultiScalePatchDiscriminator", "QualityBranch", "mscn"]


@dataclass(frozen=True)
class DiscriminatorConfig:
    label_nc: int = 11
    ndf: int = 32
    n_layers: int = 3
    num_scales: int = 2
    quality_width: int = 16


class PatchDiscriminator(nn.Module):
    """One PatchGAN critic; ``forward`` returns the list of intermediate features, the last one is the score map."""

    def __init__(self, *, input_nc: int, ndf: int, n_layers: int) -> None:
        super().__init__()
        layers: list[nn.Module] = [nn.Sequential(nn.Conv2d(input_nc, ndf, 4, 2, 2), nn.LeakyReLU(0.2))]
        nf = ndf
        for n in range(1, n_layers + 1):
            prev, nf = nf, min(nf * 2, 8 * ndf)
            stride = 2 if n < n_layers else 1
            layers.append(
                nn.Sequential(nn.Conv2d(prev, nf, 4, stride, 2), nn.InstanceNorm2d(nf, affine=False), nn.LeakyReLU(0.2))
            )
        layers.append(nn.Conv2d(nf, 1, 4, 1, 2))
        self.layers = nn.ModuleList(layers)

    def forward(self, x: Tensor) -> list[Tensor]:
        features = []
        for layer in self.layers:
            x = layer(x)
            features.append(x)
        return features


class MultiScalePatchDiscriminator(nn.Module):
    def __init__(self, *, input_nc: int, ndf: int, n_layers: int, num_scales: int) -> None:
        super().__init__()
        self.critics = nn.ModuleList(
            PatchDiscriminator(input_nc=input_nc, ndf=ndf, n_layers=n_layers) for _ in range(num_scales)
        )

    def forward(self, x: Tensor) -> list[list[Tensor]]:
        outputs = []
        for i, critic in enumerate(self.critics):
            if i:
                x = F.avg_pool2d(x, 3, stride=2, padding=1, count_include_pad=False)
            outputs.append(critic(x))
        return outputs


def _gaussian_kernel(size: int = 7, sigma: float = 7.0 / 6.0) -> Tensor:
    coords = torch.arange(size, dtype=torch.float32) - (size - 1) / 2
    g = torch.exp(-(coords**2) / (2 * sigma**2))
    g = g / g.sum()
    return (g[:, None] * g[None, :])[None, None]


def mscn(gray: Tensor, kernel: Tensor, c: float = 1.0 / 255.0) -> Tensor:
    """MSCN coefficients of a (B, 1, H, W) image in [0, 1], as in BRISQUE (Mittal et al., 2012)."""
    pad = kernel.shape[-1] // 2
    padded = F.pad(gray, (pad, pad, pad, pad), mode="replicate")
    mu = F.conv2d(padded, kernel)
    var = F.conv2d(padded * padded, kernel) - mu * mu
    return (gray - mu) / (torch.sqrt(var.clamp_min(0) + 1e-8) + c)


class QualityBranch(nn.Module):
    """No-reference quality critic on MSCN statistics; returns one score per image, (B, 1)."""

    def __init__(self, *, width: int = 16) -> None:
        super().__init__()
        self.register_buffer("kernel", _gaussian_kernel(), persistent=False)
        self.register_buffer("luma", torch.tensor([0.299, 0.587, 0.114]).view(1, 3, 1, 1), persistent=False)
        # 5 coefficient maps (MSCN + 4 neighbour products) and their squares (local energy).
        self.head = nn.Sequential(
            nn.Conv2d(10, width, 3, padding=1), nn.LeakyReLU(0.2),
            nn.Conv2d(width, 2 * width, 3, stride=2, padding=1), nn.LeakyReLU(0.2),
            nn.Conv2d(2 * width, 2 * width, 3, stride=2, padding=1), nn.LeakyReLU(0.2),
        )
        self.score = nn.Linear(4 * width, 1)

    def statistics(self, image: Tensor) -> Tensor:
        gray = ((image + 1) * 0.5 * self.luma).sum(dim=1, keepdim=True)
        m = mscn(gray, self.kernel)
        right = F.pad(m[:, :, :, 1:], (0, 1, 0, 0))
        down = F.pad(m[:, :, 1:, :], (0, 0, 0, 1))
        diag = F.pad(m[:, :, 1:, 1:], (0, 1, 0, 1))
        anti = F.pad(m[:, :, 1:, :-1], (1, 0, 0, 1))
        coeffs = torch.cat([m, m * right, m * down, m * diag, m * anti], dim=1)
        return torch.cat([coeffs, coeffs * coeffs], dim=1)

    def forward(self, image: Tensor) -> Tensor:
        h = self.head(self.statistics(image))
        # Mean and spread of the learned responses: a learned analogue of BRISQUE's fitted (shape, variance).
        pooled = torch.cat([h.mean(dim=(2, 3)), h.std(dim=(2, 3))], dim=1)
        return self.score(pooled)


class HybridDiscriminator(nn.Module):
    """PatchGAN on (image, map) at several scales + MSCN quality branch on the image alone."""

    def __init__(self, config: DiscriminatorConfig | None = None) -> None:
        super().__init__()
        c = config or DiscriminatorConfig()
        self.config = c
        self.patch = MultiScalePatchDiscriminator(
            input_nc=3 + c.label_nc, ndf=c.ndf, n_layers=c.n_layers, num_scales=c.num_scales
        )
        self.quality = QualityBranch(width=c.quality_width)

    def forward(self, image: Tensor, semantic: Tensor) -> tuple[list[list[Tensor]], Tensor]:
        return self.patch(torch.cat([image, semantic], dim=1)), self.quality(image)
