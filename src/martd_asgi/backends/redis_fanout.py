"""Fan-out for the Redis backend: ONE pub/sub connection per process.

Every push's script PUBLISHes a notification that carries the whole message
(channel, etag, expiry, data; ``M`` instead of ``m`` when it also has an event
name or a type) or a control; this process's single listener
hands them to the router, in the order Redis ran the scripts.

Nothing is lost when that connection breaks (Redis restarted, failover,
network): the listener reconnects with backoff and, before it reads any new
notification, re-reads the stream of every channel this process has
subscribers for, from the newest id it handed over. Ids it already handed
over are skipped, so nothing is repeated either.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from typing import Any

from ..channels import ZERO, EtagKey, Message, etag_key, format_etag
from ..presence import JOIN, LEAVE, Client, PresenceEvent
from .base import Control, Deliver

log = logging.getLogger("martd.redis")

PING_AFTER = 5.0  # seconds without traffic before the listener checks the connection
MAX_BACKOFF = 2.0


class Fanout:
    def __init__(self, client: Any, events: str, keys: Callable[[str], list[str]]) -> None:
        self.client = client
        self.events = events
        self.keys = keys  # a channel's keys: hash, stream, ...
        self.gone_key: Callable[[str], str] | None = None  # where a deletion is noted
        self.deliver: Deliver = lambda event: None
        # channels with local subscribers -> newest id handed to the router
        self.seen: dict[str, EtagKey] = {}
        self.waiters: dict[str, list[tuple[EtagKey, asyncio.Future[None]]]] = {}
        self.listening = False
        self.reconnects = 0
        # Called after each reconnection, e.g. to restore leases a restart lost.
        self.on_reconnect: Callable[[], None] = lambda: None
        # Called when a push switched a channel's presence on or off.
        self.on_presence: Callable[[str], None] = lambda channel: None

    # ------------------------------------------------------------- channels

    def track(self, channel: str, last: EtagKey) -> None:
        """The first local subscriber of ``channel`` came; ``last`` is older than it."""
        # Never moved later for subscribers already served: what is still on its
        # way to them would be skipped.
        self.seen.setdefault(channel, last)

    def untrack(self, channel: str) -> None:
        self.seen.pop(channel, None)
        for _, fut in self.waiters.pop(channel, []):
            if not fut.done():
                fut.set_result(None)

    async def delivered(self, channel: str, key: EtagKey, timeout: float) -> None:
        """Wait (briefly) until a push reached this process's subscribers."""
        if not self.listening or channel not in self.seen or self.seen[channel] >= key:
            return
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        entry = (key, fut)
        self.waiters.setdefault(channel, []).append(entry)
        try:
            await asyncio.wait_for(fut, timeout)
        except asyncio.TimeoutError:
            pass
        finally:
            waiting = self.waiters.get(channel)
            if waiting and entry in waiting:
                waiting.remove(entry)

    # ------------------------------------------------------------- listener

    async def run(self) -> None:
        """Listen until cancelled, reconnecting with backoff."""
        delay = 0.05
        while True:
            pubsub = None
            try:
                await self.client.initialize()  # a cluster client learns its slots here
                pubsub = self.client.pubsub()
                await pubsub.subscribe(self.events)
                await asyncio.wait_for(_confirmed(pubsub), 5.0)
                # New notifications wait on the socket while we catch up, in order.
                await self.catch_up()
                self.listening = True
                if self.reconnects:
                    self.on_reconnect()
                delay = 0.05
                await self._read(pubsub)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # whatever broke: reconnect
                if self.listening:
                    log.warning("redis pub/sub lost (%s); reconnecting", exc)
            finally:
                self.listening = False
                if pubsub is not None:
                    with contextlib.suppress(Exception):
                        await pubsub.aclose()
            self.reconnects += 1
            await asyncio.sleep(delay)
            delay = min(delay * 2, MAX_BACKOFF)

    async def _read(self, pubsub: Any) -> None:
        heard = pinged = time.monotonic()
        while True:
            message = await pubsub.get_message(timeout=1.0)
            now = time.monotonic()
            if message is None:
                # Quiet: ask, so that a dead peer or a half-open connection shows itself.
                if now - heard > 3 * PING_AFTER:
                    raise ConnectionError("redis pub/sub: no answer to PING")
                if now - heard >= PING_AFTER and now - pinged >= PING_AFTER:
                    pinged = now
                    await pubsub.ping()
                continue
            heard = now
            if message["type"] == "message":
                self.handle(message["data"])

    def handle(self, raw: str) -> None:
        kind = raw[:1]
        if kind == "m":
            channel, etag, expires, data = raw[1:].split("\n", 3)
            key = etag_key(etag)
            if key is not None:
                self.hand(Message(channel, key, data, int(expires) / 1000))
        elif kind == "M":  # v1.1: a message with an event name or a type
            channel, etag, expires, event, ctype, data = raw[1:].split("\n", 5)
            key = etag_key(etag)
            if key is not None:
                msg = Message(
                    channel, key, data, int(expires) / 1000, event=event or None, type=ctype or None
                )
                self.hand(msg)
        elif kind == "k":
            channel, keep = raw[1:].split("\n", 1)
            self.emit(Control("kicked", channel, keep or None))
        elif kind == "d":
            self.gone(raw[1:])
        elif kind in ("j", "l"):
            channel, text = raw[1:].split("\n", 1)
            with contextlib.suppress(ValueError, KeyError, TypeError):
                client = Client.loads(text)
                self.emit(PresenceEvent(JOIN if kind == "j" else LEAVE, channel, client))
        elif kind == "P":
            self.on_presence(raw[1:])

    def hand(self, msg: Message) -> None:
        """Deliver a message once, in order, to the local subscribers of its channel."""
        seen = self.seen.get(msg.channel)
        if seen is not None:
            if msg.key <= seen:
                return
            self.seen[msg.channel] = msg.key
        self.emit(msg)
        waiters = self.waiters.get(msg.channel)
        if waiters:
            for key, fut in waiters:
                if key <= msg.key and not fut.done():
                    fut.set_result(None)

    def gone(self, channel: str) -> None:
        """The channel was deleted: say so; whatever comes next is a new channel."""
        if channel in self.seen:
            self.seen[channel] = ZERO
        self.emit(Control("deleted", channel))

    def emit(self, event: Message | Control | PresenceEvent) -> None:
        try:
            self.deliver(event)
        except Exception:  # one bad subscriber must not stop the listener
            log.exception("delivering %r failed", event)

    async def catch_up(self) -> None:
        """Hand over what was pushed while notifications could not reach us."""
        now = time.time()
        for channel in list(self.seen):
            info, stream = self.keys(channel)[:2]
            if self.gone_key is not None:
                deleted = etag_key(await self.client.get(self.gone_key(channel)) or "")
                seen = self.seen.get(channel)
                if deleted is not None and seen is not None and ZERO < seen <= deleted:
                    # Deleted while we could not hear it (perhaps created again since,
                    # with ids above all of the deleted channel's).
                    self.gone(channel)
            dropped = etag_key(await self.client.hget(info, "droppedl") or "0-0") or ZERO
            if channel in self.seen and dropped > self.seen[channel]:
                # Evicted or expired before we could hand it over: say so.
                self.emit(Control("missed", channel))
            while channel in self.seen:
                seen = self.seen[channel]
                start = "-" if seen == ZERO else "(" + format_etag(seen)
                entries: Any = await self.client.xrange(stream, min=start, max="+", count=500)
                if not entries:
                    break
                for ident, fields in entries:
                    key = etag_key(ident)
                    if key is None or channel not in self.seen or key <= self.seen[channel]:
                        continue
                    expires = int(fields.get("x", "0")) / 1000
                    data = fields.get("d", "")
                    if data and expires > now:
                        event, ctype = fields.get("e") or None, fields.get("t") or None
                        self.hand(Message(channel, key, data, expires, event=event, type=ctype))
                    else:
                        self.seen[channel] = key


async def _confirmed(pubsub: Any) -> None:
    while True:
        message = await pubsub.get_message(timeout=1.0)
        if message is not None and message["type"] == "subscribe":
            return
