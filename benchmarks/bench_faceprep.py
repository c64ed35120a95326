"""Face geometry cost and accuracy: landmarks, semantic map, preparation, paste-back (per face, CPU).

Writes JSON (default ``benchmarks/results/bench_faceprep.json``) with

* ``timing_ms``: wall-clock median and 90th percentile and CPU-time median per face of the dlib
  68-point fit (single pass = the default, and with the refinement pass), the map rasterization at
  128 and 256 px, the whole ``prepare_faces`` per face (default single-pass fit included) and
  ``paste_back`` (Lab colour matching) per face;
* ``accuracy``: mean landmark error, in eye distances, of our fit on rotated and scaled copies of the
  package photos against dlib's own pipeline (HOG detector + predictor) on the upright photo, by
  rotation angle, for the derotated crop (ours, single pass and refined) and for dlib run on the
  rotated image inside a box mapped from the CenterFace box (the naive way).

Run: ``.venv/bin/python benchmarks/bench_faceprep.py [--repeats 200] [--out PATH]``
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

import cv2
import numpy as np


def _photos() -> dict[str, np.ndarray]:
    import matplotlib.cbook
    import skimage.data

    grace = cv2.imread(str(matplotlib.cbook.get_sample_data("grace_hopper.jpg", asfileobj=False)))
    return {"astronaut": skimage.data.astronaut(), "grace_hopper": cv2.cvtColor(grace, cv2.COLOR_BGR2RGB)}


def _timeit(fn, repeats: int) -> dict[str, float]:
    """Wall-clock median / p90 and the median of this process's CPU time (all work here runs on one
    thread, so CPU time is the cost a quiet machine would show even when other jobs share the cores)."""
    fn()  # warm up
    wall, cpu = [], []
    for _ in range(repeats):
        start, start_cpu = time.perf_counter(), time.process_time()
        fn()
        wall.append((time.perf_counter() - start) * 1e3)
        cpu.append((time.process_time() - start_cpu) * 1e3)
    return {
        "median": round(float(np.median(wall)), 3),
        "p90": round(float(np.percentile(wall, 90)), 3),
        "cpu_median": round(float(np.median(cpu)), 3),
    }


def _rotate(image: np.ndarray, angle: float, scale: float) -> tuple[np.ndarray, np.ndarray]:
    h, w = image.shape[:2]
    m = cv2.getRotationMatrix2D((w / 2, h / 2), angle, scale)
    cos, sin = abs(m[0, 0]), abs(m[0, 1])
    new_w, new_h = int(w * cos + h * sin), int(w * sin + h * cos)
    m[0, 2] += new_w / 2 - w / 2
    m[1, 2] += new_h / 2 - h / 2
    return cv2.warpAffine(image, m, (new_w, new_h), borderMode=cv2.BORDER_REFLECT101), m


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=200, help="timed runs per measurement (default 200)")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "bench_faceprep.json")
    args = parser.parse_args()
    cv2.setNumThreads(1)

    import dlib

    from sdgan_stream.blend import paste_back
    from sdgan_stream.detect import CenterFaceDetector
    from sdgan_stream.faceprep import prepare_faces
    from sdgan_stream.landmarks import LandmarkDetector, dlib_model_path
    from sdgan_stream.semantic import rasterize_semantic_map
    from sdgan_stream.types import Face

    photos = _photos()
    detector = CenterFaceDetector(threshold=0.5, detect_size=None, intra_op_threads=1)  # no spinning pool
    refined, single = LandmarkDetector(refine=True), LandmarkDetector(refine=False)

    def face_of(image: np.ndarray) -> Face:
        dets = detector.detect(image)
        i = int(np.argmax(dets.scores))
        return Face(box=dets.boxes[i], score=float(dets.scores[i]), landmarks=dets.landmarks[i])

    timing: dict[str, dict] = {}
    for name, image in photos.items():
        face = face_of(image)
        entry = {
            "face_width_px": round(face.width, 1),
            "landmarks_refine": _timeit(lambda: refined.fit(image, [face]), args.repeats),
            "landmarks_single_pass": _timeit(lambda: single.fit(image, [face]), args.repeats),
        }
        for size in (128, 256):
            (prepared,) = prepare_faces(image, [face], landmarker=single, size=size)
            lm = prepared.landmarks68_crop
            entry[f"map_{size}"] = _timeit(lambda: rasterize_semantic_map(lm, size), args.repeats)
            entry[f"prepare_{size}"] = _timeit(
                lambda: prepare_faces(image, [face], landmarker=single, size=size), args.repeats
            )
            generated = prepared.crop[:, ::-1].copy()
            entry[f"paste_back_{size}"] = _timeit(lambda: paste_back(image.copy(), generated, prepared), args.repeats)
            # as the renderer pastes: kept off the regions of faces pasted before on the frame
            entry[f"paste_back_guarded_{size}"] = _timeit(
                lambda: paste_back(image.copy(), generated, prepared, replaced=np.zeros(image.shape[:2], bool)), args.repeats
            )
        timing[name] = entry

    # accuracy under in-plane rotation and scale, against dlib's own pipeline on the upright photo
    hog = dlib.get_frontal_face_detector()
    predictor = dlib.shape_predictor(str(dlib_model_path()))
    errors: dict[str, dict[int, list[float]]] = {
        "ours_derotated_single_pass": {},
        "ours_derotated_refine": {},
        "naive_box_on_rotated_image": {},
    }
    for image in photos.values():
        rect = max(hog(image, 1), key=lambda r: r.area())
        reference = np.array([(p.x, p.y) for p in predictor(image, rect).parts()], np.float64)
        ipd = float(np.hypot(*(reference[42:48].mean(0) - reference[36:42].mean(0))))
        for angle in (0, -20, 20, -35, 35, -45, 45):
            for scale in (0.35, 1.0, 2.0):
                rotated, m = _rotate(image, angle, scale)
                face = face_of(rotated)
                inverse = cv2.invertAffineTransform(m)
                ours = single(rotated, [face])[0]
                ours_refined = refined(rotated, [face])[0]
                # naive: a square of the CenterFace box's width around its centre (fits dlib's HOG box upright)
                cx, cy = (face.box[0] + face.box[2]) / 2, (face.box[1] + face.box[3]) / 2
                half = 1.01 * face.width / 2
                box = dlib.rectangle(int(cx - half), int(cy - half), int(cx + half), int(cy + half))
                naive = np.array([(p.x, p.y) for p in predictor(rotated, box).parts()], np.float64)
                for key, points in (
                    ("ours_derotated_single_pass", ours),
                    ("ours_derotated_refine", ours_refined),
                    ("naive_box_on_rotated_image", naive),
                ):
                    if points is None:
                        errors[key].setdefault(abs(angle), []).append(float("nan"))
                        continue
                    back = np.asarray(points, np.float64) @ inverse[:, :2].T + inverse[:, 2]
                    err = np.linalg.norm(back - reference, axis=1).mean() / ipd
                    errors[key].setdefault(abs(angle), []).append(float(err))
    accuracy = {
        key: {
            f"abs_angle_{angle}": {"mean": round(float(np.nanmean(v)), 4), "max": round(float(np.nanmax(v)), 4), "n": len(v)}
            for angle, v in sorted(by_angle.items())
        }
        for key, by_angle in errors.items()
    }
    result = {
        "machine": {
            "platform": platform.platform(),
            "processor": platform.processor() or platform.machine(),
            "cpu_count": os.cpu_count(),
            "load_avg_1m": round(os.getloadavg()[0], 2),
            "dlib": dlib.__version__,
            "opencv": cv2.__version__,
            "cv2_threads": 1,
        },
        "timing_ms": timing,
        "accuracy_mean_error_in_eye_distances": accuracy,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1))
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
