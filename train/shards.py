"""Prepared training data on disk: compact ``.npz`` shards plus a ``manifest.json``.

A data set directory holds::

    manifest.json          format, crop size, counts, identity names, shard list, failures
    shard_00000.npz        crops (N, S, S, 3) uint8 RGB aligned faces
                           labels (N, S, S) uint8 semantic class ids
                           landmarks (N, 68, 2) float32 crop pixels
                           identity (N,) int32 index into manifest["identities"]
                           parsing (N, S, S) uint8 (optional) hand-labelled map in the same 11 classes
                                   (CelebAMask-HQ's masks, see train.celebamask); only when
                                   manifest["parsing"] is true
                           face_index (N,) int32 (optional, manifest["face_index"]) which face of its
                                   photo (--all-faces: face k > 0 is a person of its own)

Shards are written with ``numpy.savez_compressed`` and read with ``allow_pickle=False``: no pickles.
``manifest["identities"]`` may name people none of whose photos gave a face (a parallel preparation
numbers identities before it sees the photos); :func:`load_faceset` drops them.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from sdgan_stream.errors import InputError

__all__ = ["FaceSet", "MANIFEST", "ShardWriter", "load_faceset", "read_manifest", "write_manifest", "write_shard"]

MANIFEST = "manifest.json"
FORMAT = "sdgan-stream-faces"
FORMAT_VERSION = 1


@dataclass(frozen=True)
class FaceSet:
    """A prepared data set in memory."""

    crops: np.ndarray
    labels: np.ndarray
    landmarks: np.ndarray
    identity: np.ndarray
    identities: tuple[str, ...]
    size: int
    parsing: np.ndarray | None = None  # (N, S, S) uint8 hand-labelled maps, when the data set has them

    def __len__(self) -> int:
        return len(self.crops)

    @property
    def num_identities(self) -> int:
        return len(self.identities)


class ShardWriter:
    """Accumulates prepared faces and writes them in shards of ``shard_size``."""

    def __init__(self, out_dir: str | Path, *, size: int, shard_size: int = 1000) -> None:
        self.out = Path(out_dir)
        self.out.mkdir(parents=True, exist_ok=True)
        self.size = size
        self.shard_size = shard_size
        self._buffer: list[tuple[np.ndarray, np.ndarray, np.ndarray, int]] = []
        self._shards: list[dict[str, Any]] = []
        self.identities: list[str] = []
        self._identity_index: dict[str, int] = {}
        self.count = 0

    def identity_index(self, name: str) -> int:
        if name not in self._identity_index:
            self._identity_index[name] = len(self.identities)
            self.identities.append(name)
        return self._identity_index[name]

    def add(self, crop: np.ndarray, labels: np.ndarray, landmarks: np.ndarray, identity: str) -> None:
        if crop.shape != (self.size, self.size, 3) or labels.shape != (self.size, self.size):
            raise ValueError(f"face arrays do not match the crop size {self.size}: {crop.shape}, {labels.shape}")
        self._buffer.append((crop, labels, np.asarray(landmarks, np.float32), self.identity_index(identity)))
        self.count += 1
        if len(self._buffer) >= self.shard_size:
            self._flush()

    def _flush(self) -> None:
        if not self._buffer:
            return
        name = f"shard_{len(self._shards):05d}.npz"
        crops, labels, landmarks, identity = zip(*self._buffer)
        write_shard(self.out / name, crops=crops, labels=labels, landmarks=landmarks, identity=identity)
        self._shards.append({"file": name, "count": len(self._buffer)})
        self._buffer = []

    def close(self, **extra: Any) -> dict[str, Any]:
        """Write the last shard and the manifest; returns the manifest."""
        self._flush()
        return write_manifest(self.out, size=self.size, count=self.count, identities=self.identities, shards=self._shards,
                              **extra)


def write_manifest(
    out: Path, *, size: int, count: int, identities: list[str], shards: list[dict[str, Any]], **extra: Any
) -> dict[str, Any]:
    """Write ``out/manifest.json``; returns it."""
    manifest = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "size": size,
        "count": count,
        "identities": identities,
        "shards": shards,
        **extra,
    }
    (Path(out) / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
    return manifest


def write_shard(
    path: Path,
    *,
    crops: Any,
    labels: Any,
    landmarks: Any,
    identity: Any,
    parsing: Any | None = None,
    face_index: Any | None = None,
) -> None:
    """One shard file (sequences of per-face arrays), written under a temporary name and renamed, so a
    shard that exists is complete (an interrupted preparation resumes by skipping it)."""
    arrays = {
        "crops": np.stack(crops).astype(np.uint8),
        "labels": np.stack(labels).astype(np.uint8),
        "landmarks": np.stack(landmarks).astype(np.float32),
        "identity": np.asarray(identity, np.int32),
    }
    if parsing is not None:
        arrays["parsing"] = np.stack(parsing).astype(np.uint8)
    if face_index is not None:
        arrays["face_index"] = np.asarray(face_index, np.int32)
    partial = path.with_name(path.name + ".partial.npz")
    np.savez_compressed(partial, **arrays)
    partial.replace(path)


def read_manifest(data_dir: str | Path) -> dict[str, Any]:
    path = Path(data_dir) / MANIFEST
    if not path.is_file():
        raise InputError(f"no prepared data set at {data_dir} (missing {MANIFEST}; run `sdgan-stream prepare-data`)")
    try:
        manifest = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise InputError(f"corrupt manifest {path}: {exc}") from exc
    if manifest.get("format") != FORMAT:
        raise InputError(f"{path} is not an sdgan-stream face data set")
    return manifest


def load_faceset(data_dir: str | Path) -> FaceSet:
    """Load every shard of a prepared data set into memory."""
    manifest = read_manifest(data_dir)
    keys = ["crops", "labels", "landmarks", "identity"]
    keys += [key for key in ("parsing", "face_index") if manifest.get(key)]
    parts: dict[str, list[np.ndarray]] = {key: [] for key in keys}
    for shard in manifest["shards"]:
        with np.load(Path(data_dir) / shard["file"], allow_pickle=False) as data:
            for key in parts:
                parts[key].append(data[key])
    if not parts["crops"]:
        raise InputError(f"the data set at {data_dir} holds no faces")
    # Identities without a face are dropped and the rest renumbered densely (samplers draw identities);
    # face k > 0 of a photo prepared with --all-faces is a person of its own, "name#k".
    names = manifest["identities"]
    key = np.concatenate(parts["identity"]).astype(np.int64)
    faces_per_photo = 1
    if "face_index" in parts:
        index = np.concatenate(parts["face_index"]).astype(np.int64)
        faces_per_photo = int(index.max()) + 1
        key = key * faces_per_photo + index
    present, identity = np.unique(key, return_inverse=True)
    labels = [names[k // faces_per_photo] + (f"#{k % faces_per_photo}" if k % faces_per_photo else "") for k in present]
    return FaceSet(
        crops=np.concatenate(parts["crops"]),
        labels=np.concatenate(parts["labels"]),
        landmarks=np.concatenate(parts["landmarks"]).astype(np.float64),
        identity=identity.astype(np.int64),
        identities=tuple(labels),
        size=int(manifest["size"]),
        parsing=np.concatenate(parts["parsing"]) if "parsing" in parts else None,
    )
