"""Publishing anonymized video to an RTSP server (PyAV's ``rtsp`` muxer).

:class:`RtspPublisher` is a pipeline sink with its own thread, which alone owns the connection (opens,
sends, closes it). ``write`` hands it one anonymized frame and waits only until the previous one has
been taken, so every processed frame is published exactly once; when the filter cannot keep up, the
stale frames are dropped at the *input* (the pipeline's newest-frame policy), not here. Each frame is
stamped with its own capture time (time base 1/90000, on the publisher's clock), so the output's
timing follows the camera's, not the processing jitter; timestamps only ever go forward, across input
reconnects too. When no new frame has come for ``stall_seconds`` (input down, or a long stall) the
thread keeps the output alive at the source rate: it repeats the last published frame until
``hold_seconds`` after it, then sends a neutral grey frame until frames come back.

Privacy: the publisher only ever encodes (a) frames given to :meth:`RtspPublisher.write` - the
pipeline gives it the anonymizer's output and nothing else - and (b) its own neutral frame. It never
sees the input, so there is no path by which an uncovered frame could be repeated.

If the RTSP server goes away the publisher reconnects with backoff (frames in between are counted
as ``output_skipped``) while the rest of the pipeline goes on.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Literal, Protocol

import av
import cv2
import numpy as np

from ..errors import OutputError
from ..redact import redact_text, redact_url
from ..types import VideoFrame
from .live import Backoff

log = logging.getLogger(__name__)

__all__ = ["EncoderSettings", "PublisherStats", "RtspOutput", "RtspPublisher", "neutral_frame", "output_format_for"]

TIME_BASE = Fraction(1, 90000)  # RTP's video clock
FrameKind = Literal["fresh", "repeat", "neutral"]
_LATENCY_WINDOW = 2048
_POLL_SECONDS = 0.1
_WARN_AFTER_SECONDS = 1.0  # a gap in the frames shorter than this is a stall, not an outage


@dataclass(frozen=True)
class EncoderSettings:
    """x264 settings for a live output: no look-ahead, no B-frames, a keyframe every ``gop_seconds``
    so that a viewer who joins (or a relay that restarts) gets a picture quickly."""

    codec: str = "libx264"
    preset: str = "ultrafast"
    tune: str = "zerolatency"
    crf: int = 23
    bitrate: str | None = None  # e.g. "2M": capped bitrate (maxrate/bufsize) instead of constant quality
    gop_seconds: float = 1.0

    def options(self, fps: float) -> dict[str, str]:
        options = {"preset": self.preset, "g": str(max(1, round(self.gop_seconds * fps))), "bf": "0"}
        if self.tune:
            options["tune"] = self.tune
        if self.bitrate:
            options.update({"b": self.bitrate, "maxrate": self.bitrate, "bufsize": self.bitrate})
        else:
            options["crf"] = str(self.crf)
        return options


def output_format_for(url: str) -> str:
    """The FFmpeg muxer for an output URL: rtsp for rtsp://, flv for rtmp://, mpegts for srt/udp/tcp."""
    scheme = url.split("://", 1)[0].lower() if "://" in url else ""
    formats = {"rtsp": "rtsp", "rtsps": "rtsp", "rtmp": "flv", "rtmps": "flv", "srt": "mpegts", "udp": "mpegts", "tcp": "mpegts"}
    if scheme not in formats:
        raise OutputError(f"cannot publish to {redact_url(url)!r}: use an rtsp://, rtmp://, srt://, udp:// or tcp:// URL")
    return formats[scheme]


def neutral_frame(width: int, height: int, text: str = "waiting for input") -> np.ndarray:
    """Mid-grey with a short caption: what viewers see while no anonymized frame is available."""
    image = np.full((height, width, 3), 128, np.uint8)
    scale = max(height / 720, 0.35)
    thickness = max(1, round(2 * scale))
    (tw, th), _ = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, scale, thickness)
    cv2.putText(image, text, ((width - tw) // 2, (height + th) // 2), cv2.FONT_HERSHEY_SIMPLEX, scale, (200, 200, 200), thickness, cv2.LINE_AA)
    return image


class Output(Protocol):
    """One open connection to the server (what :class:`RtspPublisher` sends through)."""

    def send(self, image: np.ndarray, pts: int) -> None: ...

    def close(self) -> None: ...


class RtspOutput:
    """One publishing session: an H.264 encoder and PyAV's rtsp muxer (``format`` picks another muxer).

    The RTSP handshake (ANNOUNCE/SETUP/RECORD) happens on the first :meth:`send`.
    """

    def __init__(
        self,
        url: str,
        *,
        width: int,
        height: int,
        fps: float,
        transport: Literal["tcp", "udp"] = "tcp",
        settings: EncoderSettings | None = None,
        timeout: tuple[float, float] | None = (10.0, 10.0),
    ) -> None:
        settings = settings or EncoderSettings()
        fmt = output_format_for(url)
        options: dict[str, str] = {}
        if fmt == "rtsp":
            options["rtsp_transport"] = transport
            if timeout is not None and timeout[1] is not None:
                # PyAV's own timeout covers the open only: without this, a send to a server that stopped
                # reading blocks (and so does shutdown) for as long as TCP keeps trying
                options["timeout"] = str(int(timeout[1] * 1_000_000))
        self._display = redact_url(url)
        try:
            self._container = av.open(url, mode="w", format=fmt, options=options, timeout=timeout)
        except (av.error.FFmpegError, OSError, ValueError) as error:
            raise OutputError(redact_text(f"cannot publish to {url}: {error}")) from None
        try:
            rate = Fraction(fps).limit_denominator(1001)
            self._stream = self._container.add_stream(settings.codec, rate=rate)
            self._stream.width, self._stream.height, self._stream.pix_fmt = width, height, "yuv420p"
            self._stream.time_base = TIME_BASE
            self._stream.codec_context.time_base = TIME_BASE
            self._stream.options = settings.options(float(rate))
        except Exception as error:
            self._container.close()
            raise OutputError(redact_text(f"cannot set up the {settings.codec} encoder for {url}: {error}")) from None

    def send(self, image: np.ndarray, pts: int) -> None:
        frame = av.VideoFrame.from_ndarray(image, format="rgb24")
        frame.pts = pts
        frame.time_base = TIME_BASE
        try:
            for packet in self._stream.encode(frame):
                self._container.mux(packet)
        except (av.error.FFmpegError, OSError, ValueError) as error:
            raise OutputError(redact_text(f"publishing to {self._display} failed: {error}")) from None

    def close(self) -> None:
        try:
            for packet in self._stream.encode(None):
                self._container.mux(packet)
        except (av.error.FFmpegError, OSError, ValueError):  # the server may be gone already
            pass
        finally:
            try:
                self._container.close()
            except (av.error.FFmpegError, OSError, ValueError):
                log.debug("closing the output failed", exc_info=True)


@dataclass
class PublisherStats:
    """Counters of a publisher; read them from any thread."""

    fresh: int = 0  # anonymized frames published
    repeated: int = 0  # repeats of the last published frame (no new frame in time)
    neutral: int = 0  # neutral frames (nothing to repeat, or held too long)
    output_skipped: int = 0  # frames due while the server connection was down
    output_errors: int = 0
    sessions: int = 0  # successful output (re)connections
    connected: bool = False
    latencies: deque[tuple[float, float]] = field(default_factory=lambda: deque(maxlen=_LATENCY_WINDOW), repr=False)
    # changes of frame kind (monotonic time, kind), the newest only: bounded on a stream of days
    events: deque[tuple[float, FrameKind]] = field(default_factory=lambda: deque(maxlen=_LATENCY_WINDOW), repr=False)

    @property
    def published(self) -> int:
        return self.fresh + self.repeated + self.neutral


class RtspPublisher:
    """A pipeline sink that publishes anonymized frames at the source rate (see the module docstring).

    ``open_output`` builds the connection (default :class:`RtspOutput`); tests pass a fake one.
    Frames of another size than ``width`` x ``height`` are scaled to it (the input may come back at
    another resolution after a reconnect; the output cannot change size mid-stream).
    """

    def __init__(
        self,
        url: str,
        *,
        width: int,
        height: int,
        fps: float,
        transport: Literal["tcp", "udp"] = "tcp",
        hold_seconds: float = 2.0,
        stall_seconds: float = 0.5,
        settings: EncoderSettings | None = None,
        backoff: Backoff | None = None,
        open_output: Callable[[], Output] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if fps <= 0:
            raise ValueError(f"fps must be positive, got {fps}")
        self.url = url
        self.display_url = redact_url(url)
        # 4:2:0 needs even sizes; one pixel less is invisible, an odd-size 4:4:4 stream is unplayable for many viewers.
        self.width, self.height = max(width - width % 2, 2), max(height - height % 2, 2)
        self.fps = float(fps)
        self.period = 1.0 / self.fps
        self.hold_seconds = hold_seconds
        # A gap shorter than this is processing jitter: the viewer just waits for the next frame.
        self.stall_seconds = max(stall_seconds, self.period)
        self.backoff = backoff or Backoff(initial=0.5, maximum=5.0)
        self._open_output = open_output or (
            lambda: RtspOutput(url, width=self.width, height=self.height, fps=self.fps, transport=transport, settings=settings)
        )
        self._clock = clock
        self.stats = PublisherStats()
        self._cond = threading.Condition()
        self._pending: VideoFrame | None = None
        self._closing = False
        self._thread: threading.Thread | None = None
        self._output: Output | None = None
        self._reopen_at = 0.0
        self._consecutive_errors = 0
        self._neutral = neutral_frame(self.width, self.height)
        self._last_image: np.ndarray | None = None
        self._last_fresh_at = 0.0
        self._last_kind: FrameKind | None = None
        self._warned_gap = False
        self._gap_started = 0.0
        self._last_pts = -1
        self._pts_offset = 0  # added to capture-time stamps so they never go back (see _stamp)
        self._last_latency = 0.0
        self._epoch = clock()
        self._failure: BaseException | None = None
        self._stopped = False  # the thread has ended (closed or failed)

    # -- pipeline side --------------------------------------------------------------------------
    def start(self) -> RtspPublisher:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="sdgan-publish", daemon=True)
            self._thread.start()
        return self

    def write(self, frame: VideoFrame) -> None:
        """Hand over one *anonymized* frame; waits only while the previous one has not been taken yet.
        Raises the publishing thread's error once it has failed, :class:`OutputError` once closed."""
        with self._cond:
            while self._pending is not None and not self._stopped and not self._closing:
                self._cond.wait(_POLL_SECONDS)
            if self._failure is not None:
                raise self._failure
            if self._stopped or self._closing or self._thread is None:
                raise OutputError(f"the publisher to {self.display_url} is not running")
            self._pending = frame
            self._cond.notify_all()

    def close(self, timeout: float = 15.0) -> None:
        """Publish the frame still waiting, stop the thread; the thread closes the connection (the
        server sees a TEARDOWN). Never closes the connection under a ``send`` still running: if the
        thread does not end within ``timeout`` (a send stuck on the network, which its own timeout
        ends), it is left to close the connection itself."""
        with self._cond:
            self._closing = True
            self._cond.notify_all()
        if self._thread is None:
            self._disconnect()
            return
        self._thread.join(timeout)
        if self._thread.is_alive():
            log.error("the publishing thread did not end within %.0f s; it closes the output when its send returns", timeout)

    def __enter__(self) -> RtspPublisher:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- publishing thread ----------------------------------------------------------------------
    def _run(self) -> None:
        fill_at = self._clock() + self.stall_seconds
        try:
            while True:
                with self._cond:
                    while self._pending is None and not self._closing:
                        wait = fill_at - self._clock()
                        if wait <= 0:
                            break
                        self._cond.wait(min(wait, _POLL_SECONDS))  # polls: the clock may be a test's
                    if self._closing and self._pending is None:
                        return
                    frame, self._pending = self._pending, None
                    self._cond.notify_all()  # the writer may hand over the next frame
                now = self._clock()
                if frame is not None:
                    image = self._fit(frame.image)
                    self._last_image, self._last_fresh_at = image, now
                    self._emit(image, "fresh", now, frame.capture_time)
                    fill_at = now + self.stall_seconds
                else:
                    if self._last_image is not None and now - self._last_fresh_at <= self.hold_seconds:
                        self._emit(self._last_image, "repeat", now, None)
                    else:
                        self._emit(self._neutral, "neutral", now, None)
                    # Fill on a steady grid; if encoding fell behind, start a new grid from now.
                    fill_at = fill_at + self.period if fill_at + self.period > now else now + self.period
        except BaseException as error:  # handed to the pipeline on its next write()
            log.exception("publisher thread failed")
            self._failure = error
        finally:
            self._disconnect()  # only this thread ever sends, so only it closes the connection
            with self._cond:
                self._stopped = True
                self._cond.notify_all()

    def _fit(self, image: np.ndarray) -> np.ndarray:
        if image.shape[1] == self.width and image.shape[0] == self.height:
            return image
        return cv2.resize(image, (self.width, self.height), interpolation=cv2.INTER_AREA)

    def _stamp(self, now: float, capture_time: float | None) -> int:
        """pts of the next frame: its capture time on the publisher's clock (fill frames: now, less the
        last frame's latency, so they sit on the same timeline). A stamp that would not be after the
        previous one (a frame captured before the publisher started, a slow first frame after an
        outage) moves the whole timeline forward for good, rather than nudging single frames."""
        when = capture_time if capture_time else now - self._last_latency
        pts = round((when - self._epoch) / TIME_BASE) + self._pts_offset
        if pts <= self._last_pts:
            self._pts_offset += self._last_pts + 1 - pts
            pts = self._last_pts + 1
        return pts

    def _emit(self, image: np.ndarray, kind: FrameKind, now: float, capture_time: float | None) -> None:
        self._log_kind_change(kind, now)
        output = self._connected_output(now)
        if output is None:
            self.stats.output_skipped += 1
            return
        pts = self._stamp(now, capture_time)
        try:
            output.send(image, pts)
        except OutputError as error:
            self._on_output_error(error, now)
            self.stats.output_skipped += 1
            return
        self._last_pts = pts
        self._consecutive_errors = 0
        if kind == "fresh":
            self.stats.fresh += 1
            if capture_time:
                sent = self._clock()
                self._last_latency = sent - capture_time
                self.stats.latencies.append((sent, self._last_latency))
        elif kind == "repeat":
            self.stats.repeated += 1
        else:
            self.stats.neutral += 1

    def _log_kind_change(self, kind: FrameKind, now: float) -> None:
        # Short stalls (a slow frame) are normal and only logged at debug level; an outage that lasts
        # (or has nothing to repeat) is a warning, and so is its end.
        if kind != self._last_kind:
            self.stats.events.append((now, kind))
            self._last_kind = kind
            if kind == "fresh":
                if self._warned_gap:
                    log.warning("publishing anonymized frames again after %.1f s", now - self._gap_started)
                self._warned_gap = False
                return
            self._gap_started = self._last_fresh_at if self._last_image is not None else self._epoch
            if kind == "neutral":
                log.warning("no new frame for %.1f s: publishing a neutral frame", now - self._gap_started)
                self._warned_gap = True
        if kind == "repeat" and not self._warned_gap and now - self._gap_started >= _WARN_AFTER_SECONDS:
            log.warning("no new frame for %.1f s: repeating the last covered frame", now - self._gap_started)
            self._warned_gap = True

    def _connected_output(self, now: float) -> Output | None:
        if self._output is not None:
            return self._output
        if now < self._reopen_at:
            return None
        try:
            self._output = self._open_output()
        except OutputError as error:
            self._on_output_error(error, now)
            return None
        self.stats.sessions += 1
        self.stats.connected = True
        log.info("publishing to %s (%dx%d at %.2f fps)", self.display_url, self.width, self.height, self.fps)
        return self._output

    def _on_output_error(self, error: Exception, now: float) -> None:
        self._consecutive_errors += 1
        self.stats.output_errors += 1
        delay = self.backoff.delay(self._consecutive_errors)
        level = logging.WARNING if self._consecutive_errors == 1 else logging.INFO
        log.log(level, "%s; reconnecting the output in %.1f s", redact_text(str(error)), delay)
        self._disconnect()
        self._reopen_at = now + delay

    def _disconnect(self) -> None:
        output, self._output = self._output, None
        self.stats.connected = False
        if output is not None:
            try:
                output.close()
            except Exception:  # a dead connection may refuse to close cleanly; it is gone either way
                log.debug("closing the output failed", exc_info=True)
