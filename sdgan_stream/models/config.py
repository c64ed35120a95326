"""The generator's shape, without torch: the command line reads its defaults, and importing torch costs a
second at every start (blur jobs need no torch at all)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

__all__ = ["GeneratorConfig"]


@dataclass(frozen=True)
class GeneratorConfig:
    """Shape of the generator. ``image_size`` must be a multiple of ``2 ** n_down``."""

    image_size: int = 128
    label_nc: int = 11
    identity_dim: int = 64
    ngf: int = 16  # channels at full resolution; doubles per level up to ngf * max_mult
    spade_hidden: int = 32  # hidden channels of the SPADE map MLP (capped at 2 * level width)
    n_down: int = 4  # bottleneck at image_size / 2 ** n_down
    max_mult: int = 8
    style_dim: int = 128  # width of the identity style vector; 0 disables modulation (bottleneck only)

    def __post_init__(self) -> None:
        if self.image_size % (2**self.n_down):
            raise ValueError(f"image_size {self.image_size} is not a multiple of 2**n_down = {2**self.n_down}")
        if min(self.image_size, self.label_nc, self.identity_dim, self.ngf, self.spade_hidden, self.n_down) <= 0:
            raise ValueError(f"generator config values must be positive: {self}")

    def channels(self, level: int) -> int:
        return self.ngf * min(2**level, self.max_mult)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> GeneratorConfig:
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = set(data) - names
        if unknown:
            raise ValueError(f"unknown generator config keys: {sorted(unknown)}")
        return cls(**data)
