"""Server-Sent Events: one stream, a frame per message, shared between subscribers.

For one channel each message is a default event (``id: ETAG``, ``data:``
lines); its frame is made once per message and handed to every subscriber. For
several channels an event is named after its channel and its ``id:`` lists the
etag of every channel, so a reconnect with ``Last-Event-ID`` resumes them all;
those frames are per subscriber.
"""

from __future__ import annotations

import json
from typing import Any

from ..backends.base import Control
from ..channels import History, Message
from ..subscriber import Subscriber
from .common import NO_CACHE, Send

RETRY_MS = 2000
SHUTDOWN_RETRY_MS = 1000
PING = {"type": "http.response.body", "body": b":\n\n", "more_body": True}
HEADERS = [(b"content-type", b"text/event-stream; charset=utf-8"), *NO_CACHE]


def control_frame(kind: str, channel: str) -> bytes:
    data = json.dumps({"type": kind, "channel": channel}, ensure_ascii=False)
    return f"event: martd\ndata: {data}\n\n".encode()


def body(data: bytes, more: bool = True) -> dict[str, Any]:
    return {"type": "http.response.body", "body": data, "more_body": more}


class SSESubscriber(Subscriber):
    __slots__ = ("ids",)
    transport = "sse"
    stream = True

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.ids: list[str] | None = None  # several channels: the etag of each, for id:

    def encode(self, msg: Message, index: int) -> dict[str, Any]:
        if self.ids is None and not self.missed:
            return msg.encoded("sse")  # type: ignore[no-any-return]
        return body(self.frame(msg, index))

    def frame(self, msg: Message, index: int) -> bytes:
        out = b""
        if self.missed and msg.channel in self.missed:
            self.missed.discard(msg.channel)
            out = control_frame("missed", msg.channel)
        if self.ids is None:
            frame: bytes = msg.encoded("sse")["body"]
            return out + frame
        self.ids[index] = msg.etag
        head = f"event: {msg.channel}\nid: {','.join(self.ids)}\n".encode()
        data: bytes = msg.encoded("sse_data")
        return out + head + data + b"\n"

    def ping_event(self) -> dict[str, Any] | None:
        return PING

    def tell(self, control: Control) -> None:
        self.finish([body(control_frame(control.kind, control.channel), more=False)])

    def end(self, reason: str) -> None:
        if reason == "slow":
            self.abort()
        else:
            self.finish([body(f"retry: {SHUTDOWN_RETRY_MS}\n\n".encode(), more=False)])


async def begin(
    sub: SSESubscriber, histories: list[History], send: Send, given: list[str | None]
) -> None:
    """Send the headers, what the subscriber missed and its history, then go live."""
    channels = sub.channels
    if len(channels) > 1:
        # Each event's id must resume every channel: one whose history is still to
        # come resumes from where the subscriber asked, the others from their newest.
        sub.ids = [
            (given[i] or "0") if h.messages else h.last_etag for i, h in enumerate(histories)
        ]
    await send({"type": "http.response.start", "status": 200, "headers": HEADERS})
    chunks = [f"retry: {RETRY_MS}\n\n".encode()]
    for index, history in enumerate(histories):
        if history.missed and history.exists:
            chunks.append(control_frame("missed", channels[index]))
    for index, history in enumerate(histories):
        for msg in sub.fresh(history.messages):
            chunks.append(sub.frame(msg, index))
    await send(body(b"".join(chunks)))
    await sub.drain()
