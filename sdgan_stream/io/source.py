"""Reading video files with PyAV: frames in stored orientation, with their own pts and time base.

Corrupt packets part-way through a file are skipped (counted and logged), not fatal: a damaged file
still yields every frame that can be decoded.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import av
import numpy as np

from ..errors import InputError
from ..types import VideoFrame, VideoInfo

log = logging.getLogger(__name__)

__all__ = ["VIDEO_SUFFIXES", "VideoFileSource", "is_video_file"]

VIDEO_SUFFIXES = frozenset({".mp4", ".mov", ".m4v", ".mkv", ".avi", ".webm", ".mpg", ".mpeg", ".ts", ".mts", ".wmv", ".flv", ".3gp"})


def is_video_file(path: Path) -> bool:
    return path.is_file() and path.suffix.lower() in VIDEO_SUFFIXES


def _normalise_rotation(degrees: float) -> int:
    return int(round(degrees / 90.0)) * 90 % 360


class VideoFileSource:
    """A video file opened for decoding.

    Raises :class:`InputError` with a one-line reason when the file is missing, empty, not a video,
    has no video stream, or has no decodable frame.
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        if not self.path.exists():
            raise InputError(f"input not found: {self.path}")
        if self.path.is_dir():
            raise InputError(f"input is a folder, not a video file: {self.path}")
        if self.path.stat().st_size == 0:
            raise InputError(f"input is an empty file (0 bytes): {self.path}")
        try:
            self._container = av.open(str(self.path), mode="r")
        except (av.error.FFmpegError, UnicodeDecodeError) as error:
            raise InputError(f"cannot read {self.path} as a video: {_reason(error)}") from error
        if not self._container.streams.video:
            self._container.close()
            raise InputError(f"{self.path} has no video stream")
        self._stream = self._container.streams.video[0]
        self._stream.thread_type = "AUTO"
        self.corrupt_packets = 0
        self._frames = self._decode()
        try:
            self._first = next(self._frames)
        except StopIteration:
            self._container.close()
            raise InputError(f"{self.path} has a video stream but no decodable frame") from None
        self.info = self._probe(self._first_rotation)

    @property
    def has_audio(self) -> bool:
        return bool(self._container.streams.audio)

    def _probe(self, rotation: int) -> VideoInfo:
        stream = self._stream
        frame_count = stream.frames or None
        if frame_count is None and stream.duration and stream.average_rate and stream.time_base:
            frame_count = int(round(float(stream.duration * stream.time_base * stream.average_rate)))
        return VideoInfo(
            width=stream.codec_context.width,
            height=stream.codec_context.height,
            time_base=stream.time_base,
            average_rate=stream.average_rate or stream.guessed_rate,
            rotation=rotation,
            frame_count=frame_count,
            codec_name=stream.codec_context.name,
            pix_fmt=stream.codec_context.pix_fmt or "",
        )

    def _decode(self) -> Iterator[av.VideoFrame]:
        self._first_rotation = 0
        first = True
        for packet in self._container.demux(self._stream):
            try:
                decoded = packet.decode()
            except av.error.FFmpegError as error:  # bad data part-way: skip the packet, keep going
                self.corrupt_packets += 1
                log.warning("skipping a corrupt video packet (pts=%s): %s", packet.pts, _reason(error))
                continue
            for frame in decoded:
                if first:
                    self._first_rotation = _normalise_rotation(frame.rotation)
                    first = False
                yield frame

    def frames(self, stop: threading.Event | None = None) -> Iterator[VideoFrame]:
        """Decoded frames in order, as RGB arrays in stored orientation; stops early when ``stop`` is set."""
        index = 0
        pending = [self._first]
        while True:
            if stop is not None and stop.is_set():
                return
            if pending:
                frame = pending.pop()
            else:
                try:
                    frame = next(self._frames)
                except StopIteration:
                    return
                except av.error.FFmpegError as error:
                    # The demuxer itself gave up (e.g. truncated index): keep what we decoded.
                    log.warning("input ended early after %d frames: %s", index, _reason(error))
                    return
            yield VideoFrame(
                image=frame.to_ndarray(format="rgb24"),
                index=index,
                pts=frame.pts,
                time_base=frame.time_base or self._stream.time_base,
                capture_time=time.monotonic(),
            )
            index += 1

    def close(self) -> None:
        self._container.close()

    def __enter__(self) -> VideoFileSource:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _reason(error: Exception) -> str:
    text = getattr(error, "strerror", None) or str(error)
    return str(text).splitlines()[0] if text else type(error).__name__


def to_display(image: np.ndarray, rotation: int) -> np.ndarray:
    """Rotate a stored frame into display orientation (``rotation`` counter-clockwise degrees)."""
    return np.ascontiguousarray(np.rot90(image, k=rotation // 90)) if rotation else image


def to_stored(image: np.ndarray, rotation: int) -> np.ndarray:
    """Inverse of :func:`to_display`."""
    return np.ascontiguousarray(np.rot90(image, k=-(rotation // 90))) if rotation else image


