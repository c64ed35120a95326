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
    GroundTruth,
    IndexedClip,
    RtspServer,
    StreamChecker,
    gst_rtsp_missing,
    is_neutral,
    make_indexed_clip,
)

COVERS = dict(method="pixelate", track=False)
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


def _frame(value: int, index: int = 0) -> VideoFrame:
    return VideoFrame(image=np.full((90, 160, 3), value, np.uint8), index=index, pts=None, time_base=None, capture_time=time.monotonic())


def test_publisher_repeats_the_last_covered_frame_then_goes_neutral() -> None:
    sent: list = []
    publisher = RtspPublisher("rtsp://x/y", width=160, height=90, fps=50, hold_seconds=0.3, open_output=lambda: FakeOutput(sent)).start()
    try:
        for i in range(5):
            publisher.write(_frame(10 + i, i))
            time.sleep(0.02)
        time.sleep(1.0)  # the input is "down"
        publisher.write(_frame(99, 5))
        time.sleep(0.1)
    finally:
        publisher.close()
    values = [int(image[0, 0, 0]) for _, _, image in sent]
    pts = [p for _, p, _ in sent]
    assert all(b > a for a, b in zip(pts, pts[1:])), "timestamps must only go forward"
    first_fill = values.index(128) if 128 in values else len(values)
    # everything published is either a frame given to write() (anonymized) or the neutral frame
    assert set(values) <= {10, 11, 12, 13, 14, 99, 128}
    assert 14 in values[:first_fill] and values[-1] in (99, 128) and 99 in values
    stats = publisher.stats
    assert stats.repeated >= 5 and stats.neutral >= 10 and stats.fresh >= 5
    assert any(is_neutral(image) for _, _, image in sent)
    # while filling, frames go out at the source rate (50 fps -> 20 ms apart)
    fill_times = [t for (t, _, image) in sent if int(image[0, 0, 0]) == 128]
    assert 0.01 < float(np.median(np.diff(fill_times))) < 0.04
    fill_pts = [p for (_, p, image) in sent if int(image[0, 0, 0]) == 128]
    assert abs(float(np.median(np.diff(fill_pts))) * TIME_BASE - 0.02) < 0.01


def test_publisher_reconnects_its_output_and_keeps_going() -> None:
    sent: list = []
    outputs: list[FakeOutput] = []

    def open_output() -> FakeOutput:
        outputs.append(FakeOutput(sent, fail_after=3 if not outputs else None))
        return outputs[-1]

    from sdgan_stream.io.live import Backoff

    publisher = RtspPublisher("rtsp://x/y", width=160, height=90, fps=25, open_output=open_output, backoff=Backoff(initial=0.05, maximum=0.1)).start()
    try:
        for i in range(20):
            publisher.write(_frame(20, i))
            time.sleep(0.04)
    finally:
        publisher.close()
    assert len(outputs) == 2 and outputs[0].closed and outputs[1].closed
    assert publisher.stats.output_errors == 1 and publisher.stats.sessions == 2
    assert publisher.stats.fresh >= 10


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


def test_publisher_timestamps_over_real_rtsp_are_monotonic_at_the_source_rate() -> None:
    """PyAV listens as the server here (one publisher, in another process: its blocking open holds
    the GIL), so the pts received are exactly the publisher's."""
    import json

    port = _free_port()
    url = f"rtsp://127.0.0.1:{port}/live"
    receiver = subprocess.Popen([sys.executable, "-c", _RECEIVER, url], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        time.sleep(2.0)  # the receiver starts listening (probing the port would be taken for the publisher)
        publisher = RtspPublisher(url, width=320, height=180, fps=25, hold_seconds=0.4).start()
        try:
            for i in range(25):
                publisher.write(_frame(40, i))
                time.sleep(0.04)
            time.sleep(1.5)  # no input: repeat, then neutral
            for i in range(10):
                publisher.write(_frame(200, 25 + i))
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
    pts = [p for p, _ in received if p is not None]
    assert all(b > a for a, b in zip(pts, pts[1:]))
    steps = np.diff(pts) * float(TIME_BASE)
    assert 0.02 < float(np.median(steps)) < 0.06  # ~1/25 s per frame, during the gap as well
    means = [m for _, m in received]
    assert any(abs(m - 128) < 10 for m in means)  # the neutral frame went out during the gap
    assert abs(means[-1] - 200) < 10


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


def _wait(condition, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(0.1)


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
        _wait(lambda: filt.publisher is not None and filt.publisher.stats.fresh > 5 or filt.error is not None, 90, "the filter to publish")
        checker = StreamChecker(sink.url("view"), truth).start()
        _wait(lambda: checker.result.distinct >= 40, 90, "40 anonymized frames at the reader")
        source.restart(down_seconds=2.0)  # killed abruptly, back on the same port
        back = source.ready_at
        _wait(lambda: len(checker.result.sessions) >= 2, 90, "frames of the restarted input at the reader")
        republished = checker.result.sessions[1] - back
        session_two = checker.result.distinct
        _wait(lambda: checker.result.distinct >= session_two + 40, 90, "40 more frames after the restart")
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
        _wait(lambda: sum("rtsp: in " in line for line in lines) >= 2 or process.poll() is not None, 120, "stats lines")
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
        _wait(lambda: any("retrying" in line for line in lines) or process.poll() is not None, 60, "a retry message")
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
        _wait(lambda: filt.publisher is not None and filt.publisher.stats.fresh > 3 or filt.error is not None, 180, "the filter to publish")
        checker = StreamChecker(sink.url("view"), truth, threshold=GENERATED_LEAK_CORRELATION).start()
        _wait(lambda: checker.result.distinct >= 15, 180, "15 anonymized frames at the reader")
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
        _wait(lambda: checker.result.distinct >= 20, 90, "20 frames of the input")
    finally:
        result = checker.stop()
    assert result.faces_checked >= 40 and result.faces_leaked == result.faces_checked
    assert result.worst_correlation > 0.9 and result.unknown == 0
