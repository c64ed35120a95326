"""``prepare-data``: photos -> aligned crops, semantic maps and identity labels in shards.

Layouts:

* ``folder`` - any tree of photos (FFHQ, CelebA, VGGFace2, your own);
* ``celebamask-hq`` - CelebAMask-HQ as published (:mod:`train.celebamask`): its hand-labelled masks are
  stored beside the landmark-drawn maps, as ``parsing`` (same 11 classes, cut like the crop);
* ``auto`` - ``celebamask-hq`` when IMAGES_DIR holds ``CelebA-HQ-img/`` and ``CelebAMask-HQ-mask-anno/``.

Identity labels:

* ``subfolders`` - ``IMAGES_DIR/person/xxx.jpg``: the first-level folder names the identity
  (CelebA re-organised by identity, VGGFace2, LFW, CASIA-WebFace layouts);
* ``per-image`` - every image is its own identity (FFHQ, CelebAMask-HQ without identity files);
* ``file:PATH`` - a text file of ``relative/path.jpg identity`` lines (CelebA's ``identity_CelebA.txt``;
  names are matched on the file name when the path is not found; for CelebAMask-HQ through its
  CelebA mapping file);
* ``auto`` - ``subfolders`` when the images sit in sub-folders, else ``per-image``.

Held-out people (``holdout``): a fraction of the identities (chosen by a hash of the name, so the same
people every time) or, for CelebAMask-HQ, ``celeba-test`` (CelebA's test partition), written as a
second prepared set in ``OUT_DIR/heldout`` for ``train --val-data``.

Each photo is run through the same detector -> landmarks -> alignment -> map chain as inference
(:func:`sdgan_stream.faceprep.prepare_faces`), so training crops look exactly like inference crops.

Parallel and resumable: the photos are cut into chunks of ``shard_size``; each chunk becomes one shard
(and a small JSON sidecar) written by a pool of worker processes, each with its own detector and
landmark model. ``OUT_DIR/prepare.json`` records the settings; running the same command again skips
every chunk whose sidecar exists, so an interrupted preparation continues where it stopped.
"""

from __future__ import annotations

import hashlib
import json
import logging
import multiprocessing
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from sdgan_stream.errors import InputError

from .shards import MANIFEST, write_manifest, write_shard

log = logging.getLogger(__name__)

__all__ = ["HELDOUT", "IMAGE_SUFFIXES", "LAYOUTS", "PLAN", "iter_images", "prepare_dataset", "sample_photos"]

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp")
LAYOUTS = ("auto", "folder", "celebamask-hq")
PLAN = "prepare.json"
HELDOUT = "heldout"
# A hand-labelled face region that covers less than this share (IoU) of the landmark-drawn one belongs to
# another face than the one the detector picked: the photo is skipped (failure "mask_mismatch").
MIN_MASK_IOU = 0.3


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


# ----------------------------------------------------------------------------- the plan


@dataclass(frozen=True)
class PhotoItem:
    """One photo to prepare: where its pixels are, whose face it shows, its masks (CelebAMask-HQ)."""

    name: str
    identity: int  # index into the identity table
    path: str | None = None
    pixels: np.ndarray | None = None  # photos that come as arrays (--sample-photos)
    masks: tuple[tuple[str, str], ...] = ()
    heldout: bool = False


@dataclass(frozen=True)
class ChunkJob:
    """One shard's worth of photos and the settings a worker needs for them."""

    out_dir: str
    index: int
    items: tuple[PhotoItem, ...]
    size: int
    min_face: float
    all_faces: bool
    face_index: bool  # extra faces of a photo are identities of their own (stored as face_index)
    parsing: bool


def _parse_holdout(holdout: str | float | None) -> str | float | None:
    if holdout in (None, "", "none", 0, 0.0, "0"):
        return None
    if holdout == "celeba-test":
        return "celeba-test"
    try:
        fraction = float(holdout)  # type: ignore[arg-type]
    except ValueError:
        raise InputError(f"--holdout takes a fraction of the people (0.05) or celeba-test, got {holdout!r}") from None
    if not 0 < fraction < 1:
        raise InputError(f"--holdout fraction must be between 0 and 1, got {fraction}")
    return fraction


def _hashed_share(name: str) -> float:
    """A stable number in [0, 1) per identity name (held-out people do not depend on order or seed)."""
    return int(hashlib.sha1(name.encode()).hexdigest()[:12], 16) / float(1 << 48)


class _IdentityTable:
    def __init__(self) -> None:
        self.names: list[str] = []
        self._index: dict[str, int] = {}

    def __call__(self, name: str) -> int:
        if name not in self._index:
            self._index[name] = len(self.names)
            self.names.append(name)
        return self._index[name]


def _folder_items(root: Path, identities: str, limit: int | None) -> tuple[list[PhotoItem], list[str]]:
    paths = list(iter_images(root))
    if limit:
        paths = paths[:limit]
    if not paths:
        raise InputError(f"no images ({', '.join(IMAGE_SUFFIXES)}) under {root}")
    label = _identity_labeller(root, paths, identities)
    table = _IdentityTable()
    items = [PhotoItem(str(p.relative_to(root)), table(label(p)), path=str(p)) for p in paths]
    return items, table.names


def _celebamask_items(root: Path, identities: str, limit: int | None, holdout: str | float | None) -> tuple[list[PhotoItem], list[str]]:
    from .celebamask import CELEBA_TEST_FIRST, list_photos, read_identity_file

    photos = list_photos(root)
    if limit:
        photos = photos[:limit]
    if identities == "subfolders":
        raise InputError("CelebAMask-HQ has no identity sub-folders: use per-image or file:identity_CelebA.txt")
    people = read_identity_file(Path(identities[5:])) if identities.startswith("file:") else None
    if people is None:
        log.warning("CelebAMask-HQ without identities: every photo is its own person "
                    "(give CelebA's identity_CelebA.txt as --identities file:PATH for SDGAN's identity sampling)")
    if holdout == "celeba-test" and any(p.original is None for p in photos):
        raise InputError("--holdout celeba-test needs CelebA-HQ-to-CelebA-mapping.txt beside the photos")
    table = _IdentityTable()
    items = []
    for photo in photos:
        if people is not None and photo.original is not None and photo.original in people:
            who = people[photo.original]
        else:
            who = f"hq{photo.index}" if people is None else f"unlabelled/hq{photo.index}"
        held = holdout == "celeba-test" and int(Path(photo.original or "0").stem) >= CELEBA_TEST_FIRST
        items.append(PhotoItem(photo.image.name, table(who), path=str(photo.image), masks=photo.masks, heldout=held))
    return items, table.names


# ----------------------------------------------------------------------------- workers

_WORKER: dict[str, Any] = {}


def _worker_init(threshold: float, counter: Any = None, tick: Callable[[], None] | None = None) -> None:
    """Per worker process: its own detector and landmark model (one thread each: the pool is the parallelism)."""
    from sdgan_stream.detect import CenterFaceDetector
    from sdgan_stream.landmarks import LandmarkDetector

    if counter is not None:  # a pool worker (a worker run in-process keeps the caller's thread settings)
        import cv2

        cv2.setNumThreads(1)

        def tick() -> None:
            with counter.get_lock():
                counter.value += 1

    _WORKER.update(
        detector=CenterFaceDetector(threshold=threshold, intra_op_threads=1 if counter is not None else 0),
        landmarker=LandmarkDetector(),
        tick=tick or (lambda: None),
    )


def _mask_iou(parsing: np.ndarray, labels: np.ndarray) -> float:
    from sdgan_stream.semantic import class_id

    def face(m: np.ndarray) -> np.ndarray:
        return (m != class_id("background")) & (m != class_id("hair"))

    a, b = face(parsing), face(labels)
    union = np.count_nonzero(a | b)
    return np.count_nonzero(a & b) / union if union else 0.0


def _prepare_chunk(job: ChunkJob) -> dict[str, Any]:
    """Detect, align and label the photos of one chunk; writes its shard and sidecar, returns the sidecar."""
    from sdgan_stream.faceprep import PreparedFace, prepare_faces
    from sdgan_stream.types import Face

    from .celebamask import parsing_crop

    detector, landmarker, tick = _WORKER["detector"], _WORKER["landmarker"], _WORKER["tick"]
    keys = ["crops", "labels", "landmarks", "identity"] + ["face_index"] * job.face_index + ["parsing"] * job.parsing
    faces: dict[str, list[Any]] = {key: [] for key in keys}
    failures: dict[str, int] = {}

    def fail(reason: str) -> None:
        failures[reason] = failures.get(reason, 0) + 1

    for item in job.items:
        image = item.pixels if item.pixels is not None else _read_rgb(Path(str(item.path)))
        if image is None:
            fail("unreadable")
            tick()
            continue
        dets = detector.detect(image)
        widths = dets.boxes[:, 2] - dets.boxes[:, 0]
        order = [int(i) for i in np.argsort(-widths) if widths[i] >= job.min_face]
        if not order:
            fail("no_face")
        if not job.all_faces:
            order = order[:1]
        found = [Face(box=dets.boxes[i], score=float(dets.scores[i]), landmarks=dets.landmarks[i]) for i in order]
        for k, prepared in enumerate(prepare_faces(image, found, landmarker=landmarker, size=job.size)):
            if not isinstance(prepared, PreparedFace):
                fail(prepared.reason)
                continue
            if job.parsing:
                parsing = parsing_crop(item.masks, image.shape[:2], prepared.matrix, job.size, prepared.landmarks68_crop)
                if _mask_iou(parsing, prepared.labels) < MIN_MASK_IOU:
                    fail("mask_mismatch")
                    continue
                faces["parsing"].append(parsing)
            faces["crops"].append(prepared.crop)
            faces["labels"].append(prepared.labels)
            faces["landmarks"].append(prepared.landmarks68_crop)
            faces["identity"].append(item.identity)
            if job.face_index:
                faces["face_index"].append(k)
        tick()
    out = Path(job.out_dir)
    name = f"shard_{job.index:05d}.npz"
    count = len(faces["crops"])
    if count:
        write_shard(out / name, **faces)
    sidecar = {"file": name if count else None, "count": count, "images": len(job.items), "failures": failures,
               "people": sorted({int(i) for i in faces["identity"]})}
    partial = out / f"shard_{job.index:05d}.json.partial"
    partial.write_text(json.dumps(sidecar) + "\n")
    partial.replace(_sidecar(out, job.index))
    return sidecar


def _sidecar(out: Path, index: int) -> Path:
    return out / f"shard_{index:05d}.json"


def _run_jobs(jobs: list[ChunkJob], *, workers: int, threshold: float, progress: Callable[[int], None]) -> None:
    if not jobs:
        return
    if workers <= 1 or len(jobs) == 1:
        done = 0

        def tick() -> None:
            nonlocal done
            done += 1
            progress(done)

        _worker_init(threshold, tick=tick)
        for job in jobs:
            _prepare_chunk(job)
        return
    # spawn, not fork: the parent may hold torch/OpenMP/onnxruntime threads that a fork would copy broken.
    context = multiprocessing.get_context("spawn")
    counter = context.Value("q", 0)
    with context.Pool(min(workers, len(jobs)), initializer=_worker_init, initargs=(threshold, counter)) as pool:
        pending = pool.map_async(_prepare_chunk, jobs, chunksize=1)
        while not pending.ready():
            pending.wait(0.5)
            progress(counter.value)
        pending.get()  # re-raises a worker's exception
        progress(counter.value)


def _merge(out: Path, chunks: int, *, size: int, identities: list[str], extra: dict[str, Any]) -> dict[str, Any]:
    shards, count, images, failures, people = [], 0, 0, {}, set()
    for index in range(chunks):
        sidecar = json.loads(_sidecar(out, index).read_text())
        if sidecar["file"]:
            shards.append({"file": sidecar["file"], "count": sidecar["count"]})
        count += sidecar["count"]
        images += sidecar["images"]
        people.update(sidecar["people"])
        for reason, n in sidecar["failures"].items():
            failures[reason] = failures.get(reason, 0) + n
    return write_manifest(out, size=size, count=count, identities=identities, shards=shards, images=images,
                          failures=failures, people=len(people), **extra)


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
    workers: int | None = 1,
    layout: str = "auto",
    holdout: str | float | None = None,
) -> dict[str, Any]:
    """Detect, align and label faces into shards; returns the manifest of the training set.

    ``all_faces`` keeps every face of a photo (each an identity of its own unless labelled by
    folder); by default only the largest face is kept, the usual case for face data sets.
    ``workers``: processes (``None``: every core). ``holdout``: see the module docstring; the held-out
    set's manifest is in ``OUT_DIR/heldout``.
    """
    if layout not in LAYOUTS:
        raise InputError(f"unknown layout {layout!r}; use {', '.join(LAYOUTS)}")
    held_spec = _parse_holdout(holdout)
    if use_sample_photos:
        table = _IdentityTable()
        items = [PhotoItem(name, table(name), pixels=image) for name, image in sample_photos()]
        names, layout, source = table.names, "folder", "sample-photos"
    else:
        if images_dir is None:
            raise InputError("give an images directory or --sample-photos")
        root = Path(images_dir)
        if not root.is_dir():
            raise InputError(f"images directory not found: {root}")
        from .celebamask import is_celebamask_hq

        if layout == "auto":
            layout = "celebamask-hq" if is_celebamask_hq(root) else "folder"
            log.info("layout: %s", layout)
        if layout == "celebamask-hq":
            if all_faces:
                log.warning("CelebAMask-HQ's masks describe one face per photo: --all-faces is ignored")
                all_faces = False
            items, names = _celebamask_items(root, identities, limit, held_spec)
        else:
            items, names = _folder_items(root, identities, limit)
        source = str(images_dir)
    if held_spec == "celeba-test" and layout != "celebamask-hq":
        raise InputError("--holdout celeba-test is for the CelebAMask-HQ layout; give a fraction (0.05) elsewhere")
    if isinstance(held_spec, float):
        items = [PhotoItem(i.name, i.identity, i.path, i.pixels, i.masks, _hashed_share(names[i.identity]) < held_spec)
                 for i in items]

    out = Path(out_dir)
    settings = {
        "source": source, "layout": layout, "size": size, "identities": identities, "all_faces": all_faces,
        "threshold": threshold, "min_face": min_face, "shard_size": shard_size, "limit": limit,
        "holdout": held_spec, "photos": len(items),
    }
    plan_path = out / PLAN
    if plan_path.is_file():
        stored = json.loads(plan_path.read_text())["settings"]
        if stored != settings:
            changed = sorted(k for k in settings if stored.get(k) != settings[k])
            raise InputError(f"{out} holds a preparation with other settings ({', '.join(changed)}): "
                             "repeat its command to resume it, or choose another OUT_DIR")
        log.info("resuming the preparation in %s", out)
    elif (out / MANIFEST).is_file():
        raise InputError(f"{out} already holds a prepared data set; choose another OUT_DIR")
    else:
        out.mkdir(parents=True, exist_ok=True)
        plan_path.write_text(json.dumps({"settings": settings}, indent=2) + "\n")

    parsing = layout == "celebamask-hq"
    face_index = all_faces and identities != "subfolders"
    splits = {"train": (out, [i for i in items if not i.heldout])}
    if held_spec is not None:
        splits[HELDOUT] = (out / HELDOUT, [i for i in items if i.heldout])
    jobs: list[ChunkJob] = []
    chunk_counts: dict[str, int] = {}
    skipped = 0
    for split, (split_dir, split_items) in splits.items():
        split_dir.mkdir(parents=True, exist_ok=True)
        chunks = [tuple(split_items[k : k + shard_size]) for k in range(0, len(split_items), shard_size)]
        chunk_counts[split] = len(chunks)
        for index, chunk in enumerate(chunks):
            if _sidecar(split_dir, index).is_file():
                skipped += len(chunk)
                continue
            jobs.append(ChunkJob(str(split_dir), index, chunk, size, min_face, all_faces, face_index, parsing))
    if skipped:
        log.info("%d photos already prepared: skipped", skipped)
    total = len(items)
    _run_jobs(jobs, workers=workers or os.cpu_count() or 1, threshold=threshold,
              progress=lambda done: progress(skipped + done, total) if progress is not None else None)

    manifests = {}
    for split, (split_dir, _) in splits.items():
        extra = {"source": source, "layout": layout, "split": split, "parsing": parsing, "face_index": face_index}
        manifests[split] = _merge(split_dir, chunk_counts[split], size=size, identities=names, extra=extra)
    manifest = manifests["train"]
    log.info("prepared %d faces into %s", manifest["count"], out)
    if manifest["count"] == 0:
        raise InputError(f"no usable face found in {manifest['images']} images (failures: {manifest['failures']})")
    if HELDOUT in manifests:
        manifest = {**manifest, "heldout": {k: manifests[HELDOUT][k] for k in ("count", "people", "images", "failures")}}
    return manifest
