"""A keyed on-disk cache for compiled generator artifacts (exported ONNX models, TensorRT engines).

An artifact is only valid for the exact weights, input shapes, precision and tool versions it was
built from, and a TensorRT engine also only for one GPU architecture. Every entry is therefore named
by a digest of an :class:`ArtifactKey` holding all of these, and carries a JSON manifest beside it
(the full key in words), so a stale entry is never picked up and ``ls engines/cache`` stays readable.

Writes are atomic (temporary file in the same folder, then ``os.replace``): two processes that build
the same artifact at once both succeed and one of the identical results wins.

Cache location, first match wins: ``$SDGAN_STREAM_CACHE``; ``engines/cache/`` when running from a
source checkout (the folder is writable; it is git-ignored); ``~/.cache/sdgan-stream/engines``.

>>> key = ArtifactKey(kind="onnx", weights="ab" * 32, shapes={"batch": [1, 16]}, precision="fp32", runtime="opset17")
>>> key.filename(".onnx").startswith("onnx-abababababab-")
True
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

__all__ = ["CACHE_ENV", "ArtifactCache", "ArtifactKey", "default_cache_dir", "weights_digest"]

CACHE_ENV = "SDGAN_STREAM_CACHE"


def _writable_dir(path: Path) -> bool:
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError:
        return False
    return os.access(path, os.W_OK)


def default_cache_dir() -> Path:
    """Where artifacts live (see the module docstring for the order)."""
    env = os.environ.get(CACHE_ENV)
    if env:
        return Path(env).expanduser()
    in_checkout = Path(__file__).resolve().parent / "cache"
    # A source checkout has the repository's .gitignore one level up; an installed package does not,
    # and site-packages must not fill up with engines.
    if (in_checkout.parent.parent / ".gitignore").is_file() and _writable_dir(in_checkout):
        return in_checkout
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "sdgan-stream" / "engines"


def weights_digest(module: Any) -> str:
    """SHA-256 (hex) over a torch module's state dict: names, dtypes, shapes and values.

    Computed from the tensors themselves, so two bundles with the same weights share artifacts and a
    retrained bundle at the same path never reuses a stale one. ~10 ms for the starter generator.
    """
    import torch

    digest = hashlib.sha256()
    for name, tensor in sorted(module.state_dict().items()):
        t = tensor.detach().to("cpu", torch.float32).contiguous()
        digest.update(f"{name}|{tuple(t.shape)}|".encode())
        digest.update(t.numpy().tobytes())
    return digest.hexdigest()


@dataclass(frozen=True)
class ArtifactKey:
    """Everything an artifact depends on. Two keys are equal exactly when the artifacts are interchangeable."""

    kind: str  # "onnx" | "tensorrt"
    weights: str  # weights_digest() of the generator
    shapes: dict[str, Any] = field(default_factory=dict)  # generator config + batch range
    precision: str = "fp32"
    runtime: str = ""  # tool versions, e.g. "torch-2.13.0/opset-17" or "tensorrt-10.3.0"
    device: str = ""  # "" for portable artifacts; e.g. "sm_90 NVIDIA H100" for a TensorRT engine

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    def digest(self) -> str:
        text = json.dumps(self.as_dict(), sort_keys=True, default=str)
        return hashlib.sha256(text.encode()).hexdigest()

    def filename(self, suffix: str) -> str:
        return f"{self.kind}-{self.weights[:12]}-{self.digest()[:12]}{suffix}"


class ArtifactCache:
    """Files keyed by :class:`ArtifactKey` under ``root`` (default :func:`default_cache_dir`)."""

    def __init__(self, root: str | Path | None = None, *, keep: int = 8) -> None:
        self.root = Path(root) if root is not None else default_cache_dir()
        self.keep = keep  # newest entries kept per kind; retrained weights would otherwise pile up

    def path_for(self, key: ArtifactKey, suffix: str) -> Path:
        return self.root / key.filename(suffix)

    def _manifest_path(self, path: Path) -> Path:
        return path.with_name(path.name + ".json")

    def lookup(self, key: ArtifactKey, suffix: str) -> Path | None:
        """The cached file for ``key``, or None. A file whose manifest does not match is ignored."""
        path = self.path_for(key, suffix)
        manifest = self._manifest_path(path)
        if not path.is_file() or not manifest.is_file():
            return None
        try:
            stored = json.loads(manifest.read_text())
        except (OSError, ValueError):
            return None
        if stored.get("key") != json.loads(json.dumps(key.as_dict(), default=str)):
            log.warning("cache entry %s does not match its key (hash collision or edited manifest); ignoring it", path)
            return None
        return path

    def store(self, key: ArtifactKey, suffix: str, write: Callable[[Path], None], *, info: dict[str, Any] | None = None) -> Path:
        """Run ``write(tmp_path)`` and move the result into place atomically; returns the final path."""
        self.root.mkdir(parents=True, exist_ok=True)
        path = self.path_for(key, suffix)
        fd, tmp_name = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=self.root)
        os.close(fd)
        tmp = Path(tmp_name)
        try:
            write(tmp)
            if not tmp.is_file() or tmp.stat().st_size == 0:
                raise RuntimeError(f"building {path.name} produced no file")
            os.replace(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)
        document = {
            "key": key.as_dict(),
            "file": path.name,
            "bytes": path.stat().st_size,
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "created_ns": time.time_ns(),
            **(info or {}),
        }
        manifest = self._manifest_path(path)
        tmp_manifest = manifest.with_name(manifest.name + f".{os.getpid()}.tmp")
        tmp_manifest.write_text(json.dumps(document, indent=2, sort_keys=True, default=str) + "\n")
        os.replace(tmp_manifest, manifest)
        self.prune(key.kind, spare=path)
        return path

    def prune(self, kind: str, *, spare: Path | None = None) -> list[Path]:
        """Delete all but the newest ``keep`` entries of ``kind`` (never ``spare``); returns the deleted paths."""
        removed = []
        for entry in self.entries(kind)[self.keep :]:
            artifact = Path(entry["path"])
            if spare is not None and artifact == spare:
                continue
            for path in (artifact, artifact.with_name(artifact.name + ".json")):
                try:
                    path.unlink(missing_ok=True)
                except OSError as error:  # another process may be reading it; try again next time
                    log.debug("could not remove %s: %s", path, error)
            removed.append(artifact)
            log.info("removed old cache entry %s", artifact.name)
        return removed

    def entries(self, kind: str | None = None) -> list[dict[str, Any]]:
        """Manifests of the cached artifacts (optionally of one kind), newest first."""
        if not self.root.is_dir():
            return []
        found = []
        for manifest in self.root.glob("*.json"):
            try:
                document = json.loads(manifest.read_text())
            except (OSError, ValueError):
                continue
            if not isinstance(document, dict) or "key" not in document:
                continue
            if kind is None or document["key"].get("kind") == kind:
                document["path"] = str(manifest.with_name(document.get("file", "")))
                found.append(document)
        return sorted(found, key=lambda d: int(d.get("created_ns", 0)), reverse=True)
