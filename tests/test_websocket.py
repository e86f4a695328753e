"""The WebSocket transport against a real uvicorn, with the websockets client library."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from typing import Any

import httpx
import pytest
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from martd_asgi import create_app

from .helpers import ServerThread, frame, running, ws_url

pytestmark = pytest.mark.anyio


async def closed_with(ws: ClientConnection, timeout: float = 5.0) -> int | None:
    async with asyncio.timeout(timeout):
        try:
            while True:
                await ws.recv()
        except ConnectionClosed as closed:
            return closed.rcvd.code if closed.rcvd else None


async def push(server: ServerThread, channel: str, data: str, **query: str) -> dict[str, Any]:
    async with httpx.AsyncClient(base_url=server.url, timeout=5) as client:
        answer = await client.post(f"/pub/{channel}", content=data.encode(), params=query)
        assert answer.status_code in (200, 201), answer.text
        return dict(answer.json())


async def test_websocket_delivers_messages_as_frames(
    make_server: Callable[..., ServerThread],
) -> None:
    server = make_server()
    async with connect(ws_url(server, "/sub/room")) as ws:
        sent = await push(server, "room", "line one\nligne deux — ünïcødé ✓")
        assert await frame(ws) == {
            "channel": "room",
            "etag": sent["etag"],
            "data": "line one\nligne deux — ünïcødé ✓",
        }


async def test_websocket_several_channels_name_each_frame(
    make_server: Callable[..., ServerThread],
) -> None:
    server = make_server()
    async with connect(ws_url(server, "/sub/a,b")) as ws:
        first = await push(server, "b", "to b")
        second = await push(server, "a", "to a")
        assert await frame(ws) == {"channel": "b", "etag": first["etag"], "data": "to b"}
        assert await frame(ws) == {"channel": "a", "etag": second["etag"], "data": "to a"}


async def test_websocket_resumes_after_the_given_etag(
    make_server: Callable[..., ServerThread],
) -> None:
    server = make_server()
    etags = [(await push(server, "log", f"m{i}"))["etag"] for i in range(4)]
    async with connect(ws_url(server, f"/sub/log?etag={etags[1]}")) as ws:
        assert [(await frame(ws))["data"] for _ in range(2)] == ["m2", "m3"]
        later = await push(server, "log", "m4")
        assert await frame(ws) == {"channel": "log", "etag": later["etag"], "data": "m4"}


async def test_websocket_tells_missed_before_history(
    make_server: Callable[..., ServerThread],
) -> None:
    server = make_server()
    etags = [(await push(server, "short", f"m{i}", size="2"))["etag"] for i in range(4)]
    async with connect(ws_url(server, f"/sub/short?etag={etags[0]}")) as ws:
        assert await frame(ws) == {"type": "missed", "channel": "short"}
        assert [(await frame(ws))["data"] for _ in range(2)] == ["m2", "m3"]


async def test_websocket_missed_on_a_channel_that_does_not_exist_yet(
    make_server: Callable[..., ServerThread],
) -> None:
    server = make_server()
    async with connect(ws_url(server, "/sub/later?etag=123-0")) as ws:
        await push(server, "later", "first")
        assert await frame(ws) == {"type": "missed", "channel": "later"}
        assert (await frame(ws))["data"] == "first"


async def test_websocket_deleted_sends_control_then_closes_4410(
    make_server: Callable[..., ServerThread],
) -> None:
    server = make_server()
    await push(server, "gone", "x")
    async with connect(ws_url(server, "/sub/gone")) as ws:
        async with httpx.AsyncClient(base_url=server.url) as client:
            assert (await client.delete("/pub/gone")).status_code == 200
        assert await frame(ws) == {"type": "deleted", "channel": "gone"}
        assert await closed_with(ws) == 4410


async def test_websocket_kicked_when_one2one_switched_on(
    make_server: Callable[..., ServerThread],
) -> None:
    server = make_server()
    await push(server, "solo", "x")
    async with (
        connect(ws_url(server, "/sub/solo?cid=first")) as ws1,
        connect(ws_url(server, "/sub/solo?cid=second")) as ws2,
    ):
        sent = await push(server, "solo", "now one2one", one2one="true")
        assert await frame(ws2) == {"type": "kicked", "channel": "solo"}
        assert await closed_with(ws2) == 4409
        assert await frame(ws1) == {"channel": "solo", "etag": sent["etag"], "data": "now one2one"}


async def test_websocket_refused_before_upgrade_with_json_status(
    make_server: Callable[..., ServerThread],
) -> None:
    server = make_server()
    with pytest.raises(InvalidStatus) as refused:
        async with connect(ws_url(server, "/sub/martd")):
            pass
    response = refused.value.response
    assert response.status_code == 400
    assert "reserved" in json.loads(response.body)["error"]


async def test_websocket_one2one_held_is_refused_409(
    make_server: Callable[..., ServerThread],
) -> None:
    server = make_server()
    await push(server, "held", "x", one2one="true")
    async with connect(ws_url(server, "/sub/held?cid=owner")):
        with pytest.raises(InvalidStatus) as refused:
            async with connect(ws_url(server, "/sub/held?cid=other")):
                pass
        assert refused.value.response.status_code == 409


async def test_websocket_pub_with_key_is_acked_and_delivered(
    make_server: Callable[..., ServerThread],
) -> None:
    # MARTD_ALLOW empty: this client is not a server, so only the key lets it push.
    server = make_server(allow="", secret="server-secret")
    async with httpx.AsyncClient(base_url=server.url) as client:
        created = await client.post(
            "/pub/keyed?key=s3cret",
            content=b"created",
            headers={"authorization": "Bearer server-secret"},
        )
        assert created.status_code == 201
    async with connect(ws_url(server, "/sub/keyed")) as ws:
        await ws.send(
            json.dumps(
                {"type": "pub", "channel": "keyed", "key": "s3cret", "data": "hi ✓", "id": 7}
            )
        )
        delivered = await frame(ws)
        ack = await frame(ws)
        assert delivered["data"] == "hi ✓"
        assert ack["type"] == "ack" and ack["id"] == 7 and ack["etag"] == delivered["etag"]
        await ws.send(
            json.dumps({"type": "pub", "channel": "keyed", "key": "wrong", "data": "no", "id": 8})
        )
        error = await frame(ws)
        assert error["type"] == "error" and error["id"] == 8 and error["status"] == 403
        await ws.send(json.dumps({"type": "pub", "channel": "keyed", "data": "no", "id": 9}))
        assert (await frame(ws))["status"] == 403
        # An empty push is acked as stored but delivered to nobody (no message frame first).
        assert "delivered" not in ack
        await ws.send(
            json.dumps({"type": "pub", "channel": "keyed", "key": "s3cret", "data": "", "id": 10})
        )
        empty = await frame(ws)
        assert empty["type"] == "ack" and empty["id"] == 10 and empty["delivered"] is False


async def test_websocket_pub_frames_are_checked(make_server: Callable[..., ServerThread]) -> None:
    server = make_server()
    async with connect(ws_url(server, "/sub/c")) as ws:
        await ws.send(json.dumps({"type": "pub", "channel": "bad name", "data": "x", "id": 1}))
        assert (await frame(ws))["status"] == 400
        await ws.send(json.dumps({"type": "pub", "channel": "c", "data": {"no": 1}, "id": 2}))
        assert (await frame(ws))["status"] == 400
        await ws.send(json.dumps({"type": "pub", "channel": "c", "data": "x" * 70000, "id": 3}))
        assert (await frame(ws))["status"] == 413
        await ws.send(json.dumps({"type": "ping"}))
        assert await frame(ws) == {"type": "pong"}
        await ws.send("not json")
        assert await closed_with(ws) == 1008


async def test_websocket_keepalive_ping_frames(make_server: Callable[..., ServerThread]) -> None:
    server = make_server(ping=0.2)
    async with connect(ws_url(server, "/sub/quiet")) as ws:
        async with asyncio.timeout(3):
            assert json.loads(await ws.recv()) == {"type": "ping"}


async def test_websocket_closes_1012_on_shutdown() -> None:
    app = create_app()
    with running(app) as server:
        ws = await connect(ws_url(server, "/sub/bye"))
        app_loop_stop = asyncio.get_running_loop().run_in_executor(None, server.stop)
        code = await closed_with(ws)
        await app_loop_stop
    assert code == 1012


async def test_websocket_closes_1012_when_martd_begins_shutdown() -> None:
    # What SIGTERM does: martd ends every subscription itself, before uvicorn does.
    app = create_app()
    loops: list[asyncio.AbstractEventLoop] = []

    async def site(scope: Any, receive: Any, send: Any) -> None:
        loops.append(asyncio.get_running_loop())
        await app(scope, receive, send)

    with running(site) as server:
        async with connect(ws_url(server, "/sub/bye")) as ws:
            loops[0].call_soon_threadsafe(app.begin_shutdown)
            async with asyncio.timeout(5):
                with pytest.raises(ConnectionClosed) as closed:
                    while True:
                        await ws.recv()
    assert closed.value.rcvd is not None
    assert (closed.value.rcvd.code, closed.value.rcvd.reason) == (1012, "shutdown")


async def test_websocket_counts_as_a_connection_in_stats(
    make_server: Callable[..., ServerThread],
) -> None:
    server = make_server()
    async with connect(ws_url(server, "/sub/x,y")), httpx.AsyncClient(base_url=server.url) as c:
        stats = (await c.get("/stats")).json()
    assert stats["connections"] == {"websocket": 1}
