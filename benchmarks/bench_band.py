"""The dark ring: what a generator paints in the replaced region past the map's face, against the surroundings.

The renderer replaces more than the map's face (:func:`sdgan_stream.faceprep.replaced_region`: a turned head's
margin and the detector box's ellipse join it). A generator trained on the map's face alone never learned that
band and painted it dark: a ring or hood around the face. For every face of the held-out split (people no
generator here was trained on), with the detector's box as prepare-data recorded it and grown 1.3x (a
tracker's widened box), this generates the face with each ``--weights`` bundle (identity seeds 1..``--codes``)
and reports, over the band's pixels: the mean grey level painted there, the mean level of the surroundings there
(a Gaussian-weighted mean of the pixels outside the region, :data:`SIGMA` of the crop side), and the mean
absolute difference.

    OMP_NUM_THREADS=1 python benchmarks/bench_band.py --photos runs/allow --weights package,runs/ft/bundle \\
        --json benchmarks/results/realism/band_s11.json
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import cv2
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

SIGMA = 6.0 / 128
GROWS = (1.0, 1.3)


def surroundings(crop: np.ndarray, region: np.ndarray, sigma_px: float) -> np.ndarray:
    """(S, S, 3) Gaussian-weighted mean colour of the pixels outside ``region`` around each pixel."""
    known = (~region).astype(np.float32)
    total = cv2.GaussianBlur(crop.astype(np.float32) * known[..., None], (0, 0), sigma_px)
    weight = cv2.GaussianBlur(known, (0, 0), sigma_px)
    return total / np.maximum(weight, 1e-6)[..., None]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--photos", type=Path, required=True, help="prepare-data --package-photos folder")
    parser.add_argument("--weights", default="package", help="comma list of generator bundles ('package': the shipped one)")
    parser.add_argument("--codes", type=int, default=3, help="identity seeds per face")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)

    from sdgan_stream.backends import create_backend
    from sdgan_stream.faceprep import PreparedFace, prepare_faces, region_mask_from_labels
    from sdgan_stream.landmarks import LandmarkDetector
    from sdgan_stream.models.bundle import load_generator_bundle
    from sdgan_stream.models.identity import identity_codes
    from sdgan_stream.samples import allow_list_photos
    from sdgan_stream.semantic import one_hot
    from sdgan_stream.types import Face

    landmarker = LandmarkDetector()
    faces: list[tuple[str, float, PreparedFace]] = []
    for photo in allow_list_photos(args.photos, one_per_person=False):
        box = photo.face_box  # the detector's box, as prepare-data recorded it
        for grow in GROWS:
            middle, half = (box[:2] + box[2:]) / 2, (box[2:] - box[:2]) / 2 * grow
            face = Face(box=np.concatenate([middle - half, middle + half]).astype(np.float32), score=1.0)
            prepared = prepare_faces(photo.image, [face], landmarker=landmarker)[0]
            if isinstance(prepared, PreparedFace):
                faces.append((photo.name, grow, prepared))
    result: dict = {"faces": len({name for name, _, _ in faces}), "grows": GROWS, "codes": args.codes, "bundles": {},
                    "command": "python benchmarks/bench_band.py " + " ".join(argv if argv is not None else sys.argv[1:])}
    for weights in args.weights.split(","):
        generator, config, _ = load_generator_bundle(None if weights == "package" else weights)
        backend = create_backend("onnxruntime", generator, config, device="cpu", max_batch=args.codes)
        rows = []
        for name, grow, p in faces:
            region = p.region_mask > 0
            band = region & ~(region_mask_from_labels(p.labels, p.landmarks68_crop) > 0)
            if not band.any():
                continue
            masked = p.crop.copy()
            masked[region] = 0
            batch = np.repeat((masked.transpose(2, 0, 1)[None].astype(np.float32) / 127.5 - 1.0), args.codes, 0)
            semantic = np.repeat(one_hot(p.labels, config.label_nc)[None], args.codes, 0)
            out = backend.generate(batch, semantic, identity_codes(list(range(1, args.codes + 1)), config.identity_dim))
            painted = np.clip((out.transpose(0, 2, 3, 1) + 1.0) * 127.5, 0, 255)[:, band]
            around = surroundings(p.crop, region, SIGMA * p.size)[band]
            rows.append({"face": name, "grow": grow, "band_pixels": int(band.sum()), "painted_mean": float(painted.mean()),
                         "surroundings_mean": float(around.mean()), "abs_difference": float(np.abs(painted - around[None]).mean())})
        close = getattr(backend, "close", None)
        if close is not None:
            close()
        summary = {f"grow_{grow}": {key: float(np.mean([r[key] for r in rows if r["grow"] == grow]))
                                    for key in ("painted_mean", "surroundings_mean", "abs_difference", "band_pixels")} for grow in GROWS}
        result["bundles"][weights] = {"summary": summary, "rows": rows}
        print(weights, json.dumps(summary), flush=True)
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
