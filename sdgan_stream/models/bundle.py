"""The inference bundle: generator weights in safetensors with their configuration.

A bundle is a directory holding ``generator.safetensors`` and ``config.json``. The safetensors file also
carries the configuration in its header metadata, so the file alone is a complete bundle and either
the directory or the file may be given as ``path``. Weights may be stored as float16 (half the size);
they are loaded as float32.

``config.json`` looks like::

    {"format": "sdgan-stream-generator", "format_version": 1,
     "generator": {"image_size": 128, "label_nc": 11, ...},
     "metadata": {"steps": 3000, "trained_on": "...", "command": "..."}}
"""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path
from typing import Any

import torch

from ..errors import WeightsError
from .generator import GeneratorConfig, SDGANGenerator, build_generator

log = logging.getLogger(__name__)

__all__ = [
    "BUNDLE_CONFIG",
    "BUNDLE_WEIGHTS",
    "load_generator_bundle",
    "read_bundle_config",
    "save_generator_bundle",
    "starter_weights_path",
]

BUNDLE_WEIGHTS = "generator.safetensors"
BUNDLE_CONFIG = "config.json"
_FORMAT = "sdgan-stream-generator"
_FORMAT_VERSION = 1
_META_KEY = "sdgan_stream_config"


def starter_weights_path() -> Path:
    """The starter bundle shipped inside the package (``sdgan_stream/weights/starter``)."""
    return Path(__file__).resolve().parent.parent / "weights" / "starter"


def _weights_file(path: Path) -> Path:
    return path / BUNDLE_WEIGHTS if path.is_dir() else path


def save_generator_bundle(
    path: str | Path,
    generator: SDGANGenerator,
    config: GeneratorConfig,
    metadata: dict[str, Any] | None = None,
    *,
    half: bool = True,
) -> Path:
    """Write ``path/generator.safetensors`` and ``path/config.json``; returns the directory.

    ``half`` stores the weights as float16 (the generator is trained in float32; the difference in
    output is far below one grey level).
    """
    from safetensors.torch import save_file

    out = Path(path)
    if out.suffix == ".safetensors":
        raise ValueError(f"a bundle is a directory; got a file name {out} (give its directory)")
    out.mkdir(parents=True, exist_ok=True)
    dtype = torch.float16 if half else torch.float32
    tensors = {k: v.detach().to("cpu", dtype).contiguous() for k, v in generator.state_dict().items()}
    document = {
        "format": _FORMAT,
        "format_version": _FORMAT_VERSION,
        "generator": config.to_dict(),
        "metadata": dict(metadata or {}),
    }
    text = json.dumps(document, indent=2, sort_keys=True, default=str)
    save_file(tensors, str(out / BUNDLE_WEIGHTS), metadata={_META_KEY: text})
    (out / BUNDLE_WEIGHTS).chmod(0o644)  # safetensors creates 0600 files; a shipped bundle must be readable
    (out / BUNDLE_CONFIG).write_text(text + "\n")
    log.info("saved generator bundle to %s", out)
    return out


def read_bundle_config(path: str | Path) -> dict[str, Any]:
    """The bundle's JSON document (from ``config.json`` next to the weights, else the file header)."""
    path = Path(path)
    weights = _weights_file(path)
    sidecar = weights.parent / BUNDLE_CONFIG
    try:
        if sidecar.is_file():
            document = json.loads(sidecar.read_text())
        else:
            from safetensors import safe_open

            with safe_open(str(weights), framework="pt") as f:
                meta = f.metadata() or {}
            if _META_KEY not in meta:
                raise WeightsError(f"{weights} has no sdgan-stream configuration (no {BUNDLE_CONFIG} beside it)")
            document = json.loads(meta[_META_KEY])
    except WeightsError:
        raise
    except (OSError, ValueError, json.JSONDecodeError) as exc:
        raise WeightsError(f"cannot read the generator configuration of {path}: {exc}") from exc
    if not isinstance(document, dict) or document.get("format") != _FORMAT:
        raise WeightsError(f"{path} is not an sdgan-stream generator bundle (format {document.get('format')!r})")
    if int(document.get("format_version", 0)) > _FORMAT_VERSION:
        raise WeightsError(
            f"{path} has bundle format version {document['format_version']}; this sdgan-stream reads up to "
            f"{_FORMAT_VERSION}"
        )
    return document


def load_generator_bundle(
    path: str | Path | None = None, *, device: str | torch.device = "cpu"
) -> tuple[SDGANGenerator, GeneratorConfig, dict[str, Any]]:
    """Load a generator bundle (``None``: the packaged starter weights) in eval mode, float32.

    Raises :class:`~sdgan_stream.errors.WeightsError` with a one-line reason when the bundle is
    missing, unreadable, corrupt, or does not match its configuration.
    """
    import safetensors
    from safetensors.torch import load_file

    safetensors_error = getattr(safetensors, "SafetensorError", ValueError)

    bundle = Path(path) if path is not None else starter_weights_path()
    weights = _weights_file(bundle)
    if not weights.is_file():
        what = "the packaged starter weights" if path is None else "generator weights"
        raise WeightsError(f"{what} not found: {weights}")
    document = read_bundle_config(bundle)
    try:
        config = GeneratorConfig.from_dict(document["generator"])
    except (KeyError, TypeError, ValueError) as exc:
        raise WeightsError(f"invalid generator configuration in {bundle}: {exc}") from exc
    try:
        state = load_file(str(weights), device="cpu")
    except (OSError, safetensors_error, ValueError, RuntimeError) as exc:
        raise WeightsError(f"corrupt generator weights {weights}: {exc}") from exc
    generator = build_generator(config)
    expected = generator.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    if missing or unexpected:
        raise WeightsError(
            f"weights {weights} do not match their configuration: {len(missing)} missing tensors "
            f"({', '.join(missing[:3])}...), {len(unexpected)} unexpected ({', '.join(unexpected[:3])}...)"
        )
    for name, tensor in state.items():
        if tensor.shape != expected[name].shape:
            raise WeightsError(
                f"weights {weights}: tensor {name} has shape {tuple(tensor.shape)}, the configuration needs "
                f"{tuple(expected[name].shape)}"
            )
        if not torch.isfinite(tensor).all():
            raise WeightsError(f"weights {weights}: tensor {name} contains NaN or infinite values")
    generator.load_state_dict({k: v.float() for k, v in state.items()})
    generator.eval().requires_grad_(False).to(device)
    metadata = dict(document.get("metadata") or {})
    # A content hash identifies these exact weights (engine caches key on it).
    metadata["weights_sha256"] = hashlib.sha256(weights.read_bytes()).hexdigest()
    log.info("loaded generator %s (%s)", weights, metadata.get("description", "no description"))
    return generator, config, metadata
