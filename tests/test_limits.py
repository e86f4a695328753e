"""Each limit answers its status with a JSON error and counts in /metrics."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

import httpx
import pytest

from martd_asgi import create_app
from martd_asgi.limits import TokenBuckets

from .helpers import ServerThread, sse, wait_for
from .opshelpers import metric

pytestmark = pytest.mark.anyio

OUTSIDER = ("203.0.113.7", 40000)


def client_for(app: object, peer: tuple[str, int] = ("127.0.0.1", 40000)) -> httpx.AsyncClient:
    transport = httpx.ASGITransport(app=app, client=peer)  # type: ignore[arg-type]
    return httpx.AsyncClient(transport=transport, base_url="http://martd")


async def rejected(client: httpx.AsyncClient, status: str, reason: str) -> float:
    text = (await client.get("/metrics")).text
    return metric(text, "martd_rejected_requests_total", status=status, reason=reason)


def test_token_buckets_refill_at_rate() -> None:
    buckets = TokenBuckets(rate=2.0, burst=2)
    assert buckets.take(b"k", 0.0) == 0.0
    assert buckets.take(b"k", 0.0) == 0.0
    assert buckets.take(b"k", 0.0) == pytest.approx(0.5)
    assert buckets.take(b"k", 0.5) == 0.0
    assert buckets.take(b"other", 0.5) == 0.0


async def test_limits_channels_total_refuses_a_new_channel() -> None:
    app = create_app(max_channels_total=2)
    async with client_for(app) as client:
        assert (await client.post("/pub/a", content="1")).status_code == 201
        assert (await client.post("/pub/b", content="1")).status_code == 201
        refused = await client.post("/pub/c", content="1")
        assert refused.status_code == 429
        assert refused.json()["error"].startswith("channels:")
        assert (await client.post("/pub/a", content="2")).status_code == 200
        poll = await client.get("/sub/d?timeout=1")
        assert poll.status_code == 429
        assert await rejected(client, "429", "channels") == 2


async def test_limits_subscribers_per_channel(make_server: Callable[..., ServerThread]) -> None:
    server = make_server(max_subscribers=2)
    async with httpx.AsyncClient(base_url=server.url, timeout=10) as client:
        async with sse(client, "/sub/room"), sse(client, "/sub/room"):
            third = await client.get("/sub/room", headers={"accept": "text/event-stream"})
            assert third.status_code == 429
            assert third.json()["error"].startswith("subscribers:")
            assert "retry-after" in third.headers
            async with sse(client, "/sub/other"):
                pass
        await wait_for(lambda: not server.martd.hub.by_channel)
        async with sse(client, "/sub/room"):
            pass
        assert await rejected(client, "429", "subscribers") == 1


async def test_limits_connections_per_address(make_server: Callable[..., ServerThread]) -> None:
    server = make_server(
        max_connections_per_address=2, trusted_proxies="127.0.0.1", allow="10.9.9.9"
    )
    far = {"x-forwarded-for": "203.0.113.5"}
    other = {"x-forwarded-for": "203.0.113.6"}
    async with httpx.AsyncClient(base_url=server.url, timeout=10) as client:
        async with sse(client, "/sub/a", far):
            async with sse(client, "/sub/b", far):
                third = await client.get("/sub/c?timeout=1", headers=far)
                assert third.status_code == 429
                assert third.json()["error"].startswith("connections:")
                async with sse(client, "/sub/c", other):
                    pass
            await wait_for(lambda: sum(server.martd.limits.by_address.values()) == 1)
            async with sse(client, "/sub/b", far):
                pass
        text = (await client.get("/metrics", headers={"x-forwarded-for": "10.9.9.9"})).text
        assert (
            metric(text, "martd_rejected_requests_total", status="429", reason="connections") == 1
        )


async def test_limits_payload_too_large_is_counted() -> None:
    app = create_app(max_payload=10)
    async with client_for(app) as client:
        answer = await client.post("/pub/a", content="x" * 11)
        assert answer.status_code == 413
        assert answer.json()["error"].startswith("payload:")
        assert await rejected(client, "413", "payload") == 1


async def test_limits_push_rate_per_key_holder() -> None:
    app = create_app(push_rate=1, push_burst=2)
    async with client_for(app) as server, client_for(app, OUTSIDER) as outsider:
        assert (await server.post("/pub/room?key=k1", content="x")).status_code == 201
        assert (await server.post("/pub/hall?key=k2", content="x")).status_code == 201
        for _ in range(2):
            assert (await outsider.post("/pub/room?key=k1", content="y")).status_code == 200
        refused = await outsider.post("/pub/room?key=k1", content="z")
        assert refused.status_code == 429
        assert refused.headers["retry-after"] == "1"
        assert refused.json()["error"].startswith("rate:")
        assert "k1" not in refused.text
        assert (await outsider.post("/pub/hall?key=k2", content="y")).status_code == 200
        for _ in range(5):  # servers are not rate-limited
            assert (await server.post("/pub/room?key=k1", content="s")).status_code == 200
        assert await rejected(server, "429", "rate") == 1
        assert "k1" not in (await server.get("/metrics")).text


async def test_limits_retained_memory_evicts_oldest_of_largest_channel() -> None:
    app = create_app(max_retained_bytes=20_000)
    async with client_for(app) as client:
        small = [(await client.post("/pub/small?size=100", content="s")).json()["etag"]]
        big = []
        for i in range(40):
            answer = await client.post("/pub/big?size=100", content=f"{i:04d}" + "b" * 996)
            big.append(answer.json()["etag"])
        stats = (await client.get("/stats")).json()
        assert stats["retained_bytes"] <= 20_000
        assert stats["evicted"] > 0
        # the small channel kept everything; the big one lost its oldest first
        kept = (await client.get("/sub/small?etag=0&timeout=1")).json()["channels"]["small"]
        assert [m["etag"] for m in kept["messages"]] == small and not kept["missed"]
        got = (await client.get(f"/sub/big?etag={big[0]}&timeout=1")).json()["channels"]["big"]
        assert got["missed"] is True
        etags = [m["etag"] for m in got["messages"]]
        assert etags == big[-len(etags) :] and etags[-1] == big[-1]
        text = (await client.get("/metrics")).text
        assert metric(text, "martd_evicted_messages_total") == stats["evicted"]
        assert 0 < metric(text, "martd_retained_bytes") <= 20_000


async def test_limits_eviction_keeps_memory_bounded_across_many_channels() -> None:
    app = create_app(max_retained_bytes=50_000)
    async with client_for(app) as client:
        for i in range(300):
            last = await client.post(f"/pub/c{i % 37}?size=50", content="x" * (100 + i))
            stats = (await client.get("/stats")).json()
            assert 0 < stats["retained_bytes"] <= 50_000
        newest = (await client.get(f"/sub/c{299 % 37}?etag=0&timeout=1")).json()
        assert newest["channels"][f"c{299 % 37}"]["etag"] == last.json()["etag"]


async def test_limits_retained_bytes_stay_exact_under_any_sequence() -> None:
    from hypothesis import HealthCheck, given, settings
    from hypothesis import strategies as st

    from martd_asgi.backends.memory import MemoryBackend, message_cost
    from martd_asgi.channels import PushAttributes

    operations = st.lists(
        st.tuples(
            st.sampled_from(["push", "push", "push", "delete", "expire", "attach", "detach"]),
            st.sampled_from(["a", "b", "c"]),
            st.integers(0, 3000),
        ),
        max_size=60,
    )
    runs: list[list[tuple[str, str, int]]] = []

    @settings(
        max_examples=60, deadline=None, database=None, suppress_health_check=list(HealthCheck)
    )
    @given(operations)
    def collect(ops: list[tuple[str, str, int]]) -> None:
        runs.append(ops)

    collect()
    for ops in runs:
        backend = MemoryBackend()
        backend.max_retained_bytes = 6000
        now = 0.0
        for op, channel, n in ops:
            if op == "push":
                attrs = PushAttributes(size=1 + n % 5, life=1 + n % 3)
                await backend.publish(channel, "x" * (n % 1500), attrs, server=True)
            elif op == "delete":
                await backend.delete(channel)
            elif op == "expire":
                now += 1
                backend.expire(time.time() + now)
            elif op == "attach":
                await backend.attach(channel, "c")
            elif op == "detach" and backend._subscribers.get(channel):
                await backend.detach(channel, "c")
            held = backend._channels.values()
            for c in held:
                assert c.bytes == sum(message_cost(m) for m in c.messages)
            assert backend.retained_bytes == sum(c.bytes for c in held)
            assert backend.retained_bytes <= 6000


async def test_limits_websocket_pushes_and_upgrades(
    make_server: Callable[..., ServerThread],
) -> None:
    import json

    from websockets.asyncio.client import connect
    from websockets.exceptions import InvalidStatus

    server = make_server(
        allow="", secret="server-secret", push_rate=1, push_burst=1, max_subscribers=1
    )
    bearer = {"authorization": "Bearer server-secret"}
    ws_url = server.url.replace("http://", "ws://") + "/sub/keyed"
    async with httpx.AsyncClient(base_url=server.url, headers=bearer) as client:
        created = await client.post("/pub/keyed?key=s3cret", content=b"created")
        assert created.status_code == 201
        async with connect(ws_url) as ws:
            for ident in (1, 2):
                pub = {"type": "pub", "channel": "keyed", "key": "s3cret", "data": "x", "id": ident}
                await ws.send(json.dumps(pub))
            frames = []
            async with asyncio.timeout(5):
                while len([f for f in frames if f.get("id") in (1, 2)]) < 2:
                    frames.append(json.loads(await ws.recv()))
            answers = {f["id"]: f for f in frames if f.get("id") in (1, 2)}
            assert answers[1]["type"] == "ack"
            assert answers[2]["type"] == "error" and answers[2]["status"] == 429
            with pytest.raises(InvalidStatus) as refused:
                async with connect(ws_url):
                    pass
            assert refused.value.response.status_code == 429
        text = (await client.get("/metrics")).text
        assert metric(text, "martd_rejected_requests_total", status="429", reason="rate") == 1
        assert (
            metric(text, "martd_rejected_requests_total", status="429", reason="subscribers") == 1
        )
