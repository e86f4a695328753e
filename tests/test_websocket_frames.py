"""WebSocket frames that martd writes itself (one write per loop turn), on real servers.

Without compression, martd writes a message's frame bytes (made once, shared by
every subscriber) straight to uvicorn's websockets-sansio connection, joining a
subscriber's frames of one loop turn; with compression negotiated, frames go
through the ASGI ``send`` as before. Either way every subscriber gets every
message once, in order, and one that stops reading is cut without slowing the
publisher or the others.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import socket
import time
from collections.abc import Callable
from typing import Any

import httpx
import pytest
from websockets.asyncio.client import ClientConnection, connect
from websockets.frames import Frame, Opcode

from martd_asgi import create_app
from martd_asgi.protocols import HTTP, WEBSOCKET
from martd_asgi.wsframe import BINARY, frame

from .helpers import ServerThread, running
from .opshelpers import MARTD_SERVE, metric, uvicorn_process

pytestmark = pytest.mark.anyio



@pytest.mark.parametrize("size", [0, 1, 125, 126, 65535, 65536, 70000])
def test_websocket_frame_bytes_are_what_websockets_makes(size: int) -> None:
    payload = bytes(i % 251 for i in range(size))
    assert frame(payload) == Frame(Opcode.TEXT, payload).serialize(mask=False)
    assert frame(payload, BINARY) == Frame(Opcode.BINARY, payload).serialize(mask=False)


async def messages(ws: ClientConnection, count: int, timeout: float = 20.0) -> list[str]:
    got: list[str] = []
    async with asyncio.timeout(timeout):
        while len(got) < count:
            body = json.loads(await ws.recv())
            if "data" in body:
                got.append(body["data"])
    return got


async def test_websocket_bursts_reach_every_subscriber_once_in_order(
    make_server: Callable[..., ServerThread],
) -> None:
    server = make_server(max_payload=1 << 20)
    url = server.url.replace("http://", "ws://") + "/sub/burst"
    sizes = [5, 300, 70_000]  # the three lengths of a frame header
    payloads = [f"{i}:" + "x" * sizes[i % 3] for i in range(120)]
    async with (
        connect(url, compression=None) as plain,
        connect(url, compression=None) as plain2,
        connect(url) as deflated,  # compression on: the ASGI send path
        httpx.AsyncClient(base_url=server.url, timeout=10) as client,
    ):

        async def push(data: str) -> int:
            answer = await client.post("/pub/burst?size=200", content=data.encode())
            return answer.status_code

        await asyncio.sleep(0.2)  # subscribed: the history of a new channel is empty
        for first in range(0, len(payloads), 20):
            # pushed concurrently, so several land in one loop turn of the server
            batch = payloads[first : first + 20]
            assert set(await asyncio.gather(*(push(p) for p in batch))) <= {200, 201}
        for ws in (plain, plain2, deflated):
            got = await messages(ws, len(payloads))
            assert sorted(got, key=lambda d: int(d.split(":")[0])) == payloads
            assert len(set(got)) == len(payloads)


def upgrade(port: int, path: str) -> bytes:
    key = base64.b64encode(os.urandom(16))
    return (
        b"GET %s HTTP/1.1\r\nHost: 127.0.0.1:%d\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        b"Sec-WebSocket-Key: %s\r\nSec-WebSocket-Version: 13\r\n\r\n" % (path.encode(), port, key)
    )


@pytest.mark.parametrize(
    "protocol",
    # the light one runs with the uvicorn and websockets releases it was written
    # for; with any other, WebSocketProtocol is the flow-controlled one
    ["martd_asgi.protocols:WebSocketProtocol", "martd_asgi.protocols:FlowControlledProtocol"],
)
async def test_websocket_subscriber_that_stops_reading_is_cut_and_others_keep_pace(
    protocol: str,
) -> None:
    readers, stalled_count, count, size = 20, 5, 300, 4096
    env = {
        "MARTD_SUB_SNDBUF": "32768",
        "MARTD_SUB_BUFFER_MESSAGES": "64",
        "MARTD_SUB_BUFFER_BYTES": str(256 * 1024),
        "MARTD_SUB_STALL": "10",
    }
    options = [protocol if arg == WEBSOCKET else arg for arg in MARTD_SERVE]
    with uvicorn_process(env, *options) as server:
        url = server.url.replace("http://", "ws://") + "/sub/firehose"
        stalled = []
        for _ in range(stalled_count):
            sock = socket.socket()
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            sock.connect(("127.0.0.1", server.port))
            sock.sendall(upgrade(server.port, "/sub/firehose"))
            stalled.append(sock)
        clients = [await connect(url, compression=None, max_size=None) for _ in range(readers)]
        try:
            async with httpx.AsyncClient(base_url=server.url, timeout=10) as client:

                async def subscribed() -> bool:
                    stats = (await client.get("/stats")).json()
                    return bool(stats["subscribers"] == readers + stalled_count)

                deadline = time.monotonic() + 10
                while not await subscribed():
                    assert time.monotonic() < deadline
                    await asyncio.sleep(0.05)
                reading = [asyncio.ensure_future(messages(ws, count, 30)) for ws in clients]
                slowest = 0.0
                for seq in range(count):
                    began = time.monotonic()
                    body = f"{seq}:".encode().ljust(size, b"x")
                    answer = await client.post("/pub/firehose?size=1000", content=body)
                    assert answer.status_code in (200, 201)
                    slowest = max(slowest, time.monotonic() - began)
                want = [f"{seq}:".ljust(size, "x") for seq in range(count)]
                for got in await asyncio.gather(*reading):
                    assert got == want
                assert slowest < 1.0  # the stalled ones never hold a push up

                async def dropped() -> int:
                    return int((await client.get("/stats")).json()["dropped_slow"])

                deadline = time.monotonic() + 15
                while await dropped() < stalled_count and time.monotonic() < deadline:
                    await asyncio.sleep(0.05)
                assert await dropped() == stalled_count
                text = (await client.get("/metrics")).text
                assert metric(text, "martd_connections", transport="websocket") == readers
        finally:
            for ws in clients:
                await ws.close()
            for sock in stalled:
                sock.close()
    assert "Traceback" not in server.output()



def exchange(port: int, request: bytes, frames: bytes = b"", want: bytes = b"\r\n\r\n") -> bytes:
    """Send a handshake, then (once answered) frames; read until ``want``."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(request)
        got = b""
        if frames:
            while b"\r\n\r\n" not in got:
                got += sock.recv(65536)
            sock.sendall(frames)
        while want not in got:
            chunk = sock.recv(65536)
            if not chunk:
                break
            got += chunk
        return got


def masked(text: bytes) -> bytes:
    """A client's text frame (masked, as clients must)."""
    mask = os.urandom(4)
    body = bytes(b ^ mask[i % 4] for i, b in enumerate(text))
    return bytes((0x81, 0x80 | len(text))) + mask + body


async def test_websocket_handshakes_under_martd_serve_protocols() -> None:
    """martd's protocol answers a plain handshake from what httptools parsed; every other
    goes through websockets as before. Both behave the same to a client."""
    with uvicorn_process({}, *MARTD_SERVE) as server:
        port = server.port
        url = server.url.replace("http://", "ws://")
        # a client offering compression (declined) and one offering a subprotocol
        async with (
            connect(url + "/sub/hs") as offered,
            connect(url + "/sub/hs", compression=None, subprotocols=["chat"]) as plain,  # type: ignore[list-item]
            httpx.AsyncClient(base_url=server.url, timeout=10) as client,
        ):
            assert offered.response.headers.get("Sec-WebSocket-Extensions") is None
            assert plain.subprotocol is None
            await asyncio.sleep(0.1)
            assert (await client.post("/pub/hs", content=b"hello")).status_code in (200, 201)
            for ws in (offered, plain):
                assert await messages(ws, 1) == ["hello"]
        # refused before the upgrade: the JSON status, as with any server
        answer = await asyncio.to_thread(exchange, port, upgrade(port, "/sub/martd"), b"", b"}")
        assert answer.startswith(b"HTTP/1.1 400")
        assert b"reserved" in answer
        # a key that is not 16 bytes of base64: websockets refuses it, as before
        bad = upgrade(port, "/sub/hs").replace(b"Sec-WebSocket-Key: ", b"Sec-WebSocket-Key: x")
        answer = await asyncio.to_thread(exchange, port, bad)
        assert answer.startswith(b"HTTP/1.1 400")
        # a frame once the server accepted
        answer = await asyncio.to_thread(
            exchange, port, upgrade(port, "/sub/hs"), masked(b'{"type":"ping"}'), b"pong"
        )
        assert answer.startswith(b"HTTP/1.1 101")
        assert b"Sec-WebSocket-Accept: " in answer
        assert answer.endswith(b'{"type":"pong"}')
    assert "Traceback" not in server.output()


async def test_websocket_frame_sent_before_the_server_accepted_is_answered_after() -> None:
    """A client may send a frame before the 101 reaches it: it waits for the accept."""

    async def slow_hook(scope: Any, receive: Any, send: Any) -> None:
        while (await receive())["type"] != "http.request":
            pass
        await asyncio.sleep(0.5)  # the subscription waits for the site's answer
        body = json.dumps({"user": "u", "subscribe": ["room.*"]}).encode()
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-type", b"application/json")]})  # fmt: skip
        await send({"type": "http.response.body", "body": body})

    with running(slow_hook, lifespan="off") as hook:
        settings = {"backend": "memory", "private": "room.*", "auth_url": hook.url + "/auth"}
        protocols = {"http": HTTP, "ws": WEBSOCKET, "ws_per_message_deflate": False}
        with running(create_app(**settings), **protocols) as server:
            port = server.port
            request = upgrade(port, "/sub/room.1").replace(
                b"\r\n\r\n", b"\r\nCookie: session=1\r\n\r\n"
            )

            def early() -> bytes:
                with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
                    sock.sendall(request)
                    time.sleep(0.1)  # apart from the request, well before the hook answers
                    sock.sendall(masked(b'{"type":"ping"}'))
                    got = b""
                    while b"pong" not in got:
                        chunk = sock.recv(65536)
                        assert chunk, got
                        got += chunk
                    return got

            answer = await asyncio.to_thread(early)
            assert answer.startswith(b"HTTP/1.1 101")
            assert answer.endswith(b'{"type":"pong"}')
