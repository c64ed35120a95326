"""Eager torch backend: the reference every other backend is checked against.

CPU or CUDA. channels_last memory format (oneDNN and cuDNN both pick their faster NHWC kernels for
it); on CUDA, FP16 autocast by default (InstanceNorm and the rest of autocast's FP32 list stay FP32).
``precision='fp32'`` on CUDA also turns TF32 off inside the call, so FP32 means FP32.
"""

from __future__ import annotations

import contextlib
import copy
import logging
from typing import TYPE_CHECKING

from .base import TorchBackendBase, torch_precision

if TYPE_CHECKING:
    import torch

    from ..models.generator import GeneratorConfig, SDGANGenerator

log = logging.getLogger(__name__)

__all__ = ["EagerBackend", "unavailable_reason"]


def unavailable_reason(device: str) -> str | None:
    """Eager runs wherever torch runs; CUDA only when torch sees a GPU."""
    import torch

    if device.startswith("cuda") and not torch.cuda.is_available():
        return "no CUDA GPU visible to torch"
    return None


def precision_context(device: str, precision: str) -> contextlib.AbstractContextManager:
    """Autocast for FP16 on CUDA; TF32 off for FP32 on CUDA; nothing on CPU."""
    import torch

    if not device.startswith("cuda"):
        return contextlib.nullcontext()
    if precision == "fp16":
        return torch.autocast("cuda", dtype=torch.float16)
    return torch.backends.cudnn.flags(enabled=True, benchmark=False, deterministic=False, allow_tf32=False)


class EagerBackend(TorchBackendBase):
    """``SDGANGenerator.forward`` as written, on a private copy of the module."""

    name = "eager"

    def __init__(
        self,
        generator: SDGANGenerator,
        config: GeneratorConfig,
        *,
        device: str = "cpu",
        max_batch: int = 16,
        precision: str | None = None,
        channels_last: bool = True,
    ) -> None:
        import torch

        on_cuda = device.startswith("cuda")
        precision = torch_precision(precision, device)
        # Bucket padding on CUDA keeps the allocator and cuDNN on a few shapes; on CPU it would only add work.
        super().__init__(config=config, device=device, max_batch=max_batch, pad_to_buckets=on_cuda)
        self.precision = precision
        self.channels_last = channels_last
        # A private copy: the caller's module keeps its device and memory format (tests compare against it).
        module = copy.deepcopy(generator).eval().requires_grad_(False).to(device)
        if channels_last:
            module = module.to(memory_format=torch.channels_last)
        self.module = module

    def _forward(self, masked: torch.Tensor, semantic: torch.Tensor, identity: torch.Tensor) -> torch.Tensor:
        import torch

        if self.channels_last:
            masked = masked.contiguous(memory_format=torch.channels_last)
            semantic = semantic.contiguous(memory_format=torch.channels_last)
        with precision_context(self.torch_device, self.precision):
            return self.module(masked, semantic, identity)
