"""Helpers the tests share: real uvicorn servers on loopback, an SSE reader, Redis keys of
a test's own, and `require()` for parts a machine may lack.  Fixtures are in conftest.py."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import secrets
import socket
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import httpx
import pytest
import uvicorn
from websockets.asyncio.client import ClientConnection

# Each test on Redis gets a key prefix of its own (deleted after it), so that test runs
# that share one Redis do not disturb each other.
REDIS_URL = os.environ.get("MARTD_TEST_REDIS_URL", "redis://127.0.0.1:6379/6")


def require(part: str, available: bool, why: str) -> None:
    """Skip when a part is missing, or fail when CI says it is required."""
    if available:
        return
    if os.environ.get(f"MARTD_REQUIRE_{part.upper()}") == "1" or os.environ.get("CI") == "true":
        pytest.fail(f"{part} is required here but not available: {why}")
    pytest.skip(f"{part} not available: {why}")


def free_socket() -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    sock.bind(("127.0.0.1", 0))
    return sock


class ServerThread:
    """A real uvicorn server, in a thread of its own, on a free loopback port."""

    def __init__(self, app: Any, **config: Any) -> None:
        self.app = app
        self.sock = free_socket()
        self.port = self.sock.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        options = {"log_level": "warning", "lifespan": "on", "ws_ping_interval": None} | config
        self.server = uvicorn.Server(uvicorn.Config(app, **options))
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        async def serve() -> None:
            self.loop = asyncio.get_running_loop()
            await self.server.serve(sockets=[self.sock])

        asyncio.run(serve())

    def start(self) -> ServerThread:
        self.thread.start()
        deadline = time.monotonic() + 10
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise RuntimeError("uvicorn did not start")
            time.sleep(0.01)
        return self

    def server_loop(self) -> asyncio.AbstractEventLoop:
        """The server's event loop, for running coroutines in it from a test."""
        return self.loop

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)
        self.sock.close()


@contextlib.contextmanager
def running(app: Any, **config: Any) -> Iterator[ServerThread]:
    server = ServerThread(app, **config).start()
    try:
        yield server
    finally:
        server.stop()


@contextlib.contextmanager
def redis_url() -> Iterator[str]:
    """REDIS_URL with a key prefix of its own; skips (or fails in CI) without Redis."""
    import redis

    prefix = f"martd-test-{secrets.token_hex(6)}"
    client = redis.Redis.from_url(REDIS_URL, socket_timeout=2, socket_connect_timeout=2)
    try:
        client.ping()
    except redis.RedisError as exc:
        client.close()
        require("redis", False, f"{REDIS_URL}: {exc}")
    try:
        yield f"{REDIS_URL}{'&' if '?' in REDIS_URL else '?'}prefix={prefix}"
    finally:
        with contextlib.suppress(redis.RedisError):
            keys = list(client.scan_iter(match=f"{prefix}:*", count=1000))
            for start in range(0, len(keys), 500):
                client.delete(*keys[start : start + 500])
        client.close()


def mounted_app(martd: Any, prefix: str = "/martd") -> Any:
    from starlette.applications import Starlette
    from starlette.responses import PlainTextResponse
    from starlette.routing import Mount, Route

    @contextlib.asynccontextmanager
    async def lifespan(_: Any) -> AsyncIterator[None]:
        async with martd.lifespan():
            yield

    async def home(_: Any) -> PlainTextResponse:
        return PlainTextResponse("the site")

    return Starlette(routes=[Route("/", home), Mount(prefix, app=martd)], lifespan=lifespan)


class SSE:
    """Reads events from a streaming httpx response."""

    def __init__(self, response: httpx.Response) -> None:
        self.response = response
        self.lines = self._lines()
        self.retry: int | None = None

    async def _lines(self) -> AsyncIterator[str]:
        # SSE breaks lines at CR, LF and CRLF only (not at U+2028 as str.splitlines does)
        buffer = ""
        async for text in self.response.aiter_text():
            buffer += text.replace("\r\n", "\n").replace("\r", "\n")
            *lines, buffer = buffer.split("\n")
            for line in lines:
                yield line

    async def next(self, timeout: float = 5.0) -> dict[str, str]:
        """The next event with data: {"event", "id", "data"}; comments are skipped."""
        event: dict[str, Any] = {}
        data: list[str] = []
        async with asyncio.timeout(timeout):
            async for line in self.lines:
                if line == "":
                    if data or "event" in event:
                        event["data"] = "\n".join(data)
                        return event
                    continue
                if line.startswith(":"):
                    continue
                name, _, value = line.partition(":")
                value = value.removeprefix(" ")
                if name == "data":
                    data.append(value)
                elif name == "retry":
                    self.retry = int(value)
                else:
                    event[name] = value
        raise EOFError("stream ended")


@contextlib.asynccontextmanager
async def sse(
    client: httpx.AsyncClient, path: str, headers: dict[str, str] | None = None
) -> AsyncIterator[SSE]:
    hdrs = {"accept": "text/event-stream"} | (headers or {})
    async with client.stream("GET", path, headers=hdrs) as response:
        assert response.status_code == 200, await response.aread()
        yield SSE(response)


async def wait_for(predicate: Callable[[], Any], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.01)


def ws_url(server: ServerThread, path: str) -> str:
    return server.url.replace("http://", "ws://") + path


async def frame(ws: ClientConnection, timeout: float = 5.0) -> dict[str, Any]:
    """The next frame that is not a keep-alive."""
    async with asyncio.timeout(timeout):
        while True:
            body: dict[str, Any] = json.loads(await ws.recv())
            if body.get("type") != "ping":
                return body
