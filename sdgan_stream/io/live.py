"""Live video sources: cameras (PyAV v4l2 or OpenCV), network streams (RTSP...), FFmpeg lavfi graphs,
and video files played at their own pace (a camera stand-in).

A capture thread reads the source as fast as it delivers and keeps only the newest frame: when
processing falls behind, older frames are overwritten (dropped and counted) instead of queuing up,
so latency stays at one frame plus the processing time. Network sources and cameras reconnect with
exponential backoff when they drop; each connection is a *session*, and :meth:`LiveSource.session_of`
tells which session a frame came from (trackers must forget everything across a gap).

Frames carry ``capture_time`` (``time.monotonic()`` when the frame was decoded) and a ``pts`` on the
capture clock (time base 1/90000, monotonic across reconnects), not the source's own timestamps: live
sources restart theirs on every reconnect and many (RTSP) begin without one.

>>> # source = LiveSource("rtsp://cam/stream", transport="tcp").start()
>>> # for frame in source.frames(stop_event): ...
"""

from __future__ import annotations

import bisect
import logging
from collections import deque
import os
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Literal, Protocol

import av
import numpy as np

from ..errors import InputError
from ..redact import redact_text, redact_url
from ..types import VideoFrame, VideoInfo
from .source import normalise_rotation, to_display

log = logging.getLogger(__name__)

__all__ = [
    "Backoff",
    "CaptureBackend",
    "LiveSource",
    "LiveSourceStats",
    "LiveTarget",
    "parse_camera",
]

CaptureBackend = Literal["auto", "pyav", "opencv"]
CAPTURE_TIME_BASE = Fraction(1, 90000)
_POLL_SECONDS = 0.1
_EVENTS_KEPT = 256
_NETWORK_SCHEMES = ("rtsp", "rtsps", "rtmp", "rtmps", "http", "https", "srt", "udp", "tcp", "rtp")


@dataclass(frozen=True)
class Backoff:
    """Exponential backoff between reconnection attempts: ``initial``, x ``factor`` each failure, at most ``maximum``.

    The cap is small on purpose: a camera that comes back should be serving again within seconds.

    >>> list(Backoff(initial=0.5, factor=2, maximum=3).delays(5))
    [0.5, 1.0, 2.0, 3, 3]
    """

    initial: float = 0.25
    factor: float = 2.0
    maximum: float = 2.0

    def delay(self, failures: int) -> float:
        """Wait before attempt ``failures + 1`` (``failures`` >= 1 consecutive failures so far)."""
        return min(self.initial * self.factor ** max(failures - 1, 0), self.maximum)

    def delays(self, count: int) -> Iterator[float]:
        return (self.delay(n) for n in range(1, count + 1))


@dataclass(frozen=True)
class LiveTarget:
    """What ``--camera`` named, resolved: how to open it and whether it reconnects by default."""

    kind: Literal["opencv", "v4l2", "url", "lavfi", "file"]
    location: str | int  # OpenCV index, device path, URL, filter graph or file path
    display: str  # for log lines: credentials masked

    @property
    def reconnects(self) -> bool:
        """Cameras and network streams come back after a drop; a graph or a file simply ends."""
        return self.kind in ("opencv", "v4l2", "url")


def parse_camera(spec: str | int, *, capture: CaptureBackend = "auto") -> LiveTarget:
    """Resolve a ``--camera`` value.

    - ``0``, ``1``...: a camera index; on Linux ``/dev/videoN`` through PyAV's v4l2 input when it
      exists (``capture='opencv'`` forces OpenCV's own index lookup, which also works on macOS/Windows);
    - ``/dev/videoN``: a V4L2 device (PyAV, or OpenCV with ``capture='opencv'``);
    - ``scheme://...``: any URL FFmpeg reads (RTSP, HTTP, SRT, UDP...);
    - ``lavfi:GRAPH``: an FFmpeg filter graph, e.g. ``lavfi:testsrc2=size=640x360:rate=25,realtime``;
    - a video file: played at its own frame rate, like a camera.

    >>> parse_camera("lavfi:testsrc2=rate=25,realtime").kind
    'lavfi'
    >>> parse_camera("rtsp://u:p@cam/1").display
    'rtsp://***@cam/1'
    """
    text = str(spec).strip()
    if capture not in ("auto", "pyav", "opencv"):
        raise ValueError(f"capture backend must be auto, pyav or opencv, got {capture!r}")
    if text.isdigit():
        index = int(text)
        device = f"/dev/video{index}"
        if capture == "opencv" or (capture == "auto" and not (sys.platform.startswith("linux") and os.path.exists(device))):
            return LiveTarget("opencv", index, f"camera {index} (OpenCV)")
        return LiveTarget("v4l2", device, f"{device} (v4l2)")
    if text.startswith("/dev/"):
        if capture == "opencv":
            return LiveTarget("opencv", text, f"{text} (OpenCV)")
        return LiveTarget("v4l2", text, f"{text} (v4l2)")
    if text.startswith("lavfi:"):
        graph = text.removeprefix("lavfi:")
        if not graph:
            raise InputError("lavfi: needs a filter graph, e.g. lavfi:testsrc2=size=640x360:rate=25,realtime")
        return LiveTarget("lavfi", graph, f"lavfi {graph}")
    if "://" in text:
        scheme = text.split("://", 1)[0].lower()
        if scheme == "file":
            return parse_camera(text.split("://", 1)[1], capture=capture)
        return LiveTarget("url", text, redact_url(text))
    path = Path(text)
    if path.is_file():
        return LiveTarget("file", str(path), str(path))
    raise InputError(
        f"--camera {redact_url(text)!r} is not a camera index, a device, a URL, lavfi:GRAPH or an existing video file"
    )


# -- readers: one connection each ----------------------------------------------------------------


class _Connection(Protocol):
    width: int
    height: int
    fps: Fraction | None

    def images(self) -> Iterator[np.ndarray]:
        """RGB frames until the source ends (returns) or fails (raises)."""
        ...

    def close(self) -> None: ...


def _usable_rate(*rates: Fraction | None) -> Fraction | None:
    for rate in rates:
        if rate and 1 <= float(rate) <= 240:
            return Fraction(rate)
    return None


class _PyAVConnection:
    """One PyAV input: a URL, a device (v4l2), a lavfi graph or a file (optionally paced)."""

    def __init__(
        self,
        location: str,
        *,
        format: str | None,
        options: dict[str, str],
        timeout: tuple[float, float] | None,
        paced: bool,
        stop: threading.Event,
    ) -> None:
        self._container = av.open(location, mode="r", format=format, options=options, timeout=timeout)
        if not self._container.streams.video:
            self._container.close()
            raise InputError(f"{redact_url(location)} has no video stream")
        self._stream = self._container.streams.video[0]
        # Frame threading delays every frame by the thread count: bad for latency.
        self._stream.thread_type = "SLICE"
        ctx = self._stream.codec_context
        self.width, self.height = ctx.width, ctx.height
        self.fps = _usable_rate(self._stream.average_rate, self._stream.guessed_rate, self._stream.base_rate)
        self._paced = paced
        self._stop = stop
        self.corrupt_packets = 0

    def images(self) -> Iterator[np.ndarray]:
        start_wall: float | None = None
        start_pts: float | None = None
        for packet in self._container.demux(self._stream):
            try:
                frames = packet.decode()
            except av.error.FFmpegError as error:  # damaged data (packet loss): skip, keep the connection
                self.corrupt_packets += 1
                log.debug("skipping an undecodable packet: %s", redact_text(str(error)))
                continue
            for frame in frames:
                if self._paced:
                    # Files play at their own rate, like a camera would deliver them.
                    seconds = float(frame.pts * frame.time_base) if frame.pts is not None and frame.time_base else None
                    if seconds is not None:
                        if start_wall is None or start_pts is None:
                            start_wall, start_pts = time.monotonic(), seconds
                        wait = start_wall + (seconds - start_pts) - time.monotonic()
                        if wait > 0 and self._stop.wait(wait):
                            return
                # Live frames are handed on, and published, in display orientation: a stream or file that says
                # its pictures are turned (a phone's) is turned upright here, so faces are looked for upright.
                image = to_display(frame.to_ndarray(format="rgb24"), normalise_rotation(frame.rotation))
                self.height, self.width = image.shape[:2]
                yield image
            if self._stop.is_set():
                return

    def close(self) -> None:
        self._container.close()


class _OpenCVConnection:
    """A camera through OpenCV's VideoCapture (index or device path)."""

    def __init__(self, location: str | int, *, size: tuple[int, int] | None, fps: float | None) -> None:
        import cv2

        self._cv2 = cv2
        self._capture = cv2.VideoCapture(location)
        if not self._capture.isOpened():
            self._capture.release()
            raise InputError(
                f"OpenCV cannot open camera {location} (no camera here? a test source: "
                "--camera 'lavfi:testsrc2=size=640x360:rate=25,realtime')"
            )
        self._capture.set(cv2.CAP_PROP_BUFFERSIZE, 1)  # newest frame, not a backlog
        if size is not None:
            self._capture.set(cv2.CAP_PROP_FRAME_WIDTH, size[0])
            self._capture.set(cv2.CAP_PROP_FRAME_HEIGHT, size[1])
        if fps:
            self._capture.set(cv2.CAP_PROP_FPS, fps)
        self.width = int(self._capture.get(cv2.CAP_PROP_FRAME_WIDTH))
        self.height = int(self._capture.get(cv2.CAP_PROP_FRAME_HEIGHT))
        reported = self._capture.get(cv2.CAP_PROP_FPS)
        self.fps = _usable_rate(Fraction(reported).limit_denominator(1001) if reported and reported > 0 else None)

    def images(self) -> Iterator[np.ndarray]:
        while True:
            ok, bgr = self._capture.read()
            if not ok or bgr is None:
                return
            self.height, self.width = bgr.shape[:2]
            yield self._cv2.cvtColor(bgr, self._cv2.COLOR_BGR2RGB)

    def close(self) -> None:
        self._capture.release()


# -- the live source -------------------------------------------------------------------------------


@dataclass
class LiveSourceStats:
    """Counters of a live source; read them from any thread."""

    captured: int = 0  # frames read from the source
    dropped: int = 0  # frames overwritten in the newest-frame slot before anyone took them
    connections: int = 0  # successful opens (the first one included)
    failures: int = 0  # failed opens and lost connections
    corrupt_packets: int = 0
    connected: bool = False
    last_error: str = ""  # credentials masked
    down_since: float | None = None  # monotonic time the input was lost; None while up
    # (monotonic, "up"|"down"), the newest only: a camera that flaps for days must not grow this
    events: deque[tuple[float, str]] = field(default_factory=lambda: deque(maxlen=_EVENTS_KEPT), repr=False)

    @property
    def reconnects(self) -> int:
        return max(self.connections - 1, 0)


class LiveSource:
    """A live video source with a capture thread, a newest-frame slot and reconnection.

    ``reconnect`` defaults to True for cameras and URLs, False for lavfi graphs and files (they end).
    ``retry_first_open=False`` makes a source that cannot be opened at all an error (a webcam that
    is not there) instead of something to wait for (a camera that is still booting).
    ``loop`` replays a file from the start when it ends. ``open_timeout``/``read_timeout`` (seconds)
    bound how long a dead network source can block before it counts as lost. ``options`` go to FFmpeg
    (``{'video_size': '1280x720', 'input_format': 'mjpeg'}`` for v4l2, ...).
    Raises :class:`InputError` from :meth:`frames`/:meth:`wait_ready` when a source that does not
    reconnect cannot be opened.
    """

    def __init__(
        self,
        spec: str | int | LiveTarget,
        *,
        capture: CaptureBackend = "auto",
        transport: Literal["tcp", "udp"] = "tcp",
        reconnect: bool | None = None,
        retry_first_open: bool = True,
        loop: bool = False,
        open_timeout: float = 10.0,
        read_timeout: float = 5.0,
        backoff: Backoff | None = None,
        options: dict[str, str] | None = None,
        size: tuple[int, int] | None = None,
        fps: float | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.target = spec if isinstance(spec, LiveTarget) else parse_camera(spec, capture=capture)
        if transport not in ("tcp", "udp"):
            raise ValueError(f"transport must be tcp or udp, got {transport!r}")
        self.transport = transport
        self.reconnect = self.target.reconnects if reconnect is None else reconnect
        self.retry_first_open = retry_first_open
        self.loop = loop
        self.open_timeout = open_timeout
        self.read_timeout = read_timeout
        self.backoff = backoff or Backoff()
        self.options = dict(options or {})
        self.size = size
        self.requested_fps = fps
        self._clock = clock
        self.stats = LiveSourceStats()
        self._cond = threading.Condition()
        self._latest: VideoFrame | None = None
        self._ended = False
        self._fatal: BaseException | None = None
        self._closing = threading.Event()
        self._thread: threading.Thread | None = None
        self._next_index = 0
        self._session_starts: list[int] = []  # index of the first frame of each recent session
        self._sessions_forgotten = 0  # sessions trimmed from the front of that list (bounded memory)
        self._epoch = clock()
        self.info: VideoInfo | None = None  # set from the first frame

    # -- public ---------------------------------------------------------------------------------
    def start(self) -> LiveSource:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="sdgan-capture", daemon=True)
            self._thread.start()
        return self

    def wait_ready(self, stop: threading.Event | None = None, timeout: float | None = None) -> VideoInfo | None:
        """Block until the first frame has arrived: its :class:`VideoInfo`; None on stop/timeout/end."""
        deadline = None if timeout is None else self._clock() + timeout
        with self._cond:
            while self.info is None:
                if self._fatal is not None:
                    raise self._fatal
                if self._ended or (stop is not None and stop.is_set()):
                    return None
                if deadline is not None and self._clock() >= deadline:
                    return None
                self._cond.wait(_POLL_SECONDS)
            return self.info

    def frames(self, stop: threading.Event | None = None) -> Iterator[VideoFrame]:
        """The newest frame each time the consumer asks; returns when ``stop`` is set or the source ends."""
        while True:
            with self._cond:
                while self._latest is None:
                    if self._fatal is not None:
                        raise self._fatal
                    if self._ended or (stop is not None and stop.is_set()):
                        return
                    self._cond.wait(_POLL_SECONDS)
                frame, self._latest = self._latest, None
            if stop is not None and stop.is_set():
                return
            yield frame

    def session_of(self, index: int) -> int:
        """Which connection (0-based) the frame with this ``index`` came from."""
        return self._sessions_forgotten + max(bisect.bisect_right(self._session_starts, index) - 1, 0)

    @property
    def finished(self) -> bool:
        """The source ended by itself (end of a file or graph), not by :meth:`close` or an error."""
        return self._ended and self._fatal is None and not self._closing.is_set()

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def close(self, timeout: float | None = None) -> None:
        """Stop capturing and wait for the capture thread to leave FFmpeg.

        FFmpeg cannot be interrupted from another thread, but every blocking call it makes here is
        bounded: an open by ``open_timeout``, a read by ``read_timeout`` (a paced file or a lavfi graph
        by one frame). So the thread ends within that bound, and ``close`` waits for it (``timeout``
        overrides the bound); the connection is closed by the thread itself, never under a read.
        """
        self._closing.set()
        with self._cond:
            self._cond.notify_all()
        if self._thread is None:
            return
        if timeout is None:
            timeout = max(self.open_timeout, self.read_timeout) + 2.0
        self._thread.join(timeout)
        if self._thread.is_alive():
            log.error("the capture thread of %s is still blocked after %.0f s; leaving it behind", self.target.display, timeout)

    def __enter__(self) -> LiveSource:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- capture thread -------------------------------------------------------------------------
    def _open(self) -> _Connection:
        target = self.target
        timeout = (self.open_timeout, self.read_timeout)
        if target.kind == "opencv":
            return _OpenCVConnection(target.location, size=self.size, fps=self.requested_fps)
        options = dict(self.options)
        fmt: str | None = None
        paced = False
        if target.kind == "v4l2":
            fmt = "v4l2"
            if self.size is not None:
                options.setdefault("video_size", f"{self.size[0]}x{self.size[1]}")
            if self.requested_fps:
                options.setdefault("framerate", str(self.requested_fps))
        elif target.kind == "lavfi":
            fmt = "lavfi"
            timeout = None  # a graph never blocks on a network; 'realtime' sleeps on purpose
        elif target.kind == "file":
            paced, timeout = True, None
        elif target.kind == "url":
            scheme = str(target.location).split("://", 1)[0].lower()
            if scheme in ("rtsp", "rtsps"):
                options.setdefault("rtsp_transport", self.transport)
            # A short probe: every frame read while probing reaches us late, in one burst (and a
            # reconnect waits for it). RTSP announces its format in the SDP; 0.5 s is plenty.
            # (fflags=nobuffer is *not* set: with the RTSP demuxer it delays the open by ~10 s.)
            options.setdefault("analyzeduration", "500000")
        return _PyAVConnection(str(target.location), format=fmt, options=options, timeout=timeout, paced=paced, stop=self._closing)

    def _run(self) -> None:
        failures = 0
        try:
            while not self._closing.is_set():
                try:
                    connection = self._open()
                except Exception as error:
                    failures += 1
                    fatal = not self.reconnect or (not self.retry_first_open and self.stats.connections == 0)
                    self._lost(f"cannot open {self.target.display}: {_reason(error)}", retrying=not fatal)
                    if fatal:
                        if isinstance(error, InputError):
                            raise
                        raise InputError(f"cannot open {self.target.display}: {_reason(error)}") from None
                    self._sleep_backoff(failures)
                    continue
                delivered = False
                try:
                    self.stats.connections += 1
                    log.info("input %s open (%dx%d, %s fps)", self.target.display, connection.width, connection.height, connection.fps or "unknown")
                    for image in connection.images():
                        if self._closing.is_set():
                            break
                        if not delivered:
                            delivered = True
                            failures = 0
                            self._up(connection)
                        self._publish(image)
                    reason = "ended"
                except Exception as error:  # the connection broke: reconnect (or end) below
                    reason = _reason(error)
                finally:
                    self.stats.corrupt_packets += getattr(connection, "corrupt_packets", 0)
                    try:
                        connection.close()
                    except Exception:  # closing a broken connection may fail too; nothing to keep
                        log.debug("closing the input failed", exc_info=True)
                if self._closing.is_set():
                    return
                if self.target.kind == "file" and self.loop and delivered and reason == "ended":
                    continue  # replay: one continuous session, like a camera that never stops
                if not self.reconnect:
                    if delivered:
                        log.info("input %s %s", self.target.display, reason)
                    else:
                        raise InputError(f"{self.target.display} delivered no frame ({reason})")
                    return
                failures += 1
                self._lost(f"input {self.target.display} lost ({reason})", retrying=True)
                self._sleep_backoff(failures)
        except BaseException as error:  # handed to the consumer thread by frames()/wait_ready()
            self._fatal = error
        finally:
            with self._cond:
                self._ended = True
                self.stats.connected = False
                self._cond.notify_all()

    def _up(self, connection: _Connection) -> None:
        now = self._clock()
        if self.stats.down_since is not None:
            log.warning("input %s back after %.1f s", self.target.display, now - self.stats.down_since)
        self.stats.connected = True
        self.stats.down_since = None
        self.stats.events.append((now, "up"))
        with self._cond:
            self._session_starts.append(self._next_index)
            if len(self._session_starts) > 2 * _EVENTS_KEPT:  # frames in flight are all from recent sessions
                del self._session_starts[:_EVENTS_KEPT]
                self._sessions_forgotten += _EVENTS_KEPT
            if self.info is None:
                fps = _usable_rate(Fraction(self.requested_fps).limit_denominator(1001) if self.requested_fps else None, connection.fps)
                self.info = VideoInfo(
                    width=connection.width,
                    height=connection.height,
                    time_base=CAPTURE_TIME_BASE,
                    average_rate=fps,
                    is_live=True,
                )

    def _lost(self, message: str, *, retrying: bool) -> None:
        now = self._clock()
        self.stats.failures += 1
        self.stats.last_error = redact_text(message)
        outage_begins = self.stats.connected or self.stats.down_since is None
        if outage_begins:
            self.stats.down_since = now
            self.stats.events.append((now, "down"))
        self.stats.connected = False
        if not retrying:
            return  # the caller raises
        # The start of an outage is a warning; the retries while it lasts are quieter.
        log.log(logging.WARNING if outage_begins else logging.INFO, "%s; retrying", self.stats.last_error)

    def _sleep_backoff(self, failures: int) -> None:
        delay = self.backoff.delay(failures)
        log.debug("reconnecting to %s in %.2f s", self.target.display, delay)
        self._closing.wait(delay)

    def _publish(self, image: np.ndarray) -> None:
        now = self._clock()
        frame = VideoFrame(
            image=image,
            index=self._next_index,
            pts=round((now - self._epoch) / CAPTURE_TIME_BASE),
            time_base=CAPTURE_TIME_BASE,
            capture_time=now,
        )
        self._next_index += 1
        with self._cond:
            if self._latest is not None:
                self.stats.dropped += 1  # nobody took the previous one in time: it is stale now
            self._latest = frame
            self.stats.captured += 1
            self._cond.notify_all()


def _reason(error: BaseException) -> str:
    text = getattr(error, "strerror", None) or str(error) or type(error).__name__
    return redact_text(str(text).splitlines()[0])
