"""The in-memory backend: every channel lives in this process.

Pushes are delivered synchronously, before ``publish`` returns, so a push that
was answered has reached every subscriber connected at that moment.
"""

from __future__ import annotations

import asyncio
import heapq
import math
import time
from collections import deque
from collections.abc import Iterable
from typing import Any

from ..channels import (
    ZERO,
    Attributes,
    EtagClock,
    EtagKey,
    History,
    Message,
    PushAttributes,
    etag_key,
    format_etag,
    hash_key,
    key_matches,
    key_refusal,
)
from ..errors import Conflict, Forbidden, TooManyRequests
from ..idempotency import Idempotency, IdempotencyTable
from ..presence import Client, Roster
from .base import ChannelInfo, Control, Deliver, PublishResult

# What a retained message costs besides its payload (object, etag, cached frames' headers).
MESSAGE_OVERHEAD = 200


def message_cost(msg: Message) -> int:
    return msg.size + MESSAGE_OVERHEAD


class _Channel:
    __slots__ = (
        "attrs",
        "bytes",
        "dropped",
        "dropped_live",
        "due",
        "first",
        "key_hash",
        "last",
        "messages",
    )

    def __init__(self, attrs: Attributes, key_hash: str | None) -> None:
        self.attrs = attrs
        self.key_hash = key_hash
        self.due = math.inf  # when its entry in the expiry heap comes up
        self.messages: deque[Message] = deque()
        self.first: EtagKey | None = None  # first etag of this incarnation
        self.last: EtagKey = ZERO  # newest etag
        self.dropped: EtagKey = ZERO  # newest etag evicted or expired
        self.dropped_live: EtagKey = ZERO  # the same, counting only non-empty messages
        self.bytes = 0  # message_cost of the retained messages

    def drop(self, msg: Message) -> None:
        self.bytes -= message_cost(msg)
        self.dropped = max(self.dropped, msg.key)
        if not msg.empty:
            self.dropped_live = max(self.dropped_live, msg.key)


class _Holds:
    """Who holds a one2one channel: clients in the order they came."""

    __slots__ = ("clients",)

    def __init__(self) -> None:
        # cid -> [open connections, monotonic time the hold lapses when none are open]
        self.clients: dict[str, list[float]] = {}

    def holder(self, now: float) -> str | None:
        for cid, (conns, lapse) in list(self.clients.items()):
            if conns > 0 or lapse > now:
                return cid
            del self.clients[cid]
        return None


# One clock for the process: two apps in one process never give out the same etag.
CLOCK = EtagClock()


class MemoryBackend:
    name = "memory"

    def __init__(self, *, hold: float = 30.0, sweep_interval: float = 1.0) -> None:
        self._channels: dict[str, _Channel] = {}
        self._subscribers: dict[str, int] = {}
        self._holds: dict[str, _Holds] = {}
        self._expiry: list[tuple[float, str]] = []
        self.idempotency = IdempotencyTable()
        self._clock = CLOCK
        self._hold = hold
        self._sweep_interval = sweep_interval
        self._deliver: Deliver = lambda event: None
        self._timer: asyncio.TimerHandle | None = None
        self.published = 0
        self.max_channels = 0  # 0: no limit (set from MARTD_MAX_CHANNELS_TOTAL)
        self.max_retained_bytes = 0  # 0: no limit (MARTD_MAX_RETAINED_BYTES)
        self.retained_bytes = 0
        self.evicted = 0  # messages dropped to keep retained_bytes under its limit
        self.roster = Roster(hold, self._has_presence, lambda event: self._deliver(event))

    async def start(self, deliver: Deliver) -> None:
        self._deliver = deliver
        self._timer = asyncio.get_running_loop().call_later(self._sweep_interval, self._sweep)

    async def aclose(self) -> None:
        self.roster.close()
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _sweep(self) -> None:
        self.expire(time.time())
        self.idempotency.sweep(time.time())
        now = time.monotonic()
        for name in [n for n, holds in self._holds.items() if holds.holder(now) is None]:
            del self._holds[name]  # every hold on it lapsed
        self._timer = asyncio.get_running_loop().call_later(self._sweep_interval, self._sweep)

    # ------------------------------------------------------------ channel state

    def expire(self, now: float) -> None:
        heap = self._expiry
        while heap and heap[0][0] <= now:
            due, name = heapq.heappop(heap)
            channel = self._channels.get(name)
            if channel is None or due != channel.due:
                continue  # a stale entry: the channel is gone or was rescheduled
            kept: deque[Message] = deque()
            before = channel.bytes
            for msg in channel.messages:
                if msg.expires <= now:
                    channel.drop(msg)
                else:
                    kept.append(msg)
            channel.messages = kept
            channel.due = math.inf
            self._schedule(name, channel, min((m.expires for m in kept), default=math.inf))
            self.retained_bytes -= before - channel.bytes
            self._maybe_drop(name)

    def _schedule(self, name: str, channel: _Channel, when: float) -> None:
        # One heap entry per channel at its earliest expiry, not one per message.
        if when < channel.due:
            channel.due = when
            heapq.heappush(self._expiry, (when, name))
            # The entry it replaces stays until its own time (up to the longest
            # life): rebuild before stale ones outnumber the channels.
            if len(self._expiry) > 2 * len(self._channels) + 64:
                self._expiry = [
                    (c.due, n) for n, c in self._channels.items() if c.due != math.inf
                ]
                heapq.heapify(self._expiry)

    def _maybe_drop(self, name: str) -> None:
        channel = self._channels.get(name)
        if channel is not None and not channel.messages and not self._subscribers.get(name):
            self.retained_bytes -= channel.bytes
            del self._channels[name]

    def _get(self, name: str) -> _Channel | None:
        if self._expiry and self._expiry[0][0] <= time.time():
            self.expire(time.time())
        return self._channels.get(name)

    # ------------------------------------------------------------------ pushes

    async def publish(
        self,
        channel: str,
        data: str,
        attrs: PushAttributes,
        *,
        server: bool,
        event: str | None = None,
        content_type: str | None = None,
        idempotency: Idempotency | None = None,
    ) -> PublishResult:
        now = time.time()
        current = self._get(channel)
        if (
            current is not None
            and current.key_hash is not None
            and not key_matches(current.key_hash, attrs.key)
        ):
            raise Forbidden(key_refusal(attrs.key), field="key")
        if idempotency is not None:
            answered = self.idempotency.answer(channel, idempotency, now)
            if answered is not None:
                return answered
        if not server:
            if current is None:
                raise Forbidden("channel: only a server can create a channel", field="channel")
            if current.key_hash is None:
                raise Forbidden("key: only a server can push into this channel", field="key")
            differs = attrs.agrees_with(current.attrs)
            if differs:
                raise Forbidden(f"{differs}: only a server can change attributes", field=differs)
            new_attrs = current.attrs
        else:
            if current is not None and current.key_hash is None and attrs.key is not None:
                raise Forbidden(
                    "key: a key is set when the channel is created and cannot be added later",
                    field="key",
                )
            new_attrs = attrs.resolved()

        created = current is None
        was_one2one = current is not None and current.attrs.one2one
        had_presence = current is not None and current.attrs.presence
        if current is None:
            if self.max_channels and len(self._channels) >= self.max_channels:
                raise TooManyRequests(
                    f"channels: this server has reached its limit of {self.max_channels}"
                    " channels; try again later",
                    retry_after=5,
                )
            current = _Channel(new_attrs, None if attrs.key is None else hash_key(attrs.key))
            self._channels[channel] = current
        # one2one comes on: on an existing channel, or on one created while clients wait on it
        switched_on = new_attrs.one2one and (
            (not created and not was_one2one) or (created and self._subscribers.get(channel, 0) > 0)
        )
        current.attrs = new_attrs

        key = self._clock.next(current.last)
        msg = Message(channel, key, data, now + new_attrs.life, event=event, type=content_type)
        if current.first is None:
            current.first = key
        current.last = key
        queue = current.messages
        queue.append(msg)
        cost = message_cost(msg)
        current.bytes += cost
        self.retained_bytes += cost
        while len(queue) > new_attrs.size:
            old = queue.popleft()
            current.drop(old)
            self.retained_bytes -= message_cost(old)
        self._schedule(channel, current, msg.expires)
        self.published += 1

        if switched_on:
            holds = self._holds.get(channel)
            keep = holds.holder(time.monotonic()) if holds else None
            if holds is not None:
                holds.clients = {c: v for c, v in holds.clients.items() if c == keep}
            self._deliver(Control("kicked", channel, keep))
        if new_attrs.presence != had_presence:
            self.roster.switched(channel, new_attrs.presence)
        if data:
            self._deliver(msg)
        if self.max_retained_bytes and self.retained_bytes > self.max_retained_bytes:
            self.evict()
        result = PublishResult(
            channel=channel,
            etag=msg.etag,
            subscribers=self._subscribers.get(channel, 0),
            messages=len(queue),
            created=created,
        )
        if idempotency is not None:
            self.idempotency.remember(channel, idempotency, result, now)
        return result

    async def info(self, channel: str) -> ChannelInfo | None:
        current = self._get(channel)
        if current is None:
            return None
        return ChannelInfo(
            channel=channel,
            etag=format_etag(current.last) if current.last != ZERO else "0",
            subscribers=self._subscribers.get(channel, 0),
            messages=len(current.messages),
            size=current.attrs.size,
            life=current.attrs.life,
            one2one=current.attrs.one2one,
            has_key=current.key_hash is not None,
            presence=current.attrs.presence,
        )

    async def delete(self, channel: str) -> bool:
        current = self._get(channel)
        if current is None:
            return False
        self.retained_bytes -= current.bytes
        del self._channels[channel]
        self._holds.pop(channel, None)
        self.idempotency.forget(channel)
        self.roster.switched(channel, False)
        self._deliver(Control("deleted", channel))
        return True

    # ------------------------------------------------------------- subscribers

    async def history(self, channel: str, after: str | None) -> History:
        current = self._get(channel)
        if current is None:
            missed = after is not None and after != "0"
            return History([], missed=missed, last_etag="0", exists=False)
        last_etag = format_etag(current.last)
        if after is None:
            return History([], missed=False, last_etag=last_etag, exists=True)
        key = etag_key(after)
        messages = current.messages
        if messages and key is not None and messages[-1].key == key:
            # from the newest message (a poll that keeps up): nothing to send
            return History([], missed=current.dropped_live > key, last_etag=last_etag, exists=True)
        live = [m for m in messages if not m.empty]
        if after == "0":
            return History(live, missed=False, last_etag=last_etag, exists=True)
        retained = key is not None and any(m.key == key for m in current.messages)
        given_out = retained or (
            key is not None
            and current.first is not None
            and current.first <= key <= current.dropped
        )
        if not given_out or key is None:
            return History(live, missed=True, last_etag=last_etag, exists=True)
        return History(
            [m for m in live if m.key > key],
            missed=current.dropped_live > key,
            last_etag=last_etag,
            exists=True,
        )

    async def attach(self, channel: str, cid: str) -> None:
        now = time.monotonic()
        holds = self._holds.get(channel)
        if holds is None:
            holds = self._holds[channel] = _Holds()
        current = self._channels.get(channel)
        if current is not None and current.attrs.one2one:
            holder = holds.holder(now)
            if holder is not None and holder != cid:
                raise Conflict(
                    f"channel: {channel!r} is one2one and another client holds it",
                    channel=channel,
                )
        entry = holds.clients.setdefault(cid, [0, 0.0])
        entry[0] += 1
        self._subscribers[channel] = self._subscribers.get(channel, 0) + 1

    async def detach(self, channel: str, cid: str) -> None:
        count = self._subscribers.get(channel, 0) - 1
        if count > 0:
            self._subscribers[channel] = count
        else:
            self._subscribers.pop(channel, None)
        holds = self._holds.get(channel)
        if holds is not None:
            entry = holds.clients.get(cid)
            if entry is not None:
                entry[0] -= 1
                if entry[0] <= 0:
                    # Only a one2one channel keeps a hold past the last connection.
                    current = self._channels.get(channel)
                    if current is not None and current.attrs.one2one and self._hold > 0:
                        entry[1] = time.monotonic() + self._hold
                    else:
                        del holds.clients[cid]
            if not holds.clients:
                del self._holds[channel]
        self._maybe_drop(channel)

    # ---------------------------------------------------------------- presence

    def _has_presence(self, channel: str) -> bool:
        current = self._channels.get(channel)
        return current is not None and current.attrs.presence

    async def present(self, channel: str, client: Client, *, keep: bool) -> None:
        self.roster.present(channel, client, keep=keep)

    async def absent(self, channel: str, client: Client, *, keep: bool) -> None:
        self.roster.absent(channel, client.cid)

    async def clients(self, channel: str) -> list[Client]:
        return self.roster.clients(channel) if self._has_presence(channel) else []

    def channel_count(self) -> int:
        return len(self._channels)

    def holds_channel(self, name: str) -> bool:
        return name in self._channels

    def channel_names(self) -> Iterable[str]:
        return self._channels.keys()

    def evict(self) -> None:
        """Drop the oldest messages of the largest channels until retained memory is
        back under 90% of its limit. Subscribers resuming from before them are told
        they missed messages, as with any eviction."""
        target = self.max_retained_bytes * 9 // 10
        heap = [(-c.bytes, name) for name, c in self._channels.items() if c.messages]
        heapq.heapify(heap)
        while heap and self.retained_bytes > target:
            _, name = heapq.heappop(heap)
            channel = self._channels[name]
            old = channel.messages.popleft()
            channel.drop(old)
            self.retained_bytes -= message_cost(old)
            self.evicted += 1
            if channel.messages:
                heapq.heappush(heap, (-channel.bytes, name))
            else:
                self._maybe_drop(name)

    async def healthy(self) -> bool:
        return True

    async def stats(self) -> dict[str, Any]:
        return {
            "backend": self.name,
            "channels": len(self._channels),
            "messages": sum(len(c.messages) for c in self._channels.values()),
            "published": self.published,
            "retained_bytes": self.retained_bytes,
            "evicted": self.evicted,
        }

