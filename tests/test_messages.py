"""v1.1 per-message event name and type: set by a push, kept in history, on every transport."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx
import pytest
from websockets.asyncio.client import connect

from martd_asgi import AsyncClient, Client, create_app
from martd_asgi.client_subscription import Subscription

from .helpers import ServerThread, frame, running, sse, ws_url

pytestmark = pytest.mark.anyio

JSON = {"content-type": "application/json"}


@pytest.fixture
def server(backend_url: str) -> Iterator[ServerThread]:
    app = create_app(backend=backend_url)
    with running(app) as started:
        started.martd = app  # type: ignore[attr-defined]
        yield started


@pytest.fixture
async def client(server: ServerThread) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=server.url, timeout=10) as c:
        yield c


async def push(
    client: httpx.AsyncClient,
    channel: str,
    data: str,
    headers: dict[str, str] | None = None,
    **query: str,
) -> str:
    answer = await client.post(f"/pub/{channel}", content=data, params=query, headers=headers)
    assert answer.status_code in (200, 201), answer.text
    return str(answer.json()["etag"])


async def test_event_and_type_are_kept_in_history_for_long_poll(
    client: httpx.AsyncClient,
) -> None:
    named = await push(client, "m.lp", '{"n":1}', JSON, event="update")
    plain = await push(client, "m.lp", "plain", {"content-type": "text/plain; charset=utf-8"})
    bare = await push(client, "m.lp", "no type")
    form = await push(client, "m.lp", "a=b", {"content-type": "application/x-www-form-urlencoded"})
    raw = await push(client, "m.lp", "raw", {"content-type": "application/octet-stream"})
    answer = (await client.get("/sub/m.lp", params={"etag": "0", "timeout": "1"})).json()
    assert answer["channels"]["m.lp"]["messages"] == [
        {"etag": named, "data": '{"n":1}', "event": "update", "type": "application/json"},
        {"etag": plain, "data": "plain", "type": "text/plain; charset=utf-8"},
        {"etag": bare, "data": "no type"},
        {"etag": form, "data": "a=b"},
        {"etag": raw, "data": "raw"},
    ]


async def test_event_and_type_reach_a_waiting_long_poll_and_jsonp(
    client: httpx.AsyncClient,
) -> None:
    waiting = asyncio.ensure_future(client.get("/sub/m.wait", params={"timeout": "5"}))
    jsonp = asyncio.ensure_future(
        client.get("/sub/m.wait", params={"timeout": "5", "callback": "cb"})
    )
    deadline = asyncio.get_running_loop().time() + 5
    while (await client.get("/stats")).json()["subscribers"] < 2:
        assert asyncio.get_running_loop().time() < deadline
        await asyncio.sleep(0.02)
    etag = await push(client, "m.wait", "hi", {"content-type": "text/csv"}, event="row")
    message = {"etag": etag, "data": "hi", "event": "row", "type": "text/csv"}
    assert (await waiting).json()["channels"]["m.wait"]["messages"] == [message]
    text = (await jsonp).text
    assert text.startswith("cb(") and text.endswith(");")
    assert json.loads(text[3:-2])["channels"]["m.wait"]["messages"] == [message]
    resumed = await client.get("/sub/m.wait", params={"etag": "0", "callback": "cb"})
    assert json.loads(resumed.text[3:-2])["channels"]["m.wait"]["messages"] == [message]


async def test_one_channel_sse_sends_a_named_message_as_that_event(
    client: httpx.AsyncClient,
) -> None:
    async with sse(client, "/sub/m.sse") as stream:
        named = await push(client, "m.sse", "line 1\nline 2", JSON, event="chat.message")
        plain = await push(client, "m.sse", "plain")
        assert await stream.next() == {
            "event": "chat.message",
            "id": named,
            "data": "line 1\nline 2",
        }
        assert await stream.next() == {"id": plain, "data": "plain"}
    # a resume gets the name from history too
    async with sse(client, "/sub/m.sse?etag=0") as stream:
        assert (await stream.next())["event"] == "chat.message"
        assert "event" not in await stream.next()


async def test_several_channels_sse_keep_naming_events_after_their_channel(
    client: httpx.AsyncClient,
) -> None:
    # The contract names events after their channel on several channels; the
    # message's own name travels on ?format=json only.
    async with sse(client, "/sub/m.a,m.b") as stream:
        etag = await push(client, "m.b", "x", event="update")
        got = await stream.next()
        assert got["event"] == "m.b" and got["data"] == "x" and got["id"].endswith(etag)


async def test_websocket_frames_carry_event_and_type(server: ServerThread) -> None:
    async with httpx.AsyncClient(base_url=server.url) as client:
        old = await push(client, "m.ws", "{}", JSON, event="first")
        async with connect(ws_url(server, "/sub/m.ws?etag=0")) as ws:
            assert await frame(ws) == {
                "channel": "m.ws",
                "etag": old,
                "data": "{}",
                "event": "first",
                "type": "application/json",
            }
            new = await push(client, "m.ws", "bare")
            assert await frame(ws) == {"channel": "m.ws", "etag": new, "data": "bare"}
            await ws.send(
                json.dumps(
                    {
                        "type": "pub",
                        "channel": "m.ws",
                        "data": "<b>",
                        "event": "html",
                        "content_type": "text/html",
                        "id": 1,
                    }
                )
            )
            delivered, ack = await frame(ws), await frame(ws)
            assert delivered["event"] == "html" and delivered["type"] == "text/html"
            assert ack["type"] == "ack" and ack["etag"] == delivered["etag"]
            await ws.send(
                json.dumps({"type": "pub", "channel": "m.ws", "data": "x", "event": "a b", "id": 2})
            )
            refused = await frame(ws)
            assert refused["status"] == 400 and refused["error"].startswith("event")


@pytest.mark.parametrize("name", ["", "a b", "x" * 65, "é", "martd", "semi;colon"])
async def test_bad_event_names_are_refused_400(client: httpx.AsyncClient, name: str) -> None:
    answer = await client.post("/pub/m.bad", content="x", params={"event": name})
    assert answer.status_code == 400
    assert answer.json()["error"].startswith("event")
    assert (await client.get("/pub/m.bad")).status_code == 404  # nothing was stored


async def test_a_type_that_is_not_printable_ascii_is_refused_400(
    client: httpx.AsyncClient,
) -> None:
    answer = await client.post("/pub/m.bad", content="x", headers={"content-type": "t" * 256})
    assert answer.status_code == 400 and answer.json()["error"].startswith("type")


async def test_app_publish_sets_event_and_type(server: ServerThread) -> None:
    app: Any = server.martd  # type: ignore[attr-defined]
    call = app.publish("m.app", "{}", event="ready", content_type="application/json")
    # in the server's loop, where its backend's connections live
    done = asyncio.run_coroutine_threadsafe(call, server.server_loop())
    etag = await asyncio.wrap_future(done)
    async with httpx.AsyncClient(base_url=server.url) as client:
        got = (await client.get("/sub/m.app?etag=0")).json()["channels"]["m.app"]["messages"]
    assert got == [{"etag": etag, "data": "{}", "event": "ready", "type": "application/json"}]


async def test_python_client_sends_event_and_content_type(server: ServerThread) -> None:
    async with AsyncClient(server.url) as martd:
        await martd.publish("m.py", "text only")
        await martd.publish("m.py", {"as": "json"}, event="obj")
        await martd.publish("m.py", "<p>", content_type="text/html", event="page")
    with Client(server.url) as sync:
        sync.publish("m.py", b"bytes")
    async with httpx.AsyncClient(base_url=server.url) as client:
        got = (await client.get("/sub/m.py?etag=0")).json()["channels"]["m.py"]["messages"]
    assert [{k: v for k, v in m.items() if k != "etag"} for m in got] == [
        {"data": "text only"},
        {"data": '{"as":"json"}', "event": "obj", "type": "application/json"},
        {"data": "<p>", "event": "page", "type": "text/html"},
        {"data": "bytes"},
    ]


@pytest.mark.parametrize("transport", ["sse", "longpoll"])
def test_subscription_deliveries_carry_event_and_type(server: ServerThread, transport: Any) -> None:
    with Client(server.url) as martd:
        martd.publish("m.sub", "{}", event="tick", content_type="application/json")
        martd.publish("m.sub", "plain")
    subscription = Subscription(server.url, ["m.sub"], etag="0", transport=transport)
    try:
        it = iter(subscription)
        first, second = next(it), next(it)
    finally:
        subscription.close()
    assert first.event == "tick" and first.data == "{}"
    assert first.as_json()["event"] == "tick"
    if transport == "longpoll":  # plain SSE has no place for the type
        assert first.type == "application/json"
    assert (second.event, second.type, second.data) == (None, None, "plain")
    assert set(second.as_json()) == {"channel", "etag", "data"}


@pytest.mark.redis
async def test_redis_event_and_type_cross_processes_live_and_after_catch_up() -> None:
    from martd_asgi.backends.base import Event
    from martd_asgi.backends.redis import RedisBackend
    from martd_asgi.channels import Message, PushAttributes

    from .helpers import redis_url, wait_for

    with redis_url() as url:
        listener, pusher = RedisBackend(url), RedisBackend(url)
        events: list[Event] = []
        await pusher.start(lambda event: None)
        try:
            await listener.attach("m.gap", "reader")  # subscribed, hears nothing yet
            await pusher.publish(
                "m.gap", "caught", PushAttributes(), server=True, event="e1", content_type="t/1"
            )
            await listener.start(events.append)  # catches up from the stream first
            await wait_for(lambda: len(events) == 1)
            await pusher.publish(
                "m.gap", "live\nline", PushAttributes(), server=True, event="e2", content_type="t/2"
            )
            await pusher.publish("m.gap", "plain", PushAttributes(), server=True)
            await wait_for(lambda: len(events) == 3)
            got = [(m.data, m.event, m.type) for m in events if isinstance(m, Message)]
            assert got == [
                ("caught", "e1", "t/1"),
                ("live\nline", "e2", "t/2"),
                ("plain", None, None),
            ]
            await listener.detach("m.gap", "reader")
        finally:
            await listener.aclose()
            await pusher.aclose()
