"""Namespaces (MARTD_NAMESPACES): defaults, privacy, a subscriber cap, counts, bad config."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from martd_asgi import create_app
from martd_asgi.namespaces import parse
from martd_asgi.tokens import mint_token

from .helpers import ServerThread, running, sse

pytestmark = pytest.mark.anyio

SECRET = "server-secret-" + "s" * 30
AS_SERVER = {"authorization": f"Bearer {SECRET}"}
NAMESPACES = {
    "chat": {"size": 2, "life": 60, "presence": True},
    "solo": {"one2one": True},
    "secret": {"private": True},
    "open": {"private": False},
    "room": {"max_subscribers": 2},
}


async def test_namespaces_defaults_apply_to_what_a_push_omits(
    make_server: Callable[..., ServerThread],
) -> None:
    server = make_server(namespaces=json.dumps(NAMESPACES))
    async with httpx.AsyncClient(base_url=server.url, timeout=10) as client:
        for n in range(3):
            await client.post("/pub/chat:lobby", content=f"m{n}")
        info = (await client.get("/pub/chat:lobby")).json()
        assert (info["size"], info["life"], info["messages"]) == (2, 60, 2)
        # What the push gives wins; a channel outside any namespace keeps the global defaults.
        await client.post("/pub/chat:big?size=5&life=7", content="x")
        assert [(await client.get("/pub/chat:big")).json()[k] for k in ("size", "life")] == [5, 7]
        await client.post("/pub/chatter", content="x")
        await client.post("/pub/other:x", content="x")
        for plain in ("chatter", "other:x"):
            assert (await client.get(f"/pub/{plain}")).json()["size"] == 10
        await client.post("/pub/solo:1", content="x")
        assert (await client.get("/pub/solo:1")).json()["one2one"] is True
        # In process too (on the server's own loop, where its backend lives).
        martd = server.martd  # type: ignore[attr-defined]

        async def publish(**attrs: Any) -> None:
            done = asyncio.run_coroutine_threadsafe(
                martd.publish("chat:inproc", "x", **attrs), server.server_loop()
            )
            await asyncio.wrap_future(done)

        await publish()
        assert (await client.get("/pub/chat:inproc")).json()["size"] == 2
        await publish(size=4)
        assert (await client.get("/pub/chat:inproc")).json()["size"] == 4


def test_namespaces_presence_default_is_kept_for_attributes_that_carry_it() -> None:
    @dataclasses.dataclass(frozen=True)
    class WithPresence:
        size: int | None = None
        presence: bool | None = None

    found = parse({"chat": {"presence": True, "size": 3}})
    assert found.apply("chat:a", WithPresence()) == WithPresence(3, True)
    assert found.apply("chat:a", WithPresence(presence=False)) == WithPresence(3, False)
    assert found.apply("other:a", WithPresence()) == WithPresence()
    assert found["chat"].presence is True


async def test_namespaces_private_overrides_martd_private() -> None:
    app = create_app(
        backend="memory",
        allow="192.0.2.10",
        secret=SECRET,
        private="*",
        namespaces=NAMESPACES,
        poll_timeout=1,
    )
    with running(app, proxy_headers=False) as server:
        async with httpx.AsyncClient(base_url=server.url, timeout=10) as client:

            async def status(channel: str, **headers: str) -> int:
                answer = await client.get(
                    f"/sub/{channel}", params={"timeout": "1"}, headers=headers
                )
                return answer.status_code

            assert await status("open:x") == 200  # the namespace says public
            assert await status("secret:x") == 401
            assert await status("plain") == 401  # MARTD_PRIVATE=* still holds outside
            token = mint_token(SECRET, subscribe=["secret:x"])
            assert await status("secret:x", authorization=f"Bearer {token}") == 200
            assert await status("secret:y", authorization=f"Bearer {token}") == 403
    nothing_private = create_app(backend="memory", allow="192.0.2.10", namespaces=NAMESPACES)
    with running(nothing_private, proxy_headers=False) as server:
        async with httpx.AsyncClient(base_url=server.url, timeout=10) as client:
            assert (await client.get("/sub/secret:x")).status_code == 401
            ws = server.url.replace("http://", "ws://") + "/sub/secret:x"
            from websockets.asyncio.client import connect
            from websockets.exceptions import InvalidStatus

            with pytest.raises(InvalidStatus) as refused:
                async with connect(ws, open_timeout=5):
                    pass
            assert refused.value.response.status_code == 401


async def test_namespaces_subscriber_cap_answers_429_and_is_counted(
    make_server: Callable[..., ServerThread],
) -> None:
    server = make_server(namespaces=NAMESPACES, max_subscribers=1)
    async with (
        httpx.AsyncClient(base_url=server.url, timeout=10) as client,
        sse(client, "/sub/room:1"),
        sse(client, "/sub/room:1,chat:a"),
    ):
        over = await client.get("/sub/room:1")
        assert over.status_code == 429
        assert over.json()["namespace"] == "room" and "room:1" in over.json()["error"]
        assert over.headers["retry-after"] == "5"
        # Another channel of the namespace has its own count; the global cap applies elsewhere.
        async with sse(client, "/sub/room:2"):
            pass
        assert (await client.get("/sub/chat:a")).status_code == 429
        stats = (await client.get("/stats", headers=AS_SERVER)).json()["namespaces"]
        assert stats["room"] == {"channels": 1, "subscribers": 2, "refused": 1}
        assert stats["chat"] == {"channels": 1, "subscribers": 1, "refused": 1}
        assert stats["secret"] == {"channels": 0, "subscribers": 0, "refused": 0}
        metrics = (await client.get("/metrics", headers=AS_SERVER)).text
        assert 'martd_namespace_subscribers{namespace="room"} 2.0' in metrics
        assert 'martd_namespace_refused_total{namespace="room"} 1.0' in metrics
        assert "room:1" not in metrics and "chat:a" not in metrics


@pytest.mark.parametrize(
    ("value", "named"),
    [
        ('{"chat": {"sise": 3}}', "unknown key 'sise'"),
        ('{"chat": {"size": 0}}', "size must be a whole number from 1 to 10000, not 0"),
        ('{"chat": {"life": "60"}}', 'life must be a whole number from 1 to 2592000, not "60"'),
        ('{"chat": {"private": "yes"}}', 'private must be true or false, not "yes"'),
        ('{"chat": {"presence": 1}}', "presence must be true or false, not 1"),
        ('{"chat": {"max_subscribers": -1}}', "max_subscribers must be a whole number"),
        ('{"a:b": {}}', "'a:b' is not a namespace name"),
        ('{"chat": []}', "'chat' must map to an object"),
        ('["chat"]', "must be a JSON object"),
        ("{chat", "not valid JSON"),
        ("/no/such/namespaces.json", "no such file '/no/such/namespaces.json'"),
    ],
)
def test_namespaces_bad_setting_is_refused_naming_it(value: str, named: str) -> None:
    with pytest.raises(ValueError) as refused:
        create_app(backend="memory", namespaces=value)
    assert named in str(refused.value)
    assert "\n" not in str(refused.value)


def test_namespaces_from_a_file(tmp_path: Path) -> None:
    path = tmp_path / "namespaces.json"
    path.write_text(json.dumps(NAMESPACES))
    app = create_app(backend="memory", namespaces=str(path))
    assert app.settings.namespaces["room"].max_subscribers == 2
    assert parse(str(path)) == app.settings.namespaces


@pytest.mark.parametrize("how", ["uvicorn", "martd serve"])
def test_namespaces_bad_config_stops_startup_with_one_line(how: str) -> None:
    command = (
        [sys.executable, "-m", "uvicorn", "martd_asgi:app", "--port", "0"]
        if how == "uvicorn"
        else [sys.executable, "-m", "martd_asgi", "serve", "--port", "0"]
    )
    env = os.environ | {"MARTD_NAMESPACES": '{"chat": {"size": 0}}'}
    done = subprocess.run(command, capture_output=True, text=True, timeout=30, env=env, check=False)
    assert done.returncode != 0
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert "MARTD_NAMESPACES" in lines[0] and "'chat'" in lines[0] and "size" in lines[0]
    assert "Traceback" not in done.stderr


def test_namespaces_channel_of_no_namespace(tmp_path: Path) -> None:
    found = parse(NAMESPACES)
    assert found.of("chat:x") is found["chat"]
    assert found.of("chat") is None and found.of(":x") is None and found.of("nope:x") is None
    assert found.of("chat:x:y") is found["chat"]
    counts: dict[str, Any] = found.counts(
        {"room:1": {1: None, 2: None}, "x": {3: None}}, ["room:2"]
    )
    assert counts["room"] == {"channels": 2, "subscribers": 2}
