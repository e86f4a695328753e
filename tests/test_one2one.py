"""one2one channels: one client holds the channel; others get 409 or are kicked."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable

import httpx
import pytest

from .helpers import ServerThread, sse

pytestmark = pytest.mark.anyio


async def test_one2one_second_client_refused(client: httpx.AsyncClient) -> None:
    await client.post("/pub/solo?one2one=true", content="x")
    async with sse(client, "/sub/solo?cid=alice"):
        refused = await client.get("/sub/solo?cid=bob", headers={"accept": "text/event-stream"})
        assert refused.status_code == 409
        assert refused.json()["channel"] == "solo" and "one2one" in refused.json()["error"]
        poll = await client.get("/sub/solo?cid=carol&timeout=1")
        assert poll.status_code == 409
        # the holder's own reconnect is not refused
        async with sse(client, "/sub/solo?cid=alice") as again:
            etag = (await client.post("/pub/solo?one2one=true", content="y")).json()["etag"]
            assert (await again.next())["id"] == etag


async def test_one2one_longpoll_holder_keeps_its_hold(client: httpx.AsyncClient) -> None:
    await client.post("/pub/lp1?one2one=1", content="x")
    assert (await client.get("/sub/lp1?cid=holder&timeout=1")).status_code == 200
    # between the holder's polls, nobody else gets in
    assert (await client.get("/sub/lp1?cid=other&timeout=1")).status_code == 409
    assert (await client.get("/sub/lp1?cid=holder&timeout=1")).status_code == 200


async def test_one2one_hold_lapses(make_server: Callable[..., ServerThread]) -> None:
    server = make_server(hold=0.5)
    async with httpx.AsyncClient(base_url=server.url) as client:
        await client.post("/pub/lapse?one2one=true", content="x")
        assert (await client.get("/sub/lapse?cid=first&timeout=1")).status_code == 200
        assert (await client.get("/sub/lapse?cid=second&timeout=1")).status_code == 409
        await asyncio.sleep(0.8)
        assert (await client.get("/sub/lapse?cid=second&timeout=1")).status_code == 200


async def test_one2one_switched_on_kicks_all_but_the_earliest(client: httpx.AsyncClient) -> None:
    await client.post("/pub/crowd", content="x")
    async with sse(client, "/sub/crowd?cid=early") as early:
        async with sse(client, "/sub/crowd?cid=late") as late:
            poll = asyncio.create_task(client.get("/sub/crowd?cid=poller"))
            await asyncio.sleep(0.2)
            etag = (await client.post("/pub/crowd?one2one=true", content="now")).json()["etag"]
            kicked = await late.next()
            assert kicked["event"] == "martd"
            assert json.loads(kicked["data"]) == {"type": "kicked", "channel": "crowd"}
            with pytest.raises(EOFError):
                await late.next()
            answer = await asyncio.wait_for(poll, 5)
            assert answer.status_code == 409
            assert answer.json()["type"] == "kicked" and answer.json()["channel"] == "crowd"
            assert (await early.next())["id"] == etag
            assert (await client.get("/sub/crowd?cid=late&timeout=1")).status_code == 409
