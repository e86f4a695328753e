"""Presence across processes on Redis: one list, one hold, and the clients of a killed process."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from martd_asgi.backends.redis import RedisBackend
from martd_asgi.channels import PushAttributes
from martd_asgi.presence import Client, PresenceEvent

from .helpers import SSE, redis_url
from .serving import martd_serve

pytestmark = pytest.mark.anyio

LEASE = 3.0


async def control(stream: SSE, timeout: float = 5.0) -> dict[str, Any]:
    event = await stream.next(timeout)
    assert event.get("event") == "martd", event
    body: dict[str, Any] = json.loads(event["data"])
    return body


async def hold_open(url: str) -> None:
    """Stay subscribed until cancelled or the server goes."""
    headers = {"accept": "text/event-stream"}
    with contextlib.suppress(httpx.HTTPError):
        async with httpx.AsyncClient(timeout=30) as client:
            async with client.stream("GET", url, headers=headers) as response:
                async for _ in response.aiter_bytes():
                    pass


async def listed(client: httpx.AsyncClient, url: str) -> list[tuple[str, str]]:
    answer = await client.get(f"{url}/pub/room", params={"presence": "1"})
    assert answer.status_code == 200, answer.text
    return sorted((c["cid"], c["transport"]) for c in answer.json()["clients"])


async def test_presence_across_processes_including_a_killed_one(tmp_path: Path) -> None:
    settings = {"MARTD_LEASE": str(LEASE), "MARTD_HOLD": "1.5"}
    with (
        redis_url() as backend,
        martd_serve("--backend", backend, tmp=tmp_path, **settings) as one,
        martd_serve("--backend", backend, tmp=tmp_path, **settings) as two,
        martd_serve("--backend", backend, tmp=tmp_path, **settings) as three,
    ):
        async with httpx.AsyncClient(timeout=10) as client:
            created = await client.post(f"{one.url}/pub/room", params={"presence": "1"})
            assert created.status_code == 201, created.text
            headers = {"accept": "text/event-stream"}
            async with client.stream(
                "GET", f"{one.url}/sub/room?cid=watcher", headers=headers
            ) as response:
                watcher = SSE(response)
                stay = asyncio.ensure_future(hold_open(f"{two.url}/sub/room?cid=x"))
                try:
                    # a client of the other process joins, and both processes list it
                    assert await control(watcher) == {
                        "type": "join",
                        "channel": "room",
                        "cid": "x",
                        "user": None,
                    }
                    expected = [("watcher", "sse"), ("x", "sse")]
                    assert await listed(client, one.url) == expected
                    assert await listed(client, two.url) == expected

                    # a client that moves to the other process within the hold: no event
                    move = asyncio.ensure_future(hold_open(f"{two.url}/sub/room?cid=m"))
                    assert (await control(watcher))["cid"] == "m"
                    move.cancel()
                    await asyncio.sleep(0.2)
                    moved = asyncio.ensure_future(hold_open(f"{one.url}/sub/room?cid=m"))
                    await asyncio.sleep(2.0)  # past the hold
                    await client.post(f"{two.url}/pub/room?presence=1", content="marker")
                    assert (await watcher.next())["data"] == "marker"
                    moved.cancel()
                    assert (await control(watcher))["type"] == "leave"  # after its hold

                    # a deploy: a process stops (SIGTERM) and its client comes back to
                    # another one within the hold: neither a leave nor a join
                    stays = asyncio.ensure_future(hold_open(f"{three.url}/sub/room?cid=d"))
                    assert (await control(watcher))["cid"] == "d"
                    three.process.terminate()
                    three.process.wait(timeout=10)
                    await stays
                    back = asyncio.ensure_future(hold_open(f"{one.url}/sub/room?cid=d"))
                    await asyncio.sleep(2.0)  # past the hold
                    await client.post(f"{one.url}/pub/room?presence=1", content="deployed")
                    assert (await watcher.next())["data"] == "deployed"
                    assert ("d", "sse") in await listed(client, one.url)
                    back.cancel()
                    assert (await control(watcher))["cid"] == "d"  # its leave, after the hold

                    # the other process dies without a word: its clients leave within the lease
                    two.process.kill()
                    killed = time.monotonic()
                    left = await control(watcher, timeout=LEASE + 5)
                    took = time.monotonic() - killed
                    assert (left["type"], left["cid"]) == ("leave", "x")
                    assert took <= LEASE + 1.5, f"the leave took {took:.2f} s"
                    assert await listed(client, one.url) == [("watcher", "sse")]
                finally:
                    stay.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await stay


async def test_presence_redis_keys_expire_with_what_they_hold() -> None:
    lease, hold = 0.9, 0.3
    keep_ms = max(lease * 2 / 3, hold) * 1000 + 1000
    told: list[Any] = []
    with redis_url() as url:
        one = RedisBackend(url, lease=lease, hold=hold)
        quiet = RedisBackend(url, lease=lease, hold=hold)  # never renews: a crashed process
        try:
            await one.start(told.append)
            client = one._client
            base = one._keys("room")[0][:-1]
            p, pz = base + "p", base + "pz"
            await one.publish("room", "", PushAttributes(presence=True, life=60), server=True)
            me = Client("c1", "u1", "sse")
            await one.attach("room", "c1")
            await one.present("room", me, keep=True)
            assert await one.clients("room") == [me]
            for key in (p, pz):
                assert 0 < await client.pttl(key) <= keep_ms
            await one.absent("room", me, keep=True)
            await one.detach("room", "c1")
            assert await one.clients("room") == [me]  # within its hold
            deadline = time.monotonic() + 3
            while await client.exists(p, pz):  # the hold, then nothing
                assert time.monotonic() < deadline
                await asyncio.sleep(0.05)

            # a process that stops renewing: its clients lapse, and so do the keys
            await quiet.attach("room", "c2")
            await quiet.present("room", Client("c2", None, "websocket"), keep=True)
            assert [c.cid for c in await one.clients("room")] == ["c2"]
            deadline = time.monotonic() + lease + 1
            while await one.clients("room"):
                assert time.monotonic() < deadline
                await asyncio.sleep(0.05)

            # deleted with the channel
            await one.attach("room", "c3")
            await one.present("room", Client("c3", None, "sse"), keep=True)
            assert await client.exists(p, pz) == 2
            await one.delete("room")
            assert await client.exists(p, pz) == 0
            kinds = [(e.kind, e.client.cid) for e in told if isinstance(e, PresenceEvent)]
            assert ("leave", "c1") in kinds and ("leave", "c2") in kinds
        finally:
            await quiet.aclose()
            await one.aclose()
