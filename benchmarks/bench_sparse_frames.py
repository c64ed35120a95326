"""Tracks when a live filter sees only every k-th frame: one track per person, or a new one each time?

A live filter slower than its source takes the newest frame each time and drops the rest, so its
tracker sees frames 0.2-1 s apart. This runs the analysis stage of a live job (``build_anonymizer(...,
live=True)``: the live detector and tracker, no look-back) on every k-th frame of a clip of real faces
(``samples.make_face_clip``: the in-package photos swaying on sine paths, ground-truth boxes known),
two ways:

* ``stream clock``: the frames carry their times, as live sources give them; the tracker steps by the
  time that passed (``FaceTracker.update(..., seconds=)``);
* ``updates as frames``: the same frames without times (what the tracker did before it took the clock):
  each update is one frame.

Per k and way: ``tracks`` started (the clip has ``--faces`` people; each extra track is a person given a
new identity, covered while the identity guard draws one), boxes per frame (mean, max; ``predicted``:
boxes of tracks without a detection, covering places where a face was), and true faces without a box
(IoU under 0.3 with every box: a face the covers would miss; should be 0).

``synthetic``: the tracker alone on ``bench_tracker``'s scenes (8 faces on 1080p, 5 seeds, 5% of the
detections missed and 5% weak), faces that ``sway`` (sine paths) or ``walk`` (steady lanes): tracks
started (8 per seed is one per person) and true faces not 80% inside any box.

Run: ``OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_sparse_frames.py [--every 1,5,10,15,25] [--json PATH]``
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
from fractions import Fraction
from pathlib import Path
from typing import Any

import av
import numpy as np

from bench_tracker import noisy_detections, scene

from sdgan_stream.api import build_anonymizer
from sdgan_stream.config import AnonymizeOptions
from sdgan_stream.samples import make_face_clip
from sdgan_stream.track import FaceTracker, box_iou, box_overlaps
from sdgan_stream.types import VideoFrame, VideoInfo

RESULTS = Path(__file__).resolve().parent / "results"


def run(frames: list[av.VideoFrame], truth: list[np.ndarray], info: VideoInfo, every: int, clock: bool) -> dict[str, Any]:
    anonymizer = build_anonymizer(AnonymizeOptions(method="blur", seed=0), info, live=True)
    tracks: set[int] = set()
    boxes_per_frame, predicted, faces_without_box = [], 0, 0
    for index in range(0, len(frames), every):
        frame = frames[index]
        video_frame = VideoFrame(image=frame.to_ndarray(format="rgb24"), index=index,
                                 pts=frame.pts if clock else None, time_base=frame.time_base if clock else None)
        for analysed in anonymizer.analyse_frame(video_frame):
            boxes = np.array([face.box for face in analysed.faces], np.float64).reshape(-1, 4)
            boxes_per_frame.append(len(boxes))
            predicted += sum(face.source == "predicted" for face in analysed.faces)
            tracks.update(face.track_id for face in analysed.faces if face.track_id is not None)
            true_boxes = np.asarray(truth[analysed.frame.index], np.float64).reshape(-1, 4)
            overlap = box_iou(true_boxes, boxes).max(1) if len(boxes) else np.zeros(len(true_boxes))
            faces_without_box += int((overlap < 0.3).sum())
    return {
        "frames": len(boxes_per_frame),
        "tracks": len(tracks),
        "boxes_per_frame": round(float(np.mean(boxes_per_frame)), 2),
        "max_boxes": int(max(boxes_per_frame)),
        "predicted_per_frame": round(predicted / len(boxes_per_frame), 2),
        "true_faces_without_box": faces_without_box,
    }


def run_synthetic(motion: str, every: int, clock: bool, *, faces: int = 8, frames: int = 250, seeds: int = 5) -> dict[str, Any]:
    tracks = faces_not_inside = 0
    for seed in range(seeds):
        rng = np.random.default_rng(seed)
        truth = scene(faces, frames, rng, motion)
        tracker = FaceTracker(fps=25, seed=0)
        ids: set[int] = set()
        for t in range(0, frames, every):
            centres = (truth[t, :, :2] + truth[t, :, 2:]) / 2
            on = (centres >= 0).all(1) & (centres[:, 0] < 1920) & (centres[:, 1] < 1080)  # walkers leave the frame
            out = tracker.update(noisy_detections(truth[t][on], rng, miss=0.05, weak=0.05), seconds=t / 25 if clock else None)
            ids.update(face.track_id for face in out if face.track_id is not None)
            boxes = np.array([face.box for face in out], np.float64).reshape(-1, 4)
            if on.any():
                inside = np.zeros(int(on.sum()))
                if len(boxes):
                    overlap, true_area, _ = box_overlaps(truth[t][on], boxes)
                    inside = (overlap / true_area[:, None]).max(1)
                faces_not_inside += int((inside < 0.8).sum())
        tracks += len(ids)
    return {"people": faces * seeds, "tracks": tracks, "true_faces_not_inside_a_box": faces_not_inside}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--every", default="1,5,10,15,25", help="process every k-th frame, for each k in this list")
    parser.add_argument("--faces", type=int, default=4)
    parser.add_argument("--frames", type=int, default=250)
    parser.add_argument("--fps", type=int, default=25)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=Path, default=RESULTS / "sparse_frames.json")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as workdir:
        clip = make_face_clip(Path(workdir) / "faces.mp4", width=640, height=360, frames=args.frames, fps=args.fps,
                              faces=args.faces, audio=False, seed=args.seed)
        with av.open(str(clip.path)) as container:
            frames = list(container.decode(video=0))
    info = VideoInfo(width=640, height=360, time_base=Fraction(1, args.fps), average_rate=Fraction(args.fps), is_live=True)
    rows = []
    for every in [int(k) for k in args.every.split(",")]:
        for clock in (False, True):
            row = {"every": every, "way": "stream clock" if clock else "updates as frames",
                   **run(frames, clip.face_boxes, info, every, clock)}
            print(json.dumps(row), flush=True)
            rows.append(row)
    synthetic = []
    for motion in ("sway", "walk"):
        for every in [int(k) for k in args.every.split(",")]:
            for clock in (False, True):
                row = {"motion": motion, "every": every, "way": "stream clock" if clock else "updates as frames",
                       **run_synthetic(motion, every, clock)}
                print(json.dumps(row), flush=True)
                synthetic.append(row)
    result = {
        "clip": {"width": 640, "height": 360, "fps": args.fps, "frames": args.frames, "faces": args.faces, "seed": args.seed},
        "machine": {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(),
                    "omp_threads": os.environ.get("OMP_NUM_THREADS")},
        "rows": rows,
        "synthetic": synthetic,
    }
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
