"""The sink's H.264 encoder choice: NVENC when it opens, libx264 otherwise, logged."""

from __future__ import annotations

import logging
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest

from sdgan_stream.io import sink as sink_module
from sdgan_stream.io.sink import VideoFileSink, choose_h264_encoder
from sdgan_stream.types import VideoFrame, VideoInfo


def test_without_nvenc_the_sink_falls_back_to_libx264_and_says_so(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    if sink_module.nvenc_opens():
        pytest.skip("NVENC opens on this machine: the fallback is tested where it does not")
    sink_module.nvenc_opens.cache_clear()  # probe again so that the probe's own log line is seen
    info = VideoInfo(width=64, height=48, time_base=Fraction(1, 25), average_rate=Fraction(25), frame_count=2)
    with caplog.at_level(logging.INFO, logger="sdgan_stream.io.sink"):
        sink = VideoFileSink(tmp_path / "out.mp4", info)
        for index in range(2):
            sink.write(VideoFrame(image=np.full((48, 64, 3), 90, np.uint8), index=index, pts=index, time_base=Fraction(1, 25)))
        sink.close()
    assert "h264_nvenc" in caplog.text and "video encoder: libx264" in caplog.text
    with av.open(str(tmp_path / "out.mp4")) as container:
        assert container.streams.video[0].codec_context.name == "h264"
        assert sum(1 for _ in container.decode(video=0)) == 2


def test_nvenc_is_chosen_only_for_8_bit_420_and_only_when_it_opens(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sink_module, "nvenc_opens", lambda: True)
    assert choose_h264_encoder("yuv420p") == "h264_nvenc"
    assert choose_h264_encoder("yuv420p10le") == "libx264" and choose_h264_encoder("yuv444p") == "libx264"
    assert choose_h264_encoder("yuv420p", "libx264") == "libx264"
    monkeypatch.setattr(sink_module, "nvenc_opens", lambda: False)
    assert choose_h264_encoder("yuv420p") == "libx264"
    with pytest.raises(ValueError):
        choose_h264_encoder("yuv420p", "x265")
