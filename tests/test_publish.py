"""POST/GET/DELETE /pub/{channel}: names, attributes, keys, answers."""

from __future__ import annotations

import asyncio
import re
from collections.abc import Callable

import httpx
import pytest

from .helpers import ServerThread, sse

pytestmark = pytest.mark.anyio

ETAG = re.compile(r"[A-Za-z0-9._\-]{1,64}\Z")
NOT_A_SERVER = "10.255.255.1"  # the allow-list of servers that treat the test client as a browser


async def test_publish_creates_then_updates(client: httpx.AsyncClient) -> None:
    first = await client.post("/pub/news", content="one")
    assert first.status_code == 201
    body = first.json()
    assert set(body) == {"channel", "etag", "subscribers", "messages"}
    assert body["channel"] == "news" and body["messages"] == 1 and body["subscribers"] == 0
    assert ETAG.match(body["etag"]) and body["etag"] != "0"
    second = await client.post("/pub/news", content="two")
    assert second.status_code == 200
    assert second.json()["messages"] == 2
    assert second.json()["etag"] != body["etag"]


@pytest.mark.parametrize(
    "name",
    ["a b", "x" * 129, "martd", "semi;colon", "sl%2Fash", "tab%09", "%C3%A9t%C3%A9"],
)
async def test_publish_rejects_bad_channel_names(client: httpx.AsyncClient, name: str) -> None:
    answer = await client.post(f"/pub/{name}", content="x")
    assert answer.status_code == 400
    assert "channel" in answer.json()["error"]


async def test_publish_accepts_every_allowed_character(client: httpx.AsyncClient) -> None:
    name = "Az09_.:@~-" + "x" * 118
    answer = await client.post(f"/pub/{name}", content="x")
    assert answer.status_code == 201
    assert answer.json()["channel"] == name


@pytest.mark.parametrize(
    ("query", "field"),
    [
        ("size=0", "size"),
        ("size=10001", "size"),
        ("size=ten", "size"),
        ("size=1.5", "size"),
        ("life=0", "life"),
        ("life=2592001", "life"),
        ("life=-1", "life"),
        ("one2one=maybe", "one2one"),
        ("key=", "key"),
        ("key=" + "k" * 257, "key"),
    ],
)
async def test_publish_rejects_bad_attributes_and_changes_nothing(
    client: httpx.AsyncClient, query: str, field: str
) -> None:
    await client.post("/pub/attrs?size=5&life=100", content="kept")
    before = (await client.get("/pub/attrs")).json()
    answer = await client.post(f"/pub/attrs?{query}", content="x")
    assert answer.status_code == 400
    assert answer.json()["error"].startswith(field)
    assert (await client.get("/pub/attrs")).json() == before


async def test_publish_accepts_attribute_bounds(client: httpx.AsyncClient) -> None:
    for query in ("size=1&life=1", "size=10000&life=2592000&one2one=1", "one2one=false"):
        answer = await client.post(f"/pub/bounds?{query}", content="x")
        assert answer.status_code in (200, 201), answer.text


async def test_publish_payload_limits(make_server: Callable[..., ServerThread]) -> None:
    server = make_server(max_payload=100)
    async with httpx.AsyncClient(base_url=server.url) as client:
        assert (await client.post("/pub/big", content="x" * 100)).status_code == 201
        too_big = await client.post("/pub/big", content="x" * 101)
        assert too_big.status_code == 413
        assert "payload" in too_big.json()["error"]
        not_utf8 = await client.post("/pub/big", content=b"\xff\xfe")
        assert not_utf8.status_code == 400
        assert "UTF-8" in not_utf8.json()["error"]
        assert (await client.get("/pub/big")).json()["messages"] == 1


async def test_publish_queue_is_circular(client: httpx.AsyncClient) -> None:
    for i in range(5):
        await client.post("/pub/ring?size=3", content=f"m{i}")
    poll = (await client.get("/sub/ring?etag=0")).json()["channels"]["ring"]
    assert [m["data"] for m in poll["messages"]] == ["m2", "m3", "m4"]
    assert (await client.get("/pub/ring")).json()["messages"] == 3


async def test_publish_shrinking_size_drops_oldest(client: httpx.AsyncClient) -> None:
    for i in range(4):
        await client.post("/pub/shrink?size=10", content=f"m{i}")
    answer = await client.post("/pub/shrink?size=2", content="m4")
    assert answer.json()["messages"] == 2


async def test_publish_omitted_attributes_take_defaults(client: httpx.AsyncClient) -> None:
    await client.post("/pub/defaults?size=50&life=60&one2one=true", content="x")
    await client.post("/pub/defaults", content="y")
    info = (await client.get("/pub/defaults")).json()
    assert (info["size"], info["life"], info["one2one"]) == (10, 3600, False)


async def test_publish_messages_expire_by_their_own_life(client: httpx.AsyncClient) -> None:
    await client.post("/pub/brief?life=1", content="short")
    await client.post("/pub/brief?life=60", content="long")
    await asyncio.sleep(1.3)
    poll = (await client.get("/sub/brief?etag=0")).json()["channels"]["brief"]
    assert [m["data"] for m in poll["messages"]] == ["long"]


async def test_publish_channel_dropped_when_empty_and_unwatched(client: httpx.AsyncClient) -> None:
    await client.post("/pub/gone?life=1", content="x")
    assert (await client.get("/pub/gone")).status_code == 200
    await asyncio.sleep(1.3)
    assert (await client.get("/pub/gone")).status_code == 404


async def test_publish_channel_kept_while_subscribed(client: httpx.AsyncClient) -> None:
    await client.post("/pub/watched?life=1", content="x")
    async with sse(client, "/sub/watched"):
        await asyncio.sleep(1.3)
        info = await client.get("/pub/watched")
        assert info.status_code == 200
        assert info.json()["messages"] == 0 and info.json()["subscribers"] == 1


async def test_publish_empty_push_sets_attributes_and_is_not_delivered(
    client: httpx.AsyncClient,
) -> None:
    async with sse(client, "/sub/quiet") as stream:
        empty = await client.post("/pub/quiet?size=7", content="")
        assert empty.status_code == 201
        assert empty.json()["messages"] == 1
        # The answer says that this message reaches nobody; a real push does not say so.
        assert empty.json()["delivered"] is False
        info = (await client.get("/pub/quiet")).json()
        assert info["size"] == 7 and info["etag"] == empty.json()["etag"]
        real = await client.post("/pub/quiet?size=7", content="real")
        assert "delivered" not in real.json()
        event = await stream.next()
        assert event == {"id": real.json()["etag"], "data": "real"}
    poll = (await client.get("/sub/quiet?etag=0")).json()["channels"]["quiet"]
    assert [m["data"] for m in poll["messages"]] == ["real"]


async def test_publish_info_and_delete(client: httpx.AsyncClient) -> None:
    assert (await client.get("/pub/nothing")).status_code == 404
    assert (await client.delete("/pub/nothing")).status_code == 404
    pushed = (await client.post("/pub/info?size=4&life=99&key=sekrit", content="x")).json()
    info = (await client.get("/pub/info")).json()
    assert info == {
        "channel": "info",
        "etag": pushed["etag"],
        "subscribers": 0,
        "messages": 1,
        "size": 4,
        "life": 99,
        "one2one": False,
        "has_key": True,
        "presence": False,
    }
    deleted = await client.delete("/pub/info")
    assert deleted.status_code == 200
    assert deleted.json() == {"channel": "info", "deleted": True}
    assert (await client.get("/pub/info")).status_code == 404


async def test_publish_etags_never_reused_after_recreate(client: httpx.AsyncClient) -> None:
    seen = set()
    for _ in range(20):
        etag = (await client.post("/pub/again", content="x")).json()["etag"]
        assert etag not in seen
        seen.add(etag)
        await client.delete("/pub/again")


async def test_publish_key_guards_the_channel(client: httpx.AsyncClient) -> None:
    assert (await client.post("/pub/locked?key=k1", content="a")).status_code == 201
    no_key = await client.post("/pub/locked", content="b")
    assert no_key.status_code == 403
    assert no_key.json()["error"] == "key: this channel needs its key to push"
    # A wrong key is told apart from none at all.
    wrong = await client.post("/pub/locked?key=k2", content="b")
    assert wrong.status_code == 403
    assert wrong.json()["error"] == "key: wrong key for this channel"
    assert (await client.post("/pub/locked?key=k1", content="c")).status_code == 200
    # a key cannot be added to a channel that has none
    await client.post("/pub/open", content="a")
    assert (await client.post("/pub/open?key=k3", content="b")).status_code == 403
    # deleting drops the key with the channel
    await client.delete("/pub/locked")
    assert (await client.post("/pub/locked", content="d")).status_code == 201


async def test_publish_key_holder_pushes_but_cannot_create_or_change(
    make_server: Callable[..., ServerThread],
) -> None:
    server = make_server(allow=NOT_A_SERVER, secret="server-secret")
    admin = {"authorization": "Bearer server-secret"}
    async with httpx.AsyncClient(base_url=server.url) as client:
        assert (await client.post("/pub/room?key=pw", content="x")).status_code == 403
        created = await client.post("/pub/room?key=pw&size=5", content="x", headers=admin)
        assert created.status_code == 201
        pushed = await client.post("/pub/room?key=pw", content="from a browser")
        assert pushed.status_code == 200, pushed.text
        same = await client.post("/pub/room?key=pw&size=5", content="same attrs")
        assert same.status_code == 200
        changed = await client.post("/pub/room?key=pw&size=6", content="x")
        assert changed.status_code == 403 and changed.json()["error"].startswith("size")
        wrong = await client.post("/pub/room?key=nope", content="x")
        assert wrong.status_code == 403
        no_key = await client.post("/pub/room", content="x")
        assert no_key.status_code == 403
        assert (await client.get("/pub/room")).status_code == 403
        assert (await client.delete("/pub/room")).status_code == 403
        info = (await client.get("/pub/room", headers=admin)).json()
        assert info["size"] == 5 and info["messages"] == 3


async def test_publish_answers_never_contain_the_key(client: httpx.AsyncClient) -> None:
    key = "do-not-echo-me-7f3a"
    answers = [
        await client.post(f"/pub/keyed?key={key}", content="x"),
        await client.post("/pub/keyed?key=wrong", content="x"),
        await client.get("/pub/keyed"),
        await client.get("/stats"),
    ]
    for answer in answers:
        assert key not in answer.text
        assert all(key not in v for v in answer.headers.values())


async def test_publish_method_not_allowed(client: httpx.AsyncClient) -> None:
    answer = await client.put("/pub/x", content="x")
    assert answer.status_code == 405
    assert "method" in answer.json()["error"]
    assert answer.headers["allow"] == "POST, GET, DELETE"
