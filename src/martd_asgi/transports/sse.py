"""Server-Sent Events: one stream, a frame per message, shared between subscribers.

For one channel each message is a default event (``id: ETAG``, ``data:``
lines); its frame is made once per message and handed to every subscriber. For
several channels an event is named after its channel and its ``id:`` lists the
etag of every channel, so a reconnect with ``Last-Event-ID`` resumes them all;
those frames are per subscriber.

With ``?format=json`` each event's data is one line of JSON, the message
object of long-poll (``{"etag", "data", "event", "type"}``): plain SSE has no
way to carry a lone CR, JSON carries every payload byte for byte.
"""

from __future__ import annotations

import json
from typing import Any

from ..backends.base import Control
from ..channels import History, Message
from ..delivery import Subscriber
from ..protocols import joined_writes
from ..types import CloseReason, Send
from .common import NO_CACHE

RETRY_MS = 2000
SHUTDOWN_RETRY_MS = 1000
PING = {"type": "http.response.body", "body": b":\n\n", "more_body": True}
RETRY = f"retry: {RETRY_MS}\n\n".encode()
HEADERS = [(b"content-type", b"text/event-stream; charset=utf-8"), *NO_CACHE]


def control_frame(kind: str, channel: str) -> bytes:
    data = json.dumps({"type": kind, "channel": channel}, ensure_ascii=False)
    return f"event: martd\ndata: {data}\n\n".encode()


def body(data: bytes, more: bool = True) -> dict[str, Any]:
    return {"type": "http.response.body", "body": data, "more_body": more}


def _json_data(msg: Message) -> bytes:
    line = json.dumps(msg.as_json(), ensure_ascii=False, separators=(",", ":"))
    return b"data: " + line.encode() + b"\n"


def _json_single(msg: Message) -> dict[str, Any]:
    data: bytes = msg.memo("sse_json_data", _json_data)
    return body(b"id: " + msg.etag.encode() + b"\n" + data + b"\n")


class SSESubscriber(Subscriber):
    __slots__ = ("ids", "json")
    transport = "sse"
    stream = True

    def __init__(self, *args: Any, json: bool = False, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.ids: list[str] | None = None  # several channels: the etag of each, for id:
        self.json = json  # ?format=json

    def encode(self, msg: Message, index: int) -> dict[str, Any]:
        if self.ids is None and not self.missed:
            if self.json:
                return msg.memo("sse_json", _json_single)  # type: ignore[no-any-return]
            return msg.encoded("sse")  # type: ignore[no-any-return]
        return body(self.frame(msg, index))

    def frame(self, msg: Message, index: int) -> bytes:
        out = b""
        if self.missed and msg.channel in self.missed:
            self.missed.discard(msg.channel)
            out = control_frame("missed", msg.channel)
        if self.ids is None:
            single = msg.memo("sse_json", _json_single) if self.json else msg.encoded("sse")
            frame: bytes = single["body"]
            return out + frame
        self.ids[index] = msg.etag
        head = f"event: {msg.channel}\nid: {','.join(self.ids)}\n".encode()
        if self.json:
            data: bytes = msg.memo("sse_json_data", _json_data)
        else:
            data = msg.encoded("sse_data")
        return out + head + data + b"\n"

    def ping_event(self) -> dict[str, Any] | None:
        return PING

    def tell(self, control: Control) -> None:
        self.finish([body(control_frame(control.kind, control.channel), more=False)])

    def end(self, reason: CloseReason) -> None:
        if reason == "slow":
            self.abort()
        else:
            self.finish([body(f"retry: {SHUTDOWN_RETRY_MS}\n\n".encode(), more=False)])


async def begin(
    sub: SSESubscriber,
    histories: list[History],
    send: Send,
    given: list[str | None],
    *,
    close: bool = False,
) -> None:
    """Send the headers, what the subscriber missed and its history, then go live.

    ``close``: the stream ends by closing the connection (an HTTP/1.0 client).
    """
    channels = sub.channels
    if len(channels) > 1:
        # Each event's id must resume every channel: one whose history is still to
        # come resumes from where the subscriber asked, the others from their newest.
        sub.ids = [
            (given[i] or "0") if h.messages else h.last_etag for i, h in enumerate(histories)
        ]
    headers = [*HEADERS, (b"connection", b"close")] if close else HEADERS
    chunks = [RETRY]
    for index, history in enumerate(histories):
        if history.missed and history.exists:
            chunks.append(control_frame("missed", channels[index]))
    for index, history in enumerate(histories):
        for msg in sub.fresh(history.messages):
            chunks.append(sub.frame(msg, index))
    with joined_writes(send):  # the head and the first lines: one write
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send(body(b"".join(chunks)))
    await sub.drain()
