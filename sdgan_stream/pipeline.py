"""Threads and bounded queues: decode -> stages (main thread) -> encode.

With ``parallel=True`` and a processor that splits analysis from rendering (:class:`StagedProcessor`,
e.g. :class:`~sdgan_stream.anonymize.FrameAnonymizer`), the stages become two: an analysis thread
(detect, track, look-back) works on frame N+1 while the main thread renders frame N. Each analysed
frame carries a sequence number that the render stage checks, so frames reach the encoder in decode
order; the output is the same, bit for bit, as the serial chain's (the two stages share no state).

The decode thread and the encode thread do PyAV work (which releases the GIL), the main thread runs
the face stages. Queues are bounded so memory stays flat. No queue operation can block for ever: a
producer *closes* its channel instead of queueing an end marker (a marker can find a full queue whose
consumer is gone), a consumer that quits *abandons* it, and every wait polls those flags. An exception
in any thread sets the stop event and is re-raised in the caller's thread after every thread has been
joined (with a bound). A stop request (``stop_event.set()``, a signal handler from
:func:`stop_on_signals`, Ctrl-C) ends decoding, lets the frames already decoded through, and returns
so that the caller closes the output as a playable file.
"""

from __future__ import annotations

import contextlib
import logging
import math
import queue
import signal
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Literal, Protocol, runtime_checkable

from .types import VideoFrame

log = logging.getLogger(__name__)

__all__ = [
    "DropPolicy",
    "FrameProcessor",
    "FrameSink",
    "LatencyStats",
    "PipelineResult",
    "StagedProcessor",
    "run_pipeline",
    "stop_on_signals",
]

DropPolicy = Literal["block", "drop_oldest"]
_POLL_SECONDS = 0.1
# How long run_pipeline waits for each of its threads once it is shutting down. They end within a
# poll interval in every designed case; the bound only keeps a thread stuck in a system call (a dead
# disk) from hanging the caller.
JOIN_TIMEOUT_SECONDS = 30.0


class FrameProcessor(Protocol):
    def push(self, frame: VideoFrame) -> list[VideoFrame]: ...

    def flush(self) -> list[VideoFrame]: ...


@runtime_checkable
class StagedProcessor(Protocol):
    """A processor whose analysis and rendering may run on two threads: ``analyse_frame`` and
    ``analyse_flush`` are only ever called from one thread, ``render`` from another, each in order,
    so the two halves must not share mutable state."""

    def analyse_frame(self, frame: VideoFrame) -> list: ...

    def analyse_flush(self) -> list: ...

    def render(self, analysed: object) -> VideoFrame: ...


class FrameSink(Protocol):
    def write(self, frame: VideoFrame) -> None: ...


class LatencyStats:
    """Latency figures in bounded memory: running count/mean/max over the whole run, percentiles over
    the newest ``window`` values (a run of days adds millions of frames; this stays a few KB)."""

    def __init__(self, window: int = 4096) -> None:
        self.count = 0
        self.total = 0.0
        self.maximum = 0.0
        self.recent: deque[float] = deque(maxlen=window)

    def add(self, seconds: float) -> None:
        self.count += 1
        self.total += seconds
        self.maximum = max(self.maximum, seconds)
        self.recent.append(seconds)

    @property
    def mean(self) -> float | None:
        return self.total / self.count if self.count else None

    def percentile(self, q: float) -> float | None:
        """The ``q``-th percentile (0-100) of the recent window, in seconds; None before any value."""
        values = sorted(self.recent)
        if not values:
            return None
        rank = (len(values) - 1) * q / 100.0
        low, high = math.floor(rank), math.ceil(rank)
        return values[low] + (values[high] - values[low]) * (rank - low)


@dataclass
class PipelineResult:
    frames_in: int = 0
    frames_out: int = 0
    frames_dropped: int = 0  # live sources only: stale frames dropped to keep latency low
    interrupted: bool = False
    seconds: float = 0.0
    latency: LatencyStats = field(default_factory=LatencyStats, repr=False)  # capture -> written

    @property
    def fps(self) -> float:
        return self.frames_out / self.seconds if self.seconds > 0 else 0.0


class _Failure:
    """The first exception raised by any pipeline thread; ``event`` is set once there is one."""

    def __init__(self, stop: threading.Event) -> None:
        self._lock = threading.Lock()
        self._stop = stop
        self.error: BaseException | None = None
        self.event = threading.Event()

    def record(self, error: BaseException) -> None:
        with self._lock:
            if self.error is None:
                self.error = error
        self.event.set()
        self._stop.set()


_END = object()  # get(): the producer closed the channel and it is empty (or the consumer gave up)
_EMPTY = object()  # get(): nothing arrived within the poll interval


class _Channel:
    """A bounded queue between two threads in which neither side can wait for ever.

    The producer calls :meth:`close` when it is done (no end marker travels through the queue), the
    consumer calls :meth:`abandon` when it stops taking items; ``put`` and ``get`` poll both.
    ``drop_oldest`` makes ``put`` discard the oldest queued item instead of waiting (live sources).
    """

    def __init__(self, size: int, policy: DropPolicy = "block") -> None:
        self._queue: queue.Queue = queue.Queue(maxsize=max(1, size))
        self._policy = policy
        self._closed = threading.Event()
        self._abandoned = threading.Event()

    def put(self, item: object, *, give_up: threading.Event) -> tuple[bool, int]:
        """(delivered, items dropped to make room). Not delivered when the consumer abandoned the
        channel, or (``block`` policy) when ``give_up`` is set while the queue is full."""
        dropped = 0
        while not self._abandoned.is_set():
            if self._policy == "drop_oldest":
                try:
                    self._queue.put_nowait(item)
                    return True, dropped
                except queue.Full:
                    with contextlib.suppress(queue.Empty):
                        self._queue.get_nowait()
                        dropped += 1
                continue
            try:
                self._queue.put(item, timeout=_POLL_SECONDS)
                return True, dropped
            except queue.Full:
                if give_up.is_set():
                    break
        return False, dropped

    def get(self, *, give_up: threading.Event | None = None, timeout: float | None = None) -> object:
        """The next item; ``_END`` once the channel is closed and empty (or ``give_up`` is set);
        ``_EMPTY`` when ``timeout`` passes first."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            try:
                return self._queue.get(timeout=_POLL_SECONDS if timeout is None else min(timeout, _POLL_SECONDS))
            except queue.Empty:
                # closed is set after the producer's last put: an empty queue then really is the end
                if self._closed.is_set() and self._queue.empty():
                    return _END
                if give_up is not None and give_up.is_set():
                    return _END
                if deadline is not None and time.monotonic() >= deadline:
                    return _EMPTY

    def close(self) -> None:
        self._closed.set()

    def abandon(self) -> None:
        self._abandoned.set()
        with contextlib.suppress(queue.Empty):
            while True:  # free the frames now rather than when the channel is collected
                self._queue.get_nowait()


def run_pipeline(
    frames: Iterable[VideoFrame],
    processor: FrameProcessor,
    sink: FrameSink,
    *,
    stop_event: threading.Event | None = None,
    queue_size: int = 8,
    drop_policy: DropPolicy = "block",
    on_frame_written: Callable[[VideoFrame], None] | None = None,
    on_main_thread: Callable[[], None] | None = None,
    join_timeout: float = JOIN_TIMEOUT_SECONDS,
    parallel: bool = False,
) -> PipelineResult:
    """Run ``frames`` through ``processor`` into ``sink``. The caller closes source and sink.

    ``frames`` is consumed on a decode thread; it should end by itself when ``stop_event`` is set
    (file and live sources take the event for that). ``drop_policy='drop_oldest'`` keeps only the
    newest frames when processing falls behind (live sources); files use ``'block'`` and lose nothing.
    ``on_main_thread`` is called on the calling thread between frames and at least every 0.1 s
    (GUI work such as a preview window, which some platforms allow on the main thread only).
    A failure in any thread (or Ctrl-C) sets ``stop_event``, which stops the source; a run that simply
    reached the end of its frames leaves it as it was (one event can serve several jobs in a row).
    ``parallel=True`` runs the analysis of a :class:`StagedProcessor` on its own thread (a processor
    without the split runs serially, with a warning).
    """
    if parallel and not isinstance(processor, StagedProcessor):
        log.warning("%s does not split analysis from rendering: running serially", type(processor).__name__)
        parallel = False
    stop = stop_event or threading.Event()
    failure = _Failure(stop)
    result = PipelineResult()
    decoded = _Channel(queue_size, drop_policy)
    processed = _Channel(queue_size)
    started = time.monotonic()

    def decode() -> None:
        try:
            for frame in frames:
                if stop.is_set():
                    break
                result.frames_in += 1
                delivered, dropped = decoded.put(frame, give_up=stop)
                result.frames_dropped += dropped
                if not delivered:
                    break
        except BaseException as error:  # forwarded to the caller's thread
            failure.record(error)
        finally:
            decoded.close()

    def encode() -> None:
        try:
            while (frame := processed.get()) is not _END:
                assert isinstance(frame, VideoFrame)
                sink.write(frame)
                result.frames_out += 1
                if frame.capture_time:
                    result.latency.add(time.monotonic() - frame.capture_time)
                if on_frame_written is not None:
                    on_frame_written(frame)
        except BaseException as error:
            failure.record(error)
        finally:
            processed.abandon()  # the main thread's puts return at once from now on

    threads = [threading.Thread(target=decode, name="sdgan-decode", daemon=True),
               threading.Thread(target=encode, name="sdgan-encode", daemon=True)]
    analysed = _Channel(queue_size)  # analysis thread -> main thread (parallel only)
    if parallel:
        assert isinstance(processor, StagedProcessor)
        threads.append(threading.Thread(target=_analyse, args=(decoded, analysed, processor, failure),
                                        name="sdgan-analyse", daemon=True))
    for thread in threads:
        thread.start()
    externally_stopped = False
    try:
        if parallel:
            assert isinstance(processor, StagedProcessor)
            result.interrupted = _render_parallel(analysed, processed, processor, failure, stop, on_main_thread)
        else:
            _process(decoded, processed, processor, failure, on_main_thread)
    except KeyboardInterrupt:
        result.interrupted = True
        stop.set()  # the source stops at its next frame
        # Frames already analysed (e.g. held in the look-back buffer) still go out, anonymized. (A
        # parallel run got here on a second Ctrl-C: its analysis thread owns the buffer, so no flush.)
        if failure.error is None and not parallel:
            _send_all(processor.flush(), processed, failure)
    except BaseException as error:
        failure.record(error)
    finally:
        # A stop requested from outside (not a thread failure) means the run was cut short.
        externally_stopped = stop.is_set() and failure.error is None
        decoded.abandon()
        analysed.abandon()
        processed.close()
        _join_all(threads, join_timeout)
    result.interrupted = result.interrupted or externally_stopped
    result.seconds = time.monotonic() - started
    if failure.error is not None:
        raise failure.error
    return result


def _process(
    decoded: _Channel,
    processed: _Channel,
    processor: FrameProcessor,
    failure: _Failure,
    on_main_thread: Callable[[], None] | None,
) -> None:
    while True:
        if on_main_thread is not None:
            on_main_thread()
        frame = decoded.get(give_up=failure.event, timeout=_POLL_SECONDS)
        if frame is _EMPTY:
            continue
        if frame is _END:
            break
        assert isinstance(frame, VideoFrame)
        if not _send_all(processor.push(frame), processed, failure):
            return
    if failure.error is None:
        _send_all(processor.flush(), processed, failure)


def _analyse(decoded: _Channel, analysed: _Channel, processor: StagedProcessor, failure: _Failure) -> None:
    """The analysis thread: decoded frames -> (sequence number, analysed frame), then the look-back
    buffer's last frames once the input ends. A failure stops the run (the frames it held are never
    written, so nothing leaks); analysis failures of single frames are the processor's to cover."""
    sequence = 0

    def send(items: list) -> bool:
        nonlocal sequence
        for item in items:
            delivered, _ = analysed.put((sequence, item), give_up=failure.event)
            if not delivered:
                return False
            sequence += 1
        return True

    try:
        while (frame := decoded.get(give_up=failure.event)) is not _END:
            assert isinstance(frame, VideoFrame)
            if not send(processor.analyse_frame(frame)):
                return
        if failure.error is None:
            send(processor.analyse_flush())
    except BaseException as error:
        failure.record(error)
    finally:
        analysed.close()
        decoded.abandon()  # the decoder's puts return at once from now on


def _render_parallel(
    analysed: _Channel,
    processed: _Channel,
    processor: StagedProcessor,
    failure: _Failure,
    stop: threading.Event,
    on_main_thread: Callable[[], None] | None,
) -> bool:
    """The main thread of a parallel run: renders analysed frames in sequence order. Ctrl-C stops
    the source and keeps rendering what was already decoded and analysed (a bounded amount, as in
    the serial path's flush); a second Ctrl-C ends the run at once. Returns whether Ctrl-C came."""
    expected = 0
    interrupted = False
    while True:
        try:
            if on_main_thread is not None:
                on_main_thread()
            item = analysed.get(give_up=failure.event, timeout=_POLL_SECONDS)
            if item is _EMPTY:
                continue
            if item is _END:
                return interrupted
            sequence, frame = item  # type: ignore[misc]
            if sequence != expected:  # the encoder must write frames in decode order
                raise RuntimeError(f"analysed frame {sequence} arrived where {expected} was due")
            expected += 1
            if not _send_all([processor.render(frame)], processed, failure):
                return interrupted
        except KeyboardInterrupt:
            if interrupted:
                raise
            interrupted = True
            stop.set()  # the source stops at its next frame; what it already gave is still rendered


def _send_all(frames: list[VideoFrame], processed: _Channel, failure: _Failure) -> bool:
    """Queue every frame for the encoder; False once the encoder is gone or a thread failed."""
    for frame in frames:
        delivered, _ = processed.put(frame, give_up=failure.event)
        if not delivered:
            return False
    return True


def _join(thread: threading.Thread, timeout: float) -> None:
    thread.join(timeout)
    if thread.is_alive():  # a daemon: it cannot keep the process alive; say which one is stuck
        log.error("thread %s did not end within %.0f s; leaving it behind", thread.name, timeout)


def _join_all(threads: Iterable[threading.Thread], timeout: float) -> None:
    """Join every thread (each within ``timeout``). A Ctrl-C meanwhile (the user insists) is raised only once
    they are joined: the encode thread may be writing the output, which the caller closes next, and two
    threads in one file could leave it unplayable."""
    insisted = False
    for thread in threads:
        while True:
            try:
                _join(thread, timeout)
                break
            except KeyboardInterrupt:
                insisted = True
    if insisted:
        raise KeyboardInterrupt


@contextlib.contextmanager
def stop_on_signals(stop: threading.Event, signals: Iterable[int] = (signal.SIGINT, signal.SIGTERM)) -> Iterator[None]:
    """SIGINT/SIGTERM set ``stop`` (a clean shutdown: the run ends at the next frame boundary and
    finalizes its output) instead of raising KeyboardInterrupt wherever the main thread happens to
    be. A second signal raises KeyboardInterrupt (the user insists). Only the main
    thread can install handlers: elsewhere this does nothing."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    wanted = list(signals)
    previous = {sig: signal.getsignal(sig) for sig in wanted}
    received = 0

    def handler(signum: int, _frame: object) -> None:
        nonlocal received
        received += 1
        if received > 1:
            raise KeyboardInterrupt(f"signal {signum} (second)")
        log.warning("signal %d: stopping", signum)
        stop.set()

    for sig in wanted:
        signal.signal(sig, handler)
    try:
        yield
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)
