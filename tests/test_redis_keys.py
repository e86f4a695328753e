"""What the Redis backend keeps in Redis: each key goes with what it holds, and
etags never name another message, across a channel's drop and re-creation and
a Redis clock that steps back."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Iterator

import httpx
import pytest
from redis.crc import key_slot

from martd_asgi import create_app
from martd_asgi.backends import redis_lua
from martd_asgi.backends.base import Event
from martd_asgi.backends.redis import RedisBackend
from martd_asgi.backends.redis_keys import KeyNames
from martd_asgi.channels import Message, PushAttributes, etag_key

from .helpers import redis_url, running, wait_for

pytestmark = [pytest.mark.anyio, pytest.mark.redis]

SCRIPTS = ("PUBLISH", "INFO", "HISTORY", "DELETE", "SYNC", "REFRESH")
TIME = "  local t = redis.call('TIME')\n  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)\n"


@pytest.fixture
def url() -> Iterator[str]:
    with redis_url() as found:
        yield found


@contextlib.asynccontextmanager
async def backend(url: str, **options: float) -> AsyncIterator[RedisBackend]:
    one = RedisBackend(url, **options)
    try:
        yield one
    finally:
        await one.aclose()


@contextlib.contextmanager
def frozen_clock(ms: int) -> Iterator[None]:
    """Backends made meanwhile read ``ms`` from Redis's clock (TIME stepped back there)."""
    with pytest.MonkeyPatch.context() as patch:
        for name in SCRIPTS:
            text = getattr(redis_lua, name)
            assert text.count(TIME) == 1
            patch.setattr(redis_lua, name, text.replace(TIME, f"  return {ms}\n"))
        yield


def clock_at(url: str, ms: int) -> RedisBackend:
    with frozen_clock(ms):
        return RedisBackend(url)


async def keys_of(one: RedisBackend) -> set[str]:
    """Every key under the backend's prefix (SCAN also expires what it meets)."""
    return {k async for k in one._client.scan_iter(match=f"{one._prefix}:*", count=1000)}


async def test_redis_recreated_channel_tells_an_old_etag_missed(url: str) -> None:
    async with backend(url) as one:
        old = (await one.publish("c", "old", PushAttributes(), server=True)).etag
        assert await one.delete("c")
        new = (await one.publish("c", "new", PushAttributes(), server=True)).etag
        assert etag_key(new) > etag_key(old)  # type: ignore[operator]
        history = await one.history("c", old)
        assert history.missed and [(m.etag, m.data) for m in history.messages] == [(new, "new")]


@pytest.mark.parametrize("back_ms", [0, 3_600_000])
@pytest.mark.parametrize("drop", ["delete", "expiry"])
async def test_redis_clock_stepped_back_never_gives_an_etag_out_again(
    url: str, drop: str, back_ms: int
) -> None:
    events: list[Event] = []
    async with backend(url) as one, backend(url) as listener:
        await listener.start(events.append)
        await listener.attach("c", "reader")
        old = (await one.publish("c", "old", PushAttributes(life=1), server=True)).etag
        await wait_for(lambda: any(isinstance(e, Message) for e in events))
        if drop == "delete":
            assert await one.delete("c")
        else:  # the message's life passes; the channel goes when its subscriber leaves
            await asyncio.sleep(1.1)
            await listener.detach("c", "reader")
            assert await one.info("c") is None
            await listener.attach("c", "reader")
        # Redis's clock steps back (a failover to a replica whose clock is behind):
        # to the very millisecond the old etag was given out in, or an hour before.
        old_ms = etag_key(old)[0]  # type: ignore[index]
        async with contextlib.AsyncExitStack() as stack:
            behind = clock_at(url, old_ms - back_ms)
            stack.push_async_callback(behind.aclose)
            attrs = PushAttributes(life=7200)  # still live an hour behind
            etags = [
                (await behind.publish("c", f"new{i}", attrs, server=True)).etag for i in range(3)
            ]
        assert all(etag_key(e) > etag_key(old) for e in etags)  # type: ignore[operator]
        # a client that holds the old etag is told it missed messages, then gets the new ones
        history = await one.history("c", old)
        assert history.missed
        assert [(m.etag, m.data) for m in history.messages] == [
            (e, f"new{i}") for i, e in enumerate(etags)
        ]
        await wait_for(lambda: len([e for e in events if isinstance(e, Message)]) == 4)
        handed = [(e.etag, e.data) for e in events if isinstance(e, Message)]
        assert handed == [(old, "old")] + [(e, f"new{i}") for i, e in enumerate(etags)]
        await listener.detach("c", "reader")


async def test_redis_long_poll_with_an_etag_of_a_deleted_channel_is_told_missed(
    url: str,
) -> None:
    with running(create_app(backend=url)) as server:
        async with httpx.AsyncClient(base_url=server.url, timeout=10) as http:
            old = (await http.post("/pub/c", content="old")).json()["etag"]
            assert (await http.delete("/pub/c")).status_code == 200
            # Another martd, on a Redis whose clock stepped back to the old etag's millisecond.
            with frozen_clock(etag_key(old)[0]):  # type: ignore[index]
                behind_app = create_app(backend=url)
            with running(behind_app) as behind:
                answer = await http.post(f"{behind.url}/pub/c?life=3600", content="new")
                assert answer.status_code == 201
            new = answer.json()["etag"]
            assert new != old
            poll = (await http.get("/sub/c", params={"etag": old})).json()["channels"]["c"]
            assert poll["missed"] is True
            assert [(m["etag"], m["data"]) for m in poll["messages"]] == [(new, "new")]


async def test_redis_live_channel_grows_when_the_clock_key_was_lost(url: str) -> None:
    async with backend(url) as one:
        old = (await one.publish("c", "old", PushAttributes(), server=True)).etag
        await one._client.delete(one._keys("c")[2])  # e.g. deleted by hand
        behind = clock_at(url, etag_key(old)[0])  # type: ignore[index]
        try:
            new = (await behind.publish("c", "new", PushAttributes(), server=True)).etag
        finally:
            await behind.aclose()
        assert etag_key(new) > etag_key(old)  # type: ignore[operator]
        history = await one.history("c", "0")
        assert [(m.etag, m.data) for m in history.messages] == [(old, "old"), (new, "new")]


async def test_redis_dropped_channels_leave_only_the_id_clock(url: str) -> None:
    async with backend(url) as one:
        await one.start(lambda event: None)
        names = [f"gone{i}" for i in range(20)]
        for name in names[:10]:  # half of them had a subscriber, who left
            await one.attach(name, "reader")
        for name in names:
            await one.publish(name, "x", PushAttributes(size=1, life=1), server=True)
        for name in names[:10]:
            await one.detach(name, "reader")
        assert len(await keys_of(one)) > len(names)
        deadline = time.monotonic() + 5
        while await keys_of(one) != {f"{one._prefix}:clock"}:
            assert time.monotonic() < deadline, sorted(await keys_of(one))[:10]
            await asyncio.sleep(0.1)


async def test_redis_each_key_expires_with_what_it_holds(url: str) -> None:
    lease, hold = 600, 300
    async with backend(url, lease=lease / 1000, hold=hold / 1000) as one:
        client, (h, s, clock, n, o) = one._client, one._keys("c")
        await one.publish("c", "x", PushAttributes(life=60), server=True)
        assert 59_000 < await client.pttl(h) <= 60_000  # the newest message's life
        assert 59_000 < await client.pttl(s) <= 60_000
        assert await client.pttl(clock) == -1  # the one key that outlives channels
        assert await keys_of(one) == {h, s, clock}
        # a long-lived message evicted by a short-lived one no longer keeps the channel
        await one.publish("short", "long", PushAttributes(size=1, life=3600), server=True)
        await one.publish("short", "brief", PushAttributes(size=1, life=1), server=True)
        assert 0 < await client.pttl(one._keys("short")[0]) <= 1000
        assert 0 < await client.pttl(one._keys("short")[1]) <= 1000
        await client.delete(*one._keys("short")[:2])

        await one.attach("c", "reader")
        assert 0 < await client.pttl(n) <= lease  # this process's lease
        assert 0 < await client.pttl(o) <= lease
        await one.detach("c", "reader")
        assert await keys_of(one) == {h, s, clock}  # no subscriber, no lease, no hold

        await one.publish("p", "x", PushAttributes(one2one=True, life=60), server=True)
        await one.attach("p", "holder")
        await one.detach("p", "holder")
        _, _, _, pn, po = one._keys("p")
        assert not await client.exists(pn)
        assert 0 < await client.pttl(po) <= lease  # the hold, then nothing
        deadline = time.monotonic() + 3
        while await client.exists(po):
            assert time.monotonic() < deadline
            await asyncio.sleep(0.05)

        # A deleted channel is noted for processes that could not hear of it, while
        # its subscribers' leases last; without subscribers nothing is noted.
        await one.publish("d", "x", PushAttributes(), server=True)
        await one.delete("d")
        assert not await client.exists(one._names.gone("d"))
        await one.publish("d", "x", PushAttributes(), server=True)
        await one.attach("d", "reader")
        await one.delete("d")
        assert 0 < await client.pttl(one._names.gone("d")) <= lease
        await one.detach("d", "reader")

        # A process that stops renewing (it crashed): its lease and holds lapse on their own.
        await one.attach("q", "reader")
        _, _, _, qn, qo = one._keys("q")
        assert await client.exists(qn, qo) == 2
        deadline = time.monotonic() + 3
        while await client.exists(qn, qo):
            assert time.monotonic() < deadline
            await asyncio.sleep(0.05)
        assert await one.info("q") is None


def test_redis_cluster_keys_of_a_channel_share_its_slot() -> None:
    names = KeyNames("martd", cluster=True)
    clocks = set()
    for i in range(20_000):
        keys = names.channel(f"channel-{i}")
        assert len({key_slot(k.encode()) for k in keys}) == 1
        clocks.add(keys[2])
    assert len(clocks) <= 16384  # one per slot, however many channels
    assert KeyNames("martd", cluster=False).channel("x")[2] == "martd:clock"
    assert KeyNames("a{b}", cluster=True).channel("x")[2] == "a{b}:clock"
