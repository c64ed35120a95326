"""``sdgan-stream inspect IMAGE -o DIR``: pictures of every stage of the face geometry, per face.

For each detected face ``DIR/face_XX/`` receives:

* ``crop.png``: the aligned crop the generator sees (S x S).
* ``semantic.png``: the 11-class map in colour (:data:`sdgan_stream.semantic.PALETTE`).
* ``mask.png``: the region the generator replaces (white).
* ``composite.png``: the crop with the map laid over it at half opacity, the region's outline (white)
  and the 68 landmarks (yellow), drawn at 2x for faces at 128 px, for checking the fit by eye.
* ``generated.png``: the generator's output, when a generator is given.

``DIR/overview.png`` shows the whole image with every face's box (green: served, red: cover, with the
reason) and landmarks; with a generator ``DIR/anonymized.png`` is the frame after paste-back (covers for
fallbacks). ``DIR/faces.json`` lists per face: box, score, 5 and 68 landmarks, ``classes`` (names present
in its map), ``fallback`` (reason or null) and its folder.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Protocol

import cv2
import numpy as np

from .blend import paste_back
from .covers import CoverMethod, apply_cover
from .errors import InputError, OutputError
from .faceprep import FaceFallback, Landmarker, PreparedFace, prepare_faces
from .semantic import classes_present, colorize
from .types import Detections, Face

log = logging.getLogger(__name__)

__all__ = ["FaceGenerator", "inspect_image", "read_image", "write_image"]


class _Detector(Protocol):
    def detect(self, image: np.ndarray) -> Detections: ...


# A generator for inspection: prepared faces of one frame in, one (S, S, 3) uint8 crop per face out.
FaceGenerator = Callable[[Sequence[PreparedFace]], Sequence[np.ndarray]]


def read_image(path: str | Path) -> np.ndarray:
    """Read an image file as RGB uint8; raises :class:`InputError` when it cannot be read."""
    data = np.fromfile(str(path), np.uint8) if Path(path).is_file() else None
    image = cv2.imdecode(data, cv2.IMREAD_COLOR) if data is not None and data.size else None
    if image is None:
        raise InputError(f"cannot read image {path}")
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)


def write_image(path: Path, image: np.ndarray) -> None:
    """Write an RGB (or single-channel) uint8 image as PNG."""
    bgr = cv2.cvtColor(image, cv2.COLOR_RGB2BGR) if image.ndim == 3 else image
    if not cv2.imwrite(str(path), bgr):
        raise OutputError(f"cannot write {path}")


def _composite(prepared: PreparedFace) -> np.ndarray:
    scale = 2 if prepared.size <= 128 else 1
    size = prepared.size * scale
    crop = cv2.resize(prepared.crop, (size, size), interpolation=cv2.INTER_CUBIC)
    labels = cv2.resize(prepared.labels, (size, size), interpolation=cv2.INTER_NEAREST)
    colour = colorize(labels)
    out = crop.astype(np.float32)
    face = labels > 0
    out[face] = 0.5 * out[face] + 0.5 * colour[face]
    out = out.astype(np.uint8)
    region = cv2.resize((prepared.region_mask > 0.5).astype(np.uint8), (size, size), interpolation=cv2.INTER_NEAREST)
    contours, _ = cv2.findContours(region, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
    cv2.drawContours(out, contours, -1, (255, 255, 255), 1)
    for x, y in prepared.landmarks68_crop * scale:
        cv2.circle(out, (int(round(x)), int(round(y))), 1, (255, 255, 0), -1)
    return out


def _overview(image: np.ndarray, results: Sequence[PreparedFace | FaceFallback]) -> np.ndarray:
    out = image.copy()
    thick = max(1, round(max(image.shape[:2]) / 600))
    for index, result in enumerate(results):
        x1, y1, x2, y2 = (int(round(v)) for v in result.face.box)
        ok = isinstance(result, PreparedFace)
        colour = (0, 220, 0) if ok else (255, 40, 40)
        cv2.rectangle(out, (x1, y1), (x2, y2), colour, thick)
        text = f"{index:02d}" if ok else f"{index:02d} {result.reason}"
        cv2.putText(out, text, (x1, max(y1 - 4, 12)), cv2.FONT_HERSHEY_SIMPLEX, 0.4 * thick, colour, thick)
        if ok:
            for x, y in result.landmarks68:
                cv2.circle(out, (int(round(x)), int(round(y))), thick, (255, 255, 0), -1)
    return out


def _faces_from(detections: Detections) -> list[Face]:
    # One identity seed per face, so that every face of the picture gets its own generated identity.
    return [
        Face(box=box, score=float(score), landmarks=landmarks, identity_seed=index, source="untracked")
        for index, (box, score, landmarks) in enumerate(zip(detections.boxes, detections.scores, detections.landmarks))
    ]


def inspect_image(
    image_path: str | Path,
    out_dir: str | Path,
    *,
    detector: _Detector,
    landmarker: Landmarker,
    generator: FaceGenerator | None = None,
    size: int = 128,
    fallback: CoverMethod = "blur",
) -> list[dict]:
    """Detect, prepare and (optionally) generate every face of one image; write the pictures and faces.json.

    Faces the generator cannot serve get the ``fallback`` cover in ``anonymized.png``. Returns the
    per-face records written to ``faces.json``.
    """
    image = read_image(image_path)
    out = Path(out_dir)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise OutputError(f"cannot create output folder {out}: {error}") from error
    faces = _faces_from(detector.detect(image))
    results = prepare_faces(image, faces, landmarker=landmarker, size=size)
    served = [r for r in results if isinstance(r, PreparedFace)]
    generated = list(generator(served)) if generator is not None and served else []
    generated_by_id = {id(p): g for p, g in zip(served, generated)}

    records: list[dict] = []
    anonymized = image.copy() if generator is not None else None
    # as the renderer draws a frame: no paste ring over another face's region, covers last
    replaced = np.zeros(image.shape[:2], bool)
    to_cover: list[np.ndarray] = []
    for index, result in enumerate(results):
        face = result.face
        record: dict = {
            "index": index,
            "box": [round(float(v), 2) for v in face.box],
            "score": round(float(face.score), 4),
            "landmarks5": None if face.landmarks is None else np.round(face.landmarks.astype(np.float64), 2).tolist(),
            "landmarks68": None,
            "classes": [],
            "fallback": None,
            "dir": None,
        }
        if isinstance(result, FaceFallback):
            record["fallback"] = result.reason
            to_cover.append(face.box)
            records.append(record)
            continue
        face_dir = out / f"face_{index:02d}"
        face_dir.mkdir(exist_ok=True)
        write_image(face_dir / "crop.png", result.crop)
        write_image(face_dir / "semantic.png", colorize(result.labels))
        write_image(face_dir / "mask.png", (np.clip(result.region_mask, 0, 1) * 255).astype(np.uint8))
        write_image(face_dir / "composite.png", _composite(result))
        crop_out = generated_by_id.get(id(result))
        if crop_out is not None:
            write_image(face_dir / "generated.png", np.asarray(crop_out, np.uint8))
            paste_back(anonymized, np.asarray(crop_out, np.uint8), result, replaced=replaced)
        record.update(
            landmarks68=np.round(result.landmarks68.astype(np.float64), 2).tolist(),
            classes=classes_present(result.labels),
            dir=face_dir.name,
        )
        records.append(record)

    write_image(out / "overview.png", _overview(image, results))
    if anonymized is not None:
        for box in to_cover:
            apply_cover(anonymized, box, method=fallback)
        write_image(out / "anonymized.png", anonymized)
    with open(out / "faces.json", "w", encoding="utf-8") as fh:
        json.dump({"image": str(image_path), "size": size, "faces": records}, fh, indent=1)
    log.info("inspected %s: %d faces, %d served, written to %s", image_path, len(results), len(served), out)
    return records
