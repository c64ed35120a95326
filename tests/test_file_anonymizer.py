"""End to end on files: timing, audio, covers at the true face positions, and every bad-input case."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
from fractions import Fraction
from pathlib import Path

import av
import cv2
import numpy as np
import pytest

from sdgan_stream import AnonymizeOptions, anonymize_video
from sdgan_stream.anonymize import CoverRenderer, FrameAnonymizer
from sdgan_stream.cli import main
from sdgan_stream.errors import InputError, OutputError
from sdgan_stream.io.sink import VideoFileSink
from sdgan_stream.io.source import VideoFileSource
from sdgan_stream.samples import SyntheticClip, make_face_clip
from sdgan_stream.types import Detections, VideoFrame

from .conftest import audio_packets, read_frames
from .live_support import finishes_within, live_threads

COVERS = dict(method="pixelate", track=False, detect_size=(640, 640))


def _detail_correlation(a: np.ndarray, b: np.ndarray, box: np.ndarray) -> float:
    """Correlation of the fine detail (Laplacian) of two images inside ``box``.

    A visible face keeps its detail (correlation near 1 after re-encoding); solid, pixelated, blurred
    or regenerated faces do not.
    """
    x1, y1, x2, y2 = (int(round(v)) for v in box)
    x1, y1 = max(x1, 0), max(y1, 0)
    crops = [cv2.Laplacian(cv2.cvtColor(img[y1:y2, x1:x2], cv2.COLOR_RGB2GRAY).astype(np.float32), cv2.CV_32F) for img in (a, b)]
    da, db = (c - c.mean() for c in crops)
    denominator = float(np.sqrt((da * da).sum() * (db * db).sum()))
    return float((da * db).sum() / denominator) if denominator > 0 else 0.0


def _far_from_faces(shape: tuple[int, ...], boxes: np.ndarray, *, grow: float = 0.8) -> np.ndarray:
    mask = np.ones(shape[:2], bool)
    for x1, y1, x2, y2 in boxes:
        w, h = x2 - x1, y2 - y1
        mask[max(int(y1 - grow * h), 0) : int(y2 + grow * h), max(int(x1 - grow * w), 0) : int(x2 + grow * w)] = False
    return mask


def _assert_faces_covered(original: list[np.ndarray], result: list[np.ndarray], clip: SyntheticClip) -> None:
    for index, (before, after) in enumerate(zip(original, result)):
        for box in clip.face_boxes[index]:
            assert _detail_correlation(before, after, box) < 0.3, f"face left visible on frame {index}"


def test_detail_correlation_tells_a_visible_face_from_a_covered_one(face_clip: SyntheticClip) -> None:
    frames, _, _ = read_frames(face_clip.path)
    box = face_clip.face_boxes[0][0]
    noisy = np.clip(frames[0].astype(int) + np.random.default_rng(0).integers(-6, 7, frames[0].shape), 0, 255).astype(np.uint8)
    assert _detail_correlation(frames[0], noisy, box) > 0.6  # light noise: still the same face


def test_output_keeps_frames_pts_audio_and_covers_faces(face_clip: SyntheticClip, tmp_path: Path) -> None:
    out = tmp_path / "out.mp4"
    report = anonymize_video(face_clip.path, out, **COVERS)
    original, pts_in, tb_in = read_frames(face_clip.path)
    result, pts_out, tb_out = read_frames(out)
    assert report.frames == len(result) == len(original) == face_clip.frame_count
    assert pts_out == pts_in and tb_out == tb_in
    assert audio_packets(out) == audio_packets(face_clip.path) and report.audio_packets > 0
    assert result[0].shape == original[0].shape
    _assert_faces_covered(original, result, face_clip)
    for index in range(len(original)):
        far = _far_from_faces(original[index].shape, face_clip.face_boxes[index])
        assert far.mean() > 0.3
        diff = np.abs(original[index].astype(int) - result[index].astype(int)).max(axis=2)
        assert np.median(diff[far]) <= 3 and np.percentile(diff[far], 99) < 30


@pytest.mark.parametrize("method", ["pixelate", "blur"])
def test_cover_methods_cover_faces(face_clip: SyntheticClip, tmp_path: Path, method: str) -> None:
    out = tmp_path / f"{method}.mp4"
    anonymize_video(face_clip.path, out, method=method, track=False, detect_size=(640, 640))
    original, _, _ = read_frames(face_clip.path)
    result, _, _ = read_frames(out)
    _assert_faces_covered(original, result, face_clip)


def test_variable_frame_rate_timestamps_survive(tmp_path: Path) -> None:
    clip = make_face_clip(tmp_path / "vfr.mkv", frames=20, faces=1, variable_frame_rate=True)
    out = tmp_path / "vfr_out.mkv"
    anonymize_video(clip.path, out, **COVERS)
    _, pts_in, tb_in = read_frames(clip.path)
    _, pts_out, tb_out = read_frames(out)
    assert [p * tb_in for p in pts_in] == [p * tb_out for p in pts_out]
    assert len(set(np.diff(pts_in))) > 1  # really variable


def test_rotated_phone_video_keeps_rotation_and_covers_upright_faces(tmp_path: Path) -> None:
    clip = make_face_clip(tmp_path / "rot.mp4", width=360, height=640, frames=12, faces=1, rotation=90)
    out = tmp_path / "rot_out.mp4"
    anonymize_video(clip.path, out, **COVERS)
    with av.open(str(out)) as container:
        frame = next(container.decode(video=0))
        assert frame.rotation == 90 and (frame.width, frame.height) == (640, 360)
    original, _, _ = read_frames(clip.path)
    result, _, _ = read_frames(out)
    upright = lambda image: np.rot90(image, k=1)  # noqa: E731 - display orientation, as the boxes are
    _assert_faces_covered([upright(i) for i in original], [upright(i) for i in result], clip)


@pytest.mark.parametrize(("width", "height"), [(321, 241), (320, 241)])
def test_odd_sizes_keep_their_exact_size(tmp_path: Path, width: int, height: int) -> None:
    clip = make_face_clip(tmp_path / "odd.mkv", width=width, height=height, frames=8, faces=1, pix_fmt="yuv444p")
    out = tmp_path / "odd_out.mkv"
    anonymize_video(clip.path, out, **COVERS)
    result, _, _ = read_frames(out)
    assert len(result) == 8 and result[0].shape == (height, width, 3)


def test_ten_bit_input(tmp_path: Path) -> None:
    clip = make_face_clip(tmp_path / "10bit.mp4", frames=8, faces=1, pix_fmt="yuv420p10le")
    out = tmp_path / "10bit_out.mp4"
    anonymize_video(clip.path, out, **COVERS)
    original, _, _ = read_frames(clip.path)
    result, _, _ = read_frames(out)
    assert len(result) == 8
    _assert_faces_covered(original, result, clip)
    assert _stream_properties(out)["pix_fmt"] == "yuv420p10le"  # 10-bit in, 10-bit out (x264 High 10)


# -- output fidelity: colour tags, bit depth, cover art, timestamp wraps -----------------------------------------

# FFmpeg's values: range 1 limited / 2 full; matrix 1 BT.709, 9 BT.2020; primaries 1 BT.709, 9 BT.2020;
# transfer 1 BT.709, 16 SMPTE 2084 (PQ, HDR10). swscale's own numbering of the matrix for the conversion:
_SWS = {1: 1, 9: 9}
_TAGS = ("color_range", "colorspace", "color_primaries", "color_trc")


def _write_clip(path: Path, images: list[np.ndarray], *, pix_fmt: str = "yuv420p", tags: dict[str, int] | None = None,
                pts: list[int] | None = None, time_base: Fraction = Fraction(1, 25), options: dict[str, str] | None = None) -> Path:
    """An H.264 clip of exactly these RGB images (uint8, or uint16 for 10-bit), tagged and converted with ``tags``."""
    tags = tags or {}
    height, width = images[0].shape[:2]
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=25)
        stream.width, stream.height, stream.pix_fmt = width, height, pix_fmt
        stream.time_base = stream.codec_context.time_base = time_base
        stream.options = {"bf": "0", "preset": "ultrafast", **(options or {})}
        for name, value in tags.items():
            setattr(stream.codec_context, name, value)
        for index, image in enumerate(images):
            rgb = av.VideoFrame.from_ndarray(image, format="rgb48le" if image.dtype == np.uint16 else "rgb24")
            frame = rgb.reformat(format=pix_fmt, dst_colorspace=_SWS.get(tags.get("colorspace", 2)), dst_color_range=tags.get("color_range", 1))
            frame.pts = index if pts is None else pts[index]
            frame.time_base = time_base
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode(None):
            container.mux(packet)
    return path


def _stream_properties(path: Path) -> dict[str, object]:
    with av.open(str(path)) as container:
        frame = next(container.decode(video=0))
        pix_fmt = frame.format.name.replace("yuvj", "yuv")  # FFmpeg's old name for full-range 8-bit
        return {"pix_fmt": pix_fmt, **{name: int(getattr(frame, name)) for name in _TAGS}}


@pytest.mark.parametrize(
    ("tags", "pix_fmt"),
    [
        ({"color_range": 1, "colorspace": 1, "color_primaries": 1, "color_trc": 1}, "yuv420p"),  # HD, BT.709
        ({"color_range": 2, "colorspace": 1, "color_primaries": 1, "color_trc": 1}, "yuv420p"),  # full range
        ({"color_range": 1, "colorspace": 9, "color_primaries": 9, "color_trc": 16}, "yuv420p10le"),  # HDR10
    ],
    ids=["bt709", "bt709-full", "hdr10"],
)
def test_colour_tags_and_colours_survive(tmp_path: Path, tags: dict[str, int], pix_fmt: str) -> None:
    deep = pix_fmt.endswith("10le")
    patches = [(220, 40, 60), (30, 160, 230), (250, 220, 40), (90, 90, 90)]  # saturated: a wrong matrix shows
    image = np.zeros((64, 128, 3), np.uint8)
    for n, colour in enumerate(patches):
        image[:, n * 32 : (n + 1) * 32] = colour
    frames = [(image.astype(np.uint16) * 257) if deep else image] * 4
    clip = _write_clip(tmp_path / "tagged.mkv", frames, pix_fmt=pix_fmt, tags=tags)
    out = tmp_path / "tagged_out.mkv"
    anonymize_video(clip, out, **COVERS)
    assert _stream_properties(out) == _stream_properties(clip) == {"pix_fmt": pix_fmt, **tags}
    before, _, _ = read_frames(clip)  # decoded as the tags say
    after, _, _ = read_frames(out)
    for n in range(len(patches)):
        centre = np.s_[16:48, n * 32 + 8 : n * 32 + 24]
        # coding loses ~3 levels; a wrong matrix (BT.601 read as BT.709) shifts these colours by 9-17
        assert np.abs(after[0][centre].mean(axis=(0, 1)) - before[0][centre].mean(axis=(0, 1))).max() < 6, patches[n]


def test_ten_bit_precision_is_kept_where_nothing_was_drawn(tmp_path: Path) -> None:
    """A ramp of 10-bit steps, losslessly coded: in 8 bits it would have a quarter of its levels."""
    width = 256
    ramp = (np.linspace(400, 463, width).round().astype(np.uint16) << 6)  # 64 ten-bit levels, in 16-bit units
    image = np.repeat(np.repeat(ramp[None, :, None], 64, axis=0), 3, axis=2)
    clip = _write_clip(tmp_path / "ramp.mkv", [image] * 3, pix_fmt="yuv420p10le", options={"qp": "0"})
    out = tmp_path / "ramp_out.mkv"
    anonymize_video(clip, out, crf=0, **COVERS)
    with av.open(str(clip)) as a, av.open(str(out)) as b:
        luma_in = next(a.decode(video=0)).to_ndarray(format="gray16le")[32]
        luma_out = next(b.decode(video=0)).to_ndarray(format="gray16le")[32]
    levels_in, levels_out = len(np.unique(luma_in)), len(np.unique(luma_out))
    assert levels_in >= 48 and levels_out >= 0.9 * levels_in, (levels_in, levels_out)  # an 8-bit path keeps ~16
    assert np.abs(luma_out.astype(int) - luma_in.astype(int)).max() <= 64  # within one 10-bit step (in 16-bit units)


def test_deep_samples_never_survive_where_a_cover_was_drawn() -> None:
    from sdgan_stream.io.sink import keep_deep_samples

    rng = np.random.default_rng(0)
    deep = rng.integers(0, 65536, (64, 64, 3), dtype=np.uint16)
    image = ((deep.astype(np.uint32) + 128) // 257).astype(np.uint8)
    assert keep_deep_samples(image, deep) is deep  # nothing drawn: the input's own samples
    image[20:40, 20:40] = 0  # a solid cover ...
    image[30, 30] = ((deep[30, 30].astype(np.uint32) + 128) // 257).astype(np.uint8)  # ... with a pixel equal by chance
    out = keep_deep_samples(image, deep)
    assert (out[20:40, 20:40] == image[20:40, 20:40].astype(np.uint16) * 257).all()
    assert (out[:10] == deep[:10]).all()


def test_cover_art_is_not_taken_for_the_video(tmp_path: Path) -> None:
    """An audio file with cover art lists the picture as a video stream: not a video to anonymize."""
    path = tmp_path / "song.m4a"
    ok, jpeg = cv2.imencode(".jpg", np.full((32, 32, 3), 200, np.uint8))
    with av.open(str(path), "w", format="mp4") as container:
        audio = container.add_stream("aac", rate=48000, layout="mono")
        cover = container.add_stream("mjpeg", rate=1)
        cover.width = cover.height = 32
        cover.pix_fmt = "yuvj420p"
        cover.disposition = av.stream.Disposition.attached_pic
        packet = av.Packet(jpeg.tobytes())
        packet.stream, packet.pts, packet.dts = cover, 0, 0
        container.mux(packet)
        for i in range(10):
            frame = av.AudioFrame.from_ndarray(np.zeros((1, 1024), np.float32), format="fltp", layout="mono")
            frame.sample_rate, frame.pts = 48000, i * 1024
            for p in audio.encode(frame):
                container.mux(p)
        for p in audio.encode(None):
            container.mux(p)
    with av.open(str(path)) as container:
        assert container.streams.video  # FFmpeg does list it as video
    with pytest.raises(InputError, match="only cover art"):
        anonymize_video(path, tmp_path / "out.mp4", **COVERS)


def test_mpeg_ts_timestamp_wrap_keeps_the_timing(tmp_path: Path) -> None:
    """A recording longer than 26.5 h: the 33-bit 90 kHz counter wraps, FFmpeg leaves it wrapped."""
    hour = 90000 * 3600
    pts = [1000 + i * hour for i in range(30)]  # wraps between frames 26 and 27
    images = [np.full((48, 64, 3), 8 * i, np.uint8) for i in range(30)]
    clip = _write_clip(tmp_path / "long.ts", images, pts=pts, time_base=Fraction(1, 90000), options={"g": "1"})
    with av.open(str(clip)) as container:
        raw = [f.pts for f in container.decode(video=0)]
    assert any(b < a for a, b in zip(raw, raw[1:]))  # the input really wraps
    out = tmp_path / "long_out.mkv"
    anonymize_video(clip, out, **COVERS)
    _, pts_out, tb = read_frames(out)
    assert len(pts_out) == 30
    assert {round(float((b - a) * tb)) for a, b in zip(pts_out, pts_out[1:])} == {3600}  # one hour apart, throughout


def test_corrupt_data_part_way_skips_bad_packets_and_goes_on(tmp_path: Path) -> None:
    clip = make_face_clip(tmp_path / "corrupt.ts", frames=40, faces=1, audio=False)
    data = bytearray(clip.path.read_bytes())
    middle = len(data) // 2
    data[middle : middle + 4000] = os.urandom(4000)
    clip.path.write_bytes(bytes(data))
    out = tmp_path / "corrupt_out.ts"
    report = anonymize_video(clip.path, out, **COVERS)
    result, _, _ = read_frames(out)
    assert 10 < len(result) <= 40 and report.frames == len(result)


@pytest.mark.parametrize(
    ("make_input", "message"),
    [
        (lambda d: d / "missing.mp4", "not found"),
        (lambda d: _write(d / "empty.mp4", b""), "empty"),
        (lambda d: _write(d / "notes.mp4", b"these are not the frames you are looking for\n" * 50), "cannot read"),
        (lambda d: _audio_only(d / "audio.m4a"), "no video stream"),
        (lambda d: _truncated(d / "cut.mp4"), "cannot read"),
    ],
    ids=["missing", "zero-bytes", "not-a-video", "no-video-stream", "truncated-mp4"],
)
def test_bad_input_is_a_clear_error(tmp_path: Path, make_input, message: str, capsys: pytest.CaptureFixture) -> None:
    path = make_input(tmp_path)
    with pytest.raises(InputError, match=message):
        anonymize_video(path, tmp_path / "out.mp4", **COVERS)
    assert main(["anonymize", str(path), "-o", str(tmp_path / "out.mp4"), "--no-progress"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error:") and message in err[0]
    assert not (tmp_path / "out.mp4").exists()


def test_unwritable_output_is_a_clear_error(face_clip: SyntheticClip, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(OutputError, match="does not exist"):
        anonymize_video(face_clip.path, tmp_path / "no" / "such" / "dir" / "out.mp4", **COVERS)
    assert main(["anonymize", str(face_clip.path), "-o", "/proc/out.mp4", "--no-progress", "--method", "solid"]) == 1
    assert capsys.readouterr().err.startswith("error: cannot write")


def test_output_must_not_overwrite_input(face_clip: SyntheticClip) -> None:
    with pytest.raises(OutputError, match="overwrite"):
        anonymize_video(face_clip.path, face_clip.path, **COVERS)


def test_a_hard_link_to_the_input_is_refused_and_the_input_kept(face_clip: SyntheticClip, tmp_path: Path) -> None:
    import os

    source = tmp_path / "in.mp4"
    source.write_bytes(face_clip.path.read_bytes())
    link = tmp_path / "link.mp4"
    os.link(source, link)
    with pytest.raises(OutputError, match="overwrite"):
        anonymize_video(source, link, **COVERS)
    assert source.read_bytes() == face_clip.path.read_bytes()


def test_a_job_failing_before_its_first_frame_leaves_an_existing_output_as_it_was(face_clip: SyntheticClip, tmp_path: Path) -> None:
    # AAC audio cannot go into WebM: the job fails while the output is being set up
    existing = tmp_path / "done.webm"
    existing.write_bytes(b"an earlier, finished output")
    with pytest.raises(OutputError, match="no-audio"):
        anonymize_video(face_clip.path, existing, **COVERS)
    assert existing.read_bytes() == b"an earlier, finished output"
    # an output the job created itself is removed, not left empty
    with pytest.raises(OutputError):
        anonymize_video(face_clip.path, tmp_path / "out.xyz", **COVERS)
    assert not (tmp_path / "out.xyz").exists()


class _FullDisk:
    """An output container whose last write (the trailer, at close) fails as a full disk does."""

    def __init__(self, container) -> None:
        self._container = container

    def __getattr__(self, name):
        return getattr(self._container, name)

    def close(self) -> None:
        import av

        self._container.close()
        raise av.error.OSError(27, "File too large")


def test_a_write_failing_when_the_output_is_finished_is_a_clear_error(face_clip: SyntheticClip, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from sdgan_stream.io.sink import VideoFileSink

    real_init = VideoFileSink.__init__

    def with_a_full_disk(self, *args, **kwargs) -> None:
        real_init(self, *args, **kwargs)
        self._container = _FullDisk(self._container)

    monkeypatch.setattr(VideoFileSink, "__init__", with_a_full_disk)
    with pytest.raises(OutputError, match="File too large"):
        anonymize_video(face_clip.path, tmp_path / "out.mp4", **COVERS)


def test_a_folder_output_that_is_a_file_is_a_one_line_error(face_clip: SyntheticClip, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    folder = tmp_path / "videos"
    folder.mkdir()
    (folder / "a.mp4").write_bytes(face_clip.path.read_bytes())
    taken = tmp_path / "taken"
    taken.write_text("a file")
    assert main(["anonymize", str(folder), "-o", str(taken), "--no-progress"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: cannot use")


def test_ctrl_c_while_the_command_line_is_read_is_exit_130_without_a_traceback(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> None:
    import sdgan_stream.cli as cli

    def interrupted():
        raise KeyboardInterrupt

    monkeypatch.setattr(cli, "build_parser", interrupted)
    assert cli.main(["anonymize", "x.mp4"]) == 130
    assert capsys.readouterr().err.strip() == "interrupted"


def test_the_command_line_starts_without_torch() -> None:
    # a cover job needs no torch, and importing it cost a second at every start (and widened the window in
    # which a Ctrl-C lands inside an import); the parser reads the generator's defaults from a torch-free module
    import subprocess
    import sys

    code = ("import sys; from sdgan_stream.cli import build_parser; build_parser().parse_args(['anonymize', 'x.mp4']); "
            "from sdgan_stream.models import GeneratorConfig; GeneratorConfig(); print('torch' in sys.modules)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "False"


def test_an_avi_output_keeps_its_frames_in_time_order(face_clip: SyntheticClip, tmp_path: Path) -> None:
    # AVI stores no presentation times: B-frames there came out with their times shuffled
    import av

    out = tmp_path / "out.avi"
    anonymize_video(face_clip.path, out, audio=False, **COVERS)
    with av.open(str(out)) as container:
        times = [float(frame.time) for frame in container.decode(video=0)]
    assert len(times) == face_clip.frame_count and times == sorted(times)


def _ts_recording(path: Path, frames: int, size: tuple[int, int] = (160, 120)) -> bytes:
    """An MPEG-TS recording with H.264 video (25 fps) and AAC audio whose timestamps start at zero."""
    import av

    with av.open(str(path), "w", format="mpegts") as container:
        stream = container.add_stream("libx264", rate=25)
        stream.width, stream.height, stream.pix_fmt = size[0], size[1], "yuv420p"
        audio = container.add_stream("aac", rate=48000, layout="mono")
        for i in range(frames):
            frame = av.VideoFrame.from_ndarray(np.full((size[1], size[0], 3), 10 * i, np.uint8), format="rgb24")
            frame.pts = i
            for packet in stream.encode(frame):
                container.mux(packet)
        for start in range(0, frames * 48000 // 25, 1024):
            sound = av.AudioFrame.from_ndarray(np.zeros((1, 1024), np.float32), format="fltp", layout="mono")
            sound.sample_rate, sound.pts = 48000, start
            for packet in audio.encode(sound):
                container.mux(packet)
        for coder in (stream, audio):
            for packet in coder.encode(None):
                container.mux(packet)
    return path.read_bytes()


def test_two_ts_recordings_joined_keep_their_frames_in_time(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    # the second recording's timestamps start again from zero: the rest continues one frame (audio: one packet)
    # after the last
    joined = tmp_path / "joined.ts"
    joined.write_bytes(_ts_recording(tmp_path / "a.ts", 10) + _ts_recording(tmp_path / "b.ts", 10))
    out = tmp_path / "out.mkv"
    with caplog.at_level("WARNING"):
        report = anonymize_video(joined, out, audio=True, **COVERS)
    assert report.frames == 20 and "discontinuity" in caplog.text
    import av

    with av.open(str(out)) as container:
        times = [float(frame.time) for frame in container.decode(video=0)]
    with av.open(str(joined)) as container:
        audio_in = len([p for p in container.demux(audio=0) if p.size])
    with av.open(str(out)) as container:
        audio_out = len([p for p in container.demux(audio=0) if p.size])
    steps = np.diff(times)
    assert len(times) == 20 and np.allclose(steps, 0.04, atol=0.002), times
    assert audio_out == audio_in > 0  # every audio packet, past the jump too


def test_folder_input_anonymizes_every_video(face_clip: SyntheticClip, tmp_path: Path) -> None:
    folder = tmp_path / "videos"
    folder.mkdir()
    for name in ("a.mp4", "b.mp4"):
        (folder / name).write_bytes(face_clip.path.read_bytes())
    (folder / "readme.txt").write_text("not a video")
    assert main(["anonymize", str(folder), "--method", "solid", "--no-track", "--no-progress"]) == 0
    assert sorted(p.name for p in folder.glob("*_anonymized.mp4")) == ["a_anonymized.mp4", "b_anonymized.mp4"]


# The command in a child process whose input stalls after STALL_AFTER frames, as a network disk that
# stopped answering would: it prints STALLED and waits for the job's stop event. The signal is sent
# only then, so the run is provably still running when it arrives, however fast the machine (the
# earlier version of this test signalled a run that could already have finished: exit 0, not 130).
_STALLING_CLI = """
import sys, threading
from sdgan_stream.cli import main
from sdgan_stream.io.source import VideoFileSource

stall_after = int(sys.argv[1])
frames = VideoFileSource.frames

def stalling(self, stop=None):
    for count, frame in enumerate(frames(self, stop), start=1):
        yield frame
        if count == stall_after:
            print("STALLED", flush=True)
            (stop or threading.Event()).wait()  # no stop event passed down: this hangs and the test fails
            return

VideoFileSource.frames = stalling
sys.exit(main(sys.argv[2:]))
"""
STALL_AFTER = 12


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_interrupt_finalizes_a_playable_output(face_clip: SyntheticClip, tmp_path: Path, sig: int) -> None:
    out = tmp_path / "interrupted.mp4"
    command = [sys.executable, "-c", _STALLING_CLI, str(STALL_AFTER), "anonymize", str(face_clip.path), "-o", str(out),
               "--method", "solid", "--no-track", "--no-progress", "--detect-size", "320x320"]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert process.stdout is not None
        line = finishes_within(120, process.stdout.readline)  # the run is under way and cannot finish by itself
        assert line.strip() == "STALLED", process.stderr.read() if process.stderr else ""
        process.send_signal(sig)
        _, err = process.communicate(timeout=120)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert process.returncode == 130, err
    frames, pts, _ = read_frames(out)
    assert len(frames) == STALL_AFTER  # every frame decoded before the stop went out, anonymized
    assert pts == sorted(pts)
    assert "interrupted" in err
    assert audio_packets(out)  # audio cut at the last frame, still there


# -- failures end the job, every thread, within bounded time; what was written stays playable ----------------


def test_a_detector_failing_on_every_frame_ends_the_job_with_a_playable_output(face_clip: SyntheticClip, tmp_path: Path) -> None:
    out = tmp_path / "failed.mp4"
    before = set(threading.enumerate())
    with pytest.raises(RuntimeError, match="in a row"):
        finishes_within(120, anonymize_video, face_clip.path, out, detector=_BrokenDetector(), **COVERS)
    assert not live_threads(besides=before)
    original, _, _ = read_frames(face_clip.path)
    result, pts, _ = read_frames(out)
    assert 0 < len(result) < face_clip.frame_count and pts == sorted(pts)
    _assert_faces_covered(original[: len(result)], result, face_clip)  # frames not analysed: covered whole


def test_a_failing_output_ends_the_job_with_a_playable_output(face_clip: SyntheticClip, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write = VideoFileSink.write

    def failing_write(self: VideoFileSink, frame: VideoFrame) -> None:
        if self.frames_written == 10:
            raise OutputError(f"writing {self.path} failed: No space left on device (injected)")
        write(self, frame)

    monkeypatch.setattr(VideoFileSink, "write", failing_write)
    out = tmp_path / "disk_full.mp4"
    with pytest.raises(OutputError, match="No space left"):
        finishes_within(120, anonymize_video, face_clip.path, out, **COVERS)
    frames, _, _ = read_frames(out)
    assert len(frames) == 10


def test_an_input_failing_part_way_ends_the_job_with_a_playable_output(face_clip: SyntheticClip, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    frames = VideoFileSource.frames

    def failing(self: VideoFileSource, stop: threading.Event | None = None):
        for count, frame in enumerate(frames(self, stop)):
            if count == 10:
                raise InputError(f"{self.path} vanished (injected)")
            yield frame

    monkeypatch.setattr(VideoFileSource, "frames", failing)
    out = tmp_path / "vanished.mp4"
    with pytest.raises(InputError, match="vanished"):
        finishes_within(120, anonymize_video, face_clip.path, out, **COVERS)
    result, _, _ = read_frames(out)
    assert 0 < len(result) <= 10


def test_on_start_raising_leaves_no_output_open_and_closes_the_renderer(face_clip: SyntheticClip, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    closed: list[str] = []

    class Renderer(CoverRenderer):
        def close(self) -> None:
            closed.append(self.name)

    monkeypatch.setattr("sdgan_stream.api.build_renderer", lambda options, **_: Renderer(method="pixelate"))
    out = tmp_path / "never.mp4"

    def on_start(_info: object) -> None:
        raise RuntimeError("progress bar failed")

    with pytest.raises(RuntimeError, match="progress bar"):
        anonymize_video(face_clip.path, out, on_start=on_start, **COVERS)
    assert not out.exists()
    open_paths = []
    for fd in os.listdir("/proc/self/fd"):
        try:
            open_paths.append(os.readlink(f"/proc/self/fd/{fd}"))
        except OSError:
            continue
    assert not [p for p in open_paths if str(out) in p], "the output file was left open"
    assert closed == ["pixelate"]
    anonymize_video(face_clip.path, out, **COVERS)
    assert closed == ["pixelate", "pixelate"]  # and after a job that went well


def test_the_sdgan_renderer_releases_its_generator_backend() -> None:
    from sdgan_stream.models.generator import GeneratorConfig
    from sdgan_stream.render import SdganRenderer

    class Backend:  # onnxruntime's backend holds a worker pool that close() stops
        device = "cpu"
        closed = 0

        def close(self) -> None:
            self.closed += 1

    backend = Backend()
    renderer = SdganRenderer(backend=backend, config=GeneratorConfig(), landmarker=None, fallback=CoverRenderer())  # type: ignore[arg-type]
    renderer.close()
    assert backend.closed == 1


def test_a_stop_before_the_first_frame_leaves_no_output(face_clip: SyntheticClip, tmp_path: Path) -> None:
    stop = threading.Event()
    stop.set()
    out = tmp_path / "stopped.mp4"
    report = anonymize_video(face_clip.path, out, stop_event=stop, **COVERS)
    assert report.interrupted and report.frames == 0 and not out.exists()


def test_one_stop_event_serves_jobs_in_a_row(face_clip: SyntheticClip, tmp_path: Path) -> None:
    """The folder command passes one event (set by signals) to every job: a job that ends normally
    must leave it unset."""
    stop = threading.Event()
    first = anonymize_video(face_clip.path, tmp_path / "a.mp4", stop_event=stop, **COVERS)
    second = anonymize_video(face_clip.path, tmp_path / "b.mp4", stop_event=stop, **COVERS)
    assert not stop.is_set() and first.frames == second.frames == face_clip.frame_count


class _BrokenRenderer:
    name = "broken"

    def render(self, image, faces):
        raise RuntimeError("generator exploded")


class _BrokenDetector:
    def detect(self, image):
        raise RuntimeError("detector exploded")


class _FixedDetector:
    def __init__(self, box):
        self.box = np.asarray(box, np.float32)

    def detect(self, image):
        return Detections(boxes=self.box[None], scores=np.array([0.9], np.float32), landmarks=np.zeros((1, 5, 2), np.float32))


def _frame(value: int = 128) -> VideoFrame:
    rng = np.random.default_rng(value)
    return VideoFrame(image=rng.integers(0, 256, (120, 160, 3), dtype=np.uint8), index=0, pts=0, time_base=None)


def test_a_failing_renderer_falls_back_to_solid_covers() -> None:
    anonymizer = FrameAnonymizer(detector=_FixedDetector([40, 30, 90, 90]), renderer=_BrokenRenderer())
    frame = _frame()
    out = anonymizer.push(frame)[0]
    assert (out.image[40:80, 50:80] == 0).all()
    assert anonymizer.stats["fallback_renderer_error"] == 1


def test_a_failing_detector_covers_the_whole_frame() -> None:
    anonymizer = FrameAnonymizer(detector=_BrokenDetector(), renderer=CoverRenderer())
    frame = _frame()
    original = frame.image.copy()
    out = anonymizer.push(frame)[0]
    assert (np.abs(out.image.astype(int) - original.astype(int)).max(axis=2) > 20).mean() > 0.9
    assert anonymizer.stats["frames_covered_whole"] == 1


@pytest.mark.parametrize("track", [False, True])
def test_a_face_the_detector_cannot_place_covers_the_whole_frame(track: bool) -> None:
    # a non-finite box (an overflow in the network) is a face somewhere: nothing smaller than the frame hides it
    from sdgan_stream.track import FaceTracker

    tracker = FaceTracker(fps=25.0) if track else None
    anonymizer = FrameAnonymizer(detector=_FixedDetector([np.nan, 30, 90, 90]), renderer=CoverRenderer(), tracker=tracker)
    frame = _frame()
    original = frame.image.copy()
    out = anonymizer.push(frame)[0]
    assert (np.abs(out.image.astype(int) - original.astype(int)).max(axis=2) > 20).mean() > 0.9
    assert anonymizer.stats["frames_covered_whole"] == 1


def test_persistently_failing_detector_ends_the_job() -> None:
    anonymizer = FrameAnonymizer(detector=_BrokenDetector(), renderer=CoverRenderer())
    with pytest.raises(RuntimeError, match="in a row"):
        for _ in range(100):
            anonymizer.push(_frame())


def test_options_reject_nonsense() -> None:
    with pytest.raises(ValueError):
        AnonymizeOptions(method="swirl")
    with pytest.raises(ValueError):
        AnonymizeOptions(threshold=1.5)


def test_the_api_honours_an_explicit_none_as_the_cli_does(face_clip: SyntheticClip, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from sdgan_stream import api
    from sdgan_stream.cli import build_parser
    from sdgan_stream.cli_options import options_from_args

    options = AnonymizeOptions(seed=5, detect_size=(320, 320), weights="other.safetensors")
    changed = options.with_overrides(detect_size=None, seed=None, weights=None)
    assert (changed.detect_size, changed.seed, changed.weights) == (None, None, None)
    args = build_parser().parse_args(["anonymize", "x.mp4", "--detect-size", "full"])
    assert options_from_args(args).detect_size is None  # the command line's meaning of the same value
    with pytest.raises(ValueError, match="unknown option"):
        options.with_overrides(colour="red")
    seen: list[AnonymizeOptions] = []
    build_detector = api.build_detector
    monkeypatch.setattr(api, "build_detector", lambda o, **kw: seen.append(o) or build_detector(o, **kw))
    anonymize_video(face_clip.path, tmp_path / "full.mp4", method="pixelate", track=False, detect_size=None)
    assert seen[0].detect_size is None  # detected at full size, not at the 960x960 default


def test_a_config_file_reads_without_tomllib_as_on_python_3_10(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import tomllib

    from sdgan_stream.config import load_options_file

    monkeypatch.setitem(sys.modules, "tomllib", None)  # `import tomllib` raises ImportError, as on 3.10
    monkeypatch.setitem(sys.modules, "tomli", tomllib)  # the backport setup.cfg requires there: same API
    path = tmp_path / "job.toml"
    path.write_text('[anonymize]\nmethod = "solid"\ndetect_size = "full"\nseed = 3\n')
    assert load_options_file(path) == {"method": "solid", "detect_size": None, "seed": 3}


def test_cli_rejects_a_bad_detect_size(face_clip: SyntheticClip) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["anonymize", str(face_clip.path), "--detect-size", "big"])
    assert exc.value.code == 2


def _write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


def _audio_only(path: Path) -> Path:
    with av.open(str(path), "w") as container:
        stream = container.add_stream("aac", rate=48000, layout="mono")
        for i in range(20):
            frame = av.AudioFrame.from_ndarray(np.zeros((1, 1024), np.float32), format="fltp", layout="mono")
            frame.sample_rate, frame.pts = 48000, i * 1024
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode(None):
            container.mux(packet)
    return path


def _truncated(path: Path) -> Path:
    clip = make_face_clip(path, frames=10, faces=1, audio=False)
    data = clip.path.read_bytes()
    clip.path.write_bytes(data[: len(data) // 2])  # mp4 index (moov) is at the end: gone
    return path


