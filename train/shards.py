"""Prepared training data on disk: compact ``.npz`` shards plus a ``manifest.json``.

A data set directory holds::

    manifest.json          format, crop size, counts, identity names, shard list, failures
    shard_00000.npz        crops (N, S, S, 3) uint8 RGB aligned faces
                           labels (N, S, S) uint8 semantic class ids
                           landmarks (N, 68, 2) float32 crop pixels
                           identity (N,) int32 index into manifest["identities"]

Shards are written with ``numpy.savez_compressed`` and read with ``allow_pickle=False``: no pickles.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from sdgan_stream.errors import InputError

__all__ = ["FaceSet", "MANIFEST", "ShardWriter", "load_faceset"]

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
        np.savez_compressed(
            self.out / name,
            crops=np.stack(crops).astype(np.uint8),
            labels=np.stack(labels).astype(np.uint8),
            landmarks=np.stack(landmarks).astype(np.float32),
            identity=np.asarray(identity, np.int32),
        )
        self._shards.append({"file": name, "count": len(self._buffer)})
        self._buffer = []

    def close(self, **extra: Any) -> dict[str, Any]:
        """Write the last shard and the manifest; returns the manifest."""
        self._flush()
        manifest = {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "size": self.size,
            "count": self.count,
            "identities": self.identities,
            "shards": self._shards,
            **extra,
        }
        (self.out / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
        return manifest


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
    parts: dict[str, list[np.ndarray]] = {"crops": [], "labels": [], "landmarks": [], "identity": []}
    for shard in manifest["shards"]:
        with np.load(Path(data_dir) / shard["file"], allow_pickle=False) as data:
            for key in parts:
                parts[key].append(data[key])
    if not parts["crops"]:
        raise InputError(f"the data set at {data_dir} holds no faces")
    return FaceSet(
        crops=np.concatenate(parts["crops"]),
        labels=np.concatenate(parts["labels"]),
        landmarks=np.concatenate(parts["landmarks"]).astype(np.float64),
        identity=np.concatenate(parts["identity"]).astype(np.int64),
        identities=tuple(manifest["identities"]),
        size=int(manifest["size"]),
    )
