"""The RTSP filter with real parts: a GStreamer RTSP server on 127.0.0.1 serving a clip of real faces,
the filter publishing to a second server, a reader checking every frame it gets back against the
clip's ground truth; the input server killed and restarted mid-stream.

The ``rtsp`` tests need GStreamer's rtsp-server on the system python (scripts/test.sh installs it);
they are skipped, with the reason, only where it is missing.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from sdgan_stream.errors import OutputError
from sdgan_stream.io.rtsp import TIME_BASE, EncoderSettings, RtspPublisher, neutral_frame, output_format_for
from sdgan_stream.live import LiveComponents, LiveReport, run_rtsp_filter
from sdgan_stream.types import VideoFrame

from .live_support import (
    GENERATED_LEAK_CORRELATION,
    FakeClock,
    GroundTruth,
    IndexedClip,
    RtspServer,
    StreamChecker,
    finishes_within,
    gst_rtsp_missing,
    is_neutral,
    live_threads,
    make_indexed_clip,
    wait_for,
    wait_listening,
)

# The RTSP machinery is under test, not recall (see test_live.COVERS).
COVERS = dict(method="pixelate", track=False, threshold=0.4, low_threshold=0.15, rotation_every=0, border=0.0)
ROOT = Path(__file__).resolve().parents[1]


# -- the publisher alone ---------------------------------------------------------------------------------------


class FakeOutput:
    def __init__(self, sent: list, *, fail_after: int | None = None) -> None:
        self.sent, self.fail_after, self.closed = sent, fail_after, False

    def send(self, image: np.ndarray, pts: int) -> None:
        if self.fail_after is not None and len(self.sent) >= self.fail_after:
            raise OutputError("publishing to rtsp://***@server/x failed: Broken pipe")
        self.sent.append((time.monotonic(), pts, image))

    def close(self) -> None:
        self.closed = True


def _frame(value: int, index: int = 0, capture_time: float | None = None) -> VideoFrame:
    return VideoFrame(
        image=np.full((90, 160, 3), value, np.uint8), index=index, pts=None, time_base=None,
        capture_time=time.monotonic() if capture_time is None else capture_time,
    )


def test_publisher_sends_each_frame_once_at_its_capture_time_and_fills_only_a_stall() -> None:
    """A fake clock that moves only when the test says: which frame goes out when is exact."""
    clock = FakeClock()
    sent: list = []
    period = 1 / 32  # fps 32; every time here is a binary fraction, so the sums are exact
    publisher = RtspPublisher(
        "rtsp://x/y", width=160, height=90, fps=32, hold_seconds=11 / 64, stall_seconds=4 / 32,
        open_output=lambda: FakeOutput(sent), clock=clock,
    ).start()
    start = clock()
    try:
        # uneven capture times (a gap of 3 periods is jitter, not a stall): each frame once, at its own time
        for n, at in enumerate([0, 1, 2, 5, 6]):
            clock.now = start + at * period
            publisher.write(_frame(10 + n, n, capture_time=clock()))
            wait_for(lambda: publisher.stats.fresh == n + 1, 30, f"frame {n} published")
        assert publisher.stats.repeated == publisher.stats.neutral == 0
        # the input stops: after stall_seconds the last frame is repeated at the source rate, then,
        # hold_seconds after it, the neutral frame
        for at, kind in [(10, "repeated"), (11, "repeated"), (12, "neutral"), (13, "neutral")]:
            before = getattr(publisher.stats, kind)
            clock.now = start + at * period
            wait_for(lambda: getattr(publisher.stats, kind) == before + 1, 30, f"a {kind} frame at {at}/32 s")
        clock.now = start + 14 * period
        publisher.write(_frame(99, 5, capture_time=clock()))
        wait_for(lambda: publisher.stats.fresh == 6, 30, "the input back")
    finally:
        publisher.close()
    values = [int(image[0, 0, 0]) for _, _, image in sent]
    assert values == [10, 11, 12, 13, 14, 14, 14, 128, 128, 99]
    seconds = [float(pts * TIME_BASE) for _, pts, _ in sent]
    expected = [at * period for at in (0, 1, 2, 5, 6, 10, 11, 12, 13, 14)]
    assert np.allclose(seconds, expected, atol=float(TIME_BASE)), seconds
    assert any(is_neutral(image) for _, _, image in sent)


def test_publisher_takes_every_frame_it_is_given() -> None:
    """write() waits for the previous frame to be taken: nothing is superseded, nothing sent twice."""
    sent: list = []
    publisher = RtspPublisher("rtsp://x/y", width=160, height=90, fps=25, stall_seconds=60, open_output=lambda: FakeOutput(sent)).start()
    try:
        for i in range(200):
            publisher.write(_frame(i % 250, i))
    finally:
        publisher.close()  # the frame still waiting goes out before the thread ends
    assert [int(image[0, 0, 0]) for _, _, image in sent] == list(range(200))
    pts = [p for _, p, _ in sent]
    assert all(b > a for a, b in zip(pts, pts[1:]))


def test_publisher_reconnects_its_output_and_keeps_going() -> None:
    from sdgan_stream.io.live import Backoff

    clock = FakeClock()
    sent: list = []
    outputs: list[FakeOutput] = []

    def open_output() -> FakeOutput:
        outputs.append(FakeOutput(sent, fail_after=3 if not outputs else None))
        return outputs[-1]

    publisher = RtspPublisher(
        "rtsp://x/y", width=160, height=90, fps=25, stall_seconds=60, open_output=open_output,
        backoff=Backoff(initial=0.5, maximum=0.5), clock=clock,
    ).start()
    try:
        for i in range(3):
            publisher.write(_frame(20, i, capture_time=clock()))
            wait_for(lambda: publisher.stats.fresh == i + 1, 30, f"frame {i}")
        publisher.write(_frame(20, 3, capture_time=clock()))  # the server went away
        wait_for(lambda: publisher.stats.output_errors == 1, 30, "the output error")
        clock.advance(0.25)  # within the backoff: not retried yet
        publisher.write(_frame(20, 4, capture_time=clock()))
        wait_for(lambda: publisher.stats.output_skipped == 2, 30, "a frame skipped during the backoff")
        clock.advance(0.5)
        publisher.write(_frame(20, 5, capture_time=clock()))
        wait_for(lambda: publisher.stats.fresh == 4, 30, "publishing again")
    finally:
        publisher.close()
    assert len(outputs) == 2 and outputs[0].closed and outputs[1].closed
    assert publisher.stats.output_errors == 1 and publisher.stats.sessions == 2


def test_publisher_close_never_closes_the_output_under_a_running_send() -> None:
    entered, release = threading.Event(), threading.Event()

    class StuckOutput(FakeOutput):
        def send(self, image: np.ndarray, pts: int) -> None:
            entered.set()
            release.wait()  # a send stuck on the network (its own timeout would end it)
            super().send(image, pts)

    output = StuckOutput([])
    publisher = RtspPublisher("rtsp://x/y", width=160, height=90, fps=25, stall_seconds=60, open_output=lambda: output).start()
    publisher.write(_frame(1))
    wait_for(entered.is_set, 30, "the send to start")
    publisher.close(timeout=0.2)
    assert not output.closed, "close() closed the connection while send() was still using it"
    release.set()
    wait_for(lambda: output.closed, 30, "the publishing thread to close the connection itself")
    wait_for(lambda: not live_threads(("sdgan-publish",)), 30, "the publishing thread to end")
    with pytest.raises(OutputError, match="not running"):
        publisher.write(_frame(2))


def test_a_failed_publisher_thread_fails_the_next_write() -> None:
    def broken() -> FakeOutput:
        raise RuntimeError("encoder exploded")

    publisher = RtspPublisher("rtsp://x/y", width=160, height=90, fps=25, stall_seconds=60, open_output=broken).start()
    try:
        with pytest.raises(RuntimeError, match="exploded"):
            finishes_within(60, lambda: [publisher.write(_frame(3, i)) for i in range(1000)])
    finally:
        publisher.close()


def test_publisher_sizes_and_formats() -> None:
    publisher = RtspPublisher("rtsp://x/y", width=321, height=181, fps=25, open_output=lambda: FakeOutput([]))
    assert (publisher.width, publisher.height) == (320, 180)  # 4:2:0 needs even sizes
    assert output_format_for("rtsp://h/x") == "rtsp" and output_format_for("rtmp://h/x") == "flv"
    with pytest.raises(OutputError, match="use an rtsp"):
        output_format_for("/tmp/file.mp4")
    assert EncoderSettings(bitrate="1M").options(25.0)["maxrate"] == "1M"
    assert EncoderSettings().options(25.0)["g"] == "25"
    image = neutral_frame(320, 180)
    assert is_neutral(image) and image.shape == (180, 320, 3)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


_RECEIVER = """
import json, sys, av
url = sys.argv[1]
out = []
try:
    with av.open(url, options={"rtsp_flags": "listen", "listen_timeout": "60"}, timeout=(70, 10)) as container:
        for frame in container.decode(video=0):
            out.append((frame.pts, float(frame.to_ndarray(format="gray").mean())))
except Exception as error:  # the publisher closing ends the stream
    print(error, file=sys.stderr)
print(json.dumps(out))
"""


def test_publisher_timestamps_over_real_rtsp_are_the_capture_times() -> None:
    """PyAV listens as the server here (one publisher, in another process: its blocking open holds
    the GIL), so the pts received are exactly the publisher's."""
    import json

    port = _free_port()
    url = f"rtsp://127.0.0.1:{port}/live"
    receiver = subprocess.Popen([sys.executable, "-c", _RECEIVER, url], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    first = [20 + 3 * i for i in range(25)]  # every frame its own grey level: a frame sent twice shows
    second = [180 + 7 * i for i in range(10)]
    captured: list[float] = []
    try:
        wait_listening(port)  # probing it by connecting would be taken for the publisher
        publisher = RtspPublisher(url, width=320, height=180, fps=25, hold_seconds=0.4, stall_seconds=0.2).start()
        try:
            for n, value in enumerate(first):
                captured.append(time.monotonic())
                publisher.write(_frame(value, n, capture_time=captured[-1]))
                time.sleep(0.04)  # paced like a 25 fps camera (not a wait for anything)
            wait_for(lambda: publisher.stats.neutral >= 3, 60, "the neutral frame while no input comes")
            for n, value in enumerate(second):
                publisher.write(_frame(value, 25 + n))
                time.sleep(0.04)
        finally:
            publisher.close()
        out, err = receiver.communicate(timeout=60)
    finally:
        if receiver.poll() is None:
            receiver.kill()
            receiver.wait()
    received = json.loads(out)
    assert len(received) > 40, err
    assert all(p is not None for p, _ in received[1:])  # (FFmpeg's RTSP reader gives the first frame none)
    pts = [p for p, _ in received[1:]]
    assert all(b > a for a, b in zip(pts, pts[1:]))
    means = [round(m) for _, m in received]
    # the fresh frames of the first run: each exactly once (fill repeats of the last one come after it), in order
    which = [next((n for n, v in enumerate(first[:-1]) if abs(m - v) <= 1), None) for m in means]
    assert [n for n in which if n is not None] == list(range(len(first) - 1))
    # ... and stamped with their capture times: spacing at the viewer = spacing at capture
    stamped = [(n, p) for n, p in zip(which[1:], pts) if n is not None]
    gaps = np.diff([p for _, p in stamped]) * float(TIME_BASE)
    assert np.allclose(gaps, np.diff([captured[n] for n, _ in stamped]), atol=2 * float(TIME_BASE)), gaps
    assert any(abs(m - 128) < 10 for m in means)  # the neutral frame went out during the gap
    assert abs(means[-1] - second[-1]) <= 2


# -- failures end the filter, every thread, within bounded time (no RTSP server needed) ----------------------

LAVFI = "lavfi:testsrc2=size=160x90:rate=25,realtime"


class BrokenDetector:
    def detect(self, image: np.ndarray) -> None:
        raise RuntimeError("detector exploded")


def _nobody_listens() -> str:
    return f"rtsp://127.0.0.1:{_free_port()}/nobody"


def test_a_detector_failing_on_every_frame_ends_the_rtsp_filter() -> None:
    before = set(threading.enumerate())
    with pytest.raises(RuntimeError, match="in a row"):
        finishes_within(120, run_rtsp_filter, LAVFI, _nobody_listens(), detector=BrokenDetector(), stats_interval=0.2, **COVERS)
    assert not live_threads(besides=before)


def test_a_failing_publisher_ends_the_rtsp_chain() -> None:
    """The publisher's thread fails (not a connection error it retries): the pipeline stops and raises."""
    from sdgan_stream.io.live import LiveSource
    from sdgan_stream.pipeline import run_pipeline

    class Passthrough:
        def push(self, frame: VideoFrame) -> list[VideoFrame]:
            return [frame]

        def flush(self) -> list[VideoFrame]:
            return []

    def broken() -> FakeOutput:
        raise RuntimeError("encoder exploded")

    before = set(threading.enumerate())
    stop = threading.Event()
    source = LiveSource(LAVFI).start()
    publisher = RtspPublisher("rtsp://x/y", width=160, height=90, fps=25, open_output=broken).start()
    try:
        with pytest.raises(RuntimeError, match="exploded"):
            finishes_within(120, run_pipeline, source.frames(stop), Passthrough(), publisher, stop_event=stop, queue_size=1, drop_policy="drop_oldest")
    finally:
        publisher.close()
        source.close()
    assert not live_threads(besides=before)


def test_on_start_raising_closes_the_publisher_and_the_source() -> None:
    before = set(threading.enumerate())

    def on_start(_parts: LiveComponents) -> None:
        raise RuntimeError("monitoring failed to start")

    with pytest.raises(RuntimeError, match="monitoring"):
        finishes_within(120, run_rtsp_filter, LAVFI, _nobody_listens(), on_start=on_start, stats_interval=0, **COVERS)
    assert not live_threads(besides=before)  # the publishing thread used to stay behind


def test_rtsp_command_failure_is_one_line_and_exit_1(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> None:
    """What a supervisor (systemd Restart=on-failure) needs: a non-zero exit and the reason on one line."""
    from sdgan_stream.cli import main
    from sdgan_stream.detect import CenterFaceDetector

    monkeypatch.setattr(CenterFaceDetector, "detect", BrokenDetector.detect)
    url = _nobody_listens().replace("rtsp://", "rtsp://carol:swordfish@")
    code = finishes_within(120, main, ["rtsp", LAVFI, url, "--method", "pixelate", "--no-track", "--stats-interval", "0"])
    assert code == 1
    err = capsys.readouterr().err
    assert err.strip().splitlines()[-1] == "error: rtsp filter stopped: RuntimeError: face analysis failed on 25 frames in a row; giving up"
    assert "swordfish" not in err


# -- the filter end to end with a GStreamer RTSP server --------------------------------------------------------


@pytest.fixture(scope="module")
def gst() -> None:
    reason = gst_rtsp_missing()
    if reason:
        pytest.skip(reason)


@pytest.fixture(scope="module")
def rtsp_clip(tmp_path_factory: pytest.TempPathFactory, gst: None) -> IndexedClip:
    """320x180, 25 fps, 20 s: long enough that the input never ends during a test."""
    return make_indexed_clip(tmp_path_factory.mktemp("rtsp") / "faces.mp4", frames=500)


@pytest.fixture
def servers(rtsp_clip: IndexedClip, tmp_path: Path) -> Iterator[tuple[RtspServer, RtspServer]]:
    """(input server serving the clip at /test, output server taking /pub and relaying it at /view)."""
    source = RtspServer(rtsp_clip.path, log_path=tmp_path / "input_server.log")
    sink = RtspServer(log_path=tmp_path / "output_server.log")
    try:
        source.start()
        sink.start()
        yield source, sink
    finally:
        source.stop()
        sink.stop()


class _Filter:
    """run_rtsp_filter on a thread, stopped (and joined) by the test."""

    def __init__(self, source: str, sink: str, **kwargs: object) -> None:
        self.stop_event = threading.Event()
        self.report: LiveReport | None = None
        self.error: BaseException | None = None
        self.publisher: RtspPublisher | None = None
        self.lines: list[str] = []

        def on_start(parts: LiveComponents) -> None:
            self.publisher = parts.publisher

        def run() -> None:
            try:
                self.report = run_rtsp_filter(source, sink, stop_event=self.stop_event, on_start=on_start, on_stats=self.lines.append, **kwargs)  # type: ignore[arg-type]
            except BaseException as error:  # re-raised by stop()
                self.error = error

        self.thread = threading.Thread(target=run, name="filter", daemon=True)
        self.thread.start()

    def stop(self) -> LiveReport:
        self.stop_event.set()
        self.thread.join(60)
        assert not self.thread.is_alive(), "the filter did not stop"
        if self.error is not None:
            raise self.error
        assert self.report is not None
        return self.report


@pytest.mark.rtsp
def test_rtsp_filter_covers_every_face_and_survives_an_input_restart(servers: tuple[RtspServer, RtspServer], rtsp_clip: IndexedClip) -> None:
    source, sink = servers
    truth = GroundTruth(rtsp_clip.path, rtsp_clip.face_boxes)
    filt = _Filter(source.url("test"), sink.url("pub"), stats_interval=1.0, hold_seconds=1.0, **COVERS)
    checker: StreamChecker | None = None
    try:
        wait_for(lambda: filt.publisher is not None and filt.publisher.stats.fresh > 5 or filt.error is not None, 90, "the filter to publish")
        checker = StreamChecker(sink.url("view"), truth).start()
        wait_for(lambda: checker.result.distinct >= 40, 90, "40 anonymized frames at the reader")
        source.restart(down_seconds=2.0)  # killed abruptly, back on the same port
        back = source.ready_at
        wait_for(lambda: len(checker.result.sessions) >= 2, 90, "frames of the restarted input at the reader")
        republished = checker.result.sessions[1] - back
        session_two = checker.result.distinct
        wait_for(lambda: checker.result.distinct >= session_two + 40, 90, "40 more frames after the restart")
    finally:
        result = checker.stop() if checker is not None else None
        report = filt.stop()
    assert result is not None
    # no viewer ever sees a real face
    assert result.faces_leaked == 0, f"faces visible: {result.leaks}"
    assert result.faces_checked >= 2 * 70
    assert result.unknown == 0, "every frame read back is an anonymized clip frame or the neutral frame"
    # the output stayed up through the input outage: one publishing session, fill frames meanwhile
    assert filt.publisher is not None and filt.publisher.stats.sessions == 1 and filt.publisher.stats.output_errors == 0
    assert result.repeats + result.neutral > 0
    pts = result.pts
    assert all(b > a for a, b in zip(pts, pts[1:])), "timestamps at the viewer go backwards"
    # the input came back and the filter went on
    assert report.reconnects >= 1 and republished < 30, f"republished {republished:.1f} s after the input returned"
    assert report.frames_out >= 80 and report.latency_ms_p50 is not None
    assert any("input DOWN" in line for line in filt.lines) and any("input up" in line for line in filt.lines)


def _start_cli(argv: list[str]) -> tuple[subprocess.Popen, list[str]]:
    """``python -m sdgan_stream.cli ...`` (the ``sdgan-stream`` command) with stderr collected line by line on a thread."""
    env = dict(os.environ, PYTHONUNBUFFERED="1", OMP_NUM_THREADS="1")
    process = subprocess.Popen([sys.executable, "-m", "sdgan_stream.cli", *argv], cwd=ROOT, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True, env=env)
    lines: list[str] = []

    def collect() -> None:
        assert process.stderr is not None
        for line in process.stderr:
            lines.append(line)

    threading.Thread(target=collect, daemon=True).start()
    return process, lines


def _stop_cli(process: subprocess.Popen, sig: int) -> int:
    process.send_signal(sig)
    try:
        return process.wait(60)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(10)


@pytest.mark.rtsp
def test_rtsp_command_masks_credentials_and_stops_cleanly_on_sigterm(servers: tuple[RtspServer, RtspServer]) -> None:
    source, sink = servers
    process, lines = _start_cli(
        [
            "-vv",
            "rtsp",
            source.url("test", credentials="bob:hunter2"),
            sink.url("pub", credentials="carol:swordfish"),
            "--method", "solid", "--no-track", "--stats-interval", "1",
        ]
    )
    try:
        wait_for(lambda: sum("rtsp: in " in line for line in lines) >= 2 or process.poll() is not None, 120, "stats lines")
        assert process.poll() is None, "".join(lines)
        code = _stop_cli(process, signal.SIGTERM)
    finally:
        if process.poll() is None:
            process.kill()
    time.sleep(0.2)
    text = "".join(lines)
    assert code == 0, text
    assert "hunter2" not in text and "swordfish" not in text and "bob" not in text
    assert "rtsp://***@127.0.0.1" in text
    summary = [line for line in lines if line.startswith("rtsp: ") and " s, in " in line]
    assert summary and " out 0 " not in summary[-1], text


@pytest.mark.rtsp
def test_rtsp_command_waits_for_a_missing_input_and_stops_on_sigint(gst: None) -> None:
    port = _free_port()  # nothing listens there
    process, lines = _start_cli(["rtsp", f"rtsp://bob:hunter2@127.0.0.1:{port}/cam?password=hunter2", f"rtsp://127.0.0.1:{_free_port()}/pub"])
    try:
        wait_for(lambda: any("retrying" in line for line in lines) or process.poll() is not None, 60, "a retry message")
        assert process.poll() is None
        code = _stop_cli(process, signal.SIGINT)
    finally:
        if process.poll() is None:
            process.kill()
    text = "".join(lines)
    assert code == 0, text
    assert "hunter2" not in text and "rtsp://***@127.0.0.1" in text and "password=***" in text


@pytest.mark.rtsp
@pytest.mark.slow
def test_rtsp_filter_with_generated_faces(servers: tuple[RtspServer, RtspServer], rtsp_clip: IndexedClip) -> None:
    from sdgan_stream.config import AnonymizeOptions

    options = AnonymizeOptions(method="sdgan", seed=0)
    source, sink = servers
    truth = GroundTruth(rtsp_clip.path, rtsp_clip.face_boxes)
    filt = _Filter(source.url("test"), sink.url("pub"), stats_interval=0, options=options)
    checker: StreamChecker | None = None
    try:
        wait_for(lambda: filt.publisher is not None and filt.publisher.stats.fresh > 3 or filt.error is not None, 180, "the filter to publish")
        checker = StreamChecker(sink.url("view"), truth, threshold=GENERATED_LEAK_CORRELATION).start()
        wait_for(lambda: checker.result.distinct >= 15, 180, "15 anonymized frames at the reader")
    finally:
        result = checker.stop() if checker is not None else None
        report = filt.stop()
    assert result is not None and result.faces_checked >= 20
    assert result.faces_leaked == 0, f"faces visible: {result.leaks}"
    assert report.stats.get("faces_sdgan", 0) > 0  # generated faces, not only fallback covers


@pytest.mark.rtsp
def test_the_checker_sees_the_faces_of_the_raw_stream(servers: tuple[RtspServer, RtspServer], rtsp_clip: IndexedClip) -> None:
    """The leak check itself, over the same RTSP path: the un-anonymized input must fail it on every face."""
    source, _ = servers
    checker = StreamChecker(source.url("test"), GroundTruth(rtsp_clip.path, rtsp_clip.face_boxes)).start()
    try:
        wait_for(lambda: checker.result.distinct >= 20, 90, "20 frames of the input")
    finally:
        result = checker.stop()
    assert result.faces_checked >= 40 and result.faces_leaked == result.faces_checked
    assert result.worst_correlation > 0.9 and result.unknown == 0
