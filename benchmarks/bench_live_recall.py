"""Recall of a live source's schedule, frame by frame: what looking through the pyramid less often costs.

A live filter has no look-back (a face found late stays uncovered on the frames before), and its
detector looks through each scale of the pyramid on every other frame (``api.build_detector(live=True)``).
The recall benchmark measures one frame per scene, as a file job sees it; here every scene lasts
``--frames`` frames, so each face is seen on frames with either coarse scale, and a face found on one
frame is carried by its track onto the next.

Systems, all on the same frames (conditions where the pyramid changes what is found: motion blur,
defocus, close-ups, faces cut by a border):
- ``file``: the job options' defaults as a file job runs them (the pyramid on every frame; look-back);
- ``live``: the same options as a live job runs them (both scales on even frames, none on odd ones; no
  look-back);
- ``live, scales in turn``: a schedule tried and not kept (1/2 on even frames, 1/4 on odd ones: the same
  pixels, no frame without a coarse look), rebuilt here for comparison;
- ``live, no pyramid``.

Run: ``python benchmarks/bench_live_recall.py --photos DIR [--frames 4] [--out STEM]`` (DIR: allow-list
photos); writes STEM.json and STEM.md.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from sdgan_stream import recall  # noqa: E402
from sdgan_stream.config import AnonymizeOptions  # noqa: E402
from sdgan_stream.detect_passes import DetectorPass, MultiPassDetector  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results"
CONDITIONS = ("motion_blur", "defocus", "closeup", "border")


class _ScalesInTurn(MultiPassDetector):
    """The k-th coarse scale on frames where ``(frame + k) % pyramid_every == 0``, the main passes as built."""

    def passes_for(self, width: int, height: int, frame: int) -> list[DetectorPass]:
        every, self.pyramid_every = self.pyramid_every, 1
        try:
            passes = super().passes_for(width, height, frame)
        finally:
            self.pyramid_every = every
        coarse = [p for p in passes if p.coarse]
        return [p for p in passes if not p.coarse or (frame + coarse.index(p)) % every == 0]


def scenes(faces: list[recall.LibraryFace], frames: int) -> list[recall.Scene]:
    out = recall.effect_scenes(faces, per_cell=6, frames=frames) + recall.degraded_scenes(faces, per_cell=6, frames=frames)
    out += recall.closeup_scenes(faces, per_cell=6, frames=frames) + recall.border_scenes(faces, repeats=3, frames=frames)
    return [s for s in out if s.condition in CONDITIONS]


def systems() -> list[recall.PipelineSystem]:
    defaults = AnonymizeOptions()
    file = recall.PipelineSystem("file", defaults)
    live = recall.PipelineSystem("live", defaults, live=True)
    in_turn = recall.PipelineSystem("live, scales in turn", defaults, live=True)
    built = in_turn.detector
    in_turn.detector = _ScalesInTurn(built.detector, detect_size=built.detect_size, tile_size=built.tile_size,
                                     border=built.border, pyramid=built.pyramid, pyramid_every=built.pyramid_every,
                                     rotations=built.rotations, rotation_every=built.rotation_every,
                                     turned_min_score=built.turned_min_score, whole_every=built.whole_every,
                                     around_min_score=built.around_min_score, pass_threads=built.pass_threads)
    flat = recall.PipelineSystem("live, no pyramid", defaults.with_overrides(pyramid=()), live=True)
    return [file, live, in_turn, flat]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--photos", type=Path, default=None, help="allow-list photos (default: the two in-package photos)")
    parser.add_argument("--frames", type=int, default=4, help="frames per scene (at least 2: both parities)")
    parser.add_argument("--out", type=Path, default=RESULTS / "live_recall")
    args = parser.parse_args(argv)
    if args.frames < 2:
        parser.error("--frames must be at least 2")

    faces = recall.face_library(args.photos)
    chosen = systems()
    started = time.time()
    results = recall.run_scenes(scenes(faces, args.frames), faces, chosen,
                                progress=lambda n, total: print(f"{n}/{total} scenes ({time.time() - started:.0f} s)",
                                                                file=sys.stderr, flush=True))
    table: dict[str, dict[str, Any]] = {}
    for name, rows in results.items():
        for row in rows:
            cell = table.setdefault(f"{row.condition} {row.label}", {}).setdefault(name, {"faces": 0, "found": 0, "parity": [0, 0]})
            cell["faces"] += 1
            cell["found"] += row.found
            cell["parity"][row.frame % 2] += row.found
    totals = {name: {c: sum(cells[name]["found"] for key, cells in table.items() if key.startswith(c + " ")) for c in CONDITIONS}
              for name in results}
    counts = {c: sum(next(iter(cells.values()))["faces"] for key, cells in table.items() if key.startswith(c + " ")) for c in CONDITIONS}
    result = {
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count()},
        "photos": str(args.photos) if args.photos else "in-package photos",
        "frames_per_scene": args.frames,
        "cells": table,
        "found_per_condition": totals,
        "face_frames_per_condition": counts,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".json").write_text(json.dumps(result, indent=1) + "\n")
    names = list(results)
    lines = ["# Live recall: the pyramid's schedule frame by frame", "",
             f"Faces: {len(faces)} ({result['photos']}); {args.frames} frames a scene. A face counts as found on a frame when "
             "90% of its visible pixels and of each visible eye changed. Cells: face-frames found / face-frames "
             "(even frames + odd frames).", "",
             "| cell | " + " | ".join(names) + " |", "|---|" + "---|" * len(names)]
    for key, cells in table.items():
        lines.append(f"| {key} | " + " | ".join(
            f"{cells[n]['found']}/{cells[n]['faces']} ({cells[n]['parity'][0]}+{cells[n]['parity'][1]})" for n in names) + " |")
    lines += ["", "| condition | face-frames | " + " | ".join(names) + " |", "|---|---|" + "---|" * len(names)]
    for c in CONDITIONS:
        lines.append(f"| {c} | {counts[c]} | " + " | ".join(f"{totals[n][c] / max(counts[c], 1):.3f}" for n in names) + " |")
    lines += ["", f"Command: `{result['command']}`"]
    args.out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
