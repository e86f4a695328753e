"""Keep keys, tokens and secrets out of log lines, access logs included."""

from __future__ import annotations

import logging
import re

SENSITIVE = ("key", "token", "secret", "password", "auth", "martd_auth")
_QUERY_VALUE = re.compile(
    r"(?P<name>(?:^|[?&;])(?:" + "|".join(SENSITIVE) + r"))=(?P<value>[^&;#\s\"]*)", re.IGNORECASE
)


def redact(text: str) -> str:
    """Replace the values of sensitive query parameters with ``***``."""
    return _QUERY_VALUE.sub(lambda m: f"{m.group('name')}=***", text)


class RedactingFilter(logging.Filter):
    """Redacts sensitive query values in a record's arguments (uvicorn's access log)."""

    def filter(self, record: logging.LogRecord) -> bool:
        args = record.args
        if isinstance(args, tuple) and args:
            record.args = tuple(redact(a) if isinstance(a, str) and "=" in a else a for a in args)
        elif isinstance(record.msg, str) and "=" in record.msg:
            record.msg = redact(record.msg)
        return True


_installed: set[str] = set()


def install(*names: str) -> None:
    """Add the filter to these loggers, once each."""
    for name in names:
        if name not in _installed:
            logging.getLogger(name).addFilter(RedactingFilter())
            _installed.add(name)
