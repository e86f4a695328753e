"""Local fan-out: from the backend's events to every subscriber of this process.

The hot path allocates per message, not per subscriber: a message is encoded
once per transport (``Message.encoded``) and the same ASGI event is handed to
each subscriber (``delivery.py`` says how it reaches the socket). The hub
also owns the one timer that serves every subscriber: long-poll deadlines,
keep-alive pings, stall checks, and the end-of-turn flush.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

from .backends.base import Event
from .channels import Message
from .connection import set_send_buffer
from .delivery import Bounds, Subscriber
from .presence import Feed, PresenceEvent
from .turns import Turns
from .types import CloseReason

SHUTDOWN_STALL = 1.0  # seconds a send may stay blocked once shutdown began
AT_ONCE_MAX = 64  # subscribers of a message written at once in a calm turn (see deliver)


class Hub:
    """Subscribers by channel, and the one timer that serves them all."""

    def __init__(
        self,
        *,
        max_backlog: int = 1000,
        max_backlog_bytes: int = 4 << 20,
        stall: float = 30.0,
        ping: float = 15.0,
        presence_rate: float = 5_000.0,
    ) -> None:
        self.by_channel: dict[str, dict[Subscriber, None]] = {}
        self.streams: dict[Subscriber, None] = {}
        self.parked: set[Subscriber] = set()
        self.dirty: list[Subscriber] = []  # subscribers with events of this loop turn
        self._turn_end = False  # the end-of-turn callback is scheduled
        self.turns = Turns()  # messages delivered per loop turn
        self.at_once = False  # set while a message of a calm turn is being delivered
        self._loop: asyncio.AbstractEventLoop | None = None
        self.deadlines: dict[int, list[Subscriber]] = {}
        self.bounds = Bounds(max_backlog, max_backlog_bytes)
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
        self.feed = Feed(self.by_channel, self.counters, rate=presence_rate)

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
        self.unpark(sub)

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
            count = len(subs)  # one-shot subscribers leave the set as they are answered
            self.counters["delivered"] += count
            # A lone message (the last busy turn is over, none before it in this one)
            # to a few subscribers is written at once, before the publisher's answer;
            # the messages of a busy turn are joined per stream at the end of the turn.
            self._end_turn_soon()
            self.at_once = self.turns.add() and count <= AT_ONCE_MAX
            try:
                for sub in tuple(subs):
                    sub.deliver(event)
            finally:
                self.at_once = False
            if self.on_deliver is not None:
                self.on_deliver(event, count)
        elif isinstance(event, PresenceEvent):
            self.feed.handle(event)
        else:
            subs = self.by_channel.get(event.channel)
            if subs:
                for sub in tuple(subs):
                    sub.control(event)

    def park(self, sub: Subscriber, since: float | None = None) -> None:
        """``sub``'s send is blocked: the stall limit counts from ``since`` (now)."""
        sub.since = time.monotonic() if since is None else since
        self.parked.add(sub)

    def unpark(self, sub: Subscriber) -> None:
        self.parked.discard(sub)

    def cut(self, sub: Subscriber) -> None:
        """Disconnect a subscriber that does not keep up; it resumes by etag."""
        self.counters["dropped_slow"] += 1
        sub.end("slow")

    def close_all(self, reason: CloseReason) -> None:
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
            self._end_turn_soon()
        self.dirty.append(sub)

    def _end_turn_soon(self) -> None:
        if not self._turn_end:
            self._turn_end = True
            (self._loop or asyncio.get_running_loop()).call_soon(self._end_turn)

    def _end_turn(self) -> None:
        self._turn_end = False
        self.turns.end()
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
        if self.feed.waiting:
            self.feed.tick()
        for sub in [s for s in self.parked if now - s.since > self.stall]:
            self.cut(sub)
        if self._wake:
            due = [sub for when, sub in self._wake if when <= now]
            self._wake = [item for item in self._wake if item[0] > now]
            for sub in due:
                sub.wake()
        self._timer = asyncio.get_running_loop().call_later(self._interval, self._tick)
