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

from .anonymize import CoverRenderer, FaceRenderer, FrameAnonymizer
from .config import AnonymizeOptions
from .detect import CenterFaceDetector
from .detect_passes import FaceDetector, MultiPassDetector
from .errors import OutputError
from .io.sink import VideoFileSink, output_path_for
from .io.source import VideoFileSource
from .pipeline import run_pipeline
from .types import VideoFrame, VideoInfo

log = logging.getLogger(__name__)

__all__ = ["JobReport", "anonymize_video", "build_anonymizer", "build_detector", "build_renderer"]


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


def build_detector(options: AnonymizeOptions, *, intra_op_threads: int = 0) -> MultiPassDetector:
    """The job's detector: CenterFace (or SCRFD with ``detector_model``) run as the passes the options ask for."""
    # With tracking, the detector reports weak faces too; the tracker shows only confident ones and
    # uses the weak ones to keep existing tracks alive (blur, partial occlusion).
    threshold = options.low_threshold if options.track else options.threshold
    network: FaceDetector
    if options.detector_model:
        from .detect_scrfd import ScrfdDetector

        network = ScrfdDetector(options.detector_model, threshold=threshold, provider=options.detector_provider,
                                intra_op_threads=intra_op_threads)
    else:
        network = CenterFaceDetector(threshold=threshold, detect_size=None, provider=options.detector_provider,
                                     intra_op_threads=intra_op_threads)
    return MultiPassDetector(network, detect_size=options.detect_size, tile_size=options.tile_size, border=options.border,
                             rotation_every=options.rotation_every)


def build_renderer(options: AnonymizeOptions) -> FaceRenderer:
    if options.method == "sdgan":
        from .render import SdganRenderer  # heavy imports (torch) only when the generator is used

        return SdganRenderer.from_options(options)
    return CoverRenderer(method=options.method, margin=options.cover_margin)


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
    return FrameAnonymizer(
        detector=detector or build_detector(options),
        renderer=renderer or build_renderer(options),
        tracker=tracker,
        lookback=lookback,
        display_threshold=options.threshold,
        rotation=info.rotation,
        fallback_cover=options.fallback,  # type: ignore[arg-type]
    )


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
    **overrides: object,
) -> JobReport:
    """Anonymize one video file; returns a :class:`JobReport`.

    ``dst`` defaults to ``<stem>_anonymized.<ext>`` beside ``src``. Keyword ``overrides`` are
    :class:`AnonymizeOptions` fields (``method="blur"``, ``threshold=0.3``...). Setting ``stop_event``
    (or Ctrl-C) ends the job early with a playable output of the frames done so far.
    Raises :class:`InputError` / :class:`OutputError` with a one-line reason.
    """
    options = (options or AnonymizeOptions()).with_overrides(**overrides)
    src = Path(src)
    dst = Path(dst) if dst is not None else output_path_for(src)
    if dst.resolve() == src.resolve():
        raise OutputError(f"output would overwrite the input: {dst}")
    with VideoFileSource(src) as source:
        info = source.info
        anonymizer = build_anonymizer(options, info, detector=detector, renderer=renderer)
        audio_from = src if (options.audio and source.has_audio) else None
        sink = VideoFileSink(dst, info, crf=options.crf, preset=options.preset, audio_from=audio_from)
        if on_start is not None:
            on_start(info)
        try:
            result = run_pipeline(source.frames(stop_event), anonymizer, sink, stop_event=stop_event, on_frame_written=on_frame_written)
        except BaseException:
            sink.abort()  # what was written stays a playable file
            raise
        sink.close(complete=not result.interrupted)
    log.info("wrote %s: %d frames in %.1f s (%.1f fps)", dst, result.frames_out, result.seconds, result.fps)
    return JobReport(
        input=src,
        output=dst,
        frames=result.frames_out,
        interrupted=result.interrupted,
        seconds=result.seconds,
        fps=result.fps,
        audio_packets=sink.audio_packets_copied,
        corrupt_packets=source.corrupt_packets,
        stats=dict(anonymizer.stats),
    )


