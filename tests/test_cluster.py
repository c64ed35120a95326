"""Cluster runs (issue 17): keyframe segments re-joined without re-encoding, and the Ray runner.

The segment tests need no Ray. The Ray tests run on a local instance (``ray.init(num_cpus=2)``) and
are skipped where ray is not installed (it is in the ``[dev]`` extra, so CI runs them).
"""

from __future__ import annotations

import os
import signal
import sys
import threading
from dataclasses import replace
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest

from sdgan_stream import AnonymizeOptions, anonymize_video
from sdgan_stream.cli import main
from sdgan_stream.cluster import ClusterConfig, Progress, VideoJob, overlap_frames, run_cluster
from sdgan_stream.errors import OutputError
from sdgan_stream.io.segments import VideoIndex, join_segments, plan_segments, read_index
from sdgan_stream.io.sink import VideoFileSink
from sdgan_stream.io.source import VideoFileSource
from sdgan_stream.samples import SyntheticClip, make_face_clip
from sdgan_stream.types import VideoFrame, VideoInfo

from .conftest import audio_packets, read_frames
from .test_file_anonymizer import _assert_faces_covered

# Tracking on (segments must carry tracks across their cuts); a small detector input keeps it quick.
OPTIONS = AnonymizeOptions(method="pixelate", detect_size=(320, 320), seed=7)
GOP = 25  # the long clip gets a keyframe every second, so it can be cut every two


def _with_gop(clip: SyntheticClip, dst: Path, gop: int) -> SyntheticClip:
    """``clip`` re-encoded with a keyframe every ``gop`` frames (cameras do this; x264's default is 250), audio copied."""
    with av.open(str(clip.path)) as src, av.open(str(dst), "w") as out:
        video_in, audio_in = src.streams.video[0], src.streams.audio[0]
        video = out.add_stream("libx264", rate=video_in.average_rate)
        video.width, video.height, video.pix_fmt = video_in.width, video_in.height, "yuv420p"
        video.time_base = video.codec_context.time_base = video_in.time_base
        video.options = {"preset": "ultrafast", "crf": "18", "g": str(gop)}
        audio = out.add_stream_from_template(audio_in)
        for packet in src.demux(video_in, audio_in):
            if not packet.size:
                continue
            if packet.stream.type == "audio":
                packet.stream = audio
                out.mux(packet)
            else:
                for frame in packet.decode():
                    for encoded in video.encode(frame):
                        out.mux(encoded)
        for encoded in video.encode(None):
            out.mux(encoded)
    return replace(clip, path=dst)


@pytest.fixture(scope="module")
def long_clip(tmp_path_factory: pytest.TempPathFactory) -> SyntheticClip:
    """6 s at 25 fps with a keyframe every second: three 2 s segments."""
    folder = tmp_path_factory.mktemp("long")
    clip = make_face_clip(folder / "raw.mp4", width=320, height=240, frames=150, faces=2, face_width=50, seed=3)
    return _with_gop(clip, folder / "long.mp4", GOP)


@pytest.fixture(scope="module")
def single_run(tmp_path_factory: pytest.TempPathFactory):
    """The single-process output of a clip (made once per input file: the folder links the long clip)."""
    folder = tmp_path_factory.mktemp("single")
    outputs: dict[int, Path] = {}

    def run(clip: SyntheticClip) -> Path:
        inode = clip.path.stat().st_ino
        if inode not in outputs:
            outputs[inode] = folder / f"{len(outputs)}.mp4"
            anonymize_video(clip.path, outputs[inode], options=OPTIONS)
        return outputs[inode]

    return run


def _keyframes(path: Path) -> list[int]:
    with av.open(str(path)) as container:
        return [p.pts for p in container.demux(container.streams.video[0]) if p.size and p.is_keyframe]


def _assert_same_video(result: Path, reference: Path, clip: SyntheticClip) -> None:
    """Frame count, pts, time base and audio of ``result`` are the reference run's; every face is covered."""
    frames, pts, time_base = read_frames(result)
    ref_frames, ref_pts, ref_time_base = read_frames(reference)
    original, _, _ = read_frames(clip.path)
    assert len(frames) == len(ref_frames) == clip.frame_count
    assert pts == ref_pts and time_base == ref_time_base
    assert audio_packets(result) == audio_packets(reference) != []
    _assert_faces_covered(original, frames, clip)


# -- planning and seeking (no Ray) ------------------------------------------------------------------
def test_plan_cuts_at_keyframes_with_overlap_on_both_sides() -> None:
    index = VideoIndex(time_base=Fraction(1, 25), pts=tuple(range(1000)), keyframes=tuple(range(0, 1000, 30)))
    segments = plan_segments(index, segment_seconds=10, overlap_frames=40)
    cuts = [s.start_pts for s in segments[1:]]
    assert cuts == [270, 540, 810] and all(c in index.keyframes for c in cuts)  # first keyframe >= 250 frames on
    assert [s.end_pts for s in segments] == [270, 540, 810, None]
    assert sum(s.frame_count for s in segments) == 1000
    shorter = plan_segments(replace(index, pts=tuple(range(900))), segment_seconds=10, overlap_frames=40)
    assert [s.frame_count for s in shorter] == [270, 270, 360]  # a longer last one rather than a 90-frame tail
    for segment in segments[1:]:
        assert segment.decode_from_pts in index.keyframes and segment.decode_from_pts <= segment.start_pts - 40
    assert [s.stop_pts for s in segments] == [310, 580, 850, None]
    assert segments[0].decode_from_pts is None and segments[0].start_pts is None
    assert segments[1].writes(270) and not segments[1].writes(269) and not segments[1].writes(540)


def test_plan_keeps_short_or_keyframe_poor_videos_whole() -> None:
    short = VideoIndex(time_base=Fraction(1, 25), pts=tuple(range(300)), keyframes=tuple(range(0, 300, 25)))
    assert len(plan_segments(short, segment_seconds=10, overlap_frames=10)) == 1  # 12 s: not 1.5 segments
    one_key = VideoIndex(time_base=Fraction(1, 25), pts=tuple(range(3000)), keyframes=(0,))
    assert len(plan_segments(one_key, segment_seconds=10, overlap_frames=10)) == 1


def test_seek_starts_at_the_requested_frame(long_clip: SyntheticClip) -> None:
    all_frames, all_pts, _ = read_frames(long_clip.path)
    start = all_pts[60]  # between keyframes: decoding starts at the one before and skips ahead
    with VideoFileSource(long_clip.path) as source:
        frames = list(source.frames(start_pts=start))
    assert [f.pts for f in frames] == all_pts[60:]
    assert all(np.array_equal(f.image, ref) for f, ref in zip(frames, all_frames[60:]))


# -- segments re-joined (no Ray) -------------------------------------------------------------------
def test_segments_rejoin_to_the_unsplit_run(long_clip: SyntheticClip, single_run, tmp_path: Path) -> None:
    index = read_index(long_clip.path)
    assert index is not None
    segments = plan_segments(index, segment_seconds=2.0, overlap_frames=overlap_frames(OPTIONS, 25))
    assert len(segments) == 3
    parts = []
    for segment in segments:
        parts.append(tmp_path / f"part{segment.index}.mp4")
        report = anonymize_video(long_clip.path, parts[-1], options=OPTIONS, segment=segment)
        assert report.frames == segment.frame_count == 50
        assert audio_packets(parts[-1]) == []  # the audio is copied once, at the join
    joined = tmp_path / "joined.mp4"
    report = join_segments(parts, joined, audio_from=long_clip.path)
    assert report.frames == 150 and report.audio_packets > 0
    _assert_same_video(joined, single_run(long_clip), long_clip)  # faces at the cuts included
    # Each part's encode starts on an IDR frame: the joined stream has a keyframe at each cut, where no
    # frame refers across, so nothing was re-encoded there.
    assert {s.start_pts for s in segments[1:]} <= set(_keyframes(joined))


def test_join_refuses_parts_encoded_with_other_settings(tmp_path: Path) -> None:
    info = VideoInfo(width=64, height=64, time_base=Fraction(1, 25), average_rate=Fraction(25))
    parts = []
    for n, preset in enumerate(("ultrafast", "veryfast")):  # ultrafast turns CABAC off: another PPS
        parts.append(tmp_path / f"part{n}.mp4")
        sink = VideoFileSink(parts[-1], info, preset=preset)
        for i in range(5):
            sink.write(VideoFrame(np.full((64, 64, 3), 40 * i, np.uint8), index=i, pts=n * 5 + i, time_base=Fraction(1, 25)))
        sink.close()
    with pytest.raises(OutputError, match="other settings"):
        join_segments(parts, tmp_path / "joined.mp4")


# -- command line ------------------------------------------------------------------------------------
def test_ray_flag_without_ray_says_how_to_install(monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
                                                  capsys: pytest.CaptureFixture, long_clip: SyntheticClip) -> None:
    monkeypatch.setitem(sys.modules, "ray", None)  # import ray now raises ImportError
    assert main(["anonymize", str(long_clip.path), "-o", str(tmp_path / "out.mp4"), "--ray"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["error: --ray needs the ray package: pip install 'sdgan-stream[cluster]'"]
    assert not (tmp_path / "out.mp4").exists()


def test_cluster_flags_need_ray(long_clip: SyntheticClip, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert main(["anonymize", str(long_clip.path), "-o", str(tmp_path / "out.mp4"), "--workers", "2"]) == 2
    assert "--workers needs --ray" in capsys.readouterr().err


# -- on a local Ray instance -------------------------------------------------------------------------
@pytest.fixture(scope="module")
def ray_instance():
    ray = pytest.importorskip("ray")
    # Workers must import this checkout's package, as the test process does.
    root = str(Path(__file__).resolve().parents[1])
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False,
             runtime_env={"env_vars": {"PYTHONPATH": root, "OMP_NUM_THREADS": "1"}})
    yield ray
    ray.shutdown()


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory, long_clip: SyntheticClip) -> tuple[Path, list[SyntheticClip]]:
    """Two short clips and the long one: a folder as a user would hand it in."""
    folder = tmp_path_factory.mktemp("videos")
    clips = [make_face_clip(folder / f"short{i}.mp4", width=320, height=240, frames=25, faces=2, face_width=50, seed=10 + i)
             for i in range(2)]
    os.link(long_clip.path, folder / "long.mp4")
    return folder, [*clips, replace(long_clip, path=folder / "long.mp4")]


def test_folder_on_ray_equals_single_process_runs_and_reruns_skip(ray_instance, folder, single_run, tmp_path: Path) -> None:
    src, clips = folder
    out = tmp_path / "out"
    out.mkdir()
    jobs = [VideoJob(c.path, out / f"{c.path.stem}_anonymized.mp4") for c in clips]
    seen: list[Progress] = []
    report = run_cluster(jobs, OPTIONS, ClusterConfig(segment_seconds=2.0), on_progress=seen.append, progress_every=0.2)
    assert [v.status for v in report.videos] == ["done"] * 3, report.table()
    assert [v.parts for v in report.videos] == [1, 1, 3]
    assert sorted(p.name for p in out.iterdir()) == sorted(j.dst.name for j in jobs)  # no temporary file or part left
    for clip, job in zip(clips, jobs):
        reference = single_run(clip)
        _assert_same_video(job.dst, reference, clip)
        if clip.frame_count == 25:  # whole videos: the single run's frames (which are not bit-reproducible
            # run to run either: a strip of ~2% of the pixels can differ between two runs in one process)
            for a, b in zip(read_frames(job.dst)[0], read_frames(reference)[0]):
                assert np.abs(a.astype(int) - b).mean() < 1.0
    assert seen and seen[-1].frames_total == 200 and seen[-1].videos_total == 3
    assert "3 videos: 3 done" in report.table()

    stamps = [j.dst.stat().st_mtime_ns for j in jobs]
    again = run_cluster(jobs, OPTIONS, ClusterConfig(segment_seconds=2.0))
    assert [v.status for v in again.videos] == ["skipped"] * 3
    assert [j.dst.stat().st_mtime_ns for j in jobs] == stamps


def test_a_killed_worker_is_retried_and_the_output_is_complete(ray_instance, long_clip: SyntheticClip, tmp_path: Path) -> None:
    dst = tmp_path / "long_anonymized.mp4"
    workers_seen: list[str] = []
    killed: list[int] = []

    def kill_once(progress: Progress) -> None:
        if dst.exists():  # under its final name only once complete
            assert len(read_frames(dst)[0]) == long_clip.frame_count
        for frames, worker in progress.units.values():
            if worker not in workers_seen:
                workers_seen.append(worker)
            if not killed and frames >= 10:  # evidence that the unit is under way, not a clock
                killed.append(int(worker.rsplit(":", 1)[1]))
                os.kill(killed[0], signal.SIGKILL)

    report = run_cluster([VideoJob(long_clip.path, dst)], OPTIONS, ClusterConfig(segment_seconds=0, workers=1),
                         on_progress=kill_once, progress_every=0.2)
    assert killed, "the unit finished before it could be killed"
    assert report.videos[0].status == "done", report.table()
    assert len(workers_seen) == 2 and workers_seen[0].endswith(f":{killed[0]}")  # retried in a new process
    frames, pts, _ = read_frames(dst)
    _, pts_in, _ = read_frames(long_clip.path)
    assert len(frames) == long_clip.frame_count and pts == pts_in
    assert audio_packets(dst) == audio_packets(long_clip.path)
    _assert_faces_covered(read_frames(long_clip.path)[0], frames, long_clip)
    assert sorted(p.name for p in tmp_path.iterdir()) == [dst.name]  # the killed attempt's temporary file is gone


def test_a_workers_next_video_shares_the_models_but_not_the_per_track_state() -> None:
    from sdgan_stream.render import SdganRenderer

    from .test_identity_guard import _photo_face

    renderer = SdganRenderer.from_options(AnonymizeOptions(method="sdgan", backend="eager", device="cpu", guard_candidates=2))
    image, face = _photo_face()
    renderer.render(image, [face])
    assert renderer.guard is not None and renderer.guard.tracks == 1
    fresh = renderer.for_new_stream()
    assert fresh.backend is renderer.backend and fresh.landmarker is renderer.landmarker
    assert fresh.guard is not None and fresh.guard.recognizer is renderer.guard.recognizer
    # Track ids restart with each video: the guard's decision for track 1 must not carry over to a stranger.
    assert fresh.guard.tracks == 0 and fresh._previous == {} and renderer.guard.tracks == 1
    # Nor do the persons the identity ledger remembers (another video, other people).
    assert fresh.guard.ledger is not None and fresh.guard.ledger is not renderer.guard.ledger and len(fresh.guard.ledger) == 0


def test_a_stopped_run_leaves_nothing_under_a_final_name(ray_instance, long_clip: SyntheticClip, tmp_path: Path) -> None:
    dst = tmp_path / "long_anonymized.mp4"
    stop = threading.Event()

    def stop_when_under_way(progress: Progress) -> None:
        if any(frames >= 10 for frames, _ in progress.units.values()):
            stop.set()  # what SIGINT/SIGTERM do in the command line

    report = run_cluster([VideoJob(long_clip.path, dst)], OPTIONS, ClusterConfig(segment_seconds=0, workers=1),
                         on_progress=stop_when_under_way, progress_every=0.2, stop_event=stop)
    assert report.interrupted and report.videos[0].status == "interrupted", report.table()
    assert not dst.exists()
    assert {p.name for p in tmp_path.iterdir()} <= {".long_anonymized.partial.mp4"}  # a rerun starts it again
