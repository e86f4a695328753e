"""``MARTD_LOG_FORMAT=json``: one JSON object per log line, for log collectors.

Applied when the app starts, to the handlers uvicorn set up (so ``uvicorn
martd_asgi:app`` needs no ``--log-config``) and to martd's own logger. Access
log lines get their fields (client, method, path, status) as keys. Query values
that look like secrets are redacted here too, whatever filters ran before.
"""

from __future__ import annotations

import json
import logging
import time
from typing import Any

from .logs import redact

LOGGERS = ("uvicorn", "uvicorn.error", "uvicorn.access", "martd")
ACCESS_FIELDS = ("client", "method", "path", "http_version", "status")


class JSONFormatter(logging.Formatter):
    """Formats a record as ``{"time", "level", "logger", "message", ...}``."""

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
        }
        args = record.args
        if record.name == "uvicorn.access" and isinstance(args, tuple) and len(args) == 5:
            for name, value in zip(ACCESS_FIELDS, args, strict=True):
                out[name] = redact(value) if isinstance(value, str) else value
        out["message"] = redact(record.getMessage())
        if record.exc_info:
            out["exception"] = redact(self.formatException(record.exc_info))
        return json.dumps(out, ensure_ascii=False, default=str)


def apply(log_format: str) -> None:
    """Switch the server's and martd's log handlers to ``log_format``."""
    if log_format != "json":
        return
    formatter = JSONFormatter()
    for name in LOGGERS:
        logger = logging.getLogger(name)
        for handler in logger.handlers:
            handler.setFormatter(formatter)
    martd = logging.getLogger("martd")
    if not martd.handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(formatter)
        martd.addHandler(handler)
        martd.propagate = False
