"""Threads and bounded queues: decode -> stages (main thread) -> encode.

The decode thread and the encode thread do PyAV work (which releases the GIL), the main thread runs
the face stages. Queues are bounded so memory stays flat; ``None`` ends a stream; an exception in any
thread sets the stop event and is re-raised in the caller's thread after everything has been joined
and the output finalized. A stop request (Ctrl-C, SIGTERM, ``stop_event.set()``) ends decoding, lets
the frames already decoded through, and closes the output as a playable file.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Literal, Protocol

from .types import VideoFrame

log = logging.getLogger(__name__)

__all__ = ["DropPolicy", "FrameProcessor", "FrameSink", "PipelineResult", "run_pipeline"]

DropPolicy = Literal["block", "drop_oldest"]
_POLL_SECONDS = 0.1


class FrameProcessor(Protocol):
    def push(self, frame: VideoFrame) -> list[VideoFrame]: ...

    def flush(self) -> list[VideoFrame]: ...


class FrameSink(Protocol):
    def write(self, frame: VideoFrame) -> None: ...


@dataclass
class PipelineResult:
    frames_in: int = 0
    frames_out: int = 0
    frames_dropped: int = 0  # live sources only: stale frames dropped to keep latency low
    interrupted: bool = False
    seconds: float = 0.0
    latencies: list[float] = field(default_factory=list, repr=False)  # capture -> written, seconds

    @property
    def fps(self) -> float:
        return self.frames_out / self.seconds if self.seconds > 0 else 0.0


class _Failure:
    """The first exception raised by any pipeline thread."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.error: BaseException | None = None

    def record(self, error: BaseException) -> None:
        with self._lock:
            if self.error is None:
                self.error = error


def _put(q: queue.Queue, item: object, stop: threading.Event, *, policy: DropPolicy = "block") -> int:
    """Put ``item``; returns how many queued items were dropped to make room (drop_oldest)."""
    dropped = 0
    while True:
        try:
            q.put(item, timeout=_POLL_SECONDS)
            return dropped
        except queue.Full:
            if policy == "drop_oldest":
                try:
                    q.get_nowait()
                    dropped += 1
                except queue.Empty:
                    pass
            elif stop.is_set() and item is not None:
                return dropped  # shutting down: the consumer may be gone; the frame is not written


def run_pipeline(
    frames: Iterable[VideoFrame],
    processor: FrameProcessor,
    sink: FrameSink,
    *,
    stop_event: threading.Event | None = None,
    queue_size: int = 8,
    drop_policy: DropPolicy = "block",
    on_frame_written: Callable[[VideoFrame], None] | None = None,
) -> PipelineResult:
    """Run ``frames`` through ``processor`` into ``sink``. The caller closes source and sink.

    ``frames`` is consumed on a decode thread; it should stop by itself when ``stop_event`` is set
    (file and live sources take the event for that). ``drop_policy='drop_oldest'`` keeps only the
    newest frames when processing falls behind (live sources); files use ``'block'`` and lose nothing.
    """
    stop = stop_event or threading.Event()
    failure = _Failure()
    result = PipelineResult()
    decoded: queue.Queue = queue.Queue(maxsize=queue_size)
    processed: queue.Queue = queue.Queue(maxsize=queue_size)
    started = time.monotonic()

    def decode() -> None:
        try:
            for frame in frames:
                if stop.is_set():
                    break
                result.frames_in += 1
                result.frames_dropped += _put(decoded, frame, stop, policy=drop_policy)
        except BaseException as error:  # forwarded to the caller's thread
            failure.record(error)
            stop.set()
        finally:
            _put(decoded, None, stop)

    def encode() -> None:
        try:
            while True:
                try:
                    frame = processed.get(timeout=_POLL_SECONDS)
                except queue.Empty:
                    continue
                if frame is None:
                    return
                sink.write(frame)
                result.frames_out += 1
                if frame.capture_time:
                    result.latencies.append(time.monotonic() - frame.capture_time)
                if on_frame_written is not None:
                    on_frame_written(frame)
        except BaseException as error:
            failure.record(error)
            stop.set()
            while processed.get() is not None:  # drain so the main thread never blocks on a full queue
                pass

    decoder = threading.Thread(target=decode, name="sdgan-decode", daemon=True)
    encoder = threading.Thread(target=encode, name="sdgan-encode", daemon=True)
    decoder.start()
    encoder.start()
    try:
        _process(decoded, processed, processor, stop, failure)
    except KeyboardInterrupt:
        result.interrupted = True
        stop.set()
        # Frames already analysed (e.g. held in the look-back buffer) still go out, anonymized.
        for frame in processor.flush():
            processed.put(frame)
    finally:
        # A stop requested from outside (not a thread failure) means the run was cut short.
        if stop.is_set() and failure.error is None:
            result.interrupted = True
        processed.put(None)
        encoder.join()
        stop.set()
        _drain(decoded)
        decoder.join()
    result.seconds = time.monotonic() - started
    if failure.error is not None:
        raise failure.error
    return result


def _process(decoded: queue.Queue, processed: queue.Queue, processor: FrameProcessor, stop: threading.Event, failure: _Failure) -> None:
    while True:
        try:
            frame = decoded.get(timeout=_POLL_SECONDS)
        except queue.Empty:
            if failure.error is not None:
                return
            continue
        if frame is None:
            break
        for out in processor.push(frame):
            processed.put(out)
    if failure.error is None:
        for out in processor.flush():
            processed.put(out)


def _drain(q: queue.Queue) -> None:
    while True:
        try:
            q.get_nowait()
        except queue.Empty:
            return
