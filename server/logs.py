"""Process logging: quiet text or one JSON object per line, each line carrying the request id it belongs to.

The request id comes from the caller's ``x-request-id`` metadata (or is generated) and is sent back in the
trailing metadata under the same key; :class:`~server.metrics.RpcMetrics` sets it for the duration of each RPC.
"""

from __future__ import annotations

import contextvars
import json
import logging
import sys
import time
from typing import TextIO

#: The id of the RPC being handled in this context ("" outside RPCs).
request_id: contextvars.ContextVar[str] = contextvars.ContextVar("scout_request_id", default="")
REQUEST_ID_KEY = "x-request-id"
MAX_REQUEST_ID_CHARS = 128
_HANDLER = "scout"
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


class JsonFormatter(logging.Formatter):
    """One JSON object per record: time (RFC 3339, UTC), level, logger, message, request_id, and the exception."""

    def format(self, record: logging.LogRecord) -> str:
        """Render ``record`` as a single line of JSON."""
        entry = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        rid = request_id.get()
        if rid:
            entry["request_id"] = rid
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, ensure_ascii=False)


class _StderrHandler(logging.StreamHandler):
    """Writes to whatever ``sys.stderr`` is at each record.

    A stream bound once breaks when it is replaced and closed (as a test's capture is) while a thread still logs.
    """

    @property
    def stream(self) -> TextIO:
        return sys.stderr

    @stream.setter
    def stream(self, value: TextIO) -> None:
        pass


class _RequestIdFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        record.request_id = request_id.get()
        return True


def configure(level: str = "INFO", fmt: str = "text") -> None:
    """Configure the root logger: ``fmt`` is ``"text"`` (human) or ``"json"`` (one object per line)."""
    if fmt not in ("text", "json"):
        raise ValueError(f"log format must be 'text' or 'json', got {fmt!r}")
    handler = _StderrHandler()
    handler.addFilter(_RequestIdFilter())
    handler.setFormatter(JsonFormatter() if fmt == "json" else logging.Formatter(TEXT_FORMAT))
    handler.set_name(_HANDLER)
    root = logging.getLogger()
    for old in [h for h in root.handlers if h.get_name() == _HANDLER]:  # others (a test's capture) stay
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level.upper())
