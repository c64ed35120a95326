"""Live mode: sources (lavfi realtime, a paced face clip as a webcam stand-in), newest-frame policy,
reconnect with backoff, the headless preview path, recording, the ``live`` command, URL redaction."""

from __future__ import annotations

import argparse
import logging
import os
import queue
import socket
import threading
import time
from collections.abc import Iterator
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest

from sdgan_stream.errors import InputError
from sdgan_stream.io.live import Backoff, LiveSource, parse_camera
from sdgan_stream.live import (
    LiveViewSink,
    display_available,
    draw_overlay,
    is_quit_key,
    run_live,
)
from sdgan_stream.live_cli import add_live_parser
from sdgan_stream.pipeline import stop_on_signals
from sdgan_stream.redact import RedactingFilter, install_log_redaction, redact_text, redact_url
from sdgan_stream.types import VideoFrame

from .conftest import read_frames
from .live_support import (
    GroundTruth,
    IndexedClip,
    finishes_within,
    live_threads,
    make_indexed_clip,
    read_index,
    stamp_index,
    wait_for,
)

# The live machinery is under test, not recall: a plain single-pass detector at 0.4 keeps the frame-index
# stamp these tests read back clear of the recall-first defaults' weak detections (over-covering is safe).
COVERS = dict(method="pixelate", track=False, threshold=0.4, low_threshold=0.15, rotation_every=0, border=0.0)
LAVFI = "lavfi:testsrc2=size=320x180:rate=25,realtime"


@pytest.fixture(scope="module")
def indexed_clip(tmp_path_factory: pytest.TempPathFactory) -> IndexedClip:
    """320x180, 25 fps, 4 s, two real faces, frame index stamped in a corner."""
    return make_indexed_clip(tmp_path_factory.mktemp("live") / "indexed.mp4", frames=100)


class FakePreview:
    """Headless preview: records what would be shown (and on which thread), presses ``key`` after ``after`` frames."""

    def __init__(self, *, key: int = ord("q"), after: int | None = None) -> None:
        self.shown: list[np.ndarray] = []
        self.threads: set[threading.Thread] = set()
        self.key, self.after = key, after
        self.closed = False

    def show(self, image: np.ndarray) -> int:
        self.threads.add(threading.current_thread())
        self.shown.append(image)
        return self.key if self.after is not None and len(self.shown) >= self.after else -1

    def close(self) -> None:
        self.closed = True


# -- camera specs and backoff -----------------------------------------------------------------------


def test_parse_camera_kinds(indexed_clip: IndexedClip, monkeypatch: pytest.MonkeyPatch) -> None:
    assert parse_camera("lavfi:testsrc2").kind == "lavfi"
    assert parse_camera("/dev/video3").kind == "v4l2"
    assert parse_camera("/dev/video3", capture="opencv").kind == "opencv"
    assert parse_camera("7", capture="opencv").location == 7
    monkeypatch.setattr("os.path.exists", lambda path: False)
    assert parse_camera("0").kind == "opencv"  # no /dev/video0: OpenCV's own index lookup
    url = parse_camera("rtsp://admin:secret@cam.local:554/live")
    assert url.kind == "url" and url.reconnects and "secret" not in url.display
    clip = parse_camera(str(indexed_clip.path))
    assert clip.kind == "file" and not clip.reconnects
    with pytest.raises(InputError, match="not a camera"):
        parse_camera("no/such/file.mp4")
    with pytest.raises(InputError, match="filter graph"):
        parse_camera("lavfi:")


def test_backoff_grows_to_a_cap() -> None:
    assert list(Backoff(initial=0.25, factor=2, maximum=2).delays(6)) == [0.25, 0.5, 1.0, 2.0, 2, 2]


# -- live sources ---------------------------------------------------------------------------------------


def test_lavfi_realtime_source_is_paced_and_stamped() -> None:
    with LiveSource(LAVFI) as source:
        info = source.wait_ready(timeout=30)
        assert info is not None and (info.width, info.height) == (320, 180) and info.fps == 25 and info.is_live
        stop = threading.Event()
        frames = []
        started = time.monotonic()
        for frame in source.frames(stop):
            frames.append(frame)
            if len(frames) == 25:
                break
        elapsed = time.monotonic() - started
    assert elapsed > 0.6  # paced like a camera (25 frames ~ 1 s), not decoded as fast as possible
    assert all(f.capture_time > 0 for f in frames)
    pts = [f.pts for f in frames]
    assert pts == sorted(pts) and len(set(pts)) == len(pts)
    assert frames[0].image.shape == (180, 320, 3) and frames[0].image.dtype == np.uint8


class FeedConnection:
    """A camera the test feeds frame by frame (frame n is an image of grey level n)."""

    width, height, fps = 32, 24, Fraction(25)

    def __init__(self) -> None:
        self.feed: queue.Queue = queue.Queue()
        self.closed = False

    def send(self, *levels: int) -> None:
        for level in levels:
            self.feed.put(np.full((self.height, self.width, 3), level, np.uint8))

    def images(self) -> Iterator[np.ndarray]:
        while (image := self.feed.get()) is not None:
            yield image

    def close(self) -> None:
        self.closed = True


def test_newest_frame_policy_drops_and_counts_stale_frames() -> None:
    connection = FeedConnection()
    source = LiveSource(LAVFI)
    source._open = lambda: connection  # type: ignore[method-assign]
    source.start()
    try:
        stop = threading.Event()
        frames = source.frames(stop)
        connection.send(0, 1, 2, 3, 4)  # five frames arrive while nobody takes one
        wait_for(lambda: source.stats.captured == 5, 30, "5 frames captured")
        frame = next(frames)
        assert frame.index == 4 and frame.image[0, 0, 0] == 4  # the newest, not the oldest
        assert source.stats.dropped == 4
        connection.send(5, 6)
        wait_for(lambda: source.stats.captured == 7, 30, "2 more frames")
        frame = next(frames)
        assert frame.index == 6 and source.stats.dropped == 5
        assert [f.pts for f in (frame,)] and frame.capture_time > 0
        connection.send(7)
        wait_for(lambda: source.stats.captured == 8, 30, "one more frame")
        assert next(frames).index == 7  # taken in time: nothing dropped
        assert source.stats.dropped == 5
    finally:
        connection.feed.put(None)  # the camera ends
        source.close()
    assert connection.closed and not source.running


def test_a_source_that_is_down_retries_with_backoff_until_stopped() -> None:
    source = LiveSource("rtsp://user:pw@127.0.0.1:9/none", backoff=Backoff(initial=0.05, maximum=0.2), open_timeout=2, read_timeout=2).start()
    try:
        wait_for(lambda: source.stats.failures >= 3, 60, "3 failed attempts")
        stop = threading.Event()
        assert source.wait_ready(stop, timeout=0) is None
        assert not source.stats.connected and source.running
        assert "pw" not in source.stats.last_error and "***@" in source.stats.last_error
        waiting = threading.Thread(target=lambda: list(source.frames(stop)), daemon=True)
        waiting.start()  # a consumer waiting for a frame that does not come ...
        stop.set()  # ... returns once the job stops
        finishes_within(30, waiting.join)
        assert not waiting.is_alive()
    finally:
        source.close()
    assert not source.running


def test_close_waits_until_the_capture_thread_has_left_ffmpeg() -> None:
    """A server that accepts the connection and says nothing: the capture thread sits in FFmpeg's
    open until open_timeout. close() must not return before it is out (it used to give up after 2 s
    and leave the thread inside FFmpeg)."""
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        accepted: list[socket.socket] = []
        threading.Thread(target=lambda: accepted.append(server.accept()[0]), daemon=True).start()
        source = LiveSource(f"rtsp://127.0.0.1:{server.getsockname()[1]}/silent", open_timeout=3, read_timeout=3).start()
        try:
            wait_for(lambda: accepted, 30, "FFmpeg to connect")
            finishes_within(60, source.close)
            assert not source.running
        finally:
            for connection in accepted:
                connection.close()


def test_a_camera_that_cannot_open_is_an_error() -> None:
    source = LiveSource("lavfi:nosuchfilter=1").start()
    with pytest.raises(InputError, match="cannot open"):
        source.wait_ready(timeout=30)
    source.close()
    webcam = LiveSource("rtsp://127.0.0.1:9/x", retry_first_open=False, open_timeout=2).start()
    with pytest.raises(InputError):
        webcam.wait_ready(timeout=30)
    webcam.close()


def test_a_camera_flapping_for_days_keeps_bounded_state(caplog: pytest.LogCaptureFixture) -> None:
    source = LiveSource(LAVFI)
    connection = FeedConnection()
    image = np.zeros((24, 32, 3), np.uint8)
    with caplog.at_level(logging.ERROR):  # 10000 outages are 10000 warnings
        for _ in range(10_000):
            source._up(connection)
            source._publish(image)
            source._lost("input lost", retrying=True)
    assert len(source.stats.events) <= 256 and len(source._session_starts) <= 512
    assert source.session_of(source._next_index - 1) == 9_999  # session numbers still count every reconnect
    assert source.session_of(source._next_index - 2) == 9_998


def test_session_of_maps_frames_to_connections() -> None:
    source = LiveSource(LAVFI)
    source._session_starts = [0, 10, 25]
    assert [source.session_of(i) for i in (0, 9, 10, 24, 25, 99)] == [0, 0, 1, 1, 2, 2]


# -- preview, overlay, keys ----------------------------------------------------------------------------------


def test_overlay_is_drawn_on_a_copy() -> None:
    image = np.full((180, 320, 3), 200, np.uint8)
    out = draw_overlay(image, fps=24.7, latency_ms=42, dropped=3)
    assert (image == 200).all()  # the anonymized frame itself is untouched (it is also recorded)
    corner = out[:20, :150]
    assert corner.mean() < 120 and corner.max() == 255  # dark band, white text
    assert (out[60:, :] == 200).all()


def test_quit_keys_and_display_detection(monkeypatch: pytest.MonkeyPatch) -> None:
    assert is_quit_key(ord("q")) and is_quit_key(ord("Q")) and is_quit_key(27)
    assert is_quit_key(0x100000 | ord("q"))  # some highgui backends set modifier bits
    assert not is_quit_key(-1) and not is_quit_key(ord("a"))
    monkeypatch.setattr("sys.platform", "linux")
    monkeypatch.delenv("DISPLAY", raising=False)
    monkeypatch.delenv("WAYLAND_DISPLAY", raising=False)
    assert not display_available()
    monkeypatch.setenv("DISPLAY", ":0")
    assert display_available()


def test_view_sink_shows_overlay_records_clean_frames_and_quits_on_q() -> None:
    stop = threading.Event()
    preview = FakePreview(after=3)
    recorded: list[VideoFrame] = []

    class Recorder:
        def write(self, frame: VideoFrame) -> None:
            recorded.append(frame)

    sink = LiveViewSink(stop_event=stop, preview=preview, recorder=Recorder(), dropped=lambda: 7)
    now = time.monotonic()
    for i in range(3):
        image = np.full((120, 160, 3), 90, np.uint8)
        sink.write(VideoFrame(image=image, index=i, pts=9000 + 3600 * i, time_base=None, capture_time=now - 0.05))
        assert len(preview.shown) == i  # write (encoder thread) never touches the window ...
        sink.pump()  # ... the main thread shows the newest frame
        assert len(preview.shown) == i + 1
        assert stop.is_set() == (i == 2)
    sink.pump()
    assert len(preview.shown) == 3  # nothing new, and q was pressed: nothing more on screen
    assert len(preview.shown) == 3 and preview.shown[0][:10].mean() < 90  # overlay band
    assert all((f.image == 90).all() for f in recorded)  # recording without the overlay
    assert [f.pts for f in recorded] == [0, 3600, 7200]  # the recording starts at 0
    assert sink.stats.fresh == 3 and all(0.04 < lat < 1 for _, lat in sink.stats.latencies)
    sink.close()
    assert preview.closed


def test_signals_set_the_stop_event_instead_of_raising() -> None:
    import os
    import signal

    stop = threading.Event()
    with stop_on_signals(stop):
        os.kill(os.getpid(), signal.SIGTERM)
        assert stop.wait(5)
    assert signal.getsignal(signal.SIGTERM) is not None


# -- end to end: a paced face clip stands in for a webcam -------------------------------------------------


def _assert_recording_covers_faces(path: Path, clip: IndexedClip) -> int:
    truth = GroundTruth(clip.path, clip.face_boxes)
    frames, pts, _ = read_frames(path)
    assert frames and pts == sorted(pts)
    checked = 0
    for image in frames:
        index = read_index(image)
        assert index is not None
        faces, leaked, worst = truth.visible_faces(image, index)
        assert leaked == 0, f"face visible on frame {index} (correlation {worst:.2f})"
        checked += faces
    return checked


def test_live_webcam_stand_in_preview_recording_and_q(indexed_clip: IndexedClip, tmp_path: Path) -> None:
    out = tmp_path / "live.mp4"
    preview = FakePreview(after=40)  # "q" after 40 shown frames
    lines: list[str] = []
    # looped, so that even a slow (loaded) machine shows 40 frames before the clip would end
    report = run_live(str(indexed_clip.path), loop=True, preview=preview, output=out, stats_interval=0.5, on_stats=lines.append, **COVERS)
    assert report.interrupted and report.frames_out >= 40
    assert report.frames_in >= report.frames_out and report.frames_dropped == report.frames_in - report.frames_processed
    assert report.latency_ms_p50 is not None and report.latency_ms_p50 > 0
    assert preview.closed and len(preview.shown) == 40  # frames still in flight after q are not shown
    assert preview.threads == {threading.main_thread()}  # windows live on the main thread (macOS allows no other)
    assert lines and "fps" in lines[0] and "latency" in lines[0]
    assert _assert_recording_covers_faces(out, indexed_clip) >= 2 * 30
    # recorded timestamps follow capture time: ~real time even when frames were dropped
    _, pts, tb = read_frames(out)
    span = float((pts[-1] - pts[0]) * tb)
    assert 0.9 * (len(pts) - 1) / 25 <= span <= report.seconds


@pytest.mark.parametrize("parallel", [False, True], ids=["serial", "parallel"])
def test_live_ends_with_its_source_and_reports(indexed_clip: IndexedClip, tmp_path: Path, parallel: bool) -> None:
    out = tmp_path / "live.mp4"
    report = run_live(str(indexed_clip.path), output=out, stats_interval=0, parallel=parallel, **COVERS)
    assert not report.interrupted
    assert report.frames_in == 100  # a file source plays once, every frame captured
    assert report.frames_out + report.frames_dropped == 100
    assert report.stats.get("faces_pixelate", 0) > 0
    assert _assert_recording_covers_faces(out, indexed_clip) > 0  # analysed on another thread: still covered


def test_a_turned_phone_video_played_live_is_analysed_and_published_upright(tmp_path: Path) -> None:
    # stored 640x360 with a 90 degree display rotation: a live run turns it upright (360x640), so the faces
    # are looked for upright, and records it as shown
    from sdgan_stream.samples import make_face_clip

    clip = make_face_clip(tmp_path / "phone.mp4", width=360, height=640, frames=20, faces=1, face_width=120, audio=False,
                          rotation=90)
    with LiveSource(str(clip.path)) as source:
        info = source.wait_ready(timeout=30)
        assert info is not None and (info.width, info.height) == (360, 640)
        first = next(source.frames(threading.Event()))
        assert first.image.shape == (640, 360, 3)
    out = tmp_path / "live.mp4"
    report = run_live(str(clip.path), output=out, stats_interval=0, **COVERS)
    assert report.stats.get("faces_pixelate", 0) >= report.frames_out > 0  # the face found on every frame
    recorded, _, _ = read_frames(out)
    assert recorded[0].shape == (640, 360, 3)


def test_live_stops_on_duration_with_lavfi() -> None:
    started = time.monotonic()
    report = run_live(LAVFI, duration=2.0, stats_interval=0, **COVERS)
    assert report.interrupted and report.frames_out > 10
    assert time.monotonic() - started < 30


# -- failures end the run, every thread, within bounded time -------------------------------------------------


class BrokenDetector:
    def detect(self, image: np.ndarray) -> None:
        raise RuntimeError("detector exploded")


def _open_descriptors(path: Path) -> list[str]:
    links = []
    for fd in os.listdir("/proc/self/fd"):
        try:
            links.append(os.readlink(f"/proc/self/fd/{fd}"))
        except OSError:  # closed meanwhile
            continue
    return [link for link in links if str(path) in link]


@pytest.mark.parametrize("parallel", [False, True], ids=["serial", "parallel"])
def test_a_detector_failing_on_every_frame_ends_a_live_run_with_a_playable_recording(tmp_path: Path, parallel: bool) -> None:
    before = set(threading.enumerate())
    out = tmp_path / "failed.mp4"
    with pytest.raises(RuntimeError, match="in a row"):
        finishes_within(120, run_live, LAVFI, output=out, detector=BrokenDetector(), stats_interval=0.2, parallel=parallel, **COVERS)
    assert not live_threads(besides=before)
    frames, pts, _ = read_frames(out)  # what was recorded before the failure: every frame covered whole
    assert frames and pts == sorted(pts)
    assert not _open_descriptors(out)


def test_a_failing_preview_ends_a_live_run() -> None:
    class BrokenPreview(FakePreview):
        def show(self, image: np.ndarray) -> int:
            raise RuntimeError("window gone")

    before = set(threading.enumerate())
    preview = BrokenPreview()
    with pytest.raises(RuntimeError, match="window gone"):
        finishes_within(120, run_live, LAVFI, preview=preview, stats_interval=0, **COVERS)
    assert preview.closed and not live_threads(besides=before)


def test_on_start_raising_closes_the_recording_the_source_and_the_renderer(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from sdgan_stream.anonymize import CoverRenderer

    closed: list[str] = []

    class Renderer(CoverRenderer):
        def close(self) -> None:
            closed.append(self.name)

    monkeypatch.setattr("sdgan_stream.api.build_renderer", lambda options, **_: Renderer(method="pixelate"))
    before = set(threading.enumerate())
    out = tmp_path / "never.mp4"

    def on_start(_parts: object) -> None:
        raise RuntimeError("monitoring failed to start")

    with pytest.raises(RuntimeError, match="monitoring"):
        finishes_within(120, run_live, LAVFI, output=out, on_start=on_start, stats_interval=0, **COVERS)
    assert not out.exists() and not _open_descriptors(out)  # no frame recorded: no file left, none open
    assert not live_threads(besides=before)
    assert closed == ["pixelate"]  # the renderer it built (a generator backend's threads) is released
    stop = threading.Event()
    finishes_within(120, run_live, LAVFI, stop_event=stop, on_start=lambda _parts: stop.set(), stats_interval=0, **COVERS)
    assert closed == ["pixelate", "pixelate"]  # on a clean stop as well


def test_live_command_failure_is_one_line_and_exit_1(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> None:
    from sdgan_stream.cli import main
    from sdgan_stream.detect import CenterFaceDetector

    monkeypatch.setattr(CenterFaceDetector, "detect", BrokenDetector.detect)
    code = finishes_within(120, main, ["live", "--camera", LAVFI, "--method", "pixelate", "--no-track", "--stats-interval", "0"])
    assert code == 1
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert last == "error: live stopped: RuntimeError: face analysis failed on 25 frames in a row; giving up"


# -- the live command ------------------------------------------------------------------------------------------


def _live_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_live_parser(parser.add_subparsers(dest="command"))
    return parser.parse_args(["live", *argv])


def test_live_command_headless_preview_falls_back_and_records(indexed_clip: IndexedClip, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> None:
    monkeypatch.delenv("DISPLAY", raising=False)
    monkeypatch.delenv("WAYLAND_DISPLAY", raising=False)
    monkeypatch.setattr("sys.platform", "linux")
    out = tmp_path / "cmd.mp4"
    args = _live_args(["--camera", str(indexed_clip.path), "--preview", "-o", str(out), "--method", "solid", "--no-track", "--stats-interval", "0"])
    assert args.handler(args) == 0
    assert "live:" in capsys.readouterr().err
    assert _assert_recording_covers_faces(out, indexed_clip) > 0


def test_live_command_with_an_injected_preview_quits_on_escape(indexed_clip: IndexedClip) -> None:
    from sdgan_stream.live_cli import _run_live_command

    args = _live_args(["--camera", str(indexed_clip.path), "--loop", "--method", "solid", "--no-track", "--stats-interval", "0"])
    preview = FakePreview(key=27, after=10)
    assert _run_live_command(args, preview=preview) == 0
    assert len(preview.shown) == 10


def test_live_command_help_states_defaults() -> None:
    parser = argparse.ArgumentParser()
    live = add_live_parser(parser.add_subparsers(dest="command"))
    text = live.format_help()
    assert "--camera" in text and "(default: 0)" in text and "--preview" in text


# -- credential masking ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("rtsp://admin:s3cret@10.0.0.5:554/stream1", "rtsp://***@10.0.0.5:554/stream1"),
        ("rtsp://admin@10.0.0.5/stream1", "rtsp://***@10.0.0.5/stream1"),
        ("rtsp://admin:p@ss@cam/x", "rtsp://***@cam/x"),
        ("rtsp://cam/x?channel=1&password=s3cret&user=admin", "rtsp://cam/x?channel=1&password=***&user=***"),
        ("rtsp://cam/x?token=abc#frag", "rtsp://cam/x?token=***#frag"),
        ("rtsp://cam:554/x", "rtsp://cam:554/x"),
        ("lavfi:testsrc2", "lavfi:testsrc2"),
    ],
)
def test_redact_url(url: str, expected: str) -> None:
    assert redact_url(url) == expected


def test_redact_text_masks_every_url_in_a_message() -> None:
    text = "open 'rtsp://a:b@cam/1' failed, then http://u:v@relay/x?key=zzz too"
    masked = redact_text(text)
    assert masked == "open 'rtsp://***@cam/1' failed, then http://***@relay/x?key=*** too"


def test_every_log_line_is_masked(caplog: pytest.LogCaptureFixture) -> None:
    logger = logging.getLogger("sdgan_stream.test_redaction")
    with caplog.at_level(logging.INFO):
        install_log_redaction()
        assert any(isinstance(f, RedactingFilter) for h in logging.getLogger().handlers for f in h.filters)
        logger.info("connecting to %s", "rtsp://bob:hunter2@cam/stream")
        try:
            raise OSError("cannot reach rtsp://bob:hunter2@cam/stream")
        except OSError:
            logger.exception("input lost")
    assert "hunter2" not in caplog.text
    assert "rtsp://***@cam/stream" in caplog.text
    formatted = "\n".join(logging.Formatter().format(r) for r in caplog.records)
    assert "hunter2" not in formatted and "Traceback" in formatted


def test_barcode_round_trip() -> None:
    image = np.full((180, 320, 3), 120, np.uint8)
    for index in (0, 1, 77, 4095):
        stamp_index(image, index)
        assert read_index(image) == index
    assert read_index(np.full((180, 320, 3), 128, np.uint8)) is None
