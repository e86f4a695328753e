"""The pub/sub connections of the Redis backend's fan-out.

A single Redis (or the master behind Sentinel) gets one connection per
process, subscribed with ``SUBSCRIBE``. A Redis Cluster gets one per shard
that owns a channel this process follows, subscribed with ``SSUBSCRIBE``
(sharded pub/sub, Redis 7 or later): a notification then travels only to the
shard that owns its channel's slot, and from there only to the processes
subscribed to it, where classic pub/sub would copy it to every node.

A ``Link`` only sends (un)subscriptions and reads; deciding what to subscribe
to, and catching up after a subscription, is ``redis_fanout``'s. With hiredis,
a single Redis's (or Sentinel's master's) link, once connected, takes the
socket over from redis-py: every reply a
read brings is parsed in one loop and handed over in the same callback, with
no task woken and no timeout context per notification.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from typing import Any

import redis.asyncio as aioredis
from redis import exceptions as rexc
from redis._parsers import hiredis as _hiredis_parsers

from .redis_line import AVAILABLE as HIREDIS
from .redis_line import pack, reply_reader, take_over

# what redis-py's hiredis reader answers for an incomplete reply
_NOT_ENOUGH_DATA = getattr(_hiredis_parsers, "NOT_ENOUGH_DATA", False)

PING_AFTER = 5.0  # seconds without traffic before a link checks its connection

Handler = Callable[["Link", list[Any]], None]


class Link:
    """One pub/sub connection, and the commands that (un)subscribe on it."""

    def __init__(self, pubsub: Any, *, sharded: bool, owner: Any = None) -> None:
        self.pubsub = pubsub
        self.sharded = sharded
        self.subscribe = "SSUBSCRIBE" if sharded else "SUBSCRIBE"
        self.unsubscribe = "SUNSUBSCRIBE" if sharded else "UNSUBSCRIBE"
        self._owner = owner  # a client of its own, closed with the link (Cluster)
        self._wire: _Wire | None = None  # the socket, once taken over

    @classmethod
    def plain(cls, client: Any) -> Link:
        """The one connection to a single Redis, or to the master Sentinel names."""
        return cls(client.pubsub(), sharded=False)

    @classmethod
    def shard(cls, node: Any) -> Link:
        """A connection to one Cluster node, made as the cluster client makes its own."""
        pool = aioredis.ConnectionPool(
            connection_class=node.connection_class, max_connections=1, **node.connection_kwargs
        )
        owner = aioredis.Redis.from_pool(pool)
        return cls(owner.pubsub(), sharded=True, owner=owner)

    async def open(self) -> None:
        """Connect, and make sure Redis answers on this connection."""
        await self.pubsub.ping()
        await asyncio.wait_for(self._pong(), 5.0)
        if HIREDIS and not self.sharded:
            # (Cluster's shard links stay on redis-py's reads: not measured, and
            # their interest test failed once under load with the socket taken over)
            self._wire = _Wire.take(self.pubsub.connection)

    async def _pong(self) -> None:
        while True:
            message = await self.pubsub.get_message(timeout=1.0)
            if message is not None and message["type"] == "pong":
                return

    async def send(self, command: str, names: list[str]) -> None:
        # Only written here; the confirmations come in through read().
        if self._wire is not None:
            self._wire.write(pack(command, *names))
        else:
            await self.pubsub.execute_command(command, *names)

    async def _ping(self) -> None:
        if self._wire is not None:
            self._wire.write(pack("PING"))
        else:
            await self.pubsub.ping()

    async def read(self, handle: Handler) -> None:
        """Hand each reply (``[kind, channel, data]``: a message, a confirmation, a
        pong) to ``handle``, in order, until the connection fails.

        Read straight from the connection, as redis-py's ``get_message`` does
        underneath, without its layers (health checks, retries, metrics) around
        every message: each push is a notification read here."""
        if self._wire is not None:
            await self._wire.run(lambda reply: handle(self, reply))
            return
        heard = pinged = time.monotonic()
        read = self.pubsub.connection.read_response
        while True:
            reply = await read(timeout=1.0, disconnect_on_error=False, push_request=True)
            now = time.monotonic()
            if reply is None:
                # Quiet: ask, so that a dead peer or a half-open connection shows itself.
                if now - heard > 3 * PING_AFTER:
                    raise ConnectionError("redis pub/sub: no answer to PING")
                if now - heard >= PING_AFTER and now - pinged >= PING_AFTER:
                    pinged = now
                    await self._ping()
                continue
            heard = now
            if isinstance(reply, list) and len(reply) >= 2:
                handle(self, reply)

    async def aclose(self) -> None:
        if self._wire is not None:
            self._wire.close()
        with contextlib.suppress(Exception):
            await self.pubsub.aclose()
        if self._owner is not None:
            with contextlib.suppress(Exception):
                await self._owner.aclose()


class _Wire(asyncio.Protocol):
    """A pub/sub socket taken over from redis-py: replies parsed as they come."""

    def __init__(self, reader: Any) -> None:
        self.reader = reader
        self.transport: asyncio.Transport | None = None
        self.handle: Callable[[list[Any]], None] | None = None
        self.early: list[list[Any]] = []  # read before run() began
        self.heard = time.monotonic()
        self.ended: asyncio.Future[BaseException] = asyncio.get_running_loop().create_future()
        self.streams: tuple[Any, Any] | None = None

    @classmethod
    def take(cls, conn: Any) -> _Wire:
        if conn._reader is None or conn._writer is None:
            raise rexc.ConnectionError("redis pub/sub: not connected")
        wire = cls(reply_reader(conn))
        # What redis-py read already and did not hand over yet comes first.
        parsed = getattr(conn._parser, "_reader", None)
        while parsed is not None and parsed.has_data():
            reply = parsed.gets()
            if reply is False or reply is _NOT_ENOUGH_DATA:
                break
            if isinstance(reply, list) and len(reply) >= 2:
                wire.early.append(reply)
        pending = bytes(getattr(conn._reader, "_buffer", b""))
        take_over(conn, wire)
        if pending:
            wire.data_received(pending)
        return wire

    def write(self, data: bytes) -> None:
        if self.transport is None or self.ended.done():
            raise rexc.ConnectionError("redis pub/sub: connection lost")
        self.transport.write(data)

    async def run(self, handle: Callable[[list[Any]], None]) -> None:
        """Hand every reply over until the connection fails; ping when it is quiet."""
        self.handle = handle
        early, self.early = self.early, []
        for reply in early:
            handle(reply)
        pinged = 0.0
        while True:
            try:
                exc = await asyncio.wait_for(asyncio.shield(self.ended), PING_AFTER)
            except asyncio.TimeoutError:
                exc = None
            if exc is not None:
                raise exc
            now = time.monotonic()
            if now - self.heard > 3 * PING_AFTER:
                raise rexc.ConnectionError("redis pub/sub: no answer to PING")
            if now - self.heard >= PING_AFTER and now - pinged >= PING_AFTER:
                pinged = now
                self.write(pack("PING"))

    def end(self, exc: BaseException) -> None:
        if not self.ended.done():
            self.ended.set_result(exc)
        if self.transport is not None:
            self.transport.abort()

    def close(self) -> None:
        self.end(rexc.ConnectionError("redis pub/sub: closed"))

    # -- asyncio.Protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self.heard = time.monotonic()
        reader = self.reader
        try:
            reader.feed(data)
            while True:
                reply = reader.gets()
                if reply is False:
                    return
                if isinstance(reply, list) and len(reply) >= 2:
                    if self.handle is None:
                        self.early.append(reply)
                    else:
                        self.handle(reply)
                elif isinstance(reply, BaseException):
                    raise reply
        except Exception as exc:  # ends this connection; the fan-out reconnects
            self.end(exc)

    def eof_received(self) -> bool:
        self.end(rexc.ConnectionError("redis pub/sub: connection closed by the server"))
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        self.end(rexc.ConnectionError(f"redis pub/sub: connection lost ({exc or 'closed'})"))
