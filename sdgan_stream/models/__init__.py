"""SDGAN networks shared by inference and ``train/`` (never copied): generator, hybrid discriminator,
identity encoder, identity codes and the weights bundle."""

from .bundle import load_generator_bundle, save_generator_bundle, starter_weights_path
from .discriminator import DiscriminatorConfig, HybridDiscriminator
from .generator import GeneratorConfig, SDGANGenerator, build_generator
from .identity import IdentityEncoder, identity_code, identity_codes

__all__ = [
    "DiscriminatorConfig",
    "GeneratorConfig",
    "HybridDiscriminator",
    "IdentityEncoder",
    "SDGANGenerator",
    "build_generator",
    "identity_code",
    "identity_codes",
    "load_generator_bundle",
    "save_generator_bundle",
    "starter_weights_path",
]
