"""Is any face still recognisable after the pipeline at its defaults? Small, turned, border-cut, smeared, dim faces.

Scenes come from ``sdgan_stream.recall`` (faces of the training allow-list only, pasted at known places):
- ``size``: near-frontal faces of 12-64 px on 720p and 1080p frames;
- ``rotation``: faces turned 30-270 degrees in the image plane, 48-160 px, 12 frames per scene (the
  defaults discover turned faces on a schedule that visits every angle within 12 frames);
- ``border``: faces cut by each frame border by 25, 50 and 75% of their box;
- ``motion_blur``, ``dark``, ``backlit``, ``defocus``, ``compression``: the recall benchmark's smeared, dim
  and compressed faces of 32-128 px, where the detector misses most (is a face it misses still
  recognisable?).

Every placed face on every frame is attacked with :class:`sdgan_stream.recall.RecognitionAttack` (exact
geometry, upright upscaled chip, dlib embedding with the library face's own 68 points) on the untouched
frame (what the attack can do there) and on the output of: the pipeline at its defaults (method
included: blur), and deface at its defaults. A face counts as recognised (verified) under dlib's 0.6 to
its own library photo, and as identified when, besides, no other person of the library is nearer (the
attack of someone who holds photos of all of them; a degraded chip can fall under 0.6 of several people).

Run: ``python benchmarks/bench_recognisable.py --photos DIR [--out STEM]`` (DIR: allow-list photos, e.g.
``/tmp/recall_photos``); writes STEM.json and STEM.md.
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

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from sdgan_stream import recall  # noqa: E402
from sdgan_stream.config import AnonymizeOptions  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results"


def scenes(faces: list[recall.LibraryFace]) -> list[recall.Scene]:
    out = recall.size_scenes(faces, resolutions=("720p", "1080p"), widths=(12, 16, 20, 24, 32, 48, 64), per_cell=6)
    out += recall.rotation_scenes(faces, angles=(30, 60, 90, 135, 180, 270), per_cell=6, frames=12)
    out += recall.border_scenes(faces, widths=(48, 96, 160), repeats=2)
    out += recall.effect_scenes(faces, per_cell=6)
    out += recall.degraded_scenes(faces, per_cell=6)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--photos", type=Path, default=None, help="allow-list photos (default: the two in-package photos)")
    parser.add_argument("--out", type=Path, default=RESULTS / "recognisable")
    args = parser.parse_args(argv)

    faces = recall.face_library(args.photos)
    attack = recall.RecognitionAttack(faces)
    ours = recall.PipelineSystem("ours", AnonymizeOptions(), keep_method=True)  # the defaults, cover included
    deface = recall.DefaceSystem()  # deface 1.5's own frame function at its defaults
    rows: list[dict[str, Any]] = []
    started = time.time()
    all_scenes = scenes(faces)
    for n, scene in enumerate(all_scenes):
        frames = [scene.render(faces, i)[0] for i in range(scene.frames)]
        outputs = {"ours": ours.anonymize([f.copy() for f in frames]), "deface": deface.anonymize([f.copy() for f in frames])}
        for i, frame in enumerate(frames):
            for placement in scene.placements:
                row: dict[str, Any] = {"condition": scene.condition, "cell": placement.label, "scene": n, "frame": i,
                                       "face": faces[placement.face % len(faces)].name}
                for name, image in (("original", frame), *((name, out[i]) for name, out in outputs.items())):
                    result = attack.attack(image, placement, i)
                    row[name] = round(result.distance, 3)
                    row[f"{name}_identified"] = result.identified
                rows.append(row)
        print(f"{n + 1}/{len(all_scenes)} scenes ({time.time() - started:.0f} s)", file=sys.stderr, flush=True)

    limit = recall.RecognitionAttack.same_person
    table: dict[str, dict[str, Any]] = {}
    systems = ("original", "ours", "deface")
    for row in rows:
        cell = table.setdefault(f"{row['condition']} {row['cell']}",
                                {"faces": 0, **{k: 0 for name in systems for k in (name, f"{name}_identified")}, "ours_min": 9.0})
        cell["faces"] += 1
        for name in systems:
            cell[name] += row[name] < limit
            cell[f"{name}_identified"] += row[f"{name}_identified"]
        cell["ours_min"] = min(cell["ours_min"], row["ours"])
    result = {
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count()},
        "photos": str(args.photos) if args.photos else "in-package photos",
        "library_faces": len(faces),
        "defaults": {k: getattr(AnonymizeOptions(), k) for k in ("method", "threshold", "detect_size", "tile_size", "border", "pyramid", "rotation_every")},
        "same_person_distance": limit,
        "cells": table,
        "recognised_total": {name: int(sum(c[name] for c in table.values())) for name in systems},
        "identified_total": {name: int(sum(c[f"{name}_identified"] for c in table.values())) for name in systems},
        "face_frames": len(rows),
        "rows": rows,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".json").write_text(json.dumps(result, indent=1, default=str) + "\n")
    lines = [
        "# Still recognisable? Small, turned, border-cut, smeared and dim faces, at the defaults",
        "",
        f"Faces: {len(faces)} from the training allow-list ({result['photos']}). Attack: exact geometry, upright "
        f"upscaled chip, dlib embedding with the library face's own 68 points; recognised = distance < {limit}. "
        f"Defaults: `{json.dumps(result['defaults'], default=str)}`.",
        "",
        "Each count: recognised (under the limit to the face's own photo) / identified (besides, no other person nearer).",
        "",
        "| cell | face-frames | untouched | after ours (defaults) | after deface | ours: least distance |",
        "|---|---|---|---|---|---|",
    ]
    for name, cell in table.items():
        counts = " | ".join(f"{cell[s]} / {cell[s + '_identified']}" for s in systems)
        lines.append(f"| {name} | {cell['faces']} | {counts} | {cell['ours_min']:.3f} |")
    totals, named = result["recognised_total"], result["identified_total"]
    lines += ["", f"Total over {len(rows)} face-frames, recognised / identified: untouched {totals['original']} / {named['original']}, "
              f"after ours {totals['ours']} / {named['ours']}, after deface {totals['deface']} / {named['deface']}.", "",
              f"Command: `{result['command']}`"]
    args.out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
