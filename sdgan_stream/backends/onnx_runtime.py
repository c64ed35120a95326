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

On CPU the generator runs as two graphs (``engines.onnx_export`` parts): the SPADE modulations, which
depend on the semantic map alone (about half the work), then the rest. A caller that names each face's
map (``map_keys``) gets the modulations of a map seen recently from a small cache instead: the renderer
holds a tracked face's map while its landmarks stay within a pixel, so most faces repeat theirs. The
output is the same as the single graph's (measured: equal to the last bit on this machine).
"""

from __future__ import annotations

import importlib.util
import logging
import time
from collections import OrderedDict
from collections.abc import Hashable, Sequence
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
# Maps whose modulations are kept (~8 MB each at 128 px): a frame's faces plus the guard's candidates,
# which share their face's map.
DEFAULT_MAP_CACHE = 16


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
        map_cache: int | None = None,
    ) -> None:
        import onnxruntime as ort

        from engines.onnx_export import cached_onnx_model, part_names

        self.config = config
        self.spec = InputSpec.from_config(config)
        self.device = device.split(":")[0]
        self.torch_device = device
        self.max_batch = max_batch
        self.buckets = batch_buckets(max_batch)
        started = time.perf_counter()
        # The two-part graph on CPU (see the module docstring); one graph on CUDA, where IOBinding runs it,
        # and for a model file handed in.
        if map_cache is not None and map_cache < 0:
            raise ValueError(f"map_cache must be >= 0, got {map_cache}")
        self.map_cache_size = (DEFAULT_MAP_CACHE if map_cache is None else map_cache) if self.device == "cpu" and model_path is None else 0
        parts = ("map", "modulated") if self.map_cache_size else ("generator",)
        paths = {part: Path(model_path) if model_path is not None else
                 cached_onnx_model(generator, config, cache=cache, digest=weights_digest, part=part) for part in parts}
        self.model_path = paths.get("generator", paths.get("modulated"))
        self._names = {part: part_names(config, part) for part in parts}
        self._map_cache: OrderedDict[Hashable, list[np.ndarray]] = OrderedDict()  # map key -> its modulations (LRU)
        self.map_cache_hits = 0  # faces whose modulations came from the cache (for benchmarks)

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
        # The main sessions' intra-op threads serve single faces; with parallel='batch' a second,
        # single-threaded session per part runs slices of a multi-face batch side by side (ORT releases the GIL).
        self._sessions = {part: ort.InferenceSession(str(paths[part]), session_options(self.threads), providers=providers)
                          for part in parts}
        self._singles: dict[str, Any] = {}
        self._pool = None
        if self.parallel == "batch":
            from concurrent.futures import ThreadPoolExecutor

            self._singles = {part: ort.InferenceSession(str(paths[part]), session_options(1), providers=providers)
                             for part in parts}
            self._pool = ThreadPoolExecutor(max_workers=self.threads - 1, thread_name_prefix="sdgan-ort")
        wanted = _CUDA_EP if self.device == "cuda" else _CPU_EP
        got = next(iter(self._sessions.values())).get_providers()[0]
        if got != wanted:  # onnxruntime falls back to CPU silently when e.g. cuDNN is missing
            raise BackendUnavailableError(f"onnxruntime could not start {wanted} (it fell back to {got}); check CUDA/cuDNN")
        self.provider = got
        # On the GPU, cuDNN tunes per input shape: a few bucket shapes keep that to a few tunings.
        self.pad_to_buckets = self.device == "cuda"
        how = (f"faces split over {self.threads} single-threaded runs" if self.parallel == "batch"
               else f"{self.threads} intra-op threads")
        if self.map_cache_size:
            how += f", map modulations cached for {self.map_cache_size} maps"
        log.info("onnxruntime %s generator on %s (%s, graph optimization ALL), ready in %.1f s",
                 ort.__version__, got, how, time.perf_counter() - started)

    def __repr__(self) -> str:
        return f"<OnnxRuntimeBackend on {self.provider} (fp32, max batch {self.max_batch})>"

    # -- numpy path -------------------------------------------------------------------------------
    @property
    def caches_maps(self) -> bool:
        """Whether :meth:`generate` uses ``map_keys``."""
        return self.map_cache_size > 0

    def generate(self, masked: np.ndarray, semantic: np.ndarray, identity: np.ndarray, *,
                 map_keys: Sequence[Hashable | None] | None = None) -> np.ndarray:
        """The generated faces (B, 3, S, S). ``map_keys``: per face, a key that only an equal semantic map
        has (the renderer uses the label map's bytes), or None; faces whose map was seen recently skip the
        map's half of the network (CPU)."""
        n = self.spec.check(masked, semantic, identity)
        if n == 0:
            return self.spec.empty_output()
        if map_keys is not None and len(map_keys) != n:
            raise ValueError(f"map_keys must name {n} faces, got {len(map_keys)}")
        parts = []
        for start in range(0, n, self.max_batch):
            stop = min(n, start + self.max_batch)
            chunk = [np.ascontiguousarray(a[start:stop], dtype=np.float32) for a in (masked, semantic, identity)]
            size = bucket_for(stop - start, self.buckets) if self.pad_to_buckets else stop - start
            if size != stop - start:
                chunk = [np.concatenate([a, np.repeat(a[-1:], size - len(a), axis=0)]) for a in chunk]
            if self.map_cache_size:
                keys = list(map_keys[start:stop]) if map_keys is not None else [None] * (stop - start)
                out = self._run("modulated", [*chunk, *self._modulations(chunk[1], keys)])[0]
            else:
                out = self._run("generator", chunk)[0]
            parts.append(out[: stop - start])
        return parts[0] if len(parts) == 1 else np.concatenate(parts)

    def _modulations(self, semantic: np.ndarray, keys: list[Hashable | None]) -> list[np.ndarray]:
        """The map part's outputs for these faces: from the cache for known keys, else computed (once per
        distinct key in the call) and cached."""
        rows: list[list[np.ndarray] | None] = []
        for key in keys:
            found = self._map_cache.get(key) if key is not None else None
            if found is not None:
                self._map_cache.move_to_end(key)
                self.map_cache_hits += 1
            rows.append(found)
        first: dict[Hashable, int] = {}  # key -> the first missing row with it: later ones share its result
        todo = [i for i, row in enumerate(rows) if row is None and (keys[i] is None or first.setdefault(keys[i], i) == i)]
        if len(todo) == len(rows):  # nothing cached or shared: the map part's batch is the answer as it is
            made = self._run("map", [semantic])
            self._remember(keys, lambda i: [m[i] for m in made])
            return made
        if todo:
            made = self._run("map", [semantic[todo]])
            for j, i in enumerate(todo):
                rows[i] = [m[j] for m in made]
            self._remember([keys[i] for i in todo], lambda j: rows[todo[j]])
        for i, row in enumerate(rows):
            if row is None:  # a repeat of a key computed in this call
                rows[i] = rows[first[keys[i]]]
                self.map_cache_hits += 1
        ready = [row for row in rows if row is not None]
        return [np.stack([row[m] for row in ready]) for m in range(len(ready[0]))]

    def _remember(self, keys: list[Hashable | None], modulations: Any) -> None:
        for i, key in enumerate(keys):
            if key is None or key in self._map_cache:
                continue
            self._map_cache[key] = [np.array(m, copy=True) for m in modulations(i)]  # not views of a batch
            while len(self._map_cache) > self.map_cache_size:
                self._map_cache.popitem(last=False)

    def _run(self, part: str, inputs: list[np.ndarray]) -> list[np.ndarray]:
        """One graph over a batch: its outputs, in order."""
        names, outputs = self._names[part]
        n = len(inputs[0])
        single = self._singles.get(part)
        if self._pool is None or single is None or n < 2:
            return self._sessions[part].run(list(outputs), dict(zip(names, inputs)))
        # Data parallel over faces: each slice runs single-threaded with no per-operator thread barrier,
        # which scaled ~2x on two cores where intra-op threading gave ~1.3x at batch 4.
        bounds = np.linspace(0, n, min(self.threads, n) + 1).round().astype(int)
        slices = [[a[lo:hi] for a in inputs] for lo, hi in zip(bounds[:-1], bounds[1:])]
        futures = [self._pool.submit(single.run, list(outputs), dict(zip(names, part_inputs))) for part_inputs in slices[1:]]
        results = [single.run(list(outputs), dict(zip(names, slices[0]))), *(f.result() for f in futures)]
        return [np.concatenate([r[k] for r in results]) for k in range(len(outputs))]

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
        session = self._sessions["generator"]  # one graph on CUDA
        names, (output,) = self._names["generator"]
        binding = session.io_binding()
        for name, tensor in zip(names, inputs):
            binding.bind_input(name, "cuda", index, np.float32, tuple(tensor.shape), tensor.data_ptr())
        binding.bind_output(output, "cuda", index, np.float32, tuple(out.shape), out.data_ptr())
        torch.cuda.current_stream(out.device).synchronize()  # ORT runs on its own stream: inputs must be ready
        session.run_with_iobinding(binding)
        binding.synchronize_outputs()
        return out[:n]
