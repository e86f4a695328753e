"""The Redis backend on Redis Cluster and behind Redis Sentinel (servers of the test's own)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager

import pytest

from conftest import wait_for
from martd_asgi.backends.base import Control, Event
from martd_asgi.backends.redis import RedisBackend
from martd_asgi.channels import Message, PushAttributes
from martd_asgi.errors import Conflict
from redis_servers import redis_servers

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
