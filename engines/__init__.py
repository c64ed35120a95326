"""Compiled generator artifacts and their cache: ONNX exports and TensorRT engines.

* :mod:`engines.cache`: :class:`ArtifactCache` keyed by :class:`ArtifactKey` (weights hash, shapes,
  precision, tool versions, GPU); the folder ``engines/cache/`` in a source checkout (git-ignored).
* :mod:`engines.onnx_export`: opset-17 export with a dynamic batch axis, cached by weights hash.
* :mod:`engines.tensorrt_build`: TensorRT engine build (Torch-TensorRT, or TensorRT's ONNX parser),
  FP16, dynamic batch 1..N; run it with ``sdgan-stream build-engine``.
"""

from .cache import CACHE_ENV, ArtifactCache, ArtifactKey, default_cache_dir, weights_digest

__all__ = ["CACHE_ENV", "ArtifactCache", "ArtifactKey", "default_cache_dir", "weights_digest"]
