"""One subscription's delivery: a ``send`` driven by hand, and what to do when it blocks.

``send`` is stepped directly (``coro.send(None)``): with a server like uvicorn
it completes without suspending while the socket takes data, so a healthy
subscriber costs no task, no queue and no wake-up. A stream's events of one
loop turn leave as one write. Only a subscriber whose ``send`` suspends (its
socket is full) gets a task that finishes that send and then drains a bounded
backlog of its own; one whose backlog overflows, or whose send stays blocked
too long, is cut and resumes by etag. Transports subclass ``Subscriber``.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Awaitable, Callable, Coroutine, Generator
from dataclasses import dataclass
from types import CoroutineType
from typing import TYPE_CHECKING, Any

from .backends.base import Control
from .channels import ZERO, EtagKey, Message
from .connection import drop_connection
from .types import CloseReason, Send

if TYPE_CHECKING:
    from .hub import Hub


class _Resumed:
    """Awaiting this continues a coroutine that was started by hand and suspended.

    The coroutine yielded what it waits for (an asyncio future, or None for a
    bare yield). This hands that value to the awaiting Task untouched, as if the
    Task had stepped the coroutine itself: the Task waits for the future, then
    sends its result in, or throws in what it throws (a cancellation). What the
    coroutine raises comes out of the ``await``.
    """

    __slots__ = ("coro", "yielded")

    def __init__(self, coro: Coroutine[Any, Any, None], yielded: Any) -> None:
        self.coro = coro
        self.yielded = yielded

    def __await__(self) -> Generator[Any, Any, None]:
        coro, yielded = self.coro, self.yielded
        self.yielded = None
        while True:
            try:
                sent = yield yielded
            except GeneratorExit:
                coro.close()
                raise
            except BaseException as exc:
                try:
                    yielded = coro.throw(exc)
                except StopIteration:
                    return
                continue
            try:
                yielded = coro.send(sent)
            except StopIteration:
                return


def _coalesce(events: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Join runs of HTTP body events into one (WebSocket messages stay apart)."""
    out: list[dict[str, Any]] = []
    run: list[dict[str, Any]] = []
    for event in events:
        if event["type"] == "http.response.body":
            run.append(event)
            continue
        out.extend(_join(run))
        run = []
        out.append(event)
    out.extend(_join(run))
    return out


def _join(run: list[dict[str, Any]]) -> list[dict[str, Any]]:
    if len(run) < 2:
        return run
    body = b"".join(event.get("body", b"") for event in run)
    more = run[-1].get("more_body", False)
    return [{"type": "http.response.body", "body": body, "more_body": more}]


async def _await(awaitable: Awaitable[None]) -> None:
    # a server whose send returns another awaitable than a coroutine
    await awaitable


def _uncancel() -> None:
    task = asyncio.current_task()
    if task is not None and hasattr(task, "uncancel"):
        task.uncancel()


@dataclass(frozen=True, slots=True)
class Bounds:
    """How far a subscriber may fall behind before it is cut (it resumes by etag)."""

    max_backlog: int = 1000  # items queued while busy; also events joined in one turn
    max_backlog_bytes: int = 4 << 20  # payload bytes queued while busy


class Subscriber:
    """One subscription: a ``send`` and what it has seen. Transports subclass it.

    ``busy`` is True while something else is sending for it (the handler sending
    history, or a parked send): events then go to ``backlog``, which ``drain``
    empties in order. Items of the backlog are messages and controls still to be
    encoded, or ready ASGI events (dicts) such as the end of the response.
    """

    __slots__ = (
        "backlog",
        "backlog_bytes",
        "bounds",
        "busy",
        "channels",
        "cid",
        "closed",
        "handler",
        "hub",
        "last",
        "missed",
        "pending",
        "send",
        "since",
        "task",
    )
    transport = "base"
    stream = False  # True: stays open, gets keep-alives; False: one answer, then done

    def __init__(self, send: Send, channels: list[str], cid: str, hub: Hub) -> None:
        self.send = send
        self.channels = channels
        self.last: list[EtagKey] = [ZERO] * len(channels)
        self.cid = cid
        self.busy = True  # until the handler has sent what comes first
        self.backlog: deque[Any] | None = None
        self.backlog_bytes = 0
        self.task: asyncio.Task[None] | None = None
        self.closed = False
        self.since = 0.0
        self.hub = hub
        self.bounds = hub.bounds
        self.handler = asyncio.current_task()
        self.missed: set[str] | None = None  # channels whose next delivery is marked missed
        self.pending: list[dict[str, Any]] | None = None  # stream events of this loop turn

    # -- what a transport provides

    def encode(self, msg: Message, index: int) -> dict[str, Any]:
        """Stream transports: the ASGI event that carries ``msg``."""
        raise NotImplementedError

    def emit(self, msg: Message, index: int) -> None:
        """Send one new message (not busy, not closed, not seen before)."""
        if self.stream:
            self.push(self.encode(msg, index))
        else:
            self.respond([msg])

    def respond(self, messages: list[Message]) -> None:
        """One-shot transports: answer with these messages."""
        raise NotImplementedError

    def tell(self, control: Control) -> None:
        """Tell about ``control`` and close."""
        raise NotImplementedError

    def end(self, reason: CloseReason) -> None:
        """Close: ``shutdown``, ``timeout`` (one-shot transports) or ``slow``."""
        raise NotImplementedError

    def ping_event(self) -> dict[str, Any] | None:
        return None

    # -- delivery

    def index(self, channel: str) -> int:
        return self.channels.index(channel) if len(self.channels) > 1 else 0

    def deliver(self, msg: Message) -> None:
        if self.closed:
            return
        if self.busy:
            self._queue(msg, msg.size)
            return
        # inline self.index(): this runs once per delivery
        index = self.channels.index(msg.channel) if len(self.channels) > 1 else 0
        if msg.key > self.last[index]:
            self.last[index] = msg.key
            self.emit(msg, index)

    def control(self, control: Control) -> None:
        if self.closed or (control.kind == "kicked" and self.cid == control.keep):
            return
        if control.kind == "missed":  # not a close: the next message says so
            if self.missed is None:
                self.missed = set()
            self.missed.add(control.channel)
            return
        if self.busy:
            self._queue(control, 0)
            return
        self.tell(control)

    def _queue(self, item: Any, size: int) -> None:
        backlog = self.backlog
        if backlog is None:
            backlog = self.backlog = deque()
        backlog.append(item)
        self.backlog_bytes += size
        if (
            len(backlog) > self.bounds.max_backlog
            or self.backlog_bytes > self.bounds.max_backlog_bytes
        ) and not self.closed:
            self.hub.cut(self)

    def push(self, event: dict[str, Any]) -> None:
        """Send ``event``: a stream's events of one loop turn go out together."""
        if self.busy:
            self._queue(event, 0)
            return
        if not self.stream:
            self.send_now(event)
            return
        pending = self.pending
        if pending is None:
            self.pending = [event]
            if self.hub.at_once:
                self.flush()  # a calm turn's lone message: no reason to wait
            else:
                self.hub.defer(self)
        else:
            pending.append(event)
            if len(pending) >= self.bounds.max_backlog:
                self.flush()  # a publisher that never yields: no unbounded turn

    def flush(self) -> None:
        """Send the events of this loop turn, several SSE frames as one write.

        Pushes that arrive together (concurrent publishers) then cost one
        system call per subscriber instead of one per message.
        """
        events, self.pending = self.pending, None
        if not events:
            return
        if len(events) > 1:
            events = _coalesce(events)
        for event in events:
            if self.busy:
                self._queue(event, 0)
            else:
                self.send_now(event)

    def send_now(self, event: dict[str, Any]) -> None:
        """Hand ``event`` to ``send`` now; park the subscriber if the send suspends."""
        awaitable = self.send(event)
        coro = awaitable if type(awaitable) is CoroutineType else _await(awaitable)
        try:
            yielded = coro.send(None)
        except StopIteration:
            return
        except Exception:
            self.lost()
            return
        self.busy = True
        self.hub.park(self)
        self.task = asyncio.ensure_future(self._resume(coro, yielded))

    async def _resume(self, coro: Coroutine[Any, Any, None], yielded: Any) -> None:
        try:
            await _Resumed(coro, yielded)
            await self.drain()
        except asyncio.CancelledError:
            pass
        except Exception:
            self.lost()
        finally:
            if self.task is asyncio.current_task():
                self.task = None
            self.hub.unpark(self)

    async def drain(self) -> None:
        """Send what queued up while busy, in order, then go live."""
        # self.backlog is read on every turn: what is sent here can queue more
        # (a control's closing events), and abort() drops it.
        while self.backlog:
            backlog = self.backlog
            item = backlog.popleft()
            if isinstance(item, dict):
                await self.send(item)
            elif self.closed:
                continue
            elif isinstance(item, Message):
                self.backlog_bytes -= item.size
                if not self.stream:
                    rest = [m for m in backlog if isinstance(m, Message)]
                    fresh = self.fresh([item, *rest])
                    if fresh:
                        for m in rest:
                            backlog.remove(m)
                        self.respond(fresh)
                    continue
                index = self.index(item.channel)
                if item.key > self.last[index]:
                    self.last[index] = item.key
                    await self.send(self.encode(item, index))
            elif not (item.kind == "kicked" and self.cid == item.keep):
                self.tell(item)
        self.busy = False

    def fresh(self, messages: list[Message]) -> list[Message]:
        """The messages not seen yet, in order, marking them seen."""
        out = []
        for msg in messages:
            index = self.index(msg.channel)
            if msg.key > self.last[index]:
                self.last[index] = msg.key
                out.append(msg)
        return out

    def finish(self, events: list[dict[str, Any]]) -> None:
        """Close after sending ``events`` (the last one ends the response)."""
        if self.closed:
            return
        self.closed = True
        self.hub.remove(self)
        if self.task is not None:
            # still parked: the stall limit applies to its last words too
            self.hub.park(self, since=self.since)
        if self.backlog:
            # in place: a drain running now holds this same deque
            kept = [item for item in self.backlog if isinstance(item, dict)]
            self.backlog.clear()
            self.backlog.extend(kept)
        for event in events:
            self.push(event)
        self.hub.schedule_wake(self)

    def abort(self) -> None:
        """Close without a word: the connection cannot take one (slow consumer)."""
        self.closed = True
        self.hub.remove(self)
        self.backlog = self.pending = None
        if self.task is not None:
            self.task.cancel()
            self.task = None
        drop_connection(self.send)
        self.wake()

    def lost(self) -> None:
        """The connection is gone (its send failed)."""
        self.closed = True
        self.hub.remove(self)
        self.backlog = self.pending = None

    def wake(self) -> None:
        """End the handler's wait for the client now."""
        handler, self.handler = self.handler, None
        if handler is not None and not handler.done():
            handler.cancel()

    async def wait(self, receive: Callable[[], Awaitable[dict[str, Any]]]) -> None:
        """The handler's part: wait until the client goes or we closed it."""
        try:
            while True:
                message = await receive()
                if message["type"] in ("http.disconnect", "websocket.disconnect"):
                    break
                if self.closed and not self.stream:
                    break
        except asyncio.CancelledError:
            if not self.closed or self.handler is not None:
                raise
            _uncancel()
        finally:
            self.handler = None
            if not self.closed:
                self.lost()
