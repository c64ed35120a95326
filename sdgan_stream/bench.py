"""Speed of sdgan-stream (and of deface, on the same clips): per-stage latency, end-to-end fps, peak memory.

For every (resolution, face count) a synthetic clip of real faces is written (:func:`make_face_clip`,
no audio) and measured by child processes, so that each configuration's peak memory is its own:

1. **end to end**: a child runs :func:`sdgan_stream.anonymize_video` on the clip (method ``sdgan`` when
   the generator renderer is installed, else ``blur``; tracking when the tracker is installed; both are
   recorded). ``fps`` is the pipeline's own rate (frames / seconds from the first decoded frame to the
   file closed: model loading excluded); ``wall_fps`` divides by the child's whole lifetime (imports,
   model loading included). Peak memory is the child's peak resident set (``ru_maxrss`` from
   ``os.wait4``, so descendants it waited for count by their own peak, not added).
2. **stages**: another child runs each stage by itself, one after the other, on every frame of the clip:
   decode (VideoFileSource), detect (CenterFace), track (FaceTracker), landmarks + map
   (``faceprep.prepare_faces``), generate, paste (``blend.paste_back``), encode (VideoFileSink). A stage
   whose module is not installed yet is reported ``n/a`` with the reason. Generate is the renderer's
   batched generator call (``SdganRenderer.generate_crops``: network inputs, backend, composite; or,
   without it, ``render()`` minus the landmark and paste stages) when the method is sdgan, else one
   batched eager forward of the packaged generator per frame (the result says which). Each stage runs once
   on the first frame before timing (model warm-up).
3. **deface** (``--compare deface``): the ``deface`` command on the same clip with the same encoder
   settings (libx264 veryfast crf 20); ``fps`` from its own progress bar (model loading excluded, like
   ours), ``wall_fps`` from its lifetime; peak memory as above. ``fps_ratio`` = ours / deface.

The stages run in sequence on one thread, so their sum is not the end-to-end time: the pipeline decodes
and encodes on threads beside the face stages.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import json
import logging
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

log = logging.getLogger(__name__)

__all__ = [
    "RESOLUTIONS",
    "STAGES",
    "BenchConfig",
    "add_bench_parser",
    "deface_command",
    "parse_faces",
    "parse_progress_rate",
    "parse_resolutions",
    "render_markdown",
    "resolve_method",
    "run_bench",
    "run_child",
    "write_plot",
]

RESOLUTIONS: dict[str, tuple[int, int]] = {
    "240p": (426, 240),
    "360p": (640, 360),
    "480p": (854, 480),
    "720p": (1280, 720),
    "1080p": (1920, 1080),
    "1440p": (2560, 1440),
    "2160p": (3840, 2160),
}
STAGES: tuple[str, ...] = ("decode", "detect", "track", "landmarks_map", "generate", "paste", "encode")
# Same encoder settings as sdgan-stream's defaults (AnonymizeOptions: libx264, veryfast, crf 20);
# quality=None stops imageio from adding its own -crf, macro_block_size=1 keeps the exact frame size.
DEFACE_FFMPEG_CONFIG = {"codec": "libx264", "quality": None, "macro_block_size": 1, "ffmpeg_params": ["-preset", "veryfast", "-crf", "20"]}
_TQDM_RATE = re.compile(r"(\d+)/(\d+) \[[^\]<]*<[^\],]*,\s*([\d.]+)\s*(it/s|s/it)")


@dataclasses.dataclass(frozen=True)
class BenchConfig:
    resolution: str
    width: int
    height: int
    faces: int
    frames: int

    @property
    def name(self) -> str:
        return f"{self.resolution}_{self.faces}f"


def parse_resolutions(text: str) -> list[tuple[str, int, int]]:
    """'480p,720p,1280x720' -> [(name, width, height), ...]."""
    out = []
    for item in (t.strip().lower() for t in text.split(",") if t.strip()):
        if item in RESOLUTIONS:
            out.append((item, *RESOLUTIONS[item]))
            continue
        match = re.fullmatch(r"(\d+)x(\d+)", item)
        if not match:
            raise ValueError(f"unknown resolution {item!r}; use {', '.join(RESOLUTIONS)} or WIDTHxHEIGHT")
        width, height = int(match[1]), int(match[2])
        if width < 64 or height < 64 or width % 2 or height % 2:
            raise ValueError(f"resolution must be even and at least 64x64, got {item!r}")
        out.append((item, width, height))
    if not out:
        raise ValueError("no resolution given")
    return out


def parse_faces(text: str) -> list[int]:
    try:
        faces = [int(t) for t in text.split(",") if t.strip()]
    except ValueError:
        raise ValueError(f"face counts must be integers like 1,4,16, got {text!r}") from None
    if not faces or min(faces) < 1:
        raise ValueError(f"face counts must be >= 1, got {text!r}")
    return faces


def _available(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except ModuleNotFoundError:
        return False


def resolve_method(method: str | None, backend: str) -> tuple[str, str | None]:
    """The method to benchmark and, when it is not the one asked for, why.

    ``None`` means sdgan when its renderer can be built here (generator, backend, landmarks), else
    blur: a stand-in that runs through the same pipeline, so the numbers stay comparable.
    """
    if method is not None:
        return method, None
    try:
        from .api import build_renderer
        from .config import AnonymizeOptions

        build_renderer(AnonymizeOptions(method="sdgan", backend=backend))
    except Exception as error:  # noqa: BLE001 - any failure means: not usable here; the reason is reported
        reason = str(error).splitlines()[0] if str(error) else type(error).__name__
        return "blur", f"the sdgan renderer cannot be built here ({type(error).__name__}: {reason}): end to end runs blur"
    return "sdgan", None


def tracking_available() -> bool:
    return _available("sdgan_stream.track") and _available("sdgan_stream.lookback")


# -- child processes --------------------------------------------------------------------------
@dataclasses.dataclass
class ChildRun:
    returncode: int
    wall_seconds: float
    peak_rss_mb: float
    cpu_seconds: float
    stderr: str
    timed_out: bool = False


def run_child(command: Sequence[str], *, timeout: float, env: dict[str, str] | None = None) -> ChildRun:
    """Run ``command``; wall time, peak RSS and CPU time of the child from ``os.wait4`` (Unix)."""
    with tempfile.TemporaryFile(mode="w+") as err:
        started = time.perf_counter()
        process = subprocess.Popen(list(command), stdout=subprocess.DEVNULL, stderr=err, env=env)
        timed_out = threading.Event()

        def kill() -> None:
            timed_out.set()
            process.kill()

        timer = threading.Timer(timeout, kill)
        timer.start()
        try:
            _, status, usage = os.wait4(process.pid, 0)
        finally:
            timer.cancel()
        wall = time.perf_counter() - started
        process.returncode = os.waitstatus_to_exitcode(status)
        err.seek(0)
        stderr = err.read()
    return ChildRun(
        returncode=process.returncode,
        wall_seconds=wall,
        peak_rss_mb=usage.ru_maxrss / 1024.0,  # Linux reports KiB
        cpu_seconds=usage.ru_utime + usage.ru_stime,
        stderr=stderr,
        timed_out=timed_out.is_set(),
    )


def _worker_command(kind: str, job: dict[str, Any]) -> list[str]:
    return [sys.executable, "-m", "sdgan_stream.bench", kind, json.dumps(job)]


def _tail(text: str, lines: int = 8) -> str:
    return "\n".join(text.strip().splitlines()[-lines:])


# -- end to end (child) -----------------------------------------------------------------------
def _options(job: dict[str, Any], *, track: bool):
    from .config import AnonymizeOptions

    return AnonymizeOptions(method=job["method"], backend=job["backend"], track=track, seed=0, audio=False)


def _worker_end_to_end(job: dict[str, Any]) -> dict[str, Any]:
    from .api import anonymize_video

    track = job["track"]
    started = time.perf_counter()
    report = anonymize_video(job["clip"], job["output"], options=_options(job, track=track))
    return {
        "fps": report.fps,
        "pipeline_seconds": report.seconds,
        "setup_seconds": time.perf_counter() - started - report.seconds,
        "frames": report.frames,
        "stats": dict(report.stats),
    }


# -- stages (child) ---------------------------------------------------------------------------
class _StageTimer:
    def __init__(self) -> None:
        self.samples: dict[str, list[float]] = {}
        self.notes: dict[str, str] = {}
        self.unavailable: dict[str, str] = {}

    def time(self, stage: str, fn: Callable[[], Any]) -> Any:
        started = time.perf_counter()
        out = fn()
        self.samples.setdefault(stage, []).append(time.perf_counter() - started)
        return out

    def result(self, frames: int) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for stage in STAGES:
            if stage in self.unavailable:
                out[stage] = {"status": "n/a", "reason": self.unavailable[stage]}
                continue
            values = np.asarray(self.samples.get(stage, []), np.float64) * 1000.0
            if values.size == 0:
                out[stage] = {"status": "n/a", "reason": "not measured"}
                continue
            entry = {
                "status": "ok",
                "ms_per_frame": float(values.sum() / max(frames, 1)),
                "p95_ms": float(np.percentile(values, 95)),
                "calls": int(values.size),
            }
            if stage in self.notes:
                entry["note"] = self.notes[stage]
            out[stage] = entry
        return out


def _eager_generator() -> Callable[[list[Any]], list[np.ndarray]]:
    """One batched eager forward of the packaged generator per frame (used when no renderer exists)."""
    import torch

    from .models.bundle import load_generator_bundle
    from .models.identity import identity_codes
    from .semantic import one_hot

    generator, config, _ = load_generator_bundle(None)

    def generate(prepared: list[Any]) -> list[np.ndarray]:
        if not prepared:
            return []
        crops = np.stack([p.crop for p in prepared]).astype(np.float32) / 127.5 - 1.0
        region = np.stack([p.region_mask for p in prepared])[:, None]
        masked = torch.from_numpy(crops.transpose(0, 3, 1, 2) * (1.0 - region))
        semantic = torch.from_numpy(np.stack([one_hot(p.labels, config.label_nc) for p in prepared]))
        identity = torch.from_numpy(identity_codes([p.face.identity_seed for p in prepared], config.identity_dim))
        with torch.inference_mode():
            out = generator(masked, semantic, identity)
        images = ((out.numpy().transpose(0, 2, 3, 1) + 1.0) * 127.5).clip(0, 255).astype(np.uint8)
        return list(images)

    return generate


def _worker_stages(job: dict[str, Any]) -> dict[str, Any]:
    from .api import build_anonymizer
    from .io.sink import VideoFileSink
    from .io.source import VideoFileSource
    from .types import Face

    timer = _StageTimer()
    with VideoFileSource(job["clip"]) as source:
        info = source.info
        frames_iter = source.frames()
        frames = []
        while True:
            frame = timer.time("decode", lambda: next(frames_iter, None))
            if frame is None:
                timer.samples["decode"].pop()  # the end-of-stream call
                break
            frames.append(frame)
    images = [f.image for f in frames]
    n = len(images)

    # The product's own stage chain, built the way the product builds it (tracker included when present).
    track = job["track"]
    anonymizer = build_anonymizer(_options(job, track=track), info, renderer=_NullRenderer())
    detector = anonymizer.detector
    detector.detect(images[0])  # warm-up
    detections = [timer.time("detect", lambda im=im: detector.detect(im)) for im in images]

    tracker = anonymizer.tracker
    if tracker is None:
        timer.unavailable["track"] = job.get("track_reason") or "tracking disabled"
        faces_per_frame = []
        for d in detections:
            keep = d.select(d.scores >= anonymizer.display_threshold)
            faces_per_frame.append(
                [Face(box=keep.boxes[i], score=float(keep.scores[i]), landmarks=keep.landmarks[i], source="untracked") for i in range(len(keep))]
            )
    else:
        faces_per_frame = [timer.time("track", lambda d=d: tracker.update(d)) for d in detections]

    prepared_per_frame: list[list[Any]] = [[] for _ in images]
    try:
        from .faceprep import PreparedFace, prepare_faces
        from .landmarks import LandmarkDetector
    except ImportError as error:
        for stage in ("landmarks_map", "generate", "paste"):
            timer.unavailable[stage] = f"faceprep/landmarks not installed ({error})"
    else:
        landmarker = LandmarkDetector()
        prepare_faces(images[0], faces_per_frame[0], landmarker=landmarker)  # warm-up
        for i, (image, faces) in enumerate(zip(images, faces_per_frame)):
            out = timer.time("landmarks_map", lambda image=image, faces=faces: prepare_faces(image, faces, landmarker=landmarker))
            prepared_per_frame[i] = [p for p in out if isinstance(p, PreparedFace)]

    generated_per_frame: list[list[np.ndarray]] = [[] for _ in images]
    if "generate" not in timer.unavailable:
        if job["method"] == "sdgan":
            from .api import build_renderer

            renderer = build_renderer(_options(job, track=track))
            batch = getattr(renderer, "batch_size", 16)
            generate_crops = getattr(renderer, "generate_crops", None)
            backend = getattr(renderer, "backend", None)
            where = f"backend {getattr(backend, 'name', job['backend'])} on {getattr(backend, 'device', '?')}"
            if generate_crops is not None:
                # The renderer's own batched call (network inputs, backend, composite), in its batch size.
                def generate(prepared: list[Any]) -> list[np.ndarray]:
                    out: list[np.ndarray] = []
                    for start in range(0, len(prepared), batch):
                        out.extend(generate_crops(prepared[start : start + batch]))
                    return out

                generate(prepared_per_frame[0])  # warm-up
                for i, prepared in enumerate(prepared_per_frame):
                    generated_per_frame[i] = timer.time("generate", lambda p=prepared: generate(p))
                timer.notes["generate"] = f"{type(renderer).__name__}.generate_crops, {where}"
            else:
                # No separate generator call exposed: the whole render() minus this table's landmarks and paste.
                renderer.render(images[0].copy(), faces_per_frame[0])  # warm-up
                for image, faces in zip(images, faces_per_frame):
                    timer.time("_render", lambda image=image, faces=faces: renderer.render(image.copy(), faces))
                timer.notes["generate"] = f"{type(renderer).__name__}.render minus landmarks_map and paste (derived), {where}"
        else:
            try:
                generate = _eager_generator()
            except Exception as error:  # torch or the weights missing: say so instead of failing the bench
                timer.unavailable["generate"] = f"generator not loadable ({error})"
            else:
                generate(prepared_per_frame[0])  # warm-up
                for i, prepared in enumerate(prepared_per_frame):
                    generated_per_frame[i] = timer.time("generate", lambda p=prepared: generate(p))
                timer.notes["generate"] = "eager forward of the packaged generator, batched per frame (no renderer installed; --backend not used)"

    if "paste" not in timer.unavailable:
        try:
            from .blend import paste_back
        except ImportError as error:
            timer.unavailable["paste"] = f"blend not installed ({error})"
        else:
            for image, prepared, generated in zip(images, prepared_per_frame, generated_per_frame):
                canvas = image.copy()
                crops = generated or [p.crop[:, ::-1].copy() for p in prepared]  # a stand-in face of the same cost

                def paste(canvas=canvas, prepared=prepared, crops=crops) -> None:
                    for p, crop in zip(prepared, crops):
                        paste_back(canvas, crop, p)

                timer.time("paste", paste)

    if "_render" in timer.samples:
        lm = timer.samples.get("landmarks_map", [0.0] * n)
        pa = timer.samples.get("paste", [0.0] * n)
        timer.samples["generate"] = [max(r - a - b, 0.0) for r, a, b in zip(timer.samples.pop("_render"), lm, pa)]

    sink = VideoFileSink(job["output"], info)
    try:
        for frame in frames:
            timer.time("encode", lambda frame=frame: sink.write(frame))
    finally:
        timer.time("encode", lambda: sink.close())
    return {"stages": timer.result(n), "frames": n, "faces_prepared": sum(len(p) for p in prepared_per_frame)}


class _NullRenderer:
    """Stands in for the renderer when only the detector and tracker of the stage chain are wanted."""

    name = "none"

    def render(self, image: np.ndarray, faces: Sequence[Any]) -> list[Any]:  # pragma: no cover - never called
        return []


# -- deface -----------------------------------------------------------------------------------
def deface_executable() -> str | None:
    beside = Path(sys.executable).with_name("deface")
    return str(beside) if beside.is_file() else shutil.which("deface")


def deface_command(clip: Path, output: Path, extra: Sequence[str] = ()) -> list[str]:
    exe = deface_executable()
    if exe is None:
        raise FileNotFoundError("the 'deface' command is not installed (pip install deface)")
    return [exe, str(clip), "-o", str(output), "--ffmpeg-config", json.dumps(DEFACE_FFMPEG_CONFIG), *extra]


def parse_progress_rate(stderr: str) -> float | None:
    """Frames per second from the last tqdm progress line deface printed (its processing loop only)."""
    matches = _TQDM_RATE.findall(stderr.replace("\r", "\n"))
    if not matches:
        return None
    done, total, rate, unit = matches[-1]
    if int(done) != int(total) or float(rate) <= 0:
        return None
    return float(rate) if unit == "it/s" else 1.0 / float(rate)


def _run_deface(clip: Path, output: Path, frames: int, *, extra: Sequence[str], timeout: float, env: dict[str, str] | None) -> dict[str, Any]:
    command = deface_command(clip, output, extra)
    run = run_child(command, timeout=timeout, env=env)
    entry: dict[str, Any] = {"command": " ".join(command[:1] + ["CLIP", "-o", "OUT"] + command[4:])}
    if run.returncode != 0 or not output.is_file():
        entry.update(status="failed", error=_tail(run.stderr))
        return entry
    fps = parse_progress_rate(run.stderr)
    entry.update(
        status="ok",
        fps=fps,
        wall_seconds=run.wall_seconds,
        wall_fps=frames / run.wall_seconds,
        peak_rss_mb=run.peak_rss_mb,
        cpu_seconds=run.cpu_seconds,
    )
    if fps is None:
        entry["note"] = "no progress rate in deface's output: fps is the wall rate"
        entry["fps"] = entry["wall_fps"]
    return entry


# -- the benchmark ----------------------------------------------------------------------------
def machine_info() -> dict[str, Any]:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    memory_gb = None
    try:
        memory_gb = round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1)
    except (ValueError, OSError, AttributeError):
        pass
    versions = {}
    for name in ("onnxruntime", "av", "torch", "dlib", "deface", "numpy"):
        try:
            from importlib.metadata import version

            versions[name] = version("dlib-bin" if name == "dlib" else name)
        except Exception:  # noqa: BLE001 - a missing package is simply not listed
            continue
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "memory_gb": memory_gb,
        "platform": platform.platform(),
        "python": platform.python_version(),
        "versions": versions,
    }


def run_bench(
    configs: Sequence[BenchConfig],
    *,
    method: str | None = None,
    backend: str = "auto",
    compare: Sequence[str] = (),
    stages: bool = True,
    workdir: str | Path | None = None,
    keep: str | Path | None = None,
    deface_args: Sequence[str] = (),
    timeout: float = 1800.0,
    threads: int | None = None,
    seed: int = 0,
    on_result: Callable[[dict[str, Any]], None] | None = None,
) -> dict[str, Any]:
    """Measure every configuration; returns a JSON-ready dict (see the module docstring).

    ``keep`` saves each clip and both outputs there (``<res>_<faces>f{,_<method>,_deface}.mp4``).
    ``threads`` sets ``OMP_NUM_THREADS`` for every child (ours and deface alike); ``None`` leaves the
    libraries' defaults.
    """
    from .samples import make_face_clip

    method, method_note = resolve_method(method, backend)
    track = tracking_available()
    track_reason = None if track else "sdgan_stream.track / sdgan_stream.lookback not installed"
    results: dict[str, Any] = {
        "machine": machine_info(),
        "settings": {
            "method": method,
            "method_note": method_note,
            "backend": backend if method == "sdgan" else "n/a",
            "track": track,
            "track_note": track_reason,
            "compare": list(compare),
            "deface_ffmpeg_config": DEFACE_FFMPEG_CONFIG if "deface" in compare else None,
            "deface_args": list(deface_args),
            "threads": threads,
            "peak_memory": "ru_maxrss of the end-to-end child process (os.wait4)",
            "date": time.strftime("%Y-%m-%d %H:%M:%S %z"),
        },
        "configs": [],
    }
    env = None
    if threads is not None:
        env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    with tempfile.TemporaryDirectory(prefix="sdgan-bench-", dir=workdir) as tmp:
        folder = Path(keep) if keep is not None else Path(tmp)
        folder.mkdir(parents=True, exist_ok=True)
        for config in configs:
            entry: dict[str, Any] = dataclasses.asdict(config)
            entry["load_before"] = round(os.getloadavg()[0], 2)
            clip = folder / f"{config.name}.mp4"
            make_face_clip(clip, width=config.width, height=config.height, frames=config.frames, faces=config.faces, audio=False, seed=seed)
            job = {
                "clip": str(clip), "method": method, "backend": backend, "track": track, "track_reason": track_reason,
                "output": str(folder / f"{config.name}_{method}.mp4"),
            }
            entry["end_to_end"] = _run_worker("e2e", job, timeout=timeout, env=env)
            if stages:
                stage_job = dict(job, output=str(Path(tmp) / f"{config.name}_stages.mp4"))
                stage_result = _run_worker("stages", stage_job, timeout=timeout, env=env)
                if stage_result["status"] == "ok":
                    entry["stages"] = stage_result["stages"]
                else:
                    entry["stages"], entry["stages_error"] = {}, stage_result["error"]
            if "deface" in compare:
                entry["deface"] = _run_deface(clip, folder / f"{config.name}_deface.mp4", config.frames, extra=deface_args, timeout=timeout, env=env)
                ours, theirs = entry["end_to_end"], entry["deface"]
                if ours.get("status") == "ok" and theirs.get("status") == "ok":
                    entry["fps_ratio"] = ours["fps"] / theirs["fps"]
                    entry["wall_fps_ratio"] = ours["wall_fps"] / theirs["wall_fps"]
            entry["load_after"] = round(os.getloadavg()[0], 2)
            results["configs"].append(entry)
            log.info("bench %s done", config.name)
            if on_result is not None:
                on_result(entry)
    return results


def _run_worker(kind: str, job: dict[str, Any], *, timeout: float, env: dict[str, str] | None) -> dict[str, Any]:
    with tempfile.NamedTemporaryFile(suffix=".json", delete=False) as handle:
        result_path = Path(handle.name)
    try:
        run = run_child(_worker_command(kind, dict(job, result=str(result_path))), timeout=timeout, env=env)
        if run.returncode != 0 or result_path.stat().st_size == 0:
            reason = "timed out" if run.timed_out else _tail(run.stderr)
            return {"status": "failed", "error": reason}
        data = json.loads(result_path.read_text())
    finally:
        result_path.unlink(missing_ok=True)
    data["status"] = "ok"
    if kind == "e2e":
        data.update(
            wall_seconds=run.wall_seconds,
            wall_fps=data["frames"] / run.wall_seconds if run.wall_seconds > 0 else None,
            peak_rss_mb=run.peak_rss_mb,
            cpu_seconds=run.cpu_seconds,
            method=job["method"],
        )
    return data


# -- output -----------------------------------------------------------------------------------
def _cell(value: Any, digits: int = 1) -> str:
    if value is None:
        return "n/a"
    return f"{value:.{digits}f}"


def _per_frame_ms(run: dict[str, Any], frames: int) -> float | None:
    cpu = run.get("cpu_seconds")
    return cpu * 1000.0 / frames if cpu is not None and frames else None


def _last_line(text: str | None) -> str:
    lines = (text or "").strip().splitlines()
    return lines[-1] if lines else "unknown error"


def render_markdown(results: dict[str, Any]) -> str:
    settings, machine = results["settings"], results["machine"]
    has_deface = any("deface" in c for c in results["configs"])
    header = ["resolution", "faces", *[f"{s} ms" for s in STAGES], "fps", "wall fps", "CPU ms/frame", "peak MB"]
    if has_deface:
        header += ["deface fps", "deface wall fps", "deface CPU ms/frame", "deface peak MB", "fps ratio"]
    lines = [
        f"Machine: {machine['cpu']}, {machine['cores']} cores, {machine['memory_gb']} GiB, Python {machine['python']}; "
        f"method {settings['method']}, backend {settings['backend']}, tracking {'on' if settings['track'] else 'off'}, "
        f"threads {settings.get('threads') or 'library default'}; "
        f"{results['configs'][0]['frames'] if results['configs'] else 0} frames per clip; {settings['date']}.",
        "",
        "| " + " | ".join(header) + " |",
        "|" + "---|" * len(header),
    ]
    for c in results["configs"]:
        stages = c.get("stages", {})
        row = [c["resolution"], str(c["faces"])]
        for s in STAGES:
            st = stages.get(s, {})
            row.append(_cell(st.get("ms_per_frame")) if st.get("status") == "ok" else "n/a")
        e2e = c["end_to_end"]
        row += [_cell(e2e.get("fps")), _cell(e2e.get("wall_fps")), _cell(_per_frame_ms(e2e, c["frames"]), 0), _cell(e2e.get("peak_rss_mb"), 0)]
        if has_deface:
            d = c.get("deface", {})
            row += [
                _cell(d.get("fps")), _cell(d.get("wall_fps")), _cell(_per_frame_ms(d, c["frames"]), 0),
                _cell(d.get("peak_rss_mb"), 0), _cell(c.get("fps_ratio"), 2),
            ]
        lines.append("| " + " | ".join(row) + " |")
    notes = []
    for s in STAGES:
        reasons = {c.get("stages", {}).get(s, {}).get("reason") for c in results["configs"]} - {None}
        notes += [f"- {s}: n/a, {r}" for r in sorted(reasons)]
        stage_notes = {c.get("stages", {}).get(s, {}).get("note") for c in results["configs"]} - {None}
        notes += [f"- {s}: {n}" for n in sorted(stage_notes)]
    for key in ("method_note", "track_note"):
        if settings.get(key):
            notes.append(f"- {settings[key]}")
    failures = []
    for c in results["configs"]:
        where = f"- {c['resolution']} {c['faces']} faces"
        if c["end_to_end"].get("status") != "ok":
            failures.append(f"{where}: end to end failed: {_last_line(c['end_to_end'].get('error'))}")
        if c.get("stages_error"):
            failures.append(f"{where}: stage timing failed: {_last_line(c['stages_error'])}")
        if c.get("deface", {}).get("status") == "failed":
            failures.append(f"{where}: deface failed: {_last_line(c['deface'].get('error'))}")
    loads = [c[k] for c in results["configs"] for k in ("load_before", "load_after") if c.get(k) is not None]
    if loads:
        notes.append(
            f"- 1-minute load average around the runs: {min(loads):.1f}-{max(loads):.1f} on {machine['cores']} cores "
            "(above the core count, other processes were competing for the CPU)"
        )
    if notes or failures:
        lines += ["", *notes, *failures]
    lines += [
        "",
        "Stage columns: milliseconds per frame, each stage run alone in sequence. fps: frames / pipeline time "
        "(model loading excluded; deface: its progress bar's rate); wall fps: frames / the whole process's life; "
        "CPU ms/frame: the whole process's CPU time (all threads, start-up included) / frames; "
        "peak MB: the process's peak resident memory. fps ratio = sdgan-stream fps / deface fps.",
    ]
    return "\n".join(lines) + "\n"


def write_plot(results: dict[str, Any], path: str | Path) -> Path:
    """End-to-end fps per resolution and face count (deface dashed), and stage times per configuration."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    configs = results["configs"]
    fig, (ax_fps, ax_stage) = plt.subplots(1, 2, figsize=(13, 4.8))
    resolutions = list(dict.fromkeys(c["resolution"] for c in configs))
    xs = np.arange(len(resolutions))
    for faces in sorted({c["faces"] for c in configs}):
        rows = [c for c in configs if c["faces"] == faces]
        pos = [resolutions.index(c["resolution"]) for c in rows]
        ours = [c["end_to_end"].get("fps") or np.nan for c in rows]
        line = ax_fps.plot(pos, ours, marker="o", label=f"sdgan-stream ({results['settings']['method']}), faces: {faces}")[0]
        if any("deface" in c for c in rows):
            theirs = [c.get("deface", {}).get("fps") or np.nan for c in rows]
            ax_fps.plot(pos, theirs, marker="s", linestyle="--", color=line.get_color(), alpha=0.7, label=f"deface, faces: {faces}")
    ax_fps.set_xticks(xs, resolutions)
    ax_fps.set_ylim(bottom=0)
    ax_fps.set_ylabel("frames per second")
    ax_fps.set_title("End to end")
    ax_fps.grid(alpha=0.3)
    ax_fps.legend(fontsize=7)
    names = [f"{c['resolution']}\n{c['faces']}f" for c in configs]
    bottom = np.zeros(len(configs))
    for stage in STAGES:
        values = np.array([c.get("stages", {}).get(stage, {}).get("ms_per_frame") or 0.0 for c in configs])
        ax_stage.bar(names, values, bottom=bottom, label=stage)
        bottom += values
    ax_stage.set_ylabel("ms per frame (stages run alone)")
    ax_stage.set_title("Per stage")
    ax_stage.legend(fontsize=7)
    ax_stage.tick_params(axis="x", labelsize=7)
    machine = results["machine"]
    fig.suptitle(f"{machine['cpu']} ({machine['cores']} cores)", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


# -- command line -----------------------------------------------------------------------------
def add_bench_parser(subparsers: Any) -> None:
    """Register ``sdgan-stream bench``."""
    parser = subparsers.add_parser(
        "bench",
        help="per-stage latency, end-to-end fps and peak memory on synthetic clips of real faces",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
        description=(
            "Write a clip of real faces for every resolution x face count, anonymize it in a child process "
            "(end-to-end fps, peak memory), time every stage alone, and optionally run deface on the same clip."
        ),
    )
    parser.add_argument("--resolutions", default="480p,720p,1080p", help=f"comma-separated: {', '.join(RESOLUTIONS)} or WxH")
    parser.add_argument("--faces", default="1,4,16", help="comma-separated face counts")
    parser.add_argument("--frames", type=int, default=60, help="frames per clip")
    parser.add_argument("--method", default=None, help="anonymization method (default: sdgan when the renderer is installed, else blur)")
    parser.add_argument("--backend", default="auto", help="generator backend for --method sdgan")
    parser.add_argument("--compare", action="append", choices=("deface",), default=[], help="also run this tool on the same clips")
    parser.add_argument("--deface-args", default="", help="extra arguments for deface, e.g. '--scale 960x540'")
    parser.add_argument("--no-stages", action="store_true", help="skip the per-stage timings")
    parser.add_argument("--json", type=Path, default=None, help="write the results as JSON here")
    parser.add_argument("--markdown", type=Path, default=None, help="write the Markdown table here (always printed)")
    parser.add_argument("--plot", type=Path, default=None, help="write a PNG plot here")
    parser.add_argument("--keep", type=Path, default=None, metavar="DIR", help="keep the clips and outputs in DIR")
    parser.add_argument("--threads", type=int, default=None, help="OMP_NUM_THREADS for every measured process, deface included (default: the libraries' own)")
    parser.add_argument("--timeout", type=float, default=1800.0, help="seconds allowed per child run")
    parser.set_defaults(handler=_run_bench)


def _run_bench(args: argparse.Namespace) -> int:
    import shlex

    try:
        resolutions = parse_resolutions(args.resolutions)
        faces = parse_faces(args.faces)
    except ValueError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    if args.frames < 2:
        print("error: --frames must be at least 2", file=sys.stderr)
        return 2
    if args.method is not None:
        from .config import METHODS

        if args.method not in METHODS:
            print(f"error: unknown method {args.method!r}; choose from {', '.join(METHODS)}", file=sys.stderr)
            return 2
    if "deface" in args.compare and deface_executable() is None:
        print("error: --compare deface: the 'deface' command is not installed", file=sys.stderr)
        return 1
    configs = [BenchConfig(name, w, h, f, args.frames) for name, w, h in resolutions for f in faces]

    def progress(entry: dict[str, Any]) -> None:
        e2e = entry["end_to_end"]
        text = f"{entry['resolution']} {entry['faces']} faces: {_cell(e2e.get('fps'))} fps"
        if "deface" in entry:
            text += f", deface {_cell(entry['deface'].get('fps'))} fps"
        print(text, file=sys.stderr)

    results = run_bench(
        configs, method=args.method, backend=args.backend, compare=args.compare, stages=not args.no_stages,
        keep=args.keep, deface_args=shlex.split(args.deface_args), timeout=args.timeout, threads=args.threads,
        on_result=progress,
    )
    table = render_markdown(results)
    print(table)
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(results, indent=2) + "\n")
    if args.markdown is not None:
        args.markdown.parent.mkdir(parents=True, exist_ok=True)
        args.markdown.write_text(table)
    if args.plot is not None:
        write_plot(results, args.plot)
    failed = [c for c in results["configs"] if c["end_to_end"].get("status") != "ok"]
    return 1 if failed else 0


def _worker_main(argv: list[str]) -> int:
    """Entry point of the child processes: ``python -m sdgan_stream.bench {e2e|stages} JOB_JSON``."""
    kind, job = argv[0], json.loads(argv[1])
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    result = _worker_end_to_end(job) if kind == "e2e" else _worker_stages(job)
    Path(job["result"]).write_text(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(_worker_main(sys.argv[1:]))
