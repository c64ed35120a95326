"""``torch.compile`` backend: Inductor-generated kernels, one static-shape graph per batch bucket.

* CPU: Inductor's C++ code generation with weight *freezing* (constant-folded, oneDNN-prepacked
  weights) on a channels_last copy of the module. Needs a C++ compiler; compiling one bucket takes
  about a minute on two cores (Inductor's on-disk cache shortens later starts), so buckets are
  compiled lazily on first use unless ``warmup`` names them.
* CUDA: the same plus CUDA graphs (``triton.cudagraphs``, what ``mode="reduce-overhead"`` sets), one
  graph per bucket; FP16 autocast by default. Outputs are cloned, because a CUDA graph overwrites its
  output buffer on the next replay.
"""

from __future__ import annotations

import contextlib
import copy
import logging
import shutil
import time
from collections.abc import Iterable
from typing import TYPE_CHECKING

from .base import TorchBackendBase, torch_precision
from .eager import precision_context

if TYPE_CHECKING:
    import torch

    from ..models.generator import GeneratorConfig, SDGANGenerator

log = logging.getLogger(__name__)

__all__ = ["CompiledBackend", "unavailable_reason"]


def unavailable_reason(device: str) -> str | None:
    """torch.compile needs a C++ compiler for CPU code and Triton for GPU code."""
    import importlib.util

    import torch

    if not hasattr(torch, "compile"):
        return f"torch {torch.__version__} has no torch.compile"
    if device.startswith("cuda"):
        if not torch.cuda.is_available():
            return "no CUDA GPU visible to torch"
        if importlib.util.find_spec("triton") is None:
            return "Triton is not installed (torch.compile generates GPU kernels with it)"
        return None
    compilers = ("g++", "c++", "clang++")
    if not any(shutil.which(c) for c in compilers):
        return f"no C++ compiler ({', '.join(compilers)}) on PATH; torch.compile's CPU code generation needs one"
    return None


def _module_wrapper(module: torch.nn.Module, fp16_autocast: bool) -> torch.nn.Module:
    import torch

    class _Generate(torch.nn.Module):
        """The generator with its precision policy inside the compiled region (autocast traces into the graph)."""

        def __init__(self) -> None:
            super().__init__()
            self.generator = module

        def forward(self, masked: torch.Tensor, semantic: torch.Tensor, identity: torch.Tensor) -> torch.Tensor:
            if fp16_autocast:
                with torch.autocast("cuda", dtype=torch.float16):
                    return self.generator(masked, semantic, identity).float()
            return self.generator(masked, semantic, identity)

    return _Generate().eval()


class CompiledBackend(TorchBackendBase):
    """The generator under ``torch.compile`` (Inductor), static shapes per batch bucket."""

    name = "compile"

    def __init__(
        self,
        generator: SDGANGenerator,
        config: GeneratorConfig,
        *,
        device: str = "cpu",
        max_batch: int = 16,
        precision: str | None = None,
        warmup: Iterable[int] = (),
    ) -> None:
        import torch

        on_cuda = device.startswith("cuda")
        precision = torch_precision(precision, device)
        super().__init__(config=config, device=device, max_batch=max_batch, pad_to_buckets=True)
        self.precision = precision
        module = copy.deepcopy(generator).eval().requires_grad_(False).to(device).to(memory_format=torch.channels_last)
        self.module = _module_wrapper(module, fp16_autocast=precision == "fp16")
        options = {"freezing": True}
        if on_cuda:
            options["triton.cudagraphs"] = True
        # dynamic=False: one specialised graph per bucket; a dynamic batch graph ran slower on CPU.
        self._compiled = torch.compile(self.module, dynamic=False, fullgraph=True, options=options)
        self._compiled_buckets: set[int] = set()
        for size in sorted(set(warmup)):
            self.warmup(size)

    def warmup(self, batch: int) -> float:
        """Compile (and for CUDA, capture) the bucket holding ``batch``; returns the seconds it took."""
        import torch

        size = min(b for b in self.buckets if b >= batch)
        s = self.spec.image_size
        masked = torch.zeros(size, 3, s, s, device=self.torch_device)
        masked[:, :, : s // 2] = 0.5
        semantic = torch.zeros(size, self.spec.label_nc, s, s, device=self.torch_device)
        semantic[:, 0] = 1
        identity = torch.nn.functional.normalize(torch.ones(size, self.spec.identity_dim, device=self.torch_device), dim=1)
        started = time.perf_counter()
        self.generate_tensors(masked, semantic, identity)
        if self.device == "cuda":
            self.generate_tensors(masked, semantic, identity)  # the second call records the CUDA graph
            torch.cuda.synchronize()
        return time.perf_counter() - started

    def _forward(self, masked: torch.Tensor, semantic: torch.Tensor, identity: torch.Tensor) -> torch.Tensor:
        import torch

        size = masked.shape[0]
        first = size not in self._compiled_buckets
        if first:
            log.info("torch.compile: compiling the generator for batch %d on %s (once per bucket; can take a minute)",
                     size, self.torch_device)
            started = time.perf_counter()
        masked = masked.contiguous(memory_format=torch.channels_last)
        semantic = semantic.contiguous(memory_format=torch.channels_last)
        if self.device == "cuda":
            torch.compiler.cudagraph_mark_step_begin()
        # FP16 autocast lives inside the compiled module; FP32 on CUDA needs TF32 off around the call.
        policy = precision_context(self.torch_device, "fp32") if self.precision == "fp32" else contextlib.nullcontext()
        with policy:
            out = self._compiled(masked, semantic, identity)
        if self.device == "cuda":
            out = out.clone()  # the graph's output buffer is reused by the next replay
        if first:
            self._compiled_buckets.add(size)
            log.info("torch.compile: batch %d ready in %.1f s", size, time.perf_counter() - started)
        return out
