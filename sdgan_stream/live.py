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

The ``live`` and ``rtsp`` commands (options, summaries) are in :mod:`sdgan_stream.live_cli`.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Literal, Protocol

import cv2
import numpy as np

from .anonymize import AnalysedFrame, FaceRenderer, FrameAnonymizer
from .config import AnonymizeOptions
from .io.live import Backoff, CaptureBackend, LiveSource, parse_camera
from .io.rtsp import EncoderSettings, RtspPublisher
from .pipeline import FrameSink, run_pipeline
from .redact import redact_text
from .types import VideoFrame, VideoInfo

if TYPE_CHECKING:
    from .detect_passes import FaceDetector

log = logging.getLogger(__name__)

__all__ = [
    "LiveComponents",
    "LiveJobError",
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
    latency_ms_p99: float | None = None
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
    """The anonymizer, reset at each new input session, with exact processed/dropped counts.

    A :class:`~sdgan_stream.pipeline.StagedProcessor`: with ``parallel`` the analysis of the newest frame
    runs on its own thread while the previous one is rendered and sent (the session check and the
    counts belong to analysis, which sees every processed frame first).
    """

    def __init__(self, anonymizer: FrameAnonymizer, source: LiveSource) -> None:
        self.anonymizer = anonymizer
        self.source = source
        self.processed = 0
        self.last_index = -1
        self._session: int | None = None

    def analyse_frame(self, frame: VideoFrame) -> list[AnalysedFrame]:
        session = self.source.session_of(frame.index)
        if self._session is not None and session != self._session:
            log.info("input session %d began: tracks reset", session)
            self.anonymizer.reset()
        self._session = session
        out = self.anonymizer.analyse_frame(frame)
        self.processed += 1
        self.last_index = frame.index
        return out

    def analyse_flush(self) -> list[AnalysedFrame]:
        return self.anonymizer.analyse_flush()

    def render(self, analysed: AnalysedFrame) -> VideoFrame:
        return self.anonymizer.render(analysed)

    def push(self, frame: VideoFrame) -> list[VideoFrame]:
        return [self.render(item) for item in self.analyse_frame(frame)]

    def flush(self) -> list[VideoFrame]:
        return [self.render(item) for item in self.analyse_flush()]

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
    """Shows one RGB image and returns the key pressed meanwhile (-1 for none). Called on the main
    thread only (macOS allows windows nowhere else). A preview may also have ``poll() -> key``, which
    keeps the window responsive while no new frame comes."""

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
        return self.poll()

    def poll(self) -> int:
        if not self._opened:
            return -1
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

    :meth:`write` runs on the pipeline's encoder thread: it records the frame and leaves the newest
    overlay image for :meth:`pump`, which shows it and reads the keyboard on the main thread (GUI
    toolkits, macOS's above all, allow windows there only). The recording gets the anonymized frames
    without the overlay, timestamped by capture time (real time, dropped frames leave gaps rather
    than speeding the video up).
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
        self._lock = threading.Lock()
        self._to_show: np.ndarray | None = None

    def write(self, frame: VideoFrame) -> None:
        now = self._clock()
        latency = now - frame.capture_time if frame.capture_time else 0.0
        if self._last_time is not None and now > self._last_time:
            instant = 1.0 / (now - self._last_time)
            self.fps = instant if self.fps == 0 else 0.9 * self.fps + 0.1 * instant  # smoothed for reading
        self._last_time = now
        if self.preview is not None:
            image = draw_overlay(frame.image, fps=self.fps, latency_ms=latency * 1000, dropped=self._dropped())
            with self._lock:
                self._to_show = image  # a frame the main thread has not shown yet is simply replaced
        if self.recorder is not None:
            if self._first_pts is None:
                self._first_pts = frame.pts or 0
            pts = None if frame.pts is None else frame.pts - self._first_pts  # the recording starts at 0
            self.recorder.write(VideoFrame(image=frame.image, index=frame.index, pts=pts, time_base=frame.time_base, capture_time=frame.capture_time))
        self.stats.fresh += 1
        self.stats.latencies.append((now, latency))

    def pump(self) -> None:
        """Main thread: show the newest frame (or keep the window alive) and act on q/Esc."""
        if self.preview is None or self.stop_event.is_set():  # after q: no more frames on screen
            return
        with self._lock:
            image, self._to_show = self._to_show, None
        if image is not None:
            key = self.preview.show(image)
        else:
            poll = getattr(self.preview, "poll", None)
            key = poll() if poll is not None else -1
        if is_quit_key(key):
            log.info("quit key pressed")
            self.stop_event.set()

    def close(self) -> None:
        if self.preview is not None:
            self.preview.close()


# -- running --------------------------------------------------------------------------------------


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
    on_main_thread: Callable[[], None] | None = None,
    parallel: bool = False,
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
        result = run_pipeline(
            source.frames(stop), processor, sink, stop_event=stop, queue_size=1, drop_policy="drop_oldest",
            on_main_thread=on_main_thread, parallel=parallel,
        )
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
        latency_ms_p99=_percentile_ms(latencies, 99),
        # stopped from outside (q, a signal, duration); a source that simply ended was not interrupted
        interrupted=result.interrupted and not source.finished,
        stats=dict(processor.anonymizer.stats),
    )
    if publisher is not None:
        report.repeated, report.neutral = publisher.stats.repeated, publisher.stats.neutral
        report.output_errors = publisher.stats.output_errors
    return report


def live_detector_threads(parallel: bool = True) -> int:
    """onnxruntime threads for the detector in live modes.

    Serial: half the cores (1 to 4): capture/decode, encode and publishing threads run beside the detector
    and an ORT pool as wide as the machine spins against them (measured on the 2-core machine under load:
    1 thread detected a 640x360 frame in 65 ms wall / 42 ms CPU, the default pool in 127 ms / 81 ms).
    Parallel: the analysis thread is the detector's alone and the slower stage, so it gets every core (up
    to 4): through a real RTSP server at 640x360 and the defaults, 2 threads published 22.6 fps (90% of the
    input reached the viewer) where 1 thread published 17.5 (``benchmarks/results/rtsp_threads_{1,2}.json``).
    With ``--method sdgan`` on the CPU the renderer is the slower stage, yet the file jobs' split (half the cores
    for the detector, ``api.detector_threads``) did not help live: 1 thread published 7.97 / 7.30 fps, 2 threads
    8.18 / 7.23 with a lower p95 latency (604-608 vs 711-796 ms), 640x360, 2 faces
    (``benchmarks/results/rtsp_sdgan_detector_threads.json``); live drops stale frames instead of queueing them.
    """
    cores = os.cpu_count() or 2
    return max(1, min(4, cores if parallel else cores // 2))


def _build_live_detector(options: AnonymizeOptions) -> FaceDetector:
    from .api import build_detector

    threads = live_detector_threads(options.parallel)
    log.info("live detector: %d onnxruntime thread(s)", threads)
    return build_detector(options, intra_op_threads=threads, live=True)


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
    from .api import build_anonymizer, build_renderer, close_renderer

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
    publisher: RtspPublisher | None = None
    owned_renderer: FaceRenderer | None = None
    try:
        info = _wait_for_input(source, stop)
        if info is None:
            return LiveReport(seconds=time.monotonic() - started, interrupted=True)
        detector = detector or _build_live_detector(options)
        if renderer is None:
            renderer = owned_renderer = build_renderer(options, live=True)
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
            parallel=options.parallel,
        )
    finally:
        stop.set()
        if timer is not None:
            timer.cancel()
        if publisher is not None:
            publisher.close()
        source.close()
        if owned_renderer is not None:
            close_renderer(owned_renderer)


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
    from .api import build_anonymizer, build_renderer, close_renderer
    from .errors import OutputError
    from .io.sink import VideoFileSink, same_file

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
    owned_renderer: FaceRenderer | None = None
    completed = False
    try:
        info = _wait_for_input(source, stop)
        if info is None:
            return LiveReport(seconds=time.monotonic() - started, interrupted=stop.is_set())
        detector = detector or _build_live_detector(options)
        if renderer is None:
            renderer = owned_renderer = build_renderer(options, live=True)
        anonymizer = build_anonymizer(options, info, live=True, detector=detector, renderer=renderer)
        if output is not None:
            if same_file(output, str(target.location)):
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
            on_main_thread=view.pump,
            parallel=options.parallel,
        )
        completed = True
        return report
    finally:
        stop.set()
        if timer is not None:
            timer.cancel()
        source.close()
        if view is not None:
            view.close()
        if recorder is not None:
            if completed:
                recorder.close()
            else:
                recorder.abort()  # a playable file of what was recorded; the error is what the user sees
        if owned_renderer is not None:
            close_renderer(owned_renderer)
