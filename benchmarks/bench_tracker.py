"""Face tracker cost per frame with many faces, and its leak rate through occlusions and blur.

Writes JSON (default ``benchmarks/results/tracker.json``) and prints it:

* ``update_ms``: mean / median / p95 / max of one :meth:`FaceTracker.update` with ``--faces`` faces
  (default 50) moving over ``--frames`` frames (default 500); 10% of detections missed, 10% weak
  (blurred), box and landmark jitter, so every path (match, weak match, prediction) is exercised;
* ``filterpy_kalman_ms``: for comparison, only the Kalman predict + update of one
  ``filterpy.kalman.KalmanFilter`` per face (what the tracker would spend on filterpy objects alone);
* ``leak``: faces moving through occlusions (detector misses up to ``max_age`` frames) and blurred
  stretches (weak, jittered detections): face-frames left uncovered, as rendered with the default
  covers and for the tracker's boxes alone (see :func:`leak_rate`; both should be 0).

Run: ``.venv/bin/python benchmarks/bench_tracker.py [--faces 50] [--frames 500] [--leak-seeds 10] [--json PATH]``
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

import numpy as np

from sdgan_stream.track import FaceTracker
from sdgan_stream.types import Detections

TEMPLATE = np.array([[0.32, 0.42], [0.68, 0.42], [0.5, 0.6], [0.36, 0.78], [0.64, 0.78]])


def scene(n: int, frames: int, rng: np.random.Generator, motion: str = "sway") -> np.ndarray:
    """True boxes (frames, n, 4) of n faces on a 1920x1080 canvas that never overlap.

    ``sway``: each face swings on its own sine path inside its grid cell (up to ~10 px per frame,
    reversing direction every 0.8-2.4 s: hard for a constant-velocity prediction, like a shaking
    camera). ``walk``: faces walk in horizontal lanes, one speed per lane (2-12 px per frame), with a
    small bob. Faces do not overlap: a face in front would hide the one behind it anyway.
    """
    cols = int(np.ceil(np.sqrt(n * 16 / 9)))
    rows = int(np.ceil(n / cols))
    cell = np.array([1920 / cols, 1080 / rows])
    ij = np.stack(np.unravel_index(np.arange(n), (rows, cols)), 1)[:, ::-1]
    home = (ij + 0.5) * cell
    sizes = rng.uniform(0.25, 0.45, n) * cell.min()
    t = np.arange(frames)[:, None, None]
    if motion == "sway":
        amplitude = (cell[None] - sizes[:, None] * 1.1) / 2 * rng.uniform(0.3, 1.0, (n, 2))
        omega = 2 * np.pi / rng.uniform(40, 120, (n, 2))
        phase = rng.uniform(0, 2 * np.pi, (n, 2))
        centres = home[None] + amplitude[None] * np.sin(omega[None] * t + phase[None])
    elif motion == "walk":
        lane_speed = rng.uniform(2, 12, rows) * rng.choice([-1, 1], rows)
        velocity = np.stack([lane_speed[ij[:, 1]], np.zeros(n)], 1)
        bob = np.stack([np.zeros(n), rng.uniform(2, 6, n)], 1)
        centres = home[None] + velocity[None] * t + bob[None] * np.sin(t * 0.5)
    else:
        raise ValueError(f"unknown motion {motion!r}")
    half = np.stack([sizes * 0.4, sizes * 0.5], 1)[None]
    return np.concatenate([centres - half, centres + half], axis=2)


def noisy_detections(true: np.ndarray, rng: np.random.Generator, *, miss: float, weak: float) -> Detections:
    """Noisy detections of the true boxes (n, 4): some missed, some weak (blurred)."""
    n = len(true)
    size = (true[:, 2:] - true[:, :2]).mean(1, keepdims=True)
    keep = rng.random(n) >= miss
    is_weak = rng.random(n) < weak
    boxes = true + rng.normal(0, 0.02, (n, 4)) * size
    scores = np.where(is_weak, rng.uniform(0.15, 0.45, n), rng.uniform(0.6, 0.99, n))
    landmarks = boxes[:, None, :2] + TEMPLATE[None] * (boxes[:, None, 2:] - boxes[:, None, :2])
    landmarks = landmarks + rng.normal(0, 0.01, (n, 5, 2)) * size[:, None]
    return Detections(boxes[keep].astype(np.float32), scores[keep].astype(np.float32), landmarks[keep].astype(np.float32))


def time_tracker(faces: int, frames: int, seed: int = 0) -> dict[str, float]:
    rng = np.random.default_rng(seed)
    truth = scene(faces, frames, rng, "walk")
    inputs = [noisy_detections(truth[t], rng, miss=0.1 if t else 0.0, weak=0.1 if t else 0.0) for t in range(frames)]
    tracker = FaceTracker(fps=25, high_threshold=0.5, low_threshold=0.15, seed=0)
    samples = []
    outputs = 0
    for det in inputs:
        start = time.perf_counter()
        out = tracker.update(det)
        samples.append((time.perf_counter() - start) * 1e3)
        outputs += len(out)
    samples_np = np.array(samples[10:])  # the first frames create the tracks
    return {
        "mean": round(float(samples_np.mean()), 4),
        "median": round(float(np.median(samples_np)), 4),
        "p95": round(float(np.percentile(samples_np, 95)), 4),
        "max": round(float(samples_np.max()), 4),
        "faces_out_per_frame": round(outputs / frames, 2),
        "tracks_at_end": tracker.active_track_count,
    }


def time_filterpy(faces: int, frames: int) -> dict[str, float]:
    """Kalman predict + update with one filterpy KalmanFilter per face, the plain SORT way."""
    from filterpy.kalman import KalmanFilter

    from sdgan_stream.track import KalmanBoxBank

    filters = []
    for _ in range(faces):
        kf = KalmanFilter(dim_x=8, dim_z=4)
        kf.F, kf.H = KalmanBoxBank.F.copy(), KalmanBoxBank.H.copy()
        kf.x[:4, 0] = [100.0, 100.0, 60.0, 0.8]
        kf.P, kf.Q = KalmanBoxBank.initial_covariance(np.array([60.0]))[0], KalmanBoxBank.process_noise(np.array([60.0]))[0]
        kf.R = KalmanBoxBank.measurement_noise(np.array([60.0]))[0]
        filters.append(kf)
    z = np.array([[101.0], [100.0], [60.0], [0.8]])
    samples = []
    for _ in range(frames):
        start = time.perf_counter()
        for kf in filters:
            kf.predict()
            kf.update(z)
        samples.append((time.perf_counter() - start) * 1e3)
    return {"mean": round(float(np.mean(samples)), 4), "median": round(float(np.median(samples)), 4)}


def _contained(true: np.ndarray, boxes: np.ndarray) -> float:
    """Largest fraction of the true box inside one of ``boxes``."""
    if not len(boxes):
        return 0.0
    ix = np.clip(np.minimum(boxes[:, 2], true[2]) - np.maximum(boxes[:, 0], true[0]), 0, None)
    iy = np.clip(np.minimum(boxes[:, 3], true[3]) - np.maximum(boxes[:, 1], true[1]), 0, None)
    return float((ix * iy).max() / ((true[2] - true[0]) * (true[3] - true[1])))


def _inside_covers(true: np.ndarray, boxes: np.ndarray, margin: float = 0.25, grid: int = 12) -> float:
    """Fraction of the true box inside the union of the default cover ellipses of ``boxes``.

    Same ellipse as ``sdgan_stream.covers``: inscribed in the box grown by ``margin`` per side, never
    smaller than the ellipse through the box corners.
    """
    if not len(boxes):
        return 0.0
    u = (np.arange(grid) + 0.5) / grid
    xs = true[0] + u * (true[2] - true[0])
    ys = true[1] + u * (true[3] - true[1])
    px, py = (a.ravel() for a in np.meshgrid(xs, ys))
    grow = max(1 + 2 * margin, np.sqrt(2))
    centre = (boxes[:, :2] + boxes[:, 2:]) / 2
    half = np.maximum(boxes[:, 2:] - boxes[:, :2], 4.0) / 2 * grow
    inside = ((px[None] - centre[:, :1]) / half[:, :1]) ** 2 + ((py[None] - centre[:, 1:]) / half[:, 1:]) ** 2 <= 1
    return float(inside.any(0).mean())


def leak_rate(*, motion: str, faces: int = 20, frames: int = 300, seeds: range = range(1, 11)) -> dict:
    """Occlusions of 1..max_age frames and blurred stretches (weak, jittered detections).

    Each face repeats: 10 frames seen, an occlusion of its own length (detector misses it), 5 frames
    seen, 10 frames blurred (weak scores 0.15-0.45, 3x the box jitter), then seen again. Counted
    from each face's first confident detection on (every face is seen for >= 5 frames first).

    ``leaks_rendered``: face-frames whose true box is less than 95% inside the default covers
    (ellipse, margin 0.25) of the output faces: what a viewer would see. ``leaks_tracker``: face-frames
    without a confident detection whose true box is less than 90% inside one output box: what the
    tracker alone answers for (with a confident detection the output box is the detector's, jitter
    included). ``tracker_leaks_by_frames_missed``: the latter for occluded frames, by frames since
    the last detection.
    """
    totals = {"face_frames": 0, "missed_detections": 0, "weak_detections": 0, "leaks_rendered": 0,
              "face_frames_without_confident_detection": 0, "leaks_tracker": 0}
    by_missed: dict[int, list[int]] = {}
    for seed in seeds:
        rng = np.random.default_rng(seed)
        tracker = FaceTracker(fps=25, high_threshold=0.5, low_threshold=0.15, seed=0)
        truth = scene(faces, frames, rng, motion)
        period = rng.integers(35, 60, faces)
        occlusion = rng.integers(1, tracker.max_age + 1, faces)
        phase0 = rng.integers(0, 6, faces)
        in_view = np.zeros(faces, bool)
        since = np.zeros(faces, int)
        for t in range(frames):
            phase = (t + phase0) % period
            occluded = (phase >= 10) & (phase < 10 + occlusion)
            blurred = (phase >= 15 + occlusion) & (phase < 25 + occlusion)
            since = np.where(occluded, since + 1, 0)
            seen = np.flatnonzero(~occluded)
            size = (truth[t, seen, 2:] - truth[t, seen, :2]).mean(1, keepdims=True)
            jitter = np.where(blurred[seen, None], 0.06, 0.02) * size
            boxes = truth[t, seen] + rng.normal(0, 1, (len(seen), 4)) * jitter
            scores = np.where(blurred[seen], rng.uniform(0.15, 0.45, len(seen)), rng.uniform(0.6, 0.99, len(seen)))
            landmarks = boxes[:, None, :2] + TEMPLATE[None] * (boxes[:, None, 2:] - boxes[:, None, :2])
            in_view |= ~occluded & ~blurred
            det = Detections(boxes.astype(np.float32), scores.astype(np.float32), landmarks.astype(np.float32))
            out = tracker.update(det)
            out_boxes = np.stack([f.box for f in out]).astype(np.float64) if out else np.zeros((0, 4))
            totals["missed_detections"] += int(occluded.sum())
            totals["weak_detections"] += int(blurred[seen].sum())
            for i in np.flatnonzero(in_view):
                totals["face_frames"] += 1
                totals["leaks_rendered"] += _inside_covers(truth[t, i], out_boxes) < 0.95
                if occluded[i] or blurred[i]:
                    leak = _contained(truth[t, i], out_boxes) < 0.9
                    totals["face_frames_without_confident_detection"] += 1
                    totals["leaks_tracker"] += leak
                    if occluded[i]:
                        counts = by_missed.setdefault(int(since[i]), [0, 0])
                        counts[0] += leak
                        counts[1] += 1
    totals = {k: int(v) for k, v in totals.items()}
    return {
        "motion": motion, "faces": faces, "frames": frames, "seeds": len(seeds), **totals,
        "leak_rate_rendered": round(totals["leaks_rendered"] / max(totals["face_frames"], 1), 5),
        "leak_rate_tracker": round(totals["leaks_tracker"] / max(totals["face_frames_without_confident_detection"], 1), 5),
        "tracker_leaks_by_frames_missed": {k: f"{v[0]}/{v[1]}" for k, v in sorted(by_missed.items())},
    }


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--faces", type=int, default=50, help="faces per frame (default 50)")
    parser.add_argument("--frames", type=int, default=500, help="frames (default 500)")
    parser.add_argument("--json", type=Path, default=Path(__file__).parent / "results" / "tracker.json",
                        help="where to write the results (default benchmarks/results/tracker.json)")
    parser.add_argument("--leak-seeds", type=int, default=10, help="scenes per motion in the leak test (default 10; 0 skips it)")
    args = parser.parse_args()
    result = {
        "machine": {
            "platform": platform.platform(),
            "processor": _cpu_model(),
            "cpu_count": os.cpu_count(),
            "load_average_1m_at_start": round(os.getloadavg()[0], 2),
            "python": platform.python_version(),
            "numpy": np.__version__,
        },
        "faces": args.faces,
        "frames": args.frames,
        "update_ms": time_tracker(args.faces, args.frames),
        "filterpy_kalman_ms": time_filterpy(args.faces, min(args.frames, 200)),
        "leak": {motion: leak_rate(motion=motion, seeds=range(1, args.leak_seeds + 1))
                 for motion in ("walk", "sway")} if args.leak_seeds else None,
    }
    result["machine"]["load_average_1m_at_end"] = round(os.getloadavg()[0], 2)
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
