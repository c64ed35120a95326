"""Issue 13's table: how real the replaced faces look, per method, on held-out people only.

For each method (``sdgan`` with the identity guard on and off, and the ``blur``, ``pixelate`` and ``solid``
covers) on the held-out clip of :mod:`heldout_eval` (anonymized and evaluated there when missing):

* **boundary score**: :func:`sdgan_stream.blend.boundary_score` on every ``--stride``-th frame and face:
  gradient energy in a thin band (3 px at 128) around the edge of the region the sdgan renderer
  replaces (the original's own landmarks: map region, dilated, joined with the safety region), output
  over input, in the face's aligned crop. The ``untouched`` row is the input re-encoded with the
  anonymizer's own encoder settings (what encoding alone does to that band). Near ``untouched`` = no
  seam; far above = a ring or step; far below = a smeared band (a cover's inside is smooth).
* from ``sdgan-stream evaluate`` (dlib judge, gallery of every allow-list person): landmark error median,
  detection rate (dlib HOG), identity spread within a track against the original's, flicker against the
  original's (motion compensated frame-to-frame change in the face box), leak rate, identity distance.

Writes ``realism_table.json`` and ``realism_table.md`` into ``--out``.

    OMP_NUM_THREADS=1 nice -n 10 python benchmarks/realism_table.py --photos /work/runs/allow \\
        --heldout /work/runs/heldout60 --frames 60 --out benchmarks/results/realism
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import heldout_eval  # noqa: E402

METHODS = ("sdgan_guard_on", "sdgan_guard_off", "blur", "pixelate", "solid")
SUMMARY_KEYS = ("landmark_error_median", "detection_rate", "identity_spread_mean", "identity_spread_original_mean",
                "flicker", "flicker_original", "flicker_ratio", "leak_rate", "identity_distance_mean", "faces")


def untouched_copy(clip: Path, out: Path) -> Path:
    """``clip`` decoded and encoded again through the anonymizer's own sink (same encoder and settings)."""
    from sdgan_stream.io.sink import VideoFileSink
    from sdgan_stream.io.source import VideoFileSource

    if out.exists():
        return out
    with VideoFileSource(clip) as source:
        sink = VideoFileSink(out, source.info)
        try:
            for frame in source.frames():
                sink.write(frame)
        finally:
            sink.close()
    return out


def prepared_faces(clip: Path, *, stride: int, frames: int) -> dict[int, list]:
    """Frame index -> the PreparedFace of every face CenterFace finds (score >= 0.4) on the input."""
    from sdgan_stream.detect import CenterFaceDetector
    from sdgan_stream.faceprep import PreparedFace, prepare_faces
    from sdgan_stream.io.source import VideoFileSource
    from sdgan_stream.landmarks import LandmarkDetector
    from sdgan_stream.types import Face

    detector, landmarker = CenterFaceDetector(threshold=0.4, detect_size=None), LandmarkDetector()
    out: dict[int, list] = {}
    with VideoFileSource(clip) as source:
        for frame in source.frames():
            if frame.index >= frames:
                break
            if frame.index % stride:
                continue
            found = detector.detect(frame.image)
            faces = [Face(box=found.boxes[i], score=float(found.scores[i]), landmarks=found.landmarks[i]) for i in range(len(found))]
            out[frame.index] = [p for p in prepare_faces(frame.image, faces, landmarker=landmarker) if isinstance(p, PreparedFace)]
    return out


def boundary_scores(clip: Path, video: Path, faces: dict[int, list], *, frames: int) -> list[float]:
    from sdgan_stream.blend import boundary_score
    from sdgan_stream.io.source import VideoFileSource

    scores = []
    with VideoFileSource(clip) as src_o, VideoFileSource(video) as src_a:
        for fo, fa in zip(src_o.frames(), src_a.frames()):
            if fo.index >= frames:
                break
            for prepared in faces.get(fo.index, []):
                score = boundary_score(fa.image, fo.image, prepared)
                if np.isfinite(score):
                    scores.append(score)
    return scores


def _fmt(value, digits: int = 3) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def render_markdown(result: dict) -> str:
    rows = result["methods"]
    untouched = result["untouched_boundary_score_median"]
    lines = [
        f"# Realism on held-out people ({result['clip']['people']} people, {result['frames']} frames at 1280x720)",
        "",
        f"Boundary score: median over {result['boundary_faces']} face positions (every {result['stride']}th frame); "
        f"the input re-encoded scores {_fmt(untouched)} (1.0 = no change at the region's edge).",
        "",
        "| method | boundary score (untouched) | landmark error median | detection rate | identity spread (original) "
        "| flicker (original) ratio | leak rate | identity distance |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, row in rows.items():
        s = row["summary"]
        lines.append(
            f"| {name} | {_fmt(row['boundary_score_median'])} ({_fmt(untouched)}) | {_fmt(s.get('landmark_error_median'))} "
            f"| {_fmt(s.get('detection_rate'))} | {_fmt(s.get('identity_spread_mean'))} ({_fmt(s.get('identity_spread_original_mean'))}) "
            f"| {_fmt(s.get('flicker'), 2)} ({_fmt(s.get('flicker_original'), 2)}) {_fmt(s.get('flicker_ratio'), 2)} "
            f"| {_fmt(s.get('leak_rate'))} | {_fmt(s.get('identity_distance_mean'))} |"
        )
    lines += ["", f"Machine: {result['machine']}. Command: `{result['command']}`", ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--photos", type=Path, required=True, help="prepare-data --package-photos folder")
    parser.add_argument("--heldout", type=Path, required=True, help="heldout_eval --out folder (filled in when incomplete)")
    parser.add_argument("--out", type=Path, required=True, help="where realism_table.json/.md go")
    parser.add_argument("--frames", type=int, default=60, help="frames of the held-out clip (made with this many when missing)")
    parser.add_argument("--stride", type=int, default=4, help="boundary score on every N-th frame")
    parser.add_argument("--methods", default=",".join(METHODS))
    parser.add_argument("--weights", default=None, help="generator bundle for the sdgan methods (default: the package's)")
    parser.add_argument("--seed", type=int, default=1, help="--seed of every anonymize run")
    args = parser.parse_args(argv)

    methods = args.methods.split(",")
    missing = [m for m in methods if not (args.heldout / f"{m}.evaluation.json").exists()]
    if missing:
        heldout_eval.main(["--photos", str(args.photos), "--out", str(args.heldout), "--frames", str(args.frames),
                           "--variants", ",".join(missing), "--seed", str(args.seed),
                           *(["--weights", args.weights] if args.weights else [])])
    clip = args.heldout / "heldout_clip.mp4"
    faces = prepared_faces(clip, stride=args.stride, frames=args.frames)
    untouched = boundary_scores(clip, untouched_copy(clip, args.heldout / "untouched.mp4"), faces, frames=args.frames)
    from sdgan_stream.samples import allow_list_photos

    people = len(allow_list_photos(args.photos))  # the clip shows one face of each held-out person
    result: dict = {
        "clip": {"path": str(clip), "people": people},
        "frames": args.frames,
        "stride": args.stride,
        "boundary_faces": sum(len(v) for v in faces.values()),
        "untouched_boundary_score_median": float(np.median(untouched)),
        "methods": {},
        "machine": f"{platform.machine()}, {__import__('os').cpu_count()} cores (shared), Python {platform.python_version()}",
        "command": "python benchmarks/realism_table.py " + " ".join(argv if argv is not None else sys.argv[1:]),
    }
    for name in methods:
        scores = boundary_scores(clip, args.heldout / f"{name}.mp4", faces, frames=args.frames)
        evaluation = json.loads((args.heldout / f"{name}.evaluation.json").read_text())
        result["methods"][name] = {
            "boundary_score_median": float(np.median(scores)) if scores else None,
            "boundary_score_p90": float(np.percentile(scores, 90)) if scores else None,
            "summary": {k: evaluation["summary"].get(k) for k in SUMMARY_KEYS},
            "frames_evaluated": evaluation["settings"]["frames_evaluated"],
        }
        print(name, json.dumps(result["methods"][name]), flush=True)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "realism_table.json").write_text(json.dumps(result, indent=1) + "\n")
    (args.out / "realism_table.md").write_text(render_markdown(result))
    print(f"wrote {args.out / 'realism_table.json'} and .md")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
