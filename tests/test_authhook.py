"""The site's auth hook (MARTD_AUTH_URL), with a real Starlette site on loopback as the hook.

The site knows sessions by a ``session`` cookie, as a site with a login does,
and counts every call martd makes to it. martd allows no address as a server
(``MARTD_ALLOW`` is elsewhere), so only the hook's grants admit anyone.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import threading
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, RedirectResponse, Response
from starlette.routing import Route

from martd_asgi import create_app
from martd_asgi.authhook import MAX_TTL, parse_answer
from martd_asgi.tokens import mint_token

from .helpers import ServerThread, free_socket, running, sse, wait_for

pytestmark = pytest.mark.anyio

SECRET = "server-secret-" + "s" * 30
ELSEWHERE = "192.0.2.10"
SESSIONS = {
    "s-alice-7f3a9c": {
        "user": "alice",
        "subscribe": ["user:alice", "room.*"],
        "publish": ["user:alice"],
    },
    "s-bob-1c2d3e": {"user": "bob", "subscribe": ["user:bob"], "publish": []},
}
ALICE = {"cookie": "theme=dark; session=s-alice-7f3a9c"}
BOB = {"cookie": "session=s-bob-1c2d3e"}
AS_SERVER = {"authorization": f"Bearer {SECRET}"}


class Site:
    """A site with a login: ``POST /auth`` answers martd's questions. ``mode``
    makes it misbehave: ``slow``, ``500``, ``garbage``, ``malformed``, ``redirect``."""

    def __init__(self) -> None:
        self.calls: list[dict[str, Any]] = []
        self.mode = "ok"
        self.ttl: float | None = None
        self.held = threading.Event()  # set: answers wait until it is cleared
        self.app = Starlette(routes=[Route("/auth", self.auth, methods=["POST"])])

    async def auth(self, request: Request) -> Response:
        self.calls.append(
            {
                "cookie": request.headers.get("cookie"),
                "authorization": request.headers.get("authorization"),
                "body": await request.json(),
            }
        )
        deadline = time.monotonic() + 5
        while self.held.is_set() and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        if self.mode == "slow":
            await asyncio.sleep(2.5)  # past martd's auth_timeout
        elif self.mode == "500":
            return PlainTextResponse("boom", status_code=500)
        elif self.mode == "garbage":
            return PlainTextResponse("<html>not json</html>")
        elif self.mode == "malformed":
            return JSONResponse({"subscribe": "user:alice"})
        elif self.mode == "redirect":
            return RedirectResponse("/login", status_code=302)
        session = SESSIONS.get(request.cookies.get("session", ""))
        if request.cookies.get("session") == "s-banned":
            return JSONResponse({"error": "banned"}, status_code=403)
        if session is None:
            return JSONResponse({"error": "log in"}, status_code=401)
        answer = dict(session)
        if self.ttl is not None:
            answer["ttl"] = self.ttl
        return JSONResponse(answer)


@pytest.fixture
def site() -> Iterator[tuple[Site, ServerThread]]:
    hook = Site()
    with running(hook.app) as server:
        yield hook, server


@contextlib.contextmanager
def martd(url: str, **settings: Any) -> Iterator[ServerThread]:
    settings = {
        "backend": "memory",
        "allow": ELSEWHERE,
        "secret": SECRET,
        "private": "user:*,room.*",
        "poll_timeout": 2,
        "auth_url": url,
        "auth_timeout": 1.0,
    } | settings
    with running(create_app(**settings), proxy_headers=False) as server:
        yield server


@contextlib.asynccontextmanager
async def hooked(
    site: tuple[Site, ServerThread], **settings: Any
) -> AsyncIterator[tuple[Site, httpx.AsyncClient, ServerThread]]:
    hook, server = site
    with martd(server.url + "/auth", **settings) as m:
        async with httpx.AsyncClient(base_url=m.url, timeout=10) as client:
            for channel in (
                "user:alice",
                "user:bob",
                "user:carol",
                "room.1",
            ):  # polls from etag 0 answer at once
                await client.post(f"/pub/{channel}", content="x", headers=AS_SERVER)
            yield hook, client, m


def ws_url(server: ServerThread, path: str) -> str:
    return server.url.replace("http://", "ws://") + path


async def ws_status(server: ServerThread, path: str, headers: dict[str, str]) -> int:
    """101 when the WebSocket opened, else the status it was refused with."""
    from websockets.asyncio.client import connect
    from websockets.exceptions import InvalidStatus

    try:
        async with connect(ws_url(server, path), additional_headers=headers, open_timeout=5):
            return 101
    except InvalidStatus as refused:
        body = json.loads(refused.response.body or b"{}")
        assert "error" in body
        return int(refused.response.status_code)


async def statuses(
    client: httpx.AsyncClient, server: ServerThread, channel: str, headers: dict[str, str]
) -> dict[str, int]:
    """The status every transport answers a subscription to ``channel`` with."""
    found = {}
    poll = await client.get(f"/sub/{channel}", params={"etag": "0"}, headers=headers)
    found["longpoll"] = poll.status_code
    async with client.stream(
        "GET", f"/sub/{channel}", headers={"accept": "text/event-stream"} | headers
    ) as stream:
        found["sse"] = stream.status_code
    script = await client.get(
        f"/sub/{channel}", params={"callback": "cb", "etag": "0"}, headers=headers
    )
    assert script.status_code == 200 and script.text.startswith("cb(")
    body = json.loads(script.text[3:-2])
    found["jsonp"] = int(body.get("status", 200))
    found["websocket"] = await ws_status(server, f"/sub/{channel}", headers)
    return found


OPEN = {"longpoll": 200, "sse": 200, "jsonp": 200, "websocket": 101}


def every(status: int) -> dict[str, int]:
    return dict.fromkeys(OPEN, status)


# ------------------------------------------------------------------ grants


async def test_authhook_grants_a_logged_in_user_on_every_transport(
    site: tuple[Site, ServerThread],
) -> None:
    async with hooked(site) as (hook, client, server):
        assert await statuses(client, server, "user:alice", ALICE) == OPEN
        # The browser's cookie reached the site as it was sent; the body names the channels.
        assert hook.calls[0]["cookie"] == ALICE["cookie"]
        assert hook.calls[0]["body"] == {"channels": ["user:alice"], "cid": None}
        poll = await client.get(
            "/sub/user:alice", params={"etag": "0", "cid": "page-1"}, headers=ALICE
        )
        assert poll.status_code == 200
        # Public channels never ask the site.
        before = len(hook.calls)
        assert (await client.get("/sub/news", params={"etag": "0"})).status_code == 200
        assert len(hook.calls) == before


async def test_authhook_refusals_are_passed_on_on_every_transport(
    site: tuple[Site, ServerThread],
) -> None:
    async with hooked(site) as (_hook, client, server):
        assert await statuses(client, server, "user:alice", {}) == every(401)
        assert await statuses(
            client, server, "user:alice", {"cookie": "session=s-banned"}
        ) == every(403)
        # Granted by the site, but not this channel: martd refuses it.
        assert await statuses(client, server, "user:bob", ALICE) == every(403)
        refused = await client.get("/sub/user:bob", headers=ALICE)
        assert refused.json()["channel"] == "user:bob" and "user:bob" in refused.json()["error"]


async def test_authhook_multi_channel_needs_every_private_channel_granted(
    site: tuple[Site, ServerThread],
) -> None:
    async with hooked(site) as (hook, client, server):
        pushed = await client.post("/pub/room.1", content="hello", headers=AS_SERVER)
        answer = await client.get(
            "/sub/news,user:alice,room.1", params={"etag": ",,0"}, headers=ALICE
        )
        assert answer.status_code == 200
        assert answer.json()["channels"]["room.1"]["messages"][-1:] == [
            {"etag": pushed.json()["etag"], "data": "hello"}
        ]
        assert hook.calls[-1]["body"]["channels"] == ["user:alice", "room.1"]  # the private ones
        mixed = await client.get("/sub/user:alice,user:bob", headers=ALICE)
        assert mixed.status_code == 403 and mixed.json()["channel"] == "user:bob"
        assert await ws_status(server, "/sub/room.2,user:alice", ALICE) == 101
        assert await ws_status(server, "/sub/room.2,user:bob", ALICE) == 403


async def test_authhook_valid_token_decides_without_asking(site: tuple[Site, ServerThread]) -> None:
    async with hooked(site) as (hook, client, _):
        token = mint_token(SECRET, subscribe=["user:carol"])
        headers = {"authorization": f"Bearer {token}"}
        assert (
            await client.get("/sub/user:carol", params={"etag": "0"}, headers=headers)
        ).status_code == 200
        assert (await client.get("/sub/user:alice", headers=headers | ALICE)).status_code == 403
        assert hook.calls == []
        # An invalid token is no token: the site is asked, and gets the header as sent.
        stale = {"authorization": "Bearer not-a-token"}
        assert (await client.get("/sub/user:alice", headers=stale)).status_code == 401
        assert hook.calls[-1]["authorization"] == "Bearer not-a-token"


async def test_authhook_user_is_carried_by_the_subscription(
    site: tuple[Site, ServerThread],
) -> None:
    """The user the hook (or a token's ``sub``) names is the subscription's: presence says it."""
    from websockets.asyncio.client import connect

    _hook, server = site
    app = create_app(
        backend="memory",
        allow=ELSEWHERE,
        secret=SECRET,
        private="user:*",
        auth_url=server.url + "/auth",
    )
    token = mint_token(SECRET, subscribe=["user:*"], sub="user-42")
    opened = [
        ("user:alice", ALICE),
        ("news", {}),
        ("user:carol", {"authorization": f"Bearer {token}"}),
    ]
    users: list[Any] = []
    auth = {"authorization": f"Bearer {SECRET}"}
    with running(app, proxy_headers=False) as m:
        async with httpx.AsyncClient(base_url=m.url, headers=auth, timeout=5) as client:
            for channel, _ in opened:  # channels that keep presence
                pushed = await client.post(f"/pub/{channel}?presence=true", content="x")
                assert pushed.is_success, pushed.text
            async with contextlib.AsyncExitStack() as stack:
                for channel, headers in opened:
                    await stack.enter_async_context(
                        connect(ws_url(m, f"/sub/{channel}"), additional_headers=headers)
                    )
                for channel, _ in opened:
                    answer = await client.get(f"/pub/{channel}", params={"presence": "1"})
                    assert answer.status_code == 200, answer.text
                    users += [found["user"] for found in answer.json()["clients"]]
    assert users == ["alice", None, "user-42"]


async def test_authhook_cross_site_request_does_not_pass_the_cookie(
    site: tuple[Site, ServerThread],
) -> None:
    async with hooked(site) as (hook, _client, server):
        other = {"origin": "https://evil.example", "sec-fetch-site": "cross-site"}
        assert await ws_status(server, "/sub/user:alice", ALICE | other) == 401
        assert hook.calls[-1]["cookie"] is None
        assert (
            await ws_status(server, "/sub/user:alice", ALICE | {"sec-fetch-site": "same-origin"})
            == 101
        )


# ---------------------------------------------------------------- failures


@pytest.mark.parametrize(
    ("mode", "reason"),
    [
        ("slow", "no answer within 0.5 s"),
        ("500", "answered 500"),
        ("garbage", "malformed answer (not JSON)"),
        ("malformed", "malformed answer (subscribe must be a list of channel patterns)"),
        ("redirect", "answered 302"),
    ],
)
async def test_authhook_failing_site_gives_503_never_access(
    site: tuple[Site, ServerThread], mode: str, reason: str
) -> None:
    async with hooked(site, auth_timeout=0.5) as (hook, client, server):
        hook.mode = mode
        assert await statuses(client, server, "user:alice", ALICE) == every(503)
        answer = await client.get("/sub/user:alice", headers=ALICE)
        assert answer.status_code == 503
        assert reason in answer.json()["error"]
        assert "s-alice" not in answer.text
        # A failure is not remembered: once the site answers again, so does martd.
        hook.mode = "ok"
        assert (
            await client.get("/sub/user:alice", params={"etag": "0"}, headers=ALICE)
        ).status_code == 200


async def test_authhook_unreachable_site_gives_503(site: tuple[Site, ServerThread]) -> None:
    closed = free_socket()  # bound, never listening: connections are refused
    port = closed.getsockname()[1]
    try:
        with martd(f"http://127.0.0.1:{port}/auth") as server:
            async with httpx.AsyncClient(base_url=server.url, timeout=10) as client:
                assert await statuses(client, server, "user:alice", ALICE) == every(503)
                answer = await client.get("/sub/user:alice", headers=ALICE)
                assert "cannot be reached" in answer.json()["error"]
                assert answer.headers["retry-after"] == "2"
    finally:
        closed.close()


# ------------------------------------------------------------------- cache


async def test_authhook_one_call_for_100_subscriptions_with_the_same_cookie(
    site: tuple[Site, ServerThread],
) -> None:
    # the held answer must outlast 100 requests arriving on a busy machine
    async with hooked(site, poll_timeout=1, auth_timeout=10.0) as (hook, client, server):
        await client.post("/pub/room.2", content="x", headers=AS_SERVER)

        async def subscribe(headers: dict[str, str], channel: str = "user:alice") -> int:
            answer = await client.get(
                f"/sub/{channel}", params={"timeout": "1", "etag": "0"}, headers=headers
            )
            return answer.status_code

        # 100 one after the other: one request to the site, then its answer is kept.
        assert [await subscribe(ALICE) for _ in range(100)] == [200] * 100
        assert len(hook.calls) == 1
        # 100 at once with a new session: one request, the others wait for its answer.
        carol = {"cookie": "session=s-alice-7f3a9c; tab=2"}
        hook.held.set()
        crowd = asyncio.gather(*(subscribe(carol) for _ in range(100)))
        await wait_for(lambda: server.app.hook.counters["joined"] == 99, timeout=10.0)
        hook.held.clear()
        assert await crowd == [200] * 100
        assert len(hook.calls) == 2
        # ... and the grants cover any channel they name.
        for channel in ("user:alice", "room.1", "room.2"):
            assert await subscribe(ALICE, channel) == 200
        assert await subscribe(ALICE, "user:bob") == 403
        assert len(hook.calls) == 2
        # Other credentials are other answers.
        assert await subscribe(BOB, "user:bob") == 200
        assert len(hook.calls) == 3
        # A refusal is kept a few seconds, for the channels it was about.
        assert [await subscribe({}) for _ in range(5)] == [401] * 5
        assert len(hook.calls) == 4
        stats = (await client.get("/stats", headers=AS_SERVER)).json()["auth_hook"]
        assert stats["asked"] == 4 and stats["granted"] == 3 and stats["refused"] == 1
        assert stats["cached"] == 99 + 4 + 4 and stats["joined"] == 99


async def test_authhook_ttl_zero_is_asked_every_time(site: tuple[Site, ServerThread]) -> None:
    async with hooked(site) as (hook, client, _):
        hook.ttl = 0
        for _ in range(3):
            answer = await client.get("/sub/user:alice", params={"etag": "0"}, headers=ALICE)
            assert answer.status_code == 200
        assert len(hook.calls) == 3


async def test_authhook_answer_is_kept_for_its_ttl(site: tuple[Site, ServerThread]) -> None:
    async with hooked(site) as (hook, client, _):
        hook.ttl = 1
        started = time.monotonic()
        while len(hook.calls) < 2:
            answer = await client.get("/sub/user:alice", params={"etag": "0"}, headers=ALICE)
            assert answer.status_code == 200
            assert time.monotonic() - started < 5, "the answer was kept past its ttl"
            await asyncio.sleep(0.05)
        assert time.monotonic() - started >= 1


async def test_authhook_cache_is_bounded(site: tuple[Site, ServerThread]) -> None:
    from martd_asgi.authhook import AuthHook

    hook, server = site
    asker = AuthHook(server.url + "/auth", timeout=2, cache_size=2)
    try:
        for cookie in (
            "session=s-alice-7f3a9c",
            "session=s-bob-1c2d3e",
            "session=s-alice-7f3a9c; x=1",
        ):
            await asker.grants(cookie, "", ["user:alice"], None)
        assert len(hook.calls) == 3 and len(asker._grants) == 2
        await asker.grants("session=s-bob-1c2d3e", "", ["user:bob"], None)  # still kept
        assert len(hook.calls) == 3
        await asker.grants("session=s-alice-7f3a9c", "", ["user:alice"], None)  # the oldest went
        assert len(hook.calls) == 4
    finally:
        await asker.aclose()


def test_authhook_answer_is_validated_and_ttl_bounded() -> None:
    grants, ttl = parse_answer(b'{"subscribe": ["a.*"], "user": 7, "ttl": 999999}')
    assert grants.may_subscribe("a.b") and not grants.may_publish("a.b") and grants.user == 7
    assert ttl == MAX_TTL
    assert parse_answer(b"{}")[1] == 60
    for bad in (b"[]", b'{"ttl": -1}', b'{"ttl": "60"}', b'{"user": {}}', b'{"publish": ["a b"]}'):
        with pytest.raises(ValueError):
            parse_answer(bad)


# ------------------------------------------------------------------ pushes


async def test_authhook_grants_let_a_browser_push(site: tuple[Site, ServerThread]) -> None:
    async with hooked(site) as (hook, client, _):
        async with sse(client, "/sub/user:alice", ALICE) as stream:
            pushed = await client.post(
                "/pub/user:alice", content="from alice's page", headers=ALICE
            )
            assert pushed.status_code == 200, pushed.text
            assert (await stream.next())["data"] == "from alice's page"
        assert (await client.post("/pub/user:bob", content="x", headers=ALICE)).status_code == 403
        assert (await client.post("/pub/user:bob", content="x", headers=BOB)).status_code == 403
        assert (await client.post("/pub/user:alice", content="x")).status_code == 403
        assert len(hook.calls) == 2  # alice once (cached), bob once; nobody without credentials


async def test_authhook_grants_let_a_browser_push_over_its_websocket(
    site: tuple[Site, ServerThread],
) -> None:
    from websockets.asyncio.client import connect

    async with hooked(site) as (_, client, server):
        async with connect(ws_url(server, "/sub/user:alice"), additional_headers=ALICE) as ws:

            async def frame_of(kind: str) -> dict[str, Any]:
                async with asyncio.timeout(5):
                    while True:
                        frame = json.loads(await ws.recv())
                        if frame.get("type") == kind:
                            return dict(frame)

            await ws.send(
                json.dumps({"type": "pub", "channel": "user:alice", "data": "mine", "id": 1})
            )
            assert (await frame_of("ack"))["id"] == 1
            await ws.send(json.dumps({"type": "pub", "channel": "user:bob", "data": "no", "id": 2}))
            refused = await frame_of("error")
            assert refused["id"] == 2 and refused["status"] == 403
        assert (await client.get("/pub/user:alice", headers=AS_SERVER)).json()["messages"] == 2


async def test_authhook_failure_leaves_a_key_holder_push_alone(
    site: tuple[Site, ServerThread],
) -> None:
    async with hooked(site) as (hook, client, _):
        created = await client.post("/pub/room.k?key=room-key-123", content="a", headers=AS_SERVER)
        assert created.status_code == 201
        hook.mode = "500"
        with_key = await client.post("/pub/room.k?key=room-key-123", content="b", headers=BOB)
        assert with_key.status_code == 200, with_key.text
        without = await client.post("/pub/room.k", content="c", headers=BOB)
        assert without.status_code == 503


# -------------------------------------------------- no credentials anywhere


class Capture(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(self.format(record))


async def test_authhook_credentials_never_in_logs_metrics_or_answers(
    site: tuple[Site, ServerThread],
) -> None:
    hook, site_server = site
    capture = Capture()
    names = ("uvicorn.access", "uvicorn.error", "martd", "")
    for name in names:
        logging.getLogger(name).addHandler(capture)
    seen: list[str] = []
    try:
        app = create_app(
            backend="memory", allow=ELSEWHERE, secret=SECRET, private="user:*",
            auth_url=site_server.url + "/auth",
        )  # fmt: skip
        with running(app, proxy_headers=False, log_level="info", access_log=True) as server:
            async with httpx.AsyncClient(base_url=server.url, timeout=10) as client:
                await client.post("/pub/user:bob", content="x", headers=AS_SERVER)
                hook.ttl = 0  # every subscription asks the site
                for mode in ("ok", "500", "garbage"):
                    hook.mode = mode
                    for headers in (ALICE, BOB, {"authorization": "Bearer site-token-9q8w7e"}):
                        answer = await client.get(
                            "/sub/user:bob", params={"etag": "0"}, headers=headers
                        )
                        seen.append(answer.text + str(answer.headers))
                seen.append((await client.get("/metrics", headers=AS_SERVER)).text)
                seen.append((await client.get("/stats", headers=AS_SERVER)).text)
    finally:
        for name in names:
            logging.getLogger(name).removeHandler(capture)
    assert any("auth hook" in line for line in capture.lines), "the failures were logged"
    everything = "\n".join([*seen, *capture.lines])
    assert 'martd_auth_hook_total{outcome="asked"}' in everything
    for secret in ("s-alice-7f3a9c", "s-bob-1c2d3e", "site-token-9q8w7e", "theme=dark"):
        assert secret not in everything


# ---------------------------------------------------- deployments


async def test_authhook_in_martd_serve_the_upstream_site_is_the_hook(
    site: tuple[Site, ServerThread], tmp_path: Any
) -> None:
    from .serving import martd_serve

    hook, upstream = site
    env = {"MARTD_AUTH_URL": "/auth", "MARTD_PRIVATE": "user:*", "MARTD_ALLOW": ELSEWHERE}
    with martd_serve("--upstream", upstream.url, tmp=tmp_path, **env) as served:
        async with httpx.AsyncClient(timeout=10) as client:
            async with sse(client, f"{served.url}/sub/user:alice", ALICE):
                assert hook.calls[-1]["cookie"] == ALICE["cookie"]
            refused = await client.get(f"{served.url}/sub/user:alice")
            assert refused.status_code == 401
    assert "s-alice" not in served.stderr()


def test_authhook_path_without_upstream_is_refused_by_martd_serve(tmp_path: Any) -> None:
    from .serving import run_martd

    done = run_martd("serve", "--port", "1", MARTD_AUTH_URL="/auth")
    assert done.returncode == 2
    assert (
        done.stderr.count("\n") == 1
        and "MARTD_AUTH_URL" in done.stderr
        and "--upstream" in done.stderr
    )
    with pytest.raises(ValueError, match="MARTD_AUTH_URL"):
        create_app(auth_url="/auth")
    with pytest.raises(ValueError, match="MARTD_AUTH_URL"):
        create_app(auth_url="ftp://site/auth")


async def test_authhook_behind_nginx_gets_the_browsers_cookie(
    site: tuple[Site, ServerThread], tmp_path: Any
) -> None:
    from .test_nginx import nginx_in_front

    hook, upstream = site
    app = create_app(
        backend="memory", allow=ELSEWHERE, trusted_proxies="127.0.0.1", private="user:*",
        auth_url=upstream.url + "/auth",
    )  # fmt: skip
    with nginx_in_front(tmp_path, app, proxy_headers=False) as stack:
        async with stack.browser() as browser:
            async with sse(browser, "/martd/sub/user:alice", ALICE) as stream:
                assert hook.calls[-1]["cookie"] == ALICE["cookie"]
                pushed = await browser.post(
                    "/martd/pub/user:alice", content="via nginx", headers=ALICE
                )
                assert pushed.status_code == 201, pushed.text
                assert (await stream.next())["data"] == "via nginx"
            assert (await browser.get("/martd/sub/user:alice")).status_code == 401
            assert (await browser.get("/martd/sub/user:bob", headers=ALICE)).status_code == 403


async def test_authhook_client_is_closed_with_the_app(site: tuple[Site, ServerThread]) -> None:
    _hook, server = site
    app = create_app(backend="memory", private="user:*", auth_url=server.url + "/auth")
    async with app.lifespan():
        assert app.hook is not None and app.hook._client is not None
        client = app.hook._client
    assert client.is_closed and app.hook._client is None
