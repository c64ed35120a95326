"""Turned heads: served or covered, privacy coverage, and the landmark error of the generated face.

The two face photos the packages ship are turned by a yaw-like warp (:func:`sdgan_stream.samples.turn_head`:
the face as if painted on a cylinder; no nose standing out, so the yaw estimates read lower than the warp)
from -60 to 60 degrees. For each turn:

* ``served`` / ``fallback``: what :func:`sdgan_stream.faceprep.prepare_faces` decided;
* ``face_covered``: the share of the true face (the frontal fit's outline, jaw and forehead, carried
  through the same warp) inside the replaced region, or inside the cover for a fallback (1.0 = nothing
  of the face left visible);
* the packaged starter generator renders the frame through :class:`sdgan_stream.render.SdganRenderer`
  (host path, default blend), with its identity reshape (strength 3.5, the default) and without it
  (strength 0). Against the turned original, measured as ``evaluate`` does it with dlib (the
  recognizer side, :mod:`sdgan_stream.recognizer`): the 68-point landmark error in inter-ocular
  distances, whether dlib's HOG still finds the face, the identity distance; and CenterFace's score.

Writes ``benchmarks/results/bench_turned.json`` and a montage ``turned_heads.png`` (rows: photos;
columns: turns; each cell the turned original over the anonymized frame).

Run from the repository root: ``OMP_NUM_THREADS=1 PYTHONPATH=. .venv/bin/python benchmarks/bench_turned.py``
"""

from __future__ import annotations

import argparse
import json
import os
import platform
from pathlib import Path

import cv2
import numpy as np

YAWS = (-60, -50, -45, -30, -15, 0, 15, 30, 45, 50, 60)


def _photos() -> dict[str, np.ndarray]:
    import matplotlib.cbook
    import skimage.data

    grace = cv2.imread(str(matplotlib.cbook.get_sample_data("grace_hopper.jpg", asfileobj=False)))
    return {"astronaut": skimage.data.astronaut(), "grace_hopper": cv2.cvtColor(grace, cv2.COLOR_BGR2RGB)}


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    x1, y1, x2, y2 = max(a[0], b[0]), max(a[1], b[1]), min(a[2], b[2]), min(a[3], b[3])
    inter = max(0.0, x2 - x1) * max(0.0, y2 - y1)
    return float(inter / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter))


def _replaced_or_covered(image_shape, prepared, face, fallback_margin: float) -> np.ndarray:
    from sdgan_stream.align import warp_to_image
    from sdgan_stream.covers import cover_mask, cover_region
    from sdgan_stream.faceprep import PreparedFace

    mask = np.zeros(image_shape[:2], bool)
    if isinstance(prepared, PreparedFace):
        warped = warp_to_image(prepared.region_mask, prepared.matrix, image_shape)
        if warped is not None:
            patch, (x1, y1, x2, y2) = warped
            mask[y1:y2, x1:x2] = patch > 0.5
        return mask
    region = cover_region(face.box, margin=fallback_margin, image_shape=image_shape)
    if region is not None:
        mask[region[1]:region[3], region[0]:region[2]] = cover_mask(face.box, region, margin=fallback_margin)
    return mask


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "bench_turned.json")
    args = parser.parse_args()
    cv2.setNumThreads(1)

    from sdgan_stream.config import AnonymizeOptions
    from sdgan_stream.detect import CenterFaceDetector
    from sdgan_stream.faceprep import PreparedFace, prepare_faces
    from sdgan_stream.landmarks import LandmarkDetector, estimate_yaw_deg
    from sdgan_stream.recognizer import FaceRecognizer, landmark_error
    from sdgan_stream.render import SdganRenderer
    from sdgan_stream.samples import turn_head
    from sdgan_stream.semantic import face_outline
    from sdgan_stream.types import Face

    options = AnonymizeOptions(method="sdgan", backend="eager", device="cpu", frame_path="host")
    renderer = SdganRenderer.from_options(options)
    default_strength = renderer.reshape_strength
    detector = CenterFaceDetector(threshold=0.5, detect_size=None, intra_op_threads=1)
    weak_detector = CenterFaceDetector(threshold=0.05, detect_size=None, intra_op_threads=1)
    landmarker = LandmarkDetector()
    recognizer = FaceRecognizer()

    rows: list[dict] = []
    montage_rows = []
    for name, photo in _photos().items():
        found = detector.detect(photo)
        frontal = Face(box=found.boxes[0], score=float(found.scores[0]), landmarks=found.landmarks[0])
        (fit,) = landmarker.fit(photo, [frontal])
        outline = face_outline(fit.points)
        cells = []
        for yaw in YAWS:
            turn = turn_head(photo, frontal.box, yaw)
            image = turn.image
            truth_outline, _ = turn.points(outline)
            truth = np.zeros(image.shape[:2], np.uint8)
            cv2.fillPoly(truth, [np.round(truth_outline).astype(np.int32)], 1)
            truth = truth.astype(bool)
            found = detector.detect(image)
            row: dict = {"photo": name, "yaw_warp_deg": yaw}
            if not len(found):
                row["fallback"] = "not_detected"
                rows.append(row)
                cells.append(np.zeros((340, 150, 3), np.uint8))
                continue
            best = int(np.argmax(found.scores))
            face = Face(box=found.boxes[best], score=float(found.scores[best]), landmarks=found.landmarks[best],
                        identity_seed=7, source="untracked")
            (prepared,) = prepare_faces(image, [face], landmarker=landmarker, size=renderer.config.image_size)
            covered = _replaced_or_covered(image.shape, prepared, face, options.cover_margin)
            row.update(
                served=isinstance(prepared, PreparedFace),
                fallback=None if isinstance(prepared, PreparedFace) else prepared.reason,
                yaw_estimate_5pt_deg=round(estimate_yaw_deg(*face.landmarks[:3]), 1),
                face_covered=round(float(covered[truth].mean()), 5),
                face_pixels_left_visible=int((truth & ~covered).sum()),
            )
            if isinstance(prepared, PreparedFace):
                p = prepared.landmarks68
                row["yaw_estimate_68pt_deg"] = round(estimate_yaw_deg(p[36:42].mean(0), p[42:48].mean(0), p[30]), 1)
            original_local = recognizer.detect_near(image, face.box)
            shape_box = original_local.box if original_local is not None else face.box
            points_original = recognizer.shape(image, shape_box)
            embedding_original = recognizer.embed(image, points_original)
            row["dlib_found_original"] = original_local is not None
            for label, strength in (("reshape", default_strength), ("no_reshape", 0.0)):
                renderer.reshape_strength = strength
                renderer._previous = {}  # no temporal smoothing across turns
                out = image.copy()
                (outcome,) = renderer.render(out, [face])
                local = recognizer.detect_near(out, face.box)
                points = recognizer.shape(out, local.box if local is not None else shape_box)
                embedding = recognizer.embed(out, points if local is not None else points_original)
                detections = weak_detector.detect(out)
                row[label] = {
                    "method": outcome.method,
                    "landmark_error": round(landmark_error(points, points_original), 4),
                    "dlib_found": local is not None,
                    "identity_distance": round(float(np.linalg.norm(embedding - embedding_original)), 4),
                    "centerface_score": round(max([float(s) for b, s in zip(detections.boxes, detections.scores)
                                                   if _iou(b, face.box) > 0.4], default=0.0), 4),
                }
                if label == "reshape":
                    x1, y1, x2, y2 = (float(v) for v in frontal.box)
                    w = x2 - x1
                    crop = (slice(int(max(y1 - 0.45 * w, 0)), int(y2 + 0.3 * w)), slice(int(max(x1 - 0.5 * w, 0)), int(x2 + 0.5 * w)))
                    pair = [cv2.resize(np.ascontiguousarray(im[crop]), (150, 170), interpolation=cv2.INTER_AREA) for im in (image, out)]
                    cells.append(np.vstack(pair))
            renderer.reshape_strength = default_strength
            rows.append(row)
            print(name, yaw, {k: v for k, v in row.items() if k not in ("photo",)}, flush=True)
        montage_rows.append(np.hstack(cells))

    summary: dict[str, dict] = {}
    for label in ("reshape", "no_reshape"):
        for lo, hi in ((0, 30), (31, 45), (46, 60)):
            sel = [r for r in rows if label in r and lo <= abs(r["yaw_warp_deg"]) <= hi]
            if sel:
                summary[f"{label}_yaw_{lo}_{hi}"] = {
                    "faces": len(sel),
                    "generated": sum(r[label]["method"] == "sdgan" for r in sel),
                    "landmark_error_median": round(float(np.median([r[label]["landmark_error"] for r in sel])), 4),
                    "dlib_found_rate": round(float(np.mean([r[label]["dlib_found"] for r in sel])), 3),
                    "identity_distance_mean": round(float(np.mean([r[label]["identity_distance"] for r in sel])), 4),
                }
    summary["face_pixels_left_visible_total"] = int(sum(r.get("face_pixels_left_visible", 0) for r in rows))
    summary["served"] = f"{sum(bool(r.get('served')) for r in rows)} of {len(rows)}"
    result = {
        "machine": {"platform": platform.platform(), "cpu_count": os.cpu_count(), "load_avg_1m": round(os.getloadavg()[0], 2)},
        "yaws_deg": list(YAWS),
        "summary": summary,
        "faces": rows,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1))
    montage = np.vstack([r for r in montage_rows if r is not None])
    cv2.imwrite(str(args.out.with_name("turned_heads.png")), cv2.cvtColor(montage, cv2.COLOR_RGB2BGR))
    print(json.dumps(summary, indent=1))


if __name__ == "__main__":
    main()
