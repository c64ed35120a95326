"""run_pipeline: a failure in any thread, under either queue policy and any queue size, ends every
thread within bounded time and reaches the caller; a stop request ends it cleanly; memory stays bounded.

Every run goes through ``finishes_within``: a hang fails the test with every thread's stack instead of
blocking CI. (The review that found the hang reproduced it 3 times in 3 with a failing processor, a
``drop_oldest`` queue of size 1 and a source that never ends, the case of every live camera.)
"""

from __future__ import annotations

import threading
from collections.abc import Iterator

import numpy as np
import pytest

from sdgan_stream.pipeline import LatencyStats, run_pipeline
from sdgan_stream.types import VideoFrame

from .live_support import finishes_within, live_threads

HANG_GUARD_SECONDS = 60  # far above the ~1 s these runs take: only a hang reaches it
PIPELINE = ("sdgan-decode", "sdgan-encode")


@pytest.fixture
def running_before() -> set[threading.Thread]:
    """Threads alive before the test (left by other tests): not this test's business."""
    return set(threading.enumerate())


class Injected(RuntimeError):
    """The failure a test plants."""


def _frame(index: int) -> VideoFrame:
    return VideoFrame(image=np.zeros((8, 8, 3), np.uint8), index=index, pts=index, time_base=None, capture_time=1.0)


def endless_source(fail_at: int | None = None) -> Iterator[VideoFrame]:
    """A camera that never ends and ignores the stop event (the worst case for the decode thread)."""
    index = 0
    while True:
        if index == fail_at:
            raise Injected(f"source failed at frame {index}")
        yield _frame(index)
        index += 1


class Processor:
    def __init__(self, fail_at: int | None = None, fail_on_flush: bool = False) -> None:
        self.fail_at, self.fail_on_flush = fail_at, fail_on_flush
        self.pushed = 0

    def push(self, frame: VideoFrame) -> list[VideoFrame]:
        if self.pushed == self.fail_at:
            raise Injected(f"processing failed at frame {self.pushed}")
        self.pushed += 1
        return [frame]

    def flush(self) -> list[VideoFrame]:
        if self.fail_on_flush:
            raise Injected("flush failed")
        return []


class Sink:
    def __init__(self, fail_at: int | None = None, stop_after: int | None = None, stop: threading.Event | None = None) -> None:
        self.fail_at, self.stop_after, self.stop = fail_at, stop_after, stop
        self.written = 0

    def write(self, frame: VideoFrame) -> None:
        if self.written == self.fail_at:
            raise Injected(f"writing failed at frame {self.written}")
        self.written += 1
        if self.stop is not None and self.written == self.stop_after:
            self.stop.set()


POLICIES = [("block", 1), ("block", 8), ("drop_oldest", 1), ("drop_oldest", 8)]


@pytest.mark.parametrize(("policy", "size"), POLICIES)
@pytest.mark.parametrize("thread", ["decode", "process", "encode"])
def test_a_failure_in_any_thread_ends_every_thread_and_reaches_the_caller(thread: str, policy: str, size: int, running_before: set) -> None:
    frames = endless_source(fail_at=30 if thread == "decode" else None)
    processor = Processor(fail_at=30 if thread == "process" else None)
    sink = Sink(fail_at=30 if thread == "encode" else None)
    with pytest.raises(Injected, match="failed at frame 30"):
        finishes_within(HANG_GUARD_SECONDS, run_pipeline, frames, processor, sink, queue_size=size, drop_policy=policy)
    assert not live_threads(PIPELINE, besides=running_before), "run_pipeline returned with its threads still running"


@pytest.mark.parametrize(("policy", "size"), POLICIES)
def test_a_failing_flush_on_a_finite_source_is_raised(policy: str, size: int) -> None:
    frames = (_frame(i) for i in range(20))
    with pytest.raises(Injected, match="flush"):
        finishes_within(HANG_GUARD_SECONDS, run_pipeline, frames, Processor(fail_on_flush=True), Sink(), queue_size=size, drop_policy=policy)


@pytest.mark.parametrize(("policy", "size"), POLICIES)
def test_a_slow_failing_processor_behind_a_fast_source_does_not_hang(policy: str, size: int, running_before: set) -> None:
    """The reported hang: the queue refills between the drain and the end marker."""

    class Slow(Processor):
        def push(self, frame: VideoFrame) -> list[VideoFrame]:
            threading.Event().wait(0.005)  # the source outpaces it: the decoded queue is always full
            return super().push(frame)

    with pytest.raises(Injected):
        finishes_within(HANG_GUARD_SECONDS, run_pipeline, endless_source(), Slow(fail_at=20), Sink(), queue_size=size, drop_policy=policy)
    assert not live_threads(PIPELINE, besides=running_before)


@pytest.mark.parametrize(("policy", "size"), POLICIES)
def test_a_stop_request_ends_an_endless_source_cleanly(policy: str, size: int, running_before: set) -> None:
    stop = threading.Event()
    sink = Sink(stop_after=25, stop=stop)
    result = finishes_within(HANG_GUARD_SECONDS, run_pipeline, endless_source(), Processor(), sink, stop_event=stop, queue_size=size, drop_policy=policy)
    assert result.interrupted and sink.written >= 25 and result.frames_out == sink.written
    assert not live_threads(PIPELINE, besides=running_before)


def test_a_finite_source_loses_nothing_and_leaves_the_stop_event_alone() -> None:
    stop = threading.Event()
    sink = Sink()
    result = finishes_within(HANG_GUARD_SECONDS, run_pipeline, (_frame(i) for i in range(50)), Processor(), sink, stop_event=stop, queue_size=2)
    assert sink.written == result.frames_out == result.frames_in == 50
    assert not result.interrupted and not stop.is_set()  # the same event can serve the next job


def test_on_main_thread_runs_on_the_calling_thread() -> None:
    seen: set[str] = set()
    caller = threading.current_thread().name
    run_pipeline((_frame(i) for i in range(10)), Processor(), Sink(), on_main_thread=lambda: seen.add(threading.current_thread().name))
    assert seen == {caller}


def test_a_failing_main_thread_hook_ends_the_run() -> None:
    def hook() -> None:
        raise Injected("preview window failed")

    with pytest.raises(Injected, match="preview"):
        finishes_within(HANG_GUARD_SECONDS, run_pipeline, endless_source(), Processor(), Sink(), on_main_thread=hook, drop_policy="drop_oldest", queue_size=1)


def test_latency_stats_stay_bounded_and_exact_where_they_can() -> None:
    stats = LatencyStats(window=100)
    for i in range(100_000):
        stats.add(i / 1000)
    assert len(stats.recent) == 100  # a day at 25 fps would be 2 million entries otherwise
    assert stats.count == 100_000 and stats.maximum == pytest.approx(99.999)
    assert stats.mean == pytest.approx(49.9995)
    assert stats.percentile(50) == pytest.approx(np.percentile(np.arange(99_900, 100_000) / 1000, 50))
    assert LatencyStats().percentile(99) is None
