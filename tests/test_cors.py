"""CORS: preflights, credentialed requests, streams through the middleware, and a real browser."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from typing import Any

import anyio
import httpx
import pytest

from martd_asgi import create_app
from martd_asgi.tokens import mint_token

from .helpers import ServerThread, require, running, sse

pytestmark = pytest.mark.anyio

SECRET = "cors-secret-" + "c" * 32
FRIEND = "https://friend.example"
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--headless=new",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]


@pytest.fixture
def martd(backend_url: str) -> Iterator[ServerThread]:
    app = create_app(
        backend=backend_url,
        cors_origins=f"{FRIEND},https://other.example",
        private="priv.*",
        secret=SECRET,
        allow="192.0.2.10",
        poll_timeout=2,
    )
    with running(app, proxy_headers=False) as server:
        yield server


def preflight(origin: str, method: str = "POST", headers: str = "content-type") -> dict[str, str]:
    return {
        "origin": origin,
        "access-control-request-method": method,
        "access-control-request-headers": headers,
    }


def vary(answer: httpx.Response) -> list[str]:
    return [v.strip().lower() for v in ",".join(answer.headers.get_list("vary")).split(",")]


async def test_cors_preflight_for_a_listed_origin(martd: ServerThread) -> None:
    async with httpx.AsyncClient(base_url=martd.url) as client:
        answer = await client.options(
            "/pub/room", headers=preflight(FRIEND, "POST", "authorization, content-type")
        )
    assert answer.status_code == 204
    assert answer.headers["access-control-allow-origin"] == FRIEND
    assert answer.headers["access-control-allow-credentials"] == "true"
    methods = {m.strip() for m in answer.headers["access-control-allow-methods"].split(",")}
    assert methods == {"GET", "POST", "DELETE", "OPTIONS"}
    allowed = {h.strip().lower() for h in answer.headers["access-control-allow-headers"].split(",")}
    assert {"authorization", "content-type", "last-event-id", "if-none-match"} <= allowed
    assert int(answer.headers["access-control-max-age"]) > 0
    assert "origin" in vary(answer)


async def test_cors_preflight_refused_for_other_origins_and_methods(martd: ServerThread) -> None:
    async with httpx.AsyncClient(base_url=martd.url) as client:
        stranger = await client.options("/pub/room", headers=preflight("https://evil.example"))
        assert stranger.status_code == 403
        assert "access-control-allow-origin" not in stranger.headers
        assert "origin" in stranger.json()["error"]
        put = await client.options("/pub/room", headers=preflight(FRIEND, "PUT"))
        assert put.status_code == 403
        assert "access-control-allow-origin" not in put.headers


async def test_cors_listed_origin_is_echoed_with_credentials(martd: ServerThread) -> None:
    token = mint_token(SECRET, publish=["user.1.*"])
    async with httpx.AsyncClient(base_url=martd.url) as client:
        pushed = await client.post(
            "/pub/user.1.inbox",
            content="hi",
            headers={"origin": FRIEND, "cookie": f"martd_auth={token}"},
        )
        assert pushed.status_code == 201
        assert pushed.headers["access-control-allow-origin"] == FRIEND
        assert pushed.headers["access-control-allow-credentials"] == "true"
        assert "etag" in pushed.headers["access-control-expose-headers"].lower()
        assert "origin" in vary(pushed)
        polled = await client.get("/sub/user.1.inbox?etag=0", headers={"origin": FRIEND})
        assert polled.headers["access-control-allow-origin"] == FRIEND
        assert polled.headers["etag"].strip('"') == pushed.json()["etag"]


async def test_cors_errors_carry_cors_headers(martd: ServerThread) -> None:
    async with httpx.AsyncClient(base_url=martd.url) as client:
        refused = await client.get("/sub/priv.x", headers={"origin": FRIEND})
    assert refused.status_code == 401
    assert refused.headers["access-control-allow-origin"] == FRIEND


async def test_cors_unlisted_origin_gets_no_cors_headers(martd: ServerThread) -> None:
    async with httpx.AsyncClient(base_url=martd.url) as client:
        answer = await client.get("/healthz", headers={"origin": "https://evil.example"})
        plain = await client.get("/healthz")
    assert answer.status_code == 200
    assert "access-control-allow-origin" not in answer.headers
    assert "access-control-allow-credentials" not in answer.headers
    assert "origin" in vary(answer)
    assert "access-control-allow-origin" not in plain.headers


async def test_cors_star_never_allows_credentials(backend_url: str) -> None:
    app = create_app(backend=backend_url, cors_origins="*")
    with running(app) as server:
        async with httpx.AsyncClient(base_url=server.url) as client:
            simple = await client.get("/healthz", headers={"origin": "https://any.example"})
            pre = await client.options("/sub/x", headers=preflight("https://any.example", "GET"))
    for answer in (simple, pre):
        assert answer.headers["access-control-allow-origin"] == "*"
        assert "access-control-allow-credentials" not in answer.headers
    assert pre.status_code == 204


async def test_cors_star_and_a_list_echo_listed_origins_only(backend_url: str) -> None:
    app = create_app(backend=backend_url, cors_origins=f"*,{FRIEND}")
    with running(app) as server:
        async with httpx.AsyncClient(base_url=server.url) as client:
            friend = await client.get("/healthz", headers={"origin": FRIEND})
            other = await client.get("/healthz", headers={"origin": "https://any.example"})
    assert friend.headers["access-control-allow-origin"] == FRIEND
    assert friend.headers["access-control-allow-credentials"] == "true"
    assert other.headers["access-control-allow-origin"] == "*"
    assert "access-control-allow-credentials" not in other.headers


async def test_cors_off_adds_nothing(backend_url: str) -> None:
    app = create_app(backend=backend_url)
    with running(app) as server:
        async with httpx.AsyncClient(base_url=server.url) as client:
            answer = await client.get("/healthz", headers={"origin": FRIEND})
            pre = await client.options("/pub/x", headers=preflight(FRIEND))
    assert not [h for h in answer.headers if h.startswith("access-control-")]
    assert pre.status_code == 405
    assert not [h for h in pre.headers if h.startswith("access-control-")]


async def test_cors_sse_streams_through(martd: ServerThread) -> None:
    token = mint_token(SECRET, subscribe=["priv.*"])
    headers = {"origin": FRIEND, "cookie": f"martd_auth={token}"}
    async with (
        httpx.AsyncClient(base_url=martd.url, timeout=10) as client,
        sse(client, "/sub/priv.stream", headers=headers) as stream,
    ):
        assert stream.response.headers["access-control-allow-origin"] == FRIEND
        assert stream.response.headers["content-type"].startswith("text/event-stream")
        for n in range(3):
            pushed = await client.post(
                "/pub/priv.stream", content=f"n{n}", headers={"authorization": f"Bearer {SECRET}"}
            )
            assert (await stream.next())["data"] == f"n{n}"
            assert pushed.status_code in (200, 201)


async def test_cors_jsonp_stays_available(martd: ServerThread) -> None:
    async with httpx.AsyncClient(base_url=martd.url) as client:
        await client.post("/pub/open", content="x", headers={"authorization": f"Bearer {SECRET}"})
        answer = await client.get("/sub/open?callback=cb&etag=0")
    assert answer.status_code == 200
    assert answer.text.startswith("cb(")


# ----------------------------------------------------------------- a browser


def site_app(token: str) -> Any:
    """A tiny site on another origin: its page sets the martd_auth cookie, like a login view."""

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        page = b"<!doctype html><title>site</title><p>site"
        cookie = f"martd_auth={token}; Path=/; HttpOnly; SameSite=Lax".encode()
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [
                    (b"content-type", b"text/html"),
                    (b"content-length", str(len(page)).encode()),
                    (b"set-cookie", cookie),
                ],
            }
        )
        await send({"type": "http.response.body", "body": page})

    return app


FETCH_SCRIPT = """
async ({martd, channel, room}) => {
  const out = {};
  const pushed = await fetch(`${martd}/pub/${channel}?size=5`, {
    method: "POST", credentials: "include",
    headers: {"Content-Type": "application/json"}, body: JSON.stringify({hello: "world"}),
  });
  out.push = pushed.status;
  out.pushBody = await pushed.json();
  const polled = await fetch(`${martd}/sub/${channel}?etag=0`, {credentials: "include"});
  out.pollEtag = polled.headers.get("ETag");
  out.poll = await polled.json();
  const other = await fetch(`${martd}/pub/user.8.inbox`, {
    method: "POST", credentials: "include", body: "not mine",
  });
  out.other = other.status;
  const anonymous = await fetch(`${martd}/sub/${room}`, {credentials: "omit"});
  out.anonymous = anonymous.status;
  out.anonymousBody = await anonymous.json();
  return out;
}
"""

EVENTSOURCE_SCRIPT = """
async ({martd, room}) => new Promise((resolve, reject) => {
  const source = new EventSource(`${martd}/sub/${room}`, {withCredentials: true});
  const timer = setTimeout(() => { source.close(); reject(new Error("no event")); }, 8000);
  source.onmessage = (event) => { clearTimeout(timer); source.close(); resolve(event.data); };
})
"""

STRANGER_SCRIPT = """
async (martd) => {
  try { await fetch(`${martd}/healthz`, {credentials: "include"}); return "read"; }
  catch (error) { return "blocked: " + error.name; }
}
"""


async def test_cors_browser_on_another_origin_uses_the_cookie(backend_url: str) -> None:
    try:
        from playwright.async_api import async_playwright
    except ImportError:
        async_playwright = None  # type: ignore[assignment]
    require("browser", async_playwright is not None, "playwright is not installed")
    require("browser", os.path.exists(CHROMIUM), f"{CHROMIUM} is missing")

    token = mint_token(SECRET, publish=["user.7.*"], subscribe=["priv.user.7"], ttl=300)
    server_auth = {"authorization": f"Bearer {SECRET}"}
    with running(site_app(token), lifespan="off") as site:
        app = create_app(
            backend=backend_url,
            cors_origins=site.url,
            private="priv.*",
            secret=SECRET,
            allow="192.0.2.10",  # the browser is on loopback: nobody is a server by address
        )
        with running(app, proxy_headers=False) as martd:
            async with (
                async_playwright() as playwright,
                httpx.AsyncClient(base_url=martd.url, timeout=10) as client,
            ):
                browser = await playwright.chromium.launch(
                    executable_path=CHROMIUM, args=CHROMIUM_ARGS
                )
                try:
                    page = await browser.new_page()
                    martd_headers: list[str] = []
                    page.on(
                        "response",
                        lambda r: (
                            martd_headers.append(json.dumps(r.headers))
                            if r.url.startswith(martd.url)
                            else None
                        ),
                    )
                    await page.goto(f"{site.url}/")
                    names = {"martd": martd.url, "channel": "user.7.inbox", "room": "priv.user.7"}
                    result = await page.evaluate(FETCH_SCRIPT, names)

                    await client.post("/pub/priv.user.7", content="before", headers=server_auth)
                    async with anyio.create_task_group() as tg:

                        async def push_once_subscribed() -> None:
                            async def subscribed() -> bool:
                                info = await client.get("/pub/priv.user.7", headers=server_auth)
                                return bool(info.json()["subscribers"])

                            with anyio.fail_after(8):
                                while not await subscribed():
                                    await anyio.sleep(0.02)
                            await client.post(
                                "/pub/priv.user.7", content="for your eyes", headers=server_auth
                            )

                        tg.start_soon(push_once_subscribed)
                        event = await page.evaluate(EVENTSOURCE_SCRIPT, names)

                    stranger_page = await browser.new_page()
                    await stranger_page.goto(site.url.replace("127.0.0.1", "localhost") + "/")
                    stranger = await stranger_page.evaluate(STRANGER_SCRIPT, martd.url)
                finally:
                    await browser.close()

    assert result["push"] == 201, result
    assert result["pushBody"]["channel"] == "user.7.inbox"
    messages = result["poll"]["channels"]["user.7.inbox"]["messages"]
    assert [m["data"] for m in messages] == ['{"hello":"world"}']
    assert result["pollEtag"] == f'"{result["pushBody"]["etag"]}"', "ETag is exposed"
    assert result["other"] == 403, "the token grants user.7.* only"
    assert result["anonymous"] == 401, "the status of a refusal is readable cross-origin"
    assert "private" in result["anonymousBody"]["error"]
    assert event == "for your eyes"
    assert stranger.startswith("blocked"), stranger
    assert martd_headers and not [h for h in martd_headers if token in h or SECRET in h]


async def test_cors_middleware_leaves_shared_start_messages_alone() -> None:
    from martd_asgi.cors import CORSMiddleware

    start = {"type": "http.response.start", "status": 200, "headers": [(b"x-app", b"1")]}

    async def app(scope: Any, receive: Any, send: Any) -> None:
        await send(start)  # the same dict for every response
        await send({"type": "http.response.body", "body": b""})

    middleware = CORSMiddleware(app, origins=[FRIEND, "https://other.example"])
    sent: list[dict[str, Any]] = []

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    async def receive() -> dict[str, Any]:
        return {"type": "http.disconnect"}

    for origin in (FRIEND, "https://other.example"):
        scope = {"type": "http", "method": "GET", "headers": [(b"origin", origin.encode())]}
        await middleware(scope, receive, send)
    assert start["headers"] == [(b"x-app", b"1")]
    origins = [dict(m["headers"])[b"access-control-allow-origin"] for m in sent[::2]]
    assert origins == [FRIEND.encode(), b"https://other.example"]
