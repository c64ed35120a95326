"""ONNX Runtime backend: the generator exported once to ONNX (opset 17, dynamic batch), then run by ORT.

On CPU this is the fast path (MLAS kernels in blocked NCHWc layout, fused graph): see
``benchmarks/bench_backends.py`` for the measured speed-up over eager torch. On a GPU it runs the CUDA
execution provider in FP32; ``generate_tensors`` then binds torch CUDA tensors directly (IOBinding), so
no face crosses to the host.

Session settings: graph optimization level ALL, ``intra_op`` threads = physical cores, one inter-op
thread, and spin-waiting off by default (the generator shares the cores with the detector, the
decoder and the encoder threads; spinning threads would take their time). On CPU, a batch of several
faces is split across the cores instead (``parallel='batch'``): one single-threaded run per slice,
side by side, which scales far better than intra-op threads at 2-8 faces. The provider is chosen
explicitly (onnxruntime would otherwise list e.g. Azure first) and logged.
"""

from __future__ import annotations

import importlib.util
import logging
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ..errors import BackendUnavailableError
from .base import InputSpec, batch_buckets, bucket_for, physical_cores

if TYPE_CHECKING:
    import torch

    from ..models.generator import GeneratorConfig, SDGANGenerator

log = logging.getLogger(__name__)

__all__ = ["OnnxRuntimeBackend", "unavailable_reason"]

_CUDA_EP = "CUDAExecutionProvider"
_CPU_EP = "CPUExecutionProvider"


def unavailable_reason(device: str) -> str | None:
    try:
        import onnx  # noqa: F401  (the exporter writes through it)
        import onnxruntime as ort
    except ImportError as error:
        return f"{error.name} is not installed"
    if importlib.util.find_spec("engines") is None:
        return "the engines package (ONNX export cache) is not importable; reinstall sdgan-stream (pip install -e .)"
    if device.startswith("cuda"):
        if _CUDA_EP not in ort.get_available_providers():
            return (f"onnxruntime {ort.__version__} has no {_CUDA_EP} (install onnxruntime-gpu); "
                    f"available: {', '.join(ort.get_available_providers())}")
    return None


def _device_index(device: str) -> int:
    return int(device.split(":")[1]) if ":" in device else 0


class OnnxRuntimeBackend:
    """The generator on ONNX Runtime (FP32), CPU or CUDA execution provider."""

    name = "onnxruntime"
    precision = "fp32"

    def __init__(
        self,
        generator: SDGANGenerator,
        config: GeneratorConfig,
        *,
        device: str = "cpu",
        max_batch: int = 16,
        threads: int | None = None,
        parallel: str = "auto",
        spinning: bool = False,
        model_path: str | Path | None = None,
        cache: Any = None,
        weights_digest: str | None = None,
    ) -> None:
        import onnxruntime as ort

        from engines.onnx_export import INPUT_NAMES, OUTPUT_NAME, cached_onnx_model

        self.config = config
        self.spec = InputSpec.from_config(config)
        self.device = device.split(":")[0]
        self.torch_device = device
        self.max_batch = max_batch
        self.buckets = batch_buckets(max_batch)
        self._inputs = INPUT_NAMES
        self._output = OUTPUT_NAME
        started = time.perf_counter()
        path = Path(model_path) if model_path is not None else cached_onnx_model(generator, config, cache=cache, digest=weights_digest)
        self.model_path = path

        self.threads = threads or physical_cores()
        if parallel not in ("auto", "batch", "intra"):
            raise ValueError(f"parallel must be auto, batch or intra, got {parallel!r}")
        if parallel == "auto":
            parallel = "batch" if self.device == "cpu" and self.threads > 1 else "intra"
        self.parallel = parallel

        def session_options(intra_threads: int) -> ort.SessionOptions:
            options = ort.SessionOptions()
            options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
            options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
            options.intra_op_num_threads = intra_threads
            options.inter_op_num_threads = 1
            options.add_session_config_entry("session.intra_op.allow_spinning", "1" if spinning else "0")
            return options

        if self.device == "cuda":
            providers: list[Any] = [(_CUDA_EP, {"device_id": _device_index(device)}), _CPU_EP]
        else:
            providers = [_CPU_EP]
        # The main session's intra-op threads serve single faces; with parallel='batch' a second,
        # single-threaded session runs slices of a multi-face batch side by side (ORT releases the GIL).
        self._session = ort.InferenceSession(str(path), session_options(self.threads), providers=providers)
        self._single = None
        self._pool = None
        if self.parallel == "batch":
            from concurrent.futures import ThreadPoolExecutor

            self._single = ort.InferenceSession(str(path), session_options(1), providers=providers)
            self._pool = ThreadPoolExecutor(max_workers=self.threads - 1, thread_name_prefix="sdgan-ort")
        wanted = _CUDA_EP if self.device == "cuda" else _CPU_EP
        got = self._session.get_providers()[0]
        if got != wanted:  # onnxruntime falls back to CPU silently when e.g. cuDNN is missing
            raise BackendUnavailableError(f"onnxruntime could not start {wanted} (it fell back to {got}); check CUDA/cuDNN")
        self.provider = got
        # On the GPU, cuDNN tunes per input shape: a few bucket shapes keep that to a few tunings.
        self.pad_to_buckets = self.device == "cuda"
        how = (f"faces split over {self.threads} single-threaded runs" if self.parallel == "batch"
               else f"{self.threads} intra-op threads")
        log.info("onnxruntime %s generator on %s (%s, graph optimization ALL), ready in %.1f s",
                 ort.__version__, got, how, time.perf_counter() - started)

    def __repr__(self) -> str:
        return f"<OnnxRuntimeBackend on {self.provider} (fp32, max batch {self.max_batch})>"

    # -- numpy path -------------------------------------------------------------------------------
    def generate(self, masked: np.ndarray, semantic: np.ndarray, identity: np.ndarray) -> np.ndarray:
        n = self.spec.check(masked, semantic, identity)
        if n == 0:
            return self.spec.empty_output()
        parts = []
        for start in range(0, n, self.max_batch):
            stop = min(n, start + self.max_batch)
            chunk = [np.ascontiguousarray(a[start:stop], dtype=np.float32) for a in (masked, semantic, identity)]
            size = bucket_for(stop - start, self.buckets) if self.pad_to_buckets else stop - start
            if size != stop - start:
                chunk = [np.concatenate([a, np.repeat(a[-1:], size - len(a), axis=0)]) for a in chunk]
            parts.append(self._run(chunk)[: stop - start])
        return parts[0] if len(parts) == 1 else np.concatenate(parts)

    def _run(self, chunk: list[np.ndarray]) -> np.ndarray:
        n = len(chunk[0])
        if self._pool is None or self._single is None or n < 2:
            return self._session.run([self._output], dict(zip(self._inputs, chunk)))[0]
        # Data parallel over faces: each slice runs single-threaded with no per-operator thread barrier,
        # which scaled ~2x on two cores where intra-op threading gave ~1.3x at batch 4.
        bounds = np.linspace(0, n, min(self.threads, n) + 1).round().astype(int)
        slices = [[a[lo:hi] for a in chunk] for lo, hi in zip(bounds[:-1], bounds[1:])]
        single = self._single
        futures = [self._pool.submit(single.run, [self._output], dict(zip(self._inputs, part))) for part in slices[1:]]
        first = single.run([self._output], dict(zip(self._inputs, slices[0])))[0]
        return np.concatenate([first, *(f.result()[0] for f in futures)])

    def close(self) -> None:
        """Stop the worker threads (they also end with the process)."""
        if self._pool is not None:
            self._pool.shutdown(wait=False)
            self._pool = None

    # -- tensor path ------------------------------------------------------------------------------
    def generate_tensors(self, masked: torch.Tensor, semantic: torch.Tensor, identity: torch.Tensor) -> torch.Tensor:
        import torch

        if self.device != "cuda":
            arrays = [t.detach().to("cpu", torch.float32).numpy() for t in (masked, semantic, identity)]
            return torch.from_numpy(self.generate(*arrays))
        n = self.spec.check(masked, semantic, identity)
        if n == 0:
            return torch.zeros((0, 3, self.spec.image_size, self.spec.image_size), device=self.torch_device)
        tensors = [t.to(self.torch_device, torch.float32).contiguous() for t in (masked, semantic, identity)]
        parts = [self._run_bound(*(t[s : s + self.max_batch] for t in tensors)) for s in range(0, n, self.max_batch)]
        return parts[0] if len(parts) == 1 else torch.cat(parts)

    def _run_bound(self, masked: torch.Tensor, semantic: torch.Tensor, identity: torch.Tensor) -> torch.Tensor:
        """One chunk through IOBinding on CUDA tensors: ORT reads and writes torch's device memory."""
        import torch

        n = masked.shape[0]
        size = bucket_for(n, self.buckets)
        if size != n:
            masked, semantic, identity = (torch.cat([t, t[-1:].expand(size - n, *t.shape[1:])]) for t in (masked, semantic, identity))
        inputs = [t.contiguous() for t in (masked, semantic, identity)]
        s = self.spec.image_size
        out = torch.empty((size, 3, s, s), device=self.torch_device, dtype=torch.float32)
        index = out.device.index or 0
        binding = self._session.io_binding()
        for name, tensor in zip(self._inputs, inputs):
            binding.bind_input(name, "cuda", index, np.float32, tuple(tensor.shape), tensor.data_ptr())
        binding.bind_output(self._output, "cuda", index, np.float32, tuple(out.shape), out.data_ptr())
        torch.cuda.current_stream(out.device).synchronize()  # ORT runs on its own stream: inputs must be ready
        self._session.run_with_iobinding(binding)
        binding.synchronize_outputs()
        return out[:n]
