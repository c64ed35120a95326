"""TensorRT backend: a cached FP16 engine with a dynamic batch profile (1..max_batch), run on torch's stream.

The engine is built (or found in the cache) by :func:`engines.tensorrt_build.build_engine`, keyed by
the weights' hash, shapes, precision, TensorRT version and GPU; ``sdgan-stream build-engine`` does the
same ahead of time so the first video does not wait minutes for the build. Running uses TensorRT's
own runtime (``execute_async_v3`` with tensor addresses bound to torch CUDA memory), so inputs and
outputs never leave the GPU on the tensor path.

TensorRT cannot be installed on the project's development machines: this path was written against
TensorRT 8.5+/10 and Torch-TensorRT 2.x documentation and has not been run there.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import BackendUnavailableError
from .base import TorchBackendBase

if TYPE_CHECKING:
    import torch

    from ..models.generator import GeneratorConfig, SDGANGenerator

log = logging.getLogger(__name__)

__all__ = ["TensorRTBackend", "TensorRTEngineRunner", "unavailable_reason"]


def unavailable_reason(device: str) -> str | None:
    if not device.startswith("cuda"):
        return "TensorRT runs on NVIDIA GPUs only (device is cpu)"
    try:
        from engines.tensorrt_build import tensorrt_unavailable_reason
    except ImportError:
        return "the engines package (TensorRT build and cache) is not importable; reinstall sdgan-stream (pip install -e .)"

    return tensorrt_unavailable_reason()


class TensorRTEngineRunner:
    """Deserialize one engine and run it on torch tensors (inputs matched by name, else by order)."""

    def __init__(self, engine_path: str | Path, *, device: str = "cuda") -> None:
        import tensorrt as trt
        import torch

        from engines.onnx_export import INPUT_NAMES

        self.device = torch.device(device)
        self._logger = trt.Logger(trt.Logger.WARNING)
        self._runtime = trt.Runtime(self._logger)
        with torch.cuda.device(self.device):
            self.engine = self._runtime.deserialize_cuda_engine(Path(engine_path).read_bytes())
            if self.engine is None:
                raise BackendUnavailableError(
                    f"TensorRT could not load the engine {engine_path} (built by another TensorRT or for another GPU?); "
                    "rebuild it with `sdgan-stream build-engine --force`"
                )
            self.context = self.engine.create_execution_context()
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        inputs = [n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        outputs = [n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.OUTPUT]
        if len(inputs) != 3 or len(outputs) != 1:
            raise BackendUnavailableError(f"engine {engine_path} has inputs {inputs} and outputs {outputs}; expected 3 and 1")
        self.inputs = list(INPUT_NAMES) if set(INPUT_NAMES) == set(inputs) else inputs
        self.output = outputs[0]
        to_torch = {trt.float32: torch.float32, trt.float16: torch.float16}
        self.dtypes = {n: to_torch[self.engine.get_tensor_dtype(n)] for n in names}

    def __call__(self, masked: torch.Tensor, semantic: torch.Tensor, identity: torch.Tensor) -> torch.Tensor:
        import torch

        keep = []  # the engine reads these addresses asynchronously: hold the tensors until it is done
        for name, tensor in zip(self.inputs, (masked, semantic, identity)):
            tensor = tensor.to(self.device, self.dtypes[name]).contiguous()
            keep.append(tensor)
            self.context.set_input_shape(name, tuple(tensor.shape))
            self.context.set_tensor_address(name, tensor.data_ptr())
        out = torch.empty(tuple(self.context.get_tensor_shape(self.output)), dtype=self.dtypes[self.output], device=self.device)
        self.context.set_tensor_address(self.output, out.data_ptr())
        stream = torch.cuda.current_stream(self.device)
        if not self.context.execute_async_v3(stream.cuda_stream):
            raise RuntimeError("TensorRT execution failed (see the TensorRT log)")
        stream.synchronize()  # `keep` may be freed once this returns
        return out


class TensorRTBackend(TorchBackendBase):
    """The generator as a TensorRT engine (FP16 by default) with a dynamic batch dimension."""

    name = "tensorrt"

    def __init__(
        self,
        generator: SDGANGenerator,
        config: GeneratorConfig,
        *,
        device: str = "cuda",
        max_batch: int = 16,
        precision: str = "fp16",
        opt_batch: int | None = None,
        cache: Any = None,
        weights_digest: str | None = None,
    ) -> None:
        reason = unavailable_reason(device)
        if reason is not None:
            raise BackendUnavailableError(f"tensorrt backend unavailable: {reason}")
        from engines.tensorrt_build import build_engine

        # The engine takes any batch in 1..max_batch: no padding needed.
        super().__init__(config=config, device=device, max_batch=max_batch, pad_to_buckets=False)
        self.precision = precision
        index = int(device.split(":")[1]) if ":" in device else 0
        try:
            self.engine_info = build_engine(
                generator, config, max_batch=max_batch, opt_batch=opt_batch, precision=precision,
                device_index=index, cache=cache, digest=weights_digest,
            )
        except RuntimeError as error:
            raise BackendUnavailableError(str(error)) from error
        self.runner = TensorRTEngineRunner(self.engine_info.path, device=f"cuda:{index}")
        log.info("TensorRT engine %s (%s, batch 1..%d, %s)", self.engine_info.path.name, precision, max_batch,
                 "from cache" if self.engine_info.from_cache else f"built in {self.engine_info.seconds:.0f} s")

    def _forward(self, masked: torch.Tensor, semantic: torch.Tensor, identity: torch.Tensor) -> torch.Tensor:
        return self.runner(masked, semantic, identity)
