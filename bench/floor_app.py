"""A measuring stick, not a server: the least an ASGI app under uvicorn can do.

It speaks only as much of martd's wire format (docs/protocol.md) as the bench's
load generator checks (bench/clients.py, bench/scenarios.py), so that
``python bench/run.py --martd-app bench.floor_app:app`` measures what uvicorn itself
costs on each row, with next to no application code on top:

- ``POST /pub/NAME``: takes the body as the message, gives it an etag from a
  counter and answers ``{"channel", "etag", "subscribers", "messages"}``;
- ``GET /pub/NAME``: ``{"channel", "subscribers"}``;
- ``GET /sub/NAME`` with ``Accept: text/event-stream``: a stream of
  ``id:``/``data:`` events;
- ``GET /sub/NAME`` otherwise: a long-poll, answered with the long-poll's JSON
  (one channel) when the next message comes, or at once with the channel's
  newest message if the poll's etag (``If-None-Match`` or ``?etag=``) is
  another one;
- a WebSocket upgrade of ``GET /sub/NAME``: one text frame
  ``{"channel", "etag", "data"}`` per message;
- ``GET /healthz``.

What it leaves out on purpose: history beyond a channel's newest message,
several channels per request, auth, limits, validation of any kind, poll
timeouts, keep-alive comments, slow-consumer handling, error answers beyond a
bare 404. A push sends to each subscriber's ASGI ``send`` directly (no queue, no
task per subscriber); the bytes of an event, a poll answer and a frame are made
once per message. A response's head and first body leave as one write, as in
martd (``martd_asgi.protocols.joined_writes``, which works under uvicorn's stock
httptools protocol too). Never deploy it.
"""

from __future__ import annotations

import contextlib
import itertools
import json
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

try:
    from martd_asgi.protocols import joined_writes
except ImportError:  # pragma: no cover - the bench runs it with martd importable

    @contextlib.contextmanager
    def joined_writes(send: Any) -> Iterator[None]:
        yield


Send = Callable[[dict[str, Any]], Awaitable[None]]

_etags = itertools.count(1)
_streams: dict[str, set[Send]] = {}  # SSE subscribers of a channel
_polls: dict[str, set[Send]] = {}  # waiting long-polls of a channel
_sockets: dict[str, set[Send]] = {}  # WebSocket subscribers of a channel
_newest: dict[str, tuple[str, list[Any], bytes]] = {}  # etag, poll answer's head, body

JSON = (b"content-type", b"application/json")
SSE_HEAD = {
    "type": "http.response.start",
    "status": 200,
    "headers": [(b"content-type", b"text/event-stream"), (b"cache-control", b"no-cache")],
}
SSE_FIRST = {"type": "http.response.body", "body": b"retry: 2000\n\n", "more_body": True}


async def answer(send: Send, status: int, body: bytes, headers: list[Any] | None = None) -> None:
    with joined_writes(send):
        await send(
            {
                "type": "http.response.start",
                "status": status,
                "headers": headers or [JSON, (b"content-length", b"%d" % len(body))],
            }
        )
        await send({"type": "http.response.body", "body": body})


def header(scope: dict[str, Any], name: bytes) -> bytes | None:
    for key, value in scope["headers"]:
        if key == name:
            return bytes(value)
    return None


async def publish(channel: str, receive: Callable[[], Awaitable[Any]], send: Send) -> None:
    chunks = []
    while True:
        message = await receive()
        chunks.append(message.get("body", b""))
        if not message.get("more_body"):
            break
    data = b"".join(chunks).decode()
    etag = str(next(_etags))
    lines = "\n".join("data: " + line for line in data.split("\n"))
    event = f"id: {etag}\n{lines}\n\n"
    message = {"etag": etag, "data": data}
    body = json.dumps(
        {"channels": {channel: {"etag": etag, "messages": [message], "missed": False}}},
        separators=(",", ":"),
    ).encode()
    head = [JSON, (b"content-length", b"%d" % len(body)), (b"etag", b'"%s"' % etag.encode())]
    _newest[channel] = (etag, head, body)
    streams, polls = _streams.get(channel, ()), _polls.pop(channel, ())
    sockets = _sockets.get(channel, ())
    if streams:
        chunk = {"type": "http.response.body", "body": event.encode(), "more_body": True}
        for sub in list(streams):
            await sub(chunk)
    for poll in polls:
        await answer(poll, 200, body, head)
    if sockets:
        text = json.dumps({"channel": channel, "etag": etag, "data": data})
        frame = {"type": "websocket.send", "text": text}
        for sub in list(sockets):
            await sub(frame)
    count = len(streams) + len(polls) + len(sockets)
    reply = {"channel": channel, "etag": etag, "subscribers": count, "messages": 1}
    await answer(send, 200, json.dumps(reply).encode())


async def subscribe(
    scope: dict[str, Any], channel: str, receive: Callable[[], Awaitable[Any]], send: Send
) -> None:
    await receive()  # the request's (empty) body
    if b"text/event-stream" in (header(scope, b"accept") or b""):
        with joined_writes(send):
            await send(SSE_HEAD)
            await send(SSE_FIRST)
        subs = _streams.setdefault(channel, set())
    else:
        tag = header(scope, b"if-none-match")
        etag = tag.strip(b'"').decode() if tag is not None else None
        query = scope["query_string"].decode()
        for part in query.split("&") if query else ():
            if part.startswith("etag="):
                etag = part[5:]
        newest = _newest.get(channel)
        if etag is not None and newest is not None and newest[0] != etag:
            await answer(send, 200, newest[2], newest[1])
            return
        subs = _polls.setdefault(channel, set())
    subs.add(send)
    try:
        await receive()  # returns on disconnect, or once a push answered the poll
    finally:
        subs.discard(send)


async def websocket(channel: str, receive: Callable[[], Awaitable[Any]], send: Send) -> None:
    await receive()  # websocket.connect
    await send({"type": "websocket.accept"})
    subs = _sockets.setdefault(channel, set())
    subs.add(send)
    try:
        while (await receive())["type"] != "websocket.disconnect":
            pass
    finally:
        subs.discard(send)


async def app(scope: dict[str, Any], receive: Callable[[], Awaitable[Any]], send: Send) -> None:
    kind, path = scope["type"], scope.get("path", "")
    if kind == "lifespan":
        while (message := await receive())["type"] != "lifespan.shutdown":
            await send({"type": message["type"] + ".complete"})
        await send({"type": "lifespan.shutdown.complete"})
    elif kind == "websocket" and path.startswith("/sub/"):
        await websocket(path[5:], receive, send)
    elif kind != "http":
        return
    elif path.startswith("/sub/"):
        await subscribe(scope, path[5:], receive, send)
    elif path.startswith("/pub/") and scope["method"] == "POST":
        await publish(path[5:], receive, send)
    elif path.startswith("/pub/"):
        channel = path[5:]
        count = sum(len(d.get(channel, ())) for d in (_streams, _polls, _sockets))
        await answer(send, 200, json.dumps({"channel": channel, "subscribers": count}).encode())
    elif path == "/healthz":
        await answer(send, 200, b'{"status":"ok"}')
    else:
        await answer(send, 404, b'{"error":"not found"}')
