"""SDGAN networks shared by inference and ``train/`` (never copied): generator, hybrid discriminator,
identity encoder, identity codes and the weights bundle.

The names below are loaded on first use: importing torch costs about a second, and the command line (which
reads :class:`GeneratorConfig`'s defaults for ``train --help``) and the cover methods need none of it.
"""

from __future__ import annotations

import importlib
from typing import Any

_WHERE = {
    "DiscriminatorConfig": "discriminator",
    "GeneratorConfig": "config",
    "HybridDiscriminator": "discriminator",
    "IdentityEncoder": "identity",
    "SDGANGenerator": "generator",
    "build_generator": "generator",
    "identity_code": "identity",
    "identity_codes": "identity",
    "load_generator_bundle": "bundle",
    "save_generator_bundle": "bundle",
    "starter_weights_path": "bundle",
}

__all__ = sorted(_WHERE)


def __getattr__(name: str) -> Any:
    if name not in _WHERE:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f".{_WHERE[name]}", __name__), name)
