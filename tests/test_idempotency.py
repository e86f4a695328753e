"""v1.1 idempotent pushes: a repeated Idempotency-Key is answered, never stored twice."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx
import pytest
import redis
from websockets.asyncio.client import connect

from martd_asgi import AsyncClient, Client, Unprocessable, create_app
from martd_asgi.idempotency import IdempotencyTable

from .helpers import ServerThread, frame, redis_url, sse, ws_url

pytestmark = pytest.mark.anyio


@pytest.fixture
def start(backend_url: str) -> Iterator[Any]:
    """Start martd servers on this backend (wrapped in ``wrap`` if given)."""
    started: list[ServerThread] = []

    def make(wrap: Any = None, **settings: Any) -> ServerThread:
        app = create_app(backend=backend_url, **settings)
        server = ServerThread(app if wrap is None else wrap(app)).start()
        server.martd = app  # type: ignore[attr-defined]
        started.append(server)
        return server

    yield make
    for server in started:
        server.stop()


@pytest.fixture
async def client(start: Any) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=start().url, timeout=10) as c:
        yield c


async def post(
    client: httpx.AsyncClient, channel: str, data: str, key: str | None, **query: str
) -> httpx.Response:
    headers = {} if key is None else {"idempotency-key": key}
    return await client.post(f"/pub/{channel}", content=data, params=query, headers=headers)


async def retained(client: httpx.AsyncClient, channel: str) -> list[str]:
    answer = await client.get(f"/sub/{channel}", params={"etag": "0", "timeout": "1"})
    return [m["data"] for m in answer.json()["channels"][channel]["messages"]]


async def test_a_repeated_push_is_answered_as_the_first_and_stores_nothing(
    client: httpx.AsyncClient,
) -> None:
    async with sse(client, "/sub/i.once") as stream:
        first = await post(client, "i.once", "hello", "order-1", event="e")
        again = await post(client, "i.once", "hello", "order-1", event="e")
        assert first.status_code == again.status_code == 201
        assert again.content == first.content  # status, body, the same etag
        assert again.json()["messages"] == 1
        after = await post(client, "i.once", "next", None)
        assert (await stream.next())["data"] == "hello"
        assert (await stream.next())["id"] == after.json()["etag"]  # no second "hello"
    assert await retained(client, "i.once") == ["hello", "next"]
    assert (await client.get("/pub/i.once")).json()["messages"] == 2


@pytest.mark.parametrize(
    ("data", "query", "headers"),
    [
        ("other payload", {}, {}),
        ("same", {"event": "other"}, {}),
        ("same", {}, {"content-type": "text/html"}),
        ("same", {"size": "5"}, {}),
        ("same", {"life": "60"}, {}),
    ],
)
async def test_the_same_key_for_a_different_push_is_refused_422(
    client: httpx.AsyncClient, data: str, query: dict[str, str], headers: dict[str, str]
) -> None:
    first = await post(client, "i.diff", "same", "k")
    assert first.status_code == 201
    answer = await client.post(
        "/pub/i.diff", content=data, params=query, headers={"idempotency-key": "k", **headers}
    )
    assert answer.status_code == 422
    assert answer.json()["error"].startswith("Idempotency-Key")
    assert await retained(client, "i.diff") == ["same"]


@pytest.mark.parametrize("key", ["", "a b", "k" * 129, "é", "tab\there"])
async def test_a_malformed_key_is_refused_400_and_nothing_stored(
    client: httpx.AsyncClient, key: str
) -> None:
    answer = await client.post(
        "/pub/i.bad", content="x", headers=[(b"idempotency-key", key.encode())]
    )
    assert answer.status_code == 400
    assert answer.json()["error"].startswith("Idempotency-Key")
    assert (await client.get("/pub/i.bad")).status_code == 404


async def test_keys_belong_to_their_channel_and_go_with_a_delete(
    client: httpx.AsyncClient,
) -> None:
    assert (await post(client, "i.one", "x", "k")).status_code == 201
    assert (await post(client, "i.two", "x", "k")).status_code == 201
    assert (await client.delete("/pub/i.one")).status_code == 200
    again = await post(client, "i.one", "x", "k")
    assert again.status_code == 201 and await retained(client, "i.one") == ["x"]
    assert (await post(client, "i.two", "x", "k")).json()["messages"] == 1


async def test_a_key_is_forgotten_after_the_ttl(start: Any) -> None:
    server = start(idempotency_ttl=1)
    async with httpx.AsyncClient(base_url=server.url) as client:
        first = await post(client, "i.ttl", "x", "k")
        assert (await post(client, "i.ttl", "x", "k")).content == first.content
        deadline = asyncio.get_running_loop().time() + 5
        while (await post(client, "i.ttl", "x", "k")).json()["messages"] == 1:
            assert asyncio.get_running_loop().time() < deadline, "the key was never forgotten"
            await asyncio.sleep(0.05)
        assert await retained(client, "i.ttl") == ["x", "x"]


async def test_200_concurrent_pushes_with_20_keys_store_20_messages(
    client: httpx.AsyncClient,
) -> None:
    answers = await asyncio.gather(
        *(post(client, "i.many", f"m{n % 20}", f"key-{n % 20}", size="100") for n in range(200))
    )
    assert all(a.status_code in (200, 201) for a in answers), [a.text for a in answers]
    etags: dict[str, set[str]] = {}
    for n, answer in enumerate(answers):
        etags.setdefault(f"key-{n % 20}", set()).add(answer.json()["etag"])
    assert all(len(found) == 1 for found in etags.values())  # one answer per key
    assert sorted(await retained(client, "i.many")) == sorted(f"m{n}" for n in range(20))
    assert sum(a.status_code == 201 for a in answers) >= 1


async def test_memory_and_redis_remember_a_bounded_number_of_keys(
    start: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    import martd_asgi.backends.redis as redis_backend

    monkeypatch.setattr(redis_backend, "IDEMPOTENCY_CAP", 5)
    server = start()
    backend = server.martd.backend  # type: ignore[attr-defined]
    if isinstance(getattr(backend, "idempotency", None), IdempotencyTable):
        backend.idempotency.cap = 5
    async with httpx.AsyncClient(base_url=server.url) as client:
        for n in range(30):
            assert (await post(client, "i.cap", f"m{n}", f"k{n}", size="100")).status_code < 300
        if backend.name == "memory":
            assert len(backend.idempotency) == 5
        else:
            with redis.Redis.from_url(backend_url_of(server)) as r:
                answers, expiries = backend._idempotency_keys("i.cap")
                assert r.hlen(answers) == r.zcard(expiries) == 5
                assert 0 < r.pttl(answers) <= 600_000 and 0 < r.pttl(expiries) <= 600_000
        newest = await post(client, "i.cap", "m29", "k29", size="100")
        assert newest.json()["messages"] == 30  # still remembered: nothing stored
        oldest = await post(client, "i.cap", "m0", "k0", size="100")
        assert oldest.json()["messages"] == 31  # forgotten first: stored again


def backend_url_of(server: ServerThread) -> str:
    url: str = server.martd.settings.backend  # type: ignore[attr-defined]
    return url.partition("?")[0]


def test_idempotency_table_forgets_expired_keys() -> None:
    from martd_asgi.backends.base import PublishResult
    from martd_asgi.idempotency import Idempotency

    table = IdempotencyTable(cap=100)
    result = PublishResult("c", "1-0", 0, 1, True)
    for n in range(50):
        table.remember("c", Idempotency(f"k{n}", "fp", 100), result, now=float(n))
    assert len(table) == 50
    table.sweep(now=135.0)  # k0..k35 expired (their time + 100 <= 135)
    assert len(table) == 14
    table.sweep(now=200.0)
    assert len(table) == 0


async def test_websocket_pub_frames_take_an_idempotency_key(start: Any) -> None:
    server = start()
    async with connect(ws_url(server, "/sub/i.ws")) as ws:
        body = {"type": "pub", "channel": "i.ws", "data": "x", "idempotency_key": "w1"}
        await ws.send(json.dumps({**body, "id": 1}))
        delivered, first = await frame(ws), await frame(ws)
        await ws.send(json.dumps({**body, "id": 2}))
        again = await frame(ws)  # the ack: no second delivery came before it
        assert delivered["data"] == "x" and first["type"] == again["type"] == "ack"
        assert first["etag"] == again["etag"] == delivered["etag"] and again["id"] == 2
        await ws.send(json.dumps({**body, "data": "y", "id": 3}))
        assert (await frame(ws))["status"] == 422


class LoseFirstAnswer:
    """Lets martd store the first push, then holds its answer until the client gave
    up waiting: the server answered, the client did not hear."""

    def __init__(self, app: Any) -> None:
        self.app = app
        self.lost = 0

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http" or scope["method"] != "POST" or self.lost:
            await self.app(scope, receive, send)
            return
        self.lost += 1

        async def late(message: Any) -> None:
            if message["type"] == "http.response.start":
                async with asyncio.timeout(10):
                    while (await receive())["type"] != "http.disconnect":
                        pass
            await send(message)

        await self.app(scope, receive, late)


def test_a_push_retried_after_a_timeout_is_stored_once(start: Any) -> None:
    server = start(wrap=LoseFirstAnswer)
    with Client(server.url, timeout=1.0) as martd:
        result = martd.publish("i.retry", {"order": 7})
        info = martd.info("i.retry")
    assert server.app.lost == 1  # type: ignore[attr-defined]
    assert info.messages == 1 and info.etag == result.etag and result.created


async def test_async_client_retry_after_a_timeout_is_stored_once(start: Any) -> None:
    server = start(wrap=LoseFirstAnswer)
    async with AsyncClient(server.url, timeout=1.0) as martd:
        result = await martd.publish("i.retry", "text")
        info = await martd.info("i.retry")
        assert info.messages == 1 and info.etag == result.etag
        await martd.publish("i.retry", "other", idempotency_key="fixed")
        with pytest.raises(Unprocessable) as refused:
            await martd.publish("i.retry", "changed", idempotency_key="fixed")
        assert refused.value.status == 422


def test_without_retries_the_client_sends_no_key(start: Any) -> None:
    server = start(wrap=LoseFirstAnswer)
    with Client(server.url, timeout=1.0, retries=0) as martd:
        with pytest.raises(Exception, match="no answer in time"):
            martd.publish("i.noretry", "x")
        martd.publish("i.noretry", "x")  # the caller's own retry: a second message
        assert martd.info("i.noretry").messages == 2


@pytest.mark.redis
async def test_redis_identical_pushes_to_two_processes_store_one() -> None:
    from .test_redis import Martd

    with redis_url() as url:
        procs = [Martd({"MARTD_BACKEND": url}).start() for _ in range(2)]
        try:
            await asyncio.gather(*(p.ready() for p in procs))
            async with httpx.AsyncClient(timeout=10) as http:

                async def push(base: str, n: int) -> httpx.Response:
                    return await http.post(
                        f"{base}/pub/i.two",
                        content=f"order {n}",
                        params={"size": "100"},
                        headers={"idempotency-key": f"order-{n}"},
                    )

                # each push sent to both processes at once, as a retry through
                # a load balancer may arrive while the first try is in flight
                answers = await asyncio.gather(*(push(p.url, n) for n in range(40) for p in procs))
                pairs = [answers[i : i + 2] for i in range(0, len(answers), 2)]
                assert all(a.status_code in (200, 201) for a in answers)
                assert all(a.content == b.content for a, b in pairs)
                info = (await http.get(f"{procs[0].url}/pub/i.two")).json()
                assert info["messages"] == 40
                got = await http.get(f"{procs[1].url}/sub/i.two", params={"etag": "0"})
                data = [m["data"] for m in got.json()["channels"]["i.two"]["messages"]]
                assert sorted(data) == sorted(f"order {n}" for n in range(40))
        finally:
            for proc in procs:
                proc.stop()
                proc.sock.close()


async def test_idempotency_ttl_0_checks_keys_but_remembers_none(start: Any) -> None:
    from martd_asgi.config import Settings

    assert Settings.from_env({"MARTD_IDEMPOTENCY_TTL": "5"}).idempotency_ttl == 5.0
    with pytest.raises(ValueError, match="idempotency_ttl"):
        Settings.from_env({"MARTD_IDEMPOTENCY_TTL": "-1"})
    server = start(idempotency_ttl=0)
    async with httpx.AsyncClient(base_url=server.url) as client:
        assert (await post(client, "i.off", "x", "k")).status_code == 201
        assert (await post(client, "i.off", "x", "k")).json()["messages"] == 2
        assert (await post(client, "i.off", "x", "a b")).status_code == 400
