"""The SDGAN generator: (masked face crop, semantic map, target identity code) -> a new face.

Tensor convention (inference and training alike):

* ``masked``: float32 (B, 3, S, S), NCHW, RGB, values in [-1, 1] (``uint8 / 127.5 - 1``). It is the
  aligned face crop with the face region blanked: ``masked = crop_scaled * (1 - region_mask)``, so the
  blanked region is exactly 0 (mid-grey) and the surroundings (hair, background, neck) are kept.
  The generator finds the hole itself (pixels where all three channels are exactly 0); a real
  uint8 pixel can never map to exactly 0 because 127.5 is not an integer. (Pixels blanked to
  exactly -1, black, are also taken as hole, so a caller blanking before scaling still works.)
* ``semantic``: float32 (B, label_nc, S, S) one-hot map, channel order = ``semantic.CLASS_NAMES``
  (background, skin, l_brow, r_brow, l_eye, r_eye, nose, u_lip, mouth, l_lip, hair).
* ``identity``: float32 (B, identity_dim) target identity code, a unit vector
  (see :func:`sdgan_stream.models.identity.identity_code`).
* output: float32 (B, 3, S, S) RGB in [-1, 1] (tanh). The caller composites
  ``out * region_mask + crop * (1 - region_mask)`` and maps back with ``(x + 1) * 127.5``.

Architecture: a small convolutional encoder over (masked crop, hole mask, map) down to S/16, the
identity code joined at the bottleneck (broadcast + 1x1 fusion) and, through a style vector, as a
per-channel modulation inside every SPADE block; a decoder of SPADE residual blocks with U-Net
skips from the encoder (the skips carry the context ring so colours and edges continue).

>>> import torch
>>> cfg = GeneratorConfig(image_size=32, ngf=4, spade_hidden=4, identity_dim=8)
>>> g = build_generator(cfg)
>>> y = g(torch.zeros(2, 3, 32, 32), torch.zeros(2, 11, 32, 32), torch.zeros(2, 8))
>>> tuple(y.shape)
(2, 3, 32, 32)
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .config import GeneratorConfig
from .layers import SPADEResBlock

__all__ = ["GeneratorConfig", "SDGANGenerator", "build_generator"]


class _Down(nn.Sequential):
    def __init__(self, in_nc: int, out_nc: int) -> None:
        super().__init__(
            nn.Conv2d(in_nc, out_nc, 3, stride=2, padding=1),
            nn.LeakyReLU(0.2),
            nn.Conv2d(out_nc, out_nc, 3, padding=1),
            nn.LeakyReLU(0.2),
        )


class SDGANGenerator(nn.Module):
    """SPADE inpainting generator with an identity code; see the module docstring for the I/O convention."""

    def __init__(self, config: GeneratorConfig) -> None:
        super().__init__()
        self.config = config
        c = config
        style_dim = c.style_dim
        self.stem = nn.Sequential(nn.Conv2d(3 + 1 + c.label_nc, c.channels(0), 3, padding=1), nn.LeakyReLU(0.2))
        self.downs = nn.ModuleList(_Down(c.channels(i), c.channels(i + 1)) for i in range(c.n_down))
        bottleneck_nc = c.channels(c.n_down)
        self.identity_to_map = nn.Linear(c.identity_dim, bottleneck_nc)
        self.fuse = nn.Sequential(nn.Conv2d(2 * bottleneck_nc, bottleneck_nc, 1), nn.LeakyReLU(0.2))
        if style_dim > 0:
            self.mapping = nn.Sequential(
                nn.Linear(c.identity_dim, style_dim), nn.LeakyReLU(0.2), nn.Linear(style_dim, style_dim), nn.LeakyReLU(0.2)
            )
        else:
            self.mapping = None
        self.bottleneck = SPADEResBlock(
            in_nc=bottleneck_nc, out_nc=bottleneck_nc, label_nc=c.label_nc,
            hidden_nc=min(c.spade_hidden, bottleneck_nc), style_dim=style_dim,
        )
        # Decoder level i (resolution S / 2**i): the upsampled level i+1 features and the encoder skip are
        # merged by a cheap 1x1 conv, then a SPADE block; the SPADE width is capped by the level width
        # because the full-resolution level dominates the cost.
        levels = list(reversed(range(c.n_down)))
        self.merges = nn.ModuleList(nn.Conv2d(c.channels(i + 1) + c.channels(i), c.channels(i), 1) for i in levels)
        self.ups = nn.ModuleList(
            SPADEResBlock(
                in_nc=c.channels(i), out_nc=c.channels(i), label_nc=c.label_nc,
                hidden_nc=min(c.spade_hidden, c.channels(i)), style_dim=style_dim,
            )
            for i in levels
        )
        self.to_rgb = nn.Conv2d(c.channels(0), 3, 3, padding=1)

    def forward(self, masked: Tensor, semantic: Tensor, identity: Tensor) -> Tensor:
        return self.forward_modulated(masked, semantic, identity, self.modulations(semantic))

    def block_sizes(self) -> list[int]:
        """Side of the feature maps at each SPADE block, in :meth:`modulations`' order (bottleneck first)."""
        c = self.config
        return [c.image_size // 2**c.n_down, *(c.image_size // 2**i for i in reversed(range(c.n_down)))]

    def modulations(self, semantic: Tensor) -> list[Tensor]:
        """Every SPADE's (gamma, beta) maps, 4 per block, bottleneck first: what the generator computes from
        the semantic map alone, about half its multiply-adds. A face whose map repeats from frame to frame
        (the renderer holds it while the landmarks stay within a pixel) needs them once; see
        :meth:`forward_modulated` and the onnxruntime backend's map cache."""
        blocks = [self.bottleneck, *self.ups]
        return [m for block, side in zip(blocks, self.block_sizes()) for m in block.modulations(semantic, (side, side))]

    def forward_modulated(self, masked: Tensor, semantic: Tensor, identity: Tensor, modulations: list[Tensor]) -> Tensor:
        """:meth:`forward` with the map's modulations given (``modulations(semantic)``); the same result."""
        # The hole is where the caller blanked the face: all channels exactly 0 (see module docstring).
        # A caller that blanked to black (-1) is tolerated: such pixels count as hole too and are zeroed,
        # so the network always sees the convention it was trained on.
        is_grey = masked.abs().sum(dim=1, keepdim=True) == 0
        is_black = (masked + 1).abs().sum(dim=1, keepdim=True) == 0
        hole = torch.logical_or(is_grey, is_black).to(masked.dtype)
        x = self.stem(torch.cat([masked * (1 - hole), hole, semantic], dim=1))
        skips = [x]
        for down in self.downs:
            x = down(x)
            skips.append(x)
        id_map = self.identity_to_map(identity)[:, :, None, None] + torch.zeros_like(x[:, :1])
        x = self.fuse(torch.cat([x, id_map], dim=1))
        style = self.mapping(identity) if self.mapping is not None else None
        per_block = [tuple(modulations[i : i + 4]) for i in range(0, len(modulations), 4)]
        x = self.bottleneck.forward_modulated(x, per_block[0], style)
        for merge, block, skip, mods in zip(self.merges, self.ups, reversed(skips[:-1]), per_block[1:]):
            x = F.interpolate(x, scale_factor=2.0, mode="nearest")
            x = block.forward_modulated(merge(torch.cat([x, skip], dim=1)), mods, style)
        return torch.tanh(self.to_rgb(F.leaky_relu(x, 0.2)))


def build_generator(config: GeneratorConfig | None = None) -> SDGANGenerator:
    """The one place the generator is built, for training and inference alike."""
    return SDGANGenerator(config or GeneratorConfig())
