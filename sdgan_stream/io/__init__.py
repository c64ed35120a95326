"""Video sources and sinks on PyAV."""

from .sink import VideoFileSink, output_path_for
from .source import VideoFileSource, is_video_file

__all__ = ["VideoFileSink", "VideoFileSource", "is_video_file", "output_path_for"]
