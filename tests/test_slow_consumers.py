"""Slow consumers on real sockets: clients that stop reading are cut, and only they.

200 SSE subscribers of which 20 never read (a small receive buffer, never
drained): the publisher keeps its pace, the 180 others get every message with
the usual latency, the 20 are dropped (counted in /stats and /metrics) and
resume by etag without losing a retained message.
"""

from __future__ import annotations

import asyncio
import re
import socket
import time

import httpx
import pytest

from .helpers import wait_for
from .opshelpers import metric, percentile, uvicorn_process

pytestmark = pytest.mark.anyio

READERS, STALLED, MESSAGES, PAYLOAD = 180, 20, 300, 4096
EVENT = re.compile(rb"id: ([0-9]+-[0-9]+)\ndata: ([0-9]+) ([0-9.]+) x*\n\n")


def request(port: int, path: str, extra: str = "") -> bytes:
    return (
        f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nAccept: text/event-stream\r\n{extra}\r\n"
    ).encode()


class Reader(asyncio.Protocol):
    """An SSE client that reads everything and notes each message's latency."""

    def __init__(self, payload: bytes) -> None:
        self.payload = payload
        self.buf = b""
        self.seqs: list[int] = []
        self.etags: list[str] = []
        self.latencies: list[float] = []
        self.missed = False
        self.started = False
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        transport.write(self.payload)  # type: ignore[attr-defined]

    def data_received(self, data: bytes) -> None:
        now = time.time()
        if not self.started:
            self.started = data.startswith(b"HTTP/1.1 200")
        self.buf += data
        end = self.buf.rfind(b"\n\n")
        if end < 0:
            return
        done, self.buf = self.buf[: end + 2], self.buf[end + 2 :]
        self.missed |= b'"type": "missed"' in done
        for match in EVENT.finditer(done):
            self.etags.append(match[1].decode())
            self.seqs.append(int(match[2]))
            self.latencies.append(now - float(match[3]))

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()


def stalled_socket(port: int, path: str, extra: str = "") -> socket.socket:
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect(("127.0.0.1", port))
    sock.sendall(request(port, path, extra))
    return sock


def read_all(sock: socket.socket) -> bytes:
    """What a stalled client finds when it finally reads: data, then the end."""
    sock.settimeout(5)
    chunks = []
    while True:
        try:
            chunk = sock.recv(1 << 20)
        except ConnectionResetError:
            break
        if not chunk:
            break
        chunks.append(chunk)
    sock.close()
    return b"".join(chunks)


async def test_slow_consumers_are_cut_and_others_keep_their_pace() -> None:
    env = {
        "MARTD_SUB_SNDBUF": "32768",
        "MARTD_SUB_BUFFER_MESSAGES": "64",
        "MARTD_SUB_BUFFER_BYTES": str(256 * 1024),
        "MARTD_SUB_STALL": "10",
    }
    with uvicorn_process(env) as server:
        loop = asyncio.get_running_loop()
        port = server.port
        readers = []
        for _ in range(READERS):
            _, reader = await loop.create_connection(
                lambda: Reader(request(port, "/sub/firehose")), "127.0.0.1", port
            )
            readers.append(reader)
        stalled = [stalled_socket(port, "/sub/firehose") for _ in range(STALLED)]
        try:
            await flood(server.url, readers, stalled, port)
        finally:
            for reader in readers:
                reader.close()
            for sock in stalled:
                sock.close()
    assert "ASGI callable returned" not in server.output()
    assert "Traceback" not in server.output()


async def flood(url: str, readers: list[Reader], stalled: list[socket.socket], port: int) -> None:
    loop = asyncio.get_running_loop()
    if True:
        async with httpx.AsyncClient(base_url=url, timeout=10) as client:
            await wait_for(lambda: all(r.started for r in readers), 10)
            stats = (await client.get("/stats")).json()
            assert stats["subscribers"] == READERS + STALLED

            started = time.monotonic()
            for seq in range(MESSAGES):
                head = f"{seq} {time.time():.6f} ".encode()
                body = head + b"x" * (PAYLOAD - len(head))
                answer = await client.post("/pub/firehose?size=1000", content=body)
                assert answer.status_code in (200, 201)
            publish_seconds = time.monotonic() - started

            await wait_for(lambda: all(len(r.seqs) == MESSAGES for r in readers), 30)
            for reader in readers:
                assert reader.seqs == list(range(MESSAGES))
            latencies = [x for r in readers for x in r.latencies]
            p50, p99 = percentile(latencies, 0.5), percentile(latencies, 0.99)
            print(
                f"publish {MESSAGES} in {publish_seconds:.2f}s; latency p50 {p50 * 1000:.1f} ms"
                f" p99 {p99 * 1000:.1f} ms over {len(latencies)} deliveries"
            )
            assert p99 < 1.0

            async def dropped() -> int:
                return int((await client.get("/stats")).json()["dropped_slow"])

            deadline = time.monotonic() + 15
            while await dropped() < STALLED and time.monotonic() < deadline:
                await asyncio.sleep(0.05)
            assert await dropped() == STALLED
            text = (await client.get("/metrics")).text
            assert metric(text, "martd_slow_consumer_drops_total") == STALLED
            assert metric(text, "martd_connections", transport="sse") == READERS

            # Each dropped client reads what reached it, then resumes from its last etag.
            for sock in stalled:
                data = await asyncio.to_thread(read_all, sock)
                matches = list(EVENT.finditer(data))
                last_etag = matches[-1][1].decode() if matches else None
                last_seq = int(matches[-1][2]) if matches else -1
                assert [int(m[2]) for m in matches] == list(range(last_seq + 1))
                assert last_seq < MESSAGES - 1
                resume = f"Last-Event-ID: {last_etag}\r\n" if last_etag else ""
                path = "/sub/firehose" if last_etag else "/sub/firehose?etag=0"
                transport, again = await loop.create_connection(
                    lambda p=path, r=resume: Reader(request(port, p, r)),  # type: ignore[misc]
                    "127.0.0.1",
                    port,
                )
                await wait_for(lambda a=again: a.seqs[-1:] == [MESSAGES - 1], 10)  # type: ignore[misc]
                assert again.seqs == list(range(last_seq + 1, MESSAGES))
                assert not again.missed
                transport.close()


async def test_slow_consumers_cross_origin_are_cut_without_an_error_log() -> None:
    env = {
        "MARTD_CORS_ORIGINS": "https://site.example",
        "MARTD_SUB_SNDBUF": "16384",
        "MARTD_SUB_BUFFER_MESSAGES": "16",
        "MARTD_SUB_STALL": "10",
    }
    with uvicorn_process(env) as server:
        origin = "Origin: https://site.example\r\n"
        stalled = [stalled_socket(server.port, "/sub/cors", origin) for _ in range(2)]
        try:
            async with httpx.AsyncClient(base_url=server.url, timeout=10) as client:
                deadline = time.monotonic() + 10
                while (await client.get("/stats")).json()["subscribers"] < 2:
                    assert time.monotonic() < deadline
                    await asyncio.sleep(0.05)
                for _ in range(200):
                    await client.post("/pub/cors", content=b"x" * PAYLOAD)
                while (await client.get("/stats")).json()["dropped_slow"] < 2:
                    assert time.monotonic() < deadline + 10
                    await asyncio.sleep(0.05)
            for sock in stalled:
                data = await asyncio.to_thread(read_all, sock)
                assert b"access-control-allow-origin: https://site.example" in data
        finally:
            for sock in stalled:
                sock.close()
    assert "ASGI callable returned" not in server.output()
