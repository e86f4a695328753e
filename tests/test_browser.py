"""client.js and the demo page in real browsers, against real servers.

Each test runs in Debian's Chromium (driven by Playwright); those marked
``@both_engines`` run in Firefox ESR too (driven over Marionette): the transports
and the browser features where engines differ (see browsers.py). Pages are served
by a small site on the server's origin, or on another origin, so that client.js
loads from the real server as it would in a site. Every wait has a deadline; the
browsers never download anything.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import json
import re
import socket
import time
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest

from martd_asgi import create_app
from martd_asgi.channels import PushAttributes
from martd_asgi.tokens import mint_token

from .browsers import both_engines, engines_with
from .helpers import ServerThread

pytestmark = pytest.mark.browser

SECRET = "browser-test-secret"
AUTH = {"authorization": f"Bearer {SECRET}"}
TRANSPORTS = ["sse", "longpoll", "jsonp", "websocket"]
PAYLOADS = [
    "plain",
    "line one\nline two\n\nline four",
    "ünïcødé ✓ 日本語 😀 and a\u2028separator",
    '{"json": [1, 2, "three"]}',
]

PAGE = """<!doctype html><html><head><meta charset="utf-8"><title>t</title></head><body>
<script>%(before)s</script>
<script src="%(src)s" %(attrs)s></script>
<script>
  window.got = []; window.events = []; window.handles = {};
  window.listen = function (channel, etag) {
    handles[channel] = martd.sub(channel, function (data, e) { got.push([channel, data, e]); }, etag);
  };
  ["missed", "kicked", "deleted", "error"].forEach(function (name) {
    martd.on(name, function (d) { events.push([name, d.channel || d.error]); });
  });
</script></body></html>"""


# ------------------------------------------------------------------ harness


class Site:
    """A web site that hosts martd: its own pages, martd at / or under a prefix."""

    def __init__(self, martd: Any, prefix: str = "") -> None:
        self.martd = martd
        self.prefix = prefix
        self.pages: dict[str, str] = {}
        self.subscriptions: list[str] = []  # the /sub/ requests it was asked, in order

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] in ("http", "websocket") and "/sub/" in scope["path"]:
            self.subscriptions.append(f"{scope['path']}?{scope['query_string'].decode()}")
        if scope["type"] == "http" and scope["path"] in self.pages:
            body = self.pages[scope["path"]].encode()
            headers = [(b"content-type", b"text/html; charset=utf-8")]
            await send({"type": "http.response.start", "status": 200, "headers": headers})
            await send({"type": "http.response.body", "body": body})
            return
        if self.martd is None:
            return
        if self.prefix and scope["type"] in ("http", "websocket"):
            scope = dict(scope, root_path=self.prefix)
        await self.martd(scope, receive, send)


class SiteServer(ServerThread):
    """A real uvicorn serving a Site (on a given port, to restart one); on stop,
    martd is told to shut down as on SIGTERM, so open streams end at once."""

    def __init__(self, site: Site, port: int = 0) -> None:
        super().__init__(site)
        self.site = site
        if port:
            self.sock.close()
            self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            self.sock.bind(("127.0.0.1", port))
            self.port = port
            self.url = f"http://127.0.0.1:{port}"
        self.base = self.url + site.prefix
        self.loop: asyncio.AbstractEventLoop | None = None

    def _run(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.loop.run_until_complete(self.server.serve(sockets=[self.sock]))
        self.loop.close()

    def stop(self) -> None:
        if self.loop is not None and self.thread.is_alive() and self.site.martd is not None:
            self.loop.call_soon_threadsafe(self.site.martd.begin_shutdown)
        super().stop()


@pytest.fixture
def serve() -> Iterator[Callable[..., SiteServer]]:
    """Start a site with martd (settings as keywords; ``prefix`` mounts it under a path)."""
    started: list[SiteServer] = []

    def make(prefix: str = "", martd: Any = "new", **settings: Any) -> SiteServer:
        settings.setdefault("secret", SECRET)
        app = create_app(**settings) if martd == "new" else martd
        server = SiteServer(Site(app, prefix)).start()
        started.append(server)
        return server

    yield make
    for server in started:
        server.stop()


@pytest.fixture
def server(serve: Callable[..., SiteServer]) -> SiteServer:
    return serve()


def put_page(
    server: SiteServer,
    *,
    src: str | None = None,
    path: str = "/t.html",
    before: str = "",
    **data: str,
) -> None:
    attrs = " ".join(f'data-{k}="{v}"' for k, v in data.items())
    src = src or f"{server.base}/client.js"
    server.site.pages[path] = PAGE % {"src": src, "attrs": attrs, "before": before}


def open_page(
    context: Any,
    server: SiteServer,
    *,
    src: str | None = None,
    path: str = "/t.html",
    before: str = "",
    **data: str,
) -> Any:
    """A page of ``server``'s site that loads client.js (from ``src``) with data- attributes,
    after running the script ``before``."""
    put_page(server, src=src, path=path, before=before, **data)
    page = context.new_page()
    page.goto(server.url + path)
    return page


def push(server: SiteServer, channel: str, data: str, **query: str) -> dict[str, Any]:
    answer = httpx.post(
        f"{server.url}/pub/{channel}", content=data.encode(), params=query, headers=AUTH
    )
    assert answer.status_code in (200, 201), answer.text
    return dict(answer.json())


def stats(server: SiteServer) -> dict[str, Any]:
    return dict(httpx.get(f"{server.url}/stats", headers=AUTH).json())


def until(predicate: Callable[[], Any], timeout: float = 10.0, what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not met within {timeout}s (last: {value!r})")
        time.sleep(0.03)


def connected(server: SiteServer, transport: str | None = None, count: int = 1) -> None:
    def check() -> bool:
        conns = stats(server)["connections"]
        if transport is None:
            return sum(conns.values()) == count
        return conns.get(transport, 0) == count and sum(conns.values()) == count

    until(check, what=f"{count} {transport or 'any'} connection(s)")


def got(page: Any, count: int, timeout: float = 10.0) -> list[list[str]]:
    page.wait_for_function(f"window.got.length >= {count}", timeout=timeout * 1000)
    return list(page.evaluate("window.got"))


def settle(page: Any, server: SiteServer, channel: str = "sync", **query: str) -> None:
    """Wait until everything pushed before now has reached the page (via a marker)."""
    before = len(page.evaluate("window.got"))
    marker = push(server, channel, "marker", **query)
    page.wait_for_function(
        f"window.got.slice({before}).some(function (m) {{ return m[2] === {json.dumps(marker['etag'])}; }})"
    )


# ----------------------------------------------------------------- delivery


@both_engines
def test_pages_run_in_the_named_engine_with_what_tabs_need_to_share(
    context: Any, server: SiteServer, engine: str
) -> None:
    page = open_page(context, server)
    agent = page.evaluate("navigator.userAgent")
    assert ("Firefox/" in agent) == (engine == "firefox"), agent
    # Loopback http:// is a secure context: Web Locks and BroadcastChannel are there.
    assert page.evaluate(
        "[isSecureContext, !!navigator.locks, typeof BroadcastChannel, martd.state]"
    ) == [True, True, "function", "idle"]
    # Playwright's evaluate: a function gets the argument, a promise is awaited.
    assert page.evaluate("(n) => n + 1", 41) == 42
    assert page.evaluate("new Promise(function (ok) { setTimeout(ok, 10, 'later'); })") == "later"


@both_engines
@pytest.mark.parametrize("transport", TRANSPORTS)
def test_client_delivers_on_each_transport(
    context: Any, server: SiteServer, transport: str
) -> None:
    page = open_page(context, server, transport=transport)
    page.evaluate("listen('room')")
    connected(server, transport)
    sent = [push(server, "room", data)["etag"] for data in PAYLOADS]
    assert got(page, len(PAYLOADS)) == [["room", d, e] for d, e in zip(PAYLOADS, sent)]
    assert page.evaluate("[martd.state, martd.transport]") == ["open", transport]


# Firefox where the backlog is a burst the engine parses (events in one chunk, frames).
@engines_with("transport", TRANSPORTS, ["sse", "websocket"])
def test_client_resumes_exactly_after_the_given_etag(
    context: Any, server: SiteServer, transport: str
) -> None:
    etags = [push(server, "log", f"m{i}")["etag"] for i in range(5)]
    page = open_page(context, server, transport=transport)
    page.evaluate(f"listen('log', {json.dumps(etags[1])})")
    assert got(page, 3) == [["log", f"m{i}", etags[i]] for i in (2, 3, 4)]
    connected(server, transport)
    later = push(server, "log", "m5")["etag"]
    assert got(page, 4)[3] == ["log", "m5", later]
    assert page.evaluate("window.events") == []


@both_engines
def test_client_tab_resumes_across_page_loads_on_the_transport_it_remembered(
    context: Any, server: SiteServer
) -> None:
    page = open_page(context, server, before="window.EventSource = undefined;")
    page.evaluate("listen('log')")
    connected(server, "websocket")
    first = push(server, "log", "m0")["etag"]
    assert got(page, 1) == [["log", "m0", first]]
    page.evaluate(f"sessionStorage.setItem('last', {json.dumps(first)})")

    # The next page of this tab has EventSource, but keeps the transport that worked;
    # it resumes from the etag the page kept, so what came while it loaded arrives.
    put_page(server)
    page.reload()
    away = [push(server, "log", data)["etag"] for data in PAYLOADS]
    page.evaluate("listen('log', sessionStorage.getItem('last'))")
    assert got(page, len(PAYLOADS)) == [["log", d, e] for d, e in zip(PAYLOADS, away)]
    connected(server, "websocket")
    assert page.evaluate("[martd.transport, sessionStorage.getItem('martd.transport')]") == [
        "websocket",
        "websocket",
    ]


def test_client_etag_zero_gets_everything_retained_and_missed_when_evicted(
    context: Any, server: SiteServer
) -> None:
    etags = [push(server, "short", f"m{i}", size="2")["etag"] for i in range(4)]
    page = open_page(context, server)
    page.evaluate("listen('all', '0'); listen('short', " + json.dumps(etags[0]) + ")")
    assert got(page, 2) == [["short", "m2", etags[2]], ["short", "m3", etags[3]]]
    assert page.evaluate("window.events") == [["missed", "short"]]


# ----------------------------------------------------------- one connection


@both_engines
def test_client_keeps_all_subscriptions_on_one_connection(context: Any, server: SiteServer) -> None:
    page = open_page(context, server)
    page.evaluate("listen('a'); listen('b')")
    connected(server, "sse")
    requests = server.site.subscriptions
    assert len(requests) == 1 and "/sub/a,b?" in requests[0]
    ea, eb = push(server, "a", "to a")["etag"], push(server, "b", "to b")["etag"]
    assert got(page, 2) == [["a", "to a", ea], ["b", "to b", eb]]

    # A third channel re-opens the one connection: nothing lost, nothing repeated.
    page.evaluate("listen('c')")
    during = push(server, "a", "while reopening")["etag"]
    page.wait_for_function("martd.channels().indexOf('c') >= 0")
    connected(server, "sse")
    ec = push(server, "c", "to c")["etag"]
    assert got(page, 4)[2:] == [["a", "while reopening", during], ["c", "to c", ec]]
    settle(page, server, "a")
    assert len(page.evaluate("window.got")) == 5
    assert len(requests) == 2, requests


def test_client_cancel_stops_delivery(context: Any, server: SiteServer) -> None:
    page = open_page(context, server)
    page.evaluate("listen('gone'); listen('sync')")
    connected(server)
    first = push(server, "gone", "before")["etag"]
    assert got(page, 1) == [["gone", "before", first]]
    page.evaluate("handles.gone.cancel()")
    push(server, "gone", "after")
    settle(page, server)
    assert [m[1] for m in page.evaluate("window.got")] == ["before", "marker"]


# --------------------------------------------------------------------- pub


@both_engines
@pytest.mark.parametrize("transport", ["sse", "websocket"])
def test_client_pub_with_key_delivers_and_wrong_key_rejects(
    context: Any, serve: Callable[..., SiteServer], transport: str
) -> None:
    server = serve(allow="")  # the page is not a server: only keys work
    created = push(server, "keyed", "created", key="k-123")["etag"]
    page = open_page(context, server, transport=transport)
    page.evaluate("listen('keyed')")
    connected(server, transport)
    answer = page.evaluate("martd.pub('keyed', 'k-123', 'from the page ✓')")
    assert got(page, 2) == [  # no etag: the retained message first
        ["keyed", "created", created],
        ["keyed", "from the page ✓", answer["etag"]],
    ]
    refused = page.evaluate(
        "martd.pub('keyed', 'wrong', 'no').then(function () { return 'accepted'; },"
        " function (e) { return [e.status, e.message]; })"
    )
    assert refused[0] == 403 and "key" in refused[1]
    no_key = page.evaluate(
        "martd.pub('keyed', null, 'no').catch(function (e) { return e.status; })"
    )
    assert no_key == 403
    settle(page, server, "keyed", key="k-123")
    assert [m[1] for m in page.evaluate("window.got")] == ["created", "from the page ✓", "marker"]


# ------------------------------------------------------------------ restart


# Firefox on the two transports whose reconnect paths are the engine's own.
@engines_with("transport", ["sse", "websocket", "jsonp"], ["sse", "websocket"])
def test_client_gets_what_it_missed_across_a_server_restart(context: Any, transport: str) -> None:
    app = create_app(secret=SECRET)
    site = Site(app)
    server = SiteServer(site).start()
    try:
        page = open_page(context, server, transport=transport)
        page.evaluate("listen('keep'); listen('tight')")
        connected(server, transport)
        k1 = push(server, "keep", "k1", size="10")["etag"]
        t1 = push(server, "tight", "t1", size="2")["etag"]
        assert got(page, 2) == [["keep", "k1", k1], ["tight", "t1", t1]]

        server.stop()
        page.wait_for_function("martd.state !== 'open'")

        async def offline() -> list[str]:
            out = []
            for channel, data, size in [("keep", "k2", 10), ("keep", "k3", 10)] + [
                ("tight", f"t{i}", 2) for i in (2, 3, 4, 5)
            ]:
                result = await app.backend.publish(
                    channel, data, PushAttributes(size=size), server=True
                )
                out.append(result.etag)
            return out

        # The server is down, nothing else touches the app: push from a thread of our own.
        with concurrent.futures.ThreadPoolExecutor(1) as pool:
            etags = pool.submit(asyncio.run, offline()).result(timeout=10)
        server = SiteServer(site, port=server.port).start()

        rest = got(page, 6, timeout=15)[2:]
        by_channel = {c: [(d, e) for ch, d, e in rest if ch == c] for c in ("keep", "tight")}
        assert by_channel == {
            "keep": [("k2", etags[0]), ("k3", etags[1])],
            "tight": [("t4", etags[4]), ("t5", etags[5])],
        }
        assert page.evaluate("window.events") == [["missed", "tight"]]
        connected(server, transport)
        k4 = push(server, "keep", "k4", size="10")["etag"]
        assert got(page, 7)[6] == ["keep", "k4", k4]
        settle(page, server, "keep")
        assert len(page.evaluate("window.got")) == 8
    finally:
        server.stop()


@pytest.mark.parametrize("transport", ["sse", "websocket"])
def test_client_token_opens_private_channels_and_grants_pushes(
    context: Any, serve: Callable[..., SiteServer], transport: str
) -> None:
    secret = "a-signing-secret-of-at-least-32-bytes"
    server = serve(secret=secret, allow="", private="vip.*")
    token = mint_token(secret, subscribe=["vip.*"], publish=["vip.room"], ttl=60)
    page = open_page(context, server, transport=transport)
    page.evaluate(f"martd.config({{token: {json.dumps(token)}}}); listen('vip.room')")
    page.wait_for_function("martd.state === 'open'")
    answer = page.evaluate("martd.pub('vip.room', null, 'granted')")
    assert got(page, 1) == [["vip.room", "granted", answer["etag"]]]
    refused = page.evaluate(
        "martd.pub('vip.other', null, 'x').catch(function (e) { return e.status; })"
    )
    assert refused == 403


# -------------------------------------------------------------------- tabs


@both_engines
def test_client_tabs_share_one_connection(context: Any, server: SiteServer) -> None:
    first = open_page(context, server)
    first.evaluate("listen('news')")
    connected(server, "sse")
    second = context.new_page()
    second.goto(first.url)
    second.evaluate("listen('news'); listen('extra')")
    # The leader re-opens its one connection for both tabs' channels.
    second.wait_for_function("martd.channels().sort().join() === 'extra,news'")
    connected(server, "sse")
    etag = push(server, "news", "for both")["etag"]
    assert got(first, 1) == [["news", "for both", etag]]
    assert got(second, 1) == [["news", "for both", etag]]
    extra = push(server, "extra", "second only")["etag"]
    assert got(second, 2)[1] == ["extra", "second only", extra]
    assert second.evaluate("martd.transport") == "sse"

    # The leader goes away: the other tab takes over and resumes where it was.
    first.close()
    connected(server, "sse")
    after = push(server, "news", "after the leader left")["etag"]
    assert got(second, 3)[2] == ["news", "after the leader left", after]
    settle(second, server, "news")
    assert len(second.evaluate("window.got")) == 4


@both_engines
def test_client_tab_resuming_from_an_etag_catches_up_through_the_leader(
    context: Any, server: SiteServer
) -> None:
    first = open_page(context, server)
    first.evaluate("listen('log')")
    connected(server, "sse")
    etags = [push(server, "log", f"m{i}")["etag"] for i in range(3)]
    got(first, 3)
    second = context.new_page()
    second.goto(first.url)
    second.evaluate(f"listen('log', {json.dumps(etags[0])})")
    assert got(second, 2) == [["log", "m1", etags[1]], ["log", "m2", etags[2]]]
    m3 = push(server, "log", "m3")["etag"]
    assert got(second, 3)[2] == ["log", "m3", m3]
    assert got(first, 4)[3] == ["log", "m3", m3]
    connected(server, "sse")  # the catch-up poll is over; the leader's stream remains
    settle(second, server, "log")
    assert len(second.evaluate("window.got")) == 4
    assert len(first.evaluate("window.got")) == 5


# -------------------------------------------------- finding and choosing


def test_client_finds_a_server_mounted_under_a_prefix(
    context: Any, serve: Callable[..., SiteServer]
) -> None:
    server = serve(prefix="/martd")
    page = open_page(context, server, src="/martd/client.js", path="/app/page")
    assert page.evaluate("martd.config().url") == server.url + "/martd"
    page.evaluate("listen('mounted')")
    page.wait_for_function("martd.state === 'open'")
    answer = httpx.post(f"{server.url}/martd/pub/mounted", content=b"hi", headers=AUTH)
    assert got(page, 1) == [["mounted", "hi", answer.json()["etag"]]]


@both_engines
def test_client_from_another_origin_falls_back_and_remembers(
    context: Any, server: SiteServer, serve: Callable[..., SiteServer]
) -> None:
    # No CORS here: EventSource and XHR are refused, WebSocket is not.
    other = serve(martd=None)
    page = open_page(context, other, src=f"{server.url}/client.js")
    page.evaluate("listen('far')")
    page.wait_for_function("martd.state === 'open'", timeout=15_000)
    assert page.evaluate("martd.transport") == "websocket"
    etag = push(server, "far", "across origins")["etag"]
    assert got(page, 1) == [["far", "across origins", etag]]
    assert page.evaluate("sessionStorage.getItem('martd.transport')") == "websocket"


def test_client_falls_back_when_a_stream_stalls(context: Any, server: SiteServer) -> None:
    # A buffering proxy: the EventSource request is never answered.
    context.route(re.compile(r"/sub/.*transport=sse"), lambda route: None)
    page = open_page(context, server)
    page.evaluate("martd.config({stall: 700}); listen('slow')")
    page.wait_for_function("martd.state === 'open'", timeout=15_000)
    assert page.evaluate("martd.transport") == "websocket"
    etag = push(server, "slow", "got through")["etag"]
    assert got(page, 1) == [["slow", "got through", etag]]

    # The session remembers it: the next page of this tab starts with WebSocket.
    sockets: list[str] = []
    page.on("websocket", lambda ws: sockets.append(ws.url))
    page.reload()
    page.evaluate("listen('slow')")
    page.wait_for_function("martd.state === 'open'")
    assert page.evaluate("martd.transport") == "websocket" and len(sockets) == 1


def test_client_keeps_a_quiet_websocket_alive_with_its_own_pings(
    context: Any, serve: Callable[..., SiteServer]
) -> None:
    server = serve(ping=60)  # the server's keep-alives are too rare for this client
    page = open_page(context, server, transport="websocket")
    sockets: list[Any] = []
    pings: list[str] = []

    def opened(ws: Any) -> None:
        sockets.append(ws)
        ws.on("framesent", lambda payload: pings.append(payload))

    page.on("websocket", opened)
    page.evaluate("martd.config({idle: 600}); listen('quiet')")
    connected(server, "websocket")
    page.wait_for_timeout(1500)  # more than twice the idle time, answered by pongs
    assert len(sockets) == 1 and page.evaluate("martd.state") == "open"
    assert pings and all(json.loads(p) == {"type": "ping"} for p in pings)
    etag = push(server, "quiet", "still there")["etag"]
    assert got(page, 1) == [["quiet", "still there", etag]]


def test_client_without_eventsource_websocket_or_xhr_uses_jsonp(
    context: Any, server: SiteServer
) -> None:
    old_browser = "window.EventSource = window.WebSocket = window.XMLHttpRequest = undefined;"
    page = open_page(context, server, before=old_browser)
    page.evaluate("listen('old')")
    connected(server, "jsonp")
    etag = push(server, "old", "still here ✓")["etag"]
    assert got(page, 1) == [["old", "still here ✓", etag]]
    assert page.evaluate("martd.transport") == "jsonp"


def test_client_falls_back_when_a_transport_cannot_even_be_constructed(
    context: Any, server: SiteServer
) -> None:
    throwing = (
        "window.EventSource = undefined;"
        "window.WebSocket = function () { throw new Error('SecurityError'); };"
    )
    page = open_page(context, server, before=throwing)
    page.evaluate("martd.config({retry: 50}); listen('throws')")
    connected(server, "longpoll")
    etag = push(server, "throws", "arrived anyway")["etag"]
    assert got(page, 1) == [["throws", "arrived anyway", etag]]
    assert page.evaluate("martd.transport") == "longpoll"


def test_client_second_subscription_with_an_etag_catches_up_alone(
    context: Any, server: SiteServer
) -> None:
    page = open_page(context, server)
    page.evaluate("listen('log')")
    connected(server)
    etags = [push(server, "log", f"m{i}")["etag"] for i in range(3)]
    got(page, 3)
    page.evaluate(
        "window.late = []; martd.sub('log', function (d, e) { late.push([d, e]); }, "
        + json.dumps(etags[0])
        + ")"
    )
    page.wait_for_function("window.late.length >= 2")
    m3 = push(server, "log", "m3")["etag"]
    page.wait_for_function("window.late.length >= 3")
    settle(page, server, "log")
    assert page.evaluate("window.late") == [
        ["m1", etags[1]],
        ["m2", etags[2]],
        ["m3", m3],
        ["marker", page.evaluate("window.got[4][2]")],
    ]
    assert [m[1] for m in page.evaluate("window.got")] == ["m0", "m1", "m2", "m3", "marker"]


@both_engines
def test_client_loads_as_an_es_module(context: Any, serve: Callable[..., SiteServer]) -> None:
    server = serve(prefix="/martd")
    server.site.pages["/module.html"] = """<!doctype html><meta charset="utf-8">
<script type="module">
  import martd, { sub } from "/martd/client.mjs";
  window.got = [];
  window.url = martd.config().url;
  sub("esm", function (data, etag) { got.push(["esm", data, etag]); });
</script>"""
    page = context.new_page()
    page.goto(server.url + "/module.html")
    page.wait_for_function("window.martd && martd.state === 'open'")
    assert page.evaluate("window.url") == server.url + "/martd"
    answer = httpx.post(f"{server.url}/martd/pub/esm", content=b"as a module", headers=AUTH)
    assert got(page, 1) == [["esm", "as a module", answer.json()["etag"]]]


def test_client_deleted_channel_is_told_and_ends(context: Any, server: SiteServer) -> None:
    push(server, "doomed", "x")
    page = open_page(context, server)
    page.evaluate("listen('doomed'); listen('sync')")
    connected(server)
    assert httpx.delete(f"{server.url}/pub/doomed", headers=AUTH).status_code == 200
    page.wait_for_function("window.events.length >= 1")
    assert page.evaluate("window.events") == [["deleted", "doomed"]]
    page.wait_for_function("martd.channels().join() === 'sync'")
    push(server, "doomed", "new incarnation")
    settle(page, server)
    # no etag: the retained message first
    assert [m[1] for m in page.evaluate("window.got")] == ["x", "marker"]


# --------------------------------------------------------------------- demo


@both_engines
def test_demo_page_subscribes_and_pushes_by_clicking(context: Any, server: SiteServer) -> None:
    page = context.new_page()
    page.goto(f"{server.url}/demo?channel=")
    page.fill("#channel", "demo-room")
    page.click("#subscribe")
    page.wait_for_selector("#status.open")
    assert page.text_content("#transport") == "· sse"
    page.fill("#pub-channel", "demo-room")
    page.fill("#key", "room-key")
    page.fill("#message", "hello from the demo ✓")
    page.click("#push")
    page.wait_for_selector("#messages li.message")
    assert "hello from the demo ✓" in page.text_content("#messages li.message")
    assert "pushed: etag" in page.text_content("#pub-result")

    page.select_option("#transport-choice", "jsonp")
    page.wait_for_function("document.getElementById('transport').textContent === '· jsonp'")
    connected(server, "jsonp")
    page.fill("#message", "second, by JSONP")
    page.click("#push")
    page.wait_for_function("document.querySelectorAll('#messages li.message').length === 2")
    assert "second, by JSONP" in page.text_content("#messages li.message")

    page.fill("#key", "not-the-key")
    page.click("#push")
    page.wait_for_function("/refused/.test(document.getElementById('pub-result').textContent)")

    page.click("#subs li[data-channel='demo-room'] .cancel")
    page.wait_for_selector("#status.idle")


def test_demo_page_shows_a_push_from_a_shell_without_a_click(
    context: Any, server: SiteServer
) -> None:
    page = context.new_page()
    page.goto(f"{server.url}/demo")
    page.wait_for_selector("#status.open")
    push(server, "demo", "pushed with curl")
    page.wait_for_selector("#messages li.message")
    assert "pushed with curl" in page.text_content("#messages li.message")
