"""Soak benchmark: RTSP in -> ``run_rtsp_filter`` -> RTSP out -> viewer, for minutes, one row a minute.

A clip of real faces (frame index stamped in a corner) is served at real-time pace by the GStreamer
RTSP test server on 127.0.0.1 (tests/rtsp_server.py, system python): a 2-minute clip repeated, packets
copied, into one file long enough for the whole run. The filter (in this process) anonymizes it and
publishes to a second server, which relays it to a viewer in a separate process that checks every
frame it receives against the clip's ground truth (no face visible) and notes when it arrived.

Each minute: the filter process's resident memory (RSS, from /proc), its threads and open file
descriptors, frames in (captured from the input) and out (distinct anonymized frames published),
stale input frames dropped (newest-frame policy), fill frames, latency capture -> publish p50/p99,
and the frames the viewer received in that minute. Flat RSS and threads over the rows = no leak.

Run (in the background, it takes the minutes asked for plus ~1 minute to set up):
``OMP_NUM_THREADS=1 nohup .venv/bin/python benchmarks/bench_soak.py --minutes 10 > soak.log 2>&1 &``
Writes ``benchmarks/results/soak.json``; needs the GStreamer RTSP server (see tests/rtsp_server.py).
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import multiprocessing
import os
import platform
import sys
import tempfile
import threading
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.live_support import (  # noqa: E402
    leak_correlation,
    IndexedClip,
    RtspServer,
    checker_process,
    gst_rtsp_missing,
    make_indexed_clip,
    repeat_clip,
    wait_until_viewed,
)

log = logging.getLogger("bench_soak")
CLIP_SECONDS = 120


def rss_mib() -> float:
    """Resident memory of this process (the filter), MiB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def open_descriptors() -> int:
    return len(os.listdir("/proc/self/fd"))


def _ms(values: list[float], q: float) -> float | None:
    return round(float(np.percentile(values, q)) * 1000, 1) if values else None


def make_input(workdir: Path, width: int, height: int, fps: int, faces: int, repeats: int) -> tuple[IndexedClip, Path]:
    """The indexed clip (ground truth for the viewer) and the long input made of it."""
    clip = make_indexed_clip(workdir / "faces.mp4", width=width, height=height, frames=fps * CLIP_SECONDS, fps=fps, faces=faces)
    return clip, repeat_clip(clip.path, workdir / "long.mp4", repeats)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--minutes", type=float, default=10.0, help="length of the measured run")
    parser.add_argument("--width", type=int, default=640)
    parser.add_argument("--height", type=int, default=360)
    parser.add_argument("--fps", type=int, default=25)
    parser.add_argument("--faces", type=int, default=2)
    parser.add_argument("--method", default=None, help="anonymization method (default: the options default)")
    parser.add_argument("--detect-size", default=None, help="detector input budget WxH (default: the options default)")
    parser.add_argument("--json", type=Path, default=ROOT / "benchmarks" / "results" / "soak.json")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    reason = gst_rtsp_missing()
    if reason:
        print(f"error: {reason}", file=sys.stderr)
        return 1

    from sdgan_stream.config import AnonymizeOptions, parse_size
    from sdgan_stream.live import LiveComponents, run_rtsp_filter

    overrides: dict[str, Any] = {}
    if args.method:
        overrides["method"] = args.method
    if args.detect_size:
        overrides["detect_size"] = parse_size(args.detect_size)
    options = AnonymizeOptions(**overrides)

    workdir = Path(tempfile.mkdtemp(prefix="bench_soak_"))
    made = time.monotonic()
    # long enough for set-up, the run and the wind-down without the input ending
    repeats = math.ceil((args.minutes * 60 + 120) / CLIP_SECONDS)
    # Made in a child process: composing the clip costs this process ~0.2 MB a frame that the allocator
    # keeps, which would hide the filter's own memory in the RSS rows.
    with ProcessPoolExecutor(max_workers=1, mp_context=multiprocessing.get_context("spawn")) as pool:
        clip, long_clip = pool.submit(make_input, workdir, args.width, args.height, args.fps, args.faces, repeats).result()
    print(f"clip: {args.width}x{args.height} {args.fps} fps, {CLIP_SECONDS} s x {repeats}, {args.faces} faces ({time.monotonic() - made:.0f} s to make)", file=sys.stderr)

    source = RtspServer(long_clip, log_path=workdir / "input.log").start()
    sink = RtspServer(log_path=workdir / "output.log").start()
    parts: dict[str, LiveComponents] = {}
    outcome: dict[str, Any] = {}
    stop = threading.Event()

    def run_filter() -> None:
        try:
            outcome["report"] = run_rtsp_filter(
                source.url("test"), sink.url("pub"), options=options, stop_event=stop, stats_interval=0,
                on_start=lambda p: parts.setdefault("parts", p),
            )
        except BaseException as error:  # reported below
            outcome["error"] = error

    ctx = multiprocessing.get_context("spawn")
    ready, reader_stop, results = ctx.Event(), ctx.Event(), ctx.Queue()
    threshold = leak_correlation(options.method)  # a generated face keeps the pose and outline: it may correlate more
    reader = ctx.Process(target=checker_process, args=(sink.url("view"), str(clip.path), clip.face_boxes, threshold, ready, reader_stop, results), daemon=True)
    filter_thread = threading.Thread(target=run_filter, name="filter", daemon=True)
    filter_thread.start()
    rows: list[dict[str, Any]] = []
    result = None
    try:
        p = wait_until_viewed(parts, outcome, reader, ready, 300)
        publisher = p.publisher
        started = time.monotonic()
        last = (started, p.source.stats.captured, publisher.stats.fresh, p.processor.dropped, publisher.stats.repeated + publisher.stats.neutral)
        for minute in range(1, math.ceil(args.minutes) + 1):
            end = started + min(minute, args.minutes) * 60
            while time.monotonic() < end and "error" not in outcome:
                time.sleep(0.5)
            if "error" in outcome:
                raise outcome["error"]
            now = time.monotonic()
            counts = (now, p.source.stats.captured, publisher.stats.fresh, p.processor.dropped, publisher.stats.repeated + publisher.stats.neutral)
            latencies = [lat for sent, lat in list(publisher.stats.latencies) if last[0] <= sent <= now]
            span = now - last[0]
            row = {
                "minute": minute,
                "rss_mib": round(rss_mib(), 1),
                "threads": threading.active_count(),
                "open_fds": open_descriptors(),
                "frames_in": counts[1] - last[1],
                "frames_out": counts[2] - last[2],
                "out_over_in": round((counts[2] - last[2]) / max(counts[1] - last[1], 1), 3),
                "input_fps": round((counts[1] - last[1]) / span, 2),
                "output_fps": round((counts[2] - last[2]) / span, 2),
                "dropped_stale": counts[3] - last[3],
                "fill_frames": counts[4] - last[4],
                "latency_ms_p50": _ms(latencies, 50),
                "latency_ms_p99": _ms(latencies, 99),
                "window": [round(last[0] - started, 1), round(now - started, 1)],
                "reconnects": p.source.stats.reconnects,
            }
            rows.append(row)
            print(json.dumps(row), file=sys.stderr, flush=True)
            last = counts
    finally:
        reader_stop.set()
        stop.set()
        filter_thread.join(120)
        try:
            result = results.get(timeout=120)
        except Exception:  # the reader died: the rows still stand
            result = None
        reader.join(10)
        if reader.is_alive():
            reader.kill()
        source.stop()
        sink.stop()
    if "error" in outcome:
        raise outcome["error"]
    if result is not None:  # frames the viewer received in each row's window
        base = started
        for row in rows:
            lo, hi = base + row["window"][0], base + row["window"][1]
            row["viewer_frames"] = sum(lo <= t < hi for t in result.arrivals)
            row["viewer_share_of_input"] = round(row["viewer_frames"] / max(row["frames_in"], 1), 3)
    report = outcome.get("report")
    p99s = [r["latency_ms_p99"] for r in rows if r["latency_ms_p99"] is not None]
    summary = {
        "rss_mib_minute_1": rows[0]["rss_mib"] if rows else None,
        "rss_mib_last_minute": rows[-1]["rss_mib"] if rows else None,
        "rss_growth_mib": round(rows[-1]["rss_mib"] - rows[0]["rss_mib"], 1) if rows else None,
        "threads_first_last": [rows[0]["threads"], rows[-1]["threads"]] if rows else None,
        "latency_ms_p99_worst_minute": max(p99s) if p99s else None,
        "latency_ms_p50_median_minute": float(np.median([r["latency_ms_p50"] for r in rows if r["latency_ms_p50"] is not None])) if rows else None,
        "frames_in": sum(r["frames_in"] for r in rows),
        "frames_out": sum(r["frames_out"] for r in rows),
        "viewer": None if result is None else {
            "frames": result.frames, "distinct": result.distinct, "repeats": result.repeats, "neutral": result.neutral,
            "unknown": result.unknown, "faces_checked": result.faces_checked, "faces_leaked": result.faces_leaked,
            "worst_correlation": round(result.worst_correlation, 3), "leak_threshold": threshold,
        },
        "filter_report": None if report is None else {
            "frames_in": report.frames_in, "frames_out": report.frames_out, "frames_dropped": report.frames_dropped,
            "reconnects": report.reconnects, "latency_ms_p50": report.latency_ms_p50, "latency_ms_p99": report.latency_ms_p99,
        },
    }
    out = {
        "benchmark": "soak",
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "python": platform.python_version(),
                    "load_average_end": [round(v, 2) for v in os.getloadavg()]},
        "options": {"method": options.method, "detect_size": options.detect_size, "track": options.track},
        "clip": {"width": args.width, "height": args.height, "fps": args.fps, "faces": args.faces},
        "minutes": rows,
        "summary": summary,
    }
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(out, indent=2, default=str))
    print(json.dumps(summary, indent=1, default=str), file=sys.stderr)
    print(f"wrote {args.json}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
