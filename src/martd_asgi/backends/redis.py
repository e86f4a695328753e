"""The Redis backend: channels live in Redis, so many processes and hosts act as one.

Each change to a channel is one Lua script (``redis_lua``): it validates the
push, appends to the channel's stream, trims it and publishes a notification
on the channel's own pub/sub channel, atomically, so pushes from every process
get one order and the stream ids are the etags everywhere. ``redis_fanout``
subscribes to the channels this process has subscribers on, brings their
notifications to them, and catches up from the streams after subscribing and
after a reconnect.

While Redis cannot be reached, or refuses an operation (a key of the wrong
type, out of memory), pushes fail with 503, never silently.
Subscriber counts and one2one holds are leases that each process renews
(``redis_leases``), so a crashed process's subscribers lapse on their own.
``redis_client`` makes the connection and runs the scripts.

The URL is redis-py's (``redis://[user:password@]host:port/db``,
``rediss://`` for TLS, ``unix:///path/to/redis.sock?db=N`` for a Redis on the
same host) with martd's own query options: ``prefix=`` (of every key,
``martd`` by default), ``cluster=1`` (Redis Cluster, the URL names any node),
``sentinel=NAME`` (the URL names a Sentinel, ``sentinels=h:p,h:p`` more of
them, and NAME the monitored master).
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
from typing import Any

from redis import exceptions as rexc
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from ..channels import (
    ZERO,
    History,
    Message,
    PushAttributes,
    etag_key,
    format_etag,
    hash_key,
    key_refusal,
)
from ..errors import Forbidden
from ..idempotency import CAP as IDEMPOTENCY_CAP
from ..idempotency import Idempotency, reused
from ..presence import Client
from . import redis_lua
from .base import ChannelInfo, Deliver, PublishResult
from .redis_batch import Gather, cancel_all
from .redis_client import DOWN, Scripts, brief, connect
from .redis_fanout import Fanout
from .redis_keys import KeyNames
from .redis_leases import Leases
from .redis_presence import RedisPresence

log = logging.getLogger("martd.redis")

COUNT_EVERY = 5.0  # seconds between counts of all channels for /stats
ID_LIMIT = 1 << 53  # stream ids above this cannot be compared exactly in Lua

FORBIDDEN = {
    "create": ("channel: only a server can create a channel", "channel"),
    "nokey": ("key: only a server can push into this channel", "key"),
    "addkey": (
        "key: a key is set when the channel is created and cannot be added later",
        "key",
    ),
}


class RedisBackend:
    name = "redis"
    shared = True  # every process sees every channel (its stats count them all)

    def __init__(
        self,
        url: str,
        *,
        hold: float = 30.0,
        lease: float = 30.0,
        timeout: float = 5.0,
        publish_wait: float = 1.0,
        **options: Any,
    ) -> None:
        options.setdefault("socket_timeout", timeout)
        options.setdefault("socket_connect_timeout", min(timeout, 2.0))
        # No retries: a retried script whose reply was lost would push twice.
        options.setdefault("retry", Retry(NoBackoff(), 0))
        self._client, self._prefix, self._others = connect(url, options)
        from redis.asyncio.cluster import RedisCluster

        cluster = isinstance(self._client, RedisCluster)
        self._call = Scripts(self._client, cluster=cluster, timeout=timeout)
        self._line = self._call.line
        self._names = KeyNames(self._prefix, cluster=cluster)
        self._fanout = Fanout(self._client, self._keys, self._names.events, sharded=cluster)
        self._fanout.gone_key = self._names.gone
        self._node = secrets.token_hex(8)
        self._hold_ms = int(hold * 1000)
        self._lease_ms = int(lease * 1000)
        self._publish_wait = publish_wait
        register = self._client.register_script
        self._publish = register(redis_lua.PUBLISH)
        self._info = register(redis_lua.INFO)
        self._history = register(redis_lua.HISTORY)
        self._delete = register(redis_lua.DELETE)
        self._presence = RedisPresence(
            self._client,
            self._call,
            target=self._fanout.target,
            keys=self._keys,
            node=self._node,
            lease_ms=self._lease_ms,
            hold_ms=self._hold_ms,
        )
        self._leases = Leases(
            self._call,
            self._keys_hsno,
            sync=register(redis_lua.SYNC),
            refresh=register(redis_lua.REFRESH),
            fanout=self._fanout,
            presence=self._presence,
            node=self._node,
            lease_ms=self._lease_ms,
            hold_ms=self._hold_ms,
        )
        # Leases renewed at once after a reconnect (a restarted Redis lost them), and
        # when presence was switched on or off somewhere (learnt now, not at the next round).
        self._fanout.on_reconnect = self._leases.renew_soon
        self._fanout.on_presence = lambda channel: self._leases.renew_soon()
        # History reads of a channel that come together: one script.
        self._reads: Gather[str | None, History] = Gather(self._read_histories)
        self._tasks: list[asyncio.Task[None]] = []
        self._counted: tuple[float, int, int] = (-COUNT_EVERY, 0, 0)
        self.published = 0

    # ---------------------------------------------------------------- keys

    def _keys(self, channel: str) -> list[str]:
        """All keys of a channel: h s clock n o (PUBLISH's KEYS)."""
        return self._names.channel(channel)

    def _idempotency_keys(self, channel: str) -> list[str]:
        """i ix: the channel's Idempotency-Keys (the last KEYS of PUBLISH and DELETE)."""
        return self._names.idempotency(channel)

    def _keys_hsno(self, channel: str) -> list[str]:
        """h s n o: the KEYS of SYNC, DELETE and REFRESH (no clock)."""
        keys = self._keys(channel)
        return [keys[0], keys[1], keys[3], keys[4]]

    def _keys_hsn(self, channel: str) -> list[str]:
        """h s n: the KEYS of INFO and HISTORY."""
        keys = self._keys(channel)
        return [keys[0], keys[1], keys[3]]

    # ------------------------------------------------------------ lifecycle

    async def start(self, deliver: Deliver) -> None:
        self._fanout.deliver = deliver
        self._tasks = [
            asyncio.ensure_future(self._fanout.run()),
            asyncio.ensure_future(self._leases.run()),
        ]
        # Give the pub/sub connection a moment, but start even when Redis is away.
        deadline = time.monotonic() + 2.0
        while not self._fanout.listening and time.monotonic() < deadline:
            await asyncio.sleep(0.01)

    async def aclose(self) -> None:
        # Subscribers closed at shutdown are still detaching: give them a moment.
        deadline = time.monotonic() + 1.0
        while self._leases.detaching and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        tasks, self._tasks = self._tasks, []
        await cancel_all(tasks)
        for channel in list(self._fanout.seen):
            self._fanout.untrack(channel)
        await self._presence.aclose()
        await self._call.aclose()
        await self._client.aclose()
        for other in self._others:
            await other.aclose()

    async def renew(self) -> None:
        """Rewrite this process's leases on every channel it serves (``redis_leases``)."""
        await self._leases.renew()

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
        resolved = attrs.resolved()

        def given(value: Any) -> str:
            return "" if value is None else _arg(value)

        args = [
            self._fanout.target(channel),
            channel,
            data,
            "1" if server else "0",
            resolved.size,
            resolved.life,
            _arg(resolved.one2one),
            "" if attrs.key is None else hash_key(attrs.key),
            given(attrs.size),
            given(attrs.life),
            given(attrs.one2one),
            self._lease_ms,
            _arg(resolved.presence),
            given(attrs.presence),
            # v1.1, read by the script from the end of ARGV: keep these six last
            event or "",
            content_type or "",
            *_idempotency_args(idempotency),
        ]
        keys = [*self._keys(channel), *self._idempotency_keys(channel)]
        reply = await self._call(self._publish, keys, args)
        if reply[0] == "replay":
            return PublishResult(
                channel=channel,
                etag=reply[1],
                subscribers=int(reply[2]),
                messages=int(reply[3]),
                created=bool(reply[4]),
                replayed=True,
            )
        if reply[0] == "err":
            reason = reply[1]
            if reason == "idempotency" and idempotency is not None:
                raise reused(idempotency.key)
            if reason == "key":
                raise Forbidden(key_refusal(attrs.key), field="key")
            if reason in FORBIDDEN:
                message, field = FORBIDDEN[reason]
                raise Forbidden(message, field=field)
            raise Forbidden(f"{reason}: only a server can change attributes", field=reason)
        etag = reply[1]
        self.published += 1
        key = etag_key(etag)
        if data and key is not None:
            before = etag_key(reply[5]) if reply[5] else None
            if before is not None and self._fanout.seen.get(channel) == before:
                # Every earlier message was handed over here: this one goes to the
                # local subscribers now, not a pub/sub round trip later (its
                # notification, when it comes, is a repeat and skipped).
                expires = int(reply[6]) / 1000
                msg = Message(
                    channel, key, data, expires, event=event or None, type=content_type or None
                )
                self._fanout.hand(msg)
            else:
                await self._fanout.delivered(channel, key, self._publish_wait)
        return PublishResult(
            channel=channel,
            etag=etag,
            subscribers=int(reply[2]),
            messages=int(reply[3]),
            created=bool(reply[4]),
        )

    async def info(self, channel: str) -> ChannelInfo | None:
        reply = await self._call(self._info, self._keys_hsn(channel), [])
        if reply is None:
            return None
        size, life, one2one, has_key, last, messages, subscribers, presence = reply
        return ChannelInfo(
            channel=channel,
            etag=last if last != "0-0" else "0",
            subscribers=int(subscribers),
            messages=int(messages),
            size=int(size),
            life=int(life),
            one2one=one2one == "1",
            has_key=bool(has_key),
            presence=presence == "1",
        )

    async def delete(self, channel: str) -> bool:
        keys = [*self._keys_hsno(channel), self._names.gone(channel)]
        keys += self._idempotency_keys(channel)  # DELETE reads them from the end of KEYS
        reply = await self._call(self._delete, keys, [self._fanout.target(channel), channel])
        if reply:
            await self._presence.forget(channel)
        return bool(reply)

    # ------------------------------------------------------------- subscribers

    async def history(self, channel: str, after: str | None) -> History:
        return await self._reads.call(channel, after)

    async def _read_histories(self, channel: str, afters: list[str | None]) -> list[History]:
        """One script for the history reads of a channel that came together."""
        distinct = list(dict.fromkeys(afters))
        args = [_history_arg(a) for a in distinct]
        reply = await self._call(self._history, self._keys_hsn(channel), args)
        found = {
            a: self._history_of(channel, a, None if reply is None else reply[i])
            for i, a in enumerate(distinct)
        }
        return [found[a] for a in afters]

    def _history_of(self, channel: str, after: str | None, reply: Any) -> History:
        if reply is None:
            return History([], missed=after not in (None, "0"), last_etag="0", exists=False)
        key = None if after is None or after == "0" else etag_key(after)
        ours = key is not None and key[0] < ID_LIMIT and key[1] < ID_LIMIT
        last, given_out, dropped_live, entries = reply
        last_etag = last if last != "0-0" else "0"
        live = []
        for ident, fields in entries:
            data = _field(fields, "d")
            mkey = etag_key(ident)
            if data and mkey is not None:
                expires = int(_field(fields, "x") or 0) / 1000
                event, ctype = _field(fields, "e") or None, _field(fields, "t") or None
                live.append(Message(channel, mkey, data, expires, event=event, type=ctype))
        if after is None:
            return History([], missed=False, last_etag=last_etag, exists=True)
        if after == "0":
            return History(live, missed=False, last_etag=last_etag, exists=True)
        if not ours or not given_out or key is None:
            return History(live, missed=True, last_etag=last_etag, exists=True)
        return History(
            live,
            missed=(etag_key(dropped_live) or ZERO) > key,
            last_etag=last_etag,
            exists=True,
        )

    async def attach(self, channel: str, cid: str) -> None:
        await self._leases.attach(channel, cid)

    async def detach(self, channel: str, cid: str) -> None:
        await self._leases.detach(channel, cid)

    # ---------------------------------------------------------------- presence

    async def present(self, channel: str, client: Client, *, keep: bool) -> None:
        await self._presence.present(channel, client)

    async def absent(self, channel: str, client: Client, *, keep: bool) -> None:
        self._leases.detaching += 1  # shutdown waits for it, as for a detach
        try:
            await self._presence.absent(channel, client, keep=keep)
        finally:
            self._leases.detaching -= 1

    async def clients(self, channel: str) -> list[Client]:
        return await self._presence.clients(channel)

    async def healthy(self) -> bool:
        if not self._fanout.listening:
            return False
        try:
            return bool(await asyncio.wait_for(self._client.ping(), 2.0))
        except Exception:  # unhealthy, whatever the cause
            return False

    async def stats(self) -> dict[str, Any]:
        now = time.monotonic()
        if now - self._counted[0] > COUNT_EVERY:
            try:
                self._counted = (now, *await self._count())
            except DOWN:  # shown stale until Redis answers
                pass
            except rexc.ResponseError as exc:
                log.warning("counting channels failed: %s", brief(exc))
        return {
            "backend": self.name,
            "channels": self._counted[1],
            "messages": self._counted[2],
            "published": self.published,
            "redis_connected": self._fanout.listening,
            "redis_reconnects": self._fanout.reconnects,
            # channels this process's pub/sub follows, and the notifications it received
            "redis_followed_channels": len(self._fanout.seen),
            "redis_notifications": self._fanout.heard,
            "local_channels": len(self._leases.conns),
        }

    async def _count(self) -> tuple[int, int]:
        """Channels and retained messages in all of Redis: a SCAN, so not on every call."""
        channels = messages = 0
        pattern = _glob_escape(self._prefix) + ":{*}:h"
        batch: list[str] = []

        async def lengths() -> int:
            found = await asyncio.gather(*(self._client.xlen(k[:-1] + "s") for k in batch))
            batch.clear()
            return sum(found)

        async for key in self._client.scan_iter(match=pattern, count=1000, _type="HASH"):
            channels += 1
            batch.append(key)
            if len(batch) >= 200:
                messages += await lengths()
        messages += await lengths()
        return channels, messages


def _glob_escape(text: str) -> str:
    return "".join("\\" + c if c in "*?[]\\" else c for c in text)


def _idempotency_args(idem: Idempotency | None) -> list[Any]:
    if idem is None:
        return ["", "", 0, IDEMPOTENCY_CAP]
    return [idem.key, idem.fingerprint, max(1, int(idem.ttl * 1000)), IDEMPOTENCY_CAP]


def _history_arg(after: str | None) -> str:
    """HISTORY's argument for a subscriber's etag: '' none, '0' all, or a stream id."""
    if after is None:
        return ""
    key = None if after == "0" else etag_key(after)
    ours = key is not None and key[0] < ID_LIMIT and key[1] < ID_LIMIT
    return format_etag(key) if ours and key else "0"


def _arg(value: Any) -> str:
    if isinstance(value, bool):
        return "1" if value else "0"
    return str(value)


def _field(fields: Any, name: str) -> str:
    """A field of a stream entry as Lua hands it over (a flat list) or redis-py (a dict)."""
    if isinstance(fields, dict):
        return str(fields.get(name, ""))
    for i in range(0, len(fields) - 1, 2):
        if fields[i] == name:
            return str(fields[i + 1])
    return ""
