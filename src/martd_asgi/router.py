"""Local fan-out: from the backend's events to every subscriber's ``send``.

The hot path allocates per message, not per subscriber: a message is encoded
once per transport (``Message.encoded``) and the same ASGI event is handed to
each subscriber's ``send``. ``send`` is driven by hand (``coro.send(None)``):
with a server like uvicorn it completes without suspending while the socket
takes data, so a healthy subscriber costs no task, no queue and no wake-up.
Only a subscriber whose ``send`` suspends (its socket is full) gets a task that
finishes that send and then drains a bounded backlog of its own; a subscriber
whose backlog overflows, or whose send stays blocked too long, is cut. It
resumes by etag; it never slows the publisher or anyone else.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Awaitable, Callable, Coroutine
from types import CoroutineType
from typing import Any

from .backends.base import Control, Event
from .channels import ZERO, EtagKey, Message
from .connection import drop_connection, set_send_buffer

Send = Callable[[dict[str, Any]], Awaitable[None]]
SHUTDOWN_STALL = 1.0  # seconds a send may stay blocked once shutdown began


async def _finish(coro: Coroutine[Any, Any, None], yielded: Any) -> None:
    """Run to its end a coroutine that was started by hand and has suspended.

    It yielded what it awaits (an asyncio future, or None for a bare yield); we
    wait for that as its Task would have, then step it again. Yielding marked the
    future as being waited for (``_asyncio_future_blocking``); a Task clears that
    mark when it takes the future, and so must we, or awaiting it again fails
    ("await wasn't used with future").
    """
    while True:
        try:
            if yielded is None:
                await asyncio.sleep(0)
            else:
                if getattr(yielded, "_asyncio_future_blocking", False):
                    yielded._asyncio_future_blocking = False
                await yielded
        except asyncio.CancelledError:
            coro.close()
            raise
        except BaseException:
            pass
        try:
            yielded = coro.send(None)
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
        "busy",
        "channels",
        "cid",
        "closed",
        "handler",
        "last",
        "missed",
        "pending",
        "router",
        "send",
        "since",
        "task",
    )
    transport = "base"
    stream = False  # True: stays open, gets keep-alives; False: one answer, then done

    def __init__(self, send: Send, channels: list[str], cid: str, router: Router) -> None:
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
        self.router = router
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

    def end(self, reason: str) -> None:
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
            self._queue(msg, len(msg.data))
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
            len(backlog) > self.router.max_backlog
            or self.backlog_bytes > self.router.max_backlog_bytes
        ) and not self.closed:
            self.router.cut(self)

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
            self.router.defer(self)
        else:
            pending.append(event)
            if len(pending) >= self.router.max_backlog:
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
        self.since = time.monotonic()
        self.router.parked.add(self)
        self.task = asyncio.ensure_future(self._resume(coro, yielded))

    async def _resume(self, coro: Coroutine[Any, Any, None], yielded: Any) -> None:
        try:
            await _finish(coro, yielded)
            await self.drain()
        except asyncio.CancelledError:
            pass
        except Exception:
            self.lost()
        finally:
            if self.task is asyncio.current_task():
                self.task = None
            self.router.parked.discard(self)

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
                self.backlog_bytes -= len(item.data)
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
        self.router.remove(self)
        if self.task is not None:
            # still parked: the stall limit applies to its last words too
            self.router.parked.add(self)
        if self.backlog:
            # in place: a drain running now holds this same deque
            kept = [item for item in self.backlog if isinstance(item, dict)]
            self.backlog.clear()
            self.backlog.extend(kept)
        for event in events:
            self.push(event)
        self.router.schedule_wake(self)

    def abort(self) -> None:
        """Close without a word: the connection cannot take one (slow consumer)."""
        self.closed = True
        self.router.remove(self)
        self.backlog = self.pending = None
        if self.task is not None:
            self.task.cancel()
            self.task = None
        drop_connection(self.send)
        self.wake()

    def lost(self) -> None:
        """The connection is gone (its send failed)."""
        self.closed = True
        self.router.remove(self)
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


class Router:
    """Subscribers by channel, and the one timer that serves them all."""

    def __init__(
        self,
        *,
        max_backlog: int = 1000,
        max_backlog_bytes: int = 4 << 20,
        stall: float = 30.0,
        ping: float = 15.0,
    ) -> None:
        self.by_channel: dict[str, dict[Subscriber, None]] = {}
        self.streams: dict[Subscriber, None] = {}
        self.parked: set[Subscriber] = set()
        self.dirty: list[Subscriber] = []  # subscribers with events of this loop turn
        self._loop: asyncio.AbstractEventLoop | None = None
        self.deadlines: dict[int, list[Subscriber]] = {}
        self.max_backlog = max_backlog
        self.max_backlog_bytes = max_backlog_bytes
        self.stall = stall
        self.ping = ping
        self._next_ping = time.monotonic() + ping
        self._timer: asyncio.TimerHandle | None = None
        self._wake: list[tuple[float, Subscriber]] = []
        self.counters: dict[str, int] = {
            "delivered": 0,
            "dropped_slow": 0,
            "connections_total": 0,
        }
        self.on_deliver: Callable[[Message, int], None] | None = None
        self.sndbuf = 0  # bytes: the kernel send buffer of stream connections (0: as is)

    # -- registry

    def add(self, sub: Subscriber) -> None:
        for channel in sub.channels:
            subs = self.by_channel.get(channel)
            if subs is None:
                subs = self.by_channel[channel] = {}
            subs[sub] = None
        if sub.stream:
            self.streams[sub] = None
            if self.sndbuf:
                set_send_buffer(sub.send, self.sndbuf)
        self.counters["connections_total"] += 1

    def remove(self, sub: Subscriber) -> None:
        for channel in sub.channels:
            subs = self.by_channel.get(channel)
            if subs is not None:
                subs.pop(sub, None)
                if not subs:
                    del self.by_channel[channel]
        self.streams.pop(sub, None)
        self.parked.discard(sub)

    def subscribers(self) -> int:
        return len({s for subs in self.by_channel.values() for s in subs})

    def by_transport(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        seen: set[Subscriber] = set()
        for subs in self.by_channel.values():
            for sub in subs:
                if sub not in seen:
                    seen.add(sub)
                    counts[sub.transport] = counts.get(sub.transport, 0) + 1
        return counts

    # -- events from the backend

    def deliver(self, event: Event) -> None:
        if isinstance(event, Message):
            subs = self.by_channel.get(event.channel)
            if not subs:
                return
            self.counters["delivered"] += len(subs)
            for sub in tuple(subs):
                sub.deliver(event)
            if self.on_deliver is not None:
                self.on_deliver(event, len(subs))
        else:
            subs = self.by_channel.get(event.channel)
            if subs:
                for sub in tuple(subs):
                    sub.control(event)

    def cut(self, sub: Subscriber) -> None:
        """Disconnect a subscriber that does not keep up; it resumes by etag."""
        self.counters["dropped_slow"] += 1
        sub.end("slow")

    def close_all(self, reason: str) -> None:
        if reason == "shutdown":
            # A subscriber parked on a full socket cannot take its goodbye; do not
            # let it hold the process past the grace period.
            self.stall = min(self.stall, SHUTDOWN_STALL)
        subs = {s for group in self.by_channel.values() for s in group}
        for sub in subs:
            sub.end(reason)

    # -- time

    def start(self, interval: float = 0.25) -> None:
        self._interval = interval
        self._loop = asyncio.get_running_loop()
        self._timer = self._loop.call_later(interval, self._tick)

    def defer(self, sub: Subscriber) -> None:
        """Flush ``sub`` at the end of this loop turn (once for all of them)."""
        if not self.dirty:
            loop = self._loop or asyncio.get_running_loop()
            loop.call_soon(self._flush)
        self.dirty.append(sub)

    def _flush(self) -> None:
        dirty, self.dirty = self.dirty, []
        for sub in dirty:
            sub.flush()

    def stop(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def expire_at(self, sub: Subscriber, deadline: float) -> None:
        slot = int(deadline / self._interval) + 1
        self.deadlines.setdefault(slot, []).append(sub)

    def schedule_wake(self, sub: Subscriber) -> None:
        """If the server does not end the handler's ``receive()`` soon, cancel it."""
        self._wake.append((time.monotonic() + 1.0, sub))

    def _tick(self) -> None:
        now = time.monotonic()
        slot = int(now / self._interval)
        for key in [k for k in self.deadlines if k <= slot]:
            for sub in self.deadlines.pop(key):
                if not sub.closed:
                    sub.end("timeout")
        if now >= self._next_ping:
            self._next_ping = now + self.ping
            for sub in tuple(self.streams):
                if not sub.busy and not sub.closed:
                    event = sub.ping_event()
                    if event is not None:
                        sub.push(event)
        for sub in [s for s in self.parked if now - s.since > self.stall]:
            self.cut(sub)
        if self._wake:
            due = [sub for when, sub in self._wake if when <= now]
            self._wake = [item for item in self._wake if item[0] > now]
            for sub in due:
                sub.wake()
        self._timer = asyncio.get_running_loop().call_later(self._interval, self._tick)
