"""The pub/sub connections of the Redis backend's fan-out.

A single Redis (or the master behind Sentinel) gets one connection per
process, subscribed with ``SUBSCRIBE``. A Redis Cluster gets one per shard
that owns a channel this process follows, subscribed with ``SSUBSCRIBE``
(sharded pub/sub, Redis 7 or later): a notification then travels only to the
shard that owns its channel's slot, and from there only to the processes
subscribed to it, where classic pub/sub would copy it to every node.

A ``Link`` only sends (un)subscriptions and reads; deciding what to subscribe
to, and catching up after a subscription, is ``redis_fanout``'s.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from typing import Any

import redis.asyncio as aioredis

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

    async def _pong(self) -> None:
        while True:
            message = await self.pubsub.get_message(timeout=1.0)
            if message is not None and message["type"] == "pong":
                return

    async def send(self, command: str, names: list[str]) -> None:
        # Only written here; the confirmations come in through read().
        await self.pubsub.execute_command(command, *names)

    async def read(self, handle: Handler) -> None:
        """Hand each reply (``[kind, channel, data]``: a message, a confirmation, a
        pong) to ``handle``, in order, until the connection fails.

        Read straight from the connection, as redis-py's ``get_message`` does
        underneath, without its layers (health checks, retries, metrics) around
        every message: each push is a notification read here."""
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
                    await self.pubsub.ping()
                continue
            heard = now
            if isinstance(reply, list) and len(reply) >= 2:
                handle(self, reply)

    async def aclose(self) -> None:
        with contextlib.suppress(Exception):
            await self.pubsub.aclose()
        if self._owner is not None:
            with contextlib.suppress(Exception):
                await self._owner.aclose()
