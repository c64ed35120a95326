"""Privacy and fidelity on people the generator never saw: the held-out split of the allow-list.

Builds a clip of the held-out people (one face each, moving, ``--frames`` frames at 1280x720), anonymizes it with
each method asked for (``sdgan`` with the identity guard off and on, and a cover for reference), then runs
``sdgan-stream evaluate`` on each output against a gallery of every allow-list person (the attack a real
adversary runs: who in the gallery is this face?). Writes ``heldout_eval.json`` and ``heldout_eval.md`` into ``--out``.

    python benchmarks/heldout_eval.py --photos runs/allow --out benchmarks/results/heldout \\
        --weights sdgan_stream/weights/starter

``--photos`` is a ``sdgan-stream prepare-data --package-photos`` folder (it holds the split).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import cv2

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from sdgan_stream.samples import allow_list_photos, make_face_clip  # noqa: E402

VARIANTS = {
    "sdgan_guard_off": ["--method", "sdgan", "--no-identity-guard"],
    "sdgan_guard_on": ["--method", "sdgan"],  # the default pick: faithful
    "sdgan_guard_on_farthest": ["--method", "sdgan", "--guard-pick", "farthest"],
    "blur": ["--method", "blur"],
    "pixelate": ["--method", "pixelate"],
    "solid": ["--method", "solid"],
}


def build_gallery(photos_dir: Path, gallery: Path) -> int:
    """Every face of every allow-list person, train and held-out, as gallery/<person>/<n>.png (head crops)."""
    count = 0
    for split in ("train", "heldout"):
        for photo in allow_list_photos(photos_dir, split=split, one_per_person=False):
            person, name = photo.name.split("/", 1)
            folder = gallery / person
            folder.mkdir(parents=True, exist_ok=True)
            cv2.imwrite(str(folder / f"{Path(name).stem}.png"), photo.image[..., ::-1])
            count += 1
    return count


def run(command: list[str], log: Path) -> float:
    start = time.perf_counter()
    with open(log, "w") as handle:
        done = subprocess.run(command, stdout=handle, stderr=subprocess.STDOUT)
    if done.returncode != 0:
        raise SystemExit(f"failed ({done.returncode}): {' '.join(command)}; see {log}")
    return time.perf_counter() - start


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--photos", type=Path, required=True, help="prepare-data --package-photos folder")
    parser.add_argument("--out", type=Path, required=True, help="results folder")
    parser.add_argument("--weights", default=None, help="generator bundle (default: the package's)")
    parser.add_argument("--frames", type=int, default=200)
    parser.add_argument("--seed", type=int, default=1, help="--seed of every anonymize run")
    parser.add_argument("--variants", default=",".join(VARIANTS), help=f"comma list of {', '.join(VARIANTS)}")
    parser.add_argument("--extra", default="", help="extra options for every anonymize run (one string)")
    args = parser.parse_args(argv)

    out = args.out
    out.mkdir(parents=True, exist_ok=True)
    photos = allow_list_photos(args.photos)
    clip = out / "heldout_clip.mp4"
    if not clip.exists():
        make_face_clip(clip, width=1280, height=720, frames=args.frames, faces=len(photos), seed=12, photos=photos)
    gallery = out / "gallery"
    gallery_faces = build_gallery(args.photos, gallery) if not gallery.exists() else None
    cli = [sys.executable, "-m", "sdgan_stream.cli"]
    results: dict = {"clip": {"path": clip.name, "people": [p.name for p in photos], "frames": args.frames,
                              "size": "1280x720"}, "gallery_faces": gallery_faces, "weights": args.weights, "runs": {}}
    for name in args.variants.split(","):
        anonymized = out / f"{name}.mp4"
        command = [*cli, "anonymize", str(clip), "-o", str(anonymized), "--seed", str(args.seed), "--no-progress",
                   *VARIANTS[name], *args.extra.split()]
        if args.weights and "sdgan" in name:
            command += ["--weights", args.weights]
        seconds = run(command, out / f"{name}.anonymize.log")
        report = out / f"{name}.evaluation.json"
        run([*cli, "evaluate", str(clip), str(anonymized), "--json", str(report), "--gallery", str(gallery)],
            out / f"{name}.evaluate.log")
        summary = json.loads(report.read_text()).get("summary", {})
        results["runs"][name] = {"command": " ".join(command[2:]), "anonymize_seconds": round(seconds, 1), "summary": summary,
                                 "stats": _stats_from_log(out / f"{name}.anonymize.log")}
        print(name, json.dumps(summary)[:400], flush=True)
    (out / "heldout_eval.json").write_text(json.dumps(results, indent=1, default=float) + "\n")
    print(f"wrote {out / 'heldout_eval.json'}")
    return 0


def _stats_from_log(log: Path) -> str:
    """The run summary line the CLI prints (faces per method, fallbacks per reason)."""
    lines = [line for line in log.read_text().splitlines() if " fps, faces " in line]
    return lines[-1] if lines else ""


if __name__ == "__main__":
    raise SystemExit(main())
