"""Issue 13's montage: held-out faces, original beside generated, turned heads included.

Every face of the held-out split of a ``prepare-data --package-photos`` folder is anonymized as a still
photo with the default options (``--method sdgan``, identity guard on), one frame, through the same
renderer as video. The montage takes ``--count`` faces: first every held-out face whose yaw (the
68-point fit's estimate, :func:`sdgan_stream.landmarks.estimate_yaw_deg`) is 30-60 degrees, then the
others by size. When the held-out split has fewer than ``--turned`` such faces, the train split's
turned faces fill in, labelled ``TRAIN``. Each tile: original | output, with person, yaw and outcome
(``sdgan`` or the cover and its reason); with ``--weights A,B`` one output per generator bundle (before |
after). Writes ``realism_montage.png`` and ``realism_montage.json``.

    OMP_NUM_THREADS=1 nice -n 10 python benchmarks/realism_montage.py --photos /work/runs/allow \\
        --out benchmarks/results/realism
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import cv2
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

TILE = 192


def _yaw(landmarker, photo) -> float | None:
    from sdgan_stream.landmarks import estimate_yaw_deg
    from sdgan_stream.types import Face

    fit = landmarker.fit(photo.image, [Face(box=photo.face_box, score=1.0)])[0]
    if fit.points is None:
        return None
    p = fit.points
    return float(estimate_yaw_deg(p[36:42].mean(0), p[42:48].mean(0), p[30]))


def _tile(image: np.ndarray, box: np.ndarray) -> np.ndarray:
    """The face in ``box`` with a little margin, square, TILE px."""
    x1, y1, x2, y2 = box
    side = 1.4 * max(x2 - x1, y2 - y1)
    cx, cy = (x1 + x2) / 2, (y1 + y2) / 2
    scale = TILE / side
    matrix = np.array([[scale, 0, TILE / 2 - cx * scale], [0, scale, TILE / 2 - cy * scale]])
    return cv2.warpAffine(image, matrix, (TILE, TILE), flags=cv2.INTER_AREA, borderMode=cv2.BORDER_CONSTANT)


def _label(tile: np.ndarray, text: str) -> np.ndarray:
    out = tile.copy()
    cv2.rectangle(out, (0, TILE - 18), (2 * TILE, TILE), (0, 0, 0), -1)
    cv2.putText(out, text, (4, TILE - 5), cv2.FONT_HERSHEY_SIMPLEX, 0.42, (255, 255, 255), 1, cv2.LINE_AA)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--photos", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--count", type=int, default=12)
    parser.add_argument("--turned", type=int, default=2, help="at least this many faces turned 30-60 degrees")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--weights", default="", help="comma list of generator bundles, one output column each "
                        "(default: the package's; 'package' names it in a list)")
    args = parser.parse_args(argv)

    from sdgan_stream.config import AnonymizeOptions
    from sdgan_stream.landmarks import LandmarkDetector
    from sdgan_stream.render import SdganRenderer
    from sdgan_stream.samples import allow_list_photos
    from sdgan_stream.types import Face

    landmarker = LandmarkDetector(check=False)
    pool = []
    for split in ("heldout", "train"):
        for photo in allow_list_photos(args.photos, split=split, one_per_person=False):
            pool.append({"photo": photo, "split": split, "yaw": _yaw(landmarker, photo)})
    turned = [e for e in pool if e["yaw"] is not None and 30 <= abs(e["yaw"]) <= 60]
    held_turned = [e for e in turned if e["split"] == "heldout"]
    chosen = held_turned[: args.count]
    if len(chosen) < args.turned:
        chosen += [e for e in turned if e["split"] == "train"][: args.turned - len(chosen)]
    others = sorted((e for e in pool if e["split"] == "heldout" and e not in chosen),
                    key=lambda e: -(e["photo"].face_box[2] - e["photo"].face_box[0]))
    chosen += others[: args.count - len(chosen)]

    bundles = [None if w in ("", "package") else w for w in args.weights.split(",")]
    renderers = [SdganRenderer.from_options(AnonymizeOptions(seed=args.seed, weights=w)) for w in bundles]
    tiles, rows = [], []
    for index, entry in enumerate(chosen):
        photo = entry["photo"]
        face = Face(box=photo.face_box, score=1.0, identity_seed=args.seed * 1000 + index)
        panels, outcomes = [_tile(photo.image, photo.face_box)], []
        for renderer in renderers:
            output = photo.image.copy()
            outcomes.append(renderer.render(output, [face])[0])
            panels.append(_tile(output, photo.face_box))
        what = " | ".join(o.method + (f" ({o.reason})" if o.reason else "") for o in outcomes)
        yaw = "?" if entry["yaw"] is None else f"{entry['yaw']:+.0f}deg"
        text = f"{'TRAIN ' if entry['split'] == 'train' else ''}{photo.name.split('/')[0]} {yaw} {what}"
        tiles.append(_label(np.concatenate(panels, 1), text))
        rows.append({"face": photo.name, "split": entry["split"], "yaw_deg": entry["yaw"],
                     "outcome": [o.method for o in outcomes], "reason": [o.reason for o in outcomes]})
    columns = 3 if len(renderers) == 1 else 2
    while len(tiles) % columns:
        tiles.append(np.zeros_like(tiles[0]))
    grid = np.concatenate([np.concatenate(tiles[i : i + columns], 1) for i in range(0, len(tiles), columns)], 0)
    args.out.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(args.out / "realism_montage.png"), grid[..., ::-1])
    summary = {
        "weights": [w or "package" for w in bundles],
        "faces": rows,
        "heldout_faces": sum(e["split"] == "heldout" for e in pool),
        "heldout_turned_30_60": len(held_turned),
        "train_turned_used": sum(r["split"] == "train" for r in rows),
        "yaw_of_every_heldout_face": {e["photo"].name: e["yaw"] for e in pool if e["split"] == "heldout"},
        "command": "python benchmarks/realism_montage.py " + " ".join(argv if argv is not None else sys.argv[1:]),
    }
    (args.out / "realism_montage.json").write_text(json.dumps(summary, indent=1) + "\n")
    print(json.dumps({k: v for k, v in summary.items() if k != "faces"}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
