"""sdgan-stream: replace every face in a video with a generated face of a different identity.

>>> import sdgan_stream
>>> sdgan_stream.__version__ != ""
True
"""

from __future__ import annotations

__version__ = "0.1.0"

from .api import JobReport, anonymize_video  # noqa: E402
from .config import AnonymizeOptions  # noqa: E402

__all__ = ["AnonymizeOptions", "JobReport", "__version__", "anonymize_video"]
