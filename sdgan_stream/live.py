"""Live modes: ``sdgan-stream live`` (camera -> preview/recording) and ``sdgan-stream rtsp`` (stream filter).

Both run the same chain::

    LiveSource (capture thread, newest frame only, reconnects)
      -> run_pipeline(drop_policy='drop_oldest', queue of 1)  -> FrameAnonymizer(live=True: no look-back)
      -> sink: RtspPublisher (steady clock, fills gaps with covered/neutral frames)
               or LiveViewSink (preview window with fps/latency overlay, optional recording)

A reconnect starts a new *session*: the anonymizer's tracks are reset before the first frame of the
new session (tracks from before a gap describe people who may have moved or left).

Python API:

>>> # from sdgan_stream.live import run_rtsp_filter
>>> # report = run_rtsp_filter("rtsp://cam/stream", "rtsp://server/anonymized", method="pixelate")
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import signal
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Literal, Protocol

import cv2
import numpy as np

from .anonymize import FaceRenderer, FrameAnonymizer
from .config import AnonymizeOptions
from .io.live import Backoff, CaptureBackend, LiveSource, parse_camera
from .io.rtsp import EncoderSettings, RtspPublisher
from .pipeline import FrameSink, run_pipeline
from .redact import install_log_redaction, redact_text, redact_url
from .types import VideoFrame, VideoInfo

if TYPE_CHECKING:
    from .detect_passes import FaceDetector

log = logging.getLogger(__name__)

__all__ = [
    "LiveComponents",
    "LiveProcessor",
    "LiveReport",
    "LiveViewSink",
    "OpenCvPreview",
    "PreviewSink",
    "QUIT_KEYS",
    "add_live_parser",
    "add_rtsp_parser",
    "display_available",
    "draw_overlay",
    "is_quit_key",
    "run_live",
    "run_rtsp_filter",
]

QUIT_KEYS = frozenset({ord("q"), ord("Q"), 27})  # q, Q, Esc


# -- reports and statistics ---------------------------------------------------------------------


@dataclass
class LiveReport:
    """What a live run did. ``frames_out`` counts distinct anonymized frames published/shown;
    ``repeated``/``neutral`` count the fill frames the RTSP output sent while no new frame came."""

    seconds: float = 0.0
    frames_in: int = 0
    frames_processed: int = 0
    frames_out: int = 0
    frames_dropped: int = 0
    repeated: int = 0
    neutral: int = 0
    reconnects: int = 0
    output_errors: int = 0
    latency_ms_p50: float | None = None
    latency_ms_p95: float | None = None
    interrupted: bool = False
    stats: dict[str, int] = field(default_factory=dict)  # the anonymizer's per-method face counts

    @property
    def input_fps(self) -> float:
        return self.frames_in / self.seconds if self.seconds > 0 else 0.0

    @property
    def output_fps(self) -> float:
        return self.frames_out / self.seconds if self.seconds > 0 else 0.0


@dataclass
class LiveComponents:
    """The running parts of a live job, handed to ``on_start`` (tests, benchmarks, monitoring)."""

    source: LiveSource
    processor: LiveProcessor
    sink: FrameSink
    publisher: RtspPublisher | None = None

    @property
    def frames_dropped(self) -> int:
        return self.processor.dropped


class _OutputStats(Protocol):
    fresh: int
    latencies: deque[tuple[float, float]]  # (monotonic time sent/shown, seconds since capture)


def _percentile_ms(values: list[float], q: float) -> float | None:
    return float(np.percentile(values, q) * 1000.0) if values else None


class LiveProcessor:
    """The anonymizer, reset at each new input session, with exact processed/dropped counts."""

    def __init__(self, anonymizer: FrameAnonymizer, source: LiveSource) -> None:
        self.anonymizer = anonymizer
        self.source = source
        self.processed = 0
        self.last_index = -1
        self._session: int | None = None

    def push(self, frame: VideoFrame) -> list[VideoFrame]:
        session = self.source.session_of(frame.index)
        if self._session is not None and session != self._session:
            log.info("input session %d began: tracks reset", session)
            self.anonymizer.reset()
        self._session = session
        out = self.anonymizer.push(frame)
        self.processed += 1
        self.last_index = frame.index
        return out

    def flush(self) -> list[VideoFrame]:
        return self.anonymizer.flush()

    @property
    def dropped(self) -> int:
        """Frames captured before the last processed one that were never processed (all drop points)."""
        return self.last_index + 1 - self.processed


class _StatsMonitor:
    """Emits one stats line every ``interval`` seconds from a daemon thread."""

    def __init__(
        self,
        *,
        source: LiveSource,
        processor: LiveProcessor,
        output: _OutputStats,
        publisher: RtspPublisher | None,
        interval: float,
        emit: Callable[[str], None],
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.source, self.processor, self.output, self.publisher = source, processor, output, publisher
        self.interval = interval
        self.emit = emit
        self._clock = clock
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._last = self._snapshot()

    def _snapshot(self) -> tuple[float, int, int]:
        return self._clock(), self.source.stats.captured, self.output.fresh

    def line(self) -> str:
        now, captured, fresh = self._snapshot()
        then, captured0, fresh0 = self._last
        self._last = (now, captured, fresh)
        span = max(now - then, 1e-6)
        recent = [lat for sent, lat in list(self.output.latencies) if sent >= then]
        p50, p95 = _percentile_ms(recent, 50), _percentile_ms(recent, 95)
        latency = f"latency {p50:.0f}/{p95:.0f} ms (p50/p95)" if p50 is not None and p95 is not None else "latency -"
        state = "up" if self.source.stats.connected else "DOWN"
        text = (
            f"in {(captured - captured0) / span:.1f} fps, out {(fresh - fresh0) / span:.1f} fps, "
            f"dropped {self.processor.dropped}, {latency}, input {state}, reconnects {self.source.stats.reconnects}"
        )
        if self.publisher is not None:
            stats = self.publisher.stats
            text += f", fill {stats.repeated} repeated/{stats.neutral} neutral, output {'up' if stats.connected else 'DOWN'}"
        return redact_text(text)

    def start(self) -> _StatsMonitor:
        if self.interval > 0:
            self._thread = threading.Thread(target=self._run, name="sdgan-stats", daemon=True)
            self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self.emit(self.line())
            except Exception:  # statistics must never take the stream down
                log.debug("stats line failed", exc_info=True)

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(2.0)


# -- preview (live mode) ------------------------------------------------------------------------


class PreviewSink(Protocol):
    """Shows one RGB image and returns the key pressed meanwhile (-1 for none)."""

    def show(self, image: np.ndarray) -> int: ...

    def close(self) -> None: ...


def display_available() -> bool:
    """True where a window can open: Windows/macOS, or an X11/Wayland display on Linux."""
    return sys.platform in ("win32", "darwin") or bool(os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY"))


def is_quit_key(key: int) -> bool:
    """q, Q or Esc end the live preview."""
    return key >= 0 and (key & 0xFF) in QUIT_KEYS


class OpenCvPreview:
    """A cv2.imshow window. Closing the window counts as pressing q."""

    def __init__(self, title: str = "sdgan-stream (q to quit)") -> None:
        self.title = title
        self._opened = False

    def show(self, image: np.ndarray) -> int:
        if not self._opened:
            cv2.namedWindow(self.title, cv2.WINDOW_NORMAL)
            self._opened = True
        cv2.imshow(self.title, cv2.cvtColor(image, cv2.COLOR_RGB2BGR))
        key = cv2.waitKey(1)
        if cv2.getWindowProperty(self.title, cv2.WND_PROP_VISIBLE) < 1:
            return ord("q")
        return key

    def close(self) -> None:
        if self._opened:
            with contextlib.suppress(cv2.error):
                cv2.destroyWindow(self.title)
                cv2.waitKey(1)


def draw_overlay(image: np.ndarray, *, fps: float, latency_ms: float, dropped: int) -> np.ndarray:
    """A copy of ``image`` with "fps | latency | dropped" in the top-left corner on a dark band."""
    out = image.copy()
    text = f"{fps:4.1f} fps | latency {latency_ms:3.0f} ms | dropped {dropped}"
    scale = max(out.shape[0] / 720 * 0.8, 0.4)
    thickness = max(1, round(scale * 2))
    (tw, th), base = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, scale, thickness)
    pad = max(2, th // 3)
    band = out[: th + base + 2 * pad, : tw + 2 * pad]
    band[...] = (band.astype(np.uint16) * 3 // 10).astype(np.uint8)  # darkened, still see-through
    cv2.putText(out, text, (pad, th + pad), cv2.FONT_HERSHEY_SIMPLEX, scale, (255, 255, 255), thickness, cv2.LINE_AA)
    return out


@dataclass
class _ViewStats:
    fresh: int = 0
    latencies: deque[tuple[float, float]] = field(default_factory=lambda: deque(maxlen=2048))


class LiveViewSink:
    """Pipeline sink of ``live``: preview with overlay (q/Esc sets ``stop_event``) and/or a recording.

    The recording gets the anonymized frames without the overlay, timestamped by capture time (real
    time, dropped frames leave gaps rather than speeding the video up).
    """

    def __init__(
        self,
        *,
        stop_event: threading.Event,
        preview: PreviewSink | None = None,
        recorder: FrameSink | None = None,
        dropped: Callable[[], int] = lambda: 0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.stop_event = stop_event
        self.preview = preview
        self.recorder = recorder
        self._dropped = dropped
        self._clock = clock
        self.stats = _ViewStats()
        self.fps = 0.0
        self._last_time: float | None = None
        self._first_pts: int | None = None

    def write(self, frame: VideoFrame) -> None:
        now = self._clock()
        latency = now - frame.capture_time if frame.capture_time else 0.0
        if self._last_time is not None and now > self._last_time:
            instant = 1.0 / (now - self._last_time)
            self.fps = instant if self.fps == 0 else 0.9 * self.fps + 0.1 * instant  # smoothed for reading
        self._last_time = now
        if self.preview is not None and not self.stop_event.is_set():  # after q: no more frames on screen
            key = self.preview.show(draw_overlay(frame.image, fps=self.fps, latency_ms=latency * 1000, dropped=self._dropped()))
            if is_quit_key(key):
                log.info("quit key pressed")
                self.stop_event.set()
        if self.recorder is not None:
            if self._first_pts is None:
                self._first_pts = frame.pts or 0
            pts = None if frame.pts is None else frame.pts - self._first_pts  # the recording starts at 0
            self.recorder.write(VideoFrame(image=frame.image, index=frame.index, pts=pts, time_base=frame.time_base, capture_time=frame.capture_time))
        self.stats.fresh += 1
        self.stats.latencies.append((now, latency))

    def close(self) -> None:
        if self.preview is not None:
            self.preview.close()


# -- running --------------------------------------------------------------------------------------


@contextlib.contextmanager
def stop_on_signals(stop: threading.Event) -> Iterator[None]:
    """SIGINT/SIGTERM set ``stop`` (a clean shutdown) instead of raising; a second signal raises
    KeyboardInterrupt. Only the main thread can install handlers: elsewhere this does nothing."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    signals = [signal.SIGINT, signal.SIGTERM]
    previous = {sig: signal.getsignal(sig) for sig in signals}

    def handler(signum: int, _frame: object) -> None:
        if stop.is_set():
            raise KeyboardInterrupt(f"signal {signum}")
        log.warning("signal %d: shutting down", signum)
        stop.set()

    for sig in signals:
        signal.signal(sig, handler)
    try:
        yield
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


def _wait_for_input(source: LiveSource, stop: threading.Event) -> VideoInfo | None:
    """Block until the input delivers a frame; logs while waiting."""
    waited = 0.0
    while True:
        info = source.wait_ready(stop, timeout=5.0)
        if info is not None or stop.is_set() or not source.running:
            return info if info is not None else source.wait_ready(stop, timeout=0)
        waited += 5.0
        log.warning("waiting for input %s (%.0f s): %s", source.target.display, waited, source.stats.last_error or "no frame yet")


def _run_chain(
    *,
    source: LiveSource,
    processor: LiveProcessor,
    sink: FrameSink,
    output_stats: _OutputStats,
    publisher: RtspPublisher | None,
    stop: threading.Event,
    started: float,
    stats_interval: float,
    on_stats: Callable[[str], None] | None,
) -> LiveReport:
    monitor = _StatsMonitor(
        source=source,
        processor=processor,
        output=output_stats,
        publisher=publisher,
        interval=stats_interval,
        emit=on_stats or (lambda line: log.info("%s", line)),
    ).start()
    try:
        result = run_pipeline(source.frames(stop), processor, sink, stop_event=stop, queue_size=1, drop_policy="drop_oldest")
    finally:
        monitor.stop()
    latencies = [lat for _, lat in list(output_stats.latencies)]
    report = LiveReport(
        seconds=time.monotonic() - started,
        frames_in=source.stats.captured,
        frames_processed=processor.processed,
        frames_out=output_stats.fresh,
        frames_dropped=source.stats.captured - processor.processed,
        reconnects=source.stats.reconnects,
        latency_ms_p50=_percentile_ms(latencies, 50),
        latency_ms_p95=_percentile_ms(latencies, 95),
        # run_pipeline reports any run given a stop_event as interrupted; a source that simply ended was not.
        interrupted=result.interrupted and not source.finished,
        stats=dict(processor.anonymizer.stats),
    )
    if publisher is not None:
        report.repeated, report.neutral = publisher.stats.repeated, publisher.stats.neutral
        report.output_errors = publisher.stats.output_errors
    return report


def live_detector_threads() -> int:
    """onnxruntime threads for the detector in live modes: half the cores, 1 to 4.

    Live modes run capture/decode, encode and publishing threads beside the detector; an ORT pool as
    wide as the machine spins against them. Measured on the 2-core machine under load: 1 thread
    detected a 640x360 frame in 65 ms wall / 42 ms CPU, the default pool in 127 ms / 81 ms.
    """
    return max(1, min(4, (os.cpu_count() or 2) // 2))


def _build_live_detector(options: AnonymizeOptions) -> FaceDetector:
    from .api import build_detector

    threads = live_detector_threads()
    log.info("live detector: %d onnxruntime thread(s)", threads)
    return build_detector(options, intra_op_threads=threads)


def _timer(stop: threading.Event, seconds: float | None) -> threading.Timer | None:
    if not seconds:
        return None
    timer = threading.Timer(seconds, stop.set)
    timer.daemon = True
    timer.start()
    return timer


def run_rtsp_filter(
    input_url: str,
    output_url: str,
    *,
    options: AnonymizeOptions | None = None,
    transport: Literal["tcp", "udp"] = "tcp",
    output_transport: Literal["tcp", "udp"] | None = None,
    hold_seconds: float = 2.0,
    open_timeout: float = 10.0,
    read_timeout: float = 5.0,
    fps: float | None = None,
    encoder: EncoderSettings | None = None,
    backoff: Backoff | None = None,
    stats_interval: float = 5.0,
    on_stats: Callable[[str], None] | None = None,
    on_start: Callable[[LiveComponents], None] | None = None,
    stop_event: threading.Event | None = None,
    duration: float | None = None,
    detector: FaceDetector | None = None,
    renderer: FaceRenderer | None = None,
    **overrides: object,
) -> LiveReport:
    """Read ``input_url``, anonymize every frame, publish to ``output_url`` until stopped.

    The input reconnects with backoff whenever it drops (also when it is not up yet); meanwhile the
    output stays up with the last covered frame (``hold_seconds``) and then a neutral frame. Stops on
    ``stop_event``, after ``duration`` seconds, or on Ctrl-C. ``overrides`` are
    :class:`AnonymizeOptions` fields. ``on_start`` receives the running :class:`LiveComponents`.
    """
    from .api import build_anonymizer

    options = (options or AnonymizeOptions()).with_overrides(**overrides)
    stop = stop_event or threading.Event()
    started = time.monotonic()
    source = LiveSource(
        input_url,
        transport=transport,
        reconnect=True,
        open_timeout=open_timeout,
        read_timeout=read_timeout,
        backoff=backoff,
        fps=fps,
    ).start()
    timer = _timer(stop, duration)
    try:
        info = _wait_for_input(source, stop)
        if info is None:
            return LiveReport(seconds=time.monotonic() - started, interrupted=True)
        detector = detector or _build_live_detector(options)
        anonymizer = build_anonymizer(options, info, live=True, detector=detector, renderer=renderer)
        publisher = RtspPublisher(
            output_url,
            width=info.width,
            height=info.height,
            fps=info.fps,
            transport=output_transport or transport,
            hold_seconds=hold_seconds,
            settings=encoder,
        )
        log.info("filter %s -> %s (%dx%d at %.2f fps, %s)", source.target.display, publisher.display_url, info.width, info.height, info.fps, options.method)
        processor = LiveProcessor(anonymizer, source)
        publisher.start()
        if on_start is not None:
            on_start(LiveComponents(source=source, processor=processor, sink=publisher, publisher=publisher))
        try:
            return _run_chain(
                source=source,
                processor=processor,
                sink=publisher,
                output_stats=publisher.stats,
                publisher=publisher,
                stop=stop,
                started=started,
                stats_interval=stats_interval,
                on_stats=on_stats,
            )
        finally:
            publisher.close()
    finally:
        if timer is not None:
            timer.cancel()
        source.close()


def run_live(
    camera: str | int = 0,
    *,
    options: AnonymizeOptions | None = None,
    preview: PreviewSink | None = None,
    output: str | Path | None = None,
    capture: CaptureBackend = "auto",
    camera_size: tuple[int, int] | None = None,
    camera_fps: float | None = None,
    camera_options: dict[str, str] | None = None,
    loop: bool = False,
    transport: Literal["tcp", "udp"] = "tcp",
    stats_interval: float = 5.0,
    on_stats: Callable[[str], None] | None = None,
    on_start: Callable[[LiveComponents], None] | None = None,
    stop_event: threading.Event | None = None,
    duration: float | None = None,
    detector: FaceDetector | None = None,
    renderer: FaceRenderer | None = None,
    **overrides: object,
) -> LiveReport:
    """Anonymize a camera (or any live source, see :func:`~sdgan_stream.io.live.parse_camera`) with
    low latency: only the newest frame is processed. ``preview`` shows each anonymized frame (pass
    :class:`OpenCvPreview` for a window; q/Esc stop); ``output`` records to a video file.
    A camera that cannot be opened at start is an :class:`~sdgan_stream.errors.InputError`.
    """
    from .api import build_anonymizer
    from .errors import OutputError
    from .io.sink import VideoFileSink

    options = (options or AnonymizeOptions()).with_overrides(**overrides)
    stop = stop_event or threading.Event()
    started = time.monotonic()
    target = parse_camera(camera, capture=capture)
    source = LiveSource(
        target,
        transport=transport,
        retry_first_open=False,
        loop=loop,
        size=camera_size,
        fps=camera_fps,
        options=camera_options,
    ).start()
    timer = _timer(stop, duration)
    recorder: VideoFileSink | None = None
    view: LiveViewSink | None = None
    completed = False
    try:
        info = _wait_for_input(source, stop)
        if info is None:
            return LiveReport(seconds=time.monotonic() - started, interrupted=stop.is_set())
        detector = detector or _build_live_detector(options)
        anonymizer = build_anonymizer(options, info, live=True, detector=detector, renderer=renderer)
        if output is not None:
            if Path(output).exists() and Path(output).resolve() == Path(str(target.location)).resolve():
                raise OutputError(f"output would overwrite the input: {output}")
            recorder = VideoFileSink(output, info, crf=options.crf, preset=options.preset)
        processor = LiveProcessor(anonymizer, source)
        # The overlay counts drops at every point of the chain (capture slot and pipeline queue).
        view = LiveViewSink(stop_event=stop, preview=preview, recorder=recorder, dropped=lambda: processor.dropped)
        log.info("live %s (%dx%d at %.2f fps, %s)%s", target.display, info.width, info.height, info.fps, options.method, f" -> {output}" if output else "")
        if on_start is not None:
            on_start(LiveComponents(source=source, processor=processor, sink=view))
        report = _run_chain(
            source=source,
            processor=processor,
            sink=view,
            output_stats=view.stats,
            publisher=None,
            stop=stop,
            started=started,
            stats_interval=stats_interval,
            on_stats=on_stats,
        )
        completed = True
        return report
    finally:
        if timer is not None:
            timer.cancel()
        source.close()
        if view is not None:
            view.close()
        if recorder is not None:
            recorder.close(complete=completed)


# -- command line ---------------------------------------------------------------------------------


def _stderr_line(prefix: str) -> Callable[[str], None]:
    def emit(line: str) -> None:
        print(f"{prefix}: {redact_text(line)}", file=sys.stderr, flush=True)

    return emit


def _summary(name: str, report: LiveReport) -> str:
    latency = f", latency p50 {report.latency_ms_p50:.0f} ms p95 {report.latency_ms_p95:.0f} ms" if report.latency_ms_p50 is not None else ""
    faces = {k.removeprefix("faces_"): v for k, v in report.stats.items() if k.startswith("faces_")}
    text = (
        f"{name}: {report.seconds:.1f} s, in {report.frames_in} frames ({report.input_fps:.1f} fps), "
        f"out {report.frames_out} ({report.output_fps:.1f} fps), dropped {report.frames_dropped}{latency}, "
        f"reconnects {report.reconnects}, faces {faces or 0}"
    )
    if report.repeated or report.neutral:
        text += f", fill frames {report.repeated} repeated/{report.neutral} neutral"
    return text


# Options whose default is "not set" state it in their help text; SUPPRESS keeps the help formatter from
# appending "(default: None)" (the handlers read them with getattr(args, name, None)).
_UNSET = argparse.SUPPRESS


def _positive_float(text: str) -> float:
    value = float(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {text}")
    return value


def add_rtsp_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Register ``rtsp IN_URL OUT_URL``: read a stream, anonymize it, publish it."""
    from .cli_options import HelpFormatter, add_job_options

    parser = subparsers.add_parser(
        "rtsp",
        help="anonymize an RTSP stream and publish it to an RTSP server",
        formatter_class=HelpFormatter,
        description=(
            "Read IN_URL, anonymize every face, publish to OUT_URL (an RTSP server that accepts publishers, "
            "e.g. mediamtx) at the source frame rate. When the input drops, the output stays up (last covered "
            "frame, then a neutral frame) while the input reconnects with backoff. Credentials in URLs are "
            "masked in every log line. SIGINT/SIGTERM stop cleanly (exit 0)."
        ),
    )
    parser.add_argument("input", metavar="IN_URL", help="source stream, e.g. rtsp://user:pass@camera/stream1")
    parser.add_argument("output", metavar="OUT_URL", help="where to publish, e.g. rtsp://localhost:8554/anonymized")
    parser.add_argument("--transport", choices=("tcp", "udp"), default="tcp", help="RTSP transport for the input (and the output unless --out-transport)")
    parser.add_argument("--out-transport", choices=("tcp", "udp"), default=_UNSET, help="RTSP transport for the output (default: as --transport)")
    parser.add_argument("--hold", type=_positive_float, default=2.0, metavar="SECONDS", help="while the input is down, repeat the last covered frame this long, then send a neutral frame")
    parser.add_argument("--timeout", type=_positive_float, default=5.0, metavar="SECONDS", help="input read timeout: a stream silent this long counts as lost")
    parser.add_argument("--fps", type=float, default=_UNSET, help="output frame rate when the input does not state one (default: the input's, else 25)")
    parser.add_argument("--bitrate", default=_UNSET, help="output bitrate cap, e.g. 2M (default: constant quality, crf 23)")
    parser.add_argument("--x264-preset", default="ultrafast", help="x264 preset of the output")
    parser.add_argument("--gop", type=_positive_float, default=1.0, metavar="SECONDS", help="keyframe interval of the output (viewers that join wait at most this long)")
    parser.add_argument("--stats-interval", type=_positive_float, default=5.0, metavar="SECONDS", help="print a stats line this often (0: never)")
    parser.add_argument("--duration", type=_positive_float, default=_UNSET, metavar="SECONDS", help="stop after this long (default: run until stopped)")
    add_job_options(parser)
    parser.set_defaults(handler=_run_rtsp_command)
    return parser


def add_live_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Register ``live [--camera ...] [--preview] [-o OUT]``."""
    from .cli_options import HelpFormatter, add_job_options, size_arg

    parser = subparsers.add_parser(
        "live",
        help="anonymize a camera with low latency: preview window and/or recording",
        formatter_class=HelpFormatter,
        description=(
            "Capture a camera (or any live source), anonymize every face, show it and/or record it. Only the "
            "newest frame is processed when processing falls behind (stale frames are dropped and counted). "
            "q or Esc in the preview window, Ctrl-C or SIGTERM stop cleanly (exit 0)."
        ),
    )
    parser.add_argument(
        "--camera",
        default="0",
        help="camera index (0), V4L2 device (/dev/video0), URL (rtsp://...), lavfi:GRAPH, or a video file played in real time",
    )
    parser.add_argument("--capture", choices=("auto", "pyav", "opencv"), default="auto", help="capture library for camera indexes/devices (auto: PyAV v4l2 on Linux, else OpenCV)")
    parser.add_argument("--camera-size", type=size_arg, default=_UNSET, metavar="WxH", help="ask the camera for this size (default: the camera's)")
    parser.add_argument("--camera-fps", type=float, default=_UNSET, help="ask the camera for this frame rate (default: the camera's)")
    parser.add_argument("--preview", action="store_true", help="show a window with fps and latency (needs a display)")
    parser.add_argument("-o", "--output", type=Path, default=_UNSET, help="also record the anonymized video to this file (default: no recording)")
    parser.add_argument("--loop", action="store_true", help="replay a video-file source when it ends")
    parser.add_argument("--transport", choices=("tcp", "udp"), default="tcp", help="RTSP transport when --camera is an rtsp:// URL")
    parser.add_argument("--stats-interval", type=_positive_float, default=5.0, metavar="SECONDS", help="print a stats line this often (0: never)")
    parser.add_argument("--duration", type=_positive_float, default=_UNSET, metavar="SECONDS", help="stop after this long (default: run until stopped)")
    add_job_options(parser)
    parser.set_defaults(handler=_run_live_command)
    return parser


def _run_rtsp_command(args: argparse.Namespace) -> int:
    from .cli_options import EXIT_OK, options_from_args

    install_log_redaction()
    options = options_from_args(args)
    stop = threading.Event()
    encoder = EncoderSettings(preset=args.x264_preset, bitrate=getattr(args, "bitrate", None), gop_seconds=args.gop or 1.0)
    print(f"rtsp: {redact_url(args.input)} -> {redact_url(args.output)} (Ctrl-C to stop)", file=sys.stderr, flush=True)
    with stop_on_signals(stop):
        report = run_rtsp_filter(
            args.input,
            args.output,
            options=options,
            transport=args.transport,
            output_transport=getattr(args, "out_transport", None),
            hold_seconds=args.hold,
            read_timeout=args.timeout,
            fps=getattr(args, "fps", None),
            encoder=encoder,
            stats_interval=args.stats_interval,
            on_stats=_stderr_line("rtsp"),
            stop_event=stop,
            duration=getattr(args, "duration", None),
        )
    print(_summary("rtsp", report), file=sys.stderr, flush=True)
    return EXIT_OK


def _run_live_command(args: argparse.Namespace, *, preview: PreviewSink | None = None) -> int:
    from .cli_options import EXIT_OK, options_from_args

    install_log_redaction()
    options = options_from_args(args)
    if preview is None and args.preview:
        if display_available():
            preview = OpenCvPreview()
        else:
            log.warning("--preview: no display (DISPLAY is not set); running without a window")
    output = getattr(args, "output", None)
    if preview is None and output is None:
        print("live: no --preview and no -o: anonymizing without showing or recording (stats only)", file=sys.stderr)
    stop = threading.Event()
    with stop_on_signals(stop):
        report = run_live(
            args.camera,
            options=options,
            preview=preview,
            output=output,
            capture=args.capture,
            camera_size=getattr(args, "camera_size", None),
            camera_fps=getattr(args, "camera_fps", None),
            loop=args.loop,
            transport=args.transport,
            stats_interval=args.stats_interval,
            on_stats=_stderr_line("live"),
            stop_event=stop,
            duration=getattr(args, "duration", None),
        )
    print(_summary("live", report), file=sys.stderr, flush=True)
    return EXIT_OK


if __name__ == "__main__":  # ``python -m sdgan_stream.live`` = ``sdgan-stream``
    from .cli import main

    sys.exit(main())
