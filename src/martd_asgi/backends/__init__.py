"""Where channels live: ``memory`` (one process) or ``redis://`` (many processes, many hosts).

``base.py`` is the protocol both implement; ``make_backend`` picks one by URL and
imports Redis only when asked for.
"""

from __future__ import annotations

from typing import Any

from .base import Backend


def make_backend(url: str, **options: Any) -> Backend:
    """Choose a backend by URL."""
    if url == "memory":
        from .memory import MemoryBackend

        return MemoryBackend(**options)
    if url.startswith(("redis://", "rediss://")):
        from .redis import RedisBackend  # type: ignore[import-not-found,unused-ignore]

        backend: Backend = RedisBackend(url, **options)
        return backend
    raise ValueError(f"backend: unknown backend {url!r}")
