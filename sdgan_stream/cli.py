"""The ``sdgan-stream`` command line. Every subcommand's help states its defaults."""

from __future__ import annotations

import argparse
import logging
import sys
import threading
from pathlib import Path

from . import __version__
from .bench import add_bench_parser
from .build_engine import add_build_engine_parser
from .cli_options import DEFAULTS as _DEFAULTS
from .cli_options import EXIT_ERROR, EXIT_INTERRUPTED, EXIT_OK, HelpFormatter, add_job_options, options_from_args, run_handler
from .cluster import add_cluster_options, cluster_config_from_args, run_cluster_command
from .config import AnonymizeOptions
from .errors import OutputError, SdganStreamError
from .evaluate import add_evaluate_parser
from .live_cli import add_live_parser, add_rtsp_parser
from .pipeline import stop_on_signals
from .training_cli import add_prepare_data_parser, add_train_parser

log = logging.getLogger("sdgan_stream")

def _add_anonymize(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "anonymize",
        help="anonymize a video file, or every video in a folder",
        formatter_class=HelpFormatter,
        description="Replace every face in a video with an anonymized one. Audio, frame timing and rotation are kept.",
    )
    parser.add_argument("input", type=Path, help="a video file or a folder of videos")
    parser.add_argument("-o", "--output", type=Path, default=None, help="output file (or folder for a folder input); default: <stem>_anonymized.<ext> beside the input")
    add_job_options(parser)
    parser.add_argument("--crf", type=int, default=argparse.SUPPRESS, help=f"x264 quality, lower is better (default: {_DEFAULTS.crf})")
    parser.add_argument("--preset", default=argparse.SUPPRESS, help=f"x264 speed preset (default: {_DEFAULTS.preset})")
    parser.add_argument("--no-audio", action="store_false", dest="audio", default=argparse.SUPPRESS, help="drop the audio instead of copying it")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    add_cluster_options(parser)  # --ray [ADDRESS] and its flags (sdgan_stream/cluster.py)
    parser.set_defaults(handler=_run_anonymize)


def _add_demo(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "demo",
        help="make a short clip of real faces (photos shipped with installed packages) and anonymize it",
        formatter_class=HelpFormatter,
    )
    parser.add_argument("-o", "--output", type=Path, default=Path("demo_anonymized.mp4"), help="anonymized output")
    parser.add_argument("--keep-input", type=Path, default=Path("demo_input.mp4"), help="where the generated input clip is written")
    add_job_options(parser)
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.set_defaults(handler=_run_demo)


def _add_inspect(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "inspect",
        help="write each face's crop, semantic map, replaced region, composite and generated face as PNG",
        formatter_class=HelpFormatter,
        description="For each face: DIR/face_XX/{crop,semantic,mask,composite,generated}.png; DIR/overview.png, "
        "DIR/anonymized.png and DIR/faces.json (box, landmarks, classes in its map, fallback reason).",
    )
    parser.add_argument("image", type=Path, help="a photo (PNG, JPEG, ...)")
    parser.add_argument("-o", "--output", type=Path, required=True, help="folder for the pictures and faces.json")
    parser.add_argument("--thresh", type=float, default=_DEFAULTS.threshold, dest="threshold", help="detection threshold")
    parser.add_argument("--size", type=int, choices=(128, 256), default=None, help="crop size (default: the generator's)")
    parser.add_argument("--weights", default=None, help="generator bundle (default: the starter weights)")
    parser.add_argument("--no-generator", action="store_true", help="geometry only: no generated faces")
    parser.set_defaults(handler=_run_inspect)


def _run_inspect(args: argparse.Namespace) -> int:
    from .detect import CenterFaceDetector
    from .inspect_faces import inspect_image
    from .landmarks import LandmarkDetector

    generator = None
    size = args.size or 128
    if not args.no_generator:
        from .render import SdganRenderer

        renderer = SdganRenderer.from_options(AnonymizeOptions(weights=args.weights))
        generator = renderer.generate_crops
        size = args.size or renderer.config.image_size
        if size != renderer.config.image_size:
            raise SdganStreamError(f"the generator works at {renderer.config.image_size} px; use --size {renderer.config.image_size} or --no-generator")
    records = inspect_image(
        args.image, args.output, detector=CenterFaceDetector(threshold=args.threshold), landmarker=LandmarkDetector(), generator=generator, size=size
    )
    served = sum(1 for r in records if r["fallback"] is None)
    print(f"{args.output}: {len(records)} faces, {served} served, {len(records) - served} covered", file=sys.stderr)
    return EXIT_OK


def _videos_in(folder: Path) -> list[Path]:
    from .io.source import VIDEO_SUFFIXES

    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in VIDEO_SUFFIXES and "_anonymized" not in p.stem)


def _anonymize_one(src: Path, dst: Path | None, options: AnonymizeOptions, *, progress: bool, stop: threading.Event) -> int:
    from .api import anonymize_video

    bar = None

    def start(info) -> None:
        nonlocal bar
        if progress:
            from tqdm import tqdm

            bar = tqdm(total=info.frame_count, unit="frame", desc=src.name, dynamic_ncols=True)

    def written(_frame) -> None:
        if bar is not None:
            bar.update(1)

    try:
        report = anonymize_video(src, dst, options=options, on_start=start, on_frame_written=written, stop_event=stop)
    finally:
        if bar is not None:
            bar.close()
    faces = {k.removeprefix("faces_"): v for k, v in report.stats.items() if k.startswith("faces_")}
    fallbacks = {k.removeprefix("fallback_"): v for k, v in report.stats.items() if k.startswith("fallback_")}
    summary = f"{report.output}: {report.frames} frames, {report.fps:.1f} fps, faces {faces or 0}"
    if fallbacks:
        summary += f", fallbacks {fallbacks}"
    guard = {k.removeprefix("guard_"): v for k, v in report.stats.items() if k.startswith("guard_")}
    if guard:
        summary += f", identity guard {guard}"
    if report.stats.get("generator_reused_faces"):
        summary += f", {report.stats['generator_reused_faces']} generated faces reused (map, region and identity held)"
    if report.stats.get("generator_cached_maps"):
        summary += f", {report.stats['generator_cached_maps']} held maps' modulations reused"
    if report.corrupt_packets:
        summary += f", {report.corrupt_packets} corrupt packets skipped"
    if report.interrupted:
        print(f"interrupted: {summary} (a playable file of the frames done so far)", file=sys.stderr)
        return EXIT_INTERRUPTED
    print(summary, file=sys.stderr)
    return EXIT_OK


def _run_anonymize(args: argparse.Namespace) -> int:
    # SIGINT/SIGTERM set this flag; the job stops at the next frame and finalizes a playable output (exit 130).
    stop = threading.Event()
    with stop_on_signals(stop):
        return _anonymize_paths(args, options_from_args(args), stop)


def _anonymize_paths(args: argparse.Namespace, options: AnonymizeOptions, stop: threading.Event) -> int:
    src: Path = args.input
    cluster = cluster_config_from_args(args)
    if cluster is not None:  # --ray: the same jobs, spread over Ray actors
        return run_cluster_command(args, options, cluster, _videos_in(src) if src.is_dir() else [src], stop)
    if src.is_dir():
        videos = _videos_in(src)
        if not videos:
            print(f"error: no video files in {src}", file=sys.stderr)
            return EXIT_ERROR
        out_dir = args.output
        if out_dir is not None:
            try:
                out_dir.mkdir(parents=True, exist_ok=True)
            except OSError as error:  # a file of that name, or a folder that cannot be made
                raise OutputError(f"cannot use {out_dir} as the output folder: {error.strerror or error}") from error
        status = EXIT_OK
        for video in videos:
            dst = out_dir / f"{video.stem}_anonymized{video.suffix}" if out_dir else None
            try:
                code = _anonymize_one(video, dst, options, progress=not args.no_progress, stop=stop)
            except SdganStreamError as error:
                print(f"error: {error}", file=sys.stderr)
                code = EXIT_ERROR
            if code == EXIT_INTERRUPTED:
                return code
            status = max(status, code)
        return status
    return _anonymize_one(src, args.output, options, progress=not args.no_progress, stop=stop)


def _run_demo(args: argparse.Namespace) -> int:
    from .samples import make_face_clip

    clip = make_face_clip(args.keep_input, width=1280, height=720, frames=75, faces=3)
    print(f"demo input: {clip.path} ({clip.width}x{clip.height}, {clip.frame_count} frames, 3 faces, with audio)", file=sys.stderr)
    stop = threading.Event()
    with stop_on_signals(stop):
        return _anonymize_one(clip.path, args.output, options_from_args(args), progress=not args.no_progress, stop=stop)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="sdgan-stream",
        description="Replace every face in a video with a generated face of a different identity.",
        formatter_class=HelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more log output (-v: info from all libraries, -vv: debug)")
    parser.add_argument("-q", "--quiet", action="store_true", help="only warnings and errors")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    _add_anonymize(subparsers)
    _add_demo(subparsers)
    _add_inspect(subparsers)
    add_bench_parser(subparsers)
    add_evaluate_parser(subparsers)
    add_live_parser(subparsers)
    add_rtsp_parser(subparsers)
    add_prepare_data_parser(subparsers)
    add_train_parser(subparsers)
    add_build_engine_parser(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    try:
        parser = build_parser()  # imports the sub-commands' modules: a second or so in which Ctrl-C may land
        args = parser.parse_args(argv)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    # Our own set-up lines (which detector provider, which generator backend) are shown by default.
    logging.basicConfig(level=logging.DEBUG if args.verbose > 1 else logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    log.setLevel(logging.WARNING if args.quiet else logging.DEBUG if args.verbose > 1 else logging.INFO)
    return run_handler(args)


if __name__ == "__main__":
    sys.exit(main())


