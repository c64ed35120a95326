"""Build and cache TensorRT engines of the SDGAN generator (FP16 by default, dynamic batch 1..N).

Building and running are separate (as in NVIDIA's samples): :func:`build_engine` produces a serialized
engine file in the cache, keyed by the weights' hash, the generator's shapes, the batch range, the
precision, the TensorRT version and the GPU (compute capability and name), because engines are not
portable across GPUs or TensorRT versions. The backend (``sdgan_stream.backends.tensorrt``) only
deserializes and runs it.

Two builders, tried in this order:

* ``torch-tensorrt``: ``torch.export`` with a dynamic batch dimension, then
  ``torch_tensorrt.dynamo.convert_exported_program_to_serialized_trt_engine`` (raw engine bytes);
* ``onnx-parser``: the cached ONNX export parsed by TensorRT's own ``OnnxParser`` (needs only the
  ``tensorrt`` Python package), used when Torch-TensorRT is missing or fails.

TensorRT is an optional dependency: nothing here imports it at module level.
"""

from __future__ import annotations

import inspect
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .cache import ArtifactCache, ArtifactKey, weights_digest

log = logging.getLogger(__name__)

__all__ = [
    "EngineInfo",
    "build_engine",
    "engine_key",
    "gpu_signature",
    "tensorrt_unavailable_reason",
    "tensorrt_version",
]

PRECISIONS = ("fp16", "fp32")


@dataclass(frozen=True)
class EngineInfo:
    path: Path
    key: ArtifactKey
    from_cache: bool
    seconds: float  # build time (0 when taken from the cache)
    builder: str  # "torch-tensorrt" | "onnx-parser" | "cache"


def tensorrt_unavailable_reason(device_index: int | None = None) -> str | None:
    """Why a TensorRT engine cannot be built or run here (all reasons, one line), or None if it can."""
    reasons = []
    try:
        import torch
    except ImportError as error:  # pragma: no cover - torch is a hard dependency
        return f"torch cannot be imported ({error})"
    if not torch.cuda.is_available():
        build = "a CPU-only build" if torch.version.cuda is None else f"built for CUDA {torch.version.cuda}"
        reasons.append(f"no CUDA GPU is visible to torch {torch.__version__} ({build})")
    try:
        import tensorrt  # noqa: F401
    except Exception as error:  # ImportError, or OSError when libnvinfer is missing
        reasons.append(f"the TensorRT Python package cannot be imported ({type(error).__name__}: {error})")
    if reasons:
        return "; ".join(reasons)
    if device_index is not None and device_index >= torch.cuda.device_count():
        return f"CUDA device {device_index} does not exist ({torch.cuda.device_count()} visible)"
    return None


def torch_tensorrt_unavailable_reason() -> str | None:
    try:
        import torch_tensorrt  # noqa: F401
    except Exception as error:
        return f"{type(error).__name__}: {error}"
    return None


def tensorrt_version() -> str:
    import tensorrt

    return str(tensorrt.__version__)


def gpu_signature(device_index: int = 0) -> str:
    """'sm_90 NVIDIA H100 80GB HBM3': the part of the GPU an engine is tied to."""
    import torch

    major, minor = torch.cuda.get_device_capability(device_index)
    return f"sm_{major}{minor} {torch.cuda.get_device_name(device_index)}"


def engine_key(
    generator: Any,
    config: Any,
    *,
    max_batch: int,
    opt_batch: int,
    precision: str,
    device_index: int = 0,
    digest: str | None = None,
) -> ArtifactKey:
    """The cache key of an engine; needs TensorRT and a GPU (for their version and signature)."""
    return ArtifactKey(
        kind="tensorrt",
        weights=digest or weights_digest(generator),
        shapes={"generator": config.to_dict(), "batch": [1, opt_batch, max_batch]},
        precision=precision,
        runtime=f"tensorrt-{tensorrt_version()}",
        device=gpu_signature(device_index),
    )


def default_opt_batch(max_batch: int) -> int:
    """The batch TensorRT tunes kernels for: 4 faces is the common case, never above the maximum."""
    return max(1, min(4, max_batch))


def build_engine(
    generator: Any,
    config: Any,
    *,
    max_batch: int = 16,
    opt_batch: int | None = None,
    precision: str = "fp16",
    device_index: int = 0,
    cache: ArtifactCache | None = None,
    force: bool = False,
    digest: str | None = None,
) -> EngineInfo:
    """Return the cached engine for these weights and shapes, building it first if needed (or ``force``).

    Raises ``RuntimeError`` with the reason when TensorRT or a GPU is missing or every builder fails.
    """
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    if max_batch < 1:
        raise ValueError(f"max_batch must be >= 1, got {max_batch}")
    reason = tensorrt_unavailable_reason(device_index)
    if reason is not None:
        raise RuntimeError(f"cannot build a TensorRT engine on this machine: {reason}")
    opt_batch = opt_batch or default_opt_batch(max_batch)
    if not 1 <= opt_batch <= max_batch:
        raise ValueError(f"opt_batch must be in 1..{max_batch}, got {opt_batch}")
    cache = cache or ArtifactCache()
    digest = digest or weights_digest(generator)
    key = engine_key(generator, config, max_batch=max_batch, opt_batch=opt_batch, precision=precision,
                     device_index=device_index, digest=digest)
    found = None if force else cache.lookup(key, ".engine")
    if found is not None:
        log.info("TensorRT engine from cache: %s", found)
        return EngineInfo(found, key, True, 0.0, "cache")

    errors = []
    started = time.perf_counter()
    for builder in ("torch-tensorrt", "onnx-parser"):
        try:
            if builder == "torch-tensorrt":
                why = torch_tensorrt_unavailable_reason()
                if why is not None:
                    errors.append(f"torch-tensorrt: not importable ({why})")
                    continue
                engine = _build_with_torch_tensorrt(generator, config, max_batch, opt_batch, precision, device_index)
            else:
                engine = _build_with_onnx_parser(generator, config, max_batch, opt_batch, precision, cache, digest)
        except Exception as error:  # each builder's failure is reported; the next one is tried
            log.warning("TensorRT builder %s failed: %s", builder, error)
            errors.append(f"{builder}: {type(error).__name__}: {error}")
            continue
        seconds = time.perf_counter() - started
        path = cache.store(key, ".engine", lambda tmp, data=engine: tmp.write_bytes(data),
                           info={"builder": builder, "build_seconds": round(seconds, 1)})
        log.info("built TensorRT engine with %s in %.0f s: %s", builder, seconds, path)
        return EngineInfo(path, key, False, seconds, builder)
    raise RuntimeError("every TensorRT builder failed: " + " | ".join(errors))


def _call_with_supported(fn: Any, *args: Any, **kwargs: Any) -> Any:
    """Call ``fn`` with only the keyword arguments its signature accepts (the API moved across releases)."""
    try:
        params = inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return fn(*args, **kwargs)
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return fn(*args, **kwargs)
    return fn(*args, **{k: v for k, v in kwargs.items() if k in params})


def _build_with_torch_tensorrt(
    generator: Any, config: Any, max_batch: int, opt_batch: int, precision: str, device_index: int
) -> bytes:
    import copy

    import torch
    import torch_tensorrt

    from .onnx_export import INPUT_NAMES, _example_inputs

    device = torch.device("cuda", device_index)
    dtype = torch.float16 if precision == "fp16" else torch.float32
    # FP16 by casting the module and inputs: this is FP16 under both the older "enabled_precisions"
    # and the newer explicit-typing behaviour of Torch-TensorRT.
    module = copy.deepcopy(generator).to(device, dtype).eval()
    example = tuple(t.to(device, dtype) for t in _example_inputs(config, batch=max(2, opt_batch)))
    export_kwargs: dict[str, Any] = {}
    if max_batch > 1:
        batch = torch.export.Dim("batch", min=1, max=max_batch)
        export_kwargs["dynamic_shapes"] = {name: {0: batch} for name in INPUT_NAMES}
    else:
        example = tuple(t[:1] for t in example)
    with torch.no_grad():
        exported = torch.export.export(module, example, strict=False, **export_kwargs)
    inputs = [
        torch_tensorrt.Input(
            min_shape=(1, *t.shape[1:]), opt_shape=(opt_batch, *t.shape[1:]), max_shape=(max_batch, *t.shape[1:]),
            dtype=dtype,
        )
        for t in example
    ]
    convert = torch_tensorrt.dynamo.convert_exported_program_to_serialized_trt_engine
    params = inspect.signature(convert).parameters
    input_kw = "arg_inputs" if "arg_inputs" in params else "inputs"
    engine = _call_with_supported(
        convert, exported, **{input_kw: inputs}, enabled_precisions={dtype},
        device=torch_tensorrt.Device(gpu_id=device_index),
    )
    return bytes(engine)


def _build_with_onnx_parser(
    generator: Any, config: Any, max_batch: int, opt_batch: int, precision: str, cache: ArtifactCache, digest: str
) -> bytes:
    import tensorrt as trt

    from .onnx_export import cached_onnx_model

    onnx_path = cached_onnx_model(generator, config, cache=cache, digest=digest)
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    flags = 0
    if int(tensorrt_version().split(".")[0]) < 10:  # explicit batch is the only mode from TensorRT 10 on
        flags = 1 << int(trt.NetworkDefinitionCreationFlag.EXPLICIT_BATCH)
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse(Path(onnx_path).read_bytes()):
        problems = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise RuntimeError(f"TensorRT's ONNX parser rejected {onnx_path}: {problems}")
    builder_config = builder.create_builder_config()
    if precision == "fp16":
        if not builder.platform_has_fast_fp16:
            raise RuntimeError("this GPU has no fast FP16; build with --precision fp32")
        builder_config.set_flag(trt.BuilderFlag.FP16)
    profile = builder.create_optimization_profile()
    for i in range(network.num_inputs):
        tensor = network.get_input(i)
        rest = tuple(tensor.shape[1:])
        profile.set_shape(tensor.name, (1, *rest), (opt_batch, *rest), (max_batch, *rest))
    builder_config.add_optimization_profile(profile)
    serialized = builder.build_serialized_network(network, builder_config)
    if serialized is None:
        raise RuntimeError("TensorRT's builder returned no engine (see the TensorRT log above)")
    return bytes(serialized)
