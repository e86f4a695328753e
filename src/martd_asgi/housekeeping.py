"""Memory that comes back after load: a full collection and a heap trim, now and then.

When martd is the server's app it raises the collector's thresholds (see
``tune_collector``), which saves much CPU but means the oldest generation is
almost never collected. Reference cycles that outlive their connection then pile
up: uvicorn's stock HTTP protocol stays in a cycle after every WebSocket upgrade
(martd's own, ``protocols.HTTPProtocol``, breaks it), so connect/close churn
alone grew a server by megabytes per minute, for good. So whoever tunes the
collector also runs a full collection every
``interval`` seconds, and then asks the C allocator to hand free heap pages back
to the system (glibc's ``malloc_trim``; elsewhere nothing), since freed objects
alone leave the process's resident size where the peak put it.
"""

from __future__ import annotations

import asyncio
import ctypes
import ctypes.util
import gc
import sys
from collections.abc import Callable


def _malloc_trim() -> Callable[[], object] | None:
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        trim = libc.malloc_trim
    except (OSError, AttributeError):  # not glibc (musl has no malloc_trim)
        return None
    trim.argtypes = [ctypes.c_size_t]
    trim.restype = ctypes.c_int
    return lambda: trim(0)


class Housekeeper:
    """Runs :func:`sweep` every ``interval`` seconds on the running loop."""

    def __init__(self, interval: float) -> None:
        self.interval = interval
        self.sweeps = 0
        self._trim = _malloc_trim()
        self._timer: asyncio.TimerHandle | None = None

    def start(self) -> None:
        if self.interval > 0 and self._timer is None:
            self._timer = asyncio.get_running_loop().call_later(self.interval, self._tick)

    def stop(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _tick(self) -> None:
        self.sweep()
        self._timer = asyncio.get_running_loop().call_later(self.interval, self._tick)

    def sweep(self) -> None:
        gc.collect()
        if self._trim is not None:
            self._trim()
        self.sweeps += 1
