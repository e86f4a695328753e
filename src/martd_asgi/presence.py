"""Who is here: the clients of a channel with ``presence``, and their join and leave events.

A *client* is a ``cid`` with at least one subscription to the channel. It joins
with its first subscription and leaves when its last one ended and it did not
come back within ``MARTD_HOLD`` seconds (a subscription without a ``cid`` cannot
come back, so it leaves at once; a long-poll without one is not a client at
all, since each of its polls would be a new one).

- ``Client`` and ``PresenceEvent``: the values the listing and the events carry.
- ``Roster``: the memory backend's record of who is on each channel, with the
  hold. The Redis backend keeps the same record in Redis (``redis_presence``).
- ``Feed``: the hub's side. Which events a process's subscribers are told is
  bounded by a budget of frames per channel (see ``Feed``), so that a crowd
  arriving at once (a deploy that reconnects everyone) does not cost a frame per
  client per subscriber.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from .wsframe import Outgoing

if TYPE_CHECKING:
    from .delivery import Subscriber

JOIN = "join"
LEAVE = "leave"
STREAMS = ("sse", "websocket")  # the transports that are told; long-polls are not


@dataclass(frozen=True)
class Client:
    """One client of a channel, as ``GET /pub/{channel}?presence=1`` lists it."""

    cid: str
    user: str | int | None  # the token's ``sub``, or the auth hook's ``user``
    transport: str

    def body(self) -> dict[str, Any]:
        return {"cid": self.cid, "user": self.user, "transport": self.transport}

    def dumps(self) -> str:
        return json.dumps(self.body(), ensure_ascii=False, separators=(",", ":"))

    @classmethod
    def loads(cls, text: str) -> Client:
        body = json.loads(text)
        user = body.get("user")
        if not isinstance(user, str | int) or isinstance(user, bool):
            user = None
        return cls(str(body["cid"]), user, str(body["transport"]))


@dataclass(frozen=True)
class PresenceEvent:
    """A client joined or left ``channel`` (after the hold: a reconnect is neither)."""

    kind: str  # JOIN or LEAVE
    channel: str
    client: Client
    _frames: dict[str, dict[str, Any]] = field(
        default_factory=dict, compare=False, repr=False, hash=False
    )

    def body(self) -> dict[str, Any]:
        client = self.client
        return {"type": self.kind, "channel": self.channel, "cid": client.cid, "user": client.user}

    def frame(self, transport: str) -> dict[str, Any]:
        """The ASGI event that tells a subscriber of ``transport``; made once per event."""
        made = self._frames.get(transport)
        if made is None:
            text = json.dumps(self.body(), ensure_ascii=False)
            if transport == "websocket":
                made = Outgoing(text)
            else:
                data = f"event: martd\ndata: {text}\n\n".encode()
                made = {"type": "http.response.body", "body": data, "more_body": True}
            self._frames[transport] = made
        return made


# ------------------------------------------------------------- memory backend


class _Entry:
    __slots__ = ("client", "conns", "keep", "lapse")

    def __init__(self, client: Client, keep: bool) -> None:
        self.client = client
        self.conns = 0
        self.keep = keep  # its cid can come back: its leave waits for the hold
        self.lapse: asyncio.TimerHandle | None = None


class Roster:
    """Who is on each channel of the memory backend, with the hold.

    Every subscribed client is recorded, whether or not its channel has
    presence, so that switching presence on tells who is already there.
    ``enabled(channel)`` says whether a channel has presence now; ``deliver``
    gets its events.
    """

    def __init__(
        self,
        hold: float,
        enabled: Callable[[str], bool],
        deliver: Callable[[PresenceEvent], None],
    ) -> None:
        self.hold = hold
        self.enabled = enabled
        self.deliver = deliver
        self.channels: dict[str, dict[str, _Entry]] = {}

    def present(self, channel: str, client: Client, *, keep: bool) -> None:
        """One more subscription of ``client`` on ``channel``."""
        entries = self.channels.setdefault(channel, {})
        entry = entries.get(client.cid)
        if entry is None:
            entry = entries[client.cid] = _Entry(client, keep)
            if self.enabled(channel):
                self.deliver(PresenceEvent(JOIN, channel, client))
        elif entry.lapse is not None:  # back within the hold: neither leave nor join
            entry.lapse.cancel()
            entry.lapse = None
        entry.client = client
        entry.conns += 1

    def absent(self, channel: str, cid: str) -> None:
        """One subscription fewer; the last one starts the hold, or leaves."""
        entries = self.channels.get(channel)
        entry = entries.get(cid) if entries else None
        if entries is None or entry is None:
            return
        entry.conns -= 1
        if entry.conns > 0:
            return
        on = self.enabled(channel)
        if on and entry.keep and self.hold > 0:
            loop = asyncio.get_running_loop()
            entry.lapse = loop.call_later(self.hold, self._lapse, channel, cid, entry)
            return
        self._remove(channel, entries, cid)
        if on:
            self.deliver(PresenceEvent(LEAVE, channel, entry.client))

    def _lapse(self, channel: str, cid: str, entry: _Entry) -> None:
        entries = self.channels.get(channel)
        if entries is None or entries.get(cid) is not entry or entry.conns > 0:
            return
        self._remove(channel, entries, cid)
        if self.enabled(channel):
            self.deliver(PresenceEvent(LEAVE, channel, entry.client))

    def _remove(self, channel: str, entries: dict[str, _Entry], cid: str) -> None:
        del entries[cid]
        if not entries:
            del self.channels[channel]

    def switched(self, channel: str, on: bool) -> None:
        """Presence came on (everyone there joins) or went off (the held are forgotten)."""
        entries = self.channels.get(channel)
        if not entries:
            return
        for cid, entry in list(entries.items()):
            if on:
                self.deliver(PresenceEvent(JOIN, channel, entry.client))
            elif entry.conns <= 0:
                if entry.lapse is not None:
                    entry.lapse.cancel()
                self._remove(channel, entries, cid)

    def clients(self, channel: str) -> list[Client]:
        return [entry.client for entry in self.channels.get(channel, {}).values()]

    def close(self) -> None:
        for entries in self.channels.values():
            for entry in entries.values():
                if entry.lapse is not None:
                    entry.lapse.cancel()
        self.channels.clear()


# --------------------------------------------------------------- the hub's


class _Budget:
    __slots__ = ("announced", "at", "leaving", "tokens")

    def __init__(self, tokens: float, now: float) -> None:
        self.tokens = tokens
        self.at = now
        self.announced: set[str] = set()  # cids whose join these subscribers were told
        self.leaving: dict[str, PresenceEvent] = {}  # leaves waiting for budget, in order


class Feed:
    """Tells a process's subscribers of join and leave events, within a budget.

    Each event costs one frame per subscriber it goes to. A channel may spend
    ``rate`` frames a second in this process (``MARTD_PRESENCE_RATE``, 5,000 by
    default; a bucket of as many), so a room of 50 can be told of 100 changes a
    second and a room of 10,000 of one every two seconds. A join that finds no
    budget is not told at all (the listing stays exact); a leave is told only
    for a client whose join was, and waits for budget in a queue (at most one
    entry per client) rather than being lost, so that pages
    never keep a client that left. A join of a client whose leave is still
    waiting cancels it: it came back.
    """

    def __init__(
        self,
        by_channel: dict[str, dict[Subscriber, None]],
        counters: dict[str, int],
        *,
        rate: float = 5_000.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.by_channel = by_channel
        self.clock = clock
        self.counters = counters
        self.rate = rate
        self.budgets: dict[str, _Budget] = {}
        self.waiting = 0  # channels with leaves in their queue
        counters.setdefault("presence_events", 0)
        counters.setdefault("presence_frames", 0)
        counters.setdefault("presence_joins_untold", 0)

    def _audience(self, event: PresenceEvent) -> list[Subscriber]:
        subs = self.by_channel.get(event.channel)
        if not subs:
            return []
        cid = event.client.cid
        return [s for s in subs if s.transport in STREAMS and s.cid != cid]

    def _cost(self, channel: str) -> int:
        # Counted before the audience is picked out, so that an event that finds no
        # budget costs O(1): every subscriber of the channel, long-polls included.
        return len(self.by_channel.get(channel, ()))

    def _take(self, budget: _Budget, cost: int, now: float) -> bool:
        budget.tokens = min(self.rate, budget.tokens + (now - budget.at) * self.rate)
        budget.at = now
        # An event that costs more than the whole bucket goes when the bucket is
        # full, and leaves it in debt: the rate still holds.
        if budget.tokens < min(cost, self.rate):
            return False
        budget.tokens -= cost
        return True

    def handle(self, event: PresenceEvent) -> None:
        channel = event.channel
        if channel not in self.by_channel:
            self._forget(channel)
            return
        now = self.clock()
        budget = self.budgets.get(channel)
        if budget is None:
            budget = self.budgets[channel] = _Budget(self.rate, now)
        cid = event.client.cid
        if event.kind == JOIN:
            if budget.leaving.pop(cid, None) is not None:
                if not budget.leaving:
                    self.waiting -= 1
                return
            if cid in budget.announced:
                return
            if not self._take(budget, self._cost(channel), now):
                self.counters["presence_joins_untold"] += 1
                return
            budget.announced.add(cid)
            self._send(event, self._audience(event))
            return
        if cid not in budget.announced:
            return
        if not budget.leaving:
            if self._take(budget, self._cost(channel), now):
                budget.announced.discard(cid)
                self._send(event, self._audience(event))
                return
            self.waiting += 1
        budget.leaving[cid] = event

    def tick(self) -> None:
        """Tell the leaves that waited, as budget comes back."""
        now = self.clock()
        for channel, budget in list(self.budgets.items()):
            if channel not in self.by_channel:
                self._forget(channel)
                continue
            leaving = budget.leaving
            while leaving:
                cid, event = next(iter(leaving.items()))
                if not self._take(budget, self._cost(channel), now):
                    break
                del leaving[cid]
                budget.announced.discard(cid)
                self._send(event, self._audience(event))
                if not leaving:
                    self.waiting -= 1

    def _forget(self, channel: str) -> None:
        budget = self.budgets.pop(channel, None)
        if budget is not None and budget.leaving:
            self.waiting -= 1

    def _send(self, event: PresenceEvent, audience: Iterable[Subscriber]) -> None:
        self.counters["presence_events"] += 1
        frames = 0
        for sub in audience:
            if not sub.closed:
                sub.push(event.frame(sub.transport))
                frames += 1
        self.counters["presence_frames"] += frames
