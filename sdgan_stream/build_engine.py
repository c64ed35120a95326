"""``sdgan-stream build-engine``: build and cache the generator's TensorRT engine ahead of the first video.

The engine lands in the engine cache (``engines/cache`` in a source checkout, else
``~/.cache/sdgan-stream/engines``; ``$SDGAN_STREAM_CACHE`` overrides), keyed by the weights' hash, the
shapes, the precision, the TensorRT version and the GPU, so ``--backend tensorrt`` later starts in
seconds. Where an engine cannot be built (no GPU, no TensorRT), the command says exactly why and exits
with status 1; ``--list`` shows what the cache holds.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

log = logging.getLogger(__name__)

__all__ = ["add_build_engine_parser", "run_build_engine"]

EXIT_OK, EXIT_ERROR = 0, 1


def add_build_engine_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Register ``build-engine`` on the CLI's subparsers."""
    parser = subparsers.add_parser(
        "build-engine",
        help="build and cache the TensorRT engine of the generator",
        description=(
            "Build the generator's TensorRT engine (FP16, dynamic batch 1..N) and store it in the engine cache, keyed by "
            "the weights' hash, shapes, precision, TensorRT version and GPU, so that --backend tensorrt starts in seconds. "
            "Where no engine can be built here, says exactly why and exits with status 1."
        ),
    )
    parser.add_argument("--weights", default=None, help="generator bundle (default: the starter weights in the package)")
    parser.add_argument("--max-batch", type=int, default=16, help="largest batch (faces per frame) the engine accepts (default: 16)")
    parser.add_argument("--opt-batch", type=int, default=None, help="batch TensorRT tunes its kernels for (default: min(4, max batch))")
    parser.add_argument("--precision", choices=("fp16", "fp32"), default="fp16", help="engine precision (default: fp16)")
    parser.add_argument("--device", default="cuda", help="CUDA device, e.g. cuda or cuda:1 (default: cuda)")
    parser.add_argument("--cache-dir", type=Path, default=None,
                        help="engine cache folder (default: $SDGAN_STREAM_CACHE, else engines/cache in a source checkout, "
                             "else ~/.cache/sdgan-stream/engines)")
    parser.add_argument("--force", action="store_true", help="rebuild even when a matching engine is cached")
    parser.add_argument("--check", action="store_true", help="then run the engine once against eager FP32 and report the error")
    parser.add_argument("--list", action="store_true", help="list the cached engines and ONNX exports, and exit")
    parser.set_defaults(handler=run_build_engine)
    return parser


def _list(cache_dir: Path | None) -> int:
    from engines.cache import ArtifactCache

    cache = ArtifactCache(cache_dir)
    entries = cache.entries()
    if not entries:
        print(f"no cached artifacts in {cache.root}")
        return EXIT_OK
    for entry in entries:
        key = entry["key"]
        print(f"{entry['path']}  {key['kind']} {key['precision']} batch {key['shapes'].get('batch')} "
              f"{key['runtime']} {key['device'] or ''} ({entry.get('bytes', 0) / 1e6:.1f} MB, {entry.get('created', '?')})")
    return EXIT_OK


def run_build_engine(args: argparse.Namespace) -> int:
    """Handler of ``build-engine``; returns the process exit status."""
    try:
        from engines.cache import ArtifactCache
        from engines.tensorrt_build import build_engine, tensorrt_unavailable_reason
    except ImportError as error:
        print(f"error: the engines package is not importable ({error}); reinstall sdgan-stream (pip install -e .)",
              file=sys.stderr)
        return EXIT_ERROR
    if args.list:
        return _list(args.cache_dir)
    device = args.device
    if not device.startswith("cuda"):
        print(f"error: cannot build a TensorRT engine on {device!r}: TensorRT runs on NVIDIA GPUs only (use --device cuda)",
              file=sys.stderr)
        return EXIT_ERROR
    index = int(device.split(":")[1]) if ":" in device else 0
    reason = tensorrt_unavailable_reason(index)
    if reason is not None:
        print(f"error: cannot build a TensorRT engine on this machine: {reason}", file=sys.stderr)
        print("       the other generator backends need no engine: --backend onnxruntime, compile or eager", file=sys.stderr)
        return EXIT_ERROR

    from .models.bundle import load_generator_bundle

    generator, config, _metadata = load_generator_bundle(args.weights)
    try:
        info = build_engine(
            generator, config, max_batch=args.max_batch, opt_batch=args.opt_batch, precision=args.precision,
            device_index=index, cache=ArtifactCache(args.cache_dir), force=args.force,
        )
    except (RuntimeError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return EXIT_ERROR
    how = "found in the cache" if info.from_cache else f"built with {info.builder} in {info.seconds:.0f} s"
    print(f"TensorRT engine ({args.precision}, batch 1..{args.max_batch}, {info.key.runtime}, {info.key.device}) {how}:")
    print(f"  {info.path}")
    if args.check:
        return _check(generator, config, args, device)
    return EXIT_OK


def _check(generator, config, args: argparse.Namespace, device: str) -> int:  # noqa: ANN001
    import numpy as np
    import torch

    from engines.cache import ArtifactCache

    from .backends import create_backend

    backend = create_backend("tensorrt", generator, config, device=device, max_batch=args.max_batch,
                             precision=args.precision, cache=ArtifactCache(args.cache_dir))
    rng = np.random.default_rng(0)
    s, n = config.image_size, min(4, args.max_batch)
    masked = rng.uniform(-1, 1, (n, 3, s, s)).astype(np.float32)
    masked[:, :, s // 4 : 3 * s // 4, s // 4 : 3 * s // 4] = 0
    semantic = np.eye(config.label_nc, dtype=np.float32)[rng.integers(0, config.label_nc, (n, s, s))].transpose(0, 3, 1, 2).copy()
    identity = rng.standard_normal((n, config.identity_dim)).astype(np.float32)
    with torch.no_grad():
        reference = generator.cpu()(*(torch.from_numpy(a) for a in (masked, semantic, identity))).numpy()
    out = backend.generate(masked, semantic, identity)
    rel = float(np.linalg.norm(out - reference) / np.linalg.norm(reference))
    tol = 1e-2 if args.precision == "fp16" else 1e-4
    print(f"parity vs eager FP32 on CPU: relative L2 error {rel:.2e} (tolerance {tol:g}) -> {'ok' if rel <= tol else 'FAILED'}")
    return EXIT_OK if rel <= tol else EXIT_ERROR
