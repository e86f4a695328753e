"""The Redis backend on Redis Cluster and behind Redis Sentinel (servers of the test's own)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager

import pytest
import redis
from redis.crc import key_slot

from martd_asgi.backends.base import Control, Event
from martd_asgi.backends.redis import RedisBackend
from martd_asgi.channels import Message, PushAttributes
from martd_asgi.errors import Conflict

from .helpers import wait_for
from .redis_servers import RedisServer, redis_servers

pytestmark = [pytest.mark.anyio, pytest.mark.redis]

# Names that hash to different slots, so that the cluster's three nodes all serve some.
CHANNELS = ["alpha", "beta", "gamma", "delta", "epsilon", "zeta"]


@asynccontextmanager
async def two_processes(url: str) -> AsyncIterator[tuple[RedisBackend, RedisBackend, list[Event]]]:
    events: list[Event] = []
    async with AsyncExitStack() as stack:
        one, two = RedisBackend(url, hold=0.5), RedisBackend(url, hold=0.5)
        await one.start(events.append)
        stack.push_async_callback(one.aclose)
        await two.start(lambda event: None)
        stack.push_async_callback(two.aclose)
        yield one, two, events


async def behave_as_one(url: str) -> None:
    async with two_processes(url) as (one, two, events):
        assert await one.healthy() and await two.healthy()
        for name in CHANNELS:
            await one.attach(name, "reader")
        etags = {}
        for name in CHANNELS:
            result = await two.publish(name, f"to {name}", PushAttributes(size=3), server=True)
            assert result.created and result.subscribers == 1
            etags[name] = result.etag
        await wait_for(lambda: len([e for e in events if isinstance(e, Message)]) == len(CHANNELS))
        # one order per channel; channels on different cluster nodes may interleave
        got = sorted((e.channel, e.etag, e.data) for e in events if isinstance(e, Message))
        assert got == sorted((name, etags[name], f"to {name}") for name in CHANNELS)
        # the process without subscribers was told nothing of them
        assert two._fanout.heard == 0
        history = await one.history("gamma", "0")
        assert [m.data for m in history.messages] == ["to gamma"]
        assert await two.delete("beta")
        await wait_for(lambda: Control("deleted", "beta") in events)
        await two.publish("zeta", "", PushAttributes(one2one=True), server=True)
        with pytest.raises(Conflict):
            await two.attach("zeta", "someone-else")
        for name in CHANNELS:
            await one.detach(name, "reader")


async def test_redis_cluster_spreads_channels_over_nodes() -> None:
    with redis_servers() as servers:
        nodes = servers.cluster()
        await behave_as_one(f"{nodes[1].url}?cluster=1")


async def test_redis_sentinel_leads_to_the_master() -> None:
    with redis_servers() as servers:
        master = servers.server()
        sentinel = servers.sentinel(master, "themaster")
        await behave_as_one(f"redis://127.0.0.1:{sentinel.port}/0?sentinel=themaster")


def move_slot(nodes: list[RedisServer], slot: int) -> None:
    """Move ``slot``, with its keys, from the node that owns it to the next one."""
    clients = [redis.Redis(port=n.port, decode_responses=True) for n in nodes]
    try:
        ids = [c.execute_command("CLUSTER", "MYID") for c in clients]
        ranges = clients[0].execute_command("CLUSTER", "SLOTS")
        port = next(int(r[2][1]) for r in ranges if int(r[0]) <= slot <= int(r[1]))
        owner = next(i for i, n in enumerate(nodes) if n.port == port)
        target = (owner + 1) % len(nodes)
        src, dst = clients[owner], clients[target]
        dst.execute_command("CLUSTER", "SETSLOT", slot, "IMPORTING", ids[owner])
        src.execute_command("CLUSTER", "SETSLOT", slot, "MIGRATING", ids[target])
        while keys := src.execute_command("CLUSTER", "GETKEYSINSLOT", slot, 100):
            to = nodes[target].port
            src.execute_command("MIGRATE", "127.0.0.1", to, "", 0, 5000, "KEYS", *keys)
        for client in clients:
            client.execute_command("CLUSTER", "SETSLOT", slot, "NODE", ids[target])
    finally:
        for client in clients:
            client.close()


async def test_redis_cluster_channel_whose_slot_moves_keeps_its_subscribers() -> None:
    with redis_servers() as servers:
        nodes = servers.cluster()
        async with two_processes(f"{nodes[0].url}?cluster=1&prefix=mv") as (one, two, events):
            await one.attach("alpha", "reader")
            sent = []
            for i in range(5):
                sent.append(
                    (await two.publish("alpha", f"a{i}", PushAttributes(), server=True)).etag
                )
            await wait_for(lambda: len(events) == 5)
            # Redis ends the subscriptions of a slot that leaves a node
            move_slot(nodes, key_slot(b"mv:{alpha}:e"))
            for i in range(5, 10):
                sent.append(
                    (await two.publish("alpha", f"a{i}", PushAttributes(), server=True)).etag
                )
            await wait_for(lambda: len(events) == 10, timeout=10)
            assert [(e.etag, e.data) for e in events if isinstance(e, Message)] == [
                (etag, f"a{i}") for i, etag in enumerate(sent)
            ]
            assert one._fanout.reconnects >= 1
            await one.detach("alpha", "reader")
