"""Presence: join/leave events over SSE and WebSocket, the hold, the listing; on both backends."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest
from websockets.asyncio.client import connect

from martd_asgi import AsyncClient, create_app
from martd_asgi.tokens import mint_token

from .helpers import SSE, ServerThread, frame, running, sse
from .serving import run_martd

pytestmark = pytest.mark.anyio

SECRET = "presence-test-secret-" + "x" * 24

Make = Callable[..., ServerThread]


@pytest.fixture
def make(backend_url: str) -> Iterator[Make]:
    """A real uvicorn serving martd on this backend, with these settings."""
    stack = contextlib.ExitStack()

    def start(**settings: Any) -> ServerThread:
        settings = {"backend": backend_url, "secret": SECRET} | settings
        server: ServerThread = stack.enter_context(running(create_app(**settings)))
        return server

    with stack:
        yield start


async def create(client: httpx.AsyncClient, channel: str, **query: str) -> None:
    answer = await client.post(f"/pub/{channel}", params={"presence": "true", **query})
    assert answer.status_code in (200, 201), answer.text


async def push(client: httpx.AsyncClient, channel: str, data: str) -> None:
    # every push carries every attribute: presence stays on only when it is given again
    answer = await client.post(f"/pub/{channel}", content=data, params={"presence": "1"})
    assert answer.status_code == 200, answer.text


async def control(stream: SSE, timeout: float = 5.0) -> dict[str, Any]:
    event = await stream.next(timeout)
    assert event.get("event") == "martd", event
    body: dict[str, Any] = json.loads(event["data"])
    return body




def ws_url(server: ServerThread, path: str) -> str:
    return server.url.replace("http://", "ws://") + path


def token(user: str, channel: str = "room") -> str:
    return mint_token(SECRET, subscribe=[channel], sub=user)


async def test_presence_join_and_leave_over_sse(make: Make) -> None:
    server = make(hold=0.3)
    async with httpx.AsyncClient(base_url=server.url, timeout=10) as client:
        await create(client, "room")
        async with sse(client, "/sub/room?cid=watcher") as watcher:
            alice = {"authorization": f"Bearer {token('alice')}"}
            async with sse(client, "/sub/room?cid=a1", alice):
                assert await control(watcher) == {
                    "type": "join",
                    "channel": "room",
                    "cid": "a1",
                    "user": "alice",
                }
            started = time.monotonic()
            assert await control(watcher) == {
                "type": "leave",
                "channel": "room",
                "cid": "a1",
                "user": "alice",
            }
            assert time.monotonic() - started >= 0.25  # after the hold, not before
            # a subscriber without a token has no user
            async with sse(client, "/sub/room?cid=b2"):
                assert (await control(watcher))["user"] is None


async def test_presence_join_and_leave_over_websocket(make: Make) -> None:
    server = make(hold=0.3)
    async with httpx.AsyncClient(base_url=server.url, timeout=10) as client:
        await create(client, "room")
        async with connect(ws_url(server, "/sub/room?cid=watcher")) as watcher:
            url = ws_url(server, f"/sub/room?cid=bob-1&token={token('bob')}")
            async with connect(url):
                assert await frame(watcher) == {
                    "type": "join",
                    "channel": "room",
                    "cid": "bob-1",
                    "user": "bob",
                }
                listed = await client.get("/pub/room", params={"presence": "1"})
                assert {"cid": "bob-1", "user": "bob", "transport": "websocket"} in listed.json()[
                    "clients"
                ]
            assert (await frame(watcher))["type"] == "leave"
            # the watcher is still subscribed: control events did not close it; and a
            # push over the socket keeps presence on when it says so
            pub = {"type": "pub", "channel": "room", "data": "still here", "presence": True}
            await watcher.send(json.dumps(pub | {"id": 1}))
            assert (await frame(watcher))["data"] == "still here"
            assert (await frame(watcher))["type"] == "ack"
            assert (await client.get("/pub/room")).json()["presence"] is True


async def test_presence_reconnect_within_hold_is_neither_leave_nor_join(make: Make) -> None:
    server = make(hold=1.5)
    async with httpx.AsyncClient(base_url=server.url, timeout=10) as client:
        await create(client, "room")
        async with connect(ws_url(server, "/sub/room?cid=watcher")) as watcher:
            async with sse(client, "/sub/room?cid=c1"):
                assert (await frame(watcher))["type"] == "join"
            # back within the hold, by another transport
            async with connect(ws_url(server, "/sub/room?cid=c1")):
                await asyncio.sleep(2.0)  # past the first hold: nothing may have been told
                await push(client, "room", "marker")
                assert (await frame(watcher))["data"] == "marker"
            assert await frame(watcher, timeout=6) == {
                "type": "leave",
                "channel": "room",
                "cid": "c1",
                "user": None,
            }


async def test_presence_listing_shows_who_is_here(make: Make) -> None:
    server = make(hold=0.2)
    async with httpx.AsyncClient(base_url=server.url, timeout=10) as client:
        await create(client, "room")
        info = (await client.get("/pub/room")).json()
        assert info["presence"] is True and "clients" not in info
        carol = {"authorization": f"Bearer {token('carol')}"}
        async with sse(client, "/sub/room?cid=c-sse", carol), sse(client, "/sub/room"):
            # a long-poll with a cid is a client; one without a cid is not (each poll is new)
            polls = [
                asyncio.ensure_future(client.get("/sub/room?cid=c-poll&timeout=5")),
                asyncio.ensure_future(client.get("/sub/room?timeout=5")),
            ]

            async def listed() -> list[dict[str, Any]]:
                answer = await client.get("/pub/room?presence=1")
                assert answer.status_code == 200, answer.text
                return sorted(answer.json()["clients"], key=lambda c: str(c["cid"]))

            deadline = time.monotonic() + 5
            while len(found := await listed()) < 3 and time.monotonic() < deadline:
                await asyncio.sleep(0.05)
            named = [c for c in found if not str(c["cid"]).startswith("#")]
            assert named == [
                {"cid": "c-poll", "user": None, "transport": "longpoll"},
                {"cid": "c-sse", "user": "carol", "transport": "sse"},
            ]
            anonymous = [c for c in found if str(c["cid"]).startswith("#")]
            assert [c["transport"] for c in anonymous] == ["sse"]
            await push(client, "room", "done")
            for poll in polls:
                # a long-poll gets messages, never join/leave
                body = (await poll).json()
                assert [m["data"] for m in body["channels"]["room"]["messages"]] == ["done"]
        await asyncio.sleep(0.5)  # past the hold
        deadline = time.monotonic() + 5
        while (await listed()) and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        assert await listed() == []


async def test_presence_listing_needs_server_rights_and_a_good_flag(make: Make) -> None:
    server = make(allow="10.9.9.9")  # loopback is not a server here
    server_headers = {"authorization": f"Bearer {SECRET}"}
    async with httpx.AsyncClient(base_url=server.url, timeout=10) as client:
        await create(client, "room", key="k1", **{"token": mint_token(SECRET, publish=["room"])})
        refused = await client.get("/pub/room?presence=1")
        assert refused.status_code == 403 and "error" in refused.json()
        granted = mint_token(SECRET, publish=["room"])
        ok = await client.get(
            "/pub/room?presence=1", headers={"authorization": f"Bearer {granted}"}
        )
        assert ok.status_code == 200 and ok.json()["clients"] == []
        bad = await client.get("/pub/room?presence=maybe", headers=server_headers)
        assert bad.status_code == 400 and "presence" in bad.json()["error"]
        # a key holder pushes but cannot change presence
        changed = await client.post("/pub/room?key=k1&presence=false", content="x")
        assert changed.status_code == 403 and "presence" in changed.json()["error"]
        kept = await client.post("/pub/room?key=k1&presence=true", content="x")
        assert kept.status_code == 200, kept.text
        bad_push = await client.post("/pub/other?presence=2", headers=server_headers)
        assert bad_push.status_code == 400 and "presence" in bad_push.json()["error"]


async def test_presence_is_off_by_default_and_follows_each_push(make: Make) -> None:
    server = make(hold=0.1)
    async with httpx.AsyncClient(base_url=server.url, timeout=10) as client:
        await client.post("/pub/quiet", content="m0")
        info = (await client.get("/pub/quiet?presence=1")).json()
        assert info["presence"] is False and info["clients"] == []
        async with sse(client, "/sub/quiet?cid=w") as watcher:
            async with sse(client, "/sub/quiet?cid=x"):
                # switching presence on tells who is already there
                await client.post("/pub/quiet", params={"presence": "1"})
                assert (await control(watcher))["cid"] == "x"
                # a push that leaves presence out switches it off: no more events
                await client.post("/pub/quiet", content="m1")
                assert (await client.get("/pub/quiet")).json()["presence"] is False
                assert (await watcher.next())["data"] == "m1"
            async with sse(client, "/sub/quiet?cid=y"):
                await client.post("/pub/quiet", content="m2")
                event = await watcher.next()
                assert event["data"] == "m2", event


async def test_presence_events_reach_only_other_clients(make: Make) -> None:
    server = make(hold=0.1)
    async with httpx.AsyncClient(base_url=server.url, timeout=10) as client:
        await create(client, "room")
        async with sse(client, "/sub/room?cid=self") as me:
            await push(client, "room", "first")
            # its own join is not told to itself
            assert (await me.next())["data"] == "first"


async def test_presence_across_channels_of_one_subscription(make: Make) -> None:
    server = make(hold=0.1)
    async with httpx.AsyncClient(base_url=server.url, timeout=10) as client:
        await create(client, "a")
        await client.post("/pub/b")  # no presence
        async with sse(client, "/sub/a,b?cid=w") as watcher:
            async with sse(client, "/sub/a,b?cid=z"):
                assert await control(watcher) == {
                    "type": "join",
                    "channel": "a",
                    "cid": "z",
                    "user": None,
                }
            assert (await control(watcher))["type"] == "leave"
            await client.post("/pub/b", content="on b")
            event = await watcher.next()
            assert (event["event"], event["data"]) == ("b", "on b")


async def test_presence_set_by_the_python_client_and_the_cli(make: Make) -> None:
    server = make()
    async with AsyncClient(server.url) as martd:
        await martd.publish("py", "x", presence=True)
        assert (await martd.info("py")).presence is True
        await martd.publish("py", "y")  # left out: back to false, like every attribute
        assert (await martd.info("py")).presence is False
    done = run_martd("pub", "cli", "z", "--presence", "--url", server.url)
    assert done.returncode == 0, done.stderr
    async with AsyncClient(server.url) as martd:
        assert (await martd.info("cli")).presence is True


async def test_presence_default_from_a_namespace(make: Make) -> None:
    server = make(namespaces='{"chat": {"presence": true}}', hold=0.1)
    async with httpx.AsyncClient(base_url=server.url, timeout=10) as client:
        await client.post("/pub/chat:lobby", content="hi")  # presence left out: the default
        assert (await client.get("/pub/chat:lobby")).json()["presence"] is True
        async with sse(client, "/sub/chat:lobby?cid=w") as watcher:
            async with sse(client, "/sub/chat:lobby?cid=n"):
                assert (await control(watcher))["cid"] == "n"
        await client.post("/pub/other", content="hi")
        assert (await client.get("/pub/other")).json()["presence"] is False


async def test_presence_user_from_the_auth_hook(make: Make) -> None:
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import JSONResponse, Response
    from starlette.routing import Route

    async def auth(request: Request) -> Response:
        if request.cookies.get("session") != "s-42":
            return JSONResponse({"error": "who?"}, status_code=401)
        return JSONResponse({"subscribe": ["room.*"], "user": 42, "ttl": 60})

    site = Starlette(routes=[Route("/auth", auth, methods=["POST"])])
    with running(site) as hook:
        server = make(allow="10.9.9.9", private="room.*", auth_url=hook.url + "/auth", hold=0.1)
        as_server = {"authorization": f"Bearer {SECRET}"}
        async with httpx.AsyncClient(base_url=server.url, timeout=10) as client:
            made = await client.post("/pub/room.1?presence=1", headers=as_server)
            assert made.status_code == 201, made.text
            async with sse(client, "/sub/room.1?cid=w", as_server) as watcher:
                async with sse(client, "/sub/room.1?cid=h", {"cookie": "session=s-42"}):
                    assert await control(watcher) == {
                        "type": "join",
                        "channel": "room.1",
                        "cid": "h",
                        "user": 42,
                    }
                    listed = await client.get("/pub/room.1?presence=1", headers=as_server)
                    assert {"cid": "h", "user": 42, "transport": "sse"} in listed.json()["clients"]
