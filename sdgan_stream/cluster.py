"""Anonymize a collection of videos on Ray: ``sdgan-stream anonymize DIR -o OUT --ray [ADDRESS]``.

Thin on purpose: each unit of work is one call of the same :func:`~sdgan_stream.api.anonymize_video`
a single run makes, on a whole video or on a keyframe-aligned segment of a long one
(:mod:`sdgan_stream.io.segments`). Ray does the rest, the way Ray Data's actor-pool ``map_batches``
does: a pool of actors that load the models once each (``num_gpus`` per actor where the cluster has
GPUs), a unit handed to whichever actor is free (``ray.util.ActorPool``), and an actor killed
mid-unit restarted with its unit retried (``max_restarts=-1``, ``max_task_retries``). There is no
queue, scheduler or retry loop of our own. (Ray Data itself would add pandas and pyarrow to turn a
list of file names into table rows; Ray Core gives the same actor pool without them.)

Nothing half-written ever carries a final name: a unit writes to a hidden temporary name and
renames it when complete; a segmented video's parts are joined (packets copied, nothing
re-encoded) into a temporary file renamed at the end. A rerun skips videos whose output exists and
segments whose part exists (the parts folder is keyed by the input file and the options).

Identity: a whole video keeps one fake identity per person, as a single run does, including a person
who leaves the frame and comes back (the identity ledger, :mod:`sdgan_stream.identity_ledger`), and
ACROSS the cuts of a segmented video (:mod:`sdgan_stream.segment_identities`): with ``--method sdgan``
(and the identity guard on, no ``--keep-faces``) a segmented video runs in two phases. First one
"analyse" unit per segment (same actors, no generator) stores the segment's detections, tracks'
boxes and original-face embeddings in the parts folder; when all of a video's analyses are done its
render units start: each groups the tracks of all segments (overlap boxes, strict re-entry match;
every unit computes the same grouping from the same files), replays its stored detections, and hands
the identity guard each grouped track's shared identity, which the guard verifies on this segment's
own face like any identity (a failure draws or covers: fail-closed). Each segment's tracker seed
derives from the video's seed and the segment number, so a rerun of the same command (with
``--seed``) makes the same analyses, groups and identity candidates. Cover methods need no
identities and run one phase, as before.

On a cluster every node needs this package installed, and the inputs and outputs on a file system
all nodes see under the same path.
"""

from __future__ import annotations

import argparse
import hashlib
import logging
import os
import secrets
import shutil
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .config import AnonymizeOptions
from .errors import SdganStreamError
from .segment_identities import ReplayDetector, SegmentAnalysis, analyse_segment, group_tracks, needs_identity_phase

if TYPE_CHECKING:
    from .io.segments import Segment

log = logging.getLogger(__name__)

__all__ = [
    "ClusterConfig",
    "ClusterReport",
    "Progress",
    "VideoJob",
    "add_cluster_options",
    "run_cluster",
    "run_cluster_command",
    "temporary_path",
]

INSTALL_HINT = "--ray needs the ray package: pip install 'sdgan-stream[cluster]'"


@dataclass(frozen=True)
class ClusterConfig:
    """How the work is spread; every field has a CLI flag (see :func:`add_cluster_options`)."""

    address: str | None = None  # None: a local Ray instance on this machine; 'auto', 'ray://host:port': join one
    workers: int | None = None  # actors; None: as many as the cluster's GPUs (or CPUs) allow
    cpus_per_worker: float = 1.0
    gpus_per_worker: float | None = None  # None: 1 when the cluster has GPUs, else 0; 0.5 = two actors per GPU
    segment_seconds: float = 90.0  # videos longer than 1.5x this are cut at keyframes; 0: whole videos only
    max_task_retries: int = 3  # a unit whose worker dies is run again this many times
    worker_logs: bool = False  # forward the workers' log lines to this console

    def __post_init__(self) -> None:
        if self.workers is not None and self.workers < 1:
            raise ValueError(f"workers must be at least 1, got {self.workers}")
        if self.cpus_per_worker <= 0 or (self.gpus_per_worker is not None and self.gpus_per_worker < 0):
            raise ValueError("CPUs per worker must be positive and GPUs per worker not negative")
        if self.segment_seconds < 0:
            raise ValueError(f"segment seconds must be >= 0, got {self.segment_seconds}")


@dataclass(frozen=True)
class VideoJob:
    src: Path
    dst: Path


@dataclass(frozen=True)
class WorkUnit:
    """One call of ``anonymize_video``: a whole video, or one segment of it."""

    key: str
    video: int  # index into the job list
    src: Path
    out: Path  # final name of what it writes: the video's output, or one of its parts
    segment: Segment | None
    seed: int | None  # tracker seed (identities); None: the options' own
    frames: int  # frames it writes, for the progress bar (0: unknown)
    # Identities across cuts (:mod:`sdgan_stream.segment_identities`): an "analyse" unit writes the segment's
    # analysis to ``out``; a "render" unit with ``analyses`` (every segment's, in order) replays its own
    # segment's detections and proposes the identities the grouping of all of them gives.
    kind: str = "render"
    analyses: tuple[Path, ...] = ()


@dataclass(frozen=True)
class VideoPlan:
    video: int
    units: tuple[WorkUnit, ...] = ()  # still to run (finished parts of an earlier run are not)
    parts: tuple[Path, ...] = ()  # every part in order; empty when the video is one unit
    skipped: bool = False  # its output exists already
    deferred: tuple[WorkUnit, ...] = ()  # render units that wait for all of ``units`` (the analyses)
    error: str | None = None


@dataclass
class UnitResult:
    key: str
    video: int
    frames: int = 0
    seconds: float = 0.0
    stats: dict[str, int] = field(default_factory=dict)
    error: str | None = None


@dataclass
class VideoSummary:
    src: Path
    dst: Path
    status: str = "pending"  # done | skipped | failed | interrupted
    frames: int = 0
    parts: int = 1
    seconds: float = 0.0  # worker time, summed over its units
    stats: dict[str, int] = field(default_factory=dict)
    error: str | None = None


@dataclass(frozen=True)
class Progress:
    """What the progress bar shows; ``units`` maps a running or finished unit to (frames written, worker)."""

    videos_done: int
    videos_total: int
    frames_done: int
    frames_total: int
    seconds: float
    units: dict[str, tuple[int, str]]


@dataclass
class ClusterReport:
    videos: list[VideoSummary]
    seconds: float
    workers: int
    interrupted: bool = False  # stopped early (signal); unfinished videos have no output, finished parts stay

    @property
    def failed(self) -> list[VideoSummary]:
        return [v for v in self.videos if v.status == "failed"]

    def table(self) -> str:
        """The summary printed at the end of a run, one row per video and a total."""
        rows = [("video", "status", "frames", "parts", "seconds", "fps", "faces", "fallbacks")]
        for v in self.videos:
            faces = sum(n for k, n in v.stats.items() if k.startswith("faces_"))
            fallbacks = sum(n for k, n in v.stats.items() if k.startswith("fallback_"))
            fps = f"{v.frames / v.seconds:.1f}" if v.seconds > 0 else "-"
            rows.append((v.src.name, v.status, str(v.frames), str(v.parts), f"{v.seconds:.1f}", fps, str(faces), str(fallbacks)))
        widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
        lines = ["  ".join(c.ljust(w) if i < 2 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths))) for r in rows]
        lines += [f"  {v.src.name}: {v.error}" for v in self.videos if v.error]
        counts = {s: sum(v.status == s for v in self.videos) for s in ("done", "skipped", "failed", "interrupted")}
        frames = sum(v.frames for v in self.videos)
        lines.append(
            f"{len(self.videos)} videos: {counts['done']} done, {counts['skipped']} skipped, {counts['failed']} failed"
            f"{', %d interrupted' % counts['interrupted'] if counts['interrupted'] else ''}; "
            f"{frames} frames in {self.seconds:.1f} s wall ({frames / self.seconds if self.seconds > 0 else 0:.1f} fps) "
            f"on {self.workers} workers"
        )
        return "\n".join(lines)


def temporary_path(final: Path) -> Path:
    """Where ``final`` is written until it is complete (hidden, same folder, so the rename is atomic)."""
    return final.with_name(f".{final.stem}.partial{final.suffix}")


def overlap_frames(options: AnonymizeOptions, fps: float) -> int:
    """Frames a segment decodes beyond each of its ends: a lost track's prediction and the look-back
    must reach across the cut, plus a second for the tracker to settle."""
    return round((options.max_age_seconds + options.lookback_seconds + 1.0) * fps)


def segment_seed(base: int, index: int) -> int:
    """The tracker seed of segment ``index`` of a video whose seed is ``base`` (31-bit)."""
    import numpy as np

    return int(np.random.SeedSequence(base, spawn_key=(index,)).generate_state(1)[0] & 0x7FFFFFFF)


def _parts_folder(job: VideoJob, options: AnonymizeOptions, segment_seconds: float) -> Path:
    """Hidden folder of a video's parts, keyed by the input file and everything that shapes the output,
    so a rerun reuses parts only when they would come out the same."""
    stat = job.src.stat()
    key = repr((str(job.src.resolve()), stat.st_size, stat.st_mtime_ns, options, segment_seconds))
    return job.dst.with_name(f".{job.dst.stem}.parts-{hashlib.sha256(key.encode()).hexdigest()[:12]}")


def plan_video(video: int, job: VideoJob, options: AnonymizeOptions, segment_seconds: float) -> VideoPlan:
    """Which units a video needs: none (output exists), one whole-video unit, or its missing segments."""
    from .io.segments import plan_segments, read_index
    from .io.source import VideoFileSource

    if job.dst.exists():
        return VideoPlan(video, skipped=True)
    try:
        job.dst.parent.mkdir(parents=True, exist_ok=True)
        with VideoFileSource(job.src) as source:  # the same clear errors as a single run, before any work
            info = source.info
        seconds = info.frame_count / info.fps if info.frame_count else float("inf")
        index = read_index(job.src) if segment_seconds > 0 and seconds > 1.5 * segment_seconds else None
        segments = []
        if index is not None:
            fps = (len(index.pts) - 1) / index.seconds if index.seconds > 0 else info.fps
            segments = plan_segments(index, segment_seconds=segment_seconds, overlap_frames=overlap_frames(options, fps))
        if len(segments) <= 1:
            frames = len(index.pts) if index is not None else info.frame_count or 0
            return VideoPlan(video, units=(WorkUnit(f"{video}", video, job.src, job.dst, None, options.seed, frames),))
        folder = _parts_folder(job, options, segment_seconds)
        for stale in job.dst.parent.glob(f".{job.dst.stem}.parts-*"):
            if stale != folder:  # parts made with other options or from an older input
                shutil.rmtree(stale, ignore_errors=True)
        folder.mkdir(exist_ok=True)
        base = options.seed if options.seed is not None else secrets.randbits(31)
        parts, units = [], []
        two_phases = needs_identity_phase(options)
        analyses = tuple(folder / f"analysis-{s.index:04d}.npz" for s in segments) if two_phases else ()
        for segment in segments:
            part = folder / f"part-{segment.index:04d}{job.dst.suffix}"
            parts.append(part)
            if not part.exists():
                seed = segment_seed(base, segment.index)
                units.append(WorkUnit(f"{video}/{segment.index}", video, job.src, part, segment, seed, segment.frame_count,
                                      analyses=analyses))
        if not two_phases:
            return VideoPlan(video, units=tuple(units), parts=tuple(parts))
        analyse = tuple(WorkUnit(f"{video}/a{s.index}", video, job.src, path, s, segment_seed(base, s.index), 0, kind="analyse")
                        for s, path in zip(segments, analyses) if not path.exists())
        return VideoPlan(video, units=analyse, parts=tuple(parts), deferred=tuple(units))
    except (SdganStreamError, OSError) as error:
        return VideoPlan(video, error=str(error))


def finish_segmented_video(parts: Sequence[Path], job: VideoJob, audio: bool) -> tuple[int, str | None]:
    """Join a video's parts into its output (temporary name, renamed when complete) and remove them.
    Returns (frames, error message or None)."""
    import av

    from .io.segments import join_segments

    temp = temporary_path(job.dst)
    try:
        with av.open(str(job.src)) as container:
            has_audio = bool(container.streams.audio)
        joined = join_segments(parts, temp, audio_from=job.src if audio and has_audio else None)
        os.replace(temp, job.dst)
    except (SdganStreamError, OSError, av.error.FFmpegError) as error:
        temp.unlink(missing_ok=True)
        return 0, str(error)
    shutil.rmtree(parts[0].parent, ignore_errors=True)
    return joined.frames, None


class ProgressBoard:
    """Frames written per unit, reported by the workers (a Ray actor); read by the driver's progress bar."""

    def __init__(self) -> None:
        self._units: dict[str, tuple[int, str]] = {}

    def report(self, key: str, frames: int, worker: str) -> None:
        self._units[key] = (frames, worker)

    def snapshot(self) -> dict[str, tuple[int, str]]:
        return dict(self._units)


class AnonymizeWorker:
    """One worker (a Ray actor): loads the models at its first unit and keeps them for the next ones."""

    REPORT_EVERY = 10  # frames between progress reports

    def __init__(self, options: AnonymizeOptions) -> None:
        self.options = options
        self._detector: Any = None
        self._renderer: Any = None

    def _models(self) -> tuple[Any, Any]:
        if self._detector is None:  # loaded here, not in __init__: a load error is a unit's error, not a dead actor
            from .api import build_detector, build_renderer

            self._detector = build_detector(self.options)
            self._renderer = build_renderer(self.options)
        # The sdgan renderer keeps per-track state (smoothing, identity guard) that must not meet the next video.
        for_new_stream = getattr(self._renderer, "for_new_stream", None)
        return self._detector, for_new_stream() if for_new_stream is not None else self._renderer

    def run(self, unit: WorkUnit, board: Any) -> UnitResult:
        import ray

        from .api import anonymize_video

        worker = f"{ray.util.get_node_ip_address()}:{os.getpid()}"
        result = UnitResult(unit.key, unit.video)
        temp = temporary_path(unit.out)
        written = 0

        def count(_frame: object) -> None:
            nonlocal written
            written += 1
            if written % self.REPORT_EVERY == 0:
                board.report.remote(unit.key, written, worker)

        board.report.remote(unit.key, 0, worker)
        try:
            detector, renderer = self._models()
            options = self.options.with_overrides(seed=unit.seed)
            if unit.kind == "analyse":
                assert unit.segment is not None
                started = time.monotonic()
                analyse_segment(unit.src, unit.segment, options, detector=detector, renderer=renderer).save(unit.out)
                result.seconds = time.monotonic() - started
                return result
            if unit.analyses:
                detector = self._replay_with_identities(unit, renderer)
            report = anonymize_video(unit.src, temp, options=options, detector=detector,
                                     renderer=renderer, segment=unit.segment, on_frame_written=count)
            if report.interrupted:
                raise SdganStreamError("interrupted")
            os.replace(temp, unit.out)
        except Exception as error:  # this unit fails, the others go on; the summary says why
            if not isinstance(error, SdganStreamError):
                log.exception("unit %s of %s failed", unit.key, unit.src)
            temp.unlink(missing_ok=True)
            result.error = str(error) or type(error).__name__
            return result
        board.report.remote(unit.key, report.frames, worker)
        result.frames, result.seconds, result.stats = report.frames, report.seconds, report.stats
        return result

    @staticmethod
    def _replay_with_identities(unit: WorkUnit, renderer: Any) -> ReplayDetector:
        """The detector replaying this segment's analysed detections; ``renderer``'s guard is handed the
        identities that the grouping of all the video's analyses gives this segment's tracks (every render
        unit of the video computes the same grouping from the same files)."""
        from .exempt import STRICTNESS

        assert unit.segment is not None
        analyses = [SegmentAnalysis.load(path) for path in unit.analyses]
        recognizer = renderer.guard.recognizer
        proposals = group_tracks(analyses, threshold=STRICTNESS * recognizer.same_person_distance,
                                 distances=recognizer.distances)
        renderer.guard.propose(proposals[unit.segment.index])
        own = analyses[unit.segment.index]
        return ReplayDetector(own.detections, own.fingerprints)


def _import_ray() -> Any:
    try:
        import ray
        from ray.util import ActorPool  # noqa: F401
    except ImportError:
        raise SdganStreamError(INSTALL_HINT) from None
    return ray


def _connect(ray: Any, config: ClusterConfig) -> bool:
    """Join or start Ray; True when this call started it (and so must stop it)."""
    if ray.is_initialized():
        return False
    ray.init(address=config.address, include_dashboard=False, log_to_driver=config.worker_logs,
             logging_level=logging.WARNING)
    resources = ray.cluster_resources()
    nodes = sum(1 for k in resources if k.startswith("node:") and k != "node:__internal_head__")
    log.info("Ray: %g CPUs, %g GPUs on %d node(s)", resources.get("CPU", 0), resources.get("GPU", 0), nodes)
    return True


def _worker_count(resources: dict[str, float], config: ClusterConfig, units: int) -> tuple[int, float]:
    """(actors, GPUs per actor) for this cluster."""
    gpus_here = resources.get("GPU", 0.0)
    gpus = config.gpus_per_worker if config.gpus_per_worker is not None else (1.0 if gpus_here >= 1 else 0.0)
    if gpus > gpus_here:
        raise SdganStreamError(f"--gpus-per-worker {gpus:g} but the Ray cluster has {gpus_here:g} GPUs; use --gpus-per-worker 0")
    if config.workers is not None:
        workers = config.workers
    elif gpus > 0:
        workers = int(gpus_here // gpus)
    else:
        workers = int(resources.get("CPU", 1.0) // config.cpus_per_worker)
    return max(1, min(workers, units)), gpus


def run_cluster(
    jobs: Sequence[VideoJob],
    options: AnonymizeOptions,
    config: ClusterConfig = ClusterConfig(),
    *,
    on_progress: Callable[[Progress], None] | None = None,
    progress_every: float = 0.5,
    stop_event: threading.Event | None = None,
) -> ClusterReport:
    """Anonymize ``jobs`` on Ray (started here, joined, or already initialised by the caller).

    ``on_progress`` is called on this thread about every ``progress_every`` seconds. Setting
    ``stop_event`` stops the run within about that time: the workers are killed, finished outputs
    and parts stay, nothing unfinished appears under a final name.
    """
    ray = _import_ray()
    started_here = _connect(ray, config)
    try:
        return _run(ray, list(jobs), options, config, on_progress, progress_every, stop_event or threading.Event())
    finally:
        if started_here:
            ray.shutdown()


def _run(ray: Any, jobs: list[VideoJob], options: AnonymizeOptions, config: ClusterConfig,
         on_progress: Callable[[Progress], None] | None, progress_every: float, stop: threading.Event) -> ClusterReport:
    from ray.util import ActorPool

    started = time.monotonic()
    videos = [VideoSummary(job.src, job.dst) for job in jobs]
    plan_task = ray.remote(plan_video)
    plans: list[VideoPlan] = ray.get([plan_task.remote(i, job, options, config.segment_seconds) for i, job in enumerate(jobs)])
    units = [unit for plan in plans for unit in plan.units]
    for plan, video in zip(plans, videos):
        video.parts = max(len(plan.parts), 1)
        if plan.skipped:
            video.status = "skipped"
        elif plan.error is not None:
            video.status, video.error = "failed", plan.error
    finish_task = ray.remote(num_cpus=0)(finish_segmented_video)
    joins: dict[Any, int] = {}  # join task -> video
    remaining = [{unit.key for unit in plan.units} for plan in plans]  # units without a successful result yet
    deferred = {plan.video: plan.deferred for plan in plans if plan.deferred}  # render units after the analyses
    submitted = list(units)
    workers = 0
    board = None
    frames_total = sum(unit.frames for unit in units) + sum(u.frames for waiting in deferred.values() for u in waiting)
    if units or deferred:
        most = max(len(units), max(map(len, deferred.values()), default=0))  # units that can run at once
        workers, gpus = _worker_count(ray.cluster_resources(), config, most)
        log.info("%d units of work on %d workers (%g CPUs, %g GPUs each)", len(units), workers, config.cpus_per_worker, gpus)
        actor = ray.remote(AnonymizeWorker).options(num_cpus=config.cpus_per_worker, num_gpus=gpus, max_restarts=-1,
                                                    max_task_retries=config.max_task_retries)
        actors = [actor.remote(options) for _ in range(workers)]
        pool = ActorPool(actors)
        board = ray.remote(ProgressBoard).options(num_cpus=0).remote()
        for unit in units:
            pool.submit(lambda a, u: a.run.remote(u, board), unit)
    else:
        actors, pool = [], None

    def settle(video: int) -> None:
        """A video whose units all succeeded is done, gets its render units (its analyses are all done), or
        gets its parts joined (on the cluster, where they are)."""
        if videos[video].status != "pending" or remaining[video]:
            return
        if video in deferred:
            for unit in deferred.pop(video):
                remaining[video].add(unit.key)
                submitted.append(unit)
                pool.submit(lambda a, u: a.run.remote(u, board), unit)
            if remaining[video]:
                return
        if plans[video].parts:
            joins[finish_task.remote(plans[video].parts, jobs[video], options.audio)] = video
        else:
            videos[video].status = "done"

    for plan in plans:
        settle(plan.video)  # a video whose parts (or analyses) were all finished by an earlier run goes on here
    results: dict[str, UnitResult] = {}
    last_report = 0.0

    def report_progress() -> None:
        snapshot = ray.get(board.snapshot.remote())
        on_progress(Progress(
            videos_done=sum(v.status != "pending" for v in videos), videos_total=len(videos),
            frames_done=sum(frames for frames, _ in snapshot.values()), frames_total=frames_total,
            seconds=time.monotonic() - started, units=snapshot,
        ))

    while ((pool is not None and pool.has_next()) or joins) and not stop.is_set():
        if pool is not None and pool.has_next():
            try:
                result = pool.get_next_unordered(timeout=progress_every)
            except TimeoutError:
                result = None
            except ray.exceptions.RayError as error:  # its retries are spent; the summary finds the unit by elimination
                log.error("a unit of work was lost: %s", str(error).splitlines()[0])
                result = None
            if result is not None:
                results[result.key] = result
                video = videos[result.video]
                video.frames += result.frames
                video.seconds += result.seconds
                for k, n in result.stats.items():
                    video.stats[k] = video.stats.get(k, 0) + n
                if result.error is not None and video.status == "pending":
                    video.status, video.error = "failed", result.error
                elif result.error is None:
                    remaining[result.video].discard(result.key)
                settle(result.video)
        if joins:
            ready, _ = ray.wait(list(joins), num_returns=len(joins), timeout=0 if pool is not None and pool.has_next() else progress_every)
            for ref in ready:
                video = videos[joins.pop(ref)]
                frames, error = ray.get(ref)
                video.status, video.error = ("failed", error) if error else ("done", None)
                video.frames = frames or video.frames  # parts finished by an earlier run count too
        if on_progress is not None and board is not None and time.monotonic() - last_report >= progress_every:
            last_report = time.monotonic()
            report_progress()
    if stop.is_set():
        for worker in actors:  # their units end here; Ray must not restart them
            ray.kill(worker, no_restart=True)
        for video in videos:
            if video.status == "pending":
                video.status = "interrupted"
    for unit in submitted:
        if unit.key not in results and videos[unit.video].status == "pending":
            videos[unit.video].status = "failed"
            videos[unit.video].error = f"a worker was lost {config.max_task_retries + 1} times running {unit.key}"
    if on_progress is not None and board is not None:
        report_progress()  # the final state
    return ClusterReport(videos=videos, seconds=time.monotonic() - started, workers=workers, interrupted=stop.is_set())


# -- command line -----------------------------------------------------------------------------------
def add_cluster_options(parser: argparse.ArgumentParser) -> None:
    """``--ray [ADDRESS]`` and the flags that shape a cluster run (anonymize)."""
    unset = argparse.SUPPRESS  # so the help states each default once, in words
    d = ClusterConfig()
    group = parser.add_argument_group("cluster (Ray; needs pip install 'sdgan-stream[cluster]')")
    group.add_argument("--ray", nargs="?", const="local", default=unset, metavar="ADDRESS",
                       help="run on Ray: alone, a local Ray instance on this machine; 'auto' or ray://HOST:PORT joins a "
                            "running cluster. Existing outputs are skipped, so a rerun resumes")
    group.add_argument("--workers", type=int, default=unset, metavar="N",
                       help="Ray actors, each holding the models (default: as many as the cluster's GPUs, or CPUs, allow)")
    group.add_argument("--gpus-per-worker", type=float, default=unset, metavar="G",
                       help="GPUs per actor; 0.5 puts two actors on each GPU (default: 1 when the cluster has GPUs, else 0)")
    group.add_argument("--cpus-per-worker", type=float, default=unset, metavar="C", help=f"CPUs per actor (default: {d.cpus_per_worker:g})")
    group.add_argument("--segment-seconds", type=float, default=unset, metavar="S",
                       help="videos longer than 1.5x this are cut at keyframes into segments of about this length, processed "
                            f"in parallel and re-joined without re-encoding; 0: whole videos only (default: {d.segment_seconds:g})")
    group.add_argument("--batch-size", type=int, default=unset, metavar="N",
                       help=f"most faces per generator call, in any run (default: {AnonymizeOptions().batch_size})")


def cluster_config_from_args(args: argparse.Namespace) -> ClusterConfig | None:
    """The cluster settings typed on the command line; None for a run without --ray."""
    given = {name: getattr(args, name) for name in ("workers", "gpus_per_worker", "cpus_per_worker", "segment_seconds")
             if getattr(args, name, None) is not None}
    if getattr(args, "ray", None) is None:
        if given:
            raise ValueError(f"--{next(iter(given)).replace('_', '-')} needs --ray")
        return None
    address = None if args.ray == "local" else args.ray
    return ClusterConfig(address=address, worker_logs=getattr(args, "verbose", 0) > 0, **given)


def jobs_for(src: Path, videos: Sequence[Path], output: Path | None) -> list[VideoJob]:
    """Output paths as the single-process command chooses them: beside the input, or in ``output``."""
    from .io.sink import output_path_for

    if not src.is_dir():
        return [VideoJob(src, output if output is not None else output_path_for(src))]
    if output is not None:  # created by the planning task, on the cluster
        return [VideoJob(v, output / f"{v.stem}_anonymized{v.suffix}") for v in videos]
    return [VideoJob(v, output_path_for(v)) for v in videos]


def run_cluster_command(args: argparse.Namespace, options: AnonymizeOptions, config: ClusterConfig, videos: Sequence[Path],
                        stop: threading.Event | None = None) -> int:
    """The ``anonymize --ray`` command: one progress bar, a summary table; exit 1 if a video failed, 130
    when ``stop`` was set (the CLI sets it on SIGINT/SIGTERM)."""
    if not videos:
        raise SdganStreamError(f"no video files in {args.input}")
    _import_ray()  # the install hint before anything else happens
    bar = None

    def progress(p: Progress) -> None:
        nonlocal bar
        if args.no_progress:
            return
        if bar is None:
            from tqdm import tqdm

            bar = tqdm(total=p.frames_total or None, unit="frame", desc="videos", dynamic_ncols=True)
        bar.n = p.frames_done
        bar.set_description(f"videos {p.videos_done}/{p.videos_total}", refresh=False)
        bar.refresh()  # tqdm shows frames and frames per second

    try:
        report = run_cluster(jobs_for(args.input, videos, args.output), options, config, on_progress=progress, stop_event=stop)
    finally:
        if bar is not None:
            bar.close()
    print(report.table(), file=sys.stderr)
    return 130 if report.interrupted else 1 if report.failed else 0
