"""RTSP filter benchmark: local RTSP server -> sdgan-stream rtsp filter -> RTSP server -> reader.

A clip of real faces (640x360, 25 fps by default, frame index stamped in a corner) is served at real-time
pace by a GStreamer RTSP server on 127.0.0.1 (tests/rtsp_server.py, system python). The filter
(``run_rtsp_filter``, in this process) reads it, anonymizes, and publishes to a second server, which
relays it to a reader in a separate process. The reader checks every frame it receives against the
clip's ground-truth face boxes. Mid-run the input server is killed and restarted.

Measured (steady phase = before the restart):
- input fps, output fps (distinct anonymized frames published) and their ratio; reader fps, and the
  share of the input frames that reached the viewer (distinct frames, each checked: no face visible);
- frames dropped (newest-frame policy) and latency from capture to publish (p50/p95);
- leak rate at the reader: faces visible / faces checked (every frame, every true face);
- time to republish: from the restarted input server being ready to the first anonymized frame of
  the new input session (a) published by the filter and (b) received by the reader.

Run: ``.venv/bin/python benchmarks/bench_rtsp.py [--method pixelate] [--seconds 30] [--json PATH]``
(``--method`` may be repeated: each method gets its own run; needs the GStreamer RTSP server).
"""

from __future__ import annotations

import argparse
import json
import logging
import multiprocessing
import os
import platform
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.live_support import (  # noqa: E402
    leak_correlation,
    RtspServer,
    checker_process,
    gst_rtsp_missing,
    make_indexed_clip,
    wait_for,
    wait_until_viewed,
)

log = logging.getLogger("bench_rtsp")


def _cpu_seconds() -> float:
    import resource

    usage = resource.getrusage(resource.RUSAGE_SELF)  # this process: the filter (the reader is a child, counted apart)
    return usage.ru_utime + usage.ru_stime


def _percentiles(values: list[float]) -> dict[str, float | None]:
    if not values:
        return {"p50": None, "p95": None}
    return {"p50": round(float(np.percentile(values, 50)) * 1000, 1), "p95": round(float(np.percentile(values, 95)) * 1000, 1)}


def run_once(args: argparse.Namespace, method: str, detect_size: str | None, clip_path: Path, boxes: list, workdir: Path) -> dict[str, Any]:
    from sdgan_stream.config import AnonymizeOptions
    from sdgan_stream.live import LiveComponents, live_detector_threads, run_rtsp_filter

    from sdgan_stream.config import parse_pyramid, parse_size

    overrides: dict[str, Any] = {}
    if detect_size:
        overrides["detect_size"] = parse_size(detect_size)
    if args.rotation_every is not None:
        overrides["rotation_every"] = args.rotation_every
    if args.pyramid is not None:
        overrides["pyramid"] = parse_pyramid(args.pyramid)
    if args.parallel is not None:
        overrides["parallel"] = args.parallel
    options = AnonymizeOptions(method=method, track=not args.no_track, seed=0, **overrides)
    source = RtspServer(clip_path, log_path=workdir / f"{method}_input.log").start()
    sink = RtspServer(log_path=workdir / f"{method}_output.log").start()
    parts: dict[str, LiveComponents] = {}
    stop = threading.Event()
    lines: list[str] = []
    outcome: dict[str, Any] = {}

    def run_filter() -> None:
        try:
            outcome["report"] = run_rtsp_filter(
                source.url("test"), sink.url("pub"), options=options, stop_event=stop, stats_interval=5.0,
                on_stats=lines.append, on_start=lambda p: parts.setdefault("parts", p),
            )
        except BaseException as error:
            outcome["error"] = error

    ctx = multiprocessing.get_context("spawn")
    reader_ready, reader_stop, reader_results = ctx.Event(), ctx.Event(), ctx.Queue()
    threshold = leak_correlation(method)
    reader = ctx.Process(target=checker_process, args=(sink.url("view"), str(clip_path), boxes, threshold, reader_ready, reader_stop, reader_results), daemon=True)
    load_before = os.getloadavg()
    filter_thread = threading.Thread(target=run_filter, name="filter", daemon=True)
    started = time.monotonic()
    filter_thread.start()
    try:
        p = wait_until_viewed(parts, outcome, reader, reader_ready, 120)
        publisher = p.publisher
        time.sleep(args.warmup)  # settle: model warm-up, the reader catching up
        # -- steady phase --------------------------------------------------------------------
        t_a, cpu_a = time.monotonic(), _cpu_seconds()
        captured_a, fresh_a, dropped_a = p.source.stats.captured, publisher.stats.fresh, p.processor.dropped
        time.sleep(args.seconds)
        t_b, cpu_b = time.monotonic(), _cpu_seconds()
        captured_b, fresh_b, dropped_b = p.source.stats.captured, publisher.stats.fresh, p.processor.dropped
        latencies = [lat for sent, lat in list(publisher.stats.latencies) if t_a <= sent <= t_b]
        span = t_b - t_a
        # -- input restart --------------------------------------------------------------------
        fill_before = publisher.stats.repeated + publisher.stats.neutral
        source.stop()
        t_kill = time.monotonic()
        time.sleep(args.outage)
        source.start()
        t_back = source.ready_at or time.monotonic()
        wait_for(lambda: any(t >= t_back and kind == "fresh" for t, kind in list(publisher.stats.events)), 60, "publishing after the restart")
        first_fresh = min(t for t, kind in list(publisher.stats.events) if t >= t_back and kind == "fresh")
        time.sleep(args.after)
        fill_frames = publisher.stats.repeated + publisher.stats.neutral - fill_before
    finally:
        reader_stop.set()
        stop.set()
        filter_thread.join(60)
        try:
            result = reader_results.get(timeout=60)
        except Exception:
            result = None
        reader.join(10)
        if reader.is_alive():
            reader.kill()
        source.stop()
        sink.stop()
    if "error" in outcome:
        raise outcome["error"]
    report = outcome["report"]
    reader_distinct_steady = sum(t_a <= t <= t_b for t in result.arrivals) if result else None
    reader_repeats_steady = None
    if result is not None:  # frames the viewer got twice while the input was up (fill frames of a stall)
        reader_repeats_steady = result.repeats_between(t_a, t_b)
    reader_republish = None
    if result is not None and len(result.sessions) >= 2:
        reader_republish = round(result.sessions[-1] - t_back, 2)
    input_fps = (captured_b - captured_a) / span
    output_fps = (fresh_b - fresh_a) / span
    return {
        "method": method,
        "track": options.track,
        "detector_threads": live_detector_threads(options.parallel),
        "detect_size": list(options.detect_size) if options.detect_size else None,
        "rotation_every": options.rotation_every,
        "pyramid": list(options.pyramid),
        "parallel": options.parallel,
        "steady": {
            "seconds": round(span, 1),
            "input_fps": round(input_fps, 2),
            "output_fps": round(output_fps, 2),
            "output_over_input": round(output_fps / input_fps, 3) if input_fps else None,
            "reader_fps": round(reader_distinct_steady / span, 2) if reader_distinct_steady is not None else None,
            # input frames that reached the viewer, each a distinct anonymized frame (faces checked below)
            "viewer_share_of_input": round(reader_distinct_steady / (captured_b - captured_a), 3)
            if reader_distinct_steady is not None and captured_b > captured_a
            else None,
            "viewer_repeats": reader_repeats_steady,
            "frames_dropped": dropped_b - dropped_a,
            "latency_capture_to_publish_ms": _percentiles(latencies),
            # CPU the filter process used: cores busy, and CPU per published frame (what an idle
            # machine of the same speed would need: cores / cpu_ms_per_frame * 1000 = its fps ceiling)
            "cpu_cores_used": round((cpu_b - cpu_a) / span, 2),
            "cpu_ms_per_output_frame": round((cpu_b - cpu_a) / max(fresh_b - fresh_a, 1) * 1000, 1),
        },
        "restart": {
            "outage_seconds": round(t_back - t_kill, 2),
            "filter_republish_seconds": round(first_fresh - t_back, 2),
            "reader_republish_seconds": reader_republish,
            "fill_frames_during_outage": fill_frames,
            "reconnects": report.reconnects,
            "output_sessions": parts["parts"].publisher.stats.sessions if parts.get("parts") and parts["parts"].publisher else None,
        },
        "reader": None
        if result is None
        else {
            "frames": result.frames,
            "distinct": result.distinct,
            "repeats": result.repeats,
            "neutral": result.neutral,
            "unknown": result.unknown,
            "faces_checked": result.faces_checked,
            "faces_leaked": result.faces_leaked,
            "leak_rate": result.leak_rate,
            "leak_threshold": threshold,
            "worst_correlation": round(result.worst_correlation, 3),
            "first_leaks": result.leaks[:5],
        },
        "total": {
            "seconds": round(time.monotonic() - started, 1),
            "frames_in": report.frames_in,
            "frames_out": report.frames_out,
            "frames_dropped": report.frames_dropped,
            "anonymizer": report.stats,
        },
        "load_average_before": [round(v, 2) for v in load_before],
        "load_average_after": [round(v, 2) for v in os.getloadavg()],
        "stats_lines": lines[-6:],
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--method", action="append", default=None, help="anonymization method (repeatable; default: pixelate)")
    parser.add_argument("--no-track", action="store_true", help="detections only, no tracker")
    stages = parser.add_mutually_exclusive_group()
    stages.add_argument("--parallel", action="store_true", default=None,
                        help="analysis of the newest frame on its own thread while the last one is rendered (the default)")
    stages.add_argument("--serial", action="store_false", dest="parallel", help="one thread analyses and renders")
    parser.add_argument("--rotation-every", type=int, default=None, help="turned-face discovery spacing (default: the options default)")
    parser.add_argument("--pyramid", default=None, help="coarse detector passes, e.g. 0.5,0.25 or none (default: the options default)")
    parser.add_argument("--width", type=int, default=640)
    parser.add_argument("--height", type=int, default=360)
    parser.add_argument("--fps", type=int, default=25)
    parser.add_argument("--faces", type=int, default=2)
    parser.add_argument("--warmup", type=float, default=3.0, help="seconds before the steady phase")
    parser.add_argument("--seconds", type=float, default=30.0, help="steady phase length")
    parser.add_argument("--outage", type=float, default=3.0, help="how long the input server stays down")
    parser.add_argument("--after", type=float, default=10.0, help="seconds measured after the restart")
    parser.add_argument("--json", type=Path, default=ROOT / "benchmarks" / "results" / "rtsp.json")
    parser.add_argument("--detect-size", action="append", default=None, help="detector input budget WxH (repeatable; default: the options default)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    reason = gst_rtsp_missing()
    if reason:
        print(f"error: {reason}", file=sys.stderr)
        return 1
    methods = args.method or ["pixelate"]
    workdir = Path(tempfile.mkdtemp(prefix="bench_rtsp_"))
    # The input must not end by itself before the restart: start-up (model loading, the reader's ground
    # truth) takes up to ~20 s on a loaded machine before the steady phase begins.
    frames = int(args.fps * (args.warmup + args.seconds + 30))
    made = time.monotonic()
    clip = make_indexed_clip(workdir / "faces.mp4", width=args.width, height=args.height, frames=frames, fps=args.fps, faces=args.faces)
    print(f"clip: {args.width}x{args.height} {args.fps} fps, {frames} frames, {args.faces} faces ({time.monotonic() - made:.0f} s to make)", file=sys.stderr)
    runs = []
    configs = [(method, size) for method in methods for size in (args.detect_size or [None])]
    for method, detect_size in configs:
        print(f"running {method} (detect size {detect_size or 'default'}) ...", file=sys.stderr)
        run = run_once(args, method, detect_size, clip.path, clip.face_boxes, workdir)
        runs.append(run)
        print(json.dumps({k: run[k] for k in ("method", "detect_size", "steady", "restart")}, indent=1), file=sys.stderr)
        if run["reader"]:
            print(f"  reader: {run['reader']['faces_checked']} faces checked, {run['reader']['faces_leaked']} leaked", file=sys.stderr)
    out = {
        "benchmark": "rtsp",
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "python": platform.python_version()},
        "clip": {"width": args.width, "height": args.height, "fps": args.fps, "faces": args.faces, "frames": frames},
        "runs": runs,
    }
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(out, indent=2, default=str))
    print(f"wrote {args.json}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
