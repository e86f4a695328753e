"""Catching up from Redis: what a process's pub/sub could not bring it.

Between a channel's first subscriber attaching and the process's subscription
to it taking effect, and while a pub/sub connection is down, notifications
pass the process by. What they said is in Redis all the same, and is read
once the subscription is confirmed, for many channels in one round trip:

- the messages, from the channel's stream, after the newest id handed over;
- ``missed``: messages evicted or expired before they could be handed over
  (the channel's ``droppedl``);
- ``deleted``: the channel was deleted meanwhile (its ``g`` note);
- ``kicked``: ``one2one`` was switched on meanwhile, and the channel is held
  by a client (its ``o`` holds), so every other subscriber here must go.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from ..channels import ZERO, EtagKey, Message, etag_key, format_etag
from .base import Control

if TYPE_CHECKING:
    from .redis_fanout import Fanout

READ = 500  # stream entries per read


async def catch_up(fanout: Fanout, channels: list[str]) -> None:
    """Hand over what was pushed to ``channels`` while notifications could not reach us."""
    seen = fanout.seen
    channels = [c for c in channels if c in seen]
    if not channels:
        return
    now = time.time()
    async with fanout.client.pipeline(transaction=False) as pipe:
        for channel in channels:
            info, stream = fanout.keys(channel)[:2]
            if fanout.gone_key is not None:
                pipe.get(fanout.gone_key(channel))
            else:
                pipe.echo("")
            pipe.hmget(info, ["droppedl", "one2one"])
            pipe.xrange(stream, min=_after(seen[channel]), max="+", count=READ)
        replies = await pipe.execute()
    for index, channel in enumerate(channels):
        deleted_at, (dropped_at, one2one), entries = replies[3 * index : 3 * index + 3]
        deleted = etag_key(deleted_at or "")
        last = seen.get(channel)
        if deleted is not None and last is not None and ZERO < last <= deleted:
            # Deleted while we could not hear it (perhaps created again since,
            # with ids above all of the deleted channel's).
            fanout.gone(channel, deleted)
        dropped = etag_key(dropped_at or "0-0") or ZERO
        if channel in seen and dropped > seen[channel]:
            # Evicted or expired before we could hand it over: say so.
            fanout.emit(Control("missed", channel))
        if one2one == "1" and channel in seen:
            holder = _holder(await fanout.client.hgetall(fanout.keys(channel)[4]), now)
            if holder is not None:  # (none: the holds lapsed, ours come back with the lease)
                fanout.kicks[channel] = holder
                fanout.emit(Control("kicked", channel, holder))
        while entries and channel in seen:
            _hand(fanout, channel, entries, now)
            if len(entries) < READ or channel not in seen:
                break
            stream = fanout.keys(channel)[1]
            entries = await fanout.client.xrange(
                stream, min=_after(seen[channel]), max="+", count=READ
            )


def _hand(fanout: Fanout, channel: str, entries: Any, now: float) -> None:
    seen = fanout.seen
    for ident, fields in entries:
        key = etag_key(ident)
        if key is None or channel not in seen or key <= seen[channel]:
            continue
        expires = int(fields.get("x", "0")) / 1000
        data = fields.get("d", "")
        if data and expires > now:
            event, ctype = fields.get("e") or None, fields.get("t") or None
            fanout.hand(Message(channel, key, data, expires, event=event, type=ctype))
        else:
            seen[channel] = key


def _holder(holds: dict[str, str], now: float) -> str | None:
    """The client holding a one2one channel: the earliest arrival whose hold lasts
    (as the scripts' ``holder``, by this host's clock)."""
    best: tuple[int, str] | None = None
    for cid, value in holds.items():
        if cid == "#":
            continue
        arrival, _, expiry = value.partition(" ")
        if int(expiry) > now * 1000 and (best is None or int(arrival) < best[0]):
            best = (int(arrival), cid)
    return None if best is None else best[1]


def _after(seen: EtagKey) -> str:
    return "-" if seen == ZERO else "(" + format_etag(seen)
