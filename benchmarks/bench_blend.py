"""Paste-back seams: boundary score, realism checks and cost per blend method, under hard conditions.

For each face photo (the two the packages ship, or ``--photos``) and each condition

* ``plain``: the photo as it is;
* ``dark`` / ``light``: the person (a soft ellipse around the head) made dark-skinned / pale;
* ``side_light``: a strong horizontal light gradient across the head (0.35x to 1.15x);
* ``smaller`` / ``larger``: the map the generator paints scaled 0.85x / 1.12x about the face centre,
  the replaced region the union of both (as the renderer's identity reshape does);
* ``reshape``: the renderer's own identity reshape (strength 3.5), the default in video;

the packaged starter generator paints the face once, and every blend method pastes it. Measured per
face and method: :func:`sdgan_stream.blend.boundary_score` (1.0 = the untouched frame; the
``untouched`` row pastes the original crop back, what resampling alone costs), the skin colour step
(CIE Lab distance between the mean skin colour of the output and of the original, in the face's
crop), whether dlib's HOG finds the face (local check, as ``evaluate`` does), CenterFace's score, and
the paste's wall and CPU time per face at 128 px (median; one thread). The PNG beside the JSON shows,
per photo and condition, the first face's crop: input | previous | seamless.

``previous`` is the blend before issue 13 (Lab statistics over the rectangle around the face, the
context included, pasted with an outward ramp); ``seamless`` is the default now (see
:mod:`sdgan_stream.blend`), ``poisson`` its cloning step alone, ``lab`` the previous colour match
restricted to the region.

Run from the repository root: ``OMP_NUM_THREADS=1 PYTHONPATH=. .venv/bin/python benchmarks/bench_blend.py
[--photos 'DIR/*.jpg' --no-package-photos] [--out PATH]``
"""

from __future__ import annotations

import argparse
import dataclasses
import glob
import json
import os
import platform
import time
from collections.abc import Callable
from pathlib import Path

import cv2
import numpy as np

CONDITIONS = ("plain", "dark", "light", "side_light", "smaller", "larger", "reshape")


def _package_photos() -> dict[str, np.ndarray]:
    import matplotlib.cbook
    import skimage.data

    grace = cv2.imread(str(matplotlib.cbook.get_sample_data("grace_hopper.jpg", asfileobj=False)))
    return {"astronaut": skimage.data.astronaut(), "grace_hopper": cv2.cvtColor(grace, cv2.COLOR_BGR2RGB)}


def _head_weight(shape: tuple[int, ...], box: np.ndarray) -> np.ndarray:
    """A soft ellipse over the head and neck of the face in ``box``: where a person's skin tone changes."""
    x1, y1, x2, y2 = (float(v) for v in box)
    w, h = x2 - x1, y2 - y1
    weight = np.zeros(shape[:2], np.float32)
    cv2.ellipse(weight, (int((x1 + x2) / 2), int(y1 + 0.6 * h)), (int(0.95 * w), int(1.05 * h)), 0, 0, 360, 1.0, -1)
    return cv2.GaussianBlur(weight, (0, 0), 0.12 * w)[..., None]


def condition_image(image: np.ndarray, box: np.ndarray, condition: str) -> np.ndarray:
    """The photo under a lighting/skin condition (geometry conditions return it unchanged)."""
    f = image.astype(np.float32)
    if condition == "dark":
        dark = f * np.array([0.48, 0.38, 0.31], np.float32)  # light skin (~220, 170, 150) to dark brown
        f = f + _head_weight(image.shape, box) * (dark - f)
    elif condition == "light":
        f = f + _head_weight(image.shape, box) * 0.4 * (255.0 - f)
    elif condition == "side_light":  # on the head only, so the faces of a group photo each get their own
        x1, x2 = float(box[0]), float(box[2])
        xs = np.arange(image.shape[1], dtype=np.float32)
        ramp = np.clip((xs - (x1 - 0.5 * (x2 - x1))) / (2.0 * (x2 - x1)), 0.0, 1.0)
        f = f + _head_weight(image.shape, box) * (f * (0.35 + 0.8 * ramp)[None, :, None] - f)
    return np.clip(f + 0.5, 0, 255).astype(np.uint8)


def _scaled_map(prepared, scale: float):
    """The prepared face with its map scaled about the face centre; region = union (like the renderer)."""
    from sdgan_stream.faceprep import region_mask_from_labels
    from sdgan_stream.semantic import rasterize_semantic_map

    points = prepared.landmarks68_crop.astype(np.float64)
    centre = points[27:36].mean(0)
    points = (centre + (points - centre) * scale).astype(np.float32)
    labels = rasterize_semantic_map(points, prepared.size)
    region = np.maximum(prepared.region_mask, region_mask_from_labels(labels, points))
    return dataclasses.replace(prepared, labels=labels, region_mask=region)


def _previous_paste(image: np.ndarray, crop: np.ndarray, prepared) -> None:
    """The blend before this benchmark: Lab statistics applied over the rectangle the alpha touches
    (the context around the face too), then the crop pasted with the outward ramp."""
    from sdgan_stream.blend import DEFAULT_FEATHER, feather_alpha, match_color, paste_back
    from sdgan_stream.semantic import class_id

    alpha = feather_alpha(prepared.region_mask, DEFAULT_FEATHER * prepared.size)
    ys, xs = np.nonzero(alpha > 0)
    sub = (slice(ys.min(), ys.max() + 1), slice(xs.min(), xs.max() + 1))
    colour = crop.copy()
    colour[sub] = match_color(crop[sub], prepared.crop[sub], prepared.labels[sub] == class_id("skin"))
    paste_back(image, colour, prepared, method="none")


def _methods() -> dict[str, Callable]:
    from sdgan_stream.blend import paste_back

    methods: dict[str, Callable] = {"previous": _previous_paste}
    for name in ("lab", "poisson", "seamless"):
        methods[name] = lambda image, crop, prepared, name=name: paste_back(image, crop, prepared, method=name)
    return methods


def _skin_step(output: np.ndarray, original: np.ndarray, prepared) -> float:
    """CIE Lab distance between mean skin colours (output vs original) over the original map's skin."""
    from sdgan_stream.align import warp_to_crop
    from sdgan_stream.semantic import class_id

    skin = prepared.labels == class_id("skin")
    means = []
    for image in (output, original):
        crop = warp_to_crop(image, prepared.matrix, prepared.size).astype(np.float32) / 255.0
        means.append(cv2.cvtColor(crop, cv2.COLOR_RGB2Lab)[skin].mean(0))
    return float(np.linalg.norm(means[0] - means[1]))


def _face_view(image: np.ndarray, prepared, side: int = 192) -> np.ndarray:
    """The face's aligned crop of ``image`` at ``side`` px, for the montage."""
    from sdgan_stream.align import warp_to_crop

    return cv2.resize(warp_to_crop(image, prepared.matrix, prepared.size), (side, side), interpolation=cv2.INTER_CUBIC)


def _timeit(fn: Callable[[], None], repeats: int) -> tuple[float, float]:
    fn()
    wall, cpu = [], []
    for _ in range(repeats):
        start, start_cpu = time.perf_counter(), time.process_time()
        fn()
        wall.append((time.perf_counter() - start) * 1e3)
        cpu.append((time.process_time() - start_cpu) * 1e3)
    return float(np.median(wall)), float(np.median(cpu))


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    x1, y1, x2, y2 = max(a[0], b[0]), max(a[1], b[1]), min(a[2], b[2]), min(a[3], b[3])
    inter = max(0.0, x2 - x1) * max(0.0, y2 - y1)
    return float(inter / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--photos", default=None, help="glob of extra photos (default: only the package photos)")
    parser.add_argument("--no-package-photos", action="store_true", help="only the --photos")
    parser.add_argument("--repeats", type=int, default=20, help="timed pastes per face and method (default 20)")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "bench_blend.json")
    args = parser.parse_args()
    cv2.setNumThreads(1)

    from sdgan_stream.blend import boundary_score, paste_back
    from sdgan_stream.config import AnonymizeOptions
    from sdgan_stream.detect import CenterFaceDetector
    from sdgan_stream.faceprep import PreparedFace, prepare_faces
    from sdgan_stream.inspect_faces import read_image
    from sdgan_stream.landmarks import LandmarkDetector
    from sdgan_stream.recognizer import FaceRecognizer
    from sdgan_stream.render import SdganRenderer
    from sdgan_stream.types import Face

    photos = {} if args.no_package_photos else _package_photos()
    for path in sorted(glob.glob(args.photos)) if args.photos else []:
        photos[Path(path).stem] = read_image(path)
    renderer = SdganRenderer.from_options(AnonymizeOptions(method="sdgan", backend="eager", device="cpu"))
    detector = CenterFaceDetector(threshold=0.05, intra_op_threads=1)
    landmarker = LandmarkDetector()
    recognizer = FaceRecognizer()
    methods = _methods()

    rows: list[dict] = []
    montage: list[np.ndarray] = []  # per photo and condition, the first face: input | previous | seamless
    for photo_name, photo in photos.items():
        found = detector.detect(photo)
        faces = [Face(box=b, score=float(s), landmarks=lm, identity_seed=i) for i, (b, s, lm) in
                 enumerate(zip(found.boxes, found.scores, found.landmarks)) if s >= 0.5]
        for condition in CONDITIONS:
            image = photo
            for face in faces:
                image = condition_image(image, face.box, condition)
            prepared = [p for p in prepare_faces(image, faces, landmarker=landmarker, size=128) if isinstance(p, PreparedFace)]
            if condition == "smaller":
                prepared = [_scaled_map(p, 0.85) for p in prepared]
            elif condition == "larger":
                prepared = [_scaled_map(p, 1.12) for p in prepared]
            elif condition == "reshape":
                prepared = [renderer._reshaped(p) for p in prepared]
            if not prepared:
                continue
            crops = renderer.generate_crops(prepared)
            candidates = {"untouched": (lambda im, crop, p: paste_back(im, p.crop.copy(), p, method="none"))} | methods
            cells = {"input": image}
            for method, paste in candidates.items():
                output = image.copy()
                for p, crop in zip(prepared, crops):
                    paste(output, crop, p)
                cells[method] = output
                detections = detector.detect(output)
                for p, crop in zip(prepared, crops):
                    local = recognizer.detect_near(output, p.face.box)
                    original_local = recognizer.detect_near(image, p.face.box)
                    wall, cpu = _timeit(lambda p=p, crop=crop: paste(image.copy(), crop, p), args.repeats)
                    rows.append({
                        "photo": photo_name,
                        "face": int(p.face.identity_seed),
                        "face_px": round(p.face.width, 1),
                        "condition": condition,
                        "method": method,
                        "boundary_score": round(boundary_score(output, image, p), 4),
                        "skin_step_lab": round(_skin_step(output, image, p), 3),
                        "dlib_found": local is not None,
                        "dlib_found_original": original_local is not None,
                        "centerface_score": round(max([float(s) for b, s in zip(detections.boxes, detections.scores)
                                                       if _iou(b, p.face.box) > 0.4], default=0.0), 4),
                        "paste_ms": round(wall, 3),
                        "paste_cpu_ms": round(cpu, 3),
                    })
            montage.append(np.hstack([_face_view(cells[k], prepared[0]) for k in ("input", "previous", "seamless")]))
            print(f"{photo_name} {condition}: {len(prepared)} face(s)", flush=True)

    summary: dict[str, dict] = {}
    for method in ["untouched", *methods]:
        mine = [r for r in rows if r["method"] == method]
        if not mine:
            continue
        scores = np.array([r["boundary_score"] for r in mine])
        found_original = [r for r in mine if r["dlib_found_original"]]
        summary[method] = {
            "faces": len(mine),
            "boundary_score_median": round(float(np.median(scores)), 3),
            "boundary_score_p90": round(float(np.percentile(scores, 90)), 3),
            "boundary_score_max": round(float(scores.max()), 3),
            "boundary_score_median_by_condition": {
                c: round(float(np.median([r["boundary_score"] for r in mine if r["condition"] == c])), 3)
                for c in CONDITIONS if any(r["condition"] == c for r in mine)
            },
            "skin_step_lab_median": round(float(np.median([r["skin_step_lab"] for r in mine])), 2),
            "dlib_found_rate": round(float(np.mean([r["dlib_found"] for r in found_original])), 3) if found_original else None,
            "centerface_found_rate": round(float(np.mean([r["centerface_score"] >= 0.5 for r in mine])), 3),
            "paste_ms_median": round(float(np.median([r["paste_ms"] for r in mine])), 3),
            "paste_cpu_ms_median": round(float(np.median([r["paste_cpu_ms"] for r in mine])), 3),
        }
    result = {
        "machine": {
            "platform": platform.platform(),
            "cpu_count": os.cpu_count(),
            "load_avg_1m": round(os.getloadavg()[0], 2),
            "opencv": cv2.__version__,
            "cv2_threads": cv2.getNumThreads(),
        },
        "photos": sorted(photos),
        "conditions": list(CONDITIONS),
        "crop_px": 128,
        "summary": summary,
        "faces": rows,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1))
    if montage:
        cv2.imwrite(str(args.out.with_suffix(".png")), cv2.cvtColor(np.vstack(montage), cv2.COLOR_RGB2BGR))
    print(json.dumps(summary, indent=1))


if __name__ == "__main__":
    main()
