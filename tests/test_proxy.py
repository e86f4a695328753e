"""`martd serve --upstream`: the site behind martd, through a real proxy process."""

from __future__ import annotations

import asyncio
import json
import os
import socket
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import websockets
from websockets.asyncio.client import connect

from martd_asgi import create_app
from martd_asgi.proxy import ProxyMiddleware

from .helpers import ServerThread, running, sse
from .serving import Served, free_port, martd_serve

pytestmark = pytest.mark.anyio


class Upstream:
    """A small site: echo, a stream held between chunks, a WebSocket echo, cookies, redirects."""

    def __init__(self) -> None:
        self.release: asyncio.Event | None = None
        self.last_headers: dict[str, list[str]] = {}
        self.forever_ended = threading.Event()

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            while (message := await receive())["type"] != "lifespan.shutdown":
                await send({"type": "lifespan.startup.complete"})
            await send({"type": "lifespan.shutdown.complete"})
            return
        if scope["type"] == "websocket":
            await self.websocket(scope, receive, send)
            return
        path = scope["path"]
        headers: dict[str, list[str]] = {}
        for name, value in scope["headers"]:
            headers.setdefault(name.decode(), []).append(value.decode("latin-1"))
        self.last_headers = headers
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        if path.startswith("/echo"):
            extra = [
                (b"x-method", scope["method"].encode()),
                (b"x-raw-path", scope["raw_path"]),
                (b"x-query", scope["query_string"]),
            ]
            await respond(send, 200, body, extra)
        elif path == "/headers":
            await respond(
                send, 200, json.dumps(headers).encode(), [(b"content-type", b"application/json")]
            )
        elif path == "/stream":
            self.release = asyncio.Event()
            await send(
                {
                    "type": "http.response.start",
                    "status": 200,
                    "headers": [(b"content-type", b"text/plain")],
                }
            )
            await send({"type": "http.response.body", "body": b"first\n", "more_body": True})
            await asyncio.wait_for(self.release.wait(), 10)
            await send({"type": "http.response.body", "body": b"last\n", "more_body": False})
        elif path == "/forever":
            self.forever_ended.clear()
            await send({"type": "http.response.start", "status": 200, "headers": []})
            await send({"type": "http.response.body", "body": b"tick\n", "more_body": True})
            while (await receive())["type"] != "http.disconnect":
                pass
            self.forever_ended.set()
        elif path == "/release":
            assert self.release is not None
            self.release.set()
            await respond(send, 200, b"released")
        elif path == "/cookie":
            extra = [
                (b"set-cookie", b"session=abc; Path=/; HttpOnly"),
                (b"set-cookie", b"theme=dark; Path=/"),
                (b"location", b"/landing?from=cookie"),
            ]
            await respond(send, 302, b"", extra)
        elif path == "/slow":
            while (await receive())["type"] != "http.disconnect":
                pass
        else:
            await respond(send, 404, b"no such page", [(b"x-raw-path", scope["raw_path"])])

    async def websocket(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        await receive()
        if scope["path"] == "/ws-refused":
            await send({"type": "websocket.close", "code": 1008})
            return
        if scope["path"] == "/ws-headers":
            await send({"type": "websocket.accept"})
            seen: dict[str, list[str]] = {}
            for name, value in scope["headers"]:
                seen.setdefault(name.decode(), []).append(value.decode("latin-1"))
            await send({"type": "websocket.send", "text": json.dumps(seen)})
            await send({"type": "websocket.close", "code": 1000})
            return
        protocol = (scope.get("subprotocols") or [None])[0]
        await send({"type": "websocket.accept", "subprotocol": protocol})
        while True:
            message = await receive()
            if message["type"] == "websocket.disconnect":
                return
            if message.get("text") == "close-me":
                await send({"type": "websocket.close", "code": 4001, "reason": "asked to"})
                return
            key = "text" if message.get("text") is not None else "bytes"
            await send({"type": "websocket.send", key: message[key]})


async def respond(
    send: Any, status: int, body: bytes, headers: list[tuple[bytes, bytes]] = ()
) -> None:  # type: ignore[assignment]
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [(b"content-length", str(len(body)).encode()), *headers],
        }
    )
    await send({"type": "http.response.body", "body": body})


@pytest.fixture(scope="module")
def site() -> Iterator[tuple[Upstream, ServerThread]]:
    app = Upstream()
    with running(app) as server:
        yield app, server


@pytest.fixture(scope="module")
def proxy(
    site: tuple[Upstream, ServerThread], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Served]:
    with martd_serve("--upstream", site[1].url, tmp=tmp_path_factory.mktemp("proxy")) as served:
        yield served


@pytest.fixture
async def http(proxy: Served) -> Any:
    async with httpx.AsyncClient(base_url=proxy.origin, timeout=10) as client:
        yield client


async def test_proxy_get_and_post_come_back_byte_identical(http: httpx.AsyncClient) -> None:
    body = os.urandom(300_000) + b"\r\n\x00 not utf-8: \xff\xfe"
    query = b"a=1&b=%20x%2By&c=%FF&c=2&empty="
    answer = await http.post(f"/echo/some%20path?{query.decode()}", content=body)
    assert answer.status_code == 200
    assert answer.content == body
    assert answer.headers["x-query"].encode("latin-1") == query
    assert answer.headers["x-raw-path"] == "/echo/some%20path"
    assert answer.headers["x-method"] == "POST"

    answer = await http.get("/echo?q=%E2%9C%93&x=y")
    assert (answer.status_code, answer.content, answer.headers["x-query"]) == (
        200,
        b"",
        "q=%E2%9C%93&x=y",
    )

    async def chunks() -> Any:
        for part in (b"chunked ", b"upload ", b"\xff"):
            yield part

    answer = await http.put("/echo/chunked", content=chunks())
    assert (answer.headers["x-method"], answer.content) == ("PUT", b"chunked upload \xff")


async def test_proxy_streams_response_chunk_by_chunk(http: httpx.AsyncClient) -> None:
    async with http.stream("GET", "/stream") as response:
        assert response.status_code == 200
        chunks = response.aiter_raw()
        async with asyncio.timeout(5):
            first = await chunks.__anext__()
        # The upstream has not produced its last chunk yet: it waits for /release.
        assert first == b"first\n"
        assert (await http.post("/release")).content == b"released"
        async with asyncio.timeout(5):
            rest = b"".join([chunk async for chunk in chunks])
        assert rest == b"last\n"


async def test_proxy_ends_the_upstream_stream_when_the_browser_leaves(
    http: httpx.AsyncClient, site: tuple[Upstream, ServerThread]
) -> None:
    async with http.stream("GET", "/forever") as response:
        async with asyncio.timeout(5):
            assert await response.aiter_raw().__anext__() == b"tick\n"
    # The upstream's endless response is let go of, not kept open for nobody.
    assert await asyncio.to_thread(site[0].forever_ended.wait, 5)


async def test_proxy_websocket_echo(proxy: Served) -> None:
    url = f"ws://127.0.0.1:{proxy.port}/ws?x=1"
    async with asyncio.timeout(10):
        async with connect(url, subprotocols=["chat"]) as ws:  # type: ignore[list-item]
            assert ws.subprotocol == "chat"
            await ws.send("hello through the proxy")
            assert await ws.recv() == "hello through the proxy"
            await ws.send(b"\x00\x01binary")
            assert await ws.recv() == b"\x00\x01binary"
            await ws.send("close-me")
            with pytest.raises(websockets.ConnectionClosed) as closed:
                await ws.recv()
        assert closed.value.rcvd is not None
        assert (closed.value.rcvd.code, closed.value.rcvd.reason) == (4001, "asked to")


async def test_proxy_websocket_refused_by_upstream_is_refused(proxy: Served) -> None:
    with pytest.raises(websockets.InvalidStatus) as refused:
        async with asyncio.timeout(10):
            await connect(f"ws://127.0.0.1:{proxy.port}/ws-refused")
    assert refused.value.response.status_code == 403


async def test_proxy_passes_set_cookie_and_redirect_untouched(
    http: httpx.AsyncClient, site: tuple[Upstream, ServerThread]
) -> None:
    answer = await http.get("/cookie")
    assert answer.status_code == 302
    assert answer.headers["location"] == "/landing?from=cookie"
    assert answer.headers.get_list("set-cookie") == [
        "session=abc; Path=/; HttpOnly",
        "theme=dark; Path=/",
    ]
    # Another user, with no cookie: the proxy keeps no jar of its own.
    async with httpx.AsyncClient(base_url=http.base_url) as stranger:
        seen = (await stranger.get("/headers")).json()
    assert "cookie" not in seen


async def test_proxy_sets_forwarded_headers_and_drops_hop_by_hop(http: httpx.AsyncClient) -> None:
    answer = await http.get(
        "/headers",
        headers={
            "connection": "keep-alive, x-hop",
            "x-hop": "secret",
            "x-forwarded-proto": "gopher",
            "te": "trailers",
        },
    )
    seen = answer.json()
    assert "x-hop" not in seen and "te" not in seen and "connection" not in seen
    assert seen["x-forwarded-for"] == ["127.0.0.1"]
    assert seen["x-forwarded-proto"] == ["http"]
    assert seen["x-forwarded-host"] == [http.base_url.netloc.decode()]
    assert seen["host"] == [http.base_url.netloc.decode()]


async def test_proxy_keeps_martd_routes_under_the_prefix(http: httpx.AsyncClient) -> None:
    assert (await http.get("/martd/healthz")).json()["status"] == "ok"
    assert (await http.get("/martd/client.js")).status_code == 200
    async with sse(http, "/martd/sub/proxied") as stream:
        pushed = await http.post("/martd/pub/proxied", content="through martd")
        assert pushed.status_code == 201
        assert (await stream.next())["data"] == "through martd"


async def test_proxy_upstream_down_is_502_while_healthz_is_200(tmp_path: Path) -> None:
    dead = f"http://127.0.0.1:{free_port()}"
    with martd_serve("--upstream", dead, tmp=tmp_path) as served:
        async with httpx.AsyncClient(base_url=served.origin, timeout=10) as http:
            answer = await http.get("/some/page")
            assert answer.status_code == 502
            assert dead in answer.json()["error"]
            assert (await http.get("/martd/healthz")).status_code == 200
            with pytest.raises(websockets.InvalidStatus) as refused:
                await connect(f"ws://127.0.0.1:{served.port}/ws")
            assert refused.value.response.status_code == 502


async def test_proxy_slow_upstream_is_504(site: tuple[Upstream, ServerThread]) -> None:
    app = ProxyMiddleware(create_app(), upstream=site[1].url, timeout=0.3)
    with running(app) as server:
        async with httpx.AsyncClient(base_url=server.url, timeout=10) as http:
            answer = await http.get("/slow")
            assert answer.status_code == 504
            assert site[1].url in answer.json()["error"]
            assert (await http.get("/echo?still=up")).headers["x-query"] == "still=up"


async def test_proxy_errors_never_show_upstream_credentials() -> None:
    import socket as socketlib

    from martd_asgi import create_app
    from martd_asgi.proxy import ProxyMiddleware

    closed = socketlib.socket()
    closed.bind(("127.0.0.1", 0))
    port = closed.getsockname()[1]
    closed.close()  # nothing listens there: the upstream is down
    app = ProxyMiddleware(create_app(), upstream=f"http://site:hunter2@127.0.0.1:{port}")
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
        answer = await client.get("/page")
    assert answer.status_code == 502
    assert "hunter2" not in answer.text and f"127.0.0.1:{port}" in answer.text


# ---------------------------------------------------- what a review found


def raw_request(port: int, data: bytes) -> bytes:
    """Send ``data`` as it is (no client normalises it) and read the whole answer."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(data)
        chunks = []
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    return b"".join(chunks)


@pytest.mark.parametrize(
    "path",
    [b"/../internal/admin", b"/x/../martd/stats", b"/a/./b/%2e%2e/c", b"//twice", b"/x/.."],
)
async def test_proxy_sends_paths_byte_for_byte_under_the_base_path(
    site: tuple[Upstream, ServerThread], proxy: Served, path: bytes
) -> None:
    app = ProxyMiddleware(create_app(), upstream=site[1].url + "/app")
    with running(app) as server:
        async with httpx.AsyncClient(base_url=server.url, timeout=10) as http:
            answer = await http.get("/", extensions={"target": path + b"?q=1"})
    assert answer.content == b"no such page"
    assert answer.headers["x-raw-path"].encode() == b"/app" + path
    # through `martd serve --upstream` (no base path): the site, never martd, answers
    answer = await asyncio.to_thread(
        raw_request,
        proxy.port,
        b"GET " + path + b" HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    )
    assert answer.startswith(b"HTTP/1.1 404"), answer
    assert b"x-raw-path: " + path + b"\r\n" in answer and answer.endswith(b"no such page")


async def test_proxy_options_asterisk_goes_to_the_site(proxy: Served) -> None:
    request = b"OPTIONS * HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    answer = await asyncio.to_thread(raw_request, proxy.port, request)
    assert answer.startswith(b"HTTP/1.1 404"), answer  # the site's own answer for "*"
    assert answer.endswith(b"no such page")
    assert "Traceback" not in proxy.stderr() and "Exception" not in proxy.stderr()


async def test_proxy_forwarded_headers_are_those_nginx_would_send(proxy: Served) -> None:
    claimed = {
        "forwarded": "for=6.6.6.6;host=evil",
        "x-forwarded-for": "6.6.6.6",
        "x-real-ip": "6.6.6.6",
        "x-forwarded-port": "4443",
        "x-forwarded-prefix": "/admin",
        "x-forwarded-host": "evil.example",
    }
    async with httpx.AsyncClient(base_url=proxy.origin, timeout=10) as http:
        over_http = (await http.get("/headers", headers=claimed)).json()
    async with asyncio.timeout(10):
        async with connect(
            f"ws://127.0.0.1:{proxy.port}/ws-headers", additional_headers=claimed
        ) as ws:
            over_ws = json.loads(await ws.recv())
    netloc = f"127.0.0.1:{proxy.port}"
    for seen in (over_http, over_ws):
        assert seen["host"] == [netloc]
        assert seen["x-forwarded-for"] == ["127.0.0.1"] and seen["x-real-ip"] == ["127.0.0.1"]
        assert seen["x-forwarded-host"] == [netloc]
        assert seen["x-forwarded-proto"] == ["http"]
        assert not {"forwarded", "x-forwarded-port", "x-forwarded-prefix"} & set(seen)


CHUNKED_WITH_TRAILER = (
    b"POST %s HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nTrailer: X-Forwarded-For\r\n"
    b"Connection: close\r\n\r\n5\r\nhello\r\n0\r\nX-Forwarded-For: 10.9.9.9\r\n"
    b"X-Trailer-Only: 1\r\n\r\n"
)


async def test_proxy_never_forwards_trailers_as_headers(proxy: Served) -> None:
    answer = await asyncio.to_thread(raw_request, proxy.port, CHUNKED_WITH_TRAILER % b"/headers")
    seen = json.loads(answer.partition(b"\r\n\r\n")[2])
    assert "x-trailer-only" not in seen
    assert seen["x-forwarded-for"] == ["127.0.0.1"]


async def test_trailers_give_no_address_rights(tmp_path: Path) -> None:
    env = {"MARTD_TRUSTED_PROXIES": "127.0.0.1", "MARTD_ALLOW": "10.9.9.9"}
    with martd_serve(tmp=tmp_path, **env) as served:
        answer = await asyncio.to_thread(
            raw_request, served.port, CHUNKED_WITH_TRAILER % b"/martd/pub/trailed"
        )
        assert answer.startswith(b"HTTP/1.1 403"), answer
        assert b"not a server" in answer
        # the same address in a header does make a server (the setup is right)
        as_header = await asyncio.to_thread(
            raw_request,
            served.port,
            b"POST /martd/pub/trailed HTTP/1.1\r\nHost: x\r\nX-Forwarded-For: 10.9.9.9\r\n"
            b"Content-Length: 5\r\nConnection: close\r\n\r\nhello",
        )
        assert as_header.startswith(b"HTTP/1.1 201"), as_header
