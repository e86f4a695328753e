"""Where channels live: ``memory`` (one process) or ``redis://`` (many processes, many hosts).

``base.py`` is the protocol both implement; ``make_backend`` picks one by URL and
imports Redis only when asked for.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import parse_qsl, urlsplit

from .base import Backend

# Redis: TCP, TLS, or a Unix socket (``unix:///run/redis.sock?db=0``) on the same host.
REDIS_SCHEMES = ("redis://", "rediss://", "unix://")
YES = ("1", "true", "yes")


def check_url(url: str) -> None:
    """Refuse a backend URL that cannot work, at start-up (ValueError says why)."""
    if url == "memory":
        return
    if not url.startswith(REDIS_SCHEMES):
        raise ValueError("must be 'memory' or a redis:// / rediss:// / unix:// URL")
    if url.startswith("unix://"):
        parts = urlsplit(url)
        if parts.hostname:  # unix://run/redis.sock: "run" would be dropped, not read
            raise ValueError("a unix:// URL names the socket after three slashes: unix:///path")
        query = dict(parse_qsl(parts.query))
        if query.get("cluster", "").lower() in YES or query.get("sentinel"):
            raise ValueError("cluster= and sentinel= need a redis:// or rediss:// URL")


def make_backend(url: str, **options: Any) -> Backend:
    """Choose a backend by URL."""
    if url == "memory":
        from .memory import MemoryBackend

        return MemoryBackend(**options)
    if url.startswith(REDIS_SCHEMES):
        from .redis import RedisBackend  # type: ignore[import-not-found,unused-ignore]

        backend: Backend = RedisBackend(url, **options)
        return backend
    raise ValueError(f"backend: unknown backend {url!r}")
