"""Errors with a one-line message meant for the person running the job."""

from __future__ import annotations


class SdganStreamError(Exception):
    """Base class: the CLI prints ``str(error)`` on one line and exits non-zero."""


class InputError(SdganStreamError):
    """The input cannot be read as a video (missing, empty, not a video, no video stream)."""


class OutputError(SdganStreamError):
    """The output cannot be written (unwritable path, container/codec refuses the stream)."""


class BackendUnavailableError(SdganStreamError):
    """A requested compute backend or execution provider is not available on this machine."""


class WeightsError(SdganStreamError):
    """Model weights are missing, corrupt or do not match the model configuration."""
