"""``prepare-data``: photos -> aligned crops, semantic maps and identity labels in shards.

Identity labels:

* ``subfolders`` - ``IMAGES_DIR/person/xxx.jpg``: the first-level folder names the identity
  (CelebA re-organised by identity, VGGFace2, LFW, CASIA-WebFace layouts);
* ``per-image`` - every image is its own identity (FFHQ, CelebAMask-HQ without identity files);
* ``file:PATH`` - a text file of ``relative/path.jpg identity`` lines (CelebA's ``identity_CelebA.txt``;
  names are matched on the file name when the path is not found);
* ``auto`` - ``subfolders`` when the images sit in sub-folders, else ``per-image``.

Each photo is run through the same detector -> landmarks -> alignment -> map chain as inference
(:func:`sdgan_stream.faceprep.prepare_faces`), so training crops look exactly like inference crops.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

from sdgan_stream.errors import InputError
from sdgan_stream.types import Face

from .shards import ShardWriter

log = logging.getLogger(__name__)

__all__ = ["IMAGE_SUFFIXES", "iter_images", "prepare_dataset", "sample_photos"]

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp")


def sample_photos() -> list[tuple[str, np.ndarray]]:
    """The real face photos that installed packages ship (scikit-image's astronaut, matplotlib's Grace Hopper)."""
    import matplotlib.cbook
    import skimage.data
    from PIL import Image

    with Image.open(matplotlib.cbook.get_sample_data("grace_hopper.jpg", asfileobj=False)) as im:
        hopper = np.asarray(im.convert("RGB"))
    return [("astronaut", skimage.data.astronaut()), ("grace_hopper", hopper)]


def iter_images(images_dir: Path) -> Iterator[Path]:
    for path in sorted(images_dir.rglob("*")):
        if path.suffix.lower() in IMAGE_SUFFIXES and path.is_file():
            yield path


def _identity_labeller(images_dir: Path, paths: list[Path], identities: str) -> Callable[[Path], str]:
    if identities == "auto":
        nested = sum(1 for p in paths if p.parent != images_dir)
        identities = "subfolders" if nested > len(paths) / 2 else "per-image"
        log.info("identity labels: %s", identities)
    if identities == "subfolders":
        return lambda p: p.relative_to(images_dir).parts[0] if p.parent != images_dir else p.stem
    if identities == "per-image":
        return lambda p: str(p.relative_to(images_dir).with_suffix(""))
    if identities.startswith("file:"):
        table: dict[str, str] = {}
        for line in Path(identities[5:]).read_text().splitlines():
            parts = line.split()
            if len(parts) >= 2:
                table[parts[0]] = parts[1]
        by_name = {Path(k).name: v for k, v in table.items()}

        def from_file(p: Path) -> str:
            rel = p.relative_to(images_dir).as_posix()
            return table.get(rel) or by_name.get(p.name) or f"unlabelled/{rel}"

        return from_file
    raise ValueError(f"unknown identity labelling {identities!r}: use auto, subfolders, per-image or file:PATH")


def _read_rgb(path: Path) -> np.ndarray | None:
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            return np.asarray(im.convert("RGB"))
    except (OSError, UnidentifiedImageError) as exc:
        log.warning("skipping unreadable image %s: %s", path, exc)
        return None


def prepare_dataset(
    out_dir: str | Path,
    *,
    images_dir: str | Path | None = None,
    use_sample_photos: bool = False,
    size: int = 128,
    identities: str = "auto",
    all_faces: bool = False,
    threshold: float = 0.5,
    min_face: float = 48.0,
    shard_size: int = 1000,
    limit: int | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> dict[str, Any]:
    """Detect, align and label faces into shards; returns the manifest.

    ``all_faces`` keeps every face of a photo (each an identity of its own unless labelled by
    folder); by default only the largest face is kept, the usual case for face data sets.
    """
    from sdgan_stream.detect import CenterFaceDetector
    from sdgan_stream.faceprep import PreparedFace, prepare_faces
    from sdgan_stream.landmarks import LandmarkDetector

    if use_sample_photos:
        items: list[tuple[str, str, Any]] = [(name, name, image) for name, image in sample_photos()]
    else:
        if images_dir is None:
            raise InputError("give an images directory or --sample-photos")
        root = Path(images_dir)
        if not root.is_dir():
            raise InputError(f"images directory not found: {root}")
        paths = list(iter_images(root))
        if limit:
            paths = paths[:limit]
        if not paths:
            raise InputError(f"no images ({', '.join(IMAGE_SUFFIXES)}) under {root}")
        label = _identity_labeller(root, paths, identities)
        items = [(str(p.relative_to(root)), label(p), p) for p in paths]

    detector = CenterFaceDetector(threshold=threshold)
    landmarker = LandmarkDetector()
    writer = ShardWriter(out_dir, size=size, shard_size=shard_size)
    failures: dict[str, int] = {}
    for done, (name, identity, source) in enumerate(items, start=1):
        image = source if isinstance(source, np.ndarray) else _read_rgb(source)
        if image is None:
            failures["unreadable"] = failures.get("unreadable", 0) + 1
            continue
        dets = detector.detect(image)
        widths = dets.boxes[:, 2] - dets.boxes[:, 0]
        order = [int(i) for i in np.argsort(-widths) if widths[i] >= min_face]
        if not order:
            failures["no_face"] = failures.get("no_face", 0) + 1
            continue
        if not all_faces:
            order = order[:1]
        faces = [Face(box=dets.boxes[i], score=float(dets.scores[i]), landmarks=dets.landmarks[i]) for i in order]
        for k, prepared in enumerate(prepare_faces(image, faces, landmarker=landmarker, size=size)):
            if not isinstance(prepared, PreparedFace):
                failures[prepared.reason] = failures.get(prepared.reason, 0) + 1
                continue
            who = identity if (k == 0 or identities == "subfolders") else f"{identity}#{k}"
            writer.add(prepared.crop, prepared.labels, prepared.landmarks68_crop, who)
        if progress is not None:
            progress(done, len(items))
    manifest = writer.close(
        source="sample-photos" if use_sample_photos else str(images_dir),
        images=len(items),
        failures=failures,
    )
    log.info("prepared %d faces of %d identities into %s", writer.count, len(writer.identities), out_dir)
    if writer.count == 0:
        raise InputError(f"no usable face found in {len(items)} images (failures: {failures})")
    return manifest
