"""Wall time of a folder of clips: the sequential ``anonymize DIR`` against ``anonymize DIR --ray``.

Makes ``--clips`` clips (default 8) of real faces (``sdgan_stream.samples``), then runs the command
line twice on them, each run a fresh process timed from start to exit (so ``--ray`` pays for starting
its local Ray instance and its workers, as a user does), and checks that both runs wrote every frame.
A third run of ``--ray`` on the finished folder times a rerun that skips everything.

Writes JSON (default ``benchmarks/results/cluster.json``) and prints it.

Run: ``.venv/bin/python benchmarks/bench_cluster.py [--clips 8] [--frames 100] [--size 640x360] [--json PATH] [-- extra anonymize flags]``
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import av

from sdgan_stream.samples import make_face_clip


def _frames(path: Path) -> int:
    with av.open(str(path)) as container:
        return sum(1 for _ in container.decode(container.streams.video[0]))


def _timed(command: list[str]) -> float:
    started = time.monotonic()
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    return time.monotonic() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clips", type=int, default=8)
    parser.add_argument("--frames", type=int, default=100, help="frames per clip (25 fps)")
    parser.add_argument("--size", default="640x360")
    parser.add_argument("--json", type=Path, default=Path(__file__).parent / "results" / "cluster.json")
    parser.add_argument("extra", nargs="*", help="flags passed to both anonymize runs (after --)")
    args = parser.parse_args()
    width, height = (int(v) for v in args.size.split("x"))
    cli = [sys.executable, "-m", "sdgan_stream.cli", "anonymize"]
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "in"
        folder.mkdir()
        for i in range(args.clips):
            make_face_clip(folder / f"clip{i}.mp4", width=width, height=height, frames=args.frames, faces=2, seed=i)
        load_before = os.getloadavg()
        sequential = _timed([*cli, str(folder), "-o", f"{tmp}/seq", "--no-progress", *args.extra])
        on_ray = _timed([*cli, str(folder), "-o", f"{tmp}/ray", "--ray", "--no-progress", *args.extra])
        rerun = _timed([*cli, str(folder), "-o", f"{tmp}/ray", "--ray", "--no-progress", *args.extra])
        load_after = os.getloadavg()
        for run in ("seq", "ray"):
            written = [_frames(p) for p in sorted(Path(tmp, run).glob("*.mp4"))]
            assert written == [args.frames] * args.clips, f"{run}: {written}"
    frames = args.clips * args.frames
    result = {
        "clips": args.clips,
        "frames_per_clip": args.frames,
        "size": args.size,
        "anonymize_flags": args.extra,
        "sequential_s": round(sequential, 1),
        "ray_s": round(on_ray, 1),
        "ray_rerun_all_skipped_s": round(rerun, 1),
        "sequential_fps": round(frames / sequential, 1),
        "ray_fps": round(frames / on_ray, 1),
        "speedup": round(sequential / on_ray, 2),
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version(),
                    "load_average_1m_before_after": [round(load_before[0], 1), round(load_after[0], 1)]},
    }
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
