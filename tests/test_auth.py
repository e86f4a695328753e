"""Who may push, read channel info and subscribe, against a real server.

Each server here sets ``MARTD_ALLOW`` to an address the test client does not
have, so that being on loopback makes nobody a server unless a test says so.
uvicorn's own proxy-header handling is off (as ``martd serve`` runs it), so
what is tested is martd's reading of ``X-Forwarded-For`` / ``Forwarded``.
"""

from __future__ import annotations

import base64
import json
import logging
import time
import warnings
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import httpx
import jwt
import pytest

from martd_asgi import create_app
from martd_asgi.tokens import mint_token

from .helpers import ServerThread, sse

pytestmark = pytest.mark.anyio

SECRET = "server-secret-" + "s" * 30
ELSEWHERE = "192.0.2.10"  # TEST-NET-1: never the test client's address
Start = Callable[..., ServerThread]


@pytest.fixture
def start(backend_url: str) -> Iterator[Start]:
    started: list[ServerThread] = []

    def make(*, proxy_headers: bool = False, **settings: Any) -> ServerThread:
        settings.setdefault("backend", backend_url)
        settings.setdefault("allow", ELSEWHERE)
        settings.setdefault("secret", SECRET)
        settings.setdefault("poll_timeout", 2)
        app = create_app(**settings)
        server = ServerThread(app, proxy_headers=proxy_headers).start()
        started.append(server)
        return server

    yield make
    for server in started:
        server.stop()


@pytest.fixture
async def anon(start: Start) -> AsyncIterator[httpx.AsyncClient]:
    server = start(private="priv.*,vault")
    async with httpx.AsyncClient(base_url=server.url, timeout=10) as client:
        yield client


def as_server() -> dict[str, str]:
    return {"authorization": f"Bearer {SECRET}"}


def bearer(token: str) -> dict[str, str]:
    return {"authorization": f"Bearer {token}"}


def b64(data: dict[str, Any]) -> str:
    raw = json.dumps(data, separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def hs512(claims: dict[str, Any]) -> str:
    with warnings.catch_warnings():  # the secret is short for HS512, which is the point
        warnings.simplefilter("ignore", jwt.InsecureKeyLengthWarning)
        return jwt.encode(claims, SECRET, algorithm="HS512")


def forged_tokens(channel: str) -> dict[str, str]:
    claims = {"martd": {"publish": [channel], "subscribe": [channel]}}
    later = int(time.time()) + 600
    return {
        "wrong signature": mint_token("not-the-secret-" + "x" * 30, **claims["martd"]),
        "expired": mint_token(SECRET, exp=int(time.time()) - 60, **claims["martd"]),
        "grant for another channel": mint_token(SECRET, publish=["other.*"], subscribe=["other"]),
        "alg none": f"{b64({'alg': 'none', 'typ': 'JWT'})}.{b64(claims | {'exp': later})}.",
        "alg HS512": hs512(claims | {"exp": later}),
        "garbage": "not-a-token",
    }


# ------------------------------------------------------------ being a server


async def test_auth_allow_list_makes_a_server(start: Start) -> None:
    server = start(allow="127.0.0.1")
    async with httpx.AsyncClient(base_url=server.url) as client:
        assert (await client.post("/pub/a?size=5", content="x")).status_code == 201
        assert (await client.get("/pub/a")).json()["size"] == 5
        assert (await client.get("/stats")).status_code == 200
        assert (await client.delete("/pub/a")).status_code == 200


async def test_auth_not_allowed_is_not_a_server(anon: httpx.AsyncClient) -> None:
    answer = await anon.post("/pub/a", content="x")
    assert answer.status_code == 403
    assert "error" in answer.json()
    assert (await anon.get("/stats")).status_code == 403
    assert (await anon.get("/pub/a")).status_code == 403
    assert (await anon.delete("/pub/a")).status_code == 403


async def test_auth_secret_makes_a_server(anon: httpx.AsyncClient) -> None:
    assert (await anon.post("/pub/a", content="x", headers=as_server())).status_code == 201
    assert (await anon.get("/stats", headers=as_server())).status_code == 200
    assert (await anon.get("/pub/a", headers=as_server())).status_code == 200
    wrong = {"authorization": f"Bearer {SECRET[:-1]}X"}
    assert (await anon.post("/pub/a", content="x", headers=wrong)).status_code == 403
    basic = {"authorization": f"Basic {SECRET}"}
    assert (await anon.post("/pub/a", content="x", headers=basic)).status_code == 403


async def test_auth_token_makes_a_server_for_its_channels(anon: httpx.AsyncClient) -> None:
    token = mint_token(SECRET, publish=["user.42.*"], ttl=60)
    ways: dict[str, tuple[str, dict[str, str]]] = {
        "bearer": ("", bearer(token)),
        "cookie": ("", {"cookie": f"theme=dark; martd_auth={token}"}),
        "query": (f"token={token}", {}),
    }
    for n, (way, (query, headers)) in enumerate(ways.items()):
        channel = f"user.42.{way}"
        extra = f"&{query}" if query else ""
        created = await anon.post(f"/pub/{channel}?size=3{extra}", content=f"m{n}", headers=headers)
        assert created.status_code == 201, (way, created.text)
        changed = await anon.post(f"/pub/{channel}?size=7{extra}", content="2", headers=headers)
        assert changed.status_code == 200, way
        info = await anon.get(f"/pub/{channel}?{query}", headers=headers)
        assert info.status_code == 200 and info.json()["size"] == 7, way
        other = await anon.post(f"/pub/user.43.x?{query}", content="x", headers=headers)
        assert other.status_code == 403, way
        assert (await anon.get(f"/stats?{query}", headers=headers)).status_code == 403, way
        assert (await anon.delete(f"/pub/{channel}?{query}", headers=headers)).status_code == 200


async def test_auth_forged_or_expired_tokens_make_no_server(anon: httpx.AsyncClient) -> None:
    for why, token in forged_tokens("user.42.inbox").items():
        for how in (
            {"headers": bearer(token)},
            {"headers": {"cookie": f"martd_auth={token}"}},
            {"params": {"token": token}},
        ):
            answer = await anon.post("/pub/user.42.inbox", content="x", **how)
            assert answer.status_code == 403, (why, how)
            assert token not in answer.text


async def test_auth_secret_is_not_a_token_and_a_token_is_not_the_secret(
    start: Start,
) -> None:
    server = start(token_secret="token-secret-" + "k" * 30)
    async with httpx.AsyncClient(base_url=server.url) as client:
        signed_with_secret = mint_token(SECRET, publish=["*"])
        answer = await client.post("/pub/a", content="x", headers=bearer(signed_with_secret))
        assert answer.status_code == 403
        good = mint_token("token-secret-" + "k" * 30, publish=["a"])
        assert (await client.post("/pub/a", content="x", headers=bearer(good))).status_code == 201
        assert (await client.get("/stats", headers=as_server())).status_code == 200


async def test_auth_key_holder_pushes_but_does_not_create_or_change(
    anon: httpx.AsyncClient,
) -> None:
    made = await anon.post("/pub/k?key=k3y&size=4", content="first", headers=as_server())
    assert made.status_code == 201
    pushed = await anon.post("/pub/k?key=k3y&size=4", content="by key")
    assert pushed.status_code == 200 and pushed.json()["messages"] == 2
    assert (await anon.post("/pub/k?key=k3y", content="keeps attributes")).status_code == 200
    assert (await anon.get("/pub/k", headers=as_server())).json()["size"] == 4
    assert (await anon.post("/pub/k?key=k3y&size=9", content="x")).status_code == 403
    assert (await anon.post("/pub/k?key=k3y&size=4&one2one=true", content="x")).status_code == 403
    assert (await anon.post("/pub/k?key=wrong&size=4", content="x")).status_code == 403
    assert (await anon.post("/pub/k?size=4", content="x")).status_code == 403
    assert (await anon.post("/pub/new?key=k3y", content="x")).status_code == 403
    assert (await anon.get("/pub/k?key=k3y")).status_code == 403
    assert (await anon.delete("/pub/k?key=k3y")).status_code == 403
    server_without_key = await anon.post("/pub/k?size=4", content="x", headers=as_server())
    assert server_without_key.status_code == 403, "a keyed channel needs its key, from anyone"


# ------------------------------------------------------------ trusted proxies


@pytest.mark.parametrize("uvicorn_reads_them", [False, True])
async def test_auth_spoofed_forwarded_for_from_untrusted_peer_is_ignored(
    start: Start, uvicorn_reads_them: bool
) -> None:
    server = start(allow="10.1.2.3", proxy_headers=uvicorn_reads_them)
    spoofs = [
        {"x-forwarded-for": "10.1.2.3"},
        {"x-forwarded-for": "6.6.6.6, 10.1.2.3"},
        {"forwarded": "for=10.1.2.3"},
        {"x-real-ip": "10.1.2.3"},
    ]
    async with httpx.AsyncClient(base_url=server.url) as client:
        for headers in spoofs:
            assert (await client.get("/stats", headers=headers)).status_code == 403, headers


async def test_auth_trusted_proxy_forwarded_for_is_believed(start: Start) -> None:
    server = start(allow="10.1.2.3", trusted_proxies="127.0.0.1")
    async with httpx.AsyncClient(base_url=server.url) as client:
        for headers in (
            {"x-forwarded-for": "10.1.2.3"},
            {"x-forwarded-for": "203.0.113.9, 10.1.2.3"},
            {"forwarded": 'for="10.1.2.3:4711"'},
        ):
            assert (await client.get("/stats", headers=headers)).status_code == 200, headers
        # the proxy appended the real peer after what the client claimed
        spoofed = {"x-forwarded-for": "10.1.2.3, 203.0.113.9"}
        assert (await client.get("/stats", headers=spoofed)).status_code == 403
        assert (await client.get("/stats")).status_code == 403, "the proxy itself is no server"


@pytest.mark.parametrize("uvicorn_reads_them", [False, True])
async def test_auth_untrusted_peer_next_to_trusted_proxy_is_not_believed(
    start: Start, uvicorn_reads_them: bool
) -> None:
    server = start(allow="10.1.2.3", trusted_proxies="127.0.0.1", proxy_headers=uvicorn_reads_them)
    transport = httpx.AsyncHTTPTransport(local_address="127.0.0.2")
    async with httpx.AsyncClient(base_url=server.url, transport=transport) as client:
        spoofed = {"x-forwarded-for": "10.1.2.3"}
        assert (await client.get("/stats", headers=spoofed)).status_code == 403
        assert (await client.post("/pub/a", content="x", headers=spoofed)).status_code == 403


async def test_auth_loopback_default_allow_list_is_exact(start: Start) -> None:
    server = start(allow="127.0.0.1")
    transport = httpx.AsyncHTTPTransport(local_address="127.0.0.2")
    async with httpx.AsyncClient(base_url=server.url, transport=transport) as client:
        spoofed = {"x-forwarded-for": "127.0.0.1", "forwarded": "for=127.0.0.1"}
        assert (await client.get("/stats", headers=spoofed)).status_code == 403


# ----------------------------------------------------------- private channels


async def test_auth_private_long_poll_needs_a_grant(anon: httpx.AsyncClient) -> None:
    nothing = await anon.get("/sub/priv.room")
    assert nothing.status_code == 401 and "private" in nothing.json()["error"]
    for why, token in forged_tokens("priv.room").items():
        answer = await anon.get("/sub/priv.room", headers=bearer(token))
        expected = 403 if why == "grant for another channel" else 401
        assert answer.status_code == expected, why
        assert token not in answer.text
    other = mint_token(SECRET, subscribe=["priv.other"])
    assert (await anon.get("/sub/priv.room", params={"token": other})).status_code == 403
    assert (await anon.get("/sub/pub.room,vault?timeout=1")).status_code == 401
    await anon.post("/pub/public", content="open", headers=as_server())
    assert (await anon.get("/sub/public?etag=0")).status_code == 200


async def test_auth_private_long_poll_with_grant_gets_messages(anon: httpx.AsyncClient) -> None:
    await anon.post("/pub/priv.room", content="hello", headers=as_server())
    token = mint_token(SECRET, subscribe=["priv.*"])
    for query, headers in (
        ("", bearer(token)),
        ("", {"cookie": f"martd_auth={token}"}),
        (f"&token={token}", {}),
    ):
        answer = await anon.get(f"/sub/priv.room?etag=0{query}", headers=headers)
        assert answer.status_code == 200, headers
        messages = answer.json()["channels"]["priv.room"]["messages"]
        assert [m["data"] for m in messages] == ["hello"]
    server = await anon.get("/sub/priv.room?etag=0", headers=as_server())
    assert server.status_code == 200
    publisher = mint_token(SECRET, publish=["priv.room"])
    assert (await anon.get("/sub/priv.room?etag=0", headers=bearer(publisher))).status_code == 200


async def test_auth_private_valid_token_beats_a_stale_cookie(anon: httpx.AsyncClient) -> None:
    await anon.post("/pub/priv.room", content="x", headers=as_server())
    stale = mint_token(SECRET, subscribe=["priv.*"], exp=int(time.time()) - 60)
    fresh = mint_token(SECRET, subscribe=["priv.*"])
    answer = await anon.get(
        f"/sub/priv.room?etag=0&token={fresh}", headers={"cookie": f"martd_auth={stale}"}
    )
    assert answer.status_code == 200
    two_cookies = {"cookie": f"martd_auth={stale}; martd_auth={fresh}"}
    assert (await anon.get("/sub/priv.room?etag=0", headers=two_cookies)).status_code == 200
    expired = await anon.get("/sub/priv.room", headers={"cookie": f"martd_auth={stale}"})
    assert expired.status_code == 401 and "expired" in expired.json()["error"]


async def test_auth_private_sse_refuses_and_accepts(anon: httpx.AsyncClient) -> None:
    headers = {"accept": "text/event-stream"}
    assert (await anon.get("/sub/priv.live", headers=headers)).status_code == 401
    wrong = mint_token(SECRET, subscribe=["priv.other"])
    refused = await anon.get("/sub/priv.live", params={"token": wrong}, headers=headers)
    assert refused.status_code == 403
    token = mint_token(SECRET, subscribe=["priv.live"])
    async with sse(anon, f"/sub/priv.live?token={token}") as stream:
        pushed = await anon.post("/pub/priv.live", content="via sse", headers=as_server())
        assert (await stream.next())["data"] == "via sse"
        assert pushed.status_code == 201
    async with sse(anon, "/sub/priv.live", headers={"cookie": f"martd_auth={token}"}) as stream:
        await anon.post("/pub/priv.live", content="with cookie", headers=as_server())
        assert (await stream.next())["data"] == "with cookie"


async def test_auth_private_jsonp_refuses_and_accepts(anon: httpx.AsyncClient) -> None:
    answer = await anon.get("/sub/priv.j?callback=cb")
    assert answer.status_code == 200
    assert answer.headers["content-type"].startswith("application/javascript")
    assert answer.text.startswith("cb(") and '"status":401' in answer.text
    wrong = mint_token(SECRET, subscribe=["nope"])
    assert '"status":403' in (await anon.get(f"/sub/priv.j?callback=cb&token={wrong}")).text
    await anon.post("/pub/priv.j", content='{"n":1}', headers=as_server())
    token = mint_token(SECRET, subscribe=["priv.j"])
    granted = await anon.get(f"/sub/priv.j?callback=cb&etag=0&token={token}")
    assert granted.text.startswith("cb(") and granted.text.endswith(");")
    body = json.loads(granted.text[3:-2])
    assert [m["data"] for m in body["channels"]["priv.j"]["messages"]] == ['{"n":1}']


async def test_auth_cookie_is_not_believed_cross_site(start: Start) -> None:
    server = start(private="priv.*", cors_origins="https://friend.example")
    token = mint_token(SECRET, publish=["priv.x"], subscribe=["priv.*"])
    cookie = {"cookie": f"martd_auth={token}"}
    cross = {"sec-fetch-site": "cross-site", "origin": "https://evil.example"}
    friend = {"sec-fetch-site": "cross-site", "origin": "https://friend.example"}
    same = {"sec-fetch-site": "same-site", "origin": "https://www.example"}
    async with httpx.AsyncClient(base_url=server.url) as client:
        assert (
            await client.post("/pub/priv.x", content="x", headers=cookie | cross)
        ).status_code == 403
        assert (await client.get("/sub/priv.x?etag=0", headers=cookie | cross)).status_code == 401
        script = {"sec-fetch-site": "cross-site", "sec-fetch-dest": "script"}
        jsonp = await client.get("/sub/priv.x?callback=steal", headers=cookie | script)
        assert '"status":401' in jsonp.text
        assert (
            await client.post("/pub/priv.x", content="x", headers=cookie | friend)
        ).status_code == 201
        assert (await client.get("/sub/priv.x?etag=0", headers=cookie | same)).status_code == 200
        # an explicit token is the page's own doing, so it counts cross-site
        explicit = await client.get(f"/sub/priv.x?etag=0&token={token}", headers=cross)
        assert explicit.status_code == 200
        # a browser that sends no Sec-Fetch-Site: a foreign Origin says the same
        foreign = {"origin": "https://evil.example"}
        assert (
            await client.post("/pub/priv.x", content="x", headers=cookie | foreign)
        ).status_code == 403
        assert (
            await client.get("/sub/priv.x", headers=cookie | {"origin": "null"})
        ).status_code == 401
        host = server.url.split("://", 1)[1].split("/", 1)[0]
        own = {"origin": f"http://{host}"}
        assert (
            await client.post("/pub/priv.x", content="x", headers=cookie | own)
        ).status_code == 200


async def test_auth_private_websocket_refuses_and_accepts(start: Start) -> None:
    from websockets.asyncio.client import connect
    from websockets.exceptions import InvalidStatus

    server = start(private="priv.*")
    ws_url = server.url.replace("http://", "ws://")
    for extra, status in (
        ({}, 401),
        ({"additional_headers": bearer("garbage")}, 401),
        ({"additional_headers": bearer(mint_token(SECRET, subscribe=["x"]))}, 403),
    ):
        with pytest.raises(InvalidStatus) as refused:
            async with connect(f"{ws_url}/sub/priv.ws", open_timeout=5, **extra):
                pass
        assert refused.value.response.status_code == status
    token = mint_token(SECRET, subscribe=["priv.ws"])
    async with httpx.AsyncClient(base_url=server.url) as client:
        for target in (
            {"uri": f"{ws_url}/sub/priv.ws?token={token}"},
            {
                "uri": f"{ws_url}/sub/priv.ws",
                "additional_headers": {"cookie": f"martd_auth={token}"},
            },
        ):
            async with connect(open_timeout=5, **target) as ws:  # type: ignore[arg-type]
                await client.post("/pub/priv.ws", content="over ws", headers=as_server())
                frame = json.loads(await _recv(ws))
                assert frame["data"] == "over ws" and frame["channel"] == "priv.ws"


async def _recv(ws: Any) -> str:
    import anyio

    with anyio.fail_after(5):
        return str(await ws.recv())


# --------------------------------------------------------------- no leaks


class Capture(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(self.format(record))


async def test_auth_no_secret_in_answers_logs_or_stats(backend_url: str) -> None:
    capture = Capture()
    names = ("uvicorn.access", "uvicorn.error", "martd", "")
    key = "channel-key-" + "q" * 20
    token = mint_token(SECRET, publish=["priv.*"], subscribe=["priv.*"])
    bad_token = mint_token(SECRET, subscribe=["priv.*"], exp=int(time.time()) - 60)
    secrets = [SECRET, key, token, bad_token, token.split(".")[2]]
    app = create_app(backend=backend_url, allow=ELSEWHERE, secret=SECRET, private="priv.*")
    server = ServerThread(app, proxy_headers=False, log_level="info", access_log=True).start()
    for name in names:
        logging.getLogger(name).addHandler(capture)
    seen: list[str] = []

    def record(answer: httpx.Response) -> None:
        seen.append(answer.text)
        seen.extend(f"{k}: {v}" for k, v in answer.headers.items())

    try:
        async with httpx.AsyncClient(base_url=server.url, timeout=10) as client:
            record(await client.post(f"/pub/priv.a?key={key}", content="x", headers=as_server()))
            record(await client.post(f"/pub/priv.a?key={key}&token={token}", content="y"))
            record(await client.post(f"/pub/priv.a?key=wrong-{key}", content="z"))
            record(await client.post("/pub/priv.b", content="x", headers=bearer(token)))
            record(await client.post("/pub/priv.c", content="x", headers=bearer(bad_token)))
            record(await client.get(f"/sub/priv.a?etag=0&token={token}"))
            record(await client.get(f"/sub/priv.a?etag=0&token={bad_token}"))
            record(await client.get(f"/sub/priv.a?callback=cb&token={bad_token}"))
            record(await client.get("/sub/priv.a", headers={"cookie": f"martd_auth={bad_token}"}))
            record(await client.get(f"/pub/priv.a?secret={SECRET}", headers=as_server()))
            record(await client.get("/stats", headers=as_server()))
            record(await client.get(f"/stats?token={token}&auth={SECRET}"))
            record(await client.get(f"/healthz?password={SECRET}"))
        stats = (await _stats(server)).text
    finally:
        for name in names:
            logging.getLogger(name).removeHandler(capture)
        server.stop()
    assert any("/pub/priv.a" in line for line in capture.lines), "the access log was captured"
    everything = "\n".join([*seen, *capture.lines, stats])
    for secret in secrets:
        assert secret not in everything


async def _stats(server: ServerThread) -> httpx.Response:
    async with httpx.AsyncClient(base_url=server.url) as client:
        return await client.get("/stats", headers=as_server())
