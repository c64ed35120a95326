"""GPU check for one CUDA machine, under 5 minutes: parity, per-stage milliseconds, end-to-end fps.

Sections (each one records its own error or skip reason instead of stopping the run, and sections are
skipped once the time budget is spent):

1. ``environment``: GPU, torch/CUDA, onnxruntime providers, TensorRT, ``available_backends('cuda')``.
2. ``parity``: each CUDA backend (eager FP16/FP32, compile FP16, onnxruntime FP32, tensorrt FP16)
   against eager FP32 on the CPU, relative L2 error (FP32 tolerance 1e-4, FP16 1e-2), batch 4.
3. ``generator``: milliseconds per call and faces/s at batch 1, 4, 16 for each backend (numpy path
   with pinned staging, and the device-tensor path).
4. ``gpu_warp``: per-stage ms of the GPU pre/post-processing on a 1080p frame with 1, 4 and 16 faces
   (upload, warp crops, feather, seamless blend (cloning + skin colour), paste back, download).
5. ``stages``: per-stage ms of the CPU stages on frames of a synthetic 1080p clip (decode, detect,
   blur cover, landmarks + crops + maps, generate, numpy paste-back), 1, 4 and 16 faces.
6. ``end_to_end``: ``sdgan_stream.anonymize_video(..., backend=..., device="cuda")`` for ``blur``
   and ``sdgan`` (identity guard on), serial and ``parallel=True``, on synthetic 1080p clips
   (``sdgan_stream.samples.make_face_clip``) with 1, 4 and 16 faces: fps, and which H.264 encoder
   the sink chose (NVENC when it opens). On CUDA the sdgan renderer keeps each frame on the GPU.

Writes JSON to ``--out`` (default ``$OUT/gpu_check.json`` when ``$OUT`` is set, else
``benchmarks/results/gpu_check.json``). Without a CUDA GPU it says so and exits with status 2 at once.

If the full package cannot be imported on the GPU machine (PyAV or OpenCV missing), the package is
loaded bare so sections 1-4 still run; 5-6 then report what is missing. Without ``safetensors`` the
starter configuration runs with random weights (parity and speed do not depend on the values).

Run: ``python benchmarks/gpu_check.py [--budget 280] [--frames 40] [--e2e-backend eager]``
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import sys
import tempfile
import time
import traceback
import types
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

FP32_TOL, FP16_TOL = 1e-4, 1e-2
DEVICE = "cuda"  # --device cpu runs every section on the CPU: a dry run of this script, not a measurement
FACE_COUNTS = (1, 4, 16)
BATCHES = (1, 4, 16)


def _import_package() -> str:
    """Import sdgan_stream; if its top-level imports fail (no PyAV/OpenCV here), register it bare."""
    try:
        import sdgan_stream  # noqa: F401

        return "full"
    except ImportError as error:
        package = types.ModuleType("sdgan_stream")
        package.__path__ = [str(ROOT / "sdgan_stream")]  # submodules still import normally
        package.__version__ = "bare"
        sys.modules["sdgan_stream"] = package
        return f"bare ({error})"


class Budget:
    def __init__(self, seconds: float) -> None:
        self.start = time.perf_counter()
        self.seconds = seconds

    def elapsed(self) -> float:
        return time.perf_counter() - self.start

    def left(self) -> float:
        return self.seconds - self.elapsed()


def _section(report: dict, name: str, budget: Budget, need: float, fn, *args) -> None:  # noqa: ANN001
    """Run one section, recording its result, error or skip reason and its duration."""
    if budget.left() < need:
        report[name] = {"skipped": f"time budget: {budget.left():.0f} s left, section needs ~{need:.0f} s"}
        print(f"[{name}] skipped (time budget)", flush=True)
        return
    started = time.perf_counter()
    print(f"[{name}] ...", flush=True)
    try:
        report[name] = fn(*args)
    except Exception as error:  # one broken section must not lose the others' numbers
        report[name] = {"error": f"{type(error).__name__}: {error}", "traceback": traceback.format_exc(limit=6)}
        print(f"[{name}] failed: {type(error).__name__}: {error}", flush=True)
    report.setdefault("section_seconds", {})[name] = round(time.perf_counter() - started, 1)
    print(f"[{name}] done in {time.perf_counter() - started:.1f} s", flush=True)


def _generator():
    """The starter bundle (CPU, FP32) or, without safetensors, the starter config with random weights."""
    import torch

    from sdgan_stream.models.generator import GeneratorConfig, build_generator

    try:
        from sdgan_stream.models.bundle import load_generator_bundle

        generator, config, metadata = load_generator_bundle(None)
        return generator, config, "starter bundle"
    except Exception as error:
        config_file = ROOT / "sdgan_stream" / "weights" / "starter" / "config.json"
        config = GeneratorConfig.from_dict(json.loads(config_file.read_text())["generator"]) if config_file.is_file() else GeneratorConfig()
        torch.manual_seed(0)
        return build_generator(config).eval().requires_grad_(False), config, f"random weights ({type(error).__name__}: {error})"


def _inputs(config, batch: int, seed: int = 0):  # noqa: ANN001
    rng = np.random.default_rng(seed)
    s = config.image_size
    masked = rng.uniform(-1, 1, (batch, 3, s, s)).astype(np.float32)
    masked[:, :, s // 5 : 4 * s // 5, s // 4 : 3 * s // 4] = 0
    labels = rng.integers(0, config.label_nc, (batch, s // 8, s // 8)).repeat(8, 1).repeat(8, 2)
    semantic = np.ascontiguousarray(np.eye(config.label_nc, dtype=np.float32)[labels].transpose(0, 3, 1, 2))
    identity = rng.standard_normal((batch, config.identity_dim)).astype(np.float32)
    identity /= np.linalg.norm(identity, axis=1, keepdims=True)
    return masked, semantic, identity


def _sync() -> None:
    import torch

    if DEVICE == "cuda":
        torch.cuda.synchronize()


def _rel(out: np.ndarray, ref: np.ndarray) -> dict[str, float]:
    return {"rel_l2": float(np.linalg.norm(out - ref) / np.linalg.norm(ref)), "max_abs": float(np.abs(out - ref).max())}


def environment(mode: str) -> dict[str, Any]:
    import torch

    info: dict[str, Any] = {
        "package_import": mode,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "gpu": torch.cuda.get_device_name(0) if DEVICE == "cuda" else "none (dry run on CPU)",
        "capability": "sm_%d%d" % torch.cuda.get_device_capability(0) if DEVICE == "cuda" else None,
        "cpu_count": os.cpu_count(),
    }
    try:
        import onnxruntime

        info["onnxruntime"] = onnxruntime.__version__
        info["ort_providers"] = onnxruntime.get_available_providers()
    except ImportError as error:
        info["onnxruntime"] = f"missing ({error})"
    from sdgan_stream.backends import available_backends

    info["available_backends"] = available_backends(DEVICE)
    return info


VARIANTS = [("eager", "fp16"), ("eager", "fp32"), ("onnxruntime", "fp32"), ("tensorrt", "fp16"), ("compile", "fp16")]


def make_backends(generator, config, state: dict) -> dict[str, Any]:  # noqa: ANN001
    """Create every CUDA backend variant once (compile's first bucket compiles in the parity call)."""
    from sdgan_stream.backends import available_backends, create_backend

    reasons = available_backends(DEVICE)
    created, skipped = {}, {}
    variants = VARIANTS if DEVICE == "cuda" else [("eager", "fp32"), ("onnxruntime", "fp32")]
    for name, precision in variants:
        label = f"{name}-{precision}"
        if reasons[name] is not None:
            skipped[label] = reasons[name]
            continue
        options = {} if name == "onnxruntime" else {"precision": precision}
        started = time.perf_counter()
        try:
            created[label] = create_backend(name, generator, config, device=DEVICE, max_batch=max(BATCHES), **options)
        except Exception as error:
            skipped[label] = f"{type(error).__name__}: {error}"
            continue
        state.setdefault("setup_s", {})[label] = round(time.perf_counter() - started, 1)
    state["backends"] = created
    return skipped


def parity(generator, config, state: dict) -> dict[str, Any]:  # noqa: ANN001
    import torch

    skipped = make_backends(generator, config, state)
    inputs = _inputs(config, 4)
    with torch.no_grad():
        reference = generator.cpu()(*(torch.from_numpy(a) for a in inputs)).numpy()
    results: dict[str, Any] = {"skipped": skipped, "setup_s": state.get("setup_s", {})}
    for label, backend in state["backends"].items():
        started = time.perf_counter()
        out = backend.generate(*inputs)
        err = _rel(out, reference)
        tol = FP16_TOL if backend.precision == "fp16" else FP32_TOL
        results[label] = {**err, "tolerance": tol, "ok": err["rel_l2"] <= tol, "first_call_s": round(time.perf_counter() - started, 2)}
        print(f"  parity {label}: rel_l2 {err['rel_l2']:.2e} (tol {tol:g}) first call {results[label]['first_call_s']} s", flush=True)
    return results


def generator_speed(config, state: dict, budget: Budget) -> dict[str, Any]:  # noqa: ANN001
    import torch

    results: dict[str, Any] = {}
    for label, backend in state.get("backends", {}).items():
        for batch in BATCHES:
            if budget.left() < 60:
                results.setdefault("skipped", []).append(f"{label}@{batch}: time budget")
                continue
            inputs = _inputs(config, batch, seed=batch)
            device_inputs = [torch.from_numpy(a).to(DEVICE) for a in inputs]
            started = time.perf_counter()
            backend.generate(*inputs)  # compile: this batch's bucket compiles here
            first = time.perf_counter() - started
            backend.generate(*inputs)
            _sync()
            timings = {}
            for path, call in (("numpy", lambda: backend.generate(*inputs)),
                               ("tensors", lambda: backend.generate_tensors(*device_inputs))):
                samples = []
                rounds, calls = (5, 10) if DEVICE == "cuda" else (1, 1)  # the CPU dry run only checks the code path
                for _ in range(rounds):
                    _sync()
                    t0 = time.perf_counter()
                    for _ in range(calls):
                        call()
                    _sync()
                    samples.append((time.perf_counter() - t0) / calls * 1e3)
                timings[path] = round(float(np.median(samples)), 3)
            results[f"{label}@{batch}"] = {
                "first_call_s": round(first, 2),
                "ms_numpy": timings["numpy"],
                "ms_tensors": timings["tensors"],
                "faces_per_s_numpy": round(batch * 1e3 / timings["numpy"], 1),
                "faces_per_s_tensors": round(batch * 1e3 / timings["tensors"], 1),
            }
            print(f"  {label}@{batch}: {timings['numpy']:.2f} ms (numpy) {timings['tensors']:.2f} ms (tensors)", flush=True)
    return results


def _face_matrices(count: int, size: int, width: int = 1920, height: int = 1080) -> np.ndarray:
    """Similarity matrices (image -> crop) for ``count`` faces laid out on a grid over a 1080p frame."""
    cols = int(np.ceil(np.sqrt(count)))
    rows = int(np.ceil(count / cols))
    matrices = []
    for i in range(count):
        cx = (i % cols + 0.5) * width / cols
        cy = (i // cols + 0.5) * height / rows
        face = min(width / cols, height / rows) * 0.6
        scale = size / face
        angle = np.radians(10 * ((i % 3) - 1))
        c, s = scale * np.cos(angle), scale * np.sin(angle)
        m = np.array([[c, -s, 0.0], [s, c, 0.0]])
        m[:, 2] = size / 2 - m[:, :2] @ np.array([cx, cy])
        matrices.append(m)
    return np.stack(matrices)


def gpu_warp_stages(config) -> dict[str, Any]:  # noqa: ANN001
    import torch

    from sdgan_stream.backends.gpu_warp import SeamlessPlan, feather_alpha, paste_crops, seamless_blend, warp_crops
    from sdgan_stream.blend import clone_rect

    size = config.image_size
    rng = np.random.default_rng(0)
    pinned = DEVICE == "cuda"
    frame_host = torch.from_numpy(rng.integers(0, 256, (1080, 1920, 3), dtype=np.uint8))
    frame_host = frame_host.pin_memory() if pinned else frame_host
    results = {}
    for count in FACE_COUNTS:
        matrices = _face_matrices(count, size)
        region = torch.zeros(count, 1, size, size, device=DEVICE)
        region[:, :, size // 5 : 4 * size // 5, size // 4 : 3 * size // 4] = 1
        generated = torch.rand(count, 3, size, size, device=DEVICE) * 255.0
        host_region = region[:, 0].bool().cpu().numpy()
        core = np.zeros_like(host_region)
        core[:, size // 5 + 1 : 4 * size // 5 - 1, size // 4 + 1 : 3 * size // 4 - 1] = True
        plan = SeamlessPlan(region=host_region, core=core, skin=core, skin_weight=core.astype(np.float32),
                            rects=[clone_rect(r) for r in host_region])
        stages = {"upload": [], "warp": [], "feather": [], "color": [], "paste": [], "download": []}
        out_host = torch.empty((1080, 1920, 3), dtype=torch.uint8)
        out_host = out_host.pin_memory() if pinned else out_host
        for repeat in range(12 if DEVICE == "cuda" else 3):
            marks = [time.perf_counter()]

            def mark() -> None:
                _sync()
                marks.append(time.perf_counter())

            frame = frame_host.to(DEVICE, non_blocking=True).permute(2, 0, 1).float()
            mark()
            crops = warp_crops(frame, matrices, size)
            mark()
            alpha = feather_alpha(region, 0.035 * size)
            mark()
            colour = seamless_blend(torch.where(region > 0.5, generated, crops), crops, plan)
            mark()
            paste_crops(frame, colour, alpha, matrices)
            mark()
            out_host.copy_(frame.round().clamp(0, 255).to(torch.uint8).permute(1, 2, 0), non_blocking=True)
            mark()
            if repeat >= 2:  # the first calls pay for cuDNN/cuBLAS handles and allocations
                for name, a, b in zip(stages, marks, marks[1:]):
                    stages[name].append((b - a) * 1e3)
        results[str(count)] = {name: round(float(np.median(v)), 3) for name, v in stages.items()}
        results[str(count)]["total"] = round(sum(results[str(count)].values()), 3)
        print(f"  gpu_warp {count} faces: {results[str(count)]}", flush=True)
    return results


def _clip(directory: Path, faces: int, frames: int):  # noqa: ANN001
    from sdgan_stream.samples import make_face_clip

    return make_face_clip(directory / f"faces{faces}_1080p.mp4", width=1920, height=1080, frames=frames, faces=faces,
                          seed=faces, audio=False)


def cpu_stages(config, state: dict, directory: Path, frames: int, backend_label: str) -> dict[str, Any]:  # noqa: ANN001
    import av

    from sdgan_stream.blend import paste_back
    from sdgan_stream.covers import apply_cover
    from sdgan_stream.detect import CenterFaceDetector
    from sdgan_stream.faceprep import FaceFallback, masked_input, prepare_faces
    from sdgan_stream.landmarks import LandmarkDetector
    from sdgan_stream.models.identity import identity_codes
    from sdgan_stream.semantic import one_hot
    from sdgan_stream.types import Face

    backend = state.get("backends", {}).get(backend_label)
    detector = CenterFaceDetector(threshold=0.4, detect_size=(960, 960))
    landmarker = LandmarkDetector()
    results: dict[str, Any] = {"detector_provider": detector.provider, "generator": backend_label}
    for count in FACE_COUNTS:
        clip = _clip(directory, count, frames)
        timings: dict[str, list[float]] = {k: [] for k in ("decode", "detect", "prepare", "generate", "paste", "blur_cover")}
        served = 0
        with av.open(str(clip.path)) as container:
            decoded = container.decode(container.streams.video[0])
            for index in range(min(12, frames)):
                t0 = time.perf_counter()
                image = next(decoded).to_ndarray(format="rgb24")
                t1 = time.perf_counter()
                detections = detector.detect(image)
                t2 = time.perf_counter()
                faces = [Face(box=detections.boxes[i], score=float(detections.scores[i]), landmarks=detections.landmarks[i],
                              identity_seed=i) for i in range(len(detections))]
                prepared = [p for p in prepare_faces(image, faces, landmarker=landmarker, size=config.image_size)
                            if not isinstance(p, FaceFallback)]
                t3 = time.perf_counter()
                if prepared and backend is not None:
                    masked = np.stack([masked_input(p) for p in prepared]).transpose(0, 3, 1, 2).astype(np.float32) / 127.5 - 1
                    semantic = np.stack([one_hot(p.labels, config.label_nc) for p in prepared])
                    identity = identity_codes([p.face.identity_seed for p in prepared], config.identity_dim)
                    out = backend.generate(masked, semantic, identity)
                    crops = np.clip((out.transpose(0, 2, 3, 1) + 1) * 127.5 + 0.5, 0, 255).astype(np.uint8)
                else:
                    crops = [p.crop for p in prepared]
                t4 = time.perf_counter()
                for p, crop in zip(prepared, crops):
                    paste_back(image, crop, p)
                t5 = time.perf_counter()
                for face in faces:  # what --method blur does instead of prepare + generate + paste
                    apply_cover(image, face.box, method="blur", margin=0.25)
                t6 = time.perf_counter()
                served = max(served, len(prepared))
                if index >= 2:
                    for name, a, b in zip(timings, (t0, t1, t2, t3, t4, t5), (t1, t2, t3, t4, t5, t6)):
                        timings[name].append((b - a) * 1e3)
        row = {name: round(float(np.median(v)), 2) for name, v in timings.items()}
        row["faces_served"] = served
        results[str(count)] = row
        print(f"  stages {count} faces: {row}", flush=True)
    return results


def end_to_end(directory: Path, frames: int, backend: str, budget: Budget) -> dict[str, Any]:
    from sdgan_stream import anonymize_video
    from sdgan_stream.io.sink import choose_h264_encoder

    results: dict[str, Any] = {"backend": backend, "video_encoder": choose_h264_encoder("yuv420p")}
    for count in FACE_COUNTS:
        clip = _clip(directory, count, frames)
        for method in ("blur", "sdgan"):
            for parallel in (False, True):
                key = f"{method}_{'parallel' if parallel else 'serial'}_{count}"
                if budget.left() < 30:
                    results[key] = {"skipped": "time budget"}
                    continue
                extra = {"backend": backend, "device": DEVICE} if method == "sdgan" else {}
                report = anonymize_video(clip.path, directory / f"out_{key}.mp4", method=method, seed=0, parallel=parallel, **extra)
                results[key] = {"frames": report.frames, "seconds": round(report.seconds, 2), "fps": round(report.fps, 2),
                                "stats": report.stats}
                print(f"  end-to-end {key}: {report.fps:.1f} fps ({report.frames} frames)", flush=True)
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    default_out = Path(os.environ["OUT"]) / "gpu_check.json" if os.environ.get("OUT") else ROOT / "benchmarks" / "results" / "gpu_check.json"
    parser.add_argument("--out", type=Path, default=default_out, help=f"JSON output (default: {default_out})")
    parser.add_argument("--budget", type=float, default=280.0, help="seconds for the whole check (default: 280)")
    parser.add_argument("--frames", type=int, default=40, help="frames per synthetic 1080p clip (default: 40)")
    parser.add_argument("--e2e-backend", default="eager", help="generator backend for the end-to-end runs (default: eager, "
                        "no compile/build wait; 'auto' picks tensorrt or compile)")
    parser.add_argument("--device", choices=("cuda", "cpu"), default="cuda",
                        help="cpu: dry-run every section on the CPU to check this script before spending GPU time")
    args = parser.parse_args(argv)
    global DEVICE
    DEVICE = args.device
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    budget = Budget(args.budget)

    import torch

    report: dict[str, Any] = {"command": " ".join([Path(sys.executable).name, *sys.argv]), "started": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    if DEVICE == "cuda" and not torch.cuda.is_available():
        message = f"no CUDA GPU visible to torch {torch.__version__} (CUDA build: {torch.version.cuda}); nothing to check here"
        print(f"gpu_check: {message}", file=sys.stderr)
        report["skipped"] = message
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(report, indent=1) + "\n")
        return 2
    torch.backends.cudnn.benchmark = DEVICE == "cuda"  # fixed bucket shapes: let cuDNN pick its fastest kernels once
    mode = _import_package()
    generator, config, weights = _generator()
    report["weights"] = weights
    report["config"] = config.to_dict()
    state: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="gpu_check_") as tmp:
        directory = Path(tmp)
        _section(report, "environment", budget, 0, environment, mode)
        _section(report, "parity", budget, 60, parity, generator, config, state)
        _section(report, "gpu_warp", budget, 20, gpu_warp_stages, config)
        stage_backend = "eager-fp16" if DEVICE == "cuda" else "onnxruntime-fp32"
        _section(report, "stages", budget, 40, cpu_stages, config, state, directory, args.frames, stage_backend)
        _section(report, "end_to_end", budget, 40, end_to_end, directory, args.frames, args.e2e_backend, budget)
        _section(report, "generator", budget, 60, generator_speed, config, state, budget)
    report["seconds"] = round(budget.elapsed(), 1)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=1, default=str) + "\n")
    print(f"wrote {args.out} after {report['seconds']} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
