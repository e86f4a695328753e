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

import httpx
import pytest
from websockets.asyncio.client import ClientConnection, connect
from websockets.frames import Frame, Opcode

from conftest import ServerThread
from martd_asgi.wsframe import BINARY, frame
from opshelpers import metric, uvicorn_process

pytestmark = pytest.mark.anyio

MARTD_SERVE = (
    "--http", "martd_asgi.protocols:HTTPProtocol",
    "--ws", "martd_asgi.protocols:WebSocketProtocol",
    "--ws-per-message-deflate", "false",
)  # fmt: skip


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


async def test_websocket_subscriber_that_stops_reading_is_cut_and_others_keep_pace() -> None:
    readers, stalled_count, count, size = 20, 5, 300, 4096
    env = {
        "MARTD_SUB_SNDBUF": "32768",
        "MARTD_SUB_BUFFER_MESSAGES": "64",
        "MARTD_SUB_BUFFER_BYTES": str(256 * 1024),
        "MARTD_SUB_STALL": "10",
    }
    with uvicorn_process(env, *MARTD_SERVE) as server:
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

