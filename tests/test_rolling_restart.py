"""A rolling restart of one of two nodes on one Redis loses no message.

Subscribers on both nodes; the publisher pushes through whichever node is up;
one node gets SIGTERM mid-stream and comes back. Every subscriber that
reconnects (with ``Last-Event-ID``, to any node) ends with every message, once
and in order.
"""

from __future__ import annotations

import asyncio
import secrets
import time

import httpx
import pytest

from .helpers import require
from .opshelpers import UvicornProcess

pytestmark = [pytest.mark.anyio, pytest.mark.redis]

MESSAGES = 200
CLIENTS = 10
REDIS = "redis://127.0.0.1:6379/0"


def redis_available() -> bool:
    try:
        import redis
    except ImportError:
        return False
    try:
        return bool(redis.Redis.from_url(REDIS, socket_timeout=1).ping())
    except redis.RedisError:
        return False


async def follow(nodes: list[str], start: int, got: list[int], ends: list[int]) -> None:
    """One browser: subscribe, and on any end reconnect to a node with its last etag."""
    last: str | None = None
    turn = start
    async with httpx.AsyncClient(timeout=httpx.Timeout(10, read=30)) as client:
        while len(got) < MESSAGES:
            url = nodes[turn % len(nodes)]
            headers = {"accept": "text/event-stream"}
            if last is not None:
                headers["last-event-id"] = last
            try:
                async with client.stream("GET", f"{url}/sub/deploy", headers=headers) as answer:
                    if answer.status_code == 200:
                        data: list[str] = []
                        event_id = None
                        async for line in answer.aiter_lines():
                            if line.startswith("id: "):
                                event_id = line[4:]
                            elif line.startswith("data: "):
                                data.append(line[6:])
                            elif line == "" and data and event_id is not None:
                                got.append(int(data[0]))
                                last, data, event_id = event_id, [], None
                                if len(got) == MESSAGES:
                                    return
            except httpx.HTTPError:
                pass
            ends.append(start)
            turn += 1
            await asyncio.sleep(0.05)


async def push(client: httpx.AsyncClient, nodes: list[str], seq: int) -> None:
    for attempt in range(40):
        url = nodes[(seq + attempt) % len(nodes)]
        try:
            answer = await client.post(f"{url}/pub/deploy?size={MESSAGES}", content=str(seq))
            if answer.status_code in (200, 201):
                return
        except httpx.HTTPError:
            pass
        await asyncio.sleep(0.05)
    raise AssertionError(f"push {seq} was not accepted by any node")


async def test_rolling_restart_of_one_node_loses_nothing() -> None:
    require("redis", redis_available(), f"no Redis at {REDIS}")
    import redis

    prefix = f"martd-ops-{secrets.token_hex(4)}"
    env = {"MARTD_BACKEND": f"{REDIS}?prefix={prefix}", "MARTD_DEMO": "0"}
    a, b = UvicornProcess(env).start(), UvicornProcess(env).start()
    restarted: UvicornProcess | None = None
    nodes = [a.url, b.url]
    received: list[list[int]] = [[] for _ in range(CLIENTS)]
    ends: list[int] = []
    followers = [asyncio.ensure_future(follow(nodes, i, received[i], ends)) for i in range(CLIENTS)]
    publisher = httpx.AsyncClient(timeout=5)
    started = time.monotonic()
    try:
        deadline = time.monotonic() + 10
        for node in (a, b):
            while (await publisher.get(f"{node.url}/stats")).json()["subscribers"] < CLIENTS // 2:
                assert time.monotonic() < deadline, "subscribers did not connect"
                await asyncio.sleep(0.05)
        for seq in range(MESSAGES):
            if seq == MESSAGES // 3:
                assert a.proc is not None
                a.proc.terminate()  # SIGTERM: a deploy
                nodes.remove(a.url)
                await asyncio.to_thread(a.proc.wait, 10)
            if seq == MESSAGES // 2:
                restarted = await asyncio.to_thread(UvicornProcess(env).start)
                nodes.append(restarted.url)
            await push(publisher, nodes, seq)
            await asyncio.sleep(0.005)
        await asyncio.wait_for(asyncio.gather(*followers), 30)
        print(
            f"rolling restart: {MESSAGES} messages to {CLIENTS} clients in "
            f"{time.monotonic() - started:.1f}s, {len(ends)} reconnects"
        )
    finally:
        await publisher.aclose()
        for task in followers:
            task.cancel()
        for node in (a, b, restarted):
            if node is not None:
                node.stop()
        client = redis.Redis.from_url(REDIS)
        keys = list(client.scan_iter(f"{prefix}*"))
        if keys:
            client.delete(*keys)
        client.close()
    for got in received:
        assert got == list(range(MESSAGES))
    assert len(set(ends)) >= CLIENTS // 2  # the clients of the restarted node reconnected
