"""Fan-out for the Redis backend: a process hears only the channels it serves.

Every push's script publishes a notification that carries the whole message
(channel, etag, expiry, data; ``M`` instead of ``m`` when it also has an event
name or a type), or a control, on the channel's own pub/sub
channel (``redis_keys.events``). A process subscribes to a channel when its
first local subscriber comes and unsubscribes a little while (``linger``)
after the last one left, so a process decodes only the pushes it delivers.
The subscriptions share one pub/sub connection (one per shard on Redis
Cluster: ``redis_links``).

Nothing is missed by subscribing late: once Redis confirms a subscription,
the channel's stream is read from the newest id handed over (for a new
channel, its newest id when the first subscriber attached), and what the
subscription brings meanwhile waits until that is done. A reconnection
(Redis restarted, failover, network) is the same for every channel the
process follows. Ids already handed over are skipped, so nothing is repeated
either.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import time
from collections.abc import Callable, Coroutine
from typing import Any

from redis.crc import key_slot

from ..channels import ZERO, EtagKey, Message, etag_key
from ..presence import JOIN, LEAVE, Client, PresenceEvent
from .base import Control, Deliver
from .redis_batch import cancel_all
from .redis_catchup import catch_up
from .redis_links import Link

log = logging.getLogger("martd.redis")

MAX_BACKOFF = 2.0
LINGER = 5.0  # seconds a channel stays subscribed after its last local subscriber left
SWEEP = 1.0  # seconds between looks for channels to leave
BATCH = 200  # channels per (un)subscribe command and per catch-up round trip


class Fanout:
    def __init__(
        self,
        client: Any,
        keys: Callable[[str], list[str]],
        events: Callable[[str], str],
        *,
        sharded: bool = False,
    ) -> None:
        self.client = client
        self.keys = keys  # a channel's keys: hash, stream, ...
        self.events = events  # a channel's pub/sub channel
        self.sharded = sharded  # Redis Cluster: sharded pub/sub, a link per shard
        self._notify = "SPUBLISH" if sharded else "PUBLISH"  # what the scripts call
        self.gone_key: Callable[[str], str] | None = None  # where a deletion is noted
        self.deliver: Deliver = lambda event: None
        self.linger = LINGER
        # followed channels (local subscribers, or lingering) -> newest id handed over
        self.seen: dict[str, EtagKey] = {}
        self.idle: dict[str, float] = {}  # followed channels nobody here reads -> when to leave
        self.waiters: dict[str, list[tuple[EtagKey, asyncio.Future[None]]]] = {}
        self.listening = False
        self.reconnects = 0
        self.heard = 0  # notifications received: what following only what is read saves
        # Called after each reconnection, e.g. to restore leases a restart lost.
        self.on_reconnect: Callable[[], None] = lambda: None
        # Called when a push switched a channel's presence on or off.
        self.on_presence: Callable[[str], None] = lambda channel: None
        # The subscriptions of the current connection(s); all forgotten when they break.
        self._todo: dict[str, None] = {}  # channels to subscribe to, in order
        self._links: dict[str, Link] = {}  # by node name ("" for a single Redis)
        self._where: dict[str, Link] = {}  # channel -> the link it is subscribed on
        self._topics: dict[str, str] = {}  # pub/sub channel -> channel
        self._want: dict[str, bool] = {}  # channel -> the last command sent subscribes
        self._unconfirmed: dict[str, int] = {}  # channel -> commands Redis has not confirmed
        self._held: dict[str, list[str]] = {}  # channel catching up -> notifications meanwhile
        self._told: dict[str, EtagKey] = {}  # followed channel -> newest deletion reported
        self.kicks: dict[str, str] = {}  # channel -> whom the catch-up under way let stay
        self._catch: dict[str, None] = {}  # channels to catch up, in order
        self._pump_wake = asyncio.Event()
        self._catch_wake = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._failed: asyncio.Future[BaseException] | None = None

    def target(self, channel: str) -> str:
        """How a script notifies ``channel``'s followers: the command and the pub/sub channel."""
        return f"{self._notify} {self.events(channel)}"

    # ------------------------------------------------------------- channels

    def track(self, channel: str, last: EtagKey) -> None:
        """A local subscriber of ``channel`` came; ``last`` is older than it."""
        self.idle.pop(channel, None)
        if channel in self.seen:
            # Followed already: never moved later for subscribers already served,
            # what is still on its way to them would be skipped.
            return
        self.seen[channel] = last
        self._todo[channel] = None
        self._pump_wake.set()

    def untrack(self, channel: str) -> None:
        """The last local subscriber of ``channel`` left: leave it after ``linger``."""
        if channel in self.seen:
            self.idle[channel] = time.monotonic() + self.linger
        for _, fut in self.waiters.pop(channel, []):
            if not fut.done():
                fut.set_result(None)

    async def delivered(self, channel: str, key: EtagKey, timeout: float) -> None:
        """Wait (briefly) until a push reached this process's subscribers."""
        if not self.listening or channel not in self.seen or self.seen[channel] >= key:
            return
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[None] = loop.create_future()
        entry = (key, fut)
        self.waiters.setdefault(channel, []).append(entry)
        late = loop.call_later(timeout, _settle, fut)  # (cheaper than wait_for, on every push)
        try:
            await fut
        finally:
            late.cancel()
            waiting = self.waiters.get(channel)
            if waiting and entry in waiting:
                waiting.remove(entry)

    # ------------------------------------------------------------- connection

    async def run(self) -> None:
        """Listen until cancelled, reconnecting with backoff."""
        delay = 0.05
        while True:
            try:
                self._failed = asyncio.get_running_loop().create_future()
                if self.sharded and self.reconnects:
                    await self.client.nodes_manager.initialize()  # slots may have moved
                else:
                    await self.client.initialize()  # a cluster client learns its slots here
                if not self.sharded:
                    await self._link("", lambda: Link.plain(self.client))
                self._spawn(self._pump())
                self._spawn(self._catcher())
                self.listening = True
                if self.reconnects:
                    self.on_reconnect()
                delay = 0.05
                raise await self._failed
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # whatever broke: reconnect
                if self.listening:
                    log.warning("redis pub/sub lost (%s); reconnecting", exc)
            finally:
                self.listening = False
                await self._reset()
            self.reconnects += 1
            await asyncio.sleep(delay)
            delay = min(delay * 2, MAX_BACKOFF)

    def _spawn(self, work: Coroutine[Any, Any, None]) -> None:
        async def guarded() -> None:
            try:
                await work
            except Exception as exc:  # ends this connection; run() starts over
                if self._failed is not None and not self._failed.done():
                    self._failed.set_result(exc)

        self._tasks.append(asyncio.ensure_future(guarded()))

    async def _link(self, name: str, make: Callable[[], Link]) -> Link:
        link = self._links.get(name)
        if link is None:
            link = make()
            self._links[name] = link
            await link.open()
            self._spawn(link.read(self._on_message))
        return link

    async def _reset(self) -> None:
        tasks, self._tasks = self._tasks, []
        await cancel_all(tasks)
        links, self._links = list(self._links.values()), {}
        for link in links:
            await link.aclose()
        for state in (self._where, self._topics, self._want, self._unconfirmed, self._held):
            state.clear()
        self._catch.clear()
        for channel in list(self.idle):
            self._leave(channel)
        # Subscribe again to everything still followed, and catch up from the streams.
        self._todo = dict.fromkeys(self.seen)

    def _leave(self, channel: str) -> None:
        self.idle.pop(channel, None)
        self.seen.pop(channel, None)
        self._todo.pop(channel, None)
        self._catch.pop(channel, None)
        self._held.pop(channel, None)
        self._told.pop(channel, None)

    # ------------------------------------------------------------- subscriptions

    async def _pump(self) -> None:
        """Send the subscriptions the followed channels need, and leave idle ones."""
        while True:
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._pump_wake.wait(), SWEEP)
            self._pump_wake.clear()
            await self._unsubscribe_idle()
            while self._todo:
                batch = list(itertools.islice(self._todo, BATCH))
                for channel in batch:
                    del self._todo[channel]
                await self._send(True, [c for c in batch if c in self.seen])

    async def _unsubscribe_idle(self) -> None:
        now = time.monotonic()
        due = [channel for channel, when in self.idle.items() if when <= now]
        for channel in due:
            self._leave(channel)
        await self._send(False, [c for c in due if self._want.get(c)])

    async def _send(self, subscribe: bool, channels: list[str]) -> None:
        groups: dict[tuple[Link, int], list[str]] = {}
        for channel in channels:
            topic = self.events(channel)
            if subscribe:
                link = await self._link_for(topic)
            else:
                link = self._where[channel]
            # A sharded command takes the channels of one slot only.
            slot = key_slot(topic.encode()) if link.sharded else 0
            groups.setdefault((link, slot), []).append(channel)
        for (link, _), group in groups.items():
            for start in range(0, len(group), BATCH):
                chunk = group[start : start + BATCH]
                topics = []
                for channel in chunk:
                    topic = self.events(channel)
                    topics.append(topic)
                    self._topics[topic] = channel
                    self._where[channel] = link
                    self._want[channel] = subscribe
                    self._unconfirmed[channel] = self._unconfirmed.get(channel, 0) + 1
                await link.send(link.subscribe if subscribe else link.unsubscribe, topics)

    async def _link_for(self, topic: str) -> Link:
        if not self.sharded:
            return self._links[""]
        node = self.client.nodes_manager.get_node_from_slot(key_slot(topic.encode()))
        return await self._link(node.name, lambda: Link.shard(node))

    def _on_message(self, link: Link, reply: list[Any]) -> None:
        kind = reply[0]
        if kind == "message" or kind == "smessage":
            self.heard += 1
            data = reply[2]
            if self._held:
                held = self._held.get(self._topics.get(reply[1], ""))
                if held is not None:
                    held.append(data)
                    return
            self.handle(data)
        elif kind in ("subscribe", "ssubscribe", "unsubscribe", "sunsubscribe"):
            self._confirmed(reply[1])

    def _confirmed(self, topic: str) -> None:
        """Redis confirmed a (un)subscription; once all sent are, act on the last."""
        channel = self._topics.get(topic)
        if channel is None:
            return
        left = self._unconfirmed.get(channel, 0) - 1
        if left < 0:
            # Not asked for: Redis Cluster moved the slot to another shard.
            raise ConnectionError(f"redis pub/sub: {topic} moved to another shard")
        if left > 0:
            self._unconfirmed[channel] = left
            return
        del self._unconfirmed[channel]
        if not self._want.get(channel):
            del self._topics[topic], self._want[channel], self._where[channel]
        elif channel in self.seen:
            # Subscribed from now on: read what came before, then what it brings.
            self._held[channel] = []
            self._catch[channel] = None
            self._catch_wake.set()

    # ------------------------------------------------------------- delivery

    def handle(self, raw: str) -> None:
        kind = raw[:1]
        if kind == "m":
            channel, etag, expires, data = raw[1:].split("\n", 3)
            key = etag_key(etag)
            seen = self.seen.get(channel)
            # (none made for a repeat, e.g. a push this process handed over itself)
            if key is not None and (seen is None or key > seen):
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
            channel, _, last = raw[1:].partition("\n")
            self.gone(channel, etag_key(last) or ZERO)
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

    def gone(self, channel: str, last: EtagKey) -> None:
        """The channel, up to ``last``, was deleted: say so, once (a deletion may be
        both read while catching up and heard); whatever comes next is a new channel."""
        if channel in self.seen:
            if ZERO < last <= self._told.get(channel, ZERO):
                return
            self._told[channel] = last
            self.seen[channel] = ZERO
        self.emit(Control("deleted", channel))

    def emit(self, event: Message | Control | PresenceEvent) -> None:
        try:
            self.deliver(event)
        except Exception:  # one bad subscriber must not stop the listener
            log.exception("delivering %r failed", event)

    # ------------------------------------------------------------- catching up

    async def _catcher(self) -> None:
        while True:
            await self._catch_wake.wait()
            self._catch_wake.clear()
            while self._catch:
                batch = list(itertools.islice(self._catch, BATCH))
                for channel in batch:
                    del self._catch[channel]
                held = {channel: self._held.get(channel) for channel in batch}
                self.kicks.clear()
                await self.catch_up(batch)
                for channel in batch:
                    mine = held[channel]
                    # (a channel left and subscribed again meanwhile holds a new list)
                    if mine is not None and self._held.get(channel) is mine:
                        del self._held[channel]
                        told = self.kicks.get(channel)
                        for raw in mine:
                            if told is not None and raw == f"k{channel}\n{told}":
                                told = None  # the switch the catch-up told of: once
                                continue
                            self.handle(raw)

    async def catch_up(self, channels: list[str]) -> None:
        """Hand over what was pushed while notifications could not reach us."""
        await catch_up(self, channels)


def _settle(fut: asyncio.Future[None]) -> None:
    if not fut.done():
        fut.set_result(None)
