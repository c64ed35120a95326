"""Masking credentials in URLs before they reach a log line, an error message or a stats line.

Cameras are addressed as ``rtsp://user:password@host/...`` or carry the password in the query
(``...?user=admin&password=...``). Both are masked:

>>> redact_url("rtsp://admin:s3cret@10.0.0.5:554/stream1")
'rtsp://***@10.0.0.5:554/stream1'
>>> redact_url("rtsp://10.0.0.5/cam?channel=1&user=admin&password=s3cret")
'rtsp://10.0.0.5/cam?channel=1&user=***&password=***'
>>> redact_text("cannot open 'rtsp://a:b@cam/x': Connection refused")
"cannot open 'rtsp://***@cam/x': Connection refused"

:func:`install_log_redaction` adds a filter to the logging handlers so that *every* log record (its
message, its arguments, its traceback) is masked, including text that came from FFmpeg or PyAV
exceptions which quote the URL they failed on.
"""

from __future__ import annotations

import logging
import re

__all__ = ["RedactingFilter", "install_log_redaction", "redact_text", "redact_url"]

MASK = "***"

# scheme://userinfo@ - userinfo is everything up to the last '@' before the host part.
# Greedy up to the last '@' of the authority, so an unescaped '@' inside a password is masked too.
_USERINFO = re.compile(r"(?P<scheme>\b[a-zA-Z][a-zA-Z0-9+.\-]*://)(?P<userinfo>[^/?#\s'\"<>]*@)")
# key=value pairs in a query whose key names a secret (or a user name that pairs with one).
_SECRET_KEYS = r"user(?:name)?|login|pass(?:word|wd)?|pwd|token|access_token|auth|key|api_?key|secret|signature|sig"
_QUERY_SECRET = re.compile(rf"(?P<key>[?&;](?:{_SECRET_KEYS})=)(?P<value>[^&;#\s'\"<>]*)", re.IGNORECASE)
_URL = re.compile(r"\b[a-zA-Z][a-zA-Z0-9+.\-]*://[^\s'\"<>]+")


def redact_url(url: str) -> str:
    """``url`` with its user name, password and secret query values replaced by ``***``."""
    url = _USERINFO.sub(lambda m: f"{m['scheme']}{MASK}@", url)
    return _QUERY_SECRET.sub(lambda m: f"{m['key']}{MASK}", url)


def redact_text(text: str) -> str:
    """Every URL inside free text (an error message, a log line) passed through :func:`redact_url`."""
    if "://" not in text:
        return text
    return _URL.sub(lambda m: redact_url(m.group(0)), text)


class RedactingFilter(logging.Filter):
    """A logging filter that masks credentials in the fully formatted message and traceback.

    The record is rewritten in place (message formatted, arguments dropped), so every handler and
    formatter downstream sees only the masked text.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # a broken format string: leave it to logging's own error path
            return True
        masked = redact_text(message)
        if masked != message or record.args:
            record.msg, record.args = masked, None
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = redact_text(record.exc_text)
        if record.stack_info:
            record.stack_info = redact_text(record.stack_info)
        return True


_FILTER = RedactingFilter()


def install_log_redaction(logger: logging.Logger | None = None) -> None:
    """Add the redacting filter to every handler of ``logger`` (default: the root logger).

    Handler filters see records propagated from every child logger (logger filters do not). Safe to
    call more than once. Handlers added later are not covered: call it after logging is configured.
    """
    target = logger or logging.getLogger()
    for handler in target.handlers:
        if _FILTER not in handler.filters:
            handler.addFilter(_FILTER)
