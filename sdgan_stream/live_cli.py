"""The ``live`` and ``rtsp`` commands: their options, their one-line failures and summaries.

The jobs themselves (sources, sinks, the stage chain) are in :mod:`sdgan_stream.live`; this module
only turns parsed arguments into those calls, so that ``cli.py`` imports the commands without the
job module importing the command line back.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

from .errors import SdganStreamError
from .io.rtsp import EncoderSettings
from .live import LiveReport, OpenCvPreview, PreviewSink, display_available, run_live, run_rtsp_filter
from .pipeline import stop_on_signals
from .redact import install_log_redaction, redact_text, redact_url

log = logging.getLogger(__name__)

__all__ = ["LiveJobError", "add_live_parser", "add_rtsp_parser"]


def _stderr_line(prefix: str) -> Callable[[str], None]:
    def emit(line: str) -> None:
        print(f"{prefix}: {redact_text(line)}", file=sys.stderr, flush=True)

    return emit


def _summary(name: str, report: LiveReport) -> str:
    latency = (
        f", latency p50 {report.latency_ms_p50:.0f} ms p95 {report.latency_ms_p95:.0f} ms p99 {report.latency_ms_p99:.0f} ms"
        if report.latency_ms_p50 is not None and report.latency_ms_p95 is not None and report.latency_ms_p99 is not None
        else ""
    )
    faces = {k.removeprefix("faces_"): v for k, v in report.stats.items() if k.startswith("faces_")}
    text = (
        f"{name}: {report.seconds:.1f} s, in {report.frames_in} frames ({report.input_fps:.1f} fps), "
        f"out {report.frames_out} ({report.output_fps:.1f} fps), dropped {report.frames_dropped} stale (newest-frame policy){latency}, "
        f"reconnects {report.reconnects}, faces {faces or 0}"
    )
    if report.repeated or report.neutral:
        text += f", fill frames {report.repeated} repeated/{report.neutral} neutral"
    return text


class LiveJobError(SdganStreamError):
    """A live or RTSP job stopped because of an error; the message is one line saying why."""


@contextlib.contextmanager
def _failure_in_one_line(job: str) -> Iterator[None]:
    """Any error ending a live job becomes one line on stderr and exit status 1 (``run_handler``), so
    that a supervisor (systemd ``Restart=on-failure``) restarts it; the traceback is logged at debug."""
    try:
        yield
    except SdganStreamError:
        raise
    except Exception as error:
        log.debug("%s failed", job, exc_info=True)
        reason = (str(error).strip().splitlines() or [""])[0]
        raise LiveJobError(f"{job} stopped: {type(error).__name__}: {reason}" if reason else f"{job} stopped: {type(error).__name__}") from error


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
            "masked in every log line. SIGINT/SIGTERM stop cleanly (exit 0); an error that ends the filter (the "
            "detector failing on every frame, ...) exits 1 with one line saying why, for a supervisor to restart it."
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
            "q or Esc in the preview window, Ctrl-C or SIGTERM stop cleanly (exit 0); an error that ends the run "
            "exits 1 with one line saying why."
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
    with stop_on_signals(stop), _failure_in_one_line("rtsp filter"):
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
    with stop_on_signals(stop), _failure_in_one_line("live"):
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
