"""The parallel pipeline (analysis of frame N+1 on its own thread while frame N is rendered): the same
output bit for bit as the serial chain, frames in order, and the serial path's fail-closed and
bounded-shutdown guarantees under injected failures."""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from sdgan_stream import anonymize_video
from sdgan_stream.anonymize import AnalysedFrame, CoverRenderer, FrameAnonymizer
from sdgan_stream.lookback import LookbackBuffer
from sdgan_stream.pipeline import run_pipeline
from sdgan_stream.samples import SyntheticClip, make_face_clip
from sdgan_stream.types import Detections, VideoFrame

from .live_support import finishes_within, live_threads

HANG_GUARD_SECONDS = 60  # far above what these runs take: only a hang reaches it
THREADS = ("sdgan-decode", "sdgan-analyse", "sdgan-encode")
POLICIES = [("block", 1), ("block", 8), ("drop_oldest", 1), ("drop_oldest", 8)]


class Injected(RuntimeError):
    """The failure a test plants."""


@pytest.fixture
def running_before() -> set[threading.Thread]:
    return set(threading.enumerate())


# -- serial == parallel, bit for bit, on real faces ------------------------------------------------
@pytest.fixture(scope="module")
def small_clip(tmp_path_factory: pytest.TempPathFactory) -> SyntheticClip:
    return make_face_clip(tmp_path_factory.mktemp("clips") / "faces.mp4", width=640, height=360, frames=8, faces=2, face_width=60, seed=5)


def _frames_written(clip: SyntheticClip, out: Path, **options: object) -> tuple[list[np.ndarray], dict[str, int]]:
    written: list[np.ndarray] = []
    report = anonymize_video(clip.path, out, on_frame_written=lambda frame: written.append(frame.image.copy()),
                             seed=3, detect_size=(640, 640), **options)
    return written, report.stats


@pytest.mark.parametrize("options", [
    {"method": "blur"},
    {"method": "sdgan", "backend": "eager", "device": "cpu", "identity_guard": False},
    {"method": "sdgan", "backend": "eager", "device": "cpu", "identity_guard": True, "guard_candidates": 2},
], ids=["blur", "sdgan", "sdgan-guard"])
def test_parallel_output_equals_serial_output_bit_for_bit(small_clip: SyntheticClip, tmp_path: Path, options: dict) -> None:
    serial, serial_stats = _frames_written(small_clip, tmp_path / "serial.mp4", parallel=False, **options)
    parallel, parallel_stats = _frames_written(small_clip, tmp_path / "parallel.mp4", parallel=True, **options)
    assert len(serial) == len(parallel) == small_clip.frame_count
    for index, (a, b) in enumerate(zip(serial, parallel)):
        assert np.array_equal(a, b), f"frame {index} differs between the serial and the parallel path"
    assert serial_stats == parallel_stats
    drawn = "faces_sdgan" if options["method"] == "sdgan" else "faces_blur"
    assert parallel_stats.get(drawn, 0) > 0  # the comparison saw anonymized faces, not empty frames


def test_landmarks_and_maps_made_in_the_analysis_stage_change_nothing(small_clip: SyntheticClip, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Where a GPU runs the generator, the renderer prepares faces (landmarks, crops, maps) on the
    analysis thread: forced here on CPU, the output is still the serial path's, bit for bit."""
    from sdgan_stream.config import AnonymizeOptions
    from sdgan_stream.render import SdganRenderer

    options = {"method": "sdgan", "backend": "eager", "device": "cpu", "identity_guard": False}
    serial, serial_stats = _frames_written(small_clip, tmp_path / "serial.mp4", parallel=False, **options)
    renderer = SdganRenderer.from_options(AnonymizeOptions(**options))
    renderer.prepares_in_analysis = True
    prepared_calls: list[int] = []
    prepare = renderer.prepare
    monkeypatch.setattr(renderer, "prepare", lambda image, faces: prepared_calls.append(threading.get_ident()) or prepare(image, faces))
    parallel, parallel_stats = _frames_written(small_clip, tmp_path / "parallel.mp4", parallel=True, renderer=renderer, **options)
    assert prepared_calls and threading.main_thread().ident not in prepared_calls  # all on the analysis thread
    assert len(serial) == len(parallel) and all(np.array_equal(a, b) for a, b in zip(serial, parallel))
    assert serial_stats == parallel_stats and parallel_stats.get("faces_sdgan", 0) > 0


# -- failure injection with the real stage chain ---------------------------------------------------
class FlakyDetector:
    """One face at a fixed box; raises on the calls listed in ``fail_on`` (0-based), or on every call."""

    def __init__(self, fail_on: set[int] | None = None, always: bool = False) -> None:
        self.fail_on, self.always, self.calls = fail_on or set(), always, 0

    def detect(self, image: np.ndarray) -> Detections:
        call, self.calls = self.calls, self.calls + 1
        if self.always or call in self.fail_on:
            raise Injected(f"detector failed on call {call}")
        return Detections(boxes=np.array([[40, 30, 90, 90]], np.float32), scores=np.array([0.9], np.float32),
                          landmarks=np.zeros((1, 5, 2), np.float32))


class BrokenRenderer:
    name = "broken"

    def render(self, image, faces):
        raise Injected("renderer exploded")


def _noise_frames(count: int) -> list[VideoFrame]:
    rng = np.random.default_rng(0)
    return [VideoFrame(image=rng.integers(0, 256, (120, 160, 3), dtype=np.uint8), index=i, pts=i, time_base=None) for i in range(count)]


class ListSink:
    def __init__(self) -> None:
        self.frames: list[VideoFrame] = []

    def write(self, frame: VideoFrame) -> None:
        self.frames.append(VideoFrame(image=frame.image.copy(), index=frame.index, pts=frame.pts, time_base=None))


def _covered_whole(out: np.ndarray, original: np.ndarray) -> bool:
    return (np.abs(out.astype(int) - original.astype(int)).max(axis=2) > 20).mean() > 0.9


def test_frames_whose_analysis_fails_are_covered_whole_in_parallel(running_before: set) -> None:
    frames = _noise_frames(12)
    originals = [f.image.copy() for f in frames]
    anonymizer = FrameAnonymizer(detector=FlakyDetector(fail_on={3, 4, 5}), renderer=CoverRenderer(method="solid"),
                                 lookback=LookbackBuffer(max_frames=4))
    sink = ListSink()
    result = finishes_within(HANG_GUARD_SECONDS, run_pipeline, iter(frames), anonymizer, sink, parallel=True, queue_size=2)
    assert result.frames_out == 12 and [f.index for f in sink.frames] == list(range(12))
    for frame in sink.frames:
        if frame.index in (3, 4, 5):
            assert _covered_whole(frame.image, originals[frame.index])
        else:
            assert (frame.image[40:80, 50:80] == 0).all(), f"frame {frame.index}: the face is not covered"
    assert anonymizer.stats["frames_covered_whole"] == 3
    assert not live_threads(THREADS, besides=running_before)


def test_a_failing_renderer_gets_every_face_covered_in_parallel() -> None:
    anonymizer = FrameAnonymizer(detector=FlakyDetector(), renderer=BrokenRenderer())
    sink = ListSink()
    finishes_within(HANG_GUARD_SECONDS, run_pipeline, iter(_noise_frames(6)), anonymizer, sink, parallel=True)
    assert len(sink.frames) == 6 and all((f.image[40:80, 50:80] == 0).all() for f in sink.frames)
    assert anonymizer.stats["fallback_renderer_error"] == 6


def test_persistently_failing_analysis_ends_the_parallel_run_and_leaks_nothing(running_before: set) -> None:
    frames = _noise_frames(60)
    originals = [f.image.copy() for f in frames]
    anonymizer = FrameAnonymizer(detector=FlakyDetector(always=True), renderer=CoverRenderer())
    sink = ListSink()
    with pytest.raises(RuntimeError, match="in a row"):
        finishes_within(HANG_GUARD_SECONDS, run_pipeline, iter(frames), anonymizer, sink, parallel=True)
    assert all(_covered_whole(f.image, originals[f.index]) for f in sink.frames)
    assert not live_threads(THREADS, besides=running_before)


# -- thread failures and stops with a minimal staged processor ---------------------------------------
def _frame(index: int) -> VideoFrame:
    return VideoFrame(image=np.zeros((8, 8, 3), np.uint8), index=index, pts=index, time_base=None)


def endless_source(fail_at: int | None = None) -> Iterator[VideoFrame]:
    index = 0
    while True:
        if index == fail_at:
            raise Injected(f"source failed at frame {index}")
        yield _frame(index)
        index += 1


class Staged:
    """Analysis holds ``hold`` frames back (like the look-back buffer) and may fail; so may rendering.
    Failures count calls, not frame indices (``drop_oldest`` may drop any given frame)."""

    def __init__(self, fail_analysis_at: int | None = None, fail_render_at: int | None = None, hold: int = 2) -> None:
        self.fail_analysis_at, self.fail_render_at, self.hold = fail_analysis_at, fail_render_at, hold
        self.held: list[VideoFrame] = []
        self.analysed = self.rendered = 0
        self.analysis_threads: set[str] = set()
        self.render_threads: set[str] = set()

    def analyse_frame(self, frame: VideoFrame) -> list[VideoFrame]:
        self.analysis_threads.add(threading.current_thread().name)
        if self.analysed == self.fail_analysis_at:
            raise Injected(f"analysis failed at frame {self.analysed}")
        self.analysed += 1
        self.held.append(frame)
        out, self.held = self.held[: -self.hold], self.held[-self.hold :]
        return out

    def analyse_flush(self) -> list[VideoFrame]:
        out, self.held = self.held, []
        return out

    def render(self, frame: VideoFrame) -> VideoFrame:
        self.render_threads.add(threading.current_thread().name)
        if self.rendered == self.fail_render_at:
            raise Injected(f"rendering failed at frame {self.rendered}")
        self.rendered += 1
        return frame

    def push(self, frame: VideoFrame) -> list[VideoFrame]:
        return [self.render(f) for f in self.analyse_frame(frame)]

    def flush(self) -> list[VideoFrame]:
        return [self.render(f) for f in self.analyse_flush()]


class IndexSink:
    def __init__(self, fail_at: int | None = None, stop_after: int | None = None, stop: threading.Event | None = None) -> None:
        self.fail_at, self.stop_after, self.stop = fail_at, stop_after, stop
        self.indices: list[int] = []

    def write(self, frame: VideoFrame) -> None:
        if len(self.indices) == self.fail_at:
            raise Injected(f"writing failed at frame {len(self.indices)}")
        self.indices.append(frame.index)
        if self.stop is not None and len(self.indices) == self.stop_after:
            self.stop.set()


def test_stages_run_on_two_threads_and_frames_reach_the_sink_in_order() -> None:
    processor, sink = Staged(hold=3), IndexSink()
    result = finishes_within(HANG_GUARD_SECONDS, run_pipeline, (_frame(i) for i in range(50)), processor, sink, parallel=True, queue_size=2)
    assert sink.indices == list(range(50)) and result.frames_out == 50  # the held-back frames were flushed too
    assert processor.analysis_threads == {"sdgan-analyse"} and "sdgan-analyse" not in processor.render_threads


@pytest.mark.parametrize(("policy", "size"), POLICIES)
@pytest.mark.parametrize("thread", ["decode", "analyse", "render", "encode"])
def test_a_failure_in_any_stage_ends_every_thread_and_reaches_the_caller(thread: str, policy: str, size: int, running_before: set) -> None:
    frames = endless_source(fail_at=30 if thread == "decode" else None)
    processor = Staged(fail_analysis_at=30 if thread == "analyse" else None, fail_render_at=30 if thread == "render" else None)
    sink = IndexSink(fail_at=30 if thread == "encode" else None)
    with pytest.raises(Injected, match="failed at frame 30"):
        finishes_within(HANG_GUARD_SECONDS, run_pipeline, frames, processor, sink, queue_size=size, drop_policy=policy, parallel=True)
    assert not live_threads(THREADS, besides=running_before), "run_pipeline returned with its threads still running"
    assert sink.indices == sorted(sink.indices)


@pytest.mark.parametrize(("policy", "size"), POLICIES)
def test_a_stop_request_ends_a_parallel_run_cleanly(policy: str, size: int, running_before: set) -> None:
    stop = threading.Event()
    sink = IndexSink(stop_after=25, stop=stop)
    result = finishes_within(HANG_GUARD_SECONDS, run_pipeline, endless_source(), Staged(), sink, stop_event=stop,
                             queue_size=size, drop_policy=policy, parallel=True)
    assert result.interrupted and len(sink.indices) >= 25 and result.frames_out == len(sink.indices)
    assert sink.indices == sorted(sink.indices)
    assert not live_threads(THREADS, besides=running_before)


def test_a_processor_without_stages_runs_serially(caplog: pytest.LogCaptureFixture) -> None:
    class Plain:
        def push(self, frame: VideoFrame) -> list[VideoFrame]:
            return [frame]

        def flush(self) -> list[VideoFrame]:
            return []

    sink = IndexSink()
    with caplog.at_level(logging.WARNING, logger="sdgan_stream.pipeline"):
        finishes_within(HANG_GUARD_SECONDS, run_pipeline, (_frame(i) for i in range(5)), Plain(), sink, parallel=True)
    assert sink.indices == list(range(5)) and "running serially" in caplog.text


def test_analysed_frames_carry_their_faces_through_the_lookback_buffer() -> None:
    anonymizer = FrameAnonymizer(detector=FlakyDetector(), renderer=CoverRenderer(), lookback=LookbackBuffer(max_frames=2))
    analysed = [item for frame in _noise_frames(4) for item in anonymizer.analyse_frame(frame)] + anonymizer.analyse_flush()
    assert [a.frame.index for a in analysed] == [0, 1, 2, 3]
    assert all(isinstance(a, AnalysedFrame) and len(a.faces) == 1 and not a.analysis_failed for a in analysed)


def test_a_ctrl_c_while_the_threads_are_joined_waits_for_them_then_is_raised(monkeypatch: pytest.MonkeyPatch) -> None:
    # a second Ctrl-C during shutdown: the encode thread may still be writing the output, which the caller
    # closes next; every thread is joined first, then the interrupt goes on
    import sdgan_stream.pipeline as pipeline

    joined: list[str] = []
    interrupts = iter([True, False, False, False])

    def join(thread, timeout):
        if next(interrupts):
            raise KeyboardInterrupt
        joined.append(thread.name)

    monkeypatch.setattr(pipeline, "_join", join)
    threads = [threading.Thread(name=name) for name in ("decode", "encode", "analyse")]
    with pytest.raises(KeyboardInterrupt):
        pipeline._join_all(threads, 1.0)
    assert joined == ["decode", "encode", "analyse"]
