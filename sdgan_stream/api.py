"""Python API: anonymize a video file the way the ``sdgan-stream anonymize`` command does.

>>> from sdgan_stream import anonymize_video
>>> # report = anonymize_video("clip.mp4", "clip_anonymized.mp4", method="pixelate")
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from .anonymize import CoverRenderer, FaceRenderer, FrameAnonymizer
from .config import AnonymizeOptions
from .detect import CenterFaceDetector, select_providers
from .detect_passes import FaceDetector, MultiPassDetector
from .errors import OutputError
from .io.sink import VideoFileSink, output_path_for, same_file
from .io.source import VideoFileSource
from .pipeline import run_pipeline
from .types import VideoFrame, VideoInfo

if TYPE_CHECKING:
    from .exempt import ExemptFaces
    from .io.segments import Segment

log = logging.getLogger(__name__)

__all__ = ["JobReport", "anonymize_video", "build_anonymizer", "build_detector", "build_renderer", "close_renderer"]


@dataclass
class JobReport:
    """What one job did: counts, timings and per-method face statistics."""

    input: Path
    output: Path
    frames: int
    interrupted: bool
    seconds: float
    fps: float
    audio_packets: int
    corrupt_packets: int
    stats: dict[str, int] = field(default_factory=dict)


def build_detector(options: AnonymizeOptions, *, intra_op_threads: int = 0, live: bool = False) -> MultiPassDetector:
    """The job's detector: CenterFace (or SCRFD with ``detector_model``) run as the passes the options ask for.
    A live source's detector looks at the whole frame on every frame (it has no look-back to cover a late find)."""
    # With tracking, the detector reports weak faces too; the tracker shows only confident ones and
    # uses the weak ones to keep existing tracks alive (blur, partial occlusion).
    threshold = options.low_threshold if options.track else options.threshold
    network: FaceDetector
    if options.detector_model:
        from .detect_scrfd import ScrfdDetector

        network = ScrfdDetector(options.detector_model, threshold=threshold, provider=options.detector_provider,
                                intra_op_threads=intra_op_threads)
        side_by_side = 1  # loaded through insightface's zoo, its SCRFD object is not known to be thread-safe
    else:
        network = CenterFaceDetector(threshold=threshold, detect_size=None, provider=options.detector_provider,
                                     intra_op_threads=intra_op_threads, precision=detector_precision(options))
        side_by_side = pass_threads(intra_op_threads)  # one onnxruntime session, safe to run from several threads
    # A live filter slower than its source drops frames: it looks through the pyramid every other frame (blur at
    # 640x360 through RTSP servers: every frame 18.4 fps published, no pyramid 24.5; README).
    return MultiPassDetector(network, detect_size=options.detect_size, tile_size=options.tile_size, border=options.border,
                             pyramid=options.pyramid, pyramid_every=2 if live else 1, rotation_every=options.rotation_every,
                             whole_every=1 if live else whole_frame_every(options), around_min_score=options.threshold,
                             pass_threads=side_by_side)


def pass_threads(intra_op_threads: int) -> int:
    """How many of a frame's detector passes run at once: as many as the network's threads fit the physical
    cores. A network on fewer threads than cores (``detector_threads``: ``--method sdgan`` on the CPU) runs a
    frame's scheduled turn beside its upright pass: on the 720p benchmark clip (``benchmarks/bench_threads.py
    --method sdgan --set seed=0``, 5 runs each, alternated) 4.98 -> 5.14 fps median (4.62-5.18 -> 5.13-5.18) and
    1.73 -> 1.86 cores busy, for 3% more CPU per frame (two passes at once slow each other);
    ``benchmarks/results/pass_threads_ab_s10.json``."""
    if not intra_op_threads:
        return 1  # each pass already takes every core
    from .backends.base import physical_cores

    return max(1, physical_cores() // intra_op_threads)


def whole_frame_every(options: AnonymizeOptions) -> int:
    """Frames between two whole-frame looks for a file job: the option, or 1 without tracking or look-back
    (nothing would cover a face found late)."""
    if not options.track or options.lookback_seconds <= 0:
        return 1
    return options.whole_frame_every


def detector_precision(options: AnonymizeOptions) -> str:
    """CenterFace's precision for this job: ``auto`` is int8 when the detector runs on the CPU provider."""
    if options.detector_precision != "auto":
        return options.detector_precision
    return "int8" if select_providers(options.detector_provider)[0] == "CPUExecutionProvider" else "fp32"


def detector_threads(options: AnonymizeOptions) -> int:
    """onnxruntime threads for a file job's detector; 0 = one per core.

    With ``--method sdgan`` on the CPU in the parallel pipeline, rendering (generator, guard, paste) is the
    slower stage and runs beside the detector's thread: the detector gets half the cores, so that it
    does not take time from the renderer. Measured on the 2-core machine (720p, 4 faces, 120 frames,
    spinning off): 1 detector thread 3.9-4.1 fps, 2 threads 3.6-3.7. Covers are detection-bound
    and keep every core (blur: 2 threads 8.0 fps, 1 thread 6.4)."""
    if options.method != "sdgan" or not options.parallel:
        return 0
    from .backends.base import physical_cores, resolve_device

    return max(1, physical_cores() // 2) if resolve_device(options.device) == "cpu" else 0


def _generator_counts(renderer: object) -> dict[str, int]:
    """Running counts of the generator's saved work: faces served again whole (the renderer's output hold) and
    faces whose map's half of the network came from the backend's cache (``generator_cached_maps``)."""
    return {"generator_reused_faces": getattr(renderer, "reused_faces", 0),
            "generator_cached_maps": getattr(getattr(renderer, "backend", None), "map_cache_hits", 0)}


def guard_draws_per_frame(options: AnonymizeOptions, *, live: bool = False) -> int:
    """New tracks' identity draws per frame (0: no limit): the option, or no limit for files and one for a
    live source, where a draw's time (~0.4 s a face on a CPU) stalls the stream."""
    if options.guard_draws_per_frame is not None:
        return options.guard_draws_per_frame
    return 1 if live else 0


def build_renderer(options: AnonymizeOptions, *, live: bool = False) -> FaceRenderer:
    if options.method == "sdgan":
        from .render import SdganRenderer  # heavy imports (torch) only when the generator is used

        return SdganRenderer.from_options(options, draws_per_frame=guard_draws_per_frame(options, live=live))
    return CoverRenderer(method=options.method, margin=options.cover_margin)


def close_renderer(renderer: FaceRenderer) -> None:
    """Release what a renderer holds (a generator backend's worker threads); never raises, so that an
    error being handled is the one the user sees."""
    close = getattr(renderer, "close", None)
    if close is None:
        return
    try:
        close()
    except Exception:  # releasing resources at the end of a job must not replace its outcome
        log.warning("closing the %s renderer failed", getattr(renderer, "name", "face"), exc_info=True)


def build_anonymizer(
    options: AnonymizeOptions,
    info: VideoInfo,
    *,
    live: bool = False,
    detector: FaceDetector | None = None,
    renderer: FaceRenderer | None = None,
) -> FrameAnonymizer:
    """The stage chain for one stream. Live streams get no look-back (it would add latency)."""
    tracker = lookback = None
    if options.track:
        from .lookback import LookbackBuffer
        from .track import FaceTracker

        tracker = FaceTracker(
            fps=info.fps,
            max_age=max(1, round(options.max_age_seconds * info.fps)),
            high_threshold=options.threshold,
            low_threshold=options.low_threshold,
            seed=options.seed,
        )
        frames_back = 0 if live else round(options.lookback_seconds * info.fps)
        lookback = LookbackBuffer(max_frames=frames_back) if frames_back > 0 else None
    if detector is not None and hasattr(detector, "reset"):
        detector.reset()  # one handed in may have seen another stream: its schedule and followed faces start again
    detector = detector or build_detector(options, intra_op_threads=detector_threads(options), live=live)
    # A face found late is covered in the frames before only by the look-back, which must reach them (a
    # detector built for a file job handed to a live one, or a look-back shorter than a frame).
    covered = lookback.max_frames + 1 if lookback is not None else 1
    if getattr(detector, "whole_every", 1) > covered:
        log.warning("the whole frame is searched on every frame: the look-back covers %d frame(s), fewer than "
                    "whole_frame_every (%d) needs", covered - 1, detector.whole_every)  # type: ignore[union-attr]
        detector.whole_every = 1  # type: ignore[union-attr]
    return FrameAnonymizer(
        detector=detector,
        renderer=renderer or build_renderer(options),
        tracker=tracker,
        lookback=lookback,
        display_threshold=options.threshold,
        rotation=info.rotation,
        fallback_cover=options.fallback,  # type: ignore[arg-type]
        exempt=build_exempt_list(options, detector) if options.keep_faces else None,
    )


def build_exempt_list(options: AnonymizeOptions, detector: CenterFaceDetector) -> ExemptFaces:
    """The --keep-faces stage: photos embedded with the guard's recognizer (errors before any frame is written)."""
    from .exempt import ExemptFaces
    from .identity_guard import load_recognizer
    from .landmarks import LandmarkDetector

    recognizer = load_recognizer(options.recognizer, options.recognizer_model)
    return ExemptFaces.from_folder(options.keep_faces, recognizer, detector=detector, landmarker=LandmarkDetector())


def anonymize_video(
    src: str | Path,
    dst: str | Path | None = None,
    *,
    options: AnonymizeOptions | None = None,
    stop_event: threading.Event | None = None,
    on_frame_written: Callable[[VideoFrame], None] | None = None,
    on_start: Callable[[VideoInfo], None] | None = None,
    detector: FaceDetector | None = None,
    renderer: FaceRenderer | None = None,
    segment: Segment | None = None,
    **overrides: object,
) -> JobReport:
    """Anonymize one video file; returns a :class:`JobReport`.

    ``dst`` defaults to ``<stem>_anonymized.<ext>`` beside ``src``. Keyword ``overrides`` are
    :class:`AnonymizeOptions` fields (``method="blur"``, ``threshold=0.3``...). Setting ``stop_event``
    (or Ctrl-C) ends the job early with a playable output of the frames done so far.
    ``segment`` (cluster runs, :mod:`sdgan_stream.io.segments`) writes only that piece of the video,
    without audio, for a later packet-level join.
    Raises :class:`InputError` / :class:`OutputError` with a one-line reason.
    """
    options = (options or AnonymizeOptions()).with_overrides(**overrides)
    src = Path(src)
    dst = Path(dst) if dst is not None else output_path_for(src)
    if same_file(src, dst):  # a symlink or a hard link to the input too
        raise OutputError(f"output would overwrite the input: {dst}")
    # One event stops both the reading (at the next frame) and the pipeline; the CLI sets it from signals.
    stop = stop_event or threading.Event()
    with VideoFileSource(src) as source:
        info = source.info
        owned_renderer = renderer is None
        renderer = renderer or build_renderer(options)
        counts_before = _generator_counts(renderer)  # a renderer handed in may have served other videos
        try:
            anonymizer = build_anonymizer(options, info, detector=detector, renderer=renderer)
            audio_from = src if (options.audio and source.has_audio and segment is None) else None
            sink = VideoFileSink(dst, info, crf=options.crf, preset=options.preset, audio_from=audio_from, colour=source.colour)
            frames, target = source.frames(stop), sink
            if segment is not None:  # decode the segment with its overlap, write only its own frames
                from .io.segments import SegmentSink

                frames, target = segment.read(source, stop), SegmentSink(sink, segment, on_frame_written)
                on_frame_written = None
            try:
                if on_start is not None:
                    on_start(info)
                result = run_pipeline(frames, anonymizer, target, stop_event=stop,
                                      on_frame_written=on_frame_written, parallel=options.parallel)
            except BaseException:
                sink.abort()  # what was written stays a playable file
                raise
            if sink.frames_written == 0:
                sink.abort()  # stopped before the first frame: no output rather than an unplayable one
            else:
                sink.close(complete=not result.interrupted)
        finally:
            if owned_renderer:
                close_renderer(renderer)
    fps = sink.frames_written / result.seconds if result.seconds > 0 else 0.0  # a segment's overlap frames not counted
    log.info("wrote %s: %d frames in %.1f s (%.1f fps)", dst, sink.frames_written, result.seconds, fps)
    stats = dict(anonymizer.stats)
    guard = getattr(anonymizer.renderer, "guard", None)  # the sdgan renderer's identity guard, when on
    if guard is not None:
        stats.update({f"guard_{name}": count for name, count in guard.counts.items()})
    for name, count in _generator_counts(anonymizer.renderer).items():
        if count > counts_before[name]:
            stats[name] = count - counts_before[name]
    return JobReport(
        input=src,
        output=dst,
        frames=sink.frames_written,
        interrupted=result.interrupted,
        seconds=result.seconds,
        fps=fps,
        audio_packets=sink.audio_packets_copied,
        corrupt_packets=source.corrupt_packets,
        stats=stats,
    )


