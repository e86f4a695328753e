"""End martd's streams when the server is told to stop.

Servers handle SIGTERM by waiting for open responses to end, and a push
server's streams never end by themselves. So martd chains a handler in front
of the server's own (only where the server installed one, from the main
thread) that tells every running app in the process to close its
subscriptions, on the app's own event loop.
"""

from __future__ import annotations

import asyncio
import signal
import threading
import weakref
from typing import Any, Protocol


class Closing(Protocol):
    def begin_shutdown(self) -> None: ...


_apps: weakref.WeakKeyDictionary[Closing, asyncio.AbstractEventLoop] = weakref.WeakKeyDictionary()


def watch(app: Closing, loop: asyncio.AbstractEventLoop) -> None:
    """Tell ``app`` (running on ``loop``) when the process is asked to stop."""
    _apps[app] = loop
    _install()


def unwatch(app: Closing) -> None:
    _apps.pop(app, None)


def _notify() -> None:
    for app, loop in list(_apps.items()):
        try:
            loop.call_soon_threadsafe(app.begin_shutdown)
        except RuntimeError:  # its loop is closed
            _apps.pop(app, None)


def _install() -> None:
    if threading.current_thread() is not threading.main_thread():
        return
    for sig in (signal.SIGTERM, signal.SIGINT):
        previous = signal.getsignal(sig)
        if not callable(previous) or getattr(previous, "_martd", False):
            continue

        def handler(signum: int, frame: Any, previous: Any = previous) -> None:
            _notify()
            previous(signum, frame)

        handler._martd = True  # type: ignore[attr-defined]
        signal.signal(sig, handler)
