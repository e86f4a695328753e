"""Keep keys, tokens and secrets out of log lines, access logs included."""

from __future__ import annotations

import logging
import re
from urllib.parse import unquote_plus

SENSITIVE = frozenset({"key", "token", "secret", "password", "auth", "martd_auth"})
_NAME = re.compile(r"(?:^|(?<=[?&;]))(?P<name>[^=&;#\s\"?]+)=")
# A value runs to the next "&" (or the end of the request target), as the query
# parser (``parse_qsl``) splits it: a ";" or "#" inside a key is part of the key.
_VALUE_END = re.compile(r"[&\s]")


def _sensitive(name: str) -> bool:
    # decide on the name as the server reads it: %6Bey is key
    return unquote_plus(name).strip().lower() in SENSITIVE


def redact(text: str) -> str:
    """Replace the values of sensitive query parameters with ``***``."""
    out: list[str] = []
    done = 0
    for match in _NAME.finditer(text):
        if match.start() < done or not _sensitive(match["name"]):
            continue
        start = match.end()
        end = _VALUE_END.search(text, start)
        out.append(text[done:start] + "***")
        done = end.start() if end else len(text)
    out.append(text[done:])
    return "".join(out)


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
