"""Graceful shutdown: SIGTERM ends every stream cleanly, within the grace period."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import time

import httpx
import pytest

from .opshelpers import uvicorn_process

pytestmark = pytest.mark.anyio

STREAMS = int(os.environ.get("SHUTDOWN_STREAMS", "500"))
POLLS = 20
GRACE = 5.0  # PROTOCOL.md: within 5 seconds


class Stream(asyncio.Protocol):
    """A raw SSE client that keeps everything it receives."""

    def __init__(self, request: bytes) -> None:
        self.request = request
        self.data = bytearray()
        self.ended = asyncio.get_running_loop().create_future()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport
        transport.write(self.request)  # type: ignore[attr-defined]

    def data_received(self, data: bytes) -> None:
        self.data += data

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.ended.done():
            self.ended.set_result(time.monotonic())


async def test_shutdown_sigterm_ends_500_streams_and_polls_within_grace() -> None:
    with uvicorn_process({}, "--timeout-graceful-shutdown", "10") as server:
        loop = asyncio.get_running_loop()
        request = (
            f"GET /sub/news HTTP/1.1\r\nHost: 127.0.0.1:{server.port}\r\n"
            "Accept: text/event-stream\r\n\r\n"
        ).encode()
        poll = f"GET /sub/news?timeout=30 HTTP/1.1\r\nHost: 127.0.0.1:{server.port}\r\n\r\n"
        streams: list[Stream] = []
        polls: list[Stream] = []
        try:
            for _ in range(STREAMS):
                _, stream = await loop.create_connection(
                    lambda: Stream(request), "127.0.0.1", server.port
                )
                streams.append(stream)
            for _ in range(POLLS):
                _, stream = await loop.create_connection(
                    lambda: Stream(poll.encode()), "127.0.0.1", server.port
                )
                polls.append(stream)
            async with httpx.AsyncClient(base_url=server.url) as client:
                deadline = time.monotonic() + 20
                while (await client.get("/stats")).json()["subscribers"] < STREAMS + POLLS:
                    assert time.monotonic() < deadline
                    await asyncio.sleep(0.05)
            assert server.proc is not None
            sent = time.monotonic()
            server.proc.send_signal(signal.SIGTERM)
            code = await asyncio.to_thread(server.proc.wait, GRACE + 5)
            exited = time.monotonic() - sent
            await asyncio.wait_for(asyncio.gather(*(s.ended for s in streams + polls)), 5)
            last_end = max(s.ended.result() for s in streams) - sent
            print(f"{STREAMS} streams: all ended {last_end:.2f}s, exit {exited:.2f}s after SIGTERM")
        finally:
            for stream in streams + polls:
                stream.transport.close()
        assert code in (0, -signal.SIGTERM)  # uvicorn re-raises the signal it handled
        assert exited < GRACE
        for stream in streams:
            assert stream.data.startswith(b"HTTP/1.1 200")
            assert b"retry: 1000\n\n" in stream.data
            assert stream.data.endswith(b"\r\n0\r\n\r\n")  # the chunked end: a clean close
        for stream in polls:
            assert stream.data.startswith(b"HTTP/1.1 200")
            empty = b'{"channels":{"news":{"etag":"0","messages":[],"missed":false}}}'
            assert stream.data.endswith(b"\r\n\r\n" + empty)
    assert "Traceback" not in server.output()
    assert "ERROR" not in server.output()


async def test_shutdown_does_not_wait_for_clients_that_stopped_reading() -> None:
    env = {"MARTD_SUB_SNDBUF": "16384", "MARTD_SUB_STALL": "60"}
    with uvicorn_process(env, "--timeout-graceful-shutdown", "10") as server:
        loop = asyncio.get_running_loop()
        request = (
            f"GET /sub/news HTTP/1.1\r\nHost: 127.0.0.1:{server.port}\r\n"
            "Accept: text/event-stream\r\n\r\n"
        ).encode()
        streams: list[Stream] = []
        stalled = []
        try:
            for _ in range(20):
                _, stream = await loop.create_connection(
                    lambda: Stream(request), "127.0.0.1", server.port
                )
                streams.append(stream)
            for _ in range(3):
                sock = socket.socket()
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
                sock.connect(("127.0.0.1", server.port))
                sock.sendall(request)
                stalled.append(sock)
            async with httpx.AsyncClient(base_url=server.url) as client:
                deadline = time.monotonic() + 10
                while (await client.get("/stats")).json()["subscribers"] < 23:
                    assert time.monotonic() < deadline
                    await asyncio.sleep(0.05)
                for _ in range(100):
                    await client.post("/pub/news?size=100", content="x" * 4096)
            assert server.proc is not None
            sent = time.monotonic()
            server.proc.send_signal(signal.SIGTERM)
            await asyncio.to_thread(server.proc.wait, GRACE + 5)
            exited = time.monotonic() - sent
            await asyncio.wait_for(asyncio.gather(*(s.ended for s in streams)), 5)
        finally:
            for stream in streams:
                stream.transport.close()
            for sock in stalled:
                sock.close()
        print(f"exit {exited:.2f}s after SIGTERM with 3 clients that stopped reading")
        assert exited < GRACE
        for stream in streams:
            assert stream.data.endswith(b"retry: 1000\n\n\r\n0\r\n\r\n")
