"""SIGTERM reaches every running app of the process, then the server's own handler."""

from __future__ import annotations

import asyncio
import signal

import pytest

from martd_asgi import signals

pytestmark = pytest.mark.anyio


class App:
    def __init__(self) -> None:
        self.told = asyncio.Event()

    def begin_shutdown(self) -> None:
        self.told.set()


async def test_signals_tell_every_app_then_the_server() -> None:
    server_told: list[int] = []
    original = signal.signal(signal.SIGTERM, lambda signum, frame: server_told.append(signum))
    original_int = signal.getsignal(signal.SIGINT)
    try:
        first, second = App(), App()
        loop = asyncio.get_running_loop()
        signals.watch(first, loop)
        signals.watch(second, loop)  # a second app in the same process
        signal.raise_signal(signal.SIGTERM)
        async with asyncio.timeout(5):
            await first.told.wait()
            await second.told.wait()
        assert server_told == [signal.SIGTERM]
        signals.unwatch(first)
        signals.unwatch(second)
    finally:
        signal.signal(signal.SIGTERM, original)
        signal.signal(signal.SIGINT, original_int)
