"""Long videos in segments: cut at keyframes, anonymized apart, re-joined packet for packet.

A segment writes the frames from one cut to the next (``start_pts`` up to, not including, ``end_pts``)
but decodes and analyses more: from a keyframe at least ``overlap`` frames before its start (so the
tracker already follows every face when the first written frame comes, and a face lost just before
the cut is still covered at its predicted box) to ``overlap`` frames past its end (so a face first
detected just after the cut is covered by the look-back in the frames before it). Those overlap
frames are only context: :class:`SegmentSink` drops them.

Each segment is encoded on its own, so its output starts with an IDR frame and its GOPs never
reference another segment: the parts join without re-encoding (:func:`join_segments` copies their
packets into one file and the input's audio beside them), and the joined stream has a keyframe at
every cut. x264's decode timestamps run a fixed delay behind the presentation timestamps (its
B-frame delay, the same in every part encoded with the same settings), so the parts' timestamps
follow each other without a gap or an overlap; ``pts`` are the input's own, as in a single run.

Cuts fall on the input's keyframes, so decoding a segment starts with a seek, not a decode from
the start of the file.
"""

from __future__ import annotations

import bisect
import logging
import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import av

from ..errors import InputError, OutputError
from ..types import VideoFrame
from .sink import _AudioCopier  # the one place that copies audio packets beside a video stream
from .source import VideoFileSource, _video_stream

log = logging.getLogger(__name__)

__all__ = ["JoinReport", "Segment", "SegmentSink", "VideoIndex", "join_segments", "plan_segments", "read_index"]


@dataclass(frozen=True)
class VideoIndex:
    """Timestamps of a video stream, read from its packets (no decoding)."""

    time_base: Fraction
    pts: tuple[int, ...]  # every frame, in presentation order
    keyframes: tuple[int, ...]  # pts of the keyframes, ascending

    @property
    def seconds(self) -> float:
        return float((self.pts[-1] - self.pts[0]) * self.time_base) if self.pts else 0.0


# MPEG-TS/PS timestamps wrap after 26.5 hours; the source unwraps them as it decodes, which a seek
# into the middle of the file cannot reproduce: such files are not cut.
_UNCUT_FORMATS = frozenset({"mpegts", "mpeg"})


def read_index(path: str | Path) -> VideoIndex | None:
    """The video's frame and keyframe timestamps; None when it cannot be cut (packets without pts,
    MPEG-TS/PS)."""
    try:
        container = av.open(str(path))
    except (av.error.FFmpegError, UnicodeDecodeError) as error:
        raise InputError(f"cannot read {path} as a video: {error}") from error
    with container:
        if container.format.name.split(",")[0] in _UNCUT_FORMATS:
            return None
        stream = _video_stream(container, Path(path))  # the stream the source decodes (never cover art)
        pts: list[int] = []
        keyframes: list[int] = []
        try:
            for packet in container.demux(stream):
                if not packet.size:  # the demuxer's flush packet
                    continue
                if packet.pts is None:
                    return None
                pts.append(packet.pts)
                if packet.is_keyframe:
                    keyframes.append(packet.pts)
        except av.error.FFmpegError as error:  # a damaged tail: cut within what is readable
            log.warning("indexing %s stopped early: %s", path, error)
        if not pts or stream.time_base is None:
            return None
        return VideoIndex(time_base=stream.time_base, pts=tuple(sorted(pts)), keyframes=tuple(sorted(keyframes)))


@dataclass(frozen=True)
class Segment:
    """One piece of a video: the frames it writes and the wider range it decodes. None = open end."""

    index: int
    start_pts: int | None  # first frame written; None: from the first frame
    end_pts: int | None  # first frame of the next segment, not written here; None: to the end
    decode_from_pts: int | None  # a keyframe at least `overlap` frames before start_pts; None: the start
    stop_pts: int | None  # decoding stops before this frame (`overlap` frames past end_pts); None: the end
    frame_count: int  # frames it writes

    def writes(self, pts: int | None) -> bool:
        if pts is None:  # read_index refuses streams without timestamps, so this is a damaged frame
            return False
        return (self.start_pts is None or pts >= self.start_pts) and (self.end_pts is None or pts < self.end_pts)

    def read(self, source: VideoFileSource, stop: threading.Event | None = None) -> Iterator[VideoFrame]:
        """The frames this segment decodes: its own and the overlap on both sides."""
        for frame in source.frames(stop, start_pts=self.decode_from_pts):
            if self.stop_pts is not None and frame.pts is not None and frame.pts >= self.stop_pts:
                return
            yield frame


def plan_segments(index: VideoIndex, *, segment_seconds: float, overlap_frames: int) -> list[Segment]:
    """Cut at the first keyframe at least ``segment_seconds`` after the previous cut, keeping the last
    segment at least half that long. One segment (the whole video) when it is too short to cut or has
    too few keyframes."""
    pts, keys = index.pts, index.keyframes
    step = segment_seconds / float(index.time_base) if segment_seconds > 0 else float("inf")
    cuts = [pts[0]]
    for key in keys:
        if key - cuts[-1] >= step and pts[-1] - key >= step / 2:
            cuts.append(key)
    segments = []
    for i, start in enumerate(cuts):
        end = cuts[i + 1] if i + 1 < len(cuts) else None
        first = bisect.bisect_left(pts, start)
        last = bisect.bisect_left(pts, end) if end is not None else len(pts)
        decode_from = None
        if i > 0:
            wanted = pts[max(first - overlap_frames, 0)]
            decode_from = keys[bisect.bisect_right(keys, wanted) - 1]  # keys[0] <= pts[0] <= wanted
        stop = None
        if end is not None and last + overlap_frames < len(pts):
            stop = pts[last + overlap_frames]
        segments.append(Segment(index=i, start_pts=start if i > 0 else None, end_pts=end, decode_from_pts=decode_from,
                                stop_pts=stop, frame_count=last - first))
    return segments


class SegmentSink:
    """Passes on to ``sink`` only the frames ``segment`` writes; the overlap was decoded for context only.
    ``on_written`` is called for each frame passed on."""

    def __init__(self, sink, segment: Segment, on_written: Callable[[VideoFrame], None] | None = None) -> None:
        self.sink = sink
        self.segment = segment
        self.on_written = on_written

    def write(self, frame: VideoFrame) -> None:
        if self.segment.writes(frame.pts):
            self.sink.write(frame)
            if self.on_written is not None:
                self.on_written(frame)


@dataclass(frozen=True)
class JoinReport:
    frames: int
    audio_packets: int


def join_segments(parts: Sequence[str | Path], dst: str | Path, *, audio_from: str | Path | None = None) -> JoinReport:
    """Concatenate the video packets of ``parts`` (segment outputs, in order) into ``dst`` without
    re-encoding, with the first audio stream of ``audio_from`` copied beside them.

    Raises :class:`OutputError` when the parts do not fit together (different codec settings, or
    timestamps that do not follow each other).
    """
    if not parts:
        raise OutputError("no segments to join")
    dst = Path(dst)
    inputs = [av.open(str(p)) for p in parts]
    try:
        streams = [c.streams.video[0] for c in inputs]
        first = streams[0]
        for part, stream in zip(parts[1:], streams[1:]):
            same = (stream.codec_context.name, stream.codec_context.extradata, stream.width, stream.height)
            if same != (first.codec_context.name, first.codec_context.extradata, first.width, first.height):
                raise OutputError(f"segment {part} was encoded with other settings than {parts[0]}: cannot join")
        out = av.open(str(dst), mode="w")
        audio = None
        try:
            video = out.add_stream_from_template(first)
            video.time_base = first.time_base
            audio = _AudioCopier(Path(audio_from), out) if audio_from else None
            frames = 0
            last_dts: int | None = None
            for part, container, stream in zip(parts, inputs, streams):
                for packet in container.demux(stream):
                    if not packet.size:
                        continue
                    if stream.time_base != first.time_base:
                        raise OutputError(f"segment {part} has time base {stream.time_base}, not {first.time_base}")
                    if last_dts is not None and packet.dts is not None and packet.dts <= last_dts:
                        # Only a variable-rate start could make x264's B-frame delay differ between parts.
                        if packet.pts is None or last_dts + 1 > packet.pts:
                            raise OutputError(f"segment {part} starts before the previous one ends: cannot join")
                        packet.dts = last_dts + 1
                    last_dts = packet.dts if packet.dts is not None else last_dts
                    packet.stream = video
                    out.mux(packet)
                    frames += 1
                    if audio is not None and packet.dts is not None:
                        audio.mux_until(out, float(packet.dts * first.time_base))
            if audio is not None:
                audio.mux_until(out, None)
        finally:
            if audio is not None:
                audio.close()
            out.close()
    except (av.error.FFmpegError, OSError) as error:
        raise OutputError(f"joining segments into {dst} failed: {error}") from error
    finally:
        for container in inputs:
            container.close()
    return JoinReport(frames=frames, audio_packets=audio.copied if audio is not None else 0)
