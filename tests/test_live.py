"""Live mode: sources (lavfi realtime, a paced face clip as a webcam stand-in), newest-frame policy,
reconnect with backoff, the headless preview path, recording, the ``live`` command, URL redaction."""

from __future__ import annotations

import argparse
import logging
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from sdgan_stream.errors import InputError
from sdgan_stream.io.live import Backoff, LiveSource, parse_camera
from sdgan_stream.live import (
    LiveViewSink,
    add_live_parser,
    display_available,
    draw_overlay,
    is_quit_key,
    run_live,
    stop_on_signals,
)
from sdgan_stream.redact import RedactingFilter, install_log_redaction, redact_text, redact_url
from sdgan_stream.types import VideoFrame

from .conftest import read_frames
from .live_support import GroundTruth, IndexedClip, make_indexed_clip, read_index, stamp_index

COVERS = dict(method="pixelate", track=False)
LAVFI = "lavfi:testsrc2=size=320x180:rate=25,realtime"


@pytest.fixture(scope="module")
def indexed_clip(tmp_path_factory: pytest.TempPathFactory) -> IndexedClip:
    """320x180, 25 fps, 4 s, two real faces, frame index stamped in a corner."""
    return make_indexed_clip(tmp_path_factory.mktemp("live") / "indexed.mp4", frames=100)


class FakePreview:
    """Headless preview: records what would be shown, presses ``key`` after ``after`` frames."""

    def __init__(self, *, key: int = ord("q"), after: int | None = None) -> None:
        self.shown: list[np.ndarray] = []
        self.key, self.after = key, after
        self.closed = False

    def show(self, image: np.ndarray) -> int:
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


def test_newest_frame_policy_drops_and_counts_stale_frames() -> None:
    with LiveSource(LAVFI) as source:
        assert source.wait_ready(timeout=30) is not None
        stop = threading.Event()
        taken = []
        for frame in source.frames(stop):
            taken.append(frame)
            time.sleep(0.2)  # a slow consumer: ~5 frames arrive per frame taken
            if len(taken) == 6:
                break
        dropped = source.stats.dropped
    gaps = np.diff([f.index for f in taken[1:]])
    assert (gaps >= 2).all(), gaps  # stale frames were skipped, not queued
    assert dropped >= 10
    # the frame handed out is the newest one: it was captured just before it was taken
    assert time.monotonic() - taken[-1].capture_time < 1.0


def test_a_source_that_is_down_retries_with_backoff_until_stopped() -> None:
    source = LiveSource("rtsp://user:pw@127.0.0.1:9/none", backoff=Backoff(initial=0.05, maximum=0.2), open_timeout=2, read_timeout=2).start()
    try:
        stop = threading.Event()
        assert source.wait_ready(stop, timeout=1.5) is None
        assert source.stats.failures >= 3 and not source.stats.connected and source.running
        assert "pw" not in source.stats.last_error and "***@" in source.stats.last_error
        stopper = threading.Timer(0.3, stop.set)
        stopper.start()
        started = time.monotonic()
        assert list(source.frames(stop)) == []
        assert time.monotonic() - started < 5
    finally:
        source.close()


def test_a_camera_that_cannot_open_is_an_error() -> None:
    source = LiveSource("lavfi:nosuchfilter=1").start()
    with pytest.raises(InputError, match="cannot open"):
        source.wait_ready(timeout=30)
    source.close()
    webcam = LiveSource("rtsp://127.0.0.1:9/x", retry_first_open=False, open_timeout=2).start()
    with pytest.raises(InputError):
        webcam.wait_ready(timeout=30)
    webcam.close()


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
        assert stop.is_set() == (i == 2)
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
    assert lines and "fps" in lines[0] and "latency" in lines[0]
    assert _assert_recording_covers_faces(out, indexed_clip) >= 2 * 30
    # recorded timestamps follow capture time: ~real time even when frames were dropped
    _, pts, tb = read_frames(out)
    span = float((pts[-1] - pts[0]) * tb)
    assert 0.9 * (len(pts) - 1) / 25 <= span <= report.seconds


def test_live_ends_with_its_source_and_reports(indexed_clip: IndexedClip) -> None:
    report = run_live(str(indexed_clip.path), stats_interval=0, **COVERS)
    assert not report.interrupted
    assert report.frames_in == 100  # a file source plays once, every frame captured
    assert report.frames_out + report.frames_dropped == 100
    assert report.stats.get("faces_pixelate", 0) > 0


def test_live_stops_on_duration_with_lavfi() -> None:
    started = time.monotonic()
    report = run_live(LAVFI, duration=2.0, stats_interval=0, **COVERS)
    assert report.interrupted and report.frames_out > 10
    assert time.monotonic() - started < 30


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
    from sdgan_stream.live import _run_live_command

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
