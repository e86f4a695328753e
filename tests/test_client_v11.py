"""client.js as contract v1.1 has it, in Chromium and Firefox ESR, against a real server.

Pages only use ``page.goto``, ``page.evaluate`` and ``page.wait_for_function``.
One martd serves the whole module: the page is not a server (``allow=""``),
``vip.*`` is private, and a second origin may use martd with credentials.
Each test uses channel names of its own (per engine, too).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest

from martd_asgi import create_app
from martd_asgi.tokens import mint_token

from .browsers import both_engines, engines_with
from .helpers import ServerThread

pytestmark = pytest.mark.browser

SECRET = "client-v11-secret-of-at-least-32-bytes"
AUTH = {"authorization": f"Bearer {SECRET}"}
TRANSPORTS = ["sse", "websocket", "longpoll", "jsonp"]
EXACT = ["cr\ronly", "crlf\r\nline", "nul\x00byte", "line\u2028sep", "\r\n\r", "😀 ünï\n"]

PAGE = """<!doctype html><html><head><meta charset="utf-8"></head><body>
<script src="%(src)s" %(attrs)s></script>
<script>
  window.got = []; window.events = [];
  window.listen = function (channel, etag) {
    martd.sub(channel, function (data, e, meta) { got.push([channel, data, e, meta]); }, etag);
  };
  ["missed", "kicked", "deleted", "error"].forEach(function (name) {
    martd.on(name, function (d) { events.push([name, d.channel, d.status || null]); });
  });
</script></body></html>"""


class Site:
    """A site's pages, and martd beside them (or not: another origin)."""

    def __init__(self, martd: Any) -> None:
        self.martd = martd
        self.pages: dict[str, str] = {}

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "http" and scope["path"] in self.pages:
            headers = [(b"content-type", b"text/html; charset=utf-8")]
            await send({"type": "http.response.start", "status": 200, "headers": headers})
            await send({"type": "http.response.body", "body": self.pages[scope["path"]].encode()})
        elif self.martd is not None:
            await self.martd(scope, receive, send)
        elif scope["type"] == "http":
            await send({"type": "http.response.start", "status": 404, "headers": []})
            await send({"type": "http.response.body", "body": b""})


class Sites:
    def __init__(self, martd: ServerThread, other: ServerThread) -> None:
        self.martd = martd
        self.other = other
        self.url = martd.url

    def page(self, path: str, *, other: bool = False, **data: str) -> str:
        """Serve a page that loads client.js (data- attributes on its tag); its URL."""
        served = self.other if other else self.martd
        attrs = " ".join(f'data-{k}="{v}"' for k, v in data.items())
        served.app.pages[path] = PAGE % {"src": f"{self.url}/client.js", "attrs": attrs}
        return f"{served.url}{path}"


def stop(server: ServerThread) -> None:
    martd = server.app.martd
    if martd is not None:
        server.server_loop().call_soon_threadsafe(martd.begin_shutdown)
    server.stop()


@pytest.fixture(scope="module")
def sites() -> Iterator[Sites]:
    other = ServerThread(Site(None)).start()
    app = create_app(secret=SECRET, allow="", private="vip.*", cors_origins=other.url)
    martd = ServerThread(Site(app)).start()
    try:
        yield Sites(martd, other)
    finally:
        stop(martd)
        stop(other)


def open_page(context: Any, url: str) -> Any:
    page = context.new_page()
    page.goto(url)
    return page


def push(sites: Sites, channel: str, data: str, **query: str) -> str:
    answer = httpx.post(
        f"{sites.url}/pub/{channel}", content=data.encode(), params=query, headers=AUTH
    )
    assert answer.status_code in (200, 201), answer.text
    return str(answer.json()["etag"])


def got(page: Any, count: int) -> list[list[Any]]:
    page.wait_for_function(f"window.got.length >= {count}")
    return [m[:3] for m in page.evaluate("window.got")]


def until(check: Callable[[], Any], what: str) -> None:
    deadline = time.monotonic() + 10
    while not check():
        assert time.monotonic() < deadline, what
        time.sleep(0.03)


def settle(page: Any, sites: Sites, channel: str) -> list[list[Any]]:
    """Everything pushed to ``channel`` before now has arrived (a marker came after it)."""
    marker = push(sites, channel, "marker")
    page.wait_for_function(f"window.got.some(function (m) {{ return m[2] === '{marker}'; }})")
    return [m[:3] for m in page.evaluate("window.got") if m[2] != marker]


# --------------------------------------------------------- the same bytes


@both_engines
@pytest.mark.parametrize("transport", TRANSPORTS)
def test_payloads_arrive_byte_identical_on_each_transport(
    context: Any, sites: Sites, transport: str, engine: str
) -> None:
    channel = f"exact-{transport}-{engine}"
    etags = [push(sites, channel, data, key="k", size="20", life="600") for data in EXACT]
    page = open_page(context, sites.page(f"/exact-{transport}", transport=transport))
    page.evaluate(f"listen('{channel}', '0')")
    assert got(page, len(EXACT)) == [[channel, d, e] for d, e in zip(EXACT, etags, strict=True)]
    assert page.evaluate("martd.transport") == transport
    # the page pushes with the channel's key and its attributes; a lone surrogate is refused
    answer = page.evaluate(f"martd.pub('{channel}', 'k', 'a\\r\\nb', {{size: 20, life: 600}})")
    assert got(page, len(EXACT) + 1)[-1] == [channel, "a\r\nb", answer["etag"]]
    other = page.evaluate(  # a key holder's attributes must equal the channel's
        f"martd.pub('{channel}', 'k', 'x', {{size: 5}}).catch(function (e) {{ return [e.status, e.message]; }})"
    )
    assert other[0] == 403 and "size" in other[1]
    lone = page.evaluate(
        f"martd.pub('{channel}', 'k', 'a\\ud800b').then(function () {{ return 'accepted'; }},"
        " function (e) { return [e.status, e.message]; })"
    )
    assert lone[0] == 400 and "surrogate" in lone[1]
    # the third argument of the callback: the message's event and type, when it has them
    assert page.evaluate("typeof window.got[0][3]") == "object"


# ------------------------------------------------------- where a page starts


@both_engines
def test_pages_and_tabs_start_where_the_tab_left_the_channel(
    context: Any, sites: Sites, engine: str
) -> None:
    story = f"story-{engine}"
    sent = [push(sites, story, f"m{i}") for i in range(3)]
    first = open_page(context, sites.page("/story-1"))
    first.evaluate(f"listen('{story}')")
    assert got(first, 3) == [[story, f"m{i}", sent[i]] for i in range(3)]

    # the next page of the same tab: nothing again, and what came during the navigation
    first.goto(sites.page("/story-2"))
    sent.append(push(sites, story, "m3"))
    first.evaluate(f"listen('{story}')")
    assert got(first, 1) == [[story, "m3", sent[3]]]
    sent.append(push(sites, story, "m4"))
    assert settle(first, sites, story) == [[story, f"m{i}", sent[i]] for i in (3, 4)]

    # a new tab starts from what the channel retains
    second = open_page(context, sites.page("/story-3"))
    second.evaluate(f"listen('{story}')")
    assert got(second, 6)[:5] == [[story, f"m{i}", sent[i]] for i in range(5)]

    # false: from now on
    third = open_page(context, sites.page("/story-4"))
    third.evaluate(f"listen('{story}', false)")
    third.wait_for_function(f"martd.channels().indexOf('{story}') >= 0")
    later = push(sites, story, "m5")
    assert settle(third, sites, story) == [[story, "m5", later]]


# ------------------------------------------------------ refused channels


# Firefox where the engine's EventSource and WebSocket see the refusal.
@engines_with("transport", TRANSPORTS, ["sse", "websocket"])
def test_refused_channels_end_alone_and_are_told(
    context: Any, sites: Sites, transport: str, engine: str
) -> None:
    healthy, private, solo = (f"{name}-{transport}-{engine}" for name in ("ok", "vip.x", "solo"))
    push(sites, solo, "held", one2one="true")
    held = httpx.get(f"{sites.url}/sub/{solo}", params={"etag": "0", "cid": "someone-else"})
    assert held.status_code == 200  # that client holds the channel from now on
    token = mint_token(SECRET, subscribe=["vip.granted"], ttl=60)
    page = open_page(context, sites.page(f"/refused-{transport}", transport=transport))
    page.evaluate(
        f"martd.config({{token: {json.dumps(token)}}});"
        f"listen('{healthy}', false); listen('{private}'); listen('{solo}')"
    )
    page.wait_for_function("window.events.length >= 2")
    assert sorted(page.evaluate("window.events")) == sorted(
        [["error", private, 403], ["error", solo, 409]]
    )
    page.wait_for_function(f"martd.channels().join() === '{healthy}' && martd.state === 'open'")
    etags = [push(sites, healthy, f"h{i}") for i in range(2)]
    assert got(page, 2) == [[healthy, f"h{i}", etags[i]] for i in range(2)]
    assert page.evaluate("martd.transport") == transport


# ---------------------------------------------------------- credentials


@both_engines
@pytest.mark.parametrize("transport", ["sse", "longpoll"])
def test_credentials_send_the_shared_cookie_across_origins(
    context: Any, sites: Sites, transport: str, engine: str
) -> None:
    channel = f"vip.cookie-{transport}-{engine}"
    token = mint_token(SECRET, subscribe=["vip.cookie-*"], ttl=60)
    page = open_page(context, sites.page(f"/far-{transport}", other=True, transport=transport))
    # cookies are per host, not per port: the other origin's page sets martd's cookie
    page.evaluate(f"document.cookie = 'martd_auth={token}; path=/; SameSite=Lax'")
    page.evaluate(f"listen('{channel}')")
    page.wait_for_function("window.events.length >= 1")
    assert page.evaluate("window.events") == [["error", channel, 401]]  # no cookie sent

    page.evaluate(f"martd.config({{credentials: true}}); listen('{channel}')")
    page.wait_for_function(f"martd.channels().join() === '{channel}' && martd.state === 'open'")
    etag = push(sites, channel, "with the cookie")
    assert got(page, 1) == [[channel, "with the cookie", etag]]
    assert page.evaluate("martd.transport") == transport


@both_engines
def test_a_channel_refused_for_another_tab_ends_there_alone(
    context: Any, sites: Sites, engine: str
) -> None:
    ok, vip = f"tabs-ok-{engine}", f"vip.tabs-{engine}"
    leader = open_page(context, sites.page("/tabs-1"))
    leader.evaluate(f"listen('{ok}', false)")
    leader.wait_for_function("martd.state === 'open'")
    other = open_page(context, sites.page("/tabs-2"))
    other.evaluate(f"listen('{vip}')")  # no grant: 401, through the leader's connection
    other.wait_for_function("window.events.length >= 1")
    assert other.evaluate("window.events") == [["error", vip, 401]]
    leader.wait_for_function(f"martd.channels().join() === '{ok}' && martd.state === 'open'")
    etag = push(sites, ok, "still here")
    assert got(leader, 1) == [[ok, "still here", etag]]
    assert leader.evaluate("window.events") == []
    # the tabs share the leader's one stream (other tests' pages may take a moment to go)
    until(
        lambda: httpx.get(f"{sites.url}/stats", headers=AUTH).json()["connections"] == {"sse": 1},
        "one connection for both tabs",
    )


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_callback_gets_the_event_and_type_on_each_transport(
    context: Any, sites: Sites, transport: str
) -> None:
    channel = f"meta-{transport}"
    named = httpx.post(
        f"{sites.url}/pub/{channel}",
        content=b'{"n": 1}',
        params={"event": "chat"},
        headers=AUTH | {"content-type": "application/json"},
    ).json()["etag"]
    plain = push(sites, channel, "plain")
    page = open_page(context, sites.page(f"/meta-{transport}", transport=transport))
    page.evaluate(f"listen('{channel}')")
    assert got(page, 2) == [[channel, '{"n": 1}', named], [channel, "plain", plain]]
    metas = page.evaluate("window.got.map(function (m) { return JSON.stringify(m[3]); })")
    assert metas == ['{"event":"chat","type":"application/json"}', "{}"]
