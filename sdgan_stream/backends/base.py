"""What every generator backend shares: input checks, batch buckets, chunking, host<->device staging.

Backends receive whole frames' worth of faces at once. Batches larger than ``max_batch`` are split;
backends that need static shapes (CUDA graphs, cuDNN autotuning) pad each chunk up to a *bucket*
(1, 2, 4, 8, ..., max_batch) so only a handful of shapes is ever compiled or tuned.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    import torch

    from ..models.generator import GeneratorConfig

log = logging.getLogger(__name__)

__all__ = [
    "InputSpec",
    "TorchBackendBase",
    "batch_buckets",
    "bucket_for",
    "physical_cores",
    "resolve_device",
]


def batch_buckets(max_batch: int) -> tuple[int, ...]:
    """Powers of two below ``max_batch``, then ``max_batch``: 16 -> (1, 2, 4, 8, 16); 12 -> (1, 2, 4, 8, 12)."""
    if max_batch < 1:
        raise ValueError(f"max_batch must be >= 1, got {max_batch}")
    buckets = []
    size = 1
    while size < max_batch:
        buckets.append(size)
        size *= 2
    buckets.append(max_batch)
    return tuple(buckets)


def bucket_for(n: int, buckets: tuple[int, ...]) -> int:
    """Smallest bucket holding ``n`` faces."""
    for size in buckets:
        if size >= n:
            return size
    raise ValueError(f"batch of {n} exceeds the largest bucket {buckets[-1]}")


def resolve_device(device: str) -> str:
    """'auto' -> 'cuda' when torch sees a GPU, else 'cpu'. 'cuda:N' is accepted and kept."""
    import torch

    device = (device or "auto").lower()
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cpu" or device == "cuda" or device.startswith("cuda:"):
        return device
    raise ValueError(f"device must be auto, cpu or cuda, got {device!r}")


def torch_precision(requested: str | None, device: str) -> str:
    """The precision a torch backend runs at: fp16 by default on CUDA, fp32 on CPU (fp16 there is an error)."""
    on_cuda = device.startswith("cuda")
    precision = requested or ("fp16" if on_cuda else "fp32")
    if precision not in ("fp32", "fp16"):
        raise ValueError(f"precision must be fp32 or fp16, got {precision!r}")
    if precision == "fp16" and not on_cuda:
        raise ValueError("fp16 needs CUDA; the CPU backends run fp32")
    return precision


def physical_cores() -> int:
    """Physical cores this process may run on (SMT siblings counted once); at least 1.

    ONNX Runtime and torch both run convolutions best with one thread per physical core; SMT
    siblings share the vector units and only add contention.
    """
    try:
        allowed = sorted(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        allowed = list(range(os.cpu_count() or 1))
    cores = set()
    for cpu in allowed:
        try:
            with open(f"/sys/devices/system/cpu/cpu{cpu}/topology/thread_siblings_list") as handle:
                cores.add(handle.read().strip())
        except OSError:
            cores.add(str(cpu))
    return max(1, len(cores))


@dataclass(frozen=True)
class InputSpec:
    """The shapes one generator call expects (from its config)."""

    image_size: int
    label_nc: int
    identity_dim: int

    @classmethod
    def from_config(cls, config: GeneratorConfig) -> InputSpec:
        return cls(config.image_size, config.label_nc, config.identity_dim)

    def check(self, masked: Any, semantic: Any, identity: Any) -> int:
        """Validate shapes (numpy arrays or tensors); returns the batch size."""
        s = self.image_size
        n = int(masked.shape[0]) if len(masked.shape) == 4 else -1
        expected = {
            "masked": ((n, 3, s, s), tuple(masked.shape)),
            "semantic": ((n, self.label_nc, s, s), tuple(semantic.shape)),
            "identity": ((n, self.identity_dim), tuple(identity.shape)),
        }
        for name, (want, got) in expected.items():
            if n < 0 or want != got:
                shape = ", ".join(["B", *(str(d) for d in want[1:])])
                raise ValueError(f"generator input {name} must have shape ({shape}) with one batch size B for all inputs, got {got}")
        return n

    def empty_output(self) -> np.ndarray:
        return np.zeros((0, 3, self.image_size, self.image_size), np.float32)


class _PinnedStaging:
    """Page-locked host buffers, one per role at the largest batch, so host<->GPU copies are asynchronous
    and nothing is pinned per call (pinning is slow); a call of n faces uses the first n rows."""

    def __init__(self, max_batch: int) -> None:
        self.max_batch = max_batch
        self._buffers: dict[str, torch.Tensor] = {}

    def buffer(self, role: str, shape: tuple[int, ...]) -> torch.Tensor:
        import torch

        buf = self._buffers.get(role)
        if buf is None or tuple(buf.shape[1:]) != tuple(shape[1:]) or buf.shape[0] < shape[0]:
            buf = torch.empty((max(self.max_batch, shape[0]), *shape[1:]), dtype=torch.float32, pin_memory=True)
            self._buffers[role] = buf
        return buf[: shape[0]]


class TorchBackendBase:
    """Shared ``generate``/``generate_tensors`` for backends that run torch modules.

    Subclasses implement ``_forward(masked, semantic, identity) -> Tensor`` on device tensors whose batch
    is a bucket size when ``pad_to_buckets`` is set (any size otherwise), returning float32 or float16.
    """

    name: str = ""
    device: str = "cpu"
    precision: str = "fp32"

    def __init__(self, *, config: GeneratorConfig, device: str, max_batch: int, pad_to_buckets: bool) -> None:
        self.config = config
        self.spec = InputSpec.from_config(config)
        self.device = device.split(":")[0]
        self.torch_device = device
        self.max_batch = max_batch
        self.buckets = batch_buckets(max_batch)
        self.pad_to_buckets = pad_to_buckets
        self._staging = _PinnedStaging(max_batch) if self.device == "cuda" else None

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name} on {self.torch_device} ({self.precision}, max batch {self.max_batch})>"

    # -- numpy path -------------------------------------------------------------------------------
    def generate(self, masked: np.ndarray, semantic: np.ndarray, identity: np.ndarray) -> np.ndarray:
        """float32 NCHW in [-1, 1] -> float32 NCHW in [-1, 1]; any batch size."""
        import torch

        n = self.spec.check(masked, semantic, identity)
        if n == 0:
            return self.spec.empty_output()
        out = np.empty((n, 3, self.spec.image_size, self.spec.image_size), np.float32)
        with torch.inference_mode():
            for start in range(0, n, self.max_batch):
                stop = min(n, start + self.max_batch)
                chunk = [np.ascontiguousarray(a[start:stop], dtype=np.float32) for a in (masked, semantic, identity)]
                if self._staging is None:
                    result = self._run_chunk(*(torch.from_numpy(a) for a in chunk))
                    out[start:stop] = result.numpy()
                else:
                    out[start:stop] = self._run_chunk_cuda(chunk)
        return out

    def _run_chunk_cuda(self, chunk: list[np.ndarray]) -> np.ndarray:
        import torch

        assert self._staging is not None
        device_inputs = []
        for role, array in zip(("masked", "semantic", "identity"), chunk):
            pinned = self._staging.buffer(role, array.shape)
            pinned.numpy()[...] = array
            device_inputs.append(pinned.to(self.torch_device, non_blocking=True))
        result = self._run_chunk(*device_inputs)
        host = self._staging.buffer("out", tuple(result.shape))
        host.copy_(result, non_blocking=True)
        torch.cuda.current_stream(result.device).synchronize()
        return host.numpy().copy()

    # -- tensor path ------------------------------------------------------------------------------
    def generate_tensors(self, masked: torch.Tensor, semantic: torch.Tensor, identity: torch.Tensor) -> torch.Tensor:
        """Tensors (any device, float) -> float32 tensor on this backend's device; no host round trip on CUDA."""
        import torch

        n = self.spec.check(masked, semantic, identity)
        if n == 0:
            return torch.zeros((0, 3, self.spec.image_size, self.spec.image_size), device=self.torch_device)
        tensors = [t.to(self.torch_device, torch.float32, non_blocking=True) for t in (masked, semantic, identity)]
        with torch.inference_mode():
            if n <= self.max_batch:
                return self._run_chunk(*tensors)
            parts = [
                self._run_chunk(*(t[start : start + self.max_batch] for t in tensors))
                for start in range(0, n, self.max_batch)
            ]
            return torch.cat(parts)

    def _run_chunk(self, masked: torch.Tensor, semantic: torch.Tensor, identity: torch.Tensor) -> torch.Tensor:
        import torch

        n = masked.shape[0]
        if self.pad_to_buckets:
            size = bucket_for(n, self.buckets)
            if size != n:
                # Padding repeats the last face: real data keeps every op (norms, hole test) well defined.
                pad = size - n
                masked, semantic, identity = (
                    torch.cat([t, t[-1:].expand(pad, *t.shape[1:])]) for t in (masked, semantic, identity)
                )
        result = self._forward(masked, semantic, identity)
        return result[:n].float()

    def _forward(self, masked: torch.Tensor, semantic: torch.Tensor, identity: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError
