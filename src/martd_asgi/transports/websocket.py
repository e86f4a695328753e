"""WebSocket on ``/sub/{channels}``: a frame per message, and pushes from the client.

Server to client, text frames of JSON:

- a message: ``{"channel": C, "etag": E, "data": PAYLOAD}`` (made once per
  message and shared by every WebSocket subscriber);
- a control: ``{"type": "missed" | "kicked" | "deleted", "channel": C}``;
- ``{"type": "ping"}`` every ``MARTD_PING`` seconds. Protocol-level pings are
  invisible to browser code, so a page could not tell a silent channel from a
  dead connection without an application frame;
- answers to the client's frames: ``{"type": "ack", "id": N, "etag": E}``,
  ``{"type": "error", "id": N, "error": ..., "status": S}``, ``{"type": "pong"}``.

Client to server: ``{"type": "pub", "channel": C, "data": D, "key": K, "id": N}``
pushes exactly like ``POST /pub/C?key=K`` by the same client (``size``,
``life``, ``one2one``, ``presence`` and ``event`` may be given as in the query string,
``content_type`` as the Content-Type header and ``idempotency_key`` as the
Idempotency-Key header); ``{"type": "ping"}``.

A message frame carries ``"event"`` and ``"type"`` too when its push gave them.

Close codes: 1000 when the client leaves, 1012 on shutdown, 4409 after
``kicked`` and 4410 after ``deleted`` (the control frame comes first, so the
close code is only a second way to learn it), 1008 (with the reason) for
frames that are not JSON objects in UTF-8. A subscriber that does not keep up
is dropped without a close frame (its socket is full); like every other, it
resumes by etag.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Mapping
from typing import Any

from .. import idempotency, wsframe
from ..backends.base import Control
from ..channels import (
    History,
    Message,
    check_event,
    check_name,
    message_type,
    parse_push_attributes,
)
from ..delivery import Subscriber, _uncancel
from ..errors import BadRequest, MartdError, Unavailable
from ..types import CloseReason, Receive, Send
from ..wsprotocol import frame_protocol, write_frames
from . import publish
from .app import App
from .common import Request, SubRequest
from .session import session

PING = wsframe.Outgoing('{"type":"ping"}')
PONG = wsframe.Outgoing('{"type":"pong"}')
CLOSE_CODES = {"kicked": 4409, "deleted": 4410}
SHUTDOWN = 1012
POLICY = 1008


def frame(body: dict[str, Any]) -> dict[str, Any]:
    return {"type": "websocket.send", "text": json.dumps(body, ensure_ascii=False)}


def control_frame(kind: str, channel: str) -> dict[str, Any]:
    return frame({"type": kind, "channel": channel})


def close(code: int, reason: str = "") -> dict[str, Any]:
    return {"type": "websocket.close", "code": code, "reason": reason}


class WebSocketSubscriber(Subscriber):
    __slots__ = ("wire",)
    transport = "websocket"
    stream = True

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # the connection, where martd writes frames itself (wsprotocol.write_frames)
        self.wire = frame_protocol(self.send)

    def flush(self) -> None:
        """The frames of this loop turn, as one write where martd may write frames.

        A message's frame is made once and its bytes shared by every subscriber;
        what cannot go that way (a close, a full buffer) goes through ``send``.
        """
        wire, events = self.wire, self.pending
        if wire is None or not events or self.busy:
            super().flush()
            return
        chunks = []
        for event in events:
            data = wsframe.wire(event)
            if data is None:
                break
            chunks.append(data)
        if chunks and write_frames(wire, chunks[0] if len(chunks) == 1 else b"".join(chunks)):
            if len(chunks) == len(events):
                self.pending = None
                return
            del events[: len(chunks)]
        super().flush()

    def emit(self, msg: Message, index: int) -> None:
        if self.missed and msg.channel in self.missed:
            self.missed.discard(msg.channel)
            self.push(control_frame("missed", msg.channel))
        self.push(msg.encoded("ws"))

    def encode(self, msg: Message, index: int) -> dict[str, Any]:
        # Called by drain() only. A pending "missed" goes first: the message's
        # frame is put back at the head of the backlog, which drain sends next.
        if self.missed and msg.channel in self.missed and self.backlog is not None:
            self.missed.discard(msg.channel)
            self.backlog.appendleft(msg.encoded("ws"))
            return control_frame("missed", msg.channel)
        return msg.encoded("ws")  # type: ignore[no-any-return]

    def ping_event(self) -> dict[str, Any] | None:
        return PING

    def tell(self, control: Control) -> None:
        self.finish(
            [
                control_frame(control.kind, control.channel),
                close(CLOSE_CODES.get(control.kind, 1000), control.kind),
            ]
        )

    def end(self, reason: CloseReason) -> None:
        if reason == "slow":
            self.abort()
        elif reason == "shutdown":
            self.finish([close(SHUTDOWN, "shutdown")])
        else:
            self.finish([close(1000, reason)])

    def reply(self, event: dict[str, Any]) -> None:
        """Answer a client frame, in order with the messages being delivered."""
        if not self.closed:
            self.push(event)


async def begin(sub: WebSocketSubscriber, found: list[History], send: Send) -> None:
    """Accept, tell what was missed, send history, then go live."""
    await send({"type": "websocket.accept"})
    for index, history in enumerate(found):
        if history.missed and history.exists:
            await send(control_frame("missed", sub.channels[index]))
    for history in found:
        for msg in sub.fresh(history.messages):
            await send(msg.encoded("ws"))
    await sub.drain()


async def push(app: App, request: Request, body: dict[str, Any]) -> dict[str, Any]:
    """A ``pub`` frame, handled as ``POST /pub`` would be; returns the answer frame."""
    ident = body.get("id")
    try:
        channel = body.get("channel")
        data = body.get("data")
        if not isinstance(channel, str):
            raise BadRequest("channel: a pub frame needs a channel name", field="channel")
        check_name(channel)
        if not isinstance(data, str):
            raise BadRequest("data: a pub frame carries its payload as a string", field="data")
        publish.check_data(app, data)
        given: dict[str, str] = {
            name: publish.query_text(body[name])
            for name in ("size", "life", "one2one", "key", "presence")
            if name in body
        }
        attrs = parse_push_attributes(given)
        event = check_event(publish.query_text(body["event"])) if "event" in body else None
        content_type = (
            message_type(publish.query_text(body["content_type"]))
            if "content_type" in body
            else None
        )
        idem_key = None
        if "idempotency_key" in body:
            idem_key = idempotency.check_key(publish.query_text(body["idempotency_key"]))
        ttl = app.settings.idempotency_ttl
        idem = idempotency.make(idem_key, data, attrs, event, content_type, ttl)
        try:
            result = await publish.push(
                app,
                request,
                channel,
                data,
                attrs,
                event=event,
                content_type=content_type,
                idem=idem,
            )
        except MartdError:
            raise
        except Exception:
            app.log.warning("push over WebSocket failed", exc_info=True)
            raise Unavailable("backend: the push could not be stored; try again") from None
    except MartdError as error:
        app.metrics.refused(error)
        return frame({"type": "error", "id": ident, **error.as_json(), "status": error.status})
    return frame({"type": "ack", "id": ident, **result.answer(data)})


def read_frame(message: Mapping[str, Any]) -> dict[str, Any] | str:
    """The client's frame as a JSON object, or the reason to close on it."""
    text = message.get("text")
    if text is None:
        try:
            text = (message.get("bytes") or b"").decode("utf-8")
        except UnicodeDecodeError:
            return "frames are JSON objects in UTF-8"
    try:
        body = json.loads(text)
    except RecursionError:
        return "frame: nested too deeply"
    except ValueError:
        body = None
    if not isinstance(body, dict):
        return "frames are JSON objects"
    return body


def _unsendable(value: Any) -> str | None:
    """Why ``value`` could not go back in a frame (JSON escapes can make lone surrogates)."""
    try:
        json.dumps(value, ensure_ascii=False).encode()
    except UnicodeEncodeError:
        return "frame: a string holds a lone surrogate; send valid Unicode"
    except (RecursionError, ValueError):
        return "frame: nested too deeply"
    return None


async def listen(app: App, request: Request, sub: WebSocketSubscriber, receive: Receive) -> None:
    """Read the client's frames until it goes or we closed it (cf. Subscriber.wait)."""
    try:
        while True:
            message = await receive()
            kind = message["type"]
            if kind == "websocket.disconnect":
                break
            if kind != "websocket.receive" or sub.closed:
                continue
            body = read_frame(message)
            if isinstance(body, str):
                sub.finish([close(POLICY, body)])
                continue
            problem = _unsendable(body)
            if problem is not None:
                ident = body.get("id") if _unsendable(body.get("id")) is None else None
                error = BadRequest(problem)
                sub.reply(frame({"type": "error", "id": ident, **error.as_json(), "status": 400}))
                continue
            what = body.get("type")
            if what == "pub":
                sub.reply(await push(app, request, body))
            elif what == "ping":
                sub.reply(PONG)
            else:
                error = BadRequest("type: a client frame is pub or ping")
                sub.reply(
                    frame({"type": "error", "id": body.get("id"), **error.as_json(), "status": 400})
                )
    except asyncio.CancelledError:
        if not sub.closed or sub.handler is not None:
            raise
        _uncancel()
    finally:
        sub.handler = None
        if not sub.closed:
            sub.lost()


async def serve(app: App, request: Request, req: SubRequest, receive: Receive, send: Send) -> None:
    """The WebSocket handler: the shared session, then the client's frames."""

    def make() -> WebSocketSubscriber:
        return WebSocketSubscriber(send, req.channels, req.cid, app.hub)

    async with session(app, request, req, send, make) as started:
        if started is None:
            return
        sub, found = started
        await begin(sub, found, send)
        request.forget()  # parsed again, on demand, for a pub frame
        await listen(app, request, sub, receive)
