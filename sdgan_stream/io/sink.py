"""Writing the anonymized video with PyAV: same size, same pts and time base, same rotation, same
colour tags and (with H.264) bit depth, audio copied.

Every output frame gets its input frame's ``pts`` in the input's time base, and the output stream uses
that same time base, so frame timing (variable frame rate included) survives exactly. Audio packets are
copied byte for byte from the input file (read by a second demuxer) and interleaved by time.

Colour: the input's range, matrix, primaries and transfer are written as the output's tags, and RGB is
converted to YUV with the input's matrix and range (not swscale's BT.601 default), so colours do not
shift and HDR input stays tagged as HDR. Input of more than 8 bits is encoded 10-bit (x264 High 10)
from the 16-bit samples the source kept (``VideoFrame.deep``), wherever the anonymizer left the
picture unchanged; what it drew comes from its 8-bit picture.

H.264 goes to NVENC (``h264_nvenc``) when the FFmpeg build has it and a GPU lets it open, for 8-bit
4:2:0 output; to libx264 otherwise. The choice is made once per process and logged.
"""

from __future__ import annotations

import functools
import logging
import os
from fractions import Fraction
from pathlib import Path

import av
import cv2
import numpy as np

from ..errors import OutputError
from ..types import VideoFrame, VideoInfo
from .source import ColourInfo

log = logging.getLogger(__name__)

__all__ = ["VideoFileSink", "choose_h264_encoder", "output_path_for", "same_file"]

# Containers that cannot hold H.264: encode VP9 there instead.
_VP9_CONTAINERS = frozenset({".webm"})
# Containers that store no presentation timestamps (AVI keeps one per frame in decode order): B-frames
# there come out with their frames' times shuffled, so none are used.
_NO_REORDER_CONTAINERS = frozenset({".avi"})
# FFmpeg AVColorSpace (what streams are tagged with) -> swscale SWS_CS_* (what its converter takes).
_SWS_MATRIX = {1: 1, 4: 4, 5: 5, 6: 5, 7: 7, 9: 9, 10: 9}
_LIMITED_RANGE = 1
# Around every pixel the anonymizer changed, this many pixels also take its 8-bit value: no stray
# original sample inside a cover keeps its low bits.
_DEEP_MARGIN = 4


def keep_deep_samples(image: np.ndarray, deep: np.ndarray) -> np.ndarray:
    """16-bit RGB for the encoder: ``deep`` (the input's own samples) where ``image`` (8-bit, what the
    stages drew on) still shows the input, ``image`` scaled to 16 bits where it was changed."""
    unchanged = ((deep.astype(np.uint32) + 128) // 257).astype(np.uint8)
    changed = np.any(image != unchanged, axis=2)
    if not changed.any():
        return deep
    size = 2 * _DEEP_MARGIN + 1
    changed = cv2.dilate(changed.astype(np.uint8), np.ones((size, size), np.uint8)).astype(bool)
    out = deep.copy()
    out[changed] = image[changed].astype(np.uint16) * 257
    return out


@functools.lru_cache(maxsize=None)
def nvenc_opens() -> bool:
    """Whether ``h264_nvenc`` opens here: compiled into FFmpeg *and* a GPU with a driver that takes it
    (PyAV's wheels ship the encoder; without a GPU ``avcodec_open2`` refuses it). Probed once."""
    if "h264_nvenc" not in av.codecs_available:
        log.info("video encoder: h264_nvenc is not in this FFmpeg build")
        return False
    try:
        context = av.CodecContext.create("h264_nvenc", "w")
        context.width, context.height, context.pix_fmt = 256, 256, "yuv420p"
        context.time_base = Fraction(1, 25)
        context.open()
    except (av.error.FFmpegError, OSError, ValueError) as error:
        log.info("video encoder: h264_nvenc does not open here (%s)", error)
        return False
    context.close()
    return True


def choose_h264_encoder(pix_fmt: str, preference: str = "auto") -> str:
    """``h264_nvenc`` or ``libx264`` for ``pix_fmt``: NVENC under ``auto`` when it opens and the
    format is 8-bit 4:2:0 (NVENC's H.264 has no 10-bit or 4:4:4 here), libx264 otherwise."""
    if preference not in ("auto", "libx264", "h264_nvenc"):
        raise ValueError(f"video encoder must be auto, libx264 or h264_nvenc, got {preference!r}")
    if preference != "auto":
        return preference
    return "h264_nvenc" if pix_fmt == "yuv420p" and nvenc_opens() else "libx264"


def output_path_for(input_path: Path, suffix: str = "_anonymized") -> Path:
    """Default output path: ``<stem>_anonymized.<ext>`` beside the input."""
    return input_path.with_name(f"{input_path.stem}{suffix}{input_path.suffix}")


def same_file(a: str | Path, b: str | Path) -> bool:
    """Whether two paths name one file: the same path, a symlink to it or a hard link to it (writing one
    would empty the other)."""
    a, b = Path(a), Path(b)
    try:
        return a.resolve() == b.resolve() or (a.exists() and b.exists() and os.path.samefile(a, b))
    except OSError:
        return False


class _AudioCopier:
    """Copies the first audio stream of ``source_path`` into ``container`` packet for packet."""

    def __init__(self, source_path: Path, container: av.container.OutputContainer) -> None:
        self._input = av.open(str(source_path), mode="r")
        in_stream = self._input.streams.audio[0]
        left = len(self._input.streams.audio) - 1 + len(self._input.streams.subtitles) + len(self._input.streams.data)
        if left:  # say so: a second language or the subtitles are easy to miss until someone needs them
            log.warning("%s: only the first audio stream is copied; %d other stream(s) (audio, subtitles, data) are left out",
                        source_path, left)
        try:
            self._out_stream = container.add_stream_from_template(in_stream)
        except (ValueError, av.error.FFmpegError) as error:
            self._input.close()
            raise OutputError(
                f"the output container cannot hold the input's {in_stream.codec_context.name} audio "
                f"({error}); use --no-audio or an .mkv output"
            ) from error
        self._packets = self._input.demux(in_stream)
        self._pending: av.Packet | None = None
        self._done = False
        self.copied = 0
        # Timestamps that jump back (MPEG-TS recordings joined) would stop the muxer: such packets and the
        # rest continue one packet after the last instead, as the video does (``VideoFileSource.frames``).
        self._offset = 0
        self._last_dts: int | None = None
        self._last_duration = 0

    def _next(self) -> av.Packet | None:
        while not self._done:
            try:
                packet = next(self._packets)
            except StopIteration:
                self._done = True
                return None
            except av.error.FFmpegError as error:
                log.warning("audio copy stopped early: %s", error)
                self._done = True
                return None
            if packet.dts is not None and packet.size:  # skip the demuxer's empty flush packet
                if self._last_dts is not None and packet.dts + self._offset <= self._last_dts:
                    self._offset = self._last_dts + (packet.duration or self._last_duration or 1) - packet.dts
                    log.warning("audio timestamps jump back (a discontinuity): the rest continues after the last packet")
                if self._offset:
                    packet.dts += self._offset
                    if packet.pts is not None:
                        packet.pts += self._offset
                self._last_dts, self._last_duration = packet.dts, packet.duration or self._last_duration
                return packet
        return None

    def mux_until(self, container: av.container.OutputContainer, seconds: float | None) -> None:
        """Mux audio packets whose time is at or before ``seconds`` (all remaining when None)."""
        while True:
            packet = self._pending or self._next()
            self._pending = None
            if packet is None:
                return
            when = float(packet.pts * packet.time_base) if packet.pts is not None else None
            if seconds is not None and when is not None and when > seconds:
                self._pending = packet
                return
            packet.stream = self._out_stream
            container.mux(packet)
            self.copied += 1

    def close(self) -> None:
        self._input.close()


def _file_state(path: Path) -> tuple[int, int, int] | None:
    """(inode, size, modification time) of a file, None when there is none: tells whether it was changed."""
    try:
        status = path.stat()
    except OSError:
        return None
    return status.st_ino, status.st_size, status.st_mtime_ns


class VideoFileSink:
    """Encodes frames (stored orientation, RGB) into ``path``.

    ``audio_from`` names the file whose first audio stream is copied; None writes no audio.
    The file is finalized (playable) by :meth:`close`, also after an interruption.
    """

    def __init__(
        self,
        path: str | Path,
        info: VideoInfo,
        *,
        crf: int = 20,
        preset: str = "veryfast",
        audio_from: str | Path | None = None,
        colour: ColourInfo | None = None,
        video_encoder: str = "auto",
    ) -> None:
        self.path = Path(path)
        self.info = info
        self.colour = colour or ColourInfo()
        if not self.path.parent.exists():
            raise OutputError(f"output folder does not exist: {self.path.parent}")
        if self.path.is_dir():
            raise OutputError(f"the output is a folder: {self.path}")
        # A file already at the output path is left as it was until the first frame is written: a job that
        # fails before that (a container that cannot hold the codec or the audio) must not destroy it.
        self._before = _file_state(self.path)
        try:
            # FFmpeg opens the file lazily at the first packet; fail now, before any work is done (append
            # mode: checks that the file can be written without emptying it).
            with open(self.path, "ab"):
                pass
        except OSError as error:
            raise OutputError(f"cannot write {self.path}: {error.strerror or error}") from error
        try:
            self._container = av.open(str(self.path), mode="w")
        except (av.error.FFmpegError, ValueError, OSError) as error:
            self._remove_if_ours()
            raise OutputError(f"cannot write {self.path}: {getattr(error, 'strerror', None) or error}") from error
        try:
            self._stream = self._add_video_stream(crf=crf, preset=preset, encoder=video_encoder)
            self._audio = _AudioCopier(Path(audio_from), self._container) if audio_from else None
        except Exception:
            self._container.close()
            self._remove_if_ours()
            raise
        self._last_pts: int | None = None
        self._default_duration = self._frame_duration()
        self.frames_written = 0

    def _add_video_stream(self, *, crf: int, preset: str, encoder: str) -> av.VideoStream:
        info = self.info
        rate = info.average_rate or Fraction(25)
        vp9 = self.path.suffix.lower() in _VP9_CONTAINERS
        # 4:2:0 needs even dimensions; odd-sized input keeps its exact size in 4:4:4 instead.
        even = info.width % 2 == 0 and info.height % 2 == 0
        self._deep = self.colour.bits > 8 and not vp9
        pix_fmt = ("yuv420p" if even else "yuv444p") + ("10le" if self._deep else "")
        codec = "libvpx-vp9" if vp9 else choose_h264_encoder(pix_fmt, encoder)
        log.info("video encoder: %s (%s)", codec, pix_fmt)
        try:
            stream = self._container.add_stream(codec, rate=rate)
        except (ValueError, av.error.FFmpegError) as error:
            raise OutputError(f"the {self.path.suffix} container cannot hold the video codec: {error}") from error
        stream.width, stream.height = info.width, info.height
        if self.colour.bits > 8 and vp9:
            log.warning("%d-bit input: the VP9 encoder here writes 8-bit only; use an .mp4/.mkv output to keep 10-bit", self.colour.bits)
        elif self.colour.bits > 10:
            log.warning("%d-bit input: written as 10-bit, the most x264 takes", self.colour.bits)
        stream.pix_fmt = pix_fmt
        if not even:
            log.warning("odd frame size %dx%d: encoding 4:4:4 to keep the exact size", info.width, info.height)
        colour = self.colour
        context = stream.codec_context
        context.color_range = colour.color_range or _LIMITED_RANGE
        context.colorspace, context.color_primaries, context.color_trc = colour.colorspace, colour.color_primaries, colour.color_trc
        if info.time_base is not None:
            stream.time_base = info.time_base
            stream.codec_context.time_base = info.time_base
        if vp9:
            stream.options = {"crf": str(crf), "b": "0", "deadline": "realtime", "cpu-used": "8"}
        elif codec == "h264_nvenc":  # constant quality on NVENC's scale (close to x264's crf), preset p4 (medium)
            stream.options = {"rc": "vbr", "cq": str(crf), "b": "0", "preset": "p4"}
        else:
            stream.options = {"crf": str(crf), "preset": preset}
        if self.path.suffix.lower() in _NO_REORDER_CONTAINERS and not vp9:
            stream.options = {**stream.options, "bf": "0"}
        if info.rotation:
            stream.set_display_rotation(info.rotation)
        return stream

    def _frame_duration(self) -> int:
        """One frame's duration in the stream's time base, for frames that arrive without pts."""
        tb = self.info.time_base or Fraction(1, 90000)
        rate = self.info.average_rate or Fraction(25)
        return max(1, round(1 / (rate * tb)))

    def _output_pts(self, frame: VideoFrame) -> int:
        pts = frame.pts
        if pts is not None and frame.time_base is not None and self.info.time_base is not None and frame.time_base != self.info.time_base:
            pts = round(pts * frame.time_base / self.info.time_base)
        if pts is None:
            pts = 0 if self._last_pts is None else self._last_pts + self._default_duration
        if self._last_pts is not None and pts <= self._last_pts:
            # The encoder needs strictly increasing pts; a duplicate or reordered stamp is nudged.
            log.warning("non-increasing pts %d after %d: nudged forward", pts, self._last_pts)
            pts = self._last_pts + 1
        return pts

    def _to_yuv(self, frame: VideoFrame) -> av.VideoFrame:
        """RGB -> the stream's YUV with the input's matrix and range, at the stream's bit depth."""
        if self._deep:
            deep = frame.deep if frame.deep is not None else frame.image.astype(np.uint16) * 257
            rgb = av.VideoFrame.from_ndarray(keep_deep_samples(frame.image, deep), format="rgb48le")
        else:
            rgb = av.VideoFrame.from_ndarray(frame.image, format="rgb24")
        return rgb.reformat(
            format=self._stream.pix_fmt,
            dst_colorspace=_SWS_MATRIX.get(self.colour.colorspace),
            dst_color_range=self.colour.color_range or _LIMITED_RANGE,
        )

    def write(self, frame: VideoFrame) -> None:
        pts = self._output_pts(frame)
        video_frame = self._to_yuv(frame)
        video_frame.pts = pts
        video_frame.time_base = self._stream.codec_context.time_base
        try:
            for packet in self._stream.encode(video_frame):
                self._container.mux(packet)
            if self._audio is not None:
                self._audio.mux_until(self._container, float(pts * (self.info.time_base or Fraction(1, 90000))))
        except (av.error.FFmpegError, OSError) as error:
            raise OutputError(f"writing {self.path} failed: {getattr(error, 'strerror', None) or error}") from error
        self._last_pts = pts
        self.frames_written += 1

    def close(self, *, complete: bool = True) -> None:
        """Flush the encoder and finalize the file. ``complete=False`` (interrupted) cuts the audio at
        the last written frame instead of copying it to the end. A write that fails here (a full disk)
        is an :class:`OutputError`."""
        try:
            try:
                for packet in self._stream.encode(None):
                    self._container.mux(packet)
                if self._audio is not None:
                    end = None
                    if not complete and self._last_pts is not None and self.info.time_base is not None:
                        end = float((self._last_pts + self._default_duration) * self.info.time_base)
                    self._audio.mux_until(self._container, end)
            finally:
                if self._audio is not None:
                    self._audio.close()
                self._container.close()
        except (av.error.FFmpegError, OSError) as error:
            raise OutputError(f"finishing {self.path} failed: {getattr(error, 'strerror', None) or error}") from error

    def _remove_if_ours(self) -> None:
        """Remove the output file if this sink created or changed it; a file it never touched stays."""
        if self._before is None or _file_state(self.path) != self._before:
            self.path.unlink(missing_ok=True)

    def abort(self) -> None:
        """Best-effort close after a failure: never raises, so the original error is what the user sees.
        What was written stays a playable file; an output that got no frame at all is removed."""
        try:
            self.close(complete=False)
        except Exception as error:  # the job already failed; a second error would only hide the first
            log.warning("could not finalize %s after an error: %s", self.path, error)
        if self.frames_written == 0:
            self._remove_if_ours()

    @property
    def audio_packets_copied(self) -> int:
        return self._audio.copied if self._audio is not None else 0


