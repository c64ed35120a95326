"""Generator backends: one Protocol, four implementations, and ``auto`` selection that says why.

================  ===================================================================================
``eager``         torch as written; CPU or CUDA; channels_last; FP16 autocast on CUDA. The reference.
``compile``       ``torch.compile`` (Inductor, frozen weights), one static graph per batch bucket; CUDA
                  graphs on GPU. Compiles 60-150 s per bucket on a 2-core CPU (5-20 s with a warm cache).
``onnxruntime``   ONNX export (cached by weights hash) run by ONNX Runtime; CPU (a batch's faces split
                  over the cores), or the CUDA provider with IOBinding.
``tensorrt``      Torch-TensorRT / TensorRT FP16 engine, dynamic batch 1..N, cached in ``engines/cache``.
================  ===================================================================================

``auto`` takes the first usable backend in :data:`AUTO_ORDER` for the device and logs one line naming
its choice and why each backend before it was skipped. Asking for a backend that is not usable raises
:class:`~sdgan_stream.errors.BackendUnavailableError` listing the ones that are.

>>> from sdgan_stream.backends import available_backends
>>> available_backends("cpu")["eager"] is None
True
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

import numpy as np

from ..errors import BackendUnavailableError
from .base import batch_buckets, bucket_for, physical_cores, resolve_device

if TYPE_CHECKING:
    import torch

    from ..models.generator import GeneratorConfig, SDGANGenerator

log = logging.getLogger(__name__)

__all__ = [
    "AUTO_ORDER",
    "BACKEND_NAMES",
    "GeneratorBackend",
    "available_backends",
    "batch_buckets",
    "bucket_for",
    "create_backend",
    "physical_cores",
    "resolve_device",
    "select_backend",
]

BACKEND_NAMES: tuple[str, ...] = ("eager", "compile", "onnxruntime", "tensorrt")

# Best first. CPU order measured with benchmarks/bench_backends.py (results/backends*.json, 2-core EPYC):
# ONNX Runtime with the faces of a batch split over the cores ran the starter generator 1.5-2.2x faster
# than the faster of eager torch at 1 or 2 threads, at batch 1, 4 and 16. torch.compile came close in
# steady state but is left out of CPU auto: it compiles 60-150 s per batch bucket on a cold cache.
# GPU order is the expected one (TensorRT FP16 > Inductor + CUDA graphs FP16 > eager FP16 > ORT FP32);
# benchmarks/gpu_check.py measures it on the machine at hand.
AUTO_ORDER: dict[str, tuple[str, ...]] = {
    "cpu": ("onnxruntime", "eager"),
    "cuda": ("tensorrt", "compile", "eager", "onnxruntime"),
}
_NOT_IN_AUTO = {
    ("cpu", "compile"): "not chosen by auto on CPU: compiles about a minute per batch bucket at start",
    ("cpu", "tensorrt"): "TensorRT runs on NVIDIA GPUs only",
}


@runtime_checkable
class GeneratorBackend(Protocol):
    """What the renderer calls: one batched generator call per frame.

    ``generate``: float32 NCHW numpy in ([-1, 1]), float32 NCHW numpy out; any batch size (split into
    chunks of ``max_batch``, padded to a bucket where the backend needs static shapes).
    ``generate_tensors``: the same on torch tensors; on CUDA the data stays on the GPU.
    """

    name: str  # 'eager' | 'compile' | 'onnxruntime' | 'tensorrt'
    device: str  # 'cpu' | 'cuda'
    precision: str  # 'fp32' | 'fp16'
    max_batch: int

    def generate(self, masked: np.ndarray, semantic: np.ndarray, identity: np.ndarray) -> np.ndarray: ...

    def generate_tensors(self, masked: torch.Tensor, semantic: torch.Tensor, identity: torch.Tensor) -> torch.Tensor: ...


def _reason(name: str, device: str) -> str | None:
    """Why ``name`` cannot run on ``device`` (resolved), or None."""
    try:
        if name == "eager":
            from .eager import unavailable_reason
        elif name == "compile":
            from .compiled import unavailable_reason
        elif name == "onnxruntime":
            from .onnx_runtime import unavailable_reason
        elif name == "tensorrt":
            from .tensorrt import unavailable_reason
        else:
            return f"unknown backend {name!r}"
        return unavailable_reason(device)
    except Exception as error:  # a broken optional install must read as "unavailable", with its reason
        return f"{type(error).__name__}: {error}"


def available_backends(device: str = "auto") -> dict[str, str | None]:
    """Every backend name -> None when usable on ``device``, else the reason it is not."""
    resolved = resolve_device(device)
    return {name: _reason(name, resolved) for name in BACKEND_NAMES}


def select_backend(device: str = "auto") -> tuple[str, dict[str, str]]:
    """The backend ``auto`` picks for ``device`` and, for each one it passed over, why."""
    resolved = resolve_device(device)
    kind = resolved.split(":")[0]
    reasons = available_backends(resolved)
    skipped: dict[str, str] = {}
    chosen = None
    for name in AUTO_ORDER[kind]:
        if reasons[name] is None and chosen is None:
            chosen = name
        elif chosen is None:
            skipped[name] = reasons[name] or ""
    for name in BACKEND_NAMES:
        if name not in AUTO_ORDER[kind]:
            skipped[name] = _NOT_IN_AUTO.get((kind, name)) or reasons[name] or "not in the auto order"
    if chosen is None:  # eager is always last in the CPU order and always usable: only a broken GPU gets here
        raise BackendUnavailableError(f"no generator backend can run on {resolved}: {skipped}")
    return chosen, skipped


def _factory(name: str) -> Callable[..., GeneratorBackend]:
    if name == "eager":
        from .eager import EagerBackend

        return EagerBackend
    if name == "compile":
        from .compiled import CompiledBackend

        return CompiledBackend
    if name == "onnxruntime":
        from .onnx_runtime import OnnxRuntimeBackend

        return OnnxRuntimeBackend
    from .tensorrt import TensorRTBackend

    return TensorRTBackend


def _build(name: str, generator: SDGANGenerator, config: GeneratorConfig, device: str, max_batch: int,
           weights_digest: str | None, options: dict[str, Any], *, only_accepted: bool = False) -> GeneratorBackend:
    factory = _factory(name)
    kwargs = dict(options)
    if name in ("onnxruntime", "tensorrt") and weights_digest:
        kwargs.setdefault("weights_digest", weights_digest)
    if only_accepted:  # auto: an option meant for one backend (cache=, threads=) must not break another
        accepted = inspect.signature(factory).parameters
        dropped = sorted(set(kwargs) - set(accepted))
        if dropped:
            log.debug("backend %s takes no option(s) %s; ignored", name, ", ".join(dropped))
        kwargs = {k: v for k, v in kwargs.items() if k in accepted}
    return factory(generator, config, device=device, max_batch=max_batch, **kwargs)


def create_backend(
    name: str,
    generator: SDGANGenerator,
    config: GeneratorConfig,
    *,
    device: str = "auto",
    max_batch: int = 16,
    weights_id: str = "",
    **options: Any,
) -> GeneratorBackend:
    """Build the generator backend ``name`` ('auto' or one of :data:`BACKEND_NAMES`) on ``device``.

    ``weights_id``: the bundle's SHA-256 when known (used as the cache key of exported artifacts; the
    tensors are hashed when it is empty). Extra ``options`` go to the backend's constructor
    (``precision='fp32'`` on CUDA, ``threads=`` for onnxruntime, ``warmup=`` for compile...).
    Raises :class:`BackendUnavailableError` (naming the usable backends) for an unknown or unusable name.
    """
    if max_batch < 1:
        raise ValueError(f"max_batch must be >= 1, got {max_batch}")
    resolved = resolve_device(device)
    name = (name or "auto").lower()
    digest = weights_id if len(weights_id) == 64 and all(c in "0123456789abcdef" for c in weights_id.lower()) else None
    reasons = available_backends(resolved)
    usable = [n for n, r in reasons.items() if r is None]
    if name != "auto":
        if name not in BACKEND_NAMES:
            raise BackendUnavailableError(
                f"unknown generator backend {name!r}; choose auto or one of {', '.join(BACKEND_NAMES)} "
                f"(usable on {resolved}: {', '.join(usable)})"
            )
        if reasons[name] is not None:
            raise BackendUnavailableError(
                f"generator backend {name!r} is not available on {resolved}: {reasons[name]}. "
                f"Usable here: {', '.join(usable)}"
            )
        backend = _build(name, generator, config, resolved, max_batch, digest, options)
        log.info("generator backend %s on %s (%s), as asked", backend.name, resolved, backend.precision)
        return backend

    chosen, skipped = select_backend(resolved)
    ranked = AUTO_ORDER[resolved.split(":")[0]]
    order = [n for n in ranked[ranked.index(chosen):] if reasons[n] is None]  # the chosen one, then its usable successors
    failures: list[str] = []
    for candidate in order:
        try:
            backend = _build(candidate, generator, config, resolved, max_batch, digest, options, only_accepted=True)
        except (BackendUnavailableError, RuntimeError, OSError) as error:
            # Not silent: the failure is logged as a warning and named in the choice line below.
            log.warning("generator backend %s failed to start on %s: %s; trying the next one", candidate, resolved, error)
            failures.append(f"{candidate}: failed to start ({error})")
            continue
        why = "; ".join([*failures, *(f"{n}: {r}" for n, r in skipped.items())])
        log.info("generator backend auto -> %s on %s (%s); skipped %s", backend.name, resolved, backend.precision,
                 why or "nothing")
        return backend
    raise BackendUnavailableError(f"no generator backend could start on {resolved}: {'; '.join(failures)}")
