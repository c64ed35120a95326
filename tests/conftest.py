"""Shared fixtures: small synthetic clips of real faces (photos shipped by installed packages)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

# Tests share two cores with the encoder threads; keep torch from oversubscribing them.
os.environ.setdefault("OMP_NUM_THREADS", "2")

from sdgan_stream.samples import SyntheticClip, make_face_clip  # noqa: E402


@pytest.fixture(scope="session")
def face_clip(tmp_path_factory: pytest.TempPathFactory) -> SyntheticClip:
    """640x360, 25 fps, 30 frames, 2 real faces moving, AAC audio."""
    return make_face_clip(tmp_path_factory.mktemp("clips") / "faces.mp4", width=640, height=360, frames=30, faces=2, face_width=60)


@pytest.fixture(scope="session")
def long_clip(tmp_path_factory: pytest.TempPathFactory) -> SyntheticClip:
    """A longer clip for interruption tests."""
    return make_face_clip(tmp_path_factory.mktemp("clips") / "long.mp4", width=640, height=360, frames=400, faces=1, face_width=60)


def read_frames(path: Path) -> tuple[list[np.ndarray], list[int], object]:
    """Decoded RGB frames, their pts and the video stream's time base."""
    import av

    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        frames, pts = [], []
        for frame in container.decode(stream):
            frames.append(frame.to_ndarray(format="rgb24"))
            pts.append(frame.pts)
        return frames, pts, stream.time_base


def audio_packets(path: Path) -> list[bytes]:
    import av

    with av.open(str(path)) as container:
        if not container.streams.audio:
            return []
        return [bytes(p) for p in container.demux(container.streams.audio[0]) if p.size]
