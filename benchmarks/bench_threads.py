"""Where the CPU goes: CPU time per thread and per frame of one file job, and how many cores it kept busy.

Makes the parallel benchmark's clip (``make_face_clip(width=1280, height=720, frames=200, faces=4, seed=11)``)
unless ``--clip`` is given, runs ``anonymize_video`` on it with the given options, and samples every thread's
CPU time from ``/proc/self/task`` (Linux) from the job's first frame to its end; Python threads are named
(``MainThread`` renders, ``sdgan-analyse`` detects and tracks, ``sdgan-ort`` is the generator's second
onnxruntime session, ``sdgan-encode`` / ``sdgan-decode``); threads started by native libraries keep their
process name (x264's encoder threads read ``python``).

Run: ``OMP_NUM_THREADS=1 python benchmarks/bench_threads.py --method sdgan [--serial] [--set NAME=VALUE ...]
[--renderer-set NAME=VALUE ...] [--out FILE]`` (``--set`` gives any other job option, e.g. ``--set seed=0``;
``--renderer-set`` an attribute of the renderer the options build, e.g. ``--renderer-set context_tolerance=0``;
values are read as JSON, else as text).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


class ThreadClock:
    """Samples the CPU seconds of every thread of this process every ``interval`` seconds."""

    def __init__(self, interval: float = 0.2) -> None:
        self.interval = interval
        self.seconds: dict[tuple[int, str], float] = {}  # (native id, name) -> last CPU seconds seen
        self._names: dict[int, str] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="thread-clock", daemon=True)

    def start(self) -> ThreadClock:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()
        self.sample()

    def sample(self) -> dict[tuple[int, str], float]:
        tick = os.sysconf("SC_CLK_TCK")
        self._names.update({t.native_id: t.name.split("_")[0] for t in threading.enumerate() if t.native_id})
        for tid in os.listdir("/proc/self/task"):
            try:
                name = self._names.get(int(tid)) or Path(f"/proc/self/task/{tid}/comm").read_text().strip()
                fields = Path(f"/proc/self/task/{tid}/stat").read_text().rsplit(")", 1)[1].split()
            except OSError:  # the thread ended between the listing and the read
                continue
            self.seconds[(int(tid), name)] = (int(fields[11]) + int(fields[12])) / tick  # utime + stime
        return dict(self.seconds)

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.sample()


def _option(text: str) -> tuple[str, object]:
    name, _, value = text.partition("=")
    try:
        return name, json.loads(value)
    except json.JSONDecodeError:
        return name, value


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clip", type=Path, help="a video to run on (default: the parallel benchmark's clip)")
    parser.add_argument("--frames", type=int, default=200)
    parser.add_argument("--method", default="sdgan")
    parser.add_argument("--serial", action="store_true", help="the serial pipeline (default: parallel)")
    parser.add_argument("--set", action="append", default=[], metavar="NAME=VALUE", help="another job option (repeatable)")
    parser.add_argument("--renderer-set", action="append", default=[], metavar="NAME=VALUE",
                        help="an attribute of the renderer (repeatable), e.g. context_tolerance=0")
    parser.add_argument("--out", type=Path, help="write the result as JSON here too")
    args = parser.parse_args(argv)
    options = dict(_option(text) for text in args.set)
    renderer_settings = dict(_option(text) for text in args.renderer_set)

    from sdgan_stream import anonymize_video
    from sdgan_stream.api import build_renderer, close_renderer
    from sdgan_stream.config import AnonymizeOptions
    from sdgan_stream.samples import make_face_clip

    renderer = None
    if renderer_settings:
        renderer = build_renderer(AnonymizeOptions(method=args.method, parallel=not args.serial, **options))
        for name, value in renderer_settings.items():
            if not hasattr(renderer, name):
                parser.error(f"the {args.method} renderer has no attribute {name!r}")
            setattr(renderer, name, value)

    with tempfile.TemporaryDirectory(prefix="bench_threads_") as tmp:
        clip = args.clip or make_face_clip(Path(tmp) / "clip.mp4", width=1280, height=720, frames=args.frames, faces=4, seed=11).path
        clock = ThreadClock().start()
        start: dict[str, object] = {}

        def on_start(_info: object) -> None:  # models are loaded: count from here
            start.update(cpu=sum(os.times()[:2]), wall=time.perf_counter(), threads=clock.sample())

        report = anonymize_video(clip, Path(tmp) / "out.mp4", method=args.method, parallel=not args.serial, on_start=on_start,
                                 renderer=renderer, **options)
        clock.stop()
        if renderer is not None:  # a renderer handed in stays open after the job
            close_renderer(renderer)
    cpu = sum(os.times()[:2]) - float(start["cpu"])  # type: ignore[arg-type]
    wall = time.perf_counter() - float(start["wall"])  # type: ignore[arg-type]
    before: dict[tuple[int, str], float] = start["threads"]  # type: ignore[assignment]
    per_name: dict[str, float] = {}
    for (tid, name), seconds in clock.seconds.items():
        per_name[name] = per_name.get(name, 0.0) + seconds - before.get((tid, name), 0.0)
    frames = max(report.frames, 1)
    result = {
        "method": args.method,
        "pipeline": "serial" if args.serial else "parallel",
        "options": options,
        "renderer_settings": renderer_settings,
        "frames": report.frames,
        "fps": round(report.fps, 3),
        "cpu_ms_per_frame": round(1000 * cpu / frames, 1),
        "cores_busy": round(cpu / wall, 2),
        "thread_cpu_ms_per_frame": {name: round(1000 * s / frames, 1) for name, s in sorted(per_name.items(), key=lambda kv: -kv[1])
                                    if s * 1000 / frames >= 0.5 and name != "thread-clock"},
        "stats": report.stats,
        "load_average": os.getloadavg(),
    }
    print(json.dumps(result, indent=1))
    if args.out:
        args.out.write_text(json.dumps(result, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
