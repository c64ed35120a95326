"""Export the SDGAN generator to ONNX (opset 17, dynamic batch axis) and cache the file by weights hash.

The exported graph takes ``masked`` (B, 3, S, S), ``semantic`` (B, label_nc, S, S) and ``identity``
(B, identity_dim), all float32, and returns ``generated`` (B, 3, S, S). Exporting takes a few seconds
on two cores; the cache makes every later start load the file instead.

The generator can also be exported in two parts (``part``): ``map`` takes ``semantic`` and returns the
SPADE modulations ``modulation_00``... (what the map alone decides, about half the work), ``modulated``
takes the three inputs plus those and returns ``generated``. Run one after the other they compute what
the whole graph does; a caller whose maps repeat runs ``map`` once per map.

Uses the TorchScript exporter (``dynamo=False``), which needs only the ``onnx`` package; the dynamo
exporter would also need ``onnxscript`` and lands on opset 18.
"""

from __future__ import annotations

import logging
import time
import warnings
from pathlib import Path
from typing import Any

from .cache import ArtifactCache, ArtifactKey, weights_digest

log = logging.getLogger(__name__)

__all__ = ["INPUT_NAMES", "ONNX_OPSET", "OUTPUT_NAME", "PARTS", "cached_onnx_model", "export_onnx", "onnx_key", "part_names"]

ONNX_OPSET = 17
INPUT_NAMES = ("masked", "semantic", "identity")
OUTPUT_NAME = "generated"
PARTS = ("generator", "map", "modulated")


def _modulation_names(config: Any) -> tuple[str, ...]:
    return tuple(f"modulation_{i:02d}" for i in range(4 * (config.n_down + 1)))  # 4 per SPADE block


def part_names(config: Any, part: str = "generator") -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(input names, output names) of an exported ``part`` of the generator."""
    if part == "generator":
        return INPUT_NAMES, (OUTPUT_NAME,)
    if part == "map":
        return ("semantic",), _modulation_names(config)
    if part == "modulated":
        return (*INPUT_NAMES, *_modulation_names(config)), (OUTPUT_NAME,)
    raise ValueError(f"part must be one of {', '.join(PARTS)}, got {part!r}")


def _part_module(generator: Any, part: str) -> Any:
    """``generator`` as a module whose forward is ``part`` (positional tensors in, a tensor or tuple out)."""
    import torch

    class MapPart(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.generator = generator

        def forward(self, semantic: Any) -> tuple[Any, ...]:
            return tuple(self.generator.modulations(semantic))

    class ModulatedPart(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.generator = generator

        def forward(self, masked: Any, semantic: Any, identity: Any, *modulations: Any) -> Any:
            return self.generator.forward_modulated(masked, semantic, identity, list(modulations))

    return {"generator": lambda: generator, "map": MapPart, "modulated": ModulatedPart}[part]()


def _example_inputs(config: Any, batch: int = 2) -> tuple[Any, Any, Any]:
    import torch

    s = config.image_size
    masked = torch.rand(batch, 3, s, s) * 2 - 1
    masked[:, :, s // 4 : 3 * s // 4, s // 4 : 3 * s // 4] = 0  # a hole, so the traced graph sees one
    labels = torch.randint(0, config.label_nc, (batch, s, s))
    semantic = torch.nn.functional.one_hot(labels, config.label_nc).permute(0, 3, 1, 2).float()
    identity = torch.nn.functional.normalize(torch.randn(batch, config.identity_dim), dim=1)
    return masked, semantic, identity


def export_onnx(generator: Any, config: Any, path: str | Path, *, opset: int = ONNX_OPSET, part: str = "generator") -> Path:
    """Write ``generator`` (float32, on CPU, eval), or one ``part`` of it, to ``path`` as ONNX with a dynamic
    batch axis."""
    import copy

    import torch

    if generator.training:
        raise ValueError("export an eval-mode generator (call .eval() first)")
    inputs, outputs = part_names(config, part)
    # A CPU float32 copy: the caller's module may live on a GPU or in channels_last; export needs neither.
    module = copy.deepcopy(generator).to("cpu", torch.float32).to(memory_format=torch.contiguous_format).eval()
    example = _example_inputs(config)
    if part == "map":
        example = (example[1],)
    elif part == "modulated":
        with torch.no_grad():
            example = (*example, *module.modulations(example[1]))
    axes = {name: {0: "batch"} for name in (*inputs, *outputs)}
    started = time.perf_counter()
    with warnings.catch_warnings():
        # The legacy exporter warns that it is legacy, and that InstanceNorm exports with train=True
        # (which is what InstanceNorm without running stats computes in eval mode too).
        warnings.simplefilter("ignore")
        with torch.no_grad():
            torch.onnx.export(
                _part_module(module, part),
                example,
                str(path),
                dynamo=False,
                opset_version=opset,
                input_names=list(inputs),
                output_names=list(outputs),
                dynamic_axes=axes,
                do_constant_folding=True,
            )
    log.debug("exported generator (%s) to ONNX opset %d in %.1f s", part, opset, time.perf_counter() - started)
    return Path(path)


def onnx_key(generator: Any, config: Any, *, opset: int = ONNX_OPSET, digest: str | None = None,
             part: str = "generator") -> ArtifactKey:
    """Cache key of the exported model: weights, generator config, part, opset and exporter (torch) version."""
    import onnx
    import torch

    shapes: dict[str, Any] = {"generator": config.to_dict(), "batch": "dynamic"}
    if part != "generator":  # the whole graph keeps the key it always had
        shapes["part"] = part
    return ArtifactKey(
        kind="onnx",
        weights=digest or weights_digest(generator),
        shapes=shapes,
        precision="fp32",
        runtime=f"torch-{torch.__version__}/onnx-{onnx.__version__}/opset-{opset}",
    )


def cached_onnx_model(
    generator: Any,
    config: Any,
    *,
    cache: ArtifactCache | None = None,
    opset: int = ONNX_OPSET,
    digest: str | None = None,
    part: str = "generator",
) -> Path:
    """Path of the ONNX file for these weights (or one ``part`` of them), exporting (and caching) it on first use."""
    cache = cache or ArtifactCache()
    key = onnx_key(generator, config, opset=opset, digest=digest, part=part)
    found = cache.lookup(key, ".onnx")
    if found is not None:
        log.debug("ONNX model from cache: %s", found)
        return found
    started = time.perf_counter()
    path = cache.store(key, ".onnx", lambda tmp: _export_and_check(generator, config, tmp, opset, part))
    log.info("exported the generator (%s) to ONNX in %.1f s (cached as %s)", part, time.perf_counter() - started, path)
    return path


def _export_and_check(generator: Any, config: Any, path: Path, opset: int, part: str) -> None:
    import onnx

    export_onnx(generator, config, path, opset=opset, part=part)
    onnx.checker.check_model(str(path))  # a broken export must not land in the cache
