"""Identity guard: its cost per frame, and how far the guard's choices land from held-out people.

Cost (always): the SDGAN renderer on a 1280x720 canvas of N tracked faces (the in-package photos tiled),
F frames, guard off and on; ms per frame (mean over all frames: the guard's draws on the first frame and
its re-checks every ``--recheck`` frames are amortised), and the first frame alone.

Distances (with ``--photos DIR``, a ``prepare-data --package-photos`` folder): for every face of the
held-out people, ``--candidates`` identities are generated; the recognizer's distance of each to the
person is recorded (all candidates, the guard's pick = the farthest) and a montage of original /
generated / distance is written.

    python benchmarks/bench_guard.py --json benchmarks/results/guard.json
    python benchmarks/bench_guard.py --photos runs/allow --weights WEIGHTS --montage benchmarks/results/guard_heldout.png
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import cv2
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from sdgan_stream.anonymize import CoverRenderer  # noqa: E402
from sdgan_stream.config import AnonymizeOptions  # noqa: E402
from sdgan_stream.detect import CenterFaceDetector  # noqa: E402
from sdgan_stream.identity_guard import DlibRecognizer, GuardConfig, IdentityGuard  # noqa: E402
from sdgan_stream.render import SdganRenderer  # noqa: E402
from sdgan_stream.samples import allow_list_photos, face_photos, render_scene  # noqa: E402
from sdgan_stream.types import Face  # noqa: E402


def _renderer(base: SdganRenderer, guard: IdentityGuard | None, draws_per_frame: int = 0) -> SdganRenderer:
    return SdganRenderer(backend=base.backend, config=base.config, landmarker=base.landmarker,
                         fallback=CoverRenderer(), batch_size=base.batch_size, guard=guard, draws_per_frame=draws_per_frame)


def _tiled_faces(count: int, width: int = 1280, height: int = 720) -> tuple[np.ndarray, list[Face]]:
    """``count`` in-package faces on a grid, with their CenterFace detections as tracked faces."""
    from sdgan_stream.samples import _placed_head

    columns = int(np.ceil(np.sqrt(count)))
    rows = int(np.ceil(count / columns))
    face_width = min(width / columns, height / rows) / 2.6
    photos = face_photos()
    heads = [_placed_head(photos[i % len(photos)], face_width) for i in range(count)]
    positions = [((i % columns) * width / columns + 10, (i // columns) * height / rows + 5) for i in range(count)]
    image, _ = render_scene(np.full((height, width, 3), 120, np.uint8), heads, positions)
    found = CenterFaceDetector(threshold=0.4, detect_size=None).detect(image)
    faces = [Face(box=found.boxes[i], score=float(found.scores[i]), landmarks=found.landmarks[i], track_id=i + 1,
                  identity_seed=1000 + i) for i in range(len(found))]
    return image, faces


def _counted_face_checks(recognizer: DlibRecognizer) -> dict[str, float]:
    """Counts the calls of the recognizer's face check (the guard's second detector, asked about candidates
    pasted into the frame) and their time, in place."""
    tally = {"calls": 0, "ms": 0.0}
    ask = recognizer.finds_face

    def counted(image: np.ndarray, box: np.ndarray) -> bool:
        start = time.perf_counter()
        try:
            return ask(image, box)
        finally:
            tally["calls"] += 1
            tally["ms"] += (time.perf_counter() - start) * 1000

    recognizer.finds_face = counted  # type: ignore[method-assign]
    return tally


def measure_cost(base: SdganRenderer, counts: list[int], frames: int, recheck: int, candidates: int,
                 draws_per_frame: int = 0) -> list[dict]:
    """Per face count: guard off, guard on, and with ``draws_per_frame`` guard on with that draw budget (a live
    source's default is 1): ms per frame, the longest frame, and the first frame on which every face is served."""
    rows = []
    for count in counts:
        image, faces = _tiled_faces(count)
        for guard_on, budget in ((False, 0), (True, 0), *([(True, draws_per_frame)] if draws_per_frame else [])):
            guard = checks = None
            if guard_on:
                recognizer = DlibRecognizer()
                checks = _counted_face_checks(recognizer)
                guard = IdentityGuard(recognizer, GuardConfig(candidates=candidates, recheck_every=recheck))
            renderer = _renderer(base, guard, budget)
            times = []
            outcomes: dict[str, int] = {}
            all_served = None
            for index in range(frames):
                canvas = image.copy()
                start = time.perf_counter()
                served = 0
                for outcome in renderer.render(canvas, faces):
                    key = outcome.method if outcome.reason is None else f"{outcome.method}:{outcome.reason}"
                    outcomes[key] = outcomes.get(key, 0) + 1
                    served += outcome.method == "sdgan"
                times.append((time.perf_counter() - start) * 1000)
                if all_served is None and served == len(faces):
                    all_served = index
            row = {"faces": len(faces), "guard": guard_on, "draws_per_frame": budget, "frames": frames,
                   "ms_per_frame_mean": statistics.fmean(times), "ms_first_frame": times[0],
                   "ms_per_frame_median": statistics.median(times), "ms_longest_frame": max(times),
                   "first_frame_all_served": all_served, "outcomes": outcomes}
            if guard is not None:
                row["guard_counts"] = dict(guard.counts)
                row["face_checks"], row["face_check_detector_ms"] = int(checks["calls"]), round(checks["ms"], 1)
            rows.append(row)
            print(f"{len(faces):2d} faces, guard {'on ' if guard_on else 'off'}{f' ({budget}/frame)' if budget else ''}: "
                  f"{row['ms_per_frame_mean']:8.1f} ms/frame mean, {row['ms_first_frame']:8.1f} first, "
                  f"{row['ms_longest_frame']:8.1f} longest, {row['ms_per_frame_median']:7.1f} median, all served from frame "
                  f"{all_served}  {outcomes}"
                  + (f", {row['face_checks']} face checks" if guard is not None else ""), flush=True)
    return rows


def measure_distances(base: SdganRenderer, photos_dir: Path, candidates: int, montage: Path | None,
                      per_candidate: bool = False, pick: str = "farthest", min_distance: float = 0.0) -> dict:
    """Every held-out face: distance of each candidate identity to the person (dlib), the guard's pick."""
    recognizer = DlibRecognizer()
    detector = CenterFaceDetector(threshold=0.4, detect_size=None)
    results, tiles = [], []
    for index, photo in enumerate(allow_list_photos(photos_dir, split="heldout", one_per_person=False)):
        found = detector.detect(photo.image)
        if not len(found):
            continue
        best_match = int(np.argmax([_iou(b, photo.face_box) for b in found.boxes]))
        face = Face(box=found.boxes[best_match], score=1.0, landmarks=found.landmarks[best_match], track_id=1,
                    identity_seed=77 + index)
        guard = IdentityGuard(recognizer, GuardConfig(candidates=candidates, min_distance=min_distance, pick=pick))
        renderer = _renderer(base, guard)
        canvas = photo.image.copy()
        outcome = renderer.render(canvas, [face])[0]
        distances = [round(d, 4) for d in guard.candidate_distances_of(1)]
        picked = guard.distance_of(1)
        judge = _judge_distance(photo.image, canvas, face.box)
        results.append({"face": photo.name, "width": round(float(face.width), 1), "method": outcome.method,
                        "reason": outcome.reason, "guard_distance": round(picked, 4),
                        "judge_distance_on_frame": None if judge is None else round(judge, 4),
                        "candidate_distances": distances})
        print(f"{photo.name:34s} {face.width:5.0f} px  pick {picked:.3f}  on frame {judge if judge is None else round(judge, 3)}",
              flush=True)
        if per_candidate:
            results[-1]["candidates"] = _candidate_quality(base, photo.image, face, guard)
        tiles.append(_tile(photo.image, canvas, face.box, picked))
    if montage is not None and tiles:
        _write_montage(tiles[:12], montage)
    picks = [r["guard_distance"] for r in results]
    return {"faces": results, "mean_pick": statistics.fmean(picks) if picks else None,
            "share_pick_at_least": {m: float(np.mean([p >= m for p in picks])) for m in (0.6, 0.65, 0.7, 0.75, 0.8)}}


def _candidate_quality(base: SdganRenderer, image: np.ndarray, face: Face, guard: IdentityGuard) -> list[dict]:
    """Each candidate identity of the guard's draw pasted alone: dlib distance on the frame, landmark error
    (68 points, inter-ocular) against the original, and CenterFace's score at the face (is it still a face?)."""
    import dataclasses

    from sdgan_stream.recognizer import FaceRecognizer, landmark_error

    judge = FaceRecognizer()
    detector = CenterFaceDetector(threshold=0.1, detect_size=None)
    reference_points = judge.shape(image, face.box)
    reference = judge.embed(image, reference_points)
    plain = _renderer(base, None)
    rows = []
    for seed, guard_distance in zip(_seeds_of_first_draw(guard, face), guard.candidate_distances_of(1)):
        canvas = image.copy()
        plain.render(canvas, [dataclasses.replace(face, identity_seed=seed, track_id=None)])
        points = judge.shape(canvas, face.box)
        found = detector.detect(canvas)
        score = max((float(s) for b, s in zip(found.boxes, found.scores) if _iou(b, face.box) > 0.3), default=0.0)
        rows.append({"guard_distance": round(guard_distance, 4),
                     "judge_distance": round(float(np.linalg.norm(judge.embed(canvas, points) - reference)), 4),
                     "landmark_error": round(landmark_error(points, reference_points), 4), "detector_score": round(score, 3)})
    return rows


def _seeds_of_first_draw(guard: IdentityGuard, face: Face) -> list[int]:
    from sdgan_stream.identity_guard import candidate_seed

    return [candidate_seed(face.identity_seed, 0, k) for k in range(guard.config.candidates)]


def _judge_distance(original: np.ndarray, anonymized: np.ndarray, box: np.ndarray) -> float | None:
    """dlib's distance measured on the pasted frame at full resolution (its own landmarks on each image)."""
    from sdgan_stream.recognizer import FaceRecognizer

    judge = FaceRecognizer()
    before = judge.embed(original, judge.shape(original, box))
    after = judge.embed(anonymized, judge.shape(anonymized, box))
    return float(np.linalg.norm(before - after))


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    x1, y1 = max(a[0], b[0]), max(a[1], b[1])
    x2, y2 = min(a[2], b[2]), min(a[3], b[3])
    inter = max(0.0, x2 - x1) * max(0.0, y2 - y1)
    return inter / max((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter, 1e-6)


def _tile(original: np.ndarray, anonymized: np.ndarray, box: np.ndarray, distance: float, size: int = 160) -> np.ndarray:
    x1, y1, x2, y2 = box.astype(int)
    w, h = x2 - x1, y2 - y1
    x1, y1 = max(x1 - w // 4, 0), max(y1 - h // 4, 0)
    x2, y2 = min(x2 + w // 4, original.shape[1]), min(y2 + h // 4, original.shape[0])
    pair = [cv2.resize(im[y1:y2, x1:x2], (size, size), interpolation=cv2.INTER_AREA) for im in (original, anonymized)]
    tile = np.concatenate([*pair], axis=1)
    label = np.full((24, tile.shape[1], 3), 255, np.uint8)
    cv2.putText(label, f"dlib distance {distance:.2f}", (6, 17), cv2.FONT_HERSHEY_SIMPLEX, 0.5, (0, 0, 0), 1, cv2.LINE_AA)
    return np.concatenate([tile, label], axis=0)


def _write_montage(tiles: list[np.ndarray], path: Path, columns: int = 3) -> None:
    rows = [tiles[i : i + columns] for i in range(0, len(tiles), columns)]
    blank = np.full_like(tiles[0], 255)
    grid = np.concatenate([np.concatenate(r + [blank] * (columns - len(r)), axis=1) for r in rows], axis=0)
    path.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(path), grid[..., ::-1])
    print(f"wrote {path}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--faces", default="1,4,16", help="face counts for the cost part")
    parser.add_argument("--frames", type=int, default=60, help="frames per cost run")
    parser.add_argument("--recheck", type=int, default=30, help="guard re-check interval in frames")
    parser.add_argument("--candidates", type=int, default=6, help="identities per guard draw")
    parser.add_argument("--weights", default=None, help="generator bundle (default: the package's)")
    parser.add_argument("--backend", default="onnxruntime", help="generator backend")
    parser.add_argument("--photos", type=Path, default=None, help="a prepare-data --package-photos folder: measure held-out distances")
    parser.add_argument("--montage", type=Path, default=None, help="with --photos: write original/generated/distance tiles here")
    parser.add_argument("--per-candidate", action="store_true",
                        help="with --photos: also paste every candidate alone and measure distance, landmark error, detector score")
    parser.add_argument("--pick", default="farthest", choices=("farthest", "faithful"), help="the guard's pick rule")
    parser.add_argument("--min-distance", type=float, default=0.0,
                        help="with --photos: the guard's margin (0 = always keep the pick, to see every face's distance)")
    parser.add_argument("--draws-per-frame", type=int, default=0,
                        help="cost part: also guard on with this draw budget per frame (live sources: 1)")
    parser.add_argument("--skip-cost", action="store_true", help="only the distance part")
    parser.add_argument("--json", type=Path, default=None, help="write results here")
    args = parser.parse_args(argv)

    base = SdganRenderer.from_options(AnonymizeOptions(weights=args.weights, backend=args.backend, device="cpu", identity_guard=False))
    result: dict = {"machine": {"cpus": os.cpu_count(), "processor": platform.processor() or platform.machine()},
                    "weights": args.weights or "package default", "backend": base.backend.name, "candidates": args.candidates,
                    "recheck": args.recheck}
    if not args.skip_cost:
        result["cost"] = measure_cost(base, [int(v) for v in args.faces.split(",")], args.frames, args.recheck, args.candidates,
                                      args.draws_per_frame)
    if args.photos is not None:
        result["heldout"] = measure_distances(base, args.photos, args.candidates, args.montage, args.per_candidate,
                                              args.pick, args.min_distance)
        print(json.dumps({k: result["heldout"][k] for k in ("mean_pick", "share_pick_at_least")}, indent=1))
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=1) + "\n")
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
