"""On Redis, a process hears only the channels it has subscribers on, and nothing is
lost or repeated while subscribers move between processes and pushes flow."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx
import pytest

from martd_asgi import create_app
from martd_asgi.backends.base import Control, Event
from martd_asgi.backends.redis import RedisBackend
from martd_asgi.channels import PushAttributes

from .helpers import SSE, ServerThread, redis_url, sse, wait_for
from .redis_servers import redis_servers

pytestmark = [pytest.mark.anyio, pytest.mark.redis]

LINGER = 0.05  # seconds: processes leave a channel almost as soon as its subscribers do


@contextlib.contextmanager
def two_martds(url: str) -> Iterator[list[ServerThread]]:
    servers: list[ServerThread] = []
    try:
        for _ in range(2):
            martd = create_app(backend=url)
            martd.backend._fanout.linger = LINGER  # type: ignore[attr-defined]
            servers.append(ServerThread(martd).start())
        yield servers
    finally:
        for server in servers:
            server.stop()


@contextlib.asynccontextmanager
async def clients(*servers: ServerThread) -> AsyncIterator[list[httpx.AsyncClient]]:
    async with contextlib.AsyncExitStack() as stack:
        yield [
            await stack.enter_async_context(httpx.AsyncClient(base_url=s.url, timeout=10))
            for s in servers
        ]


async def stats(client: httpx.AsyncClient) -> dict[str, Any]:
    return dict((await client.get("/stats")).json())


async def until(client: httpx.AsyncClient, ok: Any, timeout: float = 5.0) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while not ok(now := await stats(client)):
        assert time.monotonic() < deadline, f"not met in time: {now}"
        await asyncio.sleep(0.02)
    return now


async def test_redis_process_hears_only_the_channels_it_has_subscribers_on() -> None:
    with redis_url() as url, two_martds(url) as (a, b):
        async with clients(a, b) as (ca, cb):
            async with sse(ca, "/sub/mine") as on_a:
                await until(ca, lambda s: s["subscribers"] == 1)
                heard_b = (await stats(cb))["redis_notifications"]
                for i in range(20):  # pushed through B, which has no subscriber on it
                    assert (await cb.post("/pub/mine", content=f"m{i}")).status_code in (200, 201)
                assert [(await on_a.next())["data"] for _ in range(20)] == [
                    f"m{i}" for i in range(20)
                ]
                assert (await stats(ca))["redis_notifications"] >= 20
                assert (await stats(cb))["redis_notifications"] == heard_b
                # B gains a subscriber: from then on it hears the channel...
                async with sse(cb, "/sub/mine") as on_b:
                    await until(cb, lambda s: s["subscribers"] == 1)
                    await ca.post("/pub/mine", content="both")
                    assert (await on_b.next())["data"] == "both"
                    assert (await on_a.next())["data"] == "both"
                # ...and once its subscriber left, no longer.
                quiet = await until(cb, lambda s: s["redis_followed_channels"] == 0)
                for i in range(5):
                    await ca.post("/pub/mine", content=f"late{i}")
                assert [(await on_a.next())["data"] for _ in range(5)] == [
                    f"late{i}" for i in range(5)
                ]
                assert (await stats(cb))["redis_notifications"] == quiet["redis_notifications"]
                # the same, as Prometheus sees it
                assert metric(await ca.get("/metrics")) >= 26
                assert metric(await cb.get("/metrics")) == quiet["redis_notifications"]


def metric(answer: httpx.Response) -> float:
    for line in answer.text.splitlines():
        if line.startswith("martd_redis_notifications_total "):
            return float(line.split()[1])
    raise AssertionError("no martd_redis_notifications_total")


def numbers(messages: list[dict[str, Any]]) -> list[int]:
    return [int(m["data"]) for m in messages]


async def interest_moves_while_pushes_flow(url: str, pushes: int = 120) -> None:
    """Per channel: pushes through both processes, one at a time; a long-poller and an
    SSE reader hopping between the processes by etag, so each process gains and
    loses the channel again and again; and on one channel a reader that stays.
    Every hop must carry on exactly after the last message it had."""
    names = ["hop1", "hop2", "steady"]
    with two_martds(url) as servers:
        async with clients(*servers) as both:
            first = {}
            for name in names:
                answer = await both[0].post(f"/pub/{name}?size=1000", content="0")
                first[name] = answer.json()["etag"]

            async def push(name: str) -> None:
                for i in range(1, pushes + 1):
                    answer = await both[i % 2].post(f"/pub/{name}?size=1000", content=str(i))
                    assert answer.status_code == 200, answer.text

            async def long_poll(name: str) -> None:
                etag, last = first[name], 0
                for hop in itertools.count():
                    if last == pushes:
                        return
                    answer = await both[hop % 2].get(f"/sub/{name}", params={"etag": etag})
                    assert answer.status_code == 200, answer.text
                    got = answer.json()["channels"][name]["messages"]
                    assert numbers(got) == list(range(last + 1, last + 1 + len(got))), (hop, got)
                    etag, last = got[-1]["etag"], last + len(got)

            async def hop_sse(name: str) -> None:
                etag, last = first[name], 0
                for hop in itertools.count():
                    if last == pushes:
                        return
                    headers = {"last-event-id": etag}
                    async with sse(both[hop % 2], f"/sub/{name}", headers) as stream:
                        for _ in range(1 + hop % 4):
                            event = await stream.next(10)
                            assert int(event["data"]) == last + 1, (hop, event, last)
                            etag, last = event["id"], last + 1
                            if last == pushes:
                                return

            async def stay(name: str) -> list[int]:
                got = []
                async with sse(both[0], f"/sub/{name}", {"last-event-id": first[name]}) as s:
                    while len(got) < pushes:
                        got.append(int((await s.next(10))["data"]))
                return got

            staying = asyncio.ensure_future(stay("steady"))
            await until(both[0], lambda s: s["subscribers"] == 1)
            work = [push(n) for n in names]
            work += [long_poll(n) for n in names] + [hop_sse(n) for n in names]
            await asyncio.wait_for(asyncio.gather(*work), 60)
            assert await asyncio.wait_for(staying, 10) == list(range(1, pushes + 1))
            for client in both:  # every process took part, and followed channels came and went
                now = await stats(client)
                assert now["redis_notifications"] > 0 and now["redis_reconnects"] == 0


async def test_redis_interest_moves_between_processes_while_pushes_flow() -> None:
    with redis_url() as url:
        await interest_moves_while_pushes_flow(url)


async def test_redis_cluster_interest_moves_between_processes_while_pushes_flow() -> None:
    with redis_servers() as servers:
        nodes = servers.cluster()
        await interest_moves_while_pushes_flow(f"{nodes[0].url}?cluster=1", pushes=60)


async def test_redis_sentinel_interest_moves_between_processes_while_pushes_flow() -> None:
    with redis_servers() as servers:
        sentinel = servers.sentinel(servers.server(), "themaster")
        url = f"redis://127.0.0.1:{sentinel.port}/0?sentinel=themaster"
        await interest_moves_while_pushes_flow(url, pushes=60)


async def test_redis_one2one_switched_on_before_a_process_subscribed_kicks_its_subscriber() -> None:
    with redis_url() as url:
        listener, pusher = RedisBackend(url), RedisBackend(url)
        events: list[Event] = []
        await pusher.start(lambda event: None)
        try:
            await pusher.publish("duo", "x", PushAttributes(), server=True)
            await pusher.attach("duo", "first")
            await listener.attach("duo", "second")  # counted, but not subscribed yet
            await pusher.publish("duo", "", PushAttributes(one2one=True), server=True)
            await listener.start(events.append)  # subscribes, and catches up
            await wait_for(lambda: bool(events))
            assert events == [Control("kicked", "duo", "first")]
            await listener.detach("duo", "second")
            await pusher.detach("duo", "first")
        finally:
            await listener.aclose()
            await pusher.aclose()


async def test_redis_restarted_while_subscribers_hop_between_processes_loses_nothing() -> None:
    """Redis stops and comes back while pushes flow and readers hop between the two
    processes by etag: each reader gets every message of its channel, in order, once,
    across the outage (during which subscribing is answered 503)."""
    names = ["r1", "r2"]
    with redis_servers() as servers:
        redis = servers.durable()
        with two_martds(redis.url) as martds:
            async with clients(*martds) as both:
                first = {}
                for name in names:
                    answer = await both[0].post(f"/pub/{name}?size=1000", content="start")
                    first[name] = answer.json()["etag"]
                got: dict[str, list[list[str]]] = {name: [[], []] for name in names}
                final: dict[str, str] = {}
                stop = asyncio.Event()
                refused: set[int] = set()

                async def push(name: str) -> None:
                    for i in itertools.count():
                        if stop.is_set():
                            return
                        with contextlib.suppress(httpx.HTTPError):
                            answer = await both[i % 2].post(f"/pub/{name}?size=1000", content=str(i))
                            if answer.status_code not in (200, 201):
                                refused.add(answer.status_code)
                                await asyncio.sleep(0.02)

                async def long_poll(name: str) -> None:
                    etag, mine = first[name], got[name][0]
                    for hop in itertools.count():
                        if final.get(name) == etag:
                            return
                        params = {"etag": etag, "timeout": "1"}
                        try:
                            answer = await both[hop % 2].get(f"/sub/{name}", params=params)
                        except httpx.HTTPError:
                            continue
                        if answer.status_code != 200:
                            await asyncio.sleep(0.02)  # 503 while Redis is away
                            continue
                        entry = answer.json()["channels"].get(name)
                        if entry is None:  # the poll's timeout, while Redis is away
                            continue
                        assert not entry["missed"], entry
                        mine += [m["etag"] for m in entry["messages"]]
                        etag = mine[-1] if mine else etag

                async def hop_sse(name: str) -> None:
                    etag, mine = first[name], got[name][1]
                    for hop in itertools.count():
                        if final.get(name) == etag:
                            return
                        headers = {"accept": "text/event-stream", "last-event-id": etag}
                        try:
                            async with both[hop % 2].stream(
                                "GET", f"/sub/{name}", headers=headers
                            ) as response:
                                if response.status_code != 200:
                                    await asyncio.sleep(0.02)  # 503 while Redis is away
                                    continue
                                stream = SSE(response)
                                for _ in range(1 + hop % 5):
                                    event = await stream.next(2)
                                    assert "event" not in event, event  # no control event
                                    mine.append(event["id"])
                                    etag = event["id"]
                        except (httpx.HTTPError, TimeoutError, EOFError):
                            await asyncio.sleep(0.02)

                def progress() -> int:
                    return min(len(lists[0]) + len(lists[1]) for lists in got.values())

                pushing = [asyncio.ensure_future(push(n)) for n in names]
                reading = [asyncio.ensure_future(f(n)) for n in names for f in (long_poll, hop_sse)]
                try:
                    await wait_for(lambda: progress() >= 30, timeout=10)
                    redis.stop()
                    await wait_for(lambda: 503 in refused, timeout=10)
                    redis.start()
                    before = progress()
                    await wait_for(lambda: progress() >= before + 30, timeout=20)
                finally:
                    stop.set()
                    await asyncio.gather(*pushing)
                truth = {}
                for name in names:
                    answer = await both[0].get(f"/sub/{name}", params={"etag": first[name]})
                    truth[name] = [m["etag"] for m in answer.json()["channels"][name]["messages"]]
                    final[name] = truth[name][-1]
                await asyncio.wait_for(asyncio.gather(*reading), 30)
                for name in names:
                    assert got[name] == [truth[name], truth[name]], name
