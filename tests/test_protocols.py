"""HTTP under the protocols `martd serve` pins, which keep less per open connection.

martd's HTTP protocol swaps uvicorn's per-connection asyncio Events and deque
for lighter equivalents; requests must behave exactly as before: pipelined
requests answered in order, bodies read (chunked too), a waiting poll answered,
a client that leaves an event stream noticed.
"""

from __future__ import annotations

import asyncio
import json
import socket
import time

import httpx
import pytest

from .opshelpers import MARTD_SERVE, uvicorn_process

pytestmark = pytest.mark.anyio



def read_until(sock: socket.socket, count: bytes, times: int) -> bytes:
    got = b""
    while got.count(count) < times:
        chunk = sock.recv(65536)
        if not chunk:
            break
        got += chunk
    return got


async def test_http_under_martd_serve_protocols() -> None:
    with uvicorn_process({"MARTD_POLL_TIMEOUT": "30"}, *MARTD_SERVE) as server:
        port = server.port

        def pipelined() -> bytes:
            with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
                one = b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n"
                chunked = (
                    b"POST /pub/pipe HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n"
                    b"Accept: application/json\r\n\r\n5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n"
                )
                sock.sendall(one + chunked + one)  # three requests in one write
                return read_until(sock, b"HTTP/1.1 ", 3)

        answers = (await asyncio.to_thread(pipelined)).split(b"HTTP/1.1 ")[1:]
        assert [a[:3] for a in answers] == [b"200", b"201", b"200"]

        def closing(request: bytes) -> bytes:  # the whole answer, then the end
            with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
                sock.sendall(request)
                return read_until(sock, b"\0", 1)

        for request in (
            b"POST /pub/pipe HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
            b"Accept: application/json\r\nContent-Length: 3\r\n\r\nbye",
            b"GET /sub/pipe?etag=0 HTTP/1.0\r\n\r\n",
        ):
            answer = await asyncio.to_thread(closing, request)
            head, _, body = answer.partition(b"\r\n\r\n")
            assert head.split(b" ")[1] in (b"200", b"201"), answer
            assert json.loads(body)
        async with httpx.AsyncClient(base_url=server.url, timeout=10) as client:
            stored = await client.get("/sub/pipe", params={"etag": "0"})
            assert [m["data"] for m in stored.json()["channels"]["pipe"]["messages"]] == [
                "hello world",
                "bye",
            ]
            etag = stored.json()["channels"]["pipe"]["etag"]

            # a poll that waits, answered by a push
            poll = asyncio.ensure_future(client.get("/sub/pipe", params={"etag": etag}))
            await asyncio.sleep(0.3)
            assert not poll.done()
            await client.post("/pub/pipe", content=b"later")
            answer = await poll
            assert [m["data"] for m in answer.json()["channels"]["pipe"]["messages"]] == ["later"]

            # an event stream whose client leaves is noticed
            async def subscribers() -> int:
                return int((await client.get("/stats")).json()["subscribers"])

            sock = socket.create_connection(("127.0.0.1", port), timeout=10)
            sock.sendall(b"GET /sub/gone HTTP/1.1\r\nHost: x\r\nAccept: text/event-stream\r\n\r\n")
            assert (await asyncio.to_thread(read_until, sock, b"retry:", 1)).startswith(
                b"HTTP/1.1 200"
            )
            assert await subscribers() == 1
            sock.close()
            deadline = time.monotonic() + 5
            while await subscribers() and time.monotonic() < deadline:
                await asyncio.sleep(0.05)
            assert await subscribers() == 0
            assert json.loads((await client.get("/healthz")).text)
    assert "Traceback" not in server.output()
