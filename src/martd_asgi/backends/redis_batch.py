"""Calls on one channel that come together go to Redis together.

Subscribers come in bursts: a push answers every long-poll of a channel, and
they all poll again at once; a page load opens many streams. A Redis round
trip per attach, history read and detach would cost more CPU than serving the
subscribers does. So a ``Gather`` holds the calls of a channel made in the same
event-loop turn, or while that channel's previous batch is on its way, and
runs them as one script: one round trip for the whole burst, and never two
batches of one channel in flight (this process's writes to it stay in order).

``cancel_all`` ends the background tasks of the backend's parts at close.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable, Iterable
from typing import Any, Generic, TypeVar

In = TypeVar("In")
Out = TypeVar("Out")


class Gather(Generic[In, Out]):
    """``await gather.call(channel, item)``: ``run(channel, items)`` answers each item."""

    def __init__(self, run: Callable[[str, list[In]], Awaitable[list[Out]]]) -> None:
        self._run = run
        self._pending: dict[str, list[tuple[In, asyncio.Future[Out]]]] = {}
        self._busy: dict[str, asyncio.Task[None]] = {}  # channels whose batch is on its way

    def __len__(self) -> int:
        """Channels with calls waiting or on their way."""
        return len(self._busy)

    async def call(self, channel: str, item: In) -> Out:
        future: asyncio.Future[Out] = asyncio.get_running_loop().create_future()
        self._pending.setdefault(channel, []).append((item, future))
        if channel not in self._busy:
            # (a task's first step runs after this turn: what else this turn
            # brings for the channel goes in the same batch)
            self._busy[channel] = asyncio.ensure_future(self._drain(channel))
        return await future

    async def _drain(self, channel: str) -> None:
        try:
            while True:
                batch = self._pending.pop(channel, None)
                if not batch:
                    return
                try:
                    results = await self._run(channel, [item for item, _ in batch])
                except Exception as exc:  # every call of the batch fails with it
                    for _, future in batch:
                        if not future.done():
                            future.set_exception(exc)
                    continue
                except BaseException:  # cancelled: so is every call waiting
                    for _, future in batch:
                        future.cancel()
                    for _, future in self._pending.pop(channel, []):
                        future.cancel()
                    raise
                for (_, future), result in zip(batch, results, strict=True):
                    if not future.done():
                        future.set_result(result)
        finally:
            self._busy.pop(channel, None)


async def cancel_all(tasks: Iterable[asyncio.Task[Any]]) -> None:
    """Cancel ``tasks`` and wait until each has ended, whatever it ended with."""
    tasks = list(tasks)
    for task in tasks:
        task.cancel()
    for task in tasks:
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await task
