"""Contract v1.1 on the wire, read by clients written from docs/protocol.md alone.

Raw sockets, no HTTP library: what a long-poll answer names, the bytes of a
``?format=json`` event stream, and an HTTP/1.0 event stream that ends by closing
(under both of uvicorn's HTTP protocols).
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from websockets.asyncio.client import connect

from martd_asgi import create_app

from .helpers import ServerThread, running

pytestmark = pytest.mark.anyio

# Payloads plain SSE cannot carry as they are (CR, CRLF), and others that trip parsers.
EXACT = ["cr\ronly", "crlf\r\nline", "nul\x00byte", "line\u2028separator", "\r\n\r", "😀 ünï\n"]


@pytest.fixture
def server(backend_url: str) -> Iterator[ServerThread]:
    with running(create_app(backend=backend_url)) as served:
        yield served


async def raw_get(port: int, target: str, headers: str = "") -> tuple[int, dict[str, str], bytes]:
    """One HTTP/1.1 GET on a socket of its own: status, headers, body."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(
            f"GET {target} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n{headers}\r\n".encode()
        )
        head = await reader.readuntil(b"\r\n\r\n")
        status, fields = parse_head(head)
        body = await reader.readexactly(int(fields["content-length"]))
        return status, fields, body
    finally:
        writer.close()


def parse_head(head: bytes) -> tuple[int, dict[str, str]]:
    lines = head.decode("latin-1").split("\r\n")
    fields: dict[str, str] = {}
    for line in lines[1:]:
        if line:
            name, _, value = line.partition(":")
            fields[name.strip().lower()] = value.strip()
    return int(lines[0].split()[1]), fields


def sse_events(raw: bytes) -> list[dict[str, Any]]:
    """Events of an event stream's bytes, as the SSE specification splits them."""
    text = raw.decode().replace("\r\n", "\n").replace("\r", "\n")
    events = []
    for block in text.split("\n\n"):
        event: dict[str, Any] = {}
        data = []
        for line in block.split("\n"):
            if not line or line.startswith(":"):
                continue
            name, _, value = line.partition(":")
            value = value.removeprefix(" ")
            if name == "data":
                data.append(value)
            else:
                event[name] = value
        if data:
            event["data"] = "\n".join(data)
            events.append(event)
    return events


async def read_until(reader: asyncio.StreamReader, marker: bytes, got: bytearray) -> None:
    """Read into ``got`` until it holds ``marker`` and the end of the event after it."""
    async with asyncio.timeout(10):
        while marker not in got or b"\n\n" not in got[got.index(marker) :]:
            chunk = await reader.read(65536)
            if not chunk:
                raise EOFError(bytes(got))
            got += chunk


# ------------------------------------------------------------ long-poll


async def test_raw_longpoll_of_two_channels_loses_and_repeats_nothing(
    server: ServerThread,
) -> None:
    """200 pushes alternating between two channels, the poller always a push behind."""
    total = 200
    got: dict[str, list[str]] = {"ta": [], "tb": []}
    etags = {"ta": "", "tb": ""}  # none yet: from now on
    pushed = 0
    bumped = asyncio.Event()
    subscribed = asyncio.Event()

    async def poller() -> None:
        while len(got["ta"]) + len(got["tb"]) < total:
            given = ",".join(etags.values())
            query = f"&etag={given}" if given != "," else ""
            subscribed.set()
            status, _, body = await raw_get(server.port, f"/sub/ta,tb?cid=raw&timeout=10{query}")
            assert status == 200, body
            channels = json.loads(body)["channels"]
            assert list(channels) == ["ta", "tb"], "every requested channel, in order"
            for name, group in channels.items():
                assert group["missed"] is False
                got[name].extend(m["data"] for m in group["messages"])
                etags[name] = group["etag"]
            # ask again only after another push: one lands between every two polls
            seen = pushed
            while pushed == seen and pushed < total:
                bumped.clear()
                await bumped.wait()

    task = asyncio.create_task(poller())
    async with httpx.AsyncClient(base_url=server.url, timeout=10) as client:
        await subscribed.wait()
        while (await client.get("/stats")).json()["subscribers"] < 1:
            await asyncio.sleep(0.01)
        for i in range(total):
            channel = "ta" if i % 2 == 0 else "tb"
            answer = await client.post(f"/pub/{channel}?size=1000", content=str(i))
            assert answer.status_code in (200, 201)
            pushed += 1
            bumped.set()
        await asyncio.wait_for(task, 30)
    assert got["ta"] == [str(i) for i in range(0, total, 2)]
    assert got["tb"] == [str(i) for i in range(1, total, 2)]


async def test_raw_longpoll_resumes_after_a_timeout_with_nothing_lost(
    server: ServerThread,
) -> None:
    """One channel, pushes only while the client is between polls that timed out."""
    etag: str | None = None
    async with httpx.AsyncClient(base_url=server.url, timeout=10) as client:
        for round_ in range(3):
            query = f"&etag={etag}" if etag else ""
            started = time.monotonic()
            status, fields, body = await raw_get(server.port, f"/sub/tick?timeout=1{query}")
            assert status == 200 and time.monotonic() - started >= 0.9
            group = json.loads(body)["channels"]["tick"]
            assert group["messages"] == []
            assert fields["etag"] == f'"{group["etag"]}"'
            etag = group["etag"]

            sent = (await client.post("/pub/tick", content=f"m{round_}")).json()["etag"]

            status, _, body = await raw_get(server.port, f"/sub/tick?timeout=1&etag={etag}")
            group = json.loads(body)["channels"]["tick"]
            assert group["messages"] == [{"etag": sent, "data": f"m{round_}"}]
            etag = group["etag"]


async def test_raw_jsonp_timeout_names_every_channel(server: ServerThread) -> None:
    async with httpx.AsyncClient(base_url=server.url, timeout=10) as client:
        etag = (await client.post("/pub/jhas", content="kept")).json()["etag"]
    status, _, body = await raw_get(server.port, "/sub/jnone,jhas?callback=cb&timeout=1")
    assert status == 200 and body.startswith(b"cb(") and body.endswith(b");")
    assert json.loads(body[3:-2]) == {
        "channels": {
            "jnone": {"etag": "0", "messages": [], "missed": False},
            "jhas": {"etag": etag, "messages": [], "missed": False},
        }
    }


# ---------------------------------------------------------- ?format=json


async def test_sse_format_json_carries_every_payload_byte_for_byte(server: ServerThread) -> None:
    async with httpx.AsyncClient(base_url=server.url, timeout=10) as client:
        sent = []
        for data in EXACT:
            sent.append((await client.post("/pub/exact", content=data.encode())).json()["etag"])
        await client.post("/pub/other", content="o")
        lone = await client.post("/pub/exact", content=b"lone \xed\xa0\x80 surrogate")
        assert lone.status_code == 400 and "UTF-8" in lone.json()["error"]

    last = sent[-1].encode()
    for target, marker in [
        ("/sub/exact?etag=0&format=json&transport=sse", last + b"\n"),
        ("/sub/exact,other?etag=0,&format=json", last + b","),
        ("/sub/exact?etag=0&transport=sse", last + b"\n"),  # plain SSE, for contrast
    ]:
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        writer.write(
            f"GET {target} HTTP/1.1\r\nHost: x\r\nAccept: text/event-stream\r\n\r\n".encode()
        )
        got = bytearray()
        await read_until(reader, b"id: " + marker, got)
        writer.close()
        head, _, body = bytes(got).partition(b"\r\n\r\n")
        assert parse_head(head + b"\r\n")[0] == 200
        # the chunked framing of HTTP/1.1: drop chunk sizes, keep what they carry
        events = sse_events(b"".join(dechunk(body)))
        if "format=json" in target:
            assert [json.loads(e["data"]) for e in events] == [
                {"etag": e, "data": d} for e, d in zip(sent, EXACT, strict=True)
            ]
            assert all("\n" not in e["data"] for e in events), "one line of JSON each"
            if "," in target:
                assert {e["event"] for e in events} == {"exact"}
        else:
            assert events[0]["data"] == "cr\nonly"  # what plain SSE can do

    async with httpx.AsyncClient(base_url=server.url, timeout=10) as client:
        bad = await client.get("/sub/exact?format=xml&transport=sse")
        assert bad.status_code == 400 and bad.json()["error"].startswith("format")


def dechunk(body: bytes) -> Iterator[bytes]:
    while body:
        size, _, rest = body.partition(b"\r\n")
        length = int(size, 16)
        if length == 0:
            return
        yield rest[:length]
        body = rest[length + 2 :]


async def test_websocket_push_of_a_lone_surrogate_is_refused(server: ServerThread) -> None:
    url = server.url.replace("http", "ws") + "/sub/wsexact"
    async with connect(url) as ws:
        await ws.send('{"type": "pub", "channel": "wsexact", "data": "a\\ud800b", "id": 1}')
        answer = json.loads(await asyncio.wait_for(ws.recv(), 5))
        assert answer["type"] == "error" and answer["status"] == 400
        assert answer["id"] == 1 and "surrogate" in answer["error"]
        await ws.send('{"type": "pub", "channel": "wsexact", "data": "a\\r\\nb", "id": 2}')
        frames = [json.loads(await asyncio.wait_for(ws.recv(), 5)) for _ in range(2)]
    by_type = {f.get("type"): f for f in frames}
    assert by_type["ack"]["id"] == 2 and by_type[None]["data"] == "a\r\nb"


# ------------------------------------------------------ HTTP/1.0 SSE


@pytest.mark.parametrize("http", ["httptools", "h11"])
async def test_http10_event_stream_is_close_delimited(http: str) -> None:
    with running(create_app(), http=http) as server:
        async with httpx.AsyncClient(base_url=server.url, timeout=10) as client:
            first = (await client.post("/pub/old", content="two\nlines")).json()["etag"]
            reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
            writer.write(b"GET /sub/old?etag=0 HTTP/1.0\r\nAccept: text/event-stream\r\n\r\n")
            got = bytearray()
            await read_until(reader, b"data: lines\n", got)
            live = (await client.post("/pub/old", content="live")).json()["etag"]
            await read_until(reader, b"data: live\n", got)
            assert (await client.delete("/pub/old")).status_code == 200
            async with asyncio.timeout(10):
                got += await reader.read()  # to the end: the server closes
            writer.close()
    head, _, body = bytes(got).partition(b"\r\n\r\n")
    status, fields = parse_head(head + b"\r\n")
    assert status == 200 and fields["content-type"].startswith("text/event-stream")
    assert "transfer-encoding" not in fields and "content-length" not in fields
    assert fields["connection"] == "close"
    assert body == (
        b"retry: 2000\n\n"
        + f"id: {first}\ndata: two\ndata: lines\n\n".encode()
        + f"id: {live}\ndata: live\n\n".encode()
        + b'event: martd\ndata: {"type": "deleted", "channel": "old"}\n\n'
    )
