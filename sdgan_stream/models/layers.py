"""Building blocks shared by the generator: SPADE normalization and the SPADE residual block.

After NVlabs/SPADE (Park et al., 2019): a parameter-free instance norm whose scale and shift are
predicted per pixel from the semantic map. Here each block can also take a per-sample style vector
(from the identity code) that scales and shifts channels after the spatial modulation, so the
identity acts everywhere in the decoder and not only at the bottleneck.

Everything here is ONNX- and ``torch.compile``-friendly: no control flow on tensor values, no
in-place ops on inputs, shapes only from ``Tensor.shape``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["SPADE", "SPADEResBlock", "resize_map"]


def resize_map(semantic: Tensor, size: tuple[int, int]) -> Tensor:
    """Nearest-neighbour resize of a one-hot map (keeps it one-hot)."""
    return F.interpolate(semantic, size=size, mode="nearest")


class SPADE(nn.Module):
    """``norm(x) * (1 + gamma(map)) + beta(map)``, then ``* (1 + g_style) + b_style`` per channel."""

    def __init__(self, *, norm_nc: int, label_nc: int, hidden_nc: int, style_dim: int = 0) -> None:
        super().__init__()
        self.norm = nn.InstanceNorm2d(norm_nc, affine=False)
        self.shared = nn.Sequential(nn.Conv2d(label_nc, hidden_nc, 3, padding=1), nn.ReLU())
        self.gamma = nn.Conv2d(hidden_nc, norm_nc, 3, padding=1)
        self.beta = nn.Conv2d(hidden_nc, norm_nc, 3, padding=1)
        self.style = nn.Linear(style_dim, 2 * norm_nc) if style_dim > 0 else None
        if self.style is not None:
            # Start as an identity modulation so early training is plain SPADE.
            nn.init.zeros_(self.style.weight)
            nn.init.zeros_(self.style.bias)

    def forward(self, x: Tensor, semantic: Tensor, style: Tensor | None = None) -> Tensor:
        return self.modulate(x, *self.modulation(semantic, (x.shape[2], x.shape[3])), style)

    def modulation(self, semantic: Tensor, size: tuple[int, int]) -> tuple[Tensor, Tensor]:
        """(gamma, beta) at ``size``: they depend on the map alone (about half the generator's work), so a
        caller whose map repeats can compute them once (see :meth:`SDGANGenerator.modulations`)."""
        hidden = self.shared(resize_map(semantic, size))
        return self.gamma(hidden), self.beta(hidden)

    def modulate(self, x: Tensor, gamma: Tensor, beta: Tensor, style: Tensor | None = None) -> Tensor:
        out = self.norm(x) * (1 + gamma) + beta
        if self.style is not None and style is not None:
            gain, bias = self.style(style).chunk(2, dim=1)
            out = out * (1 + gain[:, :, None, None]) + bias[:, :, None, None]
        return out


class SPADEResBlock(nn.Module):
    """Residual block with SPADE before each conv and a learned shortcut when widths differ."""

    def __init__(self, *, in_nc: int, out_nc: int, label_nc: int, hidden_nc: int, style_dim: int = 0) -> None:
        super().__init__()
        mid_nc = min(in_nc, out_nc)
        self.norm_0 = SPADE(norm_nc=in_nc, label_nc=label_nc, hidden_nc=hidden_nc, style_dim=style_dim)
        self.conv_0 = nn.Conv2d(in_nc, mid_nc, 3, padding=1)
        self.norm_1 = SPADE(norm_nc=mid_nc, label_nc=label_nc, hidden_nc=hidden_nc, style_dim=style_dim)
        self.conv_1 = nn.Conv2d(mid_nc, out_nc, 3, padding=1)
        self.learned_shortcut = in_nc != out_nc
        if self.learned_shortcut:
            # A 1x1 conv without its own SPADE: the cheap variant, most of the cost sits at full resolution.
            self.conv_s = nn.Conv2d(in_nc, out_nc, 1, bias=False)

    def forward(self, x: Tensor, semantic: Tensor, style: Tensor | None = None) -> Tensor:
        return self.forward_modulated(x, self.modulations(semantic, (x.shape[2], x.shape[3])), style)

    def modulations(self, semantic: Tensor, size: tuple[int, int]) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """Both SPADEs' (gamma, beta) at ``size``, from the map alone."""
        return (*self.norm_0.modulation(semantic, size), *self.norm_1.modulation(semantic, size))

    def forward_modulated(self, x: Tensor, modulations: tuple[Tensor, ...], style: Tensor | None = None) -> Tensor:
        gamma_0, beta_0, gamma_1, beta_1 = modulations
        shortcut = self.conv_s(x) if self.learned_shortcut else x
        dx = self.conv_0(F.leaky_relu(self.norm_0.modulate(x, gamma_0, beta_0, style), 0.2))
        dx = self.conv_1(F.leaky_relu(self.norm_1.modulate(dx, gamma_1, beta_1, style), 0.2))
        return shortcut + dx


def count_macs(module: nn.Module, *inputs: torch.Tensor) -> int:
    """Multiply-accumulates of convs and linears in one forward pass (FLOP ~ 2 x MACs)."""
    total = 0

    def conv_hook(mod: nn.Module, _inp: tuple, out: Tensor) -> None:
        nonlocal total
        if isinstance(mod, nn.Conv2d):
            k = mod.kernel_size[0] * mod.kernel_size[1] * (mod.in_channels // mod.groups)
            total += out.numel() * k
        elif isinstance(mod, nn.Linear):
            total += out.numel() * mod.in_features

    handles = [m.register_forward_hook(conv_hook) for m in module.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    try:
        with torch.no_grad():
            module(*inputs)
    finally:
        for h in handles:
            h.remove()
    return total
