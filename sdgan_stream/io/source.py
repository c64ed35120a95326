"""Reading video files with PyAV: frames in stored orientation, with their own pts and time base.

Corrupt packets part-way through a file are skipped (counted and logged), not fatal: a damaged file
still yields every frame that can be decoded. Cover art (an attached picture, which FFmpeg lists as a
video stream) is never taken for the video. Input of more than 8 bits per sample is decoded to 16-bit
RGB as well (``VideoFrame.deep``), so that the sink can keep that precision wherever the anonymizer
did not draw; the stages themselves see the 8-bit picture. MPEG-TS/PS timestamps (33 bits, which wrap
after 26.5 hours) are unwrapped, so a long recording's later frames keep their timing.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import av
import numpy as np

from ..errors import InputError
from ..types import VideoFrame, VideoInfo

log = logging.getLogger(__name__)

__all__ = ["VIDEO_SUFFIXES", "ColourInfo", "VideoFileSource", "is_video_file", "normalise_rotation", "to_display", "to_stored"]

VIDEO_SUFFIXES = frozenset({".mp4", ".mov", ".m4v", ".mkv", ".avi", ".webm", ".mpg", ".mpeg", ".ts", ".mts", ".wmv", ".flv", ".3gp"})


def is_video_file(path: Path) -> bool:
    return path.is_file() and path.suffix.lower() in VIDEO_SUFFIXES


def normalise_rotation(degrees: float) -> int:
    """A display rotation in degrees as one of 0, 90, 180, 270 (counter-clockwise)."""
    return int(round(degrees / 90.0)) * 90 % 360


# Containers whose timestamps are 33-bit 90 kHz counters (wrap after 2**33 ticks = 26.5 hours).
# FFmpeg corrects a wrap only near the start of a file; later ones are unwrapped here.
_WRAPPING_FORMATS = frozenset({"mpegts", "mpeg"})
_PTS_WRAP = 2**33
_UNSPECIFIED = 2  # FFmpeg's AVCOL_*_UNSPECIFIED for matrix, primaries and transfer


@dataclass(frozen=True)
class ColourInfo:
    """How the input's samples are to be read, for the sink to write the same: FFmpeg's AVColorRange,
    AVColorSpace (matrix), AVColorPrimaries and AVColorTransferCharacteristic values, and bit depth."""

    color_range: int = 0  # 0 unspecified, 1 limited (tv/mpeg), 2 full (pc/jpeg)
    colorspace: int = _UNSPECIFIED
    color_primaries: int = _UNSPECIFIED
    color_trc: int = _UNSPECIFIED
    bits: int = 8

    @classmethod
    def of(cls, frame: av.VideoFrame) -> ColourInfo:
        components = frame.format.components
        return cls(
            color_range=int(frame.color_range or 0),
            colorspace=int(frame.colorspace if frame.colorspace is not None else _UNSPECIFIED),
            color_primaries=int(frame.color_primaries if frame.color_primaries is not None else _UNSPECIFIED),
            color_trc=int(frame.color_trc if frame.color_trc is not None else _UNSPECIFIED),
            bits=max((c.bits for c in components), default=8),
        )


def _video_stream(container: av.container.InputContainer, path: Path) -> av.VideoStream:
    """The first real video stream: cover art (disposition attached_pic) is a still, not the video."""
    attached = av.stream.Disposition.attached_pic
    for stream in container.streams.video:
        if not stream.disposition & attached:
            return stream
    if container.streams.video:
        raise InputError(f"{path} has no video stream (only cover art)")
    raise InputError(f"{path} has no video stream")


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
        try:
            self._stream = _video_stream(self._container, self.path)
        except InputError:
            self._container.close()
            raise
        self._stream.thread_type = "AUTO"
        self.corrupt_packets = 0
        self._frames = self._decode()
        try:
            self._first = next(self._frames)
        except StopIteration:
            self._container.close()
            raise InputError(f"{self.path} has a video stream but no decodable frame") from None
        self.info = self._probe(self._first_rotation)
        self.colour = ColourInfo.of(self._first)
        self._unwrap = self._container.format.name.split(",")[0] in _WRAPPING_FORMATS

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
                    self._first_rotation = normalise_rotation(frame.rotation)
                    first = False
                yield frame

    def frames(self, stop: threading.Event | None = None, *, start_pts: int | None = None) -> Iterator[VideoFrame]:
        """Decoded frames in order, as RGB arrays in stored orientation; stops early when ``stop`` is set.

        ``start_pts`` (in the stream's time base) starts at that frame: decoding seeks to the keyframe at
        or before it and skips the frames between (a segment of a long video, see ``io.segments``).
        """
        index = 0
        pending = [self._first]
        wrap_offset, last_pts = 0, None
        ticks = self._frame_ticks()  # one frame's duration: a jump back of more than it is a discontinuity
        resized_warned = False
        deep = self.colour.bits > 8
        if start_pts is not None and self._first.pts is not None and start_pts > self._first.pts:
            pending = self._seek(start_pts)
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
            pts = frame.pts
            if pts is not None and self._unwrap:
                if last_pts is not None and pts + wrap_offset < last_pts - _PTS_WRAP // 2:
                    wrap_offset += _PTS_WRAP  # the 33-bit counter went round: time goes on
                    log.info("MPEG-TS timestamp wrap at frame %d: unwrapped", index)
                elif last_pts is not None and pts + wrap_offset < last_pts - ticks:
                    # A discontinuity (recordings joined, an encoder restarted): time goes back more than a
                    # frame. The rest continues one frame after the last, as FFmpeg's own tools do for these
                    # formats; otherwise every later frame would be nudged to one tick after the one before.
                    # (A smaller step back, a stamp repeated, is the sink's to nudge: the rest keeps its times.)
                    wrap_offset = last_pts + ticks - pts
                    log.warning("timestamps jump back at frame %d (a discontinuity): the rest continues from %d", index, last_pts)
                pts += wrap_offset
                last_pts = pts
            if (frame.width, frame.height) != (self.info.width, self.info.height) and not resized_warned:
                resized_warned = True  # the output keeps one size: the encoder scales these frames to it
                log.warning("the picture size changes at frame %d (%dx%d -> %dx%d): written scaled to %dx%d", index,
                            self.info.width, self.info.height, frame.width, frame.height, self.info.width, self.info.height)
            if deep:
                samples = frame.to_ndarray(format="rgb48le")
                image = ((samples.astype(np.uint32) + 128) // 257).astype(np.uint8)
            else:
                samples, image = None, frame.to_ndarray(format="rgb24")
            yield VideoFrame(
                image=image,
                index=index,
                pts=pts,
                time_base=frame.time_base or self._stream.time_base,
                capture_time=time.monotonic(),
                deep=samples,
            )
            index += 1

    def _frame_ticks(self) -> int:
        """One frame's duration in the stream's time base (25 fps when the stream does not say)."""
        rate = self._stream.average_rate or self._stream.guessed_rate or 25
        time_base = self._stream.time_base or Fraction(1, 90000)
        return max(1, round(1 / (Fraction(rate) * time_base)))

    def _seek(self, pts: int) -> list[av.VideoFrame]:
        """Restart decoding at the keyframe at or before ``pts``; returns the first frame at or after it."""
        first_pts = self._first.pts
        for target in (pts, first_pts):  # then from the start, if the demuxer's seek landed past ``pts``
            self._container.seek(target, stream=self._stream, backward=True)
            self._frames = self._decode()
            for position, frame in enumerate(self._frames):
                if position == 0 and target != first_pts and frame.pts is not None and frame.pts > pts:
                    log.warning("seek to pts %d in %s landed at %d: decoding from the start", pts, self.path, frame.pts)
                    break  # frames between would be lost
                if frame.pts is None or frame.pts >= pts:
                    return [frame]
            else:
                return []
        return []

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


