"""The Redis backend: channels live in Redis, so many processes and hosts act as one.

Each change to a channel is one Lua script (``redis_lua``): it validates the
push, appends to the channel's stream, trims it and PUBLISHes a notification,
atomically, so pushes from every process get one order and the stream ids are
the etags everywhere. Each process keeps ONE pub/sub connection; the
notifications carry whole messages, which go to the router in order.

When that connection breaks (Redis restarted, network), the process
reconnects with backoff and, before reading further notifications, re-reads
the stream of every channel it has subscribers for after the newest id it
delivered: nothing is lost and nothing is repeated. Pushes meanwhile fail
with 503, never silently. Subscriber counts and one2one holds are leases that
each process renews, so a crashed process's subscribers lapse on their own.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import time
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import redis.asyncio as aioredis
from redis import exceptions as rexc
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from ..channels import (
    MAX_LIFE,
    ZERO,
    EtagKey,
    History,
    Message,
    PushAttributes,
    etag_key,
    format_etag,
    hash_key,
)
from ..errors import Conflict, Forbidden, Unavailable
from . import redis_lua
from .base import ChannelInfo, Control, Deliver, PublishResult

log = logging.getLogger("martd.redis")

# Errors that mean "Redis is not there right now": answered 503, retried later.
DOWN = (rexc.ConnectionError, rexc.TimeoutError, rexc.ReadOnlyError, OSError)
ID_LIMIT = 1 << 53  # stream ids above this cannot be compared exactly in Lua

FORBIDDEN = {
    "key": ("key: this channel needs its key to push", "key"),
    "create": ("channel: only a server can create a channel", "channel"),
    "nokey": ("key: only a server can push into this channel", "key"),
    "addkey": (
        "key: a key is set when the channel is created and cannot be added later",
        "key",
    ),
}


def _split_url(url: str) -> tuple[str, dict[str, str]]:
    """Take martd's own options (``prefix``) out of the URL's query."""
    parts = urlsplit(url)
    query = dict(parse_qsl(parts.query))
    ours = {k: query.pop(k) for k in ("prefix",) if k in query}
    return urlunsplit(parts._replace(query=urlencode(query))), ours


class RedisBackend:
    name = "redis"

    def __init__(
        self,
        url: str,
        *,
        hold: float = 30.0,
        prefix: str = "martd",
        lease: float = 30.0,
        timeout: float = 5.0,
        publish_wait: float = 1.0,
        **options: Any,
    ) -> None:
        url, ours = _split_url(url)
        self._prefix = ours.get("prefix", prefix)
        options.setdefault("socket_timeout", timeout)
        options.setdefault("socket_connect_timeout", min(timeout, 2.0))
        # No retries: a retried script whose reply was lost would push twice.
        options.setdefault("retry", Retry(NoBackoff(), 0))
        self._client: aioredis.Redis = aioredis.Redis.from_url(
            url, decode_responses=True, **options
        )
        self._events = f"{self._prefix}:events"
        self._node = secrets.token_hex(8)
        self._hold_ms = int(hold * 1000)
        self._lease_ms = int(lease * 1000)
        self._keep_ms = max(self._lease_ms, self._hold_ms) + self._lease_ms
        self._id_ttl_ms = 2 * MAX_LIFE * 1000
        self._refresh_every = lease / 3
        self._publish_wait = publish_wait
        register = self._client.register_script
        self._publish = register(redis_lua.PUBLISH)
        self._info = register(redis_lua.INFO)
        self._history = register(redis_lua.HISTORY)
        self._delete = register(redis_lua.DELETE)
        self._attach = register(redis_lua.ATTACH)
        self._detach = register(redis_lua.DETACH)
        self._refresh = register(redis_lua.REFRESH)
        self._deliver: Deliver = lambda event: None
        # channel -> cid -> open connections in this process
        self._conns: dict[str, dict[str, int]] = {}
        # channels with local subscribers -> newest id handed to the router
        self._seen: dict[str, EtagKey] = {}
        self._waiters: dict[str, list[tuple[EtagKey, asyncio.Future[None]]]] = {}
        self._dirty: set[str] = set()  # channels whose leases need rewriting
        self._listening = False
        self._tasks: list[asyncio.Task[None]] = []
        self.published = 0
        self.reconnects = 0

    # ---------------------------------------------------------------- keys

    def _keys(self, channel: str) -> list[str]:
        base = f"{self._prefix}:{{{channel}}}:"
        return [base + "h", base + "s", base + "id", base + "n", base + "o"]

    async def _call(self, script: Any, keys: list[str], args: list[Any]) -> Any:
        try:
            return await script(keys=keys, args=args)
        except DOWN as exc:
            raise Unavailable("backend: Redis cannot be reached; try again", retry_after=1) from exc

    # ------------------------------------------------------------ lifecycle

    async def start(self, deliver: Deliver) -> None:
        self._deliver = deliver
        self._tasks = [
            asyncio.ensure_future(self._listen()),
            asyncio.ensure_future(self._renew()),
        ]
        # Give the pub/sub connection a moment, but start even when Redis is away.
        deadline = time.monotonic() + 2.0
        while not self._listening and time.monotonic() < deadline:
            await asyncio.sleep(0.01)

    async def aclose(self) -> None:
        tasks, self._tasks = self._tasks, []
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        for waiters in self._waiters.values():
            for _, fut in waiters:
                fut.cancel()
        self._waiters.clear()
        await self._client.aclose()

    # -------------------------------------------------------------- fan-out

    async def _listen(self) -> None:
        delay = 0.05
        while True:
            pubsub = self._client.pubsub()
            try:
                await pubsub.subscribe(self._events)
                await asyncio.wait_for(self._confirmed(pubsub), 5.0)
                # Notifications queue up on the socket while we catch up, in order.
                await self._catch_up()
                self._listening = True
                delay = 0.05
                idle = 0.0
                while True:
                    message = await pubsub.get_message(timeout=1.0)
                    if message is None:
                        idle += 1.0
                        if idle >= 5.0:  # a dead peer shows itself on a write
                            idle = 0.0
                            await pubsub.ping()
                        continue
                    idle = 0.0
                    if message["type"] == "message":
                        self._on_event(message["data"])
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - any failure: reconnect
                if self._listening:
                    log.warning("redis pub/sub lost (%s); reconnecting", exc)
                self._listening = False
            finally:
                self._listening = False
                with contextlib.suppress(Exception):
                    await pubsub.aclose()  # type: ignore[no-untyped-call]
            self.reconnects += 1
            await asyncio.sleep(delay)
            delay = min(delay * 2, 2.0)

    @staticmethod
    async def _confirmed(pubsub: Any) -> None:
        while True:
            message = await pubsub.get_message(timeout=1.0)
            if message is not None and message["type"] == "subscribe":
                return

    def _on_event(self, raw: str) -> None:
        kind = raw[:1]
        if kind == "m":
            channel, etag, expires, data = raw[1:].split("\n", 3)
            key = etag_key(etag)
            if key is None:
                return
            self._hand(Message(channel, key, data, int(expires) / 1000))
        elif kind == "k":
            channel, keep = raw[1:].split("\n", 1)
            self._emit(Control("kicked", channel, keep or None))
        elif kind == "d":
            self._emit(Control("deleted", raw[1:]))

    def _hand(self, msg: Message) -> None:
        """Deliver a message once, in order, to the local subscribers of its channel."""
        seen = self._seen.get(msg.channel)
        if seen is not None:
            if msg.key <= seen:
                return
            self._seen[msg.channel] = msg.key
        self._emit(msg)
        waiters = self._waiters.get(msg.channel)
        if waiters:
            keep = []
            for key, fut in waiters:
                if key <= msg.key:
                    if not fut.done():
                        fut.set_result(None)
                else:
                    keep.append((key, fut))
            if keep:
                self._waiters[msg.channel] = keep
            else:
                del self._waiters[msg.channel]

    def _emit(self, event: Message | Control) -> None:
        try:
            self._deliver(event)
        except Exception:
            log.exception("delivering %r failed", event)

    async def _catch_up(self) -> None:
        """Hand over what was pushed while notifications could not reach us."""
        now = time.time()
        for channel in list(self._seen):
            stream = self._keys(channel)[1]
            while channel in self._seen:
                seen = self._seen[channel]
                start = "-" if seen == ZERO else "(" + format_etag(seen)
                entries: Any = await self._client.xrange(stream, min=start, max="+", count=500)
                if not entries:
                    break
                for ident, fields in entries:
                    key = etag_key(ident)
                    if key is None or key <= self._seen.get(channel, key):
                        continue
                    expires = int(fields.get("x", "0")) / 1000
                    data = fields.get("d", "")
                    if data and expires > now:
                        self._hand(Message(channel, key, data, expires))
                    elif channel in self._seen:
                        self._seen[channel] = key

    # ---------------------------------------------------------------- leases

    async def _renew(self) -> None:
        while True:
            await asyncio.sleep(self._refresh_every)
            try:
                await self.renew()
            except Exception as exc:  # noqa: BLE001 - retried on the next round
                log.debug("lease renewal failed: %s", exc)

    async def renew(self) -> None:
        """Rewrite this process's subscriber counts and holds on every channel it serves."""
        channels = set(self._conns) | self._dirty
        pending = list(channels)
        for start in range(0, len(pending), 100):
            batch = pending[start : start + 100]
            await asyncio.gather(*(self._renew_one(c) for c in batch))

    async def _renew_one(self, channel: str) -> None:
        cids = self._conns.get(channel, {})
        live = [cid for cid, n in cids.items() if n > 0]
        args = [self._node, sum(cids.values()), self._lease_ms, self._keep_ms, *live]
        await self._call(self._refresh, self._keys(channel), args)
        self._dirty.discard(channel)

    # ------------------------------------------------------------------ pushes

    async def publish(
        self, channel: str, data: str, attrs: PushAttributes, *, server: bool
    ) -> PublishResult:
        resolved = attrs.resolved()

        def given(value: Any) -> str:
            return "" if value is None else _arg(value)

        args = [
            self._events,
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
            self._id_ttl_ms,
        ]
        reply = await self._call(self._publish, self._keys(channel), args)
        if reply[0] == "err":
            reason = reply[1]
            if reason in FORBIDDEN:
                message, field = FORBIDDEN[reason]
                raise Forbidden(message, field=field)
            raise Forbidden(f"{reason}: only a server can change attributes", field=reason)
        etag = reply[1]
        self.published += 1
        key = etag_key(etag)
        if data and key is not None and channel in self._seen and self._listening:
            await self._delivered(channel, key)
        return PublishResult(
            channel=channel,
            etag=etag,
            subscribers=int(reply[2]),
            messages=int(reply[3]),
            created=bool(reply[4]),
        )

    async def _delivered(self, channel: str, key: EtagKey) -> None:
        """Wait (briefly) until our own push reached this process's subscribers."""
        if self._seen.get(channel, ZERO) >= key:
            return
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.setdefault(channel, []).append((key, fut))
        with contextlib.suppress(asyncio.TimeoutError, asyncio.CancelledError):
            await asyncio.wait_for(fut, self._publish_wait)

    async def info(self, channel: str) -> ChannelInfo | None:
        keys = self._keys(channel)
        reply = await self._call(self._info, [keys[0], keys[1], keys[3]], [])
        if reply is None:
            return None
        size, life, one2one, has_key, last, messages, subscribers = reply
        return ChannelInfo(
            channel=channel,
            etag=last if last != "0-0" else "0",
            subscribers=int(subscribers),
            messages=int(messages),
            size=int(size),
            life=int(life),
            one2one=one2one == "1",
            has_key=bool(has_key),
        )

    async def delete(self, channel: str) -> bool:
        keys = self._keys(channel)
        reply = await self._call(
            self._delete, [keys[0], keys[1], keys[3], keys[4]], [self._events, channel]
        )
        return bool(reply)

    # ------------------------------------------------------------- subscribers

    async def history(self, channel: str, after: str | None) -> History:
        key = None if after is None or after == "0" else etag_key(after)
        ours = key is not None and key[0] < ID_LIMIT and key[1] < ID_LIMIT
        arg = "" if after is None else (format_etag(key) if ours and key else "0")
        keys = self._keys(channel)
        reply = await self._call(self._history, [keys[0], keys[1], keys[3]], [arg])
        if reply is None:
            return History([], missed=after not in (None, "0"), last_etag="0", exists=False)
        last, given_out, dropped_live, entries = reply
        last_etag = last if last != "0-0" else "0"
        live = []
        for ident, fields in entries:
            data = _field(fields, "d")
            mkey = etag_key(ident)
            if data and mkey is not None:
                live.append(Message(channel, mkey, data, int(_field(fields, "x") or 0) / 1000))
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
        cids = self._conns.setdefault(channel, {})
        cids[cid] = cids.get(cid, 0) + 1
        try:
            args = [cid, self._node, 1, self._lease_ms, self._keep_ms]
            reply = await self._call(
                self._attach, self._keys(channel)[:2] + self._keys(channel)[3:], args
            )
        except BaseException:
            self._forget(channel, cid)
            self._dirty.add(channel)
            raise
        if reply[0] == "conflict":
            self._forget(channel, cid)
            raise Conflict(
                f"channel: {channel!r} is one2one and another client holds it", channel=channel
            )
        if channel not in self._seen:
            # The first local subscriber: notifications up to here are older than it.
            # Never move this later for subscribers already served: what is still in
            # flight to them would be skipped.
            self._seen[channel] = etag_key(reply[1]) or ZERO

    def _forget(self, channel: str, cid: str) -> tuple[int, int]:
        """One connection fewer; returns what is left on this channel and for this cid."""
        cids = self._conns.get(channel)
        if cids is None:
            return 0, 0
        left = cids.get(cid, 0) - 1
        if left > 0:
            cids[cid] = left
        else:
            cids.pop(cid, None)
            left = 0
        if not cids:
            del self._conns[channel]
            self._seen.pop(channel, None)
            for _, fut in self._waiters.pop(channel, []):
                if not fut.done():
                    fut.set_result(None)
        return sum(cids.values()), left

    async def detach(self, channel: str, cid: str) -> None:
        conns, left = self._forget(channel, cid)
        keys = self._keys(channel)
        args = [cid, self._node, conns, left, self._lease_ms, self._hold_ms]
        try:
            await self._call(self._detach, keys[:2] + keys[3:], args)
        except Unavailable:
            self._dirty.add(channel)
            raise

    async def healthy(self) -> bool:
        if not self._listening:
            return False
        try:
            return bool(await asyncio.wait_for(self._client.ping(), 2.0))
        except Exception:  # noqa: BLE001 - unhealthy, whatever the cause
            return False

    async def stats(self) -> dict[str, Any]:
        return {
            "backend": self.name,
            "published": self.published,
            "redis_connected": self._listening,
            "redis_reconnects": self.reconnects,
            "local_channels": len(self._conns),
        }


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
