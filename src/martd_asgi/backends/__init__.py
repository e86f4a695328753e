"""Where channels live: ``memory`` (one process) or ``redis://`` (many processes, many hosts).

``base.py`` is the protocol both implement; ``make_backend`` picks one by URL and
imports Redis only when asked for.
"""

from __future__ import annotations

from typing import Any

from .base import Backend

# Redis: TCP, TLS, or a Unix socket (``unix:///run/redis.sock?db=0``) on the same host.
REDIS_SCHEMES = ("redis://", "rediss://", "unix://")


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
